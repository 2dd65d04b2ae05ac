/*-------------------------------------------------------------------------
 *
 * treemath.c
 *	  Geometry, canonical digests and 256-bit sums of the tree of trees.
 *
 * Node hashes are sums modulo 2^256 of SHA-256 digests of their children
 * (an additive multiset hash, as in the "tictac" trees of Riak's newer
 * anti-entropy): a child's change is folded into its parent by subtracting
 * the digest of its old hash and adding the digest of its new one, without
 * reading its siblings.  The sum of an empty set is zero, and a zero sum is
 * never stored ("empty children are not stored").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "lib/stringinfo.h"
#include "port/pg_bswap.h"
#include "utils/resowner.h"

#include "treemath.h"

/* root 65,536 / 256, prefix trees 262,144 / 512, leaf trees 1,048,576 / 1024 */
const HtGeometry ht_geometry[HT_NDEPTHS] = {
	{16, 8},
	{18, 9},
	{20, 10},
};

int64
ht_buckets_at_level(int depth, int level)
{
	if (level == HT_LEVELS)
		return HT_SEGMENTS(depth) / HT_WIDTH(depth);
	return 1;
}

void
ht_check_level_bucket(int depth, int level, int64 bucket)
{
	int64		nb;

	if (level < 1 || level > HT_LEVELS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("level must be between 1 and %d, not %d", HT_LEVELS, level)));
	nb = ht_buckets_at_level(depth, level);
	if (bucket < 0 || bucket >= nb)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("bucket " INT64_FORMAT " does not exist at level %d", bucket, level),
				 errdetail("Level %d of this tree has buckets 0 to " INT64_FORMAT ".",
						   level, nb - 1)));
}

void
ht_check_segment(int depth, int64 seg)
{
	if (seg < 0 || seg >= HT_SEGMENTS(depth))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("segment " INT64_FORMAT " does not exist", seg),
				 errdetail("This tree has segments 0 to " INT64_FORMAT ".",
						   HT_SEGMENTS(depth) - 1)));
}

void
ht_sum_add(HtSum *acc, const HtSum *x)
{
	uint64		carry = 0;

	for (int i = 0; i < 4; i++)
	{
		uint64		a = acc->limb[i];
		uint64		s = a + x->limb[i];
		uint64		c1 = (s < a);
		uint64		t = s + carry;
		uint64		c2 = (t < s);

		acc->limb[i] = t;
		carry = c1 | c2;
	}
}

void
ht_sum_sub(HtSum *acc, const HtSum *x)
{
	uint64		borrow = 0;

	for (int i = 0; i < 4; i++)
	{
		uint64		a = acc->limb[i];
		uint64		d = a - x->limb[i];
		uint64		b1 = (a < x->limb[i]);
		uint64		t = d - borrow;
		uint64		b2 = (d < borrow);

		acc->limb[i] = t;
		borrow = b1 | b2;
	}
}

void
ht_sum_from_bytes(HtSum *s, const uint8 *bytes)
{
	for (int i = 0; i < 4; i++)
	{
		uint64		v;

		memcpy(&v, bytes + 8 * (3 - i), 8);
		s->limb[i] = pg_ntoh64(v);
	}
}

void
ht_sum_to_bytes(const HtSum *s, uint8 *bytes)
{
	for (int i = 0; i < 4; i++)
	{
		uint64		v = pg_hton64(s->limb[i]);

		memcpy(bytes + 8 * (3 - i), &v, 8);
	}
}

bytea *
ht_sum_to_bytea(const HtSum *s)
{
	bytea	   *b;

	if (ht_sum_is_zero(s))
		return NULL;
	b = (bytea *) palloc(VARHDRSZ + HT_DIGEST_LEN);
	SET_VARSIZE(b, VARHDRSZ + HT_DIGEST_LEN);
	ht_sum_to_bytes(s, (uint8 *) VARDATA(b));
	return b;
}

void
ht_sum_from_bytea(HtSum *s, const bytea *b)
{
	if (b == NULL)
	{
		ht_sum_zero(s);
		return;
	}
	if (VARSIZE_ANY_EXHDR(b) != HT_DIGEST_LEN)
		elog(ERROR, "hashtree: stored node hash has %d bytes, expected %d",
			 (int) VARSIZE_ANY_EXHDR(b), HT_DIGEST_LEN);
	ht_sum_from_bytes(s, (const uint8 *) VARDATA_ANY(b));
}

void
ht_subs_decode(const bytea *b, HtSum *sums, int nsubs)
{
	const uint8 *p = (const uint8 *) VARDATA_ANY(b);
	int			len = VARSIZE_ANY_EXHDR(b);

	Assert(nsubs <= 256);
	for (int i = 0; i < nsubs; i++)
		ht_sum_zero(&sums[i]);
	if (len % HT_SUBS_ITEM != 0)
		elog(ERROR, "hashtree: stored sub-bucket hashes have %d bytes, not a multiple of %d",
			 len, HT_SUBS_ITEM);
	for (int off = 0; off < len; off += HT_SUBS_ITEM)
	{
		if (p[off] >= nsubs || (off > 0 && p[off] <= p[off - HT_SUBS_ITEM]))
			elog(ERROR, "hashtree: stored sub-bucket hashes are out of order");
		ht_sum_from_bytes(&sums[p[off]], p + off + 1);
	}
}

