/*
 * conn.c - one client connection to a worker: requests with message ids,
 * replies matched to their callers, deadlines, and death detection.
 *
 * Every connection has its own reader thread that reads the socket
 * whenever it has data and no waiting caller reads it (below): replies
 * are handed to their pending calls and notifications queued on them,
 * and every arrival wakes the waiters. So no peer's socket buffer fills
 * while the engine waits on another peer, a waiter can wait on several
 * connections at once (dx_conn_wait_all: a group's ranks), and EOF or a
 * broken stream marks the connection dead soon after it happens, not
 * when someone next calls.
 *
 * Notifications are delivered by the waiting thread (the caller's), never
 * by the reader, and the owner's death callback runs on the first thread
 * that needs the reason: both keep to the threads that owned them before.
 *
 * The fast path: reading is a token (c->reading). A caller that waits on
 * connections nobody else reads takes their tokens and reads them itself,
 * in one poll over all of them, so its reply reaches it with no thread hop
 * (the round trip of bench/bench-rpc). The reader thread gives its token
 * up when asked (an eventfd wakes it) and stays parked for a short lease
 * after the caller is done, so back-to-back calls do not wake it; once no
 * caller has read for a lease, or another thread waits on the connection
 * without the token, it reads again. Whoever holds the token is the only
 * one touching c->rd.
 *
 * Spinning (dexec_conn_set_spin, off by default): a caller that reads its
 * own replies may look at the first unfinished connection without
 * sleeping for the first microseconds of a wait, so that a short call's
 * reply finds it awake: no wake-up of a sleeping thread, which on a VM is
 * an interrupt to another CPU (tens of microseconds, doc/performance.md).
 * dexec_conn_set_spin_auto spins only while the waiting thread runs on a
 * CPU its workers are not pinned to (the mp executor's default).
 *
 * Deadlines while waiting: a connection may carry a silence timeout
 * (dexec_conn_set_timeouts, the engine's timeouts.health). A call whose
 * connection says nothing for half of it gets a get_rank probe; silent
 * (the probe unanswered) for all of it, the connection is closed as dead,
 * so a rank that hangs or sits behind a cut link is reported within the
 * health deadline of its last word, even in a long step.
 *
 * Why a thread per connection and not an event library: the engine has a
 * handful of connections (one per rank), the reader blocks in poll on one
 * descriptor and needs no timers, and it leaves libdexec with no loop a
 * caller must drive or share. The worker's server, with many clients,
 * runs one poll loop (worker/rpc_server.c).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* One queued notification. */
typedef struct note {
    dexec_value *msg; /* [2, method, params] */
    struct note *next;
} note;

/* Notifications one call may hold undelivered; beyond it the oldest are
 * dropped (they are progress reports: the reply still comes). */
#define NOTES_MAX 65536

typedef struct pending {
    uint32_t msgid;
    int done;
    note *notes, **notes_tail;
    size_t nnotes;
    dexec_status st;
    dexec_value *result;
    char msg[512];
    dexec_notify_fn notify;
    void *user;
    struct pending *next;
} pending;

/* Where a waiting caller may spin (c->spin_where). */
enum { SPIN_ANYWHERE, SPIN_OFF_CPUS, SPIN_NOWHERE };

/* Who reads the socket (c->reading). */
enum { RD_NONE, RD_THREAD, RD_CALLER };

/* How long the reader thread stays parked after a caller read for itself. */
#define READ_LEASE 0.05

/* How long a wait reads its connections in order, the first unfinished
 * one alone, before it reads all of them as data comes: a short call's
 * replies then wake the caller about once, as a plain fan-out would,
 * rather than once per rank (on a busy host every wake-up is a context
 * switch that delays the ranks still working). Longer calls (a step) are
 * read all at once after it, so no rank's notifications wait. */
#define ORDERED_READ_S 0.002

/* How long a blocking recv waits when the wait is on this connection
 * alone and nothing else is due for longer: a timer that near (2 ms)
 * costs each wake-up of an idle CPU 7-12 us on a VM (doc/performance.md),
 * one a second away nothing measurable. */
#define LONE_READ_S 1.0

/* Default deadline of one frame's write (dexec_conn_set_timeouts). */
#define WRITE_TIMEOUT_DEFAULT 30.0

struct dexec_conn {
    int fd;
    int evfd; /* wakes the reader thread out of poll to give up its token */
    char label[160];
    pthread_mutex_t lock;  /* guards everything below but the reader buffer */
    pthread_mutex_t wlock; /* one writer at a time */
    pthread_mutex_t dlock; /* one death callback at a time */
    dexec_reader *rd;      /* touched only by the reader thread */
    pthread_t reader;
    int reader_started;
    int block_read; /* recv without MSG_DONTWAIT waits ORDERED_READ_S at most */
    int long_read;  /* ... or LONE_READ_S (SO_RCVTIMEO as set now; token holder's) */
    int closing; /* dexec_conn_free: the reader stops quietly */
    int dead;
    int dead_resolved; /* dead_reason holds the owner's reason */
    int dead_local;    /* we closed it (a health deadline): our reason stands */
    char dead_why[256];
    char dead_reason[384];
    int notes_dropped_logged;
    /* the read token, under lock; see the top of the file */
    int reading;          /* RD_* */
    int want;             /* callers waiting for the token */
    int cond_waiters;     /* threads waiting on a reply without the token */
    double lease_until;   /* the reader thread stays parked until then */
    pthread_cond_t tok_cond;
    /* the next three are written under lock with __atomic_store and read
     * with __atomic_load without it, on every call's path */
    double last_rx;       /* when bytes last arrived (dexec_now) */
    double write_timeout; /* seconds one frame may take to leave */
    double silence;       /* seconds of silence before a probe; 0: none */
    double spin;          /* seconds a waiting caller reads without sleeping */
    /* dexec_conn_set_spin_auto: spin only while the waiting thread runs on
     * a CPU outside spin_cpus (the worker's); spin_where: SPIN_ANYWHERE,
     * SPIN_OFF_CPUS (outside spin_cpus) or SPIN_NOWHERE (the worker is not
     * pinned). Set before the connection is used. */
    int spin_where;
    cpu_set_t spin_cpus;
    uint32_t next_id;
    pending *pend;
    pending *spare; /* a finished call's record, kept for the next call */
    dexec_death_fn death;
    void *death_user;
};

