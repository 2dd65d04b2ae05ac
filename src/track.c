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
 * partition.  The event triggers' handlers that keep the registry true to
 * the tables are in ddl.c, the repair helpers that read and write rows of
 * tracked tables in rowio.c; both work through the functions declared in
 * track.h (the last section of this file, and track() and untrack()).
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
#include "common/hashfn.h"
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
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
#include "utils/timestamp.h"

#include "common.h"
#include "pack.h"
#include "partlock.h"
#include "rehash.h"
#include "rowenc.h"
#include "sqlexec.h"
#include "track.h"
#include "treemath.h"
#include "tomb.h"
#include "update.h"

/* ---- per-relation tracking information (backend cache) ----------------- */

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

Oid
ht_track_fn_oid(const char *fn)
{
	return LookupFuncName(list_make2(makeString("hashtree"), makeString(pstrdup(fn))),
						  0, NULL, true);
}

bool
ht_track_has_trigger(Relation rel, Oid fn, bool clones_too)
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

Oid
ht_tracked_root(Relation rel, Oid fn)
{
	Oid			root = InvalidOid;
	ListCell   *lc;

	if (ht_track_has_trigger(rel, fn, false))
		return RelationGetRelid(rel);
	if (!rel->rd_rel->relispartition)
		return InvalidOid;
	foreach(lc, get_partition_ancestors(RelationGetRelid(rel)))
	{
		Relation	anc = relation_open(lfirst_oid(lc), AccessShareLock);

		if (ht_track_has_trigger(anc, fn, false))
			root = RelationGetRelid(anc);
		relation_close(anc, AccessShareLock);
	}
	return root;
}

static bool is_registered(text *pa, text *pb);
static bool registry_lookup(text *pa, text *pb, char **vcol);

static char *
to_utf8(const char *s, int *len)
{
	char	   *u = pg_server_to_any(s, strlen(s), PG_UTF8);

	*len = strlen(u);
	return u;
}

/*
 * The version column of a tracked table (DESIGN §20): its number in this
 * relation (a partition may number it otherwise) and the send function of
 * its type, with which the row trigger logs the version of a deleted row.
 * A column gone since (dropped, renamed) logs no version.
 */
static void
version_col_setup(TrackRel *tr, Relation rel, const char *col)
{
	AttrNumber	att = get_attnum(RelationGetRelid(rel), col);

	tr->versioned = true;
	if (att <= 0)
		return;
	tr->vtype = TupleDescAttr(RelationGetDescr(rel), att - 1)->atttypid;
	if (!ht_version_type_ok(tr->vtype))
		return;
	{
		Oid			send;
		bool		varlena;

		getTypeBinaryOutputInfo(tr->vtype, &send, &varlena);
		fmgr_info_cxt(send, &tr->vsend, tr->cxt);
	}
	tr->vatt = att;
}

/*
 * Can values of a type version rows?  A version's binary form is stored in
 * tombstones, hashed into their entries and compared on either node, and
 * its type's receive and comparison functions run in repairs as the
 * extension's owner: so only a built-in base type (its functions are the
 * server's own, identical on every node) that is not collatable (the send
 * of text follows the client encoding, its order the collation) nor an
 * array, nor one whose values are OIDs of the node's objects (reg*), with
 * a default B-tree operator class.  Numbers, timestamps, dates, uuid,
 * bytea, interval and bool qualify; a domain, an enum, text do not.
 */
bool
ht_version_type_ok(Oid typid)
{
	HeapTuple	tup;
	Form_pg_type t;
	bool		ok;

	if (typid >= FirstGenbkiObjectId)
		return false;
	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tup))
		return false;
	t = (Form_pg_type) GETSTRUCT(tup);
	ok = t->typtype == TYPTYPE_BASE && t->typcategory != TYPCATEGORY_ARRAY &&
		!OidIsValid(t->typcollation) && !OidIsValid(t->typelem) &&
		OidIsValid(t->typsend) && OidIsValid(t->typreceive);
	switch (typid)
	{
		case REGPROCOID:
		case REGPROCEDUREOID:
		case REGOPEROID:
		case REGOPERATOROID:
		case REGCLASSOID:
		case REGCOLLATIONOID:
		case REGTYPEOID:
		case REGROLEOID:
		case REGNAMESPACEOID:
		case REGCONFIGOID:
		case REGDICTIONARYOID:
			ok = false;
			break;
	}
	ReleaseSysCache(tup);
	return ok && OidIsValid(lookup_type_cache(typid, TYPECACHE_CMP_PROC)->cmp_proc);
}

/* the binary form of the version of a row (NULL: none, or not known) */
static bytea *
row_version_bytes(TrackRel *tr, TupleDesc desc, HeapTuple tuple)
{
	bool		isnull;
	Datum		d;

	if (tr->vatt <= 0)
		return NULL;
	d = heap_getattr(tuple, tr->vatt, desc, &isnull);
	if (isnull)
		return NULL;
	return SendFunctionCall(&tr->vsend, d);
}

/*
 * Tracking information of a relation: for a partition of a tracked table,
 * the root's prefix and key columns; for any other table, its own.
 */
TrackRel *
ht_track_rel(Relation rel)
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
		root = ht_tracked_root(rel, ht_track_fn_oid("_track_row"));
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
		tr->registered = false;
		tr->vatt = 0;
		tr->versioned = false;
		if (tr->tracked)
		{
			char	   *vcol = NULL;

			tr->registered = registry_lookup(tr->pa, tr->pb, &vcol);
			if (vcol != NULL)
				version_col_setup(tr, rel, vcol);
		}
		tr->logrel = get_relname_relid("dirty_key", ht_schema_oid());
		tr->logparts = NULL;
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
	TrackRel   *tr = ht_track_rel(rel);

	relation_close(rel, AccessShareLock);
	return tr;
}

/* ---- the write path ---------------------------------------------------------- */

/*
 * Append (part, seg, pa, pb, key, hash) to hashtree.dirty_key: hash is the
 * row hash of the version written, '' when the row went away; key NULL: a
 * re-hash marker for partition part.  A dirty_key of 0.1 (not updated yet:
 * no column hash) gets the key only, which the fold reads the row of.
 */
static void
log_key(TrackRel *tr, int part, bytea *key, bytea *hash, bytea *version)
{
	Oid			logrel = tr->logrel;
	Relation	rel;
	Datum		values[7];
	bool		nulls[7] = {false, false, false, false, false, false, true};
	HeapTuple	tup;
	int			natts;

	if (!OidIsValid(logrel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"hashtree\" is not installed in this database")));
	if (key != NULL)
		part = ht_partition_for(tr->pa8, tr->pa8len, tr->pb8, tr->pb8len,
								VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), ht_num_partitions());
	/* the partition's own table (0.1: dirty_key itself), looked up once */
	if (tr->logparts == NULL && get_rel_relkind(logrel) == RELKIND_PARTITIONED_TABLE)
		tr->logparts = MemoryContextAllocZero(tr->cxt, sizeof(Oid) * ht_num_partitions());
	rel = NULL;
	if (tr->logparts != NULL && OidIsValid(tr->logparts[part]))
		rel = try_table_open(tr->logparts[part], RowExclusiveLock);
	if (rel == NULL && tr->logparts != NULL)
	{
		char		name[NAMEDATALEN];

		snprintf(name, sizeof(name), "dirty_key_%d", part);
		tr->logparts[part] = get_relname_relid(name, get_rel_namespace(tr->logrel));
		if (!OidIsValid(tr->logparts[part]))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("table hashtree.%s is missing", name),
					 errhint("Drop and create extension hashtree again.")));
		rel = table_open(tr->logparts[part], RowExclusiveLock);
	}
	if (rel == NULL)
		rel = table_open(logrel, RowExclusiveLock);
	natts = RelationGetDescr(rel)->natts;
	if (natts < 5 || natts > 7 || RelationGetForm(rel)->relhasindex ||
		RelationGetForm(rel)->relkind != RELKIND_RELATION)
		elog(ERROR, "hashtree: unexpected shape of hashtree.dirty_key");
	values[0] = Int32GetDatum(part);
	values[1] = Int32GetDatum(key ? ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(key),
												  VARSIZE_ANY_EXHDR(key)) : -1);
	values[2] = PointerGetDatum(tr->pa);
	values[3] = PointerGetDatum(tr->pb);
	values[4] = PointerGetDatum(key);
	nulls[4] = (key == NULL);
	values[5] = PointerGetDatum(hash);
	nulls[5] = (hash == NULL);
	values[6] = PointerGetDatum(version);
	nulls[6] = (version == NULL);
	tup = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	simple_heap_insert(rel, tup);
	heap_freetuple(tup);
	table_close(rel, NoLock);
}

