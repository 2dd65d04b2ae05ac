/*-------------------------------------------------------------------------
 *
 * exchange.h
 *	  Anti-entropy exchange with a peer: lock and update both sides,
 *	  compare, repair (repair.h), release.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_EXCHANGE_H
#define HT_EXCHANGE_H

#include "postgres.h"

#include "datatype/timestamp.h"

#include "compare.h"
#include "remote.h"
#include "repair.h"

/*
 * What became of one partition; the names are exchange_log.outcome's.  A
 * zeroed result is an error: nothing reads as compared unless it was.
 */
typedef enum HtExchangeOutcome
{
	HT_OUTCOME_ERROR,			/* failed, or not attempted */
	HT_OUTCOME_OK,				/* compared (and repaired, if asked) */
	HT_OUTCOME_SKIPPED_LOCKED,	/* locked here or on the peer */
	HT_OUTCOME_NOT_BUILT,		/* not built here or on the peer */
	HT_NOUTCOMES
} HtExchangeOutcome;

extern const char *const ht_exchange_outcome_names[HT_NOUTCOMES];

/*
 * The peer sends the entries of a partition's prefix trees (depths 0 and 1:
 * one per prefix_a, one per (prefix_a, prefix_b)) with its top hash when
 * there are at most this many, so that the walk starts at the leaf trees
 * (docs/DESIGN.md §13).
 */
#define HT_EXCHANGE_PREFIX_ENTRIES 1024

/* what became of one partition */
typedef struct HtExchangeResult
{
	int			part;
	HtExchangeOutcome outcome;
	int			sqlstate;		/* of the error */
	char	   *message;
	TimestampTz started;
	TimestampTz finished;
	int			ndiffs;
	int			diffs_cap;
	HtDiff	   *diffs;
	int64		counts[HT_NKINDS];
	int64		repaired;
	int64		rows_local;		/* newest: rows written here */
	int64		rows_remote;	/* ... and on the peer */
	int64		bytes;
	int64		round_trips;
} HtExchangeResult;

/*
 * Exchange partitions parts[0 .. n) with a peer, all together (see
 * exchange.c), in a subtransaction; record each partition's outcome in
 * results[k] and in hashtree.exchange_log (one row each; the round trips
 * and bytes of the whole exchange on every row, and its first row's id as
 * every row's run).  A failure of the whole exchange (a lost peer, an
 * error of the walk) is the error of every partition still in it.  A
 * shutdown of this backend, or a cancel outside exchange(), is thrown.
 * Needs SPI.
 */
extern void ht_exchange_run(const char *peer_name, int n, const int *parts,
							HtRepairMode mode, bool worker, HtExchangeResult *results);

/* no WARNING per failed partition or prefix (the workers log one line) */
extern bool ht_exchange_quiet;

#endif							/* HT_EXCHANGE_H */