bytea *
ht_subs_add(const bytea *b, const int *idx, const HtSum *deltas, int n, int nsubs)
{
	const uint8 *p = (const uint8 *) VARDATA_ANY(b);
	int			len = VARSIZE_ANY_EXHDR(b);
	bytea	   *out = palloc(VARHDRSZ + len + n * HT_SUBS_ITEM);
	uint8	   *o = (uint8 *) VARDATA(out);
	int			olen = 0;
	int			off = 0;
	int			d = 0;

	if (len % HT_SUBS_ITEM != 0)
		elog(ERROR, "hashtree: stored sub-bucket hashes have %d bytes, not a multiple of %d",
			 len, HT_SUBS_ITEM);
	while (off < len || d < n)
	{
		int			at = off < len ? p[off] : nsubs;
		HtSum		sum;

		if (off < len && (at >= nsubs || (off > 0 && at <= p[off - HT_SUBS_ITEM])))
			elog(ERROR, "hashtree: stored sub-bucket hashes are out of order");
		if (d < n && idx[d] < at)
		{
			/* a sub-bucket the list does not hold yet */
			sum = deltas[d++];
			at = idx[d - 1];
		}
		else if (d < n && idx[d] == at)
		{
			ht_sum_from_bytes(&sum, p + off + 1);
			ht_sum_add(&sum, &deltas[d++]);
			off += HT_SUBS_ITEM;
		}
		else
		{
			memcpy(o + olen, p + off, HT_SUBS_ITEM);
			olen += HT_SUBS_ITEM;
			off += HT_SUBS_ITEM;
			continue;
		}
		if (ht_sum_is_zero(&sum))
			continue;
		o[olen] = (uint8) at;
		ht_sum_to_bytes(&sum, o + olen + 1);
		olen += HT_SUBS_ITEM;
	}
	SET_VARSIZE(out, VARHDRSZ + olen);
	return out;
}

#ifdef USE_OPENSSL
/*
 * With OpenSSL (Debian's server is built with it): its SHA-256 functions
 * directly.  Through pg_cryptohash (EVP) every digest would also pay for
 * an implicit algorithm fetch, with a lock, in OpenSSL 3: more than the
 * hashing of a short input itself; a track() computes three per row.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/sha.h>

void
ht_sha256(const void *a, size_t alen, const void *b, size_t blen,
		  const void *c, size_t clen, uint8 *out)
{
	SHA256_CTX	ctx;

	if (SHA256_Init(&ctx) != 1 ||
		(alen > 0 && SHA256_Update(&ctx, a, alen) != 1) ||
		(blen > 0 && SHA256_Update(&ctx, b, blen) != 1) ||
		(clen > 0 && SHA256_Update(&ctx, c, clen) != 1) ||
		SHA256_Final(out, &ctx) != 1)
		elog(ERROR, "hashtree: could not compute a SHA-256 digest");
}

#else							/* !USE_OPENSSL */

/*
 * One SHA-256 context for the life of the backend.  pg_cryptohash_create()
 * registers the context with CurrentResourceOwner, so it is created under a
 * private resource owner that is never released; creating a context per
 * digest would cost more than the digest itself.
 */
static pg_cryptohash_ctx *sha_ctx = NULL;

