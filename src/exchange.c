/*-------------------------------------------------------------------------
 *
 * exchange.c
 *	  Anti-entropy exchange of one partition with a peer, and the SQL
 *	  function exchange().
 *
 * Per partition: lock here, lock on the peer (the lock is owned by the
 * peer backend serving our connection), update both trees, compare them,
 * repair if asked, release both locks.  The locks never outlive the
 * partition (plum_db's B7): on success they are released explicitly; on
 * any error the local lock goes with the (sub)transaction abort and the
 * peer's with the connection, which is closed.  A partition whose
 * exchange failed is reported as failed, never as "no differences".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "common.h"
#include "compare.h"
#include "exchange.h"
#include "partlock.h"
#include "partops.h"
#include "remote.h"
#include "repair.h"
#include "rowio.h"
#include "sqlexec.h"

const char *const ht_exchange_outcome_names[HT_NOUTCOMES] = {
	[HT_OUTCOME_ERROR] = "error",
	[HT_OUTCOME_OK] = "ok",
	[HT_OUTCOME_SKIPPED_LOCKED] = "skipped_locked",
	[HT_OUTCOME_NOT_BUILT] = "not_built",
};

/* compare callback: keep the difference */
static void
collect(void *arg, HtDiffKind kind, Datum pa, Datum pb, bytea *key)
{
	HtExchangeResult *r = (HtExchangeResult *) arg;
	HtDiff	   *d;

	if (r->ndiffs >= r->diffs_cap)
	{
		r->diffs_cap = r->diffs_cap ? r->diffs_cap * 2 : 64;
		r->diffs = r->diffs ? repalloc(r->diffs, sizeof(HtDiff) * r->diffs_cap)
			: palloc(sizeof(HtDiff) * r->diffs_cap);
	}
	d = &r->diffs[r->ndiffs++];
	d->kind = kind;
	d->pa = TextDatumGetCString(pa);
	d->pb = pb ? TextDatumGetCString(pb) : NULL;
	d->key = key ? DatumGetByteaPCopy(PointerGetDatum(key)) : NULL;
	d->repaired = false;
	r->counts[kind]++;
}

/* send "SELECT hashtree.<fn>($1::int4)" to the peer */
static void
peer_word_send(HtPeer *peer, const char *fn, int part)
{
	const char *params[1] = {psprintf("%d", part)};

	ht_peer_send(peer, psprintf("SELECT hashtree.%s($1::int4)", fn), 1, params, false);
}

/* its one-word answer */
static HtPartAnswer
peer_word_receive(HtPeer *peer, const char *fn)
{
	HtRemoteResult *res = ht_peer_receive(peer, 1);
	const char *word = res->nrows == 1 ? ht_remote_text(res, 0, 0) : NULL;
	HtPartAnswer answer;

	if (word == NULL || !ht_part_answer_of(word, &answer))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from peer \"%s\" to %s()", ht_peer_name(peer), fn)));
	return answer;
}

static HtPartAnswer
peer_word(HtPeer *peer, const char *fn, int part)
{
	peer_word_send(peer, fn, part);
	return peer_word_receive(peer, fn);
}

/* lock() here or on the peer (where) refused the partition */
static void
lock_refused(HtExchangeResult *r, int part, HtPartAnswer answer, const char *where)
{
	bool		not_built = (answer == HT_PART_NOT_BUILT);

	r->outcome = not_built ? HT_OUTCOME_NOT_BUILT : HT_OUTCOME_SKIPPED_LOCKED;
	r->message = psprintf("partition %d is %s %s", part,
						  not_built ? "not built" : "locked", where);
}

/*
 * Exchange one partition with a peer: lock both sides (a refusal ends it
 * as skipped_locked or not_built), update both, compare, repair, release
 * both.  Needs SPI; an ERROR leaves the local side to the caller's
 * (sub)transaction abort and the peer's lock to closing the connection.
 */
