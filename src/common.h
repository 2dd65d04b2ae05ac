/*-------------------------------------------------------------------------
 *
 * common.h
 *	  Definitions shared by every subsystem of the hashtree extension:
 *	  configuration (GUCs), the partition count, and the guard that tells
 *	  the extension's own writes apart from foreign writes to its tables.
 *
 * See docs/DESIGN.md for the storage layout and the invariants.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_COMMON_H
#define HT_COMMON_H

#include "postgres.h"

#include "fmgr.h"
#include "storage/lockdefs.h"
#include "utils/relcache.h"

/* default_version of hashtree.control, passed by the Makefile */
#ifndef HT_EXTENSION_VERSION
#error "HT_EXTENSION_VERSION comes from the Makefile (hashtree.control)"
#endif

/* limits on user input */
#define HT_MAX_PARTITIONS		1024
#define HT_MAX_KEY_LEN			(1024 * 1024)	/* 1 MB */
#define HT_MAX_HASH_LEN			64
#define HT_MAX_PREFIX_LEN		512
#define HT_MAX_PEER_NAME_LEN	63

/* GUC variables (hashtree.c) */
extern int	ht_guc_partitions;
extern int	ht_guc_pack_target;		/* entries per pack a re-hash aims at */
extern char *ht_guc_node_name;
extern int	ht_guc_connect_timeout;		/* ms */
extern int	ht_guc_statement_timeout;	/* ms */
extern int	ht_guc_tree_ttl;			/* s */
extern int	ht_guc_tombstone_ttl;		/* s, 0: never */

/* this node's name: hashtree.node_name or the derived default */
extern const char *ht_node_name(void);

/* the OID of the extension's schema, InvalidOid if not installed */
extern Oid	ht_schema_oid(void);

/*
 * Open hashtree.<table> and its index <index> (an error if either is
 * missing: a damaged installation), for the direct heap and index access
 * of the hot paths
 */
extern void ht_open_table_index(const char *table, const char *index, LOCKMODE lockmode,
								Relation *rel, Relation *idx);

/*
 * Run code as the extension's owner (the tracking trigger fires as the
 * writing user, who has no rights on the extension's tables).
 */
extern void ht_as_owner_begin(Oid *save_user, int *save_sec);
extern void ht_as_owner_end(Oid save_user, int save_sec);

/*
 * search_path for every statement the extension runs: "pg_catalog, pg_temp"
 * (pg_temp is never searched for functions or operators).  ht_pin_begin()
 * opens a GUC nest level with that path and returns it; ht_pin_end() rolls
 * the nest level back.  An error in between is unwound by the
 * (sub)transaction abort.
 */
#define HT_SAFE_SEARCH_PATH		"pg_catalog, pg_temp"
extern int	ht_pin_begin(void);
extern void ht_pin_end(int nestlevel);

/*
 * Run a table owner's code (triggers, defaults, generated columns, index
 * expressions, constraints, input functions of its types): as that owner,
 * inside a security-restricted operation, with the pinned search_path, as
 * PostgreSQL's maintenance commands do.  Never as the extension owner or
 * a superuser worker.
 */
typedef struct HtUserContext
{
	Oid			save_user;
	int			save_sec;
	int			nestlevel;
} HtUserContext;

extern void ht_as_table_owner_begin(Oid relid, HtUserContext *ctx);
extern void ht_as_table_owner_end(HtUserContext *ctx);

/*
 * Open a relation named by a regclass argument: a clear ERROR (42P01) for
 * an OID that names no relation (regclass 0, a dropped table), never XX000.
 */
extern Relation ht_open_relation_arg(Oid relid, LOCKMODE lockmode);

/* the extension owner's role (pg_extension.extowner), InvalidOid if none */
extern Oid	ht_extension_owner(void);

/*
 * The extension's tables are written only by the extension's own code.
 * While that code runs SPI statements it raises ht_api_depth, and the
 * statement-level guard trigger on those tables ignores such writes.  Any
 * other write (a restore of the dumped entries, a manual DELETE) marks all
 * trees as not built, so that a rebuild happens instead of a silently
 * wrong tree.
 */
extern int	ht_api_depth;

#define HT_API_BEGIN() \
	do { \
		int			ht_saved_depth_ = ht_api_depth; \
		ht_api_depth++; \
		PG_TRY(); \
		{

#define HT_API_END() \
		} \
		PG_FINALLY(); \
		{ \
			ht_api_depth = ht_saved_depth_; \
		} \
		PG_END_TRY(); \
	} while (0)

/* errors for NULL arguments of non-strict functions */
#define HT_ARG_NOT_NULL(n, what) \
	do { \
		if (PG_ARGISNULL(n)) \
			ereport(ERROR, \
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), \
					 errmsg("%s must not be null", (what)))); \
	} while (0)

/* argument n of an SQL-callable function, a prefix: not NULL, not too long */
extern text *ht_prefix_arg(FunctionCallInfo fcinfo, int n, const char *what);

#endif							/* HT_COMMON_H */
