/*-------------------------------------------------------------------------
 *
 * exchange.c
 *	  Anti-entropy exchange with a peer, of one partition or of all of
 *	  them together, the SQL function exchange(), and the peer's side of
 *	  it (_exchange_begin, _exchange_end).
 *
 * The partitions of an exchange proceed together, so the round trips do
 * not grow with their number: lock here; one request locks and updates
 * them on the peer (the locks are owned by the peer backend serving our
 * connection) and returns their top hashes while this node updates its
 * own; the trees of every partition whose tops differ are walked level by
 * level in the same requests (compare.c); the differences of all of them
 * are repaired in the same batches (repair.c); one request releases the
 * peer's locks, then this node's are released.  The locks never outlive
 * the exchange (plum_db's B7): on success they are released explicitly;
 * on any error the local locks go with the subtransaction abort and the
 * peer's with the connection, which is closed.  A partition refused or
 * failed on either side is reported as such, never as "no differences".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/commit_ts.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
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
#include "treemath.h"

/* repair none: the winners are reported for at most this many differences */
#define HT_WINNERS_MAX 100000

const char *const ht_exchange_outcome_names[HT_NOUTCOMES] = {
	[HT_OUTCOME_ERROR] = "error",
	[HT_OUTCOME_OK] = "ok",
	[HT_OUTCOME_SKIPPED_LOCKED] = "skipped_locked",
	[HT_OUTCOME_NOT_BUILT] = "not_built",
};

/* ---- this node's side ----------------------------------------------------- */

/* one partition of an exchange */
typedef struct XPart
{
	HtExchangeResult *r;
	bool		decided;		/* its outcome is set */
	bool		held;			/* locked by this backend before: kept */
	bool		here;			/* locked here by the exchange: to release */
	bool		there;			/* locked on the peer: to release */
	bool		live;			/* locked and updated on both sides so far */
	bytea	   *top;			/* this node's top hash (NULL: empty) */
	bytea	   *peer_top;		/* the peer's */
	int			npeer_prefix;	/* the peer's prefix tree entries (-1: not sent) */
	HtPrefixEntry *peer_prefix;
} XPart;

/* an exchange of several partitions with one peer */
typedef struct XRun
{
	const char *peer_name;
	HtRepairMode mode;
	int			n;
	XPart	   *x;
	XPart	  **by_part;		/* [partition]: its XPart, or NULL */
	HtPeer	   *peer;			/* once connected */
	int64		rt0;			/* the peer's counters then */
	int64		bytes0;
} XRun;

/* compare callback: keep the difference of its partition */
static void
collect(void *arg, int part, HtDiffKind kind, Datum pa, Datum pb, bytea *key)
{
	XRun	   *run = (XRun *) arg;
	HtExchangeResult *r;
	HtDiff	   *d;

	if (part < 0 || part >= ht_num_partitions() || run->by_part[part] == NULL)
		elog(ERROR, "hashtree: a difference in partition %d, not compared", part);
	r = run->by_part[part]->r;
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
	d->winner = 0;
	r->counts[kind]++;
}

/* the partition ends as an error: no difference claimed */
static void
part_failed(XPart *x, int sqlstate, const char *message)
{
	HtExchangeResult *r = x->r;

	r->outcome = HT_OUTCOME_ERROR;
	r->sqlstate = sqlstate;
	r->message = pstrdup(message ? message : "unknown error");
	r->ndiffs = 0;
	memset(r->counts, 0, sizeof(r->counts));
	r->repaired = 0;
	x->decided = true;
	x->live = false;
}

/* lock() here or on the peer (where) refused the partition */
static void
lock_refused(XPart *x, HtPartAnswer answer, const char *where)
{
	bool		not_built = (answer == HT_PART_NOT_BUILT);

	x->r->outcome = not_built ? HT_OUTCOME_NOT_BUILT : HT_OUTCOME_SKIPPED_LOCKED;
	x->r->message = psprintf("partition %d is %s %s", x->r->part,
							 not_built ? "not built" : "locked", where);
	x->decided = true;
	x->live = false;
}

