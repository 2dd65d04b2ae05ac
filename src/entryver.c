/*-------------------------------------------------------------------------
 *
 * entryver.c
 *	  Versions and tombstones of plain entries (two-way repair, DESIGN §20).
 *
 * The version of an entry written with insert() is the caller's
 * (entry.version) or, when NULL, the commit time of the transaction that
 * wrote the row (its xmin); '-infinity' is a version not known (copied by
 * a repair from a node that did not know it).  A plain prefix keeps
 * tombstones when hashtree.tombstone_prefix names it (tombstones(prefix_a,
 * prefix_b)): a delete() then writes a row of hashtree.tombstone (key, t)
 * and the entry (key, T(t)) as for the rows of tracked tables (tomb.c),
 * t being the caller's version or the time of the delete; an insert()
 * removes the tombstone (the statements are store.c's).  This file has
 * the registry, the reads and writes of repair 'newest'
 * (_newest_entries, _newest_apply_entries) and the expiry.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/commit_ts.h"
#include "access/transam.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "common.h"
#include "entryver.h"
#include "partlock.h"
#include "sqlexec.h"
#include "store.h"
#include "tomb.h"
#include "track.h"

bool
ht_entryver_enabled(text *pa, text *pb)
{
	return ht_store_versions_available() && ht_store_keeps_tombstones(pa, pb);
}

/*
 * The rows (part, pa, pb, key, deleted_at) of q, tombstones: each one
 * removed with its entry (entry first, each if still the same); with
 * skip_locked, not those of an entry a writer holds (the expiry does not
 * wait for writers: the next update takes them).  Returns the removed.
 */
