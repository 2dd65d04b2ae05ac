/*-------------------------------------------------------------------------
 *
 * store.c
 *	  Tree storage in the extension's tables.
 *
 * hashtree.entry	every entry of every tree (depth 2: the user's; depth 1
 *					and 0: derived, a child tree's name -> its top hash)
 * hashtree.dirty	append-only log of leaf segments changed since the last
 *					update; writers only insert, update only deletes
 * hashtree.node	per tree: level 3 rows (segment -> segment hash),
 *					level 2 rows (bucket -> bucket hash), one level 1 row
 *					(0 -> top hash); zero (empty) hashes are not stored
 *
 * A write touches one entry row and appends one dirty row, so writers of
 * different keys never wait for each other, and an update (which reads
 * entries and deletes only the dirty rows its snapshot sees) never blocks
 * a writer.  The incremental update is in update.c; the rebuild here
 * computes the same rows with set-based SQL and the same digests, so both
 * produce byte-identical trees.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "common.h"
#include "pack.h"
#include "sqlexec.h"
#include "store.h"
#include "treemath.h"

/* ---- writes of leaf entries ----------------------------------------------- */

/*
 * The writes of a database not updated to 1.0 yet (no entry.version, no
 * hashtree.tombstone_prefix): the library may be newer than the extension.
 */
static HtQuery q_put_0_1 = {
	"WITH e AS ("
	" INSERT INTO hashtree.entry AS t (part, seg, depth, pa, pb, key, hash)"
	" VALUES ($1, $2, 2, $3, $4, $5, $6)"
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key))"
	" DO UPDATE SET hash = EXCLUDED.hash WHERE t.hash <> EXCLUDED.hash"
	" RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	6, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID}
};

static HtQuery q_put_if_missing_0_1 = {
	"WITH e AS ("
	" INSERT INTO hashtree.entry (part, seg, depth, pa, pb, key, hash)"
	" VALUES ($1, $2, 2, $3, $4, $5, $6)"
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key)) DO NOTHING"
	" RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	6, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID}
};

static HtQuery q_delete_0_1 = {
	"WITH e AS ("
	" DELETE FROM hashtree.entry"
	" WHERE part = $1 AND depth = 2 AND pa = $3 AND pb = $4 AND seg = $2"
	"   AND hashtree._kid(key) = hashtree._kid($5) AND key = $5"
	" RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	5, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID}
};

/*
 * Prefixes that keep tombstones (DESIGN §20).  Every writer of a key of
 * such a prefix locks the key's entry row first (its upsert, its delete;
 * ON CONFLICT DO UPDATE locks the row even when its WHERE is false), and
 * only then, in a statement of its own (a new snapshot, which sees what
 * the writers it waited for committed), writes or removes the tombstone
 * row: so the tombstone row exists exactly when the entry is the
 * tombstone's, and writers cannot deadlock.  The other prefixes are
 * written by one statement, as before.
 */

/*
 * Write an entry with its version ($7, NULL: the commit time of the row's
 * transaction).  An insert that changes neither the hash nor the version
 * writes nothing.
 */
static HtQuery q_put = {
	"WITH e AS ("
	" INSERT INTO hashtree.entry AS t (part, seg, depth, pa, pb, key, hash, version)"
	" VALUES ($1, $2, 2, $3, $4, $5, $6, $7)"
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key))"
	" DO UPDATE SET hash = EXCLUDED.hash, version = EXCLUDED.version"
	" WHERE t.hash <> EXCLUDED.hash OR t.version IS DISTINCT FROM EXCLUDED.version"
	" RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	7, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID, TIMESTAMPTZOID}
};

/*
 * In a prefix that keeps tombstones the row is written even when unchanged
 * (a new commit time: the latest write wins a repair 'newest')
 */
static HtQuery q_put_keep = {
	"WITH e AS ("
	" INSERT INTO hashtree.entry AS t (part, seg, depth, pa, pb, key, hash, version)"
	" VALUES ($1, $2, 2, $3, $4, $5, $6, $7)"
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key))"
	" DO UPDATE SET hash = EXCLUDED.hash, version = EXCLUDED.version"
	" RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	7, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID, TIMESTAMPTZOID}
};

/* if_missing: only when the key has no entry (DO NOTHING: no lock on one) */
#define PUT_IF_MISSING \
	"WITH e AS (" \
	" INSERT INTO hashtree.entry (part, seg, depth, pa, pb, key, hash, version)" \
	" VALUES ($1, $2, 2, $3, $4, $5, $6, $7)" \
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key)) DO NOTHING" \
	" RETURNING 1)"

static HtQuery q_put_if_missing = {
	PUT_IF_MISSING
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	7, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID, TIMESTAMPTZOID}
};

/* ... and whether it wrote */
static HtQuery q_put_if_missing_keep = {
	PUT_IF_MISSING ","
	" d AS (INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e)"
	" SELECT count(*) FROM e",
	7, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID, TIMESTAMPTZOID}
};

#define KEY_OF(t) \
	t "part = $1 AND " t "pa = $3 AND " t "pb = $4 AND hashtree._kid(" t "key) = hashtree._kid($5)"
#define ENTRY_OF_KEY \
	"part = $1 AND depth = 2 AND pa = $3 AND pb = $4 AND seg = $2" \
	" AND hashtree._kid(key) = hashtree._kid($5) AND key = $5"

static HtQuery q_lock_entry = {
	"SELECT 1 FROM hashtree.entry WHERE " ENTRY_OF_KEY " FOR UPDATE",
	5, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID}
};

static HtQuery q_drop_tomb = {
	"DELETE FROM hashtree.tombstone WHERE " KEY_OF(""),
	5, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID}
};

/* a delete in a prefix that keeps tombstones: the entry (key, T) ($7) */
static HtQuery q_delete_keep = {
	"WITH e AS ("
	" INSERT INTO hashtree.entry AS y (part, seg, depth, pa, pb, key, hash)"
	" VALUES ($1, $2, 2, $3, $4, $5, $7)"
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key)) DO UPDATE"
	" SET hash = EXCLUDED.hash, version = NULL"
	" WHERE y.hash <> EXCLUDED.hash OR y.version IS NOT NULL"
	" RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	7, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, TIMESTAMPTZOID, BYTEAOID}
};

