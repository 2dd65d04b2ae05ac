/*-------------------------------------------------------------------------
 *
 * fragremote.c
 *	  Fragments on other servers: move_frag, the postgres_fdw servers
 *	  derived from peers, the fragment keys, the cleanup of what an
 *	  interrupted move left on a peer.  See docs/DESIGN.md §19.
 *
 * A fragment on a peer is a foreign table partition of the parent (owned
 * by the extension's owner) over a table in schema hashtree_fragments on
 * the peer.  PostgreSQL routes and prunes to it like to any partition.
 *
 * A move copies the fragment's rows from its current place (the source)
 * into a new table (the target) through hashtree's own libpq client, as
 * text row literals in arrays, under pinned I/O settings; it compares the
 * digests of both sides, (rows, sum of the entry digests of the rows'
 * keys and row hashes), computed by each server on its own rows; then it
 * swaps the partitions in the caller's transaction.  The remote part is
 * committed on the peer before the local commit, and a remote source is
 * dropped only after it: the local commit is the one point where the
 * fragment changes place, and whatever is left on a peer by a move that
 * did not commit (or by a source moved away) is a table no foreign table
 * here refers to, which the cleanup at the start of the next move drops.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "foreign/foreign.h"
#include "funcapi.h"
#include "libpq-fe.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "partitioning/partbounds.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/deparse_utility.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "common.h"
#include "frag.h"
#include "fragops.h"
#include "fragremote.h"
#include "remote.h"
#include "rowenc.h"
#include "sqlexec.h"
#include "treemath.h"

/* the schema of the fragments' tables on a peer */
#define REMOTE_SCHEMA		"hashtree_fragments"

/* rows (or bytes of row literals) sent in one statement */
#define BATCH_ROWS			1000
#define BATCH_BYTES			(4 * 1024 * 1024)

/* ---- the registry of servers ------------------------------------------------------ */

static HtQuery q_server_of_peer = {
	"SELECT server FROM hashtree.frag_server WHERE peer OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};
static HtQuery q_peer_of_server = {
	"SELECT peer FROM hashtree.frag_server WHERE server OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};
static HtQuery q_server_add = {
	"INSERT INTO hashtree.frag_server (peer, server) VALUES ($1, $2)",
	2, {TEXTOID, TEXTOID}
};
static HtQuery q_server_rename = {
	"UPDATE hashtree.frag_server SET server = $2 WHERE peer OPERATOR(pg_catalog.=) $1",
	2, {TEXTOID, TEXTOID}
};
static HtQuery q_servers = {
	"SELECT peer, server FROM hashtree.frag_server ORDER BY peer",
	0, {InvalidOid}
};
static HtQuery q_peer_conninfo = {
	"SELECT conninfo FROM hashtree.peer WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};
static HtQuery q_keys_get = {
	"SELECT fragment_keys FROM hashtree.frag_table"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	1, {OIDOID}
};
static HtQuery q_keys_set = {
	"UPDATE hashtree.frag_table SET fragment_keys = $2"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	2, {OIDOID, TEXTARRAYOID}
};

/* the first column of the first row of an ht_exec result, or NULL */
static char *
first_text(uint64 n)
{
	bool		isnull;
	Datum		d;

	if (n == 0)
		return NULL;
	d = ht_col(0, 1, &isnull);
	return isnull ? NULL : TextDatumGetCString(d);
}

static char *
peer_of_server(const char *server)
{
	Datum		v[1] = {CStringGetTextDatum(server)};

	return first_text(ht_exec_as_owner(&q_peer_of_server, v, NULL, 1));
}

static char *
server_of_peer(const char *peer)
{
	Datum		v[1] = {CStringGetTextDatum(peer)};

	return first_text(ht_exec_as_owner(&q_server_of_peer, v, NULL, 1));
}

/*
 * A peer's connection: the peers table is the extension owner's (move_frag
 * runs with the caller's rights, who is granted EXECUTE on it)
 */
static HtPeer *
peer_get(const char *name)
{
	Oid			save_user;
	int			save_sec;
	HtPeer	   *p;

	ht_as_owner_begin(&save_user, &save_sec);
	p = ht_peer_get(name);
	ht_as_owner_end(save_user, save_sec);
	return p;
}

/* ---- a peer that holds fragments ------------------------------------------------- */

/*
 * A move to a peer holds its peers row FOR KEY SHARE until it commits, so
 * that drop_peer (FOR UPDATE, then the check of the foreign tables) sees
 * the fragment it is placing there.
 */
static HtQuery q_peer_share = {
	"SELECT 1 FROM hashtree.peer WHERE name OPERATOR(pg_catalog.=) $1 FOR KEY SHARE",
	1, {TEXTOID}
};
static HtQuery q_peer_update = {
	"SELECT 1 FROM hashtree.peer WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
	1, {TEXTOID}
};
static HtQuery q_peer_fragments = {
	"SELECT pg_catalog.count(*), pg_catalog.min(CASE WHEN i.inhparent IS NULL"
	"  THEN pg_catalog.format('Foreign table %s (detached from its table)', t.ftrelid::pg_catalog.regclass)"
	"  ELSE pg_catalog.format('Fragment %s of table %s',"
	"  t.ftrelid::pg_catalog.regclass, i.inhparent::pg_catalog.regclass) END)"
	" FROM pg_catalog.pg_foreign_table t"
	" JOIN pg_catalog.pg_foreign_server s ON s.oid OPERATOR(pg_catalog.=) t.ftserver"
	" LEFT JOIN pg_catalog.pg_inherits i ON i.inhrelid OPERATOR(pg_catalog.=) t.ftrelid"
	" WHERE s.srvname OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

/* lock peer's row for a move to it (the caller's transaction); ERROR if it is gone */
static void
peer_share(const char *peer)
{
	Datum		v[1] = {CStringGetTextDatum(peer)};

	if (ht_exec_as_owner(&q_peer_share, v, NULL, 0) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", peer)));
}

void
ht_frag_check_peer_drop(const char *name)
{
	Datum		v[1] = {CStringGetTextDatum(name)};
	char	   *server;
	bool		isnull;
	int64		n;

	/* waits for the moves to it under way (FOR KEY SHARE), then sees their fragments */
	if (ht_exec_as_owner(&q_peer_update, v, NULL, 0) == 0)
		return;					/* no such peer: drop_peer says so */
	server = server_of_peer(name);
	if (server == NULL)
		return;
	/* a move committed while this waited is seen by a new snapshot only */
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("drop_peer() of peer \"%s\", which has held fragments, must run at isolation level READ COMMITTED",
						name)));
	v[0] = CStringGetTextDatum(server);
	ht_exec_as_owner(&q_peer_fragments, v, NULL, 1);
	n = DatumGetInt64(ht_col(0, 1, &isnull));
	if (n > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop peer \"%s\" because it holds fragments of fragmented tables",
						name),
				 errdetail("%s is a foreign table on server \"%s\" (" INT64_FORMAT
						   " fragment%s on that peer in all).",
						   TextDatumGetCString(ht_col(0, 2, &isnull)), server, n,
						   n == 1 ? "" : "s"),
				 errhint("Move them here or to another peer first: hashtree.move_frag(tbl, "
						 "fragment, node); view hashtree.fragments shows where they are.")));
}

/* ---- where a fragment is ---------------------------------------------------------- */

typedef struct Place
{
	char	   *peer;			/* NULL: here */
	char	   *server;			/* the foreign table's server */
	char	   *remote;			/* its table on the peer, in REMOTE_SCHEMA */
} Place;

static void
place_of(Oid part, int32 k, Place *pl)
{
	ForeignTable *ft;
	ForeignServer *fs;
	char	   *schema = NULL;
	ListCell   *lc;

	memset(pl, 0, sizeof(*pl));
	if (get_rel_relkind(part) != RELKIND_FOREIGN_TABLE)
		return;
	ft = GetForeignTable(part);
	fs = GetForeignServer(ft->serverid);
	pl->server = pstrdup(fs->servername);
	pl->peer = peer_of_server(pl->server);
	foreach(lc, ft->options)
	{
		DefElem    *d = (DefElem *) lfirst(lc);

		if (strcmp(d->defname, "schema_name") == 0)
			schema = defGetString(d);
		else if (strcmp(d->defname, "table_name") == 0)
			pl->remote = pstrdup(defGetString(d));
	}
	if (pl->peer == NULL || schema == NULL || strcmp(schema, REMOTE_SCHEMA) != 0 ||
		pl->remote == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("fragment %d (\"%s\") is a foreign table that hashtree did not place",
						k, get_rel_name(part)),
				 errdetail("Its server \"%s\" is not the server of a hashtree peer, or its "
						   "options name no table of schema %s.", pl->server, REMOTE_SCHEMA)));
}

void
ht_frag_require_local(Oid part, int32 k, const char *what)
{
	Place		pl;

	if (get_rel_relkind(part) != RELKIND_FOREIGN_TABLE)
		return;
	place_of(part, k, &pl);
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s: fragment %d is on peer \"%s\"", what, k, pl.peer),
			 errhint("Move it here first: hashtree.move_frag(tbl, %d, NULL).", k)));
}

/* ---- the postgres_fdw server of a peer -------------------------------------------- */

typedef struct Opt
{
	char	   *key;
	char	   *val;
} Opt;

/*
 * Split a peer's conninfo as postgres_fdw splits libpq's options: user
 * and the secret ones (and sslcert/sslkey) for the user mapping, debug
 * options and those postgres_fdw sets itself left out, the rest for the
 * server.
 */
static void
split_conninfo(const char *peer, const char *conninfo, List **srv, List **um)
{
	PQconninfoOption *opts;
	char	   *err = NULL;
	bool		password = false;

	*srv = *um = NIL;
	opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL)
	{
		char	   *msg = err ? pstrdup(err) : "out of memory";

		if (err)
			PQfreemem(err);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string of peer \"%s\": %s", peer, msg)));
	}
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
	{
		Opt		   *opt;

		if (o->val == NULL || o->val[0] == '\0')
			continue;
		if (strchr(o->dispchar, 'D') != NULL ||
			strcmp(o->keyword, "client_encoding") == 0 ||
			strcmp(o->keyword, "fallback_application_name") == 0)
			continue;
		opt = palloc(sizeof(Opt));
		opt->key = pstrdup(o->keyword);
		opt->val = pstrdup(o->val);
		if (strcmp(o->keyword, "user") == 0 || strchr(o->dispchar, '*') != NULL ||
			strcmp(o->keyword, "sslcert") == 0 || strcmp(o->keyword, "sslkey") == 0)
		{
			*um = lappend(*um, opt);
			if (strcmp(o->keyword, "password") == 0)
				password = true;
		}
		else
			*srv = lappend(*srv, opt);
	}
	PQconninfoFree(opts);
	if (!password)
	{
		/* the server's own identity, as for the peer's own connections */
		Opt		   *opt = palloc(sizeof(Opt));

		opt->key = "password_required";
		opt->val = "false";
		*um = lappend(*um, opt);
	}
}

static char *
opts_clause(List *opts)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, opts)
	{
		Opt		   *o = lfirst(lc);

		appendStringInfo(&buf, "%s%s %s", buf.len ? ", " : "", quote_identifier(o->key),
						 quote_literal_cstr(o->val));
	}
	return buf.data;
}

/* "k=v" options as stored (srvoptions, umoptions), as Opts */
static List *
stored_opts(Datum d, bool isnull)
{
	List	   *out = NIL;
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (isnull)
		return NIL;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		char	   *kv = TextDatumGetCString(elems[i]);
		char	   *eq = strchr(kv, '=');
		Opt		   *o = palloc(sizeof(Opt));

		if (eq == NULL)
			continue;
		*eq = '\0';
		o->key = kv;
		o->val = eq + 1;
		out = lappend(out, o);
	}
	return out;
}

/* the ALTER … OPTIONS clause that turns options have into want, or NULL */
static char *
opts_change(List *have, List *want)
{
	StringInfoData buf;
	ListCell   *lc;
	ListCell   *lc2;

	initStringInfo(&buf);
	foreach(lc, want)
	{
		Opt		   *w = lfirst(lc);
		Opt		   *h = NULL;

		foreach(lc2, have)
			if (strcmp(((Opt *) lfirst(lc2))->key, w->key) == 0)
				h = lfirst(lc2);
		if (h != NULL && strcmp(h->val, w->val) == 0)
			continue;
		appendStringInfo(&buf, "%s%s %s %s", buf.len ? ", " : "", h ? "SET" : "ADD",
						 quote_identifier(w->key), quote_literal_cstr(w->val));
	}
	foreach(lc, have)
	{
		Opt		   *h = lfirst(lc);
		bool		wanted = false;

		foreach(lc2, want)
			if (strcmp(((Opt *) lfirst(lc2))->key, h->key) == 0)
				wanted = true;
		if (!wanted)
			appendStringInfo(&buf, "%sDROP %s", buf.len ? ", " : "", quote_identifier(h->key));
	}
	return buf.len ? buf.data : NULL;
}

static void
check_fdw(void)
{
	if (GetForeignDataWrapperByName("postgres_fdw", true) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension postgres_fdw is not installed in this database"),
				 errdetail("A fragment on another server is a postgres_fdw foreign table."),
				 errhint("CREATE EXTENSION postgres_fdw;")));
}

/* a server name for a peer that no server has yet */
static char *
new_server_name(const char *peer)
{
	char	   *base = psprintf("hashtree_%s", peer);

	for (int i = 1;; i++)
	{
		char		suffix[16] = "";
		int			len;
		char	   *name;

		if (i > 1)
			snprintf(suffix, sizeof(suffix), "_%d", i);
		len = pg_mbcliplen(base, strlen(base), NAMEDATALEN - 1 - strlen(suffix));
		name = psprintf("%.*s%s", len, base, suffix);
		if (GetForeignServerByName(name, true) == NULL)
			return name;
	}
}

/*
 * The postgres_fdw server of a peer, created or brought up to date with
 * the peer's conninfo, with its user mapping FOR PUBLIC; all as the
 * extension's owner, who owns them.  Needs SPI.
 */
static char *
peer_server(const char *peer)
{
	Datum		v[2];
	char	   *conninfo;
	char	   *server;
	List	   *srv;
	List	   *um;
	ForeignServer *fs = NULL;
	Oid			save_user;
	int			save_sec;

	check_fdw();
	v[0] = CStringGetTextDatum(peer);
	conninfo = first_text(ht_exec_as_owner(&q_peer_conninfo, v, NULL, 1));
	if (conninfo == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", peer)));
	split_conninfo(peer, conninfo, &srv, &um);

	server = server_of_peer(peer);
	if (server != NULL)
		fs = GetForeignServerByName(server, true);

	ht_as_owner_begin(&save_user, &save_sec);
	if (fs == NULL)
	{
		/* new, or dropped by hand: a new one */
		char	   *name = new_server_name(peer);

		ht_sql("CREATE SERVER %s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (%s)",
			   quote_identifier(name), opts_clause(srv));
		ht_sql("CREATE USER MAPPING FOR PUBLIC SERVER %s OPTIONS (%s)",
			   quote_identifier(name), opts_clause(um));
		v[1] = CStringGetTextDatum(name);
		ht_exec(server != NULL ? &q_server_rename : &q_server_add, v, NULL, 0);
		server = name;
	}
	else
	{
		bool		isnull;
		Datum		d;
		char	   *change;

		ht_sql("SELECT s.srvoptions, (SELECT u.umoptions FROM pg_catalog.pg_user_mapping u"
			   " WHERE u.umserver OPERATOR(pg_catalog.=) s.oid"
			   " AND u.umuser OPERATOR(pg_catalog.=) 0::pg_catalog.oid), EXISTS (SELECT"
			   " FROM pg_catalog.pg_user_mapping u WHERE u.umserver OPERATOR(pg_catalog.=) s.oid"
			   " AND u.umuser OPERATOR(pg_catalog.=) 0::pg_catalog.oid)"
			   " FROM pg_catalog.pg_foreign_server s WHERE s.oid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid",
			   fs->serverid);
		{
			List	   *have_srv;
			List	   *have_um;
			bool		has_um;

			d = ht_col(0, 1, &isnull);
			have_srv = stored_opts(d, isnull);
			d = ht_col(0, 2, &isnull);
			have_um = stored_opts(d, isnull);
			has_um = DatumGetBool(ht_col(0, 3, &isnull));
			change = opts_change(have_srv, srv);
			if (change != NULL)
				ht_sql("ALTER SERVER %s OPTIONS (%s)", quote_identifier(server), change);
			if (!has_um)
				ht_sql("CREATE USER MAPPING FOR PUBLIC SERVER %s OPTIONS (%s)",
					   quote_identifier(server), opts_clause(um));
			else if ((change = opts_change(have_um, um)) != NULL)
				ht_sql("ALTER USER MAPPING FOR PUBLIC SERVER %s OPTIONS (%s)",
					   quote_identifier(server), change);
		}
	}
	ht_as_owner_end(save_user, save_sec);
	return server;
}

/* ---- fragment keys --------------------------------------------------------------- */

/* a unique index of the parent, as a fragment key */
typedef struct UniqueKey
{
	Oid			index;
	Oid			constraint;		/* or InvalidOid: a plain unique index */
	bool		primary;
	bool		nulls_not_distinct;
	char	   *cols;			/* "a, b" (quoted) */
	char	   *under;			/* "a_b": for the constraint names */
	char	   *clause;			/* "PRIMARY KEY (a, b)" */
} UniqueKey;

static bool
parent_has_unique(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	ListCell   *lc;
	bool		found = false;

	foreach(lc, RelationGetIndexList(rel))
	{
		HeapTuple	tp = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));

		if (!HeapTupleIsValid(tp))
			elog(ERROR, "hashtree: cache lookup failed for index %u", lfirst_oid(lc));
		found |= ((Form_pg_index) GETSTRUCT(tp))->indisunique;
		ReleaseSysCache(tp);
	}
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * The unique constraints the fragments of a table keep, if they do: none
 * when the parent has unique indexes (then they are the parent's)
 */
static List *
recorded_keys(Oid relid)
{
	Datum		v[1] = {ObjectIdGetDatum(relid)};
	bool		isnull;
	Datum		d;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	List	   *out = NIL;
	Oid			registry = get_relname_relid("frag_table", ht_schema_oid());

	/* (a database still at 0.1, whose registry has no such column: none) */
	if (!OidIsValid(registry) || get_attnum(registry, "fragment_keys") == InvalidAttrNumber)
		return NIL;
	/* the parent has its keys again (given back by its owner): they are its */
	if (parent_has_unique(relid))
		return NIL;
	if (ht_exec(&q_keys_get, v, NULL, 1) == 0)
		return NIL;
	d = ht_col(0, 1, &isnull);
	if (isnull)
		return NIL;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		out = lappend(out, TextDatumGetCString(elems[i]));
	return out;
}

void
ht_frag_add_fragment_keys(Oid relid, const char *qtarget)
{
	List	   *keys = recorded_keys(relid);
	ListCell   *lc;

	/* (unnamed: named after the target, renamed with it) */
	foreach(lc, keys)
		ht_sql("ALTER TABLE %s ADD %s", qtarget, (char *) lfirst(lc));
}

/*
 * The parent's unique indexes; ERROR for one that cannot become a
 * constraint of each fragment (and of a table on a peer)
 */
static List *
parent_unique(Relation parent)
{
	List	   *out = NIL;
	ListCell   *lc;
	TupleDesc	td = RelationGetDescr(parent);

	foreach(lc, RelationGetIndexList(parent))
	{
		Oid			ioid = lfirst_oid(lc);
		Relation	irel = index_open(ioid, AccessShareLock);
		Form_pg_index ix = irel->rd_index;
		UniqueKey  *u;
		StringInfoData cols;
		StringInfoData under;
		bool		ok;
		bool		isnull;
		oidvector  *indclass;

		if (!ix->indisunique)
		{
			index_close(irel, AccessShareLock);
			continue;
		}
		indclass = (oidvector *) DatumGetPointer(SysCacheGetAttr(INDEXRELID, irel->rd_indextuple,
																 Anum_pg_index_indclass, &isnull));
		ok = irel->rd_rel->relam == BTREE_AM_OID && ix->indnatts == ix->indnkeyatts &&
			RelationGetIndexExpressions(irel) == NIL && RelationGetIndexPredicate(irel) == NIL;
		initStringInfo(&cols);
		initStringInfo(&under);
		for (int i = 0; ok && i < ix->indnkeyatts; i++)
		{
			Form_pg_attribute a;

			if (ix->indkey.values[i] <= 0)
			{
				ok = false;
				break;
			}
			a = TupleDescAttr(td, ix->indkey.values[i] - 1);
			if (indclass->values[i] != GetDefaultOpClass(a->atttypid, BTREE_AM_OID) ||
				irel->rd_indcollation[i] != a->attcollation || irel->rd_indoption[i] != 0)
				ok = false;
			appendStringInfo(&cols, "%s%s", i ? ", " : "", quote_identifier(NameStr(a->attname)));
			appendStringInfo(&under, "%s%s", i ? "_" : "", NameStr(a->attname));
		}
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("unique index \"%s\" of table \"%s\" cannot be kept by each fragment",
							RelationGetRelationName(irel), RelationGetRelationName(parent)),
					 errdetail("A fragment on another server needs the table's unique indexes "
							   "to be plain B-tree column lists with the columns' default "
							   "operator classes and collations.")));
		u = palloc0(sizeof(UniqueKey));
		u->index = ioid;
		u->constraint = get_index_constraint(ioid);
		u->primary = ix->indisprimary;
		u->nulls_not_distinct = ix->indnullsnotdistinct;
		u->cols = cols.data;
		u->under = under.data;
		u->clause = psprintf("%s%s (%s)", u->primary ? "PRIMARY KEY" : "UNIQUE",
							 u->nulls_not_distinct ? " NULLS NOT DISTINCT" : "", u->cols);
		out = lappend(out, u);
		index_close(irel, AccessShareLock);
	}
	return out;
}

