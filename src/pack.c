/*-------------------------------------------------------------------------
 *
 * pack.c
 *	  Packed leaf entries of tracked tables (hashtree.entry_pack).
 *
 * Why: hashing the rows of a large table is cheap; writing one indexed row
 * per entry is not (a million B-tree insertions cost five times the scan).
 * A re-hash therefore writes the entries of a tracked table as packs, each
 * holding the entries of `span` consecutive segments of one leaf tree in
 * one partition (span chosen so that a pack holds about hashtree.pack_target
 * entries, between 4 and 1024 segments), sorted by (segment, key).  A pack
 * covers whole sub-buckets (span >= 32) or a part of one (span < 32: the
 * trees of more than ~14M entries per partition, where packs of a whole
 * sub-bucket would grow past the target and be TOASTed).
 *
 * Invariants (docs/DESIGN.md section 4):
 *	- every pack of a tree in a partition has the same span, lo = a
 *	  multiple of it, and n > 0 entries;
 *	- packs are created only by a re-hash, which first removes the tree's
 *	  entries and packs in that partition; the fold rewrites or deletes
 *	  the packs it changes and writes the entries of segments no pack
 *	  covers as rows of hashtree.entry: each leaf entry is in exactly one
 *	  place, and readers take the union (view hashtree.leaf_entry).
 *
 * Record format in `data`: u16 segment - lo (big-endian), varint key
 * length, key, u8 hash length, hash.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/buffile.h"
#include "storage/fileset.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "common.h"
#include "pack.h"
#include "partlock.h"
#include "sqlexec.h"
#include "treemath.h"

/*
 * The smallest span: the re-hash keeps two 8-byte counters per pack of
 * every partition in memory (2^20 / 4 packs of 16 bytes per partition, 32
 * MB for 8 partitions, counted in maintenance_work_mem).
 */
#define HT_PACK_MIN_SPAN	4
#define HT_PACK_MAX_SPAN	1024
#define HT_PACK_WRITE_BYTES (256 * 1024)	/* pack bytes written at a time */

/* a decoded record: pointers into a pack or into a change */
typedef struct PackRec
{
	int32		seg;
	int			keylen;
	int			hashlen;
	const char *key;
	const char *hash;			/* NULL: a deletion (changes only) */
	const char *raw;			/* the record's bytes in a pack (rec_parse) */
} PackRec;

static int
rec_cmp(const void *a, const void *b)
{
	const PackRec *x = a;
	const PackRec *y = b;
	int			c;

	if (x->seg != y->seg)
		return x->seg < y->seg ? -1 : 1;
	c = memcmp(x->key, y->key, Min(x->keylen, y->keylen));
	return c != 0 ? c : (x->keylen > y->keylen) - (x->keylen < y->keylen);
}

static void
rec_put(StringInfo buf, int32 lo, const PackRec *r)
{
	uint16		off = pg_hton16((uint16) (r->seg - lo));
	uint8		hl = (uint8) r->hashlen;

	appendBinaryStringInfo(buf, (char *) &off, 2);
	ht_put_varint(buf, (uint64) r->keylen);
	appendBinaryStringInfo(buf, r->key, r->keylen);
	appendBinaryStringInfo(buf, (char *) &hl, 1);
	appendBinaryStringInfo(buf, r->hash, r->hashlen);
}

/* parse the record at p (not beyond end) into r; the next record, or NULL */
static const uint8 *
rec_parse(const uint8 *p, const uint8 *end, int32 lo, PackRec *r)
{
	uint16		off;
	uint64		kl;

	if (end - p < 2)
		return NULL;
	r->raw = (const char *) p;
	memcpy(&off, p, 2);
	p += 2;
	if (!ht_get_varint(&p, end, &kl) || kl > (uint64) (end - p))
		return NULL;
	r->seg = lo + pg_ntoh16(off);
	r->keylen = (int) kl;
	r->key = (const char *) p;
	p += kl;
	if (p >= end || *p > (end - p - 1))
		return NULL;
	r->hashlen = *p++;
	r->hash = (const char *) p;
	return p + r->hashlen;
}

static void
pack_corrupted(int32 lo)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("hashtree: corrupted entry pack at segment %d", lo)));
}

/* the records of a pack's data, in their order */
static int
pack_decode(const char *data, int len, int32 lo, PackRec **out)
{
	const uint8 *p = (const uint8 *) data;
	const uint8 *end = p + len;
	int			cap = 16;
	int			n = 0;
	PackRec    *recs = palloc(sizeof(PackRec) * cap);

	while (p < end)
	{
		if (n >= cap)
		{
			cap *= 2;
			recs = repalloc(recs, sizeof(PackRec) * cap);
		}
		if ((p = rec_parse(p, end, lo, &recs[n++])) == NULL)
			pack_corrupted(lo);
	}
	*out = recs;
	return n;
}

static bytea *
rec_bytea(const char *p, int len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), p, len);
	return b;
}

/* ---- scans of the packs ------------------------------------------------- */

/* an open scan of hashtree.entry_pack by its primary key (part, pa, pb, lo) */
typedef struct PackScan
{
	Relation	rel;
	Relation	idx;
	TupleDesc	desc;
	Snapshot	snap;
	AttrNumber	att_part,
				att_pa,
				att_pb,
				att_lo,
				att_span,
				att_data,
				att_sum;
} PackScan;

/* latest snapshot: this transaction's own rewrites are seen */
static void
pack_scan_open(PackScan *ps)
{
	Oid			relid;

	ht_open_table_index("entry_pack", "entry_pack_pkey", AccessShareLock, &ps->rel, &ps->idx);
	relid = RelationGetRelid(ps->rel);
	ps->desc = RelationGetDescr(ps->rel);
	ps->snap = RegisterSnapshot(GetLatestSnapshot());
	ps->att_part = get_attnum(relid, "part");
	ps->att_pa = get_attnum(relid, "pa");
	ps->att_pb = get_attnum(relid, "pb");
	ps->att_lo = get_attnum(relid, "lo");
	ps->att_span = get_attnum(relid, "span");
	ps->att_data = get_attnum(relid, "data");
	ps->att_sum = get_attnum(relid, "sum");
}

static void
pack_scan_close(PackScan *ps)
{
	UnregisterSnapshot(ps->snap);
	index_close(ps->idx, AccessShareLock);
	table_close(ps->rel, AccessShareLock);
}

/* the three keys of a tree in a partition */
static void
pack_scan_keys(PackScan *ps, ScanKeyData *key, int part, Datum pa, Datum pb)
{
	ScanKeyInit(&key[0], ps->att_part, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(part));
	ScanKeyInit(&key[1], ps->att_pa, BTEqualStrategyNumber, F_TEXTEQ, pa);
	ScanKeyInit(&key[2], ps->att_pb, BTEqualStrategyNumber, F_TEXTEQ, pb);
}

/* the span of the packs of tree (pa, pb) in partition part; 0 if none */
static int32
pack_scan_span(PackScan *ps, int part, Datum pa, Datum pb)
{
	ScanKeyData key[3];
	SysScanDesc scan;
	HeapTuple	tup;
	int32		span = 0;

	pack_scan_keys(ps, key, part, pa, pb);
	scan = systable_beginscan_ordered(ps->rel, ps->idx, ps->snap, 3, key);
	tup = systable_getnext_ordered(scan, ForwardScanDirection);
	if (tup != NULL)
	{
		bool		isnull;

		span = DatumGetInt32(heap_getattr(tup, ps->att_span, ps->desc, &isnull));
	}
	systable_endscan_ordered(scan);
	return span;
}

/* ---- writing packs ------------------------------------------------------ */

static void pack_term(const PackRec *recs, int n, HtSum *term);

/* packs waiting to be inserted, for one tree and partition */
typedef struct PackWrites
{
	int			part;
	int			span;
	int			n;
	int			cap;
	Size		bytes;
	int32	   *lo;
	int32	   *count;
	Datum	   *data;
	Datum	   *sum;			/* the pack's term, NULL when zero */
} PackWrites;

/*
 * Insert the waiting packs: heap and primary key directly (a re-hash
 * writes thousands; the statement-level guard trigger is for writes that
 * do not come from the extension), then make them visible to the
 * statements that follow.
 */
