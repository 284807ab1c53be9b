/*
 * pool.h - a fixed set of threads that run the tasks of one job at a time
 * with the calling thread, for the CPU backend's loops that OpenBLAS does
 * not thread by itself (attention heads, GELU, LayerNorm).
 */
#ifndef DEXEC_KERNELS_CPU_POOL_H
#define DEXEC_KERNELS_CPU_POOL_H

typedef struct dxk_pool dxk_pool;

/* Task t of a job, run by thread `thread` in 0..n-1 (0 is the caller). */
typedef void (*dxk_pool_fn)(void *arg, int task, int thread);

/* A pool of n threads in all (n - 1 started here); NULL when n < 2 or
 * threads cannot be started (the caller then runs jobs alone). init, when
 * not NULL, runs first in every started thread. */
dxk_pool *dxk_pool_new(int n, void (*init)(void));
int dxk_pool_size(const dxk_pool *p); /* 1 for NULL */

/* Runs fn for tasks 0..ntasks-1 (thread k takes k, k+n, ...) and returns
 * when all are done. A NULL pool runs them in the caller. Not reentrant:
 * one job at a time, from one thread. */
void dxk_pool_run(dxk_pool *p, int ntasks, dxk_pool_fn fn, void *arg);

void dxk_pool_free(dxk_pool *p);

#endif
