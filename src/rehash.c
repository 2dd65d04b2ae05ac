/*-------------------------------------------------------------------------
 *
 * rehash.c
 *	  The scan of a re-hash (track(), reset(), a schema change): the rows
 *	  of a table hashed into the leaf entries of a tracked table and fed to
 *	  a pack builder (pack.c).
 *
 * Hashing every row is most of a re-hash, and one backend hashes at the
 * speed of one core, while the plain scan a user compares it with
 * (SELECT count(sha256(t::text::bytea)) FROM t) runs as a parallel query.
 * So a large table is scanned the way CREATE INDEX builds a B-tree in
 * parallel: this backend and up to max_parallel_maintenance_workers
 * parallel workers share one parallel heap scan under one snapshot, each
 * hashes the rows it gets into a pack builder of its own, and the workers
 * write their records as sorted runs into a set of temporary files shared
 * with this backend (pack.c), which takes them into its own merge and
 * writes every pack once.  The participants share maintenance_work_mem.
 * The workers only read the table and write temporary files: the packs,
 * their index and the trees are written by this backend after the
 * workers are done and parallel mode is over.  The entries are the same,
 * in the same packs, whoever hashed which row.
 *
 * Workers run only the send functions of built-in types (a table with a
 * column of another type is scanned by this backend alone: a user type's
 * function need not be parallel safe).  The workers run as this backend's
 * user, with its settings (the encodings pin what they depend on).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/parallel.h"
#include "access/relation.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "optimizer/paths.h"
#include "port/atomics.h"
#include "storage/bufmgr.h"
#include "storage/shm_toc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "pack.h"
#include "rehash.h"
#include "rowenc.h"
#include "treemath.h"

/* rows hashed between two checks for interrupts (and progress reports) */
#define HT_REHASH_BATCH 10000

/* the keys of the parallel scan's shared memory */
#define HT_REHASH_KEY_SHARED	UINT64CONST(0x4854524500000001)
#define HT_REHASH_KEY_SCAN		UINT64CONST(0x4854524500000002)

/* a prefix of up to NAMEDATALEN characters, in UTF-8 */
#define HT_PREFIX_MAX (NAMEDATALEN * MAX_MULTIBYTE_CHAR_LEN)

/* what a worker reports */
typedef struct RehashResult
{
	int			nruns;			/* its sorted runs: w<number>.0 ... */
	int64		rows;			/* entries it added */
	bool		done;
} RehashResult;

/* the shared state of a parallel scan */
typedef struct RehashShared
{
	Oid			root;
	Oid			leaf;
	int			part;
	int			nparts;
	int			span;
	Size		limit;			/* each participant's memory */
	int			pa8len;
	int			pb8len;
	char		pa8[HT_PREFIX_MAX];
	char		pb8[HT_PREFIX_MAX];
	FileSet		fileset;		/* the runs (the leader's builder owns it) */
	int			scan;			/* this scan's number in the builder: its
								 * workers' runs are s<scan>w<worker>.<n> */
	pg_atomic_uint64 seen;		/* rows seen by all participants */
	int			nworkers;		/* room in results */
	RehashResult results[FLEXIBLE_ARRAY_MEMBER];
} RehashShared;

PGDLLEXPORT void ht_rehash_worker_main(dsm_segment *seg, shm_toc *toc);

void
ht_row_entry(const HtRowSource *src, TupleDesc desc, HeapTuple tuple, int want_part,
			 HtRowEntry *e)
{
	e->key = ht_row_key(src->enc, desc, tuple);
	e->part = ht_partition_for(src->pa8, src->pa8len, src->pb8, src->pb8len,
							   VARDATA_ANY(e->key), VARSIZE_ANY_EXHDR(e->key), src->nparts);
	e->seg = ht_segment_of(HT_DEPTH_LEAF, VARDATA_ANY(e->key), VARSIZE_ANY_EXHDR(e->key));
	e->hash = (want_part < 0 || want_part == e->part) ?
		ht_row_hash(src->enc, desc, tuple) : NULL;
}

/*
 * Hash the rows a scan returns into pb.  seen, when not NULL, counts the
 * rows of every participant; progress (the leader) is told the count.
 */
