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
 * trees equal.  For entries
 * written with insert(), the entries are copied.  Each prefix is repaired
 * in its own subtransaction: a prefix that cannot be repaired (a table
 * missing on the target) is reported as not repaired, the others go on.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"

#include "common.h"
#include "remote.h"
#include "repair.h"
#include "sqlexec.h"
#include "treemath.h"

#define HT_REPAIR_BATCH 1000

typedef struct Registry
{
	int			n;
	char	  **schema;
	char	  **name;
} Registry;

static void
registry_of(HtPeer *peer, Registry *reg)
{
	HtRemoteResult *res = ht_node_query(peer,
										"SELECT schema_name, table_name FROM hashtree.tracked",
										0, NULL, 2);

	reg->n = res->nrows;
	reg->schema = palloc(sizeof(char *) * Max(res->nrows, 1));
	reg->name = palloc(sizeof(char *) * Max(res->nrows, 1));
	for (int i = 0; i < res->nrows; i++)
	{
		reg->schema[i] = ht_remote_text(res, i, 0);
		reg->name[i] = ht_remote_text(res, i, 1);
	}
}

static bool
registered(Registry *reg, const char *pa, const char *pb)
{
	for (int i = 0; i < reg->n; i++)
		if (strcmp(reg->schema[i], pa) == 0 && strcmp(reg->name[i], pb) == 0)
			return true;
	return false;
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

/* what to do to one prefix, from source to target */
typedef struct Work
{
	HtPeer	   *src;			/* NULL: this node */
	HtPeer	   *dst;
	int			part;
	const char *pa;
	const char *pb;
	bool		tracked;
	int			ncopy;
	bytea	  **copy;			/* keys to copy (or delete if gone) */
	int			ndel;
	bytea	  **del;			/* keys to delete */
	bool		copy_prefix;
	bool		del_prefix;
} Work;

/* ---- entries written with insert() --------------------------------------- */

static void
apply_entries(Work *w, bytea **keys, bytea **hashes, int n)
{
	const char *p[5];
	Datum	   *h = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	if (n == 0)
		return;
	for (int i = 0; i < n; i++)
	{
		h[i] = PointerGetDatum(hashes[i]);
		nulls[i] = (hashes[i] == NULL);
	}
	p[0] = psprintf("%d", w->part);
	p[1] = w->pa;
	p[2] = w->pb;
	p[3] = bytea_array_text(keys, n);
	p[4] = OidOutputFunctionCall(F_ARRAY_OUT,
								 PointerGetDatum(construct_md_array(h, nulls, 1, dims, lbs,
																	BYTEAOID, -1, false,
																	TYPALIGN_INT)));
	(void) ht_node_query(w->dst, "SELECT hashtree._apply_entries($1::int4, $2, $3,"
						 " $4::bytea[], $5::bytea[])", 5, p, 1);
}

static void
repair_entries(Work *w)
{
	const char *p[4];

	p[0] = psprintf("%d", w->part);
	p[1] = w->pa;
	p[2] = w->pb;
	if (w->del_prefix)
		(void) ht_node_query(w->dst, "SELECT hashtree._drop_entries($1::int4, $2, $3)", 3, p, 1);
	if (w->copy_prefix)
	{
		HtRemoteResult *res = ht_node_query(w->src,
											"SELECT key, hash FROM hashtree._prefix_entries($1::int4, $2, $3)",
											3, p, 2);

		for (int base = 0; base < res->nrows; base += HT_REPAIR_BATCH)
		{
			int			k = Min(HT_REPAIR_BATCH, res->nrows - base);
			bytea	  **keys = palloc(sizeof(bytea *) * k);
			bytea	  **hashes = palloc(sizeof(bytea *) * k);

			for (int i = 0; i < k; i++)
			{
				keys[i] = result_bytea(res, base + i, 0);
				hashes[i] = result_bytea(res, base + i, 1);
			}
			apply_entries(w, keys, hashes, k);
		}
	}
	for (int base = 0; base < w->ncopy; base += HT_REPAIR_BATCH)
	{
		int			k = Min(HT_REPAIR_BATCH, w->ncopy - base);
		bytea	  **keys = w->copy + base;
		bytea	  **hashes = palloc0(sizeof(bytea *) * k);
		HtRemoteResult *res;
		int			j = 0;

		/* what the source has of these keys; a key it lost meanwhile goes */
		qsort(keys, k, sizeof(bytea *), ht_bytea_ptr_cmp);
		p[3] = bytea_array_text(keys, k);
		res = ht_node_query(w->src,
							"SELECT key, hash FROM hashtree._entries_by_key($1::int4, $2, $3, $4::bytea[])"
							" ORDER BY key", 4, p, 2);
		for (int r = 0; r < res->nrows; r++)
		{
			bytea	   *key = result_bytea(res, r, 0);

			while (j < k && ht_bytea_cmp(keys[j], key) < 0)
				j++;
			if (j < k && ht_bytea_cmp(keys[j], key) == 0)
				hashes[j] = result_bytea(res, r, 1);
		}
		apply_entries(w, keys, hashes, k);
	}
	for (int base = 0; base < w->ndel; base += HT_REPAIR_BATCH)
	{
		int			k = Min(HT_REPAIR_BATCH, w->ndel - base);

		apply_entries(w, w->del + base, palloc0(sizeof(bytea *) * k), k);
	}
}

/* ---- rows of tracked tables ------------------------------------------------ */

/*
 * Rows travel in the transport form of _rows_by_key (per-column values by
 * name, binary or text; see track.c) with the source's row hash, which the
 * target checks after writing each row.
 */
static void
apply_rows(Work *w, HtRemoteResult *res, int keycol, int from, int to,
		   bytea **deletes, int ndel)
{
	const char *p[5];

	p[0] = w->pa;
	p[1] = w->pb;
	p[2] = NULL;
	p[3] = NULL;
	if (to > from)
	{
		int			n = to - from;
		bytea	  **rows = palloc(sizeof(bytea *) * n);
		bytea	  **hashes = palloc(sizeof(bytea *) * n);

		for (int i = 0; i < n; i++)
		{
			rows[i] = result_bytea(res, from + i, keycol + 2);
			hashes[i] = result_bytea(res, from + i, keycol + 1);
			if (rows[i] == NULL || hashes[i] == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("unexpected row from the source of a repair")));
		}
		p[2] = bytea_array_text(rows, n);
		p[3] = bytea_array_text(hashes, n);
	}
	p[4] = ndel > 0 ? bytea_array_text(deletes, ndel) : NULL;
	if (p[2] == NULL && p[4] == NULL)
		return;
	(void) ht_node_query(w->dst, "SELECT hashtree._apply_rows($1, $2, $3::pg_catalog.bytea[],"
						 " $4::pg_catalog.bytea[], $5::pg_catalog.bytea[])",
						 5, p, 1);
}

