/*-------------------------------------------------------------------------
 *
 * aggregates.c
 *	  The SQL functions the extension's own statements and indexes use:
 *	  _kid (the index identity of a key) and the aggregates _entry_sum,
 *	  _child_sum and _hash_sum, which compute in SQL the same 256-bit sums
 *	  the incremental update computes in C (treemath.c), for the rebuild,
 *	  check_tree and the update's segment recomputation.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "treemath.h"

/*
 * hashtree._kid(key bytea) RETURNS bytea
 * The index identity of a key: the key itself up to 64 bytes, else a digest
 * form (last column of the unique index entry_key).  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_kid);
Datum
ht_kid(PG_FUNCTION_ARGS)
{
	bytea	   *key = PG_GETARG_BYTEA_PP(0);

	PG_RETURN_BYTEA_P(ht_key_identity(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)));
}

static HtSum *
sum_state(FunctionCallInfo fcinfo)
{
	MemoryContext aggctx;

	if (!AggCheckCallContext(fcinfo, &aggctx))
		elog(ERROR, "hashtree: aggregate step called in non-aggregate context");
	if (PG_ARGISNULL(0))
		return MemoryContextAllocZero(aggctx, sizeof(HtSum));
	return (HtSum *) PG_GETARG_POINTER(0);
}

/*
 * hashtree._entry_sum_step(internal, bytea, bytea) RETURNS internal
 * Transition function of the aggregate _entry_sum(key, hash): adds the
 * digest of one entry to the running sum; a NULL key or hash is skipped.
 * Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_entry_sum_step);
Datum
ht_entry_sum_step(PG_FUNCTION_ARGS)
{
	HtSum	   *st = sum_state(fcinfo);

	if (!PG_ARGISNULL(1) && !PG_ARGISNULL(2))
	{
		bytea	   *key = PG_GETARG_BYTEA_PP(1);
		bytea	   *hash = PG_GETARG_BYTEA_PP(2);
		HtSum		d;

		ht_entry_digest(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
						VARDATA_ANY(hash), VARSIZE_ANY_EXHDR(hash), &d);
		ht_sum_add(st, &d);
	}
	PG_RETURN_POINTER(st);
}

/*
 * hashtree._child_sum_step(internal, bigint, bytea) RETURNS internal
 * Transition function of the aggregate _child_sum(child, hash): adds the
 * digest of one child node to the running sum; a NULL child or hash is
 * skipped.  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_child_sum_step);
Datum
ht_child_sum_step(PG_FUNCTION_ARGS)
{
	HtSum	   *st = sum_state(fcinfo);

	if (!PG_ARGISNULL(1) && !PG_ARGISNULL(2))
	{
		bytea	   *hash = PG_GETARG_BYTEA_PP(2);
		HtSum		d;

		ht_child_digest(PG_GETARG_INT64(1), VARDATA_ANY(hash),
						VARSIZE_ANY_EXHDR(hash), &d);
		ht_sum_add(st, &d);
	}
	PG_RETURN_POINTER(st);
}

/*
 * hashtree._hash_sum_step(internal, bytea) RETURNS internal
 * Transition function of the aggregate _hash_sum(hash): adds a node hash
 * (a sum already) to the running sum; NULL is skipped.  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_hash_sum_step);
Datum
ht_hash_sum_step(PG_FUNCTION_ARGS)
{
	HtSum	   *st = sum_state(fcinfo);

	if (!PG_ARGISNULL(1))
	{
		HtSum		d;

		ht_sum_from_bytea(&d, PG_GETARG_BYTEA_PP(1));
		ht_sum_add(st, &d);
	}
	PG_RETURN_POINTER(st);
}

/*
 * hashtree._sum_final(internal) RETURNS bytea
 * Final function of _entry_sum and _child_sum: the node hash of the sum,
 * NULL for no rows or a zero (empty) sum.  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_sum_final);
Datum
ht_sum_final(PG_FUNCTION_ARGS)
{
	bytea	   *b;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	b = ht_sum_to_bytea((HtSum *) PG_GETARG_POINTER(0));
	if (b == NULL)
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(b);
}
