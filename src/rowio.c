/*-------------------------------------------------------------------------
 *
 * rowio.c
 *	  Rows of tracked tables for repairs (exchange with repair = pull or
 *	  push): read by key or by partition in a transport form, written
 *	  back on the other node, deleted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/commit_ts.h"
#include "access/transam.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "common.h"
#include "partlock.h"
#include "rowenc.h"
#include "rowio.h"
#include "sqlexec.h"
#include "tomb.h"
#include "track.h"

/*
 * A row travels between nodes as per-column values matched by column name
 * (so column order, dropped columns and the order of the two tables'
 * columns do not matter), in a bytea:
 *   u16 ncols, then per column: u16 len, name (UTF-8), u8 format, and
 *   'n' (NULL) | 'b' u32 type OID, u32 len, binary send form |
 *   't' u32 len, text form (UTF-8)
 * A built-in type (OID below FirstGenbkiObjectId, the same on every server
 * of a major version) other than the reg* types (their binary form is a
 * local OID) travels in its binary send form, others as text produced
 * under pinned output settings (DateStyle ISO, IntervalStyle postgres,
 * extra_float_digits 3, TimeZone UTC).  The send and receive forms of
 * text types are in the client encoding: UTF-8 while encoding and
 * decoding.  The receiver converts each value with its own column's type:
 * the receive function when the type OID is the same, else through text.
 * Generated columns are not sent (the target computes them).
 *
 * Every access to a table's rows (reading, converting values, writing,
 * deleting, hashing) runs as the table's owner in a security-restricted
 * operation with search_path and the I/O settings pinned, so a trigger, a
 * generated column, an index expression, a constraint or a type's
 * function of the table runs with its owner's rights, never with those of
 * the extension owner or a superuser worker.  The role the repair is done
 * for (ht_repair_role, else the current user: on a peer, the connection's
 * role) must have the rights to read the source and write the target.
 *
 * The source sends each row's row hash along; the target recomputes the
 * hash of the row it wrote and raises an error when they differ, so a
 * repair that did not make the row equal is never reported as done.
 */

Oid			ht_repair_role = InvalidOid;

/* the tracked table named (schema, name) on this node, ERROR if none */
static TrackRel *
tracked_by_name(text *schema, text *name, Relation *relp)
{
	char	   *s = text_to_cstring(schema);
	char	   *n = text_to_cstring(name);
	Oid			relid = ht_track_registered_relid(s, n);
	Relation	rel;
	TrackRel   *tr;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s\" does not exist", quote_qualified_identifier(s, n))));
	rel = table_open(relid, RowExclusiveLock);
	tr = ht_track_rel(rel);
	if (!tr->tracked || tr->root != relid)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not tracked", quote_qualified_identifier(s, n))));
	*relp = rel;
	return tr;
}

/*
 * ERROR unless the role the repair is done for has every right in need on
 * the table, and row level security applies neither to it nor to the
 * table's owner (the rows are read and written as the owner: under a
 * policy, a repair would see or write only part of the table).
 */
static void
repair_check_rights(Relation rel, AclMode need, const char *what)
{
	Oid			role = OidIsValid(ht_repair_role) ? ht_repair_role : GetUserId();
	Oid			relid = RelationGetRelid(rel);
	char	   *qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												   RelationGetRelationName(rel));
	static const AclMode each[] = {ACL_SELECT, ACL_INSERT, ACL_UPDATE, ACL_DELETE};

	for (int i = 0; i < lengthof(each); i++)
		if ((need & each[i]) && pg_class_aclcheck(relid, role, each[i]) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to %s table %s: role \"%s\" lacks %s on it",
							what, qname, GetUserNameFromId(role, false),
							each[i] == ACL_SELECT ? "SELECT" : each[i] == ACL_INSERT ? "INSERT" :
							each[i] == ACL_UPDATE ? "UPDATE" : "DELETE")));
	if (check_enable_rls(relid, role, true) == RLS_ENABLED ||
		check_enable_rls(relid, rel->rd_rel->relowner, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("table %s has row level security for the repairing role or its owner;"
						" it is not repaired", qname)));
}

/* the state of a repair helper while it works as the table's owner */
typedef struct RowIO
{
	HtUserContext uc;
	int			saved_enc;
} RowIO;

static void
set_guc(const char *name, const char *value)
{
	(void) set_config_option(name, value, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Become the table's owner (security-restricted operation, search_path
 * pinned), pin the I/O settings and set the client encoding to UTF-8.
 * Callers undo it with row_io_end in PG_FINALLY, so that no error caught
 * further up can leave this backend as the owner.
 */
static void
row_io_begin(Oid relid, RowIO *io)
{
	io->saved_enc = pg_get_client_encoding();
	ht_as_table_owner_begin(relid, &io->uc);
	set_guc("DateStyle", "ISO, YMD");
	set_guc("IntervalStyle", "postgres");
	set_guc("extra_float_digits", "3");
	set_guc("TimeZone", "UTC");
	/* money (say a domain over it) as text: the same on both nodes */
	set_guc("lc_monetary", "C");
	if (io->saved_enc != PG_UTF8 && SetClientEncoding(PG_UTF8) < 0)
	{
		if (PrepareClientEncoding(PG_UTF8) < 0 || SetClientEncoding(PG_UTF8) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
					 errmsg("cannot convert from the database encoding to UTF-8")));
	}
}

static void
row_io_restore_encoding(RowIO *io)
{
	if (pg_get_client_encoding() != io->saved_enc)
		SetClientEncoding(io->saved_enc);
}

static void
row_io_end(RowIO *io)
{
	row_io_restore_encoding(io);
	ht_as_table_owner_end(&io->uc);
}

/* may a value of this type travel in its binary send form? */
static bool
binary_type(Oid typid)
{
	HeapTuple	tp;
	Form_pg_type t;
	bool		ok;
	Oid			elem;

	if (typid >= FirstGenbkiObjectId)
		return false;
	elem = get_element_type(typid);
	if (OidIsValid(elem) && !binary_type(elem))
		return false;
	switch (typid)
	{
		case REGPROCOID:
		case REGPROCEDUREOID:
		case REGOPEROID:
		case REGOPERATOROID:
		case REGCLASSOID:
		case REGTYPEOID:
		case REGCONFIGOID:
		case REGDICTIONARYOID:
		case REGNAMESPACEOID:
		case REGROLEOID:
		case REGCOLLATIONOID:
		case RECORDOID:
			return false;
	}
	tp = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tp))
		return false;
	t = (Form_pg_type) GETSTRUCT(tp);
	ok = OidIsValid(t->typsend) && OidIsValid(t->typreceive) &&
		(t->typtype == TYPTYPE_BASE || t->typtype == TYPTYPE_RANGE ||
		 t->typtype == TYPTYPE_MULTIRANGE);
	ReleaseSysCache(tp);
	return ok;
}

