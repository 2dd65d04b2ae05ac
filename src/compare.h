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
#include "store.h"

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
 * Hashes compared below the root are cut to this many bytes (of node sums,
 * or of a digest of entry hashes): 2^-64 odds that a difference hides,
 * a quarter of the bytes on the wire.  The root's top hash too.
 */
#define HT_COMPARE_HASH_BYTES 8

/*
 * Called once per difference, with its partition: prefix_b is (Datum) 0
 * for a whole prefix_a, key NULL for a whole prefix.
 */
typedef void (*HtDiffCallback) (void *arg, int part, HtDiffKind kind, Datum pa, Datum pb,
								bytea *key);

/*
 * Walk local and remote trees of a partition, calling fn for each
 * difference: the top hashes (1 round trip), then ht_compare_walk.  Needs
 * an SPI connection.
 */
extern void ht_compare(int part, HtPeer *peer, HtDiffCallback fn, void *arg);

/*
 * Walk the trees of several partitions whose top hashes differ, all
 * together: per depth of the tree of trees, two round trips for every
 * differing tree of every partition, two levels each (at most 6).
 * Needs an SPI connection.
 */
extern void ht_compare_walk(HtPeer *peer, int nparts, const int *parts,
							HtDiffCallback fn, void *arg);

/*
 * A partition whose prefix trees' entries (depths 0 and 1, as
 * ht_store_prefix_entries reads them, cut to HT_COMPARE_HASH_BYTES) are
 * known on both sides: nlocal or nremote -1 when not known.
 */
typedef struct HtComparePart
{
	int			part;
	int			nlocal;
	HtPrefixEntry *local;
	int			nremote;
	HtPrefixEntry *remote;
} HtComparePart;

/*
 * ht_compare_walk, but the prefix trees of the partitions whose entries
 * are known are compared from them, without a round trip: only their
 * differing leaf trees are walked (2 round trips, with those of the
 * partitions walked from the root).  tail (NULL: none), a statement that
 * must run on the peer after the walk, is sent in the round trip of the
 * walk's last request when there is one: then its result (tail_ncols
 * columns) is returned, else NULL and the caller sends it.  Needs an SPI
 * connection.
 */
extern HtRemoteResult *ht_compare_walk_prefixed(HtPeer *peer, int nparts,
												const HtComparePart *parts,
												HtDiffCallback fn, void *arg,
												const HtPeerStatement *tail,
												int tail_ncols);

/*
 * The top hash of a partition's root on this node, its first hash_bytes
 * bytes (NULL: no entries), as the walk compares it.  Needs an SPI
 * connection.
 */
extern bytea *ht_compare_top(int part, int hash_bytes);

#endif							/* HT_COMPARE_H */
