/*-------------------------------------------------------------------------
 *
 * api.c
 *	  SQL entry points of the partition hashtree API (SPEC section 1.2).
 *
 * These functions validate their arguments (NULLs, ranges, lengths: an
 * ERROR with a proper SQLSTATE, before anything is written), route a call
 * naming a peer to that peer, and otherwise call the storage, lock and
 * compare modules inside one SPI connection.  The SQL functions of the
 * extension's own statements (_kid and the sum aggregates) are in
 * aggregates.c, the guard trigger in guard.c, the server side of the
 * compare (_nodes, _entries) in compare.c, the tracked tables' functions
 * in track.c, ddl.c and rowio.c, the fragmented tables' in frag.c and
 * fragops.c, exchange() in exchange.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/timestamp.h"

#include "common.h"
#include "compare.h"
#include "fragremote.h"
#include "pack.h"
#include "partlock.h"
#include "partops.h"
#include "remote.h"
#include "sqlexec.h"
#include "store.h"
#include "tomb.h"
#include "track.h"
#include "treemath.h"

/* ---- argument checks ----------------------------------------------------- */

static bytea *
check_key(bytea *key)
{
	int			len = VARSIZE_ANY_EXHDR(key);

	if (len > HT_MAX_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("key is too long"),
				 errdetail("A key has at most %d bytes; this one has %d.",
						   HT_MAX_KEY_LEN, len)));
	return key;
}

/* a key given as bytea, or as text (converted to UTF-8) */
static bytea *
key_arg(FunctionCallInfo fcinfo, int n, bool is_text)
{
	bytea	   *key;
	int			len;

	HT_ARG_NOT_NULL(n, "key");
	if (is_text)
	{
		text	   *t = PG_GETARG_TEXT_PP(n);
		char	   *s;

		len = VARSIZE_ANY_EXHDR(t);
		s = pg_server_to_any(VARDATA_ANY(t), len, PG_UTF8);
		if (s != VARDATA_ANY(t))
			len = strlen(s);
		key = palloc(VARHDRSZ + len);
		SET_VARSIZE(key, VARHDRSZ + len);
		memcpy(VARDATA(key), s, len);
	}
	else
		key = PG_GETARG_BYTEA_PP(n);
	return check_key(key);
}

static bytea *
check_hash(bytea *hash)
{
	int			len = VARSIZE_ANY_EXHDR(hash);

	if (len < 1 || len > HT_MAX_HASH_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("hash must have 1 to %d bytes, not %d", HT_MAX_HASH_LEN, len)));
	return hash;
}

static bytea *
hash_arg(FunctionCallInfo fcinfo, int n)
{
	HT_ARG_NOT_NULL(n, "hash");
	return check_hash(PG_GETARG_BYTEA_PP(n));
}

static int
partition_arg(FunctionCallInfo fcinfo, int n)
{
	HT_ARG_NOT_NULL(n, "partition");
	return PG_GETARG_INT32(n);
}

static char *
node_arg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/* a tree named by a prefixes array: '{}' root, '{a}', '{a,b}' */
typedef struct TreeName
{
	int			depth;
	text	   *pa;
	text	   *pb;
	ArrayType  *array;
} TreeName;

static void
prefixes_arg(FunctionCallInfo fcinfo, int n, TreeName *tn)
{
	ArrayType  *a;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;

	HT_ARG_NOT_NULL(n, "prefixes");
	a = PG_GETARG_ARRAYTYPE_P(n);
	if (ARR_NDIM(a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prefixes must be a one-dimensional array")));
	deconstruct_array(a, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	if (nelems > 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prefixes must have 0, 1 or 2 elements, not %d", nelems),
				 errdetail("'{}' names the root tree, '{a}' the tree of prefix_a a, "
						   "'{a,b}' the tree of the full prefix (a, b).")));
	for (int i = 0; i < nelems; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("prefixes must not contain nulls")));
		if (VARSIZE_ANY_EXHDR(DatumGetTextPP(elems[i])) > HT_MAX_PREFIX_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("prefix is too long")));
	}
	tn->depth = nelems;
	tn->pa = nelems >= 1 ? DatumGetTextPP(elems[0]) : cstring_to_text("");
	tn->pb = nelems >= 2 ? DatumGetTextPP(elems[1]) : cstring_to_text("");
	tn->array = a;
}

/* ---- creating the extension ---------------------------------------------- */

/*
 * hashtree._create_partitions() RETURNS int
 * Run once by the extension script (then dropped): inserts one built row per
 * partition (GUC hashtree.partitions) into hashtree.partition; returns the
 * count.  Locks: ROW EXCLUSIVE on hashtree.partition.
 */
PG_FUNCTION_INFO_V1(ht_create_partitions);
Datum
ht_create_partitions(PG_FUNCTION_ARGS)
{
	int			n;

	SPI_connect();
	n = ht_part_create_all(ht_guc_partitions);
	SPI_finish();
	PG_RETURN_INT32(n);
}

/* ---- pure and informational functions ----------------------------------- */

/*
 * hashtree.segment_of(key bytea, segments int DEFAULT 1048576) RETURNS int
 * The segment of a key among segments (a positive power of two, else
 * ERROR): the low bits of its 64-bit key hash.  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_segment_of_sql);
Datum
ht_segment_of_sql(PG_FUNCTION_ARGS)
{
	bytea	   *key = PG_GETARG_BYTEA_PP(0);
	int32		segments = PG_GETARG_INT32(1);

	if (segments < 1 || (segments & (segments - 1)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("segments must be a positive power of two, not %d", segments)));
	PG_RETURN_INT32((int32) (ht_key_hash64(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)) &
							 (uint64) (segments - 1)));
}

/*
 * hashtree.name(partition int) RETURNS text
 * "hashtree_partition_<n>" for an existing partition, else ERROR.  Locks:
 * ACCESS SHARE on hashtree.partition (first call in a backend only: the
 * partition count is cached).
 */
