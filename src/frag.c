/*-------------------------------------------------------------------------
 *
 * frag.c
 *	  Fragmented tables: registry, layout, lookups, frag_init.
 *
 * A fragmented table is a table PARTITION BY HASH on plain columns whose
 * partitions are exactly the fragments of its recorded linear-hashing
 * state (linhash.h): fragment k is the partition with remainder k - 1 and
 * the modulus the state gives it.  PostgreSQL routes and prunes; we only
 * choose the bounds.  Every function checks the partitions against the
 * state first (ht_frag_layout), so a table changed behind our back is an
 * error, never a wrong answer.
 *
 * key_to_frag_number hashes the key exactly as PostgreSQL's routing does
 * (compute_partition_hash_value: each column's extended hash support
 * function with the partitioning seed, combined) and applies the linear
 * hashing rule to the result, so it names the partition PostgreSQL puts
 * the row in.  match_spec_to_frag_numbers plans (never runs) a SELECT
 * with the predicate and reads which partitions the plan scans.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/transam.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/analyze.h"
#include "parser/parse_coerce.h"
#include "parser/parse_type.h"
#include "parser/parser.h"
#include "parser/parsetree.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/partcache.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "common.h"
#include "ddl.h"
#include "frag.h"
#include "linhash.h"
#include "sqlexec.h"

/* set by ht_fragremote_init() (fragremote.c) */
const HtFragRemoteHooks *ht_frag_remote = NULL;

/* ---- registry ---------------------------------------------------------------- */

static HtQuery q_frag_lookup = {
	"SELECT n_fragments, next_n_to_split, n_doubles, op, op_phase, op_error,"
	" op_sources, op_helpers, coalesce(op_moved, 0) FROM hashtree.frag_table"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	1, {OIDOID}
};

static Oid *
oid_array(Datum d, bool isnull, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	Oid		   *out;

	*n = 0;
	if (isnull)
		return NULL;
	deconstruct_array(DatumGetArrayTypeP(d), OIDOID, sizeof(Oid), true, TYPALIGN_INT,
					  &elems, &nulls, n);
	out = palloc(sizeof(Oid) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		out[i] = DatumGetObjectId(elems[i]);
	return out;
}

static char *
text_col(int col)
{
	bool		isnull;
	Datum		d = ht_col(0, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

bool
ht_frag_lookup(Oid relid, HtFragTable *ft)
{
	Datum		v[1] = {ObjectIdGetDatum(relid)};
	bool		isnull;

	memset(ft, 0, sizeof(*ft));
	ft->relid = relid;
	if (ht_exec(&q_frag_lookup, v, NULL, 1) == 0)
		return false;
	ft->s.n = DatumGetInt32(ht_col(0, 1, &isnull));
	ft->s.p = DatumGetInt32(ht_col(0, 2, &isnull));
	ft->s.l = DatumGetInt32(ht_col(0, 3, &isnull));
	ft->op = text_col(4);
	ft->op_phase = text_col(5);
	ft->op_error = text_col(6);
	{
		Datum		d = ht_col(0, 7, &isnull);

		ft->sources = oid_array(d, isnull, &ft->nsources);
		d = ht_col(0, 8, &isnull);
		ft->helpers = oid_array(d, isnull, &ft->nhelpers);
		ft->op_moved = DatumGetInt64(ht_col(0, 9, &isnull));
	}
	if (!ht_lin_valid(&ft->s))
		elog(ERROR, "hashtree: invalid recorded state (%d, %d, %d)", ft->s.n, ft->s.p, ft->s.l);
	return true;
}

static HtQuery q_frag_store = {
	"UPDATE hashtree.frag_table SET n_fragments = $2, next_n_to_split = $3, n_doubles = $4,"
	" op = NULL, op_phase = NULL, op_sources = NULL, op_helpers = NULL"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	4, {OIDOID, INT4OID, INT4OID, INT4OID}
};

/* write a state into the registry, as the extension's owner */
static void
registry_write(HtQuery *q, Oid relid, const HtLinState *s)
{
	Datum		v[4];

	v[0] = ObjectIdGetDatum(relid);
	v[1] = Int32GetDatum(s->n);
	v[2] = Int32GetDatum(s->p);
	v[3] = Int32GetDatum(s->l);
	ht_exec_as_owner(q, v, NULL, 0);
}

void
ht_frag_store_state(Oid relid, const HtLinState *s)
{
	registry_write(&q_frag_store, relid, s);
}

static HtQuery q_frag_register = {
	"INSERT INTO hashtree.frag_table (parent, n_fragments, next_n_to_split, n_doubles)"
	" VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4)",
	4, {OIDOID, INT4OID, INT4OID, INT4OID}
};

static void
frag_register(Oid relid, const HtLinState *s)
{
	registry_write(&q_frag_register, relid, s);
}

static HtQuery q_frag_forget = {
	"DELETE FROM hashtree.frag_table f WHERE NOT EXISTS"
	" (SELECT 1 FROM pg_catalog.pg_class c"
	" WHERE c.oid OPERATOR(pg_catalog.=) f.parent::pg_catalog.oid)",
	0, {InvalidOid}
};

/* forget the tables that were dropped (needs SPI) */
static void
forget_dropped(void)
{
	ht_exec_as_owner(&q_frag_forget, NULL, NULL, 0);
}

/*
 * hashtree._frag_dropped() RETURNS void
 * After a DROP (event trigger sql_drop): the fragmented tables that no
 * longer exist are forgotten.  Nothing while the extension's own statements
 * run.  Locks: ROW EXCLUSIVE on hashtree.frag_table.
 */
PG_FUNCTION_INFO_V1(ht_frag_dropped);
Datum
ht_frag_dropped(PG_FUNCTION_ARGS)
{
	if (ht_api_depth > 0)
		PG_RETURN_VOID();
	SPI_connect();
	HT_API_BEGIN();
	forget_dropped();
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---- tables, names, layout ------------------------------------------------------- */

char *
ht_rel_qname(Oid relid)
{
	char	   *name = get_rel_name(relid);

	if (name == NULL)
		elog(ERROR, "hashtree: relation %u does not exist", relid);
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), name);
}

void
ht_frag_check_table(Relation rel)
{
	PartitionKey key;

	if (!pg_class_ownercheck(RelationGetRelid(rel), GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, RelationGetRelationName(rel));
	if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("table \"%s\" is not partitioned", RelationGetRelationName(rel)),
				 errhint("A fragmented table is declared PARTITION BY HASH (columns); "
						 "a plain table is converted with hashtree.frag_activate().")));
	key = RelationGetPartitionKey(rel);
	if (key->strategy != PARTITION_STRATEGY_HASH)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("table \"%s\" is not partitioned by hash", RelationGetRelationName(rel))));
	for (int i = 0; i < key->partnatts; i++)
		if (key->partattrs[i] == 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("the partition key of \"%s\" has an expression", RelationGetRelationName(rel)),
					 errdetail("Fragmented tables are partitioned by plain columns.")));
	if (rel->rd_rel->relispartition)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("table \"%s\" is itself a partition", RelationGetRelationName(rel))));
}

