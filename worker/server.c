/*
 * server.c - the worker protocol, server side (see doc/protocol.md).
 *
 * Threads: one I/O thread runs the RPC server core (rpc_server.c: accept,
 * hello, framing, dispatch to the method table below), answers the
 * cheap methods at once (hello, get_rank, check_health, shutdown and the
 * read-only worker methods) and queues heavy work to the ranks. Each rank
 * has a compute thread that owns its model and device; it writes its own
 * replies and progress notifications (one writer at a time per
 * connection). A call that spans ranks (an actor's generate or
 * collective_rpc) is answered by whichever rank finishes its part last.
 */
#include "config.h"

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <dexec/rpc.h>

#include "collective.h"
#include "kernels.h"
/* the in-process groups of an actor's ranks: up to 64 members per comm */
#define TC_MAX DXW_COLL_MAX_RANKS
#include "thread-comm.h"
#include "rpc_server.h"
#include "server.h"

#define WRITE_TIMEOUT 30.0
#define DEBUG_SLEEP_MAX 3600.0
#define CANCELLED_MAX 256 /* request ids remembered by "cancel" */
#define GET_LOGS_DEFAULT 100

enum call_kind { CALL_GENERATE, CALL_EXECUTE, CALL_COLLECTIVE };

typedef struct call {
    dxs_conn *c;
    uint32_t msgid;
    enum call_kind kind;
    dexec_value *params; /* owned; requests and arguments point into it */
    pthread_mutex_t lock;
    int parts_left;
    size_t nslots;
    dexec_value **slots;
    int err_code, err_rank;
    char err_msg[1100];
} call;

/* The communicators of one request computed by an in-process parallel
 * group (an actor's ranks as threads, "parallel_threads"): made fresh for
 * each request, so that a failed request leaves nothing to form again.
 * seqg[c] is the sequence communicator of cfg rank c (seq members),
 * cfgg[q] the cfg pair of sequence rank q. */
typedef struct tgset {
    tc_group *seqg, *cfgg;
    int nseq, ncfg;
    pthread_mutex_t mu;
    int cause_rank; /* the rank whose failure came first, -1: none */
    dexec_status cause_code;
    char cause[900];
} tgset;

/* One group's share of a generate call: every member's job points here
 * (refs), with the same positions in the same order. */
typedef struct gjob {
    pthread_mutex_t mu;
    int refs;
    int group, first_rank, width, cfg, seq;
    size_t n;
    tgset *sets; /* sets[i]: the request at the members' pos[i] */
} gjob;

typedef struct job {
    call *call;
    gjob *g;     /* generate on an in-process parallel group, else NULL */
    size_t *pos; /* generate: the batch positions this rank serves */
    size_t npos;
    double queued_at; /* when it reached the rank's queue (dexec_now) */
    struct job *next;
} job;

typedef struct wrank {
    dxw_server *s;
    int index, rank;
    pthread_rwlock_t mlock; /* model swap (load_model) against readers (get_info) */
    dxk_model *model;
    char model_err[768];
    char model_name[1024];
    pthread_t thread;
    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    job *head, *tail;
    int stop;
    /* statistics, guarded by qlock */
    long requests, images, errors;
    double encode_s, denoise_s, decode_s, busy_since;
    char current[256]; /* request_id of the request it runs, "" when idle */
    /* the parallel group this rank computes with (parallel_join); owned
     * by the compute thread, like the model */
    dxw_coll *coll;
    int group_index;
    dxk_parallel par;
    unsigned long long coll_bytes; /* sent through group collectives, guarded by qlock */
    /* an in-process parallel group of the actor's ranks (parallel_threads):
     * the member index, -1 when none; the comms point at the request's
     * tgset while it computes (compute thread) */
    int tmember;
    tc_rank tr_cfg, tr_seq;
    dxk_comm tc_cfg, tc_seq;
    dxk_parallel tpar;
} wrank;

struct dxw_server {
    dxw_options opt;
    /* request ids cancelled lately (a ring): a rank checks the id of the
     * request it runs after every denoising step, and before it starts */
    pthread_mutex_t cancel_lock;
    char *cancelled[CANCELLED_MAX];
    size_t cancel_next;
    char *model, *device, *dtype, *token, *name;
    wrank *ranks;
    dxs_server *rpc;
    double started;
    char host[256];
    /* in-process parallel groups (parallel_threads): cfg x seq consecutive
     * ranks; 1 x 1 when none. Set by the compute threads, read by the I/O
     * thread when it deals a generate call. */
    pthread_mutex_t tlock;
    int tcfg, tseq;
    int tdeadline_ms; /* each collective wait */
};

/* ---- calls spanning ranks -------------------------------------------------- */

static call *call_new(dxs_conn *c, uint32_t msgid, enum call_kind kind, dexec_value *params,
                      size_t nslots, int parts)
{
    call *k = calloc(1, sizeof(*k));

    if (k == NULL)
        return NULL;
    k->slots = calloc(nslots ? nslots : 1, sizeof(*k->slots));
    if (k->slots == NULL) {
        free(k);
        return NULL;
    }
    k->c = c;
    dxs_conn_ref(c);
    k->msgid = msgid;
    k->kind = kind;
    k->params = params;
    k->nslots = nslots;
    k->parts_left = parts;
    k->err_rank = -1;
    pthread_mutex_init(&k->lock, NULL);
    return k;
}

static void call_free(call *k)
{
    for (size_t i = 0; i < k->nslots; i++)
        dexec_value_free(k->slots[i]);
    free(k->slots);
    dexec_value_free(k->params);
    pthread_mutex_destroy(&k->lock);
    dxs_conn_unref(k->c);
    free(k);
}

/* A rank finished its part: the last one replies and frees the call. */
static void call_part_done(call *k)
{
    int last;
    dexec_value *res;

    pthread_mutex_lock(&k->lock);
    last = --k->parts_left == 0;
    pthread_mutex_unlock(&k->lock);
    if (!last)
        return;
    if (k->err_code != 0) {
        dxs_reply_err(k->c, k->msgid, (dexec_status)k->err_code, k->err_rank, "%s", k->err_msg);
    } else if (k->kind == CALL_EXECUTE) {
        dxs_reply_ok(k->c, k->msgid, k->slots[0]);
        k->slots[0] = NULL;
    } else {
        res = dexec_value_array();
        for (size_t i = 0; i < k->nslots; i++) {
            dexec_value_array_push(res, k->slots[i] != NULL ? k->slots[i] : dexec_value_nil());
            k->slots[i] = NULL;
        }
        dxs_reply_ok(k->c, k->msgid, res);
    }
    call_free(k);
}

/* A rank's part failed: the call answers with the error of the lowest
 * failing rank (whichever thread finished first), so that the same
 * failure on every rank reads the same each time. */
static void call_fail(call *k, dexec_status code, int rank, const char *msg)
{
    pthread_mutex_lock(&k->lock);
    if (k->err_code == 0 || rank < k->err_rank) {
        k->err_code = code;
        k->err_rank = rank;
        if (k->kind == CALL_EXECUTE)
            snprintf(k->err_msg, sizeof(k->err_msg), "%s", msg);
        else
            snprintf(k->err_msg, sizeof(k->err_msg), "rank %d: %s", rank, msg);
    }
    pthread_mutex_unlock(&k->lock);
}

/* ---- in-process parallel groups (an actor's ranks) ------------------------- */

static void tgset_free(tgset *t)
{
    for (int i = 0; i < t->nseq; i++)
        tc_group_destroy(&t->seqg[i]);
    for (int i = 0; i < t->ncfg; i++)
        tc_group_destroy(&t->cfgg[i]);
    free(t->seqg);
    free(t->cfgg);
    pthread_mutex_destroy(&t->mu);
}