static bool
same_top(const bytea *a, const bytea *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

static char *
int4_array_literal(const int32 *v, int n)
{
	return OidOutputFunctionCall(F_ARRAY_OUT, PointerGetDatum(ht_array_int4(v, n)));
}

/* update this node's tree of a partition (in a subtransaction), its top */
static void
update_fn(void *arg)
{
	XPart	   *x = (XPart *) arg;
	HtPartAnswer res = ht_update_partition(x->r->part);

	if (res != HT_PART_OK)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("update of partition %d on this node answered %s", x->r->part,
						ht_part_answer_names[res])));
	x->top = ht_compare_top(x->r->part, HT_COMPARE_HASH_BYTES);
}

static void
warn_failed(const char *peer_name, XPart *x)
{
	if (!ht_exchange_quiet)
		ereport(WARNING,
				(errmsg("hashtree: exchange of partition %d with peer \"%s\" failed: %s",
						x->r->part, peer_name, x->r->message)));
}

/* a word of the peer's answer: false if none, a protocol violation if unknown */
static bool
peer_answer(HtPeer *peer, HtRemoteResult *res, int row, int col, HtPartAnswer *answer)
{
	const char *word = ht_remote_text(res, row, col);

	if (word == NULL)
		return false;
	if (!ht_part_answer_of(word, answer))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from peer \"%s\": \"%s\"", ht_peer_name(peer), word)));
	return true;
}

/* the columns of _exchange_begin's rows */
#define BEGIN_COLUMNS 10

/*
 * The entry rows after partition part's row in the peer's answer to
 * _exchange_begin (row k on): its prefix trees' entries.
 */
static void
receive_prefix(XRun *run, XPart *x, HtRemoteResult *res, int k, int n)
{
	if (n < 0 || k + n > res->nrows || n > HT_EXCHANGE_PREFIX_ENTRIES)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from peer \"%s\": missing prefix entries",
						run->peer_name)));
	x->peer_prefix = palloc(sizeof(HtPrefixEntry) * Max(n, 1));
	x->npeer_prefix = n;
	for (int j = 0; j < n; j++)
	{
		HtPrefixEntry *e = &x->peer_prefix[j];
		const char *pa = ht_remote_text(res, k + j, 8);
		int			depth = ht_remote_text(res, k + j, 7) ? ht_remote_int4(res, k + j, 7) : -1;

		e->key = ht_remote_bytea(res, k + j, 9);
		e->hash = ht_remote_bytea(res, k + j, 5);
		if (ht_remote_int4(res, k + j, 0) != x->r->part || pa == NULL ||
			e->key == NULL || e->hash == NULL ||
			(depth != HT_DEPTH_ROOT && depth != HT_DEPTH_PREFIX))
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unexpected answer from peer \"%s\": a malformed prefix entry",
							run->peer_name)));
		e->depth = (int16) depth;
		e->pa = cstring_to_text(pa);
	}
	/* in the order this node compares them (the peer's collation aside) */
	ht_store_prefix_sort(x->peer_prefix, n);
}

/*
 * The peer's answer to _exchange_begin: a row per partition sent, in
 * order, each followed by its prefix trees' entries when the peer sent
 * them.
 */