/* the tombstone of a delete ($6), once its entry is locked */
static HtQuery q_put_tomb = {
	"INSERT INTO hashtree.tombstone AS x (part, pa, pb, key, deleted_at)"
	" VALUES ($1, $3, $4, $5, $6)"
	" ON CONFLICT (part, pa, pb, hashtree._kid(key)) DO UPDATE SET deleted_at = EXCLUDED.deleted_at",
	6, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, TIMESTAMPTZOID}
};

/* remove an entry, whatever it is (its tombstone next) */
static HtQuery q_purge = {
	"WITH e AS (DELETE FROM hashtree.entry WHERE " ENTRY_OF_KEY " RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	5, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID}
};

/*
 * The registry of prefixes that keep tombstones, read once per backend and
 * read again after a change: tombstones(prefix_a, prefix_b) invalidates
 * the registry's relcache entry (entryver.c), which each backend hears of
 * at its next transaction or lock; so does any change of the registry or
 * of hashtree.entry (a DROP EXTENSION, the update to 1.0).  A write that
 * overlaps the change of the registry may see it or not, as with a
 * snapshot.
 */
typedef struct TombPrefixes
{
	bool		valid;
	bool		versions;		/* 1.0: entry.version and the registry */
	Oid			registry;
	Oid			entry;
	int			n;
	char	  **pa;
	char	  **pb;
	MemoryContext cxt;
} TombPrefixes;

static TombPrefixes tomb_prefixes;

static HtQuery q_tomb_prefixes = {
	"SELECT prefix_a, prefix_b FROM hashtree.tombstone_prefix",
	0, {InvalidOid}
};

static void
tomb_prefixes_inval(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == tomb_prefixes.registry || relid == tomb_prefixes.entry)
		tomb_prefixes.valid = false;
}

static void
tomb_prefixes_load(void)
{
	TombPrefixes *tp = &tomb_prefixes;
	Oid			nsp = ht_schema_oid();
	uint64		n;
	MemoryContext old;

	if (tp->cxt == NULL)
	{
		tp->cxt = AllocSetContextCreate(TopMemoryContext, "hashtree tombstone prefixes",
										ALLOCSET_SMALL_SIZES);
		CacheRegisterRelcacheCallback(tomb_prefixes_inval, (Datum) 0);
	}
	MemoryContextReset(tp->cxt);
	tp->n = 0;
	/* (valid first: an invalidation while reading makes the next call read again) */
	tp->valid = true;
	tp->entry = get_relname_relid("entry", nsp);
	tp->registry = get_relname_relid("tombstone_prefix", nsp);
	tp->versions = OidIsValid(tp->entry) && OidIsValid(tp->registry) &&
		get_attnum(tp->entry, "version") != InvalidAttrNumber;
	if (!tp->versions)
		return;
	n = ht_exec_as_owner(&q_tomb_prefixes, NULL, NULL, 0);
	old = MemoryContextSwitchTo(tp->cxt);
	tp->pa = palloc(sizeof(char *) * Max(n, 1));
	tp->pb = palloc(sizeof(char *) * Max(n, 1));
	for (uint64 r = 0; r < n; r++)
	{
		bool		isnull;

		tp->pa[r] = TextDatumGetCString(ht_col(r, 1, &isnull));
		tp->pb[r] = TextDatumGetCString(ht_col(r, 2, &isnull));
	}
	tp->n = (int) n;
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);
}

bool
ht_store_versions_available(void)
{
	if (!tomb_prefixes.valid)
		tomb_prefixes_load();
	return tomb_prefixes.versions;
}

bool
ht_store_keeps_tombstones(text *pa, text *pb)
{
	TombPrefixes *tp = &tomb_prefixes;
	int			la = VARSIZE_ANY_EXHDR(pa);
	int			lb = VARSIZE_ANY_EXHDR(pb);

	if (!tp->valid)
		tomb_prefixes_load();
	for (int i = 0; i < tp->n; i++)
		if (strlen(tp->pa[i]) == la && strlen(tp->pb[i]) == lb &&
			memcmp(tp->pa[i], VARDATA_ANY(pa), la) == 0 &&
			memcmp(tp->pb[i], VARDATA_ANY(pb), lb) == 0)
			return true;
	return false;
}

int
ht_store_tomb_prefix_count(void)
{
	if (!tomb_prefixes.valid)
		tomb_prefixes_load();
	return tomb_prefixes.n;
}

void
ht_store_tomb_prefixes_changed(void)
{
	if (!tomb_prefixes.valid)
		tomb_prefixes_load();
	if (OidIsValid(tomb_prefixes.registry))
		CacheInvalidateRelcacheByRelid(tomb_prefixes.registry);
}

/*
 * The entry of a tombstone to remove: locked (a writer's lock skipped, for
 * an expiry), its hash read; then the tombstone if it is still of that
 * time ($6)
 */
static HtQuery q_lock_tomb_entry = {
	"SELECT hash FROM hashtree.entry WHERE " ENTRY_OF_KEY " FOR UPDATE",
	5, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID}
};

static HtQuery q_lock_tomb_entry_skip = {
	"SELECT hash FROM hashtree.entry WHERE " ENTRY_OF_KEY " FOR UPDATE SKIP LOCKED",
	5, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID}
};

static HtQuery q_entry_exists = {
	"SELECT 1 FROM hashtree.entry WHERE " ENTRY_OF_KEY,
	5, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID}
};

static HtQuery q_drop_tomb_at = {
	"DELETE FROM hashtree.tombstone WHERE " KEY_OF("") " AND deleted_at = $6",
	6, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, TIMESTAMPTZOID}
};

static void
entry_params(Datum *v, int part, text *pa, text *pb, bytea *key)
{
	v[0] = Int32GetDatum(part);
	v[1] = Int32GetDatum(ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(key),
									   VARSIZE_ANY_EXHDR(key)));
	v[2] = PointerGetDatum(pa);
	v[3] = PointerGetDatum(pb);
	v[4] = PointerGetDatum(key);
}

