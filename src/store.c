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
 * a writer.  The update recomputes each dirty segment from its entries and
 * folds the change into the ancestors by adding and subtracting child
 * digests (treemath.c), bottom-up through the leaf trees, the prefix trees
 * and the root: its cost is O(dirty segments + their ancestors).  The
 * rebuild computes the same rows with set-based SQL and the same digests,
 * so both produce byte-identical trees.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "common.h"
#include "pack.h"
#include "partlock.h"
#include "sqlexec.h"
#include "store.h"
#include "treemath.h"

/* rows per statement when writing or reading nodes by arrays */
#define HT_BATCH 10000

/* ---- writes of leaf entries ----------------------------------------------- */

static HtQuery q_put = {
	"WITH e AS ("
	" INSERT INTO hashtree.entry AS t (part, seg, depth, pa, pb, key, hash)"
	" VALUES ($1, $2, 2, $3, $4, $5, $6)"
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key))"
	" DO UPDATE SET hash = EXCLUDED.hash WHERE t.hash <> EXCLUDED.hash"
	" RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	6, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID}
};

static HtQuery q_put_if_missing = {
	"WITH e AS ("
	" INSERT INTO hashtree.entry (part, seg, depth, pa, pb, key, hash)"
	" VALUES ($1, $2, 2, $3, $4, $5, $6)"
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key)) DO NOTHING"
	" RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	6, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID}
};

static HtQuery q_delete = {
	"WITH e AS ("
	" DELETE FROM hashtree.entry"
	" WHERE part = $1 AND depth = 2 AND pa = $3 AND pb = $4 AND seg = $2"
	"   AND hashtree._kid(key) = hashtree._kid($5) AND key = $5"
	" RETURNING 1)"
	" INSERT INTO hashtree.dirty (part, seg, pa, pb) SELECT $1, $2, $3, $4 FROM e",
	5, {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID}
};

void
ht_store_put(int part, text *pa, text *pb, bytea *key, bytea *hash,
			 bool if_missing)
{
	Datum		v[6];

	v[0] = Int32GetDatum(part);
	v[1] = Int32GetDatum(ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(key),
									   VARSIZE_ANY_EXHDR(key)));
	v[2] = PointerGetDatum(pa);
	v[3] = PointerGetDatum(pb);
	v[4] = PointerGetDatum(key);
	v[5] = PointerGetDatum(hash);
	ht_exec(if_missing ? &q_put_if_missing : &q_put, v, NULL, 0);
}

void
ht_store_delete(int part, text *pa, text *pb, bytea *key)
{
	Datum		v[5];

	v[0] = Int32GetDatum(part);
	v[1] = Int32GetDatum(ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(key),
									   VARSIZE_ANY_EXHDR(key)));
	v[2] = PointerGetDatum(pa);
	v[3] = PointerGetDatum(pb);
	v[4] = PointerGetDatum(key);
	ht_exec(&q_delete, v, NULL, 0);
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
} TreeScan;

