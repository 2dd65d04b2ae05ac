/*-------------------------------------------------------------------------
 *
 * ddl.c
 *	  Schema changes of tracked tables (the event triggers' handlers).
 *
 * The event triggers of the install script call these functions as the
 * extension owner, and they keep the registry of tracked tables
 * (track.c) true to the tables: a rename of a tracked table or of its
 * schema is refused, and so is any change of its tracking triggers;
 * column, key and partition changes re-hash it; an ALTER TYPE re-hashes
 * the tracked tables that use the type; a dropped tracked table is
 * untracked.  Partitions created or attached get their TRUNCATE trigger.
 * hashtree's own DDL (track, untrack, the fragment operations) is not a
 * change to react to: it runs with ht_api_depth > 0.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "tcop/deparse_utility.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "common.h"
#include "ddl.h"
#include "track.h"

static void
refuse_trigger_change(Relation rel, const char *tgname)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot drop, disable or rename the tracking trigger \"%s\" of \"%s\"",
					tgname, RelationGetRelationName(rel)),
			 errdetail("Without it the trees of the tracked table would silently stop following its rows."),
			 errhint("Use hashtree.untrack() to stop tracking the table.")));
}

/*
 * Tracking cannot be switched off behind hashtree's back: the tracked table
 * and each of its partitions carry the row trigger "hashtree_track" (the
 * table's own, cloned on the partitions) and the TRUNCATE trigger
 * "hashtree_track_truncate", with hashtree's functions, ENABLE ALWAYS.  A
 * trigger that exists in any other state is refused.  A missing one is
 * refused too, unless allow_missing: after ALTER TABLE or CREATE TABLE a
 * trigger may not exist yet (pg_restore creates them one by one, each
 * followed by its ENABLE ALWAYS), and dropping one is caught at sql_drop.
 */
static void
verify_triggers(Oid rootid, bool allow_missing)
{
	Oid			rowfn = ht_track_fn_oid("_track_row");
	Oid			truncfn = ht_track_fn_oid("_track_truncate");
	ListCell   *lc;

	foreach(lc, find_all_inheritors(rootid, AccessShareLock, NULL))
	{
		Oid			relid = lfirst_oid(lc);
		Relation	rel = relation_open(relid, AccessShareLock);
		Trigger    *row = ht_track_trigger_named(rel, HT_ROW_TRIGGER);
		Trigger    *trunc = ht_track_trigger_named(rel, HT_TRUNCATE_TRIGGER);

		if (row == NULL ? !allow_missing :
			(row->tgfoid != rowfn || row->tgenabled != TRIGGER_FIRES_ALWAYS ||
			 row->tgisclone != (relid != rootid)))
			refuse_trigger_change(rel, HT_ROW_TRIGGER);
		if (trunc == NULL ? !allow_missing :
			(trunc->tgfoid != truncfn || trunc->tgenabled != TRIGGER_FIRES_ALWAYS))
			refuse_trigger_change(rel, HT_TRUNCATE_TRIGGER);
		relation_close(rel, AccessShareLock);
	}
}

/*
 * Re-check a tracked table against its registry entry after a change of
 * its shape: re-hash when its columns, key or partitions changed, or when
 * force (its values may have changed: a column's type rewritten with USING,
 * a type it uses altered).
 */
static void
recheck(Relation rel, HtTracked *reg, bool force)
{
	TrackRel   *tr;
	char	   *sig;
	char	   *qname;

	if (!OidIsValid(RelationGetPrimaryKeyIndex(rel)) && !OidIsValid(RelationGetReplicaIndex(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tracked table \"%s\" must keep a primary key or replica identity index",
						RelationGetRelationName(rel)),
				 errhint("Use hashtree.untrack() to stop tracking the table first.")));
	tr = ht_track_rel(rel);
	sig = ht_track_signature(tr, rel);
	qname = quote_qualified_identifier(tr->schema, tr->name);

	if (force || strcmp(sig, reg->signature) != 0 ||
		strcmp(tr->enc->key_columns, reg->key_columns) != 0)
	{
		int64		rows;

		ht_track_reregister(tr, sig, false);
		rows = ht_track_rehash(tr, psprintf("re-hash of %s", qname));
		ereport(NOTICE,
				(errmsg("hashtree: tracked table %s changed shape: " INT64_FORMAT " rows hashed again",
						qname, rows)));
	}
}