static void
writes_flush(PackWrites *w, text *pa, text *pb)
{
	Oid			relid;
	Relation	rel;
	Relation	idx;
	IndexInfo  *ii;
	TupleDesc	desc;
	Datum	   *values;
	bool	   *nulls;
	AttrNumber	att[8];
	static const char *const names[8] = {"part", "lo", "span", "n", "pa", "pb", "data", "sum"};

	if (w->n == 0)
		return;
	ht_open_table_index("entry_pack", "entry_pack_pkey", RowExclusiveLock, &rel, &idx);
	relid = RelationGetRelid(rel);
	ii = BuildIndexInfo(idx);
	desc = RelationGetDescr(rel);
	values = palloc0(sizeof(Datum) * desc->natts);
	nulls = palloc0(sizeof(bool) * desc->natts);
	/* (a dropped column reads as null) */
	for (int a = 0; a < desc->natts; a++)
		nulls[a] = true;
	for (int a = 0; a < 8; a++)
	{
		att[a] = get_attnum(relid, names[a]);
		nulls[att[a] - 1] = false;
	}
	values[att[0] - 1] = Int32GetDatum(w->part);
	values[att[2] - 1] = Int32GetDatum(w->span);
	values[att[4] - 1] = PointerGetDatum(pa);
	values[att[5] - 1] = PointerGetDatum(pb);
	for (int i = 0; i < w->n; i++)
	{
		HeapTuple	tup;
		Datum		iv[INDEX_MAX_KEYS];
		bool		in[INDEX_MAX_KEYS];

		values[att[1] - 1] = Int32GetDatum(w->lo[i]);
		values[att[3] - 1] = Int32GetDatum(w->count[i]);
		values[att[6] - 1] = w->data[i];
		values[att[7] - 1] = w->sum[i];
		nulls[att[7] - 1] = (w->sum[i] == (Datum) 0);
		tup = heap_form_tuple(desc, values, nulls);
		simple_heap_insert(rel, tup);
		for (int k = 0; k < ii->ii_NumIndexAttrs; k++)
		{
			iv[k] = values[ii->ii_IndexAttrNumbers[k] - 1];
			in[k] = false;
		}
		index_insert(idx, iv, in, &tup->t_self, rel, UNIQUE_CHECK_YES, false, ii);
		heap_freetuple(tup);
		pfree(DatumGetPointer(w->data[i]));
		if (w->sum[i] != (Datum) 0)
			pfree(DatumGetPointer(w->sum[i]));
	}
	index_close(idx, NoLock);
	table_close(rel, NoLock);
	CommandCounterIncrement();
	w->n = 0;
	w->bytes = 0;
}

static void
writes_add(PackWrites *w, text *pa, text *pb, int32 lo, int count, StringInfo buf)
{
	if (w->n == w->cap)
	{
		w->cap = Max(64, w->cap * 2);
		w->lo = w->lo ? repalloc(w->lo, sizeof(int32) * w->cap) : palloc(sizeof(int32) * w->cap);
		w->count = w->count ? repalloc(w->count, sizeof(int32) * w->cap) :
			palloc(sizeof(int32) * w->cap);
		w->data = w->data ? repalloc(w->data, sizeof(Datum) * w->cap) :
			palloc(sizeof(Datum) * w->cap);
		w->sum = w->sum ? repalloc(w->sum, sizeof(Datum) * w->cap) :
			palloc(sizeof(Datum) * w->cap);
	}
	w->lo[w->n] = lo;
	w->count[w->n] = count;
	w->data[w->n] = PointerGetDatum(rec_bytea(buf->data, buf->len));
	{
		PackRec    *recs;
		int			nrec = pack_decode(buf->data, buf->len, lo, &recs);
		HtSum		term;

		pack_term(recs, nrec, &term);
		w->sum[w->n] = PointerGetDatum(ht_sum_to_bytea(&term));
		pfree(recs);
	}
	w->bytes += buf->len;
	w->n++;
	if (w->bytes >= HT_PACK_WRITE_BYTES)
		writes_flush(w, pa, pb);
}

/*
 * Merge sorted changes into the sorted records of a pack: the new pack in
 * out (empty when nothing is left) and its records in recs (room for nold
 * + nch; they point into the old pack and the changes), the segments whose
 * entries changed appended to dirty (room for nch).  Returns the new
 * number of entries.  Records are self-contained (their segment is an
 * offset from lo), so the runs of unchanged records are copied as bytes.
 */
static int
pack_merge(int32 lo, PackRec *old, int nold, PackRec *ch, int nch, StringInfo out,
		   PackRec *recs, int32 *dirty, int *ndirty)
{
	int			i = 0;
	int			j = 0;
	int			n = 0;
	int32		last_dirty = -1;
	const char *run = NULL;		/* unchanged records not copied yet */
	const char *run_end = NULL;

#define MARK_DIRTY(s) \
	do { if ((s) != last_dirty) { dirty[(*ndirty)++] = (s); last_dirty = (s); } } while (0)
#define KEEP(r) \
	do { \
		if (run_end != (r)->raw) \
		{ \
			if (run != NULL) \
				appendBinaryStringInfo(out, run, run_end - run); \
			run = (r)->raw; \
		} \
		run_end = (r)->hash + (r)->hashlen; \
		recs[n++] = *(r); \
	} while (0)

	while (i < nold || j < nch)
	{
		int			c = (i >= nold) ? 1 : (j >= nch) ? -1 : rec_cmp(&old[i], &ch[j]);

		if (c < 0)
		{
			KEEP(&old[i]);
			i++;
			continue;
		}
		/* a change: skip earlier changes of the same key (the last wins) */
		while (j + 1 < nch && rec_cmp(&ch[j], &ch[j + 1]) == 0)
			j++;
		if (ch[j].hash != NULL)
		{
			if (c == 0 && old[i].hashlen == ch[j].hashlen &&
				memcmp(old[i].hash, ch[j].hash, ch[j].hashlen) == 0)
				KEEP(&old[i]);
			else
			{
				if (run != NULL)
					appendBinaryStringInfo(out, run, run_end - run);
				run = run_end = NULL;
				rec_put(out, lo, &ch[j]);
				recs[n++] = ch[j];
				MARK_DIRTY(ch[j].seg);
			}
		}
		else if (c == 0)
			MARK_DIRTY(ch[j].seg);
		if (c == 0)
			i++;
		j++;
	}
	if (run != NULL)
		appendBinaryStringInfo(out, run, run_end - run);
#undef KEEP
#undef MARK_DIRTY
	return n;
}

/* changes as records, sorted */
static PackRec *
changes_recs(HtPackEntry *changes, int n)
{
	PackRec    *recs = palloc(sizeof(PackRec) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		recs[i].seg = changes[i].seg;
		recs[i].key = VARDATA_ANY(changes[i].key);
		recs[i].keylen = VARSIZE_ANY_EXHDR(changes[i].key);
		recs[i].hash = changes[i].hash ? VARDATA_ANY(changes[i].hash) : NULL;
		recs[i].hashlen = changes[i].hash ? VARSIZE_ANY_EXHDR(changes[i].hash) : 0;
	}
	qsort(recs, n, sizeof(PackRec), rec_cmp);
	return recs;
}

/*
 * Rewriting the packs of one tree in one partition in place: the fold's
 * new version of a pack is a heap update of the old one (HOT when its page
 * has room: no index entry, and page pruning reclaims the old version
 * without a VACUUM), an emptied pack is deleted.  Heap and index directly,
 * as the pack builder writes (the guard trigger is for foreign writes).
 * The fold holds the partition's update lock: nobody else writes packs of
 * this partition meanwhile.
 */
typedef struct PackRewriter
{
	Relation	rel;
	Relation	idx;
	IndexInfo  *ii;
	Datum	   *values;
	bool	   *nulls;
	AttrNumber	att_lo,
				att_n,
				att_data,
				att_sum;
} PackRewriter;

static PackRewriter *
pack_rewrite_open(int part, int span, text *pa, text *pb)
{
	PackRewriter *pu = palloc0(sizeof(PackRewriter));
	Oid			relid;
	int			natts;

	ht_open_table_index("entry_pack", "entry_pack_pkey", RowExclusiveLock, &pu->rel, &pu->idx);
	relid = RelationGetRelid(pu->rel);
	pu->ii = BuildIndexInfo(pu->idx);
	natts = RelationGetDescr(pu->rel)->natts;
	pu->values = palloc0(sizeof(Datum) * natts);
	pu->nulls = palloc(sizeof(bool) * natts);
	/* (a dropped column reads as null) */
	for (int a = 0; a < natts; a++)
		pu->nulls[a] = true;
	pu->att_lo = get_attnum(relid, "lo");
	pu->att_n = get_attnum(relid, "n");
	pu->att_data = get_attnum(relid, "data");
	pu->att_sum = get_attnum(relid, "sum");
	pu->values[get_attnum(relid, "part") - 1] = Int32GetDatum(part);
	pu->values[get_attnum(relid, "span") - 1] = Int32GetDatum(span);
	pu->values[get_attnum(relid, "pa") - 1] = PointerGetDatum(pa);
	pu->values[get_attnum(relid, "pb") - 1] = PointerGetDatum(pb);
	pu->nulls[get_attnum(relid, "part") - 1] = false;
	pu->nulls[get_attnum(relid, "span") - 1] = false;
	pu->nulls[get_attnum(relid, "pa") - 1] = false;
	pu->nulls[get_attnum(relid, "pb") - 1] = false;
	pu->nulls[pu->att_lo - 1] = false;
	pu->nulls[pu->att_n - 1] = false;
	pu->nulls[pu->att_data - 1] = false;
	return pu;
}