/* ---- the wake-up every waiter sleeps on ------------------------------------ */

/* Any arrival on any connection (a reply, a notification, a death) bumps
 * the generation and wakes every waiter; a waiter notes the generation
 * before it looks, so no wake-up is lost. One for the process: the engine
 * has few connections and waiters, and a waiter may wait on several.
 *
 * The generation is atomic and the lock is taken only when a thread
 * sleeps or must be woken: a waiter counts itself in g_wake_sleepers
 * before it checks the generation a last time, a waker bumps the
 * generation before it reads the count (both sequentially consistent),
 * so either the waker sees the sleeper and broadcasts under the lock, or
 * the sleeper sees the new generation and does not sleep. A caller that
 * reads its own replies, with nobody asleep, takes no lock here. */
static pthread_mutex_t g_wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake_cond;
static unsigned long g_wake_gen;
static int g_wake_sleepers;
static pthread_once_t g_wake_once = PTHREAD_ONCE_INIT;

static void wake_init(void)
{
    pthread_condattr_t ca;

    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g_wake_cond, &ca);
    pthread_condattr_destroy(&ca);
}

static void wake_all(void)
{
    __atomic_add_fetch(&g_wake_gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&g_wake_sleepers, __ATOMIC_SEQ_CST) == 0)
        return;
    pthread_mutex_lock(&g_wake_lock);
    pthread_cond_broadcast(&g_wake_cond);
    pthread_mutex_unlock(&g_wake_lock);
}

static unsigned long wake_gen(void)
{
    return __atomic_load_n(&g_wake_gen, __ATOMIC_SEQ_CST);
}

/* Sleeps until the generation moves past gen or the deadline passes. */
static void wake_wait(unsigned long gen, double deadline)
{
    struct timespec ts;

    ts.tv_sec = (time_t)deadline;
    ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_nsec = 999999999L;
    pthread_mutex_lock(&g_wake_lock);
    __atomic_add_fetch(&g_wake_sleepers, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&g_wake_gen, __ATOMIC_SEQ_CST) == gen && dx_remaining(deadline) > 0)
        if (pthread_cond_timedwait(&g_wake_cond, &g_wake_lock, &ts) != 0)
            break;
    __atomic_sub_fetch(&g_wake_sleepers, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&g_wake_lock);
}

static void *reader_main(void *arg);

static dexec_conn *conn_new(int fd, const char *label)
{
    dexec_conn *c = calloc(1, sizeof(*c));

    pthread_once(&g_wake_once, wake_init);
    if (c == NULL)
        return NULL;
    c->rd = dexec_reader_new(DEXEC_FRAME_MAX_DEFAULT);
    if (c->rd == NULL) {
        free(c);
        return NULL;
    }
    c->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->evfd < 0) {
        dexec_reader_free(c->rd);
        free(c);
        return NULL;
    }
    c->fd = fd;
    snprintf(c->label, sizeof(c->label), "%s", label != NULL ? label : "worker");
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->wlock, NULL);
    pthread_mutex_init(&c->dlock, NULL);
    {
        pthread_condattr_t ca;

        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&c->tok_cond, &ca);
        pthread_condattr_destroy(&ca);
    }
    c->write_timeout = WRITE_TIMEOUT_DEFAULT;
    c->last_rx = dexec_now();
    c->next_id = 1;
    {
        /* Every send and every other receive says MSG_DONTWAIT; only a
         * caller reading its own reply in the ordered phase (read_held)
         * blocks in recv, for ORDERED_READ_S at most: one system call
         * where poll + recv would take two. Without the timeout the
         * socket stays non-blocking and that caller polls. */
        struct timeval tv = {.tv_sec = 0, .tv_usec = (suseconds_t)(ORDERED_READ_S * 1e6)};
        int fl = fcntl(fd, F_GETFL);

        c->block_read = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
                        fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0;
    }
    if (pthread_create(&c->reader, NULL, reader_main, c) != 0) {
        close(c->evfd);
        pthread_cond_destroy(&c->tok_cond);
        dexec_reader_free(c->rd);
        pthread_mutex_destroy(&c->lock);
        pthread_mutex_destroy(&c->wlock);
        pthread_mutex_destroy(&c->dlock);
        free(c);
        return NULL;
    }
    c->reader_started = 1;
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

void dexec_conn_set_spin(dexec_conn *c, double seconds)
{
    /* within the ordered phase, where one connection is read alone */
    double v = seconds > ORDERED_READ_S ? ORDERED_READ_S : seconds > 0 ? seconds : 0;

    __atomic_store_n(&c->spin_where, SPIN_ANYWHERE, __ATOMIC_RELAXED);
    __atomic_store(&c->spin, &v, __ATOMIC_RELAXED);
}

dexec_status dexec_conn_set_spin_auto(dexec_conn *c, double seconds, const char *worker_cpus)
{
    cpu_set_t set;
    int where = SPIN_NOWHERE;

    if (worker_cpus != NULL && worker_cpus[0] != '\0') {
        if (dx_cpulist_parse(worker_cpus, &set) != 0 || CPU_COUNT(&set) == 0)
            return DEXEC_EINVAL;
        c->spin_cpus = set;
        where = SPIN_OFF_CPUS;
    }
    dexec_conn_set_spin(c, seconds);
    __atomic_store_n(&c->spin_where, where, __ATOMIC_RELAXED);
    return DEXEC_OK;
}

/* How long c asks a wait to spin when the waiting thread runs on *cpu
 * (-2: not looked up yet; sched_getcpu, once per wait, only when it
 * matters): 0 when it does not ask, -1 when it forbids it (spinning would
 * take the CPU from c's worker, or from a worker whose CPUs are unknown). */
