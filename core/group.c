/*
 * group.c - a set of ranks, one connection each, with the semantics every
 * executor shares: collective_rpc by rank, requests dealt across ranks with
 * outputs kept in request order, and health by get_rank.
 *
 * Every call is sent to all ranks before any reply is awaited, and the
 * replies are awaited on all ranks at once (dx_conn_wait_all): ranks work
 * in parallel, progress from every rank reaches the caller as it arrives,
 * a rank that dies is reported as soon as its connection does, and the
 * whole call is bounded by one deadline.
 *
 * Recovery (<dexec/group.h>): a dead rank is logged at once and restarted
 * on a thread of its own (restart_main) while the others go on; generate
 * waits with dx_conn_wait_any so it can re-deal a dead rank's requests
 * the moment the death is seen and look for stalled ranks between
 * arrivals. Replaced connections are kept until the group is freed: a
 * caller may still hold one.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <dexec/group.h>

#include "internal.h"

enum { RANK_LIVE, RANK_RESTARTING, RANK_DEAD };

typedef struct rank_state {
    int state;
    int restarts;       /* restarts begun */
    uint64_t deaths;    /* deaths handled (note_death) */
    uint64_t restarted; /* restarts that gave the rank a new, ready worker */
    double since;       /* when the restart began */
    char why[512];      /* the last death */
    pthread_t th;
    int th_joinable;
} rank_state;

struct dexec_group {
    int n;
    dexec_conn **conns;
    pthread_mutex_t lock; /* conns, rs, graveyard, stopping */
    dexec_group_recovery rec;
    char component[32];
    rank_state *rs;
    dexec_conn **grave; /* replaced connections, freed with the group */
    size_t ngrave;
    int stopping;
    /* Requests sent and not yet answered, per data-parallel slot, over
     * every generate call in progress (callers on several threads): where
     * the next request goes. Today a slot is one rank (slot r = rank r);
     * a parallel group of several ranks would be one slot. */
    size_t *load;
    /* Per rank: when it last said anything to any call (progress, a reply)
     * or was given work while idle, over every caller: a rank busy with
     * another caller's request is not silent to a request queued behind
     * it. Read and written atomically (heard_get/heard_set). */
    double *heard;
    /* parallel groups (dexec_group_form): width = cfg x seq consecutive
     * ranks compute each request together; slot s = ranks s*width.. */
    int width, cfg, seq;
    char transport[8]; /* auto, shm, tcp */
    double coll_timeout;
    int *formed;                /* per slot: its collectives are set up */
    int *busy;                  /* per slot: generate calls in flight */
    pthread_mutex_t *slot_lock; /* per slot: one call at a time is sent to its members */
};

typedef struct restart_arg {
    dexec_group *g;
    int rank;
} restart_arg;

dexec_group *dexec_group_new(int n)
{
    dexec_group *g;

    if (n <= 0)
        return NULL;
    g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->conns = calloc((size_t)n, sizeof(*g->conns));
    if (g->conns == NULL) {
        free(g);
        return NULL;
    }
    g->rs = calloc((size_t)n, sizeof(*g->rs));
    g->load = calloc((size_t)n, sizeof(*g->load));
    g->heard = calloc((size_t)n, sizeof(*g->heard));
    if (g->rs == NULL || g->load == NULL || g->heard == NULL) {
        free(g->rs);
        free(g->load);
        free(g->heard);
        free(g->conns);
        free(g);
        return NULL;
    }
    g->n = n;
    g->width = g->cfg = g->seq = 1;
    pthread_mutex_init(&g->lock, NULL);
    g->rec.struct_size = sizeof(g->rec);
    snprintf(g->component, sizeof(g->component), "executor");
    return g;
}

void dexec_group_set(dexec_group *g, int rank, dexec_conn *c)
{
    if (g != NULL && rank >= 0 && rank < g->n) {
        pthread_mutex_lock(&g->lock);
        g->conns[rank] = c;
        pthread_mutex_unlock(&g->lock);
    }
}

dexec_conn *dexec_group_conn(dexec_group *g, int rank)
{
    dexec_conn *c = NULL;

    if (g != NULL && rank >= 0 && rank < g->n) {
        pthread_mutex_lock(&g->lock);
        c = g->conns[rank];
        pthread_mutex_unlock(&g->lock);
    }
    return c;
}

void dexec_group_recovery_from_config(const dexec_config *cfg, dexec_group_recovery *r)
{
    int64_t restarts = 3, retries = 3;
    double stall = 60.0;

    memset(r, 0, sizeof(*r));
    r->struct_size = sizeof(*r);
    dexec_config_get_int(cfg, "max_restarts", &restarts);
    dexec_config_get_int(cfg, "max_task_retries", &retries);
    dexec_config_get_float(cfg, "timeouts.stall", &stall);
    r->max_restarts = (int)restarts;
    r->max_task_retries = (int)retries;
    r->stall_s = stall;
}

void dexec_group_set_recovery(dexec_group *g, const dexec_group_recovery *r)
{
    if (g == NULL || r == NULL || r->struct_size < offsetof(dexec_group_recovery, reserved))
        return;
    pthread_mutex_lock(&g->lock);
    g->rec = *r;
    g->rec.struct_size = sizeof(g->rec);
    snprintf(g->component, sizeof(g->component), "%s",
             r->component != NULL ? r->component : "executor");
    g->rec.component = g->component;
    pthread_mutex_unlock(&g->lock);
}

