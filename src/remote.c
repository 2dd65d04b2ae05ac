/*-------------------------------------------------------------------------
 *
 * remote.c
 *	  Peers and the libpq client that runs hashtree calls on them.
 *
 * The client never blocks in libpq: connections are made with
 * PQconnectStartParams/PQconnectPoll and statements are sent with
 * PQsendQueryParams on a non-blocking connection; every wait is a
 * WaitLatchOrSocket on the process latch, so cancel requests, termination
 * and postmaster death are served while waiting, and deadlines are
 * enforced here (a peer that accepts connections but never answers cannot
 * hang the caller).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "libpq-fe.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/pg_bswap.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "common.h"
#include "remote.h"
#include "sqlexec.h"

struct HtPeer
{
	char		name[HT_MAX_PEER_NAME_LEN + 1]; /* hash key */
	PGconn	   *conn;
	char	   *conninfo;		/* in TopMemoryContext */
	int			partitions;		/* the peer's partition count */
	uint64		generation;		/* connections made so far */
	int64		round_trips;
	int64		bytes;
	TimestampTz deadline;		/* of the statement sent, 0: none */
	int			pipelined;		/* results of a pipeline still to read */
	bool		counted;		/* the pipeline's round trip counted */
};

static HTAB *peer_cache = NULL;

bool
ht_node_is_local(const char *node)
{
	return node == NULL || strcmp(node, ht_node_name()) == 0;
}

const char *
ht_peer_name(HtPeer *peer)
{
	return peer->name;
}

int
ht_peer_partitions(HtPeer *peer)
{
	return peer->partitions;
}

uint64
ht_peer_generation(HtPeer *peer)
{
	return peer->generation;
}

void
ht_peer_counters(HtPeer *peer, int64 *round_trips, int64 *bytes)
{
	*round_trips = peer->round_trips;
	*bytes = peer->bytes;
}

static void
protocol_violation(HtPeer *peer, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROTOCOL_VIOLATION),
			 errmsg("unexpected answer from peer \"%s\": %s", peer->name, what)));
}

/* a peer's NOTICE (say, the progress of a reset) reaches our client */
static void
forward_notice(void *arg, const PGresult *res)
{
	HtPeer	   *peer = (HtPeer *) arg;
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

	if (msg != NULL)
		ereport(NOTICE,
				(errmsg_internal("%s", msg),
				 errcontext("on peer \"%s\"", peer->name)));
}

static void
peer_disconnect(HtPeer *peer)
{
	if (peer->conn != NULL)
		PQfinish(peer->conn);
	peer->conn = NULL;
	peer->pipelined = 0;
}

/* libpq's message without its trailing newline */
static char *
conn_message(PGconn *conn)
{
	char	   *msg = pstrdup(conn != NULL ? PQerrorMessage(conn) : "out of memory");
	int			len = strlen(msg);

	while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
		msg[--len] = '\0';
	return msg;
}

/*
 * Wait until the connection's socket is ready for io_events, serving
 * interrupts; deadline 0 means no limit.
 */
static void
wait_for_socket(HtPeer *peer, int io_events, TimestampTz deadline,
				bool connecting)
{
	for (;;)
	{
		int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | io_events;
		long		timeout = -1;
		int			rc;

		if (deadline != 0)
		{
			timeout = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
													  deadline);
			if (timeout <= 0)
			{
				if (connecting)
					ereport(ERROR,
							(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
							 errmsg("could not connect to peer \"%s\": timeout expired",
									peer->name),
							 errhint("The limit is hashtree.connect_timeout (%d ms).",
									 ht_guc_connect_timeout)));
				/* a peer that does not answer is lost (see remote.h) */
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("canceling statement on peer \"%s\" due to statement timeout",
								peer->name),
						 errhint("The limit is hashtree.statement_timeout (%d ms).",
								 ht_guc_statement_timeout)));
			}
			events |= WL_TIMEOUT;
		}
		rc = WaitLatchOrSocket(MyLatch, events, PQsocket(peer->conn), timeout,
							   PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		if (rc & io_events)
			return;
	}
}

/*
 * The settings of every session on a peer, appended to the "options"
 * connection parameter after the user's own (a later -c wins), so that
 * ALTER DATABASE/ROLE settings on the peer do not apply:
 *  - search_path pg_catalog, pg_temp: the statements run as the role of
 *    the conninfo, often a superuser, and in PostgreSQL 15 the database
 *    owner owns schema public (a public.unnest(int4[]) would otherwise run
 *    with that role's rights);
 *  - the output settings rows travel in: ISO dates, postgres intervals,
 *    exact floats, UTC;
 *  - custom plans (as in the workers, worker.c).
 */
#define HT_PEER_SESSION_OPTIONS \
	"-c search_path=pg_catalog,pg_temp -c datestyle=ISO -c intervalstyle=postgres" \
	" -c extra_float_digits=3 -c timezone=UTC -c plan_cache_mode=force_custom_plan"

