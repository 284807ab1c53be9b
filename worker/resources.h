/*
 * resources.h - an actor process and what it may use: spawning dexec-worker
 * as a child that dies with its parent, confined to a set of CPUs, a set of
 * GPUs and a hard memory limit; reaping it; and the custom resources
 * (labels such as gpu_worker=1) that placement matches.
 *
 * Shared by the ray_actor executor (local mode) and dexec-worker --node
 * (the node agent), so both apply limits the same way.
 */
#ifndef DEXEC_WORKER_RESOURCES_H
#define DEXEC_WORKER_RESOURCES_H

#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <dexec/dexec.h>

/* How the memory limit of an actor was enforced. */
typedef enum dxr_memory_how {
    DXR_MEM_NONE = 0,  /* no limit asked */
    DXR_MEM_CGROUP,    /* cgroup v2 memory.max of a child cgroup */
    DXR_MEM_RLIMIT,    /* RLIMIT_AS (address space), when no cgroup could be used */
} dxr_memory_how;

/* What the actor may use. */
typedef struct dxr_limits {
    int ncpus;             /* 0: inherit the parent's affinity */
    cpu_set_t cpus;        /* the CPUs, when ncpus > 0 (dxr_pick_cpus) */
    const char *cuda_visible; /* CUDA_VISIBLE_DEVICES value; NULL: inherit */
    int64_t memory;        /* hard limit in bytes; 0: none */
} dxr_limits;

/* A spawned actor. */
typedef struct dxr_child {
    pid_t pid;
    pthread_mutex_t lock; /* guards reaped/status: a death callback and shutdown both reap */
    int reaped;
    int status;           /* wait status, -1 when unknown */
    dxr_memory_how memory_how;
    char cgroup[512];     /* the cgroup made for it (removed by dxr_child_release), or "" */
} dxr_child;

/* What to run. argv[0] is the program. */
typedef struct dxr_spawn_args {
    char *const *argv;
    int ctl_fd;           /* becomes fd 3 of the child (a connected socket), or -1 */
    int stdout_fd;        /* becomes fd 1 of the child, or -1 to inherit */
    const dxr_limits *limits;
    const char *component; /* for log lines: "ray_actor", "node" */
} dxr_spawn_args;

/* Picks n CPUs of this process's allowed set that are not in busy (may be
 * NULL). DEXEC_EINVAL "ray_actor.cpus = N but only M CPUs are available"
 * when there are fewer. */
dexec_status dxr_pick_cpus(int n, const cpu_set_t *busy, cpu_set_t *out, char *err,
                           size_t errlen);

/* Number of CPUs this process may run on. */
int dxr_allowed_cpus(void);

/* Forks and execs a->argv with the limits applied in the child before exec
 * (affinity, memory cgroup or RLIMIT_AS, CUDA_VISIBLE_DEVICES). The child
 * gets SIGKILL when the calling thread's process dies (PR_SET_PDEATHSIG).
 * Everything is prepared before fork; the child makes only system calls.
 * Errors: DEXEC_EINIT (the program cannot run, a limit cannot be applied:
 * the message says which), DEXEC_EIO, DEXEC_ENOMEM. On success c is set and
 * owns a child that must be reaped (dxr_reap) and released. */
dexec_status dxr_spawn(const dxr_spawn_args *a, dxr_child *c, char *err, size_t errlen);

/* Reaps c if it has exited, waiting at most wait_s. Returns 1 once reaped. */
int dxr_reap(dxr_child *c, double wait_s);

/* SIGTERM, wait up to term_wait_s, SIGKILL, reap. For a child that was
 * already asked to stop and did not. */
void dxr_kill(dxr_child *c, double term_wait_s, const char *component, const char *what);

/* Removes the cgroup made for c (after it was reaped) and frees the lock. */
void dxr_child_release(dxr_child *c);

/* "exited with status 3", "killed by signal 9 (Killed)". */
void dxr_describe_exit(int status, char *buf, size_t len);

/* ---- custom resources (labels) ------------------------------------------ */

/* Parses "gpu_worker=1,ssd=2" (a bare name counts 1) into a MAP of numbers.
 * NULL or "" gives an empty map. NULL with a message on bad text. */
dexec_value *dxr_resources_parse(const char *text, char *err, size_t errlen);

/* 1 when have offers every resource of want in at least the amount asked;
 * otherwise 0 and the first missing name in missing. */
int dxr_resources_fit(const dexec_value *want, const dexec_value *have, char *missing,
                      size_t len);

/* "gpu_worker,ssd=2": names of want, with amounts other than 1. */
void dxr_resources_format(const dexec_value *want, char *buf, size_t len);

#endif
