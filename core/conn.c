/*
 * conn.c - one client connection to a worker: requests with message ids,
 * replies matched to their callers, deadlines, and death detection.
 *
 * Several threads may wait on one connection. Whichever waiter finds no
 * one reading becomes the reader (leader/follower): it reads frames and
 * hands each reply to its caller, so a lone caller reads its own reply
 * with no thread hop, and a health check can be answered while a long
 * generate is still waiting on the same socket.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

typedef struct pending {
    uint32_t msgid;
    int done;
    dexec_status st;
    dexec_value *result;
    char msg[512];
    dexec_notify_fn notify;
    void *user;
    struct pending *next;
} pending;

struct dexec_conn {
    int fd;
    char label[160];
    pthread_mutex_t lock;  /* guards everything below but the reader buffer */
    pthread_cond_t cond;   /* a reply arrived, the reader left, or death */
    pthread_mutex_t wlock; /* one writer at a time */
    dexec_reader *rd;      /* touched only by the current reader */
    int reading;
    int dead;
    char dead_reason[384];
    uint32_t next_id;
    pending *pend;
    dexec_death_fn death;
    void *death_user;
};

static dexec_conn *conn_new(int fd, const char *label)
{
    dexec_conn *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->rd = dexec_reader_new(DEXEC_FRAME_MAX_DEFAULT);
    if (c->rd == NULL) {
        free(c);
        return NULL;
    }
    c->fd = fd;
    snprintf(c->label, sizeof(c->label), "%s", label != NULL ? label : "worker");
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->wlock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    c->next_id = 1;
    return c;
}

dexec_status dexec_conn_from_fd(int fd, const char *label, dexec_conn **out)
{
    if (fd < 0 || out == NULL)
        return DEXEC_EINVAL;
    *out = conn_new(fd, label);
    return *out != NULL ? DEXEC_OK : DEXEC_ENOMEM;
}

void dexec_conn_set_label(dexec_conn *c, const char *label)
{
    pthread_mutex_lock(&c->lock);
    snprintf(c->label, sizeof(c->label), "%s", label);
    pthread_mutex_unlock(&c->lock);
}

const char *dexec_conn_label(const dexec_conn *c)
{
    return c->label;
}

void dexec_conn_on_death(dexec_conn *c, dexec_death_fn fn, void *user)
{
    pthread_mutex_lock(&c->lock);
    c->death = fn;
    c->death_user = user;
    pthread_mutex_unlock(&c->lock);
}

int dexec_conn_fd(const dexec_conn *c)
{
    return c->fd;
}

int dexec_conn_dead(const dexec_conn *c)
{
    return __atomic_load_n(&c->dead, __ATOMIC_ACQUIRE);
}

/* ---- connecting --------------------------------------------------------- */

static dexec_status connect_wait(int fd, const struct sockaddr *sa, socklen_t salen,
                                 double deadline, const char *address, char *err, size_t errlen)
{
    if (connect(fd, sa, salen) == 0)
        return DEXEC_OK;
    if (errno != EINPROGRESS && errno != EAGAIN)
        return dx_fail(err, errlen, DEXEC_EIO, "connect to %s: %s", address, strerror(errno));
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        double left = dx_remaining(deadline);
        int rc, soerr = 0;
        socklen_t sl = sizeof(soerr);

        if (left <= 0)
            return dx_fail(err, errlen, DEXEC_ETIMEDOUT, "connect to %s: timed out", address);
        rc = poll(&p, 1, (int)(left * 1000 + 0.999));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            continue;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr != 0)
            return dx_fail(err, errlen, DEXEC_EIO, "connect to %s: %s", address,
                           strerror(soerr));
        return DEXEC_OK;
    }
}

static dexec_status connect_unix(const char *path, const char *address, double deadline,
                                 int *out, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd;
    dexec_status st;

    if (strlen(path) >= sizeof(sa.sun_path))
        return dx_fail(err, errlen, DEXEC_EINVAL, "%s: socket path too long (max %zu bytes)",
                       address, sizeof(sa.sun_path) - 1);
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return dx_fail(err, errlen, DEXEC_EIO, "socket: %s", strerror(errno));
    st = connect_wait(fd, (struct sockaddr *)&sa, sizeof(sa), deadline, address, err, errlen);
    if (st != DEXEC_OK) {
        close(fd);
        return st;
    }
    *out = fd;
    return DEXEC_OK;
}