/*
 * The parent's unique indexes become constraints of each (local)
 * fragment, recorded in the registry: one index build per fragment, then
 * the parent's are dropped (with the fragments' indexes attached to them)
 * and the new ones take their place as constraints.
 */
static void
convert_keys(Oid relid, const char *qparent, Oid *frags, int nfrags, List *uniq)
{
	ListCell   *lc;
	Datum	   *clauses = palloc(sizeof(Datum) * Max(list_length(uniq), 1));
	int			n = 0;
	Datum		v[2];
	char	   *qnames = NULL;
	int			quiet;

	for (int f = 0; f < nfrags; f++)
	{
		int			i = 0;

		foreach(lc, uniq)
		{
			UniqueKey  *u = lfirst(lc);

			ht_sql("CREATE UNIQUE INDEX %s ON %s (%s)%s",
				   quote_identifier(psprintf("hashtree_key_%u_%d", frags[f], i++)),
				   ht_rel_qname(frags[f]), u->cols,
				   u->nulls_not_distinct ? " NULLS NOT DISTINCT" : "");
		}
	}
	foreach(lc, uniq)
	{
		UniqueKey  *u = lfirst(lc);

		qnames = psprintf("%s%s\"%s\"", qnames ? qnames : "", qnames ? ", " : "",
						  get_rel_name(u->index));
		if (OidIsValid(u->constraint))
			ht_sql("ALTER TABLE %s DROP CONSTRAINT %s", qparent,
				   quote_identifier(get_constraint_name(u->constraint)));
		else
			ht_sql("DROP INDEX %s", ht_rel_qname(u->index));
		clauses[n++] = CStringGetTextDatum(u->clause);
	}
	/* (PostgreSQL's NOTICE that the index takes the constraint's name is noise here) */
	quiet = NewGUCNestLevel();
	(void) set_config_option("client_min_messages", "warning", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	for (int f = 0; f < nfrags; f++)
	{
		int			i = 0;
		char	   *fname = get_rel_name(frags[f]);
		Oid			nsp = get_rel_namespace(frags[f]);

		foreach(lc, uniq)
		{
			UniqueKey  *u = lfirst(lc);
			char	   *name = ChooseRelationName(fname, u->primary ? NULL : u->under,
												  u->primary ? "pkey" : "key", nsp, true);

			ht_sql("ALTER TABLE %s ADD CONSTRAINT %s %s USING INDEX %s", ht_rel_qname(frags[f]),
				   quote_identifier(name), u->primary ? "PRIMARY KEY" : "UNIQUE",
				   quote_identifier(psprintf("hashtree_key_%u_%d", frags[f], i++)));
		}
	}
	AtEOXact_GUC(true, quiet);
	v[0] = ObjectIdGetDatum(relid);
	v[1] = PointerGetDatum(ht_array_text(clauses, n));
	ht_exec_as_owner(&q_keys_set, v, NULL, 0);
	ereport(NOTICE,
			(errmsg("the unique constraints of table %s (%s) are kept by each fragment from now on",
					qparent, qnames),
			 errdetail("A fragment on another server cannot be a partition of a table with a unique index."),
			 errhint("INSERT … ON CONFLICT with a conflict target on the table, and foreign keys "
					 "referencing it, are no longer possible.  Once every fragment is here again, "
					 "ALTER TABLE … ADD PRIMARY KEY gives the key back to the table without a build.")));
}

/* ---- digests ---------------------------------------------------------------------- */

/* rows and the sum of their entry digests, E(row key, row hash) */
typedef struct Digest
{
	int64		n;
	HtSum		sum;
} Digest;

static void
digest_add(HtRelEnc *enc, TupleDesc desc, HeapTuple tup, Digest *d)
{
	bytea	   *key = ht_row_key(enc, desc, tup);
	bytea	   *hash = ht_row_hash(enc, desc, tup);
	HtSum		e;

	ht_entry_digest(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), VARDATA_ANY(hash),
					VARSIZE_ANY_EXHDR(hash), &e);
	ht_sum_add(&d->sum, &e);
	d->n++;
}

static char *
digest_hex(Digest *d)
{
	uint8		b[HT_DIGEST_LEN];
	StringInfoData buf;

	if (ht_sum_is_zero(&d->sum))
		return "0";
	ht_sum_to_bytes(&d->sum, b);
	initStringInfo(&buf);
	for (int i = 0; i < HT_DIGEST_LEN; i++)
		appendStringInfo(&buf, "%02x", b[i]);
	return buf.data;
}

/*
 * The digest of a table on a peer, by the peer (qremote: its qualified
 * name), of its rows r that satisfy where (NULL: all), with parameters
 */
static void
remote_digest(HtPeer *p, const char *qremote, const char *where, int nparams,
			  const char *const *params, Digest *d)
{
	char	   *lit = quote_literal_cstr(qremote);
	HtRemoteResult *res;
	char	   *n;
	char	   *hex;

	res = ht_peer_query(p, psprintf("SELECT pg_catalog.count(*),"
									" pg_catalog.encode(hashtree._entry_sum("
									"hashtree.row_key(%s::pg_catalog.regclass, r),"
									" hashtree.row_hash(%s::pg_catalog.regclass, r)), 'hex')"
									" FROM %s r%s%s", lit, lit, qremote,
									where ? " WHERE " : "", where ? where : ""),
						nparams, params, false, 2);
	if (res->nrows != 1 || (n = ht_remote_text(res, 0, 0)) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from peer \"%s\": no digest", ht_peer_name(p))));
	d->n = pg_strtoint64(n);
	ht_sum_zero(&d->sum);
	hex = ht_remote_text(res, 0, 1);
	if (hex != NULL)
	{
		uint8		b[HT_DIGEST_LEN];

		if (strlen(hex) != 2 * HT_DIGEST_LEN ||
			hex_decode(hex, 2 * HT_DIGEST_LEN, (char *) b) != HT_DIGEST_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unexpected answer from peer \"%s\": a digest of %d characters",
							ht_peer_name(p), (int) strlen(hex))));
		ht_sum_from_bytes(&d->sum, b);
	}
}

/* ---- rows in transit ---------------------------------------------------------------- */

/* row literals, as one array literal */
typedef struct Batch
{
	StringInfoData buf;
	int			n;
} Batch;

static void
batch_add(Batch *b, const char *lit)
{
	appendStringInfoChar(&b->buf, b->n ? ',' : '{');
	appendStringInfoChar(&b->buf, '"');
	for (const char *p = lit; *p; p++)
	{
		if (*p == '"' || *p == '\\')
			appendStringInfoChar(&b->buf, '\\');
		appendStringInfoChar(&b->buf, *p);
	}
	appendStringInfoChar(&b->buf, '"');
	b->n++;
}

static bool
batch_full(Batch *b)
{
	return b->n >= BATCH_ROWS || b->buf.len >= BATCH_BYTES;
}

/* where rows go: a table here (prepared INSERT) or on a peer */
typedef struct Sink
{
	HtPeer	   *peer;			/* NULL: here */
	char	   *sql;			/* INSERT … unnest($1::<row type>[]) */
	SPIPlanPtr	plan;			/* here */
	bool		pending;		/* peer: an INSERT sent, its result not read */
} Sink;

static void
sink_write(Sink *s, Batch *b)
{
	if (b->n == 0)
		return;
	appendStringInfoChar(&b->buf, '}');
	if (s->peer != NULL)
	{
		const char *params[1] = {b->buf.data};

		/* the peer inserts one batch while we read the next */
		if (s->pending)
			(void) ht_peer_receive(s->peer, 0);
		ht_peer_send(s->peer, s->sql, 1, params, false);
		s->pending = true;
	}
	else
	{
		Datum		v[1] = {CStringGetTextDatum(b->buf.data)};
		int			pin = ht_pin_begin();
		int			rc = SPI_execute_plan(s->plan, v, NULL, false, 0);

		ht_pin_end(pin);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "hashtree: the insert of a batch failed (%s)", SPI_result_code_string(rc));
	}
	resetStringInfo(&b->buf);
	b->n = 0;
}

static void
sink_finish(Sink *s)
{
	if (s->peer != NULL && s->pending)
		(void) ht_peer_receive(s->peer, 0);
	s->pending = false;
}

/*
 * I/O settings pinned while rows are turned into text and back, the same as
 * a peer session's (remote.c): values read back equal on either side.
 */
static int
io_begin(void)
{
	int			nest = NewGUCNestLevel();

	(void) set_config_option("DateStyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("IntervalStyle", "postgres", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("extra_float_digits", "3", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("TimeZone", "UTC", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("lc_monetary", "C", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

/*
 * The keys a capture log qlog holds, distinct, as one array literal per key
 * column (text under io_begin's settings), for the statements that take
 * them as $1..$nkeys; *unnest gets "$1::type[], ..." to unnest them
 */
static char **
logged_key_arrays(int nkeys, char **keyname, Oid *keytype, const char *keylist,
				  const char *qlog, StringInfo unnest)
{
	StringInfoData sel;
	char	  **arrays = palloc(sizeof(char *) * nkeys);
	int			io;
	bool		isnull;

	initStringInfo(&sel);
	initStringInfo(unnest);
	appendStringInfoString(&sel, "SELECT ");
	for (int i = 0; i < nkeys; i++)
	{
		appendStringInfo(&sel, "%spg_catalog.array_agg(l.%s)::pg_catalog.text", i ? ", " : "",
						 quote_identifier(keyname[i]));
		appendStringInfo(unnest, "%s$%d::%s[]", i ? ", " : "", i + 1,
						 format_type_extended(keytype[i], -1, FORMAT_TYPE_FORCE_QUALIFY));
	}
	appendStringInfo(&sel, " FROM (SELECT DISTINCT %s FROM %s) l", keylist, qlog);
	io = io_begin();
	ht_sql("%s", sel.data);
	for (int i = 0; i < nkeys; i++)
		arrays[i] = TextDatumGetCString(ht_col(0, i + 1, &isnull));
	AtEOXact_GUC(true, io);
	return arrays;
}

/*
 * Scan a table here: its digest, and (sink not NULL) its rows sent to the
 * sink as row literals.
 */
static void
scan_local(Oid relid, Digest *d, Sink *sink)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	HtRelEnc   *enc = ht_relenc_build(rel, ht_rel_key_cols(rel));
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	TableScanDesc scan = table_beginscan(rel, snap, 0, NULL);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "hashtree move row",
												 ALLOCSET_DEFAULT_SIZES);
	FmgrInfo	recout;
	Batch		b;

	fmgr_info(F_RECORD_OUT, &recout);
	initStringInfo(&b.buf);
	b.n = 0;
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		bool		shouldfree;
		HeapTuple	tup = ExecFetchSlotHeapTuple(slot, false, &shouldfree);

		CHECK_FOR_INTERRUPTS();
		digest_add(enc, desc, tup, d);
		if (sink != NULL)
			batch_add(&b, OutputFunctionCall(&recout, heap_copy_tuple_as_datum(tup, desc)));
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
		if (sink != NULL && batch_full(&b))
			sink_write(sink, &b);
	}
	if (sink != NULL)
		sink_write(sink, &b);
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	UnregisterSnapshot(snap);
	MemoryContextDelete(rowcxt);
	table_close(rel, NoLock);
}

/* rows of a table on a peer (in its REPEATABLE READ transaction) into the sink */
static void
scan_remote(HtPeer *p, const char *qremote, Sink *sink)
{
	Batch		b;

	initStringInfo(&b.buf);
	b.n = 0;
	(void) ht_peer_query(p, psprintf("DECLARE hashtree_move NO SCROLL CURSOR FOR"
									 " SELECT r::pg_catalog.text FROM %s r", qremote),
						 0, NULL, false, 0);
	for (;;)
	{
		HtRemoteResult *res = ht_peer_query(p, psprintf("FETCH FORWARD %d FROM hashtree_move",
														BATCH_ROWS),
											0, NULL, false, 1);

		CHECK_FOR_INTERRUPTS();
		if (res->nrows == 0)
			break;
		for (int r = 0; r < res->nrows; r++)
		{
			char	   *lit = ht_remote_text(res, r, 0);

			if (lit == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("unexpected answer from peer \"%s\": a null row", ht_peer_name(p))));
			batch_add(&b, lit);
		}
		sink_write(sink, &b);
	}
	(void) ht_peer_query(p, "CLOSE hashtree_move", 0, NULL, false, 0);
}

/* ---- the move ---------------------------------------------------------------------- */

typedef struct Move
{
	Oid			relid;
	char	   *nsp;			/* the parent's schema */
	char	   *qparent;
	Oid			owner;			/* the parent's owner */
	int32		frag;
	int32		modulus;
	int32		remainder;
	char	   *keylist;		/* the partition key, quoted: "a, b" */
	Oid		   *frags;			/* every fragment's partition, [k - 1] */
	int32		nfrags;
	Oid			src;			/* the fragment's partition */
	char	   *src_name;
	Place		from;			/* where it is */
	char	   *to_peer;		/* where it goes; NULL: here */
	char	   *to_server;
	char	   *to_remote;		/* its new table on to_peer */
	char	   *work;			/* the new partition's working name here */
	int			nkeys;			/* the partition key */
	char	  **keyname;
	Oid		   *keytype;
	bool		recover;		/* an unfinished online operation to roll back */
	int64		filenode;		/* of the source's table on its peer, when copied */
	int64		copied;			/* online: rows the worker copied */
	int64		rows;
} Move;

static char *
remote_q(const char *name)
{
	return quote_qualified_identifier(REMOTE_SCHEMA, name);
}

/*
 * This node's identity in the names of its tables on peers (DESIGN §19):
 * hashtree.node_identity, made at CREATE EXTENSION from the system
 * identifier, and made anew (random) by the first fragment operation that
 * finds the server's system identifier or timeline no longer the ones
 * recorded there: a physical copy promoted (a new timeline), a backup
 * restored, pg_upgrade (another system identifier).  So a copy of this
 * node never takes the tables this node keeps on its peers for its own.
 */
static HtQuery q_identity_get = {
	"SELECT node_id, system_identifier OPERATOR(pg_catalog.=) $1"
	" AND timeline OPERATOR(pg_catalog.=) $2 FROM hashtree.node_identity",
	2, {INT8OID, INT8OID}
};
static HtQuery q_identity_new = {
	"INSERT INTO hashtree.node_identity AS i (node_id, system_identifier, timeline)"
	" VALUES ($3, $1, $2) ON CONFLICT (single) DO UPDATE SET node_id = $3,"
	" system_identifier = $1, timeline = $2"
	" WHERE i.system_identifier OPERATOR(pg_catalog.<>) $1 OR i.timeline OPERATOR(pg_catalog.<>) $2",
	3, {INT8OID, INT8OID, INT8OID}
};

/* (read once per transaction) */
static uint64 identity_cached;
static LocalTransactionId identity_lxid = InvalidLocalTransactionId;

