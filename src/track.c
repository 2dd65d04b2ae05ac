/*-------------------------------------------------------------------------
 *
 * track.c
 *	  Tracked tables.
 *
 * Write path: an AFTER ROW trigger (hashtree._track_row, ENABLE ALWAYS)
 * computes the key of each inserted, updated or deleted row (both keys
 * when an update changes the key) and appends (partition, segment,
 * schema, table, key) to hashtree.dirty_key with a plain heap insert: no
 * SPI, no index, no row that two writers share.  The row hash is not
 * computed on the write path.  A TRUNCATE logs a "re-hash the table"
 * marker (key NULL) for every partition.
 *
 * Fold (at the start of update(p)): the logged keys of p that the update's
 * snapshot sees are deleted from the log; for each key the current row is
 * read from the table (by key, in batches) and the entry is written, or
 * deleted when the row is gone.  Since the entry is recomputed from the
 * table as it is, it does not matter how many times or in which order a
 * key was logged, nor whether the row moved between partitions of a
 * partitioned table.
 *
 * track() registers the table, creates the triggers and hashes every row
 * in one transaction; reset re-hashes the tracked tables' rows of its
 * partition.  Event triggers keep the registry true to the tables:
 * renames are refused, column and key changes re-hash the table, a
 * dropped table is untracked.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/stratnum.h"
#include "access/tableam.h"
#include "access/table.h"
#include "catalog/catalog.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "commands/trigger.h"
#include "storage/bufmgr.h"
#include "tcop/deparse_utility.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "port/pg_bswap.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/relcache.h"
#include "utils/rls.h"
#include "utils/ruleutils.h"
#include "utils/typcache.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "common.h"
#include "pack.h"
#include "rowenc.h"
#include "sqlexec.h"
#include "track.h"
#include "treemath.h"
#include "update.h"

/*
 * keys read back from a table per statement when folding: large, as each
 * batch rewrites every pack its keys fall in (about one per key while the
 * batch is smaller than the partition's packs)
 */
#define HT_KEY_BATCH 16384

/* the triggers track() puts on a tracked table (and its partitions) */
#define HT_ROW_TRIGGER		"hashtree_track"
#define HT_TRUNCATE_TRIGGER	"hashtree_track_truncate"

/* ---- per-relation tracking information (backend cache) ----------------- */

typedef struct TrackRel
{
	Oid			relid;			/* hash key: the relation written to */
	bool		valid;
	MemoryContext cxt;
	Oid			root;			/* the tracked table, or relid if untracked */
	bool		tracked;		/* root carries the tracking row trigger */
	bool		registered;		/* ... and is in hashtree.tracked_table */
	Oid			logrel;			/* hashtree.dirty_key */
	HtRelEnc   *enc;			/* this relation, with the root's key columns */
	char	   *schema;			/* the root's schema and name: the prefix */
	char	   *name;
	text	   *pa;
	text	   *pb;
	char	   *pa8;			/* prefix in UTF-8 */
	int			pa8len;
	char	   *pb8;
	int			pb8len;
} TrackRel;

static HTAB *track_cache = NULL;

static void
track_cache_inval(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	TrackRel   *tr;

	/*
	 * Only mark: an entry may be in use by the caller of the invalidation.
	 * Only the entries that depend on the relation: the relation written to,
	 * its tracked root (triggers, key index, registration), hashtree's log.
	 */
	if (track_cache == NULL)
		return;
	hash_seq_init(&status, track_cache);
	while ((tr = hash_seq_search(&status)) != NULL)
		if (!OidIsValid(relid) || relid == tr->relid || relid == tr->root ||
			relid == tr->logrel)
			tr->valid = false;
}

static Oid
track_fn_oid(const char *fn)
{
	return LookupFuncName(list_make2(makeString("hashtree"), makeString(pstrdup(fn))),
						  0, NULL, true);
}

/* does rel carry the tracking row trigger (its own, or also a clone)? */
static bool
has_track_trigger(Relation rel, Oid fn, bool clones_too)
{
	TriggerDesc *td = rel->trigdesc;

	if (td == NULL || !OidIsValid(fn))
		return false;
	for (int i = 0; i < td->numtriggers; i++)
		if (td->triggers[i].tgfoid == fn &&
			(clones_too || !td->triggers[i].tgisclone))
			return true;
	return false;
}

/* the tracked table rel belongs to (itself, or a tracked ancestor) */
static Oid
tracked_root(Relation rel, Oid fn)
{
	Oid			root = InvalidOid;
	ListCell   *lc;

	if (has_track_trigger(rel, fn, false))
		return RelationGetRelid(rel);
	if (!rel->rd_rel->relispartition)
		return InvalidOid;
	foreach(lc, get_partition_ancestors(RelationGetRelid(rel)))
	{
		Relation	anc = relation_open(lfirst_oid(lc), AccessShareLock);

		if (has_track_trigger(anc, fn, false))
			root = RelationGetRelid(anc);
		relation_close(anc, AccessShareLock);
	}
	return root;
}

static bool is_registered(text *pa, text *pb);
static void check_tracked_state(Oid rootid);

static char *
to_utf8(const char *s, int *len)
{
	char	   *u = pg_server_to_any(s, strlen(s), PG_UTF8);

	*len = strlen(u);
	return u;
}

/*
 * Tracking information of a relation: for a partition of a tracked table,
 * the root's prefix and key columns; for any other table, its own.
 */
static TrackRel *
track_rel(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	TrackRel   *tr;
	bool		found;
	MemoryContext old;

	if (track_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(TrackRel);
		ctl.hcxt = CacheMemoryContext;
		track_cache = hash_create("hashtree tracked relations", 32, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(track_cache_inval, (Datum) 0);
	}
	tr = hash_search(track_cache, &relid, HASH_ENTER, &found);
	if (found && tr->valid)
		return tr;
	/*
	 * The entry is rebuilt in place; its old memory may still be referenced
	 * by a caller further up (an invalidation can arrive in the middle of a
	 * fold), so it is freed with the transaction, not now.
	 */
	if (found && tr->cxt != NULL)
		MemoryContextSetParent(tr->cxt, TopTransactionContext);
	tr->cxt = NULL;
	tr->valid = false;

	old = CurrentMemoryContext;
	PG_TRY();
	{
		Oid			root;
		Relation	rootrel;

		tr->cxt = AllocSetContextCreate(CacheMemoryContext, "hashtree tracked relation",
										ALLOCSET_SMALL_SIZES);
		MemoryContextSwitchTo(tr->cxt);
		root = tracked_root(rel, track_fn_oid("_track_row"));
		tr->tracked = OidIsValid(root);
		tr->root = tr->tracked ? root : relid;
		rootrel = (tr->root == relid) ? rel : relation_open(tr->root, AccessShareLock);
		/* the key columns, their operator classes and collations: the root's */
		tr->enc = ht_relenc_build(rel, ht_rel_key_cols(rootrel));
		tr->schema = get_namespace_name(RelationGetNamespace(rootrel));
		tr->name = pstrdup(RelationGetRelationName(rootrel));
		if (rootrel != rel)
			relation_close(rootrel, AccessShareLock);
		tr->pa = cstring_to_text(tr->schema);
		tr->pb = cstring_to_text(tr->name);
		tr->pa8 = to_utf8(tr->schema, &tr->pa8len);
		tr->pb8 = to_utf8(tr->name, &tr->pb8len);
		tr->registered = tr->tracked && is_registered(tr->pa, tr->pb);
		tr->logrel = get_relname_relid("dirty_key", ht_schema_oid());
		MemoryContextSwitchTo(old);
		tr->valid = true;
	}
	PG_CATCH();
	{
		MemoryContext failed = tr->cxt;

		MemoryContextSwitchTo(old);
		hash_search(track_cache, &relid, HASH_REMOVE, NULL);
		if (failed != NULL)
			MemoryContextDelete(failed);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return tr;
}

static TrackRel *
track_rel_by_oid(Oid relid)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	TrackRel   *tr = track_rel(rel);

	relation_close(rel, AccessShareLock);
	return tr;
}

/* ---- the write path ---------------------------------------------------------- */

/* append (part, seg, pa, pb, key) to hashtree.dirty_key; key NULL: re-hash */
static void
log_key(TrackRel *tr, int part, bytea *key)
{
	Oid			logrel = tr->logrel;
	Relation	rel;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	HeapTuple	tup;

	if (!OidIsValid(logrel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"hashtree\" is not installed in this database")));
	rel = table_open(logrel, RowExclusiveLock);
	if (RelationGetDescr(rel)->natts != 5 || RelationGetForm(rel)->relhasindex)
		elog(ERROR, "hashtree: unexpected shape of hashtree.dirty_key");
	values[0] = Int32GetDatum(key ? ht_partition_for(tr->pa8, tr->pa8len, tr->pb8, tr->pb8len,
													 VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
													 ht_num_partitions())
							  : part);
	values[1] = Int32GetDatum(key ? ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(key),
												  VARSIZE_ANY_EXHDR(key)) : -1);
	values[2] = PointerGetDatum(tr->pa);
	values[3] = PointerGetDatum(tr->pb);
	values[4] = PointerGetDatum(key);
	nulls[4] = (key == NULL);
	tup = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	simple_heap_insert(rel, tup);
	heap_freetuple(tup);
	table_close(rel, NoLock);
}

static bool
bytea_eq(bytea *a, bytea *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

/*
 * The tracking trigger functions act only as the triggers hashtree puts on
 * a registered tracked table (and its partitions): fired by any other
 * trigger, on any other table, they refuse, so that nobody writes entries
 * of a prefix through them.
 */
static void
check_own_trigger(TriggerData *td, TrackRel *tr, const char *tgname)
{
	if (!tr->registered || strcmp(td->tg_trigger->tgname, tgname) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on \"%s\" is not a tracking trigger of hashtree",
						td->tg_trigger->tgname, RelationGetRelationName(td->tg_relation)),
				 errdetail("hashtree's trigger functions work only as the triggers that hashtree.track() creates on a tracked table.")));
}

/*
 * _track_row() RETURNS trigger: AFTER INSERT OR UPDATE OR DELETE row
 * trigger "hashtree_track" of a tracked table.  Logs the key of each
 * changed row (both keys when an UPDATE changes it) in hashtree.dirty_key
 * with a heap insert; takes RowExclusiveLock on that table.
 */
PG_FUNCTION_INFO_V1(ht_track_row);
Datum
ht_track_row(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TrackRel   *tr;
	TupleDesc	desc;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event))
		elog(ERROR, "hashtree: _track_row() must be an AFTER ROW trigger");
	tr = track_rel(td->tg_relation);
	check_own_trigger(td, tr, HT_ROW_TRIGGER);
	desc = RelationGetDescr(td->tg_relation);

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		bytea	   *newkey = ht_row_key(tr->enc, desc, td->tg_newtuple);
		bytea	   *oldkey = ht_row_key(tr->enc, desc, td->tg_trigtuple);

		log_key(tr, 0, newkey);
		if (!bytea_eq(oldkey, newkey))
			log_key(tr, 0, oldkey);
	}
	else
		log_key(tr, 0, ht_row_key(tr->enc, desc, td->tg_trigtuple));
	return PointerGetDatum(NULL);
}

/*
 * _track_truncate() RETURNS trigger: AFTER TRUNCATE statement trigger
 * "hashtree_track_truncate" of a tracked table and of each of its
 * partitions; logs a re-hash marker for every partition.  On a table that
 * is no longer part of a tracked table (a detached partition keeps it) it
 * does nothing.
 */
PG_FUNCTION_INFO_V1(ht_track_truncate);
Datum
ht_track_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TrackRel   *tr;
	int			n;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		elog(ERROR, "hashtree: _track_truncate() must be a TRUNCATE trigger");
	tr = track_rel(td->tg_relation);
	/* left on a partition detached from a tracked table: nothing to do */
	if (!tr->tracked)
		return PointerGetDatum(NULL);
	check_own_trigger(td, tr, HT_TRUNCATE_TRIGGER);
	n = ht_num_partitions();
	for (int p = 0; p < n; p++)
		log_key(tr, p, NULL);
	return PointerGetDatum(NULL);
}

/* ---- hashing rows -------------------------------------------------------------- */

/* progress of a long re-hash (track, a schema change), NOTICEd each second */
static struct
{
	bool		active;
	const char *what;
	int64		rows;
	TimestampTz start;
	TimestampTz last;
} progress;

static void
progress_begin(const char *what)
{
	progress.active = true;
	progress.what = what;
	progress.rows = 0;
	progress.start = progress.last = GetCurrentTimestamp();
}

static void
progress_row(void)
{
	if (!progress.active || (++progress.rows & 0x3fff) != 0)
		return;
	if (TimestampDifferenceExceeds(progress.last, GetCurrentTimestamp(), 1000))
	{
		progress.last = GetCurrentTimestamp();
		ereport(NOTICE,
				(errmsg("%s: " INT64_FORMAT " rows hashed, %.1f s", progress.what,
						progress.rows,
						TimestampDifferenceMilliseconds(progress.start, progress.last) / 1000.0)));
	}
}