static void gjob_unref(gjob *g)
{
    int last;

    if (g == NULL)
        return;
    pthread_mutex_lock(&g->mu);
    last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (!last)
        return;
    for (size_t i = 0; i < g->n; i++)
        tgset_free(&g->sets[i]);
    free(g->sets);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

/* Group `group` of width cfg x seq ranks computing n requests; refs: its
 * members. NULL when out of memory. */
static gjob *gjob_new(int group, int cfg, int seq, size_t n, int deadline_ms, int base_rank)
{
    gjob *g = calloc(1, sizeof(*g));

    if (g == NULL || (g->sets = calloc(n ? n : 1, sizeof(*g->sets))) == NULL) {
        free(g);
        return NULL;
    }
    pthread_mutex_init(&g->mu, NULL);
    g->refs = cfg * seq;
    g->group = group;
    g->width = cfg * seq;
    g->first_rank = base_rank + group * cfg * seq;
    g->cfg = cfg;
    g->seq = seq;
    g->n = n;
    for (size_t i = 0; i < n; i++) {
        tgset *t = &g->sets[i];

        pthread_mutex_init(&t->mu, NULL);
        t->cause_rank = -1;
        if (seq > 1 && (t->seqg = calloc((size_t)cfg, sizeof(*t->seqg))) != NULL)
            for (; t->nseq < cfg; t->nseq++)
                tc_group_init(&t->seqg[t->nseq], seq, deadline_ms);
        if (cfg > 1 && (t->cfgg = calloc((size_t)seq, sizeof(*t->cfgg))) != NULL)
            for (; t->ncfg < seq; t->ncfg++)
                tc_group_init(&t->cfgg[t->ncfg], cfg, deadline_ms);
        if ((seq > 1 && t->seqg == NULL) || (cfg > 1 && t->cfgg == NULL)) {
            g->n = i + 1;
            g->refs = 1;
            gjob_unref(g);
            return NULL;
        }
    }
    return g;
}

/* A member's request failed: the first failure is the request's cause,
 * and every member waiting in (or reaching) a collective of it fails at
 * once. */
static void tgset_fail(tgset *t, int rank, dexec_status code, const char *why)
{
    pthread_mutex_lock(&t->mu);
    /* a refusal of the request's own input (a sampler, size or prompt) comes
     * from every member alike: the lowest rank's is said, whichever came
     * first, so that the group's answer (its first member's) is the same
     * every time */
    if (t->cause_rank < 0 ||
        (code == DEXEC_EINVAL && t->cause_code == DEXEC_EINVAL && rank < t->cause_rank)) {
        size_t len = strlen(why);

        t->cause_rank = rank;
        t->cause_code = code;
        if (len >= sizeof(t->cause))
            len = sizeof(t->cause) - 1;
        memcpy(t->cause, why, len);
        t->cause[len] = '\0';
    }
    pthread_mutex_unlock(&t->mu);
    for (int i = 0; i < t->nseq; i++)
        tc_group_abandon(&t->seqg[i]);
    for (int i = 0; i < t->ncfg; i++)
        tc_group_abandon(&t->cfgg[i]);
}

/* ---- worker methods (execute_rpc / collective_rpc) ------------------------- */

static dexec_value *rank_stats(wrank *r)
{
    dexec_value *m = dexec_value_map(), *t = dexec_value_map();

    pthread_mutex_lock(&r->qlock);
    dexec_value_map_set(m, "rank", dexec_value_int(r->rank));
    dexec_value_map_set(m, "requests", dexec_value_int(r->requests));
    dexec_value_map_set(m, "images", dexec_value_int(r->images));
    dexec_value_map_set(m, "errors", dexec_value_int(r->errors));
    dexec_value_map_set(m, "busy", dexec_value_bool(r->busy_since > 0));
    dexec_value_map_set(t, "encode", dexec_value_float(r->encode_s));
    dexec_value_map_set(t, "denoise", dexec_value_float(r->denoise_s));
    dexec_value_map_set(t, "decode", dexec_value_float(r->decode_s));
    dexec_value_map_set(m, "collective_bytes", dexec_value_int((int64_t)r->coll_bytes));
    pthread_mutex_unlock(&r->qlock);
    dexec_value_map_set(m, "seconds", t);
    dexec_value_map_set(m, "uptime", dexec_value_float(dexec_now() - r->s->started));
    return m;
}

/* OpenBLAS's thread count, which also sizes the CPU backend's pool
 * (weak: a reference BLAS has none, and computes on one thread). */
#pragma weak openblas_get_num_threads
int openblas_get_num_threads(void);

static int compute_threads(void)
{
    return openblas_get_num_threads ? openblas_get_num_threads() : 1;
}

/* This process's CPU affinity as a CPU list ("0-1,4"). */
static void affinity_list(char *buf, size_t len)
{
    cpu_set_t set;
    size_t used = 0;

    buf[0] = '\0';
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return;
    for (int c = 0; c < CPU_SETSIZE && used < len; c++) {
        int e = c;

        if (!CPU_ISSET(c, &set))
            continue;
        while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, &set))
            e++;
        if (e == c)
            used += (size_t)snprintf(buf + used, len - used, "%s%d", used ? "," : "", c);
        else
            used += (size_t)snprintf(buf + used, len - used, "%s%d-%d", used ? "," : "", c, e);
        c = e;
    }
}

static dexec_value *rank_info(wrank *r)
{
    char cpus[1024];

    dexec_value *m;

    pthread_rwlock_rdlock(&r->mlock);
    m = r->model != NULL ? dxk_model_info(r->model) : dexec_value_map();
    if (r->model == NULL) {
        dexec_value_map_set(m, "model", dexec_value_str(r->model_name));
        dexec_value_map_set(m, "error", dexec_value_str(r->model_err));
    }
    pthread_rwlock_unlock(&r->mlock);
    dexec_value_map_set(m, "rank", dexec_value_int(r->rank));
    dexec_value_map_set(m, "pid", dexec_value_int(getpid()));
    dexec_value_map_set(m, "host", dexec_value_str(r->s->host));
    if (r->s->name != NULL)
        dexec_value_map_set(m, "name", dexec_value_str(r->s->name));
    dexec_value_map_set(m, "protocol", dexec_value_int(DEXEC_PROTOCOL_VERSION));
    dexec_value_map_set(m, "version", dexec_value_str(dexec_version()));
    affinity_list(cpus, sizeof(cpus));
    dexec_value_map_set(m, "threads", dexec_value_int(compute_threads()));
    dexec_value_map_set(m, "cpus", dexec_value_str(cpus));
    return m;
}

static const char known_methods[] =
    "get_rank, get_info, get_stats, get_logs, cancel, load_model, check_health, echo, "
    "debug_sleep, latent_forward, latent_guided, latent_sample, vae_decode, latent_noise, "
    "parallel_open, parallel_join, parallel_leave, parallel_threads";

/* Methods cheap enough to answer on the I/O thread. */
static int is_inline_method(const char *m)
{
    return strcmp(m, "get_rank") == 0 || strcmp(m, "get_stats") == 0 ||
           strcmp(m, "check_health") == 0 || strcmp(m, "echo") == 0 ||
           strcmp(m, "get_info") == 0 || strcmp(m, "get_logs") == 0 ||
           strcmp(m, "cancel") == 0;
}

/* 1 when request id was cancelled ("cancel" method). */
static int is_cancelled(dxw_server *s, const char *id)
{
    int found = 0;

    if (id == NULL)
        return 0;
    pthread_mutex_lock(&s->cancel_lock);
    for (size_t i = 0; i < CANCELLED_MAX && !found; i++)
        found = s->cancelled[i] != NULL && strcmp(s->cancelled[i], id) == 0;
    pthread_mutex_unlock(&s->cancel_lock);
    return found;
}

/* "cancel [request_id]": remembered once per server (an actor's ranks
 * share it); replies whether this rank was running it. */
static dexec_status cancel_request(wrank *r, const dexec_value *args, dexec_value **out,
                                   char *err, size_t errlen)
{
    dxw_server *s = r->s;
    const char *id = dexec_value_as_str(dexec_value_array_get(args, 0), NULL);
    int running;

    if (id == NULL || id[0] == '\0') {
        snprintf(err, errlen, "cancel: expected the request_id as the first argument");
        return DEXEC_EINVAL;
    }
    if (!is_cancelled(s, id)) {
        char *copy = strdup(id);

        if (copy == NULL)
            return DEXEC_ENOMEM;
        pthread_mutex_lock(&s->cancel_lock);
        free(s->cancelled[s->cancel_next]);
        s->cancelled[s->cancel_next] = copy;
        s->cancel_next = (s->cancel_next + 1) % CANCELLED_MAX;
        pthread_mutex_unlock(&s->cancel_lock);
    }
    pthread_mutex_lock(&r->qlock);
    running = r->current[0] != '\0' && strcmp(r->current, id) == 0;
    pthread_mutex_unlock(&r->qlock);
    *out = dexec_value_bool(running);
    return DEXEC_OK;
}

static int is_known_method(const char *m)
{
    return is_inline_method(m) || strcmp(m, "load_model") == 0 || strcmp(m, "debug_sleep") == 0 ||
           dxk_tensor_method_known(m) || strncmp(m, "parallel_", 9) == 0;
}

/* Leaves the parallel group, if any (compute thread). */
static void group_leave(wrank *r)
{
    if (r->model != NULL)
        dxk_model_set_parallel(r->model, NULL, NULL, 0);
    dxw_coll_free(r->coll);
    r->coll = NULL;
    memset(&r->par, 0, sizeof(r->par));
}

/* parallel_open [{transport}]: this rank's mailbox (shm) or listener (tcp)
 * for a group being formed (the executor then calls parallel_join with
 * every member's reply). */
