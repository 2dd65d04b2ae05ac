/*-------------------------------------------------------------------------
 *
 * rowenc.c
 *	  Canonical encodings of a tracked table's rows.
 *
 * value(v):  a scalar is its binary send form (typsend), computed with the
 *            client encoding set to UTF-8 (the send form of text types is
 *            in the client encoding); a domain is its base type; an array
 *            is u32 ndim, then u32 size and i32 lower bound per dimension,
 *            then each element; a composite is u32 natts, then each live
 *            attribute; an element or attribute is 0x00 (null) or
 *            0x01 u32 len value.  (Unlike array_send and record_send, no
 *            type OIDs: they differ between databases.)
 * key:       for each key column in key order: u32 len value.
 * row hash:  SHA-256 over, for each live column sorted by UTF-8 name:
 *            u32 len name, then 0x00 (null) or 0x01 u32 len value.
 *
 * Integers are big-endian.  Dropped columns and the physical column order
 * do not matter; TOASTed values are detoasted by the send functions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/index.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
#include "utils/uuid.h"

#include "rowenc.h"
#include "treemath.h"

/*
 * How values of one type are encoded, cached per type for the backend.
 * Entries are never freed (relation encoders point to them): a change to
 * any type marks them all stale, and a stale entry is filled in again, in
 * place, when it is next looked up.
 */
struct HtTypeEnc
{
	Oid			typid;			/* hash key */
	bool		valid;
	char		kind;			/* 's' scalar, 'a' array, 'r' composite */
	char		fast;			/* scalar: the send form written here (below) */
	FmgrInfo	send;			/* scalar */
	FmgrInfo	recv;			/* scalar; fn_oid invalid if none */
	Oid			ioparam;		/* scalar */
	Oid			elemtype;		/* array */
	int16		elemlen;
	bool		elembyval;
	char		elemalign;
	HtTypeEnc  *elemenc;
};

static HTAB *type_cache = NULL;

static void
type_cache_inval(Datum arg, int cacheid, uint32 hashvalue)
{
	HASH_SEQ_STATUS status;
	HtTypeEnc  *te;

	if (type_cache == NULL)
		return;
	hash_seq_init(&status, type_cache);
	while ((te = hash_seq_search(&status)) != NULL)
		te->valid = false;
}

/*
 * Built-in types whose send form is written here without a function call
 * (a re-hash encodes every column of every row): exactly the bytes their
 * send functions produce.  '8', '4', '2': the value as a big-endian
 * integer of that size (the bits, for floats); '1': bool as 0/1; 'v': the
 * bytes of a varlena (text types, when no encoding conversion applies:
 * their send form is in the client encoding, UTF-8 while encoding); 'u':
 * uuid's 16 bytes.  0: call the send function.
 */
static char
fast_form(Oid base)
{
	switch (base)
	{
		case INT8OID:
		case FLOAT8OID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
		case TIMEOID:
			return '8';
		case INT4OID:
		case FLOAT4OID:
		case DATEOID:
		case OIDOID:
			return '4';
		case INT2OID:
			return '2';
		case BOOLOID:
			return '1';
		case BYTEAOID:
			return 'v';
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
			return GetDatabaseEncoding() == PG_UTF8 ? 'v' : 0;
		case UUIDOID:
			return 'u';
		default:
			return 0;
	}
}

static void
type_enc_fill(HtTypeEnc *te, Oid typid)
{
	Oid			base = getBaseType(typid);
	char		typtype = get_typtype(base);

	te->elemenc = NULL;
	te->recv.fn_oid = InvalidOid;
	te->fast = fast_form(base);
	if (typtype == TYPTYPE_COMPOSITE || base == RECORDOID)
		te->kind = 'r';
	else if (type_is_array(base))
	{
		te->kind = 'a';
		te->elemtype = get_element_type(base);
		get_typlenbyvalalign(te->elemtype, &te->elemlen, &te->elembyval,
							 &te->elemalign);
	}
	else
	{
		HeapTuple	tp;
		Oid			sendfn;
		Oid			recvfn;
		bool		isvarlena;

		te->kind = 's';
		tp = SearchSysCache1(TYPEOID, ObjectIdGetDatum(base));
		if (!HeapTupleIsValid(tp))
			elog(ERROR, "cache lookup failed for type %u", base);
		sendfn = ((Form_pg_type) GETSTRUCT(tp))->typsend;
		recvfn = ((Form_pg_type) GETSTRUCT(tp))->typreceive;
		ReleaseSysCache(tp);
		if (!OidIsValid(sendfn))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("type %s has no binary send function, so its values have no canonical form",
							format_type_be(typid))));
		getTypeBinaryOutputInfo(base, &sendfn, &isvarlena);
		fmgr_info_cxt(sendfn, &te->send, CacheMemoryContext);
		if (OidIsValid(recvfn))
		{
			getTypeBinaryInputInfo(base, &recvfn, &te->ioparam);
			fmgr_info_cxt(recvfn, &te->recv, CacheMemoryContext);
		}
	}
}