static uint64
node_identity(void)
{
	Datum		v[3];
	bool		isnull;
	uint64		id;

	if (identity_lxid == MyProc->lxid && identity_lxid != InvalidLocalTransactionId)
		return identity_cached;
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("fragments on other servers cannot be handled during recovery")));
	v[0] = Int64GetDatum((int64) GetSystemIdentifier());
	v[1] = Int64GetDatum((int64) GetWALInsertionTimeLine());
	if (ht_exec_as_owner(&q_identity_get, v, NULL, 1) != 1 ||
		!DatumGetBool(ht_col(0, 2, &isnull)))
	{
		/* a copy (or the row was lost): an identity of its own */
		if (!pg_strong_random(&id, sizeof(id)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random node identity")));
		v[2] = Int64GetDatum((int64) id);
		if (ht_exec_as_owner(&q_identity_new, v, NULL, 0) > 0)
			ereport(LOG,
					(errmsg("hashtree: this server's system identifier or timeline changed (a copy "
							"promoted or restored): its tables on peers are now named ht_%016"
							INT64_MODIFIER "x_…", id),
					 errdetail("The tables its origin keeps on peers are not this server's to clean up.")));
		/* (another backend may have made it first: its identity it is) */
		if (ht_exec_as_owner(&q_identity_get, v, NULL, 1) != 1 ||
			!DatumGetBool(ht_col(0, 2, &isnull)))
			elog(ERROR, "hashtree: the node identity could not be recorded");
		/* (not cached: a subtransaction that made it may still roll back) */
		return (uint64) DatumGetInt64(ht_col(0, 1, &isnull));
	}
	id = (uint64) DatumGetInt64(ht_col(0, 1, &isnull));
	identity_cached = id;
	identity_lxid = MyProc->lxid;
	return id;
}

/* "ht_<node identity>_<database>_": this node's tables on a peer (needs SPI) */
static char *
node_prefix(void)
{
	return psprintf("ht_%016" INT64_MODIFIER "x_%08x_", node_identity(), MyDatabaseId);
}

static char *
new_remote_name(Move *m)
{
	return psprintf("%s%08x_%d_%" INT64_MODIFIER "x", node_prefix(), m->relid, m->frag,
					(uint64) GetCurrentTimestamp());
}

/* -- cleanup -- */

typedef struct Cleanup
{
	char	   *peer;
	Oid			relid;
	int			dropped;
} Cleanup;

static bool
try_op_lock(Oid relid)
{
	bool		isnull;

	ht_sql("SELECT pg_catalog.pg_try_advisory_xact_lock(%d, %d)", HT_FRAG_LOCK_KEY, (int32) relid);
	return DatumGetBool(ht_col(0, 1, &isnull));
}

/*
 * Does a foreign table here refer to table name of REMOTE_SCHEMA (on any
 * server: the names are unique, prefix and all)?  A statement of its own,
 * so under READ COMMITTED it sees every move committed before it began.
 */
static bool
referenced(const char *name)
{
	return ht_sql("SELECT 1 FROM pg_catalog.pg_foreign_table t"
				  " WHERE %s::pg_catalog.text OPERATOR(pg_catalog.=) ANY (t.ftoptions)"
				  " AND 'schema_name=" REMOTE_SCHEMA "' OPERATOR(pg_catalog.=) ANY (t.ftoptions)",
				  quote_literal_cstr(psprintf("table_name=%s", name))) > 0;
}

/* this node's tables on peer p (their names) */
static HtRemoteResult *
peer_tables(HtPeer *p)
{
	char	   *prefix = node_prefix();
	const char *params[1] = {prefix};

	return ht_peer_query(p, "SELECT c.relname::pg_catalog.text FROM pg_catalog.pg_class c"
						 " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
						 " WHERE n.nspname OPERATOR(pg_catalog.=) '" REMOTE_SCHEMA "'"
						 " AND c.relkind OPERATOR(pg_catalog.=) 'r'"
						 " AND pg_catalog.starts_with(c.relname::pg_catalog.text, $1)"
						 " ORDER BY 1",
						 1, params, false, 1);
}

/* the table (relid) a name of peer_tables belongs to, or InvalidOid */
static Oid
table_of_remote(const char *name)
{
	char	   *prefix = node_prefix();
	unsigned int owner_rel;

	if (name == NULL || strncmp(name, prefix, strlen(prefix)) != 0 ||
		sscanf(name + strlen(prefix), "%8x_", &owner_rel) != 1)
		return InvalidOid;
	return (Oid) owner_rel;
}

/*
 * Drop this node's tables on a peer that belong to table relid (or to a
 * table that no longer exists) and that no foreign table here refers to.
 * The caller holds relid's operation lock; another table's is taken here.
 */
static void
cleanup_peer(void *arg)
{
	Cleanup    *c = (Cleanup *) arg;
	HtPeer	   *p = peer_get(c->peer);
	HtRemoteResult *res = peer_tables(p);

	for (int r = 0; r < res->nrows; r++)
	{
		char	   *name = ht_remote_text(res, r, 0);
		Oid			owner_rel = table_of_remote(name);

		if (!OidIsValid(owner_rel))
			continue;
		if (owner_rel != c->relid &&
			(get_rel_name(owner_rel) != NULL || !try_op_lock(owner_rel)))
			continue;
		if (referenced(name))
			continue;
		(void) ht_peer_query(p, psprintf("DROP TABLE IF EXISTS %s", remote_q(name)),
							 0, NULL, false, 0);
		c->dropped++;
	}
}

/*
 * What moves of table relid (and of dropped tables) left on the peers:
 * every peer with a server is looked at; one that cannot be reached is
 * skipped (NOTICE), its leftovers wait for the next time.
 */
static void
cleanup(Oid relid)
{
	uint64		n = ht_exec_as_owner(&q_servers, NULL, NULL, 0);
	Cleanup    *cs = palloc0(sizeof(Cleanup) * Max(n, 1));
	bool		isnull;

	for (uint64 i = 0; i < n; i++)
	{
		cs[i].peer = TextDatumGetCString(ht_col(i, 1, &isnull));
		cs[i].relid = relid;
	}
	for (uint64 i = 0; i < n; i++)
	{
		ErrorData  *edata = ht_subxact(cleanup_peer, &cs[i]);

		if (edata == NULL)
		{
			if (cs[i].dropped > 0)
				ereport(DEBUG1,
						(errmsg("hashtree: dropped %d leftover tables on peer \"%s\"",
								cs[i].dropped, cs[i].peer)));
			continue;
		}
		if (!ht_peer_lost(edata->sqlerrcode) && edata->sqlerrcode != ERRCODE_UNDEFINED_OBJECT)
			ReThrowError(edata);
		ereport(NOTICE,
				(errmsg("leftovers of fragment moves on peer \"%s\" are not removed now: %s",
						cs[i].peer, edata->message)));
		FreeErrorData(edata);
	}
}

/* -- the launcher's cleanup -- */

/* tables of a peer dropped by one cleanup job at most */
#define CLEANUP_MAX			64

static HtQuery q_cleanup_next = {
	"SELECT f.peer FROM hashtree.frag_server f"
	" JOIN hashtree.peer p ON p.name OPERATOR(pg_catalog.=) f.peer"
	" ORDER BY f.peer OPERATOR(pg_catalog.<=) $1, f.peer LIMIT 1",
	1, {TEXTOID}
};

/* of names (a text[]), those no foreign table here refers to */
static HtQuery q_unreferenced = {
	"SELECT n FROM pg_catalog.unnest($1) n WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_foreign_table t"
	" WHERE ('table_name=' OPERATOR(pg_catalog.||) n) OPERATOR(pg_catalog.=) ANY (t.ftoptions)"
	" AND 'schema_name=" REMOTE_SCHEMA "' OPERATOR(pg_catalog.=) ANY (t.ftoptions))"
	" ORDER BY 1",
	1, {TEXTARRAYOID}
};

char *
ht_frag_cleanup_next(const char *after)
{
	Datum		v[1] = {CStringGetTextDatum(after)};

	return first_text(ht_exec(&q_cleanup_next, v, NULL, 1));
}

typedef struct CleanupJob
{
	const char *peer;
	MemoryContext cxt;			/* the job's: survives its transactions */
	List	   *names;			/* candidates: unreferenced at first sight */
	const char *name;			/* the one at hand */
	bool		dropped;
} CleanupJob;

static void
cleanup_list_fn(void *arg)
{
	CleanupJob *j = (CleanupJob *) arg;
	HtPeer	   *p = peer_get(j->peer);
	HtRemoteResult *res = peer_tables(p);
	Datum	   *names = palloc(sizeof(Datum) * Max(res->nrows, 1));
	int			n = 0;
	uint64		nfree;
	Datum		v[1];

	for (int r = 0; r < res->nrows; r++)
	{
		char	   *name = ht_remote_text(res, r, 0);

		if (OidIsValid(table_of_remote(name)))
			names[n++] = CStringGetTextDatum(name);
	}
	if (n == 0)
		return;
	v[0] = PointerGetDatum(ht_array_text(names, n));
	nfree = ht_exec(&q_unreferenced, v, NULL, CLEANUP_MAX);
	for (uint64 i = 0; i < nfree; i++)
	{
		bool		isnull;
		char	   *name = TextDatumGetCString(ht_col(i, 1, &isnull));
		MemoryContext old = MemoryContextSwitchTo(j->cxt);

		j->names = lappend(j->names, pstrdup(name));
		MemoryContextSwitchTo(old);
	}
}

/*
 * One leftover: the table's operation lock first (a move under way holds
 * it from its start to its commit, its remote part committed before its
 * swap: skipped), then the foreign tables read again by a statement that
 * began after the lock was granted, hence after the commit of any move
 * that held it (DESIGN §19).
 */
static void
cleanup_drop_fn(void *arg)
{
	CleanupJob *j = (CleanupJob *) arg;

	if (IsolationUsesXactSnapshot())
		elog(ERROR, "hashtree: the cleanup of fragment moves needs READ COMMITTED");
	if (!try_op_lock(table_of_remote(j->name)) || referenced(j->name))
		return;
	(void) ht_peer_query(peer_get(j->peer), psprintf("DROP TABLE IF EXISTS %s", remote_q(j->name)),
						 0, NULL, false, 0);
	j->dropped = true;
}

/* fn in a transaction of its own; an error is logged, and false returned */
static bool
cleanup_xact(void (*fn) (void *arg), CleanupJob *j)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		HT_API_BEGIN();
		fn(j);
		HT_API_END();
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg("hashtree: leftovers of fragment moves on peer \"%s\" are not removed now: %s",
						j->peer, edata->message)));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

void
ht_frag_cleanup_job(const char *peer)
{
	CleanupJob	j;
	int			dropped = 0;
	ListCell   *lc;

	/* each statement's snapshot must follow the locks taken before it */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	memset(&j, 0, sizeof(j));
	j.peer = peer;
	j.cxt = AllocSetContextCreate(TopMemoryContext, "hashtree cleanup", ALLOCSET_DEFAULT_SIZES);
	pgstat_report_activity(STATE_RUNNING, "looking for leftovers of fragment moves");
	if (!cleanup_xact(cleanup_list_fn, &j))
		return;
	foreach(lc, j.names)
	{
		j.name = (const char *) lfirst(lc);
		j.dropped = false;
		if (!cleanup_xact(cleanup_drop_fn, &j))
			break;
		if (j.dropped)
			dropped++;
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	ereport(DEBUG1,
			(errmsg("hashtree: cleanup on peer \"%s\": %d tables not referenced here, %d dropped",
					peer, list_length(j.names), dropped)));
	if (dropped > 0)
		ereport(LOG,
				(errmsg("hashtree: dropped %d leftover table%s of fragment moves on peer \"%s\"",
						dropped, dropped == 1 ? "" : "s", peer)));
}

/* -- checks -- */

static void
refuse(Move *m, const char *what, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("a fragment of %s cannot go to another server: %s", m->qparent, what),
			 detail ? errdetail("%s", detail) : 0));
}

/* what a table must be for a fragment to be a foreign table (DESIGN §19) */
static void
check_remote(Move *m, Relation parent)
{
	TupleDesc	td = RelationGetDescr(parent);
	PartitionKey key = RelationGetPartitionKey(parent);
	bool		isnull;

	check_fdw();
	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(td, i);

		if (a->attisdropped)
			continue;
		if (a->attgenerated)
			refuse(m, psprintf("column \"%s\" is generated", NameStr(a->attname)), NULL);
		if (a->atttypid >= FirstNormalObjectId)
			refuse(m, psprintf("column \"%s\" has type %s, which is not built in",
							   NameStr(a->attname), format_type_be(a->atttypid)),
				   "Its input function would run on the peer, as the peer's role.");
	}
	for (int i = 0; i < key->partnatts; i++)
		if (!TupleDescAttr(td, key->partattrs[i] - 1)->attnotnull)
			refuse(m, psprintf("partition key column \"%s\" is not NOT NULL",
							   NameStr(TupleDescAttr(td, key->partattrs[i] - 1)->attname)), NULL);
	ht_sql("SELECT c.conname::pg_catalog.text, c.contype FROM pg_catalog.pg_constraint c"
		   " WHERE c.conrelid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid"
		   " AND c.contype OPERATOR(pg_catalog.=) ANY ('{c,f,x,t}'::pg_catalog.\"char\"[])"
		   " ORDER BY 1 LIMIT 1", m->relid);
	if (SPI_processed > 0)
	{
		char		t = DatumGetChar(ht_col(0, 2, &isnull));

		refuse(m, psprintf("it has %s \"%s\"",
						   t == 'c' ? "CHECK constraint" : t == 'f' ? "foreign key" :
						   t == 'x' ? "exclusion constraint" : "constraint trigger",
						   TextDatumGetCString(ht_col(0, 1, &isnull))),
			   t == 'c' ? "PostgreSQL does not check the constraints of a foreign table." : NULL);
	}
	{
		Oid			save_user;
		int			save_sec;
		uint64		tracked;

		ht_as_owner_begin(&save_user, &save_sec);
		tracked = ht_sql("SELECT 1 FROM hashtree.tracked_table"
						 " WHERE schema_name OPERATOR(pg_catalog.=) %s::pg_catalog.text"
						 " AND table_name OPERATOR(pg_catalog.=) %s::pg_catalog.text",
						 quote_literal_cstr(m->nsp),
						 quote_literal_cstr(RelationGetRelationName(parent)));
		ht_as_owner_end(save_user, save_sec);
		if (tracked > 0)
			refuse(m, "it is tracked", NULL);
	}
}

/* a local source: its own triggers would be lost, its columns must be the parent's */
static void
check_local_source(Move *m, Relation parent)
{
	Relation	src = table_open(m->src, AccessShareLock);
	TupleDesc	pd = RelationGetDescr(parent);
	TupleDesc	sd = RelationGetDescr(src);
	int			j = 0;
	bool		isnull;

	for (int i = 0; i < pd->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(pd, i);
		Form_pg_attribute b = NULL;

		if (a->attisdropped)
			continue;
		while (j < sd->natts && TupleDescAttr(sd, j)->attisdropped)
			j++;
		if (j < sd->natts)
			b = TupleDescAttr(sd, j++);
		if (b == NULL || strcmp(NameStr(a->attname), NameStr(b->attname)) != 0)
			refuse(m, psprintf("the columns of fragment %d are not in the order of the table's",
							   m->frag), NULL);
	}
	table_close(src, AccessShareLock);
	ht_sql("SELECT t.tgname::pg_catalog.text FROM pg_catalog.pg_trigger t"
		   " WHERE t.tgrelid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid AND NOT t.tgisinternal"
		   " AND t.tgparentid OPERATOR(pg_catalog.=) 0::pg_catalog.oid"
		   " AND NOT pg_catalog.starts_with(t.tgname::pg_catalog.text, 'hashtree_'::pg_catalog.text)"
		   " ORDER BY 1 LIMIT 1", m->src);
	if (SPI_processed > 0)
		refuse(m, psprintf("fragment %d has trigger \"%s\" of its own", m->frag,
						   TextDatumGetCString(ht_col(0, 1, &isnull))),
			   "Define the trigger on the table instead.");
}

/* -- targets -- */

/* the CREATE TABLE of the fragment's table on a peer */
static char *
remote_ddl(Move *m, Relation parent, List *keys)
{
	TupleDesc	td = RelationGetDescr(parent);
	StringInfoData buf;
	ListCell   *lc;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfo(&buf, "CREATE TABLE %s (", remote_q(m->to_remote));
	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(td, i);

		if (a->attisdropped)
			continue;
		appendStringInfo(&buf, "%s%s %s", first ? "" : ", ", quote_identifier(NameStr(a->attname)),
						 format_type_extended(a->atttypid, a->atttypmod,
											  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
		if (OidIsValid(a->attcollation) && a->attcollation != get_typcollation(a->atttypid))
		{
			HeapTuple	tp = SearchSysCache1(COLLOID, ObjectIdGetDatum(a->attcollation));
			Form_pg_collation c;

			if (!HeapTupleIsValid(tp))
				elog(ERROR, "hashtree: cache lookup failed for collation %u", a->attcollation);
			c = (Form_pg_collation) GETSTRUCT(tp);
			appendStringInfo(&buf, " COLLATE %s",
							 quote_qualified_identifier(get_namespace_name(c->collnamespace),
														NameStr(c->collname)));
			ReleaseSysCache(tp);
		}
		if (a->attnotnull)
			appendStringInfoString(&buf, " NOT NULL");
		first = false;
	}
	foreach(lc, keys)
		appendStringInfo(&buf, ", %s", (char *) lfirst(lc));
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/* GRANTs on table from to roles other than its owner and skip, as statements on qto */
static List *
grants_of(Oid from, const char *qto, Oid skip)
{
	uint64		n;
	List	   *out = NIL;
	bool		isnull;

	n = ht_sql("SELECT pg_catalog.format('GRANT %%s ON %%s TO %%s%%s', a.privilege_type, %s,"
			   " CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid THEN 'PUBLIC'"
			   " ELSE pg_catalog.quote_ident(r.rolname) END,"
			   " CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)"
			   " FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a"
			   " LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee"
			   " WHERE c.oid OPERATOR(pg_catalog.=) '%u'::pg_catalog.oid"
			   " AND a.grantee OPERATOR(pg_catalog.<>) c.relowner"
			   " AND a.grantee OPERATOR(pg_catalog.<>) '%u'::pg_catalog.oid",
			   quote_literal_cstr(qto), from, skip);
	for (uint64 i = 0; i < n; i++)
		out = lappend(out, TextDatumGetCString(ht_col(i, 1, &isnull)));
	return out;
}

static void
run_all(List *stmts)
{
	ListCell   *lc;

	foreach(lc, stmts)
		ht_sql("%s", (char *) lfirst(lc));
}

/* the new partition here: standalone, LIKE the parent, the parent's owner */
static void
create_local_target(Move *m)
{
	char	   *q = quote_qualified_identifier(m->nsp, m->work);

	ht_sql("CREATE TABLE %s (LIKE %s INCLUDING ALL)", q, m->qparent);
	ht_sql("ALTER TABLE %s OWNER TO %s", q, quote_identifier(GetUserNameFromId(m->owner, false)));
	ht_frag_add_fragment_keys(m->relid, q);
	run_all(grants_of(m->src, q, m->owner));
}

/* -- copy and verify -- */

static void
digest_check(Move *m, Digest *src, Digest *dst)
{
	if (src->n != dst->n || memcmp(&src->sum, &dst->sum, sizeof(HtSum)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the copy of fragment %d of %s differs from its rows", m->frag, m->qparent),
				 errdetail("On %s: " INT64_FORMAT " rows, digest %s; on %s: " INT64_FORMAT
						   " rows, digest %s.", m->from.peer ? m->from.peer : ht_node_name(),
						   src->n, digest_hex(src), m->to_peer ? m->to_peer : ht_node_name(),
						   dst->n, digest_hex(dst)),
				 errhint("A value that does not read back equal on the target server (its "
						 "text form) cannot be moved.")));
}

/* "(alias.k1, alias.k2)": the partition key of a row */
static char *
key_row(Move *m, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '(');
	for (int i = 0; i < m->nkeys; i++)
		appendStringInfo(&buf, "%s%s.%s", i ? ", " : "", alias, quote_identifier(m->keyname[i]));
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

static char *
log_q(Move *m)
{
	return quote_qualified_identifier(m->nsp, psprintf("hashtree_frag_%u_log", m->relid));
}

static char *
work_q(Move *m)
{
	return quote_qualified_identifier(m->nsp, m->work);
}

/* the relfilenode of the fragment's table on its peer (a TRUNCATE changes it) */
static int64
remote_filenode(HtPeer *p, const char *remote)
{
	HtRemoteResult *res;
	char	   *v;

	res = ht_peer_query(p, psprintf("SELECT pg_catalog.pg_relation_filenode(%s::pg_catalog.regclass)",
									quote_literal_cstr(remote_q(remote))),
						0, NULL, false, 1);
	if (res->nrows != 1 || (v = ht_remote_text(res, 0, 0)) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from peer \"%s\": no relfilenode", ht_peer_name(p))));
	return pg_strtoint64(v);
}