static dexec_status group_open(wrank *r, const dexec_value *args, dexec_value **out, char *err,
                               size_t errlen)
{
    const char *transport =
        dexec_value_as_str(dexec_value_map_get(dexec_value_array_get(args, 0), "transport"), "shm");
    char name[300], host[512];
    dexec_status st;

    if (r->s->opt.num_ranks != 1) {
        snprintf(err, errlen,
                 "parallel_open: this worker hosts %d ranks; parallel groups are formed from "
                 "workers that serve one rank each (mp, external)",
                 r->s->opt.num_ranks);
        return DEXEC_ENOTSUP;
    }
    if (strcmp(transport, "shm") != 0 && strcmp(transport, "tcp") != 0) {
        snprintf(err, errlen, "parallel_open: transport '%s' is not shm or tcp", transport);
        return DEXEC_EINVAL;
    }
    group_leave(r);
    if (strcmp(transport, "tcp") == 0)
        st = dxw_coll_open_tcp(r->s->opt.coll_host != NULL ? r->s->opt.coll_host : "127.0.0.1",
                               &r->coll, name, sizeof(name), err, errlen);
    else
        st = dxw_coll_open(&r->coll, name, sizeof(name), err, errlen);
    if (st != DEXEC_OK)
        return st;
    dxw_coll_host_id(host, sizeof(host));
    *out = dexec_value_map();
    dexec_value_map_set(*out, "transport", dexec_value_str(transport));
    dexec_value_map_set(*out, strcmp(transport, "tcp") == 0 ? "address" : "shm",
                        dexec_value_str(name));
    dexec_value_map_set(*out, "pid", dexec_value_int(getpid()));
    dexec_value_map_set(*out, "host", dexec_value_str(host));
    return DEXEC_OK;
}

/* parallel_join [{index, cfg, sequence, timeout, token, peers: [{shm, pid} or
 * {address}...]}] */
static dexec_status group_join(wrank *r, const dexec_value *args, dexec_value **out, char *err,
                               size_t errlen)
{
    const dexec_value *o = dexec_value_array_get(args, 0);
    const dexec_value *peers = dexec_value_map_get(o, "peers");
    int64_t index = dexec_value_as_int(dexec_value_map_get(o, "index"), -1);
    int64_t cfg = dexec_value_as_int(dexec_value_map_get(o, "cfg"), 1);
    int64_t seq = dexec_value_as_int(dexec_value_map_get(o, "sequence"), 1);
    double timeout = dexec_value_as_float(dexec_value_map_get(o, "timeout"), 60.0);
    char *names[DXW_COLL_MAX_RANKS];
    pid_t pids[DXW_COLL_MAX_RANKS];
    dexec_status st;
    size_t n;

    if (r->coll == NULL) {
        snprintf(err, errlen, "parallel_join: call parallel_open first");
        return DEXEC_EINVAL;
    }
    n = peers != NULL && peers->type == DEXEC_VAL_ARRAY ? peers->u.arr.len : 0;
    if (cfg < 1 || cfg > 2 || seq < 1 || cfg * seq > DXW_COLL_MAX_RANKS ||
        n != (size_t)(cfg * seq) || index < 0 || index >= (int64_t)n) {
        snprintf(err, errlen,
                 "parallel_join: expected [{index, cfg: 1|2, sequence: S, timeout, peers: "
                 "[{shm, pid} x cfg*S]}] with index < cfg*S <= %d",
                 DXW_COLL_MAX_RANKS);
        group_leave(r);
        return DEXEC_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        const dexec_value *p = dexec_value_array_get(peers, i);

        names[i] =
            (char *)dexec_value_as_str(dexec_value_map_get(p, "shm"),
                                       dexec_value_as_str(dexec_value_map_get(p, "address"), ""));
        pids[i] = (pid_t)dexec_value_as_int(dexec_value_map_get(p, "pid"), 0);
    }
    st = dxw_coll_join(r->coll, (int)index, (int)cfg, (int)seq, names, pids,
                       dexec_value_as_str(dexec_value_map_get(o, "token"), NULL), timeout, err,
                       errlen);
    if (st == DEXEC_OK) {
        r->par.cfg = dxw_coll_cfg(r->coll);
        r->par.seq = dxw_coll_seq(r->coll);
        r->par.drop_images = index != 0; /* member 0 returns the images */
        r->group_index = (int)index;
        if (r->model == NULL) {
            snprintf(err, errlen, "parallel_join: no model is loaded (%s)", r->model_err);
            st = DEXEC_ENOTFOUND;
        } else {
            st = dxk_model_set_parallel(r->model, &r->par, err, errlen);
        }
    }
    if (st != DEXEC_OK) {
        if (r->coll != NULL)
            dxw_coll_abandon(r->coll);
        group_leave(r);
        return st;
    }
    dexec_log(DEXEC_LOG_INFO, "worker",
              "rank %d: member %d of a parallel group (cfg %d x "
              "sequence %d)",
              r->rank, (int)index, (int)cfg, (int)seq);
    *out = dexec_value_map();
    dexec_value_map_set(*out, "cfg_rank", dexec_value_int(index / seq));
    dexec_value_map_set(*out, "sequence_rank", dexec_value_int(index % seq));
    return DEXEC_OK;
}

/* Leaves the in-process group, if any (compute thread). */
static void threads_leave(wrank *r)
{
    if (r->tmember >= 0 && r->model != NULL)
        dxk_model_set_parallel(r->model, NULL, NULL, 0);
    r->tmember = -1;
    memset(&r->tpar, 0, sizeof(r->tpar));
}

/* parallel_threads [{cfg, sequence, timeout}]: on every rank of an actor
 * (collective_rpc), the ranks form in-process parallel groups of cfg x
 * sequence consecutive ranks, exchanging through each other's memory
 * (kernels/thread-comm.h); timeout (seconds) bounds each collective wait.
 * cfg = sequence = 1 dissolves them. */
static dexec_status group_threads(wrank *r, const dexec_value *args, dexec_value **out,
                                  char *err, size_t errlen)
{
    const dexec_value *o = dexec_value_array_get(args, 0);
    int64_t cfg = dexec_value_as_int(dexec_value_map_get(o, "cfg"), 1);
    int64_t seq = dexec_value_as_int(dexec_value_map_get(o, "sequence"), 1);
    double timeout = dexec_value_as_float(dexec_value_map_get(o, "timeout"), 60.0);
    int n = r->s->opt.num_ranks, w, member;
    dexec_status st;

    if (o == NULL || o->type != DEXEC_VAL_MAP || cfg < 1 || cfg > 2 || seq < 1 ||
        seq > TC_MAX || timeout <= 0 || timeout > 1e6) {
        snprintf(err, errlen,
                 "parallel_threads: expected [{cfg: 1|2, sequence: 1..%d, timeout: seconds}]",
                 TC_MAX);
        return DEXEC_EINVAL;
    }
    w = (int)(cfg * seq);
    if (n % w != 0) {
        snprintf(err, errlen,
                 "parallel_threads: this worker's %d ranks do not divide into groups of cfg x "
                 "sequence = %d",
                 n, w);
        return DEXEC_EINVAL;
    }
    group_leave(r);
    threads_leave(r);
    member = r->index % w;
    if (w > 1) {
        r->tr_seq.rank = member % (int)seq;
        r->tr_seq.g = NULL;
        r->tr_seq.sent = 0;
        r->tr_cfg.sent = 0;
        r->tc_seq = (dxk_comm){.rank = member % (int)seq, .size = (int)seq, .ctx = &r->tr_seq,
                               .alltoall = tc_alltoall, .allgather = tc_allgather};
        r->tr_cfg.rank = member / (int)seq;
        r->tr_cfg.g = NULL;
        r->tc_cfg = (dxk_comm){.rank = member / (int)seq, .size = (int)cfg, .ctx = &r->tr_cfg,
                               .alltoall = tc_alltoall, .allgather = tc_allgather};
        r->tpar.cfg = cfg > 1 ? &r->tc_cfg : NULL;
        r->tpar.seq = seq > 1 ? &r->tc_seq : NULL;
        r->tpar.drop_images = member != 0; /* member 0 returns the images */
        if (r->model == NULL) {
            snprintf(err, errlen, "parallel_threads: no model is loaded (%s)", r->model_err);
            memset(&r->tpar, 0, sizeof(r->tpar));
            return DEXEC_ENOTFOUND;
        }
        st = dxk_model_set_parallel(r->model, &r->tpar, err, errlen);
        if (st != DEXEC_OK) {
            memset(&r->tpar, 0, sizeof(r->tpar));
            return st;
        }
        r->tmember = member;
    }
    pthread_mutex_lock(&r->s->tlock);
    r->s->tcfg = (int)cfg;
    r->s->tseq = (int)seq;
    r->s->tdeadline_ms = (int)(timeout * 1000.0 + 0.5);
    pthread_mutex_unlock(&r->s->tlock);
    if (w > 1)
        dexec_log(DEXEC_LOG_INFO, "worker",
                  "rank %d: member %d of in-process parallel group %d (cfg %d x sequence %d)",
                  r->rank, member, r->index / w, (int)cfg, (int)seq);
    *out = dexec_value_map();
    dexec_value_map_set(*out, "group", dexec_value_int(r->index / w));
    dexec_value_map_set(*out, "cfg_rank", dexec_value_int(member / (int)seq));
    dexec_value_map_set(*out, "sequence_rank", dexec_value_int(member % (int)seq));
    return DEXEC_OK;
}

