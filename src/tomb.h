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
 * the row is gone) of keys (with, per key, the time and transaction of its
 * latest logged delete, InvalidTransactionId if none).  A key gone with a
 * delete gets a tombstone (its time as logged, or the one its delete's
 * transaction wrote: a repair; -infinity written so: none, a pull or push
 * purged the key) and the tombstone's entry instead of none; a key with a
 * row loses its tombstone.
 */
extern void ht_tomb_fold(int part, text *pa, text *pb, bytea **keys, const TimestampTz *dts,
						 const TransactionId *dxids, int nkeys, HtPackEntry *ch, int nch);

/* the marker logged by ht_tomb_expire: the key's tombstone expired */
#define HT_TOMB_EXPIRED_MARK 0x00

#endif							/* HT_TOMB_H */