/* the (modulus, remainder) of a hash partition */
static void
bound_of(Oid relid, int *modulus, int *remainder)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	bool		isnull;
	Datum		d;
	PartitionBoundSpec *spec;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "hashtree: cache lookup failed for relation %u", relid);
	d = SysCacheGetAttr(RELOID, tup, Anum_pg_class_relpartbound, &isnull);
	if (isnull)
		elog(ERROR, "hashtree: relation %u has no partition bound", relid);
	spec = (PartitionBoundSpec *) stringToNode(TextDatumGetCString(d));
	ReleaseSysCache(tup);
	if (spec->strategy != PARTITION_STRATEGY_HASH || spec->is_default)
		elog(ERROR, "hashtree: relation %u is not a hash partition", relid);
	*modulus = spec->modulus;
	*remainder = spec->remainder;
}

static void
layout_mismatch(Relation parent, const HtLinState *s, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the partitions of \"%s\" do not match its recorded state (%d fragments, "
					"next to split %d, %d doublings)",
					RelationGetRelationName(parent), s->n, s->p, s->l),
			 errdetail("%s", detail),
			 errhint("Partitions of a fragmented table are changed only with hashtree.add_frag() "
					 "and hashtree.del_frag().")));
}

Oid *
ht_frag_layout(Relation parent, const HtLinState *s)
{
	PartitionDesc pd = RelationGetPartitionDesc(parent, true);
	Oid		   *oids = palloc0(sizeof(Oid) * s->n);

	if (pd->nparts != s->n)
		layout_mismatch(parent, s, psprintf("It has %d partitions.", pd->nparts));
	for (int i = 0; i < pd->nparts; i++)
	{
		int			m;
		int			r;
		int32		em;
		int32		er;

		bound_of(pd->oids[i], &m, &r);
		if (r < 0 || r >= s->n || OidIsValid(oids[r]))
			layout_mismatch(parent, s, psprintf("Partition \"%s\" has remainder %d.",
												get_rel_name(pd->oids[i]), r));
		ht_lin_bound(s, r + 1, &em, &er);
		if (m != em)
			layout_mismatch(parent, s, psprintf("Partition \"%s\" has modulus %d, fragment %d needs %d.",
												get_rel_name(pd->oids[i]), m, r + 1, em));
		oids[r] = pd->oids[i];
	}
	return oids;
}

char *
ht_frag_name(Relation parent, int32 k)
{
	char		suffix[32];
	const char *base = RelationGetRelationName(parent);
	int			blen = strlen(base);
	int			slen;

	snprintf(suffix, sizeof(suffix), "_frag%d", k);
	slen = strlen(suffix);
	if (blen + slen > NAMEDATALEN - 1)
		blen = pg_mbcliplen(base, blen, NAMEDATALEN - 1 - slen);
	return psprintf("%.*s%s", blen, base, suffix);
}

void
ht_frag_rename_indexes(const char *nsp, const char *from, const char *to)
{
	int			plen = strlen(from);
	Oid			nspid = get_namespace_oid(nsp, false);
	Oid			relid = get_relname_relid(from, nspid);
	uint64		n;
	char	  **names;
	bool		isnull;

	if (!OidIsValid(relid))
		elog(ERROR, "hashtree: relation \"%s\" not found in schema \"%s\"", from, nsp);
	n = ht_sql("SELECT c.relname::pg_catalog.text FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c"
			   " ON c.oid OPERATOR(pg_catalog.=) i.indexrelid"
			   " WHERE i.indrelid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid", relid);
	names = palloc(sizeof(char *) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
		names[i] = TextDatumGetCString(ht_col(i, 1, &isnull));
	for (uint64 i = 0; i < n; i++)
	{
		const char *rest;
		char	   *name;
		int			tlen = strlen(to);

		if (strncmp(names[i], from, plen) != 0)
			continue;
		rest = names[i] + plen;
		if (tlen + strlen(rest) > NAMEDATALEN - 1)
			tlen = pg_mbcliplen(to, tlen, NAMEDATALEN - 1 - strlen(rest));
		name = psprintf("%.*s%s", tlen, to, rest);
		if (OidIsValid(get_relname_relid(name, nspid)))
			continue;			/* taken: keep the generated name */
		ht_sql("ALTER INDEX %s RENAME TO %s", quote_qualified_identifier(nsp, names[i]),
			   quote_identifier(name));
	}
}

void
ht_frag_check_references(Oid relid, const char *qparent, const char *hint)
{
	bool		isnull;

	ht_sql("SELECT c.conname::pg_catalog.text, c.conrelid::pg_catalog.regclass::pg_catalog.text"
		   " FROM pg_catalog.pg_constraint c"
		   " WHERE c.contype OPERATOR(pg_catalog.=) 'f'::pg_catalog.\"char\""
		   " AND c.confrelid OPERATOR(pg_catalog.=) ANY (pg_catalog.array_prepend('%u'::pg_catalog.oid,"
		   " ARRAY(SELECT i.inhrelid FROM pg_catalog.pg_inherits i"
		   " WHERE i.inhparent OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid)))"
		   " AND c.conparentid OPERATOR(pg_catalog.=) 0::pg_catalog.oid ORDER BY 1 LIMIT 1",
		   relid, relid);
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("table %s is referenced by foreign key \"%s\" of %s", qparent,
						TextDatumGetCString(ht_col(0, 1, &isnull)),
						TextDatumGetCString(ht_col(0, 2, &isnull))),
				 errdetail("A fragment that is referenced cannot be detached."),
				 errhint("%s", hint)));
}

