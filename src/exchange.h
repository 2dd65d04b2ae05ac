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
	int64		bytes;
	int64		round_trips;
} HtExchangeResult;

/*
 * Exchange one partition in a subtransaction, record the outcome in r and
 * in hashtree.exchange_log.  *unreachable (NULL at first) is set when the
 * peer is lost or (within exchange()) the exchange was canceled, and the
 * later partitions are then logged as not attempted.  A cancel (outside
 * exchange()) or shutdown of this backend is thrown.  Needs SPI.
 */
extern void ht_exchange_one(const char *peer_name, int part, HtRepairMode mode,
							bool worker, char **unreachable, HtExchangeResult *r);

/* no WARNING per failed partition or prefix (the workers log one line) */
extern bool ht_exchange_quiet;

#endif							/* HT_EXCHANGE_H */