static uint64
drop_tombstones(HtQuery *q, Datum *v, bool skip_locked)
{
	uint64		dropped = 0;
	uint64		n = ht_exec(q, v, NULL, 0);
	int		   *parts = palloc(sizeof(int) * Max(n, 1));
	text	  **pas = palloc(sizeof(text *) * Max(n, 1));
	text	  **pbs = palloc(sizeof(text *) * Max(n, 1));
	bytea	  **keys = palloc(sizeof(bytea *) * Max(n, 1));
	TimestampTz *ats = palloc(sizeof(TimestampTz) * Max(n, 1));

	for (uint64 r = 0; r < n; r++)
	{
		bool		isnull;

		parts[r] = DatumGetInt32(ht_col(r, 1, &isnull));
		pas[r] = DatumGetTextPCopy(ht_col(r, 2, &isnull));
		pbs[r] = DatumGetTextPCopy(ht_col(r, 3, &isnull));
		keys[r] = DatumGetByteaPCopy(ht_col(r, 4, &isnull));
		ats[r] = DatumGetTimestampTz(ht_col(r, 5, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	for (uint64 r = 0; r < n; r++)
		if (ht_store_drop_tombstone(parts[r], pas[r], pbs[r], keys[r], ats[r],
									ht_tomb_hash(ats[r]), skip_locked))
			dropped++;
	return dropped;
}

static HtQuery q_expire = {
	"SELECT x.part, x.pa, x.pb, x.key, x.deleted_at"
	" FROM hashtree.tombstone x JOIN hashtree.tombstone_prefix p"
	"  ON x.pa = p.prefix_a AND x.pb = p.prefix_b"
	" WHERE x.part = $1"
	"  AND x.deleted_at < pg_catalog.now() - pg_catalog.make_interval(secs => $2)"
	/* (a table tracked since under that prefix: tomb.c's) */
	"  AND NOT EXISTS (SELECT 1 FROM hashtree.tracked_table r"
	"   WHERE r.schema_name = x.pa AND r.table_name = x.pb)",
	2, {INT4OID, FLOAT8OID}
};

uint64
ht_entryver_expire(int part)
{
	Datum		v[2];

	if (ht_guc_tombstone_ttl <= 0 || !ht_store_versions_available() ||
		ht_store_tomb_prefix_count() == 0)
		return 0;
	v[0] = Int32GetDatum(part);
	v[1] = Float8GetDatum((double) ht_guc_tombstone_ttl);
	return drop_tombstones(&q_expire, v, true);
}

/* ---- the registry ---------------------------------------------------------- */

static HtQuery q_enable = {
	"INSERT INTO hashtree.tombstone_prefix (prefix_a, prefix_b) VALUES ($1, $2)"
	" ON CONFLICT DO NOTHING",
	2, {TEXTOID, TEXTOID}
};

static HtQuery q_disable = {
	"DELETE FROM hashtree.tombstone_prefix WHERE prefix_a = $1 AND prefix_b = $2",
	2, {TEXTOID, TEXTOID}
};

static HtQuery q_tombs_of_prefix = {
	"SELECT part, pa, pb, key, deleted_at FROM hashtree.tombstone WHERE pa = $1 AND pb = $2",
	2, {TEXTOID, TEXTOID}
};

static void
need_versions(void)
{
	if (!ht_store_versions_available())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("versions of entries need the extension updated to 1.0"),
				 errhint("Run ALTER EXTENSION hashtree UPDATE.")));
}

/*
 * hashtree.tombstones(prefix_a text, prefix_b text, enable boolean DEFAULT
 *                     true) RETURNS void
 * Make the plain prefix (prefix_a, prefix_b) keep tombstones of its
 * deleted entries (for repair 'newest'), or stop: its tombstones and their
 * entries go, in every partition.  ERROR for a tracked table's prefix (use
 * tombstones(tbl)).  Deletes of the prefix committed by transactions that
 * overlap the call may or may not leave tombstones.  Locks: ROW EXCLUSIVE
 * on hashtree.tombstone_prefix (and, to disable, on hashtree.tombstone,
 * hashtree.entry and hashtree.dirty, the rows of the prefix's tombstones).
 */
PG_FUNCTION_INFO_V1(ht_tombstones_prefix);
Datum
ht_tombstones_prefix(PG_FUNCTION_ARGS)
{
	text	   *pa = ht_prefix_arg(fcinfo, 0, "prefix_a");
	text	   *pb = ht_prefix_arg(fcinfo, 1, "prefix_b");
	bool		enable;
	Datum		v[2] = {PointerGetDatum(pa), PointerGetDatum(pb)};

	HT_ARG_NOT_NULL(2, "enable");
	enable = PG_GETARG_BOOL(2);
	SPI_connect();
	HT_API_BEGIN();
	need_versions();
	ht_track_refuse_prefix(pa, pb);
	if (enable)
	{
		if (!track_commit_timestamp)
			ereport(WARNING,
					(errmsg("track_commit_timestamp is off: entries written without a version have none"),
					 errhint("Repair 'newest' needs track_commit_timestamp = on on every node.")));
		if (ht_exec(&q_enable, v, NULL, 0) > 0)
			ht_store_tomb_prefixes_changed();
	}
	else if (ht_exec(&q_disable, v, NULL, 0) > 0)
	{
		ht_store_tomb_prefixes_changed();
		(void) drop_tombstones(&q_tombs_of_prefix, v, false);
	}
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---- repair 'newest' ---------------------------------------------------------- */

static HtQuery q_versions = {
	"SELECT u.k, e.hash, e.version, e.xmin::text::int8, t.deleted_at"
	" FROM unnest($4::bytea[]) AS u(k)"
	" LEFT JOIN LATERAL (SELECT x.hash, x.version, x.xmin FROM hashtree.entry x"
	"  WHERE x.part = $1 AND x.depth = 2 AND x.pa = $2 AND x.pb = $3"
	"   AND x.seg = hashtree.segment_of(u.k) AND hashtree._kid(x.key) = hashtree._kid(u.k)"
	"   AND x.key = u.k LIMIT 1) e ON true"
	" LEFT JOIN LATERAL (SELECT y.deleted_at FROM hashtree.tombstone y"
	"  WHERE y.part = $1 AND y.pa = $2 AND y.pb = $3 AND hashtree._kid(y.key) = hashtree._kid(u.k)"
	"   AND y.key = u.k LIMIT 1) t ON true"
	" WHERE e.hash IS NOT NULL OR t.deleted_at IS NOT NULL",
	4, {INT4OID, TEXTOID, TEXTOID, BYTEAARRAYOID}
};

/*
 * hashtree._newest_entries(partition int, prefix_a text, prefix_b text,
 *                          keys bytea[])
 *   RETURNS TABLE(key bytea, hash bytea, version timestamptz, dead boolean)
 * For repair 'newest' of plain entries: the entries of those keys with
 * their versions (the caller's, else the commit time of the entry's
 * transaction; NULL when not known), and their tombstones (hash NULL,
 * dead, the tombstone's time).  Keys without either are left out.
 * Locks: ACCESS SHARE on hashtree.entry and hashtree.tombstone.
 */
PG_FUNCTION_INFO_V1(ht_newest_entries);
Datum
ht_newest_entries(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			part;
	text	   *pa;
	text	   *pb;

	HT_ARG_NOT_NULL(0, "partition");
	part = PG_GETARG_INT32(0);
	pa = ht_prefix_arg(fcinfo, 1, "prefix_a");
	pb = ht_prefix_arg(fcinfo, 2, "prefix_b");
	HT_ARG_NOT_NULL(3, "keys");
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	HT_API_BEGIN();
	{
		Datum		v[4];
		uint64		n;

		ht_check_partition(part);
		need_versions();
		v[0] = Int32GetDatum(part);
		v[1] = PointerGetDatum(pa);
		v[2] = PointerGetDatum(pb);
		v[3] = PG_GETARG_DATUM(3);
		n = ht_exec(&q_versions, v, NULL, 0);
		for (uint64 r = 0; r < n; r++)
		{
			Datum		out[4];
			bool		nulls[4] = {false, false, false, false};
			bool		isnull;
			bool		no_tomb;
			Datum		dead_at = ht_col(r, 5, &no_tomb);

			out[0] = ht_col(r, 1, &isnull);
			if (!no_tomb)
			{
				/* a tombstone */
				nulls[1] = true;
				out[1] = (Datum) 0;
				out[2] = dead_at;
				out[3] = BoolGetDatum(true);
			}
			else
			{
				Datum		ver = ht_col(r, 3, &isnull);
				TimestampTz at = 0;

				out[1] = ht_col(r, 2, &no_tomb);
				if (!isnull)
				{
					at = DatumGetTimestampTz(ver);
					nulls[2] = TIMESTAMP_IS_NOBEGIN(at);	/* copied as not known */
				}
				else
				{
					TransactionId xmin = (TransactionId) DatumGetInt64(ht_col(r, 4, &isnull));

					nulls[2] = !ht_tomb_commit_time(xmin, &at);
				}
				out[2] = TimestampTzGetDatum(at);
				out[3] = BoolGetDatum(false);
			}
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
		}
	}
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/* the elements of a bytea[] argument (NULL argument: none), no nulls */
static Datum *
bytea_elems(FunctionCallInfo fcinfo, int n, const char *what, int *count)
{
	Datum	   *d;
	bool	   *nulls;

	*count = 0;
	if (PG_ARGISNULL(n))
		return NULL;
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(n), BYTEAOID, -1, false, TYPALIGN_INT,
					  &d, &nulls, count);
	for (int i = 0; i < *count; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not contain nulls", what)));
	return d;
}

/* the elements of a timestamptz[] argument; nulls as DT_NOBEGIN */
static TimestampTz *
time_elems(FunctionCallInfo fcinfo, int n, int *count)
{
	Datum	   *d;
	bool	   *nulls;
	TimestampTz *t;

	*count = 0;
	if (PG_ARGISNULL(n))
		return NULL;
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(n), TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &d, &nulls, count);
	t = palloc(sizeof(TimestampTz) * Max(*count, 1));
	for (int i = 0; i < *count; i++)
	{
		t[i] = nulls[i] ? DT_NOBEGIN : DatumGetTimestampTz(d[i]);
		if (!nulls[i] && TIMESTAMP_IS_NOEND(t[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a version must not be infinity")));
	}
	return t;
}

static void
check_entry_key(bytea *key)
{
	if (VARSIZE_ANY_EXHDR(key) > HT_MAX_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("key is too long"),
				 errdetail("A key has at most %d bytes; this one has %d.",
						   HT_MAX_KEY_LEN, (int) VARSIZE_ANY_EXHDR(key))));
}

/*
 * hashtree._newest_apply_entries(partition int, prefix_a text, prefix_b
 *     text, keys bytea[], hashes bytea[], versions timestamptz[], deletes
 *     bytea[], deleted_at timestamptz[]) RETURNS bigint
 * Write the winners of repair 'newest' of plain entries that this node
 * lacks: the entries with their versions (NULL: not known, kept as
 * -infinity), and the deletes: where the prefix keeps tombstones here,
 * the tombstone at the winner's time and its entry, else no entry; a NULL
 * time (pull/push: the source has nothing) removes entry and tombstone.
 * All or nothing.  Returns the entries and tombstones written.  Locks: as
 * insert() and delete(), one entry row (and tombstone row) per key.
 */
PG_FUNCTION_INFO_V1(ht_newest_apply_entries);
Datum
ht_newest_apply_entries(PG_FUNCTION_ARGS)
{
	int			part;
	text	   *pa;
	text	   *pb;
	Datum	   *keys;
	Datum	   *hashes;
	Datum	   *dels;
	TimestampTz *vers;
	TimestampTz *ats;
	int			nkeys;
	int			nhashes;
	int			nvers;
	int			ndels;
	int			nats;

	HT_ARG_NOT_NULL(0, "partition");
	part = PG_GETARG_INT32(0);
	pa = ht_prefix_arg(fcinfo, 1, "prefix_a");
	pb = ht_prefix_arg(fcinfo, 2, "prefix_b");
	keys = bytea_elems(fcinfo, 3, "keys", &nkeys);
	hashes = bytea_elems(fcinfo, 4, "hashes", &nhashes);
	vers = time_elems(fcinfo, 5, &nvers);
	dels = bytea_elems(fcinfo, 6, "deletes", &ndels);
	ats = time_elems(fcinfo, 7, &nats);
	if (nkeys != nhashes || nkeys != nvers || ndels != nats)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("keys, hashes and versions (and deletes and their times) must have the same number of elements")));
	for (int i = 0; i < nkeys; i++)
	{
		int			len = VARSIZE_ANY_EXHDR(DatumGetByteaPP(hashes[i]));

		check_entry_key(DatumGetByteaPP(keys[i]));
		if (len < 1 || len > HT_MAX_HASH_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("hash must have 1 to %d bytes, not %d", HT_MAX_HASH_LEN, len)));
	}
	for (int i = 0; i < ndels; i++)
		check_entry_key(DatumGetByteaPP(dels[i]));

	SPI_connect();
	HT_API_BEGIN();
	ht_check_partition(part);
	need_versions();
	ht_track_refuse_prefix(pa, pb);
	for (int i = 0; i < nkeys; i++)
		ht_store_put(part, pa, pb, DatumGetByteaPP(keys[i]), DatumGetByteaPP(hashes[i]),
					 false, &vers[i]);	/* (not known: -infinity) */
	for (int i = 0; i < ndels; i++)
	{
		bytea	   *key = DatumGetByteaPP(dels[i]);

		if (TIMESTAMP_IS_NOBEGIN(ats[i]))
			ht_store_purge(part, pa, pb, key);
		else
			ht_store_delete(part, pa, pb, key, ats[i], ht_tomb_hash(ats[i]));
	}
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64((int64) nkeys + ndels);
}
