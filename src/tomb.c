/*-------------------------------------------------------------------------
 *
 * tomb.c
 *	  Tombstones of tracked tables (two-way repair, DESIGN §20).
 *
 * A table that keeps tombstones (hashtree.tombstones(tbl)) keeps, for a
 * deleted key, a row of hashtree.tombstone (part, pa, pb, key, deleted_at)
 * and the leaf entry (key, T(deleted_at)), T(t) = SHA-256(0x04 || u64 t)
 * [0..16] with t in microseconds since 2000-01-01 UTC: canonical, so that
 * two nodes that deleted a key at the same time have equal trees, and two
 * that did not differ.  The fold writes them (a delete logged by the row
 * trigger with hash '' becomes a tombstone with the delete's commit time),
 * removes them when the key has a row again, and expires them.  A repair
 * ('newest') that deletes a row writes its tombstone with the winner's
 * time in the same transaction: the fold keeps a tombstone written by the
 * delete's own transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/commit_ts.h"
#include "access/transam.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "common.h"
#include "sqlexec.h"
#include "tomb.h"
#include "treemath.h"

bytea *
ht_tomb_hash(TimestampTz t)
{
	uint8		in[9];
	uint8		d[HT_DIGEST_LEN];
	uint64		u = (uint64) t;
	bytea	   *h = palloc(VARHDRSZ + 16);

	in[0] = 0x04;
	for (int i = 0; i < 8; i++)
		in[1 + i] = (uint8) (u >> (56 - 8 * i));
	ht_sha256(in, sizeof(in), NULL, 0, NULL, 0, d);
	SET_VARSIZE(h, VARHDRSZ + 16);
	memcpy(VARDATA(h), d, 16);
	return h;
}

bytea *
ht_tomb_version_hash(const bytea *version)
{
	uint8		tag[2] = {0x05, 0x01};	/* 0x01: a version follows */
	uint8		d[HT_DIGEST_LEN];
	bytea	   *h = palloc(VARHDRSZ + 16);

	if (version != NULL)
		ht_sha256(tag, 2, (const uint8 *) VARDATA_ANY(version), VARSIZE_ANY_EXHDR(version),
				  NULL, 0, d);
	else
		ht_sha256(tag, 1, NULL, 0, NULL, 0, d);
	SET_VARSIZE(h, VARHDRSZ + 16);
	memcpy(VARDATA(h), d, 16);
	return h;
}

bytea *
ht_tomb_entry_hash(bool versioned, TimestampTz at, const bytea *version)
{
	return versioned ? ht_tomb_version_hash(version) : ht_tomb_hash(at);
}

bool
ht_tomb_commit_time(TransactionId xid, TimestampTz *ts)
{
	TimestampTz t;

	if (!track_commit_timestamp || !TransactionIdIsNormal(xid))
		return false;
	if (!TransactionIdGetCommitTsData(xid, &t, NULL))
		return false;
	*ts = t;
	return true;
}

static HtQuery q_enabled = {
	"SELECT tombstones FROM hashtree.tracked_table WHERE schema_name = $1 AND table_name = $2",
	2, {TEXTOID, TEXTOID}
};

/*
 * Does this database have the tables of tombstones?  (Not before the
 * update of the extension to 1.0: the library may be newer.)
 */
bool
ht_tomb_available(void)
{
	Oid			tracked = get_relname_relid("tracked_table", ht_schema_oid());

	return OidIsValid(tracked) && get_attnum(tracked, "tombstones") != InvalidAttrNumber;
}

bool
ht_tomb_enabled(text *pa, text *pb)
{
	Datum		v[2] = {PointerGetDatum(pa), PointerGetDatum(pb)};
	bool		isnull;
	bool		on = false;

	if (!ht_tomb_available())
		return false;
	/* (as the owner: a repair's role on a peer may not read the registry) */
	if (ht_exec_as_owner(&q_enabled, v, NULL, 1) == 1)
		on = DatumGetBool(ht_col(0, 1, &isnull)) && !isnull;
	SPI_freetuptable(SPI_tuptable);
	return on;
}

/*
 * A row version expires with the time of the repair that wrote it (the
 * commit time of its xmin), not with the winner's version: a row copied
 * today keeps its old version for the whole TTL.  Without commit
 * timestamps, row versions are kept.  (The tombstones of plain prefixes
 * that keep them, tracked tables excepted, are expired by entryver.c.)
 */
