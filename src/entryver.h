/*-------------------------------------------------------------------------
 *
 * entryver.h
 *	  Versions and tombstones of plain entries (two-way repair, DESIGN §20):
 *	  the prefixes that keep tombstones (hashtree.tombstone_prefix), the
 *	  versions repair 'newest' reads and writes, the expiry.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_ENTRYVER_H
#define HT_ENTRYVER_H

#include "postgres.h"

/* does the plain prefix (pa, pb) keep tombstones? */
extern bool ht_entryver_enabled(text *pa, text *pb);

/*
 * Before the update of partition part: remove the tombstones of plain
 * prefixes older than hashtree.tombstone_ttl, and their entries (logged
 * dirty).  Returns the tombstones removed.
 */
extern uint64 ht_entryver_expire(int part);

#endif							/* HT_ENTRYVER_H */