/* a row given as a record of the table's row type */
static void
record_tuple(Relation rel, HeapTupleHeader th, HeapTupleData *tuple)
{
	if (HeapTupleHeaderGetTypeId(th) != RelationGetForm(rel)->reltype)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("record is not a row of table \"%s\"", RelationGetRelationName(rel))));
	tuple->t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tuple->t_self);
	tuple->t_tableOid = RelationGetRelid(rel);
	tuple->t_data = th;
}

/* the entry of a row: its partition, segment, key and hash */
typedef struct RowEntry
{
	int32		part;
	int32		seg;
	bytea	   *key;
	bytea	   *hash;
} RowEntry;

static void
row_entry(TrackRel *tr, Relation rel, HeapTuple tuple, int want_part, RowEntry *e)
{
	TupleDesc	desc = RelationGetDescr(rel);

	e->key = ht_row_key(tr->enc, desc, tuple);
	e->part = ht_partition_for(tr->pa8, tr->pa8len, tr->pb8, tr->pb8len,
							   VARDATA_ANY(e->key), VARSIZE_ANY_EXHDR(e->key),
							   ht_num_partitions());
	e->seg = ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(e->key), VARSIZE_ANY_EXHDR(e->key));
	e->hash = (want_part < 0 || want_part == e->part) ? ht_row_hash(tr->enc, desc, tuple) : NULL;
}

/*
 * row_hash(tbl regclass, r record) RETURNS bytea, row_key(tbl regclass,
 * r record) RETURNS bytea: the row hash and entry key hashtree computes for
 * row r of tbl (a tracked table or not).  Needs SELECT on every column of
 * tbl.  AccessShareLock on tbl.
 */
static Datum
row_encoding_sql(FunctionCallInfo fcinfo, bool hash)
{
	Relation	rel;
	HeapTupleData tuple;
	bytea	   *out;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	rel = ht_open_relation_arg(PG_GETARG_OID(0), AccessShareLock);

	/*
	 * Only for a caller who may read the whole row: the hash of a guessed
	 * row compared with a stored hash would otherwise reveal columns the
	 * caller cannot read.
	 */
	if (pg_attribute_aclcheck_all(RelationGetRelid(rel), GetUserId(), ACL_SELECT,
								  ACLMASK_ALL) != ACLCHECK_OK &&
		pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", RelationGetRelationName(rel)),
				 errdetail("%s needs SELECT on every column of the table.",
						   hash ? "row_hash()" : "row_key()")));
	record_tuple(rel, PG_GETARG_HEAPTUPLEHEADER(1), &tuple);
	out = hash ? ht_row_hash(track_rel(rel)->enc, RelationGetDescr(rel), &tuple) :
		ht_row_key(track_rel(rel)->enc, RelationGetDescr(rel), &tuple);
	relation_close(rel, AccessShareLock);
	PG_RETURN_BYTEA_P(out);
}

/*
 * hashtree.row_hash(tbl regclass, r record) RETURNS bytea
 * The row hash hashtree computes for row r of tbl (see row_encoding_sql).
 * Needs SELECT on every column of tbl.  Locks: ACCESS SHARE on tbl.
 */
PG_FUNCTION_INFO_V1(ht_row_hash_sql);
Datum
ht_row_hash_sql(PG_FUNCTION_ARGS)
{
	return row_encoding_sql(fcinfo, true);
}

/*
 * hashtree.row_key(tbl regclass, r record) RETURNS bytea
 * The entry key hashtree computes for row r of tbl (see row_encoding_sql).
 * Needs SELECT on every column of tbl.  Locks: ACCESS SHARE on tbl.
 */
PG_FUNCTION_INFO_V1(ht_row_key_sql);
Datum
ht_row_key_sql(PG_FUNCTION_ARGS)
{
	return row_encoding_sql(fcinfo, false);
}

/* ---- re-hash and entry writes ---------------------------------------------------- */

static HtQuery q_drop_entries = {
	"WITH e AS (DELETE FROM hashtree.entry WHERE part = $1 AND depth = 2 AND pa = $2 AND pb = $3"
	" RETURNING 1)"
	" SELECT count(*) FROM e",
	3, {INT4OID, TEXTOID, TEXTOID}
};

static HtQuery q_mark_tree = {
	"INSERT INTO hashtree.dirty (part, seg, pa, pb) VALUES ($1, -1, $2, $3)",
	3, {INT4OID, TEXTOID, TEXTOID}
};

static HtQuery q_drop_packs = {
	"DELETE FROM hashtree.entry_pack WHERE part = $1 AND pa = $2 AND pb = $3",
	3, {INT4OID, TEXTOID, TEXTOID}
};

/* rows hashed between two checks for interrupts */
#define HT_SCAN_BATCH 10000

/*
 * Hash the rows of one table (a leaf: a plain table or a partition) into
 * entries of the tracked table tr, keeping only partition part (< 0: all).
 */
static int64
scan_rows(TrackRel *tr, Oid leaf, int part, HtPackBuild *pb, MemoryContext rowcxt)
{
	Relation	rel = table_open(leaf, AccessShareLock);
	TrackRel   *ltr = track_rel(rel);
	TrackRel	tmp = *tr;
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	TableScanDesc scan = table_beginscan(rel, snap, 0, NULL);
	HeapTuple	tuple;
	int64		rows = 0;
	int			inbatch = 0;

	/* the leaf's own encoder (its attribute numbers), the root's prefix */
	tmp.enc = ltr->enc;
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		RowEntry	e;

		row_entry(&tmp, rel, tuple, part, &e);
		MemoryContextSwitchTo(old);
		progress_row();
		if (e.hash != NULL)
		{
			ht_pack_build_add(pb, e.part, e.seg,
							  VARDATA_ANY(e.key), VARSIZE_ANY_EXHDR(e.key),
							  VARDATA_ANY(e.hash), VARSIZE_ANY_EXHDR(e.hash));
			rows++;
		}
		/* (a reset that keeps only the first block costs next to nothing) */
		MemoryContextReset(rowcxt);
		if (++inbatch == HT_SCAN_BATCH)
		{
			inbatch = 0;
			CHECK_FOR_INTERRUPTS();
		}
	}
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, NoLock);
	return rows;
}

/* rows of a table about to be scanned, as the planner would guess them */
static double
estimated_rows(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	double		rows = rel->rd_rel->reltuples;

	if (rows < 0)				/* never vacuumed or analyzed: guess from its size */
		rows = (double) RelationGetNumberOfBlocks(rel) * 50;
	table_close(rel, NoLock);
	return rows;
}

/*
 * Replace the entries of a tracked table in one partition (part >= 0) or
 * in all of them (part < 0) by the hashes of its current rows, written as
 * packs (pack.c), and mark its leaf trees for a rebuild.  Returns the
 * number of rows hashed.
 */
static int64
rehash(TrackRel *tr, int part)
{
	int			n = ht_num_partitions();
	Datum		v[3];
	int64		rows = 0;
	double		est = 0;
	List	   *leaves;
	ListCell   *lc;
	HtPackBuild *pb;
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "hashtree rehash rows",
												 ALLOCSET_DEFAULT_SIZES);

	v[1] = PointerGetDatum(tr->pa);
	v[2] = PointerGetDatum(tr->pb);
	for (int p = 0; p < n; p++)
	{
		if (part >= 0 && p != part)
			continue;
		v[0] = Int32GetDatum(p);
		ht_exec(&q_drop_entries, v, NULL, 0);
		ht_exec(&q_drop_packs, v, NULL, 0);
		ht_exec(&q_mark_tree, v, NULL, 0);
	}

	if (get_rel_relkind(tr->root) == RELKIND_PARTITIONED_TABLE)
		leaves = find_all_inheritors(tr->root, AccessShareLock, NULL);
	else
		leaves = list_make1_oid(tr->root);
	foreach(lc, leaves)
	{
		if (get_rel_relkind(lfirst_oid(lc)) == RELKIND_RELATION)
			est += estimated_rows(lfirst_oid(lc));
	}
	pb = ht_pack_build_begin(tr->pa, tr->pb, part, est);
	foreach(lc, leaves)
	{
		if (get_rel_relkind(lfirst_oid(lc)) == RELKIND_RELATION)
			rows += scan_rows(tr, lfirst_oid(lc), part, pb, rowcxt);
	}
	ht_pack_build_end(pb);
	MemoryContextDelete(rowcxt);
	return rows;
}

/* the tracked tables, as (schema, name) pairs copied out of SPI */
static HtQuery q_registry = {
	"SELECT schema_name, table_name, key_columns, signature"
	" FROM hashtree.tracked_table ORDER BY 1, 2",
	0, {0}
};

typedef struct Registered
{
	char	   *schema;
	char	   *name;
	char	   *key_columns;
	char	   *signature;
} Registered;

static int
registry(Registered **out)
{
	uint64		n = ht_exec(&q_registry, NULL, NULL, 0);
	Registered *r = palloc(sizeof(Registered) * Max(n, 1));

	for (uint64 i = 0; i < n; i++)
	{
		r[i].schema = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		r[i].name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		r[i].key_columns = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
		r[i].signature = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 4);
	}
	SPI_freetuptable(SPI_tuptable);
	*out = r;
	return (int) n;
}

/* the relation of a tracked table, InvalidOid if it no longer exists */
static Oid
registered_relid(const char *schema, const char *name)
{
	Oid			nsp = get_namespace_oid(schema, true);

	return OidIsValid(nsp) ? get_relname_relid(name, nsp) : InvalidOid;
}

static HtQuery q_drop_part_keys = {
	"DELETE FROM hashtree.dirty_key WHERE part = $1", 1, {INT4OID}
};

void
ht_track_rehash_partition(int part)
{
	Registered *r;
	int			n;
	Datum		v[1] = {Int32GetDatum(part)};

	/* the keys logged so far are covered (those committed later are kept) */
	ht_exec(&q_drop_part_keys, v, NULL, 0);
	n = registry(&r);

	for (int i = 0; i < n; i++)
	{
		Oid			relid = registered_relid(r[i].schema, r[i].name);
		TrackRel   *tr;

		if (!OidIsValid(relid))
			continue;
		tr = track_rel_by_oid(relid);
		if (tr->tracked && tr->root == relid)
			(void) rehash(tr, part);
	}
}

/*
 * Is (pa, pb) a registered tracked table?  Read directly (no SQL: this runs
 * from the row trigger as the writing user), with the latest snapshot so
 * that a registration earlier in this transaction is seen.
 */
static bool
is_registered(text *pa, text *pb)
{
	Oid			nsp = ht_schema_oid();
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("tracked_table", nsp) : InvalidOid;
	Oid			idxid = OidIsValid(nsp) ? get_relname_relid("tracked_table_pkey", nsp) : InvalidOid;
	Relation	rel;
	ScanKeyData key[2];
	SysScanDesc scan;
	Snapshot	snap;
	bool		found;

	if (!OidIsValid(relid) || !OidIsValid(idxid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"hashtree\" is not installed in this database")));
	rel = table_open(relid, AccessShareLock);
	ScanKeyInit(&key[0], 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(pa));
	ScanKeyInit(&key[1], 2, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(pb));
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, idxid, true, snap, 2, key);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	return found;
}

void
ht_track_refuse_prefix(text *pa, text *pb)
{
	bool		found = is_registered(pa, pb);

	if (found)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("prefix (%s, %s) is tracked table %s",
						text_to_cstring(pa), text_to_cstring(pb),
						quote_qualified_identifier(text_to_cstring(pa), text_to_cstring(pb))),
				 errdetail("The entries of a tracked table are written by its trigger."),
				 errhint("Write the table's rows, or call hashtree.untrack() first.")));
}

/* ---- fold of the logged keys at update time --------------------------------------- */

static HtQuery q_take_keys = {
	"WITH d AS (DELETE FROM hashtree.dirty_key WHERE part = $1 RETURNING pa, pb, key)"
	" SELECT DISTINCT pa, pb, key FROM d ORDER BY pa, pb, key NULLS FIRST",
	1, {INT4OID}
};

static HtQuery q_put_entries = {
	"WITH e AS ("
	" INSERT INTO hashtree.entry AS t (part, seg, depth, pa, pb, key, hash)"
	" SELECT $1, u.seg, 2, $2, $3, u.key, u.hash"
	" FROM unnest($4::int4[], $5::bytea[], $6::bytea[]) AS u(seg, key, hash)"
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key))"
	" DO UPDATE SET hash = EXCLUDED.hash WHERE t.hash <> EXCLUDED.hash"
	" RETURNING t.seg)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT DISTINCT $1, seg, $2, $3 FROM e",
	6, {INT4OID, TEXTOID, TEXTOID, INT4ARRAYOID, BYTEAARRAYOID, BYTEAARRAYOID}
};

