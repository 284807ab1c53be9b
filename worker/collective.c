/*
 * collective.c - all-to-all and all-gather among the ranks of a parallel
 * group on one host, over shared memory (collective.h).
 *
 * Every member owns one segment, its mailbox, with one region per
 * communicator (cfg, sequence). A collective moves its data in chunks that
 * fit a region: for chunk e a member waits until every peer has read its
 * chunk e - 1, writes chunk e to its own region and bumps its posted
 * counter to e; then it reads its part of chunk e from each peer's region
 * as soon as that peer's posted counter reaches e, and bumps its own
 * consumed counter in that region. Counters are 32-bit words waited on
 * with futexes (shared, not private: the segments sit at other addresses
 * in other processes), in slices of DXC_SLICE_MS between which the waiter
 * checks its deadline, whether a peer gave up (a flag in each mailbox) and
 * whether a peer's process ended (a pidfd, readable once it has exited).
 * So a member's death fails the others' collectives within a slice.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <dexec/rpc.h>

#include "collective.h"

#define DXC_MAGIC    0x64786331u /* "dxc1" */
#define DXC_DATA     (1u << 20)  /* bytes of data per region */
#define DXC_SLICE_MS 10          /* between two looks at the peers while waiting */
#define DXC_SPINS    2000        /* polls before the first futex wait */

typedef struct dxc_head {
    uint32_t magic;
    int32_t pid;
    _Atomic uint32_t joined; /* 1 once this member mapped every peer */
    _Atomic uint32_t broken; /* 1 once this member gave up on the group */
    uint32_t pad[12];
} dxc_head;

typedef struct dxc_ctl {
    _Atomic uint32_t posted; /* chunks this member wrote to the region */
    uint32_t pad[15];
    _Atomic uint32_t consumed[DXW_COLL_MAX_RANKS]; /* by comm rank: chunks read */
} dxc_ctl;

#define DXC_REGION  (sizeof(dxc_ctl) + DXC_DATA)
#define DXC_SEGMENT (sizeof(dxc_head) + 2 * DXC_REGION)

typedef struct dxc_comm {
    dxk_comm pub;
    struct dxw_coll *g;
    int region;                      /* 0: cfg, 1: sequence */
    int members[DXW_COLL_MAX_RANKS]; /* group index of comm rank i */
    uint32_t op;                     /* chunks done */
} dxc_comm;

struct dxw_coll {
    int tcp;                      /* 1: links to the peers over TCP, no mailboxes */
    int lfd;                      /* tcp: the listener until joined */
    int sock[DXW_COLL_MAX_RANKS]; /* tcp: the link to each member */
    int size, index;
    char name[64];
    int unlinked;
    unsigned char *seg[DXW_COLL_MAX_RANKS];
    int pidfd[DXW_COLL_MAX_RANKS];
    pid_t pid[DXW_COLL_MAX_RANKS];
    double timeout;
    int failed;
    unsigned long long sent;
    dxc_comm cfg, seq;
};

static double dxc_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static dxc_head *head_of(const dxw_coll *g, int member)
{
    return (dxc_head *)g->seg[member];
}

static dxc_ctl *ctl_of(const dxw_coll *g, int member, int region)
{
    return (dxc_ctl *)(g->seg[member] + sizeof(dxc_head) + (size_t)region * DXC_REGION);
}

static unsigned char *data_of(const dxw_coll *g, int member, int region)
{
    return (unsigned char *)ctl_of(g, member, region) + sizeof(dxc_ctl);
}

static void futex_wait(_Atomic uint32_t *w, uint32_t val, double seconds)
{
    struct timespec ts = {.tv_sec = (time_t)seconds,
                          .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9)};

    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *w)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Whether member m's process has ended. */
static int member_dead(const dxw_coll *g, int m)
{
    if (g->pidfd[m] >= 0) {
        struct pollfd p = {.fd = g->pidfd[m], .events = POLLIN};

        return poll(&p, 1, 0) > 0;
    }
    return kill(g->pid[m], 0) != 0 && errno == ESRCH;
}