static void
receive_begin(XRun *run, const int32 *sent, int nsent)
{
	HtPeer	   *peer = run->peer;
	HtRemoteResult *res = ht_peer_receive(peer, BEGIN_COLUMNS);
	int			row = 0;

	for (int k = 0; k < nsent; k++)
	{
		int			at = row++;	/* its row; its entries follow */
		XPart	   *x = run->by_part[sent[k]];
		HtPartAnswer lock;
		HtPartAnswer update;
		bool		has_lock;
		bool		has_update;
		const char *message;
		int			entries = -1;

		if (at >= res->nrows || ht_remote_int4(res, at, 0) != sent[k] ||
			ht_remote_text(res, at, 7) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unexpected answer from peer \"%s\": rows out of order",
							ht_peer_name(peer))));
		message = ht_remote_text(res, at, 4);
		if (ht_remote_text(res, at, 6) != NULL)
			entries = ht_remote_int4(res, at, 6);
		if (entries >= 0)
		{
			receive_prefix(run, x, res, row, entries);
			row += entries;
		}
		has_lock = peer_answer(peer, res, at, 1, &lock);
		has_update = peer_answer(peer, res, at, 2, &update);
		if (has_lock && lock == HT_PART_OK && has_update && update != HT_PART_OK)
		{
			/* update() refused (the lock went with its subtransaction) */
			if (x->live)
			{
				part_failed(x, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
							psprintf("update of partition %d on peer \"%s\" answered %s",
									 x->r->part, run->peer_name, ht_part_answer_names[update]));
				warn_failed(run->peer_name, x);
			}
			continue;
		}
		if (message != NULL)
		{
			/* an error on the peer (its subtransaction rolled back, no lock) */
			const char *state = ht_remote_text(res, at, 3);
			int			code = ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;

			if (state != NULL && strlen(state) == 5)
				code = MAKE_SQLSTATE(state[0], state[1], state[2], state[3], state[4]);
			/* a peer's class 08 or 57 is no lost peer, no cancel here (remote.h) */
			if (ERRCODE_TO_CATEGORY(code) == ERRCODE_CONNECTION_EXCEPTION ||
				ERRCODE_TO_CATEGORY(code) == ERRCODE_OPERATOR_INTERVENTION)
				code = ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
			if (x->live)
			{
				part_failed(x, code, message);
				warn_failed(run->peer_name, x);
			}
			continue;
		}
		if (!has_lock || (lock == HT_PART_OK && (!has_update || update != HT_PART_OK)))
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unexpected answer from peer \"%s\" to _exchange_begin()",
							ht_peer_name(peer))));
		if (lock != HT_PART_OK)
		{
			if (x->live)
				lock_refused(x, lock, psprintf("on peer \"%s\"", run->peer_name));
			continue;
		}
		x->there = true;
		if (!x->live)
			continue;
		x->peer_top = ht_remote_bytea(res, at, 5);
	}
	if (row != res->nrows)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from peer \"%s\": %d rows for %d partitions",
						ht_peer_name(peer), res->nrows, nsent)));
}

/*
 * Exchange the partitions of run with the peer, all together: lock them
 * here, then one request to the peer locks and updates them there and
 * returns their top hashes while this node updates its own (a partition
 * refused or failed on either side drops out with its outcome); the trees
 * whose tops differ are walked together (ht_compare_walk), repaired
 * together (ht_repair), and one request releases every lock taken on the
 * peer; then the locks here.  Runs in a subtransaction: an ERROR leaves
 * the locks here to its abort and the peer's to the connection, which the
 * caller closes.
 */
