/*
 * frame.c - length-prefixed frames on stream sockets: a 4-byte big-endian
 * length, then one MessagePack object. The length is checked against the
 * limit before any memory is set aside for the body.
 */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

#define READ_CHUNK 65536

struct dexec_reader {
    char *buf;
    size_t len; /* bytes buffered */
    size_t off; /* start of unconsumed bytes */
    size_t cap;
    size_t max_frame;
};

dexec_reader *dexec_reader_new(size_t max_frame)
{
    dexec_reader *r = calloc(1, sizeof(*r));

    if (r != NULL)
        r->max_frame = max_frame ? max_frame : DEXEC_FRAME_MAX_DEFAULT;
    return r;
}

void dexec_reader_free(dexec_reader *r)
{
    if (r == NULL)
        return;
    free(r->buf);
    free(r);
}

void dexec_reader_set_max_frame(dexec_reader *r, size_t max_frame)
{
    r->max_frame = max_frame ? max_frame : DEXEC_FRAME_MAX_DEFAULT;
}

size_t dexec_reader_buffered(const dexec_reader *r)
{
    return r->len - r->off;
}

static uint32_t frame_len(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;

    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}

/* Room to read into: at least min bytes, and enough for the frame being
 * assembled (once its length is known and accepted), else one chunk. */
static int reserve(dexec_reader *r, size_t min)
{
    size_t pending = r->len - r->off, want = READ_CHUNK;

    if (pending >= 4) {
        uint32_t n = frame_len(r->buf + r->off);

        if (n <= r->max_frame && (size_t)n + 4 > pending)
            want = (size_t)n + 4 - pending;
    }
    if (want < min)
        want = min;
    if (r->off > 0 && (r->off == r->len || r->cap - r->len < want)) {
        memmove(r->buf, r->buf + r->off, pending);
        r->len = pending;
        r->off = 0;
    }
    if (r->cap - r->len < want) {
        size_t cap = r->len + want;
        char *b = realloc(r->buf, cap);

        if (b == NULL)
            return -1;
        r->buf = b;
        r->cap = cap;
    }
    return 0;
}

dexec_status dexec_reader_fill(dexec_reader *r, int fd, char *err, size_t errlen)
{
    return dx_reader_fill_flags(r, fd, MSG_DONTWAIT, err, errlen);
}

dexec_status dx_reader_fill_flags(dexec_reader *r, int fd, int flags, char *err, size_t errlen)
{
    ssize_t n;

    if (reserve(r, 0) != 0)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory reading a frame");
    for (;;) {
        n = recv(fd, r->buf + r->len, r->cap - r->len, flags);
        if (n > 0) {
            r->len += (size_t)n;
            return DEXEC_OK;
        }
        if (n == 0)
            return dx_fail(err, errlen, DEXEC_ECLOSED, "connection closed by peer");
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return DEXEC_OK;
        return dx_fail(err, errlen, errno == ECONNRESET ? DEXEC_ECLOSED : DEXEC_EIO,
                       "read: %s", strerror(errno));
    }
}

dexec_status dexec_reader_feed(dexec_reader *r, const void *data, size_t len, char *err,
                               size_t errlen)
{
    if (len > SIZE_MAX - r->len || reserve(r, len) != 0)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory buffering %zu bytes", len);
    memcpy(r->buf + r->len, data, len);
    r->len += len;
    return DEXEC_OK;
}

dexec_status dexec_reader_take(dexec_reader *r, dexec_value **msg, char *err, size_t errlen)
{
    size_t pending = r->len - r->off;
    uint32_t n;
    dexec_status st;

    *msg = NULL;
    if (pending < 4)
        return DEXEC_OK;
    n = frame_len(r->buf + r->off);
    if (n > r->max_frame)
        return dx_fail(err, errlen, DEXEC_EPROTO, "frame of %u bytes exceeds the limit of %zu",
                       n, r->max_frame);
    if (n == 0)
        return dx_fail(err, errlen, DEXEC_EPROTO, "empty frame");
    if (pending < (size_t)n + 4)
        return DEXEC_OK;
    st = dexec_value_from_msgpack(r->buf + r->off + 4, n, msg, err, errlen);
    r->off += (size_t)n + 4;
    if (r->off == r->len)
        r->off = r->len = 0;
    return st;
}

int dexec_wait_readable(int fd, double deadline)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};

    for (;;) {
        int ms = -1, rc;

        if (deadline >= 0) {
            double left = dx_remaining(deadline);

            ms = (int)(left * 1000.0 + 0.999);
        }
        rc = poll(&p, 1, ms);
        if (rc > 0)
            return 1;
        if (rc == 0) {
            if (deadline >= 0 && dx_remaining(deadline) <= 0)
                return 0;
            continue;
        }
        if (errno != EINTR)
            return -1;
    }
}

dexec_status dexec_write_all(int fd, const char *buf, size_t len, double deadline, char *err,
                             size_t errlen)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};

    return dx_writev_all(fd, &iov, 1, dx_remaining(deadline), err, errlen);
}

