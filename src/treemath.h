/*-------------------------------------------------------------------------
 *
 * treemath.h
 *	  Tree maths: geometry of the tree of trees, the canonical digests, the
 *	  key-to-segment and key-to-partition functions, and 256-bit sums.
 *
 * Every function here is a pure function of its input bytes, identical on
 * every node and platform.  The definitions are spelled out in
 * docs/DESIGN.md ("Canonical hashing"); a regression test recomputes them
 * with core SQL (sha256()).
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_TREEMATH_H
#define HT_TREEMATH_H

#include "postgres.h"

#include "lib/stringinfo.h"

/* depth of a tree in the tree of trees */
#define HT_DEPTH_ROOT	0		/* entries: prefix_a -> top of tree {a} */
#define HT_DEPTH_PREFIX 1		/* entries: prefix_b -> top of tree {a,b} */
#define HT_DEPTH_LEAF	2		/* entries: user key -> user hash */
#define HT_NDEPTHS		3

/* every tree has 3 levels: 1 (top), 2, 3 (children are segments) */
#define HT_LEVELS		3

/*
 * Sub-buckets: stored between levels 2 and 3 (as node level 4), the sums
 * of the same child digests as a level-2 row, over 32 segments instead of
 * a whole bucket.  Not part of plum_db's trees (get_bucket does not show
 * them); they let a compare read 32 segments of a differing bucket instead
 * of all of them.
 */
#define HT_LEVEL_SUB	4
#define HT_SUB_BITS		5
#define HT_SUB_SPAN		(1 << HT_SUB_BITS)	/* segments per sub-bucket */
#define HT_SUBS_PER_BUCKET(depth) (1 << (ht_geometry[(depth)].width_bits - HT_SUB_BITS))

#define HT_DIGEST_LEN	32		/* SHA-256 */

/* plum_db's geometry, per depth: segments = 2^seg_bits, width = 2^width_bits */
typedef struct HtGeometry
{
	int			seg_bits;
	int			width_bits;
} HtGeometry;

extern const HtGeometry ht_geometry[HT_NDEPTHS];

#define HT_SEGMENTS(depth)	(INT64CONST(1) << ht_geometry[(depth)].seg_bits)
#define HT_WIDTH(depth)		(INT64CONST(1) << ht_geometry[(depth)].width_bits)

/* number of buckets that exist at a level (level 1 and 2 have one) */
extern int64 ht_buckets_at_level(int depth, int level);

/*
 * ERROR (invalid parameter value) unless bucket exists at level 1..3 of a
 * tree of that depth, or seg is one of its segments
 */
extern void ht_check_level_bucket(int depth, int level, int64 bucket);
extern void ht_check_segment(int depth, int64 seg);

/*
 * A 256-bit unsigned integer modulo 2^256, four 64-bit limbs, least
 * significant first.  Node hashes are sums of digests: adding and
 * subtracting children is what makes an update O(changed segments).
 */
typedef struct HtSum
{
	uint64		limb[4];
} HtSum;

static inline void
ht_sum_zero(HtSum *s)
{
	s->limb[0] = s->limb[1] = s->limb[2] = s->limb[3] = 0;
}

static inline bool
ht_sum_is_zero(const HtSum *s)
{
	return (s->limb[0] | s->limb[1] | s->limb[2] | s->limb[3]) == 0;
}

extern void ht_sum_add(HtSum *acc, const HtSum *x);
extern void ht_sum_sub(HtSum *acc, const HtSum *x);

/* conversion to and from the stored form: 32 bytes, big-endian */
extern void ht_sum_from_bytes(HtSum *s, const uint8 *bytes);
extern void ht_sum_to_bytes(const HtSum *s, uint8 *bytes);
extern bytea *ht_sum_to_bytea(const HtSum *s);	/* NULL when zero */
extern void ht_sum_from_bytea(HtSum *s, const bytea *b);	/* NULL -> zero */

/*
 * The sub-bucket hashes a level-2 row of a big packed leaf tree keeps
 * (node.subs, §2): for each non-zero one, in ascending order, its index in
 * the bucket (one byte) and its 32 bytes.  Decoded into nsubs sums (the
 * absent ones zero).
 */
#define HT_SUBS_ITEM	(1 + HT_DIGEST_LEN)
extern void ht_subs_decode(const bytea *b, HtSum *sums, int nsubs);

/*
 * The list b with deltas[i] added to the hash of sub-bucket idx[i] (idx
 * ascending, distinct, < nsubs): only those are converted, the other items
 * are copied as they are
 */
extern bytea *ht_subs_add(const bytea *b, const int *idx, const HtSum *deltas, int n, int nsubs);

/* SHA-256 over up to three byte strings, with a long-lived context */
extern void ht_sha256(const void *a, size_t alen, const void *b, size_t blen,
					  const void *c, size_t clen, uint8 *out);

/* digest of a segment entry: SHA-256(0x01 || u32be(len key) || key || hash) */
extern void ht_entry_digest(const char *key, int keylen,
							const char *hash, int hashlen, HtSum *out);

/* digest of a child: SHA-256(0x03 || u64be(child) || hash) */
extern void ht_child_digest(int64 child, const char *hash, int hashlen,
							HtSum *out);

/* a child's term in its parent's sum: C(child, h), zero for a zero h */
extern void ht_child_term(int64 child, const HtSum *h, HtSum *out);

/* 64-bit key hash: first 8 bytes of SHA-256(key), big-endian */
extern uint64 ht_key_hash64(const char *key, int keylen);

/* segment of a key in a tree of the given depth */
extern int32 ht_segment_of(int depth, const char *key, int keylen);

/*
 * partition of a leaf entry:
 * u64be(SHA-256(0x02 || u32be(|a|) || a || u32be(|b|) || b || key)[0..8]) mod N,
 * a and b in UTF-8
 */
extern int	ht_partition_for(const char *pa, int palen, const char *pb, int pblen,
							 const char *key, int keylen, int npartitions);

/*
 * Index identity of a key (the unique index of hashtree.entry is on it):
 * the key itself up to 64 bytes, else 65 bytes: key[0..32] || SHA-256(key)
 * || 0x00, so that B-tree index tuples stay small for keys up to 1 MB.
 */
#define HT_KID_INLINE_MAX	64
extern bytea *ht_key_identity(const char *key, int keylen);

/* the order of ORDER BY on bytea: bytes, then length */
extern int	ht_bytea_cmp(const bytea *a, const bytea *b);

/* the same for qsort over an array of bytea pointers */
extern int	ht_bytea_ptr_cmp(const void *a, const void *b);

/*
 * Unsigned integers in 7-bit groups, low group first, the high bit of each
 * byte set when another follows (the compact form of the gaps between
 * children in hashtree._nodes).  ht_get_varint returns false on a
 * truncated or overlong value.
 */
extern void ht_put_varint(StringInfo buf, uint64 v);
extern bool ht_get_varint(const uint8 **p, const uint8 *end, uint64 *v);

#endif							/* HT_TREEMATH_H */