static HtQuery q_del_entries = {
	"WITH e AS ("
	" DELETE FROM hashtree.entry WHERE ctid = ANY (ARRAY("
	"  SELECT x.ctid FROM unnest($4::int4[], $5::bytea[]) AS u(seg, key)"
	"  CROSS JOIN LATERAL (SELECT t.ctid FROM hashtree.entry t"
	"   WHERE t.part = $1 AND t.depth = 2 AND t.pa = $2 AND t.pb = $3"
	"    AND t.seg = u.seg AND hashtree._kid(t.key) = hashtree._kid(u.key) LIMIT 1) x))"
	" RETURNING seg)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT DISTINCT $1, seg, $2, $3 FROM e",
	5, {INT4OID, TEXTOID, TEXTOID, INT4ARRAYOID, BYTEAARRAYOID}
};

/* the table being folded, and its keys waiting for a statement */
typedef struct FoldTable
{
	TrackRel   *tr;				/* NULL: not tracked, keys ignored */
	Relation	rel;
	SPIPlanPtr	plan;			/* rows by key */
	MemoryContext batch;		/* the waiting keys and their statement */
	bool		rehashed;
	int			nkeys;
	bytea	  **keys;			/* HT_KEY_BATCH of them */
	HtBucketDeltas *deltas;		/* the change of packed buckets, for the update */
} FoldTable;

/* what a statement driven by a list of keys does with the rows */
typedef enum KeyPlanKind
{
	KEYS_ROWS,					/* the rows, as records of the table */
	KEYS_DELETE					/* delete them */
} KeyPlanKind;

/*
 * An alias for the table in generated SQL that no column of it has (a
 * bare alias that is also a column name means the column, not the row).
 */
static char *
row_alias(Oid relid)
{
	char	   *alias = pstrdup("ht_row");

	for (int i = 1; get_attnum(relid, alias) != InvalidAttrNumber; i++)
		alias = psprintf("ht_row%d", i);
	return alias;
}

/*
 * The equality operator of each key column: the one of the key index's
 * operator family (so that the match is the index's own, e.g. citext's
 * case-insensitive one), else the type's default equality.
 */
static void
key_eq_ops(TrackRel *tr, Oid *ops)
{
	HtRelEnc   *re = tr->enc;
	Relation	root = relation_open(tr->root, AccessShareLock);
	Oid			indexoid = RelationGetPrimaryKeyIndex(root);
	Relation	index = NULL;

	if (!OidIsValid(indexoid))
		indexoid = RelationGetReplicaIndex(root);
	if (OidIsValid(indexoid))
		index = index_open(indexoid, AccessShareLock);
	for (int k = 0; k < re->nkeys; k++)
	{
		AttrNumber	att = get_attnum(tr->root, re->keyname[k]);

		ops[k] = InvalidOid;
		if (index != NULL)
		{
			for (int i = 0; i < IndexRelationGetNumberOfKeyAttributes(index); i++)
			{
				if (index->rd_index->indkey.values[i] != att)
					continue;
				ops[k] = get_opfamily_member(index->rd_opfamily[i], index->rd_opcintype[i],
											 index->rd_opcintype[i], BTEqualStrategyNumber);
				break;
			}
		}
		if (!OidIsValid(ops[k]))
			ops[k] = lookup_type_cache(re->keytype[k], TYPECACHE_EQ_OPR)->eq_opr;
		if (!OidIsValid(ops[k]))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("key column \"%s\" has a type without an equality operator",
							re->keyname[k])));
	}
	if (index != NULL)
		index_close(index, AccessShareLock);
	relation_close(root, AccessShareLock);
}

/*
 * SELECT x.r FROM ROWS FROM (pg_catalog.unnest($1), ...) u(k1, ..., kn)
 *   CROSS JOIN LATERAL (SELECT a AS r FROM tbl a WHERE a.k1 OPERATOR(s.=)
 *   u.k1 AND ... OFFSET 0) x
 * (a: an alias no column has)
 * one key index probe per key, whatever the statistics say; or the same
 * as DELETE ... USING ROWS FROM (...).  The key match uses the key
 * index's equality operators, schema-qualified with exact casts, so it
 * resolves to the same operators whatever the search_path.
 */
static SPIPlanPtr
keys_plan(TrackRel *tr, KeyPlanKind kind)
{
	HtRelEnc   *re = tr->enc;
	StringInfoData sql;
	StringInfoData unnest;
	StringInfoData match;
	Oid		   *types = palloc(sizeof(Oid) * re->nkeys);
	Oid			ops[INDEX_MAX_KEYS];
	SPIPlanPtr	plan;
	MemoryContext caller = CurrentMemoryContext;
	char	   *qname = quote_qualified_identifier(tr->schema, tr->name);
	char	   *alias = row_alias(tr->root);

	key_eq_ops(tr, ops);
	initStringInfo(&unnest);
	initStringInfo(&match);
	appendStringInfoString(&unnest, "ROWS FROM (");
	for (int k = 0; k < re->nkeys; k++)
	{
		Oid			arr = get_array_type(re->keytype[k]);

		if (!OidIsValid(arr))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("key column \"%s\" has a type without an array type",
							re->keyname[k])));
		types[k] = arr;
		appendStringInfo(&unnest, "%spg_catalog.unnest($%d)", k ? ", " : "", k + 1);
		if (k > 0)
			appendStringInfoString(&match, " AND ");
		generate_operator_clause(&match,
								 psprintf("%s.%s", alias, quote_identifier(re->keyname[k])),
								 re->keytype[k], ops[k],
								 psprintf("u.k%d", k + 1), re->keytype[k]);
	}
	appendStringInfoString(&unnest, ") AS u(");
	for (int k = 0; k < re->nkeys; k++)
		appendStringInfo(&unnest, "%sk%d", k ? ", " : "", k + 1);
	appendStringInfoChar(&unnest, ')');

	initStringInfo(&sql);
	if (kind == KEYS_DELETE)
		appendStringInfo(&sql, "DELETE FROM %s %s USING %s WHERE %s",
						 qname, alias, unnest.data, match.data);
	else
		appendStringInfo(&sql, "SELECT x.r FROM %s CROSS JOIN LATERAL"
						 " (SELECT %s AS r FROM %s %s WHERE %s OFFSET 0) x",
						 unnest.data, alias, qname, alias, match.data);
	plan = SPI_prepare(sql.data, re->nkeys, types);
	MemoryContextSwitchTo(caller);
	if (plan == NULL)
		elog(ERROR, "hashtree: SPI_prepare failed (%s): %s",
			 SPI_result_code_string(SPI_result), sql.data);
	return plan;
}

/* the key values of n keys, as one array per key column */
static void
key_params(HtRelEnc *re, bytea **keys, int n, Datum *params)
{
	Datum	   *cols[INDEX_MAX_KEYS];

	for (int k = 0; k < re->nkeys; k++)
		cols[k] = palloc(sizeof(Datum) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		Datum		v[INDEX_MAX_KEYS];

		ht_key_decode(re, keys[i], v);
		for (int k = 0; k < re->nkeys; k++)
			cols[k][i] = v[k];
	}
	for (int k = 0; k < re->nkeys; k++)
	{
		int16		typlen;
		bool		typbyval;
		char		typalign;

		get_typlenbyvalalign(re->keytype[k], &typlen, &typbyval, &typalign);
		params[k] = PointerGetDatum(construct_array(cols[k], n, re->keytype[k],
													typlen, typbyval, typalign));
	}
}