/* the insert of row literals into the target here */
static SPIPlanPtr
local_insert(Move *m)
{
	char	   *q = work_q(m);
	Oid			argtype = TEXTOID;
	int			pin = ht_pin_begin();
	SPIPlanPtr	plan = SPI_prepare(psprintf("INSERT INTO %s OVERRIDING SYSTEM VALUE SELECT * FROM pg_catalog.unnest($1::%s[])",
											q, q), 1, &argtype);

	ht_pin_end(pin);
	if (plan == NULL)
		elog(ERROR, "hashtree: cannot prepare the insert into %s", q);
	return plan;
}

static char *
remote_insert(Move *m)
{
	return psprintf("INSERT INTO %s OVERRIDING SYSTEM VALUE SELECT * FROM pg_catalog.unnest($1::%s[])",
					remote_q(m->to_remote), remote_q(m->to_remote));
}

/*
 * Rows of a table here that satisfy where (alias x): their digest, and
 * (sink not NULL) the rows into the sink.  By their key index: the rows of
 * the keys written during an online copy.
 */
static void
local_rows(Oid relid, const char *where, Digest *d, Sink *sink)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	HtRelEnc   *enc = ht_relenc_build(rel, ht_rel_key_cols(rel));
	SPITupleTable *tt;
	uint64		n;
	FmgrInfo	recout;
	Batch		b;

	fmgr_info(F_RECORD_OUT, &recout);
	initStringInfo(&b.buf);
	b.n = 0;
	n = ht_sql("SELECT x FROM ONLY %s x WHERE %s", ht_rel_qname(relid), where);
	tt = SPI_tuptable;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		row = SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull);
		HeapTupleHeader th = DatumGetHeapTupleHeader(row);
		HeapTupleData tup;

		tup.t_len = HeapTupleHeaderGetDatumLength(th);
		ItemPointerSetInvalid(&tup.t_self);
		tup.t_tableOid = relid;
		tup.t_data = th;
		digest_add(enc, desc, &tup, d);
		if (sink != NULL)
		{
			batch_add(&b, OutputFunctionCall(&recout, row));
			if (batch_full(&b))
				sink_write(sink, &b);
		}
	}
	if (sink != NULL)
		sink_write(sink, &b);
	table_close(rel, NoLock);
}

/*
 * Copy the fragment's rows into the target and compare the digests.
 * fresh: the target is new (on a peer, it is created in the same
 * transaction there); else it is emptied first (a copy again after a
 * TRUNCATE of the source).  A source on a peer is read in a REPEATABLE READ
 * transaction there; the relfilenode of its table is kept (m->filenode).
 */
static void
copy_rows(Move *m, Relation parent, List *keys, bool fresh)
{
	HtPeer	   *volatile sp = NULL;
	HtPeer	   *volatile tp = NULL;
	Digest		ds;
	Digest		dt;
	HtUserContext ctx;
	int			io;

	memset(&ds, 0, sizeof(ds));
	memset(&dt, 0, sizeof(dt));
	PG_TRY();
	{
		Sink		sink;

		memset(&sink, 0, sizeof(sink));
		if (m->to_peer != NULL)
		{
			tp = peer_get(m->to_peer);
			if (fresh &&
				ht_peer_query(tp, "SELECT FROM pg_catalog.pg_namespace"
							  " WHERE nspname OPERATOR(pg_catalog.=) '" REMOTE_SCHEMA "'",
							  0, NULL, false, 0)->nrows == 0)
				(void) ht_peer_query(tp, "CREATE SCHEMA IF NOT EXISTS " REMOTE_SCHEMA,
									 0, NULL, false, 0);
			(void) ht_peer_query(tp, "BEGIN", 0, NULL, false, 0);
			/* committed there means durable there: the local commit relies on it */
			(void) ht_peer_query(tp, "SET LOCAL synchronous_commit = on", 0, NULL, false, 0);
			(void) ht_peer_query(tp, fresh ? remote_ddl(m, parent, keys)
								 : psprintf("TRUNCATE %s", remote_q(m->to_remote)),
								 0, NULL, false, 0);
			sink.peer = tp;
			sink.sql = remote_insert(m);
		}
		else
		{
			if (!fresh)
				ht_sql("TRUNCATE %s", work_q(m));
			sink.plan = local_insert(m);
		}
		if (m->from.peer != NULL)
		{
			sp = peer_get(m->from.peer);
			(void) ht_peer_query(sp, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
								 0, NULL, false, 0);
			m->filenode = remote_filenode(sp, m->from.remote);
			remote_digest(sp, remote_q(m->from.remote), NULL, 0, NULL, &ds);
		}

		/* the rows, as the table's owner (types' I/O, the target's indexes) */
		ht_as_table_owner_begin(m->relid, &ctx);
		io = io_begin();
		if (m->from.peer == NULL)
			scan_local(m->src, &ds, &sink);
		else
			scan_remote(sp, remote_q(m->from.remote), &sink);
		sink_finish(&sink);
		AtEOXact_GUC(true, io);
		ht_as_table_owner_end(&ctx);

		if (m->to_peer != NULL)
		{
			remote_digest(tp, remote_q(m->to_remote), NULL, 0, NULL, &dt);
			digest_check(m, &ds, &dt);
			(void) ht_peer_query(tp, "COMMIT", 0, NULL, false, 0);
		}
		else
		{
			CommandCounterIncrement();
			scan_local(get_relname_relid(m->work, get_namespace_oid(m->nsp, false)), &dt, NULL);
			digest_check(m, &ds, &dt);
		}
		if (sp != NULL)
			(void) ht_peer_query(sp, "COMMIT", 0, NULL, false, 0);
		if (sink.plan != NULL)
			SPI_freeplan(sink.plan);
	}
	PG_CATCH();
	{
		/* closing the connections rolls back what is open there */
		if (sp != NULL)
			ht_peer_disconnect(m->from.peer);
		if (tp != NULL)
			ht_peer_disconnect(m->to_peer);
		PG_RE_THROW();
	}
	PG_END_TRY();
	m->rows = ds.n;
}

/*
 * Online, under the swap's locks: the rows of the keys written since the
 * copy are deleted from the target and copied again from the source, and
 * the digests of those keys' rows compared on both sides (the rest was
 * compared after the copy: together, the whole fragment).  A TRUNCATE of
 * the source since the copy (the log's marker here; a new relfilenode on a
 * peer, where no TRUNCATE trigger can be): everything is copied again.
 */
static void
replay(Move *m, Relation parent, List *keys)
{
	char	   *qlog = log_q(m);
	bool		isnull;
	bool		truncated;
	int64		logged;
	int64		deleted = 0;
	char	  **arrays;
	StringInfoData unnest;
	char	   *in_remote;
	Digest		ds;
	Digest		dt;
	HtPeer	   *volatile sp = NULL;
	HtPeer	   *volatile tp = NULL;
	HtUserContext ctx;
	int			io;

	m->rows = m->copied;
	ht_sql("SELECT pg_catalog.bool_or(hashtree_truncated), pg_catalog.count(*) FROM %s", qlog);
	truncated = DatumGetBool(ht_col(0, 1, &isnull)) && !isnull;
	logged = DatumGetInt64(ht_col(0, 2, &isnull));
	if (!truncated && m->from.peer != NULL)
		truncated = remote_filenode(peer_get(m->from.peer), m->from.remote) != m->filenode;
	if (truncated)
	{
		copy_rows(m, parent, keys, false);
		return;
	}
	if (logged == 0)
		return;

	/* the keys written, one array per key column (text under pinned settings) */
	arrays = logged_key_arrays(m->nkeys, m->keyname, m->keytype, m->keylist, qlog, &unnest);
	in_remote = psprintf("%s IN (SELECT * FROM pg_catalog.unnest(%s))", key_row(m, "r"), unnest.data);

	memset(&ds, 0, sizeof(ds));
	memset(&dt, 0, sizeof(dt));
	PG_TRY();
	{
		Sink		sink;
		char	   *in_log = psprintf("%s IN (SELECT %s FROM %s)", key_row(m, "x"), m->keylist, qlog);

		memset(&sink, 0, sizeof(sink));
		ht_as_table_owner_begin(m->relid, &ctx);
		io = io_begin();
		/* out of the target */
		if (m->to_peer != NULL)
		{
			HtRemoteResult *res;

			tp = peer_get(m->to_peer);
			(void) ht_peer_query(tp, "BEGIN", 0, NULL, false, 0);
			(void) ht_peer_query(tp, "SET LOCAL synchronous_commit = on", 0, NULL, false, 0);
			res = ht_peer_query(tp, psprintf("WITH d AS (DELETE FROM %s r WHERE %s RETURNING 1)"
											 " SELECT pg_catalog.count(*) FROM d",
											 remote_q(m->to_remote), in_remote),
								m->nkeys, (const char *const *) arrays, false, 1);
			deleted = pg_strtoint64(ht_remote_text(res, 0, 0));
			sink.peer = tp;
			sink.sql = remote_insert(m);
		}
		else
		{
			ht_sql("WITH d AS (DELETE FROM %s x WHERE %s RETURNING 1) SELECT pg_catalog.count(*) FROM d",
				   work_q(m), in_log);
			deleted = DatumGetInt64(ht_col(0, 1, &isnull));
			sink.plan = local_insert(m);
		}
		/* from the source, with their digest */
		if (m->from.peer != NULL)
		{
			HtRemoteResult *res;
			Batch		b;

			sp = peer_get(m->from.peer);
			(void) ht_peer_query(sp, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
								 0, NULL, false, 0);
			remote_digest(sp, remote_q(m->from.remote), in_remote, m->nkeys,
						  (const char *const *) arrays, &ds);
			res = ht_peer_query(sp, psprintf("SELECT r::pg_catalog.text FROM %s r WHERE %s",
											 remote_q(m->from.remote), in_remote),
								m->nkeys, (const char *const *) arrays, false, 1);
			initStringInfo(&b.buf);
			b.n = 0;
			for (int r = 0; r < res->nrows; r++)
			{
				batch_add(&b, ht_remote_text(res, r, 0));
				if (batch_full(&b))
					sink_write(&sink, &b);
			}
			sink_write(&sink, &b);
			(void) ht_peer_query(sp, "COMMIT", 0, NULL, false, 0);
		}
		else
			local_rows(m->src, in_log, &ds, &sink);
		sink_finish(&sink);
		/* the target's rows of those keys, compared */
		if (m->to_peer != NULL)
		{
			remote_digest(tp, remote_q(m->to_remote), in_remote, m->nkeys,
						  (const char *const *) arrays, &dt);
			digest_check(m, &ds, &dt);
			(void) ht_peer_query(tp, "COMMIT", 0, NULL, false, 0);
		}
		else
		{
			CommandCounterIncrement();
			local_rows(get_relname_relid(m->work, get_namespace_oid(m->nsp, false)), in_log, &dt, NULL);
			digest_check(m, &ds, &dt);
		}
		if (sink.plan != NULL)
			SPI_freeplan(sink.plan);
		AtEOXact_GUC(true, io);
		ht_as_table_owner_end(&ctx);
	}
	PG_CATCH();
	{
		if (sp != NULL)
			ht_peer_disconnect(m->from.peer);
		if (tp != NULL)
			ht_peer_disconnect(m->to_peer);
		PG_RE_THROW();
	}
	PG_END_TRY();
	m->rows = m->copied - deleted + ds.n;
}

/* -- the swap -- */

static void
swap(Move *m)
{
	char	   *qsrc = ht_rel_qname(m->src);
	char	   *qwork = work_q(m);
	Oid			save_user;
	int			save_sec;

	/* the parent first, then the fragment: the order writers use */
	ht_sql("LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE", m->qparent);
	LockRelationOid(m->src, AccessExclusiveLock);
	if (m->to_peer != NULL)
	{
		List	   *grants = grants_of(m->src, qwork, m->owner);

		ht_sql("ALTER TABLE %s DETACH PARTITION %s", m->qparent, qsrc);
		/* the foreign table belongs to the extension's owner: nobody else may point it elsewhere */
		ht_as_owner_begin(&save_user, &save_sec);
		ht_sql("CREATE FOREIGN TABLE %s PARTITION OF %s FOR VALUES WITH (MODULUS %d, REMAINDER %d)"
			   " SERVER %s OPTIONS (schema_name %s, table_name %s)",
			   qwork, m->qparent, m->modulus, m->remainder, quote_identifier(m->to_server),
			   quote_literal_cstr(REMOTE_SCHEMA), quote_literal_cstr(m->to_remote));
		ht_sql("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON %s TO %s", qwork,
			   quote_identifier(GetUserNameFromId(m->owner, false)));
		run_all(grants);
		if (m->from.peer != NULL)
			ht_sql("DROP FOREIGN TABLE %s", qsrc);
		ht_as_owner_end(save_user, save_sec);
		if (m->from.peer == NULL)
			ht_sql("DROP TABLE %s", qsrc);
		ht_as_owner_begin(&save_user, &save_sec);
		ht_sql("ALTER FOREIGN TABLE %s RENAME TO %s", qwork, quote_identifier(m->src_name));
		ht_as_owner_end(save_user, save_sec);
	}
	else
	{
		ht_sql("ALTER TABLE %s DETACH PARTITION %s", m->qparent, qsrc);
		ht_sql("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES WITH (MODULUS %d, REMAINDER %d)",
			   m->qparent, qwork, m->modulus, m->remainder);
		ht_as_owner_begin(&save_user, &save_sec);
		ht_sql("DROP FOREIGN TABLE %s", qsrc);
		ht_as_owner_end(save_user, save_sec);
		ht_sql("ALTER TABLE %s DROP CONSTRAINT hashtree_frag_bound", qwork);
		ht_frag_rename_indexes(m->nsp, m->work, m->src_name);
		ht_sql("ALTER TABLE %s RENAME TO %s", qwork, quote_identifier(m->src_name));
	}
}

/* -- both modes -- */

/* the first fragment to leave: the parent's unique constraints become the fragments' */
static void
convert_fn(void *arg)
{
	Move	   *m = (Move *) arg;
	Relation	parent;
	List	   *uniq;
	ListCell   *lc;
	bool		primary = false;

	/* writers wait while each fragment gets its index (then the parent's go) */
	ht_sql("LOCK TABLE ONLY %s IN SHARE MODE", m->qparent);
	parent = table_open(m->relid, AccessShareLock);
	uniq = parent_unique(parent);
	table_close(parent, NoLock);
	foreach(lc, uniq)
		primary |= ((UniqueKey *) lfirst(lc))->primary;
	if (!primary)
		refuse(m, "it has no primary key", "The rows of a fragment are compared by their key.");
	convert_keys(m->relid, m->qparent, m->frags, m->nfrags, uniq);
}

/* the fragment keys of the target; ERROR on a peer without a primary key */
static List *
target_keys(Move *m)
{
	List	   *keys = recorded_keys(m->relid);
	ListCell   *lc;
	bool		primary = false;

	if (m->to_peer == NULL)
		return keys;
	foreach(lc, keys)
		primary |= strncmp((char *) lfirst(lc), "PRIMARY KEY", 11) == 0;
	if (!primary)
		refuse(m, "it has no primary key", "The rows of a fragment are compared by their key.");
	return keys;
}

/* the target, created (here) or named (on a peer, where the copy creates it) */
static void
make_target(Move *m)
{
	if (m->to_peer != NULL)
	{
		m->to_server = peer_server(m->to_peer);
		m->to_remote = new_remote_name(m);	/* (each attempt its own) */
	}
	else
		create_local_target(m);
}

/* the bound of a target here, so that ATTACH does not scan */
static void
bound_check(Move *m)
{
	HtUserContext ctx;

	/* (the key's hash functions: the owner's) */
	ht_as_table_owner_begin(m->relid, &ctx);
	ht_sql("ALTER TABLE %s ADD CONSTRAINT hashtree_frag_bound CHECK"
		   " (pg_catalog.satisfies_hash_partition('%u'::pg_catalog.oid, %d, %d, %s))",
		   work_q(m), m->relid, m->modulus, m->remainder, m->keylist);
	ht_as_table_owner_end(&ctx);
}

/* block_writes: everything in the caller's transaction (run with lock retries) */
static void
move_block_fn(void *arg)
{
	Move	   *m = (Move *) arg;
	Relation	parent;
	List	   *keys;

	/* writers wait, readers go on */
	ht_sql("LOCK TABLE ONLY %s IN SHARE MODE", m->qparent);
	LockRelationOid(m->src, ShareLock);
	if (m->recover)
		ht_frag_recover(m->relid);
	cleanup(m->relid);
	if (m->to_peer != NULL && parent_has_unique(m->relid))
		convert_fn(m);
	keys = target_keys(m);
	make_target(m);
	parent = table_open(m->relid, AccessShareLock);
	copy_rows(m, parent, keys, true);
	table_close(parent, NoLock);
	if (m->to_peer == NULL)
		bound_check(m);
	swap(m);
}

/* ---- online: the copy runs in a background worker ------------------------------------ */

/* what the worker is told (bgw_extra) */
typedef struct MoveJob
{
	Oid			dboid;
	Oid			userid;
	Oid			relid;
	int32		kind;			/* MOVE_JOB_* */
	int32		frag;			/* move_frag */
	char		node[HT_MAX_PEER_NAME_LEN + 1];	/* "": here */
} MoveJob;

#define MOVE_JOB_MOVE	0		/* move_frag */
#define MOVE_JOB_ADD	1		/* add_frag with fragments elsewhere */
#define MOVE_JOB_DEL	2		/* del_frag with fragments elsewhere */

