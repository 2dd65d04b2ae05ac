/*-------------------------------------------------------------------------
 *
 * partlock.c
 *	  Partition state and partition locks.
 *
 * A partition lock is a row of hashtree.partition naming its owner: a
 * backend pid and that backend's start time (so that a recycled pid is
 * not mistaken for the owner).  An owner that has exited holds nothing:
 * every reader checks liveness against the backend status array, so the
 * lock vanishes with its owner (also after a crash, when no pid is alive).
 * The lock survives the caller's transaction, like plum_db's lock; it is
 * itself written transactionally, so a lock taken in a transaction that
 * rolls back was never taken.
 *
 * lock() never waits: a row being changed by another transaction reads as
 * "locked".  Updates and rebuilds of one partition are serialised by a
 * transaction-scoped advisory lock (class HT_ADVISORY_KEY, object =
 * partition), which also yields "ongoing_update".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/backend_status.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "common.h"
#include "partlock.h"
#include "sqlexec.h"

const char *const ht_part_answer_names[HT_PART_NANSWERS] = {
	[HT_PART_OK] = "ok",
	[HT_PART_NOT_BUILT] = "not_built",
	[HT_PART_LOCKED] = "locked",
	[HT_PART_NOT_LOCKED] = "not_locked",
	[HT_PART_NOT_ALLOWED] = "not_allowed",
	[HT_PART_ONGOING_UPDATE] = "ongoing_update",
};

bool
ht_part_answer_of(const char *word, HtPartAnswer *answer)
{
	for (int i = 0; i < HT_PART_NANSWERS; i++)
		if (strcmp(word, ht_part_answer_names[i]) == 0)
		{
			*answer = (HtPartAnswer) i;
			return true;
		}
	return false;
}

/* first key of the advisory locks taken by hashtree ('HT' << 16) */
#define HT_ADVISORY_KEY 0x48540000

/* the status entry of a live backend with this pid, NULL if none */
static PgBackendStatus *
find_backend(int pid)
{
	int			n;

	/* read the current backend status array, not a stale snapshot */
	pgstat_clear_backend_activity_snapshot();
	n = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *l = pgstat_fetch_stat_local_beentry(i);

		if (l != NULL && l->backendStatus.st_procpid == pid)
			return &l->backendStatus;
	}
	return NULL;
}

/* start time of a live backend, false if no such backend */
bool
ht_backend_start(int pid, TimestampTz *start)
{
	PgBackendStatus *be;

	if (pid == MyProcPid)
	{
		*start = MyStartTimestamp;
		return true;
	}
	if (pid <= 0 || (be = find_backend(pid)) == NULL)
		return false;
	*start = be->st_proc_start_timestamp;
	return true;
}

/* is pid a client backend (not an auxiliary process or a background worker)? */
static bool
is_client_backend(int pid)
{
	PgBackendStatus *be;

	if (pid == MyProcPid)
		return true;
	be = pid > 0 ? find_backend(pid) : NULL;
	return be != NULL && be->st_backendType == B_BACKEND;
}

int
ht_live_owner(int pid, TimestampTz start)
{
	TimestampTz actual;

	if (pid <= 0)
		return 0;
	if (!ht_backend_start(pid, &actual) || actual != start)
		return 0;
	return pid;
}

/* ---- partition count ---------------------------------------------------- */

static Oid	cached_rel = InvalidOid;
static int	cached_n = 0;

/* a drop of hashtree.partition (of the extension) forgets the count */
static void
count_inval(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == cached_rel)
		cached_rel = InvalidOid;
}

/*
 * The number of partitions: read once per backend (and again after the
 * extension was dropped), since the row trigger and a re-hash ask per row.
 */
int
ht_num_partitions(void)
{
	static bool registered = false;
	Oid			nsp;
	Oid			rel;

	if (OidIsValid(cached_rel))
		return cached_n;
	if (!registered)
	{
		CacheRegisterRelcacheCallback(count_inval, (Datum) 0);
		registered = true;
	}
	nsp = get_namespace_oid("hashtree", true);
	rel = OidIsValid(nsp) ? get_relname_relid("partition", nsp) : InvalidOid;
	if (!OidIsValid(rel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"hashtree\" is not installed in this database")));

	if (rel != cached_rel)
	{
		int			n = 0;
		int			maxp = -1;
		Relation	prel;
		SysScanDesc scan;
		HeapTuple	tup;

		/*
		 * Read the rows directly, not through SQL: this runs from the row
		 * trigger under the writer's identity and search_path.
		 */
		prel = table_open(rel, AccessShareLock);
		scan = systable_beginscan(prel, InvalidOid, false, NULL, 0, NULL);
		while (HeapTupleIsValid(tup = systable_getnext(scan)))
		{
			bool		isnull;
			Datum		d = heap_getattr(tup, 1, RelationGetDescr(prel), &isnull);

			n++;
			if (!isnull)
				maxp = Max(maxp, DatumGetInt32(d));
		}
		systable_endscan(scan);
		table_close(prel, AccessShareLock);
		if (n < 1 || maxp != n - 1)
			elog(ERROR, "hashtree: table hashtree.partition is damaged (%d rows, max %d)",
				 n, maxp);
		cached_n = n;
		cached_rel = rel;
	}
	return cached_n;
}