/*
 * pack lo (at tid) now holds the cnt records of buf, its term is term;
 * none: it goes
 */
static void
pack_rewrite(PackRewriter *pu, ItemPointer tid, int32 lo, int cnt, StringInfo buf,
			 const HtSum *term)
{
	HeapTuple	tup;
	bytea	   *data;
	bytea	   *sum;

	if (cnt == 0)
	{
		simple_heap_delete(pu->rel, tid);
		return;
	}
	data = rec_bytea(buf->data, buf->len);
	pu->values[pu->att_lo - 1] = Int32GetDatum(lo);
	pu->values[pu->att_n - 1] = Int32GetDatum(cnt);
	pu->values[pu->att_data - 1] = PointerGetDatum(data);
	sum = ht_sum_to_bytea(term);
	pu->values[pu->att_sum - 1] = PointerGetDatum(sum);
	pu->nulls[pu->att_sum - 1] = (sum == NULL);
	tup = heap_form_tuple(RelationGetDescr(pu->rel), pu->values, pu->nulls);
	simple_heap_update(pu->rel, tid, tup);
	if (!HeapTupleIsHeapOnly(tup))
	{
		Datum		iv[INDEX_MAX_KEYS];
		bool		in[INDEX_MAX_KEYS];

		for (int k = 0; k < pu->ii->ii_NumIndexAttrs; k++)
		{
			iv[k] = pu->values[pu->ii->ii_IndexAttrNumbers[k] - 1];
			in[k] = false;
		}
		/*
		 * The same key as the version it replaces, which nobody else can
		 * write meanwhile (the partition's update lock): no uniqueness
		 * check, and the hint that lets the B-tree delete the old versions'
		 * entries bottom-up instead of splitting pages.
		 */
		index_insert(pu->idx, iv, in, &tup->t_self, pu->rel, UNIQUE_CHECK_NO, true, pu->ii);
	}
	heap_freetuple(tup);
	pfree(data);
	if (sum != NULL)
		pfree(sum);
}

/* done: the new versions are visible to the statements that follow */
static void
pack_rewrite_close(PackRewriter *pu)
{
	index_close(pu->idx, NoLock);
	table_close(pu->rel, NoLock);
	CommandCounterIncrement();
}

/*
 * Sum of the entry digests of segment seg and their count, from records
 * recs[*pos ..] sorted by segment; *pos moves past the segment.
 */
static void
seg_sum(const PackRec *recs, int n, int *pos, int32 seg, HtSum *sum, int64 *cnt)
{
	ht_sum_zero(sum);
	*cnt = 0;
	while (*pos < n && recs[*pos].seg < seg)
		(*pos)++;
	for (; *pos < n && recs[*pos].seg == seg; (*pos)++)
	{
		HtSum		d;

		ht_entry_digest(recs[*pos].key, recs[*pos].keylen,
						recs[*pos].hash, recs[*pos].hashlen, &d);
		ht_sum_add(sum, &d);
		(*cnt)++;
	}
}

/*
 * A pack's term in its bucket's hash: the sum over its segments of
 * C(segment, segment hash).  Stored with the pack (column sum), it is the
 * pack's sub-bucket hash when the span is one sub-bucket (a big tree), so
 * a compare reads it without decoding the pack.
 */
static void
pack_term(const PackRec *recs, int n, HtSum *term)
{
	int			i = 0;

	ht_sum_zero(term);
	while (i < n)
	{
		int32		seg = recs[i].seg;
		HtSum		sum;
		HtSum		t;
		int64		cnt;

		seg_sum(recs, n, &i, seg, &sum, &cnt);
		ht_child_term(seg, &sum, &t);
		ht_sum_add(term, &t);
	}
}

/*
 * The change of the bucket of pack lo when its records went from old to
 * new (segments segs[0..nsegs-1], ascending, changed), appended to deltas
 * unless nothing changed.
 */
static void
add_bucket_delta(HtBucketDeltas *deltas, text *pa, text *pb, int32 lo, int span,
				 const PackRec *old, int nold, const PackRec *new, int nnew,
				 const int32 *segs, int nsegs, HtSum *out)
{
	int			io = 0;
	int			in = 0;
	HtSum		delta;
	int64		dn = 0;
	HtBucketDelta *d;
	MemoryContext caller;

	ht_sum_zero(&delta);
	for (int s = 0; s < nsegs; s++)
	{
		HtSum		os,
					ns,
					t;
		int64		oc,
					nc;

		seg_sum(old, nold, &io, segs[s], &os, &oc);
		seg_sum(new, nnew, &in, segs[s], &ns, &nc);
		ht_child_term(segs[s], &ns, &t);
		ht_sum_add(&delta, &t);
		ht_child_term(segs[s], &os, &t);
		ht_sum_sub(&delta, &t);
		dn += nc - oc;
	}
	*out = delta;
	if (ht_sum_is_zero(&delta) && dn == 0)
		return;

	caller = MemoryContextSwitchTo(deltas->cxt);
	if (deltas->n >= deltas->cap)
	{
		deltas->cap = Max(64, deltas->cap * 2);
		deltas->d = deltas->d ? repalloc(deltas->d, sizeof(HtBucketDelta) * deltas->cap)
			: palloc(sizeof(HtBucketDelta) * deltas->cap);
	}
	d = &deltas->d[deltas->n];
	if (deltas->n > 0 && datumIsEqual(PointerGetDatum(d[-1].pa), PointerGetDatum(pa), false, -1)
		&& datumIsEqual(PointerGetDatum(d[-1].pb), PointerGetDatum(pb), false, -1))
	{
		d->pa = d[-1].pa;
		d->pb = d[-1].pb;
	}
	else
	{
		d->pa = DatumGetTextPCopy(PointerGetDatum(pa));
		d->pb = DatumGetTextPCopy(PointerGetDatum(pb));
	}
	d->bucket = lo >> ht_geometry[HT_DEPTH_LEAF].width_bits;
	d->sub = (span <= HT_SUB_SPAN) ? (lo >> HT_SUB_BITS) : -1;
	d->delta = delta;
	d->dn = dn;
	deltas->n++;
	MemoryContextSwitchTo(caller);
}

/*
 * The packs of one tree in a partition, met in ascending lo by a forward
 * scan of the primary key over [first, last]: the packs asked for, in
 * ascending order, each once.  The scan steps from one pack asked for to
 * the next when they are near (a fold of dense changes: a probe per pack
 * descended the B-tree each time, a sixth of a fold of 200k keys at 10M
 * rows), and starts again at the pack asked for when it is more than
 * HT_CURSOR_STEP packs ahead (sparse changes: stepping over every pack in
 * between made the update of 1,000 changes at 30M rows 3x slower).  It
 * reads lo from the index entries and fetches only the packs asked for;
 * entries of dead versions (earlier rewrites not yet vacuumed) fetch
 * nothing.
 */
#define HT_CURSOR_STEP 16

typedef struct PackCursor
{
	PackScan   *ps;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	int			part;
	Datum		pa;
	Datum		pb;
	int32		span;
	int32		last;
	bool		have;			/* the scan is on an entry not consumed yet */
	bool		done;			/* the scan has no more entries */
	int32		cur_lo;			/* ... of this lo; else where the scan is, about */
} PackCursor;

