/*-------------------------------------------------------------------------
 *
 * track.h
 *	  Tracked tables: the row trigger that logs changed keys, track(),
 *	  untrack(), the fold of logged keys into entries at update time, the
 *	  re-hash used by reset, and the handling of schema changes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_TRACK_H
#define HT_TRACK_H

#include "postgres.h"

#include "pack.h"

/*
 * Fold the keys logged for a partition by the row triggers into its
 * entries (reading the current rows of the tracked tables), before the
 * dirty segments are folded into the trees.  Entries written as rows log
 * their segments as dirty; the change of packed entries to their buckets'
 * hashes is appended to deltas.  Needs SPI.
 */
extern void ht_track_fold(int part, HtBucketDeltas *deltas);

/*
 * ERROR if (pa, pb) names a tracked table: its entries are kept by its
 * trigger (and packed), never written through the entry API.
 */
extern void ht_track_refuse_prefix(text *pa, text *pb);

/*
 * Re-hash every tracked table's rows of a partition (part >= 0) into its
 * entries, forgetting the keys logged for it so far and marking the leaf
 * trees for a rebuild; reset does this before rebuilding.  Needs SPI.
 */
extern void ht_track_rehash_partition(int part);

/* partitions changed by hashtree itself, rows unchanged (needs SPI) */
extern void ht_track_partitions_changed(Oid relid);

/*
 * The role whose rights the repair helpers (_rows_by_key, _apply_rows, ...)
 * check on this node: set by exchange() to the role calling it (a SECURITY
 * DEFINER function's caller); InvalidOid (workers, peers): the current
 * user.
 */
extern Oid	ht_repair_role;

#endif							/* HT_TRACK_H */