static HtTracked *
find_registered(HtTracked *r, int n, const char *schema, const char *name)
{
	for (int i = 0; i < n; i++)
		if (strcmp(r[i].schema, schema) == 0 && strcmp(r[i].name, name) == 0)
			return &r[i];
	return NULL;
}

/*
 * Partitions attached by an ALTER TABLE of a tracked table (the collected
 * command's ATTACH PARTITION subcommands): each, with its own partitions,
 * gets the TRUNCATE trigger.  Only for ATTACH: a pg_restore re-creates the
 * triggers itself, one by one.  The partition is found among the table's
 * partitions by the name the command gave (PostgreSQL 15 records no
 * address for ATTACH).
 */
static void
attached_partitions_get_triggers(Oid root, CollectedCommand *cmd)
{
	ListCell   *lc;

	if (cmd == NULL || cmd->type != SCT_AlterTable)
		return;
	foreach(lc, cmd->d.alterTable.subcmds)
	{
		CollectedATSubcmd *sub = (CollectedATSubcmd *) lfirst(lc);
		AlterTableCmd *at = (AlterTableCmd *) sub->parsetree;
		RangeVar   *rv;
		ListCell   *lp;

		if (!IsA(at, AlterTableCmd) || at->subtype != AT_AttachPartition ||
			at->def == NULL || !IsA(at->def, PartitionCmd))
			continue;
		rv = ((PartitionCmd *) at->def)->name;
		foreach(lp, find_inheritance_children(root, AccessShareLock))
		{
			Oid			child = lfirst_oid(lp);
			char	   *nsp = get_namespace_name(get_rel_namespace(child));
			ListCell   *lq;

			if (strcmp(get_rel_name(child), rv->relname) != 0 ||
				(rv->schemaname != NULL && strcmp(nsp, rv->schemaname) != 0))
				continue;
			foreach(lq, find_all_inheritors(child, AccessShareLock, NULL))
			{
				Relation	part = relation_open(lfirst_oid(lq), AccessShareLock);
				bool		has = (ht_track_trigger_named(part, HT_TRUNCATE_TRIGGER) != NULL);

				relation_close(part, AccessShareLock);
				if (!has)
					ht_track_create_truncate_trigger(lfirst_oid(lq));
			}
		}
	}
}

/*
 * does the collected ALTER TABLE change a column's type (values
 * rewritten)?  col: that column's only, NULL: any
 */
static bool
alters_column_type(CollectedCommand *cmd, const char *col)
{
	ListCell   *lc;

	if (cmd == NULL || cmd->type != SCT_AlterTable)
		return false;
	foreach(lc, cmd->d.alterTable.subcmds)
	{
		AlterTableCmd *at = (AlterTableCmd *) ((CollectedATSubcmd *) lfirst(lc))->parsetree;

		if (IsA(at, AlterTableCmd) && at->subtype == AT_AlterColumnType &&
			(col == NULL || (at->name != NULL && strcmp(at->name, col) == 0)))
			return true;
	}
	return false;
}

/*
 * The version column of a tracked table (DESIGN §20) stays what it is: a
 * drop, a rename or a change of its type is refused (its name is in the
 * registry; the tombstones keep versions in the binary form of its type).
 */
