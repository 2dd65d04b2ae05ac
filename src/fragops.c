/*-------------------------------------------------------------------------
 *
 * fragops.c
 *	  add_frag and del_frag: moving rows between the fragments of a
 *	  fragmented table.
 *
 * Both operations replace one or two fragments (the sources) by one or two
 * new tables (the targets) with the bounds of the next state: add_frag
 * replaces fragment P by P and N+1, del_frag replaces N and its buddy by
 * the buddy.  A target is created standalone (LIKE the parent, in the
 * source's tablespace, owned by the parent's owner, with the source's
 * grants and reloptions and the parent's foreign keys), filled with the
 * sources' rows that belong to it as the table's owner in a
 * security-restricted operation, and given a CHECK identical to its
 * partition constraint, so that ATTACH needs no scan; the source's own
 * triggers are added in the swap, after the last row moved, and deferrable
 * foreign keys (NOT DEFERRABLE while rows move: a security-restricted
 * operation may not queue deferred triggers) get their deferral back.
 * The swap then, under the parent's ACCESS EXCLUSIVE lock taken first (a fragment lock held while waiting for the parent's would
 * deadlock with writers, who lock the parent first): DETACH the sources,
 * ATTACH the targets, DROP the sources, rename, record the state.  PG 15
 * has no default partition for hash tables: the swap happens in one
 * transaction, so every remainder stays covered at every instant.
 *
 * mode block_writes: everything in the caller's transaction, the parent
 * held in SHARE mode meanwhile (writers wait, readers go on).
 * mode online: a background worker prepares the targets in transactions
 * of its own while writes go on, capture triggers on the sources logging
 * the keys written meanwhile; the caller's swap re-copies the rows of
 * those keys: writers wait only for the swap, whose cost depends on the
 * writes during the copy, not on the table.  The registry row records the
 * operation (hashtree.frag_table.op*); one that did not finish (error,
 * cancel, crash) is rolled back by the next operation on the table, or by
 * the background launcher.
 *
 * Lock waits in the swap use lock_timeout and are retried after a pause,
 * holding nothing: a client is never deadlocked by us, it waits at most
 * one lock_timeout.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/stratnum.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/tablespace.h"
#include "commands/trigger.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "bgjob.h"
#include "common.h"
#include "ddl.h"
#include "frag.h"
#include "fragops.h"
#include "linhash.h"
#include "partlock.h"
#include "sqlexec.h"

#define SWAP_LOCK_TIMEOUT_MS	200
#define SWAP_GIVE_UP_MS			120000

/* what an add_frag or del_frag does */
typedef struct FragOp
{
	Oid			relid;
	bool		add;
	char	   *nsp;			/* the parent's schema */
	char	   *qparent;
	int			nkeys;
	char	  **keys;			/* quoted key columns */
	char	  **rawkeys;		/* the same, unquoted */
	Oid		   *keytype;		/* their types */
	Oid		   *keyeq;			/* the equality of their hash operator classes */
	char	   *keylist;		/* "k1, k2" */
	char	   *cols;			/* the columns a copy writes */
	bool		overriding;		/* identity columns GENERATED ALWAYS */
	HtLinState	before;
	HtLinState	after;
	int32		iter;
	int32		lock;
	int			nsrc;
	int32		src_frag[2];
	Oid			src[2];
	int			ntgt;
	int32		tgt_frag[2];
	int32		tgt_mod[2];
	int32		tgt_rem[2];
	char	   *tgt_name[2];	/* working names, in nsp */
	char	   *tgt_final[2];	/* names once attached */
	char	   *log;			/* online: capture log table, in nsp */
} FragOp;

static char *
tgt_q(FragOp *op, int t)
{
	return quote_qualified_identifier(op->nsp, op->tgt_name[t]);
}

/* the partition constraint of target t, as ATTACH generates it */
static char *
bound_check(FragOp *op, int m, int r)
{
	return psprintf("pg_catalog.satisfies_hash_partition('%u'::pg_catalog.oid, %d, %d, %s)",
					op->relid, m, r, op->keylist);
}

/* plan an operation from the registry and the partitions (needs SPI) */
static void
plan_op(Relation rel, HtFragTable *ft, bool add, FragOp *op)
{
	PartitionKey key = RelationGetPartitionKey(rel);
	TupleDesc	td = RelationGetDescr(rel);
	Oid		   *frags = ht_frag_layout(rel, &ft->s);
	StringInfoData cols;
	StringInfoData keylist;

	memset(op, 0, sizeof(*op));
	op->relid = RelationGetRelid(rel);
	op->add = add;
	op->nsp = get_namespace_name(RelationGetNamespace(rel));
	op->qparent = quote_qualified_identifier(op->nsp, RelationGetRelationName(rel));
	op->before = ft->s;

	initStringInfo(&keylist);
	op->nkeys = key->partnatts;
	op->keys = palloc(sizeof(char *) * op->nkeys);
	op->rawkeys = palloc(sizeof(char *) * op->nkeys);
	op->keytype = palloc(sizeof(Oid) * op->nkeys);
	op->keyeq = palloc(sizeof(Oid) * op->nkeys);
	for (int i = 0; i < op->nkeys; i++)
	{
		op->rawkeys[i] = pstrdup(NameStr(TupleDescAttr(td, key->partattrs[i] - 1)->attname));
		op->keytype[i] = key->parttypid[i];
		/* (InvalidOid when a custom operator class has none: see check_online_keys) */
		op->keyeq[i] = get_opfamily_member(key->partopfamily[i], key->partopcintype[i],
										   key->partopcintype[i], HTEqualStrategyNumber);
		op->keys[i] = pstrdup(quote_identifier(op->rawkeys[i]));
		appendStringInfo(&keylist, "%s%s", i ? ", " : "", op->keys[i]);
	}
	op->keylist = keylist.data;
	initStringInfo(&cols);
	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(td, i);

		if (a->attisdropped || a->attgenerated)
			continue;
		appendStringInfo(&cols, "%s%s", cols.len ? ", " : "", quote_identifier(NameStr(a->attname)));
		if (a->attidentity == ATTRIBUTE_IDENTITY_ALWAYS)
			op->overriding = true;
	}
	op->cols = cols.data;

	if (add)
	{
		if (ft->s.n >= HT_MAX_FRAGMENTS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("a fragmented table has at most %d fragments", HT_MAX_FRAGMENTS)));
		op->after = ht_lin_add(&ft->s, &op->iter, &op->lock);
		op->nsrc = 1;
		op->src_frag[0] = op->iter;
		op->ntgt = 2;
		op->tgt_frag[0] = op->iter;
		op->tgt_frag[1] = op->lock;
	}
	else
	{
		if (ft->s.n <= 1)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table \"%s\" has a single fragment", RelationGetRelationName(rel)),
					 errhint("del_frag merges the last fragment into another; there must be two.")));
		op->after = ht_lin_del(&ft->s, &op->iter, &op->lock);
		op->nsrc = 2;
		op->src_frag[0] = op->lock;	/* the buddy first: the target keeps its name */
		op->src_frag[1] = op->iter;
		op->ntgt = 1;
		op->tgt_frag[0] = op->lock;
	}
	for (int i = 0; i < op->nsrc; i++)
		op->src[i] = frags[op->src_frag[i] - 1];
	for (int t = 0; t < op->ntgt; t++)
	{
		ht_lin_bound(&op->after, op->tgt_frag[t], &op->tgt_mod[t], &op->tgt_rem[t]);
		op->tgt_name[t] = psprintf("hashtree_frag_%u_%d", op->relid, op->tgt_frag[t]);
		/* fragment P keeps the name of the fragment it replaces; N+1 gets its own */
		op->tgt_final[t] = (op->tgt_frag[t] == op->src_frag[0])
			? get_rel_name(op->src[0]) : ht_frag_name(rel, op->tgt_frag[t]);
	}
	op->log = psprintf("hashtree_frag_%u_log", op->relid);
}