/*
 * The first statement of a session sets the same values again and checks
 * them: a connection pooler may drop startup options.  Nothing else is
 * sent before this succeeded.
 */
#define HT_PEER_SESSION_SQL \
	"SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)," \
	" pg_catalog.set_config('datestyle', 'ISO', false)," \
	" pg_catalog.set_config('intervalstyle', 'postgres', false)," \
	" pg_catalog.set_config('extra_float_digits', '3', false)," \
	" pg_catalog.set_config('timezone', 'UTC', false)," \
	" pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', false)"

static void
session_check(HtPeer *peer)
{
	HtRemoteResult *res = ht_peer_query(peer, HT_PEER_SESSION_SQL, 0, NULL, false, 6);
	const char *path;
	const char *datestyle;

	if (res->nrows != 1)
		protocol_violation(peer, "no row for the session settings");
	path = ht_remote_text(res, 0, 0);
	datestyle = ht_remote_text(res, 0, 1);
	if (path == NULL || strcmp(path, HT_SAFE_SEARCH_PATH) != 0 ||
		datestyle == NULL || strncmp(datestyle, "ISO,", 4) != 0 ||
		ht_remote_text(res, 0, 2) == NULL ||
		strcmp(ht_remote_text(res, 0, 2), "postgres") != 0 ||
		ht_remote_text(res, 0, 3) == NULL ||
		strcmp(ht_remote_text(res, 0, 3), "3") != 0 ||
		ht_remote_text(res, 0, 4) == NULL ||
		strcmp(ht_remote_text(res, 0, 4), "UTC") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not pin the session settings on peer \"%s\"", peer->name),
				 errdetail("search_path is \"%s\", DateStyle \"%s\".",
						   path ? path : "", datestyle ? datestyle : "")));
}

static void
peer_connect(HtPeer *peer, const char *conninfo)
{
	PQconninfoOption *opts;
	char	   *err = NULL;
	const char **keys;
	const char **vals;
	int			n = 0;
	int			nopts = 0;
	StringInfoData options;
	TimestampTz deadline;

	opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL)
	{
		char	   *msg = err ? pstrdup(err) : "out of memory";

		if (err)
			PQfreemem(err);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string of peer \"%s\": %s",
						peer->name, msg)));
	}

	/* the peer's options, plus ours (later keywords win) */
	initStringInfo(&options);
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
		nopts++;
	keys = palloc(sizeof(char *) * (nopts + 4));
	vals = palloc(sizeof(char *) * (nopts + 4));
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
	{
		if (o->val == NULL || o->val[0] == '\0')
			continue;
		if (strcmp(o->keyword, "options") == 0)
		{
			appendStringInfoString(&options, o->val);
			appendStringInfoChar(&options, ' ');
			continue;
		}
		keys[n] = pstrdup(o->keyword);
		vals[n] = pstrdup(o->val);
		n++;
	}
	PQconninfoFree(opts);
	/* the peer stops working for us soon after we close the connection */
	appendStringInfoString(&options, "-c client_connection_check_interval=1000");
	/* the session's settings, after the user's options (see session_check) */
	appendStringInfoString(&options, " " HT_PEER_SESSION_OPTIONS);
	keys[n] = "options";
	vals[n++] = options.data;
	keys[n] = "fallback_application_name";
	vals[n++] = "hashtree";
	keys[n] = "client_encoding";
	vals[n++] = GetDatabaseEncodingName();
	keys[n] = NULL;
	vals[n] = NULL;

	peer->conn = PQconnectStartParams(keys, vals, false);
	if (peer->conn == NULL || PQstatus(peer->conn) == CONNECTION_BAD)
	{
		char	   *msg = conn_message(peer->conn);

		peer_disconnect(peer);
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to peer \"%s\": %s", peer->name, msg)));
	}

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   ht_guc_connect_timeout);
	PG_TRY();
	{
		PostgresPollingStatusType st = PGRES_POLLING_WRITING;

		while (st != PGRES_POLLING_OK)
		{
			if (st == PGRES_POLLING_FAILED)
			{
				char	   *msg = conn_message(peer->conn);

				ereport(ERROR,
						(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
						 errmsg("could not connect to peer \"%s\": %s",
								peer->name, msg)));
			}
			wait_for_socket(peer, st == PGRES_POLLING_READING ?
							WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE,
							deadline, true);
			st = PQconnectPoll(peer->conn);
		}
		if (PQsetnonblocking(peer->conn, 1) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not set connection to peer \"%s\" non-blocking: %s",
							peer->name, conn_message(peer->conn))));
		PQsetNoticeReceiver(peer->conn, forward_notice, peer);
		peer->generation++;
	}
	PG_CATCH();
	{
		peer_disconnect(peer);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* the connection broke: the peer is lost, the connection closed */
static void
lost_connection(HtPeer *peer)
{
	char	   *msg = conn_message(peer->conn);

	peer_disconnect(peer);
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("lost connection to peer \"%s\": %s", peer->name, msg)));
}