static HtTypeEnc *
type_enc(Oid typid)
{
	HtTypeEnc  *te;
	bool		found;

	if (type_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(HtTypeEnc);
		ctl.hcxt = CacheMemoryContext;
		type_cache = hash_create("hashtree type encoders", 64, &ctl,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterSyscacheCallback(TYPEOID, type_cache_inval, (Datum) 0);
	}
	te = hash_search(type_cache, &typid, HASH_ENTER, &found);
	if (!found)
		te->valid = false;
	if (!te->valid)
	{
		type_enc_fill(te, typid);	/* on ERROR the entry stays invalid */
		te->valid = true;
	}
	/* element encoders are looked up after this one is valid (recursion) */
	if (te->kind == 'a' && te->elemenc == NULL)
		te->elemenc = type_enc(te->elemtype);
	return te;
}

/*
 * appendBinaryStringInfo() and appendStringInfoChar(), inlined: a re-hash
 * appends a dozen short pieces per row.
 */
static inline void
put_bytes(StringInfo buf, const void *p, int n)
{
	if (buf->len + n >= buf->maxlen)
		enlargeStringInfo(buf, n);
	memcpy(buf->data + buf->len, p, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
}

static inline void
put_byte(StringInfo buf, uint8 c)
{
	if (buf->len + 1 >= buf->maxlen)
		enlargeStringInfo(buf, 1);
	buf->data[buf->len++] = (char) c;
	buf->data[buf->len] = '\0';
}

static inline void
put_u32(StringInfo buf, uint32 v)
{
	uint32		n = pg_hton32(v);

	put_bytes(buf, &n, 4);
}

static void encode_value(HtTypeEnc *te, Datum d, StringInfo buf);

/* 0x01 u32 len value, the length patched in after the value */
static void
encode_item(HtTypeEnc *te, Datum d, StringInfo buf)
{
	int			at;
	uint32		len;

	put_byte(buf, 0x01);
	at = buf->len;
	put_u32(buf, 0);
	encode_value(te, d, buf);
	len = pg_hton32((uint32) (buf->len - at - 4));
	memcpy(buf->data + at, &len, 4);
}

static void
encode_array(HtTypeEnc *te, Datum d, StringInfo buf)
{
	ArrayType  *a = DatumGetArrayTypeP(d);
	int			ndim = ARR_NDIM(a);
	int		   *dims = ARR_DIMS(a);
	int		   *lbs = ARR_LBOUND(a);
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	put_u32(buf, (uint32) ndim);
	for (int i = 0; i < ndim; i++)
	{
		put_u32(buf, (uint32) dims[i]);
		put_u32(buf, (uint32) lbs[i]);
	}
	deconstruct_array(a, te->elemtype, te->elemlen, te->elembyval, te->elemalign,
					  &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			put_byte(buf, 0x00);
		else
			encode_item(te->elemenc, elems[i], buf);
	}
}

static void
encode_record(Datum d, StringInfo buf)
{
	HeapTupleHeader th = DatumGetHeapTupleHeader(d);
	TupleDesc	td = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(th),
											HeapTupleHeaderGetTypMod(th));
	HeapTupleData tuple;
	int			live = 0;

	tuple.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = th;

	for (int i = 0; i < td->natts; i++)
		if (!TupleDescAttr(td, i)->attisdropped)
			live++;
	put_u32(buf, (uint32) live);
	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(td, i);
		bool		isnull;
		Datum		v;

		if (att->attisdropped)
			continue;
		v = heap_getattr(&tuple, i + 1, td, &isnull);
		if (isnull)
			put_byte(buf, 0x00);
		else
			encode_item(type_enc(att->atttypid), v, buf);
	}
	ReleaseTupleDesc(td);
}

