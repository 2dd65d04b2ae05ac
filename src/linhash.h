/*-------------------------------------------------------------------------
 *
 * linhash.h
 *	  Linear hashing as mnesia_frag_hash does it: the state (N, P, L), its
 *	  transitions, and the fragment of a hash value.  Pure functions.
 *
 * N fragments numbered 1..N, L completed doublings, P the next fragment to
 * split; always N = 2^L + P - 1 with 1 <= P <= 2^L.  Fragment k is the
 * hash partition (MODULUS 2^(L+1), REMAINDER k-1) when k < P or k > 2^L,
 * else (MODULUS 2^L, REMAINDER k-1).
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_LINHASH_H
#define HT_LINHASH_H

#include "postgres.h"

/* fragments of one table, at most (moduli stay below 2^31) */
#define HT_MAX_FRAGMENTS	65536

typedef struct HtLinState
{
	int32		n;				/* n_fragments */
	int32		p;				/* next_n_to_split */
	int32		l;				/* n_doubles */
} HtLinState;

/* the state of n fragments (the state is a function of n alone) */
extern HtLinState ht_lin_state(int32 n);

/* does s satisfy N = 2^L + P - 1, 1 <= P <= 2^L? */
extern bool ht_lin_valid(const HtLinState *s);

/* add_frag: the new state; iter = the fragment split, lock = the new one */
extern HtLinState ht_lin_add(const HtLinState *s, int32 *iter, int32 *lock);

/*
 * del_frag (N > 1): the new state; iter = N (emptied and dropped),
 * lock = the fragment it merges into
 */
extern HtLinState ht_lin_del(const HtLinState *s, int32 *iter, int32 *lock);

/* fragment (1-based) of a 64-bit hash value among n fragments */
extern int32 ht_lin_frag(int32 n, uint64 hash);

/* the hash partition bound of fragment k (1-based) in state s */
extern void ht_lin_bound(const HtLinState *s, int32 k, int32 *modulus, int32 *remainder);

#endif							/* HT_LINHASH_H */
