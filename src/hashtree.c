/*-------------------------------------------------------------------------
 *
 * hashtree.c
 *	  Module initialisation and configuration (GUCs) of the hashtree
 *	  extension.
 *
 * The library works with and without shared_preload_libraries: every SQL
 * function loads it on first use, which defines the GUCs below.  The
 * background workers (worker.c) need preloading.
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

#include "hashtree.h"
#include "worker.h"

PG_MODULE_MAGIC;

int			ht_guc_pack_target = 32;
int			ht_guc_partitions = 8;
char	   *ht_guc_node_name = NULL;
int			ht_guc_connect_timeout = 10000;
int			ht_guc_statement_timeout = 60000;
int			ht_guc_tree_ttl = 7 * 24 * 3600;

int			ht_api_depth = 0;

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomIntVariable("hashtree.partitions",
							"Number of partitions created by CREATE EXTENSION hashtree.",
							"Read once, when the extension is created; the count is then fixed "
							"for the database and recorded in hashtree.partition.",
							&ht_guc_partitions,
							8, 1, HT_MAX_PARTITIONS,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hashtree.pack_target",
							"Entries per pack that a re-hash of a tracked table aims at.",
							"For tests: a small value gives the span of one sub-bucket "
							"(32 segments) to small tables, as big tables have.",
							&ht_guc_pack_target,
							32, 1, 4096,
							PGC_USERSET, GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);

	DefineCustomStringVariable("hashtree.node_name",
							   "Name of this node in hashtree exchanges.",
							   "Empty means a name derived from the system identifier, "
							   "the port and the database name.",
							   &ht_guc_node_name,
							   "",
							   PGC_SUSET, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("hashtree.connect_timeout",
							"Time allowed to connect to a peer.",
							NULL,
							&ht_guc_connect_timeout,
							10000, 100, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hashtree.statement_timeout",
							"Time allowed for one statement on a peer (0 disables).",
							NULL,
							&ht_guc_statement_timeout,
							60000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hashtree.tree_ttl",
							"Age after which a partition's trees are rebuilt.",
							"Each partition expires after between 75% and 100% of this "
							"age, chosen at random at each build.",
							&ht_guc_tree_ttl,
							7 * 24 * 3600, 60, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	ht_worker_init();
	MarkGUCPrefixReserved("hashtree");
}

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