void
ht_check_partition(int part)
{
	int			n = ht_num_partitions();

	if (part < 0 || part >= n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition %d does not exist", part),
				 errdetail("This node has %d partitions, numbered 0 to %d.",
						   n, n - 1)));
}

static HtQuery q_create = {
	"INSERT INTO hashtree.partition (part, built, built_at) "
	"SELECT g, true, now() FROM generate_series(0, $1 - 1) g",
	1, {INT4OID}
};

int
ht_part_create_all(int n)
{
	Datum		v[1] = {Int32GetDatum(n)};

	ht_exec(&q_create, v, NULL, 0);
	return n;
}

/* ---- state and locks ----------------------------------------------------- */

static HtQuery q_read = {
	"SELECT built, lock_pid, lock_start FROM hashtree.partition WHERE part = $1",
	1, {INT4OID}
};
static HtQuery q_read_skip = {
	"SELECT built, lock_pid, lock_start FROM hashtree.partition WHERE part = $1 "
	"FOR NO KEY UPDATE SKIP LOCKED",
	1, {INT4OID}
};
static HtQuery q_read_wait = {
	"SELECT built, lock_pid, lock_start FROM hashtree.partition WHERE part = $1 "
	"FOR NO KEY UPDATE",
	1, {INT4OID}
};
static HtQuery q_set_owner = {
	"UPDATE hashtree.partition SET lock_pid = $2, lock_start = $3, "
	"locked_at = CASE WHEN $2 IS NULL THEN NULL ELSE now() END WHERE part = $1",
	3, {INT4OID, INT4OID, TIMESTAMPTZOID}
};

/*
 * Read a partition row with the given statement; false when no row came
 * back (SKIP LOCKED skipped it).
 */
static bool
read_state(HtQuery *q, int part, HtPartState *st)
{
	Datum		v[1] = {Int32GetDatum(part)};
	bool		isnull;
	int			pid;
	TimestampTz start;

	if (ht_exec(q, v, NULL, 1) == 0)
		return false;
	st->built = DatumGetBool(ht_col(0, 1, &isnull));
	pid = DatumGetInt32(ht_col(0, 2, &isnull));
	if (isnull)
		pid = 0;
	start = DatumGetTimestampTz(ht_col(0, 3, &isnull));
	st->owner = isnull ? 0 : ht_live_owner(pid, start);
	st->mine = (st->owner == MyProcPid && start == MyStartTimestamp);
	return true;
}

void
ht_part_state(int part, HtPartState *st)
{
	ht_check_partition(part);
	if (!read_state(&q_read, part, st))
		elog(ERROR, "hashtree: partition %d has no state row", part);
}

static void
set_owner(int part, int pid, TimestampTz start)
{
	Datum		v[3];
	bool		n[3] = {false, false, false};

	v[0] = Int32GetDatum(part);
	v[1] = Int32GetDatum(pid);
	v[2] = TimestampTzGetDatum(start);
	if (pid == 0)
		n[1] = n[2] = true;
	ht_exec(&q_set_owner, v, n, 0);
}

HtPartAnswer
ht_part_lock(int part, int pid)
{
	HtPartState st;
	TimestampTz start;

	ht_check_partition(part);
	if (!ht_backend_start(pid, &start))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("PID %d is not a PostgreSQL server process", pid)));
	/* a lock lives as long as its owner: an auxiliary process never exits */
	if (!is_client_backend(pid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("PID %d is not a client backend", pid),
				 errdetail("A partition lock belongs to a client backend and vanishes when it exits.")));

	/* a row locked by another transaction is a lock being changed: busy */
	if (!read_state(&q_read_skip, part, &st))
		return HT_PART_LOCKED;
	if (!st.built)
		return HT_PART_NOT_BUILT;
	if (st.owner != 0)
	{
		/* st.owner is live, so equal pids are the same backend: re-lock */
		return st.owner == pid ? HT_PART_OK : HT_PART_LOCKED;
	}
	set_owner(part, pid, start);
	return HT_PART_OK;
}

