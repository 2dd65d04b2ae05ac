/*-------------------------------------------------------------------------
 *
 * repair.c
 *	  Repair of the differences found by an exchange.
 *
 * pull makes this node equal to the peer, push the peer equal to this
 * node, for the differing keys and prefixes only: the side that is
 * copied from is the source, the other the target.  A key the source has
 * (missing/different) is copied; a key only the target has is deleted; a
 * prefix only the source has is copied whole (its keys of the partition),
 * a prefix only the target has is deleted whole.
 *
 * For a tracked table (tracked on both sides) the rows are copied as
 * per-column values matched by column name (binary for built-in types,
 * else text under pinned settings; see rowio.c), with their row hashes,
 * by hashtree._rows_by_key / _partition_rows on the source and
 * hashtree._apply_rows / _delete_partition_rows on the target, 1,000
 * keys per statement.  Those helpers read and write the rows as the
 * table's owner in a security-restricted operation, after checking that
 * the repairing role (the caller of exchange(), or the peer connection's
 * role) may read the source and write the target; the target checks
 * that each row written hashes equal to its source.  The target's
 * tracking trigger then logs the changes, and the next exchange sees the
 * trees equal.  For entries written with insert(), the entries are
 * copied.  'newest' (DESIGN §20) reads the versions of the differing keys
 * on both sides (_newest_rows, or _newest_entries for plain entries) and
 * writes each winner where it is missing (_newest_apply,
 * _newest_apply_entries).
 *
 * The differences of all the partitions of an exchange are repaired
 * together, in three batches (ht_node_batch): the peer's registry and the
 * prefixes a whole missing prefix_a has there; the reads on the source;
 * the writes on the target.  Each is one round trip when it runs on the
 * peer, so a pull or a push costs two round trips however many partitions
 * and prefixes differ.  Each prefix of a partition is a group of its own:
 * its reads, and its writes (a transaction on the peer, a subtransaction
 * here), so a prefix that cannot be repaired (a table missing on the
 * target, a constraint) is reported as not repaired and the others go on.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/commit_ts.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#include "common.h"
#include "entryver.h"
#include "remote.h"
#include "repair.h"
#include "sqlexec.h"
#include "tomb.h"
#include "treemath.h"

#define HT_REPAIR_BATCH 1000

/* set while repair_split runs the pull/push of the other tables */
static bool repair_split_running = false;

static void repair_newest(HtPeer *peer, HtRepairPart *parts, int nparts, bool quiet,
						  bool dry_run, char force);
static void repair_split(HtPeer *peer, HtRepairMode mode, HtRepairPart *parts, int nparts,
						 bool quiet);

typedef struct Registry
{
	int			n;
	char	  **schema;
	char	  **name;
	char	  **vtype;			/* the type of its version column (NULL: none) */
	Oid		   *vtypid;			/* ... its oid (on this node) */
} Registry;

/* what a repair reads of a node's registry (hashtree.tracked) */
#define REGISTRY_SQL \
	"SELECT schema_name, table_name, version_type::pg_catalog.text," \
	" version_type::pg_catalog.oid FROM hashtree.tracked"
#define REGISTRY_COLS 4

/* the tracked tables of a node, from its hashtree.tracked */
static void
registry_from(HtRemoteResult *res, Registry *reg)
{
	reg->n = res->nrows;
	reg->schema = palloc(sizeof(char *) * Max(res->nrows, 1));
	reg->name = palloc(sizeof(char *) * Max(res->nrows, 1));
	reg->vtype = palloc(sizeof(char *) * Max(res->nrows, 1));
	reg->vtypid = palloc(sizeof(Oid) * Max(res->nrows, 1));
	for (int i = 0; i < res->nrows; i++)
	{
		char	   *oid = ht_remote_text(res, i, 3);

		reg->schema[i] = ht_remote_text(res, i, 0);
		reg->name[i] = ht_remote_text(res, i, 1);
		reg->vtype[i] = ht_remote_text(res, i, 2);
		reg->vtypid[i] = oid ? (Oid) strtoul(oid, NULL, 10) : InvalidOid;
	}
}

static void
registry_of(HtPeer *peer, Registry *reg)
{
	registry_from(ht_node_query(peer, REGISTRY_SQL, 0, NULL, REGISTRY_COLS), reg);
}

/* the position of (pa, pb) in a registry, -1 if not there */
static int
registry_find(Registry *reg, const char *pa, const char *pb)
{
	for (int i = 0; i < reg->n; i++)
		if (strcmp(reg->schema[i], pa) == 0 && strcmp(reg->name[i], pb) == 0)
			return i;
	return -1;
}

static bool
registered(Registry *reg, const char *pa, const char *pb)
{
	return registry_find(reg, pa, pb) >= 0;
}

static char *
bytea_array_text(bytea **keys, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = PointerGetDatum(keys[i]);
	return OidOutputFunctionCall(F_ARRAY_OUT, PointerGetDatum(ht_array_bytea(d, n)));
}

/* bytea value of a text result (hex form) */
static bytea *
result_bytea(HtRemoteResult *res, int row, int col)
{
	char	   *v = ht_remote_text(res, row, col);

	return v ? DatumGetByteaPP(DirectFunctionCall1(byteain, CStringGetDatum(v))) : NULL;
}

/* what to do to one prefix of one partition, from source to target */
typedef struct Work
{
	HtRepairPart *rp;			/* its partition */
	const char *pa;
	const char *pb;
	bool		tracked;
	int			ncopy;
	bytea	  **copy;			/* keys to copy (or delete if gone), sorted */
	int			ndel;
	bytea	  **del;			/* keys to delete */
	bool		copy_prefix;
	bool		del_prefix;
	int			first_diff;		/* its differences: d[first_diff .. end_diff) */
	int			end_diff;
	int			read_from;		/* its reads: statements [read_from, read_to) */
	int			read_to;
	char	   *failed;			/* why it was not repaired, NULL if it was */
	struct VersionType *vt;		/* newest: the version column's type (NULL:
								 * commit times) */
} Work;

/* a growing list of statements */
typedef struct Stmts
{
	int			n;
	int			cap;
	HtStatement *s;
} Stmts;