/* the SQLSTATE of an error result, 0 if it has none */
static int
result_sqlstate(const PGresult *res)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	if (state == NULL || strlen(state) != 5)
		return 0;
	return MAKE_SQLSTATE(state[0], state[1], state[2], state[3], state[4]);
}

/*
 * Raise the error of a failed statement, classified by the connection's
 * status and the result, never by its text (the classes are in remote.h):
 *  - the connection broke or the peer closed it (a shutdown or a
 *    terminated session on the peer included), or libpq made the error
 *    itself (no SQLSTATE): the peer is lost, ERRCODE_CONNECTION_FAILURE,
 *    and the connection is closed (a result that is no error at all is a
 *    protocol violation, also lost);
 *  - otherwise the peer reported an error and the connection still works:
 *    its SQLSTATE is relayed, unless that would read as a lost peer (class
 *    08: the peer's own connections) or as this backend's cancel or
 *    shutdown (class 57: the peer's statement timeout, say).
 * The peer's message, detail and hint are kept as they are.
 */
static void
peer_failed(HtPeer *peer, PGresult *res)
{
	int			state = result_sqlstate(res);
	bool		lost;
	int			code;
	const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
	const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
	char	   *msg;
	char	   *det = detail ? pstrdup(detail) : NULL;
	char	   *hin = hint ? pstrdup(hint) : NULL;
	char	   *where = psprintf("on peer \"%s\"", peer->name);

	if (PQresultStatus(res) != PGRES_FATAL_ERROR)
	{
		/* not an error, and not what was asked for */
		char	   *what = pstrdup(PQresStatus(PQresultStatus(res)));

		PQclear(res);
		peer_disconnect(peer);
		protocol_violation(peer, what);
	}
	lost = (PQstatus(peer->conn) == CONNECTION_BAD || state == 0);
	if (lost && primary == NULL)
	{
		/* nothing from the peer: libpq's reason */
		PQclear(res);
		lost_connection(peer);
	}

	msg = pstrdup(primary);
	if (lost)
	{
		code = ERRCODE_CONNECTION_FAILURE;
		peer_disconnect(peer);
	}
	else if (ERRCODE_TO_CATEGORY(state) == ERRCODE_CONNECTION_EXCEPTION ||
			 ERRCODE_TO_CATEGORY(state) == ERRCODE_OPERATOR_INTERVENTION)
	{
		code = ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
		where = psprintf("on peer \"%s\", which reported SQLSTATE %s", peer->name,
						 PQresultErrorField(res, PG_DIAG_SQLSTATE));
	}
	else
		code = state;
	PQclear(res);
	ereport(ERROR,
			(errcode(code),
			 errmsg_internal("%s", msg),
			 det ? errdetail_internal("%s", det) : 0,
			 hin ? errhint("%s", hin) : 0,
			 errcontext("%s", where)));
}

/* send what libpq buffered, reading what comes meanwhile; a lost peer: ERROR */
static void
flush_output(HtPeer *peer)
{
	PGconn	   *conn = peer->conn;
	int			r;

	while ((r = PQflush(conn)) != 0)
	{
		if (r < 0)
			lost_connection(peer);
		wait_for_socket(peer, WL_SOCKET_WRITEABLE | WL_SOCKET_READABLE,
						peer->deadline, false);
		if (!PQconsumeInput(conn))
			lost_connection(peer);
	}
}

/* send a statement (the peer starts on it at once) */
void
ht_peer_send(HtPeer *peer, const char *sql, int nparams,
		  const char *const *params, bool binary)
{
	HtPeerStatement stmt = {sql, nparams, params, binary};

	ht_peer_send_pipeline(peer, 1, &stmt);
}

