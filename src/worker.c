/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Background workers: the launcher (tick, rebuild and exchange
 *	  scheduling) and the jobs it starts (a rebuild, or the exchanges with
 *	  one peer).
 *
 * The launcher never waits on a peer: everything that talks to a peer or
 * may take long runs in a job, a dynamic worker with
 * BGW_NEVER_RESTART whose end the postmaster reports to the launcher
 * (bgw_notify_pid).  Each step runs in its own transaction, so a lock is
 * never held across steps and an error ends one step only.  The tick is
 * one step per partition, and the launcher schedules jobs between two of
 * them, so a long tick does not hold exchanges and rebuilds back; with
 * hashtree.tick_workers > 1, tick jobs update their shares of the
 * partitions at the same time (each stays, waiting for the next tick).  An
 * exchange job stays after its exchange, parked with its connection to
 * the peer, for the next exchange with that peer (see exchange_job).
 *
 * Logging: one LOG line per exchange and per rebuild; an error the
 * launcher meets is logged when it differs from the last one (a broken
 * partition does not write a line every tick); a peer whose exchange
 * failed is backed off (2, 4, ... at most 32 intervals), so
 * an unreachable peer costs one line now and then, never a flood.  The
 * peer client's connect and statement timeouts (remote.c) bound every
 * wait on a peer; SIGTERM interrupts any of them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "bgjob.h"
#include "common.h"
#include "exchange.h"
#include "fragops.h"
#include "fragremote.h"
#include "partlock.h"
#include "partops.h"
#include "remote.h"
#include "repair.h"
#include "sqlexec.h"
#include "worker.h"

char	   *ht_guc_database = NULL;
int			ht_guc_tick_interval = 10;
int			ht_guc_tick_workers = 1;
int			ht_guc_exchange_interval = 60;
int			ht_guc_max_exchanges = 2;
int			ht_guc_repair = HT_REPAIR_NONE;

/* hashtree.repair's values: filled from ht_repair_mode_names */
static struct config_enum_entry repair_options[HT_NREPAIR_MODES + 1];

#define MAX_BACKOFF_SHIFT	5	/* at most 32 exchange intervals */
#define REBUILD_RETRY_MS	60000	/* a failed rebuild is tried again after */