static int64
hash_rows(const HtRowSource *src, Relation rel, TableScanDesc scan, int part,
		  HtPackBuild *pb, pg_atomic_uint64 *seen, HtRehashProgress progress)
{
	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "hashtree rehash rows",
												 ALLOCSET_DEFAULT_SIZES);
	HeapTuple	tuple;
	int64		rows = 0;
	int64		mine = 0;
	int			inbatch = 0;

	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		HtRowEntry	e;

		ht_row_entry(src, desc, tuple, part, &e);
		MemoryContextSwitchTo(old);
		if (e.hash != NULL)
		{
			ht_pack_build_add(pb, e.part, e.seg,
							  VARDATA_ANY(e.key), VARSIZE_ANY_EXHDR(e.key),
							  VARDATA_ANY(e.hash), VARSIZE_ANY_EXHDR(e.hash));
			rows++;
		}
		/* (a reset that keeps only the first block costs next to nothing) */
		MemoryContextReset(rowcxt);
		if (++inbatch == HT_REHASH_BATCH)
		{
			int64		total;

			inbatch = 0;
			mine += HT_REHASH_BATCH;
			total = seen ? (int64) pg_atomic_add_fetch_u64(seen, HT_REHASH_BATCH) : mine;
			CHECK_FOR_INTERRUPTS();
			if (progress)
				progress(total);
		}
	}
	if (seen)
		pg_atomic_add_fetch_u64(seen, inbatch);
	MemoryContextDelete(rowcxt);
	return rows;
}

/*
 * The number of workers for a scan of rel: none unless the table is at
 * least min_parallel_table_scan_size, and then, as the planner counts
 * them, one more for each tripling of the size, up to the table's
 * parallel_workers setting or max_parallel_maintenance_workers.  None
 * where a worker could not run (already in parallel mode, no active
 * snapshot, a temporary table) or a column's type is not built in.
 */
static int
rehash_workers(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			max = max_parallel_maintenance_workers;
	BlockNumber nblocks;
	double		threshold;
	int			n;

	if (max <= 0 || IsInParallelMode() || IsParallelWorker() || !ActiveSnapshotSet() ||
		!IsUnderPostmaster || RelationUsesLocalBuffers(rel))
		return 0;
	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (!att->attisdropped && att->atttypid >= FirstNormalObjectId)
			return 0;
	}
	if (RelationGetParallelWorkers(rel, -1) == 0)
		return 0;
	nblocks = RelationGetNumberOfBlocks(rel);
	threshold = Max(min_parallel_table_scan_size, 1);
	if (nblocks < threshold)
		return 0;
	n = 1;
	while (nblocks >= threshold * 3 && n < max)
	{
		n++;
		threshold *= 3;
	}
	if (RelationGetParallelWorkers(rel, -1) > 0)
		n = RelationGetParallelWorkers(rel, -1);
	return Min(n, max);
}