void
ht_store_put(int part, text *pa, text *pb, bytea *key, bytea *hash,
			 bool if_missing, const TimestampTz *version)
{
	Datum		v[7];
	bool		n[7] = {false, false, false, false, false, false, false};

	entry_params(v, part, pa, pb, key);
	v[5] = PointerGetDatum(hash);
	if (!ht_store_versions_available())
	{
		if (version != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("versions of entries need the extension updated to 1.0"),
					 errhint("Run ALTER EXTENSION hashtree UPDATE.")));
		ht_exec(if_missing ? &q_put_if_missing_0_1 : &q_put_0_1, v, NULL, 0);
		return;
	}
	v[6] = version ? TimestampTzGetDatum(*version) : (Datum) 0;
	n[6] = (version == NULL);
	if (!ht_store_keeps_tombstones(pa, pb))
	{
		ht_exec(if_missing ? &q_put_if_missing : &q_put, v, n, 0);
		return;
	}
	if (if_missing)
	{
		bool		isnull;
		bool		wrote = false;

		if (ht_exec(&q_put_if_missing_keep, v, n, 1) == 1)
			wrote = DatumGetInt64(ht_col(0, 1, &isnull)) > 0;
		SPI_freetuptable(SPI_tuptable);
		if (!wrote)
		{
			/* an entry there: written over if it is a tombstone */
			ht_exec(&q_lock_entry, v, NULL, 0);
			if (ht_exec(&q_drop_tomb, v, NULL, 0) == 0)
				return;
		}
	}
	ht_exec(&q_put_keep, v, n, 0);
	ht_exec(&q_drop_tomb, v, NULL, 0);	/* (after the entry's lock) */
}

void
ht_store_delete(int part, text *pa, text *pb, bytea *key, TimestampTz at, bytea *tomb)
{
	Datum		v[7];

	entry_params(v, part, pa, pb, key);
	if (!ht_store_versions_available() || !ht_store_keeps_tombstones(pa, pb))
	{
		ht_exec(&q_delete_0_1, v, NULL, 0);
		return;
	}
	v[5] = TimestampTzGetDatum(at);
	v[6] = PointerGetDatum(tomb);
	ht_exec(&q_delete_keep, v, NULL, 0);
	ht_exec(&q_put_tomb, v, NULL, 0);	/* (after the entry's lock) */
}

void
ht_store_purge(int part, text *pa, text *pb, bytea *key)
{
	Datum		v[5];

	entry_params(v, part, pa, pb, key);
	if (!ht_store_versions_available())
	{
		ht_exec(&q_delete_0_1, v, NULL, 0);
		return;
	}
	ht_exec(&q_purge, v, NULL, 0);
	ht_exec(&q_drop_tomb, v, NULL, 0);
}

bool
ht_store_drop_tombstone(int part, text *pa, text *pb, bytea *key, TimestampTz at,
						bytea *tomb, bool skip_locked)
{
	Datum		v[6];
	bool		isnull;
	bool		is_tomb = false;

	entry_params(v, part, pa, pb, key);
	if (ht_exec(skip_locked ? &q_lock_tomb_entry_skip : &q_lock_tomb_entry, v, NULL, 1) == 1)
		is_tomb = ht_bytea_cmp(DatumGetByteaPP(ht_col(0, 1, &isnull)), tomb) == 0;
	else if (skip_locked && ht_exec(&q_entry_exists, v, NULL, 1) == 1)
	{
		SPI_freetuptable(SPI_tuptable);
		return false;			/* a writer of the key holds it: later */
	}
	SPI_freetuptable(SPI_tuptable);
	if (is_tomb)
		ht_exec(&q_purge, v, NULL, 0);
	v[5] = TimestampTzGetDatum(at);
	ht_exec(&q_drop_tomb_at, v, NULL, 0);
	return true;
}

/* ---- reads --------------------------------------------------------------- */

/*
 * A note on the statements below: lookups driven by a list (a CTE, an
 * unnest) are written as LATERAL subqueries with LIMIT 1 or OFFSET 0, so
 * that the planner cannot flatten them into a join; with the stale
 * statistics of tables that just grew (after track(), a bulk load) it
 * would otherwise pick a nested loop over a materialized scan, quadratic
 * in the number of rows.  Each row of the list is then one index probe.
 * Deletes driven by a list find their rows that way and delete them by
 * ctid (a TID scan): DELETE ... USING unnest(...) may otherwise scan the
 * whole table.  Node rows and derived entries are written only by the
 * update or rebuild that holds the partition's update lock, so the ctids
 * found cannot go stale before the DELETE.
 */

static HtQuery q_top = {
	"SELECT hash FROM hashtree.node WHERE part = $1 AND depth = $2"
	" AND pa = $3 AND pb = $4 AND level = 1 AND child = 0",
	4, {INT4OID, INT4OID, TEXTOID, TEXTOID}
};

bytea *
ht_store_top(int part, int depth, text *pa, text *pb)
{
	Datum		v[4];
	bool		isnull;
	Datum		d;

	v[0] = Int32GetDatum(part);
	v[1] = Int32GetDatum(depth);
	v[2] = PointerGetDatum(pa);
	v[3] = PointerGetDatum(pb);
	if (ht_exec(&q_top, v, NULL, 1) == 0)
		return NULL;
	d = ht_col(0, 1, &isnull);
	return DatumGetByteaPCopy(d);
}

/*
 * Ordered index scans of our own tables, in C: the compare's hot path
 * reads tens of thousands of rows per partition with many differences.
 * Latest snapshot: this transaction's own update is seen.
 */
typedef struct TreeScan
{
	Relation	rel;
	Relation	idx;
	TupleDesc	desc;
	Snapshot	snap;
	AttrNumber	att[5];			/* part, depth, pa, pb, and the fifth key column */
	AttrNumber	att_child;		/* node's child and subs (0: not node) */
	AttrNumber	att_subs;
} TreeScan;

static void
tree_scan_open(TreeScan *ts, const char *table, const char *index, const char *fifth)
{
	Oid			relid;

	ht_open_table_index(table, index, AccessShareLock, &ts->rel, &ts->idx);
	relid = RelationGetRelid(ts->rel);
	ts->desc = RelationGetDescr(ts->rel);
	ts->att[0] = get_attnum(relid, "part");
	ts->att[1] = get_attnum(relid, "depth");
	ts->att[2] = get_attnum(relid, "pa");
	ts->att[3] = get_attnum(relid, "pb");
	ts->att[4] = get_attnum(relid, fifth);
	ts->att_child = strcmp(table, "node") == 0 ? get_attnum(relid, "child") : InvalidAttrNumber;
	ts->att_subs = strcmp(table, "node") == 0 ? get_attnum(relid, "subs") : InvalidAttrNumber;
	ts->snap = RegisterSnapshot(GetLatestSnapshot());
}

/* the four keys of a tree; ScanKeyInit compares text in the "C" collation */
static void
tree_scan_keys(TreeScan *ts, ScanKeyData *key, int part, int depth, Datum pa, Datum pb)
{
	ScanKeyInit(&key[0], ts->att[0], BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(part));
	ScanKeyInit(&key[1], ts->att[1], BTEqualStrategyNumber, F_INT2EQ, Int16GetDatum(depth));
	ScanKeyInit(&key[2], ts->att[2], BTEqualStrategyNumber, F_TEXTEQ, pa);
	ScanKeyInit(&key[3], ts->att[3], BTEqualStrategyNumber, F_TEXTEQ, pb);
}