static void *restart_main(void *arg)
{
    restart_arg *a = arg;
    dexec_group *g = a->g;
    int r = a->rank;
    dexec_conn *nc = NULL;
    char err[1024] = "";
    dexec_status st;
    double t0 = dexec_now();

    free(a);
    st = g->rec.restart(g->rec.user, r, &nc, err, sizeof(err));
    pthread_mutex_lock(&g->lock);
    if (st == DEXEC_OK && nc != NULL) {
        dexec_conn **ng = realloc(g->grave, (g->ngrave + 1) * sizeof(*ng));

        if (ng != NULL) {
            g->grave = ng;
            g->grave[g->ngrave++] = g->conns[r];
        } else {
            /* nowhere to keep it: a caller holding it would be left dangling */
            st = DEXEC_ENOMEM;
            snprintf(err, sizeof(err), "out of memory");
        }
    }
    if (st == DEXEC_OK && nc != NULL) {
        g->conns[r] = nc;
        g->rs[r].state = RANK_LIVE;
        g->rs[r].restarted++;
        dexec_log(DEXEC_LOG_WARN, g->component,
                  "rank %d restarted in %.2f s (restart %d of max_restarts = %d): %s", r,
                  dexec_now() - t0, g->rs[r].restarts, g->rec.max_restarts,
                  dexec_conn_label(nc));
    } else {
        g->rs[r].state = RANK_DEAD;
        snprintf(g->rs[r].why, sizeof(g->rs[r].why), "restart %d failed: %s",
                 g->rs[r].restarts, err[0] ? err : "no reason given");
        dexec_log(DEXEC_LOG_ERROR, g->component, "rank %d: %s", r, g->rs[r].why);
        dexec_conn_free(nc);
    }
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

/* Rank r's connection c died (why: the connection's reason): logs it
 * once and restarts the rank if it may be. Only the first report of one
 * connection's death counts. */
static void note_death(dexec_group *g, int r, dexec_conn *c, const char *why)
{
    rank_state *s = &g->rs[r];

    pthread_mutex_lock(&g->lock);
    if (g->conns[r] != c || s->state != RANK_LIVE) {
        pthread_mutex_unlock(&g->lock);
        return;
    }
    snprintf(s->why, sizeof(s->why), "%s", why);
    s->deaths++;
    if (g->rec.restart != NULL && !g->stopping && s->restarts < g->rec.max_restarts) {
        restart_arg *a = malloc(sizeof(*a));

        if (s->th_joinable) {
            pthread_join(s->th, NULL); /* the last restart's thread, long done */
            s->th_joinable = 0;
        }
        s->restarts++;
        s->state = RANK_RESTARTING;
        s->since = dexec_now();
        dexec_log(DEXEC_LOG_WARN, g->component, "%s; restarting it (restart %d of %d)", why,
                  s->restarts, g->rec.max_restarts);
        if (a != NULL) {
            a->g = g;
            a->rank = r;
        }
        if (a == NULL || pthread_create(&s->th, NULL, restart_main, a) != 0) {
            free(a);
            s->state = RANK_DEAD;
            snprintf(s->why, sizeof(s->why), "%s; the restart could not start a thread", why);
            dexec_log(DEXEC_LOG_ERROR, g->component, "rank %d: %s", r, s->why);
        } else {
            s->th_joinable = 1;
        }
    } else {
        s->state = RANK_DEAD;
        if (g->rec.restart != NULL && !g->stopping)
            dexec_log(DEXEC_LOG_WARN, g->component, "%s; not restarted (max_restarts = %d%s)",
                      why, g->rec.max_restarts, g->rec.max_restarts > 0 ? ", all used" : "");
        else
            dexec_log(DEXEC_LOG_WARN, g->component, "%s", why);
    }
    pthread_mutex_unlock(&g->lock);
}

int dexec_group_rank_dead(dexec_group *g, int rank)
{
    int dead;

    if (g == NULL || rank < 0 || rank >= g->n)
        return 0;
    pthread_mutex_lock(&g->lock);
    dead = g->rs[rank].state == RANK_DEAD ||
           (g->rs[rank].state == RANK_LIVE &&
            (g->conns[rank] == NULL || dexec_conn_poll_dead(g->conns[rank])));
    pthread_mutex_unlock(&g->lock);
    return dead;
}

dexec_status dexec_group_revive(dexec_group *g, int rank, dexec_conn *c)
{
    dexec_conn **ng;

    if (g == NULL || c == NULL || rank < 0 || rank >= g->n)
        return DEXEC_EINVAL;
    pthread_mutex_lock(&g->lock);
    if (!(g->rs[rank].state == RANK_DEAD ||
          (g->rs[rank].state == RANK_LIVE &&
           (g->conns[rank] == NULL || dexec_conn_dead(g->conns[rank]))))) {
        pthread_mutex_unlock(&g->lock);
        return DEXEC_EINVAL;
    }
    if (g->conns[rank] != NULL) {
        ng = realloc(g->grave, (g->ngrave + 1) * sizeof(*ng));
        if (ng == NULL) {
            pthread_mutex_unlock(&g->lock);
            return DEXEC_ENOMEM;
        }
        g->grave = ng;
        g->grave[g->ngrave++] = g->conns[rank];
    }
    g->conns[rank] = c;
    g->rs[rank].state = RANK_LIVE;
    pthread_mutex_unlock(&g->lock);
    return DEXEC_OK;
}

void dexec_group_stop_recovery(dexec_group *g)
{
    if (g == NULL)
        return;
    pthread_mutex_lock(&g->lock);
    g->stopping = 1;
    pthread_mutex_unlock(&g->lock);
    for (int r = 0; r < g->n; r++) {
        pthread_t th;
        int join;

        pthread_mutex_lock(&g->lock);
        join = g->rs[r].th_joinable;
        th = g->rs[r].th;
        g->rs[r].th_joinable = 0;
        pthread_mutex_unlock(&g->lock);
        if (join)
            pthread_join(th, NULL);
    }
}

int dexec_group_size(const dexec_group *g)
{
    return g != NULL ? g->n : 0;
}

int dexec_group_num_slots(const dexec_group *g)
{
    return g != NULL ? g->n / g->width : 0;
}

dexec_status dexec_group_rank_stats(dexec_group *g, int rank, dexec_rank_stats *out)
{
    if (g == NULL || out == NULL || rank < 0 || rank >= g->n ||
        out->struct_size < DEXEC_RANK_STATS_SIZE_1_2)
        return DEXEC_EINVAL;
    pthread_mutex_lock(&g->lock);
    out->deaths = g->rs[rank].deaths;
    out->restarts = g->rs[rank].restarted;
    pthread_mutex_unlock(&g->lock);
    return DEXEC_OK;
}

void dexec_group_free(dexec_group *g)
{
    if (g == NULL)
        return;
    dexec_group_stop_recovery(g);
    for (int i = 0; i < g->n; i++)
        dexec_conn_free(g->conns[i]);
    for (size_t i = 0; i < g->ngrave; i++)
        dexec_conn_free(g->grave[i]);
    free(g->grave);
    free(g->conns);
    free(g->rs);
    free(g->load);
    free(g->heard);
    for (int i = 0; g->slot_lock != NULL && i < g->n / g->width; i++)
        pthread_mutex_destroy(&g->slot_lock[i]);
    free(g->slot_lock);
    free(g->formed);
    free(g->busy);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

/* Appends ", N" or "N" to a rank list. */
static void list_add(char *buf, size_t len, int rank)
{
    size_t l = strlen(buf);

    snprintf(buf + l, len - l, "%s%d", l > 0 ? ", " : "", rank);
}

/* Ranks whose per-call bookkeeping lives on the stack of
 * dexec_group_collective_rpc; larger groups allocate it. */
#define RPC_STACK_RANKS 8

dexec_status dexec_group_collective_rpc(dexec_group *g, const char *method, double timeout,
                                        const dexec_value *args, const dexec_value *kwargs,
                                        int unique_reply_rank, dexec_value **replies, char *err,
                                        size_t errlen)
{
    double deadline = dexec_now() + timeout;
    dexec_value *out = NULL;
    dexec_status sts_stack[RPC_STACK_RANKS], *sts, st = DEXEC_OK;
    dx_wait waits_stack[RPC_STACK_RANKS], *waits;
    char store[512], late[256], first_err[900];
    dx_mbuf params;
    int failed_rank = -1, sent = 0;

    /* set, not initialized: "= \"\"" would clear all 1156 bytes per call */
    late[0] = first_err[0] = '\0';
    if (replies != NULL)
        *replies = NULL;
    if (g == NULL || method == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "collective_rpc: no group or method");
    if (unique_reply_rank >= g->n)
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "collective_rpc %s: unique_reply_rank %d out of range (%d ranks)", method,
                       unique_reply_rank, g->n);
    if ((args != NULL && args->type != DEXEC_VAL_ARRAY) ||
        (kwargs != NULL && kwargs->type != DEXEC_VAL_MAP))
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "collective_rpc %s: args must be an array and kwargs a map", method);
    /* the params, [method, args, kwargs], encoded once for every rank (on
     * the stack when small); the wait array on the stack too */
    dx_mbuf_init(&params, store, sizeof(store));
    if (g->n <= RPC_STACK_RANKS) {
        sts = sts_stack;
        waits = waits_stack;
    } else {
        sts = malloc((size_t)g->n * sizeof(*sts));
        waits = malloc((size_t)g->n * sizeof(*waits));
    }
    if (sts == NULL || waits == NULL ||
        dx_msgpack_pack_call(&params, method, args, kwargs) != 0) {
        st = dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
        goto done;
    }
    sent = 1;
    for (int r = 0; r < g->n; r++) {
        dexec_conn *c = dexec_group_conn(g, r);
        dx_wait *w = &waits[r];

        w->c = c;
        w->done = NULL;
        w->done_user = NULL;
        w->result = NULL;
        w->msg[0] = '\0';
        sts[r] = dx_conn_send_packed(c, "execute_rpc", params.p, params.len, NULL, NULL, &w->id,
                                     w->msg, sizeof(w->msg));
        if (sts[r] == DEXEC_ECLOSED)
            note_death(g, r, c, w->msg);
        w->active = sts[r] == DEXEC_OK;
    }
    dx_conn_wait_all(waits, (size_t)g->n, deadline);
    for (int r = 0; r < g->n; r++) {
        if (sts[r] == DEXEC_OK) {
            sts[r] = waits[r].st;
            if (sts[r] == DEXEC_ECLOSED)
                note_death(g, r, waits[r].c, waits[r].msg);
        }
        if (sts[r] == DEXEC_ETIMEDOUT) {
            list_add(late, sizeof(late), r);
        } else if (sts[r] != DEXEC_OK && failed_rank < 0) {
            failed_rank = r;
            if (sts[r] == DEXEC_ECLOSED)
                snprintf(first_err, sizeof(first_err), "collective_rpc %s: %s", method,
                         waits[r].msg);
            else
                snprintf(first_err, sizeof(first_err), "collective_rpc %s: rank %d: %s", method,
                         r, waits[r].msg);
        }
    }
    if (failed_rank >= 0) {
        st = dx_fail(err, errlen, DEXEC_EWORKER, "%s", first_err);
        goto done;
    }
    if (late[0] != '\0') {
        st = dx_fail(err, errlen, DEXEC_ETIMEDOUT,
                     "collective_rpc %s: no reply from rank %s within %.3g s", method, late,
                     timeout);
        goto done;
    }
    if (unique_reply_rank >= 0) {
        out = waits[unique_reply_rank].result;
        waits[unique_reply_rank].result = NULL;
    } else {
        out = dexec_value_array();
        for (int r = 0; out != NULL && r < g->n; r++) {
            dexec_value *v = waits[r].result;

            waits[r].result = NULL;
            if (dexec_value_array_push(out, v != NULL ? v : dexec_value_nil()) != 0) {
                dexec_value_free(out);
                out = NULL;
            }
        }
        if (out == NULL)
            st = dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
    }
done:
    if (sent)
        for (int r = 0; r < g->n; r++)
            dexec_value_free(waits[r].result);
    if (sts != sts_stack) {
        free(sts);
        free(waits);
    }
    dx_mbuf_free(&params);
    if (st == DEXEC_OK && replies != NULL)
        *replies = out;
    else
        dexec_value_free(out);
    return st;
}

