/*
 * rpc_server.c - the worker protocol's server core (see rpc_server.h and
 * doc/protocol.md), used by the worker and the node agent.
 *
 * One thread runs a poll loop over a wake pipe, the listeners, the
 * connections and the fds the user watches. Replies may come from other
 * threads: each connection has a write lock and a reference count, and
 * its fd is closed only when the last reference goes.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rpc_server.h"

/* How long accept stays off after running out of descriptors: long enough
 * not to spin on a listener that stays readable, short enough to recover
 * soon after connections close. */
#define ACCEPT_BACKOFF 1.0

struct dxs_conn {
    int fd;
    dexec_reader *rd;
    pthread_mutex_t wlock;
    int refs; /* atomic: the loop's reference plus one per reply owed */
    int authed;
    int control;
    double hello_by; /* drop unless authenticated by then; 0: no deadline */
    struct dxs_conn *next;
    char component[32];
    double write_timeout;
};

typedef struct watch {
    int fd;
    int removed;
    dxs_fd_fn fn;
    void *arg;
    struct watch *next;
} watch;

struct dxs_server {
    dxs_config cfg;
    char *token;
    int *listeners;
    int nlisteners;
    dxs_conn *conns;
    watch *watches;
    int wake[2];
    volatile sig_atomic_t stopping;
    int exit_status;
    double accept_resume; /* listeners are not polled before this time */
    int accept_failing;   /* the failure was logged; log again only after a success */
    int owned;            /* cfg.owner_wait: an owner said hello */
    double owner_by;      /* cfg.owner_wait: end the loop unless owned by then */
};

/* ---- connections and replies ------------------------------------------------------ */

static dxs_conn *conn_new(dxs_server *s, int fd, int control)
{
    dxs_conn *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->rd = dexec_reader_new(s->cfg.max_frame);
    if (c->rd == NULL) {
        free(c);
        return NULL;
    }
    c->fd = fd;
    c->refs = 1;
    c->control = control;
    c->write_timeout = s->cfg.write_timeout;
    snprintf(c->component, sizeof(c->component), "%s", s->cfg.component);
    if (!control && s->cfg.hello_timeout > 0)
        c->hello_by = dexec_now() + s->cfg.hello_timeout;
    pthread_mutex_init(&c->wlock, NULL);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return c;
}

void dxs_conn_ref(dxs_conn *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
}

void dxs_conn_unref(dxs_conn *c)
{
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    close(c->fd);
    dexec_reader_free(c->rd);
    pthread_mutex_destroy(&c->wlock);
    free(c);
}

/* Sends msg and frees it. */
static void send_msg(dxs_conn *c, dexec_value *msg)
{
    char err[256];
    dexec_status st;

    pthread_mutex_lock(&c->wlock);
    st = dexec_frame_write(c->fd, msg, dexec_now() + c->write_timeout, err, sizeof(err));
    pthread_mutex_unlock(&c->wlock);
    if (st != DEXEC_OK && st != DEXEC_ECLOSED)
        dexec_log(DEXEC_LOG_WARN, c->component, "reply not sent: %s", err);
    dexec_value_free(msg);
}

void dxs_reply_ok(dxs_conn *c, uint32_t msgid, dexec_value *result)
{
    dexec_value *m = dexec_value_array();

    dexec_value_array_push(m, dexec_value_int(1));
    dexec_value_array_push(m, dexec_value_int(msgid));
    dexec_value_array_push(m, dexec_value_nil());
    dexec_value_array_push(m, result != NULL ? result : dexec_value_nil());
    send_msg(c, m);
}

void dxs_reply_err(dxs_conn *c, uint32_t msgid, dexec_status code, int rank, const char *fmt, ...)
{
    dexec_value *m = dexec_value_array(), *e = dexec_value_array();
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    dexec_value_array_push(e, dexec_value_int(code));
    dexec_value_array_push(e, dexec_value_str(msg));
    dexec_value_array_push(e, dexec_value_int(rank));
    dexec_value_array_push(m, dexec_value_int(1));
    dexec_value_array_push(m, dexec_value_int(msgid));
    dexec_value_array_push(m, e);
    dexec_value_array_push(m, dexec_value_nil());
    send_msg(c, m);
}