/* read the rows of the waiting keys and write their entries */
static void
fold_keys(int part, FoldTable *ft)
{
	HtRelEnc   *re;
	Datum		params[INDEX_MAX_KEYS];
	uint64		nrows;
	/* (volatile: set in the PG_TRY below, read after it) */
	int32	   *volatile put_seg;
	Datum	   *volatile put_key;
	Datum	   *volatile put_hash;
	volatile int nput = 0;
	int32	   *del_seg;
	Datum	   *del_key;
	int			ndel = 0;
	bytea	  **volatile found;
	volatile int nfound = 0;
	volatile int a = 0;
	volatile int b = 0;
	MemoryContext caller;
	HtUserContext uc;

	if (ft->nkeys == 0 || ft->tr == NULL || ft->rehashed)
	{
		ft->nkeys = 0;
		return;
	}
	caller = MemoryContextSwitchTo(ft->batch);
	re = ft->tr->enc;

	/*
	 * The rows are read (planned, which may evaluate the table's index
	 * expressions, and hashed, which runs its types' send functions) as the
	 * table's owner in a security-restricted operation, never with the
	 * rights of the extension owner or a worker.
	 */
	ht_as_table_owner_begin(ft->tr->root, &uc);
	PG_TRY();
	{
		key_params(re, ft->keys, ft->nkeys, params);
		if (ft->plan == NULL)
		{
			MemoryContextSwitchTo(caller);
			ft->plan = keys_plan(ft->tr, KEYS_ROWS);
			MemoryContextSwitchTo(ft->batch);
		}
		if (SPI_execute_plan(ft->plan, params, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "hashtree: reading rows of %s failed", ft->tr->name);
		MemoryContextSwitchTo(ft->batch);
		nrows = SPI_processed;

		put_seg = palloc(sizeof(int32) * Max(nrows, 1));
		put_key = palloc(sizeof(Datum) * Max(nrows, 1));
		put_hash = palloc(sizeof(Datum) * Max(nrows, 1));
		found = palloc(sizeof(bytea *) * Max(nrows, 1));
		for (uint64 r = 0; r < nrows; r++)
		{
			bool		isnull;
			Datum		d = ht_col(r, 1, &isnull);
			HeapTupleData tuple;
			RowEntry	e;

			record_tuple(ft->rel, DatumGetHeapTupleHeader(d), &tuple);
			row_entry(ft->tr, ft->rel, &tuple, part, &e);
			if (e.part != part || e.hash == NULL)
				continue;		/* cannot happen: the key was logged for part */
			put_seg[nput] = e.seg;
			put_key[nput] = PointerGetDatum(e.key);
			put_hash[nput] = PointerGetDatum(e.hash);
			found[nfound++] = e.key;
			nput++;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	PG_FINALLY();
	{
		ht_as_table_owner_end(&uc);
	}
	PG_END_TRY();

	/* the keys whose row is gone lose their entries */
	del_seg = palloc(sizeof(int32) * ft->nkeys);
	del_key = palloc(sizeof(Datum) * ft->nkeys);
	qsort(ft->keys, ft->nkeys, sizeof(bytea *), ht_bytea_ptr_cmp);
	qsort(found, nfound, sizeof(bytea *), ht_bytea_ptr_cmp);
	while (a < ft->nkeys)
	{
		int			c = (b < nfound) ? ht_bytea_cmp(ft->keys[a], found[b]) : -1;

		if (c < 0)
		{
			del_seg[ndel] = ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(ft->keys[a]),
										  VARSIZE_ANY_EXHDR(ft->keys[a]));
			del_key[ndel++] = PointerGetDatum(ft->keys[a]);
			a++;
		}
		else if (c > 0)
			b++;
		else
		{
			a++;
			b++;
		}
	}

	/* entries of segments a pack covers are written there, the rest as rows */
	{
		HtPackEntry *ch = palloc(sizeof(HtPackEntry) * Max(nput + ndel, 1));
		HtPackEntry *rest = palloc(sizeof(HtPackEntry) * Max(nput + ndel, 1));
		int			nch = 0;
		int			nrest;

		for (int i = 0; i < nput; i++)
		{
			ch[nch].seg = put_seg[i];
			ch[nch].key = DatumGetByteaPP(put_key[i]);
			ch[nch++].hash = DatumGetByteaPP(put_hash[i]);
		}
		for (int i = 0; i < ndel; i++)
		{
			ch[nch].seg = del_seg[i];
			ch[nch].key = DatumGetByteaPP(del_key[i]);
			ch[nch++].hash = NULL;
		}
		nrest = ht_pack_apply(part, ft->tr->pa, ft->tr->pb, ch, nch, rest, ft->deltas);
		nput = ndel = 0;
		for (int i = 0; i < nrest; i++)
		{
			if (rest[i].hash != NULL)
			{
				put_seg[nput] = rest[i].seg;
				put_key[nput] = PointerGetDatum(rest[i].key);
				put_hash[nput++] = PointerGetDatum(rest[i].hash);
			}
			else
			{
				del_seg[ndel] = rest[i].seg;
				del_key[ndel++] = PointerGetDatum(rest[i].key);
			}
		}
	}
	if (nput > 0)
	{
		Datum		v[6];

		v[0] = Int32GetDatum(part);
		v[1] = PointerGetDatum(ft->tr->pa);
		v[2] = PointerGetDatum(ft->tr->pb);
		v[3] = PointerGetDatum(ht_array_int4(put_seg, nput));
		v[4] = PointerGetDatum(ht_array_bytea(put_key, nput));
		v[5] = PointerGetDatum(ht_array_bytea(put_hash, nput));
		ht_exec(&q_put_entries, v, NULL, 0);
	}
	if (ndel > 0)
	{
		Datum		v[5];

		v[0] = Int32GetDatum(part);
		v[1] = PointerGetDatum(ft->tr->pa);
		v[2] = PointerGetDatum(ft->tr->pb);
		v[3] = PointerGetDatum(ht_array_int4(del_seg, ndel));
		v[4] = PointerGetDatum(ht_array_bytea(del_key, ndel));
		ht_exec(&q_del_entries, v, NULL, 0);
	}
	ft->nkeys = 0;
	MemoryContextSwitchTo(caller);
	MemoryContextReset(ft->batch);
}

static void
fold_table_end(FoldTable *ft)
{
	MemoryContext batch = ft->batch;
	bytea	  **keys = ft->keys;
	HtBucketDeltas *deltas = ft->deltas;

	if (ft->plan != NULL)
		SPI_freeplan(ft->plan);
	if (ft->rel != NULL)
		relation_close(ft->rel, NoLock);
	memset(ft, 0, sizeof(FoldTable));
	ft->batch = batch;
	ft->keys = keys;
	ft->deltas = deltas;
}

void
ht_track_fold(int part, HtBucketDeltas *deltas)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "hashtree fold",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Datum		v[1] = {Int32GetDatum(part)};
	Portal		portal = ht_cursor(&q_take_keys, v, NULL);
	FoldTable  *ft = palloc0(sizeof(FoldTable));
	char	   *cur_pa = NULL;
	char	   *cur_pb = NULL;

	ft->batch = AllocSetContextCreate(cxt, "hashtree fold batch", ALLOCSET_DEFAULT_SIZES);
	ft->keys = palloc(sizeof(bytea *) * HT_KEY_BATCH);
	ft->deltas = deltas;

	for (;;)
	{
		uint64		n = ht_fetch(portal, HT_KEY_BATCH);
		SPITupleTable *tt = SPI_tuptable;

		if (n == 0)
			break;
		for (uint64 r = 0; r < n; r++)
		{
			char	   *pa = SPI_getvalue(tt->vals[r], tt->tupdesc, 1);
			char	   *pb = SPI_getvalue(tt->vals[r], tt->tupdesc, 2);
			bool		isnull;
			Datum		key = SPI_getbinval(tt->vals[r], tt->tupdesc, 3, &isnull);

			if (cur_pa == NULL || strcmp(pa, cur_pa) != 0 || strcmp(pb, cur_pb) != 0)
			{
				Oid			relid;

				SPI_tuptable = NULL;	/* keep this batch while we write */
				fold_keys(part, ft);
				fold_table_end(ft);
				cur_pa = pa;
				cur_pb = pb;
				relid = registered_relid(pa, pb);
				if (OidIsValid(relid))
				{
					/*
					 * ROW EXCLUSIVE, kept to the end of the update: a re-hash
					 * of the table (track, a schema change), which rewrites
					 * its packs, waits for this fold or this fold for it
					 */
					ft->rel = relation_open(relid, RowExclusiveLock);
					ft->tr = track_rel(ft->rel);
					if (!ft->tr->tracked || ft->tr->root != relid)
						ft->tr = NULL;	/* untracked since: ignore its keys */
				}
			}
			if (ft->tr == NULL || ft->rehashed)
				continue;
			if (isnull)
			{
				/* a TRUNCATE: re-hash the table's rows of this partition */
				SPI_tuptable = NULL;
				(void) rehash(ft->tr, part);
				ft->rehashed = true;
				continue;
			}
			{
				MemoryContext o = MemoryContextSwitchTo(ft->batch);

				ft->keys[ft->nkeys++] = DatumGetByteaPCopy(key);
				MemoryContextSwitchTo(o);
			}
			if (ft->nkeys == HT_KEY_BATCH)
			{
				SPI_tuptable = NULL;
				fold_keys(part, ft);
			}
		}
		SPI_freetuptable(tt);
		CHECK_FOR_INTERRUPTS();
	}
	fold_keys(part, ft);
	fold_table_end(ft);
	SPI_cursor_close(portal);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}

/* ---- track() and untrack() -------------------------------------------------------- */

static HtQuery q_register = {
	"INSERT INTO hashtree.tracked_table (schema_name, table_name, key_columns, signature)"
	" VALUES ($1, $2, $3, $4)",
	4, {TEXTOID, TEXTOID, TEXTOID, TEXTOID}
};

static HtQuery q_unregister = {
	"DELETE FROM hashtree.tracked_table WHERE schema_name = $1 AND table_name = $2",
	2, {TEXTOID, TEXTOID}
};

static HtQuery q_reregister = {
	"UPDATE hashtree.tracked_table SET key_columns = $3, signature = $4"
	" WHERE schema_name = $1 AND table_name = $2",
	4, {TEXTOID, TEXTOID, TEXTOID, TEXTOID}
};

static HtQuery q_drop_keys = {
	"DELETE FROM hashtree.dirty_key WHERE pa = $1 AND pb = $2",
	2, {TEXTOID, TEXTOID}
};

static void
run_ddl(const char *fmt, const char *arg)
{
	char	   *sql = psprintf(fmt, arg);
	int			rc = SPI_execute(sql, false, 0);

	if (rc < 0)
		elog(ERROR, "hashtree: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
	pfree(sql);
}

/* the TRUNCATE trigger, on the table and on each of its partitions */
static void
create_truncate_trigger(Oid relid)
{
	char	   *qname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												   get_rel_name(relid));

	run_ddl("CREATE TRIGGER " HT_TRUNCATE_TRIGGER " AFTER TRUNCATE ON %s"
			" FOR EACH STATEMENT EXECUTE FUNCTION hashtree._track_truncate()", qname);
	run_ddl("ALTER TABLE %s ENABLE ALWAYS TRIGGER " HT_TRUNCATE_TRIGGER, qname);
}

/* the trigger named name on rel, NULL if none */
static Trigger *
trigger_named(Relation rel, const char *name)
{
	TriggerDesc *td = rel->trigdesc;

	for (int i = 0; td != NULL && i < td->numtriggers; i++)
		if (strcmp(td->triggers[i].tgname, name) == 0)
			return &td->triggers[i];
	return NULL;
}

/* the signature of a table as tracked: its key and columns, and partitions */
static char *
signature(TrackRel *tr, Relation rel)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, tr->enc->signature);
	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
	{
		ListCell   *lc;

		appendStringInfoString(&buf, " partitions");
		foreach(lc, find_all_inheritors(RelationGetRelid(rel), NoLock, NULL))
			appendStringInfo(&buf, " %u", lfirst_oid(lc));
	}
	return buf.data;
}

static void
check_trackable(Relation rel, Oid fn)
{
	const char *name = RelationGetRelationName(rel);
	char		kind = rel->rd_rel->relkind;

	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", name)));
	if (IsCatalogRelation(rel) || RelationGetNamespace(rel) == ht_schema_oid())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track system or hashtree table \"%s\"", name)));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track temporary table \"%s\"", name)));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_UNLOGGED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track unlogged table \"%s\"", name),
				 errdetail("A crash empties an unlogged table without telling its triggers.")));
	if (!pg_class_ownercheck(RelationGetRelid(rel), GetOuterUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(kind), name);
	if (has_track_trigger(rel, fn, false))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table \"%s\" is already tracked", name)));
	if (OidIsValid(tracked_root(rel, fn)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is a partition of a tracked table", name)));
	if (kind == RELKIND_PARTITIONED_TABLE)
	{
		ListCell   *lc;

		foreach(lc, find_all_inheritors(RelationGetRelid(rel), NoLock, NULL))
		{
			Relation	part = relation_open(lfirst_oid(lc), NoLock);
			bool		tracked = has_track_trigger(part, fn, false);

			relation_close(part, NoLock);
			if (tracked)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("a partition of \"%s\" is tracked", name),
						 errhint("Untrack it first.")));
		}
	}
}

/*
 * hashtree.track(tbl regclass) RETURNS bigint
 * Track a table the caller owns: create its triggers, register it, hash its
 * rows into entries, and bring the trees of every partition that is not
 * locked or being updated up to date; returns the rows hashed.  Locks: SHARE
 * ROW EXCLUSIVE on tbl and its partitions until commit (writers wait,
 * readers do not); ROW EXCLUSIVE on the extension's tables; the advisory
 * update lock and the row of each partition it updates (never waited for).
 */
PG_FUNCTION_INFO_V1(ht_track);
Datum
ht_track(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Relation	rel;
	TrackRel   *tr;
	char	   *qname;
	int64		rows;
	Oid			fn;
	Datum		v[4];
	bool		partitioned;

	HT_ARG_NOT_NULL(0, "tbl");
	relid = PG_GETARG_OID(0);
	SPI_connect();
	HT_API_BEGIN();
	/* writers wait from here until the end of the transaction (see README) */
	rel = ht_open_relation_arg(relid, ShareRowExclusiveLock);
	fn = track_fn_oid("_track_row");
	check_trackable(rel, fn);
	check_tracked_state(relid);
	partitioned = (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE);
	qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   RelationGetRelationName(rel));
	/* the DDL below needs the table closed (the lock is kept) */
	table_close(rel, NoLock);
	if (partitioned)
		(void) find_all_inheritors(relid, ShareRowExclusiveLock, NULL);

	run_ddl("CREATE TRIGGER " HT_ROW_TRIGGER " AFTER INSERT OR UPDATE OR DELETE ON %s"
			" FOR EACH ROW EXECUTE FUNCTION hashtree._track_row()", qname);
	run_ddl("ALTER TABLE %s ENABLE ALWAYS TRIGGER " HT_ROW_TRIGGER, qname);
	create_truncate_trigger(relid);
	if (partitioned)
	{
		ListCell   *lc;

		foreach(lc, find_all_inheritors(relid, NoLock, NULL))
			if (lfirst_oid(lc) != relid)
				create_truncate_trigger(lfirst_oid(lc));
	}
	CommandCounterIncrement();

	/* now the table is tracked: describe it, register it, hash it */
	rel = table_open(relid, NoLock);
	tr = track_rel(rel);
	if (!tr->tracked || tr->root != relid)
		elog(ERROR, "hashtree: the tracking trigger of %s is not in place", qname);
	v[0] = PointerGetDatum(tr->pa);
	v[1] = PointerGetDatum(tr->pb);
	v[2] = CStringGetTextDatum(tr->enc->key_columns);
	v[3] = CStringGetTextDatum(signature(tr, rel));
	ht_exec(&q_register, v, NULL, 0);
	/* the trigger functions now find the table registered */
	CacheInvalidateRelcacheByRelid(relid);
	ht_exec(&q_drop_keys, v, NULL, 0);
	progress_begin(psprintf("track(%s)", qname));
	PG_TRY();
	{
		rows = rehash(tr, -1);

		/*
		 * Built on return: the trees of the partitions that nobody holds
		 * now take the new entries in (a partition locked or being updated
		 * keeps its rebuild marker for its next update)
		 */
		for (int p = 0; p < ht_num_partitions(); p++)
			(void) ht_store_update_if_free(p);
	}
	PG_FINALLY();
	{
		progress.active = false;
	}
	PG_END_TRY();
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(rows);
}

/* forget a tracked table: registry, entries, logged keys; mark its trees */
static void
forget(const char *schema, const char *name)
{
	Datum		v[3];
	int			n = ht_num_partitions();

	v[0] = CStringGetTextDatum(schema);
	v[1] = CStringGetTextDatum(name);
	ht_exec(&q_unregister, v, NULL, 0);
	ht_exec(&q_drop_keys, v, NULL, 0);
	v[2] = v[1];
	v[1] = v[0];
	for (int p = 0; p < n; p++)
	{
		v[0] = Int32GetDatum(p);
		ht_exec(&q_drop_entries, v, NULL, 0);
		ht_exec(&q_drop_packs, v, NULL, 0);
		ht_exec(&q_mark_tree, v, NULL, 0);
	}
}

/*
 * hashtree.untrack(tbl regclass) RETURNS void
 * Stop tracking a table the caller owns: unregister it, delete its entries
 * and logged keys, mark its trees for a rebuild, drop its triggers.  Locks:
 * SHARE ROW EXCLUSIVE, then ACCESS EXCLUSIVE (DROP TRIGGER) on tbl and its
 * partitions; ROW EXCLUSIVE on the extension's tables.
 */