static void
exchange_run_fn(void *arg)
{
	XRun	   *run = (XRun *) arg;
	HtPeer	   *peer;
	uint64		generation;
	int32	   *sent = palloc(sizeof(int32) * run->n);
	int			nsent = 0;
	HtComparePart *differ = palloc(sizeof(HtComparePart) * run->n);
	int			ndiffer = 0;
	int32	   *release = palloc(sizeof(int32) * run->n);
	int			nrelease = 0;
	HtPeerStatement end_stmt;
	const HtPeerStatement *tail = NULL;
	HtRemoteResult *released = NULL;	/* _exchange_end's answer, when sent */

	peer = ht_peer_get(run->peer_name);
	run->peer = peer;
	ht_peer_counters(peer, &run->rt0, &run->bytes0);
	if (ht_peer_partitions(peer) != ht_num_partitions())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("peer \"%s\" has %d partitions, this node has %d",
						run->peer_name, ht_peer_partitions(peer), ht_num_partitions())));
	generation = ht_peer_generation(peer);

	/*
	 * Lock here (a lock this backend already held, taken with lock(), is
	 * used and kept), then ask the peer for the partitions locked.
	 */
	for (int k = 0; k < run->n; k++)
	{
		XPart	   *x = &run->x[k];
		HtPartState st;
		HtPartAnswer res;

		ht_part_state(x->r->part, &st);
		x->held = st.mine;
		res = ht_part_lock(x->r->part, MyProcPid);
		if (res != HT_PART_OK)
		{
			lock_refused(x, res, "on this node");
			continue;
		}
		x->here = !x->held;
		x->live = true;
		sent[nsent++] = x->r->part;
	}
	if (nsent == 0)
		return;
	{
		const char *params[3];

		params[0] = int4_array_literal(sent, nsent);
		params[1] = psprintf("%d", HT_COMPARE_HASH_BYTES);
		params[2] = psprintf("%d", HT_EXCHANGE_PREFIX_ENTRIES);
		ht_peer_send(peer,
					 "SELECT \"partition\", lock, update, sqlstate, message, top, entries,"
					 " depth::int4, pa, key"
					 " FROM hashtree._exchange_begin($1::int4[], $2::int4, $3::int4)",
					 3, params, true);
	}

	/*
	 * Both trees up to date with every change committed before now: the
	 * peer folds its changes while this node folds its own, each partition
	 * in a subtransaction (a failure is that partition's).
	 */
	for (int k = 0; k < run->n; k++)
	{
		XPart	   *x = &run->x[k];
		ErrorData  *edata;

		if (!x->live)
			continue;
		edata = ht_subxact(update_fn, x);
		if (edata == NULL)
			continue;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		part_failed(x, edata->sqlerrcode, edata->message);
		warn_failed(run->peer_name, x);
	}
	receive_begin(run, sent, nsent);

	/*
	 * The trees whose tops differ, walked together; their prefix trees
	 * from the entries of both sides, when the peer sent its own.
	 */
	for (int k = 0; k < run->n; k++)
	{
		XPart	   *x = &run->x[k];
		HtComparePart *p = &differ[ndiffer];

		if (!x->live || same_top(x->top, x->peer_top))
			continue;
		p->part = x->r->part;
		p->nremote = x->npeer_prefix;
		p->remote = x->peer_prefix;
		p->nlocal = x->npeer_prefix < 0 ? -1 :
			ht_store_prefix_entries(p->part, HT_COMPARE_HASH_BYTES,
									HT_EXCHANGE_PREFIX_ENTRIES, &p->local);
		ndiffer++;
	}
	/*
	 * Without a repair or a report of winners, the release of the peer's
	 * locks needs nothing more from the walk: it goes with the walk's last
	 * request (after it, on the peer), one round trip fewer.
	 */
	for (int k = 0; k < run->n; k++)
		if (run->x[k].there)
			release[nrelease++] = run->x[k].r->part;
	if (nrelease > 0)
	{
		const char **params = palloc(sizeof(char *));

		params[0] = int4_array_literal(release, nrelease);
		end_stmt.sql = "SELECT \"partition\", answer FROM hashtree._exchange_end($1::int4[])";
		end_stmt.nparams = 1;
		end_stmt.params = params;
		end_stmt.binary = false;
		if (run->mode == HT_REPAIR_NONE && !(track_commit_timestamp && !ht_exchange_quiet))
			tail = &end_stmt;
	}
	if (ndiffer > 0)
		released = ht_compare_walk_prefixed(peer, ndiffer, differ, collect, run, tail, 2);

	/*
	 * the repair; with none, in exchange() (not in the workers' reports),
	 * the winner that repair 'newest' would pick (one round trip more)
	 */
	if (run->mode != HT_REPAIR_NONE || (track_commit_timestamp && !ht_exchange_quiet))
	{
		HtRepairPart *rp = palloc(sizeof(HtRepairPart) * run->n);
		int			nrp = 0;

		for (int k = 0; k < run->n; k++)
		{
			XPart	   *x = &run->x[k];

			if (!x->live || x->r->ndiffs == 0)
				continue;
			rp[nrp].part = x->r->part;
			rp[nrp].diffs = x->r->diffs;
			rp[nrp].ndiffs = x->r->ndiffs;
			rp[nrp].repaired = 0;
			rp[nrp].rows_local = 0;
			rp[nrp].rows_remote = 0;
			rp[nrp].message = NULL;
			nrp++;
		}
		if (nrp > 0 && run->mode == HT_REPAIR_NONE)
		{
			int64		total = 0;

			/* (a report of a great many differences is not worth their rows) */
			for (int k = 0; k < nrp; k++)
				total += rp[k].ndiffs;
			if (total <= HT_WINNERS_MAX)
				ht_repair_winners(peer, rp, nrp);
		}
		else if (nrp > 0)
			ht_repair(peer, run->mode, rp, nrp, ht_exchange_quiet);
		for (int k = 0; k < nrp; k++)
		{
			HtExchangeResult *r = run->by_part[rp[k].part]->r;

			if (run->mode == HT_REPAIR_NONE)
				continue;
			r->repaired = rp[k].repaired;
			r->rows_local = rp[k].rows_local;
			r->rows_remote = rp[k].rows_remote;
			r->message = rp[k].message;
		}
	}

	/* a reconnection since the locks would mean the peer's locks were lost */
	if (ht_peer_generation(peer) != generation)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("the connection to peer \"%s\" was replaced during the exchange",
						run->peer_name)));

	/* release there, every lock the exchange took (unless done), then here */
	if (nrelease > 0)
	{
		HtRemoteResult *res = released;

		if (res == NULL)
			res = ht_peer_query(peer, end_stmt.sql, end_stmt.nparams, end_stmt.params,
								end_stmt.binary, 2);
		if (res->nrows != nrelease)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unexpected answer from peer \"%s\": %d rows for %d partitions",
							run->peer_name, res->nrows, nrelease)));
		for (int k = 0; k < nrelease; k++)
		{
			XPart	   *x = run->by_part[release[k]];
			HtPartAnswer answer;

			if (ht_remote_text(res, k, 0) == NULL || atoi(ht_remote_text(res, k, 0)) != release[k] ||
				!peer_answer(peer, res, k, 1, &answer))
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("unexpected answer from peer \"%s\" to _exchange_end()",
								run->peer_name)));
			x->there = false;
			if (answer != HT_PART_OK && x->live)
			{
				part_failed(x, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
							psprintf("release of partition %d on peer \"%s\" answered %s",
									 x->r->part, run->peer_name, ht_part_answer_names[answer]));
				warn_failed(run->peer_name, x);
			}
		}
	}
	for (int k = 0; k < run->n; k++)
	{
		XPart	   *x = &run->x[k];

		if (x->here)
			(void) ht_part_release(x->r->part, MyProcPid);
		x->here = false;
		if (x->live)
		{
			x->r->outcome = HT_OUTCOME_OK;
			x->decided = true;
		}
	}
}

