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
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/relcache.h"
#include "utils/timestamp.h"

#include "frag.h"
#include "hashtree.h"
#include "pack.h"
#include "rowenc.h"
#include "sqlexec.h"
#include "track.h"
#include "treemath.h"

/*
 * keys read back from a table per statement when folding: large, as each
 * batch rewrites every pack its keys fall in (about one per key while the
 * batch is smaller than the partition's packs)
 */
#define HT_KEY_BATCH 16384

/* ---- per-relation tracking information (backend cache) ----------------- */

typedef struct TrackRel
{
	Oid			relid;			/* hash key: the relation written to */
	bool		valid;
	MemoryContext cxt;
	Oid			root;			/* the tracked table, or relid if untracked */
	bool		tracked;		/* root carries the tracking row trigger */
	bool		registered;		/* ... and is in hashtree.tracked_table */
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

	/* only mark: an entry may be in use by the caller of the invalidation */
	if (track_cache == NULL)
		return;
	hash_seq_init(&status, track_cache);
	while ((tr = hash_seq_search(&status)) != NULL)
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
	Oid			nsp = ht_schema_oid();
	Oid			logrel = OidIsValid(nsp) ? get_relname_relid("dirty_key", nsp) : InvalidOid;
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
	check_own_trigger(td, tr, "hashtree_track");
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
	check_own_trigger(td, tr, "hashtree_track_truncate");
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

PG_FUNCTION_INFO_V1(ht_row_hash_sql);
Datum
ht_row_hash_sql(PG_FUNCTION_ARGS)
{
	return row_encoding_sql(fcinfo, true);
}

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

void
ht_track_rehash_partition(int part)
{
	Registered *r;
	int			n = registry(&r);

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
} FoldTable;

/* what a statement driven by a list of keys does with the rows */
typedef enum KeyPlanKind
{
	KEYS_ROWS,					/* the rows, as records of the table */
	KEYS_JSON,					/* the rows, as jsonb (by column name) */
	KEYS_DELETE					/* delete them */
} KeyPlanKind;

/*
 * SELECT x.t FROM unnest($1, ..., $n) u(k1, ..., kn) CROSS JOIN LATERAL
 *   (SELECT t FROM tbl t WHERE t.k1 = u.k1 AND ... OFFSET 0) x
 * one key index probe per key, whatever the statistics say; or the same
 * as DELETE ... USING unnest(...)
 */
static SPIPlanPtr
keys_plan(TrackRel *tr, KeyPlanKind kind)
{
	HtRelEnc   *re = tr->enc;
	StringInfoData sql;
	StringInfoData unnest;
	StringInfoData match;
	Oid		   *types = palloc(sizeof(Oid) * re->nkeys);
	SPIPlanPtr	plan;
	MemoryContext caller = CurrentMemoryContext;
	char	   *qname = quote_qualified_identifier(tr->schema, tr->name);

	initStringInfo(&unnest);
	initStringInfo(&match);
	appendStringInfoString(&unnest, "unnest(");
	for (int k = 0; k < re->nkeys; k++)
	{
		Oid			arr = get_array_type(re->keytype[k]);

		if (!OidIsValid(arr))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("key column \"%s\" has a type without an array type",
							re->keyname[k])));
		types[k] = arr;
		appendStringInfo(&unnest, "%s$%d", k ? ", " : "", k + 1);
		appendStringInfo(&match, "%st.%s = u.k%d", k ? " AND " : "",
						 quote_identifier(re->keyname[k]), k + 1);
	}
	appendStringInfoString(&unnest, ") AS u(");
	for (int k = 0; k < re->nkeys; k++)
		appendStringInfo(&unnest, "%sk%d", k ? ", " : "", k + 1);
	appendStringInfoChar(&unnest, ')');

	initStringInfo(&sql);
	if (kind == KEYS_DELETE)
		appendStringInfo(&sql, "DELETE FROM %s t USING %s WHERE %s", qname, unnest.data, match.data);
	else
		appendStringInfo(&sql, "SELECT %s FROM %s CROSS JOIN LATERAL"
						 " (SELECT t FROM %s t WHERE %s OFFSET 0) x",
						 kind == KEYS_JSON ? "x.t, pg_catalog.to_jsonb(x.t)" : "x.t",
						 unnest.data, qname, match.data);
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
	int32	   *put_seg;
	Datum	   *put_key;
	Datum	   *put_hash;
	int			nput = 0;
	int32	   *del_seg;
	Datum	   *del_key;
	int			ndel = 0;
	bytea	  **found;
	int			nfound = 0;
	int			a = 0;
	int			b = 0;
	MemoryContext caller;

	if (ft->nkeys == 0 || ft->tr == NULL || ft->rehashed)
	{
		ft->nkeys = 0;
		return;
	}
	caller = MemoryContextSwitchTo(ft->batch);
	re = ft->tr->enc;
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
			continue;			/* cannot happen: the key was logged for part */
		put_seg[nput] = e.seg;
		put_key[nput] = PointerGetDatum(e.key);
		put_hash[nput] = PointerGetDatum(e.hash);
		found[nfound++] = e.key;
		nput++;
	}
	SPI_freetuptable(SPI_tuptable);

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
		nrest = ht_pack_apply(part, ft->tr->pa, ft->tr->pb, ch, nch, rest);
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

	if (ft->plan != NULL)
		SPI_freeplan(ft->plan);
	if (ft->rel != NULL)
		relation_close(ft->rel, NoLock);
	memset(ft, 0, sizeof(FoldTable));
	ft->batch = batch;
	ft->keys = keys;
}