/* (re)start the scan at the pack lo */
static void
pack_cursor_seek(PackCursor *c, int32 lo)
{
	ScanKeyData key[5];

	/* (an index scan's keys name the index's columns: part, pa, pb, lo) */
	ScanKeyInit(&key[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(c->part));
	ScanKeyInit(&key[1], 2, BTEqualStrategyNumber, F_TEXTEQ, c->pa);
	ScanKeyInit(&key[2], 3, BTEqualStrategyNumber, F_TEXTEQ, c->pb);
	ScanKeyInit(&key[3], 4, BTGreaterEqualStrategyNumber, F_INT4GE, Int32GetDatum(lo));
	ScanKeyInit(&key[4], 4, BTLessEqualStrategyNumber, F_INT4LE, Int32GetDatum(c->last));
	index_rescan(c->scan, key, 5, NULL, 0);
	c->have = false;
	c->done = false;
	c->cur_lo = lo;
}

static void
pack_cursor_open(PackCursor *c, PackScan *ps, int part, Datum pa, Datum pb, int32 span,
				 int32 first, int32 last)
{
	c->ps = ps;
	c->part = part;
	c->pa = pa;
	c->pb = pb;
	c->span = span;
	c->last = last;
	c->scan = index_beginscan(ps->rel, ps->idx, ps->snap, 5, 0);
	c->scan->xs_want_itup = true;	/* lo from the index entry */
	c->slot = table_slot_create(ps->rel, NULL);
	pack_cursor_seek(c, first);
}

static void
pack_cursor_close(PackCursor *c)
{
	ExecDropSingleTupleTableSlot(c->slot);
	index_endscan(c->scan);
}

/*
 * The pack lo (not below any lo asked for before): false if there is
 * none.  Its data copied into the caller's memory (the rewrite that
 * follows may change the page), its tid and stored term.
 */
static bool
pack_cursor_get(PackCursor *c, int32 lo, bytea **data, ItemPointerData *tid, HtSum *term)
{
	PackScan   *ps = c->ps;
	HeapTuple	tup;
	bool		should_free;
	bool		isnull;
	Datum		d;

	if ((int64) lo - c->cur_lo > (int64) HT_CURSOR_STEP * c->span)
		pack_cursor_seek(c, lo);
	for (;;)
	{
		if (!c->have)
		{
			/* (a B-tree scan asked again after its end would start over) */
			if (c->done || index_getnext_tid(c->scan, ForwardScanDirection) == NULL)
			{
				c->done = true;
				return false;
			}
			c->cur_lo = DatumGetInt32(index_getattr(c->scan->xs_itup, 4,
													c->scan->xs_itupdesc, &isnull));
			c->have = true;
		}
		if (c->cur_lo > lo)
			return false;		/* (kept for a later lo) */
		c->have = false;
		if (c->cur_lo == lo && index_fetch_heap(c->scan, c->slot))
			break;
	}
	tup = ExecFetchSlotHeapTuple(c->slot, false, &should_free);
	*tid = c->slot->tts_tid;
	*data = DatumGetByteaPCopy(heap_getattr(tup, ps->att_data, ps->desc, &isnull));
	d = heap_getattr(tup, ps->att_sum, ps->desc, &isnull);
	ht_sum_from_bytea(term, isnull ? NULL : DatumGetByteaPP(d));
	if (should_free)
		heap_freetuple(tup);
	ExecClearTuple(c->slot);
	return true;
}

static int
apply_recs(int part, text *pa, text *pb, PackRec *ch, int n, HtBucketDeltas *deltas,
		   PackRec *rest, HtPackApplyStats *stats)
{
	PackScan	ps;
	PackCursor	cur;
	int			span;
	int			nrest = 0;
	int32	   *dirty;
	PackRewriter *pu;
	int			i = 0;

	if (n == 0)
		return 0;
	pack_scan_open(&ps);
	span = pack_scan_span(&ps, part, PointerGetDatum(pa), PointerGetDatum(pb));
	stats->span = Max(span, 0);
	if (span <= 0)
	{
		/* no packs: everything goes to hashtree.entry */
		pack_scan_close(&ps);
		memcpy(rest, ch, sizeof(PackRec) * n);
		stats->outside += n;
		return n;
	}

	/* the packs the changes fall in, in order (the changes are by segment) */
	pack_cursor_open(&cur, &ps, part, PointerGetDatum(pa), PointerGetDatum(pb), span,
					 ch[0].seg - ch[0].seg % span, ch[n - 1].seg - ch[n - 1].seg % span);
	dirty = palloc(sizeof(int32) * n);
	pu = pack_rewrite_open(part, span, pa, pb);
	while (i < n)
	{
		int32		lo = ch[i].seg - ch[i].seg % span;
		int			j;
		bytea	   *data;
		ItemPointerData tid;
		HtSum		term;
		PackRec    *old;
		PackRec    *merged;
		int			nold;
		int			cnt;
		int			ndirty = 0;
		StringInfoData buf;

		for (j = i; j < n && ch[j].seg < lo + span; j++)
			;
		if (!pack_cursor_get(&cur, lo, &data, &tid, &term))
		{
			/* no pack covers them */
			stats->outside += j - i;
			while (i < j)
				rest[nrest++] = ch[i++];
			continue;
		}
		nold = pack_decode(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), lo, &old);
		stats->packs++;
		stats->entries += nold;
		initStringInfo(&buf);
		enlargeStringInfo(&buf, VARSIZE_ANY_EXHDR(data) + 64);
		merged = palloc(sizeof(PackRec) * (nold + j - i));
		cnt = pack_merge(lo, old, nold, ch + i, j - i, &buf, merged, dirty, &ndirty);
		if (ndirty > 0)
		{
			HtSum		delta;

			add_bucket_delta(deltas, pa, pb, lo, span, old, nold, merged, cnt, dirty, ndirty,
							 &delta);
			ht_sum_add(&term, &delta);
			pack_rewrite(pu, &tid, lo, cnt, &buf, &term);
		}
		pfree(buf.data);
		pfree(merged);
		pfree(old);
		pfree(data);
		i = j;
	}
	pack_rewrite_close(pu);
	pack_cursor_close(&cur);
	pack_scan_close(&ps);
	return nrest;
}

int
ht_pack_apply(int part, text *pa, text *pb, HtPackEntry *changes, int n, HtPackEntry *rest,
			  HtBucketDeltas *deltas, HtPackApplyStats *stats)
{
	PackRec    *ch = changes_recs(changes, n);
	PackRec    *left = palloc(sizeof(PackRec) * Max(n, 1));
	int			nleft = apply_recs(part, pa, pb, ch, n, deltas, left, stats);

	/* the changes left, as given (found again by segment and key) */
	for (int i = 0; i < nleft; i++)
	{
		rest[i].seg = left[i].seg;
		rest[i].key = rec_bytea(left[i].key, left[i].keylen);
		rest[i].hash = left[i].hash ? rec_bytea(left[i].hash, left[i].hashlen) : NULL;
	}
	return nleft;
}

/* ---- building the packs of a re-hash --------------------------------------- */

/*
 * The records of a re-hash are appended, tagged with their pack ("slot"),
 * to chunks of memory in scan order (sequential writes): u32 slot, u32
 * length, then the record as a pack holds it (rec_put).  Sorting them puts
 * them in pack order with a counting sort on the slot, then each pack in
 * (segment, key) order.
 *
 * When everything fits in maintenance_work_mem (the buffered bytes, the
 * pointer per record and the sort arrays all count), the sorted packs are
 * written directly.  Otherwise, as tuplesort does, each full buffer is
 * sorted and written as a sorted run to a temporary file (the same
 * format, in (slot, segment, key) order), and at the end the runs are
 * merged once: a binary heap over the current record of each run yields
 * the records in order, and each pack is written exactly once.  Packs
 * already written are never read back.  The temporary files belong to
 * the current resource owner: an error or a cancel releases them.
 */
#define HT_CHUNK_SIZE (1024 * 1024)
#define HT_MIN_RUN_BYTES (256 * 1024)	/* records per run at the very least */
#define HT_MERGE_BATCH 10000	/* records merged between interrupt checks */
#define HT_MAX_BUFFERED ((int64) PG_INT32_MAX)	/* records buffered (u32 positions) */

/* one sorted run being merged: its file and its current record */
typedef struct BuildRun
{
	BufFile    *file;
	uint32		slot;
	uint32		len;
	uint8	   *buf;			/* the current record's bytes */
	uint32		cap;
	PackRec		r;				/* ... parsed */
} BuildRun;

struct HtPackBuild
{
	text	   *pa;
	text	   *pb;
	int			part;			/* < 0: all */
	int			nparts;
	int			span;
	int			npacks;			/* per partition */
	int			nslots;			/* packs in all: (part < 0 ? nparts : 1) * npacks */
	uint32	   *counts;			/* records per slot */
	uint32		maxcount;		/* the largest of counts[] */
	int64		nrecs;
	char	  **chunks;
	Size	   *lens;			/* bytes used in each chunk */
	int			nchunks;
	int			maxchunks;
	Size		used;			/* bytes used in the last chunk */
	Size		mem;			/* bytes of records buffered */
	Size		budget;			/* what the buffer may use, sort arrays included */
	BufFile   **runs;			/* sorted runs written */
	int			nruns;
	int			maxruns;
	int64		spilled;		/* records in the runs */
	FileSet    *fileset;		/* runs shared with other backends, or NULL */
	const char *runname;		/* a worker's runs there: <runname>.<n>, closed */
	int			nfileruns;
	int			nscans;			/* parallel scans that fed the builder so far */
	MemoryContext cxt;
};

int
ht_pack_span_for(double est_rows)
{
	/*
	 * About ht_guc_pack_target entries per pack: the span whose packs are
	 * expected to hold the number of entries nearest the target (within a
	 * factor of sqrt(2)), halved from the largest while they would hold
	 * more.  (Until spans below one sub-bucket, the rule halved while they
	 * held more than the target, stopping at 32: the same spans from 32
	 * up, but for a target between the two rules.)
	 */
	double		per_tree = Max(est_rows / ht_num_partitions(), 1.0);
	int64		segs = HT_SEGMENTS(HT_DEPTH_LEAF);
	int			span = HT_PACK_MAX_SPAN;

	while (span > HT_PACK_MIN_SPAN &&
		   per_tree * span / segs > ht_guc_pack_target * 1.4142135623730951)
		span /= 2;
	return span;
}