static dexec_status load_model(wrank *r, const dexec_value *args, const dexec_value *kwargs,
                               dexec_value **out, char *err, size_t errlen)
{
    const char *name = dexec_value_as_str(dexec_value_array_get(args, 0), NULL);
    const char *device = dexec_value_as_str(dexec_value_array_get(args, 1), NULL);
    const char *dtype = dexec_value_as_str(dexec_value_map_get(kwargs, "dtype"), r->s->dtype);
    dxk_model *m = NULL, *old;
    dexec_status st;

    if (name == NULL)
        name = dexec_value_as_str(dexec_value_map_get(kwargs, "model"), NULL);
    if (device == NULL)
        device = dexec_value_as_str(dexec_value_map_get(kwargs, "device"), r->s->device);
    if (name == NULL) {
        snprintf(err, errlen, "load_model: expected a model name or path as the first argument");
        return DEXEC_EINVAL;
    }
    st = dxk_model_open_dtype(name, device, dtype, r->index, &m, err, errlen);
    if (st == DEXEC_OK && (r->coll != NULL || r->tmember >= 0)) {
        st = dxk_model_set_parallel(m, r->coll != NULL ? &r->par : &r->tpar, err, errlen);
        if (st != DEXEC_OK)
            dxk_model_free(m);
    }
    if (st != DEXEC_OK)
        return st;
    pthread_rwlock_wrlock(&r->mlock);
    old = r->model;
    r->model = m;
    r->model_err[0] = '\0';
    snprintf(r->model_name, sizeof(r->model_name), "%s", name);
    pthread_rwlock_unlock(&r->mlock);
    dxk_model_free(old);
    dexec_log(DEXEC_LOG_INFO, "worker", "rank %d: loaded model %s", r->rank, name);
    *out = rank_info(r);
    return DEXEC_OK;
}

/* Methods that open files named by the peer or hold the process for as
 * long as the peer asks: a client that may call generate may not call
 * these unless the worker was started with --allow-admin (doc/protocol.md,
 * "Administrative methods"). */
static int is_admin_method(const char *m)
{
    return strcmp(m, "load_model") == 0 || strcmp(m, "debug_sleep") == 0;
}

/* Runs a worker method on rank r. args is an ARRAY, kwargs a MAP (either
 * may be NULL). */
static dexec_status run_method(wrank *r, const char *method, const dexec_value *args,
                               const dexec_value *kwargs, dexec_value **out, char *err,
                               size_t errlen)
{
    *out = NULL;
    if (is_admin_method(method) && !r->s->opt.allow_admin) {
        snprintf(err, errlen,
                 "%s: refused: this worker serves administrative methods (load_model, "
                 "debug_sleep) only when started with --allow-admin (owned workers: set "
                 "allow_admin_methods = true)",
                 method);
        return DEXEC_EAUTH;
    }
    if (strcmp(method, "get_rank") == 0) {
        *out = dexec_value_int(r->rank);
    } else if (strcmp(method, "get_info") == 0) {
        *out = rank_info(r);
    } else if (strcmp(method, "get_stats") == 0) {
        *out = rank_stats(r);
    } else if (strcmp(method, "check_health") == 0) {
        *out = dexec_value_bool(1);
    } else if (strcmp(method, "echo") == 0) {
        *out = args != NULL ? dexec_value_clone(args) : dexec_value_array();
    } else if (strcmp(method, "load_model") == 0) {
        return load_model(r, args, kwargs, out, err, errlen);
    } else if (strcmp(method, "cancel") == 0) {
        return cancel_request(r, args, out, err, errlen);
    } else if (strcmp(method, "get_logs") == 0) {
        const dexec_value *a = dexec_value_array_get(args, 0);
        int64_t n = a != NULL ? dexec_value_as_int(a, -1)
                              : dexec_value_as_int(dexec_value_map_get(kwargs, "n"),
                                                   GET_LOGS_DEFAULT);

        if (n < 1 || n > DEXEC_LOG_KEEP_MAX) {
            snprintf(err, errlen, "get_logs: expected a number of lines in 1..%d",
                     DEXEC_LOG_KEEP_MAX);
            return DEXEC_EINVAL;
        }
        *out = dexec_log_recent((size_t)n);
    } else if (dxk_tensor_method_known(method)) {
        dexec_status st;

        /* on the compute thread, which owns the model: no lock needed
         * against load_model, which runs there too */
        if (r->model == NULL) {
            snprintf(err, errlen, "%s: no model is loaded (%s)", method, r->model_err);
            return DEXEC_ENOTFOUND;
        }
        /* a member of an in-process group computes tensor methods alone
         * (the group's comms live only while it computes a generate) */
        if (r->tmember >= 0)
            dxk_model_set_parallel(r->model, NULL, NULL, 0);
        st = dxk_tensor_method(r->model, method, args, out, err, errlen);
        if (r->tmember >= 0)
            dxk_model_set_parallel(r->model, &r->tpar, NULL, 0);
        return st;
    } else if (strcmp(method, "parallel_open") == 0) {
        return group_open(r, args, out, err, errlen);
    } else if (strcmp(method, "parallel_join") == 0) {
        return group_join(r, args, out, err, errlen);
    } else if (strcmp(method, "parallel_leave") == 0) {
        group_leave(r);
        *out = dexec_value_bool(1);
    } else if (strcmp(method, "parallel_threads") == 0) {
        return group_threads(r, args, out, err, errlen);
    } else if (strcmp(method, "debug_sleep") == 0) {
        const dexec_value *a = dexec_value_array_get(args, 0);
        double s = dexec_value_as_float(a, -1);
        struct timespec ts;

        if (a == NULL || s < 0 || s > DEBUG_SLEEP_MAX) {
            snprintf(err, errlen, "debug_sleep: expected seconds in 0..%g", DEBUG_SLEEP_MAX);
            return DEXEC_EINVAL;
        }
        ts.tv_sec = (time_t)s;
        ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        *out = dexec_value_float(s);
    } else {
        snprintf(err, errlen, "unknown worker method '%s' (known: %s)", method, known_methods);
        return DEXEC_ENOTFOUND;
    }
    return *out != NULL ? DEXEC_OK : DEXEC_ENOMEM;
}

/* ---- generate ---------------------------------------------------------------- */

typedef struct progress_ctx {
    dxs_conn *c;
    uint32_t msgid;
    size_t pos;
    dxw_server *s;
    const char *request_id;
    int quiet; /* a group member other than the first: checks cancellation only */
} progress_ctx;

static int on_step(void *user, int image, int step, int total)
{
    progress_ctx *p = user;
    dexec_value *a;

    if (is_cancelled(p->s, p->request_id))
        return 1;
    if (p->quiet)
        return 0;
    a = dexec_value_array();

    dexec_value_array_push(a, dexec_value_int(p->msgid));
    dexec_value_array_push(a, dexec_value_int((int64_t)p->pos));
    dexec_value_array_push(a, dexec_value_int(image));
    dexec_value_array_push(a, dexec_value_int(step));
    dexec_value_array_push(a, dexec_value_int(total));
    dxs_notify(p->c, "progress", a);
    return 0;
}

static int read_int_field(const dexec_value *req, const char *key, int64_t lo, int64_t hi,
                          int64_t *out, char *err, size_t errlen)
{
    const dexec_value *v = dexec_value_map_get(req, key);

    if (v == NULL || v->type == DEXEC_VAL_NIL)
        return 0;
    if (v->type != DEXEC_VAL_INT) {
        snprintf(err, errlen, "request field %s must be an integer", key);
        return -1;
    }
    if (v->u.i < lo || v->u.i > hi) {
        snprintf(err, errlen, "request field %s = %lld is out of range %lld..%lld", key,
                 (long long)v->u.i, (long long)lo, (long long)hi);
        return -1;
    }
    *out = v->u.i;
    return 0;
}

static int read_str_field(const dexec_value *req, const char *key, const char **out, char *err,
                          size_t errlen)
{
    const dexec_value *v = dexec_value_map_get(req, key);

    if (v == NULL || v->type == DEXEC_VAL_NIL)
        return 0;
    if (v->type != DEXEC_VAL_STR) {
        snprintf(err, errlen, "request field %s must be a string", key);
        return -1;
    }
    *out = v->u.str.ptr;
    return 0;
}

static int read_bin_field(const dexec_value *req, const char *key, const void **out,
                          uint64_t *len, char *err, size_t errlen)
{
    const dexec_value *v = dexec_value_map_get(req, key);

    if (v == NULL || v->type == DEXEC_VAL_NIL)
        return 0;
    if (v->type != DEXEC_VAL_BIN || v->u.str.len == 0) {
        snprintf(err, errlen, "request field %s must be binary (little-endian float32)", key);
        return -1;
    }
    *out = v->u.str.ptr;
    *len = v->u.str.len;
    return 0;
}