/* send statements at once, each with a Sync (the peer answers each in turn) */
void
ht_peer_send_pipeline(HtPeer *peer, int n, const HtPeerStatement *stmts)
{
	PGconn	   *conn = peer->conn;

	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_DOES_NOT_EXIST),
				 errmsg("no connection to peer \"%s\"", peer->name)));
	if (peer->pipelined > 0)
		elog(ERROR, "hashtree: a statement sent to peer \"%s\" before the results of the last",
			 peer->name);
	peer->deadline = 0;
	if (ht_guc_statement_timeout > 0)
		peer->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 ht_guc_statement_timeout);
	PG_TRY();
	{
		if (n == 1)
		{
			if (!PQsendQueryParams(conn, stmts[0].sql, stmts[0].nparams, NULL,
								   stmts[0].params, NULL, NULL, stmts[0].binary ? 1 : 0))
				lost_connection(peer);
		}
		else
		{
			if (!PQenterPipelineMode(conn))
				lost_connection(peer);
			for (int k = 0; k < n; k++)
				if (!PQsendQueryParams(conn, stmts[k].sql, stmts[k].nparams, NULL,
									   stmts[k].params, NULL, NULL, stmts[k].binary ? 1 : 0) ||
					!PQpipelineSync(conn))
					lost_connection(peer);
			peer->pipelined = n;
			peer->counted = false;
		}
		flush_output(peer);
	}
	PG_CATCH();
	{
		/* interrupted, timed out or broken: this connection is done */
		peer_disconnect(peer);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* wait for the result of the statement sent; caller PQclears it */
static PGresult *
exec_result(HtPeer *peer)
{
	PGconn	   *conn = peer->conn;
	PGresult   *volatile last = NULL;

	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_DOES_NOT_EXIST),
				 errmsg("no connection to peer \"%s\"", peer->name)));
	PG_TRY();
	{
		for (;;)
		{
			PGresult   *res;

			while (PQisBusy(conn))
			{
				wait_for_socket(peer, WL_SOCKET_READABLE, peer->deadline, false);
				if (!PQconsumeInput(conn))
					lost_connection(peer);
			}
			res = PQgetResult(conn);
			if (res == NULL)
				break;
			/* keep the last result, or the first error */
			if (last != NULL && PQresultStatus(last) == PGRES_FATAL_ERROR)
				PQclear(res);
			else
			{
				if (last != NULL)
					PQclear(last);
				last = res;
			}
			if (PQstatus(conn) == CONNECTION_BAD)
				break;
		}
		if (last == NULL)
			lost_connection(peer);
	}
	PG_CATCH();
	{
		/* interrupted, timed out or broken: this connection is done */
		if (last != NULL)
			PQclear(last);
		peer_disconnect(peer);
		PG_RE_THROW();
	}
	PG_END_TRY();

	peer->round_trips++;
	return last;
}

static HtRemoteResult *pipeline_receive(HtPeer *peer, int ncols);

/* a result's rows copied out of libpq (the result is cleared) */
static HtRemoteResult *
copy_result(HtPeer *peer, PGresult *res, int ncols)
{
	HtRemoteResult *out;

	if (PQnfields(res) != ncols)
	{
		int			nf = PQnfields(res);

		PQclear(res);
		peer_disconnect(peer);
		protocol_violation(peer, psprintf("%d columns instead of %d", nf, ncols));
	}

	out = palloc(sizeof(HtRemoteResult));
	out->nrows = PQntuples(res);
	out->ncols = PQnfields(res);
	out->val = palloc(sizeof(char *) * Max(out->nrows * out->ncols, 1));
	out->len = palloc(sizeof(int) * Max(out->nrows * out->ncols, 1));
	for (int r = 0; r < out->nrows; r++)
		for (int c = 0; c < out->ncols; c++)
		{
			int			k = r * out->ncols + c;

			if (PQgetisnull(res, r, c))
			{
				out->val[k] = NULL;
				out->len[k] = 0;
				continue;
			}
			out->len[k] = PQgetlength(res, r, c);
			out->val[k] = palloc(out->len[k] + 1);
			memcpy(out->val[k], PQgetvalue(res, r, c), out->len[k]);
			out->val[k][out->len[k]] = '\0';
			peer->bytes += out->len[k];
		}
	PQclear(res);
	return out;
}

HtRemoteResult *
ht_peer_receive(HtPeer *peer, int ncols)
{
	PGresult   *res;
	ExecStatusType st;

	if (peer->pipelined > 0)
		return pipeline_receive(peer, ncols);
	res = exec_result(peer);
	st = PQresultStatus(res);
	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
		peer_failed(peer, res);
	return copy_result(peer, res, ncols);
}

HtRemoteResult *
ht_peer_query(HtPeer *peer, const char *sql, int nparams,
			  const char *const *params, bool binary, int ncols)
{
	ht_peer_send(peer, sql, nparams, params, binary);
	return ht_peer_receive(peer, ncols);
}

/*
 * An error of a statement run on this node by ht_node_query (a table
 * owner's trigger in a repair, say): one of class 08 would read as a lost
 * peer, so it is raised as 38000, as a peer's would be (remote.h).
 */
static void
local_failed(MemoryContext cxt)
{
	ErrorData  *edata;
	int			code;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	if (!ht_peer_lost(edata->sqlerrcode))
	{
		FreeErrorData(edata);
		PG_RE_THROW();
	}
	FlushErrorState();
	code = edata->sqlerrcode;
	edata->sqlerrcode = ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
	edata->context = psprintf("%s%son this node, which reported SQLSTATE %s",
							  edata->context ? edata->context : "",
							  edata->context ? "\n" : "", unpack_sql_state(code));
	ReThrowError(edata);
}