/*
 * A repack is due when the packs the fold read hold more than 4 times the
 * target (a table grown since its packs were made: bigger rows to rewrite,
 * TOASTed past ~2 kB) or less than a quarter of it where a larger span is
 * possible (shrunk: a row and an index entry for few entries), or when
 * many of the changes fell where no pack is (rows, each with its index
 * entries and node rows).  Only on evidence enough not to flap.
 */
bool
ht_pack_needs_repack(const HtPackApplyStats *stats)
{
	double		avg = stats->packs > 0 ? (double) stats->entries / stats->packs : 0;

	if (stats->outside >= 1024 && stats->outside * 4 > stats->outside + stats->entries)
		return true;
	if (stats->packs < 16)
		return false;
	if (avg > 4.0 * ht_guc_pack_target && stats->span > HT_PACK_MIN_SPAN)
		return true;
	return avg * 4.0 < ht_guc_pack_target && stats->span < HT_PACK_MAX_SPAN &&
		stats->packs >= 256;
}

/*
 * The budget of the buffer: the per-slot arrays (counts here, the
 * positions of the sort) are there whatever the number of records; the
 * rest of the limit is the buffer's, but a run holds HT_MIN_RUN_BYTES at
 * least (a limit smaller than the slot arrays would otherwise write a run
 * per record).
 */
static void
build_set_limit(HtPackBuild *b, Size limit)
{
	Size		fixed = sizeof(uint32) * 2 * (Size) b->nslots;

	b->budget = limit > fixed + HT_MIN_RUN_BYTES ? limit - fixed : HT_MIN_RUN_BYTES;
}

static HtPackBuild *
build_begin(text *pa, text *pb, int part, int nparts, int span, Size limit)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "hashtree packs",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	HtPackBuild *b = palloc0(sizeof(HtPackBuild));
	int64		segs = HT_SEGMENTS(HT_DEPTH_LEAF);

	b->cxt = cxt;
	b->pa = pa;
	b->pb = pb;
	b->part = part;
	b->nparts = nparts;
	b->span = span;
	b->npacks = (int) (segs / b->span);
	b->nslots = b->npacks * (part < 0 ? b->nparts : 1);
	b->counts = MemoryContextAllocHuge(cxt, sizeof(uint32) * b->nslots);
	memset(b->counts, 0, sizeof(uint32) * b->nslots);
	b->maxchunks = 64;
	b->chunks = palloc(sizeof(char *) * b->maxchunks);
	b->lens = palloc(sizeof(Size) * b->maxchunks);
	b->used = 0;
	build_set_limit(b, limit);
	MemoryContextSwitchTo(old);
	return b;
}

HtPackBuild *
ht_pack_build_begin(text *pa, text *pb, int part, double est_rows)
{
	return build_begin(pa, pb, part, ht_num_partitions(), ht_pack_span_for(est_rows),
					   (Size) maintenance_work_mem * 1024);
}

int
ht_pack_build_span(HtPackBuild *b)
{
	return b->span;
}

void
ht_pack_build_limit(HtPackBuild *b, Size limit)
{
	build_set_limit(b, limit);
}

static void build_flush(HtPackBuild *b, bool to_run);

/* the shared runs' files go with the builder, whether it ends or fails */
static void
fileset_drop(void *arg)
{
	FileSetDeleteAll((FileSet *) arg);
}

FileSet *
ht_pack_build_fileset(HtPackBuild *b)
{
	if (b->fileset == NULL)
	{
		MemoryContextCallback *cb = MemoryContextAlloc(b->cxt, sizeof(MemoryContextCallback));

		b->fileset = MemoryContextAlloc(b->cxt, sizeof(FileSet));
		FileSetInit(b->fileset);
		cb->func = fileset_drop;
		cb->arg = b->fileset;
		MemoryContextRegisterResetCallback(b->cxt, cb);
	}
	return b->fileset;
}

int
ht_pack_build_next_scan(HtPackBuild *b)
{
	return b->nscans++;
}

HtPackBuild *
ht_pack_build_begin_runs(int part, int nparts, int span, Size limit, FileSet *fileset,
						 const char *runname)
{
	HtPackBuild *b = build_begin(NULL, NULL, part, nparts, span, limit);

	b->fileset = fileset;
	b->runname = MemoryContextStrdup(b->cxt, runname);
	return b;
}

int
ht_pack_build_end_runs(HtPackBuild *b)
{
	int			n;

	Assert(b->runname != NULL);
	if (b->nrecs > 0)
		build_flush(b, true);
	n = b->nfileruns;
	MemoryContextDelete(b->cxt);
	return n;
}

void
ht_pack_build_add_runs(HtPackBuild *b, const char *runname, int nruns)
{
	MemoryContext old = MemoryContextSwitchTo(b->cxt);

	Assert(b->fileset != NULL && b->runname == NULL);
	for (int i = 0; i < nruns; i++)
	{
		char	   *name = psprintf("%s.%d", runname, i);

		if (b->nruns == b->maxruns)
		{
			b->maxruns = Max(16, b->maxruns * 2);
			b->runs = b->runs ? repalloc(b->runs, sizeof(BufFile *) * b->maxruns) :
				palloc(sizeof(BufFile *) * b->maxruns);
		}
		b->runs[b->nruns++] = BufFileOpenFileSet(b->fileset, name, O_RDONLY, false);
	}
	MemoryContextSwitchTo(old);
}

/* a buffered record: its parsed form (the sort key) and its bytes */
typedef struct BuildRec
{
	PackRec		r;
	const uint8 *raw;
	uint32		rawlen;
} BuildRec;

static inline int
buildrec_cmp(const BuildRec *a, const BuildRec *b)
{
	int			c;

	if (a->r.seg != b->r.seg)
		return a->r.seg < b->r.seg ? -1 : 1;
	c = memcmp(a->r.key, b->r.key, Min(a->r.keylen, b->r.keylen));
	return c != 0 ? c : (a->r.keylen > b->r.keylen) - (a->r.keylen < b->r.keylen);
}

/* sort_buildrec(): a quicksort with the comparison inlined */
#define ST_SORT sort_buildrec
#define ST_ELEMENT_TYPE BuildRec
#define ST_COMPARE(a, b) buildrec_cmp(a, b)
#define ST_SCOPE static
#define ST_DEFINE
#include "lib/sort_template.h"

/*
 * The records of a flush are read in pack order, scattered over the
 * buffer: fetch the ones a few places ahead into the cache meanwhile.
 */
#define HT_PREFETCH_AHEAD 16
#if defined(__GNUC__) || defined(__clang__)
#define ht_prefetch(p) __builtin_prefetch(p)
#else
#define ht_prefetch(p) ((void) 0)
#endif

/* what the buffer holds, counted against the budget */
static inline Size
build_mem(HtPackBuild *b)
{
	return b->mem + sizeof(uint8 *) * (Size) b->nrecs +
		sizeof(BuildRec) * (Size) b->maxcount;
}

static void
duplicate_entry(int32 seg)
{
	elog(ERROR, "hashtree: two entries of one key in segment %d while building packs", seg);
}

/*
 * Sort the buffered records and write them: as packs (nothing spilled), or
 * as a sorted run to a new temporary file.  The buffer is emptied.
 */