void
ht_track_fold(int part)
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

	run_ddl("CREATE TRIGGER hashtree_track_truncate AFTER TRUNCATE ON %s"
			" FOR EACH STATEMENT EXECUTE FUNCTION hashtree._track_truncate()", qname);
	run_ddl("ALTER TABLE %s ENABLE ALWAYS TRIGGER hashtree_track_truncate", qname);
}

static bool
has_trigger_named(Relation rel, const char *name)
{
	TriggerDesc *td = rel->trigdesc;

	if (td == NULL)
		return false;
	for (int i = 0; i < td->numtriggers; i++)
		if (strcmp(td->triggers[i].tgname, name) == 0)
			return true;
	return false;
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
	partitioned = (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE);
	qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   RelationGetRelationName(rel));
	/* the DDL below needs the table closed (the lock is kept) */
	table_close(rel, NoLock);
	if (partitioned)
		(void) find_all_inheritors(relid, ShareRowExclusiveLock, NULL);

	run_ddl("CREATE TRIGGER hashtree_track AFTER INSERT OR UPDATE OR DELETE ON %s"
			" FOR EACH ROW EXECUTE FUNCTION hashtree._track_row()", qname);
	run_ddl("ALTER TABLE %s ENABLE ALWAYS TRIGGER hashtree_track", qname);
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
	if (!has_track_trigger(rel, track_fn_oid("_track_row"), false))
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
	run_ddl("DROP TRIGGER hashtree_track ON %s", qname);
	if (partitioned)
	{
		ListCell   *lc;

		foreach(lc, find_all_inheritors(relid, ShareRowExclusiveLock, NULL))
		{
			Relation	part = relation_open(lfirst_oid(lc), NoLock);
			bool		has = has_trigger_named(part, "hashtree_track_truncate");
			char	   *pname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(part)),
														   RelationGetRelationName(part));

			relation_close(part, NoLock);
			if (has)
				run_ddl("DROP TRIGGER hashtree_track_truncate ON %s", pname);
		}
	}
	else
		run_ddl("DROP TRIGGER hashtree_track_truncate ON %s", qname);
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---- schema changes (event triggers) -------------------------------------------- */

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
 * and each of its partitions must carry the row trigger "hashtree_track"
 * (the table's own, cloned on the partitions) and the TRUNCATE trigger
 * "hashtree_track_truncate", with hashtree's functions, ENABLE ALWAYS.
 * A partition that lacks its TRUNCATE trigger gets it when create_missing
 * (a partition created or attached); anything else is refused.
 */
static void
verify_triggers(Oid rootid, bool create_missing)
{
	Oid			rowfn = track_fn_oid("_track_row");
	Oid			truncfn = track_fn_oid("_track_truncate");
	ListCell   *lc;

	foreach(lc, find_all_inheritors(rootid, AccessShareLock, NULL))
	{
		Oid			relid = lfirst_oid(lc);
		Relation	rel = relation_open(relid, AccessShareLock);
		Trigger    *row = trigger_named(rel, "hashtree_track");
		Trigger    *trunc = trigger_named(rel, "hashtree_track_truncate");
		bool		create = false;

		if (row == NULL || row->tgfoid != rowfn ||
			row->tgenabled != TRIGGER_FIRES_ALWAYS ||
			row->tgisclone != (relid != rootid))
			refuse_trigger_change(rel, "hashtree_track");
		if (trunc == NULL && relid != rootid && create_missing)
			create = true;
		else if (trunc == NULL || trunc->tgfoid != truncfn ||
				 trunc->tgenabled != TRIGGER_FIRES_ALWAYS)
			refuse_trigger_change(rel, "hashtree_track_truncate");
		relation_close(rel, AccessShareLock);
		if (create)
			create_truncate_trigger(relid);
	}
}

/*
 * Re-check a tracked table against its registry entry after a change of
 * its shape: re-hash when its columns, key or partitions changed.
 */
static void
recheck(Relation rel, Registered *reg)
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

	if (strcmp(sig, reg->signature) != 0 || strcmp(tr->enc->key_columns, reg->key_columns) != 0)
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

/* _ddl_table(oid): after ALTER TABLE or CREATE TABLE of this relation */
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

			if (reg == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("cannot rename a tracked table or move it to another schema"),
						 errdetail("The schema and name of a tracked table are the prefix of its entries on every node."),
						 errhint("Untrack it with hashtree.untrack(), then track it again.")));
			verify_triggers(relid, true);
			recheck(rel, reg);
		}
		else if (rel->rd_rel->relispartition)
		{
			Oid			root = tracked_root(rel, fn);

			/*
			 * A partition of a tracked table: created or attached (it gets
			 * its TRUNCATE trigger), or altered (its triggers must stay).
			 */
			relation_close(rel, AccessShareLock);
			rel = NULL;
			if (OidIsValid(root))
				verify_triggers(root, true);
		}
	}
	if (rel != NULL)
		relation_close(rel, AccessShareLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
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
	Registered *r;
	int			n;

	if (ht_api_depth > 0)
		PG_RETURN_VOID();
	SPI_connect();
	HT_API_BEGIN();
	n = registry(&r);
	for (int i = 0; i < n; i++)
	{
		Oid			relid = registered_relid(r[i].schema, r[i].name);

		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot rename the schema of tracked table %s",
							quote_qualified_identifier(r[i].schema, r[i].name)),
					 errdetail("The schema and name of a tracked table are the prefix of its entries on every node."),
					 errhint("Untrack the schema's tracked tables with hashtree.untrack(), then track them again.")));
		verify_triggers(relid, false);
	}
	HT_API_END();
	SPI_finish();
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
	Oid			save_user;
	int			save_sec;

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
		has = has_trigger_named(prel, "hashtree_track_truncate");
		relation_close(prel, AccessShareLock);
		if (!has)
			create_truncate_trigger(part);
	}
	tr = track_rel(rel);
	v[0] = PointerGetDatum(tr->pa);
	v[1] = PointerGetDatum(tr->pb);
	v[2] = CStringGetTextDatum(tr->enc->key_columns);
	v[3] = CStringGetTextDatum(signature(tr, rel));
	ht_as_owner_begin(&save_user, &save_sec);
	ht_exec(&q_reregister, v, NULL, 0);
	ht_as_owner_end(save_user, save_sec);
	relation_close(rel, AccessShareLock);
}