HtRemoteResult *
ht_node_query(HtPeer *peer, const char *sql, int nparams,
			  const char *const *params, int ncols)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid		   *types;
	Datum	   *values;
	char	   *nulls;
	HtRemoteResult *out;
	int			rc;
	int			pin;

	if (peer != NULL)
		return ht_peer_query(peer, sql, nparams, params, false, ncols);

	types = palloc(sizeof(Oid) * Max(nparams, 1));
	values = palloc(sizeof(Datum) * Max(nparams, 1));
	nulls = palloc(Max(nparams, 1) + 1);
	for (int i = 0; i < nparams; i++)
	{
		types[i] = TEXTOID;
		values[i] = params[i] ? CStringGetTextDatum(params[i]) : (Datum) 0;
		nulls[i] = params[i] ? ' ' : 'n';
	}
	nulls[nparams] = '\0';
	pin = ht_pin_begin();
	PG_TRY();
	{
		rc = SPI_execute_with_args(sql, nparams, types, values, nulls, false, 0);
	}
	PG_CATCH();
	{
		local_failed(cxt);
	}
	PG_END_TRY();
	ht_pin_end(pin);
	if (rc < 0)
		elog(ERROR, "hashtree: SPI_execute_with_args failed (%s) for: %s",
			 SPI_result_code_string(rc), sql);
	out = palloc(sizeof(HtRemoteResult));
	out->nrows = (int) SPI_processed;
	out->ncols = SPI_tuptable ? SPI_tuptable->tupdesc->natts : 0;
	if (out->nrows > 0 && out->ncols != ncols)
		elog(ERROR, "hashtree: %d columns instead of %d for: %s", out->ncols, ncols, sql);
	out->val = palloc(sizeof(char *) * Max(out->nrows * out->ncols, 1));
	out->len = palloc(sizeof(int) * Max(out->nrows * out->ncols, 1));
	for (int r = 0; r < out->nrows; r++)
		for (int c = 0; c < out->ncols; c++)
		{
			int			k = r * out->ncols + c;

			out->val[k] = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, c + 1);
			out->len[k] = out->val[k] ? strlen(out->val[k]) : 0;
		}
	if (SPI_tuptable)
		SPI_freetuptable(SPI_tuptable);
	return out;
}

/* ---- batches ----------------------------------------------------------------- */

/*
 * The error of a failed statement of a batch, as peer_failed raises it;
 * a lost peer is thrown.
 */
static ErrorData *
peer_error(HtPeer *peer, PGresult *res)
{
	MemoryContext cxt = CurrentMemoryContext;
	ErrorData  *edata = NULL;

	PG_TRY();
	{
		peer_failed(peer, res);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (ht_peer_lost(edata->sqlerrcode))
			PG_RE_THROW();
		FlushErrorState();
	}
	PG_END_TRY();
	return edata;
}

/* the next result of a pipeline (NULL: the end of a statement's results) */
static PGresult *
next_result(HtPeer *peer)
{
	while (PQisBusy(peer->conn))
	{
		wait_for_socket(peer, WL_SOCKET_READABLE, peer->deadline, false);
		if (!PQconsumeInput(peer->conn))
			lost_connection(peer);
	}
	return PQgetResult(peer->conn);
}

/* the Sync that ends a statement's (or a group's) part of a pipeline */
static void
read_sync(HtPeer *peer)
{
	PGresult   *res = next_result(peer);

	if (res == NULL || PQresultStatus(res) != PGRES_PIPELINE_SYNC)
	{
		if (res != NULL)
			PQclear(res);
		if (PQstatus(peer->conn) == CONNECTION_BAD)
			lost_connection(peer);
		protocol_violation(peer, "no end of a pipeline");
	}
	PQclear(res);
}

/*
 * Read and drop what is left of a pipeline after a statement's error
 * result: its end, then every later statement's results and Sync; the
 * connection leaves pipeline mode.  A lost peer: ERROR.
 */
static void
pipeline_drain(HtPeer *peer)
{
	PGconn	   *conn = peer->conn;

	while (peer->pipelined > 0)
	{
		PGresult   *res = next_result(peer);

		if (res == NULL)
			continue;			/* the end of a statement's results */
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC)
			peer->pipelined--;
		PQclear(res);
		if (PQstatus(conn) == CONNECTION_BAD)
			lost_connection(peer);
	}
	if (!PQexitPipelineMode(conn))
		protocol_violation(peer, "a pipeline that does not end");
}

/*
 * The result of the next statement of a pipeline sent by
 * ht_peer_send_pipeline; the pipeline ends with the last.  The pipeline
 * is one round trip.  An error the peer reported is raised once the rest
 * of the pipeline was read (the connection stays); any other error while
 * results are still due (a lost peer, a cancel, a timeout, a malformed
 * answer) closes the connection.
 */
