/*
 * process.h - process services of libdexec: starting a worker program as a
 * child confined to CPUs, GPUs and memory, tied to the life of this
 * process, reaping it with a deadline, describing how it ended, and
 * stopping it with the shutdown ladder. The mp and ray_actor executors and
 * the node agent use these; so may any third-party executor plugin that
 * owns its workers (call them directly: plugins link libdexec).
 *
 * Units: times are seconds (double), memory is bytes, CPU sets are Linux
 * CPU lists ("0-3,8", the format of /proc/PID/status Cpus_allowed_list).
 *
 * Parent death. A spawned child gets SIGKILL when this process dies, even
 * by SIGKILL (PR_SET_PDEATHSIG). The kernel ties that signal to the
 * *thread* that forked, not the process, so libdexec forks every child from
 * one spawner thread of its own that lives as long as the process: a child
 * spawned by a thread that later exits (an engine created on a short-lived
 * thread) keeps running until the process itself ends. The spawner thread
 * is started on the first spawn, blocks every signal and never exits; in a
 * child made by fork() it is started again on that child's first spawn.
 *
 * Threads: every function may be called from any thread. The functions on
 * one dexec_process may run concurrently (a connection's death callback
 * reaping while shutdown stops it), except dexec_process_free(), which
 * must be the last call on it.
 *
 * Errors: a status code, and a message in (err, errlen) that names what
 * failed (err may be NULL).
 */
#ifndef DEXEC_PROCESS_H
#define DEXEC_PROCESS_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/dexec.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dexec_conn; /* <dexec/rpc.h> */

/* A spawned child process; opaque, owned by whoever spawned it. */
typedef struct dexec_process dexec_process;

/* How a memory limit was enforced. */
typedef enum dexec_memory_limit {
    DEXEC_MEMORY_NONE = 0, /* no limit was asked */
    DEXEC_MEMORY_CGROUP,   /* cgroup v2 memory.max of a child cgroup made for it
                              (resident memory; swap disabled where possible) */
    DEXEC_MEMORY_RLIMIT,   /* RLIMIT_AS (address space): this process's cgroup
                              does not let it create a child cgroup with the
                              memory controller */
} dexec_memory_limit;

/* What to run and what it may use. Zero-initialize, set struct_size to
 * sizeof(dexec_spawn_args), then the fields you need: fields added in later
 * versions go into the reserved space and read as 0/NULL from callers built
 * against an older header. */
typedef struct dexec_spawn_args {
    uint32_t struct_size;
    /* argv[0] is the program's path, used as is (no PATH search; a
     * relative one is relative to the working directory), e.g. the host's
     * worker_path. NULL-terminated; borrowed for the call. */
    char *const *argv;
    /* Becomes the child's fd 3 (for dexec-worker "--listen fd:3"); 0 or
     * -1: none (fd 0 is never passed, so a zeroed struct asks for nothing).
     * Not closed here: the caller closes its copy after the call. */
    int ctl_fd;
    /* Becomes the child's fd 1 (stdout); 0 or -1: inherit this process's. */
    int stdout_fd;
    /* CPU affinity as a CPU list ("0-3,8"); NULL or "": inherit. */
    const char *cpus;
    /* CUDA_VISIBLE_DEVICES of the child ("0,1"; "" hides every GPU); NULL:
     * inherit this process's environment unchanged. */
    const char *visible_gpus;
    /* Hard memory limit in bytes; 0: none. cgroup v2 memory.max where a
     * child cgroup can be made and written, else RLIMIT_AS; which one
     * applied is logged and given by dexec_process_memory_limit(). */
    int64_t memory_bytes;
    /* For log lines and messages: the component ("mp") and what the child
     * is ("rank 0", "actor"). NULL: "process", "child". Copied. */
    const char *component;
    const char *label;
    /* Variables set in the child over this process's environment:
     * "NAME=VALUE" entries, NULL-terminated, borrowed for the call; NULL:
     * none. Normally dexec_runtime_env()'s (runtime_env.env_vars). Where
     * visible_gpus is set, it wins over a CUDA_VISIBLE_DEVICES entry here,
     * and a warning says so. (Added in 0.1 from the reserved space.) */
    const char *const *env;
    void *reserved[7];
} dexec_spawn_args;

/* Forks and executes a->argv with the limits applied in the child before
 * exec. The child's signal mask is empty, its fds are 0-2 plus fd 3 when
 * ctl_fd is given (every other descriptor of this process is CLOEXEC, as
 * libdexec opens them), and it is killed when this process dies (see
 * "Parent death" above). Returns once the program is executing, or with
 * the reason it could not start.
 * Errors: DEXEC_EINVAL (bad arguments: struct_size, no argv[0], a bad CPU
 * list),
 * DEXEC_EINIT (the program cannot be executed, or a limit cannot be
 * applied: the message says which, with the errno text), DEXEC_EIO (pipe,
 * fork), DEXEC_ENOMEM, DEXEC_ETIMEDOUT (the spawner thread did not fork
 * within 30 s). On success *out is a new process the caller releases with
 * dexec_process_free(); on failure *out is NULL and no child is left. */