void
ht_worker_init(void)
{
	BackgroundWorker w;

	/*
	 * Read at server start.  A library loaded after startup (not preloaded:
	 * no workers anyway) may not define a postmaster GUC.
	 */
	GucContext	database_context = process_shared_preload_libraries_in_progress
		? PGC_POSTMASTER : PGC_SIGHUP;

	DefineCustomStringVariable("hashtree.database",
							   "Database in which the hashtree background workers run.",
							   "Empty: no workers.  Needs shared_preload_libraries = 'hashtree'.",
							   &ht_guc_database,
							   "",
							   database_context, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("hashtree.tick_interval",
							"Time between two updates of every partition by the workers.",
							NULL,
							&ht_guc_tick_interval,
							10, 1, INT_MAX / 1000,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("hashtree.tick_workers",
							"Number of workers that update the partitions of a tick at once.",
							"Beyond 1, the launcher keeps tick_workers - 1 tick jobs, each a"
							" background worker slot (max_worker_processes); partition p is"
							" updated by worker p % tick_workers.",
							&ht_guc_tick_workers,
							1, 1, 64,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("hashtree.exchange_interval",
							"Time between two exchanges started by the workers (0 disables).",
							NULL,
							&ht_guc_exchange_interval,
							60, 0, INT_MAX / 1000,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("hashtree.max_exchanges",
							"Maximum number of exchanges the workers run at once.",
							"Each takes a background worker slot (max_worker_processes).",
							&ht_guc_max_exchanges,
							2, 0, 64,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	for (int i = 0; i < HT_NREPAIR_MODES; i++)
	{
		repair_options[i].name = ht_repair_mode_names[i];
		repair_options[i].val = i;
		repair_options[i].hidden = false;
	}
	repair_options[HT_NREPAIR_MODES].name = NULL;
	DefineCustomEnumVariable("hashtree.repair",
							 "Repair mode of the exchanges started by the workers.",
							 "none reports, pull makes this node equal to the peer, "
							 "push makes the peer equal to this node.",
							 &ht_guc_repair,
							 HT_REPAIR_NONE, repair_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress ||
		ht_guc_database == NULL || ht_guc_database[0] == '\0')
		return;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 10;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "hashtree");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "ht_launcher_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "hashtree launcher");
	snprintf(w.bgw_type, BGW_MAXLEN, "hashtree launcher");
	RegisterBackgroundWorker(&w);
}

/* ---- sessions, transactions and errors ------------------------------------ */

/*
 * Settings of every worker session, made right after connecting with the
 * source PGC_S_OVERRIDE: above the configuration file, ALTER DATABASE and
 * ALTER ROLE settings (applied while connecting) and client options; only
 * a SET inside the session changes them (hashtree's pinned GUC nest
 * levels, a function's SET clause), for its duration.
 *
 * search_path is empty (only pg_catalog is searched for functions and
 * operators): in PostgreSQL 15 a database owner owns schema public and
 * could otherwise decide what "count" or "unnest" means to the bootstrap
 * superuser the workers run as.
 *
 * Plans are custom: a generic plan chosen while a table was small (a
 * sequential scan where a TID or index scan belongs) was kept for the
 * life of the process, and a tick folding 250k keys took minutes per
 * partition instead of seconds.  Together with ht_forget_plans() at each
 * step (statements without parameters always run a generic plan), every
 * statement is planned for the tables as they are.
 */
static void
worker_session_setup(void)
{
	SetConfigOption("search_path", "", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("plan_cache_mode", "force_custom_plan", PGC_SUSET, PGC_S_OVERRIDE);
}

static void
xact_begin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
xact_end(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

typedef void (*StepFn) (void *arg);

/*
 * The SIGTERM of the launcher and of the exchange jobs: when idle they
 * leave at the top of their loop; in the middle of a step the step is
 * canceled first (an ERROR that run_step catches: an exchange in progress
 * is aborted, its locks released), so they always exit cleanly.  The
 * other jobs use die().
 */
static volatile sig_atomic_t in_step = false;

static void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	ShutdownRequestPending = true;
	if (in_step)
	{
		InterruptPending = true;
		QueryCancelPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * Run fn in a transaction of its own.  An ERROR aborts that transaction
 * only; it is logged unless it repeats *last (the previous error of the
 * same step), which keeps a persistent failure from writing a line every
 * tick.  Returns false on error.
 */
static bool
run_step(const char *activity, StepFn fn, void *arg, char **last)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;	/* set in PG_CATCH */

	in_step = true;
	ht_forget_plans();
	PG_TRY();
	{
		xact_begin(activity);
		HT_API_BEGIN();
		fn(arg);
		HT_API_END();
		xact_end();
		MemoryContextSwitchTo(cxt);
		if (last != NULL && *last != NULL)
		{
			pfree(*last);
			*last = NULL;
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
		pgstat_report_activity(STATE_IDLE, NULL);
		if (ShutdownRequestPending)
			;					/* canceled by the shutdown: nothing to say */
		else if (last == NULL || *last == NULL || strcmp(*last, edata->message) != 0)
		{
			ereport(LOG,
					(errcode(edata->sqlerrcode),
					 errmsg("hashtree: %s failed: %s", activity, edata->message)));
			if (last != NULL)
			{
				if (*last != NULL)
					pfree(*last);
				*last = MemoryContextStrdup(TopMemoryContext, edata->message);
			}
		}
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	in_step = false;
	return ok;
}

/* ---- the launcher ---------------------------------------------------------- */

typedef struct Running
{
	bool		used;
	HtJob		job;
	BackgroundWorkerHandle *handle;
	int64		mark;			/* exchange: last exchange_log id before its
								 * exchange; rebuild: the partition's builds
								 * count */
	bool		parked;			/* exchange: done, waiting with its connection */
	bool		leaving;		/* exchange: parked, asked to exit */
	TimestampTz parked_since;
} Running;

#define MAX_RUNNING 72

static Running running[MAX_RUNNING];

typedef struct Backoff
{
	char		peer[HT_MAX_PEER_NAME_LEN + 1];
	int			failures;
	TimestampTz not_before;
} Backoff;

static Backoff *backoffs = NULL;
static int	nbackoffs = 0;

static TimestampTz *rebuild_not_before = NULL;	/* per partition */
static int	nparts = 0;
static char **tick_errors = NULL;	/* last error per partition */
static bool extension_present = false;
static bool warned_absent = false;
static bool warned_no_slot = false;

static Backoff *
backoff_of(const char *peer)
{
	for (int i = 0; i < nbackoffs; i++)
		if (strcmp(backoffs[i].peer, peer) == 0)
			return &backoffs[i];
	backoffs = backoffs
		? repalloc(backoffs, sizeof(Backoff) * (nbackoffs + 1))
		: MemoryContextAlloc(TopMemoryContext, sizeof(Backoff));
	memset(&backoffs[nbackoffs], 0, sizeof(Backoff));
	strlcpy(backoffs[nbackoffs].peer, peer, sizeof(backoffs[nbackoffs].peer));
	return &backoffs[nbackoffs++];
}

/* the jobs of a kind at work (an exchange job parked is not) */
static int
count_running(int kind)
{
	int			n = 0;

	for (int i = 0; i < MAX_RUNNING; i++)
		if (running[i].used && running[i].job.kind == kind && !running[i].parked)
			n++;
	return n;
}

static bool
start_job(HtJob *job, int64 mark)
{
	int			slot = -1;
	MemoryContext old;
	bool		registered;
	char		name[BGW_MAXLEN];

	for (int i = 0; i < MAX_RUNNING && slot < 0; i++)
		if (!running[i].used)
			slot = i;
	if (slot < 0)
		return false;

	if (job->kind == HT_JOB_EXCHANGE)
		snprintf(name, sizeof(name), "hashtree exchange with %s", job->peer);
	else if (job->kind == HT_JOB_FRAG_CLEANUP)
		snprintf(name, sizeof(name), "hashtree cleanup on %s", job->peer);
	else if (job->kind == HT_JOB_TICK)
		snprintf(name, sizeof(name), "hashtree tick, share %d", job->part);
	else
		snprintf(name, sizeof(name), "hashtree rebuild of partition %d", job->part);
	old = MemoryContextSwitchTo(TopMemoryContext);	/* the handle outlives the loop */
	registered = ht_job_register(job, name,
								 job->kind == HT_JOB_EXCHANGE ? "hashtree exchange" :
								 job->kind == HT_JOB_FRAG_CLEANUP ? "hashtree fragment cleanup" :
								 job->kind == HT_JOB_TICK ? "hashtree tick" :
								 "hashtree rebuild",
								 &running[slot].handle);
	MemoryContextSwitchTo(old);
	if (!registered)
	{
		if (!warned_no_slot)
			ereport(LOG,
					(errmsg("hashtree: no free background worker slot for a job"),
					 errhint("Raise max_worker_processes (each exchange, rebuild and tick job takes one).")));
		warned_no_slot = true;
		return false;
	}
	warned_no_slot = false;
	running[slot].used = true;
	running[slot].job = *job;
	running[slot].mark = mark;
	running[slot].parked = false;
	running[slot].leaving = false;
	return true;
}

/* the outcome of a finished exchange, for the backoff */
typedef struct ExchangeEnd
{
	Running    *r;
	bool		failed;
	bool		logged;			/* its rows are there */
} ExchangeEnd;

static HtQuery q_job_outcome = {
	"SELECT pg_catalog.count(*) FILTER (WHERE outcome OPERATOR(pg_catalog.=) $3),"
	" pg_catalog.count(*) FROM hashtree.exchange_log"
	" WHERE id OPERATOR(pg_catalog.>) $1 AND peer OPERATOR(pg_catalog.=) $2 AND worker",
	3, {INT8OID, TEXTOID, TEXTOID}
};

static void
exchange_end_step(void *arg)
{
	ExchangeEnd *e = (ExchangeEnd *) arg;
	Datum		v[3];
	bool		isnull;

	v[0] = Int64GetDatum(e->r->mark);
	v[1] = CStringGetTextDatum(e->r->job.peer);
	v[2] = CStringGetTextDatum(ht_exchange_outcome_names[HT_OUTCOME_ERROR]);
	ht_exec(&q_job_outcome, v, NULL, 0);
	/* a job that ended without its rows died before it could log them */
	e->logged = DatumGetInt64(ht_col(0, 2, &isnull)) > 0;
	e->failed = DatumGetInt64(ht_col(0, 1, &isnull)) > 0 || !e->logged;
}

/* back a peer off after a failed exchange, or forget its failures */
static void
exchange_outcome(Running *r, bool failed)
{
	Backoff    *b = backoff_of(r->job.peer);

	if (failed)
	{
		int64		ms;

		b->failures++;
		ms = (int64) ht_guc_exchange_interval * 1000 *
			(INT64CONST(1) << Min(b->failures, MAX_BACKOFF_SHIFT));
		b->not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
		ereport(DEBUG1,
				(errmsg("hashtree: peer \"%s\" backed off for " INT64_FORMAT " ms",
						r->job.peer, ms)));
	}
	else
		b->failures = 0;
}

typedef struct RebuildEnd
{
	Running    *r;
	int64		builds;
} RebuildEnd;

static HtQuery q_builds = {
	"SELECT builds FROM hashtree.partition WHERE part OPERATOR(pg_catalog.=) $1",
	1, {INT4OID}
};

static void
rebuild_end_step(void *arg)
{
	RebuildEnd *e = (RebuildEnd *) arg;
	Datum		v[1] = {Int32GetDatum(e->r->job.part)};
	bool		isnull;

	if (ht_exec(&q_builds, v, NULL, 0) == 1)
		e->builds = DatumGetInt64(ht_col(0, 1, &isnull));
}

/*
 * How long an exchange job waits, parked with its connection, for its
 * peer's next exchange: 5 exchange intervals, at least a minute.  At most
 * max_exchanges jobs are parked (the least recently used one leaves
 * first).
 */
#define PARKED_INTERVALS 5
#define PARKED_MIN_S 60

/* ask a parked exchange job to leave (it exits at the top of its loop) */
static void
unpark(Running *r)
{
	pid_t		pid;

	if (GetBackgroundWorkerPid(r->handle, &pid) == BGWH_STARTED)
		(void) kill(pid, SIGTERM);
	r->leaving = true;
}

static void
reap_jobs(void)
{
	TimestampTz now = GetCurrentTimestamp();
	int			nparked = 0;

	for (int i = 0; i < MAX_RUNNING; i++)
	{
		pid_t		pid;
		Running    *r = &running[i];
		BgwHandleStatus st;

		if (!r->used)
			continue;
		st = GetBackgroundWorkerPid(r->handle, &pid);
		if (st != BGWH_STOPPED)
		{
			/*
			 * An exchange job at work has finished its exchange when its
			 * rows are in the log (written in one transaction): it is
			 * parked, and waits with its connection for the next one.
			 */
			if (r->job.kind == HT_JOB_EXCHANGE && !r->parked)
			{
				ExchangeEnd e = {r, true, false};

				if (run_step("reading the outcome of an exchange", exchange_end_step, &e, NULL) &&
					e.logged)
				{
					exchange_outcome(r, e.failed);
					r->parked = true;
					r->parked_since = now;
				}
			}
			continue;
		}
		if (r->job.kind == HT_JOB_EXCHANGE)
		{
			ExchangeEnd e = {r, true, false};

			/* an exchange job ended: its last exchange, if it was at work */
			if (!r->parked)
			{
				(void) run_step("reading the outcome of an exchange", exchange_end_step, &e, NULL);
				exchange_outcome(r, e.failed);
			}
		}
		else if (r->job.kind == HT_JOB_REBUILD && r->job.part < nparts)
		{
			/* a rebuild that did not happen (failed, partition held) waits */
			RebuildEnd e = {r, 0};

			if (!run_step("reading the outcome of a rebuild", rebuild_end_step, &e, NULL) ||
				e.builds <= r->mark)
				rebuild_not_before[r->job.part] =
					TimestampTzPlusMilliseconds(GetCurrentTimestamp(), REBUILD_RETRY_MS);
		}
		pfree(r->handle);
		r->used = false;
	}

	/*
	 * Parked jobs leave when the exchanges stop, when their peer was not
	 * picked for PARKED_INTERVALS intervals, and beyond max_exchanges of
	 * them (the oldest first).
	 */
	for (int i = 0; i < MAX_RUNNING; i++)
	{
		Running    *r = &running[i];

		if (!r->used || !r->parked || r->leaving)
			continue;
		if (ht_guc_exchange_interval == 0 ||
			now - r->parked_since >
			Max((int64) ht_guc_exchange_interval * PARKED_INTERVALS, PARKED_MIN_S) * USECS_PER_SEC)
			unpark(r);
		else
			nparked++;
	}
	while (nparked > ht_guc_max_exchanges)
	{
		Running    *oldest = NULL;

		for (int i = 0; i < MAX_RUNNING; i++)
		{
			Running    *r = &running[i];

			if (r->used && r->parked && !r->leaving &&
				(oldest == NULL || r->parked_since < oldest->parked_since))
				oldest = r;
		}
		unpark(oldest);
		nparked--;
	}
}

static void
presence_step(void *arg)
{
	bool		present = OidIsValid(get_extension_oid("hashtree", true));

	if (present)
	{
		int			n = ht_num_partitions();

		if (n != nparts)
		{
			rebuild_not_before = rebuild_not_before
				? repalloc(rebuild_not_before, sizeof(TimestampTz) * n)
				: MemoryContextAlloc(TopMemoryContext, sizeof(TimestampTz) * n);
			tick_errors = tick_errors
				? repalloc(tick_errors, sizeof(char *) * n)
				: MemoryContextAlloc(TopMemoryContext, sizeof(char *) * n);
			for (int i = nparts; i < n; i++)
			{
				rebuild_not_before[i] = 0;
				tick_errors[i] = NULL;
			}
			nparts = n;
		}
	}
	*(bool *) arg = present;
}

/* is the extension installed (it may be created or dropped at any time)? */
static bool
check_extension(void)
{
	bool		present = false;

	if (!run_step("looking for the extension", presence_step, &present, NULL))
		present = false;
	if (!present && !warned_absent)
		ereport(LOG,
				(errmsg("hashtree: extension \"hashtree\" is not installed in database \"%s\";"
						" the workers wait for it", ht_guc_database)));
	warned_absent = !present;
	extension_present = present;
	return present;
}

/* tick: update one partition if it is built and nobody holds it */
static void
tick_step(void *arg)
{
	int			part = *(int *) arg;
	HtPartState st;
	HtPartAnswer res;

	ht_part_state(part, &st);
	if (!st.built || st.owner != 0)
		return;
	if (ht_part_lock(part, MyProcPid) != HT_PART_OK)
		return;
	res = ht_update_partition(part);
	(void) ht_part_release(part, MyProcPid);
	if (res != HT_PART_OK && res != HT_PART_ONGOING_UPDATE)
		elog(DEBUG1, "hashtree: tick of partition %d: update answered %s", part,
			 ht_part_answer_names[res]);
}

/* the partition most in need of a rebuild (not built first, then expired) */
static HtQuery q_rebuild_candidates = {
	"SELECT part, builds FROM hashtree.partition"
	" WHERE NOT built"
	"  OR hashtree._next_expiry(built_at, jitter) OPERATOR(pg_catalog.<=) pg_catalog.now()"
	" ORDER BY built, hashtree._next_expiry(built_at, jitter), part",
	0, {InvalidOid}
};

typedef struct RebuildPick
{
	int			part;			/* -1: none */
	int64		builds;
} RebuildPick;

static void
rebuild_pick_step(void *arg)
{
	RebuildPick *pick = (RebuildPick *) arg;
	uint64		n = ht_exec(&q_rebuild_candidates, NULL, NULL, 0);
	TimestampTz now = GetCurrentTimestamp();

	pick->part = -1;
	for (uint64 i = 0; i < n && pick->part < 0; i++)
	{
		bool		isnull;
		int			part = DatumGetInt32(ht_col(i, 1, &isnull));

		if (part >= 0 && part < nparts && rebuild_not_before[part] <= now)
		{
			pick->part = part;
			pick->builds = DatumGetInt64(ht_col(i, 2, &isnull));
		}
	}
}

static char *frag_error = NULL;

static void
frag_recover_step(void *arg)
{
	ht_frag_recover_all();
}

/*
 * Leftovers of fragment moves on the peers (DESIGN §19): every
 * FRAG_CLEANUP_TICKS ticks a job looks at the next peer with fragment
 * tables, in name order, unless an exchange with it failed lately.
 */
#define FRAG_CLEANUP_TICKS 6

static int	ticks_to_cleanup = 0;
static char cleanup_last[HT_MAX_PEER_NAME_LEN + 1] = "";
static char *cleanup_error = NULL;

/* the peer's name into arg (a char[HT_MAX_PEER_NAME_LEN + 1]), "" if none */
static void
frag_cleanup_pick_step(void *arg)
{
	char	   *peer = ht_frag_cleanup_next(cleanup_last);

	if (peer != NULL && strlen(peer) <= HT_MAX_PEER_NAME_LEN)
		strlcpy((char *) arg, peer, HT_MAX_PEER_NAME_LEN + 1);
}

static void
start_frag_cleanup(void)
{
	char		peer[HT_MAX_PEER_NAME_LEN + 1] = "";
	HtJob		job;

	if (--ticks_to_cleanup > 0 || count_running(HT_JOB_FRAG_CLEANUP) > 0)
		return;
	ticks_to_cleanup = FRAG_CLEANUP_TICKS;
	if (!run_step("choosing a peer to clean", frag_cleanup_pick_step, peer, &cleanup_error) ||
		peer[0] == '\0')
		return;
	strlcpy(cleanup_last, peer, sizeof(cleanup_last));
	if (backoff_of(peer)->not_before > GetCurrentTimestamp())
		return;
	memset(&job, 0, sizeof(job));
	job.dboid = MyDatabaseId;
	job.kind = HT_JOB_FRAG_CLEANUP;
	strlcpy(job.peer, peer, sizeof(job.peer));
	(void) start_job(&job, 0);
}

/* choose a peer for the next exchange */
typedef struct PeerPick
{
	char	   *peer;
	int64		log_id;			/* the last exchange_log id */
} PeerPick;

static HtQuery q_peers = {
	"SELECT name, (SELECT coalesce(pg_catalog.max(id), 0::pg_catalog.int8) FROM hashtree.exchange_log)"
	" FROM hashtree.peer ORDER BY name",
	0, {InvalidOid}
};

static void
peer_pick_step(void *arg)
{
	PeerPick   *pick = (PeerPick *) arg;
	uint64		n = ht_exec(&q_peers, NULL, NULL, 0);
	TimestampTz now = GetCurrentTimestamp();
	char	  **eligible = palloc(sizeof(char *) * Max(n, 1));
	int			neligible = 0;

	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		char	   *name = TextDatumGetCString(ht_col(i, 1, &isnull));
		bool		busy = false;

		pick->log_id = DatumGetInt64(ht_col(i, 2, &isnull));
		for (int j = 0; j < MAX_RUNNING; j++)
			if (running[j].used && running[j].job.kind == HT_JOB_EXCHANGE &&
				!running[j].parked && strcmp(running[j].job.peer, name) == 0)
				busy = true;
		if (busy || strlen(name) > HT_MAX_PEER_NAME_LEN || backoff_of(name)->not_before > now)
			continue;
		eligible[neligible++] = name;
	}
	pick->peer = NULL;
	if (neligible > 0)
		pick->peer = MemoryContextStrdup(TopMemoryContext,
										 eligible[pg_prng_uint64_range(&pg_global_prng_state,
																	   0, neligible - 1)]);
}

static void
start_exchange(void)
{
	PeerPick	pick = {NULL, 0};
	HtJob		job;

	if (!extension_present || count_running(HT_JOB_EXCHANGE) >= ht_guc_max_exchanges)
		return;
	if (!run_step("choosing a peer", peer_pick_step, &pick, NULL) || pick.peer == NULL)
		return;
	/* a job parked with a connection to that peer runs the exchange */
	for (int i = 0; i < MAX_RUNNING; i++)
	{
		Running    *r = &running[i];
		pid_t		pid;

		if (r->used && r->job.kind == HT_JOB_EXCHANGE && r->parked && !r->leaving &&
			strcmp(r->job.peer, pick.peer) == 0 &&
			GetBackgroundWorkerPid(r->handle, &pid) == BGWH_STARTED &&
			kill(pid, SIGUSR2) == 0)
		{
			r->parked = false;
			r->mark = pick.log_id;
			pfree(pick.peer);
			return;
		}
	}
	memset(&job, 0, sizeof(job));
	job.dboid = MyDatabaseId;
	job.kind = HT_JOB_EXCHANGE;
	job.mode = ht_guc_repair;
	strlcpy(job.peer, pick.peer, sizeof(job.peer));
	pfree(pick.peer);
	(void) start_job(&job, pick.log_id);
}

/* the launcher's clock */
static TimestampTz next_tick;
static TimestampTz next_rebuild;
static TimestampTz next_exchange;
static int	tick_s;
static int	exchange_s;

static void
launcher_reload(void)
{
	TimestampTz now;

	if (!ConfigReloadPending)
		return;
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	/* a shorter interval applies at once */
	now = GetCurrentTimestamp();
	if (ht_guc_tick_interval != tick_s)
	{
		next_tick = Min(next_tick, TimestampTzPlusMilliseconds(now,
															   (int64) ht_guc_tick_interval * 1000));
		next_rebuild = Min(next_rebuild, TimestampTzPlusMilliseconds(now,
																	 (int64) ht_guc_tick_interval * 1000));
	}
	if (ht_guc_exchange_interval != exchange_s)
		next_exchange = Min(next_exchange,
							TimestampTzPlusMilliseconds(now,
														(int64) ht_guc_exchange_interval * 1000));
	tick_s = ht_guc_tick_interval;
	exchange_s = ht_guc_exchange_interval;
}

/* start a rebuild job for the partition most in need, if any */
static void
start_rebuild(void)
{
	RebuildPick pick = {-1, 0};
	HtJob		job;

	/* one rebuild at a time: never a storm */
	if (count_running(HT_JOB_REBUILD) > 0 ||
		!run_step("looking for expired trees", rebuild_pick_step, &pick, NULL) ||
		pick.part < 0)
		return;
	memset(&job, 0, sizeof(job));
	job.dboid = MyDatabaseId;
	job.kind = HT_JOB_REBUILD;
	job.part = pick.part;
	if (!start_job(&job, pick.builds))
		rebuild_not_before[pick.part] =
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(), REBUILD_RETRY_MS);
}

/*
 * Everything but the updates of a tick: read the configuration again if
 * asked, reap the jobs that ended, start a rebuild and an exchange when
 * they are due.  Short steps on the extension's tables, never a wait on a
 * peer; also run between the partitions of a tick, so that a long tick
 * delays exchanges and rebuilds by one partition's update at most.
 */
static void
schedule(void)
{
	TimestampTz now;

	launcher_reload();
	reap_jobs();
	now = GetCurrentTimestamp();
	if (extension_present && now >= next_rebuild)
	{
		start_rebuild();
		next_rebuild = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   (int64) tick_s * 1000);
	}
	now = GetCurrentTimestamp();
	if (exchange_s > 0 && now >= next_exchange)
	{
		start_exchange();
		next_exchange = TimestampTzPlusMilliseconds(now, (int64) exchange_s * 1000);
	}
}

/*
 * The tick job of share k (1 <= k < the tick's number of shares) runs its
 * partitions now: the running one is asked (SIGUSR2; one busy with the
 * last tick runs again when it is done), or one is started.  false when
 * none could be (no worker slot): the launcher runs that share itself.
 */
static bool
tick_share_request(int share)
{
	HtJob		job;

	for (int i = 0; i < MAX_RUNNING; i++)
	{
		Running    *r = &running[i];
		pid_t		pid;

		if (!r->used || r->job.kind != HT_JOB_TICK || r->job.part != share || r->leaving)
			continue;
		switch (GetBackgroundWorkerPid(r->handle, &pid))
		{
			case BGWH_STARTED:
				if (kill(pid, SIGUSR2) == 0)
					return true;
				break;
			case BGWH_NOT_YET_STARTED:
				return true;	/* it runs its share when it starts */
			default:
				break;			/* stopped: reaped later */
		}
	}
	memset(&job, 0, sizeof(job));
	job.dboid = MyDatabaseId;
	job.kind = HT_JOB_TICK;
	job.part = share;
	return start_job(&job, 0);
}

/*
 * update every partition (one step each), then recover fragment operations
 * and now and then start the cleanup of a peer.  With hashtree.tick_workers
 * = n > 1, partition p is updated by share p % n: share 0 here, the others
 * by tick jobs at the same time (DESIGN §13).
 */
static void
tick(void)
{
	int			nshares;
	bool		delegated[64];

	if (!check_extension())
		return;
	nshares = Max(1, Min(ht_guc_tick_workers, nparts));
	delegated[0] = false;
	for (int share = 1; share < nshares; share++)
		delegated[share] = tick_share_request(share);
	for (int part = 0; part < nparts; part++)
	{
		char		what[64];

		if (delegated[part % nshares])
			continue;
		if (ShutdownRequestPending)
			return;
		CHECK_FOR_INTERRUPTS();
		snprintf(what, sizeof(what), "tick of partition %d", part);
		(void) run_step(what, tick_step, &part, &tick_errors[part]);
		schedule();
	}

	/* online fragment operations that were interrupted (crash, cancel) */
	(void) run_step("rolling back unfinished fragment operations", frag_recover_step, NULL,
					&frag_error);
	start_frag_cleanup();
}

void
ht_launcher_main(Datum arg)
{
	MemoryContext loop_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, worker_sigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(ht_guc_database, NULL, 0);
	worker_session_setup();
	pgstat_report_appname("hashtree launcher");
	ereport(LOG,
			(errmsg("hashtree launcher started in database \"%s\"", ht_guc_database)));

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "hashtree launcher",
									 ALLOCSET_DEFAULT_SIZES);
	tick_s = ht_guc_tick_interval;
	exchange_s = ht_guc_exchange_interval;
	next_tick = next_rebuild = GetCurrentTimestamp();
	next_exchange = TimestampTzPlusMilliseconds(next_tick, (int64) exchange_s * 1000);

	for (;;)
	{
		TimestampTz now;
		long		wait_ms;

		if (ShutdownRequestPending)
		{
			QueryCancelPending = false;
			ereport(LOG, (errmsg("hashtree launcher shutting down")));

			/*
			 * Exit code 1: the postmaster starts the launcher again after
			 * bgw_restart_time (exit code 0 would unregister it for good).
			 * At a server shutdown nothing is restarted anyway; this makes
			 * a pg_terminate_backend() a restart, not the end of the
			 * workers.
			 */
			proc_exit(1);
		}
		CHECK_FOR_INTERRUPTS();

		MemoryContextSwitchTo(loop_cxt);
		schedule();
		if (!ShutdownRequestPending && GetCurrentTimestamp() >= next_tick)
		{
			tick();
			next_tick = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													(int64) tick_s * 1000);
		}
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(loop_cxt);

		now = GetCurrentTimestamp();
		wait_ms = TimestampDifferenceMilliseconds(now, next_tick);
		if (extension_present)
			wait_ms = Min(wait_ms, TimestampDifferenceMilliseconds(now, next_rebuild));
		if (exchange_s > 0)
			wait_ms = Min(wait_ms, TimestampDifferenceMilliseconds(now, next_exchange));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ---- jobs -------------------------------------------------------------------- */

typedef struct ExchangeRun
{
	HtJob	   *job;
	int			n;				/* partitions */
	HtExchangeResult *r;		/* in TopMemoryContext */
} ExchangeRun;

/* every partition of the job's peer, together, in one transaction */
static void
exchange_step(void *arg)
{
	ExchangeRun *x = (ExchangeRun *) arg;
	int			n = ht_num_partitions();
	int		   *parts = palloc(sizeof(int) * n);
	HtExchangeResult *r = palloc(sizeof(HtExchangeResult) * n);

	for (int k = 0; k < n; k++)
		parts[k] = k;
	ht_exchange_run(x->job->peer, n, parts, (HtRepairMode) x->job->mode, true, r);
	/* what is used after the transaction: the counts, and the messages */
	x->r = MemoryContextAlloc(TopMemoryContext, sizeof(HtExchangeResult) * n);
	memcpy(x->r, r, sizeof(HtExchangeResult) * n);
	for (int k = 0; k < n; k++)
	{
		if (r[k].message != NULL)
			x->r[k].message = MemoryContextStrdup(TopMemoryContext, r[k].message);
		x->r[k].diffs = NULL;
		x->r[k].ndiffs = 0;
	}
	x->n = n;
}

/* one exchange with the job's peer, and its LOG line; false if it was not logged */
static bool
run_exchange(HtJob *job)
{
	ExchangeRun x;
	int			ok = 0;
	int			skipped = 0;
	int			failed = 0;
	int64		diffs = 0;
	int64		repaired = 0;
	int64		rows_local = 0;
	int64		rows_remote = 0;
	int64		bytes = 0;
	int64		round_trips = 0;
	char	   *first_error = NULL;
	char	   *first_note = NULL;
	TimestampTz start = GetCurrentTimestamp();
	bool		logged;

	memset(&x, 0, sizeof(x));
	x.job = job;
	CHECK_FOR_INTERRUPTS();
	logged = run_step("exchange", exchange_step, &x, NULL);
	if (!logged)
	{
		if (ShutdownRequestPending)
			return false;		/* stopped: nothing to say */
		failed = 1;
	}
	for (int k = 0; k < x.n; k++)
	{
		HtExchangeResult *r = &x.r[k];

		if (r->outcome == HT_OUTCOME_OK)
		{
			ok++;
			/* a repair that failed (the exchange itself completed) */
			if (first_note == NULL && r->message != NULL)
				first_note = r->message;
		}
		else if (r->outcome == HT_OUTCOME_ERROR)
		{
			failed++;
			if (first_error == NULL)
				first_error = r->message;
		}
		else
			skipped++;
		for (int kind = 0; kind < HT_NKINDS; kind++)
			diffs += r->counts[kind];
		repaired += r->repaired;
		rows_local += r->rows_local;
		rows_remote += r->rows_remote;
		/* the round trips and bytes of the whole exchange, on every row */
		bytes = r->bytes;
		round_trips = r->round_trips;
	}
	ereport(LOG,
			(errmsg("hashtree: exchange with peer \"%s\" (repair %s): %d of %d partitions compared,"
					" %d skipped, %d failed; " INT64_FORMAT " differences, " INT64_FORMAT
					" repaired%s; " INT64_FORMAT " round trips, " INT64_FORMAT " bytes; %.3f s%s%s",
					job->peer, ht_repair_mode_names[job->mode], ok, x.n, skipped,
					failed, diffs, repaired,
					job->mode == HT_REPAIR_NEWEST ?
					psprintf(" (rows written: " INT64_FORMAT " here, " INT64_FORMAT " on the peer)",
							 rows_local, rows_remote) : "",
					round_trips, bytes,
					TimestampDifferenceMilliseconds(start, GetCurrentTimestamp()) / 1000.0,
					first_error ? "; first error: " : first_note ? "; not repaired: " : "",
					first_error ? first_error : first_note ? first_note : "")));
	/* a job runs many exchanges: what this one kept goes */
	for (int k = 0; k < x.n; k++)
		if (x.r[k].message != NULL)
			pfree(x.r[k].message);
	if (x.r != NULL)
		pfree(x.r);
	return logged;
}

typedef struct RebuildRun
{
	int			part;
	bool		done;
	bool		was_built;
} RebuildRun;

static void
rebuild_step(void *arg)
{
	RebuildRun *rb = (RebuildRun *) arg;
	HtPartState st;

	ht_part_state(rb->part, &st);
	rb->was_built = st.built;
	if (st.owner != 0)
		return;					/* held (an exchange): next time */
	ht_reset_partition(rb->part);
	rb->done = true;
}

/*
 * A partition held by an exchange or being updated is tried again a few
 * times, a moment apart, before the job gives up (the launcher then waits
 * REBUILD_RETRY_MS): with exchanges every second, a single try lost to
 * them for minutes.  The same failure is logged once.
 */
#define REBUILD_ATTEMPTS	20
#define REBUILD_PAUSE_MS	250

static void
run_rebuild(HtJob *job)
{
	RebuildRun rb = {job->part, false, false};
	TimestampTz start = GetCurrentTimestamp();
	char		what[64];
	char	   *last = NULL;

	snprintf(what, sizeof(what), "rebuild of partition %d", job->part);
	for (int attempt = 0; attempt < REBUILD_ATTEMPTS && !ShutdownRequestPending; attempt++)
	{
		if (attempt > 0)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 REBUILD_PAUSE_MS, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		if (run_step(what, rebuild_step, &rb, &last) && rb.done)
		{
			ereport(LOG,
					(errmsg("hashtree: rebuilt partition %d (%s) in %.3f s", job->part,
							rb.was_built ? "trees expired" : "not built",
							TimestampDifferenceMilliseconds(start, GetCurrentTimestamp()) / 1000.0)));
			break;
		}
	}
	if (last != NULL)
		pfree(last);
}

/*
 * An exchange job stays: after its exchange it is parked, its connection
 * to the peer kept open (remote.c's cache), until the launcher asks for
 * the next exchange with that peer (SIGUSR2) or for its exit (SIGTERM).
 * The launcher learns that an exchange is done from its rows in
 * exchange_log; the job sets the launcher's latch so that it looks at
 * once.  While parked, a reload (SIGHUP) checks the connection against the
 * peers table: closed when the peer's conninfo changed or the peer closed
 * it, and the job leaves when the peer was dropped.  A job whose launcher
 * is gone (a restart) leaves too: the new launcher does not know it.
 */
static volatile sig_atomic_t job_requested = false;

static void
job_sigusr2(SIGNAL_ARGS)
{
	int			save_errno = errno;

	job_requested = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/* how often a parked job looks whether its launcher is still there */
#define PARKED_CHECK_MS 10000

typedef struct PeerCheck
{
	const char *peer;
	bool		exists;
} PeerCheck;

static void
peer_check_step(void *arg)
{
	PeerCheck  *c = (PeerCheck *) arg;

	c->exists = ht_peer_revalidate(c->peer);
}

/*
 * A job that stays waits here for the launcher's next request (SIGUSR2).
 * A reload is read and handed to reloaded(arg), which says whether the
 * job may stay.  false when it must leave: a shutdown, its launcher gone
 * (checked every PARKED_CHECK_MS), or the reload.
 */
static bool
wait_for_request(int launcher, TimestampTz launcher_start, bool (*reloaded) (void *arg),
				 void *arg)
{
	while (!job_requested)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 PARKED_CHECK_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending || ht_live_owner(launcher, launcher_start) != launcher)
			return false;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (!reloaded(arg))
				return false;
		}
	}
	job_requested = false;
	return true;
}

/* a parked exchange job stays while its peer does (its connection checked) */
static bool
exchange_reloaded(void *arg)
{
	HtJob	   *job = (HtJob *) arg;
	PeerCheck	c = {job->peer, true};

	return !run_step("checking the peer", peer_check_step, &c, NULL) || c.exists;
}

static void
exchange_job(HtJob *job)
{
	int			launcher = MyBgworkerEntry->bgw_notify_pid;
	TimestampTz launcher_start = 0;

	if (launcher <= 0 || !ht_backend_start(launcher, &launcher_start))
		launcher = 0;
	for (;;)
	{
		/*
		 * An exchange that could not log its rows (its transaction failed)
		 * ends the job: the launcher, which waits for the rows, sees it end.
		 */
		if (!run_exchange(job) || ShutdownRequestPending || launcher == 0 ||
			ht_live_owner(launcher, launcher_start) != launcher)
			return;
		{
			PGPROC	   *proc = BackendPidGetProc(launcher);

			if (proc != NULL)
				SetLatch(&proc->procLatch);
		}

		/* parked */
		if (!wait_for_request(launcher, launcher_start, exchange_reloaded, job))
			return;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		job->mode = ht_guc_repair;
	}
}

/* a tick job stays while its share does (a reload may lower tick_workers) */
static bool
tick_reloaded(void *arg)
{
	HtJob	   *job = (HtJob *) arg;

	return job->part < Min(ht_guc_tick_workers, nparts);
}

/*
 * A tick job (hashtree.tick_workers > 1) stays: it updates the partitions
 * of its share (p % tick_workers = share), then waits for the launcher's
 * next tick (SIGUSR2).  Its errors are logged as the launcher logs its
 * own: once while they repeat.  It leaves when the shares are fewer than
 * its number (a reload lowered tick_workers), when the extension is gone,
 * and when its launcher is (a restart: the new launcher starts its own).
 */
static void
tick_job(HtJob *job)
{
	int			launcher = MyBgworkerEntry->bgw_notify_pid;
	TimestampTz launcher_start = 0;
	MemoryContext round_cxt;

	if (launcher <= 0 || !ht_backend_start(launcher, &launcher_start))
		return;
	round_cxt = AllocSetContextCreate(TopMemoryContext, "hashtree tick job",
									  ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		int			nshares;

		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(round_cxt);
		MemoryContextSwitchTo(round_cxt);
		/* (a reload that came while the last round ran) */
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!check_extension())
			return;
		nshares = Min(ht_guc_tick_workers, nparts);
		if (job->part >= nshares)
			return;
		for (int part = job->part; part < nparts; part += nshares)
		{
			char		what[64];

			if (ShutdownRequestPending)
				return;
			snprintf(what, sizeof(what), "tick of partition %d", part);
			(void) run_step(what, tick_step, &part, &tick_errors[part]);
		}

		/* until the next tick */
		if (!wait_for_request(launcher, launcher_start, tick_reloaded, job))
			return;
	}
}

void
ht_job_main(Datum arg)
{
	HtJob		job;

	memcpy(&job, MyBgworkerEntry->bgw_extra, sizeof(HtJob));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	if (job.kind == HT_JOB_EXCHANGE || job.kind == HT_JOB_TICK)
	{
		pqsignal(SIGTERM, worker_sigterm);
		pqsignal(SIGUSR2, job_sigusr2);
	}
	else
		pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(job.dboid,
											  job.kind == HT_JOB_FRAG ? job.userid : InvalidOid, 0);
	worker_session_setup();
	pgstat_report_appname(job.kind == HT_JOB_EXCHANGE ? "hashtree exchange" :
						  job.kind == HT_JOB_REBUILD ? "hashtree rebuild" :
						  job.kind == HT_JOB_FRAG_CLEANUP ? "hashtree fragment cleanup" :
						  job.kind == HT_JOB_TICK ? "hashtree tick" :
						  "hashtree fragment copy");
	ht_exchange_quiet = true;

	if (job.kind == HT_JOB_EXCHANGE)
		exchange_job(&job);
	else if (job.kind == HT_JOB_REBUILD)
		run_rebuild(&job);
	else if (job.kind == HT_JOB_FRAG_CLEANUP)
		ht_frag_cleanup_job(job.peer);
	else if (job.kind == HT_JOB_TICK)
		tick_job(&job);
	else
		ht_frag_prepare_job(job.relid, job.mode == 1);
	proc_exit(0);
}