/* the hash logged for a row that went away */
static bytea *
gone_hash(void)
{
	bytea	   *h = palloc(VARHDRSZ);

	SET_VARSIZE(h, VARHDRSZ);
	return h;
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
 * trigger "hashtree_track" of a tracked table.  Logs the key and the row
 * hash of each version written ('' for a row deleted; an UPDATE that
 * changes the key logs the old key as deleted) in hashtree.dirty_key with
 * a heap insert into the partition's table (dirty_key_<part>).  Locks: ROW
 * EXCLUSIVE on that table.  The hash is
 * computed here, as the writer, from the tuple as stored (the type send
 * functions any reader of the row runs), so that the fold does not read
 * the row again (§12 of docs/DESIGN.md).
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
	tr = ht_track_rel(td->tg_relation);
	check_own_trigger(td, tr, HT_ROW_TRIGGER);
	desc = RelationGetDescr(td->tg_relation);

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		bytea	   *newkey = ht_row_key(tr->enc, desc, td->tg_newtuple);
		bytea	   *oldkey = ht_row_key(tr->enc, desc, td->tg_trigtuple);

		log_key(tr, 0, newkey, ht_row_hash(tr->enc, desc, td->tg_newtuple), NULL);
		if (!bytea_eq(oldkey, newkey))
			log_key(tr, 0, oldkey, gone_hash(),
					row_version_bytes(tr, desc, td->tg_trigtuple));
	}
	else if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		log_key(tr, 0, ht_row_key(tr->enc, desc, td->tg_trigtuple),
				ht_row_hash(tr->enc, desc, td->tg_trigtuple), NULL);
	else
		log_key(tr, 0, ht_row_key(tr->enc, desc, td->tg_trigtuple), gone_hash(),
				row_version_bytes(tr, desc, td->tg_trigtuple));
	return PointerGetDatum(NULL);
}

/*
 * _track_truncate() RETURNS trigger: AFTER TRUNCATE statement trigger
 * "hashtree_track_truncate" of a tracked table and of each of its
 * partitions; logs a re-hash marker for every partition.  On a table that
 * is no longer part of a tracked table (a detached partition keeps it) it
 * does nothing.  Locks: ROW EXCLUSIVE on each partition's dirty_key_<part>.
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
	tr = ht_track_rel(td->tg_relation);
	/* left on a partition detached from a tracked table: nothing to do */
	if (!tr->tracked)
		return PointerGetDatum(NULL);
	check_own_trigger(td, tr, HT_TRUNCATE_TRIGGER);
	n = ht_num_partitions();
	for (int p = 0; p < n; p++)
		log_key(tr, p, NULL, NULL, NULL);
	return PointerGetDatum(NULL);
}

/* ---- hashing rows -------------------------------------------------------------- */

/* progress of a long re-hash (track, a schema change), NOTICEd each second */
static struct
{
	bool		active;
	const char *what;
	int64		rows;
	int64		base;			/* rows of the tables scanned before this one */
	TimestampTz start;
	TimestampTz last;
} progress;

static void
progress_begin(const char *what)
{
	progress.active = true;
	progress.what = what;
	progress.rows = 0;
	progress.base = 0;
	progress.start = progress.last = GetCurrentTimestamp();
}