/* ---- targets ----------------------------------------------------------------- */

/* create target t, standalone, dressed like the fragment it replaces */
static void
create_target(FragOp *op, int t)
{
	Oid			like = op->src[0];
	char	   *q = tgt_q(op, t);
	bool		isnull;
	Datum		d;

	ht_sql("CREATE %sTABLE %s (LIKE %s INCLUDING ALL)%s",
		   get_rel_persistence(like) == RELPERSISTENCE_UNLOGGED ? "UNLOGGED " : "",
		   q, op->qparent,
		   OidIsValid(get_rel_tablespace(like))
		   ? psprintf(" TABLESPACE %s", quote_identifier(get_tablespace_name(get_rel_tablespace(like))))
		   : "");
	/*
	 * reloptions and grants of the fragment it replaces; the owner is the
	 * parent's, whose code (indexes, checks, generated columns) the copy
	 * runs as that owner
	 */
	ht_sql("SELECT pg_catalog.quote_ident(r.rolname), c.reloptions IS NOT NULL,"
		   " pg_catalog.array_to_string(c.reloptions, ', '::pg_catalog.text)"
		   " FROM pg_catalog.pg_class c, pg_catalog.pg_class p JOIN pg_catalog.pg_roles r"
		   " ON r.oid OPERATOR(pg_catalog.=) p.relowner"
		   " WHERE c.oid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid"
		   " AND p.oid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid", like, op->relid);
	d = ht_col(0, 1, &isnull);
	{
		char	   *owner = TextDatumGetCString(d);
		bool		has_opts = DatumGetBool(ht_col(0, 2, &isnull));
		char	   *opts = has_opts ? TextDatumGetCString(ht_col(0, 3, &isnull)) : NULL;

		if (opts != NULL)
			ht_sql("ALTER TABLE %s SET (%s)", q, opts);
		ht_sql("ALTER TABLE %s OWNER TO %s", q, owner);
	}
	ht_copy_grants(like, q);
	/* the unique constraints, when the fragments keep them (DESIGN §19) */
	ht_frag_remote->add_fragment_keys(op->relid, q);
	/*
	 * the parent's foreign keys, validated now (ATTACH then only links
	 * them); NOT DEFERRABLE until the swap (deferred_fks)
	 */
	ht_sql("SELECT pg_catalog.quote_ident(conname), pg_catalog.pg_get_constraintdef(oid), condeferrable"
		   " FROM pg_catalog.pg_constraint WHERE conrelid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid"
		   " AND contype OPERATOR(pg_catalog.=) 'f'::pg_catalog.\"char\"", op->relid);
	{
		uint64		n = SPI_processed;
		char	  **fks = palloc(sizeof(char *) * Max(n, 1));
		char	  **immediate = palloc0(sizeof(char *) * Max(n, 1));

		for (uint64 i = 0; i < n; i++)
		{
			char	   *name = TextDatumGetCString(ht_col(i, 1, &isnull));

			fks[i] = psprintf("ALTER TABLE %s ADD CONSTRAINT %s %s", q, name,
							  TextDatumGetCString(ht_col(i, 2, &isnull)));
			if (DatumGetBool(ht_col(i, 3, &isnull)))
				immediate[i] = psprintf("ALTER TABLE %s ALTER CONSTRAINT %s NOT DEFERRABLE", q, name);
		}
		for (uint64 i = 0; i < n; i++)
		{
			ht_sql("%s", fks[i]);
			if (immediate[i] != NULL)
				ht_sql("%s", immediate[i]);
		}
	}
}