StaticAssertDecl(sizeof(MoveJob) <= BGW_EXTRALEN, "a move job must fit in bgw_extra");

static HtQuery q_move_begin = {
	"UPDATE hashtree.frag_table SET op = 'move_frag', op_phase = 'preparing', op_sources = $2,"
	" op_helpers = $3, op_error = NULL, op_fragment = $4, op_node = $5, op_remote = NULL,"
	" op_filenode = NULL, op_moved = NULL"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	5, {OIDOID, OIDARRAYOID, OIDARRAYOID, INT4OID, TEXTOID}
};
static HtQuery q_move_prepared = {
	"UPDATE hashtree.frag_table SET op_phase = 'prepared', op_helpers = $2, op_remote = $3,"
	" op_filenode = $4, op_moved = $5"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	5, {OIDOID, OIDARRAYOID, TEXTOID, INT8OID, INT8OID}
};
static HtQuery q_move_error = {
	"UPDATE hashtree.frag_table SET op_error = $2"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	2, {OIDOID, TEXTOID}
};
static HtQuery q_move_read = {
	"SELECT op, op_phase, op_error, op_remote, op_filenode, op_moved FROM hashtree.frag_table"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	1, {OIDOID}
};
static HtQuery q_move_done = {
	"UPDATE hashtree.frag_table SET op = NULL, op_phase = NULL, op_sources = NULL,"
	" op_helpers = NULL, op_error = NULL, op_fragment = NULL, op_node = NULL, op_remote = NULL,"
	" op_filenode = NULL"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	1, {OIDOID}
};

static ArrayType *
oids(Oid a, Oid b)
{
	Datum		d[2] = {ObjectIdGetDatum(a), ObjectIdGetDatum(b)};

	return construct_array(d, OidIsValid(b) ? 2 : 1, OIDOID, sizeof(Oid), true, TYPALIGN_INT);
}

#define CAPTURE_TRIGGER			"hashtree_frag_capture"
#define CAPTURE_TRUNCATE_TRIGGER	"hashtree_frag_capture_truncate"

/*
 * The capture of the keys written to the source during the copy
 * (fragops.c's _frag_capture, which checks the registry): the log, the
 * operation recorded, the triggers by the extension's owner.  A foreign
 * table gets the row trigger only (PostgreSQL allows it no TRUNCATE
 * trigger: the swap compares its table's relfilenode instead).
 */
static void
capture_fn(void *arg)
{
	Move	   *m = (Move *) arg;
	char	   *qlog = log_q(m);
	char	   *qsrc = ht_rel_qname(m->src);
	bool		foreign = m->from.peer != NULL;
	Datum		v[5];
	bool		n[5] = {false, false, false, false, m->to_peer == NULL};
	Oid			save_user;
	int			save_sec;

	ht_sql("CREATE UNLOGGED TABLE %s AS SELECT %s FROM %s WITH NO DATA", qlog, m->keylist, m->qparent);
	ht_sql("ALTER TABLE %s ADD COLUMN hashtree_truncated pg_catalog.bool NOT NULL DEFAULT false", qlog);
	/* the swap reads it as the table's owner; the capture runs as whoever writes the table */
	ht_sql("ALTER TABLE %s OWNER TO %s", qlog, quote_identifier(GetUserNameFromId(m->owner, false)));
	ht_sql("GRANT INSERT ON %s TO PUBLIC", qlog);
	v[0] = ObjectIdGetDatum(m->relid);
	v[1] = PointerGetDatum(oids(m->src, InvalidOid));
	v[2] = PointerGetDatum(oids(get_relname_relid(psprintf("hashtree_frag_%u_log", m->relid),
												  get_namespace_oid(m->nsp, false)), InvalidOid));
	v[3] = Int32GetDatum(m->frag);
	v[4] = m->to_peer ? CStringGetTextDatum(m->to_peer) : (Datum) 0;
	ht_exec_as_owner(&q_move_begin, v, n, 0);
	ht_as_owner_begin(&save_user, &save_sec);
	ht_sql("CREATE TRIGGER " CAPTURE_TRIGGER " AFTER INSERT OR UPDATE OR DELETE ON %s"
		   " FOR EACH ROW EXECUTE FUNCTION hashtree._frag_capture()", qsrc);
	ht_sql("ALTER %s %s ENABLE ALWAYS TRIGGER " CAPTURE_TRIGGER,
		   foreign ? "FOREIGN TABLE" : "TABLE", qsrc);
	if (!foreign)
	{
		ht_sql("CREATE TRIGGER " CAPTURE_TRUNCATE_TRIGGER " AFTER TRUNCATE ON %s"
			   " FOR EACH STATEMENT EXECUTE FUNCTION hashtree._frag_capture()", qsrc);
		ht_sql("ALTER TABLE %s ENABLE ALWAYS TRIGGER " CAPTURE_TRUNCATE_TRIGGER, qsrc);
	}
	ht_as_owner_end(save_user, save_sec);
}

static void move_load(Move *m, Oid relid, int32 frag, char *node, bool caller);
static ErrorData *comp_step(MoveJob *job, int step);

/*
 * One transaction of the worker: 0 rolls back what an earlier operation
 * left and cleans the peers, 1 converts the keys (the first fragment to
 * leave), 2 begins the capture (recorded), 3 copies and compares.  Its
 * error (in the caller's memory context), or NULL.
 */
static ErrorData *
job_step(MoveJob *job, int step)
{
	MemoryContext cxt = CurrentMemoryContext;
	ErrorData  *volatile edata = NULL;

	PG_TRY();
	{
		Move		m;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		HT_API_BEGIN();
		move_load(&m, job->relid, job->frag, job->node[0] ? job->node : NULL, false);
		if (step == 0)
		{
			/* (a new identity, if any, recorded in a transaction of its own) */
			(void) node_identity();
			ht_frag_recover(m.relid);
			cleanup(m.relid);
		}
		else if (step == 1)
		{
			if (m.to_peer != NULL && parent_has_unique(m.relid))
				ht_frag_lock_retry(convert_fn, &m, "move_frag");
		}
		else if (step == 2)
			ht_frag_lock_retry(capture_fn, &m, "move_frag");
		else
		{
			List	   *keys = target_keys(&m);
			Relation	parent;
			Datum		v[5];
			bool		n[5] = {false, false, m.to_peer == NULL, m.from.peer == NULL, false};
			Oid			log = get_relname_relid(psprintf("hashtree_frag_%u_log", m.relid),
												get_namespace_oid(m.nsp, false));

			make_target(&m);
			parent = table_open(m.relid, AccessShareLock);
			copy_rows(&m, parent, keys, true);
			table_close(parent, NoLock);
			if (m.to_peer == NULL)
			{
				bound_check(&m);
				ht_sql("ANALYZE %s", work_q(&m));
			}
			v[0] = ObjectIdGetDatum(m.relid);
			v[1] = PointerGetDatum(oids(log, m.to_peer ? InvalidOid
										: get_relname_relid(m.work, get_namespace_oid(m.nsp, false))));
			v[2] = m.to_peer ? CStringGetTextDatum(m.to_remote) : (Datum) 0;
			v[3] = Int64GetDatum(m.filenode);
			v[4] = Int64GetDatum(m.rows);
			ht_exec_as_owner(&q_move_prepared, v, n, 0);
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

/*
 * The worker of an online move_frag, as the calling role: prepares the
 * move in transactions of its own (job_step); on an error it rolls back
 * what it did and leaves the reason in the registry for the caller.
 */
PGDLLEXPORT void ht_fragremote_job_main(Datum arg);

void
ht_fragremote_job_main(Datum arg)
{
	MoveJob		job;
	ErrorData  *volatile edata = NULL;

	memcpy(&job, MyBgworkerEntry->bgw_extra, sizeof(job));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(job.dboid, job.userid, 0);
	SetConfigOption("search_path", "", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname(job.kind == MOVE_JOB_MOVE ? "hashtree fragment move"
						  : "hashtree fragment copy");

	for (int step = 0; step < 4 && edata == NULL; step++)
		edata = job.kind == MOVE_JOB_MOVE ? job_step(&job, step) : comp_step(&job, step);
	if (edata != NULL)
	{
		Datum		v[2];

		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		HT_API_BEGIN();
		ht_frag_recover(job.relid);
		v[0] = ObjectIdGetDatum(job.relid);
		v[1] = CStringGetTextDatum(edata->message);
		ht_exec_as_owner(&q_move_error, v, NULL, 0);
		HT_API_END();
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	proc_exit(0);
}

/* column col of the first row of SPI_tuptable as a string, or NULL */
static char *
text_or_null(int col)
{
	bool		isnull;
	Datum		d = ht_col(0, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/*
 * Run the worker of job (what: the operation, for messages) and wait for
 * it; ERROR unless it prepared the operation op, whose registry row is
 * then SPI_tuptable's (q_move_read)
 */
static void
run_job(MoveJob *job, const char *what, const char *op_name, const char *qparent)
{
	BackgroundWorker w;
	BackgroundWorkerHandle *handle;
	pid_t		pid;
	Datum		v[1];
	char	   *op;
	char	   *phase;
	char	   *error;

	job->dboid = MyDatabaseId;
	job->userid = GetUserId();
	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	w.bgw_notify_pid = MyProcPid;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "hashtree");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "ht_fragremote_job_main");
	if (job->kind == MOVE_JOB_MOVE)
		snprintf(w.bgw_name, BGW_MAXLEN, "hashtree move of fragment %d of table %u", job->frag,
				 job->relid);
	else
		snprintf(w.bgw_name, BGW_MAXLEN, "hashtree %s copy of table %u", what, job->relid);
	snprintf(w.bgw_type, BGW_MAXLEN, "hashtree fragment move");
	memcpy(w.bgw_extra, job, sizeof(*job));
	if (!RegisterDynamicBackgroundWorker(&w, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no background worker slot for an online %s", what),
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

	v[0] = ObjectIdGetDatum(job->relid);
	if (ht_exec(&q_move_read, v, NULL, 1) != 1)
		elog(ERROR, "hashtree: table %u is no longer registered", job->relid);
	op = first_text(1);
	phase = text_or_null(2);
	error = text_or_null(3);
	if (op == NULL || strcmp(op, op_name) != 0 || phase == NULL || strcmp(phase, "prepared") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the preparation of %s on %s failed: %s", what, qparent,
						error ? error : "the worker ended without a result")));
}

/* run the worker of a move and wait for it; ERROR unless it prepared the move */
static void
prepare_online(Move *m)
{
	MoveJob		job;
	bool		isnull;

	memset(&job, 0, sizeof(job));
	job.kind = MOVE_JOB_MOVE;
	job.relid = m->relid;
	job.frag = m->frag;
	if (m->to_peer != NULL)
		strlcpy(job.node, m->to_peer, sizeof(job.node));
	run_job(&job, "move_frag", "move_frag", m->qparent);
	if (m->to_peer != NULL)
		m->to_remote = TextDatumGetCString(ht_col(0, 4, &isnull));
	m->filenode = DatumGetInt64(ht_col(0, 5, &isnull));
	m->copied = DatumGetInt64(ht_col(0, 6, &isnull));
	if (m->to_peer != NULL)
		m->to_server = server_of_peer(m->to_peer);
}

/* online, under the swap's locks: the writes since the copy, then the swap */
static void
online_swap_fn(void *arg)
{
	Move	   *m = (Move *) arg;
	Relation	parent;
	Datum		v[1] = {ObjectIdGetDatum(m->relid)};

	ht_sql("LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE", m->qparent);
	LockRelationOid(m->src, AccessExclusiveLock);
	parent = table_open(m->relid, AccessShareLock);
	replay(m, parent, target_keys(m));
	table_close(parent, NoLock);
	swap(m);
	ht_sql("DROP TABLE %s", log_q(m));
	ht_exec_as_owner(&q_move_done, v, NULL, 0);
}

/*
 * The online move's worker logs in as the calling role, and copies from a
 * table this transaction must not hold: refused up front otherwise.
 */
static void
check_online(const char *what, const char *qparent, bool held_before)
{
	HeapTuple	tp = SearchSysCache1(AUTHOID, ObjectIdGetDatum(GetUserId()));
	bool		canlogin;

	if (!HeapTupleIsValid(tp))
		elog(ERROR, "hashtree: cache lookup failed for role %u", GetUserId());
	canlogin = ((Form_pg_authid) GETSTRUCT(tp))->rolcanlogin;
	ReleaseSysCache(tp);
	if (!canlogin)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("an online %s needs a role that can log in, and role \"%s\" cannot",
						what, GetUserNameFromId(GetUserId(), false)),
				 errdetail("The copy runs in a background worker that logs in as the calling role."),
				 errhint("Use mode => 'block_writes', or call it as a role with LOGIN.")));
	if (held_before)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("an online %s cannot run in a transaction that has used table %s",
						what, qparent),
				 errdetail("Its copy runs in another session, which would wait for this transaction's locks."),
				 errhint("Commit first, or use mode => 'block_writes'.")));
}

/* ---- add_frag and del_frag online with fragments elsewhere -------------------------------- */

/*
 * A composite: add_frag or del_frag whose sources (the fragment split, or
 * the fragment merged and its buddy) or targets (add_frag's node) are on
 * peers.  Each target is created where its fragment is to be (add_frag:
 * P where P was, N+1 on node; del_frag: the buddy where it was) and filled
 * directly from the sources, each row sent to the target whose bound its
 * key hashes to; online, the keys written meanwhile are captured on the
 * sources and copied again under the swap's locks, as for a move
 * (DESIGN §19).
 */

/* a source or a target of a composite */
typedef struct CompEnd
{
	int32		frag;
	int32		modulus;		/* target: its bound in the new state */
	int32		remainder;
	Oid			rel;			/* source: its partition; target here: its table */
	char	   *name;			/* its name as a fragment */
	char	   *peer;			/* NULL: here */
	char	   *server;
	char	   *remote;			/* its table on the peer */
	char	   *work;			/* target here: its working name */
	int			conn;			/* in Comp.conn; -1: here */
	int64		filenode;		/* source on a peer: of its table, at the copy */
	char	   *sql;			/* target on a peer: the insert of a batch */
	SPIPlanPtr	plan;			/* target here: the insert of a batch */
	Batch		batch;			/* target: rows on their way */
} CompEnd;

/* one connection per peer involved: a source and a target there share it */
typedef struct CompConn
{
	char	   *peer;
	HtPeer	   *p;
	bool		pending;		/* an INSERT sent, its result not read */
} CompConn;

typedef struct Comp
{
	Oid			relid;
	bool		add;
	char	   *nsp;
	char	   *qparent;
	Oid			owner;
	Oid			rowtype;		/* the parent's row type */
	HtLinState	before;
	HtLinState	after;
	int32		iter;
	int32		lock;
	char	   *node;			/* add_frag: where N + 1 goes (NULL: here) */
	Oid		   *frags;
	int32		nfrags;
	int			nsrc;
	CompEnd		src[2];
	int			ntgt;
	CompEnd		tgt[2];
	int			nconn;
	CompConn	conn[4];
	int			nkeys;
	char	  **keyname;
	Oid		   *keytype;
	char	   *keylist;
	bool		remote_target;	/* a target is on a peer */
	PartitionKey pkey;			/* while the parent is open (copy, replay) */
	TupleDesc	pdesc;
	FmgrInfo	recin;
	int64		copied;			/* rows the copy wrote */
	int64		moved;			/* rows that change fragment */
	int64		prep_copied;	/* the same, as the worker left them */
	int64		prep_moved;
} Comp;

static const char *
comp_what(Comp *c)
{
	return c->add ? "add_frag" : "del_frag";
}

/* a Move standing for the composite, for the checks and helpers of the move */
static void
comp_move(Comp *c, int s, Move *m)
{
	memset(m, 0, sizeof(*m));
	m->relid = c->relid;
	m->nsp = c->nsp;
	m->qparent = c->qparent;
	m->owner = c->owner;
	m->frags = c->frags;
	m->nfrags = c->nfrags;
	m->frag = c->src[s].frag;
	m->src = c->src[s].rel;
	m->src_name = c->src[s].name;
	m->nkeys = c->nkeys;
	m->keyname = c->keyname;
	m->keytype = c->keytype;
	m->keylist = c->keylist;
}

static int
comp_conn_of(Comp *c, const char *peer)
{
	if (peer == NULL)
		return -1;
	for (int i = 0; i < c->nconn; i++)
		if (strcmp(c->conn[i].peer, peer) == 0)
			return i;
	c->conn[c->nconn].peer = pstrdup(peer);
	return c->nconn++;
}

/*
 * Fill a composite of table relid from the registry and the catalogs,
 * checking what it needs (caller: the SQL function, which takes the
 * operation lock; else the worker).
 */
static void
comp_load(Comp *c, Oid relid, bool add, char *node, bool caller)
{
	Relation	rel;
	HtFragTable ft;
	PartitionKey key;
	StringInfoData keylist;
	Move		m;

	memset(c, 0, sizeof(*c));
	c->relid = relid;
	c->add = add;
	c->node = (node == NULL || ht_node_is_local(node)) ? NULL : node;
	rel = ht_open_relation_arg(relid, AccessShareLock);
	ht_frag_check_table(rel);
	c->nsp = get_namespace_name(RelationGetNamespace(rel));
	c->qparent = quote_qualified_identifier(c->nsp, RelationGetRelationName(rel));
	c->owner = rel->rd_rel->relowner;
	c->rowtype = rel->rd_rel->reltype;
	if (caller && !try_op_lock(relid))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("another fragment operation is under way on table \"%s\"",
						RelationGetRelationName(rel))));
	if (!ht_frag_lookup(relid, &ft))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not a fragmented table", RelationGetRelationName(rel)),
				 errhint("Make it one with hashtree.frag_init() or hashtree.frag_activate().")));
	if (add && ft.s.n >= HT_MAX_FRAGMENTS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a fragmented table has at most %d fragments", HT_MAX_FRAGMENTS)));
	if (!add && ft.s.n <= 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has a single fragment", RelationGetRelationName(rel)),
				 errhint("del_frag merges the last fragment into another; there must be two.")));
	if (c->node != NULL)
	{
		Oid			save_user;
		int			save_sec;

		ht_as_owner_begin(&save_user, &save_sec);
		ht_peer_check(c->node);
		ht_as_owner_end(save_user, save_sec);
	}
	c->before = ft.s;
	c->frags = ht_frag_layout(rel, &ft.s);
	c->nfrags = ft.s.n;
	if (add)
	{
		c->after = ht_lin_add(&ft.s, &c->iter, &c->lock);
		c->nsrc = 1;
		c->src[0].frag = c->iter;
		c->ntgt = 2;
		c->tgt[0].frag = c->iter;
		c->tgt[1].frag = c->lock;
	}
	else
	{
		c->after = ht_lin_del(&ft.s, &c->iter, &c->lock);
		c->nsrc = 2;
		c->src[0].frag = c->lock;	/* the buddy first: the target takes its place */
		c->src[1].frag = c->iter;
		c->ntgt = 1;
		c->tgt[0].frag = c->lock;
	}
	for (int s = 0; s < c->nsrc; s++)
	{
		CompEnd    *e = &c->src[s];
		Place		pl;

		e->rel = c->frags[e->frag - 1];
		e->name = get_rel_name(e->rel);
		place_of(e->rel, e->frag, &pl);
		e->peer = pl.peer;
		e->server = pl.server;
		e->remote = pl.remote;
		e->conn = comp_conn_of(c, e->peer);
	}
	for (int t = 0; t < c->ntgt; t++)
	{
		CompEnd    *e = &c->tgt[t];

		ht_lin_bound(&c->after, e->frag, &e->modulus, &e->remainder);
		/* P and the buddy stay where they were; N + 1 goes to node */
		e->peer = (add && t == 1) ? c->node : c->src[0].peer;
		e->name = (add && t == 1) ? ht_frag_name(rel, e->frag) : c->src[0].name;
		e->work = psprintf("hashtree_move_%u_%d", relid, e->frag);
		e->conn = comp_conn_of(c, e->peer);
		c->remote_target |= e->peer != NULL;
		/* drop_peer waits for this transaction */
		if (caller && e->peer != NULL)
			peer_share(e->peer);
	}

	key = RelationGetPartitionKey(rel);
	initStringInfo(&keylist);
	c->nkeys = key->partnatts;
	c->keyname = palloc(sizeof(char *) * c->nkeys);
	c->keytype = palloc(sizeof(Oid) * c->nkeys);
	for (int i = 0; i < key->partnatts; i++)
	{
		c->keyname[i] = pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel),
													  key->partattrs[i] - 1)->attname));
		c->keytype[i] = key->parttypid[i];
		appendStringInfo(&keylist, "%s%s", i ? ", " : "", quote_identifier(c->keyname[i]));
	}
	c->keylist = keylist.data;

	comp_move(c, 0, &m);
	if (c->remote_target)
		check_remote(&m, rel);
	for (int s = 0; s < c->nsrc; s++)
		if (c->src[s].peer == NULL)
		{
			/* (rows travel as row literals: columns in the table's order, no own triggers) */
			comp_move(c, s, &m);
			check_local_source(&m, rel);
		}
	ht_frag_check_references(c->relid, c->qparent,
							 "Drop the foreign key, change the fragments, and add it back.");
	table_close(rel, NoLock);
}