/* rows seen so far by the scan of a table (every participant of a parallel one) */
static void
progress_rows(int64 rows)
{
	if (!progress.active)
		return;
	progress.rows = progress.base + rows;
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
void
ht_track_record_tuple(Relation rel, HeapTupleHeader th, HeapTupleData *tuple)
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

/* the rows of a relation encoded with enc, as entries of tracked table tr */
static void
track_row_source(TrackRel *tr, HtRelEnc *enc, HtRowSource *src)
{
	src->enc = enc;
	src->pa8 = tr->pa8;
	src->pa8len = tr->pa8len;
	src->pb8 = tr->pb8;
	src->pb8len = tr->pb8len;
	src->nparts = ht_num_partitions();
}

/* the entry of a row of rel (tr describes rel) */
static void
row_entry(TrackRel *tr, Relation rel, HeapTuple tuple, int want_part, HtRowEntry *e)
{
	HtRowSource src;

	track_row_source(tr, tr->enc, &src);
	ht_row_entry(&src, RelationGetDescr(rel), tuple, want_part, e);
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
	ht_track_record_tuple(rel, PG_GETARG_HEAPTUPLEHEADER(1), &tuple);
	out = hash ? ht_row_hash(ht_track_rel(rel)->enc, RelationGetDescr(rel), &tuple) :
		ht_row_key(ht_track_rel(rel)->enc, RelationGetDescr(rel), &tuple);
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

/*
 * The keys of a table logged so far, in one partition (or all): the scan
 * that follows (a later snapshot) covers them.  They must go: their
 * logged hashes may be of another encoding of the rows (a schema change
 * re-hashes).
 */
static HtQuery q_drop_table_keys = {
	"DELETE FROM hashtree.dirty_key WHERE pa = $2 AND pb = $3 AND ($1 < 0 OR part = $1)",
	3, {INT4OID, TEXTOID, TEXTOID}
};

/* rows read back between two checks for interrupts */
#define HT_SCAN_BATCH 10000

/*
 * Hash the rows of one table (a leaf: a plain table or a partition) into
 * entries of the tracked table tr, keeping only partition part (< 0: all).
 */
static int64
scan_rows(TrackRel *tr, Oid leaf, int part, HtPackBuild *pb)
{
	Relation	rel = table_open(leaf, AccessShareLock);
	HtRowSource src;
	int64		rows;

	/* the leaf's own encoder (its attribute numbers), the root's prefix */
	track_row_source(tr, ht_track_rel(rel)->enc, &src);
	progress.base = progress.rows;
	rows = ht_rehash_leaf(&src, tr->root, leaf, part, pb, progress_rows);
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
 * A table that keeps tombstones: the deletes logged and not folded yet
 * become tombstones before their keys are dropped (the scan cannot see
 * them), with the commit time (or now: not known) and the deleted row's
 * version of the latest delete of each key.
 */
#define KEEP_DELETES_TIME \
	"coalesce(CASE WHEN pg_catalog.current_setting('track_commit_timestamp')::bool" \
	" THEN pg_catalog.pg_xact_commit_timestamp(d.xmin) END, pg_catalog.now())"
#define KEEP_DELETES_SELECT \
	"INSERT INTO hashtree.tombstone AS t (part, pa, pb, key, deleted_at, version)" \
	" SELECT d.part, d.pa, d.pb, d.key, max(" KEEP_DELETES_TIME ")," \
	"  (pg_catalog.array_agg(d.version ORDER BY " KEEP_DELETES_TIME " DESC," \
	"   d.version IS NULL))[1]"
#define KEEP_DELETES_CONFLICT \
	" GROUP BY d.part, d.pa, d.pb, d.key" \
	" ON CONFLICT (part, pa, pb, hashtree._kid(key))" \
	" DO UPDATE SET deleted_at = GREATEST(t.deleted_at, EXCLUDED.deleted_at)," \
	"  version = CASE WHEN EXCLUDED.deleted_at >= t.deleted_at THEN EXCLUDED.version" \
	"   ELSE t.version END"

static HtQuery q_keep_deletes = {
	KEEP_DELETES_SELECT
	" FROM hashtree.dirty_key d WHERE d.pa = $2 AND d.pb = $3 AND ($1 < 0 OR d.part = $1)"
	"  AND d.hash = ''::bytea"
	KEEP_DELETES_CONFLICT,
	3, {INT4OID, TEXTOID, TEXTOID}
};

/* the same for every table that keeps tombstones, in one partition */
static HtQuery q_keep_part_deletes = {
	KEEP_DELETES_SELECT
	" FROM hashtree.dirty_key d JOIN hashtree.tracked_table r ON r.tombstones"
	"  AND r.schema_name = d.pa AND r.table_name = d.pb"
	" WHERE d.part = $1 AND d.hash = ''::bytea"
	KEEP_DELETES_CONFLICT,
	1, {INT4OID}
};

/*
 * ... and before those, a TRUNCATE logged and not folded yet (a re-hash
 * drops its marker) of a table that keeps tombstones: as the fold would
 * (truncate_tombstones), a tombstone at its time for every key the trees
 * have of the table in that partition and every key logged, but those
 * that have one already; the re-hash then drops those of the keys with a
 * row.  $2 NULL: every table that keeps tombstones.
 */
static HtQuery q_keep_truncates = {
	"WITH m AS (SELECT d.part, d.pa, d.pb, max(" KEEP_DELETES_TIME ") AS at"
	"  FROM hashtree.dirty_key d JOIN hashtree.tracked_table r ON r.tombstones"
	"   AND r.schema_name = d.pa AND r.table_name = d.pb"
	"  WHERE d.key IS NULL AND ($1 < 0 OR d.part = $1)"
	"   AND ($2::text IS NULL OR (d.pa = $2 AND d.pb = $3))"
	"  GROUP BY d.part, d.pa, d.pb),"
	" k AS (SELECT m.part, m.pa, m.pb, e.key, m.at"
	"  FROM m CROSS JOIN LATERAL hashtree._prefix_entries(m.part, m.pa, m.pb) e"
	"  UNION ALL SELECT m.part, m.pa, m.pb, d.key, m.at FROM m JOIN hashtree.dirty_key d"
	"  ON d.part = m.part AND d.pa = m.pa AND d.pb = m.pb AND d.key IS NOT NULL)"
	" INSERT INTO hashtree.tombstone (part, pa, pb, key, deleted_at)"
	" SELECT part, pa, pb, key, max(at) FROM k GROUP BY part, pa, pb, key"
	" ON CONFLICT (part, pa, pb, hashtree._kid(key)) DO NOTHING",
	3, {INT4OID, TEXTOID, TEXTOID}
};

static HtQuery q_tombstones = {
	"SELECT part, key, deleted_at, version FROM hashtree.tombstone"
	" WHERE pa = $2 AND pb = $3 AND ($1 < 0 OR part = $1)",
	3, {INT4OID, TEXTOID, TEXTOID}
};

static HtQuery q_drop_tombstones = {
	"DELETE FROM hashtree.tombstone WHERE pa = $1 AND pb = $2"
	" AND (part, hashtree._kid(key)) IN (SELECT u.p, hashtree._kid(u.k)"
	"  FROM unnest($3::int4[], $4::bytea[]) AS u(p, k))",
	4, {TEXTOID, TEXTOID, INT4ARRAYOID, BYTEAARRAYOID}
};

/*
 * The tombstones of a table being re-hashed (part < 0: all partitions) go
 * into its packs, but for the keys that have a row (a key inserted again
 * since: the tombstone goes).
 */
static void
rehash_tombstones(TrackRel *tr, int part, HtPackBuild *pb)
{
	Datum		v[4];
	uint64		n;
	bytea	  **keys;
	int32	   *parts;
	TimestampTz *ats;
	bytea	  **vers;
	bool	   *has_row;
	Relation	rel;
	HtUserContext uc;

	v[0] = Int32GetDatum(part);
	v[1] = PointerGetDatum(tr->pa);
	v[2] = PointerGetDatum(tr->pb);
	n = ht_exec(&q_tombstones, v, NULL, 0);
	if (n == 0)
	{
		SPI_freetuptable(SPI_tuptable);
		return;
	}
	keys = palloc(sizeof(bytea *) * n);
	parts = palloc(sizeof(int32) * n);
	ats = palloc(sizeof(TimestampTz) * n);
	vers = palloc(sizeof(bytea *) * n);
	has_row = palloc0(sizeof(bool) * n);
	for (uint64 r = 0; r < n; r++)
	{
		bool		isnull;

		parts[r] = DatumGetInt32(ht_col(r, 1, &isnull));
		keys[r] = DatumGetByteaPCopy(ht_col(r, 2, &isnull));
		ats[r] = DatumGetTimestampTz(ht_col(r, 3, &isnull));
		{
			Datum		d = ht_col(r, 4, &isnull);

			vers[r] = isnull ? NULL : DatumGetByteaPCopy(d);
		}
	}
	SPI_freetuptable(SPI_tuptable);

	/* which keys have a row (read as the table's owner, as the fold does) */
	rel = relation_open(tr->root, AccessShareLock);
	ht_as_table_owner_begin(tr->root, &uc);
	PG_TRY();
	{
		SPIPlanPtr	plan = ht_track_rows_plan(tr);

		for (uint64 base = 0; base < n; base += HT_KEY_BATCH)
		{
			int			k = (int) Min(HT_KEY_BATCH, n - base);
			Datum		params[INDEX_MAX_KEYS];
			bytea	  **sorted = palloc(sizeof(bytea *) * k);
			int			nfound;

			ht_track_key_params(tr->enc, keys + base, k, params);
			if (SPI_execute_plan(plan, params, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "hashtree: reading rows of %s failed", tr->name);
			nfound = (int) SPI_processed;
			for (int r = 0; r < nfound; r++)
			{
				bool		isnull;
				HeapTupleData tuple;

				ht_track_record_tuple(rel, DatumGetHeapTupleHeader(ht_col(r, 1, &isnull)),
									  &tuple);
				sorted[r] = ht_row_key(tr->enc, RelationGetDescr(rel), &tuple);
			}
			SPI_freetuptable(SPI_tuptable);
			qsort(sorted, nfound, sizeof(bytea *), ht_bytea_ptr_cmp);
			for (int i = 0; i < k; i++)
				has_row[base + i] = bsearch(&keys[base + i], sorted, nfound, sizeof(bytea *),
											ht_bytea_ptr_cmp) != NULL;
		}
		SPI_freeplan(plan);
	}
	PG_FINALLY();
	{
		ht_as_table_owner_end(&uc);
	}
	PG_END_TRY();
	relation_close(rel, NoLock);

	{
		Datum	   *dk = palloc(sizeof(Datum) * n);
		int32	   *dp = palloc(sizeof(int32) * n);
		int			nd = 0;

		for (uint64 r = 0; r < n; r++)
		{
			if (has_row[r])
			{
				dp[nd] = parts[r];
				dk[nd++] = PointerGetDatum(keys[r]);
				continue;
			}
			{
				bytea	   *h = ht_tomb_entry_hash(tr->versioned, ats[r], vers[r]);

				ht_pack_build_add(pb, parts[r],
								  ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(keys[r]),
												VARSIZE_ANY_EXHDR(keys[r])),
								  VARDATA_ANY(keys[r]), VARSIZE_ANY_EXHDR(keys[r]),
								  VARDATA_ANY(h), VARSIZE_ANY_EXHDR(h));
			}
		}
		if (nd > 0)
		{
			v[0] = PointerGetDatum(tr->pa);
			v[1] = PointerGetDatum(tr->pb);
			v[2] = PointerGetDatum(ht_array_int4(dp, nd));
			v[3] = PointerGetDatum(ht_array_bytea(dk, nd));
			ht_exec(&q_drop_tombstones, v, NULL, 0);
		}
	}
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
	bool		tomb;

	v[0] = Int32GetDatum(part);
	v[1] = PointerGetDatum(tr->pa);
	v[2] = PointerGetDatum(tr->pb);
	tomb = ht_tomb_enabled(tr->pa, tr->pb);
	if (tomb)
	{
		ht_exec(&q_keep_truncates, v, NULL, 0);
		ht_exec(&q_keep_deletes, v, NULL, 0);
	}
	ht_exec(&q_drop_table_keys, v, NULL, 0);
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
			rows += scan_rows(tr, lfirst_oid(lc), part, pb);
	}
	if (tomb)
		rehash_tombstones(tr, part, pb);
	ht_pack_build_end(pb);
	return rows;
}

/* the tracked tables, as (schema, name) pairs copied out of SPI */
static HtQuery q_registry = {
	"SELECT schema_name, table_name, key_columns, signature"
	" FROM hashtree.tracked_table ORDER BY 1, 2",
	0, {0}
};

int
ht_track_registry(HtTracked **out)
{
	uint64		n = ht_exec(&q_registry, NULL, NULL, 0);
	HtTracked *r = palloc(sizeof(HtTracked) * Max(n, 1));

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
Oid
ht_track_registered_relid(const char *schema, const char *name)
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
	HtTracked *r;
	int			n;
	Datum		v[1] = {Int32GetDatum(part)};

	/*
	 * the keys logged so far are covered (those committed later are kept);
	 * the deletes among them become tombstones first, for the tables that
	 * keep them (the scan cannot see them)
	 */
	if (ht_tomb_available())
	{
		Datum		t[3] = {Int32GetDatum(part), (Datum) 0, (Datum) 0};
		bool		tn[3] = {false, true, true};

		ht_exec(&q_keep_truncates, t, tn, 0);
		ht_exec(&q_keep_part_deletes, v, NULL, 0);
	}
	ht_exec(&q_drop_part_keys, v, NULL, 0);
	n = ht_track_registry(&r);

	for (int i = 0; i < n; i++)
	{
		Oid			relid = ht_track_registered_relid(r[i].schema, r[i].name);
		TrackRel   *tr;

		if (!OidIsValid(relid))
			continue;
		tr = track_rel_by_oid(relid);
		if (tr->tracked && tr->root == relid)
			(void) rehash(tr, part);
	}
}

/*
 * Is (pa, pb) a registered tracked table, and which is its version column
 * (*vcol, NULL: commit times)?  Read directly (no SQL: this runs from the
 * row trigger as the writing user), with the latest snapshot so that a
 * registration earlier in this transaction is seen.
 */
static bool
registry_lookup(text *pa, text *pb, char **vcol)
{
	Oid			nsp = ht_schema_oid();
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("tracked_table", nsp) : InvalidOid;
	Oid			idxid = OidIsValid(nsp) ? get_relname_relid("tracked_table_pkey", nsp) : InvalidOid;
	Relation	rel;
	ScanKeyData key[2];
	SysScanDesc scan;
	Snapshot	snap;
	HeapTuple	tup;
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
	tup = systable_getnext(scan);
	found = HeapTupleIsValid(tup);
	*vcol = NULL;
	if (found)
	{
		/* (a registry of 0.1, not updated yet, has no such column) */
		AttrNumber	att = get_attnum(relid, "version_column");
		bool		isnull = true;
		Datum		d = att > 0 ? heap_getattr(tup, att, RelationGetDescr(rel), &isnull) : 0;

		if (!isnull)
			*vcol = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	return found;
}

static bool
is_registered(text *pa, text *pb)
{
	char	   *vcol;

	return registry_lookup(pa, pb, &vcol);
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

/*
 * The logged keys of a partition, taken: per table (a TRUNCATE's marker,
 * segment -1, first), in segment order, so that the fold's batches of
 * HT_KEY_BATCH keys cover consecutive ranges of packs and rewrite each pack
 * once (in key order every batch fell in nearly every pack); a key logged
 * more than once comes as adjacent rows (in no particular order among
 * themselves).  The segment is the first column: the sort reads it at a
 * fixed offset (behind the text columns, every comparison had to walk the
 * tuple to it).
 *
 * This is the take of more keys than maintenance_work_mem holds (a sort
 * that spills); fewer are taken by take_in_memory, which sorts them here:
 * with the names equal on nearly every row, the SQL sort compares both
 * names, the segment and the key on every comparison.
 */
static HtQuery q_take_keys = {
	"WITH d AS (DELETE FROM hashtree.dirty_key WHERE part = $1"
	" RETURNING pa, pb, key, hash, seg, xmin, version)"
	" SELECT seg, pa, pb, key, hash, xmin, version FROM d"
	" ORDER BY pa, pb, seg, key NULLS FIRST",
	1, {INT4OID}
};

/*
 * The same, unsorted (take_in_memory sorts them); and how many there are,
 * to choose
 */
static HtQuery q_take_keys_unsorted = {
	"DELETE FROM hashtree.dirty_key WHERE part = $1"
	" RETURNING seg, pa, pb, key, hash, xmin, version",
	1, {INT4OID}
};

static HtQuery q_count_keys = {
	"SELECT count(*) FROM hashtree.dirty_key WHERE part = $1",
	1, {INT4OID}
};

/* the same from a dirty_key of 0.1 (no hash: every row is read) */
static HtQuery q_take_keys_0_1 = {
	"WITH d AS (DELETE FROM hashtree.dirty_key WHERE part = $1 RETURNING pa, pb, key, seg)"
	" SELECT seg, pa, pb, key, NULL::bytea, NULL::xid, NULL::bytea FROM d"
	" ORDER BY pa, pb, seg, key NULLS FIRST",
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
	bytea	  **hashes;			/* ... their logged hash; NULL: read the row */
	int32	   *segs;			/* ... their segment */
	bool		tomb;			/* the table keeps tombstones (tomb.c) */
	HtLoggedDelete *dels;		/* ... then each key's latest logged delete */
	bool		truncated;		/* ... a TRUNCATE logged (its re-hash waits for
								 * the table's other keys) at: */
	TimestampTz trunc_at;
	int			ntrunc;			/* the keys logged with it, and their times */
	int			trunc_cap;
	bytea	  **trunc_keys;
	TimestampTz *trunc_ats;
	bytea	  **trunc_vers;		/* ... a delete's version (versioned tables) */
	HtBucketDeltas *deltas;		/* the change of packed buckets, for the update */
	HtPackApplyStats stats;		/* what the fold saw of the table's packs */
} FoldTable;

static void truncate_note(FoldTable *ft, SPITupleTable *tt, uint64 r);
static void truncate_tombstones(FoldTable *ft, int part);

/* what a statement driven by a list of keys does with the rows */
typedef enum KeyPlanKind
{
	KEYS_ROWS,					/* the rows, as records of the table */
	KEYS_DELETE,				/* delete them */
	KEYS_VERSIONS				/* the rows and their xmin (repair newest) */
} KeyPlanKind;

/*
 * An alias for the table in generated SQL that no column of it has (a
 * bare alias that is also a column name means the column, not the row).
 */
char *
ht_track_row_alias(Oid relid)
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
	char	   *alias = ht_track_row_alias(tr->root);

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
		appendStringInfo(&sql, "SELECT x.r%s FROM %s CROSS JOIN LATERAL"
						 " (SELECT %s AS r, %s.xmin AS v FROM %s %s WHERE %s OFFSET 0) x",
						 kind == KEYS_VERSIONS ? ", x.v" : "",
						 unnest.data, alias, alias, qname, alias, match.data);
	plan = SPI_prepare(sql.data, re->nkeys, types);
	MemoryContextSwitchTo(caller);
	if (plan == NULL)
		elog(ERROR, "hashtree: SPI_prepare failed (%s): %s",
			 SPI_result_code_string(SPI_result), sql.data);
	return plan;
}

/* the key values of n keys, as one array per key column */
void
ht_track_key_params(HtRelEnc *re, bytea **keys, int n, Datum *params)
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

/*
 * The entries of the keys whose hash is not known (logged more than once,
 * or before 1.0): their rows read by key, as the table's owner.  Appends
 * to ch (a row found: its entry; none: the key's entry goes).
 */
static int
read_unknown(int part, FoldTable *ft, bytea **keys, int nkeys, HtPackEntry *ch, int nch)
{
	HtRelEnc   *re = ft->tr->enc;
	Datum		params[INDEX_MAX_KEYS];
	bytea	  **volatile found;
	volatile int nfound = 0;
	volatile int n = nch;
	int			a;
	int			b;
	MemoryContext batch = CurrentMemoryContext;
	HtUserContext uc;

	/*
	 * The rows are read (planned, which may evaluate the table's index
	 * expressions, and hashed, which runs its types' send functions) as the
	 * table's owner in a security-restricted operation, never with the
	 * rights of the extension owner or a worker.
	 */
	ht_as_table_owner_begin(ft->tr->root, &uc);
	PG_TRY();
	{
		uint64		nrows;

		ht_track_key_params(re, keys, nkeys, params);
		if (ft->plan == NULL)
		{
			MemoryContextSwitchTo(GetMemoryChunkContext(ft));
			ft->plan = keys_plan(ft->tr, KEYS_ROWS);
			MemoryContextSwitchTo(batch);
		}
		if (SPI_execute_plan(ft->plan, params, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "hashtree: reading rows of %s failed", ft->tr->name);
		MemoryContextSwitchTo(batch);
		nrows = SPI_processed;
		found = palloc(sizeof(bytea *) * Max(nrows, 1));
		for (uint64 r = 0; r < nrows; r++)
		{
			bool		isnull;
			Datum		d = ht_col(r, 1, &isnull);
			HeapTupleData tuple;
			HtRowEntry	e;

			ht_track_record_tuple(ft->rel, DatumGetHeapTupleHeader(d), &tuple);
			row_entry(ft->tr, ft->rel, &tuple, part, &e);
			if (e.part != part || e.hash == NULL)
				continue;		/* cannot happen: the key was logged for part */
			ch[n].seg = e.seg;
			ch[n].key = e.key;
			ch[n++].hash = e.hash;
			found[nfound++] = e.key;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	PG_FINALLY();
	{
		ht_as_table_owner_end(&uc);
	}
	PG_END_TRY();

	/* the keys whose row is gone lose their entries */
	qsort(keys, nkeys, sizeof(bytea *), ht_bytea_ptr_cmp);
	qsort(found, nfound, sizeof(bytea *), ht_bytea_ptr_cmp);
	a = b = 0;
	while (a < nkeys)
	{
		int			c = (b < nfound) ? ht_bytea_cmp(keys[a], found[b]) : -1;

		if (c < 0)
		{
			ch[n].seg = ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(keys[a]),
									  VARSIZE_ANY_EXHDR(keys[a]));
			ch[n].key = keys[a];
			ch[n++].hash = NULL;
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
	return n;
}

/*
 * Write the entries of the waiting keys: those logged with their row hash
 * as logged, the others from their rows read again.
 */
static void
fold_keys(int part, FoldTable *ft)
{
	HtPackEntry *ch;
	HtPackEntry *rest;
	bytea	  **unknown;
	int			nunknown = 0;
	int			nch = 0;
	int			nrest;
	int32	   *put_seg;
	Datum	   *put_key;
	Datum	   *put_hash;
	int			nput = 0;
	int32	   *del_seg;
	Datum	   *del_key;
	int			ndel = 0;
	MemoryContext caller;

	if (ft->nkeys == 0 || ft->tr == NULL || ft->rehashed)
	{
		ft->nkeys = 0;
		return;
	}
	caller = MemoryContextSwitchTo(ft->batch);
	ch = palloc(sizeof(HtPackEntry) * ft->nkeys);
	unknown = palloc(sizeof(bytea *) * ft->nkeys);
	for (int i = 0; i < ft->nkeys; i++)
	{
		if (ft->hashes[i] == NULL)
		{
			unknown[nunknown++] = ft->keys[i];
			continue;
		}
		ch[nch].seg = ft->segs[i];
		ch[nch].key = ft->keys[i];
		ch[nch++].hash = VARSIZE_ANY_EXHDR(ft->hashes[i]) > 0 ? ft->hashes[i] : NULL;
	}
	if (nunknown > 0)
		nch = read_unknown(part, ft, unknown, nunknown, ch, nch);
	if (ft->tomb)
		ht_tomb_fold(part, ft->tr->pa, ft->tr->pb, ft->tr->versioned, ft->keys, ft->dels,
					 ft->nkeys, ch, nch);

	/* entries of segments a pack covers are written there, the rest as rows */
	rest = palloc(sizeof(HtPackEntry) * Max(nch, 1));
	nrest = ht_pack_apply(part, ft->tr->pa, ft->tr->pb, ch, nch, rest, ft->deltas, &ft->stats);
	put_seg = palloc(sizeof(int32) * Max(nrest, 1));
	put_key = palloc(sizeof(Datum) * Max(nrest, 1));
	put_hash = palloc(sizeof(Datum) * Max(nrest, 1));
	del_seg = palloc(sizeof(int32) * Max(nrest, 1));
	del_key = palloc(sizeof(Datum) * Max(nrest, 1));
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

static HtQuery q_count_tree = {
	"SELECT (SELECT count(*) FROM hashtree.entry"
	"         WHERE part = $1 AND depth = 2 AND pa = $2 AND pb = $3)"
	"     + (SELECT coalesce(sum(n), 0) FROM hashtree.entry_pack"
	"         WHERE part = $1 AND pa = $2 AND pb = $3)",
	3, {INT4OID, TEXTOID, TEXTOID}
};

static HtQuery q_tree_rows = {
	"SELECT seg, key, hash FROM hashtree.entry WHERE part = $1 AND depth = 2 AND pa = $2 AND pb = $3",
	3, {INT4OID, TEXTOID, TEXTOID}
};

/*
 * Pack the entries of a tracked table in one partition again, from its
 * packs and entry rows (not from the table), with the span its size calls
 * for now, and mark its leaf tree for a rebuild (the hashes do not change;
 * the rebuild recomputes the node rows the packs replace).  The fold's
 * bucket deltas of the tree are then ignored by the update.
 */
static void
repack(TrackRel *tr, int part)
{
	Datum		v[3];
	bool		isnull;
	int64		n;
	HtPackBuild *b;
	Portal		portal;

	v[0] = Int32GetDatum(part);
	v[1] = PointerGetDatum(tr->pa);
	v[2] = PointerGetDatum(tr->pb);
	ht_exec(&q_count_tree, v, NULL, 1);
	n = DatumGetInt64(ht_col(0, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	b = ht_pack_build_begin(tr->pa, tr->pb, part, (double) n * ht_num_partitions());
	(void) ht_pack_feed(part, tr->pa, tr->pb, b);
	portal = ht_cursor(&q_tree_rows, v, NULL);
	for (;;)
	{
		uint64		got = ht_fetch(portal, HT_SCAN_BATCH);

		if (got == 0)
			break;
		for (uint64 r = 0; r < got; r++)
		{
			int32		seg = DatumGetInt32(ht_col(r, 1, &isnull));
			bytea	   *key = DatumGetByteaPP(ht_col(r, 2, &isnull));
			bytea	   *hash = DatumGetByteaPP(ht_col(r, 3, &isnull));

			ht_pack_build_add(b, part, seg, VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
							  VARDATA_ANY(hash), VARSIZE_ANY_EXHDR(hash));
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	ht_exec(&q_drop_entries, v, NULL, 0);
	ht_exec(&q_drop_packs, v, NULL, 0);
	ht_exec(&q_mark_tree, v, NULL, 0);
	ht_pack_build_end(b);
	ereport(DEBUG1,
			(errmsg("hashtree: entries of %s in partition %d packed again (" INT64_FORMAT " entries, span %d)",
					quote_qualified_identifier(tr->schema, tr->name), part, n,
					ht_pack_span_for((double) n * ht_num_partitions()))));
}

static void
fold_table_end(int part, FoldTable *ft)
{
	MemoryContext batch = ft->batch;
	bytea	  **keys = ft->keys;
	HtBucketDeltas *deltas = ft->deltas;
	bytea	  **hashes = ft->hashes;
	int32	   *segs = ft->segs;
	HtLoggedDelete *dels = ft->dels;

	if (ft->tr != NULL && ft->truncated)
	{
		truncate_tombstones(ft, part);
		(void) rehash(ft->tr, part);
	}
	if (ft->tr != NULL && !ft->rehashed && ht_pack_needs_repack(&ft->stats))
		repack(ft->tr, part);
	if (ft->plan != NULL)
		SPI_freeplan(ft->plan);
	if (ft->rel != NULL)
		relation_close(ft->rel, NoLock);

	memset(ft, 0, sizeof(FoldTable));
	ft->batch = batch;
	ft->keys = keys;
	ft->hashes = hashes;
	ft->segs = segs;
	ft->dels = dels;
	ft->deltas = deltas;
}

/*
 * A logged row r of key i, in a table that keeps tombstones: of its
 * deletes, keep the latest (tomb.c), with the deleted row's version
 */
static void
fold_note(FoldTable *ft, int i, SPITupleTable *tt, uint64 r)
{
	bool		isnull;
	Datum		hash = SPI_getbinval(tt->vals[r], tt->tupdesc, 5, &isnull);
	Datum		d;
	TransactionId xid;
	TimestampTz ts = DT_NOBEGIN;	/* not known: the fold's time */
	HtLoggedDelete *del = &ft->dels[i];

	if (isnull || VARSIZE_ANY_EXHDR(DatumGetByteaPP(hash)) != 0)
		return;
	d = SPI_getbinval(tt->vals[r], tt->tupdesc, 6, &isnull);
	if (isnull)
		return;
	xid = DatumGetTransactionId(d);
	(void) ht_tomb_commit_time(xid, &ts);
	if (!TransactionIdIsValid(del->xid) || ts > del->at)
	{
		MemoryContext o = MemoryContextSwitchTo(ft->batch);

		del->at = ts;
		del->xid = xid;
		d = SPI_getbinval(tt->vals[r], tt->tupdesc, 7, &isnull);
		del->version = isnull ? NULL : DatumGetByteaPCopy(d);
		MemoryContextSwitchTo(o);
	}
}

static void fold_once(int part, HtBucketDeltas *deltas);

/*
 * The memory a logged key taken in memory costs (its tuple in SPI's tuple
 * table, the pointer to it, its sort item), with room to spare
 */
#define TAKE_ROW_BYTES 256

/* a taken row, for the sort of take_in_memory */
typedef struct TakeItem
{
	uint32		tabhash;		/* of the table's names */
	int32		seg;
	text	   *pa;				/* pointers into the tuple */
	text	   *pb;
	bytea	   *key;			/* NULL: a TRUNCATE's marker */
	HeapTuple	tup;
} TakeItem;

static int
text_bytes_cmp(const text *a, const text *b)
{
	int			la = VARSIZE_ANY_EXHDR(a);
	int			lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

/* by table (a hash of its names, then the names), segment, key (NULL first) */
static int
take_item_cmp(const void *x, const void *y)
{
	const TakeItem *a = x;
	const TakeItem *b = y;
	int			c;

	if (a->tabhash != b->tabhash)
		return a->tabhash < b->tabhash ? -1 : 1;
	if ((c = text_bytes_cmp(a->pa, b->pa)) != 0 || (c = text_bytes_cmp(a->pb, b->pb)) != 0)
		return c;
	if (a->seg != b->seg)
		return a->seg < b->seg ? -1 : 1;
	if (a->key == NULL || b->key == NULL)
		return (a->key != NULL) - (b->key != NULL);
	return text_bytes_cmp(a->key, b->key);
}

/*
 * Take the logged keys of a partition in one statement and sort them here,
 * when they fit in maintenance_work_mem (counted first; a few more may be
 * logged meanwhile): the rows of SPI's tuple table are put in an order
 * like q_take_keys' (tables by a hash of their names, then the names), so
 * the fold reads them as one batch.  The SQL sort copied each row twice
 * (the CTE's store, the sort's tuples) and compared through the sort's
 * generic comparators.  Returns false, having done nothing, when they do
 * not fit (the fold then takes them through q_take_keys' cursor).
 */
static bool
take_in_memory(int part, SPITupleTable **ttp, uint64 *np)
{
	Datum		v[1] = {Int32GetDatum(part)};
	bool		isnull;
	int64		count;
	uint64		n;
	SPITupleTable *tt;
	TakeItem   *items;

	if (ht_exec(&q_count_keys, v, NULL, 1) != 1)
		elog(ERROR, "hashtree: counting the logged keys failed");
	count = DatumGetInt64(ht_col(0, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	if ((double) count * TAKE_ROW_BYTES > (double) maintenance_work_mem * 1024)
		return false;
	n = ht_exec(&q_take_keys_unsorted, v, NULL, 0);
	tt = SPI_tuptable;
	items = palloc(sizeof(TakeItem) * Max(n, 1));
	for (uint64 r = 0; r < n; r++)
	{
		HeapTuple	tup = tt->vals[r];
		Datum		d;

		items[r].tup = tup;
		items[r].seg = DatumGetInt32(SPI_getbinval(tup, tt->tupdesc, 1, &isnull));
		items[r].pa = DatumGetTextPP(SPI_getbinval(tup, tt->tupdesc, 2, &isnull));
		items[r].pb = DatumGetTextPP(SPI_getbinval(tup, tt->tupdesc, 3, &isnull));
		d = SPI_getbinval(tup, tt->tupdesc, 4, &isnull);
		items[r].key = isnull ? NULL : DatumGetByteaPP(d);
		items[r].tabhash = hash_bytes((const unsigned char *) VARDATA_ANY(items[r].pa),
									  VARSIZE_ANY_EXHDR(items[r].pa)) ^
			hash_bytes((const unsigned char *) VARDATA_ANY(items[r].pb),
					   VARSIZE_ANY_EXHDR(items[r].pb));
	}
	qsort(items, n, sizeof(TakeItem), take_item_cmp);
	for (uint64 r = 0; r < n; r++)
		tt->vals[r] = items[r].tup;
	pfree(items);
	*ttp = tt;
	*np = n;
	return true;
}


/*
 * A row r logged for a table whose TRUNCATE this fold saw (the marker
 * comes first): the marker's time (the latest, if several), or a key
 * logged since (or before, unfolded) with the time of the TRUNCATE, or
 * of its own delete if later.
 */
static void
truncate_note(FoldTable *ft, SPITupleTable *tt, uint64 r)
{
	bool		isnull;
	Datum		key = SPI_getbinval(tt->vals[r], tt->tupdesc, 4, &isnull);
	bool		nokey = isnull;
	Datum		hash = SPI_getbinval(tt->vals[r], tt->tupdesc, 5, &isnull);
	bool		del = !isnull && VARSIZE_ANY_EXHDR(DatumGetByteaPP(hash)) == 0;
	Datum		xid = SPI_getbinval(tt->vals[r], tt->tupdesc, 6, &isnull);
	TimestampTz at = DT_NOBEGIN;	/* not known: the fold's time */
	MemoryContext o;

	if (!isnull)
		(void) ht_tomb_commit_time(DatumGetTransactionId(xid), &at);
	if (nokey)
	{
		ft->trunc_at = Max(at, ft->trunc_at);
		return;
	}
	if (!del)
		at = DT_NOBEGIN;		/* (the TRUNCATE's) */
	o = MemoryContextSwitchTo(GetMemoryChunkContext(ft));
	if (ft->ntrunc == ft->trunc_cap)
	{
		ft->trunc_cap = ft->trunc_cap ? ft->trunc_cap * 2 : 1024;
		ft->trunc_keys = ft->trunc_keys ? repalloc(ft->trunc_keys, sizeof(bytea *) * ft->trunc_cap)
			: palloc(sizeof(bytea *) * ft->trunc_cap);
		ft->trunc_ats = ft->trunc_ats ? repalloc(ft->trunc_ats, sizeof(TimestampTz) * ft->trunc_cap)
			: palloc(sizeof(TimestampTz) * ft->trunc_cap);
		ft->trunc_vers = ft->trunc_vers ? repalloc(ft->trunc_vers, sizeof(bytea *) * ft->trunc_cap)
			: palloc(sizeof(bytea *) * ft->trunc_cap);
	}
	ft->trunc_keys[ft->ntrunc] = DatumGetByteaPCopy(key);
	ft->trunc_vers[ft->ntrunc] = NULL;
	if (del)
	{
		Datum		ver = SPI_getbinval(tt->vals[r], tt->tupdesc, 7, &isnull);

		if (!isnull)
			ft->trunc_vers[ft->ntrunc] = DatumGetByteaPCopy(ver);
	}
	ft->trunc_ats[ft->ntrunc++] = at;
	MemoryContextSwitchTo(o);
}

/*
 * The tombstones of a TRUNCATE (DESIGN §20): every key logged with the
 * TRUNCATE gets one at its time (or at its own delete's if later, with
 * the deleted row's version), then every key the trees have of the table
 * in this partition that has no tombstone yet (a key deleted before keeps
 * its tombstone: the TRUNCATE may be of another partition of the table,
 * which the marker does not say).  The re-hash that follows drops those
 * of the keys that have a row (written again, or in a partition of the
 * table the TRUNCATE did not empty).  A table with a version column cannot
 * version a TRUNCATE: its new tombstones of keys not logged with a delete
 * have no version (older than any known).
 */
static HtQuery q_truncate_logged = {
	"INSERT INTO hashtree.tombstone AS t (part, pa, pb, key, deleted_at, version)"
	" SELECT $1, $2, $3, u.key, max(u.at),"
	"  (pg_catalog.array_agg(u.v ORDER BY u.at DESC, u.v IS NULL))[1]"
	" FROM unnest($4::bytea[], $5::timestamptz[], $6::bytea[]) AS u(key, at, v) GROUP BY u.key"
	" ON CONFLICT (part, pa, pb, hashtree._kid(key))"
	" DO UPDATE SET deleted_at = GREATEST(t.deleted_at, EXCLUDED.deleted_at),"
	"  version = CASE WHEN EXCLUDED.deleted_at >= t.deleted_at THEN EXCLUDED.version"
	"   ELSE t.version END",
	6, {INT4OID, TEXTOID, TEXTOID, BYTEAARRAYOID, TIMESTAMPTZARRAYOID, BYTEAARRAYOID}
};

/* (a key with a tombstone already keeps it: see above) */
static HtQuery q_truncate_entries = {
	"INSERT INTO hashtree.tombstone (part, pa, pb, key, deleted_at)"
	" SELECT $1, $2, $3, e.key, $4 FROM hashtree._prefix_entries($1, $2, $3) e"
	" ON CONFLICT (part, pa, pb, hashtree._kid(key)) DO NOTHING",
	4, {INT4OID, TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

static void
truncate_tombstones(FoldTable *ft, int part)
{
	Datum		v[6];
	int			n = ft->ntrunc;
	Datum	   *keys = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *ats = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *vers = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *vnull = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	TimestampTz at = ft->trunc_at;

	if (at == DT_NOBEGIN)
		at = GetCurrentTransactionStartTimestamp();
	for (int i = 0; i < n; i++)
	{
		keys[i] = PointerGetDatum(ft->trunc_keys[i]);
		ats[i] = TimestampTzGetDatum(Max(at, ft->trunc_ats[i]));
		vers[i] = PointerGetDatum(ft->trunc_vers[i]);
		vnull[i] = (ft->trunc_vers[i] == NULL);
	}
	v[0] = Int32GetDatum(part);
	v[1] = PointerGetDatum(ft->tr->pa);
	v[2] = PointerGetDatum(ft->tr->pb);
	if (n > 0)
	{
		v[3] = PointerGetDatum(ht_array_bytea(keys, n));
		v[4] = PointerGetDatum(construct_array(ats, n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL,
											   TYPALIGN_DOUBLE));
		v[5] = PointerGetDatum(construct_md_array(vers, vnull, 1, dims, lbs, BYTEAOID, -1,
												  false, TYPALIGN_INT));
		ht_exec(&q_truncate_logged, v, NULL, 0);
	}
	v[3] = TimestampTzGetDatum(at);
	ht_exec(&q_truncate_entries, v, NULL, 0);
}

/*
 * The fold, then the expiry of the tombstones past hashtree.tombstone_ttl
 * (tomb.c), whose logged keys are folded at once (after the fold: a delete
 * logged by a repair finds the tombstone it wrote, whatever its age)
 */
void
ht_track_fold(int part, HtBucketDeltas *deltas)
{
	fold_once(part, deltas);
	if (ht_tomb_expire(part) > 0)
		fold_once(part, deltas);
}

static void
fold_once(int part, HtBucketDeltas *deltas)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "hashtree fold",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Datum		v[1] = {Int32GetDatum(part)};
	Oid			logrel = get_relname_relid("dirty_key", ht_schema_oid());
	Portal		portal;
	FoldTable  *ft;
	char	   *cur_pa = NULL;
	char	   *cur_pb = NULL;
	SPITupleTable *mem_tt = NULL;
	uint64		mem_n = 0;

	ft = palloc0(sizeof(FoldTable));

	ft->batch = AllocSetContextCreate(cxt, "hashtree fold batch", ALLOCSET_DEFAULT_SIZES);
	ft->keys = palloc(sizeof(bytea *) * HT_KEY_BATCH);
	ft->hashes = palloc(sizeof(bytea *) * HT_KEY_BATCH);
	ft->segs = palloc(sizeof(int32) * HT_KEY_BATCH);
	ft->dels = palloc(sizeof(HtLoggedDelete) * HT_KEY_BATCH);
	ft->deltas = deltas;

	/* the keys in memory, sorted here, or else through a cursor */
	portal = NULL;
	if (get_attnum(logrel, "hash") == InvalidAttrNumber || !take_in_memory(part, &mem_tt, &mem_n))
		portal = ht_cursor(get_attnum(logrel, "hash") == InvalidAttrNumber ?
						   &q_take_keys_0_1 : &q_take_keys, v, NULL);
	for (;;)
	{
		uint64		n = portal ? ht_fetch(portal, HT_KEY_BATCH) : mem_n;
		SPITupleTable *tt = portal ? SPI_tuptable : mem_tt;

		mem_n = 0;
		if (n == 0)
			break;
		for (uint64 r = 0; r < n; r++)
		{
			char	   *pa = SPI_getvalue(tt->vals[r], tt->tupdesc, 2);
			char	   *pb = SPI_getvalue(tt->vals[r], tt->tupdesc, 3);
			bool		isnull;
			Datum		key = SPI_getbinval(tt->vals[r], tt->tupdesc, 4, &isnull);

			if (cur_pa == NULL || strcmp(pa, cur_pa) != 0 || strcmp(pb, cur_pb) != 0)
			{
				Oid			relid;

				SPI_tuptable = NULL;	/* keep this batch while we write */
				fold_keys(part, ft);
				fold_table_end(part, ft);
				cur_pa = pa;
				cur_pb = pb;
				relid = ht_track_registered_relid(pa, pb);
				{
					/*
					 * ROW EXCLUSIVE, kept to the end of the update: a re-hash
					 * of the table (track, a schema change), which rewrites
					 * its packs, waits for this fold or this fold for it
					 */
					ft->rel = relation_open(relid, RowExclusiveLock);
					ft->tr = ht_track_rel(ft->rel);
					if (!ft->tr->tracked || ft->tr->root != relid)
						ft->tr = NULL;	/* untracked since: ignore its keys */
					else
						ft->tomb = ht_tomb_enabled(ft->tr->pa, ft->tr->pb);
				}
			}
			if (ft->tr != NULL && ft->truncated)
			{
				truncate_note(ft, tt, r);
				continue;
			}
			if (ft->tr == NULL || ft->rehashed)
				continue;
			if (isnull && ft->tomb)
			{
				/*
				 * a TRUNCATE of a table that keeps tombstones: every key it
				 * knew gets one, at the end of its keys (truncate_tombstones)
				 */
				ft->truncated = ft->rehashed = true;
				ft->trunc_at = DT_NOBEGIN;
				truncate_note(ft, tt, r);
				continue;
			}
			if (isnull)
			{
				/* a TRUNCATE: re-hash the table's rows of this partition */
				SPI_tuptable = NULL;
				(void) rehash(ft->tr, part);
				ft->rehashed = true;
				continue;
			}
			/* a key logged again: its row is read (which version is last?) */
			if (ft->nkeys > 0 && bytea_eq(ft->keys[ft->nkeys - 1], DatumGetByteaPP(key)))
			{
				ft->hashes[ft->nkeys - 1] = NULL;
				if (ft->tomb)
					fold_note(ft, ft->nkeys - 1, tt, r);
				continue;
			}
			/* (never between two rows of a key: the batch would miss the later) */
			if (ft->nkeys == HT_KEY_BATCH)
			{
				SPI_tuptable = NULL;
				fold_keys(part, ft);
			}
			{
				MemoryContext o = MemoryContextSwitchTo(ft->batch);
				Datum		hash = SPI_getbinval(tt->vals[r], tt->tupdesc, 5, &isnull);

				ft->hashes[ft->nkeys] = isnull ? NULL : DatumGetByteaPCopy(hash);
				ft->segs[ft->nkeys] = DatumGetInt32(SPI_getbinval(tt->vals[r], tt->tupdesc,
																  1, &isnull));
				ft->keys[ft->nkeys] = DatumGetByteaPCopy(key);
				ft->dels[ft->nkeys].xid = InvalidTransactionId;
				ft->dels[ft->nkeys].version = NULL;
				if (ft->tomb)
					fold_note(ft, ft->nkeys, tt, r);
				/* an expired tombstone (tomb.c): the row, if any, is read */
				if (ft->hashes[ft->nkeys] != NULL &&
					VARSIZE_ANY_EXHDR(ft->hashes[ft->nkeys]) == 1)
					ft->hashes[ft->nkeys] = NULL;
				ft->nkeys++;
				MemoryContextSwitchTo(o);
			}
		}
		SPI_freetuptable(tt);
		CHECK_FOR_INTERRUPTS();
	}
	fold_keys(part, ft);
	fold_table_end(part, ft);
	if (portal != NULL)
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

void
ht_track_create_truncate_trigger(Oid relid)
{
	char	   *qname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												   get_rel_name(relid));

	run_ddl("CREATE TRIGGER " HT_TRUNCATE_TRIGGER " AFTER TRUNCATE ON %s"
			" FOR EACH STATEMENT EXECUTE FUNCTION hashtree._track_truncate()", qname);
	run_ddl("ALTER TABLE %s ENABLE ALWAYS TRIGGER " HT_TRUNCATE_TRIGGER, qname);
}

Trigger *
ht_track_trigger_named(Relation rel, const char *name)
{
	TriggerDesc *td = rel->trigdesc;

	for (int i = 0; td != NULL && i < td->numtriggers; i++)
		if (strcmp(td->triggers[i].tgname, name) == 0)
			return &td->triggers[i];
	return NULL;
}

char *
ht_track_signature(TrackRel *tr, Relation rel)
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

List *
ht_track_inheritance_parents(Oid relid)
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
		 (!rel->rd_rel->relispartition &&
		  ht_track_inheritance_parents(RelationGetRelid(rel)) != NIL)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("tracked table %s cannot take part in table inheritance (\"%s\")",
						tracked, name),
				 errdetail("Rows of an inheritance child would be read through the tracked table but never logged.")));
}

void
ht_track_check_state(Oid rootid)
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
	if (ht_track_has_trigger(rel, fn, false))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table \"%s\" is already tracked", name)));
	if (OidIsValid(ht_tracked_root(rel, fn)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is a partition of a tracked table", name)));
	if (kind == RELKIND_PARTITIONED_TABLE)
	{
		ListCell   *lc;

		foreach(lc, find_all_inheritors(RelationGetRelid(rel), NoLock, NULL))
		{
			Relation	part = relation_open(lfirst_oid(lc), NoLock);
			bool		tracked = ht_track_has_trigger(part, fn, false);

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
 * hashtree.track(tbl regclass, version_column name DEFAULT NULL) RETURNS bigint
 * Track a table the caller owns: create its triggers, register it (with
 * the column that versions its rows for repair 'newest', if given: as
 * version_column() does), hash its rows into entries, and bring the trees of every partition that is not
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
	fn = ht_track_fn_oid("_track_row");
	check_trackable(rel, fn);
	ht_track_check_state(relid);
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
	ht_track_create_truncate_trigger(relid);
	if (partitioned)
	{
		ListCell   *lc;

		foreach(lc, find_all_inheritors(relid, NoLock, NULL))
			if (lfirst_oid(lc) != relid)
				ht_track_create_truncate_trigger(lfirst_oid(lc));
	}
	CommandCounterIncrement();

	/* now the table is tracked: describe it, register it, hash it */
	rel = table_open(relid, NoLock);
	tr = ht_track_rel(rel);
	if (!tr->tracked || tr->root != relid)
		elog(ERROR, "hashtree: the tracking trigger of %s is not in place", qname);
	v[0] = PointerGetDatum(tr->pa);
	v[1] = PointerGetDatum(tr->pb);
	v[2] = CStringGetTextDatum(tr->enc->key_columns);
	v[3] = CStringGetTextDatum(ht_track_signature(tr, rel));
	ht_exec(&q_register, v, NULL, 0);
	/* the trigger functions now find the table registered */
	CacheInvalidateRelcacheByRelid(relid);
	if (PG_NARGS() > 1 && !PG_ARGISNULL(1))
		ht_track_set_version_column(tr, rel, NameStr(*PG_GETARG_NAME(1)));
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

void
ht_track_forget(const char *schema, const char *name)
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

void
ht_track_reregister(TrackRel *tr, const char *sig, bool as_owner)
{
	Datum		v[4];

	v[0] = PointerGetDatum(tr->pa);
	v[1] = PointerGetDatum(tr->pb);
	v[2] = CStringGetTextDatum(tr->enc->key_columns);
	v[3] = CStringGetTextDatum(sig);
	if (as_owner)
		ht_exec_as_owner(&q_reregister, v, NULL, 0);
	else
		ht_exec(&q_reregister, v, NULL, 0);
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
	if (!ht_track_has_trigger(rel, ht_track_fn_oid("_track_row"), false) &&
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
	ht_track_forget(schema, name);
	run_ddl("DROP TRIGGER IF EXISTS " HT_ROW_TRIGGER " ON %s", qname);
	if (partitioned)
	{
		ListCell   *lc;

		foreach(lc, find_all_inheritors(relid, ShareRowExclusiveLock, NULL))
		{
			Relation	part = relation_open(lfirst_oid(lc), NoLock);
			bool		has = (ht_track_trigger_named(part, HT_TRUNCATE_TRIGGER) != NULL);
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

/* ---- for the schema-change handlers (ddl.c) and the repair helpers (rowio.c) ---- */

int64
ht_track_rehash(TrackRel *tr, const char *what)
{
	int64		rows;

	progress_begin(what);
	PG_TRY();
	{
		rows = rehash(tr, -1);
	}
	PG_FINALLY();
	{
		progress.active = false;
	}
	PG_END_TRY();
	return rows;
}

static HtQuery q_set_version_column = {
	"UPDATE hashtree.tracked_table SET version_column = $3"
	" WHERE schema_name = $1 AND table_name = $2",
	3, {TEXTOID, TEXTOID, TEXTOID}
};

/*
 * the tombstones kept so far, and the deletes logged and not folded yet,
 * lose their versions (of another column, of another type)
 */
static HtQuery q_unversion_tombstones = {
	"UPDATE hashtree.tombstone SET version = NULL WHERE pa = $1 AND pb = $2",
	2, {TEXTOID, TEXTOID}
};

static HtQuery q_unversion_logged = {
	"UPDATE hashtree.dirty_key SET version = NULL"
	" WHERE pa = $1 AND pb = $2 AND version IS NOT NULL",
	2, {TEXTOID, TEXTOID}
};

void
ht_track_set_version_column(TrackRel *tr, Relation rel, const char *col)
{
	Datum		v[3];
	bool		n[3] = {false, false, col == NULL};
	char	   *was;

	/* writers of every partition wait, with their row triggers' version */
	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
		(void) find_all_inheritors(RelationGetRelid(rel), ShareRowExclusiveLock, NULL);
	/* the same column again changes nothing (a script run twice) */
	(void) registry_lookup(tr->pa, tr->pb, &was);
	if ((was == NULL && col == NULL) || (was != NULL && col != NULL && strcmp(was, col) == 0))
		return;
	if (col != NULL)
	{
		AttrNumber	att = get_attnum(RelationGetRelid(rel), col);
		Oid			typid;

		if (att == InvalidAttrNumber || att < 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of table %s does not exist", col,
							quote_qualified_identifier(tr->schema, tr->name))));
		typid = TupleDescAttr(RelationGetDescr(rel), att - 1)->atttypid;
		if (!ht_version_type_ok(typid))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("version column \"%s\" of type %s cannot version rows", col,
							format_type_be(typid)),
					 errdetail("A version column must be of a built-in type with an order that is neither collatable, an array nor a reference to the node's objects: a number, a timestamp, a date, uuid, bytea, interval.")));
	}
	v[0] = PointerGetDatum(tr->pa);
	v[1] = PointerGetDatum(tr->pb);
	v[2] = col ? CStringGetTextDatum(col) : (Datum) 0;
	if (ht_exec_as_owner(&q_set_version_column, v, n, 0) != 1)
		elog(ERROR, "hashtree: registry row of %s not found", tr->name);
	/* the row triggers of the table and its partitions log the new column */
	CacheInvalidateRelcacheByRelid(tr->root);
	ht_exec_as_owner(&q_unversion_logged, v, NULL, 0);
	tr->versioned = (col != NULL);	/* (the rehash's tombstone entries) */
	if (ht_tomb_enabled(tr->pa, tr->pb) &&
		ht_exec_as_owner(&q_unversion_tombstones, v, NULL, 0) > 0)
		(void) ht_track_rehash(tr, "version_column");
}

int
ht_track_row_partition(TrackRel *tr, Relation rel, HeapTuple tuple, bytea **key)
{
	HtRowEntry	e;

	/* (no partition is INT_MAX: the row hash is not computed) */
	row_entry(tr, rel, tuple, INT_MAX, &e);
	*key = e.key;
	return e.part;
}

SPIPlanPtr
ht_track_rows_plan(TrackRel *tr)
{
	return keys_plan(tr, KEYS_ROWS);
}

SPIPlanPtr
ht_track_versions_plan(TrackRel *tr)
{
	return keys_plan(tr, KEYS_VERSIONS);
}

SPIPlanPtr
ht_track_delete_plan(TrackRel *tr)
{
	return keys_plan(tr, KEYS_DELETE);
}

