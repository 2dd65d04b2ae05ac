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
 * key:       for each key column in key order: u32 len value, where the
 *            value is canonical under the key index's equality: the send
 *            form when the operator class declares equality bitwise
 *            (BTEQUALIMAGE_PROC), else the send form of one chosen value
 *            of those equal to it (floats, numeric, interval, unbounded
 *            bpchar; below); other keys are refused.
 * row hash:  SHA-256 over, for each live column sorted by UTF-8 name:
 *            u32 len name, then 0x00 (null) or 0x01 u32 len value.
 *
 * Integers are big-endian.  Dropped columns and the physical column order
 * do not matter; TOASTed values are detoasted by the send functions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/relation.h"
#include "catalog/index.h"
#include "catalog/pg_am.h"
#include "catalog/pg_index.h"
#include "catalog/pg_opclass.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "datatype/timestamp.h"
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
#include "utils/timestamp.h"
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
 * encode and decode with the client encoding set to UTF-8 (keys; values in
 * any database but SQL_ASCII) or to SQL_ASCII (values in a SQL_ASCII
 * database: the bytes as stored, see hash_client_encoding()).
 */
#define WITH_CLIENT(enc, ...) \
	do { \
		int			saved_enc_ = pg_get_client_encoding(); \
		int			want_enc_ = (enc); \
		if (saved_enc_ == want_enc_) \
		{ \
			__VA_ARGS__; \
		} \
		else \
		{ \
			force_client(want_enc_); \
			PG_TRY(); \
			{ \
				__VA_ARGS__; \
			} \
			PG_FINALLY(); \
			{ \
				SetClientEncoding(saved_enc_); \
			} \
			PG_END_TRY(); \
		} \
	} while (0)

#define WITH_UTF8_CLIENT(...) WITH_CLIENT(PG_UTF8, __VA_ARGS__)

static void
force_client(int enc)
{
	if (SetClientEncoding(enc) < 0)
	{
		/* the conversion to UTF-8 is not prepared yet (non-UTF-8 server) */
		if (PrepareClientEncoding(enc) < 0 || SetClientEncoding(enc) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
					 errmsg("cannot convert from the database encoding to %s",
							pg_encoding_to_char(enc))));
	}
}

/*
 * The client encoding the row hash encodes values in.  UTF-8, except in a
 * SQL_ASCII database: there text has no declared encoding and is not
 * checked on input, and the conversion to UTF-8 only validates it, so a
 * value that is not valid UTF-8 would fail every later fold of its row;
 * it is hashed as stored instead (the same bytes as UTF-8 for valid
 * UTF-8, so such rows hash as on a UTF-8 node).  Keys are always UTF-8:
 * a key that is not valid UTF-8 is refused when it is written.
 */
static inline int
hash_client_encoding(void)
{
	return GetDatabaseEncoding() == PG_SQL_ASCII ? PG_SQL_ASCII : PG_UTF8;
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

HtKeyCols *
ht_rel_key_cols(Relation rel)
{
	Oid			indexoid = RelationGetPrimaryKeyIndex(rel);
	HeapTuple	tp;
	Form_pg_index idx;
	HtKeyCols  *kc = palloc(sizeof(HtKeyCols));
	Datum		d;
	bool		isnull;
	oidvector  *opclass;
	oidvector  *collation;

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
	d = SysCacheGetAttr(INDEXRELID, tp, Anum_pg_index_indclass, &isnull);
	if (isnull)
		elog(ERROR, "hashtree: index %u has no operator classes", indexoid);
	opclass = (oidvector *) DatumGetPointer(d);
	d = SysCacheGetAttr(INDEXRELID, tp, Anum_pg_index_indcollation, &isnull);
	if (isnull)
		elog(ERROR, "hashtree: index %u has no collations", indexoid);
	collation = (oidvector *) DatumGetPointer(d);

	kc->nkeys = idx->indnkeyatts;
	kc->names = palloc(sizeof(char *) * kc->nkeys);
	kc->opclass = palloc(sizeof(Oid) * kc->nkeys);
	kc->collation = palloc(sizeof(Oid) * kc->nkeys);
	for (int i = 0; i < kc->nkeys; i++)
	{
		AttrNumber	att = idx->indkey.values[i];

		if (att <= 0)
			elog(ERROR, "hashtree: key index %u has an expression column", indexoid);
		kc->names[i] = pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel), att - 1)->attname));
		kc->opclass[i] = opclass->values[i];
		kc->collation[i] = collation->values[i];
	}
	ReleaseSysCache(tp);
	return kc;
}