/* the deferral of the parent's deferrable foreign keys, back on target t (in the swap) */
static void
deferred_fks(FragOp *op, int t)
{
	uint64		n;
	char	  **stmts;
	bool		isnull;

	n = ht_sql("SELECT pg_catalog.quote_ident(conname), condeferred FROM pg_catalog.pg_constraint"
			   " WHERE conrelid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid"
			   " AND contype OPERATOR(pg_catalog.=) 'f'::pg_catalog.\"char\" AND condeferrable", op->relid);
	stmts = palloc(sizeof(char *) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
		stmts[i] = psprintf("ALTER TABLE %s ALTER CONSTRAINT %s DEFERRABLE INITIALLY %s", tgt_q(op, t),
							TextDatumGetCString(ht_col(i, 1, &isnull)),
							DatumGetBool(ht_col(i, 2, &isnull)) ? "DEFERRED" : "IMMEDIATE");
	for (uint64 i = 0; i < n; i++)
		ht_sql("%s", stmts[i]);
}

/*
 * The sources' own triggers (not cloned from the parent, not ours), on
 * target t, each in its original enabled state.  Created after the copy (in
 * the swap), so that moving rows fires none of them.
 */
static void
copy_triggers(FragOp *op, int t)
{
	for (int i = 0; i < op->nsrc; i++)
	{
		char	   *qsrc = ht_rel_qname(op->src[i]);
		uint64		n;
		char	  **defs;
		char	   *enabled;
		char	  **names;
		bool		isnull;

		if (op->ntgt == 1 && i > 0)
			break;				/* a merge keeps the buddy's triggers */
		n = ht_sql("SELECT pg_catalog.pg_get_triggerdef(oid), tgenabled,"
				   " pg_catalog.quote_ident(tgname) FROM pg_catalog.pg_trigger"
				   " WHERE tgrelid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid AND NOT tgisinternal"
				   " AND tgparentid OPERATOR(pg_catalog.=) 0::pg_catalog.oid"
				   " AND NOT pg_catalog.starts_with(tgname::pg_catalog.text, 'hashtree_'::pg_catalog.text)",
				   op->src[i]);
		defs = palloc(sizeof(char *) * Max(n, 1));
		names = palloc(sizeof(char *) * Max(n, 1));
		enabled = palloc(Max(n, 1));
		for (uint64 k = 0; k < n; k++)
		{
			defs[k] = TextDatumGetCString(ht_col(k, 1, &isnull));
			enabled[k] = DatumGetChar(ht_col(k, 2, &isnull));
			names[k] = TextDatumGetCString(ht_col(k, 3, &isnull));
		}
		for (uint64 k = 0; k < n; k++)
		{
			/* "... ON <source> ..." becomes "... ON <target> ..." */
			char	   *on = psprintf(" ON %s ", qsrc);
			char	   *at = strstr(defs[k], on);

			if (at == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot copy trigger definition: %s", defs[k])));
			ht_sql("%.*s ON %s %s", (int) (at - defs[k]), defs[k], tgt_q(op, t),
				   at + strlen(on));
			if (enabled[k] != TRIGGER_FIRES_ON_ORIGIN)
				ht_sql("ALTER TABLE %s %s TRIGGER %s", tgt_q(op, t),
					   enabled[k] == TRIGGER_DISABLED ? "DISABLE" :
					   enabled[k] == TRIGGER_FIRES_ALWAYS ? "ENABLE ALWAYS" : "ENABLE REPLICA",
					   names[k]);
		}
	}
}

/* SQL over a target's rows: did this row change fragment? */
static char *
moving_pred(FragOp *op, int t)
{
	int32		m;
	int32		r;

	if (op->add)
		return t == 1 ? "true" : "false";
	/* a merge: the rows that satisfied fragment N's bound */
	ht_lin_bound(&op->before, op->iter, &m, &r);
	return bound_check(op, m, r);
}

/*
 * Copy the sources' rows (alias s; extra: more conditions) that belong to
 * each target; returns rows moved.  Runs in the owner's sandbox (below).
 */
static int64
copy_rows(FragOp *op, const char *extra)
{
	int64		moved = 0;

	for (int t = 0; t < op->ntgt; t++)
		for (int i = 0; i < op->nsrc; i++)
		{
			uint64		n;

			n = ht_sql("INSERT INTO %s (%s)%s SELECT %s FROM ONLY %s s WHERE %s%s",
					   tgt_q(op, t), op->cols, op->overriding ? " OVERRIDING SYSTEM VALUE" : "",
					   op->cols, ht_rel_qname(op->src[i]),
					   bound_check(op, op->tgt_mod[t], op->tgt_rem[t]), extra ? extra : "");
			/* rows that change fragment: into N + 1 (add), out of N (del) */
			if ((op->add && t == 1) || (!op->add && i == 1))
				moved += n;
		}
	return moved;
}

/*
 * The table owner's code that moving rows runs (index expressions, CHECK
 * constraints, domain checks, generated columns, the key's hash and
 * equality functions, foreign key checks) runs as the parent's owner inside
 * a security-restricted operation, never with the caller's rights, which
 * may be a superuser's.  The targets belong to that owner.  hashtree's own
 * bookkeeping (the registry) stays outside.
 */
static int64
copy_rows_as_owner(FragOp *op, const char *extra)
{
	HtUserContext ctx;
	int64		moved;

	ht_as_table_owner_begin(op->relid, &ctx);
	moved = copy_rows(op, extra);
	ht_as_table_owner_end(&ctx);
	return moved;
}

static void
add_bound_checks(FragOp *op)
{
	HtUserContext ctx;

	/* (validating them runs the key's hash functions) */
	ht_as_table_owner_begin(op->relid, &ctx);
	for (int t = 0; t < op->ntgt; t++)
		ht_sql("ALTER TABLE %s ADD CONSTRAINT hashtree_frag_bound CHECK (%s)", tgt_q(op, t),
			   bound_check(op, op->tgt_mod[t], op->tgt_rem[t]));
	ht_as_table_owner_end(&ctx);
}

/* ---- capture (online mode) ------------------------------------------------------ */

static void with_lock_retry(void (*fn) (void *), void *arg, const char *what);
static void create_capture_triggers(void *arg);

#define CAPTURE_TRIGGER			"hashtree_frag_capture"
#define CAPTURE_TRUNCATE_TRIGGER	"hashtree_frag_capture_truncate"

static void
create_capture(FragOp *op)
{
	char	   *qlog = quote_qualified_identifier(op->nsp, op->log);
	bool		isnull;

	ht_sql("CREATE UNLOGGED TABLE %s AS SELECT %s FROM %s WITH NO DATA", qlog, op->keylist, op->qparent);
	ht_sql("ALTER TABLE %s ADD COLUMN hashtree_truncated pg_catalog.bool NOT NULL DEFAULT false", qlog);
	/* the replay reads it as the table's owner; the capture runs as whoever writes the table */
	ht_sql("SELECT pg_catalog.quote_ident(r.rolname) FROM pg_catalog.pg_class c"
		   " JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.relowner"
		   " WHERE c.oid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid", op->relid);
	ht_sql("ALTER TABLE %s OWNER TO %s", qlog, TextDatumGetCString(ht_col(0, 1, &isnull)));
	ht_sql("GRANT INSERT ON %s TO PUBLIC", qlog);
	with_lock_retry(create_capture_triggers, op, "capture triggers");
}

/*
 * The capture triggers, on every source at once: all the sources' locks
 * are taken in one LOCK (retried on lock_timeout), so that we never hold
 * one fragment while waiting for another that a client holds while it
 * waits for ours.  The triggers are created by the extension's owner (the
 * trigger function is not executable by PUBLIC); they take no arguments:
 * the function finds the log and the key from the registry.
 */
static void
create_capture_triggers(void *arg)
{
	FragOp	   *op = (FragOp *) arg;
	StringInfoData list;
	Oid			save_user;
	int			save_sec;

	initStringInfo(&list);
	for (int i = 0; i < op->nsrc; i++)
		appendStringInfo(&list, "%s%s", i ? ", " : "", ht_rel_qname(op->src[i]));
	ht_sql("LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE", list.data);
	ht_as_owner_begin(&save_user, &save_sec);
	for (int i = 0; i < op->nsrc; i++)
	{
		char	   *qsrc = ht_rel_qname(op->src[i]);

		ht_sql("CREATE TRIGGER " CAPTURE_TRIGGER " AFTER INSERT OR UPDATE OR DELETE ON %s"
			   " FOR EACH ROW EXECUTE FUNCTION hashtree._frag_capture()", qsrc);
		ht_sql("CREATE TRIGGER " CAPTURE_TRUNCATE_TRIGGER " AFTER TRUNCATE ON %s"
			   " FOR EACH STATEMENT EXECUTE FUNCTION hashtree._frag_capture()", qsrc);
		ht_sql("ALTER TABLE %s ENABLE ALWAYS TRIGGER " CAPTURE_TRIGGER, qsrc);
		ht_sql("ALTER TABLE %s ENABLE ALWAYS TRIGGER " CAPTURE_TRUNCATE_TRIGGER, qsrc);
	}
	ht_as_owner_end(save_user, save_sec);
}

/*
 * _frag_capture(): log the key of each row written to a source fragment
 * during an online operation (old and new), or a TRUNCATE marker.
 *
 * It acts only as one of the capture triggers of an operation under way:
 * the relation must be a source recorded in the registry (read with a
 * fresh snapshot, as the extension's owner), the trigger one of ours by
 * name and kind; otherwise ERROR, nothing written.  The log and the key
 * columns come from the registry and the catalogs, never from trigger
 * arguments.  One prepared INSERT per log table and backend, run with the
 * pinned search_path.
 */
typedef struct CapturePlan
{
	Oid			log;
	SPIPlanPtr	plan;
	SPIPlanPtr	marker;
	int			nkeys;
	char	   *keys[PARTITION_MAX_KEYS];	/* column names (in capture_cxt) */
} CapturePlan;

static CapturePlan capture_plan;
static MemoryContext capture_cxt;

/* what was checked last: this source, in this transaction, logs to log */
static Oid	capture_checked_rel = InvalidOid;
static LocalTransactionId capture_checked_lxid = InvalidLocalTransactionId;
static Oid	capture_checked_log = InvalidOid;

static SPIPlanPtr capture_op_plan;

static bool
oid_in(Datum d, bool isnull, Oid oid)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (isnull)
		return false;
	deconstruct_array(DatumGetArrayTypeP(d), OIDOID, sizeof(Oid), true, TYPALIGN_INT,
					  &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i] && DatumGetObjectId(elems[i]) == oid)
			return true;
	return false;
}