static void heard_set(double *p, double t)
{
    __atomic_store(p, &t, __ATOMIC_RELAXED);
}

static double heard_get(double *p)
{
    double t;

    __atomic_load(p, &t, __ATOMIC_RELAXED);
    return t;
}

/* One generate call in flight: a rank's share of the requests. */
typedef struct gcall {
    int rank;
    dexec_conn *c;
    size_t *index; /* batch position -> request index */
    size_t count;
    double *heard; /* the group's: when this rank last said anything */
    dexec_progress_fn fn;
    void *user;
    double fin;
} gcall;

static void on_progress(void *user, const char *method, const dexec_value *params)
{
    gcall *k = user;
    int64_t pos, image, step, total;

    heard_set(k->heard, dexec_now());
    if (strcmp(method, "progress") != 0 || k->fn == NULL)
        return;
    pos = dexec_value_as_int(dexec_value_array_get(params, 1), -1);
    image = dexec_value_as_int(dexec_value_array_get(params, 2), 0);
    step = dexec_value_as_int(dexec_value_array_get(params, 3), 0);
    total = dexec_value_as_int(dexec_value_array_get(params, 4), 0);
    if (pos < 0 || (size_t)pos >= k->count)
        return;
    k->fn(k->user, k->index[pos], (int)image, (int)step, (int)total);
}

static void fail_output(dexec_output *o, const dexec_request *req, dexec_status st, int rank,
                        const char *msg)
{
    dexec_output_clear(o);
    dexec_output_init(o);
    o->request_id = dx_strdup(req->request_id);
    o->status = st;
    o->rank = rank;
    o->error = dx_strdup(msg);
}

/* When a call's reply came: its outputs' total_s. */
static void stamp_done(void *user, dx_wait *w)
{
    gcall *k = user;

    (void)w;
    k->fin = dexec_now();
    heard_set(k->heard, k->fin);
}

/* The state of one step (dexec_group_generate). */
typedef struct step {
    dexec_group *g;
    const dexec_request *reqs;
    size_t n;
    dexec_output *outs;
    dexec_progress_fn progress;
    void *user;
    double start, deadline, timeout;
    gcall *calls; /* n slots: a call holds at least one request */
    dx_wait *waits;
    size_t *queue, nqueue; /* requests waiting for a live rank */
    int *tries;            /* times each request was lost with its worker */
    int *hung;             /* per rank: declared hung in this step */
    size_t failed;
    dexec_status last_st;
    char last[900];
} step;

static void step_fail(step *s, size_t i, dexec_status st, int rank, const char *msg)
{
    fail_output(&s->outs[i], &s->reqs[i], st, rank, msg);
    s->failed++;
    s->last_st = st;
    snprintf(s->last, sizeof(s->last), "%s", msg);
}

/* Gives back the load reserved for cnt requests on rank r's slot. */
static void load_release(dexec_group *g, int r, size_t cnt)
{
    pthread_mutex_lock(&g->lock);
    g->load[r] = g->load[r] >= cnt ? g->load[r] - cnt : 0;
    pthread_mutex_unlock(&g->lock);
}

/* Sends requests idx[0..cnt) to rank r as one call, its load reserved by
 * the caller (given back here if the call does not go out). On a dead connection
 * the requests go back to the queue (they never reached a worker) and the
 * death is noted. */
static void send_call(step *s, int r, dexec_conn *c, const size_t *idx, size_t cnt)
{
    size_t slot = 0;
    dexec_value *params, *batch;
    gcall *k;
    char msg[768];
    dexec_status st;

    int idle;

    /* idle but for this call (its load is reserved): the silence starts now */
    pthread_mutex_lock(&s->g->lock);
    idle = s->g->load[r] <= cnt;
    pthread_mutex_unlock(&s->g->lock);
    if (idle)
        heard_set(&s->g->heard[r], dexec_now());
    while (slot < s->n && s->waits[slot].active)
        slot++;
    if (slot == s->n || cnt == 0) {
        load_release(s->g, r, cnt);
        return; /* cannot happen: every call holds a request of its own */
    }
    k = &s->calls[slot];
    free(k->index);
    *k = (gcall){.rank = r, .c = c, .heard = &s->g->heard[r], .fn = s->progress, .user = s->user};
    k->index = malloc(cnt * sizeof(size_t));
    batch = dexec_value_array();
    params = dexec_value_array();
    if (k->index == NULL || batch == NULL || params == NULL) {
        dexec_value_free(batch);
        dexec_value_free(params);
        load_release(s->g, r, cnt);
        for (size_t j = 0; j < cnt; j++)
            step_fail(s, idx[j], DEXEC_ENOMEM, r, "generate: out of memory");
        return;
    }
    memcpy(k->index, idx, cnt * sizeof(size_t));
    k->count = cnt;
    for (size_t j = 0; j < cnt; j++)
        dexec_value_array_push(batch, dexec_request_to_value(&s->reqs[idx[j]]));
    dexec_value_array_push(params, batch);
    st = dexec_conn_send(c, "generate", params, on_progress, k, &s->waits[slot].id, msg,
                         sizeof(msg));
    dexec_value_free(params);
    if (st != DEXEC_OK)
        load_release(s->g, r, cnt);
    if (st == DEXEC_ECLOSED) {
        note_death(s->g, r, c, msg);
        for (size_t j = 0; j < cnt; j++)
            s->queue[s->nqueue++] = idx[j];
        return;
    }
    if (st != DEXEC_OK) {
        char m[900];

        snprintf(m, sizeof(m), "generate: rank %d: %s", r, msg);
        for (size_t j = 0; j < cnt; j++)
            step_fail(s, idx[j], DEXEC_EWORKER, r, m);
        return;
    }
    s->waits[slot] = (dx_wait){.c = c, .id = s->waits[slot].id, .active = 1,
                               .done = stamp_done, .done_user = k};
}

/* Deals the queued requests to the live slots, each to the slot with the
 * fewest requests in flight over every caller of the group (ties: the
 * lowest), reserving the load under the lock so that callers on other
 * threads see it at once. With no rank live nor restarting they fail. */
static void dispatch(step *s)
{
    dexec_group *g = s->g;
    int nr = g->n, nlive = 0, restarting = 0;
    int *pick = NULL, *live = calloc((size_t)nr, sizeof(int));
    dexec_conn **conns = calloc((size_t)nr, sizeof(*conns));
    size_t *idx = NULL, nq = s->nqueue;

    if (nq == 0 || live == NULL || conns == NULL)
        goto out;
    pick = malloc(nq * sizeof(*pick));
    idx = malloc(nq * sizeof(*idx));
    if (pick == NULL || idx == NULL)
        goto out;
    pthread_mutex_lock(&g->lock);
    for (int r = 0; r < nr; r++) {
        conns[r] = g->conns[r];
        if (g->rs[r].state == RANK_LIVE && !dexec_conn_dead(conns[r]))
            live[r] = 1, nlive++;
        restarting += g->rs[r].state == RANK_RESTARTING;
        /* this call may be the first to find them all dead: say why the
         * last one died (another caller saw it) */
        if (s->last[0] == '\0' && !live[r] && g->rs[r].why[0] != '\0')
            snprintf(s->last, sizeof(s->last), "%.500s", g->rs[r].why); /* names the rank */
    }
    for (size_t q = 0; nlive > 0 && q < nq; q++) {
        int best = -1;

        for (int r = 0; r < nr; r++)
            if (live[r] && (best < 0 || g->load[r] < g->load[best]))
                best = r;
        pick[q] = best;
        g->load[best]++;
    }
    pthread_mutex_unlock(&g->lock);
    if (nlive == 0) {
        if (restarting == 0) {
            for (size_t q = 0; q < s->nqueue; q++) {
                char m[900];

                snprintf(m, sizeof(m), "generate: no live rank to run the request on (%.700s)",
                         s->last[0] ? s->last : "every rank is dead");
                step_fail(s, s->queue[q], DEXEC_EWORKER, -1, m);
            }
            s->nqueue = 0;
        }
        goto out;
    }
    {
        size_t *q = malloc(nq * sizeof(*q));

        if (q == NULL) {
            pthread_mutex_lock(&g->lock);
            for (size_t j = 0; j < nq; j++)
                g->load[pick[j]]--;
            pthread_mutex_unlock(&g->lock);
            goto out;
        }
        memcpy(q, s->queue, nq * sizeof(*q));
        s->nqueue = 0;
        for (int r = 0; r < nr; r++) {
            size_t cnt = 0;

            for (size_t j = 0; j < nq; j++)
                if (pick[j] == r)
                    idx[cnt++] = q[j];
            if (cnt > 0)
                send_call(s, r, conns[r], idx, cnt);
        }
        free(q);
    }
out:
    free(pick);
    free(idx);
    free(live);
    free(conns);
}