static void
check_version_column(Relation rel, HtTracked *reg, CollectedCommand *cmd)
{
	TrackRel   *tr = ht_track_rel(rel);

	if (!tr->versioned)
		return;
	if (tr->vatt <= 0 || alters_column_type(cmd, get_attname(RelationGetRelid(rel), tr->vatt, false)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot drop, rename or retype the version column of tracked table %s",
						quote_qualified_identifier(reg->schema, reg->name)),
				 errdetail("Repair 'newest' compares its rows by that column, and its tombstones keep versions of its type."),
				 errhint("Set another one, or none, with hashtree.version_column() first.")));
}

/*
 * hashtree._ddl_table(relid oid, cmd pg_ddl_command) RETURNS void
 * After ALTER TABLE or CREATE TABLE of this relation (cmd: the collected
 * command, for the partitions it attached).  Refuses a rename of a tracked
 * table and any change of its tracking triggers, re-hashes it when its
 * shape changed, gives new partitions their TRUNCATE trigger.  Called by
 * the event trigger as the extension owner.  Locks: ACCESS SHARE on the
 * relation, its partitions and plain-inheritance parents; when it
 * re-hashes, ROW EXCLUSIVE on the extension's tables; CREATE TRIGGER's
 * SHARE ROW EXCLUSIVE on a partition that gets its TRUNCATE trigger.
 */
PG_FUNCTION_INFO_V1(ht_ddl_table);
Datum
ht_ddl_table(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	Oid			fn;
	HtTracked *r;
	int			n;

	/* DDL run by hashtree itself (track, untrack) is not a change to react to */
	if (ht_api_depth > 0)
		PG_RETURN_VOID();
	SPI_connect();
	HT_API_BEGIN();
	rel = try_relation_open(relid, AccessShareLock);
	if (rel != NULL && (rel->rd_rel->relkind == RELKIND_RELATION ||
						rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE))
	{
		fn = ht_track_fn_oid("_track_row");
		n = ht_track_registry(&r);
		if (ht_track_has_trigger(rel, fn, false))
		{
			HtTracked *reg = find_registered(r, n, get_namespace_name(RelationGetNamespace(rel)),
											  RelationGetRelationName(rel));
			CollectedCommand *cmd = PG_ARGISNULL(1) ? NULL :
				(CollectedCommand *) PG_GETARG_POINTER(1);

			if (reg == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("cannot rename a tracked table or move it to another schema"),
						 errdetail("The schema and name of a tracked table are the prefix of its entries on every node."),
						 errhint("Untrack it with hashtree.untrack(), then track it again.")));
			verify_triggers(relid, true);
			ht_track_check_state(relid);
			check_version_column(rel, reg, cmd);
			recheck(rel, reg, alters_column_type(cmd, NULL));
			attached_partitions_get_triggers(relid, cmd);
		}
		else if (rel->rd_rel->relispartition)
		{
			Oid			root = ht_tracked_root(rel, fn);
			bool		has = (ht_track_trigger_named(rel, HT_TRUNCATE_TRIGGER) != NULL);

			/*
			 * A partition of a tracked table: created (it gets its TRUNCATE
			 * trigger), or altered (its triggers must stay).
			 */
			relation_close(rel, AccessShareLock);
			rel = NULL;
			if (OidIsValid(root))
			{
				if (!has)
					ht_track_create_truncate_trigger(relid);
				verify_triggers(root, true);
				ht_track_check_state(root);
			}
		}
		else if (rel->rd_rel->relkind == RELKIND_RELATION)
		{
			ListCell   *lp;

			/* a new inheritance child of a tracked table */
			foreach(lp, ht_track_inheritance_parents(relid))
			{
				Relation	parent = relation_open(lfirst_oid(lp), AccessShareLock);
				bool		tracked = ht_track_has_trigger(parent, fn, false);

				relation_close(parent, AccessShareLock);
				if (tracked)
					ht_track_check_state(lfirst_oid(lp));
			}
		}
	}
	if (rel != NULL)
		relation_close(rel, AccessShareLock);
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/* does a value of type typid contain a value of type target (depth-limited)? */
static bool
type_uses(Oid typid, Oid target, int depth)
{
	HeapTuple	tp;
	Form_pg_type t;
	bool		uses = false;

	if (typid == target)
		return true;
	if (depth > 16 || !OidIsValid(typid))
		return false;
	tp = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tp))
		return false;
	t = (Form_pg_type) GETSTRUCT(tp);
	if (OidIsValid(t->typelem) && t->typlen == -1)
		uses = type_uses(t->typelem, target, depth + 1);
	else if (t->typtype == TYPTYPE_DOMAIN)
		uses = type_uses(t->typbasetype, target, depth + 1);
	else if (t->typtype == TYPTYPE_RANGE)
		uses = type_uses(get_range_subtype(typid), target, depth + 1);
	else if (t->typtype == TYPTYPE_MULTIRANGE)
		uses = type_uses(get_multirange_range(typid), target, depth + 1);
	else if (t->typtype == TYPTYPE_COMPOSITE && OidIsValid(t->typrelid))
	{
		Relation	crel = relation_open(t->typrelid, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(crel);

		for (int i = 0; i < desc->natts && !uses; i++)
			if (!TupleDescAttr(desc, i)->attisdropped)
				uses = type_uses(TupleDescAttr(desc, i)->atttypid, target, depth + 1);
		relation_close(crel, AccessShareLock);
	}
	ReleaseSysCache(tp);
	return uses;
}