static void
capture_refuse(Relation rel, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("hashtree._frag_capture() fired on table \"%s\", %s",
					RelationGetRelationName(rel), why),
			 errdetail("It is the capture trigger of online fragment operations, on the "
					   "fragments they copy.")));
}

/* the log of the operation copying rel, which the trigger tg fired on; ERROR if none */
static Oid
capture_log(TriggerData *td)
{
	Relation	rel = td->tg_relation;
	Oid			relid = RelationGetRelid(rel);
	Trigger    *tg = td->tg_trigger;
	bool		truncate = TRIGGER_FIRED_BY_TRUNCATE(td->tg_event);
	Oid			parent;
	Oid			log;
	Datum		v[1];
	Oid			save_user;
	int			save_sec;
	int			pin;
	int			rc;
	bool		ok;

	if (!TRIGGER_FIRED_AFTER(td->tg_event) ||
		(truncate ? !TRIGGER_FIRED_FOR_STATEMENT(td->tg_event) : !TRIGGER_FIRED_FOR_ROW(td->tg_event)) ||
		strcmp(tg->tgname, truncate ? CAPTURE_TRUNCATE_TRIGGER : CAPTURE_TRIGGER) != 0 ||
		tg->tgnargs != 0)
		capture_refuse(rel, "not as one of hashtree's capture triggers");
	if (relid == capture_checked_rel && MyProc->lxid == capture_checked_lxid)
		return capture_checked_log;

	if (!rel->rd_rel->relispartition)
		capture_refuse(rel, "which is not a fragment");
	parent = get_partition_parent(relid, true);
	log = get_relname_relid(psprintf("hashtree_frag_%u_log", parent), get_rel_namespace(parent));
	v[0] = ObjectIdGetDatum(parent);

	/*
	 * A fresh snapshot: the operation was recorded when the trigger was
	 * created, perhaps after this transaction's snapshot was taken.
	 */
	ht_as_owner_begin(&save_user, &save_sec);
	pin = ht_pin_begin();
	if (capture_op_plan == NULL)
	{
		Oid			argtype = OIDOID;
		SPIPlanPtr	plan = SPI_prepare("SELECT op_sources, op_helpers FROM hashtree.frag_table"
									   " WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid"
									   " AND op IS NOT NULL", 1, &argtype);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "hashtree: cannot prepare the registry lookup of the capture");
		capture_op_plan = plan;
	}
	rc = SPI_execute_snapshot(capture_op_plan, v, NULL, GetLatestSnapshot(), InvalidSnapshot,
							  true, false, 1);
	ht_pin_end(pin);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "hashtree: the registry lookup of the capture failed (%s)",
			 SPI_result_code_string(rc));
	ok = SPI_processed == 1;
	if (ok)
	{
		bool		isnull;
		Datum		d = ht_col(0, 1, &isnull);

		ok = oid_in(d, isnull, relid);
		d = ht_col(0, 2, &isnull);
		ok = ok && OidIsValid(log) && oid_in(d, isnull, log);
	}
	ht_as_owner_end(save_user, save_sec);
	if (!ok)
		capture_refuse(rel, "which no online fragment operation is copying");

	capture_checked_rel = relid;
	capture_checked_lxid = MyProc->lxid;
	capture_checked_log = log;
	return log;
}

/* prepare the INSERTs into log for rows of rel (whose parent has the key) */
static void
capture_prepare(Relation rel, Oid log)
{
	Oid			parent = get_partition_parent(RelationGetRelid(rel), true);
	Relation	prel;
	PartitionKey key;
	StringInfoData sql;
	char	   *qlog = ht_rel_qname(log);
	Oid			types[PARTITION_MAX_KEYS];
	int			pin;

	if (capture_cxt == NULL)
		capture_cxt = AllocSetContextCreate(TopMemoryContext, "hashtree capture",
											ALLOCSET_SMALL_SIZES);
	if (capture_plan.plan)
		SPI_freeplan(capture_plan.plan);
	if (capture_plan.marker)
		SPI_freeplan(capture_plan.marker);
	capture_plan.plan = capture_plan.marker = NULL;
	capture_plan.log = InvalidOid;
	MemoryContextReset(capture_cxt);

	prel = table_open(parent, AccessShareLock);
	key = RelationGetPartitionKey(prel);
	capture_plan.nkeys = key->partnatts;
	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s VALUES (", qlog);
	for (int i = 0; i < key->partnatts; i++)
	{
		capture_plan.keys[i] = MemoryContextStrdup(capture_cxt,
												   NameStr(TupleDescAttr(RelationGetDescr(prel),
																		 key->partattrs[i] - 1)->attname));
		types[i] = key->parttypid[i];
		appendStringInfo(&sql, "%s$%d", i ? ", " : "", i + 1);
	}
	appendStringInfoString(&sql, ", false)");
	table_close(prel, AccessShareLock);

	pin = ht_pin_begin();
	capture_plan.plan = SPI_prepare(sql.data, capture_plan.nkeys, types);
	if (capture_plan.plan == NULL || SPI_keepplan(capture_plan.plan) != 0)
		elog(ERROR, "hashtree: cannot prepare the capture into %s", qlog);
	capture_plan.marker = SPI_prepare(psprintf("INSERT INTO %s (hashtree_truncated) VALUES (true)",
											   qlog), 0, NULL);
	if (capture_plan.marker == NULL || SPI_keepplan(capture_plan.marker) != 0)
		elog(ERROR, "hashtree: cannot prepare the capture into %s", qlog);
	ht_pin_end(pin);
	capture_plan.log = log;
}

static void
capture_exec(SPIPlanPtr plan, Datum *v, const char *n)
{
	int			pin = ht_pin_begin();
	int			rc = SPI_execute_plan(plan, v, n, false, 0);

	ht_pin_end(pin);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "hashtree: the capture failed (%s)", SPI_result_code_string(rc));
}