/* Request map -> dexec_request (strings and noise point into v). */
static int parse_request(const dexec_value *v, dexec_request *r, char *err, size_t errlen)
{
    int64_t h = 0, w = 0, steps = 0, seed = -1, nout = 1;
    const dexec_value *g;

    dexec_request_init(r);
    if (v == NULL || v->type != DEXEC_VAL_MAP) {
        snprintf(err, errlen, "a request must be a map");
        return -1;
    }
    if (read_str_field(v, "request_id", &r->request_id, err, errlen) != 0 ||
        read_str_field(v, "prompt", &r->prompt, err, errlen) != 0 ||
        read_str_field(v, "negative_prompt", &r->negative_prompt, err, errlen) != 0 ||
        read_int_field(v, "height", 0, DEXEC_MAX_IMAGE_SIZE, &h, err, errlen) != 0 ||
        read_int_field(v, "width", 0, DEXEC_MAX_IMAGE_SIZE, &w, err, errlen) != 0 ||
        read_int_field(v, "num_inference_steps", 0, DEXEC_MAX_STEPS, &steps, err, errlen) != 0 ||
        read_int_field(v, "seed", INT64_MIN, DEXEC_MAX_SEED, &seed, err, errlen) != 0 ||
        read_int_field(v, "num_outputs_per_prompt", 0, DEXEC_MAX_OUTPUTS_PER_PROMPT, &nout, err,
                       errlen) != 0)
        return -1;
    g = dexec_value_map_get(v, "guidance_scale");
    if (g != NULL && g->type != DEXEC_VAL_NIL && g->type != DEXEC_VAL_FLOAT &&
        g->type != DEXEC_VAL_INT) {
        snprintf(err, errlen, "request field guidance_scale must be a number");
        return -1;
    }
    r->height = (int)h;
    r->width = (int)w;
    r->num_inference_steps = (int)steps;
    r->seed = seed;
    r->num_outputs_per_prompt = (int)nout;
    r->guidance_scale = dexec_value_as_float(g, -1.0);
    /* added after protocol 1's first requests (doc/protocol.md): the
     * sampler override and the noise of the caller's */
    if (read_str_field(v, "sampler", &r->sampler, err, errlen) != 0 ||
        read_bin_field(v, "noise", &r->noise, &r->noise_bytes, err, errlen) != 0 ||
        read_bin_field(v, "step_noise", &r->step_noise, &r->step_noise_bytes, err, errlen) != 0)
        return -1;
    if (r->seed < 0) {
        /* a client that did not pick a seed gets a fresh one, reported back */
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        r->seed = ((int64_t)ts.tv_nsec ^ ((int64_t)getpid() << 20) ^ (int64_t)ts.tv_sec) &
                  0x7fffffffffffLL;
    }
    return 0;
}

static dexec_value *output_to_value(const dexec_output *o, int rank, const char *request_id)
{
    dexec_value *m = dexec_value_map(), *imgs, *t;

    dexec_value_map_set(m, "request_id",
                        request_id != NULL ? dexec_value_str(request_id) : dexec_value_nil());
    dexec_value_map_set(m, "rank", dexec_value_int(rank));
    if (o->status != DEXEC_OK) {
        dexec_value_map_set(m, "error", dexec_value_str(o->error != NULL ? o->error : "failed"));
        dexec_value_map_set(m, "code", dexec_value_int(o->status));
        return m;
    }
    dexec_value_map_set(m, "seed", dexec_value_int(o->seed));
    dexec_value_map_set(m, "steps", dexec_value_int(o->steps));
    dexec_value_map_set(m, "guidance_scale", dexec_value_float(o->guidance_scale));
    if (o->class_name != NULL)
        dexec_value_map_set(m, "class", dexec_value_str(o->class_name));
    if (o->negative_class_name != NULL)
        dexec_value_map_set(m, "negative_class", dexec_value_str(o->negative_class_name));
    imgs = dexec_value_array();
    for (size_t i = 0; i < o->num_images; i++) {
        const dexec_image *im = &o->images[i];
        dexec_value *iv = dexec_value_map();

        dexec_value_map_set(iv, "width", dexec_value_int(im->width));
        dexec_value_map_set(iv, "height", dexec_value_int(im->height));
        dexec_value_map_set(iv, "channels", dexec_value_int(im->channels));
        dexec_value_map_set(iv, "pixels",
                            dexec_value_bin(im->pixels, (size_t)im->width * (size_t)im->height *
                                                            (size_t)im->channels));
        dexec_value_array_push(imgs, iv);
    }
    dexec_value_map_set(m, "images", imgs);
    t = dexec_value_map();
    dexec_value_map_set(t, "queue", dexec_value_float(o->timings.queue_s));
    dexec_value_map_set(t, "encode", dexec_value_float(o->timings.encode_s));
    dexec_value_map_set(t, "denoise", dexec_value_float(o->timings.denoise_s));
    dexec_value_map_set(t, "decode", dexec_value_float(o->timings.decode_s));
    dexec_value_map_set(m, "timings", t);
    return m;
}

/* Test-only: with DEXEC_WORKER_TEST_HOOKS=1 in the worker's environment, a
 * request whose prompt is TEST_CRASH_PROMPT kills the worker (SIGKILL) the
 * moment it starts: the "poison request" of the recovery tests. Without
 * the variable the prompt is an ordinary prompt. */
#define TEST_CRASH_PROMPT "dexec-test: crash the worker"
/* ... and a request whose request_id is this one fails on member 1 of an
 * in-process parallel group (an actor's ranks), 0.2 s into it, while the
 * other members wait for it in a collective: the failing-member test. */
#define TEST_FAIL_MEMBER_ID "dexec-test: fail group member 1"

static int test_hooks(void)
{
    static int on = -1;

    if (on < 0) {
        const char *v = getenv("DEXEC_WORKER_TEST_HOOKS");

        on = v != NULL && strcmp(v, "1") == 0;
    }
    return on;
}