PG_FUNCTION_INFO_V1(ht_name);
Datum
ht_name(PG_FUNCTION_ARGS)
{
	int			part = partition_arg(fcinfo, 0);

	SPI_connect();
	ht_check_partition(part);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("hashtree_partition_%d", part)));
}

/*
 * hashtree.node_name() RETURNS text
 * This node's name: the setting hashtree.node_name, else one derived from
 * the system identifier, the port and the database.  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_node_name_sql);
Datum
ht_node_name_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(ht_node_name()));
}

/* the partition of a key: partition_of() (needs SPI) */
static int
route(text *pa, text *pb, bytea *key)
{
	char	   *a = pg_server_to_any(VARDATA_ANY(pa), VARSIZE_ANY_EXHDR(pa), PG_UTF8);
	char	   *b = pg_server_to_any(VARDATA_ANY(pb), VARSIZE_ANY_EXHDR(pb), PG_UTF8);

	return ht_partition_for(a, a == VARDATA_ANY(pa) ? VARSIZE_ANY_EXHDR(pa) : strlen(a),
							b, b == VARDATA_ANY(pb) ? VARSIZE_ANY_EXHDR(pb) : strlen(b),
							VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
							ht_num_partitions());
}

static Datum
partition_of_common(FunctionCallInfo fcinfo, bool key_is_text)
{
	text	   *pa = ht_prefix_arg(fcinfo, 0, "prefix_a");
	text	   *pb = ht_prefix_arg(fcinfo, 1, "prefix_b");
	bytea	   *key = key_arg(fcinfo, 2, key_is_text);
	int			part;

	SPI_connect();
	part = route(pa, pb, key);
	SPI_finish();
	PG_RETURN_INT32(part);
}

/*
 * hashtree.partition_of(prefix_a text, prefix_b text, key bytea) RETURNS int
 * The partition of a key, the same on every node with the same number of
 * partitions.  Locks: ACCESS SHARE on hashtree.partition (first call in a
 * backend only).
 */
PG_FUNCTION_INFO_V1(ht_partition_of);
Datum
ht_partition_of(PG_FUNCTION_ARGS)
{
	return partition_of_common(fcinfo, false);
}

/*
 * hashtree.partition_of(prefix_a text, prefix_b text, key text) RETURNS int
 * As partition_of(..., key bytea), the key taken as its UTF-8 bytes.
 * Locks: as that one.
 */
PG_FUNCTION_INFO_V1(ht_partition_of_text);
Datum
ht_partition_of_text(PG_FUNCTION_ARGS)
{
	return partition_of_common(fcinfo, true);
}

/*
 * hashtree._hello(OUT version text, OUT partitions int, OUT node text)
 * What a peer learns about this node when it connects: the extension
 * version, the number of partitions and the node name.  Locks: ACCESS SHARE
 * on hashtree.partition (first call in a backend only).
 */
PG_FUNCTION_INFO_V1(ht_hello);
Datum
ht_hello(PG_FUNCTION_ARGS)
{
	TupleDesc	td;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	int			n;

	if (get_call_result_type(fcinfo, NULL, &td) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "hashtree: return type must be a row type");
	SPI_connect();
	n = ht_num_partitions();
	SPI_finish();
	values[0] = CStringGetTextDatum(HT_EXTENSION_VERSION);
	values[1] = Int32GetDatum(n);
	values[2] = CStringGetTextDatum(ht_node_name());
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(td), values, nulls)));
}

/*
 * hashtree._privileged() RETURNS boolean
 * True for superusers and members of the extension owner's role (the view
 * peers shows conninfo to them only).  Locks: ACCESS SHARE on pg_extension.
 */
PG_FUNCTION_INFO_V1(ht_privileged);
Datum
ht_privileged(PG_FUNCTION_ARGS)
{
	Oid			owner;

	if (superuser())
		PG_RETURN_BOOL(true);
	owner = ht_extension_owner();
	PG_RETURN_BOOL(OidIsValid(owner) && has_privs_of_role(GetUserId(), owner));
}

/*
 * hashtree._lock_owner(pid int, start timestamptz) RETURNS int
 * The live owner of a partition lock recorded as (pid, start): pid while
 * that backend runs with that start time, else NULL (read from the backend
 * status array).  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_lock_owner);
Datum
ht_lock_owner(PG_FUNCTION_ARGS)
{
	int			pid;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	pid = ht_live_owner(PG_GETARG_INT32(0), PG_GETARG_TIMESTAMPTZ(1));
	if (pid == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(pid);
}

/*
 * hashtree._next_expiry(built_at timestamptz, jitter float8)
 *   RETURNS timestamptz
 * When a partition's trees expire: built_at + hashtree.tree_ttl * (0.75 +
 * 0.25 * jitter).  Locks: none.
 */
