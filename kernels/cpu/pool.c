/*
 * pool.c - the CPU backend's thread pool: workers sleep on a condition
 * variable between jobs; a job is a generation number, and the caller
 * waits until every worker has finished its share. The tasks of a job are
 * split statically, as they are of equal size (one attention head, one
 * slice of a tensor).
 */
#include <config.h>

#include <pthread.h>
#include <stdlib.h>

#include "pool.h"

struct dxk_pool {
    int n;
    pthread_t *tids;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned gen;
    int pending, stop;
    dxk_pool_fn fn;
    void *arg;
    int ntasks;
    void (*init)(void);
};

typedef struct dx_worker_arg {
    dxk_pool *p;
    int index;
} dx_worker_arg;

static void dx_run_share(dxk_pool *p, int thread)
{
    int t;

    for (t = thread; t < p->ntasks; t += p->n)
        p->fn(p->arg, t, thread);
}

static void *dx_worker(void *varg)
{
    dx_worker_arg *wa = varg;
    dxk_pool *p = wa->p;
    int index = wa->index;
    unsigned seen = 0;

    free(wa);
    if (p->init != NULL)
        p->init();
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->gen == seen)
            pthread_cond_wait(&p->go, &p->mu);
        if (p->stop)
            break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        dx_run_share(p, index);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

dxk_pool *dxk_pool_new(int n, void (*init)(void))
{
    dxk_pool *p;
    int i;

    if (n < 2 || (p = calloc(1, sizeof *p)) == NULL)
        return NULL;
    p->tids = calloc((size_t)n, sizeof *p->tids);
    if (p->tids == NULL) {
        free(p);
        return NULL;
    }
    p->n = n;
    p->init = init;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    for (i = 1; i < n; i++) {
        dx_worker_arg *wa = malloc(sizeof *wa);

        if (wa == NULL)
            break;
        wa->p = p;
        wa->index = i;
        if (pthread_create(&p->tids[i], NULL, dx_worker, wa) != 0) {
            free(wa);
            break;
        }
        p->started++;
    }
    if (p->started != n - 1) {
        dxk_pool_free(p);
        return NULL;
    }
    return p;
}

int dxk_pool_size(const dxk_pool *p)
{
    return p != NULL ? p->n : 1;
}

void dxk_pool_run(dxk_pool *p, int ntasks, dxk_pool_fn fn, void *arg)
{
    int t;

    if (p == NULL) {
        for (t = 0; t < ntasks; t++)
            fn(arg, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->ntasks = ntasks;
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    dx_run_share(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void dxk_pool_free(dxk_pool *p)
{
    int i;

    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (i = 1; i <= p->started; i++)
        pthread_join(p->tids[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->tids);
    free(p);
}