#define EXPIRE_TOMBSTONES \
	"WITH x AS (DELETE FROM hashtree.tombstone" \
	"  WHERE part = $1 AND deleted_at < pg_catalog.now() - pg_catalog.make_interval(secs => $2)" \
	"   AND NOT EXISTS (SELECT 1 FROM hashtree.tombstone_prefix p" \
	"    WHERE p.prefix_a = pa AND p.prefix_b = pb AND NOT EXISTS (SELECT 1" \
	"     FROM hashtree.tracked_table r WHERE r.schema_name = pa AND r.table_name = pb))" \
	"  RETURNING pa, pb, key)"
#define EXPIRE_LOG \
	" INSERT INTO hashtree.dirty_key (part, seg, pa, pb, key, hash)" \
	" SELECT $1, hashtree.segment_of(x.key), x.pa, x.pb, x.key, pg_catalog.decode('00', 'hex') FROM x"

static HtQuery q_expire = {
	EXPIRE_TOMBSTONES ","
	" v AS (DELETE FROM hashtree.row_version"
	"  WHERE part = $1 AND pg_catalog.pg_xact_commit_timestamp(xmin)"
	"   < pg_catalog.now() - pg_catalog.make_interval(secs => $2))"
	EXPIRE_LOG,
	2, {INT4OID, FLOAT8OID}
};

static HtQuery q_expire_no_ts = {
	EXPIRE_TOMBSTONES EXPIRE_LOG,
	2, {INT4OID, FLOAT8OID}
};

uint64
ht_tomb_expire(int part)
{
	Datum		v[2];

	if (ht_guc_tombstone_ttl <= 0 || !ht_tomb_available())
		return 0;
	v[0] = Int32GetDatum(part);
	v[1] = Float8GetDatum((double) ht_guc_tombstone_ttl);
	return ht_exec(track_commit_timestamp ? &q_expire : &q_expire_no_ts, v, NULL, 0);
}

/*
 * The tombstones of deleted keys: the time logged, unless the tombstone
 * there was written by the delete's own transaction (a repair: its time
 * is the winner's).  Unknown times (track_commit_timestamp off) are the
 * fold's.
 */
static HtQuery q_put = {
	"INSERT INTO hashtree.tombstone AS t (part, pa, pb, key, deleted_at, version)"
	" SELECT $1, $2, $3, u.key,"
	"  CASE WHEN e.xmin::text::int8 = u.x THEN e.deleted_at"
	"   ELSE coalesce(u.at, pg_catalog.now()) END,"
	"  CASE WHEN e.xmin::text::int8 = u.x THEN e.version ELSE u.v END"
	" FROM unnest($4::bytea[], $5::timestamptz[], $6::int8[], $7::bytea[]) AS u(key, at, x, v)"
	" LEFT JOIN hashtree.tombstone e ON e.part = $1 AND e.pa = $2 AND e.pb = $3"
	"  AND hashtree._kid(e.key) = hashtree._kid(u.key)"
	" ON CONFLICT (part, pa, pb, hashtree._kid(key))"
	" DO UPDATE SET deleted_at = EXCLUDED.deleted_at, version = EXCLUDED.version"
	" RETURNING t.key, t.deleted_at, t.version",
	7, {INT4OID, TEXTOID, TEXTOID, BYTEAARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID, BYTEAARRAYOID}
};

static HtQuery q_any = {
	"SELECT 1 FROM hashtree.tombstone WHERE part = $1 AND pa = $2 AND pb = $3 LIMIT 1",
	3, {INT4OID, TEXTOID, TEXTOID}
};

static HtQuery q_drop = {
	"DELETE FROM hashtree.tombstone t USING unnest($4::bytea[]) AS u(k)"
	" WHERE t.part = $1 AND t.pa = $2 AND t.pb = $3 AND hashtree._kid(t.key) = hashtree._kid(u.k)",
	4, {INT4OID, TEXTOID, TEXTOID, BYTEAARRAYOID}
};

/* keys sorted through an index array */
static bytea **sort_keys;

static int
idx_cmp(const void *a, const void *b)
{
	return ht_bytea_cmp(sort_keys[*(const int *) a], sort_keys[*(const int *) b]);
}