dexec_status dexec_process_spawn(const dexec_spawn_args *a, dexec_process **out, char *err,
                                 size_t errlen);

/* The child's process id (valid until dexec_process_free). */
int dexec_process_pid(const dexec_process *p);

/* How its memory limit was enforced. */
dexec_memory_limit dexec_process_memory_limit(const dexec_process *p);

/* The cgroup directory made for it ("" when none); owned by p. */
const char *dexec_process_cgroup(const dexec_process *p);

/* Reaps p if it has exited, waiting at most wait_s seconds (0: just look).
 * Returns 1 once reaped (then dexec_process_status is its wait status), 0
 * while it runs. Never reaps another process. */
int dexec_process_reap(dexec_process *p, double wait_s);

/* The wait status (as from waitpid) once reaped; -1 before, or when the
 * status was lost (somebody else reaped it). */
int dexec_process_status(const dexec_process *p);

/* Sends sig unless p was reaped already (so never a recycled pid).
 * 0, or -1 with errno (ESRCH once reaped). */
int dexec_process_signal(dexec_process *p, int sig);

/* "exited with status 3", "killed by signal 9 (Killed)", "exited (status
 * unknown)" for -1: a wait status in words, into buf. */
void dexec_describe_exit(int status, char *buf, size_t len);

/* The shutdown ladder, for n children at once (their grace periods run in
 * parallel): sends "shutdown" on conns[i] where conns is not NULL and
 * conns[i] is live and waits for the replies and the exits up to grace_s;
 * then SIGTERM to those still running and up to grace_s more; then
 * SIGKILL and reap (a killed process is reaped within a few ms; the wait
 * for it is bounded at 10 s). grace_s is the caller's setting, normally
 * timeouts.shutdown_grace; < 0 counts as 0. Every step after the first
 * is logged as a warning naming the component, label and pid. procs[i]
 * may be NULL (skipped). Returns once every child is reaped. The
 * connections stay open (free them after). */
void dexec_process_stop_all(dexec_process *const *procs, struct dexec_conn *const *conns, size_t n,
                            double grace_s);

/* dexec_process_stop_all for one child; conn may be NULL. */
void dexec_process_stop(dexec_process *p, struct dexec_conn *conn, double grace_s);

/* Releases p: a child still running gets SIGKILL and is reaped (bounded at
 * 10 s); the cgroup made for it is removed. NULL is accepted. */
void dexec_process_free(dexec_process *p);

/* ---- environment (runtime_env.env_vars) ----------------------------------- */

/* The variables every worker or actor process an executor starts gets on
 * top of this process's environment: the configuration's
 * runtime_env.env_vars as "NAME=VALUE" strings, in file order, less the
 * variables the executor sets itself. own lists those ("NAME" or
 * "NAME=VALUE" entries, NULL-terminated; NULL: none): each one that
 * runtime_env.env_vars also sets is left out and logged once as a warning
 * "COMPONENT: runtime_env.env_vars sets NAME=\"V\" but the executor sets
 * NAME itself (...): the executor's value wins". For executors that start
 * processes by other means (srun --export, a node agent's spawn_actor) as
 * well as for dexec_spawn_args.env. Returns a NULL-terminated array the
 * caller frees with dexec_env_free(), or NULL when memory is exhausted. */
char **dexec_runtime_env(const dexec_config *cfg, const char *const *own, const char *component);
void dexec_env_free(char **env);

/* ---- CPUs ---------------------------------------------------------------- */

/* Number of CPUs this process may run on (its affinity). */
int dexec_cpus_allowed(void);

/* Picks n CPUs of this process's affinity that are not in avoid (a CPU
 * list, or NULL) and writes them as a CPU list into out. Errors:
 * DEXEC_EINVAL "N CPUs asked but only M are available" (fewer free CPUs,
 * or a bad avoid list), DEXEC_EIO (sched_getaffinity), DEXEC_ENOMEM (out
 * too small: 16 bytes per CPU always suffice). */
dexec_status dexec_cpus_pick(int n, const char *avoid, char *out, size_t outlen, char *err,
                             size_t errlen);

/* ---- custom resources (placement labels) -------------------------------- */

/* Parses "gpu_worker=1,ssd=2" (a bare name counts 1) into a new MAP of
 * numbers the caller frees (dexec_value_free). NULL or "" gives an empty
 * map. NULL with a message naming the bad entry, or on ENOMEM. */
dexec_value *dexec_resources_parse(const char *text, char *err, size_t errlen);

/* 1 when have (a MAP, may be NULL) offers every resource of want (a MAP,
 * or NULL: nothing asked) in at least the amount asked; otherwise 0 and
 * the first missing name in missing. */
int dexec_resources_fit(const dexec_value *want, const dexec_value *have, char *missing,
                        size_t len);

/* "gpu_worker,ssd=2": the names of want, with amounts other than 1. */
void dexec_resources_format(const dexec_value *want, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
