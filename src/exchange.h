/*-------------------------------------------------------------------------
 *
 * exchange.h
 *	  Anti-entropy exchange with a peer: lock and update both sides,
 *	  compare, repair, release; and the repair of the differences.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_EXCHANGE_H
#define HT_EXCHANGE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/elog.h"

#include "compare.h"
#include "remote.h"

typedef enum HtRepairMode
{
	HT_REPAIR_NONE,
	HT_REPAIR_PULL,				/* make this node's rows equal to the peer's */
	HT_REPAIR_PUSH,				/* make the peer's rows equal to this node's */
	HT_NREPAIR_MODES
} HtRepairMode;

/* the names exchange(), hashtree.repair and exchange_log.repair use */
extern const char *const ht_repair_mode_names[HT_NREPAIR_MODES];

/* the mode a name names; ERROR if none */
extern HtRepairMode ht_repair_mode(const char *name);

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

/* one difference found by compare (strings in server encoding) */
typedef struct HtDiff
{
	HtDiffKind	kind;
	char	   *pa;
	char	   *pb;				/* NULL: the whole prefix_a */
	bytea	   *key;			/* NULL: the whole prefix */
	bool		repaired;
} HtDiff;

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
 * Exchange one partition with a peer: lock both sides (a refusal ends it
 * as skipped_locked or not_built), update both, compare, repair, release
 * both.  Needs SPI; an ERROR leaves the local side to the caller's
 * (sub)transaction abort and the peer's lock to closing the connection.
 */
extern void ht_exchange_partition(const char *peer_name, int part, HtRepairMode mode,
								  HtExchangeResult *r);

/*
 * The error of a failed partition (copied, its subtransaction or
 * transaction rolled back): recorded in r, the peer connection closed; a
 * cancel or shutdown of this backend is thrown again (within exchange(),
 * a cancel is recorded as the partition's error "canceled").
 */
extern void ht_exchange_failed(const char *peer_name, ErrorData *edata,
							   HtExchangeResult *r);

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

/* append r to hashtree.exchange_log (needs SPI) */
extern void ht_exchange_log(const char *peer_name, HtRepairMode mode, bool worker,
							HtExchangeResult *r);

/* repair the differences of a partition (needs SPI) */
extern void ht_repair(HtPeer *peer, int part, HtRepairMode mode, HtExchangeResult *r);

#endif							/* HT_EXCHANGE_H */