/*
 * hashtree._frag_capture() RETURNS trigger
 * Row trigger AFTER INSERT OR UPDATE OR DELETE and statement trigger AFTER
 * TRUNCATE on the sources of an online add_frag/del_frag: logs the keys
 * written (or a TRUNCATE marker) into the operation's log table, as the
 * writing role.  Locks: ROW EXCLUSIVE on the log, ACCESS SHARE on the
 * registry and the parent.
 */
PG_FUNCTION_INFO_V1(ht_frag_capture);
Datum
ht_frag_capture(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	rows[2];
	int			nrows = 0;
	Oid			log;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("hashtree._frag_capture() must be called as a trigger")));
	desc = RelationGetDescr(td->tg_relation);

	SPI_connect();
	log = capture_log(td);
	if (capture_plan.log != log || capture_plan.plan == NULL)
		capture_prepare(td->tg_relation, log);

	if (TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		capture_exec(capture_plan.marker, NULL, NULL);
	else
	{
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event) || TRIGGER_FIRED_BY_DELETE(td->tg_event))
			rows[nrows++] = td->tg_trigtuple;
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
			rows[nrows++] = td->tg_newtuple;
		else if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
			rows[nrows++] = td->tg_trigtuple;
		for (int r = 0; r < nrows; r++)
		{
			Datum		v[PARTITION_MAX_KEYS];
			char		n[PARTITION_MAX_KEYS + 1];

			for (int i = 0; i < capture_plan.nkeys; i++)
			{
				int			att = SPI_fnumber(desc, capture_plan.keys[i]);
				bool		isnull;

				if (att <= 0)
					elog(ERROR, "hashtree: column \"%s\" not found", capture_plan.keys[i]);
				v[i] = SPI_getbinval(rows[r], desc, att, &isnull);
				n[i] = isnull ? 'n' : ' ';
			}
			n[capture_plan.nkeys] = '\0';
			capture_exec(capture_plan.plan, v, n);
		}
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}

/* "EXISTS (rows of the log with the key of row alias)", by the key's own equality */
static char *
logged_key(FragOp *op, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "EXISTS (SELECT 1 FROM %s l WHERE ",
					 quote_qualified_identifier(op->nsp, op->log));
	for (int i = 0; i < op->nkeys; i++)
	{
		Assert(OidIsValid(op->keyeq[i]));	/* (check_online_keys) */
		if (i > 0)
			appendStringInfoString(&buf, " AND ");
		generate_operator_clause(&buf, psprintf("%s.%s", alias, op->keys[i]), op->keytype[i],
								 op->keyeq[i], psprintf("l.%s", op->keys[i]), op->keytype[i]);
	}
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/* delete the rows of target t matching cond (alias x); returns how many had moved */
static int64
delete_counting(FragOp *op, int t, const char *cond)
{
	bool		isnull;

	ht_sql("WITH d AS (DELETE FROM %s x WHERE %s RETURNING %s AS m)"
		   " SELECT pg_catalog.count(*) FILTER (WHERE m) FROM d", tgt_q(op, t), cond, moving_pred(op, t));
	return DatumGetInt64(ht_col(0, 1, &isnull));
}

/*
 * Re-copy the rows of the keys written since the copy (under the swap's
 * locks): delete them from the targets, copy them again from the sources.
 * A TRUNCATE during the copy: copy everything again.  moved: rows that
 * changed fragment, as counted by the copy; returns it corrected.  Keys are
 * matched with the equality operator of the key's hash operator class,
 * named exactly; the moving itself runs as the table's owner.
 */
static int64
replay(FragOp *op, int64 moved)
{
	char	   *qlog = quote_qualified_identifier(op->nsp, op->log);
	bool		isnull;
	bool		truncated;
	StringInfoData anynull;
	bool		nullkeys = false;
	HtUserContext ctx;

	ht_sql("SELECT pg_catalog.bool_or(hashtree_truncated), pg_catalog.count(*) FROM %s", qlog);
	truncated = DatumGetBool(ht_col(0, 1, &isnull)) && !isnull;
	if (!truncated && DatumGetInt64(ht_col(0, 2, &isnull)) == 0)
		return moved;

	initStringInfo(&anynull);
	for (int i = 0; i < op->nkeys; i++)
		appendStringInfo(&anynull, "%s%s IS NULL", i ? " OR " : "", op->keys[i]);
	if (!truncated)
	{
		ht_sql("ANALYZE %s", qlog);
		/* keys with a null column match no equality: their rows are copied again whole */
		ht_sql("SELECT 1 FROM %s WHERE %s LIMIT 1", qlog, anynull.data);
		nullkeys = SPI_processed > 0;
	}

	ht_as_table_owner_begin(op->relid, &ctx);
	if (truncated)
	{
		for (int t = 0; t < op->ntgt; t++)
			ht_sql("DELETE FROM %s", tgt_q(op, t));
		moved = copy_rows(op, NULL);
	}
	else
	{
		for (int t = 0; t < op->ntgt; t++)
			moved -= delete_counting(op, t, logged_key(op, "x"));
		moved += copy_rows(op, psprintf(" AND %s", logged_key(op, "s")));
		if (nullkeys)
		{
			for (int t = 0; t < op->ntgt; t++)
				moved -= delete_counting(op, t, anynull.data);
			moved += copy_rows(op, psprintf(" AND (%s)", anynull.data));
		}
	}
	ht_as_table_owner_end(&ctx);
	return moved;
}

/* ---- the swap ----------------------------------------------------------------- */