/* A call ended. */
static void call_finished(step *s, size_t slot)
{
    dx_wait *w = &s->waits[slot];
    gcall *k = &s->calls[slot];
    dexec_group *g = s->g;
    dexec_value *res = w->result;
    dexec_status st = w->st;
    char msg[768], m[1100];
    int r = k->rank;

    w->active = 0;
    w->result = NULL;
    load_release(g, r, k->count);
    snprintf(msg, sizeof(msg), "%s", w->msg);
    if (st == DEXEC_ECLOSED) {
        int retries = g->rec.max_task_retries;

        if (s->hung[r])
            snprintf(msg, sizeof(msg), "%s: hung (nothing heard for %.3g s, timeouts.stall), "
                     "ended", dexec_conn_label(k->c), g->rec.stall_s);
        note_death(g, r, k->c, msg);
        for (size_t j = 0; j < k->count; j++) {
            size_t i = k->index[j];

            if (++s->tries[i] <= retries) {
                s->queue[s->nqueue++] = i;
            } else if (retries == 0) {
                snprintf(m, sizeof(m), "generate: %s", msg);
                step_fail(s, i, DEXEC_EWORKER, r, m);
            } else {
                snprintf(m, sizeof(m),
                         "generate: request %zu was lost with its worker %d times "
                         "(max_task_retries = %d): it may be what kills them; last: %s",
                         i, s->tries[i], retries, msg);
                step_fail(s, i, DEXEC_EWORKER, r, m);
            }
        }
        dexec_value_free(res);
        return;
    }
    if (st == DEXEC_OK &&
        (res == NULL || res->type != DEXEC_VAL_ARRAY || res->u.arr.len != k->count)) {
        st = DEXEC_EPROTO;
        snprintf(msg, sizeof(msg), "generate reply is not an array of %zu outputs", k->count);
    }
    for (size_t j = 0; st == DEXEC_OK && j < k->count; j++) {
        dexec_output *o = &s->outs[k->index[j]];

        st = dexec_output_from_value(res->u.arr.items[j], o, msg, sizeof(msg));
        if (st == DEXEC_OK) {
            o->rank = r;
            o->timings.total_s = k->fin - s->start;
        }
    }
    dexec_value_free(res);
    if (st != DEXEC_OK) {
        if (st == DEXEC_ETIMEDOUT)
            snprintf(m, sizeof(m), "generate: no reply from rank %d within %.3g s", r,
                     s->timeout);
        else
            snprintf(m, sizeof(m), "generate: rank %d: %s", r, msg);
        if (st == DEXEC_EPROTO)
            st = DEXEC_EWORKER;
        for (size_t j = 0; j < k->count; j++)
            step_fail(s, k->index[j], st, r, m);
    }
}

/* Ranks holding calls that have said nothing for stall_s: hung. */
static void check_stalls(step *s)
{
    dexec_group *g = s->g;
    double now = dexec_now();

    if (g->rec.stall_s <= 0)
        return;
    for (int r = 0; r < g->n; r++) {
        double heard = heard_get(&g->heard[r]);
        int holding = 0;
        dexec_conn *c = NULL;

        if (s->hung[r])
            continue;
        for (size_t k = 0; k < s->n; k++) {
            if (!s->waits[k].active || s->waits[k].finished || s->calls[k].rank != r)
                continue;
            holding = 1;
            c = s->calls[k].c;
        }
        if (!holding || now - heard < g->rec.stall_s || c != dexec_group_conn(g, r))
            continue;
        s->hung[r] = 1;
        dexec_log(DEXEC_LOG_WARN, g->component,
                  "%s: hung: nothing heard for %.3g s while holding requests "
                  "(timeouts.stall = %.3g s); %s", dexec_conn_label(c), now - heard,
                  g->rec.stall_s, g->rec.kill != NULL ? "killing it" : "dropping it");
        if (g->rec.kill != NULL)
            g->rec.kill(g->rec.user, r);
        else
            dexec_conn_shutdown(c);
    }
}

/* Waits between looks at the clock while a restart or a stall deadline
 * may need the waiter (seconds). */
#define TICK 0.05

static dexec_status generate_wide(dexec_group *g, int prefer, const dexec_request *reqs,
                                  size_t n, dexec_output *outs, double timeout,
                                  dexec_progress_fn progress, void *user, char *err,
                                  size_t errlen);

/* generate with the requests on slot (when it is live), or dealt to the
 * least loaded live slots (slot < 0). */