/*
 * exchange() keeps a cancel of this backend (the user's, or its statement
 * timeout) instead of throwing it again: the partitions in progress are
 * logged as errors "canceled", and the function returns those rows, so
 * that the log of a canceled exchange (say a push that had changed part
 * of the peer's rows) is kept.
 */
static bool keep_cancel = false;

static HtQuery q_run = {
	"SELECT pg_catalog.nextval('hashtree.exchange_log_id_seq'::pg_catalog.regclass)",
	0, {InvalidOid}
};

#define LOG_COLUMNS " (peer, \"partition\", repair, worker, started, finished," \
	" outcome, message, missing, remote_missing, different, missing_prefix," \
	" remote_missing_prefix, repaired, bytes, round_trips, rows_local, rows_remote, run, id)"

static HtQuery q_log_first = {
	"INSERT INTO hashtree.exchange_log" LOG_COLUMNS
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $18, $19,"
	" $17, $17)",
	19, {TEXTOID, INT4OID, TEXTOID, BOOLOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TEXTOID,
		INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID,
		INT8OID, INT8OID}
};

static HtQuery q_log = {
	"INSERT INTO hashtree.exchange_log" LOG_COLUMNS
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $18, $19,"
	" $17, pg_catalog.nextval('hashtree.exchange_log_id_seq'::pg_catalog.regclass))",
	19, {TEXTOID, INT4OID, TEXTOID, BOOLOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TEXTOID,
		INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID,
		INT8OID, INT8OID}
};

/*
 * Append r to hashtree.exchange_log (needs SPI); the first row of a run
 * has the run's id as its own.
 */
static void
log_exchange(const char *peer_name, HtRepairMode mode, bool worker, HtExchangeResult *r,
			 int64 run, bool first)
{
	Datum		v[19];
	bool		n[19];

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
	v[16] = Int64GetDatum(run);
	v[17] = Int64GetDatum(r->rows_local);
	v[18] = Int64GetDatum(r->rows_remote);
	ht_exec(first ? &q_log_first : &q_log, v, n, 0);
}

bool		ht_exchange_quiet = false;