static dexec_status check_peers(dxw_coll *g, char *err, size_t errlen)
{
    for (int m = 0; m < g->size; m++) {
        if (m == g->index || g->seg[m] == NULL)
            continue;
        if (member_dead(g, m)) {
            dexec_errorf(err, errlen, "collective: group member %d (pid %d) died", m,
                         (int)g->pid[m]);
            return DEXEC_EIO;
        }
        if (atomic_load_explicit(&head_of(g, m)->broken, memory_order_acquire) != 0) {
            dexec_errorf(err, errlen,
                         "collective: group member %d (pid %d) gave up on the group (its "
                         "request failed or was cancelled)",
                         m, (int)g->pid[m]);
            return DEXEC_EIO;
        }
    }
    return DEXEC_OK;
}

static int reached(_Atomic uint32_t *w, uint32_t want)
{
    return (int32_t)(atomic_load_explicit(w, memory_order_acquire) - want) >= 0;
}

/* Waits until *w >= want (mod 2^32) within the group's timeout. */
static dexec_status wait_word(dxw_coll *g, _Atomic uint32_t *w, uint32_t want, int member,
                              const char *what, char *err, size_t errlen)
{
    double deadline;

    for (int i = 0; i < DXC_SPINS; i++)
        if (reached(w, want))
            return DEXEC_OK;
    deadline = dxc_now() + g->timeout;
    for (;;) {
        uint32_t v = atomic_load_explicit(w, memory_order_acquire);
        double left;
        dexec_status s;

        if ((int32_t)(v - want) >= 0)
            return DEXEC_OK;
        s = check_peers(g, err, errlen);
        if (s != DEXEC_OK)
            return s;
        left = deadline - dxc_now();
        if (left <= 0) {
            dexec_errorf(err, errlen,
                         "collective: group member %d (pid %d) did not %s within %.3g s", member,
                         (int)g->pid[member], what, g->timeout);
            return DEXEC_ETIMEDOUT;
        }
        futex_wait(w, v, left < DXC_SLICE_MS / 1e3 ? left : DXC_SLICE_MS / 1e3);
    }
}

static dexec_status fail(dxc_comm *c, dexec_status s)
{
    c->g->failed = 1;
    dxw_coll_abandon(c->g);
    return s;
}

/* One collective: each chunk of ch bytes per block. nout blocks are
 * written per chunk (1: all-gather, size: all-to-all); this member reads
 * block (nout == 1 ? 0 : its rank) of each peer's chunk. */
static dexec_status exchange(dxc_comm *c, const unsigned char *send, unsigned char *recv,
                             size_t bytes, int nout, char *err, size_t errlen)
{
    dxw_coll *g = c->g;
    const int k = c->pub.size, me = c->pub.rank, self = c->members[me];
    const size_t maxch = DXC_DATA / (size_t)nout;
    dxc_ctl *mine = ctl_of(g, self, c->region);
    unsigned char *mydata = data_of(g, self, c->region);
    dexec_status s;

    if (g->failed) {
        dexec_errorf(err, errlen,
                     "collective: this group failed earlier; it must be formed "
                     "again");
        return DEXEC_EIO;
    }
    for (size_t off = 0; off < bytes; off += maxch) {
        const size_t ch = bytes - off < maxch ? bytes - off : maxch;
        const uint32_t e = ++c->op;

        for (int j = 0; j < k; j++) {
            if (j == me)
                continue;
            s = wait_word(g, &mine->consumed[j], e - 1, c->members[j], "read the last chunk", err,
                          errlen);
            if (s != DEXEC_OK)
                return fail(c, s);
        }
        for (int b = 0; b < nout; b++)
            memcpy(mydata + (size_t)b * ch, send + (size_t)b * bytes + off, ch);
        atomic_store_explicit(&mine->posted, e, memory_order_release);
        futex_wake(&mine->posted);
        g->sent += (unsigned long long)ch * (unsigned)(nout == 1 ? k - 1 : nout - 1);
        for (int j = 0; j < k; j++) {
            const int pm = c->members[j];
            unsigned char *dst = recv + (size_t)j * bytes + off;
            dxc_ctl *peer;

            if (j == me) {
                memcpy(dst, send + (size_t)(nout == 1 ? 0 : me) * bytes + off, ch);
                continue;
            }
            peer = ctl_of(g, pm, c->region);
            s = wait_word(g, &peer->posted, e, pm, "send its part", err, errlen);
            if (s != DEXEC_OK)
                return fail(c, s);
            memcpy(dst, data_of(g, pm, c->region) + (size_t)(nout == 1 ? 0 : me) * ch, ch);
            atomic_store_explicit(&peer->consumed[me], e, memory_order_release);
            futex_wake(&peer->consumed[me]);
        }
    }
    return DEXEC_OK;
}

