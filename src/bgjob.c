/*-------------------------------------------------------------------------
 *
 * bgjob.c
 *	  Jobs: registering the dynamic background worker that runs one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/bgworker.h"

#include "bgjob.h"

StaticAssertDecl(sizeof(HtJob) <= BGW_EXTRALEN, "a job must fit in bgw_extra");

bool
ht_job_register(const HtJob *job, const char *name, const char *type,
				BackgroundWorkerHandle **handle)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	w.bgw_notify_pid = MyProcPid;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "hashtree");
	/* defined in worker.c, found by the postmaster by name */
	snprintf(w.bgw_function_name, BGW_MAXLEN, "ht_job_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(w.bgw_type, BGW_MAXLEN, "%s", type);
	memcpy(w.bgw_extra, job, sizeof(HtJob));
	return RegisterDynamicBackgroundWorker(&w, handle);
}