static void
add_stmt(Stmts *st, int group, int ncols, const char *sql, int nparams, ...)
{
	HtStatement *x;
	va_list		args;

	if (st->n >= st->cap)
	{
		st->cap = st->cap ? st->cap * 2 : 16;
		st->s = st->s ? repalloc(st->s, sizeof(HtStatement) * st->cap)
			: palloc(sizeof(HtStatement) * st->cap);
	}
	x = &st->s[st->n++];
	x->sql = sql;
	x->nparams = nparams;
	x->params = palloc(sizeof(char *) * Max(nparams, 1));
	va_start(args, nparams);
	for (int i = 0; i < nparams; i++)
		x->params[i] = va_arg(args, const char *);
	va_end(args);
	x->ncols = ncols;
	x->group = group;
	x->result = NULL;
}

static const char *
hashes_array_text(bytea **hashes, int n)
{
	Datum	   *h = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		h[i] = PointerGetDatum(hashes[i]);
		nulls[i] = (hashes[i] == NULL);
	}
	return OidOutputFunctionCall(F_ARRAY_OUT,
								 PointerGetDatum(construct_md_array(h, nulls, 1, dims, lbs,
																	BYTEAOID, -1, false,
																	TYPALIGN_INT)));
}

/* ---- the reads on the source ------------------------------------------------ */

static void
add_reads(Stmts *st, int group, Work *w)
{
	const char *part = psprintf("%d", w->rp->part);

	w->read_from = st->n;
	if (w->copy_prefix)
	{
		if (w->tracked)
			add_stmt(st, group, 3,
					 "SELECT key, hash, r FROM hashtree._partition_rows($1, $2, $3::int4)",
					 3, w->pa, w->pb, part);
		else
			add_stmt(st, group, 2,
					 "SELECT key, hash FROM hashtree._prefix_entries($1::int4, $2, $3)",
					 3, part, w->pa, w->pb);
	}
	/* what the source has of these keys; a key it lost meanwhile goes */
	for (int base = 0; base < w->ncopy; base += HT_REPAIR_BATCH)
	{
		const char *keys = bytea_array_text(w->copy + base, Min(HT_REPAIR_BATCH, w->ncopy - base));

		if (w->tracked)
			add_stmt(st, group, 3,
					 "SELECT key, hash, r FROM hashtree._rows_by_key($1, $2, $3::pg_catalog.bytea[])"
					 " ORDER BY key", 3, w->pa, w->pb, keys);
		else
			add_stmt(st, group, 2,
					 "SELECT key, hash FROM hashtree._entries_by_key($1::int4, $2, $3, $4::bytea[])"
					 " ORDER BY key", 4, part, w->pa, w->pb, keys);
	}
	w->read_to = st->n;
}

/* ---- the writes on the target --------------------------------------------- */

/*
 * Rows travel in the transport form of _rows_by_key (per-column values by
 * name, binary or text; see rowio.c) with the source's row hash, which the
 * target checks after writing each row.
 */
static void
add_apply_rows(Stmts *st, int group, Work *w, HtRemoteResult *res, int from, int to,
			   bytea **deletes, int ndel)
{
	const char *rows = NULL;
	const char *hashes = NULL;

	if (to > from)
	{
		int			n = to - from;
		bytea	  **r = palloc(sizeof(bytea *) * n);
		bytea	  **h = palloc(sizeof(bytea *) * n);

		for (int i = 0; i < n; i++)
		{
			r[i] = result_bytea(res, from + i, 2);
			h[i] = result_bytea(res, from + i, 1);
			if (r[i] == NULL || h[i] == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("unexpected row from the source of a repair")));
		}
		rows = bytea_array_text(r, n);
		hashes = bytea_array_text(h, n);
	}
	if (rows == NULL && ndel == 0)
		return;
	add_stmt(st, group, 1,
			 "SELECT hashtree._apply_rows($1, $2, $3::pg_catalog.bytea[],"
			 " $4::pg_catalog.bytea[], $5::pg_catalog.bytea[])",
			 5, w->pa, w->pb, rows, hashes, ndel > 0 ? bytea_array_text(deletes, ndel) : NULL);
}

static void
add_apply_entries(Stmts *st, int group, Work *w, bytea **keys, bytea **hashes, int n)
{
	if (n == 0)
		return;
	add_stmt(st, group, 1,
			 "SELECT hashtree._apply_entries($1::int4, $2, $3, $4::bytea[], $5::bytea[])",
			 5, psprintf("%d", w->rp->part), w->pa, w->pb, bytea_array_text(keys, n),
			 hashes_array_text(hashes, n));
}

/*
 * The keys of a chunk of w->copy (sorted) that the source's rows res
 * (ordered by key) lack: gone there, deleted on the target.  hashes (if
 * not NULL) gets the hash of each key found, NULL for one gone.
 */
static int
gone_keys(HtRemoteResult *res, bytea **keys, int k, bytea **gone, bytea **hashes)
{
	int			ngone = 0;
	int			j = 0;

	for (int r = 0; r < res->nrows; r++)
	{
		bytea	   *key = result_bytea(res, r, 0);

		while (j < k && ht_bytea_cmp(keys[j], key) < 0)
			gone[ngone++] = keys[j++];
		if (j < k && ht_bytea_cmp(keys[j], key) == 0)
		{
			if (hashes != NULL)
				hashes[j] = result_bytea(res, r, 1);
			j++;
		}
	}
	while (j < k)
		gone[ngone++] = keys[j++];
	return ngone;
}