void
ht_exchange_run(const char *peer_name, int n, const int *parts, HtRepairMode mode,
				bool worker, HtExchangeResult *results)
{
	XRun		run;
	ErrorData  *edata;
	TimestampTz finished;
	int64		round_trips = 0;
	int64		bytes = 0;
	int64		run_id;
	bool		isnull;

	memset(&run, 0, sizeof(run));
	run.peer_name = peer_name;
	run.mode = mode;
	run.n = n;
	run.x = palloc0(sizeof(XPart) * Max(n, 1));
	run.by_part = palloc0(sizeof(XPart *) * ht_num_partitions());
	for (int k = 0; k < n; k++)
	{
		HtExchangeResult *r = &results[k];

		memset(r, 0, sizeof(*r));
		r->part = parts[k];
		r->started = GetCurrentTimestamp();
		run.x[k].r = r;
		run.x[k].npeer_prefix = -1;
		run.by_part[parts[k]] = &run.x[k];
	}

	edata = ht_subxact(exchange_run_fn, &run);
	if (edata != NULL)
	{
		bool		cancel = (edata->sqlerrcode == ERRCODE_QUERY_CANCELED);
		char	   *message;
		int			failed = 0;

		/* the peer's locks go with the connection */
		ht_peer_disconnect(peer_name);

		/*
		 * A cancel or a shutdown of this backend stops everything: these are
		 * this backend's own, the client never raises a peer's failure with
		 * them (remote.h).  exchange() keeps a cancel as the partitions'
		 * error.
		 */
		if (edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN || (cancel && !keep_cancel))
			ReThrowError(edata);
		message = cancel ? psprintf("canceled: %s", edata->message ? edata->message : "")
			: edata->message;
		for (int k = 0; k < n; k++)
			if (!run.x[k].decided)
			{
				part_failed(&run.x[k], edata->sqlerrcode, message);
				failed++;
			}
		if (!ht_exchange_quiet && failed > 0)
		{
			if (n == 1)
				warn_failed(peer_name, &run.x[0]);
			else
				ereport(WARNING,
						(errmsg("hashtree: exchange of %d partitions with peer \"%s\" failed: %s",
								failed, peer_name, message ? message : "unknown error")));
		}
	}

	/* the round trips and bytes of the whole exchange, on every row */
	if (run.peer != NULL)
	{
		ht_peer_counters(run.peer, &round_trips, &bytes);
		round_trips -= run.rt0;
		bytes -= run.bytes0;
	}
	finished = GetCurrentTimestamp();
	ht_exec(&q_run, NULL, NULL, 1);
	run_id = DatumGetInt64(ht_col(0, 1, &isnull));
	for (int k = 0; k < n; k++)
	{
		results[k].finished = finished;
		results[k].round_trips = round_trips;
		results[k].bytes = bytes;
		log_exchange(peer_name, mode, worker, &results[k], run_id, k == 0);
	}
}

/* ---- exchange(peer, partition, repair) -------------------------------------- */

