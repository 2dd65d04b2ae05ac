/*-------------------------------------------------------------------------
 *
 * frag.h
 *	  Fragmented tables: hash-partitioned tables whose partitions follow
 *	  linear hashing (linhash.h), registered in hashtree.frag_table.
 *
 * frag.c holds the registry, the layout check, the lookups
 * (key_to_frag_number, match_spec_to_frag_numbers) and frag_init /
 * frag_activate; fragops.c (fragops.h) moves rows (add_frag, del_frag).
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_FRAG_H
#define HT_FRAG_H

#include "postgres.h"

#include "fmgr.h"

#include "utils/relcache.h"

#include "linhash.h"

/* a row of hashtree.frag_table */
typedef struct HtFragTable
{
	Oid			relid;
	HtLinState	s;
	char	   *op;				/* an online add_frag/del_frag under way, or NULL */
	char	   *op_phase;		/* preparing, prepared */
	char	   *op_error;		/* why the last preparation failed, or NULL */
	int64		op_moved;		/* rows that changed fragment, counted by the copy */
	int			nsources;		/* fragments carrying capture triggers */
	Oid		   *sources;
	int			nhelpers;		/* tables created for the operation */
	Oid		   *helpers;
} HtFragTable;

/* the registry row of a table (needs SPI); false if it is not registered */
extern bool ht_frag_lookup(Oid relid, HtFragTable *ft);

/* write the state of a registered table, clearing any operation (needs SPI) */
extern void ht_frag_store_state(Oid relid, const HtLinState *s);

/*
 * ERROR unless rel is a table partitioned by hash on plain columns that
 * the current user owns
 */
extern void ht_frag_check_table(Relation rel);

/*
 * The relations of fragments 1..N (palloc'd array, [k - 1] = fragment k);
 * ERROR when the partitions are not exactly those of state s.
 */
extern Oid *ht_frag_layout(Relation parent, const HtLinState *s);

/* the name of fragment k of a table: <table>_frag<k>, cut to fit */
extern char *ht_frag_name(Relation parent, int32 k);

/*
 * Rename the indexes of table nsp.from whose names start with "from" to
 * start with "to" instead (names taken are left alone).  Needs SPI.
 */
extern void ht_frag_rename_indexes(const char *nsp, const char *from, const char *to);

/*
 * ERROR (with hint) if a foreign key references table relid or one of its
 * fragments: DETACH would fail.  Fragments read from pg_inherits
 * (pg_partition_tree() would lock every fragment until commit).  SPI.
 */
extern void ht_frag_check_references(Oid relid, const char *qparent, const char *hint);

/* GRANT on table qto what table from grants to roles other than its owner (SPI) */
extern void ht_copy_grants(Oid from, const char *qto);

/* the parent's name and a fragment's, quoted and qualified */
extern char *ht_rel_qname(Oid relid);

/*
 * What fragremote.c, above frag.c and fragops.c, does for them where a
 * fragment is on another server: set by ht_fragremote_init() when the
 * library is loaded (_PG_init), so that these files call it without
 * including it (no include cycle).
 */
typedef struct HtFragRemoteHooks
{
	/* give a new local fragment the unique constraints kept per fragment */
	void		(*add_fragment_keys) (Oid relid, const char *qtarget);
	/* ERROR unless fragment k (partition part) is here */
	void		(*require_local) (Oid part, int32 k, const char *what);
	/* add_frag/del_frag touching a fragment on a peer: done there */
	bool		(*remote_involved) (FunctionCallInfo fcinfo, bool add);
	Datum		(*change_remote) (FunctionCallInfo fcinfo, bool add);
	/* frag_init(tbl, n, nodes) */
	Datum		(*init_nodes) (FunctionCallInfo fcinfo);
} HtFragRemoteHooks;

extern const HtFragRemoteHooks *ht_frag_remote;

/* pg_try_advisory_xact_lock(HT_FRAG_LOCK_KEY, relid): one operation per table */
#define HT_FRAG_LOCK_KEY 1213464577

#endif							/* HT_FRAG_H */