/* ---- TCP: one link per pair of members ------------------------------------- */

#define DXC_HELLO_MAGIC 0x64786374u /* "dxct" */
#define DXC_TOKEN_MAX   64

typedef struct dxc_hello {
    uint32_t magic;
    int32_t index;
    char token[DXC_TOKEN_MAX];
} dxc_hello;

/* Moves len bytes through fd (out: write) before deadline. */
static dexec_status io_full(int fd, void *buf, size_t len, int out, double deadline,
                            const char *what, char *err, size_t errlen)
{
    size_t done = 0;

    while (done < len) {
        struct pollfd p = {.fd = fd, .events = out ? POLLOUT : POLLIN};
        double left = deadline - dxc_now();
        ssize_t n;

        if (left <= 0) {
            dexec_errorf(err, errlen, "%s: no progress within the deadline", what);
            return DEXEC_ETIMEDOUT;
        }
        if (poll(&p, 1, (int)(left * 1000) + 1) < 0 && errno != EINTR) {
            dexec_errorf(err, errlen, "%s: poll: %s", what, strerror(errno));
            return DEXEC_EIO;
        }
        n = out ? send(fd, (char *)buf + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT)
                : recv(fd, (char *)buf + done, len - done, MSG_DONTWAIT);
        if (n > 0) {
            done += (size_t)n;
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            dexec_errorf(err, errlen, "%s: %s", what,
                         n == 0 ? "connection closed" : strerror(errno));
            return DEXEC_EIO;
        }
    }
    return DEXEC_OK;
}

/* Splits "HOST:PORT" or "[V6]:PORT". */
static int split_address(const char *a, char *host, size_t hl, char *port, size_t pl)
{
    const char *colon = strrchr(a, ':');

    if (colon == NULL || colon == a)
        return -1;
    if (a[0] == '[') {
        if (colon[-1] != ']')
            return -1;
        snprintf(host, hl, "%.*s", (int)(colon - a - 2), a + 1);
    } else {
        snprintf(host, hl, "%.*s", (int)(colon - a), a);
    }
    snprintf(port, pl, "%s", colon + 1);
    return 0;
}