void
ht_copy_grants(Oid from, const char *qto)
{
	uint64		n;
	char	  **grants;
	bool		isnull;

	n = ht_sql("SELECT pg_catalog.format('GRANT %%s ON %%s TO %%s%%s', a.privilege_type, %s,"
			   " CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid THEN 'PUBLIC'"
			   " ELSE pg_catalog.quote_ident(r.rolname) END,"
			   " CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)"
			   " FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a"
			   " LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee"
			   " WHERE c.oid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid"
			   " AND a.grantee OPERATOR(pg_catalog.<>) c.relowner", quote_literal_cstr(qto), from);
	grants = palloc(sizeof(char *) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
		grants[i] = TextDatumGetCString(ht_col(i, 1, &isnull));
	for (uint64 i = 0; i < n; i++)
		ht_sql("%s", grants[i]);
}

/* open a registered fragmented table and check its layout */
static Relation
open_registered(Oid relid, LOCKMODE mode, HtFragTable *ft, Oid **frags)
{
	Relation	rel = table_open(relid, mode);

	if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE || !ht_frag_lookup(relid, ft))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not a fragmented table", RelationGetRelationName(rel)),
				 errhint("Make it one with hashtree.frag_init() or hashtree.frag_activate().")));
	if (frags != NULL)
		*frags = ht_frag_layout(rel, &ft->s);
	return rel;
}

static Datum
state_datum(FunctionCallInfo fcinfo, const HtLinState *s)
{
	TupleDesc	td;
	Datum		v[3];
	bool		n[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &td) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "hashtree: return type must be a row type");
	v[0] = Int32GetDatum(s->n);
	v[1] = Int32GetDatum(s->p);
	v[2] = Int32GetDatum(s->l);
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(td), v, n));
}

/* ---- frag_init, frag_state, frag_names, frag_size -------------------------------- */

static float4
rel_reltuples(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	float4		t;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "hashtree: cache lookup failed for relation %u", relid);
	t = ((Form_pg_class) GETSTRUCT(tup))->reltuples;
	ReleaseSysCache(tup);
	return t;
}

/*
 * hashtree.frag_init(tbl regclass, n_fragments int DEFAULT 1,
 *                    nodes text[] DEFAULT NULL) RETURNS frag_state
 * Creates the n fragments of a hash-partitioned table without partitions
 * (owned by the table's owner) and registers it; with nodes, places them
 * (fragremote.c).  Locks: ACCESS EXCLUSIVE on tbl; ROW EXCLUSIVE on
 * hashtree.frag_table.
 */
PG_FUNCTION_INFO_V1(ht_frag_init);
Datum
ht_frag_init(PG_FUNCTION_ARGS)
{
	Oid			relid;
	int32		n;
	Relation	rel;
	HtLinState	s;
	HtFragTable ft;
	char	   *parent;
	char	   *nsp;
	char	  **names;
	Oid			owner;

	HT_ARG_NOT_NULL(0, "tbl");
	/* frag_init(tbl, n, nodes): placed on other servers too (fragremote.c) */
	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
		return ht_frag_remote->init_nodes(fcinfo);
	HT_ARG_NOT_NULL(1, "n_fragments");
	relid = PG_GETARG_OID(0);
	n = PG_GETARG_INT32(1);
	if (n < 1 || n > HT_MAX_FRAGMENTS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("n_fragments must be between 1 and %d, not %d", HT_MAX_FRAGMENTS, n)));

	rel = table_open(relid, AccessExclusiveLock);
	ht_frag_check_table(rel);
	if (RelationGetPartitionDesc(rel, false)->nparts > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" already has partitions", RelationGetRelationName(rel)),
				 errhint("frag_init() creates the fragments of a table that has none.")));

	SPI_connect();
	HT_API_BEGIN();
	if (ht_frag_lookup(relid, &ft))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table \"%s\" is already a fragmented table", RelationGetRelationName(rel))));
	s = ht_lin_state(n);
	parent = ht_rel_qname(relid);
	nsp = get_namespace_name(RelationGetNamespace(rel));
	owner = rel->rd_rel->relowner;
	names = palloc(sizeof(char *) * n);
	for (int32 k = 1; k <= n; k++)
		names[k - 1] = ht_frag_name(rel, k);
	/* (DDL on a table refuses while this backend holds it open; the lock stays) */
	table_close(rel, NoLock);
	for (int32 k = 1; k <= n; k++)
	{
		int32		m;
		int32		r;

		ht_lin_bound(&s, k, &m, &r);
		ht_sql("CREATE TABLE %s PARTITION OF %s FOR VALUES WITH (MODULUS %d, REMAINDER %d)",
			   quote_qualified_identifier(nsp, names[k - 1]), parent, m, r);
		/* fragments belong to the table's owner (the caller may be a superuser) */
		if (owner != GetUserId())
			ht_sql("ALTER TABLE %s OWNER TO %s", quote_qualified_identifier(nsp, names[k - 1]),
				   quote_identifier(GetUserNameFromId(owner, false)));
	}
	frag_register(relid, &s);
	ht_ddl_partitions_changed(relid);
	HT_API_END();
	SPI_finish();
	return state_datum(fcinfo, &s);
}