static void
build_flush(HtPackBuild *b, bool to_run)
{
	MemoryContext old = MemoryContextSwitchTo(b->cxt);
	uint32	   *pos = MemoryContextAllocHuge(b->cxt, sizeof(uint32) * (b->nslots + 1));
	const uint8 **recp = MemoryContextAllocHuge(b->cxt, sizeof(uint8 *) * Max(b->nrecs, 1));
	BuildRec   *recs = NULL;
	StringInfoData out;
	PackWrites	w = {0};
	BufFile    *run = NULL;
	int			cur_part = -1;

	if (to_run && b->runname != NULL)
	{
		/* a worker's run: for the backend that merges */
		run = BufFileCreateFileSet(b->fileset, psprintf("%s.%d", b->runname, b->nfileruns++));
		b->spilled += b->nrecs;
	}
	else if (to_run)
	{
		if (b->nruns == b->maxruns)
		{
			b->maxruns = Max(16, b->maxruns * 2);
			b->runs = b->runs ? repalloc(b->runs, sizeof(BufFile *) * b->maxruns) :
				palloc(sizeof(BufFile *) * b->maxruns);
		}
		run = BufFileCreateTemp(false);
		b->runs[b->nruns++] = run;
		b->spilled += b->nrecs;
	}

	/* counting sort of the records by slot (u32 slot, u32 length, record) */
	pos[0] = 0;
	for (int s = 0; s < b->nslots; s++)
		pos[s + 1] = pos[s] + b->counts[s];
	for (int c = 0; c < b->nchunks; c++)
	{
		const uint8 *p = (const uint8 *) b->chunks[c];
		const uint8 *end = p + (c == b->nchunks - 1 ? b->used : b->lens[c]);

		while (p < end)
		{
			uint32		slot;
			uint32		len;

			memcpy(&slot, p, 4);
			memcpy(&len, p + 4, 4);
			if (slot >= (uint32) b->nslots || len > (uint32) (end - p - 8))
				elog(ERROR, "hashtree: pack builder buffer damaged");
			recp[pos[slot]++] = p + 8;
			p += 8 + len;
		}
	}

	/* each pack: its records sorted by (segment, key), then written */
	recs = palloc(sizeof(BuildRec) * Max(b->maxcount, 1));
	initStringInfo(&out);
	for (int s = 0; s < b->nslots; s++)
	{
		int			part = b->part < 0 ? s / b->npacks : b->part;
		int32		lo = (s % b->npacks) * b->span;
		uint32		first = pos[s] - b->counts[s];
		int			n = (int) b->counts[s];

		if (part != cur_part)
		{
			if (!to_run)
			{
				writes_flush(&w, b->pa, b->pb);
				w.part = part;
				w.span = b->span;
			}
			cur_part = part;
			CHECK_FOR_INTERRUPTS();
		}
		if (n == 0)
			continue;
		for (int i = 0; i < n; i++)
		{
			const uint8 *raw = recp[first + i];
			uint32		len;

			if (first + i + HT_PREFETCH_AHEAD < b->nrecs)
				ht_prefetch(recp[first + i + HT_PREFETCH_AHEAD] - 4);
			memcpy(&len, raw - 4, 4);
			if (rec_parse(raw, raw + len, lo, &recs[i].r) != raw + len)
				elog(ERROR, "hashtree: pack builder buffer damaged");
			recs[i].raw = raw;
			recs[i].rawlen = len;
		}
		sort_buildrec(recs, n);
		for (int i = 1; i < n; i++)
		{
			if (buildrec_cmp(&recs[i - 1], &recs[i]) == 0)
				duplicate_entry(recs[i].r.seg);
		}
		if (to_run)
		{
			/* the run keeps each record with its header, in order */
			for (int i = 0; i < n; i++)
				BufFileWrite(run, (void *) (recs[i].raw - 8), recs[i].rawlen + 8);
			continue;
		}
		/* the buffered bytes are the pack's records already */
		resetStringInfo(&out);
		for (int i = 0; i < n; i++)
			appendBinaryStringInfo(&out, (const char *) recs[i].raw, recs[i].rawlen);
		writes_add(&w, b->pa, b->pb, lo, n, &out);
	}
	if (!to_run)
		writes_flush(&w, b->pa, b->pb);
	else if (b->runname != NULL)
		BufFileClose(run);

	/* start again empty */
	for (int c = 0; c < b->nchunks; c++)
		pfree(b->chunks[c]);
	b->nchunks = 0;
	b->used = 0;
	memset(b->counts, 0, sizeof(uint32) * b->nslots);
	b->maxcount = 0;
	b->nrecs = 0;
	b->mem = 0;
	pfree(out.data);
	pfree(recs);
	pfree(recp);
	pfree(pos);
	MemoryContextSwitchTo(old);
}

void
ht_pack_build_add(HtPackBuild *b, int part, int32 seg, const char *key, int keylen,
				  const char *hash, int hashlen)
{
	uint32		slot = (uint32) ((b->part < 0 ? part : 0) * b->npacks + seg / b->span);
	Size		need = 8 + 2 + 10 + keylen + 1 + hashlen;
	uint8	   *start;
	uint8	   *p;
	uint16		off = pg_hton16((uint16) (seg % b->span));
	uint64		v = (uint64) keylen;
	uint32		len;

	Assert(b->part < 0 || part == b->part);
	if (b->nchunks == 0 || b->used + need > b->lens[b->nchunks - 1])
	{
		Size		size = Max(Min(HT_CHUNK_SIZE, b->budget / 2), need);

		if (b->nchunks > 0)
			b->lens[b->nchunks - 1] = b->used;
		if (b->nchunks == b->maxchunks)
		{
			b->maxchunks *= 2;
			b->chunks = repalloc(b->chunks, sizeof(char *) * b->maxchunks);
			b->lens = repalloc(b->lens, sizeof(Size) * b->maxchunks);
		}
		b->lens[b->nchunks] = size;
		b->chunks[b->nchunks++] = MemoryContextAlloc(b->cxt, size);
		b->used = 0;
	}
	/* u32 slot, u32 length, then the record as a pack holds it (rec_put) */
	start = (uint8 *) b->chunks[b->nchunks - 1] + b->used;
	memcpy(start, &slot, 4);
	p = start + 8;
	memcpy(p, &off, 2);
	p += 2;
	do
	{
		*p++ = (uint8) ((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v != 0);
	memcpy(p, key, keylen);
	p += keylen;
	*p++ = (uint8) hashlen;
	memcpy(p, hash, hashlen);
	p += hashlen;
	len = (uint32) (p - start - 8);
	memcpy(start + 4, &len, 4);
	b->mem += (Size) (p - start);
	b->used += (Size) (p - start);
	if (++b->counts[slot] > b->maxcount)
		b->maxcount = b->counts[slot];
	b->nrecs++;
	if (build_mem(b) > b->budget || b->nrecs >= HT_MAX_BUFFERED)
		build_flush(b, true);
}

/* the next record of a run into r->buf; false at its end */
static bool
run_next(HtPackBuild *b, BuildRun *r)
{
	uint32		hdr[2];
	size_t		got = BufFileRead(r->file, hdr, sizeof(hdr));

	if (got == 0)
		return false;
	if (got != sizeof(hdr))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("hashtree: could not read a sorted run of the pack builder: read only %zu of %zu bytes",
						got, sizeof(hdr))));
	r->slot = hdr[0];
	r->len = hdr[1];
	if (r->slot >= (uint32) b->nslots || r->len > MaxAllocSize / 2)
		elog(ERROR, "hashtree: pack builder run damaged");
	if (r->len > r->cap)
	{
		r->cap = Max(r->len, 2 * r->cap);
		r->buf = r->buf ? repalloc(r->buf, r->cap) : palloc(r->cap);
	}
	got = BufFileRead(r->file, r->buf, r->len);
	if (got != r->len)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("hashtree: could not read a sorted run of the pack builder: read only %zu of %u bytes",
						got, r->len)));
	if (rec_parse(r->buf, r->buf + r->len, (int32) (r->slot % b->npacks) * b->span,
				  &r->r) != r->buf + r->len)
		elog(ERROR, "hashtree: pack builder run damaged");
	return true;
}

/* order of the current records of two runs: (slot, segment, key) */
static inline int
run_cmp(const BuildRun *x, const BuildRun *y)
{
	if (x->slot != y->slot)
		return x->slot < y->slot ? -1 : 1;
	return rec_cmp(&x->r, &y->r);
}

/* restore the heap order below position i (a min-heap of run numbers) */
static void
heap_sift_down(BuildRun *runs, int *heap, int n, int i)
{
	for (;;)
	{
		int			l = 2 * i + 1;
		int			m = i;

		if (l < n && run_cmp(&runs[heap[l]], &runs[heap[m]]) < 0)
			m = l;
		if (l + 1 < n && run_cmp(&runs[heap[l + 1]], &runs[heap[m]]) < 0)
			m = l + 1;
		if (m == i)
			return;
		{
			int			t = heap[i];

			heap[i] = heap[m];
			heap[m] = t;
		}
		i = m;
	}
}

/*
 * Merge the sorted runs once: each pack's records are taken from the runs
 * in order and the pack is written; memory is a record per run and one
 * pack.
 */