PG_FUNCTION_INFO_V1(ht_next_expiry);
Datum
ht_next_expiry(PG_FUNCTION_ARGS)
{
	TimestampTz built_at;
	double		jitter;
	int64		ms;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	built_at = PG_GETARG_TIMESTAMPTZ(0);
	jitter = PG_GETARG_FLOAT8(1);
	ms = (int64) ((double) ht_guc_tree_ttl * 1000.0 * (0.75 + 0.25 * jitter));
	PG_RETURN_TIMESTAMPTZ(TimestampTzPlusMilliseconds(built_at, ms));
}

/* ---- entries ------------------------------------------------------------- */

/*
 * Write (hash not NULL) or delete an entry in a partition, or (routed) in
 * the one partition_of() gives.  version: the caller's, NULL for the
 * commit time (an insert) or the time of the call (a delete's tombstone).
 */
static void
write_entry(bool routed, int part, text *pa, text *pb, bytea *key,
			bytea *hash, bool if_missing, const TimestampTz *version)
{
	SPI_connect();
	HT_API_BEGIN();
	{
		int			target = part;

		if (routed)
			target = route(pa, pb, key);
		else
			ht_check_partition(target);
		ht_track_refuse_prefix(pa, pb);
		if (hash != NULL)
			ht_store_put(target, pa, pb, key, hash, if_missing, version);
		else
		{
			TimestampTz at = version ? *version : GetCurrentTimestamp();

			ht_store_delete(target, pa, pb, key, at, ht_tomb_hash(at));
		}
	}
	HT_API_END();
	SPI_finish();
}

/*
 * The caller's version of a write (argument n, if the overload has it):
 * NULL when absent or null (the commit time, or the time of a delete);
 * else finite (a version orders writes and names a tombstone)
 */
static TimestampTz *
version_arg(FunctionCallInfo fcinfo, int n)
{
	TimestampTz *v;

	if (PG_NARGS() <= n || PG_ARGISNULL(n))
		return NULL;
	v = palloc(sizeof(TimestampTz));
	*v = PG_GETARG_TIMESTAMPTZ(n);
	if (TIMESTAMP_NOT_FINITE(*v))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("version must be a finite time")));
	return v;
}

static Datum
insert_common(FunctionCallInfo fcinfo, bool key_is_text)
{
	text	   *pa = ht_prefix_arg(fcinfo, 0, "prefix_a");
	text	   *pb = ht_prefix_arg(fcinfo, 1, "prefix_b");
	bytea	   *key = key_arg(fcinfo, 2, key_is_text);
	bytea	   *hash = hash_arg(fcinfo, 3);
	TimestampTz *version = version_arg(fcinfo, 5);

	HT_ARG_NOT_NULL(4, "if_missing");
	write_entry(true, 0, pa, pb, key, hash, PG_GETARG_BOOL(4), version);
	PG_RETURN_VOID();
}

static Datum
insert_partition_common(FunctionCallInfo fcinfo, bool key_is_text)
{
	int			part = partition_arg(fcinfo, 0);
	text	   *pa = ht_prefix_arg(fcinfo, 1, "prefix_a");
	text	   *pb = ht_prefix_arg(fcinfo, 2, "prefix_b");
	bytea	   *key = key_arg(fcinfo, 3, key_is_text);
	bytea	   *hash = hash_arg(fcinfo, 4);
	TimestampTz *version = version_arg(fcinfo, 6);

	HT_ARG_NOT_NULL(5, "if_missing");
	write_entry(false, part, pa, pb, key, hash, PG_GETARG_BOOL(5), version);
	PG_RETURN_VOID();
}

/*
 * hashtree.insert(prefix_a text, prefix_b text, key bytea, hash bytea,
 *                 if_missing boolean DEFAULT false) RETURNS void
 * hashtree.insert(prefix_a text, prefix_b text, key bytea, hash bytea,
 *                 if_missing boolean, version timestamptz) RETURNS void
 * Write an entry (if_missing: only when the key is absent, or deleted: a
 * tombstone) in the partition partition_of() gives and log its segment
 * dirty; ERROR for a tracked table's prefix.  Its version (repair
 * 'newest', DESIGN §20) is the caller's (finite; NULL or the overload
 * without it: the commit time of the writing transaction).  In a prefix
 * that keeps tombstones the key's tombstone goes, and the entry is written
 * even when unchanged.  Locks: ROW EXCLUSIVE on hashtree.entry,
 * hashtree.dirty (and hashtree.tombstone), the entry's row (and its
 * tombstone's, first); never waits for a partition lock or an update.
 */
PG_FUNCTION_INFO_V1(ht_insert);
Datum
ht_insert(PG_FUNCTION_ARGS)
{
	return insert_common(fcinfo, false);
}

/*
 * hashtree.insert(prefix_a text, prefix_b text, key text, hash bytea,
 *                 if_missing boolean DEFAULT false) RETURNS void
 * hashtree.insert(prefix_a text, prefix_b text, key text, hash bytea,
 *                 if_missing boolean, version timestamptz) RETURNS void
 * As insert(..., key bytea, ...), the key taken as its UTF-8 bytes.
 * Locks: as that one.
 */
PG_FUNCTION_INFO_V1(ht_insert_text);
Datum
ht_insert_text(PG_FUNCTION_ARGS)
{
	return insert_common(fcinfo, true);
}

/*
 * hashtree.insert(partition int, prefix_a text, prefix_b text, key bytea,
 *                 hash bytea, if_missing boolean) RETURNS void
 * hashtree.insert(partition int, prefix_a text, prefix_b text, key bytea,
 *                 hash bytea, if_missing boolean, version timestamptz)
 * As insert(prefix_a, prefix_b, key bytea, ...), in the partition given
 * (not checked against partition_of()).  Locks: as that one.
 */