static void
repair_rows(Work *w)
{
	const char *p[3];

	p[0] = w->pa;
	p[1] = w->pb;
	p[2] = psprintf("%d", w->part);
	if (w->del_prefix)
		(void) ht_node_query(w->dst, "SELECT hashtree._delete_partition_rows($1, $2, $3::int4)",
							 3, p, 1);
	if (w->copy_prefix)
	{
		HtRemoteResult *res = ht_node_query(w->src,
											"SELECT key, hash, r FROM hashtree._partition_rows($1, $2, $3::int4)",
											3, p, 3);

		for (int base = 0; base < res->nrows; base += HT_REPAIR_BATCH)
			apply_rows(w, res, 0, base, Min(base + HT_REPAIR_BATCH, res->nrows), NULL, 0);
	}
	for (int base = 0; base < w->ncopy; base += HT_REPAIR_BATCH)
	{
		int			k = Min(HT_REPAIR_BATCH, w->ncopy - base);
		bytea	  **keys = w->copy + base;
		bytea	  **gone = palloc(sizeof(bytea *) * k);
		int			ngone = 0;
		HtRemoteResult *res;
		int			j = 0;

		qsort(keys, k, sizeof(bytea *), ht_bytea_ptr_cmp);
		p[2] = bytea_array_text(keys, k);
		res = ht_node_query(w->src,
							"SELECT key, hash, r FROM hashtree._rows_by_key($1, $2, $3::pg_catalog.bytea[])"
							" ORDER BY key", 3, p, 3);
		for (int r = 0; r < res->nrows; r++)
		{
			bytea	   *key = result_bytea(res, r, 0);

			/* keys the source no longer has are deleted on the target */
			while (j < k && ht_bytea_cmp(keys[j], key) < 0)
				gone[ngone++] = keys[j++];
			if (j < k && ht_bytea_cmp(keys[j], key) == 0)
				j++;
		}
		while (j < k)
			gone[ngone++] = keys[j++];
		apply_rows(w, res, 0, 0, res->nrows, gone, ngone);
	}
	for (int base = 0; base < w->ndel; base += HT_REPAIR_BATCH)
		apply_rows(w, NULL, 0, 0, 0, w->del + base, Min(HT_REPAIR_BATCH, w->ndel - base));
}