/* _ddl_dropped(): after a DROP; a dropped tracked table is untracked */
PG_FUNCTION_INFO_V1(ht_ddl_dropped);
Datum
ht_ddl_dropped(PG_FUNCTION_ARGS)
{
	Registered *r;
	int			n;
	Oid			fn;

	if (ht_api_depth > 0)
		PG_RETURN_VOID();
	SPI_connect();
	HT_API_BEGIN();
	/* a dropped fragmented table is forgotten */
	ht_frag_forget_dropped();
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
		if (!has_track_trigger(rel, fn, false))
			refuse_trigger_change(rel, "hashtree_track");
		verify_triggers(relid, false);
		/* a dropped partition, a dropped key index */
		recheck(rel, &r[i]);
		relation_close(rel, AccessShareLock);
	}
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---- rows for repairs (exchange with repair = pull or push) ----------------- */

/*
 * Rows travel between nodes as jsonb objects keyed by column name, so the
 * column order of the two tables does not matter; they are applied with
 * jsonb_populate_recordset, which converts each value with the column
 * type's input function.
 */

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
					 errmsg("keys must not contain nulls")));
		keys[i] = DatumGetByteaPP(elems[i]);
	}
	return keys;
}

/* _rows_by_key(schema, name, keys): (key, row as jsonb) of those that exist */
PG_FUNCTION_INFO_V1(ht_rows_by_key);
Datum
ht_rows_by_key(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	rel;
	TrackRel   *tr;
	bytea	  **keys;
	int			n;
	Datum		params[INDEX_MAX_KEYS];
	SPIPlanPtr	plan;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "keys");
	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	keys = key_array(PG_GETARG_ARRAYTYPE_P(2), &n);
	if (n > 0)
	{
		key_params(tr->enc, keys, n, params);
		plan = keys_plan(tr, KEYS_JSON);
		if (SPI_execute_plan(plan, params, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "hashtree: reading rows of %s failed", tr->name);
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			HeapTupleData tuple;
			Datum		out[2];
			bool		nulls[2] = {false, false};

			record_tuple(rel, DatumGetHeapTupleHeader(ht_col(r, 1, &isnull)), &tuple);
			out[0] = PointerGetDatum(ht_row_key(tr->enc, RelationGetDescr(rel), &tuple));
			out[1] = ht_col(r, 2, &isnull);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
		}
	}
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/* _row_partition(tbl, row): the partition of a tracked row's key */
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
 * _apply_rows(schema, name, rows jsonb, deletes bytea[]): upsert the rows
 * (a JSON array of objects) and delete the keys.  Returns rows changed.
 */