static void
tree_scan_open(TreeScan *ts, const char *table, const char *index, const char *fifth)
{
	Oid			nsp = ht_schema_oid();
	Oid			relid = get_relname_relid(table, nsp);
	Oid			idxid = get_relname_relid(index, nsp);

	if (!OidIsValid(relid) || !OidIsValid(idxid))
		elog(ERROR, "hashtree: table hashtree.%s or its index %s is missing", table, index);
	ts->rel = table_open(relid, AccessShareLock);
	ts->idx = index_open(idxid, AccessShareLock);
	ts->desc = RelationGetDescr(ts->rel);
	ts->att[0] = get_attnum(relid, "part");
	ts->att[1] = get_attnum(relid, "depth");
	ts->att[2] = get_attnum(relid, "pa");
	ts->att[3] = get_attnum(relid, "pb");
	ts->att[4] = get_attnum(relid, fifth);
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
			out[nrows].hash = bytea_prefix(DatumGetByteaPP(heap_getattr(tup, att_hash, ts.desc,
																	   &isnull)), hash_bytes);
			nrows++;
		}
		systable_endscan_ordered(scan);

		/* segments and sub-buckets that packs cover have no rows (§4) */
		if (packed)
		{
			int			npk = ht_pack_children(part, pa[k], pb[k], level, firsts[k], span,
											   &pk, 0, &pkcap);

			if (npk > 0)
			{
				out = repalloc(out, sizeof(HtNodeRow) * (nrows + npk + 1));
				cap = nrows + npk + 1;
				for (int j = 0; j < npk; j++)
				{
					uint8		bytes[HT_DIGEST_LEN];
					int			len = hash_bytes > 0 ? Min(hash_bytes, HT_DIGEST_LEN) : HT_DIGEST_LEN;

					ht_sum_to_bytes(&pk[j].sum, bytes);
					out[nrows].i = k + 1;
					out[nrows].child = pk[j].child;
					out[nrows].hash = palloc(VARHDRSZ + len);
					SET_VARSIZE(out[nrows].hash, VARHDRSZ + len);
					memcpy(VARDATA(out[nrows].hash), bytes, len);
					nrows++;
				}
				if (npk < nrows - first)
					qsort(out + first, nrows - first, sizeof(HtNodeRow), node_row_cmp);
			}
		}
	}
	tree_scan_close(&ts);
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
		scan = systable_beginscan_ordered(ts.rel, ts.idx, ts.snap, 5, key);
		for (;;)
		{
			bool		isnull;
			bytea	   *ekey;
			bytea	   *h;

			if ((tup = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
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
		systable_endscan_ordered(scan);
		if (nrows - first > 1)
			qsort(out + first, nrows - first, sizeof(HtEntryRow), entry_row_cmp);
	}
	tree_scan_close(&ts);
	*rows = out;
	return nrows;
}

/* ---- incremental update -------------------------------------------------- */

/* a segment whose hash changed */
typedef struct SegChange
{
	int			tree;
	int32		seg;
	HtSum		old_sum;
	HtSum		new_sum;
	int64		old_n;
	int64		new_n;
} SegChange;

/* accumulated change of a level-3 bucket (a level-2 child) */
typedef struct BucketDelta
{
	int			tree;
	int64		bucket;
	HtSum		delta;
	int64		dn;
} BucketDelta;

/* a tree whose top hash changed */
typedef struct TopChange
{
	int			tree;
	HtSum		old_top;
	HtSum		new_top;
	int64		new_n;
} TopChange;

/* one row to write into hashtree.node */
typedef struct NodeWrite
{
	int			tree;
	int64		child;
	HtSum		sum;			/* zero: delete the row */
	int64		n;
} NodeWrite;

/* the trees of one depth touched by an update, and their pending changes */
typedef struct DepthWork
{
	int			depth;
	int			ntrees;
	int			trees_cap;
	Datum	   *pa;				/* text datums */
	Datum	   *pb;
	int			nbuckets;
	int			buckets_cap;
	BucketDelta *buckets;
	int			nsubs;			/* the same per sub-bucket */
	int			subs_cap;
	BucketDelta *subs;
	int			ntops;
	int			tops_cap;
	TopChange  *tops;
} DepthWork;

#define HT_GROW(arr, n, cap) \
	do { \
		if ((n) >= (cap)) \
		{ \
			(cap) = (cap) > 0 ? (cap) * 2 : 64; \
			(arr) = (arr) != NULL ? repalloc((arr), sizeof(*(arr)) * (cap)) \
				: palloc(sizeof(*(arr)) * (cap)); \
		} \
	} while (0)

static int
work_add_tree(DepthWork *w, Datum pa, Datum pb)
{
	if (w->ntrees >= w->trees_cap)
	{
		w->trees_cap = w->trees_cap > 0 ? w->trees_cap * 2 : 64;
		w->pa = w->pa != NULL ? repalloc(w->pa, sizeof(Datum) * w->trees_cap)
			: palloc(sizeof(Datum) * w->trees_cap);
		w->pb = w->pb != NULL ? repalloc(w->pb, sizeof(Datum) * w->trees_cap)
			: palloc(sizeof(Datum) * w->trees_cap);
	}
	w->pa[w->ntrees] = pa;
	w->pb[w->ntrees] = pb;
	return w->ntrees++;
}

static bool
text_equal(Datum a, Datum b)
{
	text	   *x = DatumGetTextPP(a);
	text	   *y = DatumGetTextPP(b);

	return VARSIZE_ANY_EXHDR(x) == VARSIZE_ANY_EXHDR(y) &&
		memcmp(VARDATA_ANY(x), VARDATA_ANY(y), VARSIZE_ANY_EXHDR(x)) == 0;
}

/* delta of a parent when child goes from old to new */
static void
child_delta(int64 child, const HtSum *old, const HtSum *new, HtSum *delta)
{
	HtSum		t;

	ht_child_term(child, new, delta);
	ht_child_term(child, old, &t);
	ht_sum_sub(delta, &t);
}

static HtQuery q_node_upsert = {
	"INSERT INTO hashtree.node AS t (part, depth, level, pa, pb, child, hash, n)"
	" SELECT $1, $2, $3, u.pa, u.pb, u.child, u.hash, u.n"
	" FROM unnest($4::text[], $5::text[], $6::int8[], $7::bytea[], $8::int8[])"
	"  AS u(pa, pb, child, hash, n)"
	" ON CONFLICT (part, depth, pa, pb, level, child)"
	" DO UPDATE SET hash = EXCLUDED.hash, n = EXCLUDED.n",
	8, {INT4OID, INT2OID, INT2OID, TEXTARRAYOID, TEXTARRAYOID, INT8ARRAYOID,
		BYTEAARRAYOID, INT8ARRAYOID}
};

static HtQuery q_node_delete = {
	"DELETE FROM hashtree.node WHERE ctid = ANY (ARRAY("
	" SELECT x.ctid FROM unnest($4::text[], $5::text[], $6::int8[]) AS u(pa, pb, child)"
	" CROSS JOIN LATERAL (SELECT t.ctid FROM hashtree.node t"
	"  WHERE t.part = $1 AND t.depth = $2 AND t.level = $3"
	"   AND t.pa = u.pa AND t.pb = u.pb AND t.child = u.child LIMIT 1) x))",
	6, {INT4OID, INT2OID, INT2OID, TEXTARRAYOID, TEXTARRAYOID, INT8ARRAYOID}
};

/* write node rows of one level, in statements of at most HT_BATCH rows */
static void
write_nodes(int part, DepthWork *w, int level, NodeWrite *nw, int n,
			HtUpdateStats *stats)
{
	Datum	   *pa = palloc(sizeof(Datum) * HT_BATCH);
	Datum	   *pb = palloc(sizeof(Datum) * HT_BATCH);
	int64	   *child = palloc(sizeof(int64) * HT_BATCH);
	Datum	   *hash = palloc(sizeof(Datum) * HT_BATCH);
	int64	   *cnt = palloc(sizeof(int64) * HT_BATCH);

	for (int pass = 0; pass < 2; pass++)
	{
		bool		deleting = (pass == 1);
		int			k = 0;

		for (int i = 0; i <= n; i++)
		{
			if (i < n && ht_sum_is_zero(&nw[i].sum) == deleting)
			{
				pa[k] = w->pa[nw[i].tree];
				pb[k] = w->pb[nw[i].tree];
				child[k] = nw[i].child;
				if (!deleting)
				{
					hash[k] = PointerGetDatum(ht_sum_to_bytea(&nw[i].sum));
					cnt[k] = nw[i].n;
				}
				k++;
			}
			if (k > 0 && (k == HT_BATCH || i == n))
			{
				Datum		v[8];

				v[0] = Int32GetDatum(part);
				v[1] = Int16GetDatum(w->depth);
				v[2] = Int16GetDatum(level);
				v[3] = PointerGetDatum(ht_array_text(pa, k));
				v[4] = PointerGetDatum(ht_array_text(pb, k));
				v[5] = PointerGetDatum(ht_array_int8(child, k));
				if (!deleting)
				{
					v[6] = PointerGetDatum(ht_array_bytea(hash, k));
					v[7] = PointerGetDatum(ht_array_int8(cnt, k));
					ht_exec(&q_node_upsert, v, NULL, 0);
					for (int j = 0; j < k; j++)
						pfree(DatumGetPointer(hash[j]));
				}
				else
					ht_exec(&q_node_delete, v, NULL, 0);
				for (int j = 3; j < (deleting ? 6 : 8); j++)
					pfree(DatumGetPointer(v[j]));
				stats->nodes += k;
				k = 0;
			}
		}
	}
	pfree(pa);
	pfree(pb);
	pfree(child);
	pfree(hash);
	pfree(cnt);
}

static HtQuery q_node_fetch = {
	"SELECT u.i::int4, y.hash, y.n"
	" FROM unnest($4::text[], $5::text[], $6::int8[]) WITH ORDINALITY AS u(pa, pb, child, i)"
	" CROSS JOIN LATERAL (SELECT t.hash, t.n FROM hashtree.node t"
	"   WHERE t.part = $1 AND t.depth = $2 AND t.level = $3"
	"    AND t.pa = u.pa AND t.pb = u.pb AND t.child = u.child LIMIT 1) y",
	6, {INT4OID, INT2OID, INT2OID, TEXTARRAYOID, TEXTARRAYOID, INT8ARRAYOID}
};

/*
 * Current (hash, n) of the nodes (tree[i], child[i]) of a level; absent
 * nodes read as zero.
 */
static void
fetch_nodes(int part, DepthWork *w, int level, int n, const int *tree,
			const int64 *child, HtSum *sum, int64 *cnt)
{
	Datum	   *pa = palloc(sizeof(Datum) * Min(n, HT_BATCH));
	Datum	   *pb = palloc(sizeof(Datum) * Min(n, HT_BATCH));

	for (int i = 0; i < n; i++)
	{
		ht_sum_zero(&sum[i]);
		cnt[i] = 0;
	}
	for (int base = 0; base < n; base += HT_BATCH)
	{
		int			k = Min(HT_BATCH, n - base);
		Datum		v[6];
		uint64		nrows;

		for (int j = 0; j < k; j++)
		{
			pa[j] = w->pa[tree[base + j]];
			pb[j] = w->pb[tree[base + j]];
		}
		v[0] = Int32GetDatum(part);
		v[1] = Int16GetDatum(w->depth);
		v[2] = Int16GetDatum(level);
		v[3] = PointerGetDatum(ht_array_text(pa, k));
		v[4] = PointerGetDatum(ht_array_text(pb, k));
		v[5] = PointerGetDatum(ht_array_int8(child + base, k));
		nrows = ht_exec(&q_node_fetch, v, NULL, 0);
		for (int j = 3; j < 6; j++)
			pfree(DatumGetPointer(v[j]));
		for (uint64 r = 0; r < nrows; r++)
		{
			bool		isnull;
			int			i = base + DatumGetInt32(ht_col(r, 1, &isnull)) - 1;

			ht_sum_from_bytea(&sum[i], DatumGetByteaPP(ht_col(r, 2, &isnull)));
			cnt[i] = DatumGetInt64(ht_col(r, 3, &isnull));
		}
		SPI_freetuptable(SPI_tuptable);
	}
	pfree(pa);
	pfree(pb);
}

/*
 * Level 3: write the changed segment hashes and accumulate the deltas of
 * their buckets.  Changes arrive sorted by (tree, seg), so the changes of
 * one bucket are adjacent.
 */
static void
fold_segments(int part, DepthWork *w, SegChange *ch, int nch,
			  HtUpdateStats *stats)
{
	NodeWrite  *nw = palloc(sizeof(NodeWrite) * Max(nch, 1));
	int			nnw = 0;
	int			wbits = ht_geometry[w->depth].width_bits;

	for (int i = 0; i < nch; i++)
	{
		SegChange  *c = &ch[i];
		int64		bucket = c->seg >> wbits;
		HtSum		d;
		BucketDelta *b;

		nw[nnw].tree = c->tree;
		nw[nnw].child = c->seg;
		nw[nnw].sum = c->new_sum;
		nw[nnw].n = c->new_n;
		nnw++;

		child_delta(c->seg, &c->old_sum, &c->new_sum, &d);
		if (w->nbuckets == 0 ||
			w->buckets[w->nbuckets - 1].tree != c->tree ||
			w->buckets[w->nbuckets - 1].bucket != bucket)
		{
			HT_GROW(w->buckets, w->nbuckets, w->buckets_cap);
			b = &w->buckets[w->nbuckets++];
			b->tree = c->tree;
			b->bucket = bucket;
			ht_sum_zero(&b->delta);
			b->dn = 0;
		}
		b = &w->buckets[w->nbuckets - 1];
		ht_sum_add(&b->delta, &d);
		b->dn += c->new_n - c->old_n;

		if (w->nsubs == 0 ||
			w->subs[w->nsubs - 1].tree != c->tree ||
			w->subs[w->nsubs - 1].bucket != (c->seg >> HT_SUB_BITS))
		{
			HT_GROW(w->subs, w->nsubs, w->subs_cap);
			b = &w->subs[w->nsubs++];
			b->tree = c->tree;
			b->bucket = c->seg >> HT_SUB_BITS;
			ht_sum_zero(&b->delta);
			b->dn = 0;
		}
		b = &w->subs[w->nsubs - 1];
		ht_sum_add(&b->delta, &d);
		b->dn += c->new_n - c->old_n;
	}
	write_nodes(part, w, 3, nw, nnw, stats);
	pfree(nw);
}

/*
 * Levels 2 and 1: apply the bucket deltas to the level-2 rows, then the
 * resulting top deltas to the level-1 rows; record the trees whose top
 * hash changed in w->tops.
 */
/* apply accumulated deltas to the rows (tree, child) of a level */
static void
apply_deltas(int part, DepthWork *w, int level, BucketDelta *deltas, int nd,
			 HtUpdateStats *stats)
{
	int		   *tree = palloc(sizeof(int) * Max(nd, 1));
	int64	   *child = palloc(sizeof(int64) * Max(nd, 1));
	HtSum	   *old = palloc(sizeof(HtSum) * Max(nd, 1));
	int64	   *old_n = palloc(sizeof(int64) * Max(nd, 1));
	NodeWrite  *nw = palloc(sizeof(NodeWrite) * Max(nd, 1));
	int			nnw = 0;

	for (int i = 0; i < nd; i++)
	{
		tree[i] = deltas[i].tree;
		child[i] = deltas[i].bucket;
	}
	fetch_nodes(part, w, level, nd, tree, child, old, old_n);
	for (int i = 0; i < nd; i++)
	{
		if (ht_sum_is_zero(&deltas[i].delta) && deltas[i].dn == 0)
			continue;
		nw[nnw].tree = deltas[i].tree;
		nw[nnw].child = deltas[i].bucket;
		nw[nnw].sum = old[i];
		ht_sum_add(&nw[nnw].sum, &deltas[i].delta);
		nw[nnw].n = old_n[i] + deltas[i].dn;
		nnw++;
	}
	write_nodes(part, w, level, nw, nnw, stats);
}

static void
fold_upper_levels(int part, DepthWork *w, HtUpdateStats *stats)
{
	int			nb = w->nbuckets;
	int		   *tree = palloc(sizeof(int) * Max(nb, 1));
	int64	   *child = palloc(sizeof(int64) * Max(nb, 1));
	HtSum	   *old = palloc(sizeof(HtSum) * Max(nb, 1));
	int64	   *old_n = palloc(sizeof(int64) * Max(nb, 1));
	NodeWrite  *nw = palloc(sizeof(NodeWrite) * Max(nb, 1));
	int			nnw = 0;
	/* per touched tree: delta of its top */
	int			nt = 0;
	int		   *t_tree = palloc(sizeof(int) * Max(nb, 1));
	HtSum	   *t_delta = palloc(sizeof(HtSum) * Max(nb, 1));
	int64	   *t_dn = palloc(sizeof(int64) * Max(nb, 1));
	int64	   *zeros;
	HtSum	   *t_old;
	int64	   *t_old_n;

	/* sub-buckets: the same digests, summed over 32 segments */
	apply_deltas(part, w, HT_LEVEL_SUB, w->subs, w->nsubs, stats);

	/* level 2 */
	for (int i = 0; i < nb; i++)
	{
		tree[i] = w->buckets[i].tree;
		child[i] = w->buckets[i].bucket;
	}
	fetch_nodes(part, w, 2, nb, tree, child, old, old_n);
	for (int i = 0; i < nb; i++)
	{
		BucketDelta *b = &w->buckets[i];
		HtSum		new = old[i];
		HtSum		d;

		if (ht_sum_is_zero(&b->delta) && b->dn == 0)
			continue;
		ht_sum_add(&new, &b->delta);
		nw[nnw].tree = b->tree;
		nw[nnw].child = b->bucket;
		nw[nnw].sum = new;
		nw[nnw].n = old_n[i] + b->dn;
		nnw++;

		child_delta(b->bucket, &old[i], &new, &d);
		if (nt == 0 || t_tree[nt - 1] != b->tree)
		{
			t_tree[nt] = b->tree;
			ht_sum_zero(&t_delta[nt]);
			t_dn[nt] = 0;
			nt++;
		}
		ht_sum_add(&t_delta[nt - 1], &d);
		t_dn[nt - 1] += b->dn;
	}
	write_nodes(part, w, 2, nw, nnw, stats);

	/* level 1 */
	zeros = palloc0(sizeof(int64) * Max(nt, 1));
	t_old = palloc(sizeof(HtSum) * Max(nt, 1));
	t_old_n = palloc(sizeof(int64) * Max(nt, 1));
	fetch_nodes(part, w, 1, nt, t_tree, zeros, t_old, t_old_n);
	nnw = 0;
	for (int i = 0; i < nt; i++)
	{
		HtSum		new = t_old[i];
		TopChange  *tc;

		if (ht_sum_is_zero(&t_delta[i]) && t_dn[i] == 0)
			continue;
		ht_sum_add(&new, &t_delta[i]);
		nw[nnw].tree = t_tree[i];
		nw[nnw].child = 0;
		nw[nnw].sum = new;
		nw[nnw].n = t_old_n[i] + t_dn[i];
		nnw++;

		HT_GROW(w->tops, w->ntops, w->tops_cap);
		tc = &w->tops[w->ntops++];
		tc->tree = t_tree[i];
		tc->old_top = t_old[i];
		tc->new_top = new;
		tc->new_n = t_old_n[i] + t_dn[i];
	}
	write_nodes(part, w, 1, nw, nnw, stats);
}

/*
 * Read one row of a segment recomputation: (seg, new sum, new count, old
 * hash, old n) at columns c..c+4; false when the segment did not change.
 */
static bool
read_seg_change(uint64 r, int c, SegChange *out)
{
	bool		isnull;
	Datum		d;

	out->seg = DatumGetInt32(ht_col(r, c, &isnull));
	d = ht_col(r, c + 1, &isnull);
	ht_sum_from_bytea(&out->new_sum, isnull ? NULL : DatumGetByteaPP(d));
	out->new_n = DatumGetInt64(ht_col(r, c + 2, &isnull));
	d = ht_col(r, c + 3, &isnull);
	ht_sum_from_bytea(&out->old_sum, isnull ? NULL : DatumGetByteaPP(d));
	d = ht_col(r, c + 4, &isnull);
	out->old_n = isnull ? 0 : DatumGetInt64(d);
	return memcmp(&out->old_sum, &out->new_sum, sizeof(HtSum)) != 0 ||
		out->old_n != out->new_n;
}

/*
 * The dirty leaf segments that this statement's snapshot sees are deleted
 * from the log and recomputed from the entry rows the same snapshot sees;
 * a change committed later keeps its dirty row for the next update.
 * (Segments that packs cover are not logged: the fold that rewrites a pack
 * hands the change of its bucket to the update.)
 */
static HtQuery q_take_dirty = {
	"WITH d AS (DELETE FROM hashtree.dirty WHERE part = $1 RETURNING pa, pb, seg),"
	" u AS (SELECT DISTINCT pa, pb, seg FROM d)"
	" SELECT u.pa, u.pb, u.seg, x.h, x.c, y.hash, y.n"
	" FROM u"
	" CROSS JOIN LATERAL (SELECT hashtree._entry_sum(e.key, e.hash) AS h, count(*) AS c"
	"   FROM hashtree.entry e WHERE e.part = $1 AND e.depth = 2"
	"    AND e.pa = u.pa AND e.pb = u.pb AND e.seg = u.seg) x"
	" LEFT JOIN LATERAL (SELECT t.hash, t.n FROM hashtree.node t"
	"   WHERE t.part = $1 AND t.depth = 2 AND t.level = 3"
	"    AND t.pa = u.pa AND t.pb = u.pb AND t.child = u.seg LIMIT 1) y ON true"
	" ORDER BY u.pa, u.pb, u.seg",
	1, {INT4OID}
};

/* a whole leaf tree rebuilt from its entries (after a re-hash) */
static HtQuery q_tree_clear = {
	"DELETE FROM hashtree.node WHERE part = $1 AND depth = 2 AND pa = $2 AND pb = $3",
	3, {INT4OID, TEXTOID, TEXTOID}
};
static HtQuery q_tree_segments = {
	"INSERT INTO hashtree.node (part, depth, level, pa, pb, child, hash, n)"
	" SELECT $1, 2, 3, $2, $3, s.seg, s.h, s.c FROM ("
	"  SELECT seg, hashtree._entry_sum(key, hash) AS h, count(*) AS c"
	"  FROM hashtree.entry WHERE part = $1 AND depth = 2 AND pa = $2 AND pb = $3"
	"  GROUP BY seg) s"
	" WHERE s.h IS NOT NULL"
	/* in key order: each index insertion lands next to the previous one */
	" ORDER BY s.seg",
	3, {INT4OID, TEXTOID, TEXTOID}
};
/* level $4 from level $4 + 1, and at level 2 from the packs too */
static HtQuery q_tree_level = {
	"INSERT INTO hashtree.node (part, depth, level, pa, pb, child, hash, n)"
	" SELECT $1, 2, $4, $2, $3, s.b, s.h, s.c FROM ("
	"  SELECT b, hashtree._hash_sum(h) AS h, sum(c)::int8 AS c FROM ("
	"   SELECT child >> $5 AS b, hashtree._child_sum(child, hash) AS h, sum(n) AS c"
	"   FROM hashtree.node WHERE part = $1 AND depth = 2 AND pa = $2 AND pb = $3"
	"    AND level = $4 + 1 GROUP BY child >> $5"
	"   UNION ALL SELECT (p.lo >> $5)::int8, p.sum, p.n FROM hashtree.entry_pack p"
	"    WHERE p.part = $1 AND p.pa = $2 AND p.pb = $3 AND $4 = 2) y GROUP BY b) s"
	" WHERE s.h IS NOT NULL",
	5, {INT4OID, TEXTOID, TEXTOID, INT2OID, INT4OID}
};
static HtQuery q_tree_subs = {
	"INSERT INTO hashtree.node (part, depth, level, pa, pb, child, hash, n)"
	" SELECT $1, 2, " CppAsString2(HT_LEVEL_SUB) ", $2, $3, s.b, s.h, s.c FROM ("
	"  SELECT child >> " CppAsString2(HT_SUB_BITS) " AS b, hashtree._child_sum(child, hash) AS h,"
	"   sum(n)::int8 AS c"
	"  FROM hashtree.node WHERE part = $1 AND depth = 2 AND pa = $2 AND pb = $3"
	"   AND level = 3 GROUP BY child >> " CppAsString2(HT_SUB_BITS) ") s"
	" WHERE s.h IS NOT NULL",
	3, {INT4OID, TEXTOID, TEXTOID}
};

static void
rebuild_leaf_tree(int part, DepthWork *w, int tree, HtUpdateStats *stats)
{
	Datum		v[5];
	int64		zero = 0;
	HtSum		old_top;
	HtSum		new_top;
	int64		old_n;
	int64		new_n;

	fetch_nodes(part, w, 1, 1, &tree, &zero, &old_top, &old_n);
	v[0] = Int32GetDatum(part);
	v[1] = w->pa[tree];
	v[2] = w->pb[tree];
	ht_exec(&q_tree_clear, v, NULL, 0);
	stats->segments += ht_exec(&q_tree_segments, v, NULL, 0);
	stats->nodes += ht_exec(&q_tree_subs, v, NULL, 0);
	for (int level = HT_LEVELS - 1; level >= 1; level--)
	{
		v[3] = Int16GetDatum(level);
		v[4] = Int32GetDatum(ht_geometry[HT_DEPTH_LEAF].width_bits);
		stats->nodes += ht_exec(&q_tree_level, v, NULL, 0);
	}
	fetch_nodes(part, w, 1, 1, &tree, &zero, &new_top, &new_n);
	if (memcmp(&old_top, &new_top, sizeof(HtSum)) != 0)
	{
		TopChange  *tc;

		HT_GROW(w->tops, w->ntops, w->tops_cap);
		tc = &w->tops[w->ntops++];
		tc->tree = tree;
		tc->old_top = old_top;
		tc->new_top = new_top;
		tc->new_n = new_n;
	}
}

static int
bucket_delta_cmp(const void *a, const void *b)
{
	const BucketDelta *x = a;
	const BucketDelta *y = b;

	if (x->tree != y->tree)
		return x->tree < y->tree ? -1 : 1;
	return (x->bucket > y->bucket) - (x->bucket < y->bucket);
}

/*
 * Add the bucket deltas of the packs the fold rewrote to w->buckets (trees
 * being rebuilt excepted: the rebuild reads the packs as they are now),
 * leaving one delta per (tree, bucket), sorted.
 */
static void
add_pack_deltas(DepthWork *w, const HtBucketDeltas *pd, const int *rebuild, int nrebuild)
{
	int			t = -1;
	int			k = 0;

	for (int i = 0; i < pd->n; i++)
	{
		const HtBucketDelta *d = &pd->d[i];
		BucketDelta *b;
		bool		skip = false;

		if (t < 0 || !text_equal(w->pa[t], PointerGetDatum(d->pa)) ||
			!text_equal(w->pb[t], PointerGetDatum(d->pb)))
		{
			for (t = 0; t < w->ntrees; t++)
				if (text_equal(w->pa[t], PointerGetDatum(d->pa)) &&
					text_equal(w->pb[t], PointerGetDatum(d->pb)))
					break;
			if (t == w->ntrees)
				t = work_add_tree(w, PointerGetDatum(d->pa), PointerGetDatum(d->pb));
		}
		for (int r = 0; r < nrebuild; r++)
			skip |= (rebuild[r] == t);
		if (skip)
			continue;
		HT_GROW(w->buckets, w->nbuckets, w->buckets_cap);
		b = &w->buckets[w->nbuckets++];
		b->tree = t;
		b->bucket = d->bucket;
		b->delta = d->delta;
		b->dn = d->dn;
	}
	if (w->nbuckets < 2)
		return;
	qsort(w->buckets, w->nbuckets, sizeof(BucketDelta), bucket_delta_cmp);
	for (int i = 1; i < w->nbuckets; i++)
	{
		if (w->buckets[i].tree == w->buckets[k].tree &&
			w->buckets[i].bucket == w->buckets[k].bucket)
		{
			ht_sum_add(&w->buckets[k].delta, &w->buckets[i].delta);
			w->buckets[k].dn += w->buckets[i].dn;
		}
		else
			w->buckets[++k] = w->buckets[i];
	}
	w->nbuckets = k + 1;
}

/*
 * Dirty segments come sorted by (pa, pb, seg); a segment -1 is a marker
 * "rebuild the whole tree" (written by a re-hash of a tracked table) and
 * comes first: the tree's other segments are then covered by the rebuild.
 * Then the bucket deltas of the packs that the fold rewrote.
 */
static void
update_leaf_depth(int part, DepthWork *w, const HtBucketDeltas *pd, HtUpdateStats *stats)
{
	Datum		v[1] = {Int32GetDatum(part)};
	Portal		portal;
	SegChange  *ch = palloc(sizeof(SegChange) * HT_BATCH);
	text	   *last_pa = NULL;
	text	   *last_pb = NULL;
	bool		last_rebuilt = false;
	int		   *rebuild = NULL;
	int			nrebuild = 0;
	int			rebuild_cap = 0;

	portal = ht_cursor(&q_take_dirty, v, NULL);
	for (;;)
	{
		int			nch = 0;

		if (ht_fetch(portal, HT_BATCH) == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			text	   *pa = DatumGetTextPP(ht_col(r, 1, &isnull));
			text	   *pb = DatumGetTextPP(ht_col(r, 2, &isnull));
			bool		marker = DatumGetInt32(ht_col(r, 3, &isnull)) < 0;

			if (last_pa == NULL ||
				!text_equal(PointerGetDatum(pa), PointerGetDatum(last_pa)) ||
				!text_equal(PointerGetDatum(pb), PointerGetDatum(last_pb)))
			{
				last_pa = DatumGetTextPCopy(PointerGetDatum(pa));
				last_pb = DatumGetTextPCopy(PointerGetDatum(pb));
				work_add_tree(w, PointerGetDatum(last_pa), PointerGetDatum(last_pb));
				last_rebuilt = marker;
				if (marker)
				{
					HT_GROW(rebuild, nrebuild, rebuild_cap);
					rebuild[nrebuild++] = w->ntrees - 1;
				}
			}
			if (last_rebuilt)
				continue;
			stats->segments++;
			if (!read_seg_change(r, 3, &ch[nch]))
				continue;
			ch[nch].tree = w->ntrees - 1;
			nch++;
		}
		SPI_freetuptable(SPI_tuptable);
		fold_segments(part, w, ch, nch, stats);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	pfree(ch);
	add_pack_deltas(w, pd, rebuild, nrebuild);
	for (int i = 0; i < nrebuild; i++)
		rebuild_leaf_tree(part, w, rebuild[i], stats);
	fold_upper_levels(part, w, stats);
}

static HtQuery q_entries_upsert = {
	"INSERT INTO hashtree.entry AS t (part, depth, pa, pb, seg, key, hash)"
	" SELECT $1, $2, u.pa, '', u.seg, u.key, u.hash"
	" FROM unnest($3::text[], $4::int4[], $5::bytea[], $6::bytea[]) AS u(pa, seg, key, hash)"
	" ON CONFLICT (part, depth, pa, pb, seg, hashtree._kid(key))"
	" DO UPDATE SET hash = EXCLUDED.hash",
	6, {INT4OID, INT2OID, TEXTARRAYOID, INT4ARRAYOID, BYTEAARRAYOID, BYTEAARRAYOID}
};

static HtQuery q_entries_delete = {
	"DELETE FROM hashtree.entry WHERE ctid = ANY (ARRAY("
	" SELECT x.ctid FROM unnest($3::text[], $4::int4[], $5::bytea[]) AS u(pa, seg, key)"
	" CROSS JOIN LATERAL (SELECT t.ctid FROM hashtree.entry t"
	"  WHERE t.part = $1 AND t.depth = $2 AND t.pa = u.pa AND t.pb = ''"
	"   AND t.seg = u.seg AND hashtree._kid(t.key) = hashtree._kid(u.key) LIMIT 1) x))",
	5, {INT4OID, INT2OID, TEXTARRAYOID, INT4ARRAYOID, BYTEAARRAYOID}
};

static HtQuery q_recompute = {
	"SELECT u.i::int4, u.seg, x.h, x.c, y.hash, y.n"
	" FROM unnest($3::text[], $4::int4[]) WITH ORDINALITY AS u(pa, seg, i)"
	" CROSS JOIN LATERAL (SELECT hashtree._entry_sum(e.key, e.hash) AS h, count(*) AS c"
	"   FROM hashtree.entry e WHERE e.part = $1 AND e.depth = $2"
	"    AND e.pa = u.pa AND e.pb = '' AND e.seg = u.seg) x"
	" LEFT JOIN LATERAL (SELECT t.hash, t.n FROM hashtree.node t"
	"   WHERE t.part = $1 AND t.depth = $2 AND t.level = 3"
	"    AND t.pa = u.pa AND t.pb = '' AND t.child = u.seg LIMIT 1) y ON true"
	" ORDER BY u.i",
	4, {INT4OID, INT2OID, TEXTARRAYOID, INT4ARRAYOID}
};

/* a derived entry to write into a parent tree */
typedef struct ParentEntry
{
	int			tree;			/* in the parent's DepthWork */
	int32		seg;
	bytea	   *key;
	bytea	   *hash;			/* NULL: delete */
} ParentEntry;

static int
parent_entry_cmp(const void *a, const void *b)
{
	const ParentEntry *x = a;
	const ParentEntry *y = b;

	if (x->tree != y->tree)
		return x->tree < y->tree ? -1 : 1;
	if (x->seg != y->seg)
		return x->seg < y->seg ? -1 : 1;
	return 0;
}

static bytea *
utf8_bytes(text *t)
{
	int			len = VARSIZE_ANY_EXHDR(t);
	char	   *s = pg_server_to_any(VARDATA_ANY(t), len, PG_UTF8);
	bytea	   *b;

	if (s != VARDATA_ANY(t))
		len = strlen(s);
	b = palloc(VARHDRSZ + len);
	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), s, len);
	return b;
}

