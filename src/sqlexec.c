/*-------------------------------------------------------------------------
 *
 * sqlexec.c
 *	  Prepared statements on the extension's own tables, run through SPI.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"

#include "catalog/pg_type.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "common.h"
#include "sqlexec.h"

/*
 * Every statement runs with search_path pinned (common.h): the plan is
 * analysed, re-validated and executed under "pg_catalog, pg_temp", whoever
 * calls and whatever the caller's path.
 */
/*
 * The statements holding a kept plan, so that ht_forget_plans() finds
 * them (in TopMemoryContext; a statement is listed once).
 */
static HtQuery **kept = NULL;
static int	nkept = 0;
static int	kept_cap = 0;

static SPIPlanPtr
ht_plan(HtQuery *q)
{
	if (q->plan == NULL)
	{
		MemoryContext caller = CurrentMemoryContext;
		SPIPlanPtr	plan = SPI_prepare(q->sql, q->nargs, q->argtypes);

		if (plan == NULL)
			elog(ERROR, "hashtree: SPI_prepare failed (%s) for: %s",
				 SPI_result_code_string(SPI_result), q->sql);
		if (nkept == kept_cap)
		{
			int			cap = Max(kept_cap * 2, 64);

			kept = kept
				? repalloc(kept, sizeof(HtQuery *) * cap)
				: MemoryContextAlloc(TopMemoryContext, sizeof(HtQuery *) * cap);
			kept_cap = cap;
		}
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "hashtree: SPI_keepplan failed");
		q->plan = plan;
		kept[nkept++] = q;
		MemoryContextSwitchTo(caller);
	}
	return q->plan;
}

void
ht_forget_plans(void)
{
	for (int i = 0; i < nkept; i++)
	{
		SPIPlanPtr	plan = kept[i]->plan;

		kept[i]->plan = NULL;
		if (plan != NULL)
			SPI_freeplan(plan);
	}
	nkept = 0;
}

static char *
ht_nulls(const HtQuery *q, const bool *nulls, char *buf)
{
	if (nulls == NULL)
		return NULL;
	for (int i = 0; i < q->nargs; i++)
		buf[i] = nulls[i] ? 'n' : ' ';
	buf[q->nargs] = '\0';
	return buf;
}

uint64
ht_exec(HtQuery *q, Datum *values, const bool *nulls, long tcount)
{
	char		nbuf[HT_QUERY_MAX_ARGS + 1];
	MemoryContext caller = CurrentMemoryContext;
	int			rc;

	int			pin = ht_pin_begin();

	rc = SPI_execute_plan(ht_plan(q), values, ht_nulls(q, nulls, nbuf),
						  false, tcount);
	ht_pin_end(pin);
	/* SPI returns in its procedure context: stay in the caller's */
	MemoryContextSwitchTo(caller);
	if (rc < 0)
		elog(ERROR, "hashtree: SPI_execute_plan failed (%s) for: %s",
			 SPI_result_code_string(rc), q->sql);
	return SPI_processed;
}

uint64
ht_exec_as_owner(HtQuery *q, Datum *values, const bool *nulls, long tcount)
{
	Oid			save_user;
	int			save_sec;
	uint64		n;

	ht_as_owner_begin(&save_user, &save_sec);
	n = ht_exec(q, values, nulls, tcount);
	ht_as_owner_end(save_user, save_sec);
	return n;
}

Portal
ht_cursor(HtQuery *q, Datum *values, const bool *nulls)
{
	char		nbuf[HT_QUERY_MAX_ARGS + 1];
	MemoryContext caller = CurrentMemoryContext;
	Portal		portal;
	int			pin = ht_pin_begin();

	portal = SPI_cursor_open(NULL, ht_plan(q), values,
							 ht_nulls(q, nulls, nbuf), false);
	ht_pin_end(pin);
	MemoryContextSwitchTo(caller);
	if (portal == NULL)
		elog(ERROR, "hashtree: SPI_cursor_open failed (%s) for: %s",
			 SPI_result_code_string(SPI_result), q->sql);
	return portal;
}

uint64
ht_fetch(Portal portal, long count)
{
	MemoryContext caller = CurrentMemoryContext;
	int			pin = ht_pin_begin();

	SPI_cursor_fetch(portal, true, count);
	ht_pin_end(pin);
	MemoryContextSwitchTo(caller);
	return SPI_processed;
}

Datum
ht_col(uint64 row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc,
						 col, isnull);
}

static ArrayType *
ht_array(Datum *elems, int n, Oid type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return construct_array(elems, n, type, typlen, typbyval, typalign);
}

ArrayType *
ht_array_text(Datum *elems, int n)
{
	return ht_array(elems, n, TEXTOID);
}

ArrayType *
ht_array_bytea(Datum *elems, int n)
{
	return ht_array(elems, n, BYTEAOID);
}

ArrayType *
ht_array_int8(const int64 *elems, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	ArrayType  *a;

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(elems[i]);
	a = ht_array(d, n, INT8OID);
	pfree(d);
	return a;
}

ArrayType *
ht_array_int4(const int32 *elems, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	ArrayType  *a;

	for (int i = 0; i < n; i++)
		d[i] = Int32GetDatum(elems[i]);
	a = ht_array(d, n, INT4OID);
	pfree(d);
	return a;
}

/* ---- subtransactions ----------------------------------------------------- */

ErrorData *
ht_subxact(void (*fn) (void *arg), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_END_TRY();
	return edata;
}

/* ---- dynamic statements ---------------------------------------------------- */

uint64
ht_sql(const char *fmt,...)
{
	StringInfoData buf;
	va_list		args;
	int			rc;
	int			pin;

	initStringInfo(&buf);
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	pin = ht_pin_begin();
	rc = SPI_execute(buf.data, false, 0);
	ht_pin_end(pin);
	if (rc < 0)
		elog(ERROR, "hashtree: SPI_execute failed (%s) for: %s", SPI_result_code_string(rc), buf.data);
	pfree(buf.data);
	return SPI_processed;
}