static dexec_status group_generate(dexec_group *g, int slot, const dexec_request *reqs, size_t n,
                                   dexec_output *outs, double timeout,
                                   dexec_progress_fn progress, void *user, char *err,
                                   size_t errlen)
{
    step s = {.g = g, .reqs = reqs, .n = n, .outs = outs, .progress = progress, .user = user,
              .timeout = timeout, .last_st = DEXEC_OK};
    int nr = g->n;
    dexec_status ret = DEXEC_OK;
    char msg[768];

    s.start = dexec_now();
    s.deadline = s.start + timeout;
    for (size_t i = 0; i < n; i++) {
        if (DEXEC_STRUCT_CHECK(&reqs[i], dexec_request, DEXEC_REQUEST_SIZE_1_1, msg,
                               sizeof(msg)) != DEXEC_OK)
            return dx_fail(err, errlen, DEXEC_EINVAL, "generate: request %zu: %s", i, msg);
    }
    if (n == 0)
        return DEXEC_OK;
    if (g->width > 1) /* parallel groups: on slot's group, else the least busy live one */
        return generate_wide(g, slot, reqs, n, outs, timeout, progress, user, err, errlen);
    s.calls = calloc(n, sizeof(*s.calls));
    s.waits = calloc(n, sizeof(*s.waits));
    s.queue = calloc(n, sizeof(*s.queue));
    s.tries = calloc(n, sizeof(*s.tries));
    s.hung = calloc((size_t)nr, sizeof(*s.hung));
    if (s.calls == NULL || s.waits == NULL || s.queue == NULL || s.tries == NULL ||
        s.hung == NULL) {
        ret = dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
        goto done;
    }
    /* on the slot asked for while it is live; anywhere else (and after a
     * death) by load */
    if (slot >= 0 && slot < nr) {
        dexec_conn *c;
        int live;

        pthread_mutex_lock(&g->lock);
        c = g->conns[slot];
        live = g->rs[slot].state == RANK_LIVE && !dexec_conn_dead(c);
        if (live)
            g->load[slot] += n;
        pthread_mutex_unlock(&g->lock);
        if (live) {
            size_t *all = malloc(n * sizeof(*all));

            if (all == NULL) {
                load_release(g, slot, n);
                ret = dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
                goto done;
            }
            for (size_t i = 0; i < n; i++)
                all[i] = i;
            send_call(&s, slot, c, all, n);
            free(all);
        } else {
            for (size_t i = 0; i < n; i++)
                s.queue[s.nqueue++] = i;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            s.queue[s.nqueue++] = i;
    }
    dispatch(&s);
    for (;;) {
        int busy = 0, restarting = 0;
        double now = dexec_now(), until;

        for (size_t k = 0; k < n; k++)
            busy |= s.waits[k].active;
        pthread_mutex_lock(&g->lock);
        for (int r = 0; r < nr; r++)
            restarting |= g->rs[r].state == RANK_RESTARTING;
        pthread_mutex_unlock(&g->lock);
        if (!busy && (s.nqueue == 0 || !restarting))
            break;
        if (dx_remaining(s.deadline) <= 0) {
            if (s.nqueue > 0) {
                char m[900];

                snprintf(m, sizeof(m), "generate: no live rank took the request within %.3g s "
                         "(%.700s)", timeout, s.last[0] ? s.last : "ranks restarting");
                for (size_t q = 0; q < s.nqueue; q++)
                    step_fail(&s, s.queue[q], DEXEC_ETIMEDOUT, -1, m);
                s.nqueue = 0;
            }
            if (!busy)
                break;
        }
        until = restarting || g->rec.stall_s > 0 ? now + TICK : s.deadline;
        if (busy)
            dx_conn_wait_any(s.waits, n, s.deadline, until);
        else
            nanosleep(&(struct timespec){.tv_nsec = (long)(TICK * 1e9)}, NULL);
        for (size_t k = 0; k < n; k++)
            if (s.waits[k].active && s.waits[k].finished)
                call_finished(&s, k);
        check_stalls(&s);
        dispatch(&s);
    }
    if (s.failed == n) {
        ret = s.last_st == DEXEC_ETIMEDOUT ? DEXEC_ETIMEDOUT : DEXEC_EWORKER;
        dexec_errorf(err, errlen, "%s", s.last);
    }
done:
    for (size_t k = 0; s.calls != NULL && k < n; k++)
        free(s.calls[k].index);
    free(s.calls);
    free(s.waits);
    free(s.queue);
    free(s.tries);
    free(s.hung);
    return ret;
}

dexec_status dexec_group_generate(dexec_group *g, const dexec_request *reqs, size_t n,
                                  dexec_output *outs, double timeout, dexec_progress_fn progress,
                                  void *user, char *err, size_t errlen)
{
    return group_generate(g, -1, reqs, n, outs, timeout, progress, user, err, errlen);
}

dexec_status dexec_group_generate_on(dexec_group *g, int slot, const dexec_request *reqs,
                                     size_t n, dexec_output *outs, double timeout,
                                     dexec_progress_fn progress, void *user, char *err,
                                     size_t errlen)
{
    if (slot < 0 || slot >= dexec_group_num_slots(g))
        return dx_fail(err, errlen, DEXEC_EINVAL, "generate: slot %d is outside 0..%d", slot,
                       dexec_group_num_slots(g) - 1);
    return group_generate(g, slot, reqs, n, outs, timeout, progress, user, err, errlen);
}

dexec_status dexec_group_check_health(dexec_group *g, double timeout, char *err, size_t errlen)
{
    double deadline = dexec_now() + timeout;
    uint32_t *ids = calloc((size_t)g->n, sizeof(*ids));
    dexec_status *sts = calloc((size_t)g->n, sizeof(*sts)), ret = DEXEC_OK;
    dx_wait *waits = calloc((size_t)g->n, sizeof(*waits));
    int *state = calloc((size_t)g->n, sizeof(*state));
    char msg[768];

    if (ids == NULL || sts == NULL || waits == NULL || state == NULL) {
        free(ids);
        free(sts);
        free(waits);
        free(state);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
    }
    for (int r = 0; r < g->n; r++) {
        dexec_conn *c;

        pthread_mutex_lock(&g->lock);
        c = g->conns[r];
        state[r] = g->rs[r].state;
        if (ret == DEXEC_OK && state[r] == RANK_RESTARTING)
            ret = dx_fail(err, errlen, DEXEC_EUNHEALTHY,
                          "Worker %d unhealthy: restarting (restart %d of max_restarts = %d, "
                          "for %.1f s) after: %s", r, g->rs[r].restarts, g->rec.max_restarts,
                          dexec_now() - g->rs[r].since, g->rs[r].why);
        else if (ret == DEXEC_OK && state[r] == RANK_DEAD)
            ret = dx_fail(err, errlen, DEXEC_EUNHEALTHY, "Worker %d unhealthy: %s", r,
                          g->rs[r].why);
        pthread_mutex_unlock(&g->lock);
        if (state[r] != RANK_LIVE)
            continue;
        sts[r] = dexec_conn_send(c, "get_rank", NULL, NULL, NULL, &ids[r], msg, sizeof(msg));
        waits[r] = (dx_wait){.c = c, .id = ids[r], .active = sts[r] == DEXEC_OK};
        snprintf(waits[r].msg, sizeof(waits[r].msg), "%s", msg);
        if (sts[r] == DEXEC_ECLOSED)
            note_death(g, r, c, msg);
    }
    dx_conn_wait_all(waits, (size_t)g->n, deadline);
    for (int r = 0; r < g->n; r++) {
        dexec_value *res = NULL;
        dexec_status st = sts[r];

        if (state[r] != RANK_LIVE)
            continue;
        if (st == DEXEC_OK) {
            st = waits[r].st;
            res = waits[r].result;
            if (st == DEXEC_ECLOSED)
                note_death(g, r, waits[r].c, waits[r].msg);
        }
        snprintf(msg, sizeof(msg), "%s", waits[r].msg);
        if (ret == DEXEC_OK) {
            if (st == DEXEC_ETIMEDOUT)
                ret = dx_fail(err, errlen, DEXEC_EUNHEALTHY,
                              "Worker %d unhealthy: no answer to get_rank within %.3g s", r,
                              timeout);
            else if (st != DEXEC_OK)
                ret = dx_fail(err, errlen, DEXEC_EUNHEALTHY, "Worker %d unhealthy: %s", r, msg);
            else if (dexec_value_as_int(res, -1) != r)
                ret = dx_fail(err, errlen, DEXEC_EUNHEALTHY,
                              "Worker %d unhealthy: it reports rank %lld, expected %d", r,
                              (long long)dexec_value_as_int(res, -1), r);
        }
        dexec_value_free(res);
    }
    free(ids);
    free(sts);
    free(waits);
    free(state);
    return ret;
}

void dexec_group_shutdown(dexec_group *g, double deadline)
{
    uint32_t *ids = calloc((size_t)g->n, sizeof(*ids));
    int *sent = calloc((size_t)g->n, sizeof(*sent));
    char msg[256];

    if (ids == NULL || sent == NULL) {
        free(ids);
        free(sent);
        return;
    }
    dexec_group_stop_recovery(g);
    for (int r = 0; r < g->n; r++)
        if (g->conns[r] != NULL && !dexec_conn_dead(g->conns[r]))
            sent[r] = dexec_conn_send(g->conns[r], "shutdown", NULL, NULL, NULL, &ids[r], msg,
                                      sizeof(msg)) == DEXEC_OK;
    for (int r = 0; r < g->n; r++)
        if (sent[r])
            dexec_conn_wait(g->conns[r], ids[r], deadline, NULL, msg, sizeof(msg));
    free(ids);
    free(sent);
}

/* ---- parallel groups ---------------------------------------------------------
 *
 * With dexec_group_form(g, cfg, seq) the ranks come in slots of width =
 * cfg x seq consecutive ranks (slot s: ranks s*width .. s*width+width-1,
 * member m = rank s*width + m). Each request goes to one slot, whose every
 * member gets the same generate call (sent under the slot's lock, so that
 * all members see the slot's calls in one order); member 0's outputs are
 * the request's, the others return no images. A slot's collectives are
 * set up by two worker methods through execute_rpc: parallel_open on
 * every member (each makes its mailbox and says where it is), then
 * parallel_join with everyone's answer. A slot whose call failed in any
 * way is formed again before its next call. */

/* Runs execute_rpc [method, [args_m], {}] on each member of slot s;
 * results[m] are the caller's on DEXEC_OK. */
static dexec_status slot_rpc(dexec_group *g, int s, const char *method, dexec_value **args,
                             double deadline, dexec_value **results, char *err, size_t errlen)
{
    const int w = g->width;
    dx_wait waits[64];
    dexec_status st = DEXEC_OK;
    char msg[768];

    memset(waits, 0, sizeof(waits));
    for (int m = 0; m < w; m++) {
        int r = s * w + m;
        dexec_conn *c = dexec_group_conn(g, r);
        dexec_value *params = dexec_value_array(), *a = dexec_value_array();

        dexec_value_array_push(params, dexec_value_str(method));
        if (args != NULL && args[m] != NULL)
            dexec_value_array_push(a, dexec_value_clone(args[m]));
        dexec_value_array_push(params, a);
        dexec_value_array_push(params, dexec_value_map());
        st = dexec_conn_send(c, "execute_rpc", params, NULL, NULL, &waits[m].id, msg, sizeof(msg));
        dexec_value_free(params);
        waits[m].c = c;
        waits[m].active = st == DEXEC_OK;
        if (st != DEXEC_OK) {
            if (st == DEXEC_ECLOSED)
                note_death(g, r, c, msg);
            dexec_errorf(err, errlen, "%s: rank %d: %s", method, r, msg);
            st = DEXEC_EWORKER;
            break;
        }
    }
    dx_conn_wait_all(waits, (size_t)w, deadline);
    for (int m = 0; m < w; m++) {
        if (!waits[m].active)
            continue;
        if (waits[m].st == DEXEC_OK) {
            results[m] = waits[m].result;
            continue;
        }
        if (waits[m].st == DEXEC_ECLOSED)
            note_death(g, s * w + m, waits[m].c, waits[m].msg);
        if (st == DEXEC_OK) {
            st = waits[m].st == DEXEC_ETIMEDOUT ? DEXEC_ETIMEDOUT : DEXEC_EWORKER;
            dexec_errorf(err, errlen, "%s: rank %d: %s", method, s * w + m, waits[m].msg);
        }
    }
    if (st != DEXEC_OK)
        for (int m = 0; m < w; m++) {
            dexec_value_free(results[m]);
            results[m] = NULL;
        }
    return st;
}

/* Sets up slot s's collectives (every member live): mailboxes in shared
 * memory when the members share a host (or transport = shm), TCP links
 * between them otherwise (or transport = tcp). */
static dexec_status form_slot(dexec_group *g, int s, double deadline, char *err, size_t errlen)
{
    const int w = g->width;
    dexec_value *opened[64] = {NULL}, *joined[64] = {NULL}, *args[64] = {NULL}, *peers = NULL;
    dexec_value *oa[64] = {NULL};
    const char *tr = strcmp(g->transport, "tcp") == 0 ? "tcp" : "shm";
    char msg[900], token[33] = "";
    dexec_status st = DEXEC_OK;

    for (int round = 0; round < 2; round++) {
        int other = -1;

        for (int m = 0; m < w; m++) {
            oa[m] = dexec_value_map();
            dexec_value_map_set(oa[m], "transport", dexec_value_str(tr));
        }
        st = slot_rpc(g, s, "parallel_open", oa, deadline, opened, msg, sizeof(msg));
        for (int m = 0; m < w; m++) {
            dexec_value_free(oa[m]);
            oa[m] = NULL;
        }
        if (st != DEXEC_OK) {
            dexec_errorf(err, errlen, "group %d (ranks %d-%d): %s", s, s * w, s * w + w - 1, msg);
            return st;
        }
        for (int m = 1; m < w && other < 0; m++)
            if (strcmp(dexec_value_as_str(dexec_value_map_get(opened[0], "host"), ""),
                       dexec_value_as_str(dexec_value_map_get(opened[m], "host"), "?")) != 0)
                other = m;
        if (other < 0 || strcmp(tr, "tcp") == 0)
            break;
        if (strcmp(g->transport, "shm") == 0) {
            st = DEXEC_ENOTSUP;
            dexec_errorf(err, errlen,
                         "group %d: ranks %d and %d are not on one host (%s, %s) and "
                         "parallel.transport = \"shm\": set it to \"auto\" or \"tcp\"",
                         s, s * w, s * w + other,
                         dexec_value_as_str(dexec_value_map_get(opened[0], "host"), ""),
                         dexec_value_as_str(dexec_value_map_get(opened[other], "host"), ""));
            break;
        }
        /* members on different hosts: links over TCP instead */
        slot_rpc(g, s, "parallel_leave", NULL, deadline, joined, msg, sizeof(msg));
        for (int m = 0; m < w; m++) {
            dexec_value_free(opened[m]);
            dexec_value_free(joined[m]);
            opened[m] = joined[m] = NULL;
        }
        tr = "tcp";
    }
    if (st == DEXEC_OK && strcmp(tr, "tcp") == 0) {
        unsigned char raw[16];

        if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
            st = DEXEC_EIO;
            dexec_errorf(err, errlen, "group %d: getrandom for the group's token failed", s);
        }
        for (size_t i = 0; i < sizeof(raw); i++)
            snprintf(token + 2 * i, 3, "%02x", raw[i]);
    }
    if (st == DEXEC_OK) {
        peers = dexec_value_array();
        for (int m = 0; m < w; m++) {
            dexec_value *p = dexec_value_map();
            const char *key = strcmp(tr, "tcp") == 0 ? "address" : "shm";

            dexec_value_map_set(p, key, dexec_value_clone(dexec_value_map_get(opened[m], key)));
            dexec_value_map_set(p, "pid", dexec_value_clone(dexec_value_map_get(opened[m], "pid")));
            dexec_value_array_push(peers, p);
        }
        for (int m = 0; m < w; m++) {
            args[m] = dexec_value_map();
            dexec_value_map_set(args[m], "index", dexec_value_int(m));
            dexec_value_map_set(args[m], "cfg", dexec_value_int(g->cfg));
            dexec_value_map_set(args[m], "sequence", dexec_value_int(g->seq));
            dexec_value_map_set(args[m], "timeout", dexec_value_float(g->coll_timeout));
            if (token[0] != '\0')
                dexec_value_map_set(args[m], "token", dexec_value_str(token));
            dexec_value_map_set(args[m], "peers", dexec_value_clone(peers));
        }
        st = slot_rpc(g, s, "parallel_join", args, deadline, joined, msg, sizeof(msg));
        if (st != DEXEC_OK)
            dexec_errorf(err, errlen, "group %d (ranks %d-%d): %s", s, s * w, s * w + w - 1, msg);
        else
            dexec_log(DEXEC_LOG_INFO, g->component[0] ? g->component : "group",
                      "group %d (ranks %d-%d) formed over %s", s, s * w, s * w + w - 1,
                      strcmp(tr, "tcp") == 0 ? "TCP" : "shared memory");
    } else {
        /* the mailboxes made by parallel_open go with parallel_leave */
        slot_rpc(g, s, "parallel_leave", NULL, deadline, joined, msg, sizeof(msg));
    }
    for (int m = 0; m < w; m++) {
        dexec_value_free(opened[m]);
        dexec_value_free(joined[m]);
        dexec_value_free(args[m]);
    }
    dexec_value_free(peers);
    return st;
}

