/*-------------------------------------------------------------------------
 *
 * common.c
 *	  What every part of the extension uses: the values of its settings
 *	  (registered by _PG_init in hashtree.c), this node's name, the
 *	  extension's schema and owner, and the security helpers (pinned
 *	  search_path, the extension owner's and a table owner's contexts, §11).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "common.h"

int			ht_guc_pack_target = 32;
int			ht_guc_partitions = 8;
char	   *ht_guc_node_name = NULL;
int			ht_guc_connect_timeout = 10000;
int			ht_guc_statement_timeout = 60000;
int			ht_guc_tree_ttl = 7 * 24 * 3600;
int			ht_guc_tombstone_ttl = 7 * 24 * 3600;

int			ht_api_depth = 0;

const char *
ht_node_name(void)
{
	static char derived[NAMEDATALEN + 64] = "";

	if (ht_guc_node_name != NULL && ht_guc_node_name[0] != '\0')
		return ht_guc_node_name;

	/* the database and the port of a backend never change: derive once */
	if (derived[0] == '\0')
	{
		char	   *dbname = get_database_name(MyDatabaseId);

		snprintf(derived, sizeof(derived), UINT64_FORMAT "-%d-%s",
				 GetSystemIdentifier(), PostPortNumber,
				 dbname ? dbname : "?");
	}
	return derived;
}

Oid
ht_schema_oid(void)
{
	return get_namespace_oid("hashtree", true);
}

void
ht_open_table_index(const char *table, const char *index, LOCKMODE lockmode,
					Relation *rel, Relation *idx)
{
	Oid			nsp = ht_schema_oid();
	Oid			relid = get_relname_relid(table, nsp);
	Oid			idxid = get_relname_relid(index, nsp);

	if (!OidIsValid(relid) || !OidIsValid(idxid))
		elog(ERROR, "hashtree: table hashtree.%s or its index %s is missing", table, index);
	*rel = table_open(relid, lockmode);
	*idx = index_open(idxid, lockmode);
}

void
ht_as_owner_begin(Oid *save_user, int *save_sec)
{
	/* pg_extension.extowner: not whoever owns a schema named "hashtree" */
	Oid			owner = ht_extension_owner();

	if (!OidIsValid(owner))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"hashtree\" is not installed in this database")));
	GetUserIdAndSecContext(save_user, save_sec);
	SetUserIdAndSecContext(owner, *save_sec | SECURITY_LOCAL_USERID_CHANGE);
}

void
ht_as_owner_end(Oid save_user, int save_sec)
{
	SetUserIdAndSecContext(save_user, save_sec);
}

int
ht_pin_begin(void)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", HT_SAFE_SEARCH_PATH,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

void
ht_pin_end(int nestlevel)
{
	AtEOXact_GUC(false, nestlevel);
}

void
ht_as_table_owner_begin(Oid relid, HtUserContext *ctx)
{
	HeapTuple	tp;
	Oid			owner;

	tp = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tp))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	owner = ((Form_pg_class) GETSTRUCT(tp))->relowner;
	ReleaseSysCache(tp);

	GetUserIdAndSecContext(&ctx->save_user, &ctx->save_sec);
	SetUserIdAndSecContext(owner, ctx->save_sec |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	ctx->nestlevel = ht_pin_begin();
}

void
ht_as_table_owner_end(HtUserContext *ctx)
{
	ht_pin_end(ctx->nestlevel);
	SetUserIdAndSecContext(ctx->save_user, ctx->save_sec);
}

Oid
ht_extension_owner(void)
{
	Oid			extoid = get_extension_oid("hashtree", true);
	Oid			owner = InvalidOid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	if (!OidIsValid(extoid))
		return InvalidOid;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return owner;
}

Relation
ht_open_relation_arg(Oid relid, LOCKMODE lockmode)
{
	Relation	rel = OidIsValid(relid) ? try_relation_open(relid, lockmode) : NULL;

	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	return rel;
}

text *
ht_prefix_arg(FunctionCallInfo fcinfo, int n, const char *what)
{
	text	   *t;

	HT_ARG_NOT_NULL(n, what);
	t = PG_GETARG_TEXT_PP(n);
	if (VARSIZE_ANY_EXHDR(t) > HT_MAX_PREFIX_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too long", what),
				 errdetail("A prefix has at most %d bytes; this one has %d.",
						   HT_MAX_PREFIX_LEN, (int) VARSIZE_ANY_EXHDR(t))));
	return t;
}