/* Splits "host:port" or "[v6]:port". */
int dexec_split_hostport(const char *s, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon;
    size_t hl;

    if (s[0] == '[') {
        const char *end = strchr(s, ']');

        if (end == NULL || end[1] != ':')
            return -1;
        hl = (size_t)(end - s - 1);
        if (hl == 0 || hl >= hostlen)
            return -1;
        memcpy(host, s + 1, hl);
        host[hl] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -1;
        hl = (size_t)(colon - s);
        if (hl == 0 || hl >= hostlen)
            return -1;
        memcpy(host, s, hl);
        host[hl] = '\0';
    }
    if (strlen(colon + 1) == 0 || strlen(colon + 1) >= portlen ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1))
        return -1;
    strcpy(port, colon + 1);
    return atoi(port) < 65536 ? 0 : -1;
}

static dexec_status connect_tcp(const char *hp, const char *address, double deadline, int *out,
                                char *err, size_t errlen)
{
    char host[256], port[16];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    dexec_status st = DEXEC_EIO;
    int rc, one = 1;

    if (dexec_split_hostport(hp, host, sizeof(host), port, sizeof(port)) != 0)
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "bad address '%s': expected tcp:HOST:PORT with a port in 1..65535",
                       address);
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        return dx_fail(err, errlen, DEXEC_EIO, "resolve %s: %s", address, gai_strerror(rc));
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);

        if (fd < 0)
            continue;
        st = connect_wait(fd, ai->ai_addr, ai->ai_addrlen, deadline, address, err, errlen);
        if (st == DEXEC_OK) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            *out = fd;
            break;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return st;
}

dexec_status dexec_conn_connect(const char *address, double timeout, dexec_conn **out, char *err,
                                size_t errlen)
{
    double deadline = dexec_now() + (timeout > 0 ? timeout : 5.0);
    int fd = -1;
    dexec_status st;

    if (address == NULL || out == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "no address");
    *out = NULL;
    if (strncmp(address, "unix:", 5) == 0)
        st = connect_unix(address + 5, address, deadline, &fd, err, errlen);
    else if (strncmp(address, "tcp:", 4) == 0)
        st = connect_tcp(address + 4, address, deadline, &fd, err, errlen);
    else
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "bad address '%s': expected unix:/PATH or tcp:HOST:PORT", address);
    if (st != DEXEC_OK)
        return st;
    *out = conn_new(fd, address);
    if (*out == NULL) {
        close(fd);
        return DEXEC_ENOMEM;
    }
    return DEXEC_OK;
}

/* ---- death ---------------------------------------------------------------- */

/* Called with c->lock held. Marks the connection dead once; the owner's
 * callback (which may wait a little for the child's exit status) runs
 * without the lock. */
static void mark_dead(dexec_conn *c, const char *why)
{
    dexec_death_fn fn;
    void *user;
    char reason[256] = "";

    if (c->dead)
        return;
    fn = c->death;
    user = c->death_user;
    pthread_mutex_unlock(&c->lock);
    if (fn != NULL)
        fn(user, c, reason, sizeof(reason));
    pthread_mutex_lock(&c->lock);
    if (c->dead)
        return;
    snprintf(c->dead_reason, sizeof(c->dead_reason), "%s: %s", c->label,
             reason[0] ? reason : why);
    __atomic_store_n(&c->dead, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&c->cond);
}

int dexec_conn_poll_dead(dexec_conn *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    char b;

    if (dexec_conn_dead(c))
        return 1;
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLIN))) {
        ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            pthread_mutex_lock(&c->lock);
            mark_dead(c, "connection closed");
            pthread_mutex_unlock(&c->lock);
            return 1;
        }
    }
    return 0;
}

void dexec_conn_shutdown(dexec_conn *c)
{
    if (c == NULL)
        return;
    shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_lock(&c->lock);
    mark_dead(c, "connection shut down");
    pthread_mutex_unlock(&c->lock);
}

