/*-------------------------------------------------------------------------
 *
 * fragops.h
 *	  add_frag and del_frag of fragmented tables (fragops.c): the parts
 *	  the background workers run.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_FRAGOPS_H
#define HT_FRAGOPS_H

#include "postgres.h"

/*
 * The background job of an online add_frag (add) or del_frag: prepare the
 * targets, in transactions of its own (ht_job_main runs it as the role
 * that called the operation)
 */
extern void ht_frag_prepare_job(Oid relid, bool add);

/* roll back the unfinished operations nobody is running (needs SPI) */
extern void ht_frag_recover_all(void);

/* roll back an interrupted online operation on a table, if any (needs SPI) */
extern void ht_frag_recover(Oid relid);

/*
 * Run fn(arg) in a subtransaction with a short lock_timeout until it gets
 * its locks, releasing everything and pausing between tries
 */
extern void ht_frag_lock_retry(void (*fn) (void *), void *arg, const char *what);

#endif							/* HT_FRAGOPS_H */