PG_FUNCTION_INFO_V1(ht_untrack);
Datum
ht_untrack(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Relation	rel;
	char	   *schema;
	char	   *name;
	char	   *qname;
	bool		partitioned;

	HT_ARG_NOT_NULL(0, "tbl");
	relid = PG_GETARG_OID(0);
	SPI_connect();
	HT_API_BEGIN();
	rel = ht_open_relation_arg(relid, ShareRowExclusiveLock);
	/* registered is enough: untrack also mends a table whose trigger is gone */
	if (!has_track_trigger(rel, track_fn_oid("_track_row"), false) &&
		!is_registered(cstring_to_text(get_namespace_name(RelationGetNamespace(rel))),
					   cstring_to_text(RelationGetRelationName(rel))))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not tracked", RelationGetRelationName(rel))));
	if (!pg_class_ownercheck(relid, GetOuterUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(rel->rd_rel->relkind),
					   RelationGetRelationName(rel));
	schema = get_namespace_name(RelationGetNamespace(rel));
	name = pstrdup(RelationGetRelationName(rel));
	qname = quote_qualified_identifier(schema, name);
	partitioned = (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE);
	table_close(rel, NoLock);

	/* unregister first: dropping the triggers then is not a schema change */
	forget(schema, name);
	run_ddl("DROP TRIGGER IF EXISTS " HT_ROW_TRIGGER " ON %s", qname);
	if (partitioned)
	{
		ListCell   *lc;

		foreach(lc, find_all_inheritors(relid, ShareRowExclusiveLock, NULL))
		{
			Relation	part = relation_open(lfirst_oid(lc), NoLock);
			bool		has = (trigger_named(part, HT_TRUNCATE_TRIGGER) != NULL);
			char	   *pname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(part)),
														   RelationGetRelationName(part));

			relation_close(part, NoLock);
			if (has)
				run_ddl("DROP TRIGGER " HT_TRUNCATE_TRIGGER " ON %s", pname);
		}
	}
	else
		run_ddl("DROP TRIGGER IF EXISTS " HT_TRUNCATE_TRIGGER " ON %s", qname);
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---- schema changes (event triggers) -------------------------------------------- */


static void
refuse_trigger_change(Relation rel, const char *tgname)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot drop, disable or rename the tracking trigger \"%s\" of \"%s\"",
					tgname, RelationGetRelationName(rel)),
			 errdetail("Without it the trees of the tracked table would silently stop following its rows."),
			 errhint("Use hashtree.untrack() to stop tracking the table.")));
}

/*
 * Tracking cannot be switched off behind hashtree's back: the tracked table
 * and each of its partitions carry the row trigger "hashtree_track" (the
 * table's own, cloned on the partitions) and the TRUNCATE trigger
 * "hashtree_track_truncate", with hashtree's functions, ENABLE ALWAYS.  A
 * trigger that exists in any other state is refused.  A missing one is
 * refused too, unless allow_missing: after ALTER TABLE or CREATE TABLE a
 * trigger may not exist yet (pg_restore creates them one by one, each
 * followed by its ENABLE ALWAYS), and dropping one is caught at sql_drop.
 */
static void
verify_triggers(Oid rootid, bool allow_missing)
{
	Oid			rowfn = track_fn_oid("_track_row");
	Oid			truncfn = track_fn_oid("_track_truncate");
	ListCell   *lc;

	foreach(lc, find_all_inheritors(rootid, AccessShareLock, NULL))
	{
		Oid			relid = lfirst_oid(lc);
		Relation	rel = relation_open(relid, AccessShareLock);
		Trigger    *row = trigger_named(rel, HT_ROW_TRIGGER);
		Trigger    *trunc = trigger_named(rel, HT_TRUNCATE_TRIGGER);

		if (row == NULL ? !allow_missing :
			(row->tgfoid != rowfn || row->tgenabled != TRIGGER_FIRES_ALWAYS ||
			 row->tgisclone != (relid != rootid)))
			refuse_trigger_change(rel, HT_ROW_TRIGGER);
		if (trunc == NULL ? !allow_missing :
			(trunc->tgfoid != truncfn || trunc->tgenabled != TRIGGER_FIRES_ALWAYS))
			refuse_trigger_change(rel, HT_TRUNCATE_TRIGGER);
		relation_close(rel, AccessShareLock);
	}
}

/* the parents of relid by plain inheritance (not partitioning) */
static List *
inheritance_parents(Oid relid)
{
	Relation	inh = table_open(InheritsRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *parents = NIL;

	ScanKeyInit(&key, Anum_pg_inherits_inhrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(inh, InheritsRelidSeqnoIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
		parents = lappend_oid(parents, ((Form_pg_inherits) GETSTRUCT(tup))->inhparent);
	systable_endscan(scan);
	table_close(inh, AccessShareLock);
	return parents;
}

/*
 * What a tracked table (or one of its partitions) may not become: unlogged
 * (a crash empties it without telling its triggers), subject to row level
 * security for its owner (FORCE: the fold reads its rows as the owner and
 * would miss some), or a parent or child by plain inheritance (the rows of
 * a child are read through the parent but never logged).
 */
static void
check_table_state(Relation rel, const char *tracked)
{
	const char *name = RelationGetRelationName(rel);

	if (rel->rd_rel->relpersistence == RELPERSISTENCE_UNLOGGED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("tracked table %s cannot be unlogged (\"%s\")", tracked, name),
				 errdetail("A crash empties an unlogged table without telling its triggers.")));
	if (rel->rd_rel->relforcerowsecurity)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("tracked table %s cannot force row level security (\"%s\")", tracked, name),
				 errdetail("hashtree reads the rows of a tracked table as its owner; a policy that applies to the owner would hide rows from the trees.")));
	if (rel->rd_rel->relkind == RELKIND_RELATION &&
		((rel->rd_rel->relhassubclass &&
		  find_inheritance_children(RelationGetRelid(rel), NoLock) != NIL) ||
		 (!rel->rd_rel->relispartition && inheritance_parents(RelationGetRelid(rel)) != NIL)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("tracked table %s cannot take part in table inheritance (\"%s\")",
						tracked, name),
				 errdetail("Rows of an inheritance child would be read through the tracked table but never logged.")));
}

/*
 * Re-check a tracked table against its registry entry after a change of
 * its shape: re-hash when its columns, key or partitions changed, or when
 * force (its values may have changed: a column's type rewritten with USING,
 * a type it uses altered).
 */
static void
recheck(Relation rel, Registered *reg, bool force)
{
	TrackRel   *tr;
	char	   *sig;
	char	   *qname;

	if (!OidIsValid(RelationGetPrimaryKeyIndex(rel)) && !OidIsValid(RelationGetReplicaIndex(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tracked table \"%s\" must keep a primary key or replica identity index",
						RelationGetRelationName(rel)),
				 errhint("Use hashtree.untrack() to stop tracking the table first.")));
	tr = track_rel(rel);
	sig = signature(tr, rel);
	qname = quote_qualified_identifier(tr->schema, tr->name);

	if (force || strcmp(sig, reg->signature) != 0 ||
		strcmp(tr->enc->key_columns, reg->key_columns) != 0)
	{
		Datum		v[4];
		int64		rows;

		v[0] = PointerGetDatum(tr->pa);
		v[1] = PointerGetDatum(tr->pb);
		v[2] = CStringGetTextDatum(tr->enc->key_columns);
		v[3] = CStringGetTextDatum(sig);
		ht_exec(&q_reregister, v, NULL, 0);
		progress_begin(psprintf("re-hash of %s", qname));
		PG_TRY();
		{
			rows = rehash(tr, -1);
		}
		PG_FINALLY();
		{
			progress.active = false;
		}
		PG_END_TRY();
		ereport(NOTICE,
				(errmsg("hashtree: tracked table %s changed shape: " INT64_FORMAT " rows hashed again",
						qname, rows)));
	}
}

static Registered *
find_registered(Registered *r, int n, const char *schema, const char *name)
{
	for (int i = 0; i < n; i++)
		if (strcmp(r[i].schema, schema) == 0 && strcmp(r[i].name, name) == 0)
			return &r[i];
	return NULL;
}

/*
 * Partitions attached by an ALTER TABLE of a tracked table (the collected
 * command's ATTACH PARTITION subcommands): each, with its own partitions,
 * gets the TRUNCATE trigger.  Only for ATTACH: a pg_restore re-creates the
 * triggers itself, one by one.  The partition is found among the table's
 * partitions by the name the command gave (PostgreSQL 15 records no
 * address for ATTACH).
 */
static void
attached_partitions_get_triggers(Oid root, CollectedCommand *cmd)
{
	ListCell   *lc;

	if (cmd == NULL || cmd->type != SCT_AlterTable)
		return;
	foreach(lc, cmd->d.alterTable.subcmds)
	{
		CollectedATSubcmd *sub = (CollectedATSubcmd *) lfirst(lc);
		AlterTableCmd *at = (AlterTableCmd *) sub->parsetree;
		RangeVar   *rv;
		ListCell   *lp;

		if (!IsA(at, AlterTableCmd) || at->subtype != AT_AttachPartition ||
			at->def == NULL || !IsA(at->def, PartitionCmd))
			continue;
		rv = ((PartitionCmd *) at->def)->name;
		foreach(lp, find_inheritance_children(root, AccessShareLock))
		{
			Oid			child = lfirst_oid(lp);
			char	   *nsp = get_namespace_name(get_rel_namespace(child));
			ListCell   *lq;

			if (strcmp(get_rel_name(child), rv->relname) != 0 ||
				(rv->schemaname != NULL && strcmp(nsp, rv->schemaname) != 0))
				continue;
			foreach(lq, find_all_inheritors(child, AccessShareLock, NULL))
			{
				Relation	part = relation_open(lfirst_oid(lq), AccessShareLock);
				bool		has = (trigger_named(part, HT_TRUNCATE_TRIGGER) != NULL);

				relation_close(part, AccessShareLock);
				if (!has)
					create_truncate_trigger(lfirst_oid(lq));
			}
		}
	}
}

/* does the collected ALTER TABLE change a column's type (values rewritten)? */
static bool
alters_column_type(CollectedCommand *cmd)
{
	ListCell   *lc;

	if (cmd == NULL || cmd->type != SCT_AlterTable)
		return false;
	foreach(lc, cmd->d.alterTable.subcmds)
	{
		AlterTableCmd *at = (AlterTableCmd *) ((CollectedATSubcmd *) lfirst(lc))->parsetree;

		if (IsA(at, AlterTableCmd) && at->subtype == AT_AlterColumnType)
			return true;
	}
	return false;
}

/* check_table_state() for a tracked table and all its partitions */
static void
check_tracked_state(Oid rootid)
{
	char	   *tracked = quote_qualified_identifier(get_namespace_name(get_rel_namespace(rootid)),
												   get_rel_name(rootid));
	ListCell   *lc;

	foreach(lc, find_all_inheritors(rootid, AccessShareLock, NULL))
	{
		Relation	rel = relation_open(lfirst_oid(lc), AccessShareLock);

		check_table_state(rel, tracked);
		relation_close(rel, AccessShareLock);
	}
}

/*
 * _ddl_table(relid oid, cmd pg_ddl_command) RETURNS void: after ALTER TABLE
 * or CREATE TABLE of this relation (cmd: the collected command, for the
 * partitions it attached).  Refuses a rename of a tracked table and any
 * change of its tracking triggers, re-hashes it when its shape changed,
 * gives new partitions their TRUNCATE trigger.  Called by the event trigger
 * as the extension owner.
 */