void dexec_conn_free(dexec_conn *c)
{
    if (c == NULL)
        return;
    close(c->fd);
    while (c->pend != NULL) {
        pending *p = c->pend;

        c->pend = p->next;
        dexec_value_free(p->result);
        free(p);
    }
    dexec_reader_free(c->rd);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->wlock);
    pthread_cond_destroy(&c->cond);
    free(c);
}

/* ---- sending -------------------------------------------------------------- */

static dexec_status send_msg(dexec_conn *c, const dexec_value *msg, char *err, size_t errlen)
{
    dexec_status st;
    /* A peer that stops reading must not block us forever. */
    double deadline = dexec_now() + 30.0;

    pthread_mutex_lock(&c->wlock);
    st = dexec_frame_write(c->fd, msg, deadline, err, errlen);
    pthread_mutex_unlock(&c->wlock);
    if (st == DEXEC_ECLOSED) {
        pthread_mutex_lock(&c->lock);
        mark_dead(c, "connection closed");
        snprintf(err, errlen, "%s", c->dead_reason);
        pthread_mutex_unlock(&c->lock);
    }
    return st;
}

static dexec_value *make_request(uint32_t msgid, const char *method, const dexec_value *params)
{
    dexec_value *m = dexec_value_array(), *p;

    p = params != NULL ? dexec_value_clone(params) : dexec_value_array();
    if (m == NULL || p == NULL || dexec_value_array_push(m, dexec_value_int(0)) != 0 ||
        dexec_value_array_push(m, dexec_value_int(msgid)) != 0 ||
        dexec_value_array_push(m, dexec_value_str(method)) != 0 ||
        dexec_value_array_push(m, p) != 0) {
        dexec_value_free(m);
        return NULL;
    }
    return m;
}

dexec_status dexec_conn_send(dexec_conn *c, const char *method, const dexec_value *params,
                             dexec_notify_fn notify, void *user, uint32_t *msgid, char *err,
                             size_t errlen)
{
    pending *p;
    dexec_value *msg;
    dexec_status st;

    if (c == NULL || method == NULL || msgid == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "bad call");
    if (params != NULL && params->type != DEXEC_VAL_ARRAY)
        return dx_fail(err, errlen, DEXEC_EINVAL, "params of %s must be an array", method);
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return DEXEC_ENOMEM;
    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        st = dx_fail(err, errlen, DEXEC_ECLOSED, "%s", c->dead_reason);
        pthread_mutex_unlock(&c->lock);
        free(p);
        return st;
    }
    p->msgid = c->next_id++;
    if (c->next_id == 0)
        c->next_id = 1;
    p->notify = notify;
    p->user = user;
    p->next = c->pend;
    c->pend = p;
    *msgid = p->msgid;
    pthread_mutex_unlock(&c->lock);

    msg = make_request(*msgid, method, params);
    st = msg != NULL ? send_msg(c, msg, err, errlen) : DEXEC_ENOMEM;
    dexec_value_free(msg);
    if (st != DEXEC_OK) {
        pthread_mutex_lock(&c->lock);
        for (pending **pp = &c->pend; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == p) {
                *pp = p->next;
                break;
            }
        }
        pthread_mutex_unlock(&c->lock);
        free(p);
    }
    return st;
}

dexec_status dexec_conn_notify(dexec_conn *c, const char *method, const dexec_value *params,
                               char *err, size_t errlen)
{
    dexec_value *m = dexec_value_array();
    dexec_status st;

    dexec_value_array_push(m, dexec_value_int(2));
    dexec_value_array_push(m, dexec_value_str(method));
    dexec_value_array_push(m, params != NULL ? dexec_value_clone(params) : dexec_value_array());
    st = m != NULL && m->u.arr.len == 3 ? send_msg(c, m, err, errlen) : DEXEC_ENOMEM;
    dexec_value_free(m);
    return st;
}

/* ---- receiving ------------------------------------------------------------ */

static pending *find_pending(dexec_conn *c, uint32_t msgid)
{
    for (pending *p = c->pend; p != NULL; p = p->next)
        if (p->msgid == msgid)
            return p;
    return NULL;
}