static double spin_wanted(dexec_conn *c, int *cpu)
{
    double spin;

    __atomic_load(&c->spin, &spin, __ATOMIC_RELAXED);
    if (spin <= 0)
        return 0;
    switch (__atomic_load_n(&c->spin_where, __ATOMIC_RELAXED)) {
    case SPIN_ANYWHERE:
        return spin;
    case SPIN_OFF_CPUS:
        if (*cpu == -2)
            *cpu = sched_getcpu();
        return *cpu >= 0 && *cpu < CPU_SETSIZE && !CPU_ISSET(*cpu, &c->spin_cpus) ? spin : -1;
    default:
        return -1;
    }
}

void dexec_conn_set_timeouts(dexec_conn *c, double write_timeout, double silence)
{
    double wt = write_timeout > 0 ? write_timeout : WRITE_TIMEOUT_DEFAULT;
    double si = silence > 0 ? silence : 0;

    pthread_mutex_lock(&c->lock);
    __atomic_store(&c->write_timeout, &wt, __ATOMIC_RELAXED);
    __atomic_store(&c->silence, &si, __ATOMIC_RELAXED);
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
    /* a unix socket says EAGAIN while the listener's backlog is full (a
     * busy or stalled server): try again until the deadline */
    for (;;) {
        if (connect(fd, sa, salen) == 0)
            return DEXEC_OK;
        if (errno != EAGAIN || sa->sa_family != AF_UNIX)
            break;
        if (dx_remaining(deadline) <= 0)
            return dx_fail(err, errlen, DEXEC_ETIMEDOUT,
                           "connect to %s: timed out (the server's backlog stayed full)",
                           address);
        usleep(10000);
    }
    if (errno != EINPROGRESS && errno != EINTR)
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
            dx_socket_keepalive(fd);
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

/* Called with c->lock held: marks the connection dead once, with why (the
 * transport's view). The owner's reason replaces it in resolve_death. */
static void mark_dead(dexec_conn *c, const char *why)
{
    if (c->dead)
        return;
    snprintf(c->dead_why, sizeof(c->dead_why), "%s", why);
    /* a long label and reason are cut, not an error */
    if (snprintf(c->dead_reason, sizeof(c->dead_reason), "%s: %s", c->label, why) < 0)
        c->dead_reason[0] = '\0';
    __atomic_store_n(&c->dead, 1, __ATOMIC_RELEASE);
    wake_all();
}

/* On a caller's thread, once the connection is dead: asks the owner why
 * (its callback may wait a little for the child's exit status) and keeps
 * the answer for every call that fails because of it. */
static void resolve_death(dexec_conn *c)
{
    dexec_death_fn fn;
    void *user;
    char reason[256] = "";

    pthread_mutex_lock(&c->dlock);
    pthread_mutex_lock(&c->lock);
    if (!c->dead || c->dead_resolved) {
        pthread_mutex_unlock(&c->lock);
        pthread_mutex_unlock(&c->dlock);
        return;
    }
    fn = c->death;
    user = c->death_user;
    pthread_mutex_unlock(&c->lock);
    if (fn != NULL)
        fn(user, c, reason, sizeof(reason));
    pthread_mutex_lock(&c->lock);
    if (reason[0] != '\0' && !c->dead_local)
        snprintf(c->dead_reason, sizeof(c->dead_reason), "%s: %s", c->label, reason);
    c->dead_resolved = 1;
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_unlock(&c->dlock);
}

static int read_some(dexec_conn *c, int readable);
static void token_give(dexec_conn *c);
static void unlink_pending(dexec_conn *c, pending *p);

int dexec_conn_poll_dead(dexec_conn *c)
{
    int take = 0;

    if (dexec_conn_dead(c))
        return 1;
    /* the reader thread may be parked (a caller read lately): look now,
     * unless someone else reads */
    pthread_mutex_lock(&c->lock);
    if (c->reading == RD_NONE) {
        c->reading = RD_CALLER;
        take = 1;
    }
    pthread_mutex_unlock(&c->lock);
    if (take) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int rc = poll(&p, 1, 0);

        if (rc != 0 && read_some(c, rc < 0 ? -1 : 1))
            wake_all();
        token_give(c);
    }
    return dexec_conn_dead(c);
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

static void notes_free(note *n)
{
    while (n != NULL) {
        note *next = n->next;

        dexec_value_free(n->msg);
        free(n);
        n = next;
    }
}

void dexec_conn_free(dexec_conn *c)
{
    if (c == NULL)
        return;
    if (c->reader_started) {
        /* the reader sees EOF (or the error) and returns */
        pthread_mutex_lock(&c->lock);
        __atomic_store_n(&c->closing, 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&c->tok_cond);
        pthread_mutex_unlock(&c->lock);
        shutdown(c->fd, SHUT_RDWR);
        pthread_join(c->reader, NULL);
    }
    close(c->fd);
    close(c->evfd);
    pthread_cond_destroy(&c->tok_cond);
    while (c->pend != NULL) {
        pending *p = c->pend;

        c->pend = p->next;
        dexec_value_free(p->result);
        notes_free(p->notes);
        free(p);
    }
    free(c->spare);
    dexec_reader_free(c->rd);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->wlock);
    pthread_mutex_destroy(&c->dlock);
    free(c);
}

/* ---- sending -------------------------------------------------------------- */

/* Writes one whole frame, the pieces of iov in order (its 4-byte length
 * first), in as few system calls as the socket allows (one, usually). */
