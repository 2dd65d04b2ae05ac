/*-------------------------------------------------------------------------
 *
 * tomb.h
 *	  Tombstones of tracked tables (two-way repair, DESIGN §20): a deleted
 *	  key keeps an entry (key, T(deleted_at)) in the trees and a row of
 *	  hashtree.tombstone until hashtree.tombstone_ttl.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_TOMB_H
#define HT_TOMB_H

#include "postgres.h"

#include "datatype/timestamp.h"

#include "pack.h"

/* the entry hash of a tombstone: SHA-256(0x04 || u64 t)[0..16] */
extern bytea *ht_tomb_hash(TimestampTz t);

/*
 * ... of a tombstone of a table with a version column: SHA-256(0x05 ||
 * 0x01 || the binary form of the deleted row's version)[0..16] (0x05
 * alone: no version known)
 */
extern bytea *ht_tomb_version_hash(const bytea *version);

/* the entry hash of a tombstone of a table (versioned: by a column) */
extern bytea *ht_tomb_entry_hash(bool versioned, TimestampTz at, const bytea *version);

/* the latest delete of a key logged for a fold */
typedef struct HtLoggedDelete
{
	TransactionId xid;			/* InvalidTransactionId: none logged */
	TimestampTz at;				/* its commit time, DT_NOBEGIN: not known */
	bytea	   *version;		/* the deleted row's version (versioned tables) */
} HtLoggedDelete;

/* has this database the tables of tombstones (1.0)? */
extern bool ht_tomb_available(void);

/* does tracked table (pa, pb) keep tombstones? */
extern bool ht_tomb_enabled(text *pa, text *pb);

/*
 * The commit time of a transaction, if known (track_commit_timestamp on,
 * and the transaction recent enough); else *ts is left alone and false.
 */
extern bool ht_tomb_commit_time(TransactionId xid, TimestampTz *ts);

/*
 * After a fold of partition part: remove the tombstones older than
 * hashtree.tombstone_ttl (and the repairs' row versions as old), logging
 * each key so that a fold removes its entry (unless a row came back).
 * Returns the tombstones removed.
 */
extern uint64 ht_tomb_expire(int part);

/*
 * In the fold of a table that keeps tombstones: the changes ch (hash NULL:
 * the row is gone) of keys (with, per key, its latest logged delete).  A
 * key gone with a delete gets a tombstone (its time and version as logged,
 * or those its delete's transaction wrote: a repair; -infinity written so:
 * none, a pull or push purged the key) and the tombstone's entry instead
 * of none; a key with a row loses its tombstone.  versioned: the table has
 * a version column.
 */
extern void ht_tomb_fold(int part, text *pa, text *pb, bool versioned, bytea **keys,
						 const HtLoggedDelete *dels, int nkeys, HtPackEntry *ch, int nch);

/* the marker logged by ht_tomb_expire: the key's tombstone expired */
#define HT_TOMB_EXPIRED_MARK 0x00

#endif							/* HT_TOMB_H */
