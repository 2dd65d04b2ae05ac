/*-------------------------------------------------------------------------
 *
 * hashtree.c
 *	  Module initialisation of the hashtree extension: every setting (GUC)
 *	  is registered here, then the background workers (worker.c).  The top
 *	  of the module graph: nothing calls into this file.
 *
 * The library works with and without shared_preload_libraries: every SQL
 * function loads it on first use, which defines the GUCs below.  The
 * background workers (worker.c) need preloading.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "utils/guc.h"

#include "common.h"
#include "fragremote.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomIntVariable("hashtree.partitions",
							"Number of partitions created by CREATE EXTENSION hashtree.",
							"Read once, when the extension is created; the count is then fixed "
							"for the database and recorded in hashtree.partition.",
							&ht_guc_partitions,
							8, 1, HT_MAX_PARTITIONS,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hashtree.pack_target",
							"Entries per pack that a re-hash of a tracked table aims at.",
							"The fold packs a table's entries again when its packs hold more "
							"than 4 times as many or less than a quarter.  For tests: a small "
							"value gives the span of one sub-bucket (32 segments) to small "
							"tables, as big tables have.",
							&ht_guc_pack_target,
							32, 1, 4096,
							PGC_USERSET, GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);

	DefineCustomStringVariable("hashtree.node_name",
							   "Name of this node in hashtree exchanges.",
							   "Empty means a name derived from the system identifier, "
							   "the port and the database name.",
							   &ht_guc_node_name,
							   "",
							   PGC_SUSET, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("hashtree.connect_timeout",
							"Time allowed to connect to a peer.",
							NULL,
							&ht_guc_connect_timeout,
							10000, 100, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hashtree.statement_timeout",
							"Time allowed for one statement on a peer (0 disables).",
							NULL,
							&ht_guc_statement_timeout,
							60000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hashtree.tree_ttl",
							"Age after which a partition's trees are rebuilt.",
							"Each partition expires after between 75% and 100% of this "
							"age, chosen at random at each build.",
							&ht_guc_tree_ttl,
							7 * 24 * 3600, 60, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hashtree.tombstone_ttl",
							"Age after which the tombstone of a deleted row is removed.",
							"The fold of a partition removes the tombstones older than this "
							"(0: never).  A node out of contact longer than this must be "
							"re-synchronised with pull or push.",
							&ht_guc_tombstone_ttl,
							7 * 24 * 3600, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	ht_fragremote_init();
	ht_worker_init();
	MarkGUCPrefixReserved("hashtree");
}
