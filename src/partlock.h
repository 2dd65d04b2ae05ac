/*-------------------------------------------------------------------------
 *
 * partlock.h
 *	  Partition state: the partition count, the built flag, and the
 *	  partition locks (owner = a backend pid, gone when that backend exits).
 *
 * All functions need an SPI connection.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_PARTLOCK_H
#define HT_PARTLOCK_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* state of one partition as last committed */
typedef struct HtPartState
{
	bool		built;
	int			owner;			/* live lock owner pid, 0 when unlocked */
	bool		mine;			/* owner is the calling backend */
} HtPartState;

/*
 * number of partitions recorded at CREATE EXTENSION (cached per backend;
 * callable from any context, reads the table as the extension owner)
 */
extern int	ht_num_partitions(void);

/* ERROR unless 0 <= part < ht_num_partitions() */
extern void ht_check_partition(int part);

extern void ht_part_state(int part, HtPartState *st);

/*
 * The answers of lock(), release_lock() and update(), here and on a peer.
 * ht_part_answer_names[] holds the words SQL returns (and a peer sends).
 */
typedef enum HtPartAnswer
{
	HT_PART_OK,
	HT_PART_NOT_BUILT,
	HT_PART_LOCKED,				/* lock(): another owner holds it */
	HT_PART_NOT_LOCKED,			/* release_lock(), update(): the caller holds no lock */
	HT_PART_NOT_ALLOWED,		/* release_lock(): another owner holds it */
	HT_PART_ONGOING_UPDATE,		/* update(): another update of it runs */
	HT_PART_NANSWERS
} HtPartAnswer;

extern const char *const ht_part_answer_names[HT_PART_NANSWERS];

/* the answer a word names; false if it names none */
extern bool ht_part_answer_of(const char *word, HtPartAnswer *answer);

/* HT_PART_OK, HT_PART_NOT_BUILT or HT_PART_LOCKED */
extern HtPartAnswer ht_part_lock(int part, int pid);

/* HT_PART_OK, HT_PART_NOT_LOCKED or HT_PART_NOT_ALLOWED */
extern HtPartAnswer ht_part_release(int part, int pid);

/*
 * Updates and rebuilds of a partition are serialised by a transaction-scoped
 * advisory lock, and hold the partition's row lock while they run.
 * begin_update answers HT_PART_OK (go ahead) or the refusal of update();
 * begin_rebuild raises an ERROR when the partition is locked or updated.
 */
extern HtPartAnswer ht_part_begin_update(int part);
extern void ht_part_begin_rebuild(int part);

/*
 * true (and the same locks held) when the partition is built, not locked by
 * another backend and not being updated; false at once otherwise
 */
extern bool ht_part_begin_maintenance(int part);

/* bookkeeping after an update or a rebuild */
extern void ht_part_record_update(int part, int64 segments, int64 nodes,
								  double ms);
extern void ht_part_record_build(int part, double ms);

/* a foreign write reached the extension's tables: nothing is built */
extern void ht_part_mark_all_unbuilt(void);

/* the start time of a live server process (a backend, a worker); false if none */
extern bool ht_backend_start(int pid, TimestampTz *start);

/* pid if (pid, start) is a live backend, else 0 */
extern int	ht_live_owner(int pid, TimestampTz start);

/* create the rows of hashtree.partition (CREATE EXTENSION) */
extern int	ht_part_create_all(int n);

#endif							/* HT_PARTLOCK_H */