PG_FUNCTION_INFO_V1(ht_ddl_table);
Datum
ht_ddl_table(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	Oid			fn;
	Registered *r;
	int			n;

	/* DDL run by hashtree itself (track, untrack) is not a change to react to */
	if (ht_api_depth > 0)
		PG_RETURN_VOID();
	SPI_connect();
	HT_API_BEGIN();
	rel = try_relation_open(relid, AccessShareLock);
	if (rel != NULL && (rel->rd_rel->relkind == RELKIND_RELATION ||
						rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE))
	{
		fn = track_fn_oid("_track_row");
		n = registry(&r);
		if (has_track_trigger(rel, fn, false))
		{
			Registered *reg = find_registered(r, n, get_namespace_name(RelationGetNamespace(rel)),
											  RelationGetRelationName(rel));
			CollectedCommand *cmd = PG_ARGISNULL(1) ? NULL :
				(CollectedCommand *) PG_GETARG_POINTER(1);

			if (reg == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("cannot rename a tracked table or move it to another schema"),
						 errdetail("The schema and name of a tracked table are the prefix of its entries on every node."),
						 errhint("Untrack it with hashtree.untrack(), then track it again.")));
			verify_triggers(relid, true);
			check_tracked_state(relid);
			recheck(rel, reg, alters_column_type(cmd));
			attached_partitions_get_triggers(relid, cmd);
		}
		else if (rel->rd_rel->relispartition)
		{
			Oid			root = tracked_root(rel, fn);
			bool		has = (trigger_named(rel, HT_TRUNCATE_TRIGGER) != NULL);

			/*
			 * A partition of a tracked table: created (it gets its TRUNCATE
			 * trigger), or altered (its triggers must stay).
			 */
			relation_close(rel, AccessShareLock);
			rel = NULL;
			if (OidIsValid(root))
			{
				if (!has)
					create_truncate_trigger(relid);
				verify_triggers(root, true);
				check_tracked_state(root);
			}
		}
		else if (rel->rd_rel->relkind == RELKIND_RELATION)
		{
			ListCell   *lp;

			/* a new inheritance child of a tracked table */
			foreach(lp, inheritance_parents(relid))
			{
				Relation	parent = relation_open(lfirst_oid(lp), AccessShareLock);
				bool		tracked = has_track_trigger(parent, fn, false);

				relation_close(parent, AccessShareLock);
				if (tracked)
					check_tracked_state(lfirst_oid(lp));
			}
		}
	}
	if (rel != NULL)
		relation_close(rel, AccessShareLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/* does a value of type typid contain a value of type target (depth-limited)? */
static bool
type_uses(Oid typid, Oid target, int depth)
{
	HeapTuple	tp;
	Form_pg_type t;
	bool		uses = false;

	if (typid == target)
		return true;
	if (depth > 16 || !OidIsValid(typid))
		return false;
	tp = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tp))
		return false;
	t = (Form_pg_type) GETSTRUCT(tp);
	if (OidIsValid(t->typelem) && t->typlen == -1)
		uses = type_uses(t->typelem, target, depth + 1);
	else if (t->typtype == TYPTYPE_DOMAIN)
		uses = type_uses(t->typbasetype, target, depth + 1);
	else if (t->typtype == TYPTYPE_RANGE)
		uses = type_uses(get_range_subtype(typid), target, depth + 1);
	else if (t->typtype == TYPTYPE_MULTIRANGE)
		uses = type_uses(get_multirange_range(typid), target, depth + 1);
	else if (t->typtype == TYPTYPE_COMPOSITE && OidIsValid(t->typrelid))
	{
		Relation	crel = relation_open(t->typrelid, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(crel);

		for (int i = 0; i < desc->natts && !uses; i++)
			if (!TupleDescAttr(desc, i)->attisdropped)
				uses = type_uses(TupleDescAttr(desc, i)->atttypid, target, depth + 1);
		relation_close(crel, AccessShareLock);
	}
	ReleaseSysCache(tp);
	return uses;
}

/*
 * The event-trigger handlers that look at every tracked table: fn(reg,
 * relid, arg) for each registered table (relid InvalidOid when no relation
 * has its schema and name any more), with SPI connected and hashtree's own
 * DDL ignored.
 */
typedef void (*RegisteredFn) (Registered *reg, Oid relid, void *arg);

static void
for_each_registered(RegisteredFn fn, void *arg)
{
	Registered *r;
	int			n;

	if (ht_api_depth > 0)
		return;
	SPI_connect();
	HT_API_BEGIN();
	n = registry(&r);
	for (int i = 0; i < n; i++)
		fn(&r[i], registered_relid(r[i].schema, r[i].name), arg);
	HT_API_END();
	SPI_finish();
}

static void
rehash_if_uses_type(Registered *reg, Oid relid, void *arg)
{
	Oid			typid = *(Oid *) arg;
	Relation	rel;
	TupleDesc	desc;
	bool		uses = false;

	if (!OidIsValid(relid))
		return;
	rel = relation_open(relid, AccessShareLock);
	desc = RelationGetDescr(rel);
	for (int a = 0; a < desc->natts && !uses; a++)
		if (!TupleDescAttr(desc, a)->attisdropped)
			uses = type_uses(TupleDescAttr(desc, a)->atttypid, typid, 0);
	if (uses)
		recheck(rel, reg, true);
	relation_close(rel, AccessShareLock);
}

/*
 * _ddl_type(typid oid) RETURNS void: after ALTER TYPE.  A renamed enum
 * label or a composite's changed attributes change the row hashes of the
 * tracked tables with a column of that type (or of an array, domain, range
 * or composite containing it): those are hashed again.  Called by the
 * event trigger as the extension owner.
 */
PG_FUNCTION_INFO_V1(ht_ddl_type);
Datum
ht_ddl_type(PG_FUNCTION_ARGS)
{
	Oid			typid = PG_GETARG_OID(0);

	for_each_registered(rehash_if_uses_type, &typid);
	PG_RETURN_VOID();
}

static void
check_registered(Registered *reg, Oid relid, void *arg)
{
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot rename the schema of tracked table %s",
						quote_qualified_identifier(reg->schema, reg->name)),
				 errdetail("The schema and name of a tracked table are the prefix of its entries on every node."),
				 errhint("Untrack the schema's tracked tables with hashtree.untrack(), then track them again.")));
	verify_triggers(relid, false);
}

/*
 * _ddl_check_all() RETURNS void: after ALTER TRIGGER or ALTER SCHEMA.
 * Every registered table must still exist under its registered schema and
 * name (a schema rename would change the prefix of its entries on one node
 * only) and keep its triggers.  Called by the event trigger as the
 * extension owner; takes AccessShareLock on the tracked tables.
 */
PG_FUNCTION_INFO_V1(ht_ddl_check_all);
Datum
ht_ddl_check_all(PG_FUNCTION_ARGS)
{
	for_each_registered(check_registered, NULL);
	PG_RETURN_VOID();
}

/*
 * The partitions of a table were changed by hashtree itself (a fragmented
 * table's frag_init, add_frag, del_frag), its rows staying the same: if
 * the table is tracked, give the new partitions their TRUNCATE trigger and
 * record the partitions in the registry, without a re-hash (the rows
 * moved, none changed; entries do not depend on the partition holding a
 * row).  Needs SPI.
 */
void
ht_track_partitions_changed(Oid relid)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	Oid			fn = track_fn_oid("_track_row");
	ListCell   *lc;
	TrackRel   *tr;
	Datum		v[4];

	if (!OidIsValid(fn) || !has_track_trigger(rel, fn, false))
	{
		relation_close(rel, AccessShareLock);
		return;
	}
	foreach(lc, find_all_inheritors(relid, AccessShareLock, NULL))
	{
		Oid			part = lfirst_oid(lc);
		Relation	prel;
		bool		has;

		if (part == relid)
			continue;
		prel = relation_open(part, AccessShareLock);
		has = (trigger_named(prel, HT_TRUNCATE_TRIGGER) != NULL);
		relation_close(prel, AccessShareLock);
		if (!has)
			create_truncate_trigger(part);
	}
	tr = track_rel(rel);
	v[0] = PointerGetDatum(tr->pa);
	v[1] = PointerGetDatum(tr->pb);
	v[2] = CStringGetTextDatum(tr->enc->key_columns);
	v[3] = CStringGetTextDatum(signature(tr, rel));
	ht_exec_as_owner(&q_reregister, v, NULL, 0);
	relation_close(rel, AccessShareLock);
}

/*
 * _ddl_dropped(triggers_dropped boolean) RETURNS void: after a DROP.  A
 * dropped tracked table is untracked, a table that lost a partition or its
 * key index re-checked; when a trigger named like hashtree's was dropped,
 * the tracking triggers of every tracked table must still be there.
 * Called by the event trigger as the extension owner.
 */
PG_FUNCTION_INFO_V1(ht_ddl_dropped);
Datum
ht_ddl_dropped(PG_FUNCTION_ARGS)
{
	bool		triggers_dropped = PG_ARGISNULL(0) ? true : PG_GETARG_BOOL(0);
	Registered *r;
	int			n;
	Oid			fn;

	if (ht_api_depth > 0)
		PG_RETURN_VOID();
	SPI_connect();
	HT_API_BEGIN();
	fn = track_fn_oid("_track_row");
	n = registry(&r);
	for (int i = 0; i < n; i++)
	{
		Oid			relid = registered_relid(r[i].schema, r[i].name);
		Relation	rel;

		if (!OidIsValid(relid))
		{
			forget(r[i].schema, r[i].name);
			ereport(NOTICE,
					(errmsg("hashtree: tracked table %s was dropped: untracked",
							quote_qualified_identifier(r[i].schema, r[i].name))));
			continue;
		}
		rel = relation_open(relid, AccessShareLock);
		if (triggers_dropped)
		{
			if (!has_track_trigger(rel, fn, false))
				refuse_trigger_change(rel, HT_ROW_TRIGGER);
			verify_triggers(relid, false);
		}
		/* a dropped partition, a dropped key index */
		recheck(rel, &r[i], false);
		relation_close(rel, AccessShareLock);
	}
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---- rows for repairs (exchange with repair = pull or push) ----------------- */

/*
 * A row travels between nodes as per-column values matched by column name
 * (so column order, dropped columns and the order of the two tables'
 * columns do not matter), in a bytea:
 *   u16 ncols, then per column: u16 len, name (UTF-8), u8 format, and
 *   'n' (NULL) | 'b' u32 type OID, u32 len, binary send form |
 *   't' u32 len, text form (UTF-8)
 * A built-in type (OID below FirstGenbkiObjectId, the same on every server
 * of a major version) other than the reg* types (their binary form is a
 * local OID) travels in its binary send form, others as text produced
 * under pinned output settings (DateStyle ISO, IntervalStyle postgres,
 * extra_float_digits 3, TimeZone UTC).  The send and receive forms of
 * text types are in the client encoding: UTF-8 while encoding and
 * decoding.  The receiver converts each value with its own column's type:
 * the receive function when the type OID is the same, else through text.
 * Generated columns are not sent (the target computes them).
 *
 * Every access to a table's rows (reading, converting values, writing,
 * deleting, hashing) runs as the table's owner in a security-restricted
 * operation with search_path and the I/O settings pinned, so a trigger, a
 * generated column, an index expression, a constraint or a type's
 * function of the table runs with its owner's rights, never with those of
 * the extension owner or a superuser worker.  The role the repair is done
 * for (ht_repair_role, else the current user: on a peer, the connection's
 * role) must have the rights to read the source and write the target.
 *
 * The source sends each row's row hash along; the target recomputes the
 * hash of the row it wrote and raises an error when they differ, so a
 * repair that did not make the row equal is never reported as done.
 */

/* the role whose rights a repair's helpers check (InvalidOid: current user) */
Oid			ht_repair_role = InvalidOid;

/* the tracked table named (schema, name) on this node, ERROR if none */
static TrackRel *
tracked_by_name(text *schema, text *name, Relation *relp)
{
	char	   *s = text_to_cstring(schema);
	char	   *n = text_to_cstring(name);
	Oid			relid = registered_relid(s, n);
	Relation	rel;
	TrackRel   *tr;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s\" does not exist", quote_qualified_identifier(s, n))));
	rel = table_open(relid, RowExclusiveLock);
	tr = track_rel(rel);
	if (!tr->tracked || tr->root != relid)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not tracked", quote_qualified_identifier(s, n))));
	*relp = rel;
	return tr;
}

/*
 * ERROR unless the role the repair is done for has every right in need on
 * the table, and row level security applies neither to it nor to the
 * table's owner (the rows are read and written as the owner: under a
 * policy, a repair would see or write only part of the table).
 */
static void
repair_check_rights(Relation rel, AclMode need, const char *what)
{
	Oid			role = OidIsValid(ht_repair_role) ? ht_repair_role : GetUserId();
	Oid			relid = RelationGetRelid(rel);
	char	   *qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												   RelationGetRelationName(rel));
	static const AclMode each[] = {ACL_SELECT, ACL_INSERT, ACL_UPDATE, ACL_DELETE};

	for (int i = 0; i < lengthof(each); i++)
		if ((need & each[i]) && pg_class_aclcheck(relid, role, each[i]) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to %s table %s: role \"%s\" lacks %s on it",
							what, qname, GetUserNameFromId(role, false),
							each[i] == ACL_SELECT ? "SELECT" : each[i] == ACL_INSERT ? "INSERT" :
							each[i] == ACL_UPDATE ? "UPDATE" : "DELETE")));
	if (check_enable_rls(relid, role, true) == RLS_ENABLED ||
		check_enable_rls(relid, rel->rd_rel->relowner, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("table %s has row level security for the repairing role or its owner;"
						" it is not repaired", qname)));
}

/* the state of a repair helper while it works as the table's owner */
typedef struct RowIO
{
	HtUserContext uc;
	int			saved_enc;
} RowIO;

static void
set_guc(const char *name, const char *value)
{
	(void) set_config_option(name, value, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Become the table's owner (security-restricted operation, search_path
 * pinned), pin the I/O settings and set the client encoding to UTF-8.
 * Callers undo it with row_io_end in PG_FINALLY, so that no error caught
 * further up can leave this backend as the owner.
 */
static void
row_io_begin(Oid relid, RowIO *io)
{
	io->saved_enc = pg_get_client_encoding();
	ht_as_table_owner_begin(relid, &io->uc);
	set_guc("DateStyle", "ISO, YMD");
	set_guc("IntervalStyle", "postgres");
	set_guc("extra_float_digits", "3");
	set_guc("TimeZone", "UTC");
	/* money (say a domain over it) as text: the same on both nodes */
	set_guc("lc_monetary", "C");
	if (io->saved_enc != PG_UTF8 && SetClientEncoding(PG_UTF8) < 0)
	{
		if (PrepareClientEncoding(PG_UTF8) < 0 || SetClientEncoding(PG_UTF8) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
					 errmsg("cannot convert from the database encoding to UTF-8")));
	}
}