/*
 * hashtree.frag_state(tbl regclass) RETURNS frag_state
 * The recorded state of a fragmented table.  Locks: ACCESS SHARE on tbl.
 */
PG_FUNCTION_INFO_V1(ht_frag_state);
Datum
ht_frag_state(PG_FUNCTION_ARGS)
{
	HtFragTable ft;
	Relation	rel;

	HT_ARG_NOT_NULL(0, "tbl");
	SPI_connect();
	rel = open_registered(PG_GETARG_OID(0), AccessShareLock, &ft, NULL);
	table_close(rel, NoLock);
	SPI_finish();
	return state_datum(fcinfo, &ft.s);
}

/*
 * hashtree.frag_names(tbl regclass) RETURNS SETOF regclass
 * The fragments 1..N, after checking them against the state.  Locks:
 * ACCESS SHARE on tbl.
 */
PG_FUNCTION_INFO_V1(ht_frag_names);
Datum
ht_frag_names(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HtFragTable ft;
	Relation	rel;
	Oid		   *frags;

	HT_ARG_NOT_NULL(0, "tbl");
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	rel = open_registered(PG_GETARG_OID(0), AccessShareLock, &ft, &frags);
	for (int32 k = 0; k < ft.s.n; k++)
	{
		Datum		v = ObjectIdGetDatum(frags[k]);
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &v, &isnull);
	}
	table_close(rel, NoLock);
	SPI_finish();
	return (Datum) 0;
}

/*
 * hashtree.frag_size(tbl regclass, exact boolean DEFAULT false)
 *   RETURNS TABLE(fragment int, relation regclass, rows bigint)
 * Rows per fragment: counted (exact) or the planner's estimate.  Locks:
 * ACCESS SHARE on tbl (and on the fragments when counting).
 */