void dxs_notify(dxs_conn *c, const char *method, dexec_value *params)
{
    dexec_value *m = dexec_value_array();

    dexec_value_array_push(m, dexec_value_int(2));
    dexec_value_array_push(m, dexec_value_str(method));
    dexec_value_array_push(m, params != NULL ? params : dexec_value_array());
    send_msg(c, m);
}

/* ---- the handshake and dispatch ------------------------------------------------------ */

static const dxs_method *find_method(const dxs_server *s, const char *name)
{
    for (const dxs_method *m = s->cfg.methods; m != NULL && m->name != NULL; m++)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

/* "hello, a, b, ..." from the method table: what an unknown method's
 * error lists. */
static void known_methods(const dxs_server *s, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "hello");

    for (const dxs_method *m = s->cfg.methods; m != NULL && m->name != NULL; m++) {
        if ((m->request == NULL && m->answer == NULL) || used >= len)
            continue;
        used += (size_t)snprintf(buf + used, len - used, ", %s", m->name);
    }
}

/* Returns -1 when the connection must be dropped. */
static int handle_hello(dxs_server *s, dxs_conn *c, uint32_t id, const dexec_value *params)
{
    const dexec_value *arg = dexec_value_array_get(params, 0);
    int64_t proto = dexec_value_as_int(dexec_value_map_get(arg, "protocol"), -1);
    const char *tok = dexec_value_as_str(dexec_value_map_get(arg, "token"), NULL);

    if (proto != DEXEC_PROTOCOL_VERSION) {
        dxs_reply_err(c, id, DEXEC_EPROTO, s->cfg.rank,
                      "%s speaks protocol %d, the client asked for %lld", s->cfg.role,
                      DEXEC_PROTOCOL_VERSION, (long long)proto);
        return -1;
    }
    if (s->token != NULL && (tok == NULL || !dexec_secret_equal(tok, s->token))) {
        if (tok == NULL)
            dxs_reply_err(c, id, DEXEC_EAUTH, s->cfg.rank,
                          "this %s requires a token: give the client the %s's token file "
                          "(dexec: token_file, or external.token_file, in the configuration)",
                          s->cfg.role, s->cfg.role);
        else
            dxs_reply_err(c, id, DEXEC_EAUTH, s->cfg.rank,
                          "wrong token: the client's token file does not hold this %s's token",
                          s->cfg.role);
        return -1;
    }
    c->authed = 1;
    c->hello_by = 0;
    if (s->cfg.owner_wait > 0 && !s->owned) {
        s->owned = 1;
        c->control = 1;
    }
    dxs_reply_ok(c, id, s->cfg.hello_reply(s->cfg.user));
    return 0;
}