/* -- connections -- */

static void
comp_sync(CompConn *cc)
{
	if (cc->pending)
	{
		cc->pending = false;
		(void) ht_peer_receive(cc->p, 0);
	}
}

static HtRemoteResult *
comp_query(Comp *c, int conn, const char *sql, int nparams, const char *const *params, int ncols)
{
	comp_sync(&c->conn[conn]);
	return ht_peer_query(c->conn[conn].p, sql, nparams, params, false, ncols);
}

/*
 * One transaction on each peer involved, REPEATABLE READ (a source there
 * is read with one snapshot, its digest included), durable at its commit
 */
static void
comp_begin(Comp *c, bool fresh)
{
	for (int i = 0; i < c->nconn; i++)
	{
		CompConn   *cc = &c->conn[i];

		cc->p = peer_get(cc->peer);
		cc->pending = false;
		if (fresh &&
			ht_peer_query(cc->p, "SELECT FROM pg_catalog.pg_namespace"
						  " WHERE nspname OPERATOR(pg_catalog.=) '" REMOTE_SCHEMA "'",
						  0, NULL, false, 0)->nrows == 0)
			(void) ht_peer_query(cc->p, "CREATE SCHEMA IF NOT EXISTS " REMOTE_SCHEMA,
								 0, NULL, false, 0);
		(void) ht_peer_query(cc->p, "BEGIN ISOLATION LEVEL REPEATABLE READ", 0, NULL, false, 0);
		(void) ht_peer_query(cc->p, "SET LOCAL synchronous_commit = on", 0, NULL, false, 0);
	}
}

static void
comp_commit(Comp *c)
{
	for (int i = 0; i < c->nconn; i++)
		(void) comp_query(c, i, "COMMIT", 0, NULL, 0);
}

/* after an error: closing the connections rolls back what is open there */
static void
comp_disconnect(Comp *c)
{
	for (int i = 0; i < c->nconn; i++)
		if (c->conn[i].p != NULL)
		{
			ht_peer_disconnect(c->conn[i].peer);
			c->conn[i].p = NULL;
		}
}

/* -- rows -- */

/* the targets' inserts, and their batches emptied */
static void
comp_sinks(Comp *c)
{
	for (int t = 0; t < c->ntgt; t++)
	{
		CompEnd    *e = &c->tgt[t];

		initStringInfo(&e->batch.buf);
		e->batch.n = 0;
		if (e->peer != NULL)
			e->sql = psprintf("INSERT INTO %s OVERRIDING SYSTEM VALUE SELECT * FROM pg_catalog.unnest($1::%s[])",
							  remote_q(e->remote), remote_q(e->remote));
		else
		{
			Move		m;

			comp_move(c, 0, &m);
			m.work = e->work;
			e->plan = local_insert(&m);
		}
	}
}

static void
comp_free_sinks(Comp *c)
{
	for (int t = 0; t < c->ntgt; t++)
		if (c->tgt[t].plan != NULL)
		{
			SPI_freeplan(c->tgt[t].plan);
			c->tgt[t].plan = NULL;
		}
}

/* send target t's batch (to a peer: its result is read before the next statement there) */
static void
comp_flush(Comp *c, int t)
{
	CompEnd    *e = &c->tgt[t];
	Batch	   *b = &e->batch;

	if (b->n == 0)
		return;
	appendStringInfoChar(&b->buf, '}');
	if (e->conn >= 0)
	{
		CompConn   *cc = &c->conn[e->conn];
		const char *params[1] = {b->buf.data};

		comp_sync(cc);
		ht_peer_send(cc->p, e->sql, 1, params, false);
		cc->pending = true;
	}
	else
	{
		Datum		v[1] = {CStringGetTextDatum(b->buf.data)};
		int			pin = ht_pin_begin();
		int			rc = SPI_execute_plan(e->plan, v, NULL, false, 0);

		ht_pin_end(pin);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "hashtree: the insert of a batch failed (%s)", SPI_result_code_string(rc));
	}
	resetStringInfo(&b->buf);
	b->n = 0;
}

static void
comp_flush_all(Comp *c)
{
	for (int t = 0; t < c->ntgt; t++)
		comp_flush(c, t);
	for (int i = 0; i < c->nconn; i++)
		comp_sync(&c->conn[i]);
}

/* the partitioning hash of a row's key (keyatt: the key's columns in desc) */
static uint64
comp_hash(Comp *c, TupleDesc desc, HeapTuple tup, const AttrNumber *keyatt)
{
	Datum		values[PARTITION_MAX_KEYS];
	bool		isnull[PARTITION_MAX_KEYS];

	for (int i = 0; i < c->nkeys; i++)
		values[i] = heap_getattr(tup, keyatt[i], desc, &isnull[i]);
	return compute_partition_hash_value(c->nkeys, c->pkey->partsupfunc, c->pkey->partcollation,
										values, isnull);
}

/* the hash of the key of a row literal of the table's type */
static uint64
comp_hash_literal(Comp *c, const char *lit)
{
	Datum		d = InputFunctionCall(&c->recin, (char *) lit, c->rowtype, -1);
	HeapTupleHeader th = DatumGetHeapTupleHeader(d);
	HeapTupleData tup;

	tup.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tup.t_self);
	tup.t_tableOid = InvalidOid;
	tup.t_data = th;
	return comp_hash(c, c->pdesc, &tup, c->pkey->partattrs);
}

/* a row of source s (its hash, its literal) to the target whose bound it has */
static void
comp_put(Comp *c, int s, uint64 hash, const char *lit)
{
	int32		f = ht_lin_frag(c->after.n, hash);
	int			t;

	for (t = 0; t < c->ntgt; t++)
		if (c->tgt[t].frag == f)
			break;
	if (t == c->ntgt)
		elog(ERROR, "hashtree: a row of fragment %d belongs to fragment %d, not to a target",
			 c->src[s].frag, f);
	batch_add(&c->tgt[t].batch, lit);
	c->copied++;
	if (c->add ? t == 1 : s == 1)
		c->moved++;
	if (batch_full(&c->tgt[t].batch))
		comp_flush(c, t);
}

/* does the row of a literal change fragment (add: now in N + 1; del: was in N)? */
static bool
comp_moving(Comp *c, const char *lit)
{
	uint64		h = comp_hash_literal(c, lit);

	return c->add ? ht_lin_frag(c->after.n, h) == c->lock : ht_lin_frag(c->before.n, h) == c->iter;
}

/* the key's columns in a table here (by name: a fragment may have dropped columns) */
static AttrNumber *
comp_keyatt(Comp *c, Oid relid)
{
	AttrNumber *att = palloc(sizeof(AttrNumber) * c->nkeys);

	for (int i = 0; i < c->nkeys; i++)
	{
		att[i] = get_attnum(relid, c->keyname[i]);
		if (att[i] == InvalidAttrNumber)
			elog(ERROR, "hashtree: column \"%s\" not found in table %u", c->keyname[i], relid);
	}
	return att;
}

/*
 * Rows of source s here (where: NULL, all of them, scanned; else those
 * satisfying it, alias x): their digest, and the rows to the targets
 */
static void
comp_rows_local(Comp *c, int s, const char *where, Digest *d)
{
	Oid			relid = c->src[s].rel;
	Relation	rel = table_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	HtRelEnc   *enc = ht_relenc_build(rel, ht_rel_key_cols(rel));
	AttrNumber *keyatt = comp_keyatt(c, relid);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "hashtree move row",
												 ALLOCSET_DEFAULT_SIZES);
	FmgrInfo	recout;

	fmgr_info(F_RECORD_OUT, &recout);
	if (where == NULL)
	{
		Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
		TableScanDesc scan = table_beginscan(rel, snap, 0, NULL);
		TupleTableSlot *slot = table_slot_create(rel, NULL);

		while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
		{
			MemoryContext old = MemoryContextSwitchTo(rowcxt);
			bool		shouldfree;
			HeapTuple	tup = ExecFetchSlotHeapTuple(slot, false, &shouldfree);
			char	   *lit;

			CHECK_FOR_INTERRUPTS();
			digest_add(enc, desc, tup, d);
			lit = OutputFunctionCall(&recout, heap_copy_tuple_as_datum(tup, desc));
			MemoryContextSwitchTo(old);
			comp_put(c, s, comp_hash(c, desc, tup, keyatt), lit);
			MemoryContextReset(rowcxt);
		}
		ExecDropSingleTupleTableSlot(slot);
		table_endscan(scan);
		UnregisterSnapshot(snap);
	}
	else
	{
		uint64		n = ht_sql("SELECT x FROM ONLY %s x WHERE %s", ht_rel_qname(relid), where);
		SPITupleTable *tt = SPI_tuptable;

		for (uint64 i = 0; i < n; i++)
		{
			bool		isnull;
			Datum		row = SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull);
			HeapTupleHeader th = DatumGetHeapTupleHeader(row);
			HeapTupleData tup;

			tup.t_len = HeapTupleHeaderGetDatumLength(th);
			ItemPointerSetInvalid(&tup.t_self);
			tup.t_tableOid = relid;
			tup.t_data = th;
			digest_add(enc, desc, &tup, d);
			comp_put(c, s, comp_hash(c, desc, &tup, keyatt), OutputFunctionCall(&recout, row));
		}
	}
	MemoryContextDelete(rowcxt);
	table_close(rel, NoLock);
}

/* rows of source s on its peer (a cursor, or those of where with params) to the targets */
static void
comp_rows_remote(Comp *c, int s, const char *where, int nparams, const char *const *params)
{
	CompEnd    *e = &c->src[s];
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "hashtree move rows",
												 ALLOCSET_DEFAULT_SIZES);

	if (where == NULL)
		(void) comp_query(c, e->conn, psprintf("DECLARE hashtree_move NO SCROLL CURSOR FOR"
											   " SELECT r::pg_catalog.text FROM %s r",
											   remote_q(e->remote)), 0, NULL, 0);
	for (;;)
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		HtRemoteResult *res;

		res = where == NULL
			? comp_query(c, e->conn, psprintf("FETCH FORWARD %d FROM hashtree_move", BATCH_ROWS),
						 0, NULL, 1)
			: comp_query(c, e->conn, psprintf("SELECT r::pg_catalog.text FROM %s r WHERE %s",
											  remote_q(e->remote), where), nparams, params, 1);
		CHECK_FOR_INTERRUPTS();
		/* (the rows parsed to hash their keys: freed with the batch) */
		for (int r = 0; r < res->nrows; r++)
		{
			char	   *lit = ht_remote_text(res, r, 0);

			if (lit == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("unexpected answer from peer \"%s\": a null row", e->peer)));
			comp_put(c, s, comp_hash_literal(c, lit), lit);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
		if (where != NULL || res->nrows == 0)
			break;
	}
	if (where == NULL)
		(void) comp_query(c, e->conn, "CLOSE hashtree_move", 0, NULL, 0);
	MemoryContextDelete(rowcxt);
}

static void
digest_plus(Digest *into, Digest *d)
{
	into->n += d->n;
	ht_sum_add(&into->sum, &d->sum);
}

/* the targets' digests (rows of where, alias r on a peer, x here; NULL: all) */
static void
comp_target_digest(Comp *c, const char *in_remote, const char *in_log, int nparams,
				   const char *const *params, Digest *dt)
{
	CommandCounterIncrement();
	for (int t = 0; t < c->ntgt; t++)
	{
		CompEnd    *e = &c->tgt[t];
		Digest		d;

		memset(&d, 0, sizeof(d));
		if (e->peer != NULL)
		{
			comp_sync(&c->conn[e->conn]);
			remote_digest(c->conn[e->conn].p, remote_q(e->remote), in_remote, nparams, params, &d);
		}
		else
		{
			Oid			rel = get_relname_relid(e->work, get_namespace_oid(c->nsp, false));

			if (in_log == NULL)
				scan_local(rel, &d, NULL);
			else
			{
				/* (rows with their digests, routed nowhere) */
				Relation	r = table_open(rel, AccessShareLock);
				HtRelEnc   *enc = ht_relenc_build(r, ht_rel_key_cols(r));
				uint64		n = ht_sql("SELECT x FROM ONLY %s x WHERE %s", ht_rel_qname(rel), in_log);
				SPITupleTable *tt = SPI_tuptable;

				for (uint64 i = 0; i < n; i++)
				{
					bool		isnull;
					HeapTupleHeader th = DatumGetHeapTupleHeader(SPI_getbinval(tt->vals[i], tt->tupdesc,
																				1, &isnull));
					HeapTupleData tup;

					tup.t_len = HeapTupleHeaderGetDatumLength(th);
					ItemPointerSetInvalid(&tup.t_self);
					tup.t_tableOid = rel;
					tup.t_data = th;
					digest_add(enc, RelationGetDescr(r), &tup, &d);
				}
				table_close(r, NoLock);
			}
		}
		digest_plus(dt, &d);
	}
}

static void
comp_digest_check(Comp *c, Digest *src, Digest *dst)
{
	if (src->n != dst->n || memcmp(&src->sum, &dst->sum, sizeof(HtSum)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the copy of %s's fragment%s %d%s differs from their rows", c->qparent,
						c->nsrc > 1 ? "s" : "", c->src[0].frag,
						c->nsrc > 1 ? psprintf(" and %d", c->src[1].frag) : ""),
				 errdetail("Sources: " INT64_FORMAT " rows, digest %s; targets: " INT64_FORMAT
						   " rows, digest %s.", src->n, digest_hex(src), dst->n, digest_hex(dst)),
				 errhint("A value that does not read back equal on the target server (its "
						 "text form) cannot be moved.")));
}

/*
 * Copy the sources' rows into the targets and compare the digests (the
 * sources' sum with the targets' sum).  fresh: the targets are new (on a
 * peer, created here in its transaction); else emptied first.
 */
static void
comp_copy(Comp *c, Relation parent, List *keys, bool fresh)
{
	Digest		ds;
	Digest		dt;
	HtUserContext ctx;
	int			io;

	memset(&ds, 0, sizeof(ds));
	memset(&dt, 0, sizeof(dt));
	c->pkey = RelationGetPartitionKey(parent);
	c->pdesc = RelationGetDescr(parent);
	fmgr_info(F_RECORD_IN, &c->recin);
	c->copied = c->moved = 0;
	PG_TRY();
	{
		comp_begin(c, fresh);
		for (int t = 0; t < c->ntgt; t++)
		{
			CompEnd    *e = &c->tgt[t];

			if (e->peer != NULL)
			{
				Move		m;

				comp_move(c, 0, &m);
				m.to_remote = e->remote;
				(void) comp_query(c, e->conn, fresh ? remote_ddl(&m, parent, keys)
								  : psprintf("TRUNCATE %s", remote_q(e->remote)), 0, NULL, 0);
			}
			else if (!fresh)
				ht_sql("TRUNCATE %s", quote_qualified_identifier(c->nsp, e->work));
		}
		for (int s = 0; s < c->nsrc; s++)
			if (c->src[s].peer != NULL)
			{
				CompEnd    *e = &c->src[s];
				Digest		d;

				memset(&d, 0, sizeof(d));
				e->filenode = remote_filenode(c->conn[e->conn].p, e->remote);
				remote_digest(c->conn[e->conn].p, remote_q(e->remote), NULL, 0, NULL, &d);
				digest_plus(&ds, &d);
			}
		comp_sinks(c);

		/* the rows, as the table's owner (types' I/O, hash functions, the targets' indexes) */
		ht_as_table_owner_begin(c->relid, &ctx);
		io = io_begin();
		for (int s = 0; s < c->nsrc; s++)
		{
			if (c->src[s].peer == NULL)
				comp_rows_local(c, s, NULL, &ds);
			else
				comp_rows_remote(c, s, NULL, 0, NULL);
		}
		comp_flush_all(c);
		AtEOXact_GUC(true, io);
		ht_as_table_owner_end(&ctx);

		comp_target_digest(c, NULL, NULL, 0, NULL, &dt);
		comp_digest_check(c, &ds, &dt);
		comp_commit(c);
		comp_free_sinks(c);
	}
	PG_CATCH();
	{
		comp_disconnect(c);
		PG_RE_THROW();
	}
	PG_END_TRY();
	c->pkey = NULL;
}

/* -- online: capture, prepare, replay, swap -- */