static void
put_u16(StringInfo buf, uint16 v)
{
	uint16		n = pg_hton16(v);

	appendBinaryStringInfo(buf, (char *) &n, 2);
}

static void
put_u32(StringInfo buf, uint32 v)
{
	uint32		n = pg_hton32(v);

	appendBinaryStringInfo(buf, (char *) &n, 4);
}

/* the transport form of a row (rel's tuple descriptor); as the owner */
static bytea *
encode_row(Relation rel, HeapTuple tuple)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData buf;
	int			n = 0;
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);

	heap_deform_tuple(tuple, desc, values, nulls);
	initStringInfo(&buf);
	appendStringInfoSpaces(&buf, VARHDRSZ);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);

		if (!a->attisdropped && !a->attgenerated)
			n++;
	}
	put_u16(&buf, n);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);
		char	   *name;

		if (a->attisdropped || a->attgenerated)
			continue;
		name = pg_server_to_any(NameStr(a->attname), strlen(NameStr(a->attname)), PG_UTF8);
		put_u16(&buf, strlen(name));
		appendBinaryStringInfo(&buf, name, strlen(name));
		if (nulls[i])
			appendStringInfoChar(&buf, 'n');
		else if (binary_type(a->atttypid))
		{
			Oid			send;
			bool		varlena;
			bytea	   *b;

			getTypeBinaryOutputInfo(a->atttypid, &send, &varlena);
			b = OidSendFunctionCall(send, values[i]);
			appendStringInfoChar(&buf, 'b');
			put_u32(&buf, a->atttypid);
			put_u32(&buf, VARSIZE(b) - VARHDRSZ);
			appendBinaryStringInfo(&buf, VARDATA(b), VARSIZE(b) - VARHDRSZ);
		}
		else
		{
			Oid			out;
			bool		varlena;
			char	   *s;
			char	   *u;

			getTypeOutputInfo(a->atttypid, &out, &varlena);
			s = OidOutputFunctionCall(out, values[i]);
			u = pg_server_to_any(s, strlen(s), PG_UTF8);
			appendStringInfoChar(&buf, 't');
			put_u32(&buf, strlen(u));
			appendBinaryStringInfoNT(&buf, u, strlen(u));
		}
	}
	SET_VARSIZE(buf.data, buf.len);
	return (bytea *) buf.data;
}

/* one column of a received row */
typedef struct RxCol
{
	char	   *name;			/* server encoding */
	char		format;			/* 'n', 'b', 't' */
	Oid			typid;			/* 'b' */
	char	   *data;
	uint32		len;
	bool		used;
} RxCol;

static void
rx_need(const char *p, const char *end, size_t n)
{
	if (end - p < (ptrdiff_t) n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("malformed row in a repair")));
}

static RxCol *
parse_row(bytea *row, int *ncols)
{
	const char *p = VARDATA_ANY(row);
	const char *end = p + VARSIZE_ANY_EXHDR(row);
	RxCol	   *cols;
	uint16		u16;
	uint32		u32;

	rx_need(p, end, 2);
	memcpy(&u16, p, 2);
	p += 2;
	*ncols = pg_ntoh16(u16);
	cols = palloc0(sizeof(RxCol) * Max(*ncols, 1));
	for (int i = 0; i < *ncols; i++)
	{
		RxCol	   *c = &cols[i];
		char	   *name;

		rx_need(p, end, 2);
		memcpy(&u16, p, 2);
		p += 2;
		u16 = pg_ntoh16(u16);
		rx_need(p, end, u16 + 1);
		name = pnstrdup(p, u16);
		c->name = pg_any_to_server(name, u16, PG_UTF8);
		p += u16;
		c->format = *p++;
		if (c->format == 'n')
			continue;
		if (c->format == 'b')
		{
			rx_need(p, end, 4);
			memcpy(&u32, p, 4);
			p += 4;
			c->typid = pg_ntoh32(u32);
		}
		else if (c->format != 't')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("malformed row in a repair")));
		rx_need(p, end, 4);
		memcpy(&u32, p, 4);
		p += 4;
		c->len = pg_ntoh32(u32);
		rx_need(p, end, c->len);
		c->data = (char *) p;
		p += c->len;
	}
	if (p != end)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("malformed row in a repair")));
	return cols;
}

/* a received value in the receiver's column type (as the owner) */
static Datum
decode_value(RxCol *c, Form_pg_attribute a, const char *qname, bool *isnull)
{
	Oid			in;
	Oid			ioparam;

	*isnull = (c->format == 'n');
	if (c->format == 'b' && c->typid == a->atttypid)
	{
		StringInfoData buf;
		Oid			recv;

		getTypeBinaryInputInfo(a->atttypid, &recv, &ioparam);
		initStringInfo(&buf);
		appendBinaryStringInfo(&buf, c->data, c->len);
		return OidReceiveFunctionCall(recv, &buf, ioparam, a->atttypmod);
	}
	getTypeInputInfo(a->atttypid, &in, &ioparam);
	if (c->format == 'n')
		return OidInputFunctionCall(in, NULL, ioparam, a->atttypmod);
	if (c->format == 'b')
	{
		/* another built-in type: read it as sent, convert through text */
		StringInfoData buf;
		Oid			recv;
		Oid			sioparam;
		Oid			out;
		bool		varlena;
		Datum		d;

		if (c->typid >= FirstGenbkiObjectId || !binary_type(c->typid))
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of table %s: the source sent a value of type %u,"
							" unknown here", NameStr(a->attname), qname, c->typid)));
		getTypeBinaryInputInfo(c->typid, &recv, &sioparam);
		initStringInfo(&buf);
		appendBinaryStringInfo(&buf, c->data, c->len);
		d = OidReceiveFunctionCall(recv, &buf, sioparam, -1);
		getTypeOutputInfo(c->typid, &out, &varlena);
		return OidInputFunctionCall(in, OidOutputFunctionCall(out, d), ioparam, a->atttypmod);
	}
	return OidInputFunctionCall(in, pg_any_to_server(pnstrdup(c->data, c->len), c->len, PG_UTF8),
								ioparam, a->atttypmod);
}

/* "(k1, k2)=(v1, v2)" of a key, for messages (as the owner) */
static char *
key_text(HtRelEnc *re, bytea *key)
{
	Datum		v[INDEX_MAX_KEYS];
	StringInfoData names;
	StringInfoData vals;

	ht_key_decode(re, key, v);
	initStringInfo(&names);
	initStringInfo(&vals);
	for (int k = 0; k < re->nkeys; k++)
	{
		Oid			out;
		bool		varlena;

		getTypeOutputInfo(re->keytype[k], &out, &varlena);
		appendStringInfo(&names, "%s%s", k ? ", " : "", quote_identifier(re->keyname[k]));
		appendStringInfo(&vals, "%s%s", k ? ", " : "", OidOutputFunctionCall(out, v[k]));
	}
	return psprintf("(%s)=(%s)", names.data, vals.data);
}

