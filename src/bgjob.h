/*-------------------------------------------------------------------------
 *
 * bgjob.h
 *	  Jobs: dynamic background workers that each do one thing and exit
 *	  (an exchange job stays for its peer's next exchanges: worker.c).
 *
 * A job is described by an HtJob, passed to the worker in bgw_extra.  The
 * worker's entry point, ht_job_main, is in worker.c (the workers layer);
 * this file only names it, so that a feature below the workers (an online
 * add_frag) can start a job without calling up into worker.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_BGJOB_H
#define HT_BGJOB_H

#include "postgres.h"

#include "common.h"

/* what a job does */
typedef enum HtJobKind
{
	HT_JOB_EXCHANGE = 1,
	HT_JOB_REBUILD = 2,
	HT_JOB_FRAG = 3,			/* prepare an online add_frag or del_frag */
	HT_JOB_FRAG_CLEANUP = 4,	/* leftovers of fragment moves on one peer */
	HT_JOB_TICK = 5				/* a share of every tick's partitions */
} HtJobKind;

typedef struct HtJob
{
	Oid			dboid;
	int			kind;			/* HtJobKind */
	int			part;			/* rebuild; tick: the share */
	int			mode;			/* exchange: HtRepairMode; frag: 1 add, 0 del */
	char		peer[HT_MAX_PEER_NAME_LEN + 1]; /* exchange, frag cleanup */
	Oid			userid;			/* frag: runs as this role */
	Oid			relid;			/* frag: the table */
} HtJob;

/*
 * Register a dynamic background worker (never restarted) that runs job in
 * ht_job_main, in this database, and reports its end to this backend;
 * name and type are its bgw_name and bgw_type.  false when no worker slot
 * is free.  *handle is allocated in CurrentMemoryContext.
 */
struct BackgroundWorkerHandle;
extern bool ht_job_register(const HtJob *job, const char *name, const char *type,
							struct BackgroundWorkerHandle **handle);

#endif							/* HT_BGJOB_H */