static HtQuery q_comp_begin = {
	"UPDATE hashtree.frag_table SET op = $2, op_phase = 'preparing', op_sources = $3,"
	" op_helpers = $4, op_error = NULL, op_fragment = NULL, op_node = $5, op_remote = NULL,"
	" op_filenode = NULL, op_moved = NULL"
	" WHERE parent::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid",
	5, {OIDOID, TEXTOID, OIDARRAYOID, OIDARRAYOID, TEXTOID}
};

static char *
comp_log_q(Comp *c)
{
	return quote_qualified_identifier(c->nsp, psprintf("hashtree_frag_%u_log", c->relid));
}

/*
 * The capture on every source (fragops.c's _frag_capture, which checks the
 * registry): the log, the operation recorded, the triggers (row and
 * TRUNCATE here, row only on a foreign table).
 */
static void
comp_capture_fn(void *arg)
{
	Comp	   *c = (Comp *) arg;
	char	   *qlog = comp_log_q(c);
	Datum		v[5];
	bool		n[5] = {false, false, false, false, c->node == NULL};
	Oid			save_user;
	int			save_sec;

	ht_sql("CREATE UNLOGGED TABLE %s AS SELECT %s FROM %s WITH NO DATA", qlog, c->keylist, c->qparent);
	ht_sql("ALTER TABLE %s ADD COLUMN hashtree_truncated pg_catalog.bool NOT NULL DEFAULT false", qlog);
	ht_sql("ALTER TABLE %s OWNER TO %s", qlog, quote_identifier(GetUserNameFromId(c->owner, false)));
	ht_sql("GRANT INSERT ON %s TO PUBLIC", qlog);
	v[0] = ObjectIdGetDatum(c->relid);
	v[1] = CStringGetTextDatum(comp_what(c));
	v[2] = PointerGetDatum(oids(c->src[0].rel, c->nsrc > 1 ? c->src[1].rel : InvalidOid));
	v[3] = PointerGetDatum(oids(get_relname_relid(psprintf("hashtree_frag_%u_log", c->relid),
												  get_namespace_oid(c->nsp, false)), InvalidOid));
	v[4] = c->node ? CStringGetTextDatum(c->node) : (Datum) 0;
	ht_exec_as_owner(&q_comp_begin, v, n, 0);
	/*
	 * the triggers' locks first (LOCK TABLE refuses foreign tables): one
	 * held while waiting for the other at most a lock_timeout (retried)
	 */
	for (int s = 0; s < c->nsrc; s++)
		LockRelationOid(c->src[s].rel, ShareRowExclusiveLock);
	ht_as_owner_begin(&save_user, &save_sec);
	for (int s = 0; s < c->nsrc; s++)
	{
		char	   *qsrc = ht_rel_qname(c->src[s].rel);
		bool		foreign = c->src[s].peer != NULL;

		ht_sql("CREATE TRIGGER " CAPTURE_TRIGGER " AFTER INSERT OR UPDATE OR DELETE ON %s"
			   " FOR EACH ROW EXECUTE FUNCTION hashtree._frag_capture()", qsrc);
		ht_sql("ALTER %s %s ENABLE ALWAYS TRIGGER " CAPTURE_TRIGGER,
			   foreign ? "FOREIGN TABLE" : "TABLE", qsrc);
		if (!foreign)
		{
			ht_sql("CREATE TRIGGER " CAPTURE_TRUNCATE_TRIGGER " AFTER TRUNCATE ON %s"
				   " FOR EACH STATEMENT EXECUTE FUNCTION hashtree._frag_capture()", qsrc);
			ht_sql("ALTER TABLE %s ENABLE ALWAYS TRIGGER " CAPTURE_TRUNCATE_TRIGGER, qsrc);
		}
	}
	ht_as_owner_end(save_user, save_sec);
}

/* the first fragment to leave: the parent's unique constraints become the fragments' */
static void
comp_convert_fn(void *arg)
{
	Comp	   *c = (Comp *) arg;
	Move		m;

	comp_move(c, 0, &m);
	convert_fn(&m);
}

/*
 * What the worker leaves the caller in op_remote: the targets' tables on
 * peers ("-" here), then the sources' relfilenodes there (0 here), spaced
 */
static char *
comp_tokens(Comp *c)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int t = 0; t < c->ntgt; t++)
		appendStringInfo(&buf, "%s ", c->tgt[t].peer ? c->tgt[t].remote : "-");
	for (int s = 0; s < c->nsrc; s++)
		appendStringInfo(&buf, INT64_FORMAT " ", c->src[s].peer ? c->src[s].filenode : 0);
	return buf.data;
}

static void
comp_untoken(Comp *c, char *tokens)
{
	char	   *save = NULL;
	char	   *tok = strtok_r(tokens, " ", &save);

	for (int t = 0; t < c->ntgt; t++, tok = strtok_r(NULL, " ", &save))
	{
		if (tok == NULL)
			elog(ERROR, "hashtree: the registry's op_remote is cut short");
		if (c->tgt[t].peer != NULL)
			c->tgt[t].remote = pstrdup(tok);
	}
	for (int s = 0; s < c->nsrc; s++, tok = strtok_r(NULL, " ", &save))
	{
		if (tok == NULL)
			elog(ERROR, "hashtree: the registry's op_remote is cut short");
		c->src[s].filenode = pg_strtoint64(tok);
	}
}

/* the targets here created, on a peer named (the copy creates them there) */
static void
comp_targets(Comp *c)
{
	for (int t = 0; t < c->ntgt; t++)
	{
		CompEnd    *e = &c->tgt[t];

		if (e->peer != NULL)
		{
			e->server = peer_server(e->peer);
			e->remote = psprintf("%s%08x_%d_%" INT64_MODIFIER "x", node_prefix(), c->relid,
								 e->frag, (uint64) GetCurrentTimestamp());
		}
		else
		{
			Move		m;

			comp_move(c, 0, &m);
			m.work = e->work;
			create_local_target(&m);
		}
	}
}

/* the bounds of the targets here, so that ATTACH does not scan */
static void
comp_bound_checks(Comp *c)
{
	for (int t = 0; t < c->ntgt; t++)
		if (c->tgt[t].peer == NULL)
		{
			Move		m;

			comp_move(c, 0, &m);
			m.work = c->tgt[t].work;
			m.modulus = c->tgt[t].modulus;
			m.remainder = c->tgt[t].remainder;
			bound_check(&m);
			ht_sql("ANALYZE %s", quote_qualified_identifier(c->nsp, c->tgt[t].work));
		}
}

/* the fragment keys of the targets; a table without a primary key cannot go to a peer */
static List *
comp_keys(Comp *c)
{
	Move		m;

	comp_move(c, 0, &m);
	m.to_peer = c->remote_target ? "" : NULL;
	return target_keys(&m);
}

/*
 * One transaction of the worker of an online composite: 0 rolls back what
 * an earlier operation left and cleans the peers, 1 converts the keys (the
 * first fragment to leave), 2 begins the capture (recorded), 3 creates the
 * targets, copies and compares.  Its error (in the caller's memory
 * context), or NULL.
 */
static ErrorData *
comp_step(MoveJob *job, int step)
{
	MemoryContext cxt = CurrentMemoryContext;
	ErrorData  *volatile edata = NULL;

	PG_TRY();
	{
		Comp		c;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		HT_API_BEGIN();
		comp_load(&c, job->relid, job->kind == MOVE_JOB_ADD, job->node[0] ? job->node : NULL, false);
		if (step == 0)
		{
			(void) node_identity();
			ht_frag_recover(c.relid);
			cleanup(c.relid);
		}
		else if (step == 1)
		{
			if (c.remote_target && parent_has_unique(c.relid))
				ht_frag_lock_retry(comp_convert_fn, &c, comp_what(&c));
		}
		else if (step == 2)
			ht_frag_lock_retry(comp_capture_fn, &c, comp_what(&c));
		else
		{
			List	   *keys = comp_keys(&c);
			Relation	parent;
			Datum		v[5];
			bool		n[5] = {false, false, false, true, false};
			Oid			helpers[3];
			int			nh = 0;
			Datum		hd[3];

			comp_targets(&c);
			parent = table_open(c.relid, AccessShareLock);
			comp_copy(&c, parent, keys, true);
			table_close(parent, NoLock);
			comp_bound_checks(&c);
			helpers[nh++] = get_relname_relid(psprintf("hashtree_frag_%u_log", c.relid),
											  get_namespace_oid(c.nsp, false));
			for (int t = 0; t < c.ntgt; t++)
				if (c.tgt[t].peer == NULL)
					helpers[nh++] = get_relname_relid(c.tgt[t].work, get_namespace_oid(c.nsp, false));
			for (int i = 0; i < nh; i++)
				hd[i] = ObjectIdGetDatum(helpers[i]);
			v[0] = ObjectIdGetDatum(c.relid);
			v[1] = PointerGetDatum(construct_array(hd, nh, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
			v[2] = CStringGetTextDatum(comp_tokens(&c));
			v[3] = (Datum) 0;
			v[4] = Int64GetDatum(c.moved);
			ht_exec_as_owner(&q_move_prepared, v, n, 0);
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

/*
 * Online, under the swap's locks: the rows of the keys written since the
 * copy are deleted from the targets and copied again from the sources, and
 * the digests of those keys' rows compared (sources' sum, targets' sum).
 * A TRUNCATE of a source since the copy: everything is copied again.
 */
static void
comp_replay(Comp *c, Relation parent, List *keys)
{
	char	   *qlog = comp_log_q(c);
	bool		isnull;
	bool		truncated;
	int64		logged;
	char	  **arrays;
	StringInfoData unnest;
	char	   *in_remote;
	char	   *in_log;
	Digest		ds;
	Digest		dt;
	HtUserContext ctx;
	int			io;

	ht_sql("SELECT pg_catalog.bool_or(hashtree_truncated), pg_catalog.count(*) FROM %s", qlog);
	truncated = DatumGetBool(ht_col(0, 1, &isnull)) && !isnull;
	logged = DatumGetInt64(ht_col(0, 2, &isnull));
	for (int s = 0; s < c->nsrc && !truncated; s++)
		if (c->src[s].peer != NULL)
			truncated = remote_filenode(peer_get(c->src[s].peer), c->src[s].remote) != c->src[s].filenode;
	if (truncated)
	{
		comp_copy(c, parent, keys, false);
		return;
	}
	if (logged == 0)
		return;

	arrays = logged_key_arrays(c->nkeys, c->keyname, c->keytype, c->keylist, qlog, &unnest);
	{
		Move		m;

		comp_move(c, 0, &m);
		in_remote = psprintf("%s IN (SELECT * FROM pg_catalog.unnest(%s))", key_row(&m, "r"),
							 unnest.data);
		in_log = psprintf("%s IN (SELECT %s FROM %s)", key_row(&m, "x"), c->keylist, qlog);
	}

	memset(&ds, 0, sizeof(ds));
	memset(&dt, 0, sizeof(dt));
	c->pkey = RelationGetPartitionKey(parent);
	c->pdesc = RelationGetDescr(parent);
	fmgr_info(F_RECORD_IN, &c->recin);
	PG_TRY();
	{
		int64		moved = c->moved;

		comp_begin(c, false);
		comp_sinks(c);
		ht_as_table_owner_begin(c->relid, &ctx);
		io = io_begin();
		/* out of the targets (rows that had changed fragment: counted out) */
		for (int t = 0; t < c->ntgt; t++)
		{
			CompEnd    *e = &c->tgt[t];

			if (e->peer != NULL)
			{
				HtRemoteResult *res;

				res = comp_query(c, e->conn, psprintf("DELETE FROM %s r WHERE %s RETURNING r::pg_catalog.text",
													  remote_q(e->remote), in_remote),
								 c->nkeys, (const char *const *) arrays, 1);
				for (int r = 0; r < res->nrows; r++)
				{
					moved -= comp_moving(c, ht_remote_text(res, r, 0)) ? 1 : 0;
					c->copied--;
				}
			}
			else
			{
				uint64		n = ht_sql("DELETE FROM ONLY %s x WHERE %s RETURNING x::pg_catalog.text",
									   quote_qualified_identifier(c->nsp, e->work), in_log);

				for (uint64 r = 0; r < n; r++)
				{
					moved -= comp_moving(c, TextDatumGetCString(ht_col(r, 1, &isnull))) ? 1 : 0;
					c->copied--;
				}
			}
		}
		/* from the sources, with their digests */
		c->moved = 0;
		for (int s = 0; s < c->nsrc; s++)
		{
			CompEnd    *e = &c->src[s];

			if (e->peer != NULL)
			{
				Digest		d;

				memset(&d, 0, sizeof(d));
				comp_sync(&c->conn[e->conn]);
				remote_digest(c->conn[e->conn].p, remote_q(e->remote), in_remote, c->nkeys,
							  (const char *const *) arrays, &d);
				digest_plus(&ds, &d);
				comp_rows_remote(c, s, in_remote, c->nkeys, (const char *const *) arrays);
			}
			else
				comp_rows_local(c, s, in_log, &ds);
		}
		comp_flush_all(c);
		c->moved += moved;
		AtEOXact_GUC(true, io);
		ht_as_table_owner_end(&ctx);
		comp_target_digest(c, in_remote, in_log, c->nkeys, (const char *const *) arrays, &dt);
		comp_digest_check(c, &ds, &dt);
		comp_commit(c);
		comp_free_sinks(c);
	}
	PG_CATCH();
	{
		comp_disconnect(c);
		PG_RE_THROW();
	}
	PG_END_TRY();
	c->pkey = NULL;
}

/* under the swap's locks: the writes since the copy, then the partitions exchanged */
static void
comp_swap_fn(void *arg)
{
	Comp	   *c = (Comp *) arg;
	Relation	parent;
	Datum		v[1] = {ObjectIdGetDatum(c->relid)};
	Oid			save_user;
	int			save_sec;
	const char *owner = quote_identifier(GetUserNameFromId(c->owner, false));

	/* the parent first, then the fragments: the order writers use */
	ht_sql("LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE", c->qparent);
	for (int s = 0; s < c->nsrc; s++)
		LockRelationOid(c->src[s].rel, AccessExclusiveLock);
	/* (each try starts from the worker's counts) */
	c->moved = c->prep_moved;
	c->copied = c->prep_copied;
	parent = table_open(c->relid, AccessShareLock);
	comp_replay(c, parent, comp_keys(c));
	table_close(parent, NoLock);

	for (int s = 0; s < c->nsrc; s++)
		ht_sql("ALTER TABLE %s DETACH PARTITION %s", c->qparent, ht_rel_qname(c->src[s].rel));
	for (int t = 0; t < c->ntgt; t++)
	{
		CompEnd    *e = &c->tgt[t];
		char	   *qwork = quote_qualified_identifier(c->nsp, e->work);

		if (e->peer != NULL)
		{
			List	   *grants = grants_of(c->src[0].rel, qwork, c->owner);

			/* the foreign table belongs to the extension's owner (§19) */
			ht_as_owner_begin(&save_user, &save_sec);
			ht_sql("CREATE FOREIGN TABLE %s PARTITION OF %s FOR VALUES WITH (MODULUS %d, REMAINDER %d)"
				   " SERVER %s OPTIONS (schema_name %s, table_name %s)",
				   qwork, c->qparent, e->modulus, e->remainder, quote_identifier(e->server),
				   quote_literal_cstr(REMOTE_SCHEMA), quote_literal_cstr(e->remote));
			ht_sql("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON %s TO %s", qwork, owner);
			run_all(grants);
			ht_as_owner_end(save_user, save_sec);
		}
		else
			ht_sql("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES WITH (MODULUS %d, REMAINDER %d)",
				   c->qparent, qwork, e->modulus, e->remainder);
	}
	for (int s = 0; s < c->nsrc; s++)
	{
		if (c->src[s].peer != NULL)
		{
			/* (its table on the peer: garbage now, for the cleanup) */
			ht_as_owner_begin(&save_user, &save_sec);
			ht_sql("DROP FOREIGN TABLE %s", ht_rel_qname(c->src[s].rel));
			ht_as_owner_end(save_user, save_sec);
		}
		else
			ht_sql("DROP TABLE %s", ht_rel_qname(c->src[s].rel));
	}
	for (int t = 0; t < c->ntgt; t++)
	{
		CompEnd    *e = &c->tgt[t];
		char	   *qwork = quote_qualified_identifier(c->nsp, e->work);

		if (e->peer != NULL)
		{
			ht_as_owner_begin(&save_user, &save_sec);
			ht_sql("ALTER FOREIGN TABLE %s RENAME TO %s", qwork, quote_identifier(e->name));
			ht_as_owner_end(save_user, save_sec);
		}
		else
		{
			ht_sql("ALTER TABLE %s DROP CONSTRAINT hashtree_frag_bound", qwork);
			ht_frag_rename_indexes(c->nsp, e->work, e->name);
			ht_sql("ALTER TABLE %s RENAME TO %s", qwork, quote_identifier(e->name));
		}
	}
	ht_sql("DROP TABLE %s", comp_log_q(c));
	ht_frag_store_state(c->relid, &c->after);
	ht_exec_as_owner(&q_move_done, v, NULL, 0);
}

/* ---- the function ---------------------------------------------------------------------- */

/*
 * Fill a move of fragment frag of table relid to node (NULL: here) from
 * the registry and the catalogs, checking what it needs (caller: the SQL
 * function, which also takes the operation lock; else the worker).
 * Returns with the table open in m (AccessShareLock).
 */
static void
move_load(Move *m, Oid relid, int32 frag, char *node, bool caller)
{
	Relation	rel;
	HtFragTable ft;
	PartitionKey key;
	StringInfoData keylist;

	memset(m, 0, sizeof(*m));
	m->relid = relid;
	m->frag = frag;
	m->to_peer = (node == NULL || ht_node_is_local(node)) ? NULL : node;
	rel = ht_open_relation_arg(relid, AccessShareLock);
	ht_frag_check_table(rel);
	m->nsp = get_namespace_name(RelationGetNamespace(rel));
	m->qparent = quote_qualified_identifier(m->nsp, RelationGetRelationName(rel));
	m->owner = rel->rd_rel->relowner;
	if (caller && !try_op_lock(relid))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("another fragment operation is under way on table \"%s\"",
						RelationGetRelationName(rel))));
	if (!ht_frag_lookup(relid, &ft))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not a fragmented table", RelationGetRelationName(rel)),
				 errhint("Make it one with hashtree.frag_init() or hashtree.frag_activate().")));
	if (m->frag < 1 || m->frag > ft.s.n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("table \"%s\" has fragments 1 to %d, not %d", RelationGetRelationName(rel),
						ft.s.n, m->frag)));
	if (m->to_peer != NULL)
	{
		Oid			save_user;
		int			save_sec;

		ht_as_owner_begin(&save_user, &save_sec);
		ht_peer_check(m->to_peer);
		ht_as_owner_end(save_user, save_sec);
		/* drop_peer waits for this transaction (the worker's caller holds it) */
		if (caller)
			peer_share(m->to_peer);
	}
	m->frags = ht_frag_layout(rel, &ft.s);
	m->nfrags = ft.s.n;
	m->src = m->frags[m->frag - 1];
	m->src_name = get_rel_name(m->src);
	m->recover = ft.op != NULL;
	ht_lin_bound(&ft.s, m->frag, &m->modulus, &m->remainder);
	place_of(m->src, m->frag, &m->from);
	m->work = psprintf("hashtree_move_%u_%d", m->relid, m->frag);

	key = RelationGetPartitionKey(rel);
	initStringInfo(&keylist);
	m->nkeys = key->partnatts;
	m->keyname = palloc(sizeof(char *) * m->nkeys);
	m->keytype = palloc(sizeof(Oid) * m->nkeys);
	for (int i = 0; i < key->partnatts; i++)
	{
		m->keyname[i] = pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel),
													  key->partattrs[i] - 1)->attname));
		m->keytype[i] = key->parttypid[i];
		appendStringInfo(&keylist, "%s%s", i ? ", " : "", quote_identifier(m->keyname[i]));
	}
	m->keylist = keylist.data;
	if (!(m->from.peer == NULL && m->to_peer == NULL) &&
		!(m->from.peer != NULL && m->to_peer != NULL && strcmp(m->from.peer, m->to_peer) == 0))
	{
		if (m->to_peer != NULL)
			check_remote(m, rel);
		if (m->from.peer == NULL)
			check_local_source(m, rel);
		ht_frag_check_references(m->relid, m->qparent,
								 "Drop the foreign key, move the fragment, and add it back.");
	}
	/* (DDL on the table refuses while this backend holds it open) */
	table_close(rel, NoLock);
}

