/*-------------------------------------------------------------------------
 *
 * partops.c
 *	  update() and reset() of a local partition, as SQL, exchanges and the
 *	  background workers run them: the partition's state and locks
 *	  (partlock.c), the tracked tables' part (track.c: the fold of logged
 *	  keys, the re-hash), then the trees (store.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "utils/timestamp.h"

#include "common.h"
#include "entryver.h"
#include "pack.h"
#include "partlock.h"
#include "partops.h"
#include "store.h"
#include "track.h"
#include "update.h"

/* update and reset need a fresh snapshot per statement */
static void
check_read_committed(const char *what)
{
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s must run at isolation level READ COMMITTED", what)));
}

HtPartAnswer
ht_update_partition(int part)
{
	HtPartAnswer res;

	check_read_committed("hashtree.update()");
	SPI_connect();
	HT_API_BEGIN();
	{
		res = ht_part_begin_update(part);
		if (res == HT_PART_OK)
		{
			HtUpdateStats stats;
			TimestampTz start = GetCurrentTimestamp();
			HtBucketDeltas pd = {CurrentMemoryContext, 0, 0, NULL};

			/*
			 * expired tombstones of plain entries go; logged keys of tracked
			 * tables become entries; then the trees
			 */
			(void) ht_entryver_expire(part);
			ht_track_fold(part, &pd);
			ht_store_update(part, &pd, &stats);
			ht_part_record_update(part, stats.segments, stats.nodes,
								  (double) TimestampDifferenceMilliseconds(start,
																		   GetCurrentTimestamp()));
		}
	}
	HT_API_END();
	SPI_finish();
	return res;
}

void
ht_reset_partition(int part)
{
	check_read_committed("hashtree.reset()");
	SPI_connect();
	HT_API_BEGIN();
	{
		TimestampTz start = GetCurrentTimestamp();

		ht_part_begin_rebuild(part);
		/* tracked tables: their rows of this partition hashed again */
		ht_track_rehash_partition(part);
		ht_store_rebuild(part);
		ht_part_record_build(part,
							 (double) TimestampDifferenceMilliseconds(start,
																	  GetCurrentTimestamp()));
	}
	HT_API_END();
	SPI_finish();
}