/* the elements of a bytea[] argument (keys, rows, hashes); no NULLs */
static bytea **
key_array(ArrayType *a, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	bytea	  **keys;

	deconstruct_array(a, BYTEAOID, -1, false, TYPALIGN_INT, &elems, &nulls, n);
	keys = palloc(sizeof(bytea *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("keys, rows and hashes must not contain nulls")));
		keys[i] = DatumGetByteaPP(elems[i]);
	}
	return keys;
}

/* put (key, hash, row) of a row read as the owner into the result */
static void
put_row_out(ReturnSetInfo *rsinfo, TrackRel *tr, Relation rel, HeapTuple tuple, bytea *key)
{
	Datum		out[3];
	bool		nulls[3] = {false, false, false};

	out[0] = PointerGetDatum(key ? key : ht_row_key(tr->enc, RelationGetDescr(rel), tuple));
	out[1] = PointerGetDatum(ht_row_hash(tr->enc, RelationGetDescr(rel), tuple));
	out[2] = PointerGetDatum(encode_row(rel, tuple));
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
}

/*
 * hashtree._rows_by_key(schema_name text, table_name text, keys bytea[])
 *   RETURNS TABLE(key bytea, hash bytea, r bytea)
 * The rows of those keys that exist, in transport form, with their row
 * hashes.  Needs SELECT on the table for the repairing role; the rows are
 * read as the table's owner (see above).  Locks: ROW EXCLUSIVE on the table.
 */
PG_FUNCTION_INFO_V1(ht_rows_by_key);
Datum
ht_rows_by_key(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	rel;
	TrackRel   *tr;
	bytea	  **keys;
	int			n;
	RowIO		io;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "keys");
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	HT_API_BEGIN();
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	repair_check_rights(rel, ACL_SELECT, "read");
	keys = key_array(PG_GETARG_ARRAYTYPE_P(2), &n);
	if (n > 0)
	{
		row_io_begin(tr->root, &io);
		PG_TRY();
		{
			Datum		params[INDEX_MAX_KEYS];

			ht_track_key_params(tr->enc, keys, n, params);
			if (SPI_execute_plan(ht_track_rows_plan(tr), params, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "hashtree: reading rows of %s failed", tr->name);
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				bool		isnull;
				HeapTupleData tuple;

				ht_track_record_tuple(rel, DatumGetHeapTupleHeader(ht_col(r, 1, &isnull)), &tuple);
				put_row_out(rsinfo, tr, rel, &tuple, NULL);
			}
		}
		PG_FINALLY();
		{
			row_io_end(&io);
		}
		PG_END_TRY();
	}
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/*
 * hashtree._row_partition(tbl oid, r record) RETURNS int
 * The partition of the key of row r of tracked table tbl.  Locks: ACCESS
 * SHARE on tbl.
 */
PG_FUNCTION_INFO_V1(ht_row_partition);
Datum
ht_row_partition(PG_FUNCTION_ARGS)
{
	Relation	rel;
	HeapTupleData tuple;
	bytea	   *key;
	int			part;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	rel = relation_open(PG_GETARG_OID(0), AccessShareLock);
	ht_track_record_tuple(rel, PG_GETARG_HEAPTUPLEHEADER(1), &tuple);
	part = ht_track_row_partition(ht_track_rel(rel), rel, &tuple, &key);
	relation_close(rel, AccessShareLock);
	PG_RETURN_INT32(part);
}

/*
 * Call fn for every row of the table whose key falls in part (as the
 * owner, inside row_io): a cursor over the table, 1,000 rows at a time.
 */