static void
encode_fast(char form, Datum d, StringInfo buf)
{
	switch (form)
	{
		case '8':
			{
				uint64		v = pg_hton64((uint64) DatumGetInt64(d));

				put_bytes(buf, &v, 8);
				break;
			}
		case '4':
			{
				uint32		v = pg_hton32(DatumGetUInt32(d));

				put_bytes(buf, &v, 4);
				break;
			}
		case '2':
			{
				uint16		v = pg_hton16((uint16) DatumGetInt16(d));

				put_bytes(buf, &v, 2);
				break;
			}
		case '1':
			put_byte(buf, DatumGetBool(d) ? 1 : 0);
			break;
		case 'u':
			put_bytes(buf, DatumGetUUIDP(d)->data, UUID_LEN);
			break;
		case 'v':
			{
				struct varlena *v = PG_DETOAST_DATUM_PACKED(d);

				put_bytes(buf, VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v));
				if ((Pointer) v != DatumGetPointer(d))
					pfree(v);
				break;
			}
		default:
			elog(ERROR, "hashtree: unknown value form %c", form);
	}
}

static void
encode_value(HtTypeEnc *te, Datum d, StringInfo buf)
{
	CHECK_FOR_INTERRUPTS();
	switch (te->kind)
	{
		case 'a':
			encode_array(te, d, buf);
			break;
		case 'r':
			encode_record(d, buf);
			break;
		default:
			if (te->fast != 0)
			{
				encode_fast(te->fast, d, buf);
				break;
			}
			{
				bytea	   *b = SendFunctionCall(&te->send, d);

				put_bytes(buf, VARDATA(b), VARSIZE(b) - VARHDRSZ);
				pfree(b);
			}
			break;
	}
}

/*
 * The send and receive forms of text types are in the client encoding:
 * encode and decode with the client encoding set to UTF-8.
 */
#define WITH_UTF8_CLIENT(code) \
	do { \
		int			saved_enc_ = pg_get_client_encoding(); \
		if (saved_enc_ == PG_UTF8) \
		{ \
			code; \
		} \
		else \
		{ \
			force_utf8_client(); \
			PG_TRY(); \
			{ \
				code; \
			} \
			PG_FINALLY(); \
			{ \
				SetClientEncoding(saved_enc_); \
			} \
			PG_END_TRY(); \
		} \
	} while (0)

static void
force_utf8_client(void)
{
	if (SetClientEncoding(PG_UTF8) < 0)
	{
		/* the conversion to UTF-8 is not prepared yet (non-UTF-8 server) */
		if (PrepareClientEncoding(PG_UTF8) < 0 || SetClientEncoding(PG_UTF8) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
					 errmsg("cannot convert from the database encoding to UTF-8")));
	}
}

/* ---- describing a relation -------------------------------------------- */

static int
name_order(const void *a, const void *b, void *arg)
{
	char	  **names = (char **) arg;
	int			x = *(const int *) a;
	int			y = *(const int *) b;

	return strcmp(names[x], names[y]);
}

char	  **
ht_rel_key_names(Relation rel, int *nkeys)
{
	Oid			indexoid = RelationGetPrimaryKeyIndex(rel);
	HeapTuple	tp;
	Form_pg_index idx;
	char	  **names;

	if (!OidIsValid(indexoid))
		indexoid = RelationGetReplicaIndex(rel);
	if (!OidIsValid(indexoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key or replica identity index",
						RelationGetRelationName(rel)),
				 errhint("Tracking needs a key: add a primary key, or set REPLICA IDENTITY USING INDEX.")));

	tp = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for index %u", indexoid);
	idx = (Form_pg_index) GETSTRUCT(tp);
	*nkeys = idx->indnkeyatts;
	names = palloc(sizeof(char *) * *nkeys);
	for (int i = 0; i < *nkeys; i++)
	{
		AttrNumber	att = idx->indkey.values[i];

		if (att <= 0)
			elog(ERROR, "hashtree: key index %u has an expression column", indexoid);
		names[i] = pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel), att - 1)->attname));
	}
	ReleaseSysCache(tp);
	return names;
}

