/*-------------------------------------------------------------------------
 *
 * linhash.c
 *	  Linear hashing (mnesia_frag_hash): state transitions, fragment of a
 *	  hash, partition bounds.  See linhash.h.
 *
 * The transitions restate mnesia's: add_frag splits fragment P into P and
 * N+1 and advances P (wrapping to 1 with L+1 after the last fragment of a
 * round); del_frag is its exact inverse, merging N back into the fragment
 * it came from.  The regression test 09_frag_state compares every step
 * from 1 to 64 fragments and back with the closed forms, and with the
 * table recorded from the real mnesia.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "port/pg_bitutils.h"

#include "linhash.h"

HtLinState
ht_lin_state(int32 n)
{
	HtLinState	s;

	Assert(n >= 1);
	s.n = n;
	s.l = pg_leftmost_one_pos32((uint32) n);
	s.p = n - (1 << s.l) + 1;
	return s;
}

bool
ht_lin_valid(const HtLinState *s)
{
	return s->n >= 1 && s->n <= HT_MAX_FRAGMENTS && s->l >= 0 && s->l < 31 &&
		s->p >= 1 && s->p <= (1 << s->l) && s->n == (1 << s->l) + s->p - 1;
}

HtLinState
ht_lin_add(const HtLinState *s, int32 *iter, int32 *lock)
{
	HtLinState	r;

	*iter = s->p;
	*lock = s->n + 1;
	r.n = s->n + 1;
	if (s->p == (1 << s->l))
	{
		/* the last fragment of the round: a doubling is complete */
		r.l = s->l + 1;
		r.p = 1;
	}
	else
	{
		r.l = s->l;
		r.p = s->p + 1;
	}
	return r;
}

HtLinState
ht_lin_del(const HtLinState *s, int32 *iter, int32 *lock)
{
	HtLinState	r;

	Assert(s->n > 1);
	*iter = s->n;
	if (s->p - 1 < 1)
	{
		r.l = s->l - 1;
		r.p = 1 << r.l;
	}
	else
	{
		r.l = s->l;
		r.p = s->p - 1;
	}
	r.n = s->n - 1;
	*lock = r.p;
	return r;
}

int32
ht_lin_frag(int32 n, uint64 hash)
{
	int			l = pg_leftmost_one_pos32((uint32) n);
	uint64		a = hash & ((UINT64CONST(1) << (l + 1)) - 1);

	/* a is 0-based: fragment a + 1, folded back when it does not exist yet */
	if (a + 1 > (uint64) n)
		a -= UINT64CONST(1) << l;
	return (int32) a + 1;
}

void
ht_lin_bound(const HtLinState *s, int32 k, int32 *modulus, int32 *remainder)
{
	bool		split = (k < s->p || k > (1 << s->l));

	*modulus = split ? (1 << (s->l + 1)) : (1 << s->l);
	*remainder = k - 1;
}