HtPartAnswer
ht_part_release(int part, int pid)
{
	HtPartState st;

	ht_check_partition(part);
	(void) read_state(&q_read, part, &st);
	if (st.owner == 0)
		return HT_PART_NOT_LOCKED;
	if (st.owner != pid)
		return HT_PART_NOT_ALLOWED;

	/* the owner releases: wait out a transient row lock, then re-check */
	(void) read_state(&q_read_wait, part, &st);
	if (st.owner == 0)
		return HT_PART_NOT_LOCKED;
	if (st.owner != pid)
		return HT_PART_NOT_ALLOWED;
	set_owner(part, 0, 0);
	return HT_PART_OK;
}

static bool
try_update_lock(int part)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, HT_ADVISORY_KEY, (uint32) part, 2);
	return LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

static void
release_update_lock(int part)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, HT_ADVISORY_KEY, (uint32) part, 2);
	LockRelease(&tag, ExclusiveLock, false);
}

/*
 * Before an update: answers HT_PART_NOT_BUILT, HT_PART_ONGOING_UPDATE or
 * HT_PART_NOT_LOCKED, or HT_PART_OK with the advisory update lock and the partition row lock held
 * until the end of the transaction.  The row lock makes the ownership
 * checked here stay true until the update commits: lock() by others reads
 * "locked" meanwhile, and release_lock() by others waits.
 */
HtPartAnswer
ht_part_begin_update(int part)
{
	HtPartState st;

	ht_part_state(part, &st);
	if (!st.built)
		return HT_PART_NOT_BUILT;
	if (!try_update_lock(part))
		return HT_PART_ONGOING_UPDATE;
	if (st.mine)
		(void) read_state(&q_read_wait, part, &st);
	if (!st.built || !st.mine)
	{
		/* do not hold up the owner's update until this transaction ends */
		release_update_lock(part);
		return st.built ? HT_PART_NOT_LOCKED : HT_PART_NOT_BUILT;
	}
	return HT_PART_OK;
}

/*
 * Before maintenance that needs no partition lock (track() building the
 * trees it has just re-hashed): true, with the advisory update lock and the
 * partition row lock held until the end of the transaction, when the
 * partition is built, no other backend owns its lock and nobody updates it
 * or changes its lock; false otherwise, having waited for nothing and
 * holding nothing.
 */
bool
ht_part_begin_maintenance(int part)
{
	HtPartState st;

	ht_part_state(part, &st);
	if (!st.built || (st.owner != 0 && !st.mine) || !try_update_lock(part))
		return false;
	if (!read_state(&q_read_skip, part, &st) || !st.built || (st.owner != 0 && !st.mine))
	{
		release_update_lock(part);
		return false;
	}
	return true;
}

/*
 * Before a rebuild: ERROR if another backend owns the partition lock or an
 * update runs; on return the advisory update lock and the partition row
 * lock are held until the end of the transaction.  The row lock also
 * orders the rebuild with the guard trigger: a foreign write that marks
 * the partition not built either commits before (and the rebuild sees its
 * rows) or waits for the rebuild to commit (and marks it not built after).
 */
void
ht_part_begin_rebuild(int part)
{
	HtPartState st;

	ht_part_state(part, &st);
	if (st.owner == 0 || st.mine)
	{
		if (!try_update_lock(part))
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("partition %d is being updated", part)));
		(void) read_state(&q_read_wait, part, &st);
	}
	if (st.owner != 0 && !st.mine)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("partition %d is locked by process %d", part, st.owner),
				 errhint("Reset it when the lock is released.")));
}

static HtQuery q_record_update = {
	"UPDATE hashtree.partition SET last_update = now(), updates = updates + 1, "
	"last_update_segments = $2, last_update_nodes = $3, last_update_ms = $4 "
	"WHERE part = $1",
	4, {INT4OID, INT8OID, INT8OID, FLOAT8OID}
};

void
ht_part_record_update(int part, int64 segments, int64 nodes, double ms)
{
	Datum		v[4];

	v[0] = Int32GetDatum(part);
	v[1] = Int64GetDatum(segments);
	v[2] = Int64GetDatum(nodes);
	v[3] = Float8GetDatum(ms);
	ht_exec(&q_record_update, v, NULL, 0);
}

static HtQuery q_record_build = {
	"UPDATE hashtree.partition SET built = true, built_at = now(), "
	"builds = builds + 1, jitter = random(), last_update = now(), "
	"last_update_ms = $2 WHERE part = $1",
	2, {INT4OID, FLOAT8OID}
};

void
ht_part_record_build(int part, double ms)
{
	Datum		v[2];

	v[0] = Int32GetDatum(part);
	v[1] = Float8GetDatum(ms);
	ht_exec(&q_record_build, v, NULL, 0);
}

static HtQuery q_unbuild = {
	"UPDATE hashtree.partition SET built = false WHERE built",
	0, {0}
};

void
ht_part_mark_all_unbuilt(void)
{
	ht_exec(&q_unbuild, NULL, NULL, 0);
}