static pg_cryptohash_ctx *
sha_context(void)
{
	static ResourceOwner sha_owner = NULL;
	ResourceOwner saved;

	if (sha_ctx != NULL)
		return sha_ctx;

	if (sha_owner == NULL)
		sha_owner = ResourceOwnerCreate(NULL, "hashtree digests");
	saved = CurrentResourceOwner;
	CurrentResourceOwner = sha_owner;
	sha_ctx = pg_cryptohash_create(PG_SHA256);
	CurrentResourceOwner = saved;
	if (sha_ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	return sha_ctx;
}

void
ht_sha256(const void *a, size_t alen, const void *b, size_t blen,
		  const void *c, size_t clen, uint8 *out)
{
	pg_cryptohash_ctx *ctx = sha_context();

	if (pg_cryptohash_init(ctx) < 0 ||
		(alen > 0 && pg_cryptohash_update(ctx, a, alen) < 0) ||
		(blen > 0 && pg_cryptohash_update(ctx, b, blen) < 0) ||
		(clen > 0 && pg_cryptohash_update(ctx, c, clen) < 0) ||
		pg_cryptohash_final(ctx, out, HT_DIGEST_LEN) < 0)
		elog(ERROR, "hashtree: could not compute SHA-256 digest: %s",
			 pg_cryptohash_error(ctx));
}
#endif							/* USE_OPENSSL */

void
ht_entry_digest(const char *key, int keylen, const char *hash, int hashlen,
				HtSum *out)
{
	uint8		head[5];
	uint32		len = pg_hton32((uint32) keylen);
	uint8		d[HT_DIGEST_LEN];

	head[0] = 0x01;
	memcpy(head + 1, &len, 4);
	ht_sha256(head, sizeof(head), key, keylen, hash, hashlen, d);
	ht_sum_from_bytes(out, d);
}

void
ht_child_digest(int64 child, const char *hash, int hashlen, HtSum *out)
{
	uint8		head[9];
	uint64		c = pg_hton64((uint64) child);
	uint8		d[HT_DIGEST_LEN];

	head[0] = 0x03;
	memcpy(head + 1, &c, 8);
	ht_sha256(head, sizeof(head), hash, hashlen, NULL, 0, d);
	ht_sum_from_bytes(out, d);
}

void
ht_child_term(int64 child, const HtSum *h, HtSum *out)
{
	uint8		bytes[HT_DIGEST_LEN];

	if (ht_sum_is_zero(h))
	{
		ht_sum_zero(out);
		return;
	}
	ht_sum_to_bytes(h, bytes);
	ht_child_digest(child, (const char *) bytes, HT_DIGEST_LEN, out);
}

uint64
ht_key_hash64(const char *key, int keylen)
{
	uint8		d[HT_DIGEST_LEN];
	uint64		v;

	ht_sha256(key, keylen, NULL, 0, NULL, 0, d);
	memcpy(&v, d, 8);
	return pg_ntoh64(v);
}

int32
ht_segment_of(int depth, const char *key, int keylen)
{
	return (int32) (ht_key_hash64(key, keylen) & (uint64) (HT_SEGMENTS(depth) - 1));
}

int
ht_partition_for(const char *pa, int palen, const char *pb, int pblen,
				 const char *key, int keylen, int npartitions)
{
	char		stackbuf[256];
	char	   *head = stackbuf;
	int			headlen = 1 + 4 + palen + 4 + pblen;
	uint8		d[HT_DIGEST_LEN];
	uint32		len;
	uint64		v;

	/* 0x02 u32 len prefix_a u32 len prefix_b, then the key */
	if (headlen > (int) sizeof(stackbuf))
		head = palloc(headlen);
	head[0] = 0x02;
	len = pg_hton32((uint32) palen);
	memcpy(head + 1, &len, 4);
	memcpy(head + 5, pa, palen);
	len = pg_hton32((uint32) pblen);
	memcpy(head + 5 + palen, &len, 4);
	memcpy(head + 9 + palen, pb, pblen);
	ht_sha256(head, headlen, key, keylen, NULL, 0, d);
	if (head != stackbuf)
		pfree(head);
	memcpy(&v, d, 8);
	return (int) (pg_ntoh64(v) % (uint64) npartitions);
}

bytea *
ht_key_identity(const char *key, int keylen)
{
	bytea	   *kid;

	if (keylen <= HT_KID_INLINE_MAX)
	{
		kid = (bytea *) palloc(VARHDRSZ + keylen);
		SET_VARSIZE(kid, VARHDRSZ + keylen);
		memcpy(VARDATA(kid), key, keylen);
	}
	else
	{
		char	   *p;

		kid = (bytea *) palloc(VARHDRSZ + 32 + HT_DIGEST_LEN + 1);
		SET_VARSIZE(kid, VARHDRSZ + 32 + HT_DIGEST_LEN + 1);
		p = VARDATA(kid);
		memcpy(p, key, 32);
		ht_sha256(key, keylen, NULL, 0, NULL, 0, (uint8 *) p + 32);
		p[32 + HT_DIGEST_LEN] = 0;
	}
	return kid;
}

/* ---- varints ------------------------------------------------------------- */

void
ht_put_varint(StringInfo buf, uint64 v)
{
	while (v >= 0x80)
	{
		appendStringInfoChar(buf, (char) ((v & 0x7f) | 0x80));
		v >>= 7;
	}
	appendStringInfoChar(buf, (char) v);
}

bool
ht_get_varint(const uint8 **p, const uint8 *end, uint64 *v)
{
	uint64		r = 0;

	for (int shift = 0; shift < 64 && *p < end; shift += 7)
	{
		uint8		b = *(*p)++;

		r |= (uint64) (b & 0x7f) << shift;
		if ((b & 0x80) == 0)
		{
			*v = r;
			return true;
		}
	}
	return false;
}

/* ---- key order ------------------------------------------------------------ */

int
ht_bytea_cmp(const bytea *a, const bytea *b)
{
	int			la = VARSIZE_ANY_EXHDR(a);
	int			lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

int
ht_bytea_ptr_cmp(const void *a, const void *b)
{
	return ht_bytea_cmp(*(bytea *const *) a, *(bytea *const *) b);
}