PG_FUNCTION_INFO_V1(ht_frag_size);
Datum
ht_frag_size(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HtFragTable ft;
	Relation	rel;
	Oid		   *frags;
	bool		exact;

	HT_ARG_NOT_NULL(0, "tbl");
	HT_ARG_NOT_NULL(1, "exact");
	exact = PG_GETARG_BOOL(1);
	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	rel = open_registered(PG_GETARG_OID(0), AccessShareLock, &ft, &frags);
	for (int32 k = 0; k < ft.s.n; k++)
	{
		Datum		v[3];
		bool		nulls[3] = {false, false, false};

		v[0] = Int32GetDatum(k + 1);
		v[1] = ObjectIdGetDatum(frags[k]);
		if (exact)
		{
			bool		isnull;

			ht_sql("SELECT pg_catalog.count(*) FROM ONLY %s", ht_rel_qname(frags[k]));
			v[2] = ht_col(0, 1, &isnull);
		}
		else
		{
			/* the planner's estimate (unknown until vacuumed or analyzed) */
			float4		t = rel_reltuples(frags[k]);

			v[2] = Int64GetDatum((int64) t);
			nulls[2] = (t < 0);
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	table_close(rel, NoLock);
	SPI_finish();
	return (Datum) 0;
}

/*
 * hashtree.frag_activate(tbl regclass) RETURNS frag_state
 * A plain table becomes fragment 1 of a new hash parent that takes its
 * name, partitioned by its primary key; no rewrite: the new partition
 * carries a CHECK identical to the partition constraint (validated as the
 * table's owner), so ATTACH does not scan it.  Locks: SHARE UPDATE
 * EXCLUSIVE on tbl while checking it, then ACCESS EXCLUSIVE on tbl from
 * adding the CHECK (ALTER TABLE ... ADD CONSTRAINT) until commit, so the
 * validation scan blocks readers and writers too; ACCESS EXCLUSIVE on the
 * new parent; ROW EXCLUSIVE on hashtree.frag_table.
 */
PG_FUNCTION_INFO_V1(ht_frag_activate);
Datum
ht_frag_activate(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Relation	rel;
	Oid			pk;
	char	   *nsp;
	char	   *name;
	char	   *qname;
	char	   *frag1;
	char	   *tmp;
	char	   *qtmp;
	StringInfoData keys;
	Oid			parent;
	HtLinState	s = ht_lin_state(1);
	bool		isnull;
	uint64		n;

	HT_ARG_NOT_NULL(0, "tbl");
	relid = PG_GETARG_OID(0);
	rel = table_open(relid, ShareUpdateExclusiveLock);
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, RelationGetRelationName(rel));
	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a plain table", RelationGetRelationName(rel)),
				 errhint("frag_activate() converts a plain table; a table PARTITION BY HASH "
						 "without partitions is made fragmented with frag_init().")));
	if (rel->rd_rel->relrowsecurity)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("table \"%s\" has row level security", RelationGetRelationName(rel)),
				 errdetail("Its policies would stay on the fragment, and reads through the new "
						   "parent would not apply them.")));
	pk = RelationGetPrimaryKeyIndex(rel);
	if (!OidIsValid(pk))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key", RelationGetRelationName(rel)),
				 errdetail("The columns of the primary key become the partition key.")));
	nsp = get_namespace_name(RelationGetNamespace(rel));
	name = pstrdup(RelationGetRelationName(rel));
	qname = quote_qualified_identifier(nsp, name);
	frag1 = ht_frag_name(rel, 1);
	tmp = psprintf("hashtree_frag_%u_parent", relid);
	qtmp = quote_qualified_identifier(nsp, tmp);
	{
		Relation	idx = index_open(pk, AccessShareLock);

		initStringInfo(&keys);
		for (int i = 0; i < idx->rd_index->indnkeyatts; i++)
			appendStringInfo(&keys, "%s%s", i ? ", " : "",
							 quote_identifier(NameStr(TupleDescAttr(RelationGetDescr(rel),
																	idx->rd_index->indkey.values[i] - 1)->attname)));
		index_close(idx, AccessShareLock);
	}
	table_close(rel, NoLock);

	SPI_connect();
	HT_API_BEGIN();
	{
		HtFragTable ft;

		if (ht_frag_lookup(relid, &ft))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("table \"%s\" is already a fragmented table", name)));
	}
	ht_sql("SELECT 1 FROM hashtree.tracked_table"
		   " WHERE schema_name OPERATOR(pg_catalog.=) %s::pg_catalog.text"
		   " AND table_name OPERATOR(pg_catalog.=) %s::pg_catalog.text",
		   quote_literal_cstr(nsp), quote_literal_cstr(name));
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is tracked", qname),
				 errhint("Untrack it, activate it, and track the new parent.")));
	if (OidIsValid(get_relname_relid(frag1, RelationGetNamespace(rel))))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_TABLE),
				 errmsg("relation \"%s\" already exists", frag1)));

	/* the new parent, its owner and grants those of the table */
	ht_sql("CREATE TABLE %s (LIKE %s INCLUDING ALL) PARTITION BY HASH (%s)", qtmp, qname, keys.data);
	parent = get_relname_relid(tmp, RelationGetNamespace(rel));
	ht_sql("SELECT pg_catalog.quote_ident(r.rolname) FROM pg_catalog.pg_class c"
		   " JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.relowner"
		   " WHERE c.oid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid", relid);
	ht_sql("ALTER TABLE %s OWNER TO %s", qtmp, TextDatumGetCString(ht_col(0, 1, &isnull)));
	ht_copy_grants(relid, qtmp);

	/* the bound, validated while reads and writes go on */
	ht_sql("ALTER TABLE %s ADD CONSTRAINT hashtree_frag_bound CHECK"
		   " (pg_catalog.satisfies_hash_partition('%u'::pg_catalog.oid, 1, 0, %s)) NOT VALID",
		   qname, parent, keys.data);
	{
		HtUserContext ctx;

		/* (evaluates the key's hash functions: the table owner's code) */
		ht_as_table_owner_begin(relid, &ctx);
		ht_sql("ALTER TABLE %s VALIDATE CONSTRAINT hashtree_frag_bound", qname);
		ht_as_table_owner_end(&ctx);
	}

	/* the swap: names, then ATTACH without a scan */
	ht_sql("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE", qname);
	ht_frag_rename_indexes(nsp, name, frag1);
	ht_sql("ALTER TABLE %s RENAME TO %s", qname, quote_identifier(frag1));
	ht_frag_rename_indexes(nsp, tmp, name);
	ht_sql("ALTER TABLE %s RENAME TO %s", qtmp, quote_identifier(name));
	ht_sql("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES WITH (MODULUS 1, REMAINDER 0)",
		   qname, quote_qualified_identifier(nsp, frag1));
	ht_sql("ALTER TABLE %s DROP CONSTRAINT hashtree_frag_bound", quote_qualified_identifier(nsp, frag1));

	/* sequences: owned by the parent now; identity values go on from where they were */
	{
		char	   *lfrag1 = quote_literal_cstr(quote_qualified_identifier(nsp, frag1));

		n = ht_sql("SELECT pg_catalog.quote_ident(a.attname),"
				   " a.attidentity OPERATOR(pg_catalog.<>) ''::pg_catalog.\"char\","
				   " pg_catalog.pg_get_serial_sequence(%s::pg_catalog.text, a.attname::pg_catalog.text),"
				   " pg_catalog.pg_get_serial_sequence(%s::pg_catalog.text, a.attname::pg_catalog.text)"
				   " FROM pg_catalog.pg_attribute a"
				   " WHERE a.attrelid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid"
				   " AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped"
				   " AND pg_catalog.pg_get_serial_sequence(%s::pg_catalog.text, a.attname::pg_catalog.text)"
				   " IS NOT NULL",
				   lfrag1, quote_literal_cstr(qname), relid, lfrag1);
	}
	{
		char	  **col = palloc(sizeof(char *) * Max(n, 1));
		bool	   *identity = palloc(sizeof(bool) * Max(n, 1));
		char	  **oldseq = palloc(sizeof(char *) * Max(n, 1));
		char	  **newseq = palloc(sizeof(char *) * Max(n, 1));

		for (uint64 i = 0; i < n; i++)
		{
			col[i] = TextDatumGetCString(ht_col(i, 1, &isnull));
			identity[i] = DatumGetBool(ht_col(i, 2, &isnull));
			oldseq[i] = TextDatumGetCString(ht_col(i, 3, &isnull));
			{
				Datum		d = ht_col(i, 4, &isnull);

				newseq[i] = isnull ? NULL : TextDatumGetCString(d);
			}
		}
		for (uint64 i = 0; i < n; i++)
		{
			if (identity[i] && newseq[i] != NULL)
				ht_sql("SELECT pg_catalog.setval(%s::pg_catalog.regclass, s.last_value, s.is_called)"
					   " FROM %s s", quote_literal_cstr(newseq[i]), oldseq[i]);
			else if (!identity[i])
				ht_sql("ALTER SEQUENCE %s OWNED BY %s.%s", oldseq[i], qname, col[i]);
		}
	}

	frag_register(parent, &s);
	HT_API_END();
	SPI_finish();
	return state_datum(fcinfo, &s);
}

/* ---- frag_number, key_to_frag_number ----------------------------------------------- */

/*
 * hashtree.frag_number(n_fragments int, hash numeric) RETURNS int
 * The linear-hashing rule on a 64-bit hash.  No locks.
 */
PG_FUNCTION_INFO_V1(ht_frag_number);
Datum
ht_frag_number(PG_FUNCTION_ARGS)
{
	int32		n = PG_GETARG_INT32(0);
	Numeric		h = PG_GETARG_NUMERIC(1);
	char	   *digits;
	char	   *end;
	uint64		hash;

	if (n < 1 || n > HT_MAX_FRAGMENTS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("n_fragments must be between 1 and %d, not %d", HT_MAX_FRAGMENTS, n)));
	digits = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(h)));
	errno = 0;
	hash = strtou64(digits, &end, 10);
	if (digits[0] == '-' || *end != '\0' || errno != 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("hash must be an integer between 0 and 18446744073709551615, not %s", digits)));
	PG_RETURN_INT32(ht_lin_frag(n, hash));
}