static void
row_io_restore_encoding(RowIO *io)
{
	if (pg_get_client_encoding() != io->saved_enc)
		SetClientEncoding(io->saved_enc);
}

static void
row_io_end(RowIO *io)
{
	row_io_restore_encoding(io);
	ht_as_table_owner_end(&io->uc);
}

/* may a value of this type travel in its binary send form? */
static bool
binary_type(Oid typid)
{
	HeapTuple	tp;
	Form_pg_type t;
	bool		ok;
	Oid			elem;

	if (typid >= FirstGenbkiObjectId)
		return false;
	elem = get_element_type(typid);
	if (OidIsValid(elem) && !binary_type(elem))
		return false;
	switch (typid)
	{
		case REGPROCOID:
		case REGPROCEDUREOID:
		case REGOPEROID:
		case REGOPERATOROID:
		case REGCLASSOID:
		case REGTYPEOID:
		case REGCONFIGOID:
		case REGDICTIONARYOID:
		case REGNAMESPACEOID:
		case REGROLEOID:
		case REGCOLLATIONOID:
		case RECORDOID:
			return false;
	}
	tp = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tp))
		return false;
	t = (Form_pg_type) GETSTRUCT(tp);
	ok = OidIsValid(t->typsend) && OidIsValid(t->typreceive) &&
		(t->typtype == TYPTYPE_BASE || t->typtype == TYPTYPE_RANGE ||
		 t->typtype == TYPTYPE_MULTIRANGE);
	ReleaseSysCache(tp);
	return ok;
}

static void
put_u16(StringInfo buf, uint16 v)
{
	uint16		n = pg_hton16(v);

	appendBinaryStringInfo(buf, (char *) &n, 2);
}

static void
put_u32(StringInfo buf, uint32 v)
{
	uint32		n = pg_hton32(v);

	appendBinaryStringInfo(buf, (char *) &n, 4);
}

/* the transport form of a row (rel's tuple descriptor); as the owner */
static bytea *
encode_row(Relation rel, HeapTuple tuple)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData buf;
	int			n = 0;
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);

	heap_deform_tuple(tuple, desc, values, nulls);
	initStringInfo(&buf);
	appendStringInfoSpaces(&buf, VARHDRSZ);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);

		if (!a->attisdropped && !a->attgenerated)
			n++;
	}
	put_u16(&buf, n);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);
		char	   *name;

		if (a->attisdropped || a->attgenerated)
			continue;
		name = pg_server_to_any(NameStr(a->attname), strlen(NameStr(a->attname)), PG_UTF8);
		put_u16(&buf, strlen(name));
		appendBinaryStringInfo(&buf, name, strlen(name));
		if (nulls[i])
			appendStringInfoChar(&buf, 'n');
		else if (binary_type(a->atttypid))
		{
			Oid			send;
			bool		varlena;
			bytea	   *b;

			getTypeBinaryOutputInfo(a->atttypid, &send, &varlena);
			b = OidSendFunctionCall(send, values[i]);
			appendStringInfoChar(&buf, 'b');
			put_u32(&buf, a->atttypid);
			put_u32(&buf, VARSIZE(b) - VARHDRSZ);
			appendBinaryStringInfo(&buf, VARDATA(b), VARSIZE(b) - VARHDRSZ);
		}
		else
		{
			Oid			out;
			bool		varlena;
			char	   *s;
			char	   *u;

			getTypeOutputInfo(a->atttypid, &out, &varlena);
			s = OidOutputFunctionCall(out, values[i]);
			u = pg_server_to_any(s, strlen(s), PG_UTF8);
			appendStringInfoChar(&buf, 't');
			put_u32(&buf, strlen(u));
			appendBinaryStringInfoNT(&buf, u, strlen(u));
		}
	}
	SET_VARSIZE(buf.data, buf.len);
	return (bytea *) buf.data;
}

/* one column of a received row */
typedef struct RxCol
{
	char	   *name;			/* server encoding */
	char		format;			/* 'n', 'b', 't' */
	Oid			typid;			/* 'b' */
	char	   *data;
	uint32		len;
	bool		used;
} RxCol;

static void
rx_need(const char *p, const char *end, size_t n)
{
	if (end - p < (ptrdiff_t) n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("malformed row in a repair")));
}

static RxCol *
parse_row(bytea *row, int *ncols)
{
	const char *p = VARDATA_ANY(row);
	const char *end = p + VARSIZE_ANY_EXHDR(row);
	RxCol	   *cols;
	uint16		u16;
	uint32		u32;

	rx_need(p, end, 2);
	memcpy(&u16, p, 2);
	p += 2;
	*ncols = pg_ntoh16(u16);
	cols = palloc0(sizeof(RxCol) * Max(*ncols, 1));
	for (int i = 0; i < *ncols; i++)
	{
		RxCol	   *c = &cols[i];
		char	   *name;

		rx_need(p, end, 2);
		memcpy(&u16, p, 2);
		p += 2;
		u16 = pg_ntoh16(u16);
		rx_need(p, end, u16 + 1);
		name = pnstrdup(p, u16);
		c->name = pg_any_to_server(name, u16, PG_UTF8);
		p += u16;
		c->format = *p++;
		if (c->format == 'n')
			continue;
		if (c->format == 'b')
		{
			rx_need(p, end, 4);
			memcpy(&u32, p, 4);
			p += 4;
			c->typid = pg_ntoh32(u32);
		}
		else if (c->format != 't')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("malformed row in a repair")));
		rx_need(p, end, 4);
		memcpy(&u32, p, 4);
		p += 4;
		c->len = pg_ntoh32(u32);
		rx_need(p, end, c->len);
		c->data = (char *) p;
		p += c->len;
	}
	if (p != end)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("malformed row in a repair")));
	return cols;
}

/* a received value in the receiver's column type (as the owner) */
static Datum
decode_value(RxCol *c, Form_pg_attribute a, const char *qname, bool *isnull)
{
	Oid			in;
	Oid			ioparam;

	*isnull = (c->format == 'n');
	if (c->format == 'b' && c->typid == a->atttypid)
	{
		StringInfoData buf;
		Oid			recv;

		getTypeBinaryInputInfo(a->atttypid, &recv, &ioparam);
		initStringInfo(&buf);
		appendBinaryStringInfo(&buf, c->data, c->len);
		return OidReceiveFunctionCall(recv, &buf, ioparam, a->atttypmod);
	}
	getTypeInputInfo(a->atttypid, &in, &ioparam);
	if (c->format == 'n')
		return OidInputFunctionCall(in, NULL, ioparam, a->atttypmod);
	if (c->format == 'b')
	{
		/* another built-in type: read it as sent, convert through text */
		StringInfoData buf;
		Oid			recv;
		Oid			sioparam;
		Oid			out;
		bool		varlena;
		Datum		d;

		if (c->typid >= FirstGenbkiObjectId || !binary_type(c->typid))
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of table %s: the source sent a value of type %u,"
							" unknown here", NameStr(a->attname), qname, c->typid)));
		getTypeBinaryInputInfo(c->typid, &recv, &sioparam);
		initStringInfo(&buf);
		appendBinaryStringInfo(&buf, c->data, c->len);
		d = OidReceiveFunctionCall(recv, &buf, sioparam, -1);
		getTypeOutputInfo(c->typid, &out, &varlena);
		return OidInputFunctionCall(in, OidOutputFunctionCall(out, d), ioparam, a->atttypmod);
	}
	return OidInputFunctionCall(in, pg_any_to_server(pnstrdup(c->data, c->len), c->len, PG_UTF8),
								ioparam, a->atttypmod);
}

/* "(k1, k2)=(v1, v2)" of a key, for messages (as the owner) */
static char *
key_text(HtRelEnc *re, bytea *key)
{
	Datum		v[INDEX_MAX_KEYS];
	StringInfoData names;
	StringInfoData vals;

	ht_key_decode(re, key, v);
	initStringInfo(&names);
	initStringInfo(&vals);
	for (int k = 0; k < re->nkeys; k++)
	{
		Oid			out;
		bool		varlena;

		getTypeOutputInfo(re->keytype[k], &out, &varlena);
		appendStringInfo(&names, "%s%s", k ? ", " : "", quote_identifier(re->keyname[k]));
		appendStringInfo(&vals, "%s%s", k ? ", " : "", OidOutputFunctionCall(out, v[k]));
	}
	return psprintf("(%s)=(%s)", names.data, vals.data);
}

/* the elements of a bytea[] argument (keys, rows, hashes); no NULLs */
static bytea **
key_array(ArrayType *a, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	bytea	  **keys;

	deconstruct_array(a, BYTEAOID, -1, false, TYPALIGN_INT, &elems, &nulls, n);
	keys = palloc(sizeof(bytea *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("keys, rows and hashes must not contain nulls")));
		keys[i] = DatumGetByteaPP(elems[i]);
	}
	return keys;
}

/* put (key, hash, row) of a row read as the owner into the result */
static void
put_row_out(ReturnSetInfo *rsinfo, TrackRel *tr, Relation rel, HeapTuple tuple, bytea *key)
{
	Datum		out[3];
	bool		nulls[3] = {false, false, false};

	out[0] = PointerGetDatum(key ? key : ht_row_key(tr->enc, RelationGetDescr(rel), tuple));
	out[1] = PointerGetDatum(ht_row_hash(tr->enc, RelationGetDescr(rel), tuple));
	out[2] = PointerGetDatum(encode_row(rel, tuple));
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
}

/*
 * _rows_by_key(schema, name, keys bytea[]) RETURNS TABLE(key, hash, r):
 * the rows of those keys that exist, in transport form, with their row
 * hashes.  Needs SELECT on the table for the repairing role; the rows are
 * read as the table's owner (see above).  Locks: ROW EXCLUSIVE on the table.
 */
PG_FUNCTION_INFO_V1(ht_rows_by_key);
Datum
ht_rows_by_key(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	rel;
	TrackRel   *tr;
	bytea	  **keys;
	int			n;
	RowIO		io;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "keys");
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	HT_API_BEGIN();
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	repair_check_rights(rel, ACL_SELECT, "read");
	keys = key_array(PG_GETARG_ARRAYTYPE_P(2), &n);
	if (n > 0)
	{
		row_io_begin(tr->root, &io);
		PG_TRY();
		{
			Datum		params[INDEX_MAX_KEYS];

			key_params(tr->enc, keys, n, params);
			if (SPI_execute_plan(keys_plan(tr, KEYS_ROWS), params, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "hashtree: reading rows of %s failed", tr->name);
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				bool		isnull;
				HeapTupleData tuple;

				record_tuple(rel, DatumGetHeapTupleHeader(ht_col(r, 1, &isnull)), &tuple);
				put_row_out(rsinfo, tr, rel, &tuple, NULL);
			}
		}
		PG_FINALLY();
		{
			row_io_end(&io);
		}
		PG_END_TRY();
	}
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/*
 * hashtree._row_partition(tbl oid, r record) RETURNS int
 * The partition of the key of row r of tracked table tbl.  Locks: ACCESS
 * SHARE on tbl.
 */
PG_FUNCTION_INFO_V1(ht_row_partition);
Datum
ht_row_partition(PG_FUNCTION_ARGS)
{
	Relation	rel;
	HeapTupleData tuple;
	RowEntry	e;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	rel = relation_open(PG_GETARG_OID(0), AccessShareLock);
	record_tuple(rel, PG_GETARG_HEAPTUPLEHEADER(1), &tuple);
	row_entry(track_rel(rel), rel, &tuple, INT_MAX, &e);
	relation_close(rel, AccessShareLock);
	PG_RETURN_INT32(e.part);
}

/*
 * Call fn for every row of the table whose key falls in part (as the
 * owner, inside row_io): a cursor over the table, 1,000 rows at a time.
 */
