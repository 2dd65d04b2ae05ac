/*-------------------------------------------------------------------------
 *
 * repair.h
 *	  Repair of the differences an exchange found: pull makes this node
 *	  equal to the peer, push the peer equal to this node.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_REPAIR_H
#define HT_REPAIR_H

#include "postgres.h"

#include "compare.h"
#include "remote.h"

typedef enum HtRepairMode
{
	HT_REPAIR_NONE,
	HT_REPAIR_PULL,				/* make this node's rows equal to the peer's */
	HT_REPAIR_PUSH,				/* make the peer's rows equal to this node's */
	HT_REPAIR_NEWEST,			/* the newest version of each key, on both */
	HT_NREPAIR_MODES
} HtRepairMode;

/* the names exchange(), hashtree.repair and exchange_log.repair use */
extern const char *const ht_repair_mode_names[HT_NREPAIR_MODES];

/* the mode a name names; ERROR if none */
extern HtRepairMode ht_repair_mode(const char *name);

/* one difference found by compare (strings in server encoding) */
typedef struct HtDiff
{
	HtDiffKind	kind;
	char	   *pa;
	char	   *pb;				/* NULL: the whole prefix_a */
	bytea	   *key;			/* NULL: the whole prefix */
	bool		repaired;
	char		winner;			/* newest: 'l' this node, 'r' the peer, 0 none */
} HtDiff;

/* the differences of one partition to repair, and what became of them */
typedef struct HtRepairPart
{
	int			part;
	HtDiff	   *diffs;
	int			ndiffs;
	int64		repaired;		/* out: the differences repaired */
	int64		rows_local;		/* out: rows (and tombstones) written here */
	int64		rows_remote;	/* out: ... and on the peer */
	char	   *message;		/* out: why the first prefix was not, or NULL */
} HtRepairPart;

/*
 * Repair the differences of several partitions (mode pull, push or newest), all
 * together: two round trips to the peer however many partitions and
 * prefixes differ.  Sets each difference's repaired flag and each
 * partition's counts; a prefix that cannot be repaired is reported in its
 * partition's message (the first) and, unless quiet, in a WARNING.  A lost
 * peer, a cancel or a shutdown is thrown.  Needs SPI.
 */
extern void ht_repair(HtPeer *peer, HtRepairMode mode, HtRepairPart *parts, int nparts,
					  bool quiet);

/*
 * For a report (repair none): set the winner that repair 'newest' would
 * pick for each difference of tracked tables and plain entries ('l', 'r';
 * 0: equal after tombstones, or not known: no commit times here or on the
 * peer, a read that failed).  Writes nothing; one round trip more.
 */
extern void ht_repair_winners(HtPeer *peer, HtRepairPart *parts, int nparts);

#endif							/* HT_REPAIR_H */