static void run_generate(wrank *r, job *j, double queued_at)
{
    call *k = j->call;
    const dexec_value *reqs = dexec_value_array_get(k->params, 0);
    const dexec_value *opts = dexec_value_array_get(k->params, 1);
    const dexec_value *grp = dexec_value_map_get(opts, "parallel");

    if (r->coll != NULL && !(grp != NULL && grp->type == DEXEC_VAL_BOOL && grp->u.b)) {
        /* a caller that did not form this group (another engine, after the
         * one that did went away) gets this rank alone */
        dexec_log(DEXEC_LOG_INFO, "worker",
                  "rank %d: a generate call outside the parallel "
                  "group: leaving the group",
                  r->rank);
        group_leave(r);
    }

    for (size_t i = 0; i < j->npos; i++) {
        size_t pos = j->pos[i];
        const dexec_value *rv = dexec_value_array_get(reqs, pos);
        dexec_request req;
        dexec_output out;
        progress_ctx pc = {.c = k->c, .msgid = k->msgid, .pos = pos, .s = r->s};
        char err[1024];
        dexec_status st;
        double t0 = dexec_now();
        /* an in-process group's member: this request's comms */
        tgset *ts = j->g != NULL ? &j->g->sets[i] : NULL;

        if (ts != NULL) {
            r->tr_seq.g = ts->nseq > 0 ? &ts->seqg[r->tmember / j->g->seq] : NULL;
            r->tr_cfg.g = ts->ncfg > 0 ? &ts->cfgg[r->tmember % j->g->seq] : NULL;
            pc.quiet = r->tmember != 0;
        }

        dexec_output_init(&out);
        if (parse_request(rv, &req, err, sizeof(err)) != 0) {
            st = DEXEC_EINVAL;
        } else if (is_cancelled(r->s, req.request_id)) {
            snprintf(err, sizeof(err), "cancelled before it started");
            st = DEXEC_ECANCELED;
        } else if (test_hooks() && req.prompt != NULL &&
                   strcmp(req.prompt, TEST_CRASH_PROMPT) == 0) {
            raise(SIGKILL);
            st = DEXEC_EWORKER;
            snprintf(err, sizeof(err), "test hook: still alive after SIGKILL");
        } else if (test_hooks() && ts != NULL && r->tmember == 1 && req.request_id != NULL &&
                   strcmp(req.request_id, TEST_FAIL_MEMBER_ID) == 0) {
            /* the others are in (or reach) their first collective by now */
            struct timespec pause = {.tv_sec = 0, .tv_nsec = 200000000L};

            nanosleep(&pause, NULL);
            st = DEXEC_EWORKER;
            snprintf(err, sizeof(err), "test hook: group member 1 fails");
        } else if (r->tmember >= 0 && ts == NULL) {
            snprintf(err, sizeof(err),
                     "rank %d is a member of an in-process parallel group: a generate call "
                     "must address its group",
                     r->rank);
            st = DEXEC_EINVAL;
        } else {
            pc.request_id = req.request_id;
            pthread_mutex_lock(&r->qlock);
            snprintf(r->current, sizeof(r->current), "%s",
                     req.request_id != NULL ? req.request_id : "");
            pthread_mutex_unlock(&r->qlock);
            pthread_rwlock_rdlock(&r->mlock);
            if (r->model == NULL) {
                snprintf(err, sizeof(err), "no model loaded: %s", r->model_err);
                st = DEXEC_EINIT;
            } else if (r->coll != NULL && dxw_coll_broken(r->coll)) {
                snprintf(err, sizeof(err),
                         "rank %d: its parallel group failed in an earlier "
                         "request; the executor forms it again before the next one",
                         r->rank);
                st = DEXEC_EWORKER;
            } else {
                unsigned long long sent0 = r->coll != NULL ? dxw_coll_bytes_sent(r->coll) : 0;
                unsigned long long tsent0 = r->tr_cfg.sent + r->tr_seq.sent;

                st = dxk_generate(r->model, &req, &out, on_step, &pc, err, sizeof(err));
                if (st != DEXEC_OK && r->coll != NULL)
                    dxw_coll_abandon(r->coll); /* the peers stop waiting for this rank */
                if (r->coll != NULL) {
                    pthread_mutex_lock(&r->qlock);
                    r->coll_bytes += dxw_coll_bytes_sent(r->coll) - sent0;
                    pthread_mutex_unlock(&r->qlock);
                } else if (ts != NULL) {
                    pthread_mutex_lock(&r->qlock);
                    r->coll_bytes += r->tr_cfg.sent + r->tr_seq.sent - tsent0;
                    pthread_mutex_unlock(&r->qlock);
                }
            }
            pthread_rwlock_unlock(&r->mlock);
            pthread_mutex_lock(&r->qlock);
            r->current[0] = '\0';
            pthread_mutex_unlock(&r->qlock);
        }
        if (st != DEXEC_OK && ts != NULL) {
            /* the first failure of a member is the group's; the others
             * stop waiting for this one */
            tgset_fail(ts, r->rank, st, err);
            pthread_mutex_lock(&ts->mu);
            st = ts->cause_code;
            snprintf(err, sizeof(err), "group %d (ranks %d-%d): rank %d: %s", j->g->group,
                     j->g->first_rank, j->g->first_rank + j->g->width - 1, ts->cause_rank,
                     ts->cause);
            pthread_mutex_unlock(&ts->mu);
        }
        if (ts != NULL) {
            r->tr_seq.g = NULL;
            r->tr_cfg.g = NULL;
        }
        if (st != DEXEC_OK) {
            const char *id = req.request_id != NULL ? req.request_id : "(no id)";

            dexec_output_clear(&out);
            out.status = st;
            out.error = strdup(err);
            /* said where get_logs and the journal show it; a group's
             * failure once, by the member it came from */
            if (ts != NULL && ts->cause_rank != r->rank)
                dexec_log(DEXEC_LOG_INFO, "worker", "rank %d: request %s stopped with its group",
                          r->rank, id);
            else if (st == DEXEC_ECANCELED)
                dexec_log(DEXEC_LOG_INFO, "worker", "rank %d: request %s %s", r->rank, id, err);
            else
                dexec_log(DEXEC_LOG_WARN, "worker", "rank %d: request %s failed: %s", r->rank,
                          id, err);
        }
        if (st == DEXEC_OK && ((r->coll != NULL && r->group_index != 0) ||
                               (ts != NULL && r->tmember != 0))) {
            /* the group's first member returns the images (the reference's
             * unique_reply_rank); the others return none */
            for (size_t im = 0; im < out.num_images; im++)
                free(out.images[im].pixels);
            free(out.images);
            out.images = NULL;
            out.num_images = 0;
        }
        out.timings.queue_s = t0 - queued_at;
        pthread_mutex_lock(&r->qlock);
        r->requests++;
        if (st == DEXEC_OK) {
            r->images += (long)out.num_images;
            r->encode_s += out.timings.encode_s;
            r->denoise_s += out.timings.denoise_s;
            r->decode_s += out.timings.decode_s;
        } else {
            r->errors++;
        }
        pthread_mutex_unlock(&r->qlock);
        /* an in-process group's first member answers for the group */
        if (ts == NULL || r->tmember == 0)
            k->slots[pos] = output_to_value(
                &out, r->rank, dexec_value_as_str(dexec_value_map_get(rv, "request_id"), NULL));
        dexec_output_clear(&out);
    }
}

static void run_rpc(wrank *r, job *j)
{
    call *k = j->call;
    const char *method = dexec_value_as_str(dexec_value_array_get(k->params, 0), "");
    const dexec_value *args = dexec_value_array_get(k->params, 1);
    const dexec_value *kwargs = dexec_value_array_get(k->params, 2);
    dexec_value *res = NULL;
    char err[1024];
    dexec_status st = run_method(r, method, args, kwargs, &res, err, sizeof(err));

    if (st != DEXEC_OK) {
        call_fail(k, st, r->rank, err);
        return;
    }
    if (k->kind == CALL_EXECUTE) {
        /* execute_rpc answers with the first hosted rank's reply */
        if (r->index == 0)
            k->slots[0] = res;
        else
            dexec_value_free(res);
    } else {
        k->slots[r->index] = res;
    }
}

static void *rank_main(void *arg)
{
    wrank *r = arg;
    sigset_t all;

    /* signals belong to the I/O thread, except the synchronous ones a
     * fault raises in this thread: blocked, they kill the process outright
     * (SIGBUS of a truncated model file must reach its handler) */
    sigfillset(&all);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        job *j;

        pthread_mutex_lock(&r->qlock);
        while (r->head == NULL && !r->stop)
            pthread_cond_wait(&r->qcond, &r->qlock);
        if (r->head == NULL) {
            pthread_mutex_unlock(&r->qlock);
            break;
        }
        j = r->head;
        r->head = j->next;
        if (r->head == NULL)
            r->tail = NULL;
        r->busy_since = dexec_now();
        pthread_mutex_unlock(&r->qlock);

        if (j->call->kind == CALL_GENERATE)
            run_generate(r, j, j->queued_at);
        else
            run_rpc(r, j);
        pthread_mutex_lock(&r->qlock);
        r->busy_since = 0;
        pthread_mutex_unlock(&r->qlock);
        call_part_done(j->call);
        gjob_unref(j->g);
        free(j->pos);
        free(j);
    }
    return NULL;
}

static void enqueue(wrank *r, job *j)
{
    j->queued_at = dexec_now();
    pthread_mutex_lock(&r->qlock);
    if (r->tail != NULL)
        r->tail->next = j;
    else
        r->head = j;
    r->tail = j;
    pthread_cond_signal(&r->qcond);
    pthread_mutex_unlock(&r->qlock);
}

/* ---- request handling (I/O thread) ------------------------------------------ */

static dexec_value *hello_reply(void *user)
{
    dxw_server *s = user;
    dexec_value *m = dexec_value_map();

    dexec_value_map_set(m, "protocol", dexec_value_int(DEXEC_PROTOCOL_VERSION));
    dexec_value_map_set(m, "rank", dexec_value_int(s->opt.base_rank));
    dexec_value_map_set(m, "ranks", dexec_value_int(s->opt.num_ranks));
    dexec_value_map_set(m, "pid", dexec_value_int(getpid()));
    dexec_value_map_set(m, "host", dexec_value_str(s->host));
    dexec_value_map_set(m, "name", s->name != NULL ? dexec_value_str(s->name) : dexec_value_nil());
    dexec_value_map_set(m, "version", dexec_value_str(dexec_version()));
    return m;
}

static dexec_value *initialize_reply(dxw_server *s)
{
    dexec_value *m = dexec_value_map();

    for (int i = 0; i < s->opt.num_ranks; i++) {
        wrank *r = &s->ranks[i];
        int loaded;
        char msg[1024];

        pthread_rwlock_rdlock(&r->mlock);
        loaded = r->model != NULL;
        snprintf(msg, sizeof(msg), "rank %d: %s", r->rank, r->model_err);
        pthread_rwlock_unlock(&r->mlock);
        if (!loaded) {
            dexec_value_map_set(m, "status", dexec_value_str("error"));
            dexec_value_map_set(m, "error", dexec_value_str(msg));
            dexec_value_map_set(m, "rank", dexec_value_int(r->rank));
            return m;
        }
    }
    dexec_value_map_set(m, "status", dexec_value_str("ready"));
    dexec_value_map_set(m, "rank", dexec_value_int(s->opt.base_rank));
    dexec_value_map_set(m, "ranks", dexec_value_int(s->opt.num_ranks));
    dexec_value_map_set(m, "device", dexec_value_str(s->ranks[0].model != NULL
                                                         ? dxk_model_device(s->ranks[0].model)
                                                         : "none"));
    return m;
}