static int64
swap(FragOp *op, bool online, int64 moved)
{
	/* the parent first, then the fragments: the order writers use */
	ht_sql("LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE", op->qparent);
	for (int i = 0; i < op->nsrc; i++)
		ht_sql("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE", ht_rel_qname(op->src[i]));
	if (online)
		moved = replay(op, moved);
	/* the sources' own triggers and deferred foreign keys, now that no more rows move */
	for (int t = 0; t < op->ntgt; t++)
	{
		copy_triggers(op, t);
		deferred_fks(op, t);
	}
	for (int i = 0; i < op->nsrc; i++)
		ht_sql("ALTER TABLE %s DETACH PARTITION %s", op->qparent, ht_rel_qname(op->src[i]));
	for (int t = 0; t < op->ntgt; t++)
		ht_sql("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES WITH (MODULUS %d, REMAINDER %d)",
			   op->qparent, tgt_q(op, t), op->tgt_mod[t], op->tgt_rem[t]);
	for (int i = 0; i < op->nsrc; i++)
		ht_sql("DROP TABLE %s", ht_rel_qname(op->src[i]));
	if (online)
		ht_sql("DROP TABLE %s", quote_qualified_identifier(op->nsp, op->log));
	for (int t = 0; t < op->ntgt; t++)
	{
		ht_sql("ALTER TABLE %s DROP CONSTRAINT hashtree_frag_bound", tgt_q(op, t));
		/* the indexes LIKE created are named after the working name */
		ht_frag_rename_indexes(op->nsp, op->tgt_name[t], op->tgt_final[t]);
		ht_sql("ALTER TABLE %s RENAME TO %s", tgt_q(op, t), quote_identifier(op->tgt_final[t]));
	}
	ht_frag_store_state(op->relid, &op->after);
	ht_ddl_partitions_changed(op->relid);
	return moved;
}

/*
 * Run fn with lock_timeout in a subtransaction until it gets its locks:
 * on a lock timeout everything it did is rolled back (its locks released,
 * so whoever waited on us goes on) and it is tried again after a pause.
 */
static void
with_lock_retry(void (*fn) (void *), void *arg, const char *what)
{
	TimestampTz start = GetCurrentTimestamp();
	int			pause_ms = 10;

	for (;;)
	{
		int			nest = NewGUCNestLevel();
		ErrorData  *edata;

		(void) set_config_option("lock_timeout", CppAsString2(SWAP_LOCK_TIMEOUT_MS),
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		edata = ht_subxact(fn, arg);
		AtEOXact_GUC(true, nest);
		if (edata == NULL)
			return;
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE ||
			TimestampDifferenceExceeds(start, GetCurrentTimestamp(), SWAP_GIVE_UP_MS))
			ReThrowError(edata);
		FreeErrorData(edata);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 pause_ms + (long) pg_prng_uint64_range(&pg_global_prng_state, 0, pause_ms),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		pause_ms = Min(pause_ms * 2, 500);
		elog(DEBUG1, "hashtree: %s: lock not available, trying again", what);
	}
}

/* ---- block_writes: one transaction ------------------------------------------------- */

typedef struct BlockRun
{
	FragOp	   *op;
	int64		moved;
	bool		recover;		/* an unfinished online operation to roll back */
} BlockRun;

static void
block_writes_fn(void *arg)
{
	BlockRun   *b = (BlockRun *) arg;
	FragOp	   *op = b->op;

	/* writers wait (through the parent, and directly on the sources); readers go on */
	ht_sql("LOCK TABLE ONLY %s IN SHARE MODE", op->qparent);
	for (int i = 0; i < op->nsrc; i++)
		ht_sql("LOCK TABLE %s IN SHARE MODE", ht_rel_qname(op->src[i]));
	/* (after the parent's lock: dropping the leftovers locks fragments) */
	if (b->recover)
		ht_frag_recover(op->relid);
	for (int t = 0; t < op->ntgt; t++)
		create_target(op, t);
	b->moved = copy_rows_as_owner(op, NULL);
	add_bound_checks(op);
	(void) swap(op, false, b->moved);
}

/* ---- online: the preparation runs in a background worker ----------------------------- */

static HtQuery q_op_begin = {
	"UPDATE hashtree.frag_table SET op = $2, op_phase = 'preparing', op_sources = $3,"
	" op_helpers = $4, op_error = NULL"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	4, {OIDOID, TEXTOID, OIDARRAYOID, OIDARRAYOID}
};
static HtQuery q_op_prepared = {
	"UPDATE hashtree.frag_table SET op_phase = 'prepared', op_moved = $2"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	2, {OIDOID, INT8OID}
};
static HtQuery q_op_fail = {
	"UPDATE hashtree.frag_table SET op = NULL, op_phase = NULL, op_sources = NULL,"
	" op_helpers = NULL, op_error = $2"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	2, {OIDOID, TEXTOID}
};

static void
registry_exec(HtQuery *q, Datum *v, bool *n)
{
	ht_exec_as_owner(q, v, n, 0);
}

static ArrayType *
oid_array_of(Oid *oids, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = ObjectIdGetDatum(oids[i]);
	return construct_array(d, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT);
}

/* plan the operation again in the worker, from the same registry row */
static void
plan_in_worker(Oid relid, bool add, FragOp *op)
{
	HtFragTable ft;
	Relation	rel = table_open(relid, AccessShareLock);

	if (!ht_frag_lookup(relid, &ft))
		elog(ERROR, "hashtree: table %u is not a fragmented table", relid);
	plan_op(rel, &ft, add, op);
	table_close(rel, NoLock);
}

/* worker, first transaction: targets, log and capture triggers; recorded */
static void
prepare_begin(FragOp *op)
{
	Oid			helpers[3];
	Datum		v[4];

	for (int t = 0; t < op->ntgt; t++)
		create_target(op, t);
	create_capture(op);
	for (int t = 0; t < op->ntgt; t++)
		helpers[t] = get_relname_relid(op->tgt_name[t], get_namespace_oid(op->nsp, false));
	helpers[op->ntgt] = get_relname_relid(op->log, get_namespace_oid(op->nsp, false));
	v[0] = ObjectIdGetDatum(op->relid);
	v[1] = CStringGetTextDatum(op->add ? "add_frag" : "del_frag");
	v[2] = PointerGetDatum(oid_array_of(op->src, op->nsrc));
	v[3] = PointerGetDatum(oid_array_of(helpers, op->ntgt + 1));
	registry_exec(&q_op_begin, v, NULL);
}

/* worker, second transaction: the copy (a snapshot after the triggers exist) */
static void
prepare_copy(FragOp *op)
{
	Datum		v[2];
	int64		moved;

	moved = copy_rows_as_owner(op, NULL);
	add_bound_checks(op);
	for (int t = 0; t < op->ntgt; t++)
		ht_sql("ANALYZE %s", tgt_q(op, t));
	v[0] = ObjectIdGetDatum(op->relid);
	v[1] = Int64GetDatum(moved);
	registry_exec(&q_op_prepared, v, NULL);
}