static void
put_row(ReturnSetInfo *rsinfo, int part, const char *kind, const char *pa,
		const char *pb, bytea *key, bool repaired, char winner)
{
	Datum		values[7];
	bool		nulls[7] = {false, false, false, false, false, false, false};

	values[0] = Int32GetDatum(part);
	values[1] = CStringGetTextDatum(kind);
	values[2] = pa ? CStringGetTextDatum(pa) : (Datum) 0;
	nulls[2] = (pa == NULL);
	values[3] = pb ? CStringGetTextDatum(pb) : (Datum) 0;
	nulls[3] = (pb == NULL);
	values[4] = PointerGetDatum(key);
	nulls[4] = (key == NULL);
	values[5] = BoolGetDatum(repaired);
	values[6] = winner ? CStringGetTextDatum(winner == 'l' ? "local" : "remote") : (Datum) 0;
	nulls[6] = (winner == 0);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * hashtree.exchange(peer text, partition int DEFAULT NULL,
 *                   repair text DEFAULT 'none')
 *   RETURNS TABLE(partition int, kind text, prefix_a text, prefix_b text,
 *                 key bytea, repaired boolean, winner text)
 * Anti-entropy with a peer, for one partition or all of them together:
 * lock, update and compare both sides, repair, release (a partition
 * refused or failed is a row of its outcome).  Locks: per partition those
 * of lock(), update() and the repairs, here and on the peer; ROW
 * EXCLUSIVE on hashtree.exchange_log.
 */
PG_FUNCTION_INFO_V1(ht_exchange);
Datum
ht_exchange(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *peer_name;
	HtRepairMode mode;
	Oid			saved_role;
	bool		saved_keep_cancel;

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

	if (mode == HT_REPAIR_NEWEST && !track_commit_timestamp)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("repair 'newest' needs track_commit_timestamp = on on this node"),
				 errhint("Set track_commit_timestamp = on (a restart) on every node.")));

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
		int			n;
		int		   *parts;
		HtExchangeResult *results;

		if (PG_ARGISNULL(1))
		{
			n = ht_num_partitions();
			parts = palloc(sizeof(int) * n);
			for (int k = 0; k < n; k++)
				parts[k] = k;
		}
		else
		{
			n = 1;
			parts = palloc(sizeof(int));
			parts[0] = PG_GETARG_INT32(1);
			ht_check_partition(parts[0]);
		}
		results = palloc(sizeof(HtExchangeResult) * n);
		ht_exchange_run(peer_name, n, parts, mode, false, results);
		for (int k = 0; k < n; k++)
		{
			HtExchangeResult *r = &results[k];

			if (r->outcome == HT_OUTCOME_OK)
			{
				for (int i = 0; i < r->ndiffs; i++)
					put_row(rsinfo, r->part, ht_diff_kind_names[r->diffs[i].kind],
							r->diffs[i].pa, r->diffs[i].pb, r->diffs[i].key,
							r->diffs[i].repaired, r->diffs[i].winner);
			}
			else
			{
				/* never a clean result for a partition that was not compared */
				put_row(rsinfo, r->part, ht_exchange_outcome_names[r->outcome], NULL, NULL,
						NULL, false, 0);
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

/* ---- the peer's side: _exchange_begin and _exchange_end ----------------------- */

typedef struct BeginPart
{
	int			part;
	int			hash_bytes;
	HtPartAnswer lock;
	bool		updated;
	HtPartAnswer update;
	bytea	   *top;
	int			limit;			/* prefix entries to send at most */
	int			nprefix;		/* -1: not sent */
	HtPrefixEntry *prefix;
} BeginPart;

/* lock, update, top hash of one partition (in a subtransaction) */
static void
begin_fn(void *arg)
{
	BeginPart  *b = (BeginPart *) arg;

	b->lock = ht_part_lock(b->part, MyProcPid);
	if (b->lock != HT_PART_OK)
		return;
	b->update = ht_update_partition(b->part);
	b->updated = true;
	if (b->update != HT_PART_OK)
	{
		/* not compared: the lock is not kept (the subtransaction's abort) */
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("update of partition %d answered %s", b->part,
						ht_part_answer_names[b->update])));
	}
	b->top = ht_compare_top(b->part, b->hash_bytes);
	b->nprefix = b->limit > 0 ?
		ht_store_prefix_entries(b->part, b->hash_bytes, b->limit, &b->prefix) : -1;
}

/* the partitions of an int[] argument; each must exist (needs SPI) */
static int32 *
partitions_arg(FunctionCallInfo fcinfo, int argno, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int32	   *parts;

	HT_ARG_NOT_NULL(argno, "partitions");
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(argno), INT4OID, 4, true, TYPALIGN_INT,
					  &elems, &nulls, n);
	parts = palloc(sizeof(int32) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("partitions must not contain nulls")));
		parts[i] = DatumGetInt32(elems[i]);
		ht_check_partition(parts[i]);
	}
	return parts;
}

/*
 * hashtree._exchange_begin(partitions int[], hash_bytes int, prefix_entries int)
 *   RETURNS TABLE(partition int, lock text, update text, sqlstate text,
 *                 message text, top bytea, entries int, depth int2, pa text,
 *                 key bytea)
 * The peer's side of the start of an exchange, one row per partition in
 * order: in a subtransaction each, lock() for the calling backend, then
 * update(), then the first hash_bytes bytes of the root's top hash (NULL:
 * no entries).  lock and update are their answers (update NULL when it did
 * not run); sqlstate and message the error that ended the partition, whose
 * subtransaction was rolled back (no lock is left: neither when update()
 * refuses).  When the partition is locked and updated and its prefix trees
 * (depths 0 and 1) hold at most prefix_entries entries, entries is their
 * number and that many rows follow, one per entry (depth, pa, key, and
 * its hash cut to hash_bytes in top; the other columns null), so that the
 * caller compares the prefix trees without asking for them.  A cancel or
 * a shutdown ends the statement.  Locks: per partition those of lock()
 * and update().
 */