static void
build_merge(HtPackBuild *b)
{
	MemoryContext old = MemoryContextSwitchTo(b->cxt);
	BuildRun   *runs = palloc0(sizeof(BuildRun) * b->nruns);
	int		   *heap = palloc(sizeof(int) * b->nruns);
	int			nheap = 0;
	StringInfoData out;
	PackWrites	w = {0};
	int64		cur_slot = -1;
	int			cur_part = -1;
	int			count = 0;
	int			last = -1;		/* offset in out of the pack's last record */
	int			tick = 0;

	ereport(DEBUG1,
			(errmsg_internal("hashtree: merging %d sorted runs of " INT64_FORMAT " records",
							 b->nruns, b->spilled)));
	for (int i = 0; i < b->nruns; i++)
	{
		runs[i].file = b->runs[i];
		if (BufFileSeek(runs[i].file, 0, 0, SEEK_SET) != 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("hashtree: could not rewind a sorted run of the pack builder: %m")));
		if (run_next(b, &runs[i]))
			heap[nheap++] = i;
	}
	for (int i = nheap / 2 - 1; i >= 0; i--)
		heap_sift_down(runs, heap, nheap, i);

	initStringInfo(&out);
	while (nheap > 0)
	{
		BuildRun   *r = &runs[heap[0]];

		if (++tick == HT_MERGE_BATCH)
		{
			tick = 0;
			CHECK_FOR_INTERRUPTS();
		}
		if ((int64) r->slot != cur_slot)
		{
			int			part = b->part < 0 ? (int) (r->slot / b->npacks) : b->part;

			/* the pack done is written, once */
			if (count > 0)
				writes_add(&w, b->pa, b->pb,
						   (int32) (cur_slot % b->npacks) * b->span, count, &out);
			if (part != cur_part)
			{
				writes_flush(&w, b->pa, b->pb);
				w.part = cur_part = part;
				w.span = b->span;
			}
			cur_slot = r->slot;
			resetStringInfo(&out);
			count = 0;
			last = -1;
		}
		else
		{
			/* strictly after the pack's previous record (each row once) */
			PackRec		prev;
			const uint8 *p = (const uint8 *) out.data + last;

			if (rec_parse(p, (const uint8 *) out.data + out.len, r->r.seg - r->r.seg % b->span,
						  &prev) == NULL || rec_cmp(&prev, &r->r) >= 0)
				duplicate_entry(r->r.seg);
		}
		last = out.len;
		appendBinaryStringInfo(&out, (const char *) r->buf, r->len);
		count++;

		/* the run's next record, or the run is done */
		if (!run_next(b, r))
		{
			heap[0] = heap[--nheap];
			BufFileClose(r->file);
			r->file = NULL;
		}
		if (nheap > 0)
			heap_sift_down(runs, heap, nheap, 0);
	}
	if (count > 0)
		writes_add(&w, b->pa, b->pb, (int32) (cur_slot % b->npacks) * b->span, count, &out);
	writes_flush(&w, b->pa, b->pb);
	b->nruns = 0;
	pfree(out.data);
	MemoryContextSwitchTo(old);
}

void
ht_pack_build_end(HtPackBuild *b)
{
	if (b->nruns == 0)
		build_flush(b, false);	/* everything fit: written from memory */
	else
	{
		if (b->nrecs > 0)
			build_flush(b, true);
		build_merge(b);
	}
	MemoryContextDelete(b->cxt);
}

/* ---- reading packs ------------------------------------------------------- */

void
ht_pack_segments(int part, int n, Datum *pa, Datum *pb, const int32 *segs,
				 HtPackEntry **out, int **owner, int *nout, int *cap)
{
	PackScan	ps;
	int32		span = 0;

	pack_scan_open(&ps);
	for (int k = 0; k < n; k++)
	{
		ScanKeyData key[4];
		SysScanDesc scan;
		HeapTuple	tup;
		int32		lo;

		/*
		 * The span of this tree's packs (all the same), looked up once per
		 * tree; then the pack of each segment by its exact lo.  (A range
		 * condition on lo would make the B-tree check every entry of the
		 * leaf page it lands on; an equality stops at the next entry.)
		 */
		if (k == 0 || !datumIsEqual(pa[k], pa[k - 1], false, -1) ||
			!datumIsEqual(pb[k], pb[k - 1], false, -1))
			span = pack_scan_span(&ps, part, pa[k], pb[k]);
		if (span <= 0)
			continue;			/* no packs: the entries are rows */
		lo = segs[k] - segs[k] % span;
		pack_scan_keys(&ps, key, part, pa[k], pb[k]);
		ScanKeyInit(&key[3], ps.att_lo, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(lo));
		scan = systable_beginscan_ordered(ps.rel, ps.idx, ps.snap, 4, key);
		tup = systable_getnext_ordered(scan, ForwardScanDirection);
		if (tup != NULL)
		{
			bool		isnull;
			bytea	   *data = DatumGetByteaPP(heap_getattr(tup, ps.att_data, ps.desc, &isnull));
			PackRec    *recs;
			int			nrec = pack_decode(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data),
										   lo, &recs);

			for (int i = 0; i < nrec; i++)
			{
				if (recs[i].seg != segs[k])
					continue;
				if (*nout >= *cap)
				{
					*cap = Max(64, *cap * 2);
					*out = *out ? repalloc(*out, sizeof(HtPackEntry) * *cap) :
						palloc(sizeof(HtPackEntry) * *cap);
					*owner = *owner ? repalloc(*owner, sizeof(int) * *cap) :
						palloc(sizeof(int) * *cap);
				}
				(*out)[*nout].seg = recs[i].seg;
				(*out)[*nout].key = rec_bytea(recs[i].key, recs[i].keylen);
				(*out)[*nout].hash = rec_bytea(recs[i].hash, recs[i].hashlen);
				(*owner)[*nout] = k + 1;
				(*nout)++;
			}
			pfree(recs);
		}
		systable_endscan_ordered(scan);
	}
	pack_scan_close(&ps);
}

