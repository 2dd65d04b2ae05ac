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
#include "storage/fileset.h"

#include "treemath.h"

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
 * A parallel re-hash (rehash.c): the builder of the backend that writes
 * the packs shares a set of files (deleted with the builder) in which the
 * workers' builders, made with the same partition count and span, write
 * their sorted runs; the backend then takes them into its merge.  Every
 * builder's memory is given explicitly (the participants share
 * maintenance_work_mem).
 */
extern int	ht_pack_build_span(HtPackBuild *b);
extern void ht_pack_build_limit(HtPackBuild *b, Size limit);
extern FileSet *ht_pack_build_fileset(HtPackBuild *b);
/* a number for the next parallel scan feeding b (its runs' names: one set per table scanned) */
extern int	ht_pack_build_next_scan(HtPackBuild *b);
extern void ht_pack_build_add_runs(HtPackBuild *b, const char *runname, int nruns);
extern HtPackBuild *ht_pack_build_begin_runs(int part, int nparts, int span, Size limit,
											 FileSet *fileset, const char *runname);
/* a worker's builder: its last run written; returns the number of runs */
extern int	ht_pack_build_end_runs(HtPackBuild *b);

/*
 * The change of one level-3 bucket's hash (a level-2 child) of leaf tree
 * (pa, pb) made by rewriting its packs: segments covered by packs have no
 * node rows (their hashes are computed from the packs), so the fold hands
 * these deltas to the update instead of logging dirty segments.
 */
typedef struct HtBucketDelta
{
	text	   *pa;
	text	   *pb;
	int64		bucket;
	HtSum		delta;
	int64		dn;				/* change of the entry count */
	int32		sub;			/* the pack's sub-bucket (lo >> HT_SUB_BITS, a
								 * number in the tree) when the pack is one: a
								 * tree whose level-2 rows keep their
								 * sub-buckets' hashes (§2); else -1 */
} HtBucketDelta;

/*
 * SQL: the sub-bucket hashes that the level-2 row of bucket b of leaf tree
 * (pa, pb) in partition part keeps (node.subs, §2, ht_subs_decode), when
 * its packs cover (a part of) one sub-bucket each: for each sub-bucket
 * with packs, one byte of its index in the bucket and the sum of its
 * packs' stored terms (which is the sub-bucket's hash), by index; NULL when
 * there are none or the packs are wider.  wbits: the width bits of a leaf
 * bucket.  The arguments are SQL expressions.  (One probe first: the tree's
 * packs are all of one span.)
 */
#define HT_SUBS_SQL(part, pa, pb, b, wbits) \
	"CASE WHEN (SELECT q.span FROM hashtree.entry_pack q WHERE q.part = " part \
	" AND q.pa = " pa " AND q.pb = " pb " LIMIT 1) <= " CppAsString2(HT_SUB_SPAN) " THEN" \
	" (SELECT string_agg(set_byte(decode('00', 'hex'), 0, g.i) || g.h, ''::bytea ORDER BY g.i)" \
	" FROM (SELECT (p.lo >> " CppAsString2(HT_SUB_BITS) ")" \
	" & ((1 << (" wbits " - " CppAsString2(HT_SUB_BITS) ")) - 1) AS i, hashtree._hash_sum(p.sum) AS h" \
	" FROM hashtree.entry_pack p WHERE p.part = " part " AND p.pa = " pa " AND p.pb = " pb \
	" AND p.span <= " CppAsString2(HT_SUB_SPAN) " AND p.lo >= (" b " << " wbits ")" \
	" AND p.lo < ((" b " + 1) << " wbits ") AND p.sum IS NOT NULL GROUP BY 1) g) END"

typedef struct HtBucketDeltas
{
	MemoryContext cxt;			/* where the deltas and their names live */
	int			n;
	int			cap;
	HtBucketDelta *d;
} HtBucketDeltas;

/* what ht_pack_apply saw of a tree's packs (added to) */
typedef struct HtPackApplyStats
{
	int64		packs;			/* packs read */
	int64		entries;		/* their entries before the changes */
	int64		outside;		/* changes of segments no pack covers */
	int			span;			/* the tree's span, 0: no packs */
} HtPackApplyStats;

/*
 * Apply changes to the packs of tree (pa, pb) in partition part: entries
 * written or deleted; the resulting change of each bucket's hash is
 * appended to deltas.  Changes of segments no pack covers are copied to
 * rest (room for n) and their number returned: they go to hashtree.entry.
 */
extern int	ht_pack_apply(int part, text *pa, text *pb, HtPackEntry *changes, int n,
						  HtPackEntry *rest, HtBucketDeltas *deltas,
						  HtPackApplyStats *stats);

/*
 * Should the entries of a tree in a partition be packed again, with a span
 * fit for their number, after a fold that saw stats?  (The table grew or
 * shrank far from the size its packs were made for, or many of its new
 * entries fall where no pack is.)
 */
extern bool ht_pack_needs_repack(const HtPackApplyStats *stats);

/* add every packed entry of tree (pa, pb) in partition part to b */
extern int64 ht_pack_feed(int part, text *pa, text *pb, HtPackBuild *b);

/* the span ht_pack_build_begin would choose for est_rows rows in all */
extern int	ht_pack_span_for(double est_rows);

/* a child of a leaf tree's level 3 or HT_LEVEL_SUB and its hash */
typedef struct HtChildSum
{
	int64		child;
	HtSum		sum;
} HtChildSum;

/* append (child, sum) to *out (grown as needed; *cap its room) unless sum is zero */
extern int	ht_child_put(HtChildSum **out, int n, int *cap, int64 child, const HtSum *sum);

/*
 * The children first .. first + span - 1 of level 3 (segments) or
 * HT_LEVEL_SUB (sub-buckets) of leaf tree (pa, pb) in partition part that
 * packs cover, computed from the packs, in child order, appended to *out
 * (grown as needed; *cap its room); returns the new length.  A sub-bucket
 * lies in one pack or in none, so these never meet node rows.  The reader
 * (open for a batch of requests) keeps the pack table open and the span
 * of the last tree asked.
 */
typedef struct HtPackReader HtPackReader;
extern HtPackReader *ht_pack_reader_open(void);
extern void ht_pack_reader_close(HtPackReader *r);
extern int	ht_pack_children(HtPackReader *r, int part, Datum pa, Datum pb, int level,
							 int64 first, int64 span, HtChildSum **out, int nout, int *cap);
/* the span of the tree's packs in the partition, <= 0 when it has none */
extern int32 ht_pack_reader_span(HtPackReader *r, int part, Datum pa, Datum pb);

/*
 * The packed entries of segments segs[0..n-1] of the trees (pa[i], pb[i])
 * in partition part, appended to *out (grown as needed; *cap its room,
 * *nout its length); owner[] receives i + 1 for each entry.
 */
extern void ht_pack_segments(int part, int n, Datum *pa, Datum *pb, const int32 *segs,
							 HtPackEntry **out, int **owner, int *nout, int *cap);

#endif							/* HT_PACK_H */
