/*-------------------------------------------------------------------------
 *
 * track.h
 *	  Tracked tables: the row trigger that logs changed keys, track(),
 *	  untrack(), the fold of logged keys into entries at update time, the
 *	  re-hash used by reset, and the registry and per-relation
 *	  information the schema-change handlers (ddl.c) and the repair
 *	  helpers (rowio.c) work with.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_TRACK_H
#define HT_TRACK_H

#include "postgres.h"

#include "access/htup.h"
#include "fmgr.h"
#include "executor/spi.h"
#include "nodes/pg_list.h"
#include "utils/relcache.h"
#include "utils/reltrigger.h"

#include "pack.h"
#include "rowenc.h"

/*
 * keys read back from a table per statement when folding: large, as each
 * batch rewrites every pack its keys fall in (about one per key while the
 * batch is smaller than the partition's packs)
 */
#define HT_KEY_BATCH 16384

/* the triggers track() puts on a tracked table (and its partitions) */
#define HT_ROW_TRIGGER		"hashtree_track"
#define HT_TRUNCATE_TRIGGER	"hashtree_track_truncate"

/*
 * Tracking information of a relation (a backend cache, invalidated with
 * the relation cache): for a partition of a tracked table, the root's
 * prefix and key columns; for any other table, its own.
 */
typedef struct TrackRel
{
	Oid			relid;			/* hash key: the relation written to */
	bool		valid;
	MemoryContext cxt;
	Oid			root;			/* the tracked table, or relid if untracked */
	bool		tracked;		/* root carries the tracking row trigger */
	bool		registered;		/* ... and is in hashtree.tracked_table */
	Oid			logrel;			/* hashtree.dirty_key */
	Oid		   *logparts;		/* its table of each partition, looked up once
								 * (NULL: not yet; 0.1's unpartitioned one: none) */
	HtRelEnc   *enc;			/* this relation, with the root's key columns */
	char	   *schema;			/* the root's schema and name: the prefix */
	char	   *name;
	text	   *pa;
	text	   *pb;
	char	   *pa8;			/* prefix in UTF-8 */
	int			pa8len;
	char	   *pb8;
	int			pb8len;
	bool		versioned;		/* the table has a version column (§20) */
	AttrNumber	vatt;			/* ... its number in this relation (0: gone) */
	Oid			vtype;			/* ... its type */
	FmgrInfo	vsend;			/* ... the type's send function */
} TrackRel;

/* a row of hashtree.tracked_table */
typedef struct HtTracked
{
	char	   *schema;
	char	   *name;
	char	   *key_columns;
	char	   *signature;
} HtTracked;

/*
 * Fold the keys logged for a partition by the row triggers into its
 * entries (reading the current rows of the tracked tables), before the
 * dirty segments are folded into the trees.  Entries written as rows log
 * their segments as dirty; the change of packed entries to their buckets'
 * hashes is appended to deltas.  Needs SPI.
 */
extern void ht_track_fold(int part, HtBucketDeltas *deltas);

/*
 * ERROR if (pa, pb) names a tracked table: its entries are kept by its
 * trigger (and packed), never written through the entry API.
 */
extern void ht_track_refuse_prefix(text *pa, text *pb);

/*
 * Re-hash every tracked table's rows of a partition (part >= 0) into its
 * entries, forgetting the keys logged for it so far and marking the leaf
 * trees for a rebuild; reset does this before rebuilding.  Needs SPI.
 */
extern void ht_track_rehash_partition(int part);

/* ---- the tracked tables, for ddl.c and rowio.c ---- */

/* the tracking information of rel (cached; see TrackRel) */
extern TrackRel *ht_track_rel(Relation rel);

/* the function hashtree.<fn>() without arguments, InvalidOid if none */
extern Oid	ht_track_fn_oid(const char *fn);

/* can values of the type version rows (an order, binary send/receive)? */
extern bool ht_version_type_ok(Oid typid);

/*
 * Version the rows of tracked table rel (its root) by column col (NULL:
 * commit times): checked, registered, the triggers told; tombstones kept
 * so far lose their versions and the table is hashed again.  Needs SPI.
 */
extern void ht_track_set_version_column(TrackRel *tr, Relation rel, const char *col);

/* does rel carry the tracking row trigger fn (its own, or also a clone)? */
extern bool ht_track_has_trigger(Relation rel, Oid fn, bool clones_too);

/* the tracked table rel belongs to (itself, or a tracked ancestor) */
extern Oid	ht_tracked_root(Relation rel, Oid fn);

/* the trigger named name on rel, NULL if none */
extern Trigger *ht_track_trigger_named(Relation rel, const char *name);

/* create the TRUNCATE trigger (ENABLE ALWAYS) on a table or partition (SPI) */
extern void ht_track_create_truncate_trigger(Oid relid);

/* the signature of a table as tracked: its key and columns, and partitions */
extern char *ht_track_signature(TrackRel *tr, Relation rel);

/* the tracked tables, sorted by schema and name (needs SPI) */
extern int	ht_track_registry(HtTracked **out);

/* the relation of a tracked table, InvalidOid if it no longer exists */
extern Oid	ht_track_registered_relid(const char *schema, const char *name);

/*
 * record a table's new key columns and signature in the registry, as the
 * extension owner if as_owner (needs SPI)
 */
extern void ht_track_reregister(TrackRel *tr, const char *sig, bool as_owner);

/*
 * replace a tracked table's entries in every partition by the hashes of its
 * rows (progress NOTICEd as "what"); returns the rows hashed (needs SPI)
 */
extern int64 ht_track_rehash(TrackRel *tr, const char *what);

/* forget a tracked table: registry, entries, logged keys; mark its trees (SPI) */
extern void ht_track_forget(const char *schema, const char *name);

/*
 * ERROR unless a tracked table and each of its partitions may stay
 * tracked: logged, no row level security forced on its owner, no plain
 * inheritance
 */
extern void ht_track_check_state(Oid rootid);

/* the parents of relid by plain inheritance (not partitioning) */
extern List *ht_track_inheritance_parents(Oid relid);

/* a row given as a record of the table's row type (ERROR if it is not) */
extern void ht_track_record_tuple(Relation rel, HeapTupleHeader th, HeapTupleData *tuple);

/* the partition of a row's entry; *key its entry key */
extern int	ht_track_row_partition(TrackRel *tr, Relation rel, HeapTuple tuple, bytea **key);

/*
 * Statements driven by arrays of key values (ht_track_key_params): the
 * rows of those keys as records of the table, or their deletion.  The key
 * match uses the key index's equality operators.  Needs SPI.
 */
extern SPIPlanPtr ht_track_rows_plan(TrackRel *tr);
extern SPIPlanPtr ht_track_delete_plan(TrackRel *tr);
/* the same, the rows with their xmin (two columns: r, v) */
extern SPIPlanPtr ht_track_versions_plan(TrackRel *tr);

/* the key values of n keys, as one array per key column */
extern void ht_track_key_params(HtRelEnc *re, bytea **keys, int n, Datum *params);

/* an alias for the table in generated SQL that no column of it has */
extern char *ht_track_row_alias(Oid relid);

#endif							/* HT_TRACK_H */
