/*-------------------------------------------------------------------------
 *
 * update.h
 *	  The incremental update of a partition's trees: the dirty segments
 *	  and the bucket deltas of rewritten packs folded into the node rows
 *	  and derived entries, bottom-up through the leaf trees, the prefix
 *	  trees and the root.
 *
 * All functions need an SPI connection and, but for
 * ht_store_update_if_free, the partition's update lock (partlock.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_UPDATE_H
#define HT_UPDATE_H

#include "postgres.h"

#include "pack.h"

typedef struct HtUpdateStats
{
	int64		segments;		/* segments recomputed */
	int64		nodes;			/* node and derived-entry rows written */
} HtUpdateStats;

/*
 * fold the committed dirty segments of a partition, and the bucket deltas
 * of the packs a fold of tracked tables' keys rewrote (pd, may be NULL),
 * into its trees
 */
extern void ht_store_update(int part, const HtBucketDeltas *pd, HtUpdateStats *stats);

/*
 * Bring partition part's trees up to date now, without folding logged keys,
 * if it is built, unlocked and not being updated (track() does this for the
 * trees it re-hashed); false when it is not, the trees left to the next
 * update.  READ COMMITTED only (false otherwise).  Needs SPI.
 */
extern bool ht_store_update_if_free(int part);

#endif							/* HT_UPDATE_H */