static void
partition_scan(TrackRel *tr, Relation rel, int part,
			   void (*fn) (void *arg, HeapTuple tuple, bytea *key), void *arg)
{
	SPIPlanPtr	plan;
	Portal		portal;
	MemoryContext batch;
	char	   *alias = ht_track_row_alias(tr->root);

	plan = SPI_prepare(psprintf("SELECT %s FROM %s %s", alias,
								quote_qualified_identifier(tr->schema, tr->name), alias),
					   0, NULL);
	if (plan == NULL)
		elog(ERROR, "hashtree: SPI_prepare failed (%s)", SPI_result_code_string(SPI_result));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	/* what a batch allocates (keys, hashes, encoded rows) is freed with it */
	batch = AllocSetContextCreate(CurrentMemoryContext, "hashtree partition rows",
								  ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		old = MemoryContextSwitchTo(batch);
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			HeapTupleData tuple;
			bytea	   *key;

			ht_track_record_tuple(rel, DatumGetHeapTupleHeader(ht_col(r, 1, &isnull)), &tuple);
			if (ht_track_row_partition(tr, rel, &tuple, &key) == part)
				fn(arg, &tuple, key);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	MemoryContextDelete(batch);
}

typedef struct PartRowsArg
{
	ReturnSetInfo *rsinfo;
	TrackRel   *tr;
	Relation	rel;
} PartRowsArg;

static void
partition_row_out(void *arg, HeapTuple tuple, bytea *key)
{
	PartRowsArg *a = (PartRowsArg *) arg;

	put_row_out(a->rsinfo, a->tr, a->rel, tuple, key);
}

/*
 * hashtree._partition_rows(schema_name text, table_name text, partition int)
 *   RETURNS TABLE(key bytea, hash bytea, r bytea)
 * Every row of the table whose key falls in the partition, as
 * _rows_by_key.  Needs SELECT for the repairing role; read as the table's
 * owner.  Locks: ROW EXCLUSIVE on the table (opened as for a repair).
 */
PG_FUNCTION_INFO_V1(ht_partition_rows);
Datum
ht_partition_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	rel;
	TrackRel   *tr;
	RowIO		io;
	PartRowsArg arg;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "partition");
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	HT_API_BEGIN();
	ht_check_partition(PG_GETARG_INT32(2));
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	repair_check_rights(rel, ACL_SELECT, "read");
	arg.rsinfo = rsinfo;
	arg.tr = tr;
	arg.rel = rel;
	row_io_begin(tr->root, &io);
	PG_TRY();
	{
		partition_scan(tr, rel, PG_GETARG_INT32(2), partition_row_out, &arg);
	}
	PG_FINALLY();
	{
		row_io_end(&io);
	}
	PG_END_TRY();
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/* delete the rows of n keys (as the owner); rows deleted */
static uint64
delete_keys(TrackRel *tr, bytea **keys, int n)
{
	uint64		done = 0;
	SPIPlanPtr	plan = n > 0 ? ht_track_delete_plan(tr) : NULL;

	for (int base = 0; base < n; base += HT_KEY_BATCH)
	{
		Datum		params[INDEX_MAX_KEYS];

		ht_track_key_params(tr->enc, keys + base, Min(HT_KEY_BATCH, n - base), params);
		if (SPI_execute_plan(plan, params, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "hashtree: deleting rows of %s failed", tr->name);
		done += SPI_processed;
	}
	return done;
}

/* the INSERT ... ON CONFLICT ... RETURNING t that writes one row */
static SPIPlanPtr
apply_plan(TrackRel *tr, Relation rel)
{
	TupleDesc	td = RelationGetDescr(rel);
	char	   *qname = quote_qualified_identifier(tr->schema, tr->name);
	StringInfoData cols;
	StringInfoData vals;
	StringInfoData keys;
	StringInfoData sets;
	StringInfoData sql;
	Oid		   *types = palloc(sizeof(Oid) * Max(td->natts, 1));
	int			n = 0;
	SPIPlanPtr	plan;
	char	   *alias = ht_track_row_alias(tr->root);

	initStringInfo(&cols);
	initStringInfo(&vals);
	initStringInfo(&keys);
	initStringInfo(&sets);
	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(td, i);
		const char *c = quote_identifier(NameStr(a->attname));
		bool		is_key = false;

		if (a->attisdropped || a->attgenerated)
			continue;
		types[n++] = a->atttypid;
		appendStringInfo(&cols, "%s%s", cols.len ? ", " : "", c);
		appendStringInfo(&vals, "%s$%d", vals.len ? ", " : "", n);
		for (int k = 0; k < tr->enc->nkeys; k++)
			if (strcmp(tr->enc->keyname[k], NameStr(a->attname)) == 0)
				is_key = true;
		/*
		 * An identity column GENERATED ALWAYS can only be updated to DEFAULT:
		 * it is left as it is in an existing row (if it differs, the row
		 * hash check reports the row).
		 */
		if (!is_key && a->attidentity != ATTRIBUTE_IDENTITY_ALWAYS)
			appendStringInfo(&sets, "%s%s = EXCLUDED.%s", sets.len ? ", " : "", c, c);
	}
	for (int k = 0; k < tr->enc->nkeys; k++)
		appendStringInfo(&keys, "%s%s", k ? ", " : "", quote_identifier(tr->enc->keyname[k]));
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s AS %s (%s) OVERRIDING SYSTEM VALUE VALUES (%s)"
					 " ON CONFLICT (%s) DO %s%s RETURNING %s",
					 qname, alias, cols.data, vals.data, keys.data,
					 sets.len ? "UPDATE SET " : "NOTHING", sets.data, alias);
	plan = SPI_prepare(sql.data, n, types);
	if (plan == NULL)
		elog(ERROR, "hashtree: SPI_prepare failed (%s): %s",
			 SPI_result_code_string(SPI_result), sql.data);
	return plan;
}

/* write one received row, check its hash (as the owner) */
static void
apply_one(TrackRel *tr, Relation rel, SPIPlanPtr plan, SPIPlanPtr *readback,
		  bytea *row, bytea *hash)
{
	TupleDesc	td = RelationGetDescr(rel);
	char	   *qname = quote_qualified_identifier(tr->schema, tr->name);
	int			nrx;
	RxCol	   *rx = parse_row(row, &nrx);
	Datum	   *values = palloc(sizeof(Datum) * Max(td->natts, 1));
	char	   *nulls = palloc(td->natts + 1);
	int			n = 0;
	HeapTupleData tuple;
	bytea	   *key;
	bytea	   *got;
	bool		isnull;
	Datum		written = (Datum) 0;
	bool		have = false;

	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(td, i);
		RxCol	   *c = NULL;

		if (a->attisdropped || a->attgenerated)
			continue;
		for (int j = 0; j < nrx && c == NULL; j++)
			if (!rx[j].used && strcmp(rx[j].name, NameStr(a->attname)) == 0)
				c = &rx[j];
		if (c == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of table %s is missing in the source's row",
							NameStr(a->attname), qname)));
		c->used = true;
		values[n] = decode_value(c, a, qname, &isnull);
		nulls[n] = isnull ? 'n' : ' ';
		n++;
	}
	for (int j = 0; j < nrx; j++)
		if (!rx[j].used)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("the source's row has a column \"%s\" that table %s lacks"
							" (or a generated one)", rx[j].name, qname)));
	nulls[n] = '\0';
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "hashtree: applying a row to %s failed", qname);
	if (SPI_processed == 1)
	{
		written = ht_col(0, 1, &isnull);
		have = true;
	}
	else
	{
		/*
		 * Not written (ON CONFLICT DO NOTHING, or a trigger skipped it): the
		 * row as it is now, read by the key of the row sent.
		 */
		int			i = 0;
		Datum		kv[INDEX_MAX_KEYS];
		Datum		params[INDEX_MAX_KEYS];

		for (int a = 0; a < td->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(td, a);

			if (att->attisdropped || att->attgenerated)
				continue;
			for (int k = 0; k < tr->enc->nkeys; k++)
				if (strcmp(tr->enc->keyname[k], NameStr(att->attname)) == 0)
					kv[k] = values[i];
			i++;
		}
		key = ht_key_from_values(tr->enc, kv);
		ht_track_key_params(tr->enc, &key, 1, params);
		if (*readback == NULL)
			*readback = ht_track_rows_plan(tr);
		if (SPI_execute_plan(*readback, params, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "hashtree: reading rows of %s failed", qname);
		if (SPI_processed == 1)
		{
			written = ht_col(0, 1, &isnull);
			have = true;
		}
	}
	if (!have)
	{
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("a row repaired into table %s was not written (a trigger skipped it?)",
						qname)));
	}
	ht_track_record_tuple(rel, DatumGetHeapTupleHeader(written), &tuple);
	got = ht_row_hash(tr->enc, td, &tuple);
	if (hash == NULL || VARSIZE_ANY(got) != VARSIZE_ANY(hash) ||
		memcmp(VARDATA_ANY(got), VARDATA_ANY(hash), VARSIZE_ANY_EXHDR(got)) != 0)
	{
		key = ht_row_key(tr->enc, td, &tuple);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("the row of table %s with key %s differs from its source after the repair",
						qname, key_text(tr->enc, key)),
				 errdetail("A trigger, a generated column, a default or a different column type"
						   " on this node changed the row.")));
	}
}

