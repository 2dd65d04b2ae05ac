/*-------------------------------------------------------------------------
 *
 * pack.h
 *	  Packed leaf entries of tracked tables (hashtree.entry_pack).
 *
 * A pack holds the entries of `span` consecutive segments [lo, lo + span)
 * of one leaf tree in one partition, sorted by (segment, key).  A re-hash
 * of a tracked table writes its entries as packs (a few thousand rows for
 * a million entries, instead of a million indexed rows); the fold of its
 * logged keys rewrites the packs it changes.  An entry of a segment that
 * no pack covers is an ordinary row of hashtree.entry, so every leaf entry
 * lives in exactly one place.  See docs/DESIGN.md.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_PACK_H
#define HT_PACK_H

#include "postgres.h"

#include "lib/stringinfo.h"

/* an entry to write (hash not NULL) or delete (hash NULL), or one read */
typedef struct HtPackEntry
{
	int32		seg;
	bytea	   *key;
	bytea	   *hash;
} HtPackEntry;

/* building the packs of one tracked table (a re-hash) */
typedef struct HtPackBuild HtPackBuild;

/*
 * Start building the packs of tree (pa, pb) in partition part (< 0: all
 * partitions), for about est_rows rows in all; the existing entries and
 * packs of the tree there must have been removed.
 */
extern HtPackBuild *ht_pack_build_begin(text *pa, text *pb, int part, double est_rows);
extern void ht_pack_build_add(HtPackBuild *b, int part, int32 seg,
							  const char *key, int keylen,
							  const char *hash, int hashlen);
/* write what is left; the builder is freed */
extern void ht_pack_build_end(HtPackBuild *b);

/*
 * Apply changes to the packs of tree (pa, pb) in partition part: entries
 * written or deleted, and their segments logged as dirty when that changed
 * anything.  Changes of segments no pack covers are copied to rest (room
 * for n) and their number returned: they go to hashtree.entry.
 */
extern int	ht_pack_apply(int part, text *pa, text *pb, HtPackEntry *changes, int n,
						  HtPackEntry *rest);

/*
 * The packed entries of segments segs[0..n-1] of the trees (pa[i], pb[i])
 * in partition part, appended to *out (grown as needed; *cap its room,
 * *nout its length); owner[] receives i + 1 for each entry.
 */
extern void ht_pack_segments(int part, int n, Datum *pa, Datum *pb, const int32 *segs,
							 HtPackEntry **out, int **owner, int *nout, int *cap);

#endif							/* HT_PACK_H */