dexec_status dexec_group_form(dexec_group *g, int cfg, int seq, const char *transport,
                              double timeout, char *err, size_t errlen)
{
    int w = cfg * seq, nslots;
    double deadline = dexec_now() + timeout;

    if (g == NULL || cfg < 1 || cfg > 2 || seq < 1 || w > 64 || g->n % w != 0)
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "parallel groups of cfg %d x sequence %d do not tile %d ranks: num_gpus "
                       "must be a multiple of parallel.cfg x parallel.sequence (at most 64)",
                       cfg, seq, g != NULL ? g->n : 0);
    if (transport == NULL)
        transport = "auto";
    if (strcmp(transport, "auto") != 0 && strcmp(transport, "shm") != 0 &&
        strcmp(transport, "tcp") != 0)
        return dx_fail(err, errlen, DEXEC_EINVAL, "parallel transport '%s' is not auto, shm or tcp",
                       transport);
    snprintf(g->transport, sizeof(g->transport), "%s", transport);
    if (w == 1)
        return DEXEC_OK;
    nslots = g->n / w;
    g->formed = calloc((size_t)nslots, sizeof(int));
    g->busy = calloc((size_t)nslots, sizeof(int));
    g->slot_lock = calloc((size_t)nslots, sizeof(pthread_mutex_t));
    if (g->formed == NULL || g->busy == NULL || g->slot_lock == NULL)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
    for (int s = 0; s < nslots; s++)
        pthread_mutex_init(&g->slot_lock[s], NULL);
    g->width = w;
    g->cfg = cfg;
    g->seq = seq;
    g->coll_timeout = timeout;
    for (int s = 0; s < nslots; s++) {
        dexec_status st = form_slot(g, s, deadline, err, errlen);

        if (st != DEXEC_OK)
            return st;
        g->formed[s] = 1;
    }
    dexec_log(DEXEC_LOG_INFO, g->component[0] ? g->component : "group",
              "%d parallel group(s) of cfg %d x sequence %d formed", nslots, cfg, seq);
    return DEXEC_OK;
}