/*
 * Upsert rows (each checked against its source's hash, apply_one) and
 * delete the rows of keys dels, as the table's owner; *deleted (if not
 * NULL) gets the rows deleted.  Returns the rows written.
 */
static int64
write_rows(TrackRel *tr, Relation rel, bytea **rows, bytea **hashes, int nrows,
		   bytea **dels, int ndels, int64 *deleted)
{
	RowIO		io;
	volatile int64 del = 0;

	row_io_begin(tr->root, &io);
	PG_TRY();
	{
		if (nrows > 0)
		{
			SPIPlanPtr	plan = apply_plan(tr, rel);
			SPIPlanPtr	readback = NULL;
			MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext,
														 "hashtree repair row",
														 ALLOCSET_DEFAULT_SIZES);

			for (int i = 0; i < nrows; i++)
			{
				MemoryContext old = MemoryContextSwitchTo(rowcxt);

				apply_one(tr, rel, plan, &readback, rows[i], hashes[i]);
				MemoryContextSwitchTo(old);
				MemoryContextReset(rowcxt);
				SPI_freetuptable(SPI_tuptable);
			}
			MemoryContextDelete(rowcxt);
		}
		if (ndels > 0)
			del = delete_keys(tr, dels, ndels);
	}
	PG_FINALLY();
	{
		row_io_end(&io);
	}
	PG_END_TRY();
	if (deleted != NULL)
		*deleted = del;
	return nrows;
}

/*
 * hashtree._apply_rows(schema_name text, table_name text, rows bytea[],
 *                      hashes bytea[], deletes bytea[]) RETURNS bigint
 * Upsert the rows (transport form, see above; hashes[i] the source's row
 * hash of rows[i]) and delete the rows of the keys.  Each row written is
 * hashed again: a row that does not hash equal to its source is an ERROR.
 * Needs SELECT, INSERT, UPDATE (rows) and DELETE (deletes) for the
 * repairing role; the rows are written as the table's owner.  Returns the
 * rows changed.  Locks: ROW EXCLUSIVE on the table.
 */
PG_FUNCTION_INFO_V1(ht_apply_rows);
Datum
ht_apply_rows(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TrackRel   *tr;
	/* (volatile: set before or in HT_API_BEGIN's PG_TRY, read in it) */
	volatile int64 changed = 0;
	bytea	  **volatile rows = NULL;
	bytea	  **volatile hashes = NULL;
	bytea	  **volatile dels = NULL;
	int			nrows = 0;
	int			nhashes = 0;
	int			ndels = 0;
	volatile AclMode need = ACL_SELECT;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	SPI_connect();
	HT_API_BEGIN();
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	if (!PG_ARGISNULL(2))
	{
		rows = key_array(PG_GETARG_ARRAYTYPE_P(2), &nrows);
		if (!PG_ARGISNULL(3))
			hashes = key_array(PG_GETARG_ARRAYTYPE_P(3), &nhashes);
		if (hashes == NULL || nhashes != nrows)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("rows and hashes must have the same number of elements")));
		if (nrows > 0)
			need |= ACL_INSERT | ACL_UPDATE;
	}
	if (!PG_ARGISNULL(4))
	{
		dels = key_array(PG_GETARG_ARRAYTYPE_P(4), &ndels);
		if (ndels > 0)
			need |= ACL_DELETE;
	}
	repair_check_rights(rel, need, "write");
	if (nrows > 0 || ndels > 0)
	{
		int64		deleted;

		changed = write_rows(tr, rel, rows, hashes, nrows, dels, ndels, &deleted);
		changed += deleted;
	}
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(changed);
}

typedef struct PartKeysArg
{
	MemoryContext cxt;			/* where the keys are kept */
	int			n;
	int			cap;
	bytea	  **keys;
} PartKeysArg;

static void
partition_key_out(void *arg, HeapTuple tuple, bytea *key)
{
	PartKeysArg *a = (PartKeysArg *) arg;
	bytea	   *copy = MemoryContextAlloc(a->cxt, VARSIZE_ANY(key));

	memcpy(copy, key, VARSIZE_ANY(key));
	if (a->n >= a->cap)
	{
		a->cap = a->cap ? a->cap * 2 : 1024;
		a->keys = a->keys ? repalloc(a->keys, sizeof(bytea *) * a->cap)
			: MemoryContextAlloc(a->cxt, sizeof(bytea *) * a->cap);
	}
	a->keys[a->n++] = copy;
}

/*
 * hashtree._delete_partition_rows(schema_name text, table_name text,
 *                                 partition int) RETURNS bigint
 * Delete the rows whose keys fall in the partition.  Needs SELECT and DELETE for the repairing role;
 * the rows are read and deleted as the table's owner.  Returns the rows
 * deleted.  Locks: ROW EXCLUSIVE on the table.
 */
PG_FUNCTION_INFO_V1(ht_delete_partition_rows);
Datum
ht_delete_partition_rows(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TrackRel   *tr;
	volatile int64 n = 0;		/* (set in the PG_TRY below, read after it) */
	RowIO		io;
	PartKeysArg arg = {NULL, 0, 0, NULL};

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "partition");
	SPI_connect();
	arg.cxt = CurrentMemoryContext;
	HT_API_BEGIN();
	ht_check_partition(PG_GETARG_INT32(2));
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	repair_check_rights(rel, ACL_SELECT | ACL_DELETE, "write");
	row_io_begin(tr->root, &io);
	PG_TRY();
	{
		partition_scan(tr, rel, PG_GETARG_INT32(2), partition_key_out, &arg);
		n = delete_keys(tr, arg.keys, arg.n);
	}
	PG_FINALLY();
	{
		row_io_end(&io);
	}
	PG_END_TRY();
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(n);
}

/* ---- two-way repair ('newest', DESIGN §20) ------------------------------------- */

static HtQuery q_set_tombstones = {
	"UPDATE hashtree.tracked_table SET tombstones = $3 WHERE schema_name = $1 AND table_name = $2",
	3, {TEXTOID, TEXTOID, BOOLOID}
};

static HtQuery q_forget_tombstones = {
	"WITH t AS (DELETE FROM hashtree.tombstone WHERE pa = $1 AND pb = $2)"
	" DELETE FROM hashtree.row_version WHERE pa = $1 AND pb = $2",
	2, {TEXTOID, TEXTOID}
};

/*
 * hashtree.tombstones(tbl regclass, enable boolean DEFAULT true) RETURNS void
 * Make a tracked table keep tombstones of its deleted rows (for repair
 * 'newest'), or stop: its tombstones go and its entries are hashed again.
 * Needs ownership of the table (of the caller: SECURITY DEFINER, like
 * track()).  Locks: SHARE ROW EXCLUSIVE on the table (writers wait).
 */