static void
exchange_partition(const char *peer_name, int part, HtRepairMode mode,
				   HtExchangeResult *r)
{
	HtPeer	   *peer;
	int64		rt0;
	int64		bytes0;
	int64		rt1;
	int64		bytes1;
	uint64		generation;
	HtPartAnswer res;
	HtPartState st;
	bool		held;

	peer = ht_peer_get(peer_name);
	if (ht_peer_partitions(peer) != ht_num_partitions())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("peer \"%s\" has %d partitions, this node has %d",
						peer_name, ht_peer_partitions(peer), ht_num_partitions())));
	ht_peer_counters(peer, &rt0, &bytes0);
	generation = ht_peer_generation(peer);

	/*
	 * Lock here, then there.  A lock this backend already held (taken with
	 * lock()) stays held after the exchange.
	 */
	ht_part_state(part, &st);
	held = st.mine;
	res = ht_part_lock(part, MyProcPid);
	if (res != HT_PART_OK)
	{
		lock_refused(r, part, res, "on this node");
		return;
	}
	res = peer_word(peer, "lock", part);
	if (res != HT_PART_OK)
	{
		if (!held)
			(void) ht_part_release(part, MyProcPid);
		lock_refused(r, part, res, psprintf("on peer \"%s\"", peer_name));
		return;
	}

	/*
	 * Both trees up to date with every change committed before now; the
	 * peer folds its changes while this node folds its own.
	 */
	peer_word_send(peer, "update", part);
	res = ht_update_partition(part);
	if (res != HT_PART_OK)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("update of partition %d on this node answered %s", part,
						ht_part_answer_names[res])));
	res = peer_word_receive(peer, "update");
	if (res != HT_PART_OK)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("update of partition %d on peer \"%s\" answered %s", part, peer_name,
						ht_part_answer_names[res])));

	ht_compare(part, peer, collect, r);

	if (mode != HT_REPAIR_NONE && r->ndiffs > 0)
		r->repaired = ht_repair(peer, part, mode, r->diffs, r->ndiffs, &r->message,
								ht_exchange_quiet);

	/* a reconnection since the lock would mean the peer's lock was lost */
	if (ht_peer_generation(peer) != generation)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("the connection to peer \"%s\" was replaced during the exchange", peer_name)));
	res = peer_word(peer, "release_lock", part);
	if (res != HT_PART_OK)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("release of partition %d on peer \"%s\" answered %s", part, peer_name,
						ht_part_answer_names[res])));
	if (!held)
		(void) ht_part_release(part, MyProcPid);

	ht_peer_counters(peer, &rt1, &bytes1);
	r->round_trips = rt1 - rt0;
	r->bytes = bytes1 - bytes0;
	r->outcome = HT_OUTCOME_OK;
}

/*
 * exchange() keeps a cancel of this backend (the user's, or its statement
 * timeout) instead of throwing it again: the partition in progress is
 * logged as an error "canceled", the others as not attempted, and the
 * function returns those rows, so that the log of a canceled exchange
 * (say a push that had changed part of the peer's rows) is kept.
 */
static bool keep_cancel = false;
static bool canceled = false;

/*
 * The error of a failed partition (copied, its subtransaction or
 * transaction rolled back): recorded in r, the peer connection closed; a
 * cancel or shutdown of this backend is thrown again (within exchange(),
 * a cancel is recorded as the partition's error "canceled").
 */