dexec_status dexec_group_form_from_config(dexec_group *g, const dexec_config *cfg, char *err,
                                          size_t errlen)
{
    int64_t pc = 1, ps = 1;
    double gen = 300.0;
    const char *tr = "auto";

    dexec_config_get_int(cfg, "parallel.cfg", &pc);
    dexec_config_get_int(cfg, "parallel.sequence", &ps);
    dexec_config_get_string(cfg, "parallel.transport", &tr);
    dexec_config_get_float(cfg, "timeouts.generate", &gen);
    return dexec_group_form(g, (int)pc, (int)ps, tr, gen, err, errlen);
}

/* Whether every member of slot s is live; *restarting when one restarts. */
static int slot_live(dexec_group *g, int s, int *restarting)
{
    int live = 1;

    pthread_mutex_lock(&g->lock);
    for (int m = 0; m < g->width; m++) {
        int r = s * g->width + m;

        if (g->rs[r].state == RANK_RESTARTING)
            *restarting = 1;
        if (g->rs[r].state != RANK_LIVE || dexec_conn_dead(g->conns[r]))
            live = 0;
    }
    pthread_mutex_unlock(&g->lock);
    return live;
}

/* Slot s must be formed again before its next call. */
static void slot_unform(dexec_group *g, int s)
{
    pthread_mutex_lock(&g->slot_lock[s]);
    g->formed[s] = 0;
    pthread_mutex_unlock(&g->slot_lock[s]);
}

/* Whether a member's generate reply holds count outputs, all OK. */
static int member_outputs_ok(const dexec_value *res, size_t count)
{
    if (res == NULL || res->type != DEXEC_VAL_ARRAY || res->u.arr.len != count)
        return 0;
    for (size_t j = 0; j < count; j++) {
        dexec_output o;
        char msg[256];
        int ok;

        dexec_output_init(&o);
        ok = dexec_output_from_value(res->u.arr.items[j], &o, msg, sizeof(msg)) == DEXEC_OK &&
             o.status == DEXEC_OK;
        dexec_output_clear(&o);
        if (!ok)
            return 0;
    }
    return 1;
}

/* A member's generate call ended (on the waiting thread, as it ends). */
typedef struct member_end {
    dexec_group *g;
    int rank;
    dexec_conn *c;
} member_end;

static void member_done(void *user, dx_wait *w)
{
    member_end *e = user;
    dexec_group *g = e->g;
    int same;

    if (w->st != DEXEC_ECLOSED || g->rec.kill == NULL)
        return;
    /* A member whose connection closed while its process may live (a
     * probe unanswered: hung) is ended now, so that the other members,
     * waiting for it in a collective, fail at once rather than at their
     * deadline. Not when the rank was replaced meanwhile. */
    pthread_mutex_lock(&g->lock);
    same = g->conns[e->rank] == e->c && g->rs[e->rank].state == RANK_LIVE;
    pthread_mutex_unlock(&g->lock);
    if (same)
        g->rec.kill(g->rec.user, e->rank);
}

/* Waits for every member's call. A slot whose first member has reported
 * no progress for timeouts.stall while its calls run is hung (a member
 * stuck where the silence watch cannot see it: its compute thread, with
 * its I/O thread answering probes): every member of it is ended (or its
 * connection shut), which fails the others' collectives at once. */
static void wait_slots(dexec_group *g, dx_wait *waits, const size_t *dealn, const double *heard,
                       double deadline)
{
    const int w = g->width, nslots = g->n / w;
    int *hung = calloc((size_t)nslots, sizeof(int));

    for (;;) {
        int busy = 0;
        double now = dexec_now();

        for (int r = 0; r < g->n; r++)
            busy |= waits[r].active && !waits[r].finished;
        if (!busy)
            break;
        for (int s = 0; hung != NULL && g->rec.stall_s > 0 && s < nslots; s++) {
            int running = 0;

            for (int m = 0; m < w; m++)
                running |= waits[s * w + m].active && !waits[s * w + m].finished;
            if (dealn[s] == 0 || !running || hung[s] || now - heard[s] < g->rec.stall_s)
                continue;
            hung[s] = 1;
            dexec_log(DEXEC_LOG_WARN, g->component,
                      "group %d (ranks %d-%d): hung: no progress for %.3g s (timeouts.stall = "
                      "%.3g s); %s",
                      s, s * w, s * w + w - 1, now - heard[s], g->rec.stall_s,
                      g->rec.kill != NULL ? "killing its ranks" : "dropping its ranks");
            for (int m = 0; m < w; m++) {
                if (g->rec.kill != NULL)
                    g->rec.kill(g->rec.user, s * w + m);
                else
                    dexec_conn_shutdown(waits[s * w + m].c);
            }
        }
        dx_conn_wait_any(waits, (size_t)g->n, deadline,
                         g->rec.stall_s > 0 ? now + TICK : deadline);
        if (dx_remaining(deadline) <= 0) {
            dx_conn_wait_any(waits, (size_t)g->n, deadline, deadline);
            break;
        }
    }
    free(hung);
}