static void
partition_scan(TrackRel *tr, Relation rel, int part,
			   void (*fn) (void *arg, HeapTuple tuple, bytea *key), void *arg)
{
	SPIPlanPtr	plan;
	Portal		portal;
	MemoryContext batch;
	char	   *alias = row_alias(tr->root);

	plan = SPI_prepare(psprintf("SELECT %s FROM %s %s", alias,
								quote_qualified_identifier(tr->schema, tr->name), alias),
					   0, NULL);
	if (plan == NULL)
		elog(ERROR, "hashtree: SPI_prepare failed (%s)", SPI_result_code_string(SPI_result));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	/* what a batch allocates (keys, hashes, encoded rows) is freed with it */
	batch = AllocSetContextCreate(CurrentMemoryContext, "hashtree partition rows",
								  ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		old = MemoryContextSwitchTo(batch);
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			HeapTupleData tuple;
			RowEntry	e;

			record_tuple(rel, DatumGetHeapTupleHeader(ht_col(r, 1, &isnull)), &tuple);
			row_entry(tr, rel, &tuple, INT_MAX, &e);
			if (e.part == part)
				fn(arg, &tuple, e.key);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	MemoryContextDelete(batch);
}

typedef struct PartRowsArg
{
	ReturnSetInfo *rsinfo;
	TrackRel   *tr;
	Relation	rel;
} PartRowsArg;

static void
partition_row_out(void *arg, HeapTuple tuple, bytea *key)
{
	PartRowsArg *a = (PartRowsArg *) arg;

	put_row_out(a->rsinfo, a->tr, a->rel, tuple, key);
}

/*
 * _partition_rows(schema, name, part) RETURNS TABLE(key, hash, r): every
 * row of the table whose key falls in the partition, as _rows_by_key.
 * Needs SELECT for the repairing role; read as the table's owner.
 */
PG_FUNCTION_INFO_V1(ht_partition_rows);
Datum
ht_partition_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	rel;
	TrackRel   *tr;
	RowIO		io;
	PartRowsArg arg;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "partition");
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	HT_API_BEGIN();
	ht_check_partition(PG_GETARG_INT32(2));
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	repair_check_rights(rel, ACL_SELECT, "read");
	arg.rsinfo = rsinfo;
	arg.tr = tr;
	arg.rel = rel;
	row_io_begin(tr->root, &io);
	PG_TRY();
	{
		partition_scan(tr, rel, PG_GETARG_INT32(2), partition_row_out, &arg);
	}
	PG_FINALLY();
	{
		row_io_end(&io);
	}
	PG_END_TRY();
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/* delete the rows of n keys (as the owner); rows deleted */
static uint64
delete_keys(TrackRel *tr, bytea **keys, int n)
{
	uint64		done = 0;
	SPIPlanPtr	plan = n > 0 ? keys_plan(tr, KEYS_DELETE) : NULL;

	for (int base = 0; base < n; base += HT_KEY_BATCH)
	{
		Datum		params[INDEX_MAX_KEYS];

		key_params(tr->enc, keys + base, Min(HT_KEY_BATCH, n - base), params);
		if (SPI_execute_plan(plan, params, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "hashtree: deleting rows of %s failed", tr->name);
		done += SPI_processed;
	}
	return done;
}

/* the INSERT ... ON CONFLICT ... RETURNING t that writes one row */
static SPIPlanPtr
apply_plan(TrackRel *tr, Relation rel)
{
	TupleDesc	td = RelationGetDescr(rel);
	char	   *qname = quote_qualified_identifier(tr->schema, tr->name);
	StringInfoData cols;
	StringInfoData vals;
	StringInfoData keys;
	StringInfoData sets;
	StringInfoData sql;
	Oid		   *types = palloc(sizeof(Oid) * Max(td->natts, 1));
	int			n = 0;
	SPIPlanPtr	plan;
	char	   *alias = row_alias(tr->root);

	initStringInfo(&cols);
	initStringInfo(&vals);
	initStringInfo(&keys);
	initStringInfo(&sets);
	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(td, i);
		const char *c = quote_identifier(NameStr(a->attname));
		bool		is_key = false;

		if (a->attisdropped || a->attgenerated)
			continue;
		types[n++] = a->atttypid;
		appendStringInfo(&cols, "%s%s", cols.len ? ", " : "", c);
		appendStringInfo(&vals, "%s$%d", vals.len ? ", " : "", n);
		for (int k = 0; k < tr->enc->nkeys; k++)
			if (strcmp(tr->enc->keyname[k], NameStr(a->attname)) == 0)
				is_key = true;
		/*
		 * An identity column GENERATED ALWAYS can only be updated to DEFAULT:
		 * it is left as it is in an existing row (if it differs, the row
		 * hash check reports the row).
		 */
		if (!is_key && a->attidentity != ATTRIBUTE_IDENTITY_ALWAYS)
			appendStringInfo(&sets, "%s%s = EXCLUDED.%s", sets.len ? ", " : "", c, c);
	}
	for (int k = 0; k < tr->enc->nkeys; k++)
		appendStringInfo(&keys, "%s%s", k ? ", " : "", quote_identifier(tr->enc->keyname[k]));
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s AS %s (%s) OVERRIDING SYSTEM VALUE VALUES (%s)"
					 " ON CONFLICT (%s) DO %s%s RETURNING %s",
					 qname, alias, cols.data, vals.data, keys.data,
					 sets.len ? "UPDATE SET " : "NOTHING", sets.data, alias);
	plan = SPI_prepare(sql.data, n, types);
	if (plan == NULL)
		elog(ERROR, "hashtree: SPI_prepare failed (%s): %s",
			 SPI_result_code_string(SPI_result), sql.data);
	return plan;
}

/* write one received row, check its hash (as the owner) */
static void
apply_one(TrackRel *tr, Relation rel, SPIPlanPtr plan, SPIPlanPtr *readback,
		  bytea *row, bytea *hash)
{
	TupleDesc	td = RelationGetDescr(rel);
	char	   *qname = quote_qualified_identifier(tr->schema, tr->name);
	int			nrx;
	RxCol	   *rx = parse_row(row, &nrx);
	Datum	   *values = palloc(sizeof(Datum) * Max(td->natts, 1));
	char	   *nulls = palloc(td->natts + 1);
	int			n = 0;
	HeapTupleData tuple;
	bytea	   *key;
	bytea	   *got;
	bool		isnull;
	Datum		written = (Datum) 0;
	bool		have = false;

	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(td, i);
		RxCol	   *c = NULL;

		if (a->attisdropped || a->attgenerated)
			continue;
		for (int j = 0; j < nrx && c == NULL; j++)
			if (!rx[j].used && strcmp(rx[j].name, NameStr(a->attname)) == 0)
				c = &rx[j];
		if (c == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of table %s is missing in the source's row",
							NameStr(a->attname), qname)));
		c->used = true;
		values[n] = decode_value(c, a, qname, &isnull);
		nulls[n] = isnull ? 'n' : ' ';
		n++;
	}
	for (int j = 0; j < nrx; j++)
		if (!rx[j].used)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("the source's row has a column \"%s\" that table %s lacks"
							" (or a generated one)", rx[j].name, qname)));
	nulls[n] = '\0';
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "hashtree: applying a row to %s failed", qname);
	if (SPI_processed == 1)
	{
		written = ht_col(0, 1, &isnull);
		have = true;
	}
	else
	{
		/*
		 * Not written (ON CONFLICT DO NOTHING, or a trigger skipped it): the
		 * row as it is now, read by the key of the row sent.
		 */
		int			i = 0;
		Datum		kv[INDEX_MAX_KEYS];
		Datum		params[INDEX_MAX_KEYS];

		for (int a = 0; a < td->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(td, a);

			if (att->attisdropped || att->attgenerated)
				continue;
			for (int k = 0; k < tr->enc->nkeys; k++)
				if (strcmp(tr->enc->keyname[k], NameStr(att->attname)) == 0)
					kv[k] = values[i];
			i++;
		}
		key = ht_key_from_values(tr->enc, kv);
		key_params(tr->enc, &key, 1, params);
		if (*readback == NULL)
			*readback = keys_plan(tr, KEYS_ROWS);
		if (SPI_execute_plan(*readback, params, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "hashtree: reading rows of %s failed", qname);
		if (SPI_processed == 1)
		{
			written = ht_col(0, 1, &isnull);
			have = true;
		}
	}
	if (!have)
	{
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("a row repaired into table %s was not written (a trigger skipped it?)",
						qname)));
	}
	record_tuple(rel, DatumGetHeapTupleHeader(written), &tuple);
	got = ht_row_hash(tr->enc, td, &tuple);
	if (hash == NULL || VARSIZE_ANY(got) != VARSIZE_ANY(hash) ||
		memcmp(VARDATA_ANY(got), VARDATA_ANY(hash), VARSIZE_ANY_EXHDR(got)) != 0)
	{
		key = ht_row_key(tr->enc, td, &tuple);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("the row of table %s with key %s differs from its source after the repair",
						qname, key_text(tr->enc, key)),
				 errdetail("A trigger, a generated column, a default or a different column type"
						   " on this node changed the row.")));
	}
}

/*
 * _apply_rows(schema, name, rows bytea[], hashes bytea[], deletes bytea[]):
 * upsert the rows (transport form, see above; hashes[i] the source's row
 * hash of rows[i]) and delete the rows of the keys.  Each row written is
 * hashed again: a row that does not hash equal to its source is an ERROR.
 * Needs SELECT, INSERT, UPDATE (rows) and DELETE (deletes) for the
 * repairing role; the rows are written as the table's owner.  Returns the
 * rows changed.  Locks: ROW EXCLUSIVE on the table.
 */
PG_FUNCTION_INFO_V1(ht_apply_rows);
Datum
ht_apply_rows(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TrackRel   *tr;
	/* (volatile: set before or in the PG_TRY below, read after it) */
	volatile int64 changed = 0;
	bytea	  **volatile rows = NULL;
	bytea	  **volatile hashes = NULL;
	bytea	  **volatile dels = NULL;
	int			nrows = 0;
	int			nhashes = 0;
	int			ndels = 0;
	volatile AclMode need = ACL_SELECT;
	RowIO		io;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	SPI_connect();
	HT_API_BEGIN();
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	if (!PG_ARGISNULL(2))
	{
		rows = key_array(PG_GETARG_ARRAYTYPE_P(2), &nrows);
		if (!PG_ARGISNULL(3))
			hashes = key_array(PG_GETARG_ARRAYTYPE_P(3), &nhashes);
		if (hashes == NULL || nhashes != nrows)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("rows and hashes must have the same number of elements")));
		if (nrows > 0)
			need |= ACL_INSERT | ACL_UPDATE;
	}
	if (!PG_ARGISNULL(4))
	{
		dels = key_array(PG_GETARG_ARRAYTYPE_P(4), &ndels);
		if (ndels > 0)
			need |= ACL_DELETE;
	}
	repair_check_rights(rel, need, "write");
	if (nrows > 0 || ndels > 0)
	{
		row_io_begin(tr->root, &io);
		PG_TRY();
		{
			if (nrows > 0)
			{
				SPIPlanPtr	plan = apply_plan(tr, rel);
				SPIPlanPtr	readback = NULL;
				MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext,
															 "hashtree repair row",
															 ALLOCSET_DEFAULT_SIZES);

				for (int i = 0; i < nrows; i++)
				{
					MemoryContext old = MemoryContextSwitchTo(rowcxt);

					apply_one(tr, rel, plan, &readback, rows[i], hashes[i]);
					MemoryContextSwitchTo(old);
					MemoryContextReset(rowcxt);
					SPI_freetuptable(SPI_tuptable);
					changed++;
				}
			}
			if (ndels > 0)
				changed += delete_keys(tr, dels, ndels);
		}
		PG_FINALLY();
		{
			row_io_end(&io);
		}
		PG_END_TRY();
	}
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(changed);
}

typedef struct PartKeysArg
{
	MemoryContext cxt;			/* where the keys are kept */
	int			n;
	int			cap;
	bytea	  **keys;
} PartKeysArg;

static void
partition_key_out(void *arg, HeapTuple tuple, bytea *key)
{
	PartKeysArg *a = (PartKeysArg *) arg;
	bytea	   *copy = MemoryContextAlloc(a->cxt, VARSIZE_ANY(key));

	memcpy(copy, key, VARSIZE_ANY(key));
	if (a->n >= a->cap)
	{
		a->cap = a->cap ? a->cap * 2 : 1024;
		a->keys = a->keys ? repalloc(a->keys, sizeof(bytea *) * a->cap)
			: MemoryContextAlloc(a->cxt, sizeof(bytea *) * a->cap);
	}
	a->keys[a->n++] = copy;
}

/*
 * _delete_partition_rows(schema, name, part): delete the rows whose keys
 * fall in the partition.  Needs SELECT and DELETE for the repairing role;
 * the rows are read and deleted as the table's owner.  Returns the rows
 * deleted.  Locks: ROW EXCLUSIVE on the table.
 */
PG_FUNCTION_INFO_V1(ht_delete_partition_rows);
Datum
ht_delete_partition_rows(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TrackRel   *tr;
	volatile int64 n = 0;		/* (set in the PG_TRY below, read after it) */
	RowIO		io;
	PartKeysArg arg = {NULL, 0, 0, NULL};

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "partition");
	SPI_connect();
	arg.cxt = CurrentMemoryContext;
	HT_API_BEGIN();
	ht_check_partition(PG_GETARG_INT32(2));
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	repair_check_rights(rel, ACL_SELECT | ACL_DELETE, "write");
	row_io_begin(tr->root, &io);
	PG_TRY();
	{
		partition_scan(tr, rel, PG_GETARG_INT32(2), partition_key_out, &arg);
		n = delete_keys(tr, arg.keys, arg.n);
	}
	PG_FINALLY();
	{
		row_io_end(&io);
	}
	PG_END_TRY();
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(n);
}