/* generate on an actor whose ranks form in-process parallel groups of
 * tcfg x tseq (parallel_threads): [requests, {group: G}] runs every request
 * on group G, [requests] deals request p to group p mod groups; each
 * request runs on every member of its group, the first answers. */
static void handle_group_generate(dxw_server *s, dxs_conn *c, uint32_t id, dexec_value *params,
                                  int cfg, int seq, int deadline_ms)
{
    const dexec_value *reqs = dexec_value_array_get(params, 0);
    const dexec_value *opt = dexec_value_array_get(params, 1);
    const dexec_value *gv = dexec_value_map_get(opt, "group");
    int w = cfg * seq, ngroups = s->opt.num_ranks / w, g0 = 0, ng = ngroups, parts = 0;
    size_t count = reqs->u.arr.len;
    call *k;

    if (opt != NULL && opt->type != DEXEC_VAL_NIL &&
        (opt->type != DEXEC_VAL_MAP || gv == NULL || gv->type != DEXEC_VAL_INT ||
         gv->u.i < 0 || gv->u.i >= ngroups)) {
        dxs_reply_err(c, id, DEXEC_EINVAL, s->opt.base_rank,
                      "generate: this worker's ranks %d..%d form %d parallel group%s of cfg %d x "
                      "sequence %d: expected params [[request, ...]] or [[request, ...], "
                      "{group: G}] with G in 0..%d",
                      s->opt.base_rank, s->opt.base_rank + s->opt.num_ranks - 1, ngroups,
                      ngroups == 1 ? "" : "s", cfg, seq, ngroups - 1);
        dexec_value_free(params);
        return;
    }
    if (gv != NULL) {
        g0 = (int)gv->u.i;
        ng = 1;
    }
    if (count == 0) {
        dxs_reply_ok(c, id, dexec_value_array());
        dexec_value_free(params);
        return;
    }
    for (int g = 0; g < ng; g++)
        parts += (size_t)g < count ? w : 0;
    /* one part more, done below: no member finishing early frees the call
     * while it is being dealt */
    k = call_new(c, id, CALL_GENERATE, params, count, parts + 1);
    if (k == NULL) {
        dxs_reply_err(c, id, DEXEC_ENOMEM, s->opt.base_rank, "out of memory");
        dexec_value_free(params);
        return;
    }
    /* all the members' jobs are queued here, on the I/O thread, so that
     * every member computes its group's requests in the same order */
    for (int g = 0; g < ng && (size_t)g < count; g++) {
        size_t npos = 0, *pos = calloc(count / (size_t)ng + 1, sizeof(size_t));
        gjob *gj;

        for (size_t p = (size_t)g; pos != NULL && p < count; p += (size_t)ng)
            pos[npos++] = p;
        gj = pos != NULL ? gjob_new(g0 + g, cfg, seq, npos, deadline_ms, s->opt.base_rank)
                         : NULL;
        for (int m = 0; m < w; m++) {
            job *j = calloc(1, sizeof(*j));

            if (j == NULL || gj == NULL || (j->pos = malloc(npos * sizeof(size_t))) == NULL) {
                /* out of memory: this member's share fails */
                free(j);
                call_fail(k, DEXEC_ENOMEM, s->opt.base_rank + (g0 + g) * w + m, "out of memory");
                if (gj != NULL)
                    gjob_unref(gj);
                call_part_done(k);
                continue;
            }
            memcpy(j->pos, pos, npos * sizeof(size_t));
            j->npos = npos;
            j->call = k;
            j->g = gj;
            enqueue(&s->ranks[(g0 + g) * w + m], j);
        }
        free(pos);
    }
    call_part_done(k);
}

static void handle_generate(dxw_server *s, dxs_conn *c, uint32_t id, dexec_value *params)
{
    const dexec_value *reqs = dexec_value_array_get(params, 0), *only;
    int n = s->opt.num_ranks, parts = 0, first = 0, tcfg, tseq, tdl;
    size_t count;
    call *k;

    if (reqs == NULL || reqs->type != DEXEC_VAL_ARRAY) {
        dxs_reply_err(c, id, DEXEC_EINVAL, s->opt.base_rank,
                  "generate: expected params [[request, ...]]");
        dexec_value_free(params);
        return;
    }
    pthread_mutex_lock(&s->tlock);
    tcfg = s->tcfg;
    tseq = s->tseq;
    tdl = s->tdeadline_ms;
    pthread_mutex_unlock(&s->tlock);
    if (tcfg * tseq > 1) {
        handle_group_generate(s, c, id, params, tcfg, tseq, tdl);
        return;
    }
    /* [requests, rank]: every request on that hosted rank (the engine
     * keeps each rank busy); without it position p goes to hosted rank
     * p mod n. [requests, {parallel: true}]: a parallel group's call
     * (run_generate), on this worker's rank(s) as without a rank. */
    only = dexec_value_array_get(params, 1);
    if (only != NULL && only->type != DEXEC_VAL_NIL && only->type != DEXEC_VAL_MAP) {
        int64_t r = dexec_value_as_int(only, -1);

        if (only->type != DEXEC_VAL_INT || r < s->opt.base_rank ||
            r >= (int64_t)s->opt.base_rank + n) {
            dxs_reply_err(c, id, DEXEC_EINVAL, s->opt.base_rank,
                          "generate: rank %lld is not hosted here (ranks %d..%d)", (long long)r,
                          s->opt.base_rank, s->opt.base_rank + n - 1);
            dexec_value_free(params);
            return;
        }
        first = (int)(r - s->opt.base_rank);
        n = 1;
    }
    count = reqs->u.arr.len;
    if (count == 0) {
        dxs_reply_ok(c, id, dexec_value_array());
        dexec_value_free(params);
        return;
    }
    for (int i = 0; i < n; i++)
        parts += (size_t)i < count;
    k = call_new(c, id, CALL_GENERATE, params, count, parts);
    if (k == NULL) {
        dxs_reply_err(c, id, DEXEC_ENOMEM, s->opt.base_rank, "out of memory");
        dexec_value_free(params);
        return;
    }
    for (int i = 0; i < n && (size_t)i < count; i++) {
        job *j = calloc(1, sizeof(*j));

        j->call = k;
        j->pos = calloc(count / (size_t)n + 1, sizeof(size_t));
        for (size_t p = (size_t)i; p < count; p += (size_t)n)
            j->pos[j->npos++] = p;
        enqueue(&s->ranks[first + i], j);
    }
}

/* execute_rpc [method, args, kwargs] and collective_rpc [same]. */
static void handle_rpc(dxw_server *s, dxs_conn *c, uint32_t id, dexec_value *params,
                       enum call_kind kind)
{
    const char *method = dexec_value_as_str(dexec_value_array_get(params, 0), NULL);
    const dexec_value *args = dexec_value_array_get(params, 1);
    const dexec_value *kwargs = dexec_value_array_get(params, 2);
    int n = s->opt.num_ranks;
    call *k;

    if (method == NULL || (args != NULL && args->type != DEXEC_VAL_ARRAY &&
                           args->type != DEXEC_VAL_NIL) ||
        (kwargs != NULL && kwargs->type != DEXEC_VAL_MAP && kwargs->type != DEXEC_VAL_NIL)) {
        dxs_reply_err(c, id, DEXEC_EINVAL, s->opt.base_rank,
                  "%s: expected params [method, [args...], {kwargs}]",
                  kind == CALL_EXECUTE ? "execute_rpc" : "collective_rpc");
        dexec_value_free(params);
        return;
    }
    if (!is_known_method(method)) {
        dxs_reply_err(c, id, DEXEC_ENOTFOUND, s->opt.base_rank,
                  "unknown worker method '%s' (known: %s)", method, known_methods);
        dexec_value_free(params);
        return;
    }
    if (args != NULL && args->type == DEXEC_VAL_NIL)
        args = NULL;
    if (kwargs != NULL && kwargs->type == DEXEC_VAL_NIL)
        kwargs = NULL;
    if (is_inline_method(method)) {
        /* cheap and read-only: answered here, without a thread hop */
        dexec_value *res = kind == CALL_COLLECTIVE ? dexec_value_array() : NULL;
        char err[512];

        for (int i = 0; i < (kind == CALL_EXECUTE ? 1 : n); i++) {
            dexec_value *one;
            dexec_status st = run_method(&s->ranks[i], method, args, kwargs, &one, err,
                                         sizeof(err));

            if (st != DEXEC_OK) {
                dxs_reply_err(c, id, st, s->ranks[i].rank, "%s", err);
                dexec_value_free(res);
                dexec_value_free(params);
                return;
            }
            if (res != NULL)
                dexec_value_array_push(res, one);
            else
                res = one;
        }
        dxs_reply_ok(c, id, res);
        dexec_value_free(params);
        return;
    }
    k = call_new(c, id, kind, params, kind == CALL_EXECUTE ? 1 : (size_t)n, n);
    if (k == NULL) {
        dxs_reply_err(c, id, DEXEC_ENOMEM, s->opt.base_rank, "out of memory");
        dexec_value_free(params);
        return;
    }
    for (int i = 0; i < n; i++) {
        job *j = calloc(1, sizeof(*j));

        j->call = k;
        enqueue(&s->ranks[i], j);
    }
}