static HtRemoteResult *
pipeline_receive(HtPeer *peer, int ncols)
{
	PGconn	   *conn = peer->conn;
	HtRemoteResult *volatile out = NULL;

	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_DOES_NOT_EXIST),
				 errmsg("no connection to peer \"%s\"", peer->name)));
	PG_TRY();
	{
		PGresult   *res = next_result(peer);
		PGresult   *more;
		ExecStatusType st;

		if (res == NULL || PQstatus(conn) == CONNECTION_BAD)
		{
			if (res != NULL)
				PQclear(res);
			lost_connection(peer);
		}
		if (!peer->counted)
		{
			peer->round_trips++;
			peer->counted = true;
		}
		st = PQresultStatus(res);
		if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
		{
			/*
			 * An error the peer reported: the rest of the pipeline is read
			 * first, so that the connection (and the locks it holds) stays
			 */
			if (st == PGRES_FATAL_ERROR && PQstatus(conn) == CONNECTION_OK &&
				result_sqlstate(res) != 0)
				pipeline_drain(peer);
			peer_failed(peer, res);
		}
		out = copy_result(peer, res, ncols);
		/* one result per statement, then NULL, then its Sync */
		if ((more = next_result(peer)) != NULL)
		{
			PQclear(more);
			protocol_violation(peer, "more than one result for a statement");
		}
		read_sync(peer);
		if (--peer->pipelined == 0 && !PQexitPipelineMode(conn))
			protocol_violation(peer, "a pipeline that does not end");
	}
	PG_CATCH();
	{
		/* interrupted, timed out, broken: results still due, done */
		if (peer->pipelined > 0)
			peer_disconnect(peer);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return out;
}

/*
 * The batch on a peer: every statement sent, a Sync after each group (so
 * each group is an implicit transaction), then the results read in order.
 */
static void
peer_batch(HtPeer *peer, HtStatement *stmts, int n, ErrorData **errors)
{
	PGconn	   *conn = peer->conn;
	ErrorData  *volatile first = NULL;

	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_DOES_NOT_EXIST),
				 errmsg("no connection to peer \"%s\"", peer->name)));
	peer->deadline = 0;
	if (ht_guc_statement_timeout > 0)
		peer->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 ht_guc_statement_timeout);
	PG_TRY();
	{
		if (!PQenterPipelineMode(conn))
			lost_connection(peer);
		for (int k = 0; k < n; k++)
		{
			if (!PQsendQueryParams(conn, stmts[k].sql, stmts[k].nparams, NULL,
								   stmts[k].params, NULL, NULL, 0))
				lost_connection(peer);
			if ((k == n - 1 || stmts[k + 1].group != stmts[k].group) &&
				!PQpipelineSync(conn))
				lost_connection(peer);
		}
		flush_output(peer);

		for (int k = 0; k < n; k++)
		{
			PGresult   *res = next_result(peer);
			PGresult   *more;
			ErrorData  *edata = NULL;
			int			g = stmts[k].group;

			stmts[k].result = NULL;
			if (res == NULL || PQstatus(conn) == CONNECTION_BAD)
			{
				if (res != NULL)
					PQclear(res);
				lost_connection(peer);
			}
			switch (PQresultStatus(res))
			{
				case PGRES_TUPLES_OK:
				case PGRES_COMMAND_OK:
					stmts[k].result = copy_result(peer, res, stmts[k].ncols);
					break;
				case PGRES_PIPELINE_ABORTED:
					/* an earlier statement of its group failed */
					PQclear(res);
					break;
				case PGRES_FATAL_ERROR:
					edata = peer_error(peer, res);
					break;
				default:
					{
						char	   *what = pstrdup(PQresStatus(PQresultStatus(res)));

						PQclear(res);
						protocol_violation(peer, what);
					}
			}
			/* one result per statement, then NULL */
			if ((more = next_result(peer)) != NULL)
			{
				PQclear(more);
				protocol_violation(peer, "more than one result for a statement");
			}
			if (edata != NULL)
			{
				/* without errors[], the first is thrown once the pipeline is read */
				if (errors == NULL)
				{
					if (first == NULL)
						first = edata;
				}
				else if (errors[g] == NULL)
					errors[g] = edata;
			}
			/* the end of a group: its Sync */
			if (k == n - 1 || stmts[k + 1].group != g)
			{
				read_sync(peer);
			}
		}
		if (!PQexitPipelineMode(conn))
			protocol_violation(peer, "a pipeline that does not end");
	}
	PG_CATCH();
	{
		/* interrupted, timed out, broken, or an error thrown: done */
		peer_disconnect(peer);
		PG_RE_THROW();
	}
	PG_END_TRY();
	peer->round_trips++;
	if (first != NULL)
		ReThrowError(first);
}

typedef struct LocalGroup
{
	HtStatement *stmts;
	int			from;
	int			to;
} LocalGroup;

static void
local_group(void *arg)
{
	LocalGroup *lg = (LocalGroup *) arg;

	for (int k = lg->from; k < lg->to; k++)
		lg->stmts[k].result = ht_node_query(NULL, lg->stmts[k].sql, lg->stmts[k].nparams,
											lg->stmts[k].params, lg->stmts[k].ncols);
}