/* the writes of a prefix, from what its reads returned */
static void
add_writes(Stmts *st, int group, Work *w, HtStatement *reads)
{
	const char *part = psprintf("%d", w->rp->part);
	int			next = w->read_from;

	if (w->del_prefix)
	{
		if (w->tracked)
			add_stmt(st, group, 1, "SELECT hashtree._delete_partition_rows($1, $2, $3::int4)",
					 3, w->pa, w->pb, part);
		else
			add_stmt(st, group, 1, "SELECT hashtree._drop_entries($1::int4, $2, $3)",
					 3, part, w->pa, w->pb);
	}
	if (w->copy_prefix)
	{
		HtRemoteResult *res = reads[next++].result;

		for (int base = 0; base < res->nrows; base += HT_REPAIR_BATCH)
		{
			int			k = Min(HT_REPAIR_BATCH, res->nrows - base);

			if (w->tracked)
				add_apply_rows(st, group, w, res, base, base + k, NULL, 0);
			else
			{
				bytea	  **keys = palloc(sizeof(bytea *) * k);
				bytea	  **hashes = palloc(sizeof(bytea *) * k);

				for (int i = 0; i < k; i++)
				{
					keys[i] = result_bytea(res, base + i, 0);
					hashes[i] = result_bytea(res, base + i, 1);
				}
				add_apply_entries(st, group, w, keys, hashes, k);
			}
		}
	}
	for (int base = 0; base < w->ncopy; base += HT_REPAIR_BATCH)
	{
		int			k = Min(HT_REPAIR_BATCH, w->ncopy - base);
		bytea	  **keys = w->copy + base;
		HtRemoteResult *res = reads[next++].result;
		bytea	  **gone = palloc(sizeof(bytea *) * k);

		if (w->tracked)
		{
			int			ngone = gone_keys(res, keys, k, gone, NULL);

			add_apply_rows(st, group, w, res, 0, res->nrows, gone, ngone);
		}
		else
		{
			/* a key without a hash (gone on the source) is deleted */
			bytea	  **hashes = palloc0(sizeof(bytea *) * k);

			(void) gone_keys(res, keys, k, gone, hashes);
			add_apply_entries(st, group, w, keys, hashes, k);
		}
	}
	for (int base = 0; base < w->ndel; base += HT_REPAIR_BATCH)
	{
		int			k = Min(HT_REPAIR_BATCH, w->ndel - base);

		if (w->tracked)
			add_apply_rows(st, group, w, NULL, 0, 0, w->del + base, k);
		else
			add_apply_entries(st, group, w, w->del + base, palloc0(sizeof(bytea *) * k), k);
	}
}

/* ---- driver ---------------------------------------------------------------- */

/* a difference, with its partition */
typedef struct PartDiff
{
	HtRepairPart *rp;
	HtDiff	   *d;
} PartDiff;

/*
 * The outcome of one prefix's repair: its differences repaired or not (a
 * whole prefix_a only if all its children are), its partition's first
 * message, a WARNING unless quiet.
 */
static void
work_done(Work *w, PartDiff *d, bool quiet)
{
	HtRepairPart *rp = w->rp;
	bool		ok = (w->failed == NULL);

	for (int i = w->first_diff; i < w->end_diff; i++)
		d[i].d->repaired = ok;
	if (ok)
		return;
	for (int i = 0; i < rp->ndiffs; i++)
		if (rp->diffs[i].pb == NULL && strcmp(rp->diffs[i].pa, w->pa) == 0)
			rp->diffs[i].repaired = false;
	if (rp->message == NULL)
		rp->message = w->failed;
	if (!quiet)
		ereport(WARNING, (errmsg("hashtree: partition %d: %s", rp->part, w->failed)));
}

/* each partition's count of differences repaired */
static void
count_repaired(HtRepairPart *parts, int nparts)
{
	for (int p = 0; p < nparts; p++)
	{
		parts[p].repaired = 0;
		for (int i = 0; i < parts[p].ndiffs; i++)
			if (parts[p].diffs[i].repaired)
				parts[p].repaired++;
	}
}

static int
diff_order(const void *a, const void *b)
{
	const PartDiff *x = (const PartDiff *) a;
	const PartDiff *y = (const PartDiff *) b;
	int			c;

	if (x->rp != y->rp)
		return x->rp < y->rp ? -1 : 1;
	c = strcmp(x->d->pa, y->d->pa);
	if (c != 0)
		return c;
	return strcmp(x->d->pb ? x->d->pb : "", y->d->pb ? y->d->pb : "");
}

/*
 * The next work: the differences d[*i ..] of one prefix (sorted), *i moved
 * past them.  A table tracked on one side only cannot be made equal without
 * DDL on the other: the work fails (reported), and the rows of a table are
 * not deleted because the other node lacks it.  False when it failed.
 */
static bool
work_start(Work *w, PartDiff *d, int *i, int n, Registry *local, Registry *remote,
		   HtPeer *peer)
{
	int			j = *i;
	bool		here;
	bool		there;

	w->rp = d[*i].rp;
	w->pa = d[*i].d->pa;
	w->pb = d[*i].d->pb;
	while (j < n && diff_order(&d[*i], &d[j]) == 0)
		j++;
	w->first_diff = *i;
	w->end_diff = j;
	*i = j;
	here = registered(local, w->pa, w->pb);
	there = registered(remote, w->pa, w->pb);
	w->tracked = here && there;
	if (here != there)
	{
		w->failed = psprintf("table %s is tracked on %s but not on %s",
							 quote_qualified_identifier(w->pa, w->pb),
							 here ? "this node" : psprintf("peer \"%s\"", ht_peer_name(peer)),
							 here ? psprintf("peer \"%s\"", ht_peer_name(peer)) : "this node");
		return false;
	}
	return true;
}


/*
 * Is a failure of a prefix the end of the exchange?  A lost peer (a
 * protocol violation included) or a cancel of this backend.
 */
static void
rethrow_fatal(ErrorData *edata)
{
	if (ht_peer_lost(edata->sqlerrcode) ||
		edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		ReThrowError(edata);
}

const char *const ht_repair_mode_names[HT_NREPAIR_MODES] = {
	[HT_REPAIR_NONE] = "none",
	[HT_REPAIR_PULL] = "pull",
	[HT_REPAIR_PUSH] = "push",
	[HT_REPAIR_NEWEST] = "newest",
};

HtRepairMode
ht_repair_mode(const char *name)
{
	for (int i = 0; i < HT_NREPAIR_MODES; i++)
		if (strcmp(name, ht_repair_mode_names[i]) == 0)
			return (HtRepairMode) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("repair must be none, pull, push or newest, not \"%s\"", name)));
	return HT_REPAIR_NONE;		/* keep compiler quiet */
}