/* ---- driver ---------------------------------------------------------------- */

static int
diff_order(const void *a, const void *b)
{
	const HtDiff *x = *(HtDiff * const *) a;
	const HtDiff *y = *(HtDiff * const *) b;
	int			c = strcmp(x->pa, y->pa);

	if (c != 0)
		return c;
	return strcmp(x->pb ? x->pb : "", y->pb ? y->pb : "");
}

/* the prefix_b's under prefix_a in a partition, on a node */
static HtRemoteResult *
children_of(HtPeer *peer, int part, const char *pa)
{
	const char *p[2] = {psprintf("%d", part), pa};

	return ht_node_query(peer, "SELECT c FROM hashtree._prefix_children($1::int4, $2) c",
						 2, p, 1);
}

static void
repair_fn(void *arg)
{
	Work	   *w = (Work *) arg;

	if (w->tracked)
		repair_rows(w);
	else
		repair_entries(w);
}

/* run one prefix's repair in a subtransaction; false if it failed */
static bool
repair_prefix(Work *w, char **message)
{
	ErrorData  *edata = ht_subxact(repair_fn, w);

	if (edata == NULL)
		return true;
	/*
	 * A lost peer (a protocol violation included) or a cancel of this
	 * backend ends the exchange, not just this prefix.
	 */
	if (ht_peer_lost(edata->sqlerrcode) ||
		edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		ReThrowError(edata);
	if (*message == NULL)
		*message = psprintf("repair of %s: %s", quote_qualified_identifier(w->pa, w->pb),
							edata->message);
	return false;
}

const char *const ht_repair_mode_names[HT_NREPAIR_MODES] = {
	[HT_REPAIR_NONE] = "none",
	[HT_REPAIR_PULL] = "pull",
	[HT_REPAIR_PUSH] = "push",
};

HtRepairMode
ht_repair_mode(const char *name)
{
	for (int i = 0; i < HT_NREPAIR_MODES; i++)
		if (strcmp(name, ht_repair_mode_names[i]) == 0)
			return (HtRepairMode) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("repair must be none, pull or push, not \"%s\"", name)));
	return HT_REPAIR_NONE;		/* keep compiler quiet */
}

