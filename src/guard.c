/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  The statement trigger hashtree._guard on the extension's tables
 *	  (docs/DESIGN.md §4, invariant 3): a write that does not come from the
 *	  extension's own code marks every partition not built, so that its
 *	  trees are rebuilt rather than silently wrong.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"

#include "common.h"
#include "partlock.h"

/*
 * hashtree._guard() RETURNS trigger
 * Statement trigger on the extension's tables: a write that does not come
 * from the extension's code (a restore, a manual change) leaves trees that
 * may not match the entries, so every partition is marked not built.
 * Locks: ROW EXCLUSIVE on hashtree.partition and its built rows (waits for
 * an update or reset holding a partition's row).
 */
PG_FUNCTION_INFO_V1(ht_guard);
Datum
ht_guard(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "hashtree: _guard() is a trigger function");
	if (ht_api_depth == 0 && !creating_extension)
	{
		SPI_connect();
		HT_API_BEGIN();
		ht_part_mark_all_unbuilt();
		HT_API_END();
		SPI_finish();
	}
	return PointerGetDatum(NULL);
}