void
ht_node_batch(HtPeer *peer, HtStatement *stmts, int n, ErrorData **errors)
{
	if (n == 0)
		return;
	if (peer != NULL)
	{
		peer_batch(peer, stmts, n, errors);
		return;
	}
	for (int from = 0; from < n;)
	{
		LocalGroup	lg = {stmts, from, from};
		ErrorData  *edata;

		while (lg.to < n && stmts[lg.to].group == stmts[from].group)
			stmts[lg.to++].result = NULL;
		edata = ht_subxact(local_group, &lg);
		if (edata != NULL)
		{
			/* the results of a group rolled back are not results */
			for (int k = from; k < lg.to; k++)
				stmts[k].result = NULL;
			if (errors == NULL ||
				edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
				edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
				ReThrowError(edata);
			errors[stmts[from].group] = edata;
		}
		from = lg.to;
	}
}

static char *
remote_value(HtRemoteResult *res, int row, int col, int need)
{
	int			k = row * res->ncols + col;

	if (row < 0 || row >= res->nrows || col < 0 || col >= res->ncols)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from a peer: no row %d, column %d", row, col)));
	if (res->val[k] == NULL)
		return NULL;
	if (need > 0 && res->len[k] != need)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from a peer: a value of %d bytes instead of %d",
						res->len[k], need)));
	return res->val[k];
}

static void
null_from_peer(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROTOCOL_VIOLATION),
			 errmsg("unexpected answer from a peer: null value")));
}

int32
ht_remote_int4(HtRemoteResult *res, int row, int col)
{
	char	   *v = remote_value(res, row, col, 4);
	uint32		x;

	if (v == NULL)
		null_from_peer();
	memcpy(&x, v, 4);
	return (int32) pg_ntoh32(x);
}

int64
ht_remote_int8(HtRemoteResult *res, int row, int col)
{
	char	   *v = remote_value(res, row, col, 8);
	uint64		x;

	if (v == NULL)
		null_from_peer();
	memcpy(&x, v, 8);
	return (int64) pg_ntoh64(x);
}

bytea *
ht_remote_bytea(HtRemoteResult *res, int row, int col)
{
	char	   *v = remote_value(res, row, col, 0);
	int			len = res->len[row * res->ncols + col];
	bytea	   *b;

	if (v == NULL)
		return NULL;
	b = palloc(VARHDRSZ + len);
	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), v, len);
	return b;
}

char *
ht_remote_text(HtRemoteResult *res, int row, int col)
{
	return remote_value(res, row, col, 0);
}

/* ---- the peers table and the connection cache ------------------------- */

static HtQuery q_peer_conninfo = {
	"SELECT conninfo FROM hashtree.peer WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static void
check_peer_name(const char *name)
{
	if (name[0] == '\0' || strlen(name) > HT_MAX_PEER_NAME_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid peer name \"%s\"", name),
				 errdetail("A peer name has 1 to %d bytes.", HT_MAX_PEER_NAME_LEN)));
}

/* the conninfo of a peer; ERROR if there is no such peer */
static char *
peer_conninfo(const char *name)
{
	Datum		v[1];
	bool		isnull;

	if (strlen(name) > HT_MAX_PEER_NAME_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", name)));
	v[0] = CStringGetTextDatum(name);
	if (ht_exec(&q_peer_conninfo, v, NULL, 1) == 0)
	{
		/* dropped (maybe by another session): close what we kept of it */
		ht_peer_disconnect(name);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", name),
				 errhint("Peers are added with hashtree.add_peer(name, conninfo); "
						 "this node is \"%s\".", ht_node_name())));
	}
	return TextDatumGetCString(ht_col(0, 1, &isnull));
}

/*
 * Is a kept connection still usable?  Without a round trip: it is idle,
 * and the peer sent nothing meanwhile.  A server sends nothing to an idle
 * session but when it ends it (the FATAL of a shutdown, of
 * pg_terminate_backend or idle_session_timeout, then the end of the
 * stream): such a connection is connected again instead of failing the
 * next statement.
 */
static bool
connection_usable(HtPeer *peer)
{
	int			rc;

	if (PQstatus(peer->conn) != CONNECTION_OK ||
		PQtransactionStatus(peer->conn) != PQTRANS_IDLE ||
		PQpipelineStatus(peer->conn) != PQ_PIPELINE_OFF)
		return false;
	rc = WaitLatchOrSocket(NULL, WL_SOCKET_READABLE | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						   PQsocket(peer->conn), 0, PG_WAIT_EXTENSION);
	return (rc & WL_SOCKET_READABLE) == 0;
}

