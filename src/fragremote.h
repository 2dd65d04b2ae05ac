/*-------------------------------------------------------------------------
 *
 * fragremote.h
 *	  Fragments on other servers: foreign table partitions (postgres_fdw)
 *	  of a fragmented table, placed on hashtree's peers (DESIGN §19).
 *
 * fragremote.c derives a postgres_fdw server and user mapping from a
 * peer, keeps the table's unique constraints per fragment once a fragment
 * is elsewhere (the parent of a foreign partition cannot have a unique
 * index), moves a fragment between this server and the peers
 * (move_frag) with the rows verified by their digests, and drops what an
 * interrupted move left on the peers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_FRAGREMOTE_H
#define HT_FRAGREMOTE_H

#include "postgres.h"

/*
 * Give a new local fragment of table relid (qtarget: its quoted, qualified
 * name, not attached yet) the unique constraints the table keeps per
 * fragment, if it does (frag_table.fragment_keys).  Needs SPI.
 */
extern void ht_frag_add_fragment_keys(Oid relid, const char *qtarget);

/*
 * ERROR unless partition part (fragment k of its table) is here: add_frag
 * and del_frag move rows between local fragments only.
 */
extern void ht_frag_require_local(Oid part, int32 k, const char *what);

/*
 * add_frag/del_frag with fragments elsewhere (fragops.c's SQL functions
 * hand over to these): does the operation touch a fragment on a peer, or
 * is the new one to go to a peer (add_frag's node)?  Then
 * ht_frag_change_remote moves them here, runs the local operation and
 * puts them back (mode block_writes).
 */
#include "fmgr.h"

extern bool ht_frag_remote_involved(FunctionCallInfo fcinfo, bool add);
extern Datum ht_frag_change_remote(FunctionCallInfo fcinfo, bool add);

/* frag_init(tbl, n, nodes): the fragments, placed round-robin (frag.c hands over) */
extern Datum ht_frag_init_nodes(FunctionCallInfo fcinfo);

/*
 * drop_peer's check (api.c): ERROR (2BP01) if peer name holds fragments
 * (foreign tables on its server); locks its peers row FOR UPDATE first, so
 * that a move to it under way (FOR KEY SHARE) is waited for.  Needs SPI.
 */
extern void ht_frag_check_peer_drop(const char *name);

/*
 * The launcher's cleanup of one peer (DESIGN §19): ht_frag_cleanup_next
 * names the peer with a server after `after` in name order (wrapping;
 * NULL: none; needs SPI); ht_frag_cleanup_job, in a job of its own (it
 * runs its own transactions), drops at most a few dozen of this node's
 * tables there that no foreign table refers to and no operation holds.
 */
extern char *ht_frag_cleanup_next(const char *after);
extern void ht_frag_cleanup_job(const char *peer);

/*
 * Hand frag.c and fragops.c the functions above (ht_frag_remote, frag.h):
 * called once by _PG_init.
 */
extern void ht_fragremote_init(void);

#endif							/* HT_FRAGREMOTE_H */