/*
 * Per call site: the table's key, its hash functions, and N.  Checked at
 * every call against the table's partitions (so an add_frag or del_frag
 * earlier in the same transaction is seen) and the current role.
 */
typedef struct KeyCache
{
	MemoryContext cxt;			/* holds this cache */
	Oid			relid;
	Oid			userid;			/* the role that was checked for SELECT */
	int32		n;
	Oid		   *parts;			/* the partitions seen, in bound order */
	int			natts;
	Oid			argtype;		/* type of the arguments seen (or InvalidOid) */
	FmgrInfo   *hashfn;			/* the partition key's extended hash functions */
	Oid		   *collation;
	Oid		   *keytype;
	FmgrInfo   *castfn;			/* per column: a cast from the argument type, if any */
	bool	   *castvalid;
	Oid		   *castin;			/* per column: input function for unknown literals */
	Oid		   *castioparam;
} KeyCache;

static KeyCache *
key_cache(FunctionCallInfo fcinfo, Oid relid)
{
	KeyCache   *kc = (KeyCache *) fcinfo->flinfo->fn_extra;
	MemoryContext old;
	MemoryContext cxt;
	Relation	rel;
	PartitionKey key;
	PartitionDesc pd;
	HtFragTable ft;
	AclResult	acl;

	/* the usual case: the lock taken at the first call is still ours */
	if (kc != NULL && kc->relid == relid && kc->userid == GetUserId())
	{
		bool		same = false;

		rel = RelationIdGetRelation(relid);
		if (RelationIsValid(rel))
		{
			if (CheckRelationLockedByMe(rel, AccessShareLock, true) &&
				rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
			{
				pd = RelationGetPartitionDesc(rel, true);
				same = pd->nparts == kc->n &&
					memcmp(pd->oids, kc->parts, sizeof(Oid) * kc->n) == 0;
			}
			RelationClose(rel);
		}
		if (same)
			return kc;
	}
	rel = table_open(relid, AccessShareLock);
	acl = pg_class_aclcheck(relid, GetUserId(), ACL_SELECT);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_TABLE, RelationGetRelationName(rel));
	table_close(rel, NoLock);
	if (kc != NULL)
	{
		fcinfo->flinfo->fn_extra = NULL;
		MemoryContextDelete(kc->cxt);
	}

	cxt = AllocSetContextCreate(fcinfo->flinfo->fn_mcxt, "hashtree key_to_frag_number",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	kc = palloc0(sizeof(KeyCache));
	kc->cxt = cxt;
	SPI_connect();
	rel = open_registered(relid, AccessShareLock, &ft, NULL);
	(void) ht_frag_layout(rel, &ft.s);
	SPI_finish();
	MemoryContextSwitchTo(cxt);
	key = RelationGetPartitionKey(rel);
	pd = RelationGetPartitionDesc(rel, true);
	kc->relid = relid;
	kc->userid = GetUserId();
	kc->n = ft.s.n;
	kc->parts = palloc(sizeof(Oid) * Max(pd->nparts, 1));
	memcpy(kc->parts, pd->oids, sizeof(Oid) * pd->nparts);
	kc->natts = key->partnatts;
	kc->hashfn = palloc(sizeof(FmgrInfo) * kc->natts);
	kc->collation = palloc(sizeof(Oid) * kc->natts);
	kc->keytype = palloc(sizeof(Oid) * kc->natts);
	kc->castfn = palloc0(sizeof(FmgrInfo) * kc->natts);
	kc->castvalid = palloc0(sizeof(bool) * kc->natts);
	kc->castin = palloc0(sizeof(Oid) * kc->natts);
	kc->castioparam = palloc0(sizeof(Oid) * kc->natts);
	for (int i = 0; i < kc->natts; i++)
	{
		fmgr_info_copy(&kc->hashfn[i], &key->partsupfunc[i], cxt);
		kc->collation[i] = key->partcollation[i];
		kc->keytype[i] = key->parttypid[i];
	}
	/* (the lock is kept to the end of the transaction; our own DDL is seen above) */
	table_close(rel, NoLock);
	MemoryContextSwitchTo(old);
	fcinfo->flinfo->fn_extra = kc;
	return kc;
}

/* prepare the conversion of arguments of type argtype to key column i */
static void
key_conversion(FunctionCallInfo fcinfo, KeyCache *kc, int i, Oid argtype)
{
	Oid			keytype = kc->keytype[i];
	Oid			funcid;
	CoercionPathType path;

	if (argtype == keytype || argtype == InvalidOid)
		return;
	if (argtype == UNKNOWNOID)
	{
		getTypeInputInfo(keytype, &kc->castin[i], &kc->castioparam[i]);
		return;
	}
	path = find_coercion_pathway(keytype, argtype, COERCION_ASSIGNMENT, &funcid);
	if (path == COERCION_PATH_RELABELTYPE)
		return;
	if (path == COERCION_PATH_FUNC && OidIsValid(funcid))
	{
		fmgr_info_cxt(funcid, &kc->castfn[i], kc->cxt);
		kc->castvalid[i] = true;
		return;
	}
	ereport(ERROR,
			(errcode(ERRCODE_DATATYPE_MISMATCH),
			 errmsg("column %d of the partition key has type %s, not %s",
					i + 1, format_type_be(keytype), format_type_be(argtype))));
}

static Datum
convert_key(KeyCache *kc, int i, Datum v)
{
	if (OidIsValid(kc->castin[i]))
		return OidInputFunctionCall(kc->castin[i], DatumGetCString(v), kc->castioparam[i], -1);
	if (kc->castvalid[i])
		return FunctionCall1(&kc->castfn[i], v);
	return v;
}

/*
 * hashtree.key_to_frag_number(tbl regclass, VARIADIC key "any") RETURNS int
 * The fragment PostgreSQL routes the key to.  Needs SELECT on tbl.  Locks:
 * ACCESS SHARE on tbl.
 */
PG_FUNCTION_INFO_V1(ht_key_to_frag_number);
Datum
ht_key_to_frag_number(PG_FUNCTION_ARGS)
{
	KeyCache   *kc;
	Datum		values[PARTITION_MAX_KEYS];
	bool		isnull[PARTITION_MAX_KEYS];
	int			nargs;
	uint64		hash;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	kc = key_cache(fcinfo, PG_GETARG_OID(0));

	if (get_fn_expr_variadic(fcinfo->flinfo))
	{
		/* VARIADIC ARRAY[...]: the elements are the key */
		ArrayType  *a;
		Oid			elemtype;
		int16		typlen;
		bool		typbyval;
		char		typalign;
		Datum	   *elems;
		bool	   *nulls;

		if (PG_ARGISNULL(1))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("the VARIADIC key array must not be null")));
		a = PG_GETARG_ARRAYTYPE_P(1);
		elemtype = ARR_ELEMTYPE(a);
		get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
		deconstruct_array(a, elemtype, typlen, typbyval, typalign, &elems, &nulls, &nargs);
		if (nargs != kc->natts)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the partition key has %d columns, %d values were given",
							kc->natts, nargs)));
		if (kc->argtype != elemtype)
		{
			for (int i = 0; i < nargs; i++)
				key_conversion(fcinfo, kc, i, elemtype);
			kc->argtype = elemtype;
		}
		for (int i = 0; i < nargs; i++)
		{
			isnull[i] = nulls[i];
			values[i] = nulls[i] ? (Datum) 0 : convert_key(kc, i, elems[i]);
		}
	}
	else
	{
		nargs = PG_NARGS() - 1;
		if (nargs != kc->natts)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the partition key has %d columns, %d values were given",
							kc->natts, nargs)));
		if (kc->argtype != ANYOID)
		{
			for (int i = 0; i < nargs; i++)
				key_conversion(fcinfo, kc, i, get_fn_expr_argtype(fcinfo->flinfo, i + 1));
			kc->argtype = ANYOID;	/* (the argument types of a call site are fixed) */
		}
		for (int i = 0; i < nargs; i++)
		{
			isnull[i] = PG_ARGISNULL(i + 1);
			values[i] = isnull[i] ? (Datum) 0 : convert_key(kc, i, PG_GETARG_DATUM(i + 1));
		}
	}

	hash = compute_partition_hash_value(kc->natts, kc->hashfn, kc->collation, values, isnull);
	PG_RETURN_INT32(ht_lin_frag(kc->n, hash));
}