dexec_status dx_writev_all(int fd, struct iovec *iov, int niov, double timeout, char *err,
                           size_t errlen)
{
    size_t total = 0, done = 0;
    double deadline = -1; /* read the clock only when the socket is full */

    for (int i = 0; i < niov; i++)
        total += iov[i].iov_len;
    while (niov > 0 && iov[0].iov_len == 0) {
        iov++;
        niov--;
    }
    while (niov > 0) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
        ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n > 0) {
            done += (size_t)n;
            while (niov > 0 && (size_t)n >= iov[0].iov_len) {
                n -= (ssize_t)iov[0].iov_len;
                iov++;
                niov--;
            }
            if (niov > 0) {
                iov[0].iov_base = (char *)iov[0].iov_base + n;
                iov[0].iov_len -= (size_t)n;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            double left;
            int rc;

            if (deadline < 0)
                deadline = dexec_now() + timeout;
            left = dx_remaining(deadline);
            if (left <= 0)
                return dx_fail(err, errlen, DEXEC_ETIMEDOUT,
                               "write timed out (%zu of %zu bytes sent)", done, total);
            rc = poll(&p, 1, (int)(left * 1000.0 + 0.999));
            if (rc < 0 && errno != EINTR)
                return dx_fail(err, errlen, DEXEC_EIO, "poll: %s", strerror(errno));
            continue;
        }
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
            return dx_fail(err, errlen, DEXEC_ECLOSED, "connection closed by peer");
        return dx_fail(err, errlen, DEXEC_EIO, "write: %s", n < 0 ? strerror(errno) : "no progress");
    }
    return DEXEC_OK;
}

dexec_status dexec_frame_write(int fd, const dexec_value *msg, double deadline, char *err,
                               size_t errlen)
{
    char *buf;
    size_t len;
    dexec_status st;
    uint32_t body;

    if (msg == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "no message");
    if (dx_msgpack_encode(msg, 4, &buf, &len) != 0)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory encoding a frame");
    if (len - 4 > UINT32_MAX) {
        free(buf);
        return dx_fail(err, errlen, DEXEC_EINVAL, "message of %zu bytes is too large", len - 4);
    }
    body = (uint32_t)(len - 4);
    buf[0] = (char)(body >> 24);
    buf[1] = (char)(body >> 16);
    buf[2] = (char)(body >> 8);
    buf[3] = (char)body;
    st = dexec_write_all(fd, buf, len, deadline, err, errlen);
    free(buf);
    return st;
}

/* Reads exactly len bytes (nothing beyond the frame is consumed). */
static dexec_status read_exact(int fd, char *buf, size_t len, double deadline, int first,
                               char *err, size_t errlen)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = recv(fd, buf + done, len - done, MSG_DONTWAIT);

        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n == 0)
            return dx_fail(err, errlen, first && done == 0 ? DEXEC_ECLOSED : DEXEC_EPROTO,
                           first && done == 0 ? "connection closed by peer"
                                              : "connection closed in the middle of a frame");
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return dx_fail(err, errlen, DEXEC_EIO, "read: %s", strerror(errno));
        int rc = dexec_wait_readable(fd, deadline);
        if (rc == 0)
            return dx_fail(err, errlen, DEXEC_ETIMEDOUT, "timed out reading a frame");
        if (rc < 0)
            return dx_fail(err, errlen, DEXEC_EIO, "poll: %s", strerror(errno));
    }
    return DEXEC_OK;
}

dexec_status dexec_frame_read(int fd, size_t max_len, double deadline, dexec_value **msg,
                              char *err, size_t errlen)
{
    char hdr[4];
    char *body;
    uint32_t n;
    dexec_status st;

    if (msg == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "no output");
    *msg = NULL;
    if (max_len == 0)
        max_len = DEXEC_FRAME_MAX_DEFAULT;
    st = read_exact(fd, hdr, 4, deadline, 1, err, errlen);
    if (st != DEXEC_OK)
        return st;
    n = frame_len(hdr);
    if (n > max_len)
        return dx_fail(err, errlen, DEXEC_EPROTO, "frame of %u bytes exceeds the limit of %zu",
                       n, max_len);
    if (n == 0)
        return dx_fail(err, errlen, DEXEC_EPROTO, "empty frame");
    body = malloc(n);
    if (body == NULL)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory for a frame of %u bytes", n);
    st = read_exact(fd, body, n, deadline, 0, err, errlen);
    if (st == DEXEC_OK)
        st = dexec_value_from_msgpack(body, n, msg, err, errlen);
    free(body);
    return st;
}

int dexec_secret_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);

    for (size_t i = 0; i < lb; i++)
        diff |= (unsigned char)(b[i] ^ (i < la ? a[i] : 0));
    return diff == 0;
}

dexec_status dexec_token_read(const char *path, char **token, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char buf[4096];
    ssize_t n;
    size_t len;

    *token = NULL;
    if (fd < 0)
        return dx_fail(err, errlen, DEXEC_EIO, "token file %s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return dx_fail(err, errlen, DEXEC_EINVAL, "token file %s: not a regular file", path);
    }
    if (st.st_mode & 077) {
        close(fd);
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "token file %s: mode %03o lets others read it; chmod 600 %s", path,
                       (unsigned)(st.st_mode & 0777), path);
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return dx_fail(err, errlen, DEXEC_EIO, "token file %s: %s", path, strerror(errno));
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    len = strlen(buf);
    while (len > 0 && (buf[len - 1] == ' ' || buf[len - 1] == '\t'))
        buf[--len] = '\0';
    if (len == 0)
        return dx_fail(err, errlen, DEXEC_EINVAL, "token file %s: empty", path);
    *token = strdup(buf);
    return *token != NULL ? DEXEC_OK : DEXEC_ENOMEM;
}
