/*-------------------------------------------------------------------------
 *
 * rowenc.h
 *	  Canonical encodings of a tracked table's rows: the entry key (the
 *	  primary key or replica identity columns) and the row hash (every
 *	  column, ordered by name).  Identical on every node and platform,
 *	  whatever the column order, dropped columns, client encoding or TOAST
 *	  state of the rows; see docs/DESIGN.md, "Tracked tables".
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_ROWENC_H
#define HT_ROWENC_H

#include "postgres.h"

#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/relcache.h"

typedef struct HtTypeEnc HtTypeEnc;

/* how a tracked table is encoded; built from the table's current shape */
typedef struct HtRelEnc
{
	Oid			relid;
	char	   *schema;			/* prefix_a (server encoding) */
	char	   *name;			/* prefix_b */
	/* key columns, in the order of the key index */
	int			nkeys;
	AttrNumber *keyatt;			/* attribute numbers in this relation */
	HtTypeEnc **keyenc;
	Oid		   *keytype;
	int32	   *keytypmod;
	char	  **keyname;
	char	   *keyform;		/* 0: the send form, else a canonical form */
	Oid		   *keyeqop;		/* the key index's equality operator */
	/* all live columns, sorted by their UTF-8 names */
	int			ncols;
	AttrNumber *colatt;
	char	  **colname_utf8;
	int		   *colname_len;
	HtTypeEnc **colenc;
	/* "name type, ..." of the key and of the columns: changes mean re-hash */
	char	   *signature;
	char	   *key_columns;	/* comma-separated key column names */
} HtRelEnc;

/*
 * The key columns of a relation's primary key or replica identity index,
 * with what decides their equality there: the index column's B-tree
 * operator class and collation.
 */
typedef struct HtKeyCols
{
	int			nkeys;
	char	  **names;
	Oid		   *opclass;
	Oid		   *collation;
} HtKeyCols;

extern HtKeyCols *ht_rel_key_cols(Relation rel);

/*
 * Describe a relation for tracking: ERROR (with a clear SQLSTATE) when it
 * cannot be tracked (no primary key or replica identity index, a key
 * column of a type without a canonical binary form, or whose equality is
 * not bitwise and has no canonical form here, ...).  The key columns are
 * those of the relation's own key index, or, for a partition of a tracked
 * table, the tracked table's key columns (by name, with the tracked
 * table's operator classes and collations).  Allocated in
 * CurrentMemoryContext.
 */
extern HtRelEnc *ht_relenc_build(Relation rel, HtKeyCols *keys);

/* key encoding of a row (values of rel's tuple descriptor) */
extern bytea *ht_row_key(HtRelEnc *re, TupleDesc tupdesc, HeapTuple tuple);

/* key encoding from key column values, in key order */
extern bytea *ht_key_from_values(HtRelEnc *re, Datum *values);

/* row hash (32 bytes) */
/*
 * The row hash: the first HT_ROW_HASH_LEN bytes of SHA-256 of the row's
 * canonical encoding.  16 bytes: an accidental collision of two versions
 * of a row has odds of 2^-128, and the packed entries of a tracked table
 * are a third smaller than with the whole digest (docs/DESIGN.md §17).
 */
#define HT_ROW_HASH_LEN 16
extern bytea *ht_row_hash(HtRelEnc *re, TupleDesc tupdesc, HeapTuple tuple);

/* decode a key encoding into key column values (in key order) */
extern void ht_key_decode(HtRelEnc *re, bytea *key, Datum *values);

#endif							/* HT_ROWENC_H */
