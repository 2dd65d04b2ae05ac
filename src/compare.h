/*-------------------------------------------------------------------------
 *
 * compare.h
 *	  Comparison of a local partition's trees with a peer's.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_COMPARE_H
#define HT_COMPARE_H

#include "postgres.h"

#include "funcapi.h"

#include "remote.h"

/* kinds of difference, seen from the local node */
typedef enum HtDiffKind
{
	HT_MISSING,					/* only the peer has the key */
	HT_REMOTE_MISSING,			/* only this node has the key */
	HT_DIFFERENT,				/* both have it, with different hashes */
	HT_MISSING_PREFIX,			/* only the peer has the prefix */
	HT_REMOTE_MISSING_PREFIX,	/* only this node has the prefix */
	HT_NKINDS
} HtDiffKind;

extern const char *const ht_diff_kind_names[HT_NKINDS];

/*
 * Called once per difference: prefix_b is (Datum) 0 for a whole prefix_a,
 * key NULL for a whole prefix.
 */
typedef void (*HtDiffCallback) (void *arg, HtDiffKind kind, Datum pa, Datum pb,
								bytea *key);

/*
 * Walk local and remote trees of a partition, calling fn for each
 * difference.  Needs an SPI connection.
 */
extern void ht_compare(int part, HtPeer *peer, HtDiffCallback fn, void *arg);

#endif							/* HT_COMPARE_H */