/* Formats a protocol error object [code, message, rank] (or a bare string). */
static dexec_status error_from_value(const dexec_value *e, char *buf, size_t len)
{
    const dexec_value *code = dexec_value_array_get(e, 0), *msg = dexec_value_array_get(e, 1);
    int64_t c = dexec_value_as_int(code, DEXEC_EWORKER);

    if (e->type == DEXEC_VAL_STR) {
        snprintf(buf, len, "%s", e->u.str.ptr);
        return DEXEC_EWORKER;
    }
    snprintf(buf, len, "%s", dexec_value_as_str(msg, "worker error (no message)"));
    if (c <= 0 || c > DEXEC_EAUTH)
        c = DEXEC_EWORKER;
    return (dexec_status)c;
}

/* Handles one incoming message. Called by the reader with c->lock held;
 * may drop it around a notification callback. */
static void dispatch(dexec_conn *c, dexec_value *m)
{
    const dexec_value *type = dexec_value_array_get(m, 0);
    int64_t t = dexec_value_as_int(type, -1);

    if (t == 1 && m->u.arr.len == 4) {
        int64_t id = dexec_value_as_int(m->u.arr.items[1], -1);
        pending *p = id >= 0 && id <= UINT32_MAX ? find_pending(c, (uint32_t)id) : NULL;

        if (p == NULL) {
            /* a reply nobody waits for any more (the caller timed out) */
            dexec_value_free(m);
            return;
        }
        if (m->u.arr.items[2]->type != DEXEC_VAL_NIL) {
            p->st = error_from_value(m->u.arr.items[2], p->msg, sizeof(p->msg));
        } else {
            p->st = DEXEC_OK;
            p->result = m->u.arr.items[3];
            m->u.arr.items[3] = NULL;
            m->u.arr.len = 3;
        }
        p->done = 1;
        pthread_cond_broadcast(&c->cond);
        dexec_value_free(m);
        return;
    }
    if (t == 2 && m->u.arr.len == 3 && m->u.arr.items[1]->type == DEXEC_VAL_STR) {
        /* progress notifications name the call they belong to in params[0] */
        int64_t id = dexec_value_as_int(dexec_value_array_get(m->u.arr.items[2], 0), -1);
        pending *p = id >= 0 && id <= UINT32_MAX ? find_pending(c, (uint32_t)id) : NULL;

        if (p != NULL && p->notify != NULL) {
            dexec_notify_fn fn = p->notify;
            void *user = p->user;

            pthread_mutex_unlock(&c->lock);
            fn(user, m->u.arr.items[1]->u.str.ptr, m->u.arr.items[2]);
            pthread_mutex_lock(&c->lock);
        }
        dexec_value_free(m);
        return;
    }
    dexec_log(DEXEC_LOG_WARN, "rpc", "%s: ignoring a message that is neither a reply nor a "
                                     "notification", c->label);
    dexec_value_free(m);
}

/* One round as the reader: wait for data until the deadline, then hand out
 * every complete frame. Called and returns with c->lock held. */
static void read_round(dexec_conn *c, double deadline)
{
    char err[256];
    dexec_status st = DEXEC_OK;
    int rc;

    c->reading = 1;
    pthread_mutex_unlock(&c->lock);
    rc = dexec_wait_readable(c->fd, deadline);
    if (rc > 0)
        st = dexec_reader_fill(c->rd, c->fd, err, sizeof(err));
    pthread_mutex_lock(&c->lock);
    if (rc < 0) {
        mark_dead(c, "poll failed");
    } else if (st != DEXEC_OK) {
        mark_dead(c, st == DEXEC_ECLOSED ? "connection closed" : err);
    }
    for (;;) {
        dexec_value *m;

        st = dexec_reader_take(c->rd, &m, err, sizeof(err));
        if (st != DEXEC_OK) {
            dexec_log(DEXEC_LOG_ERROR, "rpc", "%s: %s; dropping the connection", c->label, err);
            shutdown(c->fd, SHUT_RDWR);
            mark_dead(c, err);
            break;
        }
        if (m == NULL)
            break;
        if (m->type != DEXEC_VAL_ARRAY) {
            dexec_value_free(m);
            continue;
        }
        dispatch(c, m);
    }
    c->reading = 0;
    pthread_cond_broadcast(&c->cond);
}