static int connect_to(const char *addr, double deadline, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
    char host[256], port[32];
    int fd = -1, rc;

    if (split_address(addr, host, sizeof(host), port, sizeof(port)) != 0) {
        dexec_errorf(err, errlen, "bad address '%s' (HOST:PORT)", addr);
        return -1;
    }
    if ((rc = getaddrinfo(host, port, &hints, &res)) != 0) {
        dexec_errorf(err, errlen, "%s: %s", addr, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int e = 0;
        socklen_t el = sizeof(e);
        struct pollfd p;
        double left = deadline - dxc_now();

        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            e = errno;
        } else {
            p = (struct pollfd){.fd = fd, .events = POLLOUT};
            if (left <= 0 || poll(&p, 1, (int)(left * 1000) + 1) <= 0)
                e = ETIMEDOUT;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
                e = errno;
        }
        if (e == 0)
            break;
        dexec_errorf(err, errlen, "connect %s: %s", addr, strerror(e));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        int one = 1;

        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

dexec_status dxw_coll_open_tcp(const char *host, dxw_coll **out, char *addr, size_t addrlen,
                               char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res = NULL, *ai;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char port[32];
    dxw_coll *g = calloc(1, sizeof(*g));
    int rc, one = 1;

    *out = NULL;
    if (g == NULL)
        return DEXEC_ENOMEM;
    g->tcp = 1;
    g->lfd = -1;
    g->unlinked = 1;
    for (int i = 0; i < DXW_COLL_MAX_RANKS; i++)
        g->pidfd[i] = g->sock[i] = -1;
    if ((rc = getaddrinfo(host, "0", &hints, &res)) != 0) {
        dexec_errorf(err, errlen, "parallel_open: %s: %s", host, gai_strerror(rc));
        free(g);
        return DEXEC_EIO;
    }
    for (ai = res; ai != NULL && g->lfd < 0; ai = ai->ai_next) {
        g->lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (g->lfd < 0)
            continue;
        setsockopt(g->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(g->lfd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(g->lfd, 64) != 0 ||
            getsockname(g->lfd, (struct sockaddr *)&ss, &sl) != 0) {
            dexec_errorf(err, errlen, "parallel_open: listen on %s: %s", host, strerror(errno));
            close(g->lfd);
            g->lfd = -1;
        }
    }
    freeaddrinfo(res);
    if (g->lfd < 0) {
        free(g);
        return DEXEC_EIO;
    }
    snprintf(port, sizeof(port), "%u",
             ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                            : ((struct sockaddr_in *)&ss)->sin_port));
    snprintf(addr, addrlen, strchr(host, ':') != NULL ? "[%s]:%s" : "%s:%s", host, port);
    g->pid[0] = getpid();
    *out = g;
    return DEXEC_OK;
}

static dexec_status join_tcp(dxw_coll *g, char *const *addrs, const char *token, double deadline,
                             char *err, size_t errlen)
{
    dxc_hello h = {.magic = DXC_HELLO_MAGIC, .index = g->index};
    char what[300];
    dexec_status st;
    int want = g->size - 1 - g->index;

    if (token == NULL || strlen(token) >= DXC_TOKEN_MAX) {
        dexec_errorf(err, errlen, "parallel_join: a TCP group needs a token of at most %d bytes",
                     DXC_TOKEN_MAX - 1);
        return DEXEC_EINVAL;
    }
    snprintf(h.token, sizeof(h.token), "%s", token);
    /* connect to the members before this one, accept those after it */
    for (int m = 0; m < g->index; m++) {
        char why[512];

        g->sock[m] = connect_to(addrs[m], deadline, why, sizeof(why));
        if (g->sock[m] < 0) {
            dexec_errorf(err, errlen, "parallel_join: group member %d: %s", m, why);
            return DEXEC_EIO;
        }
        snprintf(what, sizeof(what), "parallel_join: hello to group member %d", m);
        st = io_full(g->sock[m], &h, sizeof(h), 1, deadline, what, err, errlen);
        if (st != DEXEC_OK)
            return st;
    }
    while (want > 0) {
        struct pollfd p = {.fd = g->lfd, .events = POLLIN};
        double left = deadline - dxc_now();
        dxc_hello in;
        int fd;

        if (left <= 0) {
            dexec_errorf(err, errlen,
                         "parallel_join: %d group member(s) after %d did not "
                         "connect within the deadline",
                         want, g->index);
            return DEXEC_ETIMEDOUT;
        }
        if (poll(&p, 1, (int)(left * 1000) + 1) <= 0)
            continue;
        fd = accept4(g->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            continue;
        /* a stranger (wrong token, bad index) is dropped, not a failure */
        if (io_full(fd, &in, sizeof(in), 0, dxc_now() + 5.0 < deadline ? dxc_now() + 5.0 : deadline,
                    "hello", what, sizeof(what)) != DEXEC_OK ||
            in.magic != DXC_HELLO_MAGIC || in.index <= g->index || in.index >= g->size ||
            g->sock[in.index] >= 0 || memchr(in.token, '\0', sizeof(in.token)) == NULL ||
            !dexec_secret_equal(in.token, token)) {
            close(fd);
            continue;
        }
        {
            int one = 1;

            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        g->sock[in.index] = fd;
        want--;
    }
    close(g->lfd);
    g->lfd = -1;
    return DEXEC_OK;
}

/* A collective over the links: every peer's part is sent and received at
 * once (poll), so two members sending to each other never wait on each
 * other's buffers. */
static dexec_status exchange_tcp(dxc_comm *c, const unsigned char *out, unsigned char *in,
                                 size_t bytes, int nout, char *err, size_t errlen)
{
    dxw_coll *g = c->g;
    const int k = c->pub.size, me = c->pub.rank;
    size_t tx[DXW_COLL_MAX_RANKS] = {0}, rx[DXW_COLL_MAX_RANKS] = {0};
    double deadline = dxc_now() + g->timeout;
    int left = 0;

    if (g->failed) {
        dexec_errorf(err, errlen,
                     "collective: this group failed earlier; it must be formed "
                     "again");
        return DEXEC_EIO;
    }
    memcpy(in + (size_t)me * bytes, out + (size_t)(nout == 1 ? 0 : me) * bytes, bytes);
    for (int j = 0; j < k; j++)
        left += j != me && bytes > 0;
    while (left > 0) {
        struct pollfd pf[DXW_COLL_MAX_RANKS];
        int who[DXW_COLL_MAX_RANKS], np = 0;
        double rem = deadline - dxc_now();

        for (int j = 0; j < k; j++) {
            if (j == me || (tx[j] == bytes && rx[j] == bytes))
                continue;
            pf[np] = (struct pollfd){
                .fd = g->sock[c->members[j]],
                .events = (short)((tx[j] < bytes ? POLLOUT : 0) | (rx[j] < bytes ? POLLIN : 0))};
            who[np++] = j;
        }
        if (rem <= 0) {
            dexec_errorf(err, errlen,
                         "collective: group member %d did not send its part within "
                         "%.3g s",
                         c->members[who[0]], g->timeout);
            return fail(c, DEXEC_ETIMEDOUT);
        }
        if (poll(pf, (nfds_t)np, (int)(rem * 1000) + 1) < 0 && errno != EINTR) {
            dexec_errorf(err, errlen, "collective: poll: %s", strerror(errno));
            return fail(c, DEXEC_EIO);
        }
        for (int i = 0; i < np; i++) {
            const int j = who[i];
            ssize_t n;

            if (pf[i].revents == 0)
                continue;
            if (tx[j] < bytes && (pf[i].revents & (POLLOUT | POLLERR | POLLHUP))) {
                n = send(pf[i].fd, out + (size_t)(nout == 1 ? 0 : j) * bytes + tx[j], bytes - tx[j],
                         MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n > 0)
                    tx[j] += (size_t)n;
                else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                    goto broken;
            }
            if (rx[j] < bytes && (pf[i].revents & (POLLIN | POLLERR | POLLHUP))) {
                n = recv(pf[i].fd, in + (size_t)j * bytes + rx[j], bytes - rx[j], MSG_DONTWAIT);
                if (n > 0)
                    rx[j] += (size_t)n;
                else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                    goto broken;
            }
            if (tx[j] == bytes && rx[j] == bytes)
                left--;
            continue;
        broken:
            dexec_errorf(err, errlen,
                         "collective: group member %d: its link closed (the member died or gave "
                         "up)",
                         c->members[j]);
            return fail(c, DEXEC_EIO);
        }
    }
    g->sent += (unsigned long long)bytes * (unsigned)(k - 1);
    return DEXEC_OK;
}

static dexec_status dxc_allgather(void *ctx, const void *send, void *recv, size_t bytes, char *err,
                                  size_t errlen)
{
    dxc_comm *c = ctx;

    if (c->g->tcp)
        return exchange_tcp(c, send, recv, bytes, 1, err, errlen);
    return exchange(c, send, recv, bytes, 1, err, errlen);
}

static dexec_status dxc_alltoall(void *ctx, const void *send, void *recv, size_t bytes_per_rank,
                                 char *err, size_t errlen)
{
    dxc_comm *c = ctx;

    if (c->g->tcp)
        return exchange_tcp(c, send, recv, bytes_per_rank, c->pub.size, err, errlen);
    return exchange(c, send, recv, bytes_per_rank, c->pub.size, err, errlen);
}

void dxw_coll_host_id(char *buf, size_t len)
{
    char host[256] = "", boot[64] = "", ipc[64] = "", pidns[64] = "";
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    ssize_t n;

    gethostname(host, sizeof(host) - 1);
    if (f != NULL) {
        if (fgets(boot, sizeof(boot), f) != NULL)
            boot[strcspn(boot, "\n")] = '\0';
        fclose(f);
    }
    n = readlink("/proc/self/ns/ipc", ipc, sizeof(ipc) - 1);
    ipc[n > 0 ? n : 0] = '\0';
    n = readlink("/proc/self/ns/pid", pidns, sizeof(pidns) - 1);
    pidns[n > 0 ? n : 0] = '\0';
    snprintf(buf, len, "%s/%s/%s/%s", host, boot, ipc, pidns);
}

dexec_status dxw_coll_open(dxw_coll **out, char *name, size_t namelen, char *err, size_t errlen)
{
    static _Atomic unsigned counter;
    dxw_coll *g = calloc(1, sizeof(*g));
    uint32_t salt = 0;
    int fd;
    void *p;

    *out = NULL;
    if (g == NULL) {
        dexec_errorf(err, errlen, "collective: out of memory");
        return DEXEC_ENOMEM;
    }
    for (int i = 0; i < DXW_COLL_MAX_RANKS; i++)
        g->pidfd[i] = g->sock[i] = -1;
    g->lfd = -1;
    if (getrandom(&salt, sizeof(salt), 0) != (ssize_t)sizeof(salt))
        salt = (uint32_t)dxc_now();
    snprintf(g->name, sizeof(g->name), "/dexec-coll-%d-%u-%08x", (int)getpid(),
             atomic_fetch_add(&counter, 1), salt);
    fd = shm_open(g->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        dexec_errorf(err, errlen,
                     "collective: shm_open %s: %s (is /dev/shm mounted and "
                     "writable?)",
                     g->name, strerror(errno));
        free(g);
        return DEXEC_EIO;
    }
    if (ftruncate(fd, (off_t)DXC_SEGMENT) != 0) {
        dexec_errorf(err, errlen, "collective: ftruncate %s to %zu bytes: %s", g->name,
                     (size_t)DXC_SEGMENT, strerror(errno));
        close(fd);
        shm_unlink(g->name);
        free(g);
        return DEXEC_EIO;
    }
    p = mmap(NULL, DXC_SEGMENT, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        dexec_errorf(err, errlen, "collective: mmap %s: %s", g->name, strerror(errno));
        shm_unlink(g->name);
        free(g);
        return DEXEC_EIO;
    }
    g->seg[0] = p; /* moved to its index at join */
    head_of(g, 0)->magic = DXC_MAGIC;
    head_of(g, 0)->pid = (int32_t)getpid();
    g->pid[0] = getpid();
    snprintf(name, namelen, "%s", g->name);
    *out = g;
    return DEXEC_OK;
}

static void comm_init(dxw_coll *g, dxc_comm *c, int region, int size, int rank)
{
    memset(c, 0, sizeof(*c));
    c->g = g;
    c->region = region;
    c->pub.size = size;
    c->pub.rank = rank;
    c->pub.ctx = c;
    c->pub.alltoall = dxc_alltoall;
    c->pub.allgather = dxc_allgather;
}

dexec_status dxw_coll_join(dxw_coll *g, int index, int cfg, int seq, char *const *names,
                           const pid_t *pids, const char *token, double timeout, char *err,
                           size_t errlen)
{
    const int size = cfg * seq;
    dexec_status s;

    if (cfg < 1 || cfg > 2 || seq < 1 || size > DXW_COLL_MAX_RANKS || index < 0 || index >= size ||
        g->size != 0) {
        dexec_errorf(err, errlen,
                     "parallel_join: member %d of cfg %d x sequence %d: cfg is 1 or 2, the "
                     "group has 1 to %d ranks, a mailbox joins once",
                     index, cfg, seq, DXW_COLL_MAX_RANKS);
        return DEXEC_EINVAL;
    }
    g->size = size;
    g->index = index;
    g->timeout = timeout > 0 ? timeout : 60.0;
    if (g->tcp) {
        s = join_tcp(g, names, token, dxc_now() + g->timeout, err, errlen);
        if (s != DEXEC_OK)
            return s;
        goto comms;
    }
    if (index != 0) {
        g->seg[index] = g->seg[0];
        g->seg[0] = NULL;
        g->pid[index] = g->pid[0];
    }
    for (int m = 0; m < size; m++) {
        struct stat st;
        int fd;
        void *p;

        if (m == index)
            continue;
        g->pid[m] = pids[m];
        fd = shm_open(names[m], O_RDWR | O_CLOEXEC, 0);
        if (fd < 0) {
            dexec_errorf(err, errlen,
                         "parallel_join: shm_open %s (member %d, pid %d): %s (members of one "
                         "group must share /dev/shm)",
                         names[m], m, (int)pids[m], strerror(errno));
            return DEXEC_EIO;
        }
        if (fstat(fd, &st) != 0 || (size_t)st.st_size != DXC_SEGMENT) {
            dexec_errorf(err, errlen, "parallel_join: %s (member %d) is not a dexec mailbox",
                         names[m], m);
            close(fd);
            return DEXEC_EIO;
        }
        p = mmap(NULL, DXC_SEGMENT, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED) {
            dexec_errorf(err, errlen, "parallel_join: mmap %s: %s", names[m], strerror(errno));
            return DEXEC_EIO;
        }
        g->seg[m] = p;
        if (head_of(g, m)->magic != DXC_MAGIC || head_of(g, m)->pid != (int32_t)pids[m]) {
            dexec_errorf(err, errlen, "parallel_join: %s (member %d) is not the mailbox of pid %d",
                         names[m], m, (int)pids[m]);
            return DEXEC_EIO;
        }
        g->pidfd[m] = (int)syscall(SYS_pidfd_open, pids[m], 0);
    }
    atomic_store_explicit(&head_of(g, index)->joined, 1, memory_order_release);
    futex_wake(&head_of(g, index)->joined);
    for (int m = 0; m < size; m++) {
        if (m == index)
            continue;
        s = wait_word(g, &head_of(g, m)->joined, 1, m, "join the group", err, errlen);
        if (s != DEXEC_OK)
            return s;
    }
    /* every member has mapped every mailbox: the names can go */
    shm_unlink(g->name);
    g->unlinked = 1;
comms:
    comm_init(g, &g->cfg, 0, cfg, index / seq);
    for (int c = 0; c < cfg; c++)
        g->cfg.members[c] = index % seq + c * seq;
    comm_init(g, &g->seq, 1, seq, index % seq);
    for (int r = 0; r < seq; r++)
        g->seq.members[r] = (index / seq) * seq + r;
    return DEXEC_OK;
}

dxk_comm *dxw_coll_cfg(dxw_coll *g)
{
    return &g->cfg.pub;
}

dxk_comm *dxw_coll_seq(dxw_coll *g)
{
    return &g->seq.pub;
}

void dxw_coll_abandon(dxw_coll *g)
{
    int self = g->size > 0 ? g->index : 0;

    g->failed = 1;
    for (int m = 0; g->tcp && m < DXW_COLL_MAX_RANKS; m++)
        if (g->sock[m] >= 0)
            shutdown(g->sock[m], SHUT_RDWR); /* the peers see the links close */
    if (g->seg[self] != NULL) {
        atomic_store_explicit(&head_of(g, self)->broken, 1, memory_order_release);
        futex_wake(&head_of(g, self)->broken);
    }
}

int dxw_coll_broken(const dxw_coll *g)
{
    return g->failed;
}

unsigned long long dxw_coll_bytes_sent(const dxw_coll *g)
{
    return g->sent;
}

void dxw_coll_free(dxw_coll *g)
{
    if (g == NULL)
        return;
    if (!g->unlinked)
        shm_unlink(g->name);
    if (g->tcp && g->lfd >= 0)
        close(g->lfd);
    for (int m = 0; m < DXW_COLL_MAX_RANKS; m++) {
        if (g->tcp && g->sock[m] >= 0)
            close(g->sock[m]);
        if (g->seg[m] != NULL)
            munmap(g->seg[m], DXC_SEGMENT);
        if (g->pidfd[m] >= 0)
            close(g->pidfd[m]);
    }
    free(g);
}