static dexec_value *health_reply(dxw_server *s, char *err, size_t errlen, int *bad_rank)
{
    for (int i = 0; i < s->opt.num_ranks; i++) {
        wrank *r = &s->ranks[i];
        int ok;

        pthread_rwlock_rdlock(&r->mlock);
        ok = r->model != NULL;
        if (!ok)
            snprintf(err, errlen, "rank %d has no model: %s", r->rank, r->model_err);
        pthread_rwlock_unlock(&r->mlock);
        if (!ok) {
            *bad_rank = r->rank;
            return NULL;
        }
    }
    return dexec_value_bool(1);
}

/* The method table: what the core dispatches to after hello. */

static int m_generate(void *user, dxs_conn *c, uint32_t id, dexec_value *params)
{
    handle_generate(user, c, id, params);
    return 0;
}

static int m_execute_rpc(void *user, dxs_conn *c, uint32_t id, dexec_value *params)
{
    handle_rpc(user, c, id, params, CALL_EXECUTE);
    return 0;
}

static int m_collective_rpc(void *user, dxs_conn *c, uint32_t id, dexec_value *params)
{
    handle_rpc(user, c, id, params, CALL_COLLECTIVE);
    return 0;
}

static dexec_value *a_get_rank(void *user, const dexec_value *params)
{
    const dxw_server *s = user;

    (void)params;
    return dexec_value_int(s->opt.base_rank);
}

static dexec_value *a_initialize(void *user, const dexec_value *params)
{
    (void)params;
    return initialize_reply(user);
}

static int m_check_health(void *user, dxs_conn *c, uint32_t id, dexec_value *params)
{
    dxw_server *s = user;
    char err[1024];
    int bad = s->opt.base_rank;
    dexec_value *h = health_reply(s, err, sizeof(err), &bad);

    if (h != NULL)
        dxs_reply_ok(c, id, h);
    else
        dxs_reply_err(c, id, DEXEC_EUNHEALTHY, bad, "%s", err);
    dexec_value_free(params);
    return 0;
}

static int m_shutdown(void *user, dxs_conn *c, uint32_t id, dexec_value *params)
{
    dxw_server *s = user;

    dxs_reply_ok(c, id, dexec_value_nil());
    dexec_value_free(params);
    dexec_log(DEXEC_LOG_INFO, "worker", "shutdown requested");
    dxs_stop(s->rpc);
    return 0;
}

static const dxs_method worker_methods[] = {
    {"initialize", NULL, NULL, a_initialize},
    {"generate", m_generate, NULL, NULL},
    {"execute_rpc", m_execute_rpc, NULL, NULL},
    {"collective_rpc", m_collective_rpc, NULL, NULL},
    {"get_rank", NULL, NULL, a_get_rank},
    {"check_health", m_check_health, NULL, NULL},
    {"shutdown", m_shutdown, NULL, NULL},
    {NULL, NULL, NULL, NULL},
};

/* ---- server lifecycle ---------------------------------------------------------- */

dexec_status dxw_server_new(const dxw_options *opt, dxw_server **out, char *err, size_t errlen)
{
    dxw_server *s = calloc(1, sizeof(*s));

    *out = NULL;
    if (s == NULL)
        return DEXEC_ENOMEM;
    s->opt = *opt;
    if (s->opt.num_ranks < 1)
        s->opt.num_ranks = 1;
    s->model = strdup(opt->model != NULL ? opt->model : "fashion-dit");
    s->device = strdup(opt->device != NULL ? opt->device : "auto");
    s->dtype = strdup(opt->dtype != NULL ? opt->dtype : "float32");
    s->token = opt->token != NULL ? strdup(opt->token) : NULL;
    s->name = opt->name != NULL ? strdup(opt->name) : NULL;
    s->started = dexec_now();
    pthread_mutex_init(&s->cancel_lock, NULL);
    pthread_mutex_init(&s->tlock, NULL);
    s->tcfg = s->tseq = 1;
    gethostname(s->host, sizeof(s->host) - 1);
    {
        dxs_config rc = {
            .component = "worker",
            .role = "worker",
            .token = opt->token,
            .max_frame = opt->max_frame,
            .rank = s->opt.base_rank,
            .write_timeout = WRITE_TIMEOUT,
            .hello_timeout = opt->hello_timeout,
            .hello_max_frame = opt->hello_max_frame,
            .hello_max_conns = opt->hello_max_conns,
            .frame_timeout = opt->frame_timeout,
            .idle_timeout = opt->idle_timeout,
            .tick_interval = 1.0,
            .methods = worker_methods,
            .hello_reply = hello_reply,
            .user = s,
            .owner_wait = opt->owner_wait,
        };

        s->rpc = dxs_server_new(&rc, err, errlen);
    }
    if (s->rpc == NULL) {
        free(s->model);
        free(s->device);
        free(s->dtype);
        free(s->token);
        free(s->name);
        free(s);
        return DEXEC_EIO;
    }
    s->ranks = calloc((size_t)s->opt.num_ranks, sizeof(*s->ranks));
    for (int i = 0; i < s->opt.num_ranks; i++) {
        wrank *r = &s->ranks[i];
        char merr[768];

        r->s = s;
        r->index = i;
        r->rank = s->opt.base_rank + i;
        r->tmember = -1;
        pthread_rwlock_init(&r->mlock, NULL);
        pthread_mutex_init(&r->qlock, NULL);
        pthread_cond_init(&r->qcond, NULL);
        snprintf(r->model_name, sizeof(r->model_name), "%s", s->model);
        if (dxk_model_open_dtype(s->model, s->device, s->dtype, i, &r->model, merr,
                                 sizeof(merr)) != DEXEC_OK) {
            snprintf(r->model_err, sizeof(r->model_err), "%s", merr);
            /* a worker its engine owns (fd mode) says it once, through the
             * engine's initialize error; a standalone one logs it */
            dexec_log(s->opt.exit_on_eof ? DEXEC_LOG_INFO : DEXEC_LOG_ERROR, "worker",
                      "rank %d: %s", r->rank, merr);
        }
        pthread_create(&r->thread, NULL, rank_main, r);
    }
    *out = s;
    return DEXEC_OK;
}

void dxw_server_add_listener(dxw_server *s, int fd)
{
    dxs_add_listener(s->rpc, fd);
}

void dxw_server_add_connection(dxw_server *s, int fd)
{
    dxs_add_connection(s->rpc, fd, s->opt.exit_on_eof);
}

void dxw_server_stop(dxw_server *s)
{
    dxs_stop(s->rpc);
}

int dxw_server_run(dxw_server *s)
{
    return dxs_run(s->rpc);
}

int dxw_server_busy(dxw_server *s)
{
    int busy = 0;

    for (int i = 0; i < s->opt.num_ranks; i++) {
        pthread_mutex_lock(&s->ranks[i].qlock);
        busy |= s->ranks[i].busy_since > 0 || s->ranks[i].head != NULL;
        pthread_mutex_unlock(&s->ranks[i].qlock);
    }
    return busy;
}

void dxw_server_free(dxw_server *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < s->opt.num_ranks; i++) {
        wrank *r = &s->ranks[i];

        pthread_mutex_lock(&r->qlock);
        r->stop = 1;
        pthread_cond_signal(&r->qcond);
        pthread_mutex_unlock(&r->qlock);
    }
    /* connections first: a rank finishing a call writes to a dead socket
     * and drops its reference instead of blocking */
    dxs_server_free(s->rpc);
    for (int i = 0; i < s->opt.num_ranks; i++) {
        wrank *r = &s->ranks[i];

        pthread_join(r->thread, NULL);
        while (r->head != NULL) {
            job *j = r->head;

            r->head = j->next;
            call_part_done(j->call);
            gjob_unref(j->g);
            free(j->pos);
            free(j);
        }
        dxk_model_free(r->model);
        dxw_coll_free(r->coll);
        pthread_rwlock_destroy(&r->mlock);
        pthread_mutex_destroy(&r->qlock);
        pthread_cond_destroy(&r->qcond);
    }
    for (size_t i = 0; i < CANCELLED_MAX; i++)
        free(s->cancelled[i]);
    pthread_mutex_destroy(&s->cancel_lock);
    pthread_mutex_destroy(&s->tlock);
    free(s->ranks);
    free(s->model);
    free(s->device);
    free(s->dtype);
    free(s->token);
    free(s->name);
    free(s);
}