static void unlink_pending(dexec_conn *c, pending *p)
{
    for (pending **pp = &c->pend; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            return;
        }
    }
}

dexec_status dexec_conn_wait(dexec_conn *c, uint32_t msgid, double deadline, dexec_value **result,
                             char *err, size_t errlen)
{
    pending *p;
    dexec_status st;

    if (result != NULL)
        *result = NULL;
    pthread_mutex_lock(&c->lock);
    p = find_pending(c, msgid);
    if (p == NULL) {
        pthread_mutex_unlock(&c->lock);
        return dx_fail(err, errlen, DEXEC_EINVAL, "no call %u in flight", msgid);
    }
    for (;;) {
        if (p->done) {
            st = p->st;
            if (st == DEXEC_OK) {
                if (result != NULL)
                    *result = p->result;
                else
                    dexec_value_free(p->result);
                p->result = NULL;
            } else {
                dexec_errorf(err, errlen, "%s", p->msg);
            }
            break;
        }
        if (c->dead) {
            st = dx_fail(err, errlen, DEXEC_ECLOSED, "%s", c->dead_reason);
            break;
        }
        if (dx_remaining(deadline) <= 0) {
            st = dx_fail(err, errlen, DEXEC_ETIMEDOUT, "%s: no reply before the deadline",
                         c->label);
            break;
        }
        if (c->reading) {
            struct timespec ts;
            double d = deadline;

            ts.tv_sec = (time_t)d;
            ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
            pthread_cond_timedwait(&c->cond, &c->lock, &ts);
            continue;
        }
        read_round(c, deadline);
    }
    unlink_pending(c, p);
    pthread_mutex_unlock(&c->lock);
    free(p);
    return st;
}

dexec_status dexec_conn_call(dexec_conn *c, const char *method, const dexec_value *params,
                             double deadline, dexec_value **result, dexec_notify_fn notify,
                             void *user, char *err, size_t errlen)
{
    uint32_t id;
    dexec_status st = dexec_conn_send(c, method, params, notify, user, &id, err, errlen);

    if (st != DEXEC_OK) {
        if (result != NULL)
            *result = NULL;
        return st;
    }
    return dexec_conn_wait(c, id, deadline, result, err, errlen);
}

dexec_status dexec_conn_hello(dexec_conn *c, const char *token, double timeout, dexec_value **info,
                              char *err, size_t errlen)
{
    dexec_value *params = dexec_value_array(), *arg = dexec_value_map(), *res = NULL;
    dexec_status st;
    char msg[512];

    if (info != NULL)
        *info = NULL;
    dexec_value_map_set(arg, "protocol", dexec_value_int(DEXEC_PROTOCOL_VERSION));
    if (token != NULL)
        dexec_value_map_set(arg, "token", dexec_value_str(token));
    dexec_value_array_push(params, arg);
    st = dexec_conn_call(c, "hello", params, dexec_now() + timeout, &res, NULL, NULL, msg,
                         sizeof(msg));
    dexec_value_free(params);
    if (st == DEXEC_EAUTH)
        return dx_fail(err, errlen, DEXEC_EAUTH, "%s refused the handshake: %s", c->label, msg);
    if (st == DEXEC_EPROTO)
        return dx_fail(err, errlen, DEXEC_EPROTO, "%s: %s", c->label, msg);
    if (st != DEXEC_OK)
        return dx_fail(err, errlen, st, "hello to %s: %s", c->label, msg);
    if (dexec_value_as_int(dexec_value_map_get(res, "protocol"), -1) != DEXEC_PROTOCOL_VERSION) {
        st = dx_fail(err, errlen, DEXEC_EPROTO,
                     "%s speaks worker protocol %lld, this dexec speaks %d", c->label,
                     (long long)dexec_value_as_int(dexec_value_map_get(res, "protocol"), -1),
                     DEXEC_PROTOCOL_VERSION);
        dexec_value_free(res);
        return st;
    }
    if (info != NULL)
        *info = res;
    else
        dexec_value_free(res);
    return DEXEC_OK;
}