/*
 * How a key column is encoded: its send form when the key index's equality
 * is bitwise (the operator class's BTEQUALIMAGE_PROC says so for the
 * index column's collation, as B-tree deduplication asks), else one of the
 * canonical forms below for the built-in types whose equality is not
 * bitwise; any other key is refused.  *eqop: the equality operator of the
 * key index's operator family, which must be the type's default equality
 * (rows are looked up by key with "=").
 */
static char
key_form(const char *colname, Form_pg_attribute a, Oid opclass, Oid collation, Oid *eqop)
{
	HeapTuple	tp;
	Form_pg_opclass opc;
	Oid			opfamily;
	Oid			opcintype;
	Oid			method;
	char	   *opcname;
	int32		typmod = a->atttypmod;
	Oid			base = getBaseTypeAndTypmod(a->atttypid, &typmod);
	TypeCacheEntry *tc;
	Oid			proc;
	bool		image = false;

	tp = SearchSysCache1(CLAOID, ObjectIdGetDatum(opclass));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for operator class %u", opclass);
	opc = (Form_pg_opclass) GETSTRUCT(tp);
	opfamily = opc->opcfamily;
	opcintype = opc->opcintype;
	method = opc->opcmethod;
	opcname = pstrdup(NameStr(opc->opcname));
	ReleaseSysCache(tp);

	if (method != BTREE_AM_OID)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("key column \"%s\" is not indexed with a B-tree operator class", colname)));
	*eqop = get_opfamily_member(opfamily, opcintype, opcintype, BTEqualStrategyNumber);
	tc = lookup_type_cache(a->atttypid, TYPECACHE_EQ_OPR);
	if (!OidIsValid(*eqop) || *eqop != tc->eq_opr)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("key column \"%s\" of type %s is indexed with operator class %s, whose equality is not the type's default equality",
						colname, format_type_be(a->atttypid), opcname),
				 errhint("Use a key index with the type's default operator class.")));

	/* a nondeterministic collation makes values of different bytes equal */
	if ((OidIsValid(collation) && !get_collation_isdeterministic(collation)) ||
		(OidIsValid(a->attcollation) && !get_collation_isdeterministic(a->attcollation)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("key column \"%s\" of type %s has a nondeterministic collation",
						colname, format_type_be(a->atttypid)),
				 errdetail("Values of the key that differ in their bytes would be equal, so the same row could have several keys."),
				 errhint("Use a key column whose equality is bitwise, e.g. text under a deterministic collation.")));

	/*
	 * bpchar without a length: 'a' = 'a ', trailing spaces do not count
	 * (with a length, every value is padded to it: bitwise)
	 */
	if (base == BPCHAROID && typmod < 0)
		return 'b';

	proc = get_opfamily_proc(opfamily, opcintype, opcintype, BTEQUALIMAGE_PROC);
	if (OidIsValid(proc))
		image = DatumGetBool(OidFunctionCall1Coll(proc, collation, ObjectIdGetDatum(opcintype)));
	if (image)
		return 0;
	switch (base)
	{
		case FLOAT4OID:
			return 'f';
		case FLOAT8OID:
			return 'F';
		case NUMERICOID:
			return 'n';
		case INTERVALOID:
			return 'i';
		default:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("key column \"%s\" of type %s is not supported", colname,
							format_type_be(a->atttypid)),
					 errdetail("Its equality (operator class %s) is not bitwise: values of the key that differ in their bytes can be equal, so the same row could have several keys.",
							   opcname),
					 errhint("Use a key column whose equality is bitwise (integers, text under a deterministic collation, uuid, timestamps, ...).")));
	}
	return 0;					/* keep the compiler quiet */
}

HtRelEnc *
ht_relenc_build(Relation rel, HtKeyCols *kc)
{
	int			nkeys = kc->nkeys;
	char	  **key_names = kc->names;
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
	re->keyform = palloc(sizeof(char) * nkeys);
	re->keyeqop = palloc(sizeof(Oid) * nkeys);

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
		re->keyform[k] = key_form(key_names[k], a, kc->opclass[k], kc->collation[k],
								  &re->keyeqop[k]);
		/* (a canonical form is part of the signature: a change re-hashes) */
		appendStringInfo(&sig, " %s %s%s", quote_identifier(key_names[k]),
						 format_type_with_typemod(a->atttypid, a->atttypmod),
						 re->keyform[k] ? " canonical" : "");
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

/*
 * interval: equal when months * 30 days + days + time are (interval_cmp).
 * The canonical value of that span has as many whole 30-day months as
 * fit in the month field, then as many whole days as fit in the day
 * field, the rest in time; all three of the span's sign ('-1 hour' stays
 * 0 months 0 days -01:00, '24 hours' becomes 1 day, '30 days' 1 month).
 */
static Interval
canonical_interval(const Interval *v)
{
	Interval	c;
	int64		days = (int64) v->month * DAYS_PER_MONTH + v->day;
	int64		t = v->time;
	int64		m;
	int64		d;
	int64		rest;

	/* the span as days and time in [0, 1 day) ... */
	days += t / USECS_PER_DAY;
	t %= USECS_PER_DAY;
	if (t < 0)
	{
		t += USECS_PER_DAY;
		days--;
	}
	/* ... or, for a negative span, in (-1 day, 0] */
	if (days < 0 && t > 0)
	{
		days++;
		t -= USECS_PER_DAY;
	}
	m = days / DAYS_PER_MONTH;
	m = Max(Min(m, PG_INT32_MAX), PG_INT32_MIN);
	d = days - m * DAYS_PER_MONTH;
	rest = d - Max(Min(d, PG_INT32_MAX), PG_INT32_MIN);
	d -= rest;
	/* rest is nonzero only for the largest intervals, and t stays in range */
	if (pg_mul_s64_overflow(rest, USECS_PER_DAY, &rest) || pg_add_s64_overflow(t, rest, &t))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("interval out of range")));
	c.month = (int32) m;
	c.day = (int32) d;
	c.time = t;
	return c;
}