void
ht_repair(HtPeer *peer, HtRepairMode mode, HtRepairPart *parts, int nparts, bool quiet)
{
	Registry	local;
	Registry	remote;
	bool		pull = (mode == HT_REPAIR_PULL);
	HtPeer	   *src = pull ? peer : NULL;
	HtPeer	   *dst = pull ? NULL : peer;
	Stmts		first = {0};
	PartDiff   *d;
	int			n = 0;
	int			cap = 0;
	Work	   *works;
	int			nworks = 0;
	Stmts		reads = {0};
	Stmts		writes = {0};
	ErrorData **read_errors;
	ErrorData **write_errors;

	if (mode == HT_REPAIR_NEWEST)
	{
		repair_newest(peer, parts, nparts, quiet, false, 0);
		return;
	}
	if (!repair_split_running)
	{
		repair_split(peer, mode, parts, nparts, quiet);
		return;
	}

	/*
	 * Batch 1, on the peer: its registry, and the prefix_b's of each whole
	 * prefix_a only it has.  Those only this node has are read here.
	 */
	add_stmt(&first, 0, REGISTRY_COLS, REGISTRY_SQL, 0);
	for (int p = 0; p < nparts; p++)
		for (int i = 0; i < parts[p].ndiffs; i++)
		{
			HtDiff	   *x = &parts[p].diffs[i];

			cap++;
			if (x->pb == NULL && x->kind == HT_MISSING_PREFIX)
				add_stmt(&first, first.n, 1,
						 "SELECT c FROM hashtree._prefix_children($1::int4, $2) c",
						 2, psprintf("%d", parts[p].part), x->pa);
		}
	ht_node_batch(peer, first.s, first.n, NULL);
	registry_of(NULL, &local);
	registry_from(first.s[0].result, &remote);

	/* a whole prefix_a: one difference per prefix_b of the side that has it */
	d = palloc(sizeof(PartDiff) * Max(cap, 1));
	for (int p = 0, q = 1; p < nparts; p++)
		for (int i = 0; i < parts[p].ndiffs; i++)
		{
			HtDiff	   *x = &parts[p].diffs[i];
			HtRemoteResult *res;

			if (x->pb != NULL)
			{
				d[n].rp = &parts[p];
				d[n++].d = x;
				continue;
			}
			if (x->kind == HT_MISSING_PREFIX)
				res = first.s[q++].result;
			else
			{
				const char *params[2] = {psprintf("%d", parts[p].part), x->pa};

				res = ht_node_query(NULL, "SELECT c FROM hashtree._prefix_children($1::int4, $2) c",
									2, params, 1);
			}
			cap += res->nrows;
			d = repalloc(d, sizeof(PartDiff) * Max(cap, 1));
			for (int c = 0; c < res->nrows; c++)
			{
				HtDiff	   *y = palloc(sizeof(HtDiff));

				*y = *x;
				y->pb = ht_remote_text(res, c, 0);
				d[n].rp = &parts[p];
				d[n++].d = y;
			}
			/* the prefix_a itself counts as repaired when its children are */
			x->repaired = true;
		}
	qsort(d, n, sizeof(PartDiff), diff_order);

	/* the prefixes of each partition, and the reads on the source */
	works = palloc0(sizeof(Work) * Max(n, 1));
	for (int i = 0; i < n;)
	{
		Work	   *w = &works[nworks++];

		if (!work_start(w, d, &i, n, &local, &remote, peer))
			continue;
		w->copy = palloc(sizeof(bytea *) * (w->end_diff - w->first_diff));
		w->del = palloc(sizeof(bytea *) * (w->end_diff - w->first_diff));
		for (int k = w->first_diff; k < w->end_diff; k++)
		{
			/* does the source have it? */
			bool		on_src;

			switch (d[k].d->kind)
			{
				case HT_DIFFERENT:
					w->copy[w->ncopy++] = d[k].d->key;
					break;
				case HT_MISSING:
				case HT_REMOTE_MISSING:
					on_src = (d[k].d->kind == HT_MISSING) == pull;
					if (on_src)
						w->copy[w->ncopy++] = d[k].d->key;
					else
						w->del[w->ndel++] = d[k].d->key;
					break;
				default:
					on_src = (d[k].d->kind == HT_MISSING_PREFIX) == pull;
					if (on_src)
						w->copy_prefix = true;
					else
						w->del_prefix = true;
					break;
			}
		}
		qsort(w->copy, w->ncopy, sizeof(bytea *), ht_bytea_ptr_cmp);
		add_reads(&reads, nworks - 1, w);
	}

	/* batch 2: the reads on the source */
	read_errors = palloc0(sizeof(ErrorData *) * Max(nworks, 1));
	ht_node_batch(src, reads.s, reads.n, read_errors);

	/* batch 3: the writes on the target, from what the reads returned */
	for (int k = 0; k < nworks; k++)
	{
		Work	   *w = &works[k];

		if (w->failed != NULL)
			continue;
		if (read_errors[k] != NULL)
		{
			rethrow_fatal(read_errors[k]);
			w->failed = pstrdup(read_errors[k]->message);
			continue;
		}
		add_writes(&writes, k, w, reads.s);
	}
	write_errors = palloc0(sizeof(ErrorData *) * Max(nworks, 1));
	ht_node_batch(dst, writes.s, writes.n, write_errors);

	/* what became of each prefix */
	for (int k = 0; k < nworks; k++)
	{
		Work	   *w = &works[k];
		if (w->failed == NULL && write_errors[k] != NULL)
		{
			rethrow_fatal(write_errors[k]);
			w->failed = psprintf("repair of %s: %s", quote_qualified_identifier(w->pa, w->pb),
								 write_errors[k]->message);
		}
		else if (w->failed != NULL && read_errors[k] != NULL)
			w->failed = psprintf("repair of %s: %s", quote_qualified_identifier(w->pa, w->pb),
								 w->failed);
		work_done(w, d, quiet);
	}
	count_repaired(parts, nparts);
}

/* ---- repair 'newest' (DESIGN §20) ------------------------------------------- */

/*
 * The version of a key on one side: a row (hash, transport form), a
 * tombstone (dead), or nothing (absent).  Versions are microseconds since
 * 1970 (the transport keeps them exact); unknown (a commit time too old or
 * not recorded) is older than any known one.
 */
typedef struct NRow
{
	bytea	   *key;
	bytea	   *hash;
	bytea	   *r;
	bool		has_ver;
	int64		ver;			/* commit times; a tombstone's time */
	bool		dead;
	bytea	   *vbytes;			/* a version column: the binary form ... */
	Datum		vd;				/* ... and the value (vbytes NULL: unknown) */
} NRow;

/*
 * A version column's type (the same on both nodes, checked): its order
 * (the default B-tree operator class, the type's collation) and how its
 * binary form is read
 */