/* ---- match_spec_to_frag_numbers ------------------------------------------------- */

/* the relations scanned by a plan, main tree only */
static bool
collect_scans(Plan *plan, PlannedStmt *ps, List **relids)
{
	if (plan == NULL)
		return false;
	switch (nodeTag(plan))
	{
		case T_SeqScan:
		case T_SampleScan:
		case T_IndexScan:
		case T_IndexOnlyScan:
		case T_BitmapHeapScan:
		case T_TidScan:
		case T_TidRangeScan:
		case T_ForeignScan:
		case T_CustomScan:
			{
				Index		scanrelid = ((Scan *) plan)->scanrelid;

				if (scanrelid > 0)
					*relids = list_append_unique_oid(*relids,
													 rt_fetch(scanrelid, ps->rtable)->relid);
				break;
			}
		default:
			break;
	}
	if (IsA(plan, Append))
	{
		ListCell   *lc;

		foreach(lc, ((Append *) plan)->appendplans)
			collect_scans(lfirst(lc), ps, relids);
	}
	else if (IsA(plan, MergeAppend))
	{
		ListCell   *lc;

		foreach(lc, ((MergeAppend *) plan)->mergeplans)
			collect_scans(lfirst(lc), ps, relids);
	}
	collect_scans(plan->lefttree, ps, relids);
	collect_scans(plan->righttree, ps, relids);
	return false;
}

static bool
contains_sublink(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, SubLink))
		return true;
	return raw_expression_tree_walker(node, contains_sublink, context);
}