/* drop what an unfinished operation left (needs SPI; its own transaction) */
static void
rollback_op(HtFragTable *ft, const char *error)
{
	Datum		v[2];
	bool		n[2] = {false, error == NULL};
	Oid			save_user;
	int			save_sec;

	/* (as the extension's owner, who created them; a foreign fragment is that owner's) */
	ht_as_owner_begin(&save_user, &save_sec);
	for (int i = 0; i < ft->nsources; i++)
	{
		char	   *name = get_rel_name(ft->sources[i]);

		if (name == NULL)
			continue;
		ht_sql("DROP TRIGGER IF EXISTS " CAPTURE_TRIGGER " ON %s", ht_rel_qname(ft->sources[i]));
		ht_sql("DROP TRIGGER IF EXISTS " CAPTURE_TRUNCATE_TRIGGER " ON %s",
			   ht_rel_qname(ft->sources[i]));
	}
	ht_as_owner_end(save_user, save_sec);
	for (int i = 0; i < ft->nhelpers; i++)
		if (get_rel_name(ft->helpers[i]) != NULL && !get_rel_relispartition(ft->helpers[i]))
			ht_sql("DROP TABLE %s", ht_rel_qname(ft->helpers[i]));
	v[0] = ObjectIdGetDatum(ft->relid);
	v[1] = error ? CStringGetTextDatum(error) : (Datum) 0;
	registry_exec(&q_op_fail, v, n);
}

/*
 * One transaction of the job below: step 0 rolls back what an earlier
 * operation left, 1 begins, 2 copies.  Returns the error it ended with
 * (copied into the caller's memory context), or NULL.
 */
static ErrorData *
prepare_step(Oid relid, bool add, int step, FragOp *op)
{
	MemoryContext cxt = CurrentMemoryContext;
	ErrorData  *volatile edata = NULL;	/* set in PG_CATCH */

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		HT_API_BEGIN();
		if (step == 0)
			ht_frag_recover(relid);
		else
		{
			plan_in_worker(relid, add, op);
			if (step == 1)
				prepare_begin(op);
			else
				prepare_copy(op);
		}
		HT_API_END();
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
	}
	PG_END_TRY();
	return edata;
}

void
ht_frag_prepare_job(Oid relid, bool add)
{
	ErrorData  *edata = NULL;
	FragOp		op;

	/*
	 * Three transactions: roll back what an earlier operation left (not in
	 * the caller's: it would hold the locks we need), begin (recorded, so a
	 * crash is rolled back later), copy.
	 */
	for (int step = 0; step < 3 && edata == NULL; step++)
		edata = prepare_step(relid, add, step, &op);
	if (edata == NULL)
		return;

	/* undo, and leave the reason for the caller */
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	HT_API_BEGIN();
	{
		HtFragTable ft;

		if (ht_frag_lookup(relid, &ft))
		{
			if (ft.op == NULL)
			{
				/* the first transaction failed: nothing was recorded */
				ft.nsources = ft.nhelpers = 0;
			}
			rollback_op(&ft, edata->message);
		}
	}
	HT_API_END();
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * Start the background preparation of an online add_frag (add) or
 * del_frag on a table, as the current role (a job that runs
 * ht_frag_prepare_job); false if no worker slot.
 */
static bool
start_prepare_job(Oid relid, bool add, BackgroundWorkerHandle **handle)
{
	HtJob		job;
	char		name[BGW_MAXLEN];

	memset(&job, 0, sizeof(job));
	job.dboid = MyDatabaseId;
	job.kind = HT_JOB_FRAG;
	job.mode = add ? 1 : 0;
	job.userid = GetUserId();
	job.relid = relid;
	snprintf(name, sizeof(name), "hashtree %s copy of table %u", add ? "add_frag" : "del_frag",
			 relid);
	return ht_job_register(&job, name, "hashtree fragment copy", handle);
}

/* start the preparation in a background worker and wait for it; rows moved */
static int64
prepare_online(FragOp *op)
{
	BackgroundWorkerHandle *handle;
	pid_t		pid;
	HtFragTable ft;

	if (!start_prepare_job(op->relid, op->add, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no background worker slot for an online %s",
						op->add ? "add_frag" : "del_frag"),
				 errhint("Raise max_worker_processes, or use mode => 'block_writes'.")));
	PG_TRY();
	{
		if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
			(void) WaitForBackgroundWorkerShutdown(handle);
	}
	PG_CATCH();
	{
		/* canceled: stop the copy too (its leftovers are rolled back later) */
		TerminateBackgroundWorker(handle);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (!ht_frag_lookup(op->relid, &ft) || ft.op == NULL ||
		ft.op_phase == NULL || strcmp(ft.op_phase, "prepared") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the preparation of %s on %s failed: %s",
						op->add ? "add_frag" : "del_frag", op->qparent,
						ft.op_error ? ft.op_error : "the worker ended without a result")));
	return ft.op_moved;
}

typedef struct SwapRun
{
	FragOp	   *op;
	int64		moved;			/* by the copy; then corrected by the swap */
} SwapRun;

static void
online_swap_fn(void *arg)
{
	SwapRun    *sr = (SwapRun *) arg;

	sr->moved = swap(sr->op, true, sr->moved);
}

/* ---- recovery ------------------------------------------------------------------------- */

/* is the operation on this table ours to touch (no other one under way)? */
static bool
try_op_lock(Oid relid)
{
	bool		isnull;

	ht_sql("SELECT pg_catalog.pg_try_advisory_xact_lock(%d, %d)", HT_FRAG_LOCK_KEY, (int32) relid);
	return DatumGetBool(ht_col(0, 1, &isnull));
}

/* roll back an interrupted online operation on a table, if any (needs SPI) */
void
ht_frag_recover(Oid relid)
{
	HtFragTable ft;

	if (!ht_frag_lookup(relid, &ft) || ft.op == NULL)
		return;
	ereport(NOTICE,
			(errmsg("rolling back an unfinished %s on %s", ft.op, ht_rel_qname(relid))));
	rollback_op(&ft, NULL);
}

void
ht_frag_recover_all(void)
{
	uint64		n = ht_sql("SELECT parent::pg_catalog.oid FROM hashtree.frag_table WHERE op IS NOT NULL");
	Oid		   *rels = palloc(sizeof(Oid) * Max(n, 1));
	bool		isnull;

	for (uint64 i = 0; i < n; i++)
		rels[i] = DatumGetObjectId(ht_col(i, 1, &isnull));
	for (uint64 i = 0; i < n; i++)
		if (get_rel_name(rels[i]) != NULL && try_op_lock(rels[i]))
			ht_frag_recover(rels[i]);
}

/* ---- add_frag, del_frag ------------------------------------------------------------------ */

/*
 * The online copy runs in a background worker that logs in as the current
 * role: a role without LOGIN would make the worker fail at its start.
 */