typedef struct VersionType
{
	Oid			typid;
	Oid			ioparam;
	Oid			collation;
	FmgrInfo	recv;
	FmgrInfo	cmp;
} VersionType;

static VersionType *
version_type(Oid typid)
{
	VersionType *vt = palloc0(sizeof(VersionType));
	TypeCacheEntry *tc = lookup_type_cache(typid, TYPECACHE_CMP_PROC_FINFO);
	Oid			recv;

	if (!OidIsValid(tc->cmp_proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("type %s has no default B-tree operator class", format_type_be(typid))));
	vt->typid = typid;
	vt->collation = get_typcollation(typid);
	fmgr_info_copy(&vt->cmp, &tc->cmp_proc_finfo, CurrentMemoryContext);
	getTypeBinaryInputInfo(typid, &recv, &vt->ioparam);
	fmgr_info(recv, &vt->recv);
	return vt;
}

/* the value of a version's binary form */
static Datum
version_value(VersionType *vt, bytea *b)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
	return ReceiveFunctionCall(&vt->recv, &buf, vt->ioparam, -1);
}

static int
nrow_cmp(const void *a, const void *b)
{
	return ht_bytea_cmp(((const NRow *) a)->key, ((const NRow *) b)->key);
}

/*
 * Which version wins: > 0 a, < 0 b, 0 neither (equal).  The later version
 * (a version column: the larger by the type's order, then by the binary
 * forms, which tells apart values the order takes as equal, such as
 * numeric 1.0 and 1.00); at the same version a tombstone beats a row, and
 * of two rows the larger row hash: the same answer on whichever node runs
 * the exchange.
 */
static int
newest_cmp(VersionType *vt, const NRow *a, const NRow *b)
{
	if (a == NULL || b == NULL)
		return (a != NULL) - (b != NULL);
	if (vt != NULL)
	{
		if ((a->vbytes != NULL) != (b->vbytes != NULL))
			return a->vbytes != NULL ? 1 : -1;
		if (a->vbytes != NULL)
		{
			int			c = DatumGetInt32(FunctionCall2Coll(&vt->cmp, vt->collation,
															a->vd, b->vd));

			if (c == 0)
				c = ht_bytea_cmp(a->vbytes, b->vbytes);
			if (c != 0)
				return c > 0 ? 1 : -1;
		}
	}
	else if (a->has_ver != b->has_ver)
		return a->has_ver ? 1 : -1;
	else if (a->has_ver && a->ver != b->ver)
		return a->ver > b->ver ? 1 : -1;
	if (a->dead != b->dead)
		return a->dead ? 1 : -1;
	if (a->dead)
		return 0;
	return ht_bytea_cmp(a->hash, b->hash);
}

/* the rows read on one side for a prefix: statements [from, to), sorted */
static NRow *
newest_collect(HtStatement *s, int from, int to, VersionType *vt, int *n)
{
	int			cap = 0;
	NRow	   *rows;
	int			k = 0;

	for (int i = from; i < to; i++)
		cap += s[i].result ? s[i].result->nrows : 0;
	rows = palloc(sizeof(NRow) * Max(cap, 1));
	for (int i = from; i < to; i++)
	{
		HtRemoteResult *res = s[i].result;

		for (int r = 0; res != NULL && r < res->nrows; r++)
		{
			char	   *ver = ht_remote_text(res, r, 3);
			char	   *dead = ht_remote_text(res, r, 4);

			rows[k].key = result_bytea(res, r, 0);
			rows[k].hash = result_bytea(res, r, 1);
			rows[k].r = result_bytea(res, r, 2);
			rows[k].has_ver = (ver != NULL);
			rows[k].ver = ver ? strtoll(ver, NULL, 10) : 0;
			rows[k].dead = (dead != NULL && dead[0] == 't');
			rows[k].vbytes = vt ? result_bytea(res, r, 5) : NULL;
			if (rows[k].vbytes != NULL)
				rows[k].vd = version_value(vt, rows[k].vbytes);
			if (rows[k].key == NULL || (!rows[k].dead && (rows[k].hash == NULL || rows[k].r == NULL)))
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("unexpected row in the versions read for a repair")));
			k++;
		}
	}
	qsort(rows, k, sizeof(NRow), nrow_cmp);
	*n = k;
	return rows;
}

/* the winners one side lacks, to write there */
typedef struct NWrites
{
	int			nrows;
	NRow	  **rows;
	int			ndels;
	NRow	  **dels;
} NWrites;

static const char *
int8_array_text(NRow **rows, int n)
{
	StringInfoData b;

	initStringInfo(&b);
	appendStringInfoChar(&b, '{');
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoChar(&b, ',');
		if (rows[i]->has_ver)
			appendStringInfo(&b, INT64_FORMAT, rows[i]->ver);
		else
			appendStringInfoString(&b, "NULL");
	}
	appendStringInfoChar(&b, '}');
	return b.data;
}

static const char *
field_array_text(NRow **rows, int n, int which)
{
	bytea	  **v = palloc(sizeof(bytea *) * Max(n, 1));

	for (int i = 0; i < n; i++)
		v[i] = which == 0 ? rows[i]->key : which == 1 ? rows[i]->r : rows[i]->hash;
	return bytea_array_text(v, n);
}

/* the versions of a version column, binary, as a bytea[] (NULL: unknown) */
static const char *
vbytes_array_text(NRow **rows, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		d[i] = PointerGetDatum(rows[i]->vbytes);
		nulls[i] = (rows[i]->vbytes == NULL);
	}
	return OidOutputFunctionCall(F_ARRAY_OUT,
								 PointerGetDatum(construct_md_array(d, nulls, 1, dims, lbs,
																	BYTEAOID, -1, false,
																	TYPALIGN_INT)));
}

#define NEWEST_TS(p) \
	"ARRAY(SELECT pg_catalog.to_timestamp(0) + v * '1 microsecond'::pg_catalog.interval" \
	" FROM pg_catalog.unnest(" p "::pg_catalog.int8[]) v)"

/*
 * The versions of plain entries (entryver.c), in the columns of
 * _newest_rows: the hash stands for the row (it is all there is to copy);
 * no version column
 */
#define NEWEST_ENTRIES(keys) \
	"SELECT key, hash, hash, (EXTRACT(epoch FROM version) * 1000000)::pg_catalog.int8, dead," \
	" NULL::pg_catalog.bytea FROM hashtree._newest_entries($3::int4, $1, $2, " keys ")"

