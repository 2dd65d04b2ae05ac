/*-------------------------------------------------------------------------
 *
 * sqlexec.h
 *	  Prepared statements on the extension's own tables, run through SPI.
 *
 * Every module that reads or writes the extension's tables declares its
 * statements as static HtQuery values; the plan is prepared on first use
 * and kept for the life of the backend.  Callers must be connected to SPI.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_SQLEXEC_H
#define HT_SQLEXEC_H

#include "postgres.h"

#include "executor/spi.h"
#include "utils/array.h"

#define HT_QUERY_MAX_ARGS 20

typedef struct HtQuery
{
	const char *sql;
	int			nargs;
	Oid			argtypes[HT_QUERY_MAX_ARGS];
	SPIPlanPtr	plan;			/* prepared on first use */
} HtQuery;

/*
 * Run a statement; nulls may be NULL (no null arguments).  Returns
 * SPI_processed; the rows, if any, are in SPI_tuptable.  Statements run
 * with a fresh snapshot that sees the changes made earlier in the same
 * transaction (a lock taken, then an update, in one SELECT).  The caller's
 * memory context is current again on return.
 */
extern uint64 ht_exec(HtQuery *q, Datum *values, const bool *nulls,
					  long tcount);

/*
 * Free every kept plan: each statement is prepared again at its next use.
 * For long-lived processes (the launcher), whose plans would otherwise
 * keep the choices made while the tables were small.  Not while a cursor
 * of a kept plan is open.
 */
extern void ht_forget_plans(void);

/*
 * ht_exec as the extension's owner: hashtree's own bookkeeping written from
 * code that runs as another role (a table owner's operation, a trigger)
 */
extern uint64 ht_exec_as_owner(HtQuery *q, Datum *values, const bool *nulls,
							   long tcount);

/* open a cursor on a statement (for results too large to hold at once) */
extern Portal ht_cursor(HtQuery *q, Datum *values, const bool *nulls);

/* fetch the next rows of a cursor into SPI_tuptable; returns their number */
extern uint64 ht_fetch(Portal portal, long count);

/* column value of a row of SPI_tuptable */
extern Datum ht_col(uint64 row, int col, bool *isnull);

/* one-dimensional arrays for statement arguments */
extern ArrayType *ht_array_text(Datum *elems, int n);
extern ArrayType *ht_array_int8(const int64 *elems, int n);
extern ArrayType *ht_array_int4(const int32 *elems, int n);
extern ArrayType *ht_array_bytea(Datum *elems, int n);

/*
 * Run a statement built with printf-style arguments (identifiers must be
 * quoted by the caller) through SPI; returns the rows processed.
 */
extern uint64 ht_sql(const char *fmt,...) pg_attribute_printf(1, 2);

/*
 * Run fn(arg) in a subtransaction: NULL when it succeeded, else its error
 * (the subtransaction rolled back, the error copied into the caller's
 * memory context).  Memory fn allocates in the caller's context stays.
 */
extern ErrorData *ht_subxact(void (*fn) (void *arg), void *arg);

#endif							/* HT_SQLEXEC_H */