int64
ht_repair(HtPeer *peer, int part, HtRepairMode mode, HtDiff *diffs, int ndiffs,
		  char **first_message, bool quiet)
{
	int64		repaired = 0;
	Registry	local;
	Registry	remote;
	HtDiff	  **d;
	int			n = 0;
	bool		pull = (mode == HT_REPAIR_PULL);

	registry_of(NULL, &local);
	registry_of(peer, &remote);

	/* a whole prefix_a: one difference per prefix_b of the side that has it */
	d = palloc(sizeof(HtDiff *) * ndiffs);
	for (int i = 0; i < ndiffs; i++)
	{
		HtDiff	   *x = &diffs[i];

		if (x->pb != NULL)
		{
			d[n++] = x;
			continue;
		}
		{
			HtRemoteResult *res = children_of(x->kind == HT_MISSING_PREFIX ? peer : NULL,
											  part, x->pa);

			d = repalloc(d, sizeof(HtDiff *) * (ndiffs + n + res->nrows + 1));
			for (int c = 0; c < res->nrows; c++)
			{
				HtDiff	   *y = palloc(sizeof(HtDiff));

				*y = *x;
				y->pb = ht_remote_text(res, c, 0);
				d[n++] = y;
			}
			/* the prefix_a itself counts as repaired when its children are */
			x->repaired = true;
		}
	}
	qsort(d, n, sizeof(HtDiff *), diff_order);

	for (int i = 0; i < n;)
	{
		int			j = i;
		Work		w;
		char	   *message = NULL;
		bool		here;
		bool		there;
		bool		ok;

		memset(&w, 0, sizeof(w));
		w.src = pull ? peer : NULL;
		w.dst = pull ? NULL : peer;
		w.part = part;
		w.pa = d[i]->pa;
		w.pb = d[i]->pb;
		while (j < n && diff_order(&d[i], &d[j]) == 0)
			j++;

		/*
		 * A table tracked on one side only cannot be made equal without DDL
		 * on the other: report it, and do not delete the rows of a table
		 * because the other node lacks it.
		 */
		here = registered(&local, w.pa, w.pb);
		there = registered(&remote, w.pa, w.pb);
		w.tracked = here && there;
		if (here != there)
		{
			message = psprintf("table %s is tracked on %s but not on %s",
							   quote_qualified_identifier(w.pa, w.pb),
							   here ? "this node" : psprintf("peer \"%s\"", ht_peer_name(peer)),
							   here ? psprintf("peer \"%s\"", ht_peer_name(peer)) : "this node");
			ok = false;
		}
		else
		{
			w.copy = palloc(sizeof(bytea *) * (j - i));
			w.del = palloc(sizeof(bytea *) * (j - i));
			for (int k = i; k < j; k++)
			{
				/* does the source have it? */
				bool		on_src;

				switch (d[k]->kind)
				{
					case HT_DIFFERENT:
						w.copy[w.ncopy++] = d[k]->key;
						break;
					case HT_MISSING:
					case HT_REMOTE_MISSING:
						on_src = (d[k]->kind == HT_MISSING) == pull;
						if (on_src)
							w.copy[w.ncopy++] = d[k]->key;
						else
							w.del[w.ndel++] = d[k]->key;
						break;
					default:
						on_src = (d[k]->kind == HT_MISSING_PREFIX) == pull;
						if (on_src)
							w.copy_prefix = true;
						else
							w.del_prefix = true;
						break;
				}
			}
			ok = repair_prefix(&w, &message);
		}

		for (int k = i; k < j; k++)
			d[k]->repaired = ok;
		if (!ok)
		{
			/* a whole prefix_a is repaired only if all its children are */
			for (int k = 0; k < ndiffs; k++)
				if (diffs[k].pb == NULL && strcmp(diffs[k].pa, w.pa) == 0)
					diffs[k].repaired = false;
			if (*first_message == NULL)
				*first_message = message;
			if (!quiet)
				ereport(WARNING, (errmsg("hashtree: partition %d: %s", part, message)));
		}
		i = j;
	}

	for (int k = 0; k < ndiffs; k++)
		if (diffs[k].repaired)
			repaired++;
	return repaired;
}
