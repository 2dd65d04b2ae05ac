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
 * Run one statement with text parameters; binary asks for binary results,
 * which must have ncols columns.  A peer's error is raised here with the
 * peer's SQLSTATE and message; a malformed answer is a protocol violation.
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
 * The same statement on this node (peer NULL, through SPI) or on a peer,
 * with text parameters and text results: the form the repair code uses
 * to move entries and rows either way.
 */
extern HtRemoteResult *ht_node_query(HtPeer *peer, const char *sql, int nparams,
									 const char *const *params, int ncols);

/* decoders of binary result values */
extern int32 ht_remote_int4(HtRemoteResult *res, int row, int col);
extern int64 ht_remote_int8(HtRemoteResult *res, int row, int col);
extern bytea *ht_remote_bytea(HtRemoteResult *res, int row, int col);	/* NULL if null */
extern char *ht_remote_text(HtRemoteResult *res, int row, int col);	/* NULL if null */

/* peers table (needs SPI) */
extern void ht_peer_add(const char *name, const char *conninfo);
extern void ht_peer_drop(const char *name);

#endif							/* HT_REMOTE_H */