/*
 * hashtree.move_frag(tbl regclass, fragment int, node text,
 *                    mode text DEFAULT 'online') RETURNS bigint
 * Moves fragment `fragment` of tbl to peer `node` (NULL or this node's
 * name: here), from here or from another peer; returns the rows moved.
 * Needs tbl's ownership.  Locks: an advisory transaction lock per table;
 * block_writes: SHARE on tbl and the fragment while the rows are copied;
 * online: SHARE ROW EXCLUSIVE on the fragment for the capture trigger (a
 * worker), then for the swap ACCESS EXCLUSIVE on tbl and the fragment.
 * The first fragment to leave holds SHARE on tbl while each fragment gets
 * its own unique indexes.
 */
PG_FUNCTION_INFO_V1(ht_move_frag);
Datum
ht_move_frag(PG_FUNCTION_ARGS)
{
	char	   *node;
	char	   *mode;
	bool		online;
	bool		held_before;
	Move		m;

	HT_ARG_NOT_NULL(0, "tbl");
	HT_ARG_NOT_NULL(1, "fragment");
	HT_ARG_NOT_NULL(3, "mode");
	node = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	mode = text_to_cstring(PG_GETARG_TEXT_PP(3));
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
				 errmsg("move_frag() must run at isolation level READ COMMITTED")));

	SPI_connect();
	HT_API_BEGIN();
	held_before = OidIsValid(PG_GETARG_OID(0)) &&
		CheckRelationOidLockedByMe(PG_GETARG_OID(0), AccessShareLock, true);
	/* (a new identity, if any, made outside the subtransactions below) */
	(void) node_identity();
	move_load(&m, PG_GETARG_OID(0), PG_GETARG_INT32(1), node, true);
	if ((m.from.peer == NULL && m.to_peer == NULL) ||
		(m.from.peer != NULL && m.to_peer != NULL && strcmp(m.from.peer, m.to_peer) == 0))
		ereport(NOTICE,
				(errmsg("fragment %d of %s is on %s already", m.frag, m.qparent,
						m.to_peer ? psprintf("peer \"%s\"", m.to_peer) : "this node")));
	else if (!online)
		ht_frag_lock_retry(move_block_fn, &m, "move_frag");
	else
	{
		check_online("move_frag", m.qparent, held_before);
		/* the worker may need the table (its keys): this transaction lets it go */
		UnlockRelationOid(m.relid, AccessShareLock);
		prepare_online(&m);
		ht_frag_lock_retry(online_swap_fn, &m, "move_frag");
	}
	HT_API_END();
	SPI_finish();
	PG_RETURN_INT64(m.rows);
}

/* ---- schema changes of a table with fragments elsewhere ----------------------------------- */

/*
 * What an ALTER TABLE of the parent would change in the fragments' columns
 * or constraints (PostgreSQL recurses to a foreign partition, whose table
 * on the peer stays as it is), or NULL.
 */
static const char *
column_change(Node *parsetree)
{
	if (parsetree == NULL)
		return NULL;
	if (IsA(parsetree, RenameStmt))
		return ((RenameStmt *) parsetree)->renameType == OBJECT_COLUMN ? "RENAME COLUMN" : NULL;
	if (!IsA(parsetree, AlterTableCmd))
		return NULL;
	switch (((AlterTableCmd *) parsetree)->subtype)
	{
		case AT_AddColumn:
		case AT_AddColumnRecurse:
			return "ADD COLUMN";
		case AT_DropColumn:
		case AT_DropColumnRecurse:
			return "DROP COLUMN";
		case AT_AlterColumnType:
			return "ALTER COLUMN TYPE";
		case AT_SetNotNull:
		case AT_DropNotNull:
		case AT_CheckNotNull:
			return "SET/DROP NOT NULL";
		case AT_AddConstraint:
		case AT_AddConstraintRecurse:
			return "ADD CONSTRAINT";
		default:
			return NULL;
	}
}

/*
 * hashtree._frag_ddl(relid oid, cmd pg_ddl_command) RETURNS void
 * After an ALTER TABLE (cmd: the collected command) of relid: if relid is
 * a fragmented table with a fragment on a peer, refuses (0A000) a change
 * of the columns or constraints, which would not reach the peers' tables
 * (DESIGN §19).  Called by the event trigger as the extension owner; DDL
 * run by hashtree itself is let through.  Locks: ACCESS SHARE on relid
 * (held by the command already).
 */
PG_FUNCTION_INFO_V1(ht_frag_ddl);
Datum
ht_frag_ddl(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	CollectedCommand *cmd = PG_ARGISNULL(1) ? NULL : (CollectedCommand *) PG_GETARG_POINTER(1);
	const char *volatile what = NULL;
	Oid			remote = InvalidOid;
	HtFragTable ft;
	ListCell   *lc;

	if (ht_api_depth > 0 || cmd == NULL || get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE)
		PG_RETURN_VOID();
	if (cmd->type == SCT_Simple)
		what = column_change(cmd->parsetree);
	else if (cmd->type == SCT_AlterTable)
		foreach(lc, cmd->d.alterTable.subcmds)
		{
			what = column_change(((CollectedATSubcmd *) lfirst(lc))->parsetree);
			if (what != NULL)
				break;
		}
	if (what == NULL)
		PG_RETURN_VOID();
	foreach(lc, find_inheritance_children(relid, AccessShareLock))
		if (get_rel_relkind(lfirst_oid(lc)) == RELKIND_FOREIGN_TABLE)
		{
			remote = lfirst_oid(lc);
			break;
		}
	if (!OidIsValid(remote))
		PG_RETURN_VOID();
	SPI_connect();
	HT_API_BEGIN();
	if (ht_frag_lookup(relid, &ft))
	{
		char	   *server = GetForeignServer(GetForeignTable(remote)->serverid)->servername;
		char	   *peer = peer_of_server(server);

		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("ALTER TABLE %s is not supported on table \"%s\", which has fragments on other servers",
						what, get_rel_name(relid)),
				 errdetail("Fragment table %s is a foreign table on peer \"%s\"; its table there "
						   "would not change.", ht_rel_qname(remote), peer ? peer : server),
				 errhint("Move the fragments here first (hashtree.move_frag(tbl, fragment, NULL)), "
						 "change the table, then move them back.")));
	}
	HT_API_END();
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---- add_frag, del_frag, frag_init with fragments elsewhere ------------------------------ */

/* SELECT hashtree.move_frag(…, 'block_writes'), as the caller (who needs EXECUTE on it) */
static void
spi_move(Oid relid, int32 k, const char *node)
{
	ht_sql("SELECT hashtree.move_frag('%u'::pg_catalog.oid::pg_catalog.regclass, %d, %s,"
		   " 'block_writes')", relid, k, node ? quote_literal_cstr(node) : "NULL");
}

/* the peer of fragment k of a table (NULL: here); needs SPI */
static char *
fragment_peer(Oid relid, int32 k)
{
	HtFragTable ft;
	Relation	rel = table_open(relid, AccessShareLock);
	Oid		   *frags;
	Place		pl;

	if (!ht_frag_lookup(relid, &ft))
		elog(ERROR, "hashtree: table %u is not a fragmented table", relid);
	frags = ht_frag_layout(rel, &ft.s);
	table_close(rel, NoLock);
	place_of(frags[k - 1], k, &pl);
	return pl.peer;
}

bool
ht_frag_remote_involved(FunctionCallInfo fcinfo, bool add)
{
	Oid			relid = PG_GETARG_OID(0);
	HtFragTable ft;
	Relation	rel;
	bool		involved = false;

	if (add && PG_NARGS() > 2 && !PG_ARGISNULL(2) &&
		!ht_node_is_local(text_to_cstring(PG_GETARG_TEXT_PP(2))))
		return true;
	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		return false;			/* (frag_change says what is wrong) */
	SPI_connect();
	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE && ht_frag_lookup(relid, &ft) &&
		(add || ft.s.n > 1))
	{
		Oid		   *frags = ht_frag_layout(rel, &ft.s);
		int32		iter;
		int32		lock;

		if (add)
			(void) ht_lin_add(&ft.s, &iter, &lock);
		else
			(void) ht_lin_del(&ft.s, &iter, &lock);
		involved = get_rel_relkind(frags[iter - 1]) == RELKIND_FOREIGN_TABLE ||
			(!add && get_rel_relkind(frags[lock - 1]) == RELKIND_FOREIGN_TABLE);
	}
	SPI_finish();
	/* (an online composite checks that this transaction had not used the table before) */
	relation_close(rel, AccessShareLock);
	return involved;
}

/*
 * add_frag/del_frag online with fragments elsewhere (the composite above):
 * a worker captures, creates the targets where they go and copies; the
 * swap here.  Returns add_frag's row.
 */
static Datum
comp_online(FunctionCallInfo fcinfo, bool add, char *node)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid = PG_GETARG_OID(0);
	bool		held_before;
	Comp		c;
	MoveJob		job;
	bool		isnull;
	Datum		v[6];
	bool		n[6] = {false, false, false, false, false, false};
	Datum		iter;
	Datum		lock;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	/* it moves rows through the peers as move_frag does: the same right (§11) */
	ht_sql("SELECT pg_catalog.has_function_privilege('hashtree.move_frag(pg_catalog.regclass,"
		   " pg_catalog.int4, pg_catalog.text, pg_catalog.text)'::pg_catalog.regprocedure, 'EXECUTE')");
	if (!DatumGetBool(ht_col(0, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function move_frag"),
				 errdetail("%s with a fragment on a peer moves rows through the peers, as move_frag does.",
						   add ? "add_frag" : "del_frag")));
	held_before = OidIsValid(relid) && CheckRelationOidLockedByMe(relid, AccessShareLock, true);
	comp_load(&c, relid, add, node, true);
	check_online(comp_what(&c), c.qparent, held_before);
	/* the worker may need the table (its keys): this transaction lets it go */
	UnlockRelationOid(relid, AccessShareLock);

	memset(&job, 0, sizeof(job));
	job.kind = add ? MOVE_JOB_ADD : MOVE_JOB_DEL;
	job.relid = relid;
	if (c.node != NULL)
		strlcpy(job.node, c.node, sizeof(job.node));
	run_job(&job, comp_what(&c), comp_what(&c), c.qparent);
	comp_untoken(&c, TextDatumGetCString(ht_col(0, 4, &isnull)));
	c.prep_moved = DatumGetInt64(ht_col(0, 6, &isnull));
	c.prep_copied = 0;
	for (int t = 0; t < c.ntgt; t++)
		if (c.tgt[t].peer != NULL)
			c.tgt[t].server = server_of_peer(c.tgt[t].peer);
	ht_frag_lock_retry(comp_swap_fn, &c, comp_what(&c));
	HT_API_END();
	SPI_finish();

	iter = Int32GetDatum(c.iter);
	lock = Int32GetDatum(c.lock);
	v[0] = Int32GetDatum(c.after.n);
	v[1] = Int32GetDatum(c.after.p);
	v[2] = Int32GetDatum(c.after.l);
	v[3] = PointerGetDatum(construct_array(&iter, 1, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	v[4] = PointerGetDatum(construct_array(&lock, 1, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	v[5] = Int64GetDatum(c.moved);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	return (Datum) 0;
}

/*
 * add_frag and del_frag when a fragment they touch is elsewhere (or the
 * new one goes elsewhere): the fragments they read are moved here, the
 * local operation runs, and the fragments are put back (add_frag: P where
 * it was, N+1 on `node`; del_frag: the buddy where it was).  In mode
 * block_writes, all of it in the caller's transaction: atomic as a whole
 * (DESIGN §19).  Returns add_frag's row.
 */
Datum
ht_frag_change_remote(FunctionCallInfo fcinfo, bool add)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid = PG_GETARG_OID(0);
	char	   *mode = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *node = NULL;
	const char *what = add ? "add_frag" : "del_frag";
	HtFragTable ft;
	Relation	rel;
	int32		iter;
	int32		lock;
	char	   *iter_peer;
	char	   *lock_peer = NULL;
	Datum		v[6];
	bool		n[6];
	MemoryContext outer;

	if (add && PG_NARGS() > 2 && !PG_ARGISNULL(2))
		node = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (node != NULL && ht_node_is_local(node))
		node = NULL;
	if (strcmp(mode, "online") == 0)
		return comp_online(fcinfo, add, node);
	InitMaterializedSRF(fcinfo, 0);
	outer = CurrentMemoryContext;
	SPI_connect();
	HT_API_BEGIN();
	rel = ht_open_relation_arg(relid, AccessShareLock);
	ht_frag_check_table(rel);
	if (!ht_frag_lookup(relid, &ft))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not a fragmented table", RelationGetRelationName(rel)),
				 errhint("Make it one with hashtree.frag_init() or hashtree.frag_activate().")));
	table_close(rel, NoLock);
	if (node != NULL)
	{
		Oid			save_user;
		int			save_sec;

		ht_as_owner_begin(&save_user, &save_sec);
		ht_peer_check(node);
		ht_as_owner_end(save_user, save_sec);
	}
	if (add)
		(void) ht_lin_add(&ft.s, &iter, &lock);
	else
		(void) ht_lin_del(&ft.s, &iter, &lock);
	iter_peer = fragment_peer(relid, iter);
	if (!add)
		lock_peer = fragment_peer(relid, lock);

	/* here */
	if (iter_peer != NULL)
		spi_move(relid, iter, NULL);
	if (lock_peer != NULL)
		spi_move(relid, lock, NULL);
	ht_sql("SELECT n_fragments, next_n_to_split, n_doubles, iter_frags, additional_lock_frags,"
		   " moved_rows FROM hashtree.%s('%u'::pg_catalog.oid::pg_catalog.regclass, 'block_writes')",
		   what, relid);
	for (int i = 0; i < 6; i++)
	{
		Datum		d = ht_col(0, i + 1, &n[i]);

		if (!n[i] && (i == 3 || i == 4))
		{
			/* (the arrays outlive SPI) */
			MemoryContext old = MemoryContextSwitchTo(outer);

			d = PointerGetDatum(DatumGetArrayTypePCopy(d));
			MemoryContextSwitchTo(old);
		}
		v[i] = n[i] ? (Datum) 0 : d;
	}
	/* and back (add_frag: P where it was, N+1 where asked; del_frag: the buddy) */
	if (add)
	{
		if (iter_peer != NULL)
			spi_move(relid, iter, iter_peer);
		if (node != NULL)
			spi_move(relid, lock, node);
	}
	else if (lock_peer != NULL)
		spi_move(relid, lock, lock_peer);
	HT_API_END();
	SPI_finish();
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	return (Datum) 0;
}

/*
 * frag_init(tbl, n, nodes): the fragments, then fragment k on
 * nodes[(k - 1) % length] (NULL or this node's name: here), in the
 * caller's transaction.  The fragments are empty: moving them costs
 * their tables.
 */
Datum
ht_frag_init_nodes(FunctionCallInfo fcinfo)
{
	Oid			relid = PG_GETARG_OID(0);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(2);
	Datum	   *elems;
	bool	   *nulls;
	int			nnodes;
	char	  **nodes;
	int32		n;
	TupleDesc	td;
	Datum		v[3];
	bool		vn[3];

	HT_ARG_NOT_NULL(1, "n_fragments");
	n = PG_GETARG_INT32(1);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("nodes must be a one-dimensional array")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nnodes);
	if (nnodes == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("nodes must name at least one node")));
	nodes = palloc(sizeof(char *) * nnodes);
	for (int i = 0; i < nnodes; i++)
	{
		nodes[i] = nulls[i] ? NULL : TextDatumGetCString(elems[i]);
		if (nodes[i] != NULL && ht_node_is_local(nodes[i]))
			nodes[i] = NULL;
	}
	if (get_call_result_type(fcinfo, NULL, &td) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "hashtree: return type must be a row type");

	SPI_connect();
	HT_API_BEGIN();
	/* every peer first: nothing is created for a name that is wrong */
	for (int i = 0; i < nnodes; i++)
		if (nodes[i] != NULL)
		{
			Oid			save_user;
			int			save_sec;

			ht_as_owner_begin(&save_user, &save_sec);
			ht_peer_check(nodes[i]);
			ht_as_owner_end(save_user, save_sec);
		}
	ht_sql("SELECT n_fragments, next_n_to_split, n_doubles"
		   " FROM hashtree.frag_init('%u'::pg_catalog.oid::pg_catalog.regclass, %d)", relid, n);
	for (int i = 0; i < 3; i++)
		v[i] = ht_col(0, i + 1, &vn[i]);
	for (int32 k = 1; k <= n; k++)
		if (nodes[(k - 1) % nnodes] != NULL)
			spi_move(relid, k, nodes[(k - 1) % nnodes]);
	HT_API_END();
	SPI_finish();
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(td), v, vn));
}

static const HtFragRemoteHooks fragremote_hooks = {
	.add_fragment_keys = ht_frag_add_fragment_keys,
	.require_local = ht_frag_require_local,
	.remote_involved = ht_frag_remote_involved,
	.change_remote = ht_frag_change_remote,
	.init_nodes = ht_frag_init_nodes,
};

void
ht_fragremote_init(void)
{
	ht_frag_remote = &fragremote_hooks;
}
