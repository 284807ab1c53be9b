/*
 * srun.h - dexec workers as one Slurm job step. libdexec starts `srun`
 * (from PATH) as a child of this process, one task per worker, each task a
 * dexec-worker listening on TCP with a fresh token, and hands back each
 * task's address. Inside an allocation (SLURM_JOB_ID set) srun runs a step
 * of it; outside, srun asks Slurm for an allocation of its own first. The
 * ray_actor executor (ray_init.address = "slurm") and the mp executor
 * (mp.launcher = "srun") use it; so may a third-party executor.
 *
 * What each task runs, on the node Slurm picks:
 *
 *     WORKER ARGS... --listen tcp:0.0.0.0:0 --print-address --token-file -
 *                    --owned SECONDS --rank $SLURM_PROCID
 *
 * The token reaches the tasks on their standard input (srun forwards it),
 * never on a command line or in a file. The task's address is the port it
 * printed on $SLURMD_NODENAME, the node's Slurm name, which must resolve
 * from this host (it does where Slurm names nodes by host name).
 *
 * Ownership. The worker is owned (--owned): it exits when the connection
 * that said hello first closes, so an engine that dies, even by SIGKILL,
 * takes its tasks with it; srun itself gets SIGKILL when this process dies
 * (<dexec/process.h>). srun runs with --kill-on-bad-exit=1, and with
 * --time when a time limit is given. dexec_srun_stop() ends the step with
 * scancel once its tasks had their grace.
 *
 * Output. srun's own messages and the tasks' standard error are read by a
 * thread of this library and logged (component "slurm"); the last few
 * srun messages go into error messages, since they carry Slurm's reasons.
 *
 * Threads: the functions on one dexec_srun may run concurrently except
 * dexec_srun_free(), which must be the last call on it.
 */
#ifndef DEXEC_SRUN_H
#define DEXEC_SRUN_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/dexec.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A running (or pending) srun; opaque, owned by whoever started it. */
typedef struct dexec_srun dexec_srun;

/* The step asked for. Zero-initialize, set struct_size to
 * sizeof(dexec_srun_args), then the fields you need (growth rule of
 * <dexec/dexec.h>: later fields read as 0/NULL from older callers). */
typedef struct dexec_srun_args {
    uint32_t struct_size;
    /* The worker program and its arguments, NULL-terminated, without the
     * ones listed above (the launcher adds those). argv[0] is the program's
     * path on the nodes. Borrowed for the call. */
    char *const *worker_argv;
    /* Tasks (--ntasks), one worker each; 0 counts as 1. */
    int ntasks;
    /* --cpus-per-task; 0: Slurm's default. */
    int cpus_per_task;
    /* GPUs: gres_gpus > 0 gives --gres=gpu:N (the step's GPUs, all tasks
     * together; for one task), gpus_per_task > 0 gives --gpus-per-task=N. */
    int gres_gpus;
    int gpus_per_task;
    /* --mem in bytes (rounded up to MiB): memory per node; 0: Slurm's
     * default. */
    int64_t memory_bytes;
    /* --constraint: node features joined with '&' ("gpu_worker&ssd");
     * NULL or "": none. */
    const char *constraint;
    /* --partition, --account, --time ("HH:MM:SS", "D-HH", Slurm's
     * formats), --job-name; NULL or "": Slurm's defaults ("dexec"). */
    const char *partition;
    const char *account;
    const char *time_limit;
    const char *job_name;
    /* Further srun options, each one argument ("--qos=high",
     * "--exclusive"), NULL-terminated; NULL: none. Borrowed. */
    char *const *extra;
    /* The token the workers require in hello (one line); NULL or "": a
     * fresh random one (dexec_srun_token). */
    const char *token;
    /* Seconds a started worker waits for its owner's hello (--owned). */
    double owner_wait;
    /* For log lines and messages ("actor", "mp"). NULL: "srun". */
    const char *label;
    void *reserved[8];
} dexec_srun_args;

/* Starts srun and waits, until deadline (dexec_now() seconds), for every
 * task to report its address.
 * Errors (no srun left behind in each case; the message holds srun's last
 * messages, which carry Slurm's reason):
 *  - DEXEC_ETIMEDOUT: the step did not start by the deadline (pending for
 *    resources): it was cancelled, and the message gives the job's reason
 *    from squeue ("PartitionConfig", "Resources", ...);
 *  - DEXEC_EINIT: srun ended first (Slurm refused the request: "Invalid
 *    feature specification"; srun not found; a task failed);
 *  - DEXEC_EINVAL: bad arguments; DEXEC_EIO, DEXEC_ENOMEM.
 * On success *out is the running step, released with dexec_srun_free()
 * after dexec_srun_stop(). */
dexec_status dexec_srun_start(const dexec_srun_args *a, double deadline, dexec_srun **out,
                              char *err, size_t errlen);

/* Task i's address ("tcp:NODE:PORT"), owned by s; NULL when out of range. */
const char *dexec_srun_address(const dexec_srun *s, int task);

/* The token the workers require in hello, owned by s. Secret: never put
 * it in a message. */
const char *dexec_srun_token(const dexec_srun *s);

/* "JOBID.STEPID" of the step, owned by s. */
const char *dexec_srun_step(const dexec_srun *s);

/* The node task i runs on (its Slurm name), owned by s. */
const char *dexec_srun_node(const dexec_srun *s, int task);

/* 1 once srun has exited (its tasks are over), then *status (if not NULL)
 * is its wait status; 0 while it runs. Waits at most wait_s seconds. */
int dexec_srun_exited(dexec_srun *s, double wait_s, int *status);

/* "srun: error: ..." : srun's last messages, joined with "; " ("" when
 * none), into buf. */
void dexec_srun_messages(dexec_srun *s, char *buf, size_t len);

/* Ends the step: waits up to grace_s for srun to exit by itself (the
 * caller asked the workers to shut down first), then cancels the step
 * with scancel (the job, when srun made the allocation) and waits up to
 * grace_s more, then SIGKILLs srun and reaps it. Every wait is bounded;
 * the steps after the first are logged as warnings. Idempotent. */
void dexec_srun_stop(dexec_srun *s, double grace_s);

/* Releases s (stopping it with no grace first if needed). NULL is
 * accepted. */
void dexec_srun_free(dexec_srun *s);

#ifdef __cplusplus
}
#endif
#endif
