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
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct dexec_group {
    int n;
    dexec_conn **conns;
};

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
    g->n = n;
    return g;
}

void dexec_group_set(dexec_group *g, int rank, dexec_conn *c)
{
    if (g != NULL && rank >= 0 && rank < g->n)
        g->conns[rank] = c;
}

dexec_conn *dexec_group_conn(dexec_group *g, int rank)
{
    return g != NULL && rank >= 0 && rank < g->n ? g->conns[rank] : NULL;
}

int dexec_group_size(const dexec_group *g)
{
    return g != NULL ? g->n : 0;
}

void dexec_group_free(dexec_group *g)
{
    if (g == NULL)
        return;
    for (int i = 0; i < g->n; i++)
        dexec_conn_free(g->conns[i]);
    free(g->conns);
    free(g);
}

/* Appends ", N" or "N" to a rank list. */
static void list_add(char *buf, size_t len, int rank)
{
    size_t l = strlen(buf);

    snprintf(buf + l, len - l, "%s%d", l > 0 ? ", " : "", rank);
}

dexec_status dexec_group_collective_rpc(dexec_group *g, const char *method, double timeout,
                                        const dexec_value *args, const dexec_value *kwargs,
                                        int unique_reply_rank, dexec_value **replies, char *err,
                                        size_t errlen)
{
    double deadline = dexec_now() + timeout;
    dexec_value *params, *out = NULL;
    uint32_t *ids;
    dexec_status *sts, st = DEXEC_OK;
    dexec_value **res;
    dx_wait *waits = NULL;
    char msg[768], late[256] = "", first_err[900] = "";
    int failed_rank = -1;

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
    params = dexec_value_array();
    dexec_value_array_push(params, dexec_value_str(method));
    dexec_value_array_push(params, args != NULL ? dexec_value_clone(args) : dexec_value_array());
    dexec_value_array_push(params, kwargs != NULL ? dexec_value_clone(kwargs) : dexec_value_map());
    ids = calloc((size_t)g->n, sizeof(*ids));
    sts = calloc((size_t)g->n, sizeof(*sts));
    res = calloc((size_t)g->n, sizeof(*res));
    waits = calloc((size_t)g->n, sizeof(*waits));
    if (params == NULL || params->u.arr.len != 3 || ids == NULL || sts == NULL || res == NULL ||
        waits == NULL) {
        st = dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
        goto done;
    }
    for (int r = 0; r < g->n; r++) {
        sts[r] = dexec_conn_send(g->conns[r], "execute_rpc", params, NULL, NULL, &ids[r], msg,
                                 sizeof(msg));
        waits[r] = (dx_wait){.c = g->conns[r], .id = ids[r], .active = sts[r] == DEXEC_OK};
        snprintf(waits[r].msg, sizeof(waits[r].msg), "%s", msg);
    }
    dx_conn_wait_all(waits, (size_t)g->n, deadline);
    for (int r = 0; r < g->n; r++) {
        if (sts[r] == DEXEC_OK) {
            sts[r] = waits[r].st;
            res[r] = waits[r].result;
        }
        snprintf(msg, sizeof(msg), "%s", waits[r].msg);
        if (sts[r] == DEXEC_ETIMEDOUT) {
            list_add(late, sizeof(late), r);
        } else if (sts[r] != DEXEC_OK && failed_rank < 0) {
            failed_rank = r;
            if (sts[r] == DEXEC_ECLOSED)
                snprintf(first_err, sizeof(first_err), "collective_rpc %s: %s", method, msg);
            else
                snprintf(first_err, sizeof(first_err), "collective_rpc %s: rank %d: %s", method,
                         r, msg);
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
        out = res[unique_reply_rank];
        res[unique_reply_rank] = NULL;
    } else {
        out = dexec_value_array();
        for (int r = 0; out != NULL && r < g->n; r++) {
            if (dexec_value_array_push(out, res[r] != NULL ? res[r] : dexec_value_nil()) != 0) {
                res[r] = NULL;
                dexec_value_free(out);
                out = NULL;
                break;
            }
            res[r] = NULL;
        }
        if (out == NULL)
            st = dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
    }
done:
    if (res != NULL)
        for (int r = 0; r < g->n; r++)
            dexec_value_free(res[r]);
    free(res);
    free(waits);
    free(sts);
    free(ids);
    dexec_value_free(params);
    if (st == DEXEC_OK && replies != NULL)
        *replies = out;
    else
        dexec_value_free(out);
    return st;
}

/* Progress of one rank's batch, mapped back to request indexes. */
typedef struct progress_ctx {
    dexec_progress_fn fn;
    void *user;
    size_t *index; /* batch position -> request index */
    size_t count;
} progress_ctx;

static void on_progress(void *user, const char *method, const dexec_value *params)
{
    progress_ctx *p = user;
    int64_t pos, image, step, total;

    if (strcmp(method, "progress") != 0 || p->fn == NULL)
        return;
    pos = dexec_value_as_int(dexec_value_array_get(params, 1), -1);
    image = dexec_value_as_int(dexec_value_array_get(params, 2), 0);
    step = dexec_value_as_int(dexec_value_array_get(params, 3), 0);
    total = dexec_value_as_int(dexec_value_array_get(params, 4), 0);
    if (pos < 0 || (size_t)pos >= p->count)
        return;
    p->fn(p->user, p->index[pos], (int)image, (int)step, (int)total);
}

static void fail_outputs(dexec_output *outs, const progress_ctx *pc, const dexec_request *reqs,
                         dexec_status st, int rank, const char *msg)
{
    for (size_t k = 0; k < pc->count; k++) {
        dexec_output *o = &outs[pc->index[k]];

        dexec_output_clear(o);
        dexec_output_init(o);
        o->request_id = dx_strdup(reqs[pc->index[k]].request_id);
        o->status = st;
        o->rank = rank;
        o->error = dx_strdup(msg);
    }
}

/* When a rank's reply came: its outputs' total_s. */
static void stamp_done(void *user, dx_wait *w)
{
    (void)w;
    *(double *)user = dexec_now();
}

dexec_status dexec_group_generate(dexec_group *g, const dexec_request *reqs, size_t n,
                                  dexec_output *outs, double timeout, dexec_progress_fn progress,
                                  void *user, char *err, size_t errlen)
{
    double start = dexec_now(), deadline = start + timeout;
    int nr = g->n;
    progress_ctx *pc = calloc((size_t)nr, sizeof(*pc));
    uint32_t *ids = calloc((size_t)nr, sizeof(*ids));
    dexec_status *sts = calloc((size_t)nr, sizeof(*sts));
    dx_wait *waits = calloc((size_t)nr, sizeof(*waits));
    double *fin = calloc((size_t)nr, sizeof(*fin));
    int failed = 0, used = 0;
    char msg[768], last[900] = "";

    if (pc == NULL || ids == NULL || sts == NULL || waits == NULL || fin == NULL) {
        free(pc);
        free(ids);
        free(sts);
        free(waits);
        free(fin);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (DEXEC_STRUCT_CHECK(&reqs[i], dexec_request, DEXEC_REQUEST_SIZE_1_1, msg,
                               sizeof(msg)) != DEXEC_OK) {
            free(pc);
            free(ids);
            free(sts);
            free(waits);
            free(fin);
            return dx_fail(err, errlen, DEXEC_EINVAL, "generate: request %zu: %s", i, msg);
        }
    }
    for (int r = 0; r < nr; r++) {
        dexec_value *params, *batch;

        pc[r].fn = progress;
        pc[r].user = user;
        pc[r].index = calloc(n / (size_t)nr + 1, sizeof(size_t));
        for (size_t i = (size_t)r; i < n; i += (size_t)nr)
            pc[r].index[pc[r].count++] = i;
        if (pc[r].count == 0)
            continue;
        used++;
        batch = dexec_value_array();
        for (size_t k = 0; k < pc[r].count; k++)
            dexec_value_array_push(batch, dexec_request_to_value(&reqs[pc[r].index[k]]));
        params = dexec_value_array();
        dexec_value_array_push(params, batch);
        sts[r] = dexec_conn_send(g->conns[r], "generate", params, on_progress, &pc[r], &ids[r],
                                 msg, sizeof(msg));
        dexec_value_free(params);
        if (sts[r] != DEXEC_OK) {
            snprintf(last, sizeof(last), "rank %d: %s", r, msg);
            fail_outputs(outs, &pc[r], reqs, DEXEC_EWORKER, r, last);
            failed++;
        }
    }
    for (int r = 0; r < nr; r++)
        waits[r] = (dx_wait){.c = g->conns[r], .id = ids[r],
                             .active = pc[r].count > 0 && sts[r] == DEXEC_OK,
                             .done = stamp_done, .done_user = &fin[r]};
    dx_conn_wait_all(waits, (size_t)nr, deadline);
    for (int r = 0; r < nr; r++) {
        dexec_value *res = waits[r].result;
        dexec_status st = waits[r].st;

        if (!waits[r].active)
            continue;
        snprintf(msg, sizeof(msg), "%s", waits[r].msg);
        if (st == DEXEC_OK &&
            (res == NULL || res->type != DEXEC_VAL_ARRAY || res->u.arr.len != pc[r].count)) {
            st = DEXEC_EPROTO;
            snprintf(msg, sizeof(msg), "generate reply is not an array of %zu outputs",
                     pc[r].count);
        }
        for (size_t k = 0; st == DEXEC_OK && k < pc[r].count; k++) {
            dexec_output *o = &outs[pc[r].index[k]];

            st = dexec_output_from_value(res->u.arr.items[k], o, msg, sizeof(msg));
            if (st == DEXEC_OK) {
                o->rank = r;
                o->timings.total_s = fin[r] - start;
            }
        }
        dexec_value_free(res);
        if (st != DEXEC_OK) {
            if (st == DEXEC_ETIMEDOUT)
                snprintf(last, sizeof(last), "generate: no reply from rank %d within %.3g s", r,
                         timeout);
            else if (st == DEXEC_ECLOSED)
                snprintf(last, sizeof(last), "generate: %s", msg);
            else
                snprintf(last, sizeof(last), "generate: rank %d: %s", r, msg);
            if (st == DEXEC_ECLOSED || st == DEXEC_EPROTO)
                st = DEXEC_EWORKER;
            fail_outputs(outs, &pc[r], reqs, st, r, last);
            sts[r] = st;
            failed++;
        }
    }
    dexec_status ret = DEXEC_OK;
    if (used > 0 && failed == used) {
        ret = DEXEC_EWORKER;
        for (int r = 0; r < nr; r++)
            if (sts[r] == DEXEC_ETIMEDOUT)
                ret = DEXEC_ETIMEDOUT;
        dexec_errorf(err, errlen, "%s", last);
    }
    for (int r = 0; r < nr; r++)
        free(pc[r].index);
    free(pc);
    free(ids);
    free(sts);
    free(waits);
    free(fin);
    return ret;
}

dexec_status dexec_group_check_health(dexec_group *g, double timeout, char *err, size_t errlen)
{
    double deadline = dexec_now() + timeout;
    uint32_t *ids = calloc((size_t)g->n, sizeof(*ids));
    dexec_status *sts = calloc((size_t)g->n, sizeof(*sts)), ret = DEXEC_OK;
    dx_wait *waits = calloc((size_t)g->n, sizeof(*waits));
    char msg[768];

    if (ids == NULL || sts == NULL || waits == NULL) {
        free(ids);
        free(sts);
        free(waits);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
    }
    for (int r = 0; r < g->n; r++) {
        sts[r] = dexec_conn_send(g->conns[r], "get_rank", NULL, NULL, NULL, &ids[r], msg,
                                 sizeof(msg));
        waits[r] = (dx_wait){.c = g->conns[r], .id = ids[r], .active = sts[r] == DEXEC_OK};
        snprintf(waits[r].msg, sizeof(waits[r].msg), "%s", msg);
    }
    dx_conn_wait_all(waits, (size_t)g->n, deadline);
    for (int r = 0; r < g->n; r++) {
        dexec_value *res = NULL;
        dexec_status st = sts[r];

        if (st == DEXEC_OK) {
            st = waits[r].st;
            res = waits[r].result;
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