static void
tree_scan_close(TreeScan *ts)
{
	UnregisterSnapshot(ts->snap);
	index_close(ts->idx, AccessShareLock);
	table_close(ts->rel, AccessShareLock);
}

/* a copy of a bytea, cut to len bytes when len > 0 */
static bytea *
bytea_prefix(const bytea *b, int len)
{
	int			n = VARSIZE_ANY_EXHDR(b);
	bytea	   *out;

	if (len > 0)
		n = Min(n, len);
	out = palloc(VARHDRSZ + n);
	SET_VARSIZE(out, VARHDRSZ + n);
	memcpy(VARDATA(out), VARDATA_ANY(b), n);
	return out;
}

/*
 * Whether tree (pa, pb) has any row in ts's table under the first nkeys
 * of key (the tree's four, and the fifth when nkeys is 5): a leaf tree of
 * packed entries has no rows at the levels and segments packs cover, and
 * one probe per tree spares one B-tree descent per request of a batch.
 */
static bool
tree_has_rows(TreeScan *ts, const ScanKeyData *key, int nkeys)
{
	ScanKeyData copy[5];
	SysScanDesc scan;
	bool		found;

	/* (a scan turns the keys' attribute numbers into the index's) */
	Assert(nkeys <= lengthof(copy));
	memcpy(copy, key, sizeof(ScanKeyData) * nkeys);
	scan = systable_beginscan_ordered(ts->rel, ts->idx, ts->snap, nkeys, copy);
	found = systable_getnext_ordered(scan, ForwardScanDirection) != NULL;

	systable_endscan_ordered(scan);
	return found;
}

/* whether level-2 rows of a tree of packs of this span keep sub-bucket hashes */
static bool
subs_keepable(int32 span)
{
	return span > 0 && span <= HT_SUB_SPAN;
}

/*
 * The sub-bucket hashes the level-2 row of bucket b of leaf tree (pa, pb)
 * keeps (node.subs, §2), as children b * 32 + i appended to *out: false
 * when it keeps none (the caller reads the packs).  One probe of the
 * primary key instead of a fetch of each of the bucket's 32 packs.
 */
static bool
kept_subs(TreeScan *ts, int part, Datum pa, Datum pb, int64 bucket, HtChildSum **out,
		  int *nout, int *cap)
{
	ScanKeyData key[6];
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	if (ts->att_subs == InvalidAttrNumber)
		return false;			/* (a database not updated to this version yet) */
	tree_scan_keys(ts, key, part, HT_DEPTH_LEAF, pa, pb);
	ScanKeyInit(&key[4], ts->att[4], BTEqualStrategyNumber, F_INT2EQ, Int16GetDatum(2));
	ScanKeyInit(&key[5], ts->att_child, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(bucket));
	scan = systable_beginscan_ordered(ts->rel, ts->idx, ts->snap, 6, key);
	if ((tup = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, ts->att_subs, ts->desc, &isnull);

		if (!isnull)
		{
			int			nsubs = HT_SUBS_PER_BUCKET(HT_DEPTH_LEAF);
			HtSum	   *sums = palloc(sizeof(HtSum) * nsubs);

			ht_subs_decode(DatumGetByteaPP(d), sums, nsubs);
			for (int i = 0; i < nsubs; i++)
				*nout = ht_child_put(out, *nout, cap, bucket * nsubs + i, &sums[i]);
			pfree(sums);
			found = true;
		}
	}
	systable_endscan_ordered(scan);
	return found;
}

/* node rows of one request, by child */
static int
node_row_cmp(const void *a, const void *b)
{
	int64		x = ((const HtNodeRow *) a)->child;
	int64		y = ((const HtNodeRow *) b)->child;

	return (x > y) - (x < y);
}

/*
 * The children firsts[i] .. firsts[i] + span - 1 of level `level` of tree
 * (pa[i], pb[i]), by the primary key (part, depth, pa, pb, level, child);
 * the segments and sub-buckets of a leaf tree that packs cover from the
 * packs.
 */
