/*-------------------------------------------------------------------------
 *
 * update.c
 *	  The incremental update of a partition's trees.
 *
 * The update recomputes each dirty segment from its entries and folds the
 * change into the ancestors by adding and subtracting child digests
 * (treemath.c), bottom-up through the leaf trees, the prefix trees and the
 * root: its cost is O(dirty segments + their ancestors).  The bucket
 * deltas of the packs a fold rewrote (pack.c) join those of the dirty
 * segments before level 2.  It deletes only the dirty rows its snapshot
 * sees, so it never blocks a writer, and a change committed later stays
 * logged for the next update.  The rebuild (store.c) computes the same
 * rows with set-based SQL and the same digests, so both produce
 * byte-identical trees (docs/DESIGN.md §6).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
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
#include "treemath.h"
#include "update.h"

/* rows per statement when writing or reading nodes by arrays */
#define HT_BATCH 10000

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
	int32		sub;			/* in psubs: the sub-bucket of a pack */
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
	int			npsubs;			/* the packs' changes of the sub-bucket hashes
								 * kept in level-2 rows, by (tree, bucket, sub) */
	int			psubs_cap;
	BucketDelta *psubs;
	int			ntops;
	int			tops_cap;
	TopChange  *tops;
} DepthWork;

static int	bucket_delta_cmp(const void *a, const void *b);

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

/* (a new row keeps no sub-bucket hashes; an existing row keeps its own) */
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

/*
 * The level-2 rows an update changes, read and rewritten directly (heap
 * and primary key, as the packs are): the statements that did it, with
 * their unnest and lateral probes, were a tenth of a fold of 200k keys at
 * 10M rows.  Each row is found by a probe of the primary key and rewritten
 * in place (HOT when its page has room).  Nobody else writes the
 * partition's rows meanwhile (its update lock).  New rows and rows that
 * become empty still go through write_nodes.
 */
typedef struct NodeDirect
{
	Relation	rel;
	Relation	idx;
	IndexInfo  *ii;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	Snapshot	snap;
	AttrNumber	att_hash,
				att_n,
				att_subs;		/* InvalidAttrNumber: not updated to 1.0 yet */
} NodeDirect;

static void
node_direct_open(NodeDirect *nd)
{
	Oid			relid;

	ht_open_table_index("node", "node_pkey", RowExclusiveLock, &nd->rel, &nd->idx);
	relid = RelationGetRelid(nd->rel);
	nd->ii = BuildIndexInfo(nd->idx);
	/* the latest snapshot: every write of this transaction so far is seen */
	CommandCounterIncrement();
	nd->snap = RegisterSnapshot(GetLatestSnapshot());
	nd->scan = index_beginscan(nd->rel, nd->idx, nd->snap, 6, 0);
	nd->slot = table_slot_create(nd->rel, NULL);
	nd->att_hash = get_attnum(relid, "hash");
	nd->att_n = get_attnum(relid, "n");
	nd->att_subs = get_attnum(relid, "subs");
}

/* done: the rows written are visible to the statements that follow */
static void
node_direct_close(NodeDirect *nd)
{
	ExecDropSingleTupleTableSlot(nd->slot);
	index_endscan(nd->scan);
	UnregisterSnapshot(nd->snap);
	index_close(nd->idx, NoLock);
	table_close(nd->rel, NoLock);
	CommandCounterIncrement();
}

/*
 * The row (part, depth, pa, pb, level, child): a copy of it, its hash and
 * n in *sum and *n; NULL (and zeros) when there is none
 */