HtRelEnc *
ht_relenc_build(Relation rel, int nkeys, char **key_names)
{
	TupleDesc	td = RelationGetDescr(rel);
	HtRelEnc   *re = palloc0(sizeof(HtRelEnc));
	int		   *order;
	char	  **names;
	StringInfoData sig;
	StringInfoData keys;
	int			n = 0;

	re->relid = RelationGetRelid(rel);
	re->nkeys = nkeys;
	re->keyatt = palloc(sizeof(AttrNumber) * nkeys);
	re->keyenc = palloc(sizeof(HtTypeEnc *) * nkeys);
	re->keytype = palloc(sizeof(Oid) * nkeys);
	re->keytypmod = palloc(sizeof(int32) * nkeys);
	re->keyname = palloc(sizeof(char *) * nkeys);

	initStringInfo(&sig);
	initStringInfo(&keys);
	appendStringInfoString(&sig, "key");
	for (int k = 0; k < nkeys; k++)
	{
		AttrNumber	att = get_attnum(RelationGetRelid(rel), key_names[k]);
		Form_pg_attribute a;

		if (att == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("key column \"%s\" does not exist in \"%s\"",
							key_names[k], RelationGetRelationName(rel))));
		a = TupleDescAttr(td, att - 1);
		re->keyatt[k] = att;
		re->keytype[k] = a->atttypid;
		re->keytypmod[k] = a->atttypmod;
		re->keyname[k] = pstrdup(key_names[k]);
		re->keyenc[k] = type_enc(a->atttypid);
		if (re->keyenc[k]->kind != 's' || !OidIsValid(re->keyenc[k]->recv.fn_oid))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("key column \"%s\" of type %s is not supported",
							key_names[k], format_type_be(a->atttypid)),
					 errdetail("Key columns must be of a scalar type with binary send and receive functions.")));
		appendStringInfo(&sig, " %s %s", quote_identifier(key_names[k]),
						 format_type_with_typemod(a->atttypid, a->atttypmod));
		appendStringInfo(&keys, "%s%s", k ? "," : "", key_names[k]);
	}

	/* live columns, sorted by UTF-8 name */
	names = palloc(sizeof(char *) * Max(td->natts, 1));
	order = palloc(sizeof(int) * Max(td->natts, 1));
	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(td, i);

		if (a->attisdropped)
			continue;
		names[i] = pg_server_to_any(NameStr(a->attname), strlen(NameStr(a->attname)),
									PG_UTF8);
		order[n++] = i;
	}
	qsort_arg(order, n, sizeof(int), name_order, names);
	re->ncols = n;
	re->colatt = palloc(sizeof(AttrNumber) * Max(n, 1));
	re->colname_utf8 = palloc(sizeof(char *) * Max(n, 1));
	re->colname_len = palloc(sizeof(int) * Max(n, 1));
	re->colenc = palloc(sizeof(HtTypeEnc *) * Max(n, 1));
	appendStringInfoString(&sig, " cols");
	for (int j = 0; j < n; j++)
	{
		Form_pg_attribute a = TupleDescAttr(td, order[j]);

		re->colatt[j] = order[j] + 1;
		re->colname_utf8[j] = names[order[j]];
		re->colname_len[j] = strlen(names[order[j]]);
		re->colenc[j] = type_enc(a->atttypid);
		appendStringInfo(&sig, " %s %s", quote_identifier(NameStr(a->attname)),
						 format_type_with_typemod(a->atttypid, a->atttypmod));
	}
	re->signature = sig.data;
	re->key_columns = keys.data;
	return re;
}

/* ---- encoding rows ------------------------------------------------------ */

/*
 * Encodings are built in a StringInfo whose first VARHDRSZ bytes are left
 * for the varlena header, so the buffer becomes the result without a copy.
 */
static void
init_varlena_buf(StringInfo buf)
{
	initStringInfo(buf);
	buf->len = VARHDRSZ;
}