bool
ht_peer_revalidate(const char *name)
{
	HtPeer	   *peer;
	Datum		v[1];
	bool		isnull;
	bool		exists;

	if (strlen(name) > HT_MAX_PEER_NAME_LEN)
		return false;
	v[0] = CStringGetTextDatum(name);
	exists = (ht_exec(&q_peer_conninfo, v, NULL, 1) == 1);
	if (peer_cache == NULL ||
		(peer = hash_search(peer_cache, name, HASH_FIND, NULL)) == NULL ||
		peer->conn == NULL)
		return exists;
	if (!exists ||
		strcmp(peer->conninfo, TextDatumGetCString(ht_col(0, 1, &isnull))) != 0 ||
		!connection_usable(peer))
		peer_disconnect(peer);
	return exists;
}

void
ht_peer_check(const char *name)
{
	(void) peer_conninfo(name);
}

HtPeer *
ht_peer_get(const char *name)
{
	char	   *conninfo;
	HtPeer	   *peer;
	bool		found;

	conninfo = peer_conninfo(name);

	if (peer_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = HT_MAX_PEER_NAME_LEN + 1;
		ctl.entrysize = sizeof(HtPeer);
		peer_cache = hash_create("hashtree peers", 16, &ctl,
								 HASH_ELEM | HASH_STRINGS);
	}
	peer = hash_search(peer_cache, name, HASH_ENTER, &found);
	if (!found)
	{
		peer->conn = NULL;
		peer->conninfo = NULL;
		peer->partitions = 0;
		peer->generation = 0;
		peer->round_trips = 0;
		peer->bytes = 0;
		peer->pipelined = 0;
		peer->counted = false;
	}

	/* a changed conninfo, a broken or busy connection: start again */
	if (peer->conn != NULL &&
		(strcmp(peer->conninfo, conninfo) != 0 || !connection_usable(peer)))
		peer_disconnect(peer);

	if (peer->conn == NULL)
	{
		HtRemoteResult *res;
		char	   *version;

		if (peer->conninfo != NULL)
			pfree(peer->conninfo);
		peer->conninfo = MemoryContextStrdup(TopMemoryContext, conninfo);
		peer_connect(peer, conninfo);
		/* a peer without the extension is no peer: do not keep it */
		PG_TRY();
		{
			char	   *parts;

			session_check(peer);
			res = ht_peer_query(peer,
								"SELECT version, partitions FROM hashtree._hello()",
								0, NULL, false, 2);
			if (res->nrows != 1)
				protocol_violation(peer, "hashtree._hello() returned no row");
			version = ht_remote_text(res, 0, 0);
			parts = ht_remote_text(res, 0, 1);
			if (parts == NULL || atoi(parts) < 1)
				protocol_violation(peer, "no partition count");
			peer->partitions = atoi(parts);
		}
		PG_CATCH();
		{
			peer_disconnect(peer);
			PG_RE_THROW();
		}
		PG_END_TRY();
		if (version == NULL || strcmp(version, HT_EXTENSION_VERSION) != 0)
			ereport(WARNING,
					(errmsg("peer \"%s\" runs hashtree %s, this node %s",
							name, version ? version : "?", HT_EXTENSION_VERSION)));
	}
	return peer;
}

void
ht_peer_disconnect(const char *name)
{
	HtPeer	   *peer;

	if (peer_cache == NULL || strlen(name) > HT_MAX_PEER_NAME_LEN)
		return;
	peer = hash_search(peer_cache, name, HASH_FIND, NULL);
	if (peer != NULL)
		peer_disconnect(peer);
}

static HtQuery q_peer_add = {
	"INSERT INTO hashtree.peer (name, conninfo) VALUES ($1, $2)"
	" ON CONFLICT (name) DO NOTHING",
	2, {TEXTOID, TEXTOID}
};

void
ht_peer_add(const char *name, const char *conninfo)
{
	PQconninfoOption *opts;
	char	   *err = NULL;
	Datum		v[2];

	check_peer_name(name);
	if (strcmp(name, ht_node_name()) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("peer name \"%s\" is the name of this node", name)));
	opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL)
	{
		char	   *msg = err ? pstrdup(err) : "out of memory";

		if (err)
			PQfreemem(err);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string: %s", msg)));
	}
	PQconninfoFree(opts);

	v[0] = CStringGetTextDatum(name);
	v[1] = CStringGetTextDatum(conninfo);
	if (ht_exec(&q_peer_add, v, NULL, 0) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("peer \"%s\" already exists", name),
				 errhint("Use hashtree.drop_peer() first to change its connection string.")));
}

static HtQuery q_peer_drop = {
	"DELETE FROM hashtree.peer WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

void
ht_peer_drop(const char *name)
{
	Datum		v[1];

	v[0] = CStringGetTextDatum(name);
	if (ht_exec(&q_peer_drop, v, NULL, 0) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", name)));
	if (peer_cache != NULL && strlen(name) <= HT_MAX_PEER_NAME_LEN)
	{
		HtPeer	   *peer = hash_search(peer_cache, name, HASH_FIND, NULL);

		if (peer != NULL)
			peer_disconnect(peer);
	}
}
