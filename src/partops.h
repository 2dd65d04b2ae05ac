/*-------------------------------------------------------------------------
 *
 * partops.h
 *	  update() and reset() of a local partition (SQL, exchanges, workers).
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_PARTOPS_H
#define HT_PARTOPS_H

#include "postgres.h"

#include "partlock.h"

/*
 * update() of a local partition: the tracked tables' logged keys folded,
 * then the trees; HT_PART_OK, or HT_PART_NOT_BUILT, HT_PART_ONGOING_UPDATE,
 * HT_PART_NOT_LOCKED (the caller is not the lock owner).  READ COMMITTED
 * only.
 */
extern HtPartAnswer ht_update_partition(int part);

/*
 * reset() of a local partition: the tracked tables' rows re-hashed, the
 * trees rebuilt (ERROR when it is locked or being updated)
 */
extern void ht_reset_partition(int part);

#endif							/* HT_PARTOPS_H */