/* position of key among keys (order sorted by idx_cmp), -1 if absent */
static int
find_key(bytea **keys, const int *order, int n, const bytea *key)
{
	int			lo = 0;
	int			hi = n - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;
		int			c = ht_bytea_cmp(keys[order[mid]], key);

		if (c == 0)
			return order[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

static int *
sorted_order(bytea **keys, int n)
{
	int		   *order = palloc(sizeof(int) * Max(n, 1));

	for (int i = 0; i < n; i++)
		order[i] = i;
	sort_keys = keys;
	qsort(order, n, sizeof(int), idx_cmp);
	return order;
}

void
ht_tomb_fold(int part, text *pa, text *pb, bool versioned, bytea **keys,
			 const HtLoggedDelete *dels, int nkeys, HtPackEntry *ch, int nch)
{
	int		   *korder = sorted_order(keys, nkeys);
	Datum	   *dkey = palloc(sizeof(Datum) * Max(nch, 1));
	Datum	   *dat = palloc(sizeof(Datum) * Max(nch, 1));
	bool	   *datnull = palloc(sizeof(bool) * Max(nch, 1));
	Datum	   *dx = palloc(sizeof(Datum) * Max(nch, 1));
	Datum	   *dv = palloc(sizeof(Datum) * Max(nch, 1));
	bool	   *dvnull = palloc(sizeof(bool) * Max(nch, 1));
	bytea	  **dkeys = palloc(sizeof(bytea *) * Max(nch, 1));
	int		   *dch = palloc(sizeof(int) * Max(nch, 1));
	Datum	   *live = palloc(sizeof(Datum) * Max(nch, 1));
	int			ndead = 0;
	int			nlive = 0;
	Datum		v[7];

	for (int i = 0; i < nch; i++)
	{
		int			k;

		if (ch[i].hash != NULL)
		{
			live[nlive++] = PointerGetDatum(ch[i].key);
			continue;
		}
		k = find_key(keys, korder, nkeys, ch[i].key);
		if (k < 0 || !TransactionIdIsValid(dels[k].xid))
			continue;			/* gone without a delete (an expiry): no tombstone */
		dkeys[ndead] = ch[i].key;
		dch[ndead] = i;
		dkey[ndead] = PointerGetDatum(ch[i].key);
		dat[ndead] = TimestampTzGetDatum(dels[k].at);
		datnull[ndead] = (dels[k].at == DT_NOBEGIN);
		dx[ndead] = Int64GetDatum((int64) dels[k].xid);
		dv[ndead] = PointerGetDatum(dels[k].version);
		dvnull[ndead++] = (dels[k].version == NULL);
	}
	v[0] = Int32GetDatum(part);
	v[1] = PointerGetDatum(pa);
	v[2] = PointerGetDatum(pb);
	if (ndead > 0)
	{
		int			dims[1] = {ndead};
		int			lbs[1] = {1};
		int		   *dorder = sorted_order(dkeys, ndead);
		uint64		n;

		v[3] = PointerGetDatum(ht_array_bytea(dkey, ndead));
		v[4] = PointerGetDatum(construct_md_array(dat, datnull, 1, dims, lbs, TIMESTAMPTZOID,
												  8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		v[5] = PointerGetDatum(construct_array(dx, ndead, INT8OID, 8, FLOAT8PASSBYVAL,
											   TYPALIGN_DOUBLE));
		v[6] = PointerGetDatum(construct_md_array(dv, dvnull, 1, dims, lbs, BYTEAOID,
												  -1, false, TYPALIGN_INT));
		n = ht_exec(&q_put, v, NULL, 0);
		for (uint64 r = 0; r < n; r++)
		{
			bool		isnull;
			bytea	   *key = DatumGetByteaPP(ht_col(r, 1, &isnull));
			TimestampTz at = DatumGetTimestampTz(ht_col(r, 2, &isnull));
			Datum		ver = ht_col(r, 3, &isnull);
			int			d = find_key(dkeys, dorder, ndead, key);

			if (d < 0)
				continue;
			if (at == DT_NOBEGIN)
				live[nlive++] = PointerGetDatum(dkeys[d]);	/* purged: none */
			else
				ch[dch[d]].hash = ht_tomb_entry_hash(versioned, at,
													 isnull ? NULL : DatumGetByteaPP(ver));
		}
		SPI_freetuptable(SPI_tuptable);
	}
	if (nlive > 0)
	{
		bool		any = ht_exec(&q_any, v, NULL, 1) > 0;

		SPI_freetuptable(SPI_tuptable);
		if (any)
		{
			v[3] = PointerGetDatum(ht_array_bytea(live, nlive));
			ht_exec(&q_drop, v, NULL, 0);
		}
	}
}