static void
exchange_failed(const char *peer_name, ErrorData *edata, HtExchangeResult *r)
{
	/*
	 * A cancel or a shutdown of this backend stops everything.  These are
	 * this backend's own: the client never raises a peer's failure with
	 * them (a peer that does not answer in time is lost, a statement
	 * timeout on the peer is relayed as the partition's error; remote.h).
	 */
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
	{
		ht_peer_disconnect(peer_name);
		if (!keep_cancel || edata->sqlerrcode != ERRCODE_QUERY_CANCELED)
			ReThrowError(edata);
		canceled = true;
		r->outcome = HT_OUTCOME_ERROR;
		r->sqlstate = edata->sqlerrcode;
		r->message = psprintf("canceled: %s", edata->message ? edata->message : "");
		r->ndiffs = 0;
		memset(r->counts, 0, sizeof(r->counts));
		r->repaired = 0;
		return;
	}

	/* the peer's lock goes with the connection */
	ht_peer_disconnect(peer_name);
	r->outcome = HT_OUTCOME_ERROR;
	r->sqlstate = edata->sqlerrcode;
	r->message = edata->message ? pstrdup(edata->message) : pstrdup("unknown error");
	r->ndiffs = 0;
	memset(r->counts, 0, sizeof(r->counts));
	r->repaired = 0;
}

static HtQuery q_log = {
	"INSERT INTO hashtree.exchange_log (peer, \"partition\", repair, worker, started, finished,"
	" outcome, message, missing, remote_missing, different, missing_prefix,"
	" remote_missing_prefix, repaired, bytes, round_trips)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
	16, {TEXTOID, INT4OID, TEXTOID, BOOLOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TEXTOID,
		INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID}
};

/* append r to hashtree.exchange_log (needs SPI) */
static void
log_exchange(const char *peer_name, HtRepairMode mode, bool worker, HtExchangeResult *r)
{
	Datum		v[16];
	bool		n[16];

	memset(n, 0, sizeof(n));
	v[0] = CStringGetTextDatum(peer_name);
	v[1] = Int32GetDatum(r->part);
	v[2] = CStringGetTextDatum(ht_repair_mode_names[mode]);
	v[3] = BoolGetDatum(worker);
	v[4] = TimestampTzGetDatum(r->started);
	v[5] = TimestampTzGetDatum(r->finished);
	v[6] = CStringGetTextDatum(ht_exchange_outcome_names[r->outcome]);
	v[7] = r->message ? CStringGetTextDatum(r->message) : (Datum) 0;
	n[7] = (r->message == NULL);
	for (int k = 0; k < HT_NKINDS; k++)
		v[8 + k] = Int64GetDatum(r->counts[k]);
	v[13] = Int64GetDatum(r->repaired);
	v[14] = Int64GetDatum(r->bytes);
	v[15] = Int64GetDatum(r->round_trips);
	ht_exec(&q_log, v, n, 0);
}

bool		ht_exchange_quiet = false;

typedef struct PartitionRun
{
	const char *peer_name;
	int			part;
	HtRepairMode mode;
	HtExchangeResult *r;
} PartitionRun;

static void
exchange_partition_fn(void *arg)
{
	PartitionRun *run = (PartitionRun *) arg;

	exchange_partition(run->peer_name, run->part, run->mode, run->r);
}

void
ht_exchange_one(const char *peer_name, int part, HtRepairMode mode, bool worker,
				char **unreachable, HtExchangeResult *r)
{
	memset(r, 0, sizeof(*r));
	r->part = part;
	r->started = GetCurrentTimestamp();
	if (*unreachable != NULL)
	{
		/* the peer went away: the remaining partitions were not compared */
		r->outcome = HT_OUTCOME_ERROR;
		r->message = *unreachable;
	}
	else
	{
		PartitionRun run = {peer_name, part, mode, r};
		ErrorData  *edata = ht_subxact(exchange_partition_fn, &run);

		if (edata != NULL)
		{
			canceled = false;
			exchange_failed(peer_name, edata, r);
			/* an unreachable peer: do not try the next partitions */
			if (canceled)
				*unreachable = psprintf("not attempted: the exchange was canceled at partition %d",
										part);
			else if (ht_peer_lost(r->sqlstate))
				*unreachable = psprintf("not attempted: the peer was lost at partition %d",
										part);
			if (!ht_exchange_quiet)
				ereport(WARNING,
						(errmsg("hashtree: exchange of partition %d with peer \"%s\" failed: %s",
								part, peer_name, r->message)));
		}
	}
	r->finished = GetCurrentTimestamp();
	log_exchange(peer_name, mode, worker, r);
}