/* One decoded message; takes m. Returns -1 to drop the connection. */
static int dispatch(dxs_server *s, dxs_conn *c, dexec_value *m)
{
    const dexec_value *t = dexec_value_array_get(m, 0);
    const dexec_value *idv = dexec_value_array_get(m, 1);
    const dxs_method *meth;
    const char *name;
    dexec_value *params;
    char known[512];
    uint32_t id;
    int rc;

    if (m->type != DEXEC_VAL_ARRAY || t == NULL || t->type != DEXEC_VAL_INT) {
        dexec_log(DEXEC_LOG_WARN, s->cfg.component,
                  "dropping a connection that sent a non-RPC message");
        dexec_value_free(m);
        return -1;
    }
    if (t->u.i == 2) {
        /* before hello a connection may say nothing else: ignored */
        if (c->authed && m->u.arr.len == 3 && m->u.arr.items[1]->type == DEXEC_VAL_STR &&
            m->u.arr.items[2]->type == DEXEC_VAL_ARRAY &&
            (meth = find_method(s, m->u.arr.items[1]->u.str.ptr)) != NULL &&
            meth->notify != NULL) {
            params = m->u.arr.items[2];
            m->u.arr.items[2] = NULL;
            m->u.arr.len = 2;
            meth->notify(s->cfg.user, c, params);
        }
        dexec_value_free(m);
        return 0;
    }
    if (t->u.i != 0 || idv == NULL || idv->type != DEXEC_VAL_INT || idv->u.i < 0 ||
        idv->u.i > UINT32_MAX) {
        dexec_log(DEXEC_LOG_WARN, s->cfg.component,
                  "dropping a connection that sent a malformed request");
        dexec_value_free(m);
        return -1;
    }
    id = (uint32_t)idv->u.i;
    if (m->u.arr.len != 4 || m->u.arr.items[2]->type != DEXEC_VAL_STR ||
        m->u.arr.items[3]->type != DEXEC_VAL_ARRAY) {
        dxs_reply_err(c, id, DEXEC_EINVAL, s->cfg.rank,
                      "malformed request: expected [0, msgid, method, [params...]]");
        dexec_value_free(m);
        return 0;
    }
    name = m->u.arr.items[2]->u.str.ptr;
    if (strcmp(name, "hello") == 0) {
        rc = handle_hello(s, c, id, m->u.arr.items[3]);
        dexec_value_free(m);
        return rc;
    }
    if (!c->authed) {
        dxs_reply_err(c, id, DEXEC_EAUTH, s->cfg.rank,
                      "the first request on a connection must be hello");
        dexec_value_free(m);
        return -1;
    }
    meth = find_method(s, name);
    if (meth == NULL || (meth->request == NULL && meth->answer == NULL)) {
        known_methods(s, known, sizeof(known));
        dxs_reply_err(c, id, DEXEC_ENOTFOUND, s->cfg.rank, "unknown method '%s' (a %s knows: %s)",
                      name, s->cfg.role, known);
        dexec_value_free(m);
        return 0;
    }
    if (meth->request == NULL) {
        dxs_reply_ok(c, id, meth->answer(s->cfg.user, m->u.arr.items[3]));
        dexec_value_free(m);
        return 0;
    }
    /* the handler owns params; the method name dies with m */
    params = m->u.arr.items[3];
    m->u.arr.items[3] = NULL;
    m->u.arr.len = 3;
    rc = meth->request(s->cfg.user, c, id, params);
    dexec_value_free(m);
    return rc;
}

/* Reads what is available and dispatches every complete frame; -1 when the
 * connection is finished. */
static int service(dxs_server *s, dxs_conn *c)
{
    char err[512];
    dexec_status st = dexec_reader_fill(c->rd, c->fd, err, sizeof(err));

    for (;;) {
        dexec_value *m;

        if (dexec_reader_take(c->rd, &m, err, sizeof(err)) != DEXEC_OK) {
            dexec_log(DEXEC_LOG_WARN, s->cfg.component, "dropping a connection: %s", err);
            return -1;
        }
        if (m == NULL)
            break;
        if (dispatch(s, c, m) != 0)
            return -1;
    }
    return st == DEXEC_OK ? 0 : -1;
}

/* Unlinks c, tells the user and drops the loop's reference. */
static void drop(dxs_server *s, dxs_conn *c)
{
    for (dxs_conn **pp = &s->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    if (c->control) {
        dexec_log(DEXEC_LOG_INFO, s->cfg.component, "control socket closed: exiting");
        s->stopping = 1;
    }
    if (s->cfg.closed != NULL)
        s->cfg.closed(s->cfg.user, c);
    shutdown(c->fd, SHUT_RDWR);
    dxs_conn_unref(c);
}

/* ---- accept ---------------------------------------------------------------------------- */

static void accept_all(dxs_server *s, int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

        if (fd >= 0) {
            if (s->accept_failing)
                dexec_log(DEXEC_LOG_INFO, s->cfg.component, "accepting connections again");
            s->accept_failing = 0;
            dxs_add_connection(s, fd, 0);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* the pending connection stays queued and the listener stays
             * readable: back off instead of spinning on it */
            if (!s->accept_failing)
                dexec_log(DEXEC_LOG_WARN, s->cfg.component,
                          "cannot accept connections: %s; retrying every %.0f s (raise the "
                          "open-files limit, ulimit -n, or close idle clients)",
                          strerror(errno), ACCEPT_BACKOFF);
            s->accept_failing = 1;
            s->accept_resume = dexec_now() + ACCEPT_BACKOFF;
        }
        return;
    }
}

