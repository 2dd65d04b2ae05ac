/*-------------------------------------------------------------------------
 *
 * store.h
 *	  Tree storage: entries, the dirty-segment log and tree nodes in the
 *	  extension's tables; batched reads, full rebuild and check (the
 *	  incremental update is in update.h).
 *
 * All functions need an SPI connection.  Trees are named by depth and the
 * text datums pa, pb (root: '', ''; prefix tree: a, ''; leaf tree: a, b).
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_STORE_H
#define HT_STORE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "funcapi.h"
#include "utils/tuplestore.h"

/*
 * Write or remove a leaf entry (depth 2) and log its segment as dirty.
 * put: version NULL is the commit time of the writing transaction; an
 * entry of a prefix that keeps tombstones (hashtree.tombstone_prefix)
 * loses its tombstone.  delete: in such a prefix, the tombstone (at) and
 * the entry (key, tomb = T(at)) instead of nothing.  purge: the entry and
 * its tombstone go, whatever the prefix (a repair making two nodes equal).
 */
extern void ht_store_put(int part, text *pa, text *pb, bytea *key,
						 bytea *hash, bool if_missing, const TimestampTz *version);
extern void ht_store_delete(int part, text *pa, text *pb, bytea *key, TimestampTz at,
							bytea *tomb);
extern void ht_store_purge(int part, text *pa, text *pb, bytea *key);

/*
 * Remove tombstone (key, at) and its entry (key, tomb = T(at)), each if
 * still so; skip_locked: false, and nothing done, if a writer holds the
 * entry (an expiry tries again at the next update)
 */
extern bool ht_store_drop_tombstone(int part, text *pa, text *pb, bytea *key,
									TimestampTz at, bytea *tomb, bool skip_locked);

/* has this database entry.version and hashtree.tombstone_prefix (1.0)? */
extern bool ht_store_versions_available(void);

/* does the plain prefix (pa, pb) keep tombstones (hashtree.tombstone_prefix)? */
extern bool ht_store_keeps_tombstones(text *pa, text *pb);

/* how many plain prefixes keep tombstones */
extern int	ht_store_tomb_prefix_count(void);

/* after a change of hashtree.tombstone_prefix: every backend reads it again */
extern void ht_store_tomb_prefixes_changed(void);

/*
 * drop a partition's trees and build them again from its entries (the
 * tracked tables' rows re-hashed by the caller first)
 */
extern void ht_store_rebuild(int part);

/* top hash of a tree, NULL when empty; palloc'd in CurrentMemoryContext */
extern bytea *ht_store_top(int part, int depth, text *pa, text *pb);

/* rows of a batched read, sorted by (i, child) or (i, key); i is 1-based */
typedef struct HtNodeRow
{
	int32		i;
	int64		child;
	bytea	   *hash;
} HtNodeRow;

typedef struct HtEntryRow
{
	int32		i;
	bytea	   *key;
	bytea	   *hash;
} HtEntryRow;

/*
 * children firsts[i] .. firsts[i] + span - 1 of a level (1..3, or
 * HT_LEVEL_SUB) of tree (pa[i], pb[i]); with hash_bytes > 0 only that
 * many leading bytes of each hash (node hashes are uniform: a prefix tells
 * them apart as well as a digest would)
 */
extern int	ht_store_nodes(int part, int depth, int n, Datum *pa, Datum *pb,
						   int level, const int64 *firsts, int64 span, int hash_bytes,
						   HtNodeRow **rows);

/*
 * entries of segment segs[i] of tree (pa[i], pb[i]); with hash_bytes > 0
 * the leading bytes of SHA-256(hash) instead of the hash (user hashes need
 * not be uniform)
 */
extern int	ht_store_entries(int part, int depth, int n, Datum *pa, Datum *pb,
							 const int32 *segs, int hash_bytes, HtEntryRow **rows);

/*
 * The entries of the trees above the leaf trees of a partition: depth 0
 * (key: a prefix_a in UTF-8) and depth 1 (pa: the prefix_a, key: a
 * prefix_b), their hashes (tops of child trees) cut to hash_bytes, sorted
 * by (depth, pa, key) bytewise; -1 when there are more than limit.
 */
typedef struct HtPrefixEntry
{
	int16		depth;
	text	   *pa;
	bytea	   *key;
	bytea	   *hash;
} HtPrefixEntry;

extern int	ht_store_prefix_entries(int part, int hash_bytes, int limit,
									HtPrefixEntry **out);
extern void ht_store_prefix_sort(HtPrefixEntry *rows, int n);

/* stored nodes and derived entries that differ from a fresh rebuild */
extern void ht_store_check(int part, ReturnSetInfo *rsinfo);

#endif							/* HT_STORE_H */