static dexec_status send_frame(dexec_conn *c, struct iovec *iov, int niov, char *err,
                               size_t errlen)
{
    dexec_status st;
    char why[256];
    double wt;

    pthread_mutex_lock(&c->wlock);
    if (dexec_conn_dead(c)) {
        pthread_mutex_unlock(&c->wlock);
        resolve_death(c);
        pthread_mutex_lock(&c->lock);
        st = dx_fail(err, errlen, DEXEC_ECLOSED, "%s", c->dead_reason);
        pthread_mutex_unlock(&c->lock);
        return st;
    }
    /* a peer that stops reading for write_timeout has its connection
     * closed: a frame half-written would corrupt the stream, so there is
     * no giving up on one frame and going on */
    __atomic_load(&c->write_timeout, &wt, __ATOMIC_RELAXED);
    st = dx_writev_all(c->fd, iov, niov, wt, why, sizeof(why));
    if (st != DEXEC_OK) {
        /* part of the frame may be out: the stream is no longer usable */
        shutdown(c->fd, SHUT_RDWR);
        pthread_mutex_lock(&c->lock);
        mark_dead(c, st == DEXEC_ECLOSED ? "connection closed" : why);
        pthread_mutex_unlock(&c->lock);
    }
    pthread_mutex_unlock(&c->wlock);
    if (st == DEXEC_OK)
        return st;
    resolve_death(c);
    pthread_mutex_lock(&c->lock);
    st = dx_fail(err, errlen, DEXEC_ECLOSED, "%s", c->dead_reason);
    pthread_mutex_unlock(&c->lock);
    return st;
}

static void put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static dexec_status send_msg(dexec_conn *c, const dexec_value *msg, char *err, size_t errlen)
{
    struct iovec iov;
    char *buf;
    size_t len;
    dexec_status st;

    if (dx_msgpack_encode(msg, 4, &buf, &len) != 0)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory encoding a frame");
    if (len - 4 > UINT32_MAX) {
        free(buf);
        return dx_fail(err, errlen, DEXEC_EINVAL, "message of %zu bytes is too large", len - 4);
    }
    put_be32(buf, (uint32_t)(len - 4));
    iov = (struct iovec){.iov_base = buf, .iov_len = len};
    st = send_frame(c, &iov, 1, err, errlen);
    free(buf);
    return st;
}

/* Sends the request [0, msgid, method, params] where params is already
 * MessagePack (pk, plen bytes): the frame's head is built on the stack and
 * goes out with the params in one writev, with no copy of them. */
static dexec_status send_request(dexec_conn *c, uint32_t msgid, const char *method,
                                 const char *pk, size_t plen, char *err, size_t errlen)
{
    char store[256];
    unsigned char h[11];
    size_t mlen = strlen(method);
    struct iovec iov[2];
    dx_mbuf b;
    dexec_status st;

    if (mlen > 65535)
        return dx_fail(err, errlen, DEXEC_EINVAL, "method name of %zu bytes is too long", mlen);
    dx_mbuf_init(&b, store, sizeof(store));
    h[0] = h[1] = h[2] = h[3] = 0; /* the length, below */
    h[4] = 0x94;                   /* array of 4 */
    h[5] = 0x00;                   /* 0: a request */
    h[6] = 0xce;                   /* uint32 msgid */
    put_be32((char *)h + 7, msgid);
    if (dx_mbuf_put(&b, h, 11) != 0)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory encoding a frame");
    if (mlen < 32) {
        h[0] = (unsigned char)(0xa0 | mlen);
        st = dx_mbuf_put(&b, h, 1) == 0 ? DEXEC_OK : DEXEC_ENOMEM;
    } else if (mlen < 256) {
        h[0] = 0xd9;
        h[1] = (unsigned char)mlen;
        st = dx_mbuf_put(&b, h, 2) == 0 ? DEXEC_OK : DEXEC_ENOMEM;
    } else {
        h[0] = 0xda;
        h[1] = (unsigned char)(mlen >> 8);
        h[2] = (unsigned char)mlen;
        st = dx_mbuf_put(&b, h, 3) == 0 ? DEXEC_OK : DEXEC_ENOMEM;
    }
    if (st == DEXEC_OK && dx_mbuf_put(&b, method, mlen) != 0)
        st = DEXEC_ENOMEM;
    if (st != DEXEC_OK) {
        dx_mbuf_free(&b);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory encoding a frame");
    }
    if (b.len - 4 + plen > UINT32_MAX) {
        dx_mbuf_free(&b);
        return dx_fail(err, errlen, DEXEC_EINVAL, "message of %zu bytes is too large",
                       b.len - 4 + plen);
    }
    put_be32(b.p, (uint32_t)(b.len - 4 + plen));
    iov[0] = (struct iovec){.iov_base = b.p, .iov_len = b.len};
    iov[1] = (struct iovec){.iov_base = (void *)pk, .iov_len = plen};
    st = send_frame(c, iov, plen > 0 ? 2 : 1, err, errlen);
    dx_mbuf_free(&b);
    return st;
}

dexec_status dx_conn_send_packed(dexec_conn *c, const char *method, const char *params,
                                 size_t plen, dexec_notify_fn notify, void *user,
                                 uint32_t *msgid, char *err, size_t errlen)
{
    pending *p;
    dexec_status st;

    if (c == NULL || method == NULL || msgid == NULL || params == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "bad call");
    if (dexec_conn_dead(c))
        resolve_death(c);
    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        st = dx_fail(err, errlen, DEXEC_ECLOSED, "%s", c->dead_reason);
        pthread_mutex_unlock(&c->lock);
        return st;
    }
    /* one finished call's record is kept for the next: most calls then
     * allocate nothing here */
    p = c->spare;
    c->spare = NULL;
    if (p == NULL && (p = malloc(sizeof(*p))) == NULL) {
        pthread_mutex_unlock(&c->lock);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
    }
    p->done = 0;
    p->notes = NULL;
    p->notes_tail = &p->notes;
    p->nnotes = 0;
    p->st = DEXEC_OK;
    p->result = NULL;
    p->msg[0] = '\0';
    p->msgid = c->next_id++;
    if (c->next_id == 0)
        c->next_id = 1;
    p->notify = notify;
    p->user = user;
    p->next = c->pend;
    c->pend = p;
    *msgid = p->msgid;
    pthread_mutex_unlock(&c->lock);

    st = send_request(c, *msgid, method, params, plen, err, errlen);
    if (st != DEXEC_OK) {
        pthread_mutex_lock(&c->lock);
        unlink_pending(c, p);
        pthread_mutex_unlock(&c->lock);
        notes_free(p->notes);
        free(p);
    }
    return st;
}