/*
 * The event-trigger handlers that look at every tracked table: fn(reg,
 * relid, arg) for each registered table (relid InvalidOid when no relation
 * has its schema and name any more), with SPI connected and hashtree's own
 * DDL ignored.
 */
typedef void (*TrackedFn) (HtTracked *reg, Oid relid, void *arg);

static void
for_each_registered(TrackedFn fn, void *arg)
{
	HtTracked *r;
	int			n;

	if (ht_api_depth > 0)
		return;
	SPI_connect();
	HT_API_BEGIN();
	n = ht_track_registry(&r);
	for (int i = 0; i < n; i++)
		fn(&r[i], ht_track_registered_relid(r[i].schema, r[i].name), arg);
	HT_API_END();
	SPI_finish();
}

static void
rehash_if_uses_type(HtTracked *reg, Oid relid, void *arg)
{
	Oid			typid = *(Oid *) arg;
	Relation	rel;
	TupleDesc	desc;
	bool		uses = false;

	if (!OidIsValid(relid))
		return;
	rel = relation_open(relid, AccessShareLock);
	desc = RelationGetDescr(rel);
	for (int a = 0; a < desc->natts && !uses; a++)
		if (!TupleDescAttr(desc, a)->attisdropped)
			uses = type_uses(TupleDescAttr(desc, a)->atttypid, typid, 0);
	if (uses)
		recheck(rel, reg, true);
	relation_close(rel, AccessShareLock);
}

/*
 * hashtree._ddl_type(typid oid) RETURNS void
 * After ALTER TYPE.  A renamed enum label or a composite's changed
 * attributes change the row hashes of the tracked tables with a column of
 * that type (or of an array, domain, range or composite containing it):
 * those are hashed again.  Called by the event trigger as the extension
 * owner.  Locks: ACCESS SHARE on every tracked table and on the composite
 * types' relations it looks into; ROW EXCLUSIVE on the extension's tables
 * when it re-hashes.
 */
PG_FUNCTION_INFO_V1(ht_ddl_type);
Datum
ht_ddl_type(PG_FUNCTION_ARGS)
{
	Oid			typid = PG_GETARG_OID(0);

	for_each_registered(rehash_if_uses_type, &typid);
	PG_RETURN_VOID();
}

static void
check_registered(HtTracked *reg, Oid relid, void *arg)
{
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot rename the schema of tracked table %s",
						quote_qualified_identifier(reg->schema, reg->name)),
				 errdetail("The schema and name of a tracked table are the prefix of its entries on every node."),
				 errhint("Untrack the schema's tracked tables with hashtree.untrack(), then track them again.")));
	verify_triggers(relid, false);
}