static void
add_newest_writes(Stmts *st, int group, Work *w, NWrites *x)
{
	for (int base = 0; base < Max(x->nrows, x->ndels); base += HT_REPAIR_BATCH)
	{
		int			nr = Max(0, Min(HT_REPAIR_BATCH, x->nrows - base));
		int			nd = Max(0, Min(HT_REPAIR_BATCH, x->ndels - base));
		NRow	  **r = x->rows + Min(base, x->nrows);
		NRow	  **d = x->dels + Min(base, x->ndels);

		if (!w->tracked)
		{
			add_stmt(st, group, 1,
					 "SELECT hashtree._newest_apply_entries($1::int4, $2, $3,"
					 " $4::pg_catalog.bytea[], $5::pg_catalog.bytea[], " NEWEST_TS("$6") ","
					 " $7::pg_catalog.bytea[], " NEWEST_TS("$8") ")",
					 8, psprintf("%d", w->rp->part), w->pa, w->pb,
					 field_array_text(r, nr, 0), field_array_text(r, nr, 2),
					 int8_array_text(r, nr),
					 field_array_text(d, nd, 0), int8_array_text(d, nd));
			continue;
		}
		add_stmt(st, group, 1,
				 "SELECT hashtree._newest_apply($1, $2, $3::int4, $4::pg_catalog.bytea[],"
				 " $5::pg_catalog.bytea[], $6::pg_catalog.bytea[], " NEWEST_TS("$7") ","
				 " $8::pg_catalog.bytea[], " NEWEST_TS("$9") ", $10::pg_catalog.bytea[])",
				 10, w->pa, w->pb, psprintf("%d", w->rp->part),
				 field_array_text(r, nr, 0), field_array_text(r, nr, 1),
				 field_array_text(r, nr, 2), int8_array_text(r, nr),
				 field_array_text(d, nd, 0), int8_array_text(d, nd),
				 vbytes_array_text(d, nd));
	}
}

/* the sum of the counts a side's writes of group k returned */
static int64
written(Stmts *st, int group)
{
	int64		n = 0;

	for (int i = 0; i < st->n; i++)
		if (st->s[i].group == group && st->s[i].result != NULL &&
			st->s[i].result->nrows == 1)
		{
			char	   *v = ht_remote_text(st->s[i].result, 0, 0);

			n += v ? strtoll(v, NULL, 10) : 0;
		}
	return n;
}

static int
diff_key_cmp(const void *a, const void *b)
{
	return ht_bytea_cmp((*(HtDiff *const *) a)->key, (*(HtDiff *const *) b)->key);
}

/*
 * How the versions of a tracked table compare: both nodes must version it
 * alike (commit times, or version columns of the same type).  False (the
 * prefix failed) when they do not, but for a pull or push (force), whose
 * winner is known: the versions are then not read.
 */
static bool
work_versions(Work *w, Registry *local, Registry *remote, HtPeer *peer, char force)
{
	int			i = registry_find(local, w->pa, w->pb);
	int			j = registry_find(remote, w->pa, w->pb);
	char	   *here = local->vtype[i];
	char	   *there = remote->vtype[j];

	if ((here == NULL) != (there == NULL) || (here != NULL && strcmp(here, there) != 0))
	{
		w->vt = NULL;
		if (force)
			return true;
		w->failed = psprintf("repair 'newest' of %s: its rows are versioned by %s on this node"
							 " but by %s on peer \"%s\"",
							 quote_qualified_identifier(w->pa, w->pb),
							 here ? psprintf("a version column of type %s", here) : "commit times",
							 there ? psprintf("a version column of type %s", there) : "commit times",
							 ht_peer_name(peer));
		return false;
	}
	w->vt = here ? version_type(local->vtypid[i]) : NULL;
	return true;
}

void
ht_repair_winners(HtPeer *peer, HtRepairPart *parts, int nparts)
{
	if (track_commit_timestamp)
		repair_newest(peer, parts, nparts, true, true, 0);
}

/*
 * Repair 'newest'; dry_run: only set the winner of each difference (no
 * commit times on the peer: none, no error), write nothing
 */
