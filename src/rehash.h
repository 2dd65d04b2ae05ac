/*-------------------------------------------------------------------------
 *
 * rehash.h
 *	  The scan of a re-hash: the rows of a table hashed into the leaf
 *	  entries of a tracked table and fed to a pack builder, by this backend
 *	  alone or together with parallel workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_REHASH_H
#define HT_REHASH_H

#include "postgres.h"

#include "access/htup.h"
#include "access/tupdesc.h"

#include "pack.h"
#include "rowenc.h"

/* whose entries the rows are: the tracked table's prefix, in UTF-8 */
typedef struct HtRowSource
{
	HtRelEnc   *enc;			/* the relation scanned, the root's key columns */
	const char *pa8;
	int			pa8len;
	const char *pb8;
	int			pb8len;
	int			nparts;
} HtRowSource;

/* the entry of a row: its partition, segment, key and hash */
typedef struct HtRowEntry
{
	int32		part;
	int32		seg;
	bytea	   *key;
	bytea	   *hash;			/* NULL when not in the partition wanted */
} HtRowEntry;

/* the entry of a row; the hash only if want_part < 0 or the row's partition */
extern void ht_row_entry(const HtRowSource *src, TupleDesc desc, HeapTuple tuple,
						 int want_part, HtRowEntry *e);

/* told the number of rows seen so far, now and then (may raise a NOTICE) */
typedef void (*HtRehashProgress) (int64 rows_seen);

/*
 * Hash the rows of leaf (a plain table: the tracked table, or one of its
 * partitions, root) visible to a new snapshot into pb, keeping the entries
 * of partition part (< 0: all).  src->enc must describe leaf.  Parallel
 * workers share the scan when the table is large enough and
 * max_parallel_maintenance_workers allows (see rehash.c).  Returns the
 * number of entries added.
 */
extern int64 ht_rehash_leaf(const HtRowSource *src, Oid root, Oid leaf, int part,
							HtPackBuild *pb, HtRehashProgress progress);

#endif							/* HT_REHASH_H */