/* the predicate, parsed alone: one expression, nothing else */
static Node *
parse_predicate(const char *predicate)
{
	List	   *raw = raw_parser(predicate, RAW_PARSE_PLPGSQL_EXPR);
	SelectStmt *sel;
	ResTarget  *rt;

	if (list_length(raw) != 1 || !IsA(((RawStmt *) linitial(raw))->stmt, SelectStmt))
		goto bad;
	sel = (SelectStmt *) ((RawStmt *) linitial(raw))->stmt;
	if (list_length(sel->targetList) != 1 || sel->fromClause != NIL || sel->whereClause != NULL ||
		sel->groupClause != NIL || sel->havingClause != NULL || sel->windowClause != NIL ||
		sel->sortClause != NIL || sel->limitCount != NULL || sel->limitOffset != NULL ||
		sel->lockingClause != NIL || sel->distinctClause != NIL || sel->intoClause != NULL ||
		sel->withClause != NULL || sel->valuesLists != NIL || sel->op != SETOP_NONE)
		goto bad;
	rt = (ResTarget *) linitial(sel->targetList);
	if (rt->name != NULL)
		goto bad;
	if (contains_sublink(rt->val, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the predicate must not contain subqueries")));
	return rt->val;

bad:
	ereport(ERROR,
			(errcode(ERRCODE_SYNTAX_ERROR),
			 errmsg("the predicate must be a single boolean expression over the table's columns")));
	return NULL;				/* keep compiler quiet */
}

/*
 * Planning evaluates parts of the predicate (constant folding of
 * IMMUTABLE functions, selectivity estimates that run STABLE ones): only
 * built-in code may run there.  The first function, operator, domain or
 * type support the predicate would call that is not built in (OID at or
 * above FirstNormalObjectId), else InvalidOid.
 */
typedef struct UserCode
{
	Oid			oid;
	const char *what;
} UserCode;

static bool
user_function(Oid funcid, void *context)
{
	UserCode   *uc = (UserCode *) context;

	if (funcid < FirstNormalObjectId)
		return false;
	uc->oid = funcid;
	uc->what = "function";
	return true;
}

static bool
find_user_code(Node *node, void *context)
{
	UserCode   *uc = (UserCode *) context;
	Oid			type = InvalidOid;

	if (node == NULL)
		return false;
	if (check_functions_in_node(node, user_function, context))
		return true;
	if (IsA(node, CoerceToDomain))
		type = ((CoerceToDomain *) node)->resulttype;
	else if (IsA(node, Const))
		type = ((Const *) node)->consttype;
	else if (IsA(node, FuncExpr))
		type = ((FuncExpr *) node)->funcresulttype;
	else if (IsA(node, RowExpr))
		type = ((RowExpr *) node)->row_typeid;
	else if (IsA(node, CoerceViaIO))
		type = ((CoerceViaIO *) node)->resulttype;
	else if (IsA(node, RelabelType))
		type = ((RelabelType *) node)->resulttype;
	else if (IsA(node, ArrayCoerceExpr))
		type = ((ArrayCoerceExpr *) node)->resulttype;
	else if (IsA(node, ConvertRowtypeExpr))
		type = ((ConvertRowtypeExpr *) node)->resulttype;
	else if (IsA(node, MinMaxExpr))
		type = ((MinMaxExpr *) node)->minmaxtype;
	else if (IsA(node, SubscriptingRef))
		type = ((SubscriptingRef *) node)->refcontainertype;
	if (type >= FirstNormalObjectId)
	{
		uc->oid = type;
		uc->what = "type";
		return true;
	}
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, find_user_code, context, 0);
	return expression_tree_walker(node, find_user_code, context);
}

/*
 * A cast to a type that is not built in, in the raw predicate: refused
 * before parse analysis, which would run the type's input function (and
 * the checks of its domains) on a literal.
 */
static bool
raw_user_cast(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, TypeCast))
	{
		TypeName   *tn = ((TypeCast *) node)->typeName;
		Oid			typid = LookupTypeNameOid(NULL, tn, true);

		if (!OidIsValid(typid) || typid >= FirstNormalObjectId)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("the predicate casts to type %s, which is not built in",
							TypeNameToString(tn)),
					 errdetail("Planning the predicate would run it; only built-in functions, "
							   "operators and types may be used.")));
	}
	return raw_expression_tree_walker(node, raw_user_cast, context);
}

/*
 * hashtree.match_spec_to_frag_numbers(tbl regclass, predicate text) RETURNS int[]
 * The fragments a scan of tbl with this WHERE clause reads after plan-time
 * pruning; the predicate is planned, never run, and may use only built-in
 * code.  Locks: ACCESS SHARE on tbl.
 */
PG_FUNCTION_INFO_V1(ht_match_spec_to_frag_numbers);
Datum
ht_match_spec_to_frag_numbers(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *predicate;
	HtFragTable ft;
	Relation	rel;
	Oid		   *frags;
	Node	   *where;
	SelectStmt *sel;
	RawStmt    *raw;
	Query	   *query;
	PlannedStmt *ps;
	List	   *scanned = NIL;
	Datum	   *out;
	int			nout = 0;
	ListCell   *lc;
	char	   *sql;

	HT_ARG_NOT_NULL(0, "tbl");
	HT_ARG_NOT_NULL(1, "predicate");
	relid = PG_GETARG_OID(0);
	predicate = text_to_cstring(PG_GETARG_TEXT_PP(1));

	SPI_connect();
	rel = open_registered(relid, AccessShareLock, &ft, NULL);
	SPI_finish();
	frags = ht_frag_layout(rel, &ft.s);
	/* as for key_to_frag_number: what rows exist is the table's business */
	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, get_relkind_objtype(rel->rd_rel->relkind),
					   RelationGetRelationName(rel));
	where = parse_predicate(predicate);
	(void) raw_user_cast(where, NULL);

	/* SELECT FROM tbl WHERE (predicate): analysed and planned, never run */
	sel = makeNode(SelectStmt);
	sel->fromClause = list_make1(makeRangeVar(get_namespace_name(RelationGetNamespace(rel)),
											  pstrdup(RelationGetRelationName(rel)), -1));
	sel->whereClause = where;
	raw = makeNode(RawStmt);
	raw->stmt = (Node *) sel;
	raw->stmt_location = -1;
	sql = psprintf("SELECT FROM %s WHERE %s", ht_rel_qname(relid), predicate);
	query = parse_analyze_fixedparams(raw, sql, NULL, 0, NULL);
	{
		UserCode	uc = {InvalidOid, NULL};

		if (find_user_code(query->jointree->quals, &uc))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("the predicate uses %s %s, which is not built in",
							uc.what, strcmp(uc.what, "type") == 0 ? format_type_be(uc.oid)
							: format_procedure(uc.oid)),
					 errdetail("Planning the predicate would run it; only built-in functions, "
							   "operators and types may be used.")));
	}
	ps = pg_plan_query(query, sql, 0, NULL);
	collect_scans(ps->planTree, ps, &scanned);

	out = palloc(sizeof(Datum) * Max(ft.s.n, 1));
	for (int32 k = 0; k < ft.s.n; k++)
		foreach(lc, scanned)
			if (lfirst_oid(lc) == frags[k])
			{
				out[nout++] = Int32GetDatum(k + 1);
				break;
			}
	table_close(rel, NoLock);
	PG_RETURN_ARRAYTYPE_P(construct_array(out, nout, INT4OID, sizeof(int32), true, TYPALIGN_INT));
}