static dexec_status generate_wide(dexec_group *g, int prefer, const dexec_request *reqs,
                                  size_t n, dexec_output *outs, double timeout,
                                  dexec_progress_fn progress, void *user, char *err,
                                  size_t errlen)
{
    const int w = g->width, nslots = g->n / w;
    double start = dexec_now(), deadline = start + timeout;
    double *heard = calloc((size_t)nslots, sizeof(double)); /* per slot: its last progress */
    size_t *queue = calloc(n, sizeof(size_t)), nq = n, nfailed = 0;
    int *tries = calloc(n, sizeof(int)), *order = calloc((size_t)nslots, sizeof(int));
    int *load = calloc((size_t)nslots, sizeof(int));
    size_t **deal = calloc((size_t)nslots, sizeof(size_t *)),
           *dealn = calloc((size_t)nslots, sizeof(size_t));
    dx_wait *waits = calloc((size_t)g->n, sizeof(dx_wait));
    gcall *calls = calloc((size_t)nslots, sizeof(gcall));
    member_end *ends = calloc((size_t)g->n, sizeof(member_end));
    dexec_status last_st = DEXEC_EWORKER;
    char last[1200] = "";

    for (size_t i = 0; i < n; i++) {
        dexec_output_init(&outs[i]);
        if (queue != NULL)
            queue[i] = i;
    }
    for (int s = 0; deal != NULL && s < nslots; s++)
        deal[s] = calloc(n, sizeof(size_t));
    if (queue == NULL || tries == NULL || order == NULL || load == NULL || deal == NULL ||
        dealn == NULL || heard == NULL ||
        waits == NULL || calls == NULL || ends == NULL ||
        (nslots > 0 && deal[nslots - 1] == NULL)) {
        nq = 0;
        nfailed = n;
        last_st = DEXEC_ENOMEM;
        snprintf(last, sizeof(last), "generate: out of memory");
        for (size_t i = 0; i < n; i++)
            fail_output(&outs[i], &reqs[i], DEXEC_ENOMEM, -1, last);
    }
    while (nq > 0) {
        int nuse = 0, restarting = 0;
        char why[900] = "";

        /* the usable slots, the least busy first */
        for (int s = 0; s < nslots; s++) {
            if (!slot_live(g, s, &restarting))
                continue;
            {
                int formed;

                pthread_mutex_lock(&g->slot_lock[s]);
                if (!g->formed[s]) {
                    double d = dexec_now() + 60.0 < deadline ? dexec_now() + 60.0 : deadline;

                    if (form_slot(g, s, d, why, sizeof(why)) == DEXEC_OK)
                        g->formed[s] = 1;
                    else
                        snprintf(last, sizeof(last), "generate: %s", why);
                }
                formed = g->formed[s];
                load[s] = g->busy[s];
                pthread_mutex_unlock(&g->slot_lock[s]);
                if (!formed)
                    continue;
            }
            order[nuse++] = s;
        }
        for (int i = 1; i < nuse; i++)
            for (int j = i; j > 0 && load[order[j]] < load[order[j - 1]]; j--) {
                int t = order[j];

                order[j] = order[j - 1];
                order[j - 1] = t;
            }
        /* the first deal goes to the slot asked for while it is usable */
        for (int i = 0; prefer >= 0 && i < nuse; i++)
            if (order[i] == prefer) {
                memmove(order + 1, order, (size_t)i * sizeof(*order));
                order[0] = prefer;
                nuse = 1; /* all of this call's requests on it */
                break;
            }
        prefer = -1;
        if (nuse == 0) {
            if (restarting && dexec_now() < deadline) {
                nanosleep(&(struct timespec){.tv_nsec = (long)(TICK * 1e9)}, NULL);
                continue;
            }
            {
                char m[1100];

                snprintf(m, sizeof(m),
                         "generate: no parallel group has all its ranks live "
                         "(%.800s)",
                         last[0] ? last : "every group lost a rank");
                snprintf(last, sizeof(last), "%s", m);
            }
            last_st = restarting ? DEXEC_ETIMEDOUT : DEXEC_EWORKER;
            for (size_t q = 0; q < nq; q++) {
                fail_output(&outs[queue[q]], &reqs[queue[q]], last_st, -1, last);
                nfailed++;
            }
            break;
        }
        memset(dealn, 0, (size_t)nslots * sizeof(size_t));
        for (size_t q = 0; q < nq; q++) {
            int s = order[q % (size_t)nuse];

            deal[s][dealn[s]++] = queue[q];
        }
        nq = 0;
        memset(waits, 0, (size_t)g->n * sizeof(dx_wait));
        for (int s = 0; s < nslots; s++) {
            dexec_value *params, *batch;

            free(calls[s].index);
            calls[s] = (gcall){.rank = s * w, .heard = &heard[s], .fn = progress, .user = user};
            heard[s] = dexec_now();
            if (dealn[s] == 0)
                continue;
            calls[s].index = malloc(dealn[s] * sizeof(size_t));
            if (calls[s].index != NULL)
                memcpy(calls[s].index, deal[s], dealn[s] * sizeof(size_t));
            calls[s].count = calls[s].index != NULL ? dealn[s] : 0;
            batch = dexec_value_array();
            for (size_t j = 0; j < dealn[s]; j++)
                dexec_value_array_push(batch, dexec_request_to_value(&reqs[deal[s][j]]));
            params = dexec_value_array();
            dexec_value_array_push(params, batch);
            {
                dexec_value *o = dexec_value_map();

                /* the members compute it as the group (doc/protocol.md) */
                dexec_value_map_set(o, "parallel", dexec_value_bool(1));
                dexec_value_array_push(params, o);
            }
            pthread_mutex_lock(&g->slot_lock[s]);
            g->busy[s]++;
            for (int m = 0; m < w; m++) {
                int r = s * w + m;
                dexec_conn *c = dexec_group_conn(g, r);
                dx_wait *wt = &waits[r];
                char msg[768];
                dexec_status st;

                /* member 0 reports progress; the others' only count as heard */
                st = dexec_conn_send(c, "generate", params, m == 0 ? on_progress : NULL,
                                     m == 0 ? &calls[s] : NULL, &wt->id, msg, sizeof(msg));
                *wt = (dx_wait){
                    .c = c, .id = wt->id, .active = 1, .done = member_done, .done_user = &ends[r]};
                ends[r] = (member_end){.g = g, .rank = r, .c = c};
                if (st != DEXEC_OK) {
                    wt->finished = 1;
                    wt->st = st;
                    snprintf(wt->msg, sizeof(wt->msg), "%s", msg);
                }
            }
            pthread_mutex_unlock(&g->slot_lock[s]);
            dexec_value_free(params);
        }
        wait_slots(g, waits, dealn, heard, deadline);
        for (int s = 0; s < nslots; s++) {
            int bad = -1, dead = -1, timedout = 0;
            dexec_value *res;

            if (dealn[s] == 0)
                continue;
            pthread_mutex_lock(&g->slot_lock[s]);
            g->busy[s]--;
            pthread_mutex_unlock(&g->slot_lock[s]);
            for (int m = 0; m < w; m++) {
                dx_wait *wt = &waits[s * w + m];

                if (wt->st == DEXEC_ECLOSED) {
                    note_death(g, s * w + m, wt->c, wt->msg);
                    if (dead < 0)
                        dead = m;
                } else if (wt->st == DEXEC_ETIMEDOUT) {
                    timedout = 1;
                }
                if (wt->st != DEXEC_OK && bad < 0)
                    bad = m;
            }
            res = waits[s * w].result;
            if (bad < 0 &&
                (res == NULL || res->type != DEXEC_VAL_ARRAY || res->u.arr.len != dealn[s])) {
                bad = 0;
                waits[s * w].st = DEXEC_EPROTO;
                snprintf(waits[s * w].msg, sizeof(waits[s * w].msg),
                         "generate reply is not an array of %zu outputs", dealn[s]);
            }
            if (bad < 0) {
                /* a member whose request failed after the last exchange
                 * (the first's outputs are fine) gave up on the group too */
                for (int m = 1; m < w; m++)
                    if (!member_outputs_ok(waits[s * w + m].result, dealn[s]))
                        slot_unform(g, s);
                for (size_t j = 0; j < dealn[s]; j++) {
                    size_t i = deal[s][j];
                    char msg[768];

                    if (dexec_output_from_value(res->u.arr.items[j], &outs[i], msg, sizeof(msg)) !=
                        DEXEC_OK) {
                        fail_output(&outs[i], &reqs[i], DEXEC_EWORKER, s * w, msg);
                        slot_unform(g, s);
                    }
                    outs[i].rank = s * w;
                    outs[i].timings.total_s = dexec_now() - start;
                    if (outs[i].status != DEXEC_OK)
                        slot_unform(g, s); /* a member gave up: the collectives start afresh */
                    /* refused for its own input, or cancelled: the request
                     * failed alone (dexec_engine_step), not the group */
                    if (outs[i].status != DEXEC_OK && outs[i].status != DEXEC_EINVAL &&
                        outs[i].status != DEXEC_ECANCELED) {
                        nfailed++;
                        last_st = outs[i].status;
                        snprintf(last, sizeof(last), "%s",
                                 outs[i].error != NULL ? outs[i].error : "");
                    }
                }
            } else {
                int m = dead >= 0 ? dead : bad;
                dx_wait *wt = &waits[s * w + m];
                char m2[1100];

                slot_unform(g, s);
                for (size_t j = 0; j < dealn[s]; j++) {
                    size_t i = deal[s][j];

                    if (dead >= 0 && ++tries[i] <= g->rec.max_task_retries) {
                        queue[nq++] = i; /* dealt again once a group is whole */
                        continue;
                    }
                    if (timedout && dead < 0)
                        snprintf(m2, sizeof(m2),
                                 "generate: group %d (ranks %d-%d): no reply "
                                 "from rank %d within %.3g s",
                                 s, s * w, s * w + w - 1, s * w + m, timeout);
                    else
                        snprintf(m2, sizeof(m2), "generate: group %d (ranks %d-%d): %s", s, s * w,
                                 s * w + w - 1, wt->msg);
                    fail_output(&outs[i], &reqs[i],
                                timedout && dead < 0 ? DEXEC_ETIMEDOUT : DEXEC_EWORKER, s * w + m,
                                m2);
                    last_st = outs[i].status;
                    snprintf(last, sizeof(last), "%s", m2);
                    nfailed++;
                }
            }
            for (int m = 0; m < w; m++) {
                dexec_value_free(waits[s * w + m].result);
                waits[s * w + m].result = NULL;
            }
        }
        if (dexec_now() >= deadline && nq > 0) {
            for (size_t q = 0; q < nq; q++) {
                fail_output(&outs[queue[q]], &reqs[queue[q]], DEXEC_ETIMEDOUT, -1,
                            "generate: no parallel group took the request again in time");
                nfailed++;
            }
            last_st = DEXEC_ETIMEDOUT;
            nq = 0;
        }
    }
    for (int s = 0; calls != NULL && s < nslots; s++)
        free(calls[s].index);
    for (int s = 0; deal != NULL && s < nslots; s++)
        free(deal[s]);
    free(deal);
    free(dealn);
    free(calls);
    free(waits);
    free(ends);
    free(queue);
    free(tries);
    free(order);
    free(load);
    free(heard);
    if (nfailed == n) {
        dexec_errorf(err, errlen, "%s", last);
        return last_st == DEXEC_ETIMEDOUT ? DEXEC_ETIMEDOUT : DEXEC_EWORKER;
    }
    return DEXEC_OK;
}