PG_FUNCTION_INFO_V1(ht_tombstones);
Datum
ht_tombstones(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TrackRel   *tr;
	bool		enable;
	Datum		v[3];

	HT_ARG_NOT_NULL(0, "tbl");
	HT_ARG_NOT_NULL(1, "enable");
	enable = PG_GETARG_BOOL(1);
	SPI_connect();
	HT_API_BEGIN();
	rel = ht_open_relation_arg(PG_GETARG_OID(0), ShareRowExclusiveLock);
	/* (SECURITY DEFINER: the caller must own the table, as for track()) */
	if (!pg_class_ownercheck(RelationGetRelid(rel), GetOuterUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(rel->rd_rel->relkind),
					   RelationGetRelationName(rel));
	tr = ht_track_rel(rel);
	if (!tr->tracked || !tr->registered || tr->root != RelationGetRelid(rel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not tracked",
						quote_qualified_identifier(tr->schema ? tr->schema :
												   get_namespace_name(RelationGetNamespace(rel)),
												   RelationGetRelationName(rel))),
				 errhint("Track it first with hashtree.track().")));
	if (enable && !track_commit_timestamp)
		ereport(WARNING,
				(errmsg("track_commit_timestamp is off: deletes get the time of the update that folds them"),
				 errhint("Repair 'newest' needs track_commit_timestamp = on on every node.")));
	v[0] = PointerGetDatum(tr->pa);
	v[1] = PointerGetDatum(tr->pb);
	v[2] = BoolGetDatum(enable);
	if (ht_exec_as_owner(&q_set_tombstones, v, NULL, 0) != 1)
		elog(ERROR, "hashtree: registry row of %s not found", tr->name);
	if (!enable)
	{
		/* the tombstones' entries go with a re-hash of the table */
		ht_exec_as_owner(&q_forget_tombstones, v, NULL, 0);
		(void) ht_track_rehash(tr, "tombstones");
	}
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * hashtree.version_column(tbl regclass, col name) RETURNS void
 * Repair 'newest' takes the versions of the rows of a tracked table from
 * its column col (any type with a default B-tree order and binary send
 * and receive: an application's "updated at", a version counter) instead
 * of the commit times; NULL: the commit times again.  A delete's version
 * is then the deleted row's (logged by the row trigger).  Needs ownership
 * of the table (of the caller: SECURITY DEFINER).  Locks: SHARE ROW
 * EXCLUSIVE on the table.
 */
PG_FUNCTION_INFO_V1(ht_version_column);
Datum
ht_version_column(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TrackRel   *tr;

	HT_ARG_NOT_NULL(0, "tbl");
	SPI_connect();
	HT_API_BEGIN();
	rel = ht_open_relation_arg(PG_GETARG_OID(0), ShareRowExclusiveLock);
	if (!pg_class_ownercheck(RelationGetRelid(rel), GetOuterUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(rel->rd_rel->relkind),
					   RelationGetRelationName(rel));
	tr = ht_track_rel(rel);
	if (!tr->tracked || !tr->registered || tr->root != RelationGetRelid(rel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not tracked",
						quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												   RelationGetRelationName(rel))),
				 errhint("Track it first with hashtree.track().")));
	ht_track_set_version_column(tr, rel, PG_ARGISNULL(1) ? NULL : NameStr(*PG_GETARG_NAME(1)));
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

static HtQuery q_version_column = {
	"SELECT version_column FROM hashtree.tracked_table WHERE schema_name = $1 AND table_name = $2",
	2, {TEXTOID, TEXTOID}
};

/* the column that holds a tracked table's versions, 0: commit times */
static AttrNumber
version_attnum(TrackRel *tr, Relation rel)
{
	Datum		v[2] = {PointerGetDatum(tr->pa), PointerGetDatum(tr->pb)};
	bool		isnull = true;
	char	   *col = NULL;
	AttrNumber	att;

	if (ht_exec_as_owner(&q_version_column, v, NULL, 1) == 1)
	{
		Datum		d = ht_col(0, 1, &isnull);

		if (!isnull)
			col = TextDatumGetCString(d);
	}
	SPI_freetuptable(SPI_tuptable);
	if (col == NULL)
		return 0;
	att = get_attnum(RelationGetRelid(rel), col);
	if (att <= 0 || !ht_version_type_ok(TupleDescAttr(RelationGetDescr(rel), att - 1)->atttypid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("version column \"%s\" of table %s is gone or of a type that cannot version rows", col,
						quote_qualified_identifier(tr->schema, tr->name)),
				 errhint("Set it again with hashtree.version_column().")));
	return att;
}

static HtQuery q_row_versions = {
	"SELECT v.key, v.xmin::text::int8, v.version FROM unnest($4::bytea[]) AS u(k)"
	" JOIN hashtree.row_version v ON v.part = $1 AND v.pa = $2 AND v.pb = $3"
	"  AND hashtree._kid(v.key) = hashtree._kid(u.k)",
	4, {INT4OID, TEXTOID, TEXTOID, BYTEAARRAYOID}
};

static HtQuery q_tombs_of = {
	"SELECT t.key, t.deleted_at, t.version FROM unnest($4::bytea[]) AS u(k)"
	" JOIN hashtree.tombstone t ON t.part = $1 AND t.pa = $2 AND t.pb = $3"
	"  AND hashtree._kid(t.key) = hashtree._kid(u.k)",
	4, {INT4OID, TEXTOID, TEXTOID, BYTEAARRAYOID}
};

/* a key and a value found for it (row versions, tombstones) */
typedef struct KeyVal
{
	bytea	   *key;
	int64		x;				/* the xmin of a row version */
	TimestampTz at;
	bytea	   *version;		/* a tombstone's version (a version column's) */
} KeyVal;

static int
keyval_cmp(const void *a, const void *b)
{
	return ht_bytea_cmp(((const KeyVal *) a)->key, ((const KeyVal *) b)->key);
}

/* the rows of q (key, [xmin,] time) for keys, sorted by key */
static KeyVal *
keyvals(HtQuery *q, int part, TrackRel *tr, Datum keys, bool with_x, int *n)
{
	Datum		v[4];
	uint64		got;
	KeyVal	   *kv;

	v[0] = Int32GetDatum(part);
	v[1] = PointerGetDatum(tr->pa);
	v[2] = PointerGetDatum(tr->pb);
	v[3] = keys;
	got = ht_exec_as_owner(q, v, NULL, 0);
	kv = palloc(sizeof(KeyVal) * Max(got, 1));
	for (uint64 r = 0; r < got; r++)
	{
		bool		isnull;

		kv[r].key = DatumGetByteaPCopy(ht_col(r, 1, &isnull));
		kv[r].x = with_x ? DatumGetInt64(ht_col(r, 2, &isnull)) : 0;
		kv[r].at = DatumGetTimestampTz(ht_col(r, with_x ? 3 : 2, &isnull));
		kv[r].version = NULL;
		if (!with_x)
		{
			Datum		d = ht_col(r, 3, &isnull);

			if (!isnull)
				kv[r].version = DatumGetByteaPCopy(d);
		}
	}
	SPI_freetuptable(SPI_tuptable);
	qsort(kv, got, sizeof(KeyVal), keyval_cmp);
	*n = (int) got;
	return kv;
}

static KeyVal *
keyval_find(KeyVal *kv, int n, bytea *key)
{
	KeyVal		k = {key, 0, 0, NULL};

	return bsearch(&k, kv, n, sizeof(KeyVal), keyval_cmp);
}

/*
 * hashtree._newest_rows(schema_name text, table_name text, partition int,
 *                       keys bytea[])
 *   RETURNS TABLE(key bytea, hash bytea, r bytea, version timestamptz,
 *                 dead boolean, vbytes bytea)
 * For repair 'newest': the rows of those keys (as _rows_by_key) with their
 * versions (the version a repair gave the row, if the row is still the
 * one it wrote, else the commit time of the row's transaction; NULL when
 * not known), and the tombstones of the keys without a row (hash and r
 * NULL, dead, version their time).  A table with a version column: the
 * binary form of each row's version in vbytes (version NULL), and of each
 * tombstone's (NULL: not known).  Needs SELECT on the table for the repairing role; rows
 * are read as the table's owner.  Locks: ROW EXCLUSIVE on the table.
 */
static int
newest_read(ReturnSetInfo *rsinfo, TrackRel *tr, Relation rel, bytea **keys, int n,
			KeyVal *ver, int nver, AttrNumber vatt, bytea **found)
{
	RowIO		io;
	volatile int nfound = 0;
	FmgrInfo	vsend;

	if (vatt > 0)
	{
		Oid			send;
		bool		varlena;

		getTypeBinaryOutputInfo(TupleDescAttr(RelationGetDescr(rel), vatt - 1)->atttypid,
								&send, &varlena);
		fmgr_info(send, &vsend);
	}
	row_io_begin(tr->root, &io);
	PG_TRY();
	{
		Datum		params[INDEX_MAX_KEYS];

		ht_track_key_params(tr->enc, keys, n, params);
		if (SPI_execute_plan(ht_track_versions_plan(tr), params, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "hashtree: reading rows of %s failed", tr->name);
		for (uint64 r = 0; r < SPI_processed && r < n; r++)
		{
			bool		isnull;
			HeapTupleData tuple;
			Datum		out[6];
			bool		nulls[6] = {false, false, false, false, false, true};
			TransactionId xmin;
			TimestampTz at = 0;
			KeyVal	   *v;

			ht_track_record_tuple(rel, DatumGetHeapTupleHeader(ht_col(r, 1, &isnull)), &tuple);
			xmin = DatumGetTransactionId(ht_col(r, 2, &isnull));
			out[0] = PointerGetDatum(ht_row_key(tr->enc, RelationGetDescr(rel), &tuple));
			out[1] = PointerGetDatum(ht_row_hash(tr->enc, RelationGetDescr(rel), &tuple));
			out[2] = PointerGetDatum(encode_row(rel, &tuple));
			v = keyval_find(ver, nver, DatumGetByteaPP(out[0]));
			if (vatt > 0)
			{
				/* the table's own version column, in its binary form */
				Datum		d = heap_getattr(&tuple, vatt, RelationGetDescr(rel), &isnull);

				nulls[3] = true;
				if (!isnull)
				{
					out[5] = PointerGetDatum(SendFunctionCall(&vsend, d));
					nulls[5] = false;
				}
			}
			else if (v != NULL && v->x == (int64) xmin)
			{
				/* a copy of a row whose version was unknown stays unknown */
				if (TIMESTAMP_IS_NOBEGIN(v->at))
					nulls[3] = true;
				else
					at = v->at;
			}
			else if (!ht_tomb_commit_time(xmin, &at))
				nulls[3] = true;
			out[3] = TimestampTzGetDatum(at);
			out[4] = BoolGetDatum(false);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
			found[r] = DatumGetByteaPP(out[0]);
		}
		nfound = (int) Min(SPI_processed, (uint64) n);
	}
	PG_FINALLY();
	{
		row_io_end(&io);
	}
	PG_END_TRY();
	return nfound;
}

PG_FUNCTION_INFO_V1(ht_newest_rows);
Datum
ht_newest_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	rel;
	TrackRel   *tr;
	bytea	  **keys;
	int			n;
	int			part;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "partition");
	HT_ARG_NOT_NULL(3, "keys");
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	HT_API_BEGIN();
	part = PG_GETARG_INT32(2);
	ht_check_partition(part);
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	repair_check_rights(rel, ACL_SELECT, "read");
	keys = key_array(PG_GETARG_ARRAYTYPE_P(3), &n);
	if (n > 0)
	{
		int			nver;
		int			ntomb;
		KeyVal	   *ver = keyvals(&q_row_versions, part, tr, PG_GETARG_DATUM(3), true, &nver);
		KeyVal	   *tomb = keyvals(&q_tombs_of, part, tr, PG_GETARG_DATUM(3), false, &ntomb);
		bytea	  **found = palloc(sizeof(bytea *) * n);
		int			nfound = newest_read(rsinfo, tr, rel, keys, n, ver, nver,
										 version_attnum(tr, rel), found);

		/* the tombstones of the keys without a row */
		qsort(found, nfound, sizeof(bytea *), ht_bytea_ptr_cmp);
		for (int i = 0; i < ntomb; i++)
		{
			Datum		out[6];
			bool		nulls[6] = {false, true, true, false, false, true};

			if (bsearch(&tomb[i].key, found, nfound, sizeof(bytea *), ht_bytea_ptr_cmp) != NULL)
				continue;
			out[0] = PointerGetDatum(tomb[i].key);
			out[1] = out[2] = (Datum) 0;
			out[3] = TimestampTzGetDatum(tomb[i].at);
			out[4] = BoolGetDatum(true);
			out[5] = PointerGetDatum(tomb[i].version);
			nulls[5] = (tomb[i].version == NULL);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
		}
	}
	table_close(rel, NoLock);
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/*
 * The winners' versions of the rows a repair wrote; an unknown one
 * (written before track_commit_timestamp was on) as -infinity, read back
 * as unknown: the copy must not take the repair's commit time, newer than
 * the row is.
 */
static HtQuery q_put_versions = {
	"INSERT INTO hashtree.row_version AS t (part, pa, pb, key, version)"
	" SELECT $1, $2, $3, u.key, coalesce(u.v, '-infinity')"
	" FROM unnest($4::bytea[], $5::timestamptz[]) AS u(key, v)"
	" ON CONFLICT (part, pa, pb, hashtree._kid(key)) DO UPDATE SET version = EXCLUDED.version",
	5, {INT4OID, TEXTOID, TEXTOID, BYTEAARRAYOID, TIMESTAMPTZARRAYOID}
};

/*
 * The tombstones a repair writes, and a logged delete of each key in the
 * same transaction, so that the fold keeps their times (tomb.c); a NULL
 * time (pull/push: the source has no tombstone) is -infinity, which the
 * fold takes as "no tombstone"
 */
static HtQuery q_put_tombs = {
	"WITH t AS (INSERT INTO hashtree.tombstone AS t (part, pa, pb, key, deleted_at, version)"
	"  SELECT $1, $2, $3, u.key, coalesce(u.at, '-infinity'), u.v"
	"  FROM unnest($4::bytea[], $5::timestamptz[], $6::bytea[]) AS u(key, at, v)"
	"  ON CONFLICT (part, pa, pb, hashtree._kid(key))"
	"  DO UPDATE SET deleted_at = EXCLUDED.deleted_at, version = EXCLUDED.version"
	"  RETURNING t.key)"
	" INSERT INTO hashtree.dirty_key (part, seg, pa, pb, key, hash)"
	" SELECT $1, hashtree.segment_of(t.key), $2, $3, t.key, ''::bytea FROM t",
	6, {INT4OID, TEXTOID, TEXTOID, BYTEAARRAYOID, TIMESTAMPTZARRAYOID, BYTEAARRAYOID}
};

/*
 * hashtree._newest_apply(schema_name text, table_name text, partition int,
 *                        keys bytea[], rows bytea[], hashes bytea[],
 *                        versions timestamptz[], deletes bytea[],
 *                        deleted_at timestamptz[],
 *                        delete_versions bytea[] DEFAULT NULL) RETURNS bigint
 * Write the winners of repair 'newest' that this node lacks: the rows
 * (as _apply_rows: checked against their hashes) with their versions
 * (hashtree.row_version, valid while the row is the one written here; a
 * table with a version column: none, the row carries its version), and
 * the deletes with their tombstones (if the table keeps them) at the
 * winner's time and version.  Rights and locks as _apply_rows.  Returns the rows and
 * keys written.
 */
PG_FUNCTION_INFO_V1(ht_newest_apply);
static int64 newest_apply(FunctionCallInfo fcinfo);

Datum
ht_newest_apply(PG_FUNCTION_ARGS)
{
	volatile int64 changed = 0;

	HT_ARG_NOT_NULL(0, "schema");
	HT_ARG_NOT_NULL(1, "name");
	HT_ARG_NOT_NULL(2, "partition");
	SPI_connect();
	HT_API_BEGIN();
	changed = newest_apply(fcinfo);
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(changed);
}

static int64
newest_apply(FunctionCallInfo fcinfo)
{
	Relation	rel;
	TrackRel   *tr;
	int64		changed = 0;
	bytea	  **rows = NULL;
	bytea	  **hashes = NULL;
	bytea	  **dels = NULL;
	int			nkeys = 0;
	int			nrows = 0;
	int			nhashes = 0;
	int			ndels = 0;
	int			nvers = 0;
	int			nats = 0;
	int			ndvers;
	int			part;
	AclMode		need = ACL_SELECT;

	part = PG_GETARG_INT32(2);
	ht_check_partition(part);
	tr = tracked_by_name(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1), &rel);
	if (!PG_ARGISNULL(3))
		(void) key_array(PG_GETARG_ARRAYTYPE_P(3), &nkeys);
	if (!PG_ARGISNULL(4))
		rows = key_array(PG_GETARG_ARRAYTYPE_P(4), &nrows);
	if (!PG_ARGISNULL(5))
		hashes = key_array(PG_GETARG_ARRAYTYPE_P(5), &nhashes);
	if (!PG_ARGISNULL(6))
		nvers = ArrayGetNItems(ARR_NDIM(PG_GETARG_ARRAYTYPE_P(6)),
							   ARR_DIMS(PG_GETARG_ARRAYTYPE_P(6)));
	if (!PG_ARGISNULL(7))
		dels = key_array(PG_GETARG_ARRAYTYPE_P(7), &ndels);
	if (!PG_ARGISNULL(8))
		nats = ArrayGetNItems(ARR_NDIM(PG_GETARG_ARRAYTYPE_P(8)),
							  ARR_DIMS(PG_GETARG_ARRAYTYPE_P(8)));
	ndvers = PG_ARGISNULL(9) ? ndels :
		ArrayGetNItems(ARR_NDIM(PG_GETARG_ARRAYTYPE_P(9)), ARR_DIMS(PG_GETARG_ARRAYTYPE_P(9)));
	if (nkeys != nrows || nhashes != nrows || nvers != nrows || nats != ndels || ndvers != ndels)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("keys, rows, hashes and versions (and deletes and their times) must have the same number of elements")));
	if (nrows > 0)
		need |= ACL_INSERT | ACL_UPDATE;
	if (ndels > 0)
		need |= ACL_DELETE;
	repair_check_rights(rel, need, "write");
	if (nrows > 0 || ndels > 0)
		changed = write_rows(tr, rel, rows, hashes, nrows, dels, ndels, NULL);
	/* the versions and tombstones, written in the same transaction */
	if (nrows > 0 && version_attnum(tr, rel) == 0)
	{
		Datum		v[5];

		v[0] = Int32GetDatum(part);
		v[1] = PointerGetDatum(tr->pa);
		v[2] = PointerGetDatum(tr->pb);
		v[3] = PG_GETARG_DATUM(3);
		v[4] = PG_GETARG_DATUM(6);
		ht_exec_as_owner(&q_put_versions, v, NULL, 0);
	}
	if (ndels > 0)
	{
		changed += ndels;
		if (ht_tomb_enabled(tr->pa, tr->pb))
		{
			Datum		v[6];
			bool		n[6] = {false, false, false, false, false, PG_ARGISNULL(9)};

			v[0] = Int32GetDatum(part);
			v[1] = PointerGetDatum(tr->pa);
			v[2] = PointerGetDatum(tr->pb);
			v[3] = PG_GETARG_DATUM(7);
			v[4] = PG_GETARG_DATUM(8);
			v[5] = PG_ARGISNULL(9) ? (Datum) 0 : PG_GETARG_DATUM(9);
			ht_exec_as_owner(&q_put_tombs, v, n, 0);
		}
	}
	table_close(rel, NoLock);
	return changed;
}