PG_FUNCTION_INFO_V1(ht_insert_partition);
Datum
ht_insert_partition(PG_FUNCTION_ARGS)
{
	return insert_partition_common(fcinfo, false);
}

/*
 * hashtree.insert(partition int, prefix_a text, prefix_b text, key text,
 *                 hash bytea, if_missing boolean) RETURNS void
 * hashtree.insert(partition int, prefix_a text, prefix_b text, key text,
 *                 hash bytea, if_missing boolean, version timestamptz)
 * As insert(partition, ..., key bytea, ...), the key taken as its UTF-8
 * bytes.  Locks: as that one.
 */
PG_FUNCTION_INFO_V1(ht_insert_partition_text);
Datum
ht_insert_partition_text(PG_FUNCTION_ARGS)
{
	return insert_partition_common(fcinfo, true);
}

static Datum
delete_common(FunctionCallInfo fcinfo, bool key_is_text)
{
	text	   *pa = ht_prefix_arg(fcinfo, 0, "prefix_a");
	text	   *pb = ht_prefix_arg(fcinfo, 1, "prefix_b");
	bytea	   *key = key_arg(fcinfo, 2, key_is_text);
	TimestampTz *version = version_arg(fcinfo, 3);

	write_entry(true, 0, pa, pb, key, NULL, false, version);
	PG_RETURN_VOID();
}

static Datum
delete_partition_common(FunctionCallInfo fcinfo, bool key_is_text)
{
	int			part = partition_arg(fcinfo, 0);
	text	   *pa = ht_prefix_arg(fcinfo, 1, "prefix_a");
	text	   *pb = ht_prefix_arg(fcinfo, 2, "prefix_b");
	bytea	   *key = key_arg(fcinfo, 3, key_is_text);
	TimestampTz *version = version_arg(fcinfo, 4);

	write_entry(false, part, pa, pb, key, NULL, false, version);
	PG_RETURN_VOID();
}

/*
 * hashtree.delete(prefix_a text, prefix_b text, key bytea) RETURNS void
 * hashtree.delete(prefix_a text, prefix_b text, key bytea,
 *                 version timestamptz) RETURNS void
 * Remove an entry from the partition partition_of() gives and log its
 * segment dirty (nothing when absent); ERROR for a tracked table's prefix.
 * In a prefix that keeps tombstones (DESIGN §20), the entry becomes the
 * tombstone's (key, T(t)) and hashtree.tombstone has (key, t), also when
 * the key had no entry; t is the caller's version (finite; NULL or the
 * overload without it: the time of the call).  Locks: ROW EXCLUSIVE on
 * hashtree.entry and hashtree.dirty (and hashtree.tombstone), the entry's
 * row (and its tombstone's, first); never waits for a partition lock or
 * an update.
 */
PG_FUNCTION_INFO_V1(ht_delete);
Datum
ht_delete(PG_FUNCTION_ARGS)
{
	return delete_common(fcinfo, false);
}

/*
 * hashtree.delete(prefix_a text, prefix_b text, key text) RETURNS void
 * hashtree.delete(prefix_a text, prefix_b text, key text,
 *                 version timestamptz) RETURNS void
 * As delete(..., key bytea), the key taken as its UTF-8 bytes.  Locks: as
 * that one.
 */
PG_FUNCTION_INFO_V1(ht_delete_text);
Datum
ht_delete_text(PG_FUNCTION_ARGS)
{
	return delete_common(fcinfo, true);
}

/*
 * hashtree.delete(partition int, prefix_a text, prefix_b text, key bytea)
 *   RETURNS void
 * hashtree.delete(partition int, prefix_a text, prefix_b text, key bytea,
 *                 version timestamptz) RETURNS void
 * As delete(prefix_a, prefix_b, key bytea), in the partition given (not
 * checked against partition_of()).  Locks: as that one.
 */
PG_FUNCTION_INFO_V1(ht_delete_partition);
Datum
ht_delete_partition(PG_FUNCTION_ARGS)
{
	return delete_partition_common(fcinfo, false);
}

/*
 * hashtree.delete(partition int, prefix_a text, prefix_b text, key text)
 *   RETURNS void
 * hashtree.delete(partition int, prefix_a text, prefix_b text, key text,
 *                 version timestamptz) RETURNS void
 * As delete(partition, ..., key bytea), the key taken as its UTF-8 bytes.
 * Locks: as that one.
 */
PG_FUNCTION_INFO_V1(ht_delete_partition_text);
Datum
ht_delete_partition_text(PG_FUNCTION_ARGS)
{
	return delete_partition_common(fcinfo, true);
}

/*
 * hashtree._apply_entries(partition int, prefix_a text, prefix_b text,
 *                         keys bytea[], hashes bytea[]) RETURNS bigint
 * The repair of plain entries: write each key with its hash (its version:
 * the repair's commit time), delete it and its tombstone where the hash
 * is NULL.  All or nothing (one statement).  Returns the
 * count.  Locks: as insert() and delete(), one entry row per key.
 */
