/*-------------------------------------------------------------------------
 *
 * remote.h
 *	  Peers and the libpq client that runs hashtree calls on them.
 *
 * A backend keeps one connection per peer for its lifetime, so a lock
 * taken on a peer (owned by the peer backend serving the connection) lasts
 * until it is released or this backend exits.  Every wait is on the
 * process latch with the socket, so a cancel or a timeout
 * (hashtree.connect_timeout, hashtree.statement_timeout) interrupts it; an
 * interrupted connection is closed, and the peer stops its statement when
 * it notices (client_connection_check_interval is set on the peer session).
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_REMOTE_H
#define HT_REMOTE_H

#include "postgres.h"

#include "utils/elog.h"

typedef struct HtPeer HtPeer;

/* a result copied out of libpq into palloc'd memory */
typedef struct HtRemoteResult
{
	int			nrows;
	int			ncols;
	char	  **val;			/* [row * ncols + col], NULL when null */
	int		   *len;
} HtRemoteResult;

/* true when node is NULL or names this node */
extern bool ht_node_is_local(const char *node);

/* ERROR if there is no such peer (does not connect) */
extern void ht_peer_check(const char *name);

/* connected peer; ERROR if unknown or unreachable */
extern HtPeer *ht_peer_get(const char *name);

extern const char *ht_peer_name(HtPeer *peer);

/*
 * Check this backend's kept connection to a peer, without a round trip:
 * closed when the peer was dropped (then false), when its conninfo
 * changed, or when the peer closed it while it was idle.  Needs SPI.
 */
extern bool ht_peer_revalidate(const char *name);

/* close this backend's connection to a peer, if any (its locks go with it) */
extern void ht_peer_disconnect(const char *name);
extern int	ht_peer_partitions(HtPeer *peer);

/*
 * Number of connections made to the peer by this backend: a remote lock
 * taken under one generation is gone if the generation changed.
 */
extern uint64 ht_peer_generation(HtPeer *peer);

/* traffic counters of the connection (round trips, bytes received) */
extern void ht_peer_counters(HtPeer *peer, int64 *round_trips, int64 *bytes);

/*
 * Failures.  The client classifies them itself, from libpq's connection
 * status and the error's SQLSTATE, and says by the SQLSTATE of the error
 * it raises what failed, so that callers decide by edata->sqlerrcode,
 * never by the message:
 *  - class 08 (connection exception): the peer is lost to this backend.
 *    It could not be reached (08001, also a connect timeout), the
 *    connection broke or the peer closed it (08006; a peer shutting down
 *    or terminating its session included, with the peer's message), the
 *    peer did not answer within hashtree.statement_timeout (08006), or it
 *    answered what this client does not understand (08P01).  The
 *    connection is closed, and the next ht_peer_get connects again.
 *    ht_peer_lost() tests for it.
 *  - class 57 (operator intervention): only this backend's own cancel or
 *    shutdown, served while waiting on the peer.
 *  - any other: an error the peer reported for the statement, relayed
 *    with its SQLSTATE, message, detail and hint, in the context
 *    'on peer "name"'; the connection still works.  A peer's error of
 *    class 08 or 57 (its own connections, its own statement timeout)
 *    would read as one of the above: it is relayed as 38000
 *    (external_routine_exception), the context naming its SQLSTATE.
 * Errors of this node (an unknown peer, an invalid conninfo) keep their
 * usual SQLSTATEs.
 */
static inline bool
ht_peer_lost(int sqlerrcode)
{
	return ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_CONNECTION_EXCEPTION;
}

/*
 * Run one statement with text parameters; binary asks for binary results,
 * which must have ncols columns.  Errors as above; a malformed answer is a
 * protocol violation.
 */
extern HtRemoteResult *ht_peer_query(HtPeer *peer, const char *sql,
									 int nparams, const char *const *params,
									 bool binary, int ncols);

/*
 * The two halves of ht_peer_query: send a statement, do something else
 * while the peer works on it, then wait for its result.  Nothing else may
 * be sent to the peer in between; an ERROR in between leaves the
 * connection busy, and it is replaced at the next ht_peer_get.
 */
extern void ht_peer_send(HtPeer *peer, const char *sql, int nparams,
						 const char *const *params, bool binary);
extern HtRemoteResult *ht_peer_receive(HtPeer *peer, int ncols);

/*
 * Several statements sent at once (libpq's pipeline mode), each with a
 * Sync of its own (each its own transaction on the peer, as if sent one
 * after the other): the peer answers each as soon as it has run it, so
 * this node reads the first result (ht_peer_receive, in order, one per
 * statement) while the peer works on the next.  One round trip.  Nothing
 * else may be sent until every result was read; any error while reading
 * them (the peer's included) closes the connection.
 */
typedef struct HtPeerStatement
{
	const char *sql;
	int			nparams;
	const char *const *params;
	bool		binary;
} HtPeerStatement;

extern void ht_peer_send_pipeline(HtPeer *peer, int n, const HtPeerStatement *stmts);

/*
 * The same statement on this node (peer NULL, through SPI) or on a peer,
 * with text parameters and text results: the form the repair code uses
 * to move entries and rows either way.  On this node too, an error of
 * class 08 (from a table owner's code, say) is raised as 38000, so that
 * class 08 still means a lost peer; class 57 is left as it is (a cancel
 * of this backend cannot be told from a RAISE of 57014).
 */
extern HtRemoteResult *ht_node_query(HtPeer *peer, const char *sql, int nparams,
									 const char *const *params, int ncols);

/*
 * A statement of a batch: text parameters, text results (as
 * ht_node_query); statements of one group are consecutive.
 */
typedef struct HtStatement
{
	const char *sql;
	int			nparams;
	const char **params;
	int			ncols;
	int			group;			/* 0, 1, ... in order */
	HtRemoteResult *result;		/* set when it ran */
} HtStatement;

/*
 * Run statements on a node (peer NULL: this node, through SPI), group by
 * group.  On a peer the whole batch is one round trip (libpq's pipeline
 * mode: every statement sent before any result is read) and each group a
 * transaction of its own; on this node each group runs in a
 * subtransaction.  A group whose statement fails is rolled back and its
 * later statements do not run: errors[group] gets the error (as the peer
 * reported it, classified as in ht_peer_query), or with errors NULL the
 * first one is thrown.  A lost peer, a cancel or a shutdown is always
 * thrown.
 */
extern void ht_node_batch(HtPeer *peer, HtStatement *stmts, int n, ErrorData **errors);

/* decoders of binary result values */
extern int32 ht_remote_int4(HtRemoteResult *res, int row, int col);
extern int64 ht_remote_int8(HtRemoteResult *res, int row, int col);
extern bytea *ht_remote_bytea(HtRemoteResult *res, int row, int col);	/* NULL if null */
extern char *ht_remote_text(HtRemoteResult *res, int row, int col);	/* NULL if null */

/* peers table (needs SPI) */
extern void ht_peer_add(const char *name, const char *conninfo);
extern void ht_peer_drop(const char *name);

#endif							/* HT_REMOTE_H */
