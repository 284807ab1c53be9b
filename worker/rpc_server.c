/*
 * rpc_server.c - the worker protocol's server core (see rpc_server.h and
 * doc/protocol.md), used by the worker and the node agent.
 *
 * One thread runs a poll loop over a wake pipe, the listeners, the
 * connections and the fds the user watches. Replies may come from other
 * threads: each connection has a write lock and a reference count, and
 * its fd is closed only when the last reference goes.
 *
 * No write blocks. A reply or notification is encoded and appended whole
 * to its connection's outgoing queue, and as much as the socket takes is
 * sent at once; the loop sends the rest when the socket is writable. A
 * queue that would grow past its bound, or that makes no progress within
 * write_timeout, closes the connection: a frame is never dropped from a
 * stream that stays open. Before hello a connection may send frames of a
 * few KiB only, must say hello within hello_timeout, and only so many such
 * connections are kept per server (the oldest goes first).
 *
 * Why our own poll loop rather than libevent: the loop already exists and
 * is small; what it lacked was non-blocking writes and deadlines, which
 * are a queue and a few timestamps per connection. A server holds at most
 * a few hundred connections, for which poll(2) rebuilt per round is cheap
 * (bench/ measures the round trip).
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
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rpc_server.h"

/* How long accept stays off after running out of descriptors: long enough
 * not to spin on a listener that stays readable, short enough to recover
 * soon after connections close. */
#define ACCEPT_BACKOFF 1.0

/* Defaults before hello: frames up to this size (a hello with its token
 * is well under it), and at most this many connections waiting to say
 * hello (dxs_config.hello_max_frame, hello_max_conns). */
#define PREHELLO_MAX_FRAME 8192
#define PREHELLO_MAX_CONNS 128

/* dexec_now() from the coarse clock (a few ms behind, and cheaper): for
 * the deadlines of seconds a reply or a read renews. */
static double coarse_now(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
        return dexec_now();
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

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
    double accepted; /* when: the oldest unauthenticated connection goes first */
    double frame_by; /* a started frame must be complete by then; 0: none started */
    double idle_by;  /* dropped unless something arrives by then; 0: no deadline */
    /* the outgoing queue, under wlock */
    char *out;
    size_t out_off, out_len, out_cap, out_max;
    double write_by; /* queued bytes must move by then */
    int broken;      /* closed for writing: replies are discarded */
    /* what the loop looks at every round without taking wlock: written
     * under it (atomic stores), read with atomic loads (has_out: bytes
     * queued and not broken) */
    int has_out;
    int wake_fd;     /* the loop's wake pipe */
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
    int unauthed; /* connections (not control) that have not said hello */
    int evict_logged;
    int queued; /* some connection has bytes queued */
    double accept_resume; /* listeners are not polled before this time */
    int accept_failing;   /* the failure was logged; log again only after a success */
    int owned;            /* cfg.owner_wait: an owner said hello */
    double owner_by;      /* cfg.owner_wait: end the loop unless owned by then */
    struct pollfd *pf;    /* the loop's poll set, kept between rounds */
    void **who;           /* what each entry of pf is */
    size_t pcap;          /* entries pf and who hold */
};

/* ---- connections and replies ------------------------------------------------------ */

static dxs_conn *conn_new(dxs_server *s, int fd, int control)
{
    dxs_conn *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->rd = dexec_reader_new(control ? s->cfg.max_frame : s->cfg.hello_max_frame);
    if (c->rd == NULL) {
        free(c);
        return NULL;
    }
    c->fd = fd;
    c->refs = 1;
    c->control = control;
    c->write_timeout = s->cfg.write_timeout;
    snprintf(c->component, sizeof(c->component), "%s", s->cfg.component);
    c->accepted = dexec_now();
    if (!control && s->cfg.hello_timeout > 0)
        c->hello_by = c->accepted + s->cfg.hello_timeout;
    c->out_max = (s->cfg.max_frame ? s->cfg.max_frame : DEXEC_FRAME_MAX_DEFAULT) + 4 + 65536;
    c->wake_fd = s->wake[1];
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
    free(c->out);
    free(c);
}