PG_FUNCTION_INFO_V1(ht_apply_rows);
Datum
ht_apply_rows(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TrackRel   *tr;
	int64		changed = 0;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	SPI_connect();
	HT_API_BEGIN();
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	if (!PG_ARGISNULL(2))
	{
		TupleDesc	td = RelationGetDescr(rel);
		char	   *qname = quote_qualified_identifier(tr->schema, tr->name);
		StringInfoData cols;
		StringInfoData vals;
		StringInfoData keys;
		StringInfoData sets;
		StringInfoData sql;
		Oid			types[1] = {JSONBOID};
		Datum		v[1];

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
			appendStringInfo(&cols, "%s%s", cols.len ? ", " : "", c);
			appendStringInfo(&vals, "%sr.%s", vals.len ? ", " : "", c);
			for (int k = 0; k < tr->enc->nkeys; k++)
				if (strcmp(tr->enc->keyname[k], NameStr(a->attname)) == 0)
					is_key = true;
			if (!is_key)
				appendStringInfo(&sets, "%s%s = EXCLUDED.%s", sets.len ? ", " : "", c, c);
		}
		for (int k = 0; k < tr->enc->nkeys; k++)
			appendStringInfo(&keys, "%s%s", k ? ", " : "", quote_identifier(tr->enc->keyname[k]));
		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "INSERT INTO %s AS t (%s) OVERRIDING SYSTEM VALUE"
						 " SELECT %s FROM pg_catalog.jsonb_populate_recordset(NULL::%s, $1) r"
						 " ON CONFLICT (%s) DO %s%s",
						 qname, cols.data, vals.data, qname, keys.data,
						 sets.len ? "UPDATE SET " : "NOTHING", sets.data);
		v[0] = PG_GETARG_DATUM(2);
		if (SPI_execute_with_args(sql.data, 1, types, v, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "hashtree: applying rows to %s failed", qname);
		changed += SPI_processed;
	}
	if (!PG_ARGISNULL(3))
	{
		bytea	  **keys;
		int			n;
		Datum		params[INDEX_MAX_KEYS];

		keys = key_array(PG_GETARG_ARRAYTYPE_P(3), &n);
		if (n > 0)
		{
			key_params(tr->enc, keys, n, params);
			if (SPI_execute_plan(keys_plan(tr, KEYS_DELETE), params, NULL, false, 0) != SPI_OK_DELETE)
				elog(ERROR, "hashtree: deleting rows of %s failed", tr->name);
			changed += SPI_processed;
		}
	}
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(changed);
}

/* _partition_rows(schema, name, part): every row of a partition, as jsonb */
PG_FUNCTION_INFO_V1(ht_partition_rows);
Datum
ht_partition_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	rel;
	TrackRel   *tr;
	Datum		v[2];
	Oid			types[2] = {OIDOID, INT4OID};

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "partition");
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	HT_API_BEGIN();
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	v[0] = ObjectIdGetDatum(tr->root);
	v[1] = Int32GetDatum(PG_GETARG_INT32(2));
	if (SPI_execute_with_args(psprintf("SELECT pg_catalog.to_jsonb(t) FROM %s t"
									   " WHERE hashtree._row_partition($1, t) = $2",
									   quote_qualified_identifier(tr->schema, tr->name)),
							  2, types, v, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "hashtree: reading rows of %s failed", tr->name);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		Datum		d = ht_col(r, 1, &isnull);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &d, &isnull);
	}
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/* _delete_partition_rows(schema, name, part): delete a partition's rows */
PG_FUNCTION_INFO_V1(ht_delete_partition_rows);
Datum
ht_delete_partition_rows(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TrackRel   *tr;
	Datum		v[2];
	Oid			types[2] = {OIDOID, INT4OID};
	int64		n;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "partition");
	SPI_connect();
	HT_API_BEGIN();
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	v[0] = ObjectIdGetDatum(tr->root);
	v[1] = Int32GetDatum(PG_GETARG_INT32(2));
	if (SPI_execute_with_args(psprintf("DELETE FROM %s t WHERE hashtree._row_partition($1, t) = $2",
									   quote_qualified_identifier(tr->schema, tr->name)),
							  2, types, v, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "hashtree: deleting rows of %s failed", tr->name);
	n = SPI_processed;
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(n);
}