static HeapTuple
node_direct_get(NodeDirect *nd, int part, int depth, Datum pa, Datum pb, int level,
				int64 child, HtSum *sum, int64 *n)
{
	ScanKeyData key[6];
	HeapTuple	tup;
	bool		should_free;
	bool		isnull;

	ht_sum_zero(sum);
	*n = 0;
	/* (an index scan's keys name the index's columns) */
	ScanKeyInit(&key[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(part));
	ScanKeyInit(&key[1], 2, BTEqualStrategyNumber, F_INT2EQ, Int16GetDatum(depth));
	ScanKeyInit(&key[2], 3, BTEqualStrategyNumber, F_TEXTEQ, pa);
	ScanKeyInit(&key[3], 4, BTEqualStrategyNumber, F_TEXTEQ, pb);
	ScanKeyInit(&key[4], 5, BTEqualStrategyNumber, F_INT2EQ, Int16GetDatum(level));
	ScanKeyInit(&key[5], 6, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(child));
	index_rescan(nd->scan, key, 6, NULL, 0);
	if (!index_getnext_slot(nd->scan, ForwardScanDirection, nd->slot))
		return NULL;
	tup = ExecFetchSlotHeapTuple(nd->slot, true, &should_free);
	if (!should_free)
		tup = heap_copytuple(tup);
	ExecClearTuple(nd->slot);
	ht_sum_from_bytea(sum, DatumGetByteaPP(heap_getattr(tup, nd->att_hash,
														 RelationGetDescr(nd->rel), &isnull)));
	*n = DatumGetInt64(heap_getattr(tup, nd->att_n, RelationGetDescr(nd->rel), &isnull));
	return tup;
}

/*
 * Row old (from node_direct_get) now has hash sum (not zero) and n; its
 * kept sub-bucket hashes, if it keeps some, get the deltas of the packs'
 * sub-buckets ds[0..nds-1] (ascending, one each; an empty list is stored
 * as NULL, as a rebuild stores it; a row that keeps none keeps none)
 */
static void
node_direct_put(NodeDirect *nd, HeapTuple old, const HtSum *sum, int64 n,
				const BucketDelta *ds, int nds)
{
	TupleDesc	desc = RelationGetDescr(nd->rel);
	Datum	   *values = palloc0(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc0(sizeof(bool) * desc->natts);
	bool	   *repl = palloc0(sizeof(bool) * desc->natts);
	HeapTuple	tup;
	bool		isnull;

	values[nd->att_hash - 1] = PointerGetDatum(ht_sum_to_bytea(sum));
	repl[nd->att_hash - 1] = true;
	values[nd->att_n - 1] = Int64GetDatum(n);
	repl[nd->att_n - 1] = true;
	if (nds > 0 && nd->att_subs != InvalidAttrNumber)
	{
		Datum		d = heap_getattr(old, nd->att_subs, desc, &isnull);

		if (!isnull)
		{
			int			nsubs = HT_SUBS_PER_BUCKET(HT_DEPTH_LEAF);
			int		   *idx = palloc(sizeof(int) * nds);
			HtSum	   *deltas = palloc(sizeof(HtSum) * nds);
			bytea	   *subs;

			for (int i = 0; i < nds; i++)
			{
				idx[i] = ds[i].sub & (nsubs - 1);
				deltas[i] = ds[i].delta;
			}
			subs = ht_subs_add(DatumGetByteaPP(d), idx, deltas, nds, nsubs);
			values[nd->att_subs - 1] = PointerGetDatum(subs);
			nulls[nd->att_subs - 1] = (VARSIZE(subs) == VARHDRSZ);
			repl[nd->att_subs - 1] = true;
		}
	}
	tup = heap_modify_tuple(old, desc, values, nulls, repl);
	simple_heap_update(nd->rel, &old->t_self, tup);
	if (!HeapTupleIsHeapOnly(tup))
	{
		Datum		iv[INDEX_MAX_KEYS];
		bool		in[INDEX_MAX_KEYS];

		for (int k = 0; k < nd->ii->ii_NumIndexAttrs; k++)
			iv[k] = heap_getattr(tup, nd->ii->ii_IndexAttrNumbers[k], desc, &in[k]);
		/* the same key as the version it replaces (see pack_rewrite) */
		index_insert(nd->idx, iv, in, &tup->t_self, nd->rel, UNIQUE_CHECK_NO, true, nd->ii);
	}
	heap_freetuple(tup);
	pfree(values);
	pfree(nulls);
	pfree(repl);
}

static void
fold_upper_levels(int part, DepthWork *w, HtUpdateStats *stats)
{
	int			nb = w->nbuckets;
	HeapTuple  *rows = palloc(sizeof(HeapTuple) * Max(nb, 1));
	NodeDirect	nd;
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
	int			ps = 0;			/* in w->psubs */
	bool		keeps;

	/* sub-buckets: the same digests, summed over 32 segments */
	apply_deltas(part, w, HT_LEVEL_SUB, w->subs, w->nsubs, stats);

	/* level 2: the rows found are rewritten here, the others by write_nodes */
	node_direct_open(&nd);
	for (int i = 0; i < nb; i++)
		rows[i] = node_direct_get(&nd, part, w->depth, w->pa[w->buckets[i].tree],
								  w->pb[w->buckets[i].tree], 2, w->buckets[i].bucket,
								  &old[i], &old_n[i]);
	keeps = w->npsubs > 0 && nd.att_subs != InvalidAttrNumber;
	for (int i = 0; i < nb; i++)
	{
		BucketDelta *b = &w->buckets[i];
		HtSum		new = old[i];
		HtSum		d;
		int			first;

		/* its packs' changes, for the sub-bucket hashes the row may keep */
		while (ps < w->npsubs && bucket_delta_cmp(&w->psubs[ps], b) < 0)
			ps++;
		first = ps;
		while (ps < w->npsubs && bucket_delta_cmp(&w->psubs[ps], b) == 0)
			ps++;

		if (ht_sum_is_zero(&b->delta) && b->dn == 0 && (!keeps || ps == first))
			continue;
		ht_sum_add(&new, &b->delta);
		if (rows[i] != NULL && !ht_sum_is_zero(&new))
		{
			node_direct_put(&nd, rows[i], &new, old_n[i] + b->dn, w->psubs + first,
							keeps ? ps - first : 0);
			stats->nodes++;
		}
		else
		{
			/* a new row (it keeps no sub-bucket hashes), or an emptied one */
			nw[nnw].tree = b->tree;
			nw[nnw].child = b->bucket;
			nw[nnw].sum = new;
			nw[nnw].n = old_n[i] + b->dn;
			nnw++;
		}

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
	node_direct_close(&nd);
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
/*
 * level $4 from level $4 + 1, and at level 2 from the packs too, with the
 * sub-bucket hashes of packs of one sub-bucket (HT_SUBS_SQL)
 */
static HtQuery q_tree_level = {
	"INSERT INTO hashtree.node (part, depth, level, pa, pb, child, hash, n, subs)"
	" SELECT $1, 2, $4, $2, $3, s.b, s.h, s.c,"
	"  CASE WHEN $4 = 2 THEN " HT_SUBS_SQL("$1", "$2", "$3", "s.b", "$5") " END FROM ("
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

/* (tree, bucket, sub) */
static int
sub_delta_cmp(const void *a, const void *b)
{
	const BucketDelta *x = a;
	const BucketDelta *y = b;
	int			c = bucket_delta_cmp(a, b);

	return c != 0 ? c : (x->sub > y->sub) - (x->sub < y->sub);
}

/* sort deltas by cmp and add up those that cmp finds equal */
static int
merge_deltas(BucketDelta *d, int n, int (*cmp) (const void *, const void *))
{
	int			k = 0;

	if (n < 2)
		return n;
	qsort(d, n, sizeof(BucketDelta), cmp);
	for (int i = 1; i < n; i++)
	{
		if (cmp(&d[i], &d[k]) == 0)
		{
			ht_sum_add(&d[k].delta, &d[i].delta);
			d[k].dn += d[i].dn;
		}
		else
			d[++k] = d[i];
	}
	return k + 1;
}

/*
 * Add the bucket deltas of the packs the fold rewrote to w->buckets (trees
 * being rebuilt excepted: the rebuild reads the packs as they are now),
 * leaving one delta per (tree, bucket), sorted; those of packs of one
 * sub-bucket also to w->psubs, one per (tree, bucket, sub), sorted.
 */
static void
add_pack_deltas(DepthWork *w, const HtBucketDeltas *pd, const int *rebuild, int nrebuild)
{
	int			t = -1;

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
		b->sub = -1;
		if (d->sub >= 0)
		{
			HT_GROW(w->psubs, w->npsubs, w->psubs_cap);
			w->psubs[w->npsubs] = *b;
			w->psubs[w->npsubs++].sub = d->sub;
		}
	}
	w->nbuckets = merge_deltas(w->buckets, w->nbuckets, bucket_delta_cmp);
	w->npsubs = merge_deltas(w->psubs, w->npsubs, sub_delta_cmp);
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