/* Stops writing to c (wlock held): the loop sees the shutdown and drops it. */
static void break_conn(dxs_conn *c)
{
    __atomic_store_n(&c->broken, 1, __ATOMIC_RELEASE);
    c->out_off = c->out_len = 0;
    __atomic_store_n(&c->has_out, 0, __ATOMIC_RELEASE);
    shutdown(c->fd, SHUT_RDWR);
}

/* Sends what the socket takes without blocking (wlock held). Nonzero when
 * bytes stay queued. */
static int flush_locked(dxs_conn *c)
{
    while (!c->broken && c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n > 0) {
            c->out_off += (size_t)n;
            c->write_by = coarse_now() + c->write_timeout;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        break_conn(c); /* EPIPE, ECONNRESET: the peer is gone */
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    __atomic_store_n(&c->has_out, !c->broken && c->out_len > c->out_off, __ATOMIC_RELEASE);
    return c->out_len > c->out_off;
}

/* Whether c has bytes queued: no lock (a writer that leaves bytes queued
 * sets has_out before it wakes the loop, which then looks again). */
static int out_pending(dxs_conn *c)
{
    return __atomic_load_n(&c->has_out, __ATOMIC_ACQUIRE);
}

/* Queues one frame, head (hlen bytes, already MessagePack) followed by
 * body (blen bytes), sends what the socket takes; frees body. */
static void queue_frame(dxs_conn *c, const unsigned char *head, size_t hlen, char *body,
                        size_t blen)
{
    char b = 1;
    size_t len = hlen + blen, queued;
    int wake = 0;

    if (body == NULL || len > UINT32_MAX) {
        dexec_log(DEXEC_LOG_ERROR, c->component,
                  "a reply could not be encoded (out of memory, or over 4 GiB): closing the "
                  "connection");
        pthread_mutex_lock(&c->wlock);
        break_conn(c);
        pthread_mutex_unlock(&c->wlock);
        free(body);
        return;
    }
    pthread_mutex_lock(&c->wlock);
    queued = c->out_len - c->out_off;
    if (c->broken) {
        /* discarded: the connection is closing */
    } else if (queued + 4 + len > c->out_max) {
        dexec_log(DEXEC_LOG_WARN, c->component,
                  "closing a connection whose client does not read: %zu bytes queued, and "
                  "%zu more would pass the limit of %zu",
                  queued, len + 4, c->out_max);
        break_conn(c);
    } else {
        if (c->out_off > 0 && c->out_cap - c->out_len < len + 4) {
            memmove(c->out, c->out + c->out_off, queued);
            c->out_len = queued;
            c->out_off = 0;
        }
        if (c->out_cap - c->out_len < len + 4) {
            size_t cap = c->out_len + len + 4;
            char *o;

            cap = cap < 2 * c->out_cap ? 2 * c->out_cap : cap;
            if (cap > c->out_max)
                cap = c->out_max;
            o = realloc(c->out, cap);
            if (o == NULL) {
                dexec_log(DEXEC_LOG_ERROR, c->component,
                          "out of memory queueing %zu bytes: closing the connection", len + 4);
                break_conn(c);
                goto out;
            }
            c->out = o;
            c->out_cap = cap;
        }
        c->out[c->out_len] = (char)(len >> 24);
        c->out[c->out_len + 1] = (char)(len >> 16);
        c->out[c->out_len + 2] = (char)(len >> 8);
        c->out[c->out_len + 3] = (char)len;
        if (hlen > 0)
            memcpy(c->out + c->out_len + 4, head, hlen);
        memcpy(c->out + c->out_len + 4 + hlen, body, blen);
        c->out_len += len + 4;
        if (queued == 0)
            c->write_by = coarse_now() + c->write_timeout;
        /* bytes left over: the loop must watch for POLLOUT */
        wake = flush_locked(c) && queued == 0;
    }
out:
    pthread_mutex_unlock(&c->wlock);
    free(body);
    if (wake) {
        ssize_t rc = write(c->wake_fd, &b, 1);

        (void)rc;
    }
}

/* Queues msg as one frame, sends what the socket takes, frees msg. */
static void send_msg(dxs_conn *c, dexec_value *msg)
{
    char *body = NULL;
    size_t len = 0;

    if (dexec_value_to_msgpack(msg, &body, &len) != DEXEC_OK) {
        free(body);
        body = NULL;
    }
    dexec_value_free(msg);
    queue_frame(c, NULL, 0, body, len);
}

void dxs_reply_ok(dxs_conn *c, uint32_t msgid, dexec_value *result)
{
    /* [1, msgid, nil, result]: the envelope is written here, only the
     * result is encoded from a value */
    static const char nil = (char)0xc0;
    unsigned char head[8];
    size_t hlen = 0;
    char *body = NULL;
    size_t blen = 0;

    head[hlen++] = 0x94; /* array of 4 */
    head[hlen++] = 0x01; /* a reply */
    if (msgid < 128) {
        head[hlen++] = (unsigned char)msgid; /* positive fixint */
    } else {
        head[hlen++] = 0xce; /* uint 32 */
        head[hlen++] = (unsigned char)(msgid >> 24);
        head[hlen++] = (unsigned char)(msgid >> 16);
        head[hlen++] = (unsigned char)(msgid >> 8);
        head[hlen++] = (unsigned char)msgid;
    }
    head[hlen++] = 0xc0; /* no error */
    if (result == NULL) {
        body = malloc(1);
        if (body != NULL)
            body[0] = nil;
        blen = 1;
    } else if (dexec_value_to_msgpack(result, &body, &blen) != DEXEC_OK) {
        free(body);
        body = NULL;
    }
    dexec_value_free(result);
    queue_frame(c, head, hlen, body, blen);
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
    if (!c->authed && !c->control)
        s->unauthed--;
    c->authed = 1;
    c->hello_by = 0;
    dexec_reader_set_max_frame(c->rd, s->cfg.max_frame);
    if (s->cfg.idle_timeout > 0)
        c->idle_by = dexec_now() + s->cfg.idle_timeout;
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
    size_t before = dexec_reader_buffered(c->rd);
    dexec_status st = dexec_reader_fill(c->rd, c->fd, err, sizeof(err));
    double now = coarse_now(); /* idle and frame deadlines: seconds */

    if (dexec_reader_buffered(c->rd) > before && c->idle_by > 0)
        c->idle_by = now + s->cfg.idle_timeout;
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
    /* a frame begun must be complete within frame_timeout */
    if (dexec_reader_buffered(c->rd) == 0)
        c->frame_by = 0;
    else if (c->frame_by == 0 && s->cfg.frame_timeout > 0 && !c->control)
        c->frame_by = now + s->cfg.frame_timeout;
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
    if (!c->authed && !c->control)
        s->unauthed--;
    if (s->cfg.closed != NULL)
        s->cfg.closed(s->cfg.user, c);
    pthread_mutex_lock(&c->wlock);
    break_conn(c);
    pthread_mutex_unlock(&c->wlock);
    dxs_conn_unref(c);
}

/* ---- accept ---------------------------------------------------------------------------- */

/* TCP keepalive with a user timeout (doc/protocol.md): a client behind a
 * cut link is dropped within about 15 s instead of never. And no Nagle:
 * every frame leaves whole in one send, and a reply queued behind a
 * progress notification must not wait for the client's delayed ACK. */
static void tcp_keepalive(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int one = 1, idle = 5, intvl = 2, cnt = 3;
    unsigned int user_ms = 15000;

    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_ms, sizeof(user_ms));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void accept_all(dxs_server *s, int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

        if (fd >= 0) {
            if (s->accept_failing)
                dexec_log(DEXEC_LOG_INFO, s->cfg.component, "accepting connections again");
            s->accept_failing = 0;
            tcp_keepalive(fd);
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
    if (s->cfg.frame_timeout < 0)
        s->cfg.frame_timeout = 0;
    if (s->cfg.idle_timeout < 0)
        s->cfg.idle_timeout = 0;
    if (s->cfg.hello_max_frame == 0)
        s->cfg.hello_max_frame = PREHELLO_MAX_FRAME;
    if (s->cfg.hello_max_conns <= 0)
        s->cfg.hello_max_conns = PREHELLO_MAX_CONNS;
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
    if (!control && ++s->unauthed > s->cfg.hello_max_conns) {
        /* the oldest connection still without hello makes room */
        dxs_conn *old = NULL;

        for (dxs_conn *k = s->conns; k != NULL; k = k->next)
            if (!k->authed && !k->control && k != c && (old == NULL || k->accepted < old->accepted))
                old = k;
        if (old != NULL) {
            if (!s->evict_logged)
                dexec_log(DEXEC_LOG_WARN, s->cfg.component,
                          "more than %d connections without hello: closing the oldest (logged "
                          "once)",
                          s->cfg.hello_max_conns);
            s->evict_logged = 1;
            drop(s, old);
        }
    }
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

/* Drops connections past a deadline: hello, a frame begun, idle, or
 * queued bytes that did not move. Returns nonzero while some connection
 * has bytes queued (the loop then wakes often enough to check). */
static int expire(dxs_server *s, double now)
{
    dxs_conn *c = s->conns, *next;
    int queued = 0;

    for (; c != NULL; c = next) {
        int stuck = 0, broken, pending;

        next = c->next;
        broken = __atomic_load_n(&c->broken, __ATOMIC_ACQUIRE);
        pending = 0;
        if (!broken && out_pending(c)) {
            /* bytes queued (rare): look at their deadline under the lock */
            pthread_mutex_lock(&c->wlock);
            broken = c->broken;
            pending = c->out_len > c->out_off;
            if (pending && now >= c->write_by) {
                stuck = 1;
                dexec_log(DEXEC_LOG_WARN, s->cfg.component,
                          "dropping a connection that took none of its %zu queued bytes "
                          "within %.0f s",
                          c->out_len - c->out_off, c->write_timeout);
                break_conn(c);
            }
            pthread_mutex_unlock(&c->wlock);
        }
        if (broken || stuck) {
            drop(s, c);
            continue;
        }
        queued |= pending;
        if (!c->authed && c->hello_by > 0 && now >= c->hello_by) {
            dexec_log(DEXEC_LOG_INFO, s->cfg.component,
                      "dropping a connection that sent no hello within %.0f s",
                      s->cfg.hello_timeout);
            drop(s, c);
        } else if (c->frame_by > 0 && now >= c->frame_by) {
            dexec_log(DEXEC_LOG_WARN, s->cfg.component,
                      "dropping a connection whose frame did not arrive whole within %.0f s",
                      s->cfg.frame_timeout);
            drop(s, c);
        } else if (c->idle_by > 0 && now >= c->idle_by) {
            dexec_log(DEXEC_LOG_INFO, s->cfg.component,
                      "dropping a connection idle for %.0f s", s->cfg.idle_timeout);
            drop(s, c);
        }
    }
    return queued;
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
    double t = dexec_now(), next_tick = t + s->cfg.tick_interval;

    while (!s->stopping) {
        size_t cap = 1 + (size_t)s->nlisteners, n = 0, first_conn, first_watch;
        /* t: the time at the end of the last round (one clock read per
         * round: what happened since is the loop's own bookkeeping) */
        int accepting = t >= s->accept_resume, rc, ms;
        struct pollfd *pf;
        void **who;
        double now, due;

        purge_watches(s);
        for (dxs_conn *c = s->conns; c != NULL; c = c->next)
            cap++;
        for (watch *w = s->watches; w != NULL; w = w->next)
            cap++;
        if (cap > s->pcap) {
            /* grown, never shrunk: most rounds allocate nothing */
            struct pollfd *npf = realloc(s->pf, cap * sizeof(*npf));
            void **nwho = npf != NULL ? realloc(s->who, cap * sizeof(*nwho)) : NULL;

            if (npf != NULL)
                s->pf = npf;
            if (nwho == NULL) {
                dexec_log(DEXEC_LOG_ERROR, s->cfg.component, "out of memory in the I/O loop");
                s->exit_status = 1;
                break;
            }
            s->who = nwho;
            s->pcap = cap;
        }
        pf = s->pf;
        who = s->who;
        pf[n++] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        for (int i = 0; i < s->nlisteners; i++)
            pf[n++] = (struct pollfd){.fd = accepting ? s->listeners[i] : -1, .events = POLLIN};
        /* poll until the first deadline (expire's, the owner's, the
         * listeners' back-off, a tick), or for ever when nothing is due:
         * a worker between calls arms no timer, as a blocking read would
         * not (every call's wake-up would otherwise start and cancel one) */
        due = s->cfg.tick != NULL ? next_tick : 1.0 / 0.0;
        if (s->cfg.owner_wait > 0 && !s->owned && s->owner_by < due)
            due = s->owner_by;
        if (!accepting && s->accept_resume < due)
            due = s->accept_resume;
        if (s->queued && t + 0.1 < due)
            due = t + 0.1; /* queued bytes: their write deadline, under wlock */
        first_conn = n;
        for (dxs_conn *c = s->conns; c != NULL; c = c->next) {
            who[n] = c;
            pf[n++] = (struct pollfd){.fd = c->fd,
                                      .events = (short)(POLLIN | (out_pending(c) ? POLLOUT : 0))};
            if (!c->authed && c->hello_by > 0 && c->hello_by < due)
                due = c->hello_by;
            if (c->frame_by > 0 && c->frame_by < due)
                due = c->frame_by;
            if (c->idle_by > 0 && c->idle_by < due)
                due = c->idle_by;
        }
        first_watch = n;
        for (watch *w = s->watches; w != NULL; w = w->next) {
            who[n] = w;
            pf[n++] = (struct pollfd){.fd = w->fd, .events = POLLIN};
        }
        if (due - t > 3600.0)
            ms = due < 1.0 / 0.0 ? 3600000 : -1;
        else
            ms = due <= t ? 0 : (int)((due - t) * 1000.0 + 0.999);
        rc = poll(pf, (nfds_t)n, ms);
        if (rc < 0 && errno != EINTR) {
            dexec_log(DEXEC_LOG_ERROR, s->cfg.component, "poll: %s", strerror(errno));
            s->exit_status = 1;
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
        for (size_t i = first_conn; rc > 0 && i < first_watch; i++) {
            dxs_conn *c = who[i];

            if (pf[i].revents & POLLOUT) {
                pthread_mutex_lock(&c->wlock);
                flush_locked(c);
                pthread_mutex_unlock(&c->wlock);
            }
            if ((pf[i].revents & (POLLIN | POLLHUP | POLLERR)) && service(s, c) != 0)
                drop(s, c);
        }
        for (size_t i = 1; rc > 0 && i < first_conn; i++)
            if (pf[i].revents & POLLIN)
                accept_all(s, pf[i].fd);
        t = now = dexec_now();
        s->queued = expire(s, now);
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
        pthread_mutex_lock(&c->wlock);
        break_conn(c);
        pthread_mutex_unlock(&c->wlock);
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
    free(s->pf);
    free(s->who);
    free(s->token);
    free(s);
}