/* ---- the loop -------------------------------------------------------------------------- */

dxs_server *dxs_server_new(const dxs_config *cfg, char *err, size_t errlen)
{
    dxs_server *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        dexec_errorf(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    if (s->cfg.tick_interval < 0.01)
        s->cfg.tick_interval = 0.01;
    if (s->cfg.write_timeout <= 0)
        s->cfg.write_timeout = 30.0;
    s->owner_by = dexec_now() + s->cfg.owner_wait;
    if (cfg->token != NULL && (s->token = strdup(cfg->token)) == NULL) {
        dexec_errorf(err, errlen, "out of memory");
        free(s);
        return NULL;
    }
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        dexec_errorf(err, errlen, "pipe: %s", strerror(errno));
        free(s->token);
        free(s);
        return NULL;
    }
    return s;
}

void dxs_add_listener(dxs_server *s, int fd)
{
    int *l = realloc(s->listeners, (size_t)(s->nlisteners + 1) * sizeof(int));

    if (l == NULL) {
        dexec_log(DEXEC_LOG_ERROR, s->cfg.component, "out of memory adding a listener");
        close(fd);
        return;
    }
    s->listeners = l;
    s->listeners[s->nlisteners++] = fd;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

void dxs_add_connection(dxs_server *s, int fd, int control)
{
    dxs_conn *c = conn_new(s, fd, control);

    if (c == NULL) {
        dexec_log(DEXEC_LOG_WARN, s->cfg.component, "out of memory: refusing a connection");
        close(fd);
        return;
    }
    c->next = s->conns;
    s->conns = c;
}

int dxs_watch(dxs_server *s, int fd, dxs_fd_fn fn, void *arg)
{
    watch *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return -1;
    w->fd = fd;
    w->fn = fn;
    w->arg = arg;
    w->next = s->watches;
    s->watches = w;
    return 0;
}

void dxs_unwatch(dxs_server *s, int fd)
{
    /* marked only: the loop may be iterating over it */
    for (watch *w = s != NULL ? s->watches : NULL; w != NULL; w = w->next)
        if (w->fd == fd)
            w->removed = 1;
}

static void purge_watches(dxs_server *s)
{
    for (watch **pp = &s->watches; *pp != NULL;) {
        watch *w = *pp;

        if (w->removed) {
            *pp = w->next;
            free(w);
        } else {
            pp = &w->next;
        }
    }
}

/* Drops connections that did not say hello in time. */
static void expire_hellos(dxs_server *s, double now)
{
    dxs_conn *c = s->conns, *next;

    for (; c != NULL; c = next) {
        next = c->next;
        if (c->authed || c->hello_by <= 0 || now < c->hello_by)
            continue;
        dexec_log(DEXEC_LOG_WARN, s->cfg.component,
                  "dropping a connection that sent no hello within %.0f s", s->cfg.hello_timeout);
        drop(s, c);
    }
}

void dxs_stop(dxs_server *s)
{
    char b = 1;
    ssize_t rc;

    s->stopping = 1;
    rc = write(s->wake[1], &b, 1);
    (void)rc;
}

int dxs_stopping(const dxs_server *s)
{
    return s->stopping;
}

int dxs_run(dxs_server *s)
{
    double next_tick = dexec_now() + s->cfg.tick_interval;

    while (!s->stopping) {
        size_t cap = 1 + (size_t)s->nlisteners, n = 0, first_conn, first_watch;
        int accepting = dexec_now() >= s->accept_resume, rc, ms;
        struct pollfd *pf;
        void **who;
        double now;

        purge_watches(s);
        for (dxs_conn *c = s->conns; c != NULL; c = c->next)
            cap++;
        for (watch *w = s->watches; w != NULL; w = w->next)
            cap++;
        pf = calloc(cap, sizeof(*pf));
        who = calloc(cap, sizeof(*who));
        if (pf == NULL || who == NULL) {
            free(pf);
            free(who);
            dexec_log(DEXEC_LOG_ERROR, s->cfg.component, "out of memory in the I/O loop");
            s->exit_status = 1;
            break;
        }
        pf[n++] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        for (int i = 0; i < s->nlisteners; i++)
            pf[n++] = (struct pollfd){.fd = accepting ? s->listeners[i] : -1, .events = POLLIN};
        first_conn = n;
        for (dxs_conn *c = s->conns; c != NULL; c = c->next) {
            who[n] = c;
            pf[n++] = (struct pollfd){.fd = c->fd, .events = POLLIN};
        }
        first_watch = n;
        for (watch *w = s->watches; w != NULL; w = w->next) {
            who[n] = w;
            pf[n++] = (struct pollfd){.fd = w->fd, .events = POLLIN};
        }
        ms = (int)((next_tick - dexec_now()) * 1000.0 + 0.999);
        if (!accepting && ms > 100)
            ms = 100;
        rc = poll(pf, (nfds_t)n, ms < 0 ? 0 : ms);
        if (rc < 0 && errno != EINTR) {
            dexec_log(DEXEC_LOG_ERROR, s->cfg.component, "poll: %s", strerror(errno));
            s->exit_status = 1;
            free(pf);
            free(who);
            break;
        }
        if (rc > 0 && (pf[0].revents & POLLIN)) {
            char buf[64];

            while (read(s->wake[0], buf, sizeof(buf)) > 0)
                ;
        }
        for (size_t i = first_watch; rc > 0 && i < n; i++) {
            watch *w = who[i];

            if ((pf[i].revents & (POLLIN | POLLHUP | POLLERR)) && !w->removed)
                w->fn(w->arg, w->fd);
        }
        for (size_t i = first_conn; rc > 0 && i < first_watch; i++)
            if ((pf[i].revents & (POLLIN | POLLHUP | POLLERR)) && service(s, who[i]) != 0)
                drop(s, who[i]);
        for (size_t i = 1; rc > 0 && i < first_conn; i++)
            if (pf[i].revents & POLLIN)
                accept_all(s, pf[i].fd);
        free(pf);
        free(who);
        now = dexec_now();
        expire_hellos(s, now);
        if (s->cfg.owner_wait > 0 && !s->owned && now >= s->owner_by) {
            dexec_log(DEXEC_LOG_WARN, s->cfg.component,
                      "no owner said hello within %.0f s: exiting", s->cfg.owner_wait);
            s->stopping = 1;
        }
        if (now >= next_tick) {
            next_tick = now + s->cfg.tick_interval;
            if (s->cfg.tick != NULL)
                s->cfg.tick(s->cfg.user);
        }
    }
    return s->exit_status;
}

void dxs_server_free(dxs_server *s)
{
    if (s == NULL)
        return;
    /* a thread still finishing a call writes to a dead socket and drops
     * its reference instead of blocking */
    while (s->conns != NULL) {
        dxs_conn *c = s->conns;

        s->conns = c->next;
        shutdown(c->fd, SHUT_RDWR);
        dxs_conn_unref(c);
    }
    for (int i = 0; i < s->nlisteners; i++)
        close(s->listeners[i]);
    free(s->listeners);
    for (watch *w = s->watches; w != NULL; w = w->next)
        w->removed = 1;
    purge_watches(s);
    close(s->wake[0]);
    close(s->wake[1]);
    free(s->token);
    free(s);
}