int
ht_store_nodes(int part, int depth, int n, Datum *pa, Datum *pb, int level,
			   const int64 *firsts, int64 span, int hash_bytes, HtNodeRow **rows)
{
	TreeScan	ts;
	AttrNumber	att_child;
	AttrNumber	att_hash;
	int			cap = 64;
	int			nrows = 0;
	HtNodeRow  *out = palloc(sizeof(HtNodeRow) * cap);
	bool		packed = (depth == HT_DEPTH_LEAF &&
						  (level == 3 || level == HT_LEVEL_SUB));
	HtChildSum *pk = NULL;
	int			pkcap = 0;
	HtPackReader *reader = packed ? ht_pack_reader_open() : NULL;
	bool		rows_at_level = true;

	tree_scan_open(&ts, "node", "node_pkey", "level");
	att_child = get_attnum(RelationGetRelid(ts.rel), "child");
	att_hash = get_attnum(RelationGetRelid(ts.rel), "hash");
	for (int k = 0; k < n; k++)
	{
		ScanKeyData key[7];
		SysScanDesc scan;
		HeapTuple	tup;
		int			first = nrows;

		tree_scan_keys(&ts, key, part, depth, pa[k], pb[k]);
		ScanKeyInit(&key[4], ts.att[4], BTEqualStrategyNumber, F_INT2EQ, Int16GetDatum(level));
		if (packed && (k == 0 || !datumIsEqual(pa[k], pa[k - 1], false, -1) ||
					   !datumIsEqual(pb[k], pb[k - 1], false, -1)))
			rows_at_level = tree_has_rows(&ts, key, 5);
		if (!packed || rows_at_level)
		{
			ScanKeyInit(&key[5], att_child, BTGreaterEqualStrategyNumber, F_INT8GE,
						Int64GetDatum(firsts[k]));
			/* (the end key also stops the reading of a leaf page at the range's end) */
			ScanKeyInit(&key[6], att_child, BTLessStrategyNumber, F_INT8LT,
						Int64GetDatum(firsts[k] + span));
			scan = systable_beginscan_ordered(ts.rel, ts.idx, ts.snap, 7, key);
			while ((tup = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
			{
				bool		isnull;

				if (nrows >= cap)
				{
					cap *= 2;
					out = repalloc(out, sizeof(HtNodeRow) * cap);
				}
				out[nrows].i = k + 1;
				out[nrows].child = DatumGetInt64(heap_getattr(tup, att_child, ts.desc, &isnull));
				/* (a sub-bucket's whole sum: packs may add to it, below) */
				out[nrows].hash =
					bytea_prefix(DatumGetByteaPP(heap_getattr(tup, att_hash, ts.desc, &isnull)),
								 (packed && level == HT_LEVEL_SUB) ? 0 : hash_bytes);
				nrows++;
			}
			systable_endscan_ordered(scan);
		}

		/* segments and sub-buckets that packs cover have no rows (§4) */
		if (packed)
		{
			int			npk = 0;
			int			nsubs = HT_SUBS_PER_BUCKET(HT_DEPTH_LEAF);

			/*
			 * a bucket's sub-buckets in a tree of packs of (a part of) one
			 * sub-bucket: those its level-2 row keeps, if it does (§2)
			 */
			if (level != HT_LEVEL_SUB || span != nsubs || firsts[k] % nsubs != 0 ||
				!subs_keepable(ht_pack_reader_span(reader, part, pa[k], pb[k])) ||
				!kept_subs(&ts, part, pa[k], pb[k], firsts[k] / nsubs, &pk, &npk, &pkcap))
				npk = ht_pack_children(reader, part, pa[k], pb[k], level, firsts[k],
									   span, &pk, 0, &pkcap);

			if (npk > 0)
			{
				int			nr = nrows - first;	/* the rows read, by child */
				int			r = 0;

				/* (geometric growth: a batch has thousands of requests) */
				if (nrows + npk >= cap)
				{
					cap = Max(cap * 2, nrows + npk + 1);
					out = repalloc(out, sizeof(HtNodeRow) * cap);
				}

				for (int j = 0; j < npk; j++)
				{
					uint8		bytes[HT_DIGEST_LEN];
					int			len = hash_bytes > 0 ? Min(hash_bytes, HT_DIGEST_LEN) : HT_DIGEST_LEN;

					/*
					 * a sub-bucket of packs of a part of one (span < 32) can
					 * also have segments in rows, summed in its level-4 row:
					 * its hash is the sum of both (§2)
					 */
					while (r < nr && out[first + r].child < pk[j].child)
						r++;
					if (r < nr && out[first + r].child == pk[j].child)
					{
						HtNodeRow  *row = &out[first + r];
						HtSum		sum;

						Assert(level == HT_LEVEL_SUB);
						ht_sum_from_bytea(&sum, row->hash);
						ht_sum_add(&sum, &pk[j].sum);
						ht_sum_to_bytes(&sum, (uint8 *) VARDATA(row->hash));
						continue;
					}
					ht_sum_to_bytes(&pk[j].sum, bytes);
					out[nrows].i = k + 1;
					out[nrows].child = pk[j].child;
					out[nrows].hash = palloc(VARHDRSZ + len);
					SET_VARSIZE(out[nrows].hash, VARHDRSZ + len);
					memcpy(VARDATA(out[nrows].hash), bytes, len);
					nrows++;
				}
				if (nr > 0 && nrows - first > nr)
					qsort(out + first, nrows - first, sizeof(HtNodeRow), node_row_cmp);
			}
			/* the rows' sums read whole, cut as asked */
			if (level == HT_LEVEL_SUB && hash_bytes > 0)
				for (int j = first; j < nrows; j++)
					if (VARSIZE_ANY_EXHDR(out[j].hash) > hash_bytes)
						SET_VARSIZE(out[j].hash, VARHDRSZ + hash_bytes);
		}
	}
	tree_scan_close(&ts);
	if (reader)
		ht_pack_reader_close(reader);
	*rows = out;
	return nrows;
}

/* a row of ht_store_entries, for sorting one request's rows by key */
static int
entry_row_cmp(const void *a, const void *b)
{
	return ht_bytea_cmp(((const HtEntryRow *) a)->key, ((const HtEntryRow *) b)->key);
}

/*
 * The entries of the requested segments, by the entry index (part, depth,
 * pa, pb, seg, _kid(key)); the index orders a segment's entries by key
 * identity, so each request's rows are sorted by key here (a segment holds
 * a few entries).
 */
/* a row of ht_store_entries: the hash itself, or a digest of it cut */
static void
entry_row_set(HtEntryRow *row, int i, bytea *key, bytea *h, int hash_bytes)
{
	row->i = i;
	row->key = key;
	if (hash_bytes > 0)
	{
		/* user hashes need not be uniform: a digest of them, cut */
		uint8		digest[HT_DIGEST_LEN];
		int			len = Min(hash_bytes, HT_DIGEST_LEN);

		ht_sha256(VARDATA_ANY(h), VARSIZE_ANY_EXHDR(h), NULL, 0, NULL, 0, digest);
		row->hash = palloc(VARHDRSZ + len);
		SET_VARSIZE(row->hash, VARHDRSZ + len);
		memcpy(VARDATA(row->hash), digest, len);
	}
	else
		row->hash = bytea_prefix(h, 0);
}

/* prefix entries by (depth, pa, key) */
static int
prefix_entry_cmp(const void *a, const void *b)
{
	const HtPrefixEntry *x = (const HtPrefixEntry *) a;
	const HtPrefixEntry *y = (const HtPrefixEntry *) b;
	int			c;

	if (x->depth != y->depth)
		return x->depth < y->depth ? -1 : 1;
	c = ht_bytea_cmp((const bytea *) x->pa, (const bytea *) y->pa);
	return c != 0 ? c : ht_bytea_cmp(x->key, y->key);
}

int
ht_store_prefix_entries(int part, int hash_bytes, int limit, HtPrefixEntry **out)
{
	TreeScan	ts;
	AttrNumber	att_key;
	AttrNumber	att_hash;
	int			cap = 16;
	int			n = 0;
	HtPrefixEntry *rows = palloc(sizeof(HtPrefixEntry) * cap);

	tree_scan_open(&ts, "entry", "entry_key", "seg");
	att_key = get_attnum(RelationGetRelid(ts.rel), "key");
	att_hash = get_attnum(RelationGetRelid(ts.rel), "hash");
	for (int depth = HT_DEPTH_ROOT; depth < HT_DEPTH_LEAF && n <= limit; depth++)
	{
		ScanKeyData key[2];
		SysScanDesc scan;
		HeapTuple	tup;

		ScanKeyInit(&key[0], ts.att[0], BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(part));
		ScanKeyInit(&key[1], ts.att[1], BTEqualStrategyNumber, F_INT2EQ, Int16GetDatum(depth));
		scan = systable_beginscan_ordered(ts.rel, ts.idx, ts.snap, 2, key);
		while (n <= limit && (tup = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
		{
			bool		isnull;

			if (n >= cap)
			{
				cap *= 2;
				rows = repalloc(rows, sizeof(HtPrefixEntry) * cap);
			}
			rows[n].depth = depth;
			rows[n].pa = DatumGetTextPCopy(heap_getattr(tup, ts.att[2], ts.desc, &isnull));
			rows[n].key = DatumGetByteaPCopy(heap_getattr(tup, att_key, ts.desc, &isnull));
			rows[n].hash = bytea_prefix(DatumGetByteaPP(heap_getattr(tup, att_hash, ts.desc,
																	 &isnull)),
										hash_bytes);
			n++;
		}
		systable_endscan_ordered(scan);
	}
	tree_scan_close(&ts);
	if (n > limit)
		return -1;
	ht_store_prefix_sort(rows, n);
	*out = rows;
	return n;
}

void
ht_store_prefix_sort(HtPrefixEntry *rows, int n)
{
	if (n > 1)
		qsort(rows, n, sizeof(HtPrefixEntry), prefix_entry_cmp);
}

int
ht_store_entries(int part, int depth, int n, Datum *pa, Datum *pb,
				 const int32 *segs, int hash_bytes, HtEntryRow **rows)
{
	TreeScan	ts;
	AttrNumber	att_key;
	AttrNumber	att_hash;
	int			cap = 64;
	int			nrows = 0;
	HtEntryRow *out = palloc(sizeof(HtEntryRow) * cap);
	HtPackEntry *packed = NULL;
	int		   *owner = NULL;
	int			npacked = 0;
	int			pcap = 0;
	int			p = 0;
	bool		tree_rows = true;

	/* leaf entries of tracked tables are packed (pack.c), the others rows */
	if (depth == HT_DEPTH_LEAF)
		ht_pack_segments(part, n, pa, pb, segs, &packed, &owner, &npacked, &pcap);

	tree_scan_open(&ts, "entry", "entry_key", "seg");
	att_key = get_attnum(RelationGetRelid(ts.rel), "key");
	att_hash = get_attnum(RelationGetRelid(ts.rel), "hash");
	for (int k = 0; k < n; k++)
	{
		ScanKeyData key[5];
		SysScanDesc scan;
		HeapTuple	tup;
		int			first = nrows;

		tree_scan_keys(&ts, key, part, depth, pa[k], pb[k]);
		ScanKeyInit(&key[4], ts.att[4], BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(segs[k]));
		if (k == 0 || !datumIsEqual(pa[k], pa[k - 1], false, -1) ||
			!datumIsEqual(pb[k], pb[k - 1], false, -1))
			tree_rows = tree_has_rows(&ts, key, 4);
		scan = tree_rows ? systable_beginscan_ordered(ts.rel, ts.idx, ts.snap, 5, key) : NULL;
		for (;;)
		{
			bool		isnull;
			bytea	   *ekey;
			bytea	   *h;

			if (scan != NULL &&
				(tup = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
			{
				ekey = DatumGetByteaPCopy(heap_getattr(tup, att_key, ts.desc, &isnull));
				h = DatumGetByteaPP(heap_getattr(tup, att_hash, ts.desc, &isnull));
			}
			else if (p < npacked && owner[p] == k + 1)
			{
				ekey = packed[p].key;
				h = packed[p++].hash;
			}
			else
				break;
			if (nrows >= cap)
			{
				cap *= 2;
				out = repalloc(out, sizeof(HtEntryRow) * cap);
			}
			entry_row_set(&out[nrows++], k + 1, ekey, h, hash_bytes);
		}
		if (scan != NULL)
			systable_endscan_ordered(scan);
		if (nrows - first > 1)
			qsort(out + first, nrows - first, sizeof(HtEntryRow), entry_row_cmp);
	}
	tree_scan_close(&ts);
	*rows = out;
	return nrows;
}

/* ---- full rebuild -------------------------------------------------------- */

static HtQuery q_rb_clear_dirty = {
	"DELETE FROM hashtree.dirty WHERE part = $1", 1, {INT4OID}
};
static HtQuery q_rb_clear_nodes = {
	"DELETE FROM hashtree.node WHERE part = $1", 1, {INT4OID}
};
static HtQuery q_rb_clear_derived = {
	"DELETE FROM hashtree.entry WHERE part = $1 AND depth < 2", 1, {INT4OID}
};

/* derived entries of depth $2 from the tops of the trees of depth $2 + 1 */
static HtQuery q_rb_derived = {
	"INSERT INTO hashtree.entry (part, depth, pa, pb, seg, key, hash)"
	" SELECT $1, $2, CASE WHEN $2 = 1 THEN t.pa ELSE '' END, '',"
	"  hashtree.segment_of(k.key, $3), k.key, t.hash"
	" FROM hashtree.node t"
	" CROSS JOIN LATERAL (SELECT convert_to(CASE WHEN $2 = 1 THEN t.pb ELSE t.pa END,"
	"   'UTF8') AS key) k"
	" WHERE t.part = $1 AND t.depth = $2 + 1 AND t.level = 1",
	3, {INT4OID, INT2OID, INT4OID}
};

/* level 3: segment hashes from the entry rows (not the packs: §4) */
static HtQuery q_rb_segments = {
	"INSERT INTO hashtree.node (part, depth, level, pa, pb, child, hash, n)"
	" SELECT $1, $2, 3, s.pa, s.pb, s.seg, s.h, s.c FROM ("
	"  SELECT pa, pb, seg, hashtree._entry_sum(key, hash) AS h, count(*) AS c"
	"  FROM hashtree.entry WHERE part = $1 AND depth = $2 GROUP BY pa, pb, seg) s"
	" WHERE s.h IS NOT NULL"
	" ORDER BY s.pa, s.pb, s.seg",
	2, {INT4OID, INT2OID}
};

/* level $3 from level $3 + 1, and level 2 of leaf trees from the packs too */
static HtQuery q_rb_level = {
	"INSERT INTO hashtree.node (part, depth, level, pa, pb, child, hash, n, subs)"
	" SELECT $1, $2, $3, s.pa, s.pb, s.b, s.h, s.c,"
	"  CASE WHEN $2 = 2 AND $3 = 2 THEN " HT_SUBS_SQL("$1", "s.pa", "s.pb", "s.b", "$4") " END"
	" FROM ("
	"  SELECT pa, pb, b, hashtree._hash_sum(h) AS h, sum(c)::int8 AS c FROM ("
	"   SELECT pa, pb, child >> $4 AS b, hashtree._child_sum(child, hash) AS h, sum(n) AS c"
	"   FROM hashtree.node WHERE part = $1 AND depth = $2 AND level = $3 + 1"
	"   GROUP BY pa, pb, child >> $4"
	"   UNION ALL SELECT p.pa, p.pb, (p.lo >> $4)::int8, p.sum, p.n FROM hashtree.entry_pack p"
	"    WHERE p.part = $1 AND $2 = 2 AND $3 = 2) y GROUP BY pa, pb, b) s"
	" WHERE s.h IS NOT NULL",
	4, {INT4OID, INT2OID, INT2OID, INT4OID}
};

/* sub-buckets from level 3 */
static HtQuery q_rb_subs = {
	"INSERT INTO hashtree.node (part, depth, level, pa, pb, child, hash, n)"
	" SELECT $1, $2, " CppAsString2(HT_LEVEL_SUB) ", s.pa, s.pb, s.b, s.h, s.c FROM ("
	"  SELECT pa, pb, child >> " CppAsString2(HT_SUB_BITS) " AS b,"
	"   hashtree._child_sum(child, hash) AS h, sum(n)::int8 AS c"
	"  FROM hashtree.node WHERE part = $1 AND depth = $2 AND level = 3"
	"  GROUP BY pa, pb, child >> " CppAsString2(HT_SUB_BITS) ") s"
	" WHERE s.h IS NOT NULL",
	2, {INT4OID, INT2OID}
};

/*
 * A rebuild of a big partition takes seconds: once it has run for a
 * second, say how far it got after each depth (cancel works at any time,
 * and leaves the previous trees).
 */
static void
rebuild_progress(int part, int depth, uint64 segments, TimestampTz start)
{
	static const char *const names[HT_NDEPTHS] = {"root", "prefix", "leaf"};
	long		ms = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());

	if (ms >= 1000)
		ereport(NOTICE,
				(errmsg("reset of partition %d: %s trees rebuilt, " UINT64_FORMAT
						" segments, %.1f s", part, names[depth], segments, ms / 1000.0)));
}

void
ht_store_rebuild(int part)
{
	Datum		v[4];
	TimestampTz start = GetCurrentTimestamp();

	v[0] = Int32GetDatum(part);

	/* forget the dirty log first: changes committed after this are kept */
	ht_exec(&q_rb_clear_dirty, v, NULL, 0);
	ht_exec(&q_rb_clear_nodes, v, NULL, 0);
	ht_exec(&q_rb_clear_derived, v, NULL, 0);

	for (int d = HT_DEPTH_LEAF; d >= HT_DEPTH_ROOT; d--)
	{
		uint64		segments;

		v[1] = Int16GetDatum(d);
		if (d < HT_DEPTH_LEAF)
		{
			v[2] = Int32GetDatum((int32) HT_SEGMENTS(d));
			ht_exec(&q_rb_derived, v, NULL, 0);
		}
		segments = ht_exec(&q_rb_segments, v, NULL, 0);
		ht_exec(&q_rb_subs, v, NULL, 0);
		for (int level = HT_LEVELS - 1; level >= 1; level--)
		{
			v[2] = Int16GetDatum(level);
			v[3] = Int32GetDatum(ht_geometry[d].width_bits);
			ht_exec(&q_rb_level, v, NULL, 0);
		}
		CHECK_FOR_INTERRUPTS();
		rebuild_progress(part, d, segments, start);
	}
}

/* ---- verification --------------------------------------------------------- */

/*
 * Everything a rebuild would write, against what is stored.  The geometry
 * comes from ht_geometry: $2..$4 the width bits of the leaf, prefix and
 * root trees, $5 and $6 the segments of the prefix and root trees, $7 the
 * sub-bucket bits.
 */
static HtQuery q_check = {
	"WITH"
	/* leaf segments of entry rows (node rows), then the packs' bucket terms */
	" s2 AS (SELECT pa, pb, seg::int8 AS child, hashtree._entry_sum(key, hash) AS h,"
	"   count(*)::int8 AS c FROM hashtree.entry WHERE part = $1 AND depth = 2"
	"   GROUP BY pa, pb, seg),"
	" b2 AS (SELECT pa, pb, child, hashtree._hash_sum(h) AS h, sum(c)::int8 AS c FROM ("
	"   SELECT pa, pb, child >> $2 AS child, hashtree._child_sum(child, h) AS h, sum(c) AS c"
	"   FROM s2 GROUP BY pa, pb, child >> $2"
	"   UNION ALL SELECT p.pa, p.pb, (p.lo >> $2)::int8, x.hash, x.n"
	"   FROM hashtree.entry_pack p CROSS JOIN LATERAL hashtree._pack_sum(p.lo, p.data) x"
	"   WHERE p.part = $1) y GROUP BY pa, pb, child),"
	" t2 AS (SELECT pa, pb, 0::int8 AS child, hashtree._child_sum(child, h) AS h,"
	"   sum(c)::int8 AS c FROM b2 GROUP BY pa, pb),"
	" u2 AS (SELECT pa, pb, child >> $7 AS child, hashtree._child_sum(child, h) AS h,"
	"   sum(c)::int8 AS c FROM s2 GROUP BY pa, pb, child >> $7),"
	" e1 AS (SELECT pa, ''::text COLLATE \"C\" AS pb,"
	"   hashtree.segment_of(convert_to(pb, 'UTF8'), $5) AS seg,"
	"   convert_to(pb, 'UTF8') AS key, h AS hash FROM t2),"
	" s1 AS (SELECT pa, pb, seg::int8 AS child, hashtree._entry_sum(key, hash) AS h,"
	"   count(*)::int8 AS c FROM e1 GROUP BY pa, pb, seg),"
	" b1 AS (SELECT pa, pb, child >> $3 AS child, hashtree._child_sum(child, h) AS h,"
	"   sum(c)::int8 AS c FROM s1 GROUP BY pa, pb, child >> $3),"
	" t1 AS (SELECT pa, pb, 0::int8 AS child, hashtree._child_sum(child, h) AS h,"
	"   sum(c)::int8 AS c FROM b1 GROUP BY pa, pb),"
	" u1 AS (SELECT pa, pb, child >> $7 AS child, hashtree._child_sum(child, h) AS h,"
	"   sum(c)::int8 AS c FROM s1 GROUP BY pa, pb, child >> $7),"
	" e0 AS (SELECT ''::text COLLATE \"C\" AS pa, ''::text COLLATE \"C\" AS pb,"
	"   hashtree.segment_of(convert_to(pa, 'UTF8'), $6) AS seg,"
	"   convert_to(pa, 'UTF8') AS key, h AS hash FROM t1),"
	" s0 AS (SELECT pa, pb, seg::int8 AS child, hashtree._entry_sum(key, hash) AS h,"
	"   count(*)::int8 AS c FROM e0 GROUP BY pa, pb, seg),"
	" b0 AS (SELECT pa, pb, child >> $4 AS child, hashtree._child_sum(child, h) AS h,"
	"   sum(c)::int8 AS c FROM s0 GROUP BY pa, pb, child >> $4),"
	" t0 AS (SELECT pa, pb, 0::int8 AS child, hashtree._child_sum(child, h) AS h,"
	"   sum(c)::int8 AS c FROM b0 GROUP BY pa, pb),"
	" u0 AS (SELECT pa, pb, child >> $7 AS child, hashtree._child_sum(child, h) AS h,"
	"   sum(c)::int8 AS c FROM s0 GROUP BY pa, pb, child >> $7),"
	" x AS ("
	"  SELECT 2 AS depth, 3 AS level, * FROM s2 UNION ALL"
	"  SELECT 2, 2, * FROM b2 UNION ALL SELECT 2, 1, * FROM t2 UNION ALL"
	"  SELECT 1, 3, * FROM s1 UNION ALL SELECT 1, 2, * FROM b1 UNION ALL"
	"  SELECT 1, 1, * FROM t1 UNION ALL SELECT 0, 3, * FROM s0 UNION ALL"
	"  SELECT 0, 2, * FROM b0 UNION ALL SELECT 0, 1, * FROM t0 UNION ALL"
	"  SELECT 2, 4, * FROM u2 UNION ALL SELECT 1, 4, * FROM u1 UNION ALL"
	"  SELECT 0, 4, * FROM u0),"
	" n AS (SELECT * FROM hashtree.node WHERE part = $1),"
	" xe AS (SELECT 1 AS depth, * FROM e1 UNION ALL SELECT 0, * FROM e0),"
	" ne AS (SELECT * FROM hashtree.entry WHERE part = $1 AND depth < 2)"
	" SELECT coalesce(x.depth, n.depth)::int4, coalesce(x.pa, n.pa), coalesce(x.pb, n.pb),"
	"  coalesce(x.level, n.level)::int4, coalesce(x.child, n.child), n.hash, x.h"
	" FROM x FULL JOIN n ON x.depth = n.depth AND x.level = n.level"
	"  AND x.pa = n.pa AND x.pb = n.pb AND x.child = n.child"
	" WHERE x.h IS DISTINCT FROM n.hash OR x.c IS DISTINCT FROM n.n"
	" UNION ALL"
	" SELECT coalesce(xe.depth, ne.depth)::int4, coalesce(xe.pa, ne.pa),"
	"  convert_from(coalesce(xe.key, ne.key), 'UTF8'), NULL::int4,"
	"  coalesce(xe.seg, ne.seg)::int8, ne.hash, xe.hash"
	" FROM xe FULL JOIN ne ON xe.depth = ne.depth AND xe.pa = ne.pa"
	"  AND xe.seg = ne.seg AND xe.key = ne.key"
	" WHERE xe.hash IS DISTINCT FROM ne.hash"
	/* a pack's stored term or count that its entries do not give (level 5) */
	" UNION ALL"
	" SELECT 2, p.pa, p.pb, 5, p.lo::int8, p.sum, x.hash"
	" FROM hashtree.entry_pack p CROSS JOIN LATERAL hashtree._pack_sum(p.lo, p.data) x"
	" WHERE p.part = $1 AND (p.sum IS DISTINCT FROM x.hash OR p.n <> x.n)"
	/* the sub-bucket hashes a level-2 row keeps that its packs do not give (level 6) */
	" UNION ALL"
	" SELECT 2, n.pa, n.pb, 6, n.child, n.subs, x.subs FROM hashtree.node n"
	"  CROSS JOIN LATERAL (SELECT " HT_SUBS_SQL("$1", "n.pa", "n.pb", "n.child", "$2") " AS subs) x"
	" WHERE n.part = $1 AND n.depth = 2 AND n.level = 2 AND n.subs IS NOT NULL"
	"  AND n.subs IS DISTINCT FROM coalesce(x.subs, ''::bytea)"
	/* an entry row in a segment that a pack covers breaks invariant 5 */
	" UNION ALL"
	" SELECT 2, e.pa, e.pb, 0, e.seg::int8, e.hash, NULL::bytea FROM hashtree.entry e"
	" WHERE e.part = $1 AND e.depth = 2 AND EXISTS (SELECT 1 FROM hashtree.entry_pack p"
	"  WHERE p.part = $1 AND p.pa = e.pa AND p.pb = e.pb AND p.lo <= e.seg"
	"   AND p.lo > e.seg - p.span)"
	" ORDER BY 1 DESC, 2, 3, 4 DESC, 5",
	7, {INT4OID, INT4OID, INT4OID, INT4OID, INT4OID, INT4OID, INT4OID}
};

void
ht_store_check(int part, ReturnSetInfo *rsinfo)
{
	Datum		v[7];
	uint64		nrows;
	MemoryContext old;

	v[0] = Int32GetDatum(part);
	v[1] = Int32GetDatum(ht_geometry[HT_DEPTH_LEAF].width_bits);
	v[2] = Int32GetDatum(ht_geometry[HT_DEPTH_PREFIX].width_bits);
	v[3] = Int32GetDatum(ht_geometry[HT_DEPTH_ROOT].width_bits);
	v[4] = Int32GetDatum((int32) HT_SEGMENTS(HT_DEPTH_PREFIX));
	v[5] = Int32GetDatum((int32) HT_SEGMENTS(HT_DEPTH_ROOT));
	v[6] = Int32GetDatum(HT_SUB_BITS);
	nrows = ht_exec(&q_check, v, NULL, 0);
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	for (uint64 r = 0; r < nrows; r++)
	{
		Datum		values[7];
		bool		nulls[7];

		for (int c = 0; c < 7; c++)
			values[c] = ht_col(r, c + 1, &nulls[c]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);
}