static void
repair_newest(HtPeer *peer, HtRepairPart *parts, int nparts, bool quiet, bool dry_run,
			  char force)
{
	Registry	local;
	Registry	remote;
	Stmts		first = {0};
	PartDiff   *d;
	int			n = 0;
	int			cap = 0;
	Work	   *works;
	int			nworks = 0;
	Stmts		rd_here = {0};
	Stmts		rd_there = {0};
	Stmts		wr_here = {0};
	Stmts		wr_there = {0};
	ErrorData **err_rd_here;
	ErrorData **err_rd_there;
	ErrorData **err_wr_here;
	ErrorData **err_wr_there;
	char	   *setting;

	if (!track_commit_timestamp && !force)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("repair 'newest' needs track_commit_timestamp = on on this node"),
				 errhint("Set track_commit_timestamp = on (a restart) on every node.")));

	/* batch 1, on the peer: its setting and its registry */
	add_stmt(&first, 0, REGISTRY_COLS, REGISTRY_SQL, 0);
	add_stmt(&first, 1, 1, "SELECT pg_catalog.current_setting('track_commit_timestamp')", 0);
	ht_node_batch(peer, first.s, first.n, NULL);
	setting = first.s[1].result->nrows == 1 ? ht_remote_text(first.s[1].result, 0, 0) : NULL;
	if (dry_run && (setting == NULL || strcmp(setting, "on") != 0))
		return;
	if (!force && (setting == NULL || strcmp(setting, "on") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("repair 'newest' needs track_commit_timestamp = on on peer \"%s\"",
						ht_peer_name(peer)),
				 errhint("Set track_commit_timestamp = on (a restart) on every node.")));
	registry_of(NULL, &local);
	registry_from(first.s[0].result, &remote);

	for (int p = 0; p < nparts; p++)
		cap += parts[p].ndiffs;
	d = palloc(sizeof(PartDiff) * Max(cap, 1));
	for (int p = 0; p < nparts; p++)
	{
		parts[p].rows_local = parts[p].rows_remote = 0;
		for (int i = 0; i < parts[p].ndiffs; i++)
		{
			HtDiff	   *x = &parts[p].diffs[i];

			x->winner = 0;
			if (x->pb == NULL)
			{
				/* a whole prefix_a: one difference per prefix_b of either side */
				const char *params[2] = {psprintf("%d", parts[p].part), x->pa};
				HtRemoteResult *res = ht_node_query(x->kind == HT_MISSING_PREFIX ? peer : NULL,
													"SELECT c FROM hashtree._prefix_children($1::int4, $2) c",
													2, params, 1);

				cap += res->nrows;
				d = repalloc(d, sizeof(PartDiff) * Max(cap, 1));
				for (int c = 0; c < res->nrows; c++)
				{
					HtDiff	   *y = palloc(sizeof(HtDiff));

					*y = *x;
					y->pb = ht_remote_text(res, c, 0);
					d[n].rp = &parts[p];
					d[n++].d = y;
				}
				x->repaired = !dry_run;
				x->winner = x->kind == HT_MISSING_PREFIX ? 'r' : 'l';
				continue;
			}
			d[n].rp = &parts[p];
			d[n++].d = x;
		}
	}
	qsort(d, n, sizeof(PartDiff), diff_order);

	/* the prefixes, and the same reads on both sides */
	works = palloc0(sizeof(Work) * Max(n, 1));
	for (int i = 0; i < n;)
	{
		Work	   *w = &works[nworks++];
		const char *part;

		if (!work_start(w, d, &i, n, &local, &remote, peer))
			continue;
		if (w->tracked && !work_versions(w, &local, &remote, peer, force))
			continue;
		w->copy = palloc(sizeof(bytea *) * (w->end_diff - w->first_diff));
		for (int k = w->first_diff; k < w->end_diff; k++)
		{
			if (d[k].d->key != NULL)
				w->copy[w->ncopy++] = d[k].d->key;
			else
				w->copy_prefix = true;	/* (only one side has it) */
		}
		qsort(w->copy, w->ncopy, sizeof(bytea *), ht_bytea_ptr_cmp);
		if (dry_run && w->copy_prefix)
		{
			/* a table only one side has wins there: no need to read all its rows */
			for (int k = w->first_diff; k < w->end_diff; k++)
				if (d[k].d->key == NULL)
					d[k].d->winner = d[k].d->kind == HT_MISSING_PREFIX ? 'r' : 'l';
			w->copy_prefix = false;
		}
		part = psprintf("%d", w->rp->part);
		w->read_from = rd_here.n;
		if (w->copy_prefix)
		{
			const char *sql = w->tracked ? "SELECT key, hash, r, (EXTRACT(epoch FROM version)"
				" * 1000000)::pg_catalog.int8, dead, vbytes FROM hashtree._newest_rows($1, $2,"
				" $3::int4, ARRAY(SELECT e.key FROM hashtree._prefix_entries($3::int4, $1, $2) e))"
				: NEWEST_ENTRIES("ARRAY(SELECT e.key FROM hashtree._prefix_entries($3::int4, $1, $2) e)");

			add_stmt(&rd_here, nworks - 1, 6, sql, 3, w->pa, w->pb, part);
			add_stmt(&rd_there, nworks - 1, 6, sql, 3, w->pa, w->pb, part);
		}
		for (int base = 0; base < w->ncopy; base += HT_REPAIR_BATCH)
		{
			const char *keys = bytea_array_text(w->copy + base,
												Min(HT_REPAIR_BATCH, w->ncopy - base));
			const char *sql = w->tracked ? "SELECT key, hash, r, (EXTRACT(epoch FROM version)"
				" * 1000000)::pg_catalog.int8, dead, vbytes FROM hashtree._newest_rows($1, $2,"
				" $3::int4, $4::pg_catalog.bytea[])"
				: NEWEST_ENTRIES("$4::pg_catalog.bytea[]");

			add_stmt(&rd_here, nworks - 1, 6, sql, 4, w->pa, w->pb, part, keys);
			add_stmt(&rd_there, nworks - 1, 6, sql, 4, w->pa, w->pb, part, keys);
		}
		w->read_to = rd_here.n;
	}

	/* batch 2: the versions, on both sides */
	err_rd_there = palloc0(sizeof(ErrorData *) * Max(nworks, 1));
	err_rd_here = palloc0(sizeof(ErrorData *) * Max(nworks, 1));
	ht_node_batch(peer, rd_there.s, rd_there.n, err_rd_there);
	ht_node_batch(NULL, rd_here.s, rd_here.n, err_rd_here);

	/* the winners, and batch 3: the writes on the side that lacks each */
	for (int k = 0; k < nworks; k++)
	{
		Work	   *w = &works[k];
		ErrorData  *e = err_rd_there[k] ? err_rd_there[k] : err_rd_here[k];
		NRow	   *a;
		NRow	   *b;
		int			na;
		int			nb;
		int			i = 0;
		int			j = 0;
		NWrites		to_here = {0};
		NWrites		to_there = {0};
		HtDiff	  **dk;
		int			ndk = 0;

		if (w->failed != NULL)
			continue;
		dk = palloc(sizeof(HtDiff *) * Max(w->end_diff - w->first_diff, 1));
		for (int q = w->first_diff; q < w->end_diff; q++)
			if (d[q].d->key != NULL)
				dk[ndk++] = d[q].d;
		qsort(dk, ndk, sizeof(HtDiff *), diff_key_cmp);
		if (e != NULL)
		{
			rethrow_fatal(e);
			w->failed = psprintf("repair of %s: %s", quote_qualified_identifier(w->pa, w->pb),
								 e->message);
			continue;
		}
		a = newest_collect(rd_here.s, w->read_from, w->read_to, w->vt, &na);
		b = newest_collect(rd_there.s, w->read_from, w->read_to, w->vt, &nb);
		/* (a forced winner may be a key the other side has: na + nb) */
		to_here.rows = palloc(sizeof(NRow *) * Max(na + nb, 1));
		to_here.dels = palloc(sizeof(NRow *) * Max(na + nb, 1));
		to_there.rows = palloc(sizeof(NRow *) * Max(na + nb, 1));
		to_there.dels = palloc(sizeof(NRow *) * Max(na + nb, 1));
		while (i < na || j < nb)
		{
			int			c = (i < na && j < nb) ? ht_bytea_cmp(a[i].key, b[j].key)
				: (i < na ? -1 : 1);
			bool		take_a = c <= 0;
			bool		take_b = c >= 0;
			NRow	   *x = take_a ? &a[i] : NULL;
			NRow	   *y = take_b ? &b[j] : NULL;
			int			win = newest_cmp(w->vt, x, y);
			bytea	   *key = x ? x->key : y->key;

			/*
			 * pull or push of a table with tombstones: the source's version,
			 * whatever its age; a key the source lacks is purged (no
			 * tombstone: a dead NRow without a version)
			 */
			if (force && win != 0)
			{
				NRow	   *src = force == 'l' ? x : y;
				NRow	   *dst = force == 'l' ? y : x;

				win = force == 'l' ? 1 : -1;
				if (src == NULL)
				{
					src = palloc0(sizeof(NRow));
					src->key = dst->key;
					src->dead = true;
					src->has_ver = false;
					if (force == 'l')
						x = src;
					else
						y = src;
				}
			}

			if (win > 0)
			{
				if (x->dead)
					to_there.dels[to_there.ndels++] = x;
				else
					to_there.rows[to_there.nrows++] = x;
			}
			else if (win < 0)
			{
				if (y->dead)
					to_here.dels[to_here.ndels++] = y;
				else
					to_here.rows[to_here.nrows++] = y;
			}
			/* the winner of each difference, for the result */
			{
				HtDiff		probe = {0};
				HtDiff	   *pp = &probe;
				HtDiff	  **hit;

				probe.key = key;
				hit = bsearch(&pp, dk, ndk, sizeof(HtDiff *), diff_key_cmp);
				if (hit != NULL)
					(*hit)->winner = win > 0 ? 'l' : win < 0 ? 'r' : 0;
			}
			if (take_a)
				i++;
			if (take_b)
				j++;
		}
		add_newest_writes(&wr_here, k, w, &to_here);
		add_newest_writes(&wr_there, k, w, &to_there);
	}
	if (dry_run)
		return;
	err_wr_there = palloc0(sizeof(ErrorData *) * Max(nworks, 1));
	err_wr_here = palloc0(sizeof(ErrorData *) * Max(nworks, 1));
	ht_node_batch(peer, wr_there.s, wr_there.n, err_wr_there);
	ht_node_batch(NULL, wr_here.s, wr_here.n, err_wr_here);

	/* what became of each prefix */
	for (int k = 0; k < nworks; k++)
	{
		Work	   *w = &works[k];
		HtRepairPart *rp = w->rp;
		ErrorData  *e = err_wr_there[k] ? err_wr_there[k] : err_wr_here[k];

		if (w->failed == NULL && e != NULL)
		{
			rethrow_fatal(e);
			w->failed = psprintf("repair of %s: %s", quote_qualified_identifier(w->pa, w->pb),
								 e->message);
		}
		if (!err_wr_here[k])
			rp->rows_local += written(&wr_here, k);
		if (!err_wr_there[k])
			rp->rows_remote += written(&wr_there, k);
		work_done(w, d, quiet);
	}
	count_repaired(parts, nparts);
}