PG_FUNCTION_INFO_V1(ht_apply_entries);
Datum
ht_apply_entries(PG_FUNCTION_ARGS)
{
	int			part = partition_arg(fcinfo, 0);
	text	   *pa = ht_prefix_arg(fcinfo, 1, "prefix_a");
	text	   *pb = ht_prefix_arg(fcinfo, 2, "prefix_b");
	Datum	   *keys;
	bool	   *knulls;
	Datum	   *hashes;
	bool	   *hnulls;
	int			nkeys;
	int			nhashes;

	HT_ARG_NOT_NULL(3, "keys");
	HT_ARG_NOT_NULL(4, "hashes");
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(3), BYTEAOID, -1, false, TYPALIGN_INT,
					  &keys, &knulls, &nkeys);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(4), BYTEAOID, -1, false, TYPALIGN_INT,
					  &hashes, &hnulls, &nhashes);
	if (nkeys != nhashes)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("keys and hashes must have the same length (%d and %d)",
						nkeys, nhashes)));
	ht_track_refuse_prefix(pa, pb);
	for (int i = 0; i < nkeys; i++)
	{
		if (knulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("keys must not contain nulls")));
		(void) check_key(DatumGetByteaPP(keys[i]));
		if (!hnulls[i])
			(void) check_hash(DatumGetByteaPP(hashes[i]));
	}

	SPI_connect();
	HT_API_BEGIN();
	ht_check_partition(part);
	for (int i = 0; i < nkeys; i++)
	{
		if (hnulls[i])
			ht_store_purge(part, pa, pb, DatumGetByteaPP(keys[i]));
		else
			ht_store_put(part, pa, pb, DatumGetByteaPP(keys[i]),
						 DatumGetByteaPP(hashes[i]), false, NULL);
	}
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(nkeys);
}

static HtQuery q_prefix_keys = {
	"SELECT key FROM hashtree.leaf_entry WHERE part = $1 AND pa = $2 AND pb = $3",
	3, {INT4OID, TEXTOID, TEXTOID}
};

/*
 * hashtree._drop_entries(partition int, prefix_a text, prefix_b text)
 *   RETURNS bigint
 * The repair of a missing prefix: delete its entries (and tombstones) in
 * the partition; returns the count.  Locks: as delete(), one entry row per key.
 */
PG_FUNCTION_INFO_V1(ht_drop_entries);
Datum
ht_drop_entries(PG_FUNCTION_ARGS)
{
	int			part = partition_arg(fcinfo, 0);
	text	   *pa = ht_prefix_arg(fcinfo, 1, "prefix_a");
	text	   *pb = ht_prefix_arg(fcinfo, 2, "prefix_b");
	Datum		v[3];
	uint64		n;
	bytea	  **keys;

	SPI_connect();
	HT_API_BEGIN();
	ht_check_partition(part);
	ht_track_refuse_prefix(pa, pb);
	v[0] = Int32GetDatum(part);
	v[1] = PointerGetDatum(pa);
	v[2] = PointerGetDatum(pb);
	n = ht_exec(&q_prefix_keys, v, NULL, 0);
	keys = palloc(sizeof(bytea *) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		keys[i] = DatumGetByteaPCopy(ht_col(i, 1, &isnull));
	}
	for (uint64 i = 0; i < n; i++)
		ht_store_purge(part, pa, pb, keys[i]);
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64((int64) n);
}

/* ---- reading trees ------------------------------------------------------- */

static bytea *
top_of(int part, int depth, text *pa, text *pb)
{
	MemoryContext outer = CurrentMemoryContext;
	bytea	   *volatile result = NULL;	/* set inside PG_TRY */

	SPI_connect();
	HT_API_BEGIN();
	{
		bytea	   *h;

		ht_check_partition(part);
		h = ht_store_top(part, depth, pa, pb);
		if (h != NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(outer);

			result = DatumGetByteaPCopy(PointerGetDatum(h));
			MemoryContextSwitchTo(old);
		}
	}
	HT_API_END();
	SPI_finish();
	return result;
}

/*
 * hashtree.prefix_hash(partition int, prefix_a text,
 *                      prefix_b text DEFAULT NULL) RETURNS bytea
 * Top hash, as of the last update, of the tree of prefix_a (prefix_b NULL)
 * or of (prefix_a, prefix_b); NULL when empty or never updated.  Locks:
 * ACCESS SHARE on hashtree.node.
 */
PG_FUNCTION_INFO_V1(ht_prefix_hash);
Datum
ht_prefix_hash(PG_FUNCTION_ARGS)
{
	int			part = partition_arg(fcinfo, 0);
	text	   *pa = ht_prefix_arg(fcinfo, 1, "prefix_a");
	bytea	   *h;

	if (PG_ARGISNULL(2))
		h = top_of(part, HT_DEPTH_PREFIX, pa, cstring_to_text(""));
	else
		h = top_of(part, HT_DEPTH_LEAF, pa, ht_prefix_arg(fcinfo, 2, "prefix_b"));
	if (h == NULL)
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(h);
}

/*
 * hashtree.top_hash(partition int) RETURNS bytea
 * Top hash of a partition's root tree as of the last update; NULL when
 * empty or never updated.  Locks: ACCESS SHARE on hashtree.node.
 */
PG_FUNCTION_INFO_V1(ht_top_hash);
Datum
ht_top_hash(PG_FUNCTION_ARGS)
{
	int			part = partition_arg(fcinfo, 0);
	text	   *empty = cstring_to_text("");
	bytea	   *h = top_of(part, HT_DEPTH_ROOT, empty, empty);

	if (h == NULL)
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(h);
}

/* text form of a prefixes array, for a statement sent to a peer */
static char *
array_text(ArrayType *a)
{
	return OidOutputFunctionCall(F_ARRAY_OUT, PointerGetDatum(a));
}