/*
 * Fold the top changes of the child depth into the entries of their parent
 * trees (depth cw->depth - 1) and update those trees.
 */
static void
update_parent_depth(int part, DepthWork *cw, DepthWork *w,
					HtUpdateStats *stats)
{
	int			n = cw->ntops;
	ParentEntry *pe = palloc(sizeof(ParentEntry) * Max(n, 1));
	text	   *empty = cstring_to_text("");
	Datum	   *pa = palloc(sizeof(Datum) * Max(n, 1));
	int32	   *seg = palloc(sizeof(int32) * Max(n, 1));
	Datum	   *key = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *hash = palloc(sizeof(Datum) * Max(n, 1));
	SegChange  *ch;
	int			nseg;
	int			nch = 0;

	if (n == 0)
		return;

	/* the parent tree and the entry key of every changed child tree */
	for (int i = 0; i < n; i++)
	{
		TopChange  *tc = &cw->tops[i];
		text	   *cpa = DatumGetTextPP(cw->pa[tc->tree]);
		text	   *cpb = DatumGetTextPP(cw->pb[tc->tree]);
		Datum		ppa;
		int			t;

		if (w->depth == HT_DEPTH_PREFIX)
		{
			ppa = PointerGetDatum(cpa);
			pe[i].key = utf8_bytes(cpb);
		}
		else
		{
			ppa = PointerGetDatum(empty);
			pe[i].key = utf8_bytes(cpa);
		}
		/*
		 * The parent tree: children arrive in (pa, pb) order, so it is
		 * nearly always the last one added.
		 */
		t = w->ntrees - 1;
		if (t < 0 || !text_equal(w->pa[t], ppa))
		{
			for (t = 0; t < w->ntrees; t++)
				if (text_equal(w->pa[t], ppa))
					break;
		}
		if (t == w->ntrees)
			t = work_add_tree(w, ppa, PointerGetDatum(empty));
		pe[i].tree = t;
		pe[i].seg = ht_segment_of(w->depth, VARDATA(pe[i].key),
								  VARSIZE(pe[i].key) - VARHDRSZ);
		pe[i].hash = ht_sum_to_bytea(&tc->new_top);
	}
	qsort(pe, n, sizeof(ParentEntry), parent_entry_cmp);

	/* write the derived entries: upserts, then deletes */
	for (int pass = 0; pass < 2; pass++)
	{
		bool		deleting = (pass == 1);
		int			k = 0;

		for (int i = 0; i < n; i++)
		{
			if ((pe[i].hash == NULL) != deleting)
				continue;
			pa[k] = w->pa[pe[i].tree];
			seg[k] = pe[i].seg;
			key[k] = PointerGetDatum(pe[i].key);
			hash[k] = PointerGetDatum(pe[i].hash);
			k++;
		}
		if (k > 0)
		{
			Datum		v[6];

			v[0] = Int32GetDatum(part);
			v[1] = Int16GetDatum(w->depth);
			v[2] = PointerGetDatum(ht_array_text(pa, k));
			v[3] = PointerGetDatum(ht_array_int4(seg, k));
			v[4] = PointerGetDatum(ht_array_bytea(key, k));
			if (!deleting)
			{
				v[5] = PointerGetDatum(ht_array_bytea(hash, k));
				ht_exec(&q_entries_upsert, v, NULL, 0);
			}
			else
				ht_exec(&q_entries_delete, v, NULL, 0);
			stats->nodes += k;
		}
	}

	/* recompute the distinct (tree, seg) they fall in, in (tree, seg) order */
	nseg = 0;
	for (int i = 0; i < n; i++)
	{
		if (nseg > 0 && pe[nseg - 1].tree == pe[i].tree && pe[nseg - 1].seg == pe[i].seg)
			continue;
		pe[nseg++] = pe[i];
	}
	for (int i = 0; i < nseg; i++)
	{
		pa[i] = w->pa[pe[i].tree];
		seg[i] = pe[i].seg;
	}
	{
		Datum		v[4];
		uint64		nrows;

		v[0] = Int32GetDatum(part);
		v[1] = Int16GetDatum(w->depth);
		v[2] = PointerGetDatum(ht_array_text(pa, nseg));
		v[3] = PointerGetDatum(ht_array_int4(seg, nseg));
		nrows = ht_exec(&q_recompute, v, NULL, 0);
		ch = palloc(sizeof(SegChange) * Max(nrows, 1));
		for (uint64 r = 0; r < nrows; r++)
		{
			bool		isnull;
			int			i = DatumGetInt32(ht_col(r, 1, &isnull)) - 1;

			stats->segments++;
			if (!read_seg_change(r, 2, &ch[nch]))
				continue;
			ch[nch].tree = pe[i].tree;
			nch++;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	fold_segments(part, w, ch, nch, stats);
	fold_upper_levels(part, w, stats);
}

void
ht_store_update(int part, const HtBucketDeltas *pd, HtUpdateStats *stats)
{
	HtBucketDeltas none = {0};

	MemoryContext ctx;
	MemoryContext old;
	DepthWork	w[HT_NDEPTHS];

	stats->segments = 0;
	stats->nodes = 0;
	ctx = AllocSetContextCreate(CurrentMemoryContext, "hashtree update",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(ctx);

	memset(w, 0, sizeof(w));
	for (int d = 0; d < HT_NDEPTHS; d++)
		w[d].depth = d;

	update_leaf_depth(part, &w[HT_DEPTH_LEAF], pd != NULL ? pd : &none, stats);
	update_parent_depth(part, &w[HT_DEPTH_LEAF], &w[HT_DEPTH_PREFIX], stats);
	update_parent_depth(part, &w[HT_DEPTH_PREFIX], &w[HT_DEPTH_ROOT], stats);

	MemoryContextSwitchTo(old);
	MemoryContextDelete(ctx);
}

bool
ht_store_update_if_free(int part)
{
	HtUpdateStats stats;
	TimestampTz start;

	if (IsolationUsesXactSnapshot() || !ht_part_begin_maintenance(part))
		return false;
	start = GetCurrentTimestamp();
	ht_store_update(part, NULL, &stats);
	ht_part_record_update(part, stats.segments, stats.nodes,
						  (double) TimestampDifferenceMilliseconds(start, GetCurrentTimestamp()));
	return true;
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
	"INSERT INTO hashtree.node (part, depth, level, pa, pb, child, hash, n)"
	" SELECT $1, $2, $3, s.pa, s.pb, s.b, s.h, s.c FROM ("
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