/* does the table or plain prefix (pa, pb) keep tombstones here? */
static bool
keeps_tombstones(const char *pa, const char *pb)
{
	text	   *a = cstring_to_text(pa);
	text	   *b = cstring_to_text(pb);

	return (ht_tomb_available() && ht_tomb_enabled(a, b)) || ht_entryver_enabled(a, b);
}

/*
 * pull/push: the differences of tables (and plain prefixes) that keep tombstones here go through
 * the reads and writes of 'newest' with the source's side forced as the
 * winner (tombstones are copied, keys the source lacks purged, not turned
 * into tombstones of the repair's time); the others through pull/push.
 */
static void
repair_split(HtPeer *peer, HtRepairMode mode, HtRepairPart *parts, int nparts, bool quiet)
{
	HtRepairPart *tp = palloc0(sizeof(HtRepairPart) * Max(nparts, 1));
	HtRepairPart *op = palloc0(sizeof(HtRepairPart) * Max(nparts, 1));
	int		  **tmap = palloc(sizeof(int *) * Max(nparts, 1));
	int		  **omap = palloc(sizeof(int *) * Max(nparts, 1));
	bool		any = false;

	for (int p = 0; p < nparts; p++)
	{
		tp[p] = op[p] = parts[p];
		tp[p].diffs = palloc(sizeof(HtDiff) * Max(parts[p].ndiffs, 1));
		op[p].diffs = palloc(sizeof(HtDiff) * Max(parts[p].ndiffs, 1));
		tmap[p] = palloc(sizeof(int) * Max(parts[p].ndiffs, 1));
		omap[p] = palloc(sizeof(int) * Max(parts[p].ndiffs, 1));
		tp[p].ndiffs = op[p].ndiffs = 0;
		tp[p].message = op[p].message = NULL;
		for (int i = 0; i < parts[p].ndiffs; i++)
		{
			HtDiff	   *x = &parts[p].diffs[i];

			if (x->pb != NULL && keeps_tombstones(x->pa, x->pb))
			{
				tmap[p][tp[p].ndiffs] = i;
				tp[p].diffs[tp[p].ndiffs++] = *x;
				any = true;
			}
			else
			{
				omap[p][op[p].ndiffs] = i;
				op[p].diffs[op[p].ndiffs++] = *x;
			}
		}
	}
	if (any)
		repair_newest(peer, tp, nparts, quiet, false, mode == HT_REPAIR_PUSH ? 'l' : 'r');
	repair_split_running = true;
	PG_TRY();
	{
		ht_repair(peer, mode, op, nparts, quiet);
	}
	PG_FINALLY();
	{
		repair_split_running = false;
	}
	PG_END_TRY();
	for (int p = 0; p < nparts; p++)
	{
		for (int i = 0; i < tp[p].ndiffs; i++)
			parts[p].diffs[tmap[p][i]].repaired = tp[p].diffs[i].repaired;
		for (int i = 0; i < op[p].ndiffs; i++)
			parts[p].diffs[omap[p][i]].repaired = op[p].diffs[i].repaired;
		parts[p].repaired = tp[p].repaired + op[p].repaired;
		parts[p].rows_local = tp[p].rows_local + op[p].rows_local;
		parts[p].rows_remote = tp[p].rows_remote + op[p].rows_remote;
		parts[p].message = tp[p].message ? tp[p].message : op[p].message;
	}
}