int64
ht_rehash_leaf(const HtRowSource *src, Oid root, Oid leaf, int part, HtPackBuild *pb,
			   HtRehashProgress progress)
{
	Relation	rel = table_open(leaf, AccessShareLock);
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	int			nworkers = rehash_workers(rel);
	int64		rows = 0;

	if (nworkers == 0)
	{
		TableScanDesc scan = table_beginscan(rel, snap, 0, NULL);

		rows = hash_rows(src, rel, scan, part, pb, NULL, progress);
		table_endscan(scan);
	}
	else
	{
		ParallelContext *pcxt;
		Size		shsize = add_size(offsetof(RehashShared, results),
									  mul_size(sizeof(RehashResult), nworkers));
		Size		scansize;
		RehashShared *sh;
		ParallelTableScanDesc pscan;
		TableScanDesc scan;
		FileSet    *fileset = ht_pack_build_fileset(pb);
		Size		limit;
		RehashResult *results;
		int			launched;
		int			scanno;

		EnterParallelMode();
		pcxt = CreateParallelContext("hashtree", "ht_rehash_worker_main", nworkers);
		scansize = table_parallelscan_estimate(rel, snap);
		shm_toc_estimate_chunk(&pcxt->estimator, shsize);
		shm_toc_estimate_chunk(&pcxt->estimator, scansize);
		shm_toc_estimate_keys(&pcxt->estimator, 2);
		InitializeParallelDSM(pcxt);

		/* everyone's memory: a share of maintenance_work_mem */
		limit = (Size) maintenance_work_mem * 1024 / (pcxt->nworkers + 1);
		ht_pack_build_limit(pb, limit);

		sh = shm_toc_allocate(pcxt->toc, shsize);
		memset(sh, 0, shsize);
		sh->root = root;
		sh->leaf = leaf;
		sh->part = part;
		sh->nparts = src->nparts;
		sh->span = ht_pack_build_span(pb);
		sh->limit = limit;
		if (src->pa8len > HT_PREFIX_MAX || src->pb8len > HT_PREFIX_MAX)
			elog(ERROR, "hashtree: prefix too long");
		sh->pa8len = src->pa8len;
		memcpy(sh->pa8, src->pa8, src->pa8len);
		sh->pb8len = src->pb8len;
		memcpy(sh->pb8, src->pb8, src->pb8len);
		sh->fileset = *fileset;
		sh->scan = ht_pack_build_next_scan(pb);
		pg_atomic_init_u64(&sh->seen, 0);
		sh->nworkers = pcxt->nworkers;
		shm_toc_insert(pcxt->toc, HT_REHASH_KEY_SHARED, sh);
		pscan = shm_toc_allocate(pcxt->toc, scansize);
		table_parallelscan_initialize(rel, pscan, snap);
		shm_toc_insert(pcxt->toc, HT_REHASH_KEY_SCAN, pscan);

		LaunchParallelWorkers(pcxt);
		launched = pcxt->nworkers_launched;
		ereport(DEBUG1,
				(errmsg_internal("hashtree: re-hash of %s with %d parallel workers",
								 RelationGetRelationName(rel), launched)));

		/* this backend takes its share of the rows too */
		scan = table_beginscan_parallel(rel, pscan);
		rows = hash_rows(src, rel, scan, part, pb, &sh->seen, progress);
		table_endscan(scan);

		WaitForParallelWorkersToFinish(pcxt);
		results = palloc(sizeof(RehashResult) * Max(launched, 1));
		memcpy(results, sh->results, sizeof(RehashResult) * launched);
		scanno = sh->scan;
		DestroyParallelContext(pcxt);
		ExitParallelMode();

		/* the workers' runs join this backend's merge */
		for (int w = 0; w < launched; w++)
		{
			if (!results[w].done)
				elog(ERROR, "hashtree: parallel worker %d of a re-hash did not finish", w);
			ht_pack_build_add_runs(pb, psprintf("s%dw%d", scanno, w), results[w].nruns);
			rows += results[w].rows;
		}
		pfree(results);
	}
	UnregisterSnapshot(snap);
	table_close(rel, NoLock);
	return rows;
}

/*
 * The entry point of a parallel worker of ht_rehash_leaf: its share of
 * the scan hashed into a builder whose sorted runs go to the shared
 * files.  (Locks: the leader's, shared by its lock group.)
 */
void
ht_rehash_worker_main(dsm_segment *seg, shm_toc *toc)
{
	RehashShared *sh = shm_toc_lookup(toc, HT_REHASH_KEY_SHARED, false);
	ParallelTableScanDesc pscan = shm_toc_lookup(toc, HT_REHASH_KEY_SCAN, false);
	Relation	rel = table_open(sh->leaf, AccessShareLock);
	Relation	rootrel = sh->root == sh->leaf ? rel : relation_open(sh->root, AccessShareLock);
	HtRowSource src;
	HtPackBuild *pb;
	TableScanDesc scan;
	RehashResult *res;
	char		runname[32];

	if (ParallelWorkerNumber < 0 || ParallelWorkerNumber >= sh->nworkers)
		elog(ERROR, "hashtree: unexpected parallel worker number %d", ParallelWorkerNumber);
	res = &sh->results[ParallelWorkerNumber];
	src.enc = ht_relenc_build(rel, ht_rel_key_cols(rootrel));
	src.pa8 = sh->pa8;
	src.pa8len = sh->pa8len;
	src.pb8 = sh->pb8;
	src.pb8len = sh->pb8len;
	src.nparts = sh->nparts;
	snprintf(runname, sizeof(runname), "s%dw%d", sh->scan, ParallelWorkerNumber);
	pb = ht_pack_build_begin_runs(sh->part, sh->nparts, sh->span, sh->limit, &sh->fileset,
								  runname);
	scan = table_beginscan_parallel(rel, pscan);
	res->rows = hash_rows(&src, rel, scan, sh->part, pb, &sh->seen, NULL);
	table_endscan(scan);
	res->nruns = ht_pack_build_end_runs(pb);
	res->done = true;
	if (rootrel != rel)
		relation_close(rootrel, AccessShareLock);
	table_close(rel, AccessShareLock);
}
