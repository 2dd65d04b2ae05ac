/*-------------------------------------------------------------------------
 *
 * rowio.h
 *	  Rows of tracked tables for repairs: the SQL-callable helpers
 *	  _rows_by_key, _partition_rows, _apply_rows, _delete_partition_rows
 *	  and _row_partition (rowio.c), and the role they check rights for.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_ROWIO_H
#define HT_ROWIO_H

#include "postgres.h"

/*
 * The role whose rights the repair helpers (_rows_by_key, _apply_rows, ...)
 * check on this node: set by exchange() to the role calling it (a SECURITY
 * DEFINER function's caller); InvalidOid (workers, peers): the current
 * user.
 */
extern Oid	ht_repair_role;

#endif							/* HT_ROWIO_H */