/* copy a peer's binary (int8|bytea, bytea) rows into the tuplestore */
static void
put_remote_rows(ReturnSetInfo *rsinfo, HtRemoteResult *res, bool first_int8)
{
	for (int r = 0; r < res->nrows; r++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		if (first_int8)
			values[0] = Int64GetDatum(ht_remote_int8(res, r, 0));
		else
			values[0] = PointerGetDatum(ht_remote_bytea(res, r, 0));
		values[1] = PointerGetDatum(ht_remote_bytea(res, r, 1));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

/*
 * hashtree.get_bucket(node text, partition int, prefixes text[], level int,
 *                     bucket bigint) RETURNS TABLE(child bigint, hash bytea)
 * The stored children of one bucket of the tree named by prefixes ('{}',
 * '{a}' or '{a,b}'), read here (node NULL or this node) or on the peer
 * node.  Locks: ACCESS SHARE on hashtree.node of the node read.
 */
PG_FUNCTION_INFO_V1(ht_get_bucket);
Datum
ht_get_bucket(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *node = node_arg(fcinfo, 0);
	int			part = partition_arg(fcinfo, 1);
	TreeName	tn;
	int			level;
	int64		bucket;

	prefixes_arg(fcinfo, 2, &tn);
	HT_ARG_NOT_NULL(3, "level");
	HT_ARG_NOT_NULL(4, "bucket");
	level = PG_GETARG_INT32(3);
	bucket = PG_GETARG_INT64(4);
	ht_check_level_bucket(tn.depth, level, bucket);

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	if (ht_node_is_local(node))
	{
		Datum		pa = PointerGetDatum(tn.pa);
		Datum		pb = PointerGetDatum(tn.pb);
		HtNodeRow  *rows;
		int			n;

		int64		first = bucket * HT_WIDTH(tn.depth);

		ht_check_partition(part);
		n = ht_store_nodes(part, tn.depth, 1, &pa, &pb, level, &first, HT_WIDTH(tn.depth), 0,
						   &rows);
		for (int r = 0; r < n; r++)
		{
			Datum		values[2];
			bool		nulls[2] = {false, false};

			values[0] = Int64GetDatum(rows[r].child);
			values[1] = PointerGetDatum(rows[r].hash);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	else
	{
		HtPeer	   *peer = ht_peer_get(node);
		const char *params[4];

		params[0] = psprintf("%d", part);
		params[1] = array_text(tn.array);
		params[2] = psprintf("%d", level);
		params[3] = psprintf(INT64_FORMAT, bucket);
		put_remote_rows(rsinfo,
						ht_peer_query(peer,
									  "SELECT child, hash FROM hashtree.get_bucket(NULL,"
									  " $1::int4, $2::text[], $3::int4, $4::int8)",
									  4, params, true, 2),
						true);
	}
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/*
 * hashtree._pack_seg(partition int, prefix_a text, prefix_b text, seg int4)
 *   RETURNS TABLE(key bytea, hash bytea)
 * The packed entries of one segment of leaf tree (prefix_a, prefix_b),
 * found by pack.c's lookup (ht_pack_segments: the tree's span, then the
 * pack at lo = seg - seg % span), the one rendering of the rule for SQL and
 * C alike; the segment's entry rows are not included.  Locks: ACCESS SHARE
 * on hashtree.entry_pack.
 */
PG_FUNCTION_INFO_V1(ht_pack_seg);
Datum
ht_pack_seg(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			part = PG_GETARG_INT32(0);
	Datum		pa = PointerGetDatum(PG_GETARG_TEXT_PP(1));
	Datum		pb = PointerGetDatum(PG_GETARG_TEXT_PP(2));
	int32		seg = PG_GETARG_INT32(3);
	HtPackEntry *entries = NULL;
	int		   *owner = NULL;
	int			n = 0;
	int			cap = 0;

	InitMaterializedSRF(fcinfo, 0);
	ht_pack_segments(part, 1, &pa, &pb, &seg, &entries, &owner, &n, &cap);
	for (int i = 0; i < n; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = PointerGetDatum(entries[i].key);
		values[1] = PointerGetDatum(entries[i].hash);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * hashtree.key_hashes(node text, partition int, prefixes text[],
 *                     segment bigint) RETURNS TABLE(key bytea, hash bytea)
 * The entries of one segment of the tree named by prefixes, read here
 * (node NULL or this node) or on the peer node.  Locks: ACCESS SHARE on
 * hashtree.entry and hashtree.entry_pack of the node read.
 */
PG_FUNCTION_INFO_V1(ht_key_hashes);
Datum
ht_key_hashes(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *node = node_arg(fcinfo, 0);
	int			part = partition_arg(fcinfo, 1);
	TreeName	tn;
	int64		seg;

	prefixes_arg(fcinfo, 2, &tn);
	HT_ARG_NOT_NULL(3, "segment");
	seg = PG_GETARG_INT64(3);
	ht_check_segment(tn.depth, seg);

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	if (ht_node_is_local(node))
	{
		Datum		pa = PointerGetDatum(tn.pa);
		Datum		pb = PointerGetDatum(tn.pb);
		int32		s = (int32) seg;
		HtEntryRow *rows;
		int			n;

		ht_check_partition(part);
		n = ht_store_entries(part, tn.depth, 1, &pa, &pb, &s, 0, &rows);
		for (int r = 0; r < n; r++)
		{
			Datum		values[2];
			bool		nulls[2] = {false, false};

			values[0] = PointerGetDatum(rows[r].key);
			values[1] = PointerGetDatum(rows[r].hash);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	else
	{
		HtPeer	   *peer = ht_peer_get(node);
		const char *params[3];

		params[0] = psprintf("%d", part);
		params[1] = array_text(tn.array);
		params[2] = psprintf(INT64_FORMAT, seg);
		put_remote_rows(rsinfo,
						ht_peer_query(peer,
									  "SELECT key, hash FROM hashtree.key_hashes(NULL,"
									  " $1::int4, $2::text[], $3::int8)",
									  3, params, true, 2),
						false);
	}
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/* ---- locks, update, reset -------------------------------------------------- */

/* run "SELECT hashtree.<fn>(...)" on a peer and return its text result */
static text *
remote_call(const char *node, const char *sql, int nparams,
			const char *const *params)
{
	MemoryContext outer = CurrentMemoryContext;
	text	   *result = NULL;

	SPI_connect();
	HT_API_BEGIN();
	{
		HtPeer	   *peer = ht_peer_get(node);
		HtRemoteResult *res = ht_peer_query(peer, sql, nparams, params, false, 1);
		char	   *v = res->nrows == 1 ? ht_remote_text(res, 0, 0) : NULL;
		MemoryContext old;

		if (v == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unexpected answer from peer \"%s\": no result", node)));
		old = MemoryContextSwitchTo(outer);
		result = cstring_to_text(v);
		MemoryContextSwitchTo(old);
	}
	HT_API_END();
	SPI_finish();
	return result;
}

static text *
local_lock(int part, int pid, bool release)
{
	HtPartAnswer res;

	SPI_connect();
	HT_API_BEGIN();
	res = release ? ht_part_release(part, pid) : ht_part_lock(part, pid);
	HT_API_END();
	SPI_finish();
	return cstring_to_text(ht_part_answer_names[res]);
}

/*
 * lock(partition), lock(node, partition), lock(node, partition, pid), and
 * the same arities of release_lock: one C function each, by PG_NARGS().
 */
static Datum
lock_common(FunctionCallInfo fcinfo, bool release)
{
	bool		has_node = PG_NARGS() >= 2;
	bool		has_pid = PG_NARGS() == 3;
	char	   *node = has_node ? node_arg(fcinfo, 0) : NULL;
	int			part = partition_arg(fcinfo, has_node ? 1 : 0);
	int			pid = MyProcPid;
	const char *fn = release ? "release_lock" : "lock";
	text	   *res;

	if (has_pid)
	{
		HT_ARG_NOT_NULL(2, "pid");
		pid = PG_GETARG_INT32(2);
	}
	if (ht_node_is_local(node))
		res = local_lock(part, pid, release);
	else if (has_pid)
	{
		const char *params[2] = {psprintf("%d", part), psprintf("%d", pid)};

		res = remote_call(node, psprintf("SELECT hashtree.%s(NULL::text, $1::int4, $2::int4)", fn),
						  2, params);
	}
	else
	{
		const char *params[1] = {psprintf("%d", part)};

		res = remote_call(node, psprintf("SELECT hashtree.%s($1::int4)", fn), 1, params);
	}
	PG_RETURN_TEXT_P(res);
}

/*
 * hashtree.lock(partition int), lock(node text, partition int),
 * lock(node text, partition int, pid int) RETURNS text
 * Lock a partition's trees for updating on behalf of pid (default: this
 * backend; on a peer, the backend serving the connection); "ok", "not_built"
 * or "locked".  Writes the partition's row; never waits (FOR NO KEY UPDATE
 * SKIP LOCKED).
 */
PG_FUNCTION_INFO_V1(ht_lock);
Datum
ht_lock(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, false);
}

/*
 * hashtree.release_lock(partition int), release_lock(node text, partition int),
 * release_lock(node text, partition int, pid int) RETURNS text
 * Release the partition lock of pid (default as lock()), here or on the
 * peer node; "ok", "not_locked" or "not_allowed".  Writes the partition's
 * row, waiting out a transient row lock (FOR NO KEY UPDATE).
 */
PG_FUNCTION_INFO_V1(ht_release_lock);
Datum
ht_release_lock(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, true);
}

/*
 * hashtree.update(partition int), update(node text, partition int) RETURNS text
 * Fold the changes committed since the last update into the partition's
 * trees, here or on the peer; lock owner only, READ COMMITTED: "ok",
 * "not_locked", "not_built" or "ongoing_update".  Locks: the advisory update
 * lock and the partition's row (FOR NO KEY UPDATE) until commit; ROW
 * EXCLUSIVE on the extension's tables; ACCESS SHARE on tracked tables.
 */
PG_FUNCTION_INFO_V1(ht_update);
Datum
ht_update(PG_FUNCTION_ARGS)
{
	char	   *node = PG_NARGS() == 2 ? node_arg(fcinfo, 0) : NULL;
	int			part = partition_arg(fcinfo, PG_NARGS() - 1);
	const char *params[1];

	if (ht_node_is_local(node))
		PG_RETURN_TEXT_P(cstring_to_text(ht_part_answer_names[ht_update_partition(part)]));
	params[0] = psprintf("%d", part);
	PG_RETURN_TEXT_P(remote_call(node, "SELECT hashtree.update($1::int4)", 1, params));
}

/*
 * hashtree.reset(partition int), reset(node text, partition int) RETURNS void
 * Rebuild a partition's trees from its entries (tracked tables hashed
 * again), here or on the peer; ERROR while another backend holds its lock.
 * Locks: the advisory update lock and the partition's row (FOR NO KEY
 * UPDATE) until commit; ROW EXCLUSIVE on the extension's tables; ACCESS
 * SHARE on the tracked tables.
 */
PG_FUNCTION_INFO_V1(ht_reset);
Datum
ht_reset(PG_FUNCTION_ARGS)
{
	char	   *node = PG_NARGS() == 2 ? node_arg(fcinfo, 0) : NULL;
	int			part = partition_arg(fcinfo, PG_NARGS() - 1);
	const char *params[1];

	if (ht_node_is_local(node))
		ht_reset_partition(part);
	else
	{
		params[0] = psprintf("%d", part);
		(void) remote_call(node, "SELECT hashtree.reset($1::int4)", 1, params);
	}
	PG_RETURN_VOID();
}

/* ---- compare and check ------------------------------------------------------- */

/* compare(): one row per difference */
static void
put_diff(void *arg, int part, HtDiffKind kind, Datum pa, Datum pb, bytea *key)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) arg;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	values[0] = CStringGetTextDatum(ht_diff_kind_names[kind]);
	values[1] = pa;
	values[2] = pb;
	nulls[2] = (pb == (Datum) 0);
	values[3] = PointerGetDatum(key);
	nulls[3] = (key == NULL);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * hashtree.compare(partition int, node text)
 *   RETURNS TABLE(kind text, prefix_a text, prefix_b text, key bytea)
 * The differences between this node's trees of a partition and the peer's;
 * the caller must hold the partition lock here.  Locks: ACCESS SHARE on
 * hashtree.partition, node, entry and entry_pack, here and on the peer (by
 * its _nodes() and _entries()); no partition or row lock.
 */
PG_FUNCTION_INFO_V1(ht_compare_sql);
Datum
ht_compare_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			part = partition_arg(fcinfo, 0);
	char	   *node;

	HT_ARG_NOT_NULL(1, "node");
	node = node_arg(fcinfo, 1);
	if (ht_node_is_local(node))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is this node; compare needs a peer", node)));

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	{
		HtPartState st;
		HtPeer	   *peer;

		ht_part_state(part, &st);
		if (!st.mine)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("partition %d is not locked by this session", part),
					 errhint("Call hashtree.lock(%d) and hashtree.update(%d) first.",
							 part, part)));
		peer = ht_peer_get(node);
		if (ht_peer_partitions(peer) != ht_num_partitions())
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("peer \"%s\" has %d partitions, this node has %d",
							node, ht_peer_partitions(peer), ht_num_partitions())));
		ht_compare(part, peer, put_diff, rsinfo);
	}
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/*
 * hashtree.check_tree(partition int) RETURNS TABLE(depth int, prefix_a text,
 *   prefix_b text, level int, child bigint, stored bytea, expected bytea)
 * Rows where the stored trees differ from those a reset would build from
 * the current entries (empty = consistent; run after update()); level NULL:
 * a derived entry, level 0: an entry row in a segment that a pack covers
 * (each leaf entry must be in one place), level 5: a pack (child = its
 * first segment) whose stored term or count its entries do not give, level
 * 6: a level-2 row (child = its bucket) whose kept sub-bucket hashes its
 * packs do not give.  Locks:
 * ACCESS SHARE on hashtree.node, entry and entry_pack; no partition lock.
 */
PG_FUNCTION_INFO_V1(ht_check_tree);
Datum
ht_check_tree(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			part = partition_arg(fcinfo, 0);

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	ht_check_partition(part);
	ht_store_check(part, rsinfo);
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/* ---- peers ----------------------------------------------------------------- */

/*
 * A peer connection is made by the server process, with the server's
 * files and identity (.pgpass, client certificates, trust and peer
 * authentication): like CREATE SUBSCRIPTION, configuring one is for
 * superusers.  (These functions run as the extension owner: look at the
 * role that called them.)
 */
static void
check_peer_admin(void)
{
	if (!superuser_arg(GetOuterUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only superusers can add or drop peers"),
				 errdetail("Connections to peers are made with the server's own identity and files.")));
}

/*
 * hashtree.add_peer(name text, conninfo text) RETURNS void
 * Configure a peer; superusers only (the connection is made with the
 * server's identity); ERROR if the name exists.  Locks: ROW EXCLUSIVE on
 * hashtree.peer.
 */
PG_FUNCTION_INFO_V1(ht_add_peer);
Datum
ht_add_peer(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *conninfo;

	HT_ARG_NOT_NULL(0, "name");
	HT_ARG_NOT_NULL(1, "conninfo");
	check_peer_admin();
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	conninfo = text_to_cstring(PG_GETARG_TEXT_PP(1));
	SPI_connect();
	HT_API_BEGIN();
	ht_peer_add(name, conninfo);
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * hashtree.drop_peer(name text) RETURNS void
 * Remove a peer and forget this backend's connection to it; superusers
 * only; ERROR if there is none, or if it holds fragments of a fragmented
 * table (DESIGN §19; nothing changed).  Locks: the peer's row FOR UPDATE
 * (waits for moves to it under way), ROW EXCLUSIVE on hashtree.peer.
 */
PG_FUNCTION_INFO_V1(ht_drop_peer);
Datum
ht_drop_peer(PG_FUNCTION_ARGS)
{
	char	   *name;

	HT_ARG_NOT_NULL(0, "name");
	check_peer_admin();
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	SPI_connect();
	HT_API_BEGIN();
	ht_frag_check_peer_drop(name);
	ht_peer_drop(name);
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}
