/*
 * thread-comm.h - an in-process communicator for the kernels' comm.h: the
 * ranks of a parallel group as threads of one process, exchanging through
 * each other's buffers between two barriers. Every barrier waits at most
 * deadline_ms; a rank that misses it breaks the group, and every later
 * collective fails at once (DEXEC_EIO), as a worker transport does when a
 * peer dies; tc_group_abandon breaks it from outside (a rank whose request
 * failed between two collectives). Used by the worker for the ranks of a
 * ray_actor actor (worker/server.c, "parallel_threads"), by
 * tests/test-seqpar.c and by bench/bench-seqpar.c.
 */
#ifndef DEXEC_TEST_THREAD_COMM_H
#define DEXEC_TEST_THREAD_COMM_H

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <dexec/dexec.h>

#include "comm.h"

/* The most ranks of one communicator (a user may define it larger). */
#ifndef TC_MAX
#define TC_MAX 8
#endif

typedef struct tc_group {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int size, arrived, gen, broken, deadline_ms;
    const void *send[TC_MAX];
} tc_group;

typedef struct tc_rank {
    tc_group *g;
    int rank;
    unsigned long long sent; /* bytes this rank gave its peers (size - 1 copies of its part) */
} tc_rank;

static inline void tc_group_init(tc_group *g, int size, int deadline_ms)
{
    pthread_condattr_t ca;

    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    g->size = size;
    g->deadline_ms = deadline_ms;
}

static inline void tc_group_destroy(tc_group *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

/* Every rank of the group, or an error within the deadline: then the
 * group is broken and every later call fails at once. */
static inline dexec_status tc_barrier(tc_rank *r, char *err, size_t errlen)
{
    tc_group *g = r->g;
    struct timespec dl;
    int gen;

    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += g->deadline_ms / 1000;
    dl.tv_nsec += (long)(g->deadline_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&g->mu);
    gen = g->gen;
    if (!g->broken && ++g->arrived == g->size) {
        g->arrived = 0;
        g->gen++;
        pthread_cond_broadcast(&g->cv);
    }
    while (g->gen == gen && !g->broken) {
        if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT && g->gen == gen &&
            !g->broken) {
            snprintf(err, errlen, "in-process comm: rank %d: %d of %d ranks arrived within %d ms",
                     r->rank, g->arrived, g->size, g->deadline_ms);
            g->broken = 1;
            pthread_cond_broadcast(&g->cv);
            pthread_mutex_unlock(&g->mu);
            return DEXEC_ETIMEDOUT;
        }
    }
    if (g->gen == gen) {
        pthread_mutex_unlock(&g->mu);
        snprintf(err, errlen, "in-process comm: rank %d: a peer failed", r->rank);
        return DEXEC_EIO;
    }
    pthread_mutex_unlock(&g->mu);
    return DEXEC_OK;
}

/* Breaks the group: ranks waiting in a collective fail at once (DEXEC_EIO)
 * and so does every later collective. */
static inline void tc_group_abandon(tc_group *g)
{
    pthread_mutex_lock(&g->mu);
    g->broken = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Every rank publishes send; each then copies `bytes` from every rank's
 * buffer at offset `from` into recv (rank order), and waits until all have
 * read before anyone may reuse its send buffer. */
static inline dexec_status tc_exchange(tc_rank *r, const void *send, void *recv, size_t bytes,
                                       size_t from, char *err, size_t errlen)
{
    dexec_status s;
    int i;

    r->g->send[r->rank] = send;
    if ((s = tc_barrier(r, err, errlen)) != DEXEC_OK)
        return s;
    for (i = 0; i < r->g->size; i++)
        memcpy((char *)recv + (size_t)i * bytes, (const char *)r->g->send[i] + from, bytes);
    if ((s = tc_barrier(r, err, errlen)) == DEXEC_OK)
        r->sent += (unsigned long long)bytes * (unsigned)(r->g->size - 1);
    return s;
}

/* block i of send goes to rank i */
static inline dexec_status tc_alltoall(void *ctx, const void *send, void *recv, size_t bytes,
                                       char *err, size_t errlen)
{
    tc_rank *r = ctx;

    return tc_exchange(r, send, recv, bytes, (size_t)r->rank * bytes, err, errlen);
}

static inline dexec_status tc_allgather(void *ctx, const void *send, void *recv, size_t bytes,
                                        char *err, size_t errlen)
{
    return tc_exchange(ctx, send, recv, bytes, 0, err, errlen);
}

static inline void tc_comm(dxk_comm *c, tc_rank *r, tc_group *g, int rank)
{
    r->g = g;
    r->rank = rank;
    r->sent = 0;
    c->rank = rank;
    c->size = g->size;
    c->ctx = r;
    c->alltoall = tc_alltoall;
    c->allgather = tc_allgather;
}

#endif