/*
 * hashtree._ddl_check_all() RETURNS void
 * After ALTER TRIGGER or ALTER SCHEMA.
 * Every registered table must still exist under its registered schema and
 * name (a schema rename would change the prefix of its entries on one node
 * only) and keep its triggers.  Called by the event trigger as the
 * extension owner.  Locks: ACCESS SHARE on the tracked tables and their
 * partitions.
 */
PG_FUNCTION_INFO_V1(ht_ddl_check_all);
Datum
ht_ddl_check_all(PG_FUNCTION_ARGS)
{
	for_each_registered(check_registered, NULL);
	PG_RETURN_VOID();
}

/*
 * The partitions of a table were changed by hashtree itself (a fragmented
 * table's frag_init, add_frag, del_frag), its rows staying the same: if
 * the table is tracked, give the new partitions their TRUNCATE trigger and
 * record the partitions in the registry, without a re-hash (the rows
 * moved, none changed; entries do not depend on the partition holding a
 * row).  Needs SPI.
 */
void
ht_ddl_partitions_changed(Oid relid)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	Oid			fn = ht_track_fn_oid("_track_row");
	ListCell   *lc;
	TrackRel   *tr;

	if (!OidIsValid(fn) || !ht_track_has_trigger(rel, fn, false))
	{
		relation_close(rel, AccessShareLock);
		return;
	}
	foreach(lc, find_all_inheritors(relid, AccessShareLock, NULL))
	{
		Oid			part = lfirst_oid(lc);
		Relation	prel;
		bool		has;

		if (part == relid)
			continue;
		prel = relation_open(part, AccessShareLock);
		has = (ht_track_trigger_named(prel, HT_TRUNCATE_TRIGGER) != NULL);
		relation_close(prel, AccessShareLock);
		if (!has)
			ht_track_create_truncate_trigger(part);
	}
	tr = ht_track_rel(rel);
	ht_track_reregister(tr, ht_track_signature(tr, rel), true);
	relation_close(rel, AccessShareLock);
}

/*
 * hashtree._ddl_dropped(triggers_dropped boolean) RETURNS void
 * After a DROP.  A dropped tracked table is untracked, a table that lost a
 * partition or its key index re-checked; when a trigger named like
 * hashtree's was dropped, the tracking triggers of every tracked table must
 * still be there.  Called by the event trigger as the extension owner.
 * Locks: ACCESS SHARE on the tracked tables and their partitions; ROW
 * EXCLUSIVE on the extension's tables when it untracks or re-hashes.
 */
PG_FUNCTION_INFO_V1(ht_ddl_dropped);
Datum
ht_ddl_dropped(PG_FUNCTION_ARGS)
{
	bool		triggers_dropped = PG_ARGISNULL(0) ? true : PG_GETARG_BOOL(0);
	HtTracked *r;
	int			n;
	Oid			fn;

	if (ht_api_depth > 0)
		PG_RETURN_VOID();
	SPI_connect();
	HT_API_BEGIN();
	fn = ht_track_fn_oid("_track_row");
	n = ht_track_registry(&r);
	for (int i = 0; i < n; i++)
	{
		Oid			relid = ht_track_registered_relid(r[i].schema, r[i].name);
		Relation	rel;

		if (!OidIsValid(relid))
		{
			ht_track_forget(r[i].schema, r[i].name);
			ereport(NOTICE,
					(errmsg("hashtree: tracked table %s was dropped: untracked",
							quote_qualified_identifier(r[i].schema, r[i].name))));
			continue;
		}
		rel = relation_open(relid, AccessShareLock);
		if (triggers_dropped)
		{
			if (!ht_track_has_trigger(rel, fn, false))
				refuse_trigger_change(rel, HT_ROW_TRIGGER);
			verify_triggers(relid, false);
		}
		/* a dropped partition, a dropped key index */
		recheck(rel, &r[i], false);
		relation_close(rel, AccessShareLock);
	}
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}