static void
check_can_login(bool add)
{
	Oid			role = GetUserId();
	HeapTuple	tp = SearchSysCache1(AUTHOID, ObjectIdGetDatum(role));
	bool		canlogin;
	char	   *name;

	if (!HeapTupleIsValid(tp))
		elog(ERROR, "hashtree: cache lookup failed for role %u", role);
	canlogin = ((Form_pg_authid) GETSTRUCT(tp))->rolcanlogin;
	name = pstrdup(NameStr(((Form_pg_authid) GETSTRUCT(tp))->rolname));
	ReleaseSysCache(tp);
	if (!canlogin)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("an online %s needs a role that can log in, and role \"%s\" cannot",
						add ? "add_frag" : "del_frag", name),
				 errdetail("The copy runs in a background worker that logs in as the calling role."),
				 errhint("Use mode => 'block_writes', or call it as a role with LOGIN.")));
}

/*
 * The online swap finds the rows written during the copy by the equality
 * operator of the partition key's hash operator family: a custom operator
 * class needs only its hash support function to partition a table, so it
 * may have none (block_writes needs none).
 */
static void
check_online_keys(FragOp *op, bool add)
{
	for (int i = 0; i < op->nkeys; i++)
	{
		if (!OidIsValid(op->keyeq[i]))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("an online %s needs an equality operator for partition key column \"%s\"",
							add ? "add_frag" : "del_frag", op->rawkeys[i]),
					 errdetail("The hash operator class of the column has no equality operator (strategy 1)."),
					 errhint("Add OPERATOR 1 = to the operator class, or use mode => 'block_writes'.")));
	}
}

static Datum
frag_change(FunctionCallInfo fcinfo, bool add)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid;
	char	   *mode;
	bool		online;
	Relation	rel;
	HtFragTable ft;
	FragOp		op;
	int64		moved = 0;

	HT_ARG_NOT_NULL(0, "tbl");
	HT_ARG_NOT_NULL(1, "mode");
	relid = PG_GETARG_OID(0);
	mode = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (strcmp(mode, "online") == 0)
		online = true;
	else if (strcmp(mode, "block_writes") == 0)
		online = false;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("mode must be online or block_writes, not \"%s\"", mode)));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s must run at isolation level READ COMMITTED",
						add ? "add_frag()" : "del_frag()")));
	/* fragments elsewhere: moved here and back around the local operation */
	if (ht_frag_remote->remote_involved(fcinfo, add))
		return ht_frag_remote->change_remote(fcinfo, add);
	InitMaterializedSRF(fcinfo, 0);

	SPI_connect();
	HT_API_BEGIN();
	rel = table_open(relid, AccessShareLock);
	ht_frag_check_table(rel);
	if (!try_op_lock(relid))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("another fragment operation is under way on table \"%s\"",
						RelationGetRelationName(rel))));
	if (!ht_frag_lookup(relid, &ft))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not a fragmented table", RelationGetRelationName(rel)),
				 errhint("Make it one with hashtree.frag_init() or hashtree.frag_activate().")));
	plan_op(rel, &ft, add, &op);
	for (int i = 0; i < op.nsrc; i++)
		ht_frag_remote->require_local(op.src[i], op.src_frag[i], add ? "add_frag" : "del_frag");
	if (online)
	{
		check_online_keys(&op, add);
		check_can_login(add);
	}
	if (online)
	{
		/*
		 * The copy runs in another backend: if this transaction already
		 * wrote the table or changed its fragments, it would wait for our
		 * locks while we wait for it.
		 */
		for (int i = -1; i < op.nsrc; i++)
		{
			Relation	r = i < 0 ? rel : relation_open(op.src[i], AccessShareLock);
			bool		held = CheckRelationLockedByMe(r, RowExclusiveLock, true);

			if (i >= 0)
				relation_close(r, AccessShareLock);
			if (held)
				ereport(ERROR,
						(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
						 errmsg("an online %s cannot run in a transaction that has written to table \"%s\"",
								add ? "add_frag" : "del_frag", RelationGetRelationName(rel)),
						 errhint("Commit first, or use mode => 'block_writes'.")));
		}
	}
	/* (DDL on the table refuses while this backend holds it open) */
	table_close(rel, NoLock);
	ht_frag_check_references(op.relid, op.qparent,
							 "Drop the foreign key, change the fragments, and add it back.");

	if (online)
	{
		SwapRun		sr = {&op, 0};

		sr.moved = prepare_online(&op);
		with_lock_retry(online_swap_fn, &sr, add ? "add_frag" : "del_frag");
		moved = sr.moved;
	}
	else
	{
		BlockRun	b = {&op, 0, ft.op != NULL};

		with_lock_retry(block_writes_fn, &b, add ? "add_frag" : "del_frag");
		moved = b.moved;
	}
	HT_API_END();
	SPI_finish();

	{
		Datum		v[6];
		bool		n[6] = {false, false, false, false, false, false};
		Datum		iter = Int32GetDatum(op.iter);
		Datum		lock = Int32GetDatum(op.lock);

		v[0] = Int32GetDatum(op.after.n);
		v[1] = Int32GetDatum(op.after.p);
		v[2] = Int32GetDatum(op.after.l);
		v[3] = PointerGetDatum(construct_array(&iter, 1, INT4OID, sizeof(int32), true, TYPALIGN_INT));
		v[4] = PointerGetDatum(construct_array(&lock, 1, INT4OID, sizeof(int32), true, TYPALIGN_INT));
		v[5] = Int64GetDatum(moved);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

/*
 * hashtree.add_frag(tbl regclass, mode text DEFAULT 'online', node text DEFAULT NULL)
 *   RETURNS TABLE(n_fragments, next_n_to_split, n_doubles, iter_frags,
 *                 additional_lock_frags, moved_rows)
 * Splits fragment P into P and N+1 (N+1 on peer node, if given; P, N or
 * the buddy on a peer: fragremote.c, which needs EXECUTE on move_frag).
 * Locks: SHARE on tbl and the source (block_writes) or SHARE ROW
 * EXCLUSIVE on the source for the capture triggers (online), then ACCESS
 * EXCLUSIVE on tbl and the source for the swap; an advisory transaction
 * lock per table.
 */
PG_FUNCTION_INFO_V1(ht_add_frag);
Datum
ht_add_frag(PG_FUNCTION_ARGS)
{
	return frag_change(fcinfo, true);
}

/*
 * hashtree.del_frag(tbl regclass, mode text DEFAULT 'online') RETURNS as add_frag
 * Merges fragment N into its buddy; locks as add_frag, on both sources.
 */
PG_FUNCTION_INFO_V1(ht_del_frag);
Datum
ht_del_frag(PG_FUNCTION_ARGS)
{
	return frag_change(fcinfo, false);
}

/* with_lock_retry for the other fragment operations (fragremote.c) */
void
ht_frag_lock_retry(void (*fn) (void *), void *arg, const char *what)
{
	with_lock_retry(fn, arg, what);
}