dexec_status dexec_conn_send(dexec_conn *c, const char *method, const dexec_value *params,
                             dexec_notify_fn notify, void *user, uint32_t *msgid, char *err,
                             size_t errlen)
{
    static const char empty_array = (char)0x90;
    char store[512];
    dx_mbuf b;
    dexec_status st;

    if (c == NULL || method == NULL || msgid == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "bad call");
    if (params != NULL && params->type != DEXEC_VAL_ARRAY)
        return dx_fail(err, errlen, DEXEC_EINVAL, "params of %s must be an array", method);
    if (params == NULL)
        return dx_conn_send_packed(c, method, &empty_array, 1, notify, user, msgid, err,
                                   errlen);
    dx_mbuf_init(&b, store, sizeof(store));
    if (dx_msgpack_pack(&b, params) != 0) {
        dx_mbuf_free(&b);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory encoding a frame");
    }
    st = dx_conn_send_packed(c, method, b.p, b.len, notify, user, msgid, err, errlen);
    dx_mbuf_free(&b);
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

/* Handles one incoming message on the reader thread, with c->lock held;
 * takes m. Returns nonzero when a waiter has something new. */
static int dispatch(dexec_conn *c, dexec_value *m)
{
    const dexec_value *type = dexec_value_array_get(m, 0);
    int64_t t = dexec_value_as_int(type, -1);

    if (t == 1 && m->u.arr.len == 4) {
        int64_t id = dexec_value_as_int(m->u.arr.items[1], -1);
        pending *p = id >= 0 && id <= UINT32_MAX ? find_pending(c, (uint32_t)id) : NULL;

        if (p == NULL || p->done) {
            /* a reply nobody waits for any more (the caller timed out) */
            dexec_value_free(m);
            return 0;
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
        dexec_value_free(m);
        return 1;
    }
    if (t == 2 && m->u.arr.len == 3 && m->u.arr.items[1]->type == DEXEC_VAL_STR) {
        /* progress notifications name the call they belong to in params[0] */
        int64_t id = dexec_value_as_int(dexec_value_array_get(m->u.arr.items[2], 0), -1);
        pending *p = id >= 0 && id <= UINT32_MAX ? find_pending(c, (uint32_t)id) : NULL;
        note *n;

        if (p == NULL || p->notify == NULL || p->done || (n = calloc(1, sizeof(*n))) == NULL) {
            dexec_value_free(m);
            return 0;
        }
        if (p->nnotes >= NOTES_MAX) {
            note *old = p->notes;

            p->notes = old->next;
            if (p->notes == NULL)
                p->notes_tail = &p->notes;
            p->nnotes--;
            old->next = NULL;
            notes_free(old);
            if (!c->notes_dropped_logged)
                dexec_log(DEXEC_LOG_WARN, "rpc",
                          "%s: more than %d notifications undelivered; dropping the oldest",
                          c->label, NOTES_MAX);
            c->notes_dropped_logged = 1;
        }
        n->msg = m;
        if (p->notes_tail == NULL)
            p->notes_tail = &p->notes;
        *p->notes_tail = n;
        p->notes_tail = &n->next;
        p->nnotes++;
        return 1;
    }
    dexec_log(DEXEC_LOG_WARN, "rpc", "%s: ignoring a message that is neither a reply nor a "
                                     "notification", c->label);
    dexec_value_free(m);
    return 0;
}

/* TCP keepalive with a user timeout: a peer behind a cut link is found
 * dead within about DX_TCP_DEAD_S seconds whether or not data is in
 * flight (doc/protocol.md, "Deadlines and limits"). */
void dx_socket_keepalive(int fd)
{
    int one = 1, idle = 5, intvl = 2, cnt = 3;
    unsigned int user_ms = 15000;

    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_ms, sizeof(user_ms));
}

/* Reads what the socket holds and dispatches every whole message; the
 * caller holds the read token and not c->lock. readable: what poll said
 * (> 0 readable or hung up, < 0 poll failed), or READ_WAIT: wait in recv
 * itself for data (c->block_read: ORDERED_READ_S at most), or READ_TRY: a
 * recv that does not wait (a spinning caller's). Returns
 * nonzero when a waiter has something new (a reply, a notification, a
 * death). */
#define READ_WAIT 2
#define READ_TRY 3 /* a look without poll: nothing may be there */
static int read_some(dexec_conn *c, int readable)
{
    dexec_status st = DEXEC_OK;
    char err[256];
    int news = 0, was_dead, got = readable == 1;

    if (readable > 0) {
        size_t before = dexec_reader_buffered(c->rd);

        st = dx_reader_fill_flags(c->rd, c->fd, readable == READ_WAIT ? 0 : MSG_DONTWAIT, err,
                                  sizeof(err));
        got |= st != DEXEC_OK || dexec_reader_buffered(c->rd) != before;
    }
    pthread_mutex_lock(&c->lock);
    was_dead = c->dead;
    if (got) {
        double t = dx_now_coarse(); /* against seconds of silence */

        __atomic_store(&c->last_rx, &t, __ATOMIC_RELAXED);
    }
    for (;;) {
        dexec_value *m;
        dexec_status ts = dexec_reader_take(c->rd, &m, err, sizeof(err));

        if (ts != DEXEC_OK) {
            if (!__atomic_load_n(&c->closing, __ATOMIC_ACQUIRE))
                dexec_log(DEXEC_LOG_ERROR, "rpc", "%s: %s; dropping the connection", c->label,
                          err);
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
        news |= dispatch(c, m);
    }
    if (readable < 0)
        mark_dead(c, "poll failed");
    else if (st != DEXEC_OK)
        mark_dead(c, st == DEXEC_ECLOSED ? "connection closed" : err);
    news |= c->dead && !was_dead;
    pthread_mutex_unlock(&c->lock);
    return news;
}

/* Called with c->lock held: whether the reader thread should leave the
 * socket to a caller (one reads, one is about to, or one read lately and
 * nobody else waits). */
static int reader_parks(const dexec_conn *c)
{
    return c->reading == RD_CALLER || c->want > 0 ||
           (c->cond_waiters == 0 && dexec_now() < c->lease_until);
}

/* The reader thread: reads whatever arrives while no caller holds the
 * read token, until EOF, an error, a broken stream or dexec_conn_free. */
static void *reader_main(void *arg)
{
    dexec_conn *c = arg;

    pthread_mutex_lock(&c->lock);
    for (;;) {
        struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = c->evfd, .events = POLLIN}};
        int rc, news;
        uint64_t v;

        if (c->dead || __atomic_load_n(&c->closing, __ATOMIC_ACQUIRE))
            break;
        if (reader_parks(c)) {
            /* wake at the lease's end, or within a quarter second to look
             * again (a caller gives the token back without waking us) */
            double until = c->reading == RD_CALLER || c->want > 0 || c->lease_until <= 0
                               ? dexec_now() + 0.25
                               : c->lease_until;
            struct timespec ts;

            ts.tv_sec = (time_t)until;
            ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
            if (ts.tv_nsec >= 1000000000L)
                ts.tv_nsec = 999999999L;
            pthread_cond_timedwait(&c->tok_cond, &c->lock, &ts);
            continue;
        }
        c->reading = RD_THREAD;
        pthread_mutex_unlock(&c->lock);
        do
            rc = poll(p, 2, -1);
        while (rc < 0 && errno == EINTR);
        if (rc > 0 && (p[1].revents & POLLIN))
            while (read(c->evfd, &v, sizeof(v)) > 0)
                ;
        news = read_some(c, rc < 0 ? -1 : (p[0].revents != 0));
        if (news)
            wake_all();
        pthread_mutex_lock(&c->lock);
        c->reading = RD_NONE;
        pthread_cond_broadcast(&c->tok_cond);
    }
    c->reading = RD_NONE;
    pthread_cond_broadcast(&c->tok_cond);
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Takes c's read token for this thread, waiting for the reader thread to
 * give it up, until deadline. Nonzero when taken. */
static int token_take(dexec_conn *c, double deadline)
{
    int taken = 0;

    pthread_mutex_lock(&c->lock);
    if (c->reading == RD_CALLER) {
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    c->want++;
    while (c->reading == RD_THREAD && dx_remaining(deadline) > 0) {
        uint64_t one = 1;
        struct timespec ts;
        double until = deadline;

        if (write(c->evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            break;
        ts.tv_sec = (time_t)until;
        ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_nsec = 999999999L;
        pthread_cond_timedwait(&c->tok_cond, &c->lock, &ts);
    }
    c->want--;
    if (c->reading == RD_NONE) {
        c->reading = RD_CALLER;
        taken = 1;
    }
    pthread_mutex_unlock(&c->lock);
    return taken;
}

/* Gives c's read token back; the reader thread takes over after a lease
 * unless someone else waits on c now. */
static void token_give(dexec_conn *c)
{
    pthread_mutex_lock(&c->lock);
    c->reading = RD_NONE;
    c->lease_until = dx_now_coarse() + READ_LEASE;
    if (c->want > 0 || c->cond_waiters > 0 || c->dead)
        pthread_cond_broadcast(&c->tok_cond);
    pthread_mutex_unlock(&c->lock);
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

/* Delivers queued notifications on this (the waiting) thread. */
static void deliver(note *n, dexec_notify_fn fn, void *user)
{
    for (note *k = n; k != NULL; k = k->next)
        fn(user, k->msg->u.arr.items[1]->u.str.ptr, k->msg->u.arr.items[2]);
    notes_free(n);
}

/* One look at w: delivers its notifications, and finishes it when its
 * reply came, its connection died or the deadline passed. Returns nonzero
 * when w is finished. */
static int wait_one(dx_wait *w, double deadline, double now)
{
    dexec_conn *c = w->c;
    pending *p;
    note *notes = NULL;
    dexec_notify_fn fn = NULL;
    void *user = NULL;
    int finished = 0, dead_unresolved = 0;

    pthread_mutex_lock(&c->lock);
    p = find_pending(c, w->id);
    if (p == NULL) {
        pthread_mutex_unlock(&c->lock);
        w->st = dx_fail(w->msg, sizeof(w->msg), DEXEC_EINVAL, "no call %u in flight", w->id);
        return 1;
    }
    notes = p->notes;
    p->notes = NULL;
    p->notes_tail = &p->notes;
    p->nnotes = 0;
    fn = p->notify;
    user = p->user;
    if (p->done) {
        w->st = p->st;
        if (p->st == DEXEC_OK) {
            w->result = p->result;
            p->result = NULL;
        } else {
            snprintf(w->msg, sizeof(w->msg), "%s", p->msg);
        }
        finished = 1;
    } else if (c->dead) {
        if (c->dead_resolved) {
            w->st = dx_fail(w->msg, sizeof(w->msg), DEXEC_ECLOSED, "%s", c->dead_reason);
            finished = 1;
        } else {
            dead_unresolved = 1;
        }
    } else if (now >= deadline) {
        w->st = dx_fail(w->msg, sizeof(w->msg), DEXEC_ETIMEDOUT,
                        "%s: no reply before the deadline", c->label);
        finished = 1;
    }
    if (finished) {
        unlink_pending(c, p);
        if (c->spare == NULL)
            c->spare = p;
        else
            free(p);
    }
    pthread_mutex_unlock(&c->lock);
    if (notes != NULL && fn != NULL)
        deliver(notes, fn, user);
    else
        notes_free(notes);
    if (dead_unresolved) {
        resolve_death(c);
        return wait_one(w, deadline, dexec_now());
    }
    return finished;
}

/* Silence watch of one unfinished call (see the top of the file): sends
 * a get_rank probe when its connection has been silent for half of
 * c->silence, and closes the connection when it stays silent (the probe
 * unanswered) for all of it. Returns when it next needs a look (a
 * dexec_now() time; +inf: never). */
static double watch_silence(dx_wait *w, double now)
{
    dexec_conn *c = w->c;
    double silence, last;
    char msg[256];

    /* no probe in flight and not silent for half of it yet (every short
     * call): nothing to do, and no lock to take */
    __atomic_load(&c->silence, &silence, __ATOMIC_RELAXED);
    if (w->probe_id == 0) {
        if (silence <= 0 || dexec_conn_dead(c))
            return 1.0 / 0.0;
        __atomic_load(&c->last_rx, &last, __ATOMIC_RELAXED);
        if (w->watch_from == 0)
            w->watch_from = now;
        if (last < w->watch_from)
            last = w->watch_from;
        if (now - last < silence / 2)
            return last + silence / 2;
    }
    pthread_mutex_lock(&c->lock);
    silence = c->silence;
    last = c->last_rx;
    /* silence counts from this call's start at the earliest: a rank idle
     * for longer than the deadline (no calls, nothing to say) is not
     * silent the moment it is given work, and its probe gets its time */
    if (w->watch_from == 0)
        w->watch_from = now;
    if (last < w->watch_from)
        last = w->watch_from;
    if (w->probe_id != 0) {
        pending *p = find_pending(c, w->probe_id);

        if (p == NULL || p->done || c->dead) {
            if (p != NULL) {
                dexec_value_free(p->result);
                notes_free(p->notes);
                unlink_pending(c, p);
                free(p);
            }
            w->probe_id = 0;
        } else if (now - last >= silence && now - w->probe_at >= silence / 2) {
            /* silent for all of it, and the probe unanswered for half of
             * it: a connection idle before the call gets its probe's
             * answer time too */
            char why[200];

            snprintf(why, sizeof(why),
                     "silent for %.3g s, past timeouts.health (%.3g s), a get_rank probe "
                     "unanswered; closed the connection",
                     now - last, silence);
            dexec_log(DEXEC_LOG_ERROR, "rpc", "%s: %s", c->label, why);
            shutdown(c->fd, SHUT_RDWR);
            c->dead_local = 1;
            mark_dead(c, why);
            pthread_mutex_unlock(&c->lock);
            return 1.0 / 0.0;
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (silence <= 0 || dexec_conn_dead(c))
        return 1.0 / 0.0;
    if (w->probe_id != 0)
        return last + silence > w->probe_at + silence / 2 ? last + silence
                                                          : w->probe_at + silence / 2;
    if (now - last < silence / 2)
        return last + silence / 2;
    if (dexec_conn_send(c, "get_rank", NULL, NULL, NULL, &w->probe_id, msg, sizeof(msg)) !=
        DEXEC_OK) {
        w->probe_id = 0;
        return 1.0 / 0.0; /* the connection is dead: wait_one reports it */
    }
    w->probe_at = now;
    return last + silence > now + silence / 2 ? last + silence : now + silence / 2;
}

/* Drops the probe still in flight for w, if any. */
static void probe_drop(dx_wait *w)
{
    dexec_conn *c = w->c;
    pending *p;

    if (w->probe_id == 0)
        return;
    pthread_mutex_lock(&c->lock);
    p = find_pending(c, w->probe_id);
    if (p != NULL) {
        dexec_value_free(p->result);
        notes_free(p->notes);
        unlink_pending(c, p);
        free(p);
    }
    pthread_mutex_unlock(&c->lock);
    w->probe_id = 0;
}

/* Whether c is among the first n of list. */
static int conn_listed(dexec_conn *const *list, size_t n, const dexec_conn *c)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == c)
            return 1;
    return 0;
}

/* Takes the read token of every connection w waits on, or none (another
 * caller reads one of them). Returns how many are held in held. */
static size_t tokens_take_all(dx_wait *w, size_t n, dexec_conn **held, double deadline)
{
    size_t nheld = 0;

    for (size_t i = 0; i < n; i++) {
        if (!w[i].active || conn_listed(held, nheld, w[i].c))
            continue;
        if (!token_take(w[i].c, deadline)) {
            while (nheld > 0)
                token_give(held[--nheld]);
            return 0;
        }
        held[nheld++] = w[i].c;
    }
    return nheld;
}

/* Without the tokens: counts this thread among c's waiters, so that the
 * reader thread reads for it at once (no lease), or stops counting it. */
static void cond_wait_mark(dx_wait *w, size_t n, dexec_conn **seen, int delta)
{
    size_t nseen = 0;

    for (size_t i = 0; i < n; i++) {
        dexec_conn *c = w[i].c;

        if (!w[i].active || conn_listed(seen, nseen, c))
            continue;
        seen[nseen++] = c;
        pthread_mutex_lock(&c->lock);
        c->cond_waiters += delta;
        pthread_cond_broadcast(&c->tok_cond);
        pthread_mutex_unlock(&c->lock);
    }
}


/* Reads every held connection that has data (only `only`, when not NULL),
 * waiting until `until` at most; with may_block, `only` may be read with
 * a blocking recv instead (one system call, not poll + recv), which
 * returns within ORDERED_READ_S, after looking at it without sleeping
 * until spin_until (dexec_conn_set_spin; yielding the CPU between looks,
 * to a rank that may share it). */
static void read_held(dexec_conn **held, size_t nheld, dexec_conn *only, double until,
                      int may_block, double spin_until, int lone)
{
    struct pollfd pf[64];
    dexec_conn *pc[64];
    size_t np = 0;
    int rc, news = 0;
    double left;

    if (only != NULL && may_block && only->block_read && !dexec_conn_dead(only)) {
        double t;

        while (spin_until > 0 && (t = dexec_now()) < spin_until && t < until) {
            if (read_some(only, READ_TRY)) {
                wake_all();
                return;
            }
            sched_yield();
        }
        if (lone != only->long_read) {
            /* one system call when the kind of wait changes, not per call */
            double s = lone ? LONE_READ_S : ORDERED_READ_S;
            struct timeval tv = {.tv_sec = (time_t)s,
                                 .tv_usec = (suseconds_t)((s - (double)(time_t)s) * 1e6)};

            if (setsockopt(only->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0)
                only->long_read = lone;
            else if (lone)
                lone = 0; /* still the short one */
        }
        if (read_some(only, READ_WAIT))
            wake_all();
        return;
    }
    left = dx_remaining(until);

    for (size_t i = 0; i < nheld && np < 64; i++) {
        if (dexec_conn_dead(held[i]) || (only != NULL && held[i] != only))
            continue;
        pf[np] = (struct pollfd){.fd = held[i]->fd, .events = POLLIN};
        pc[np++] = held[i];
    }
    if (np == 0)
        return;
    rc = poll(pf, np, left <= 0 ? 0 : left > 3600 ? 3600000 : (int)(left * 1000 + 0.999));
    if (rc < 0 && errno == EINTR)
        return;
    for (size_t i = 0; i < np; i++)
        if (rc < 0 || pf[i].revents != 0)
            news |= read_some(pc[i], rc < 0 ? -1 : 1);
    if (news)
        wake_all(); /* other threads may wait on calls of these connections */
}

void dx_conn_wait_all(dx_wait *w, size_t n, double deadline)
{
    dexec_conn *held_stack[9];
    dexec_conn **held = n < 9 ? held_stack : n <= 64 ? calloc(n + 1, sizeof(*held)) : NULL;
    size_t nheld = 0;
    double start = dexec_now(), ordered_until = start + ORDERED_READ_S, spin_until = 0;
    int cpu = -2; /* the CPU this thread runs on, when a connection asks (spin_wanted) */

    for (size_t i = 0; i < n; i++) {
        w[i].finished = !w[i].active;
        w[i].probe_id = 0;
        w[i].watch_from = 0;
        if (!w[i].active)
            continue;
        w[i].result = NULL;
        w[i].st = DEXEC_OK;
        w[i].msg[0] = '\0';
    }
    if (held != NULL)
        nheld = tokens_take_all(w, n, held, deadline);
    for (size_t i = 0; i < nheld; i++) {
        /* one connection that forbids it forbids it: spinning on one
         * worker's CPU delays that worker, whichever connection asked */
        double spin = spin_wanted(held[i], &cpu);

        if (spin < 0) {
            spin_until = 0;
            break;
        }
        if (spin > 0 && start + spin > spin_until)
            spin_until = start + spin;
    }
    if (nheld == 0) {
        dexec_conn *seen_stack[9];
        dexec_conn **seen = n < 9 ? seen_stack : calloc(n + 1, sizeof(*seen));

        if (seen != NULL) {
            cond_wait_mark(w, n, seen, +1);
            if (seen != seen_stack)
                free(seen);
        }
    }
    for (;;) {
        unsigned long gen = wake_gen();
        double now = dexec_now(), next = deadline;
        size_t left = 0;

        for (size_t i = 0; i < n; i++) {
            if (w[i].finished)
                continue;
            w[i].finished = wait_one(&w[i], deadline, now);
            if (w[i].finished) {
                probe_drop(&w[i]);
                if (w[i].done != NULL)
                    w[i].done(w[i].done_user, &w[i]);
                continue;
            }
            left++;
            double t = watch_silence(&w[i], now);
            if (t < next)
                next = t;
        }
        if (left == 0)
            break;
        if (nheld >= 1 && now < ordered_until) {
            dexec_conn *first = NULL;

            for (size_t i = 0; i < n && first == NULL; i++)
                if (!w[i].finished && !dexec_conn_dead(w[i].c))
                    first = w[i].c;
            /* a blocking recv may overrun ordered_until by up to
             * ORDERED_READ_S: only when nothing else is due by then; by
             * LONE_READ_S when the wait is on one connection (no other
             * rank to read meanwhile) and nothing is due for longer */
            read_held(held, nheld, first, next < ordered_until ? next : ordered_until,
                      next >= ordered_until + ORDERED_READ_S, spin_until,
                      n == 1 && nheld == 1 && next >= now + LONE_READ_S + ORDERED_READ_S);
        } else if (nheld > 0) {
            read_held(held, nheld, NULL, next, 0, 0, 0);
        } else {
            wake_wait(gen, next);
        }
    }
    for (size_t i = 0; i < n; i++)
        probe_drop(&w[i]);
    if (nheld > 0) {
        while (nheld > 0)
            token_give(held[--nheld]);
    } else {
        dexec_conn *seen_stack[9];
        dexec_conn **seen = n < 9 ? seen_stack : calloc(n + 1, sizeof(*seen));

        if (seen != NULL) {
            cond_wait_mark(w, n, seen, -1);
            if (seen != seen_stack)
                free(seen);
        }
    }
    if (held != held_stack)
        free(held);
}

/* Added for executors that recover (group.c): a waiter that must act on
 * each call as it ends (re-deal a dead rank's requests, restart it) and
 * look at the clock between arrivals (stalled ranks) without giving up
 * the calls still in flight. Runs on the caller's thread like
 * dx_conn_wait_all, and shares its wait_one. */
size_t dx_conn_wait_any(dx_wait *w, size_t n, double deadline, double until)
{
    if (until > deadline)
        until = deadline;
    for (;;) {
        unsigned long gen = wake_gen();
        size_t done = 0, left = 0;

        double now = dexec_now(), next = until;

        for (size_t i = 0; i < n; i++) {
            if (!w[i].active || w[i].finished)
                continue;
            w[i].finished = wait_one(&w[i], deadline, now);
            if (w[i].finished) {
                probe_drop(&w[i]);
                if (w[i].done != NULL)
                    w[i].done(w[i].done_user, &w[i]);
                done++;
                continue;
            }
            left++;
            /* a rank silent past timeouts.health is probed, then closed,
             * as in dx_conn_wait_all: its death is what the caller acts on */
            double t = watch_silence(&w[i], now);
            if (t < next)
                next = t;
        }
        if (done > 0 || left == 0 || dx_remaining(until) <= 0)
            return done;
        wake_wait(gen, next);
    }
}

dexec_status dexec_conn_wait(dexec_conn *c, uint32_t msgid, double deadline, dexec_value **result,
                             char *err, size_t errlen)
{
    dx_wait w = {.c = c, .id = msgid, .active = 1};

    if (result != NULL)
        *result = NULL;
    dx_conn_wait_all(&w, 1, deadline);
    if (w.st != DEXEC_OK) {
        dexec_errorf(err, errlen, "%s", w.msg);
        return w.st;
    }
    if (result != NULL)
        *result = w.result;
    else
        dexec_value_free(w.result);
    return DEXEC_OK;
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
