/*-------------------------------------------------------------------------
 *
 * ddl.h
 *	  Schema changes of tracked tables: the event triggers' handlers
 *	  (SQL-callable: _ddl_table, _ddl_type, _ddl_check_all, _ddl_dropped)
 *	  and the partitions changed by hashtree itself.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_DDL_H
#define HT_DDL_H

#include "postgres.h"

/*
 * The partitions of a table were changed by hashtree itself (a fragmented
 * table's frag_init, add_frag, del_frag), its rows staying the same: if
 * the table is tracked, give the new partitions their TRUNCATE trigger and
 * record the partitions in the registry, without a re-hash.  Needs SPI.
 */
extern void ht_ddl_partitions_changed(Oid relid);

#endif							/* HT_DDL_H */
