/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  Background workers: the launcher and the jobs it starts.
 *
 * With shared_preload_libraries = 'hashtree' and hashtree.database set, a
 * static launcher runs in that database.  Every hashtree.tick_interval it
 * updates each built partition that nobody has locked (with
 * hashtree.tick_workers > 1, tick jobs update their shares of the
 * partitions at the same time), and starts a
 * rebuild job for a partition whose trees expired (or are not built);
 * every hashtree.exchange_interval it starts an exchange job with a
 * random peer that is not backed off, at most hashtree.max_exchanges at
 * once.  Jobs are dynamic workers; each does one thing and exits, but
 * for the exchange jobs (parked between two exchanges with their peer)
 * and the tick jobs (waiting for the next tick).
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_WORKER_H
#define HT_WORKER_H

#include "postgres.h"

extern char *ht_guc_database;
extern int	ht_guc_tick_interval;	/* s */
extern int	ht_guc_tick_workers;
extern int	ht_guc_exchange_interval;	/* s, 0: no exchanges */
extern int	ht_guc_max_exchanges;
extern int	ht_guc_repair;			/* HtRepairMode */

/* define the workers' GUCs; register the launcher when preloading */
extern void ht_worker_init(void);

extern PGDLLEXPORT void ht_launcher_main(Datum arg);
extern PGDLLEXPORT void ht_job_main(Datum arg);

#endif							/* HT_WORKER_H */