/* ---- exchange(peer, partition, repair) -------------------------------------- */

static void
put_row(ReturnSetInfo *rsinfo, int part, const char *kind, const char *pa,
		const char *pb, bytea *key, bool repaired)
{
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};

	values[0] = Int32GetDatum(part);
	values[1] = CStringGetTextDatum(kind);
	values[2] = pa ? CStringGetTextDatum(pa) : (Datum) 0;
	nulls[2] = (pa == NULL);
	values[3] = pb ? CStringGetTextDatum(pb) : (Datum) 0;
	nulls[3] = (pb == NULL);
	values[4] = PointerGetDatum(key);
	nulls[4] = (key == NULL);
	values[5] = BoolGetDatum(repaired);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * hashtree.exchange(peer text, partition int DEFAULT NULL,
 *                   repair text DEFAULT 'none')
 *   RETURNS TABLE(partition int, kind text, prefix_a text, prefix_b text,
 *                 key bytea, repaired boolean)
 * Anti-entropy with a peer, for one partition or all, each in a
 * subtransaction: lock, update and compare both sides, repair, release.
 * Locks: per partition those of lock(), update() and the repairs, here and
 * on the peer; ROW EXCLUSIVE on hashtree.exchange_log.
 */
PG_FUNCTION_INFO_V1(ht_exchange);
Datum
ht_exchange(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *peer_name;
	HtRepairMode mode;
	int			first;
	int			last;
	Oid			saved_role;
	bool		saved_keep_cancel;
	char	   *unreachable = NULL;	/* set when the peer is lost */

	HT_ARG_NOT_NULL(0, "peer");
	HT_ARG_NOT_NULL(2, "repair");
	peer_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	mode = ht_repair_mode(text_to_cstring(PG_GETARG_TEXT_PP(2)));
	if (ht_node_is_local(peer_name))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is this node; an exchange needs a peer", peer_name)));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("hashtree.exchange() must run at isolation level READ COMMITTED")));

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	ht_peer_check(peer_name);	/* an unknown peer is an error at once */

	/*
	 * exchange() is SECURITY DEFINER: the repair helpers check the rights
	 * of the role that called it (the session's current role), not the
	 * extension owner's.
	 */
	saved_role = ht_repair_role;
	saved_keep_cancel = keep_cancel;
	ht_repair_role = GetOuterUserId();
	/* only the outermost exchange() keeps a cancel: a nested one re-raises it */
	keep_cancel = !OidIsValid(saved_role);
	PG_TRY();
	{
		if (PG_ARGISNULL(1))
		{
			first = 0;
			last = ht_num_partitions() - 1;
		}
		else
		{
			first = last = PG_GETARG_INT32(1);
			ht_check_partition(first);
		}

		for (int part = first; part <= last; part++)
		{
			HtExchangeResult r;

			ht_exchange_one(peer_name, part, mode, false, &unreachable, &r);
			if (r.outcome == HT_OUTCOME_OK)
			{
				for (int i = 0; i < r.ndiffs; i++)
					put_row(rsinfo, part, ht_diff_kind_names[r.diffs[i].kind], r.diffs[i].pa,
							r.diffs[i].pb, r.diffs[i].key, r.diffs[i].repaired);
			}
			else
			{
				/* never a clean result for a partition that was not compared */
				put_row(rsinfo, part, ht_exchange_outcome_names[r.outcome], NULL, NULL, NULL,
						false);
			}
		}
	}
	PG_FINALLY();
	{
		/* a nested exchange() (a trigger of a repaired table) restores it */
		ht_repair_role = saved_role;
		keep_cancel = saved_keep_cancel;
	}
	PG_END_TRY();
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}
