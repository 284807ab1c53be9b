/* listen.c - listening sockets for dexec-worker: unix sockets created 0600
 * in an owner-only directory, TCP on loopback unless a token guards it. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <libgen.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <dexec/rpc.h>

#include "listen.h"

static dexec_status fail(char *err, size_t errlen, dexec_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static dexec_status fail(char *err, size_t errlen, dexec_status st, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return st;
}

static dexec_status listen_unix(const char *path, int insecure, dxw_listener *out, char *err,
                                size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char dir[sizeof(sa.sun_path)], *dname;
    struct stat st;
    mode_t old;
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path))
        return fail(err, errlen, DEXEC_EINVAL, "unix:%s: path too long (max %zu bytes)", path,
                    sizeof(sa.sun_path) - 1);
    snprintf(dir, sizeof(dir), "%s", path);
    dname = dirname(dir);
    if (stat(dname, &st) != 0)
        return fail(err, errlen, errno == ENOENT ? DEXEC_ENOTFOUND : DEXEC_EIO,
                    "unix:%s: directory %s: %s%s%s%s", path, dname, strerror(errno),
                    errno == ENOENT ? "; create it first (mkdir -m 700 " : "",
                    errno == ENOENT ? dname : "", errno == ENOENT ? ")" : "");
    if (!S_ISDIR(st.st_mode))
        return fail(err, errlen, DEXEC_EINVAL, "unix:%s: %s is not a directory", path, dname);
    if (!insecure && ((st.st_mode & 077) != 0 || st.st_uid != geteuid()))
        return fail(err, errlen, DEXEC_EINVAL,
                    "unix:%s: directory %s can be entered by others (mode %03o); use a "
                    "directory only you can enter (mkdir -m 700), or --insecure",
                    path, dname, (unsigned)(st.st_mode & 0777));
    if ((st.st_mode & 077) != 0 || st.st_uid != geteuid())
        dexec_log(DEXEC_LOG_WARN, "worker",
                  "unix:%s: directory %s can be entered by others (mode %03o, --insecure): "
                  "other users of this host may drive this worker",
                  path, dname, (unsigned)(st.st_mode & 0777));
    strcpy(sa.sun_path, path);
    if (lstat(path, &st) == 0) {
        int probe;

        if (!S_ISSOCK(st.st_mode))
            return fail(err, errlen, DEXEC_EINVAL, "unix:%s: exists and is not a socket", path);
        /* a socket file nobody answers on is left over from a dead worker */
        probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(probe);
            return fail(err, errlen, DEXEC_EINVAL, "unix:%s: another worker is listening there",
                        path);
        }
        if (probe >= 0)
            close(probe);
        unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(err, errlen, DEXEC_EIO, "socket: %s", strerror(errno));
    old = umask(077);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;

        umask(old);
        close(fd);
        return fail(err, errlen, DEXEC_EIO, "unix:%s: bind: %s", path, strerror(e));
    }
    umask(old);
    chmod(path, 0600);
    if (listen(fd, 64) != 0) {
        close(fd);
        unlink(path);
        return fail(err, errlen, DEXEC_EIO, "unix:%s: listen: %s", path, strerror(errno));
    }
    out->fd = fd;
    snprintf(out->unix_path, sizeof(out->unix_path), "%s", path);
    return DEXEC_OK;
}

static int is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return 0;
}

static dexec_status listen_tcp(const char *hp, int have_token, int insecure, dxw_listener *out,
                               char *bound, size_t boundlen, char *err, size_t errlen)
{
    char host[256], port[16], nhost[NI_MAXHOST], nport[NI_MAXSERV];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *res;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd, one = 1, rc;

    if (dexec_split_hostport(hp, host, sizeof(host), port, sizeof(port)) != 0)
        return fail(err, errlen, DEXEC_EINVAL, "bad address 'tcp:%s': expected tcp:HOST:PORT",
                    hp);
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        return fail(err, errlen, DEXEC_EIO, "tcp:%s: %s", hp, gai_strerror(rc));
    if (!is_loopback(res->ai_addr) && !have_token && !insecure) {
        freeaddrinfo(res);
        return fail(err, errlen, DEXEC_EINVAL,
                    "tcp:%s is not a loopback address: anyone who can reach it could drive "
                    "this worker; give --token-file FILE (or --insecure to allow it anyway)",
                    hp);
    }
    if (!is_loopback(res->ai_addr) && !have_token)
        dexec_log(DEXEC_LOG_WARN, "worker",
                  "tcp:%s is not a loopback address and no token is required (--insecure): "
                  "anyone who can reach it may drive this worker; give --token-file FILE",
                  hp);
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        return fail(err, errlen, DEXEC_EIO, "socket: %s", strerror(errno));
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        int e = errno;

        freeaddrinfo(res);
        close(fd);
        return fail(err, errlen, DEXEC_EIO, "tcp:%s: %s", hp, strerror(e));
    }
    freeaddrinfo(res);
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    getnameinfo((struct sockaddr *)&ss, sl, nhost, sizeof(nhost), nport, sizeof(nport),
                NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(bound, boundlen, strchr(nhost, ':') != NULL ? "tcp:[%s]:%s" : "tcp:%s:%s", nhost,
             nport);
    out->fd = fd;
    return DEXEC_OK;
}

dexec_status dxw_listen(const char *address, int have_token, int insecure, dxw_listener *out,
                        char *bound, size_t boundlen, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->fd = -1;
    if (strncmp(address, "unix:", 5) == 0) {
        snprintf(bound, boundlen, "%s", address);
        return listen_unix(address + 5, insecure, out, err, errlen);
    }
    if (strncmp(address, "tcp:", 4) == 0)
        return listen_tcp(address + 4, have_token, insecure, out, bound, boundlen, err, errlen);
    return fail(err, errlen, DEXEC_EINVAL,
                "bad address '%s': expected unix:/PATH, tcp:HOST:PORT or fd:N", address);
}

void dxw_listener_close(dxw_listener *l)
{
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    if (l->unix_path[0] != '\0')
        unlink(l->unix_path);
    l->unix_path[0] = '\0';
}