/* the canonical form of a key value (key_form()), written as a send form */
static void
encode_key_value(HtRelEnc *re, int k, Datum d, StringInfo buf)
{
	switch (re->keyform[k])
	{
		case 0:
			encode_value(re->keyenc[k], d, buf);
			break;
		case 'f':
			{
				/* -0 is 0, every NaN one NaN (float4eq) */
				float4		f = DatumGetFloat4(d);
				uint32		bits;

				if (isnan(f))
					bits = (uint32) 0x7FC00000;
				else
				{
					if (f == 0)
						f = 0.0f;
					memcpy(&bits, &f, sizeof(bits));
				}
				put_u32(buf, bits);
				break;
			}
		case 'F':
			{
				float8		f = DatumGetFloat8(d);
				uint64		bits;

				if (isnan(f))
					bits = UINT64CONST(0x7FF8000000000000);
				else
				{
					if (f == 0)
						f = 0.0;
					memcpy(&bits, &f, sizeof(bits));
				}
				bits = pg_hton64(bits);
				put_bytes(buf, &bits, sizeof(bits));
				break;
			}
		case 'n':
			{
				/* 1.0 = 1.00 = 1: the display scale goes */
				Datum		t = DirectFunctionCall1(numeric_trim_scale, d);

				encode_value(re->keyenc[k], t, buf);
				break;
			}
		case 'i':
			{
				Interval	c = canonical_interval(DatumGetIntervalP(d));

				encode_value(re->keyenc[k], IntervalPGetDatum(&c), buf);
				break;
			}
		case 'b':
			{
				/* trailing spaces do not count (bpchareq) */
				text	   *t = DatumGetTextPP(d);
				const char *p = VARDATA_ANY(t);
				int			len = VARSIZE_ANY_EXHDR(t);

				while (len > 0 && p[len - 1] == ' ')
					len--;
				encode_value(re->keyenc[k], PointerGetDatum(cstring_to_text_with_len(p, len)),
							 buf);
				break;
			}
		default:
			elog(ERROR, "hashtree: unknown key form %c", re->keyform[k]);
	}
}

/* errors while encoding a key name the key column */
static void
key_error_context(void *arg)
{
	errcontext("hashtree key column \"%s\"", (const char *) arg);
}

bytea *
ht_key_from_values(HtRelEnc *re, Datum *values)
{
	StringInfoData buf;
	ErrorContextCallback errcb;

	init_varlena_buf(&buf);
	errcb.callback = key_error_context;
	WITH_UTF8_CLIENT(
					 for (int k = 0; k < re->nkeys; k++)
					 {
						 int at = buf.len;
						 uint32 len;

						 put_u32(&buf, 0);
						 errcb.arg = re->keyname[k];
						 errcb.previous = error_context_stack;
						 error_context_stack = &errcb;
						 encode_key_value(re, k, values[k], &buf);
						 error_context_stack = errcb.previous;
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
	bytea	   *h = palloc(VARHDRSZ + HT_DIGEST_LEN);	/* cut to HT_ROW_HASH_LEN */
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
	WITH_CLIENT(hash_client_encoding(),
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
	SET_VARSIZE(h, VARHDRSZ + HT_ROW_HASH_LEN);
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
						 /* (a canonical value as it is: no typmod applied) */
						 values[k] = ReceiveFunctionCall(&re->keyenc[k]->recv, &buf,
														 re->keyenc[k]->ioparam,
														 re->keyform[k] ? -1 : re->keytypmod[k]);
						 pfree(buf.data);
						 p += len;
					 }
	);
	if (p != end)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("malformed hashtree key")));
}