int64
ht_pack_feed(int part, text *pa, text *pb, HtPackBuild *b)
{
	PackScan	ps;
	ScanKeyData key[3];
	SysScanDesc scan;
	HeapTuple	tup;
	int64		n = 0;
	MemoryContext one = AllocSetContextCreate(CurrentMemoryContext, "hashtree pack feed",
											  ALLOCSET_DEFAULT_SIZES);

	pack_scan_open(&ps);
	pack_scan_keys(&ps, key, part, PointerGetDatum(pa), PointerGetDatum(pb));
	scan = systable_beginscan_ordered(ps.rel, ps.idx, ps.snap, 3, key);
	while ((tup = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
	{
		MemoryContext caller = MemoryContextSwitchTo(one);
		bool		isnull;
		int32		lo = DatumGetInt32(heap_getattr(tup, ps.att_lo, ps.desc, &isnull));
		bytea	   *data = DatumGetByteaPP(heap_getattr(tup, ps.att_data, ps.desc, &isnull));
		PackRec    *recs;
		int			nrec = pack_decode(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), lo, &recs);

		MemoryContextSwitchTo(caller);
		for (int i = 0; i < nrec; i++)
			ht_pack_build_add(b, part, recs[i].seg, recs[i].key, recs[i].keylen,
							  recs[i].hash, recs[i].hashlen);
		n += nrec;
		MemoryContextReset(one);
		CHECK_FOR_INTERRUPTS();
	}
	systable_endscan_ordered(scan);
	pack_scan_close(&ps);
	MemoryContextDelete(one);
	return n;
}

/* append (child, sum) to *out unless the sum is zero (never stored, never shown) */
int
ht_child_put(HtChildSum **out, int n, int *cap, int64 child, const HtSum *sum)
{
	if (ht_sum_is_zero(sum))
		return n;
	if (n >= *cap)
	{
		*cap = Max(64, *cap * 2);
		*out = *out ? repalloc(*out, sizeof(HtChildSum) * *cap)
			: palloc(sizeof(HtChildSum) * *cap);
	}
	(*out)[n].child = child;
	(*out)[n].sum = *sum;
	return n + 1;
}

/* the packs read by one batch of requests, and the span of the last tree asked */
struct HtPackReader
{
	PackScan	ps;
	bool		known;
	int			part;
	Datum		pa;
	Datum		pb;
	int32		span;
};

HtPackReader *
ht_pack_reader_open(void)
{
	HtPackReader *r = palloc0(sizeof(HtPackReader));

	pack_scan_open(&r->ps);
	return r;
}

void
ht_pack_reader_close(HtPackReader *r)
{
	pack_scan_close(&r->ps);
	pfree(r);
}

/*
 * The span of a tree's packs, looked up once for consecutive requests of
 * the same tree: the lookup's B-tree scan, with equalities on the tree
 * alone, checks every entry of the leaf page it lands on.
 */
static int32
reader_span(HtPackReader *r, int part, Datum pa, Datum pb)
{
	if (!r->known || r->part != part || !datumIsEqual(pa, r->pa, false, -1) ||
		!datumIsEqual(pb, r->pb, false, -1))
	{
		r->span = pack_scan_span(&r->ps, part, pa, pb);
		r->part = part;
		r->pa = pa;
		r->pb = pb;
		r->known = true;
	}
	return r->span;
}

/* the span of tree (pa, pb)'s packs in a partition, <= 0 when it has none */
int32
ht_pack_reader_span(HtPackReader *r, int part, Datum pa, Datum pb)
{
	return reader_span(r, part, pa, pb);
}

/*
 * Add term to sub-bucket sub's sum *acc (sub-buckets come in ascending
 * order): the sum of the previous one, *cur, is put out first.
 */
static int
sub_add(HtChildSum **out, int nout, int *cap, int64 *cur, HtSum *acc, int64 sub,
		const HtSum *term)
{
	if (*cur != sub)
	{
		if (*cur >= 0)
			nout = ht_child_put(out, nout, cap, *cur, acc);
		*cur = sub;
		ht_sum_zero(acc);
	}
	ht_sum_add(acc, term);
	return nout;
}

int
ht_pack_children(HtPackReader *r, int part, Datum pa, Datum pb, int level, int64 first,
				 int64 span, HtChildSum **out, int nout, int *cap)
{
	int			shift = (level == HT_LEVEL_SUB) ? HT_SUB_BITS : 0;
	int64		lo_seg = first << shift;
	int64		hi_seg = Min((first + span) << shift, HT_SEGMENTS(HT_DEPTH_LEAF));
	PackScan   *ps = &r->ps;
	int32		pspan;
	ScanKeyData key[5];
	SysScanDesc scan;
	HeapTuple	tup;
	int64		cur = -1;		/* the sub-bucket being summed */
	HtSum		acc;

	Assert(level == 3 || level == HT_LEVEL_SUB);
	if (lo_seg >= hi_seg)
		return nout;
	pspan = reader_span(r, part, pa, pb);
	if (pspan <= 0)
		return nout;
	/* the packs that hold segments lo_seg .. hi_seg - 1 */
	pack_scan_keys(ps, key, part, pa, pb);
	ScanKeyInit(&key[3], ps->att_lo, BTGreaterEqualStrategyNumber, F_INT4GE,
				Int32GetDatum((int32) (lo_seg - lo_seg % pspan)));
	ScanKeyInit(&key[4], ps->att_lo, BTLessStrategyNumber, F_INT4LT,
				Int32GetDatum((int32) hi_seg));
	scan = systable_beginscan_ordered(ps->rel, ps->idx, ps->snap, 5, key);
	ht_sum_zero(&acc);
	while ((tup = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		int32		lo = DatumGetInt32(heap_getattr(tup, ps->att_lo, ps->desc, &isnull));
		bytea	   *data;
		PackRec    *recs;
		int			nrec;
		int			i = 0;

		/*
		 * packs of (a part of) one sub-bucket: the sub-bucket's hash is the
		 * sum of its packs' stored terms
		 */
		if (shift != 0 && pspan <= (1 << HT_SUB_BITS))
		{
			Datum		d = heap_getattr(tup, ps->att_sum, ps->desc, &isnull);

			if (!isnull)
			{
				HtSum		term;

				ht_sum_from_bytea(&term, DatumGetByteaPP(d));
				nout = sub_add(out, nout, cap, &cur, &acc, lo >> shift, &term);
			}
			continue;
		}
		data = DatumGetByteaPP(heap_getattr(tup, ps->att_data, ps->desc, &isnull));
		nrec = pack_decode(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), lo, &recs);

		while (i < nrec)
		{
			int32		seg = recs[i].seg;
			HtSum		sum;
			int64		cnt;

			if (seg < lo_seg || seg >= hi_seg)
			{
				i++;
				continue;
			}
			seg_sum(recs, nrec, &i, seg, &sum, &cnt);
			if (shift == 0)
				nout = ht_child_put(out, nout, cap, seg, &sum);
			else
			{
				HtSum		t;

				ht_child_term(seg, &sum, &t);
				nout = sub_add(out, nout, cap, &cur, &acc, seg >> shift, &t);
			}
		}
		pfree(recs);
	}
	if (cur >= 0)
		nout = ht_child_put(out, nout, cap, cur, &acc);
	systable_endscan_ordered(scan);
	return nout;
}

/*
 * hashtree._unpack(lo int4, data bytea)
 *   RETURNS TABLE(seg int4, key bytea, hash bytea)
 * The entries of one pack (a row of hashtree.entry_pack starting at
 * segment lo), by segment and key.  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_unpack);
Datum
ht_unpack(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32		lo = PG_GETARG_INT32(0);
	bytea	   *data = PG_GETARG_BYTEA_PP(1);
	PackRec    *recs;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	n = pack_decode(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), lo, &recs);
	for (int i = 0; i < n; i++)
	{
		Datum		v[3];
		bool		nulls[3] = {false, false, false};

		v[0] = Int32GetDatum(recs[i].seg);
		v[1] = PointerGetDatum(rec_bytea(recs[i].key, recs[i].keylen));
		v[2] = PointerGetDatum(rec_bytea(recs[i].hash, recs[i].hashlen));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	return (Datum) 0;
}

static int
int32_cmp(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/*
 * hashtree._pack_sums(lo int4, data bytea, segs int4[])
 *   RETURNS TABLE(seg int4, h bytea, c int8)
 * Only 0.1's install script names it (kept so that 0.1 can be installed
 * for the upgrade test; 1.0 drops it).  For each of the segments segs
 * (sorted or not) that has entries in this pack: the segment, the sum of
 * its entry digests and its entry count.  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_pack_sums);
Datum
ht_pack_sums(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32		lo = PG_GETARG_INT32(0);
	bytea	   *data = PG_GETARG_BYTEA_PP(1);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(2);
	int32	   *segs;
	int			nsegs;
	PackRec    *recs;
	int			n;
	int			i = 0;

	InitMaterializedSRF(fcinfo, 0);
	if (ARR_NDIM(arr) > 1 || ARR_HASNULL(arr) || ARR_ELEMTYPE(arr) != INT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("segments must be a one-dimensional int4 array without nulls")));
	nsegs = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
	segs = palloc(sizeof(int32) * Max(nsegs, 1));
	memcpy(segs, ARR_DATA_PTR(arr), sizeof(int32) * nsegs);
	qsort(segs, nsegs, sizeof(int32), int32_cmp);

	/* records are sorted by segment: walk both lists */
	n = pack_decode(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), lo, &recs);
	for (int s = 0; s < nsegs; s++)
	{
		HtSum		sum;
		int64		count = 0;

		if (s > 0 && segs[s] == segs[s - 1])
			continue;
		while (i < n && recs[i].seg < segs[s])
			i++;
		ht_sum_zero(&sum);
		for (; i < n && recs[i].seg == segs[s]; i++)
		{
			HtSum		d;

			ht_entry_digest(recs[i].key, recs[i].keylen, recs[i].hash, recs[i].hashlen, &d);
			ht_sum_add(&sum, &d);
			count++;
		}
		if (count > 0)
		{
			Datum		v[3];
			bool		nulls[3] = {false, false, false};
			bytea	   *h = ht_sum_to_bytea(&sum);

			v[0] = Int32GetDatum(segs[s]);
			v[1] = PointerGetDatum(h);
			nulls[1] = (h == NULL);
			v[2] = Int64GetDatum(count);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
		}
	}
	pfree(recs);
	pfree(segs);
	return (Datum) 0;
}

/*
 * hashtree._pack_sum(lo int4, data bytea, OUT hash bytea, OUT n int8)
 * The contribution of one pack to its level-3 bucket's hash: the sum over
 * its segments of C(segment, segment hash) (NULL when zero), and its
 * number of entries.  Rebuild and check_tree add these to the terms of the
 * bucket's node rows.  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_pack_sum);
Datum
ht_pack_sum(PG_FUNCTION_ARGS)
{
	int32		lo = PG_GETARG_INT32(0);
	bytea	   *data = PG_GETARG_BYTEA_PP(1);
	TupleDesc	desc;
	PackRec    *recs;
	int			n;
	HtSum		total;
	Datum		v[2];
	bool		nulls[2] = {false, false};
	bytea	   *h;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "hashtree: _pack_sum must return a record");
	desc = BlessTupleDesc(desc);
	n = pack_decode(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), lo, &recs);
	pack_term(recs, n, &total);
	h = ht_sum_to_bytea(&total);
	v[0] = PointerGetDatum(h);
	nulls[0] = (h == NULL);
	v[1] = Int64GetDatum(n);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, v, nulls)));
}

/*
 * hashtree._subs_add(subs bytea, deltas bytea) RETURNS bytea
 * The sub-bucket hashes a level-2 row keeps (node.subs, DESIGN §2) with
 * deltas added: both lists of (index in the bucket: one byte, 32 bytes),
 * by index, each index once; a hash that becomes zero leaves the list.
 * (The update adds its deltas in C, node_direct_put in update.c; this is
 * the same for SQL.)  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_subs_add_sql);
Datum
ht_subs_add_sql(PG_FUNCTION_ARGS)
{
	bytea	   *subs = PG_GETARG_BYTEA_PP(0);
	bytea	   *d = PG_GETARG_BYTEA_PP(1);
	const uint8 *p = (const uint8 *) VARDATA_ANY(d);
	int			len = VARSIZE_ANY_EXHDR(d);
	int			nsubs = HT_SUBS_PER_BUCKET(HT_DEPTH_LEAF);
	int			n = len / HT_SUBS_ITEM;
	int		   *idx = palloc(sizeof(int) * Max(n, 1));
	HtSum	   *deltas = palloc(sizeof(HtSum) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		idx[i] = p[i * HT_SUBS_ITEM];
		if (idx[i] >= nsubs || (i > 0 && idx[i] <= idx[i - 1]))
			n = -1;				/* (reported below) */
		if (n < 0)
			break;
		ht_sum_from_bytes(&deltas[i], p + i * HT_SUBS_ITEM + 1);
	}
	if (n < 0 || len % HT_SUBS_ITEM != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("deltas must be items of %d bytes, by ascending index below %d",
						HT_SUBS_ITEM, nsubs)));
	PG_RETURN_BYTEA_P(ht_subs_add(subs, idx, deltas, n, nsubs));
}