PG_FUNCTION_INFO_V1(ht_exchange_begin);
Datum
ht_exchange_begin(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			hash_bytes;
	int			limit;

	HT_ARG_NOT_NULL(1, "hash_bytes");
	hash_bytes = PG_GETARG_INT32(1);
	if (hash_bytes < 1 || hash_bytes > HT_DIGEST_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("hash_bytes must be between 1 and %d", HT_DIGEST_LEN)));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("hashtree._exchange_begin() must run at isolation level READ COMMITTED")));

	HT_ARG_NOT_NULL(2, "prefix_entries");
	limit = PG_GETARG_INT32(2);
	if (limit < 0 || limit > HT_EXCHANGE_PREFIX_ENTRIES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prefix_entries must be between 0 and %d", HT_EXCHANGE_PREFIX_ENTRIES)));

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	{
		int			n;
		int32	   *parts = partitions_arg(fcinfo, 0, &n);

		for (int k = 0; k < n; k++)
		{
			BeginPart	b;
			ErrorData  *edata;
			Datum		values[10];
			bool		nulls[10];

			memset(nulls, true, sizeof(nulls));
			nulls[0] = nulls[1] = nulls[2] = false;
			memset(&b, 0, sizeof(b));
			b.part = parts[k];
			b.hash_bytes = hash_bytes;
			b.limit = limit;
			b.nprefix = -1;
			edata = ht_subxact(begin_fn, &b);
			if (edata != NULL &&
				(edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
				 edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN))
				ReThrowError(edata);
			values[0] = Int32GetDatum(b.part);
			if (edata != NULL && !b.updated)
				nulls[1] = true;	/* lock() itself failed */
			else
				values[1] = CStringGetTextDatum(ht_part_answer_names[b.lock]);
			if (b.updated)
				values[2] = CStringGetTextDatum(ht_part_answer_names[b.update]);
			nulls[2] = !b.updated;
			if (edata != NULL)
			{
				values[3] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
				values[4] = CStringGetTextDatum(edata->message ? edata->message : "unknown error");
			}
			nulls[3] = nulls[4] = (edata == NULL);
			values[5] = PointerGetDatum(b.top);
			nulls[5] = (b.top == NULL);
			if (edata == NULL && b.nprefix >= 0)
			{
				values[6] = Int32GetDatum(b.nprefix);
				nulls[6] = false;
			}
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);

			/* then the partition's prefix tree entries */
			for (int j = 0; edata == NULL && j < b.nprefix; j++)
			{
				memset(nulls, true, sizeof(nulls));
				values[0] = Int32GetDatum(b.part);
				values[5] = PointerGetDatum(b.prefix[j].hash);
				values[7] = Int16GetDatum(b.prefix[j].depth);
				values[8] = PointerGetDatum(b.prefix[j].pa);
				values[9] = PointerGetDatum(b.prefix[j].key);
				nulls[0] = nulls[5] = nulls[7] = nulls[8] = nulls[9] = false;
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
		}
	}
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/*
 * hashtree._exchange_end(partitions int[])
 *   RETURNS TABLE(partition int, answer text)
 * The peer's side of the end of an exchange: release_lock() of each
 * partition for the calling backend, its answer, in order.  Locks: those
 * of release_lock().
 */
PG_FUNCTION_INFO_V1(ht_exchange_end);
Datum
ht_exchange_end(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	{
		int			n;
		int32	   *parts = partitions_arg(fcinfo, 0, &n);

		for (int k = 0; k < n; k++)
		{
			Datum		values[2];
			bool		nulls[2] = {false, false};

			values[0] = Int32GetDatum(parts[k]);
			values[1] = CStringGetTextDatum(ht_part_answer_names[ht_part_release(parts[k],
																				  MyProcPid)]);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}