static bytea *
varlena_buf_result(StringInfo buf)
{
	SET_VARSIZE(buf->data, buf->len);
	return (bytea *) buf->data;
}

bytea *
ht_key_from_values(HtRelEnc *re, Datum *values)
{
	StringInfoData buf;

	init_varlena_buf(&buf);
	WITH_UTF8_CLIENT(
					 for (int k = 0; k < re->nkeys; k++)
					 {
						 int at = buf.len;
						 uint32 len;

						 put_u32(&buf, 0);
						 encode_value(re->keyenc[k], values[k], &buf);
						 len = pg_hton32((uint32) (buf.len - at - 4));
						 memcpy(buf.data + at, &len, 4);
					 }
	);
	return varlena_buf_result(&buf);
}

bytea *
ht_row_key(HtRelEnc *re, TupleDesc tupdesc, HeapTuple tuple)
{
	Datum		values[INDEX_MAX_KEYS];

	for (int k = 0; k < re->nkeys; k++)
	{
		bool		isnull;

		values[k] = heap_getattr(tuple, re->keyatt[k], tupdesc, &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("key column \"%s\" is null", re->keyname[k])));
	}
	return ht_key_from_values(re, values);
}

#define HT_DEFORM_STACK 64		/* columns deformed without a palloc */

bytea *
ht_row_hash(HtRelEnc *re, TupleDesc tupdesc, HeapTuple tuple)
{
	StringInfoData buf;
	bytea	   *h = palloc(VARHDRSZ + HT_DIGEST_LEN);
	Datum		vstack[HT_DEFORM_STACK];
	bool		nstack[HT_DEFORM_STACK];
	Datum	   *values = vstack;
	bool	   *isnull = nstack;

	/* one pass over the tuple, not one per column (columns are read by name) */
	if (tupdesc->natts > HT_DEFORM_STACK)
	{
		values = palloc(sizeof(Datum) * tupdesc->natts);
		isnull = palloc(sizeof(bool) * tupdesc->natts);
	}
	heap_deform_tuple(tuple, tupdesc, values, isnull);
	initStringInfo(&buf);
	WITH_UTF8_CLIENT(
					 for (int j = 0; j < re->ncols; j++)
					 {
						 int a = re->colatt[j] - 1;

						 put_u32(&buf, (uint32) re->colname_len[j]);
						 put_bytes(&buf, re->colname_utf8[j], re->colname_len[j]);
						 if (isnull[a])
							 put_byte(&buf, 0x00);
						 else
							 encode_item(re->colenc[j], values[a], &buf);
					 }
	);
	ht_sha256(buf.data, buf.len, NULL, 0, NULL, 0, (uint8 *) VARDATA(h));
	SET_VARSIZE(h, VARHDRSZ + HT_DIGEST_LEN);
	pfree(buf.data);
	if (values != vstack)
	{
		pfree(values);
		pfree(isnull);
	}
	return h;
}

void
ht_key_decode(HtRelEnc *re, bytea *key, Datum *values)
{
	const char *p = VARDATA_ANY(key);
	const char *end = p + VARSIZE_ANY_EXHDR(key);

	WITH_UTF8_CLIENT(
					 for (int k = 0; k < re->nkeys; k++)
					 {
						 uint32 len;
						 StringInfoData buf;

						 if (end - p < 4)
							 ereport(ERROR,
									 (errcode(ERRCODE_DATA_CORRUPTED),
									  errmsg("malformed hashtree key")));
						 memcpy(&len, p, 4);
						 len = pg_ntoh32(len);
						 p += 4;
						 if ((uint32) (end - p) < len)
							 ereport(ERROR,
									 (errcode(ERRCODE_DATA_CORRUPTED),
									  errmsg("malformed hashtree key")));
						 initStringInfo(&buf);
						 appendBinaryStringInfo(&buf, p, len);
						 values[k] = ReceiveFunctionCall(&re->keyenc[k]->recv, &buf,
														 re->keyenc[k]->ioparam,
														 re->keytypmod[k]);
						 pfree(buf.data);
						 p += len;
					 }
	);
	if (p != end)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("malformed hashtree key")));
}
