/*
 * redis_discovery.c - the redis_discovery plugin: named actors (workers)
 * and node agents registered in Redis, each under one key with a TTL.
 *
 * Keys: <namespace>:actor:<name> for workers, <namespace>:node:<name> for
 * node agents (an entry whose meta map has "kind" = "node"). The value is a
 * JSON object: name, address, rank, pid, host, protocol, started (unix
 * time), instance (unique per registering process) and meta.
 *
 *  - register: SET key value EX ttl NX, so a name held by a live instance
 *    is refused; an entry that is already ours (a retried SET whose reply
 *    was lost) is refreshed instead.
 *  - heartbeat: one Lua script refreshes the TTL if the entry is still
 *    ours, writes it again if the key vanished (it expired, or Redis
 *    restarted without persistence), and refuses if another instance took
 *    the name meanwhile.
 *  - deregister: compare-and-delete in Lua, so a worker that lost its name
 *    never deletes its successor's entry.
 *
 * Every connection gets the connect timeout and the command timeout from
 * the configuration; a lost connection is replaced by a fresh one that
 * gets the timeouts, AUTH and SELECT again (hiredis' redisReconnect keeps
 * only the address, so a reconnected context would silently talk to db 0
 * unauthenticated). One mutex per handle serializes its commands.
 *
 * Nothing outside this file knows about Redis.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include <dexec/plugin.h>
#include <dexec/rpc.h>

#define NAME_MAX_LEN 128

struct dexec_discovery {
    pthread_mutex_t lock;
    redisContext *rc;
    char url[512];      /* for messages: the URL without its password */
    char tcp_host[256]; /* empty for a unix socket */
    int port;
    char unix_path[256];
    char *user;     /* ACL user (Redis 6), or NULL */
    char *password; /* or NULL */
    int db;
    char ns[128];
    double connect_timeout, command_timeout;
    /* the host's logger (NULL when opened without a host) */
    void (*log)(dexec_log_level level, const char *component, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
};

/* Refreshes the TTL when the entry is ours (1), writes it again when the
 * key vanished (2), or returns {0, holder} when another instance holds it. */
static const char heartbeat_lua[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if not v then\n"
    "  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])\n"
    "  return {2}\n"
    "end\n"
    "local ok, t = pcall(cjson.decode, v)\n"
    "if ok and type(t) == 'table' and t.instance == ARGV[1] then\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
    "  return {1}\n"
    "end\n"
    "return {0, v}\n";

/* Replaces the entry only if it is still exactly the one judged dead
 * (ARGV[1]): 1 replaced, 0 it changed meanwhile. Two newcomers that both
 * found the holder dead cannot both win: the second compares against the
 * first one's entry. */
static const char takeover_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
    "  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* Deletes the key only if the entry is ours: 1 deleted, 0 absent, -1 not ours. */
static const char deregister_lua[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if not v then return 0 end\n"
    "local ok, t = pcall(cjson.decode, v)\n"
    "if ok and type(t) == 'table' and t.instance == ARGV[1] then\n"
    "  return redis.call('DEL', KEYS[1])\n"
    "end\n"
    "return -1\n";

static double wall_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct timeval to_timeval(double s)
{
    struct timeval tv;

    if (s < 0.001)
        s = 0.001;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

/* ---- URL ------------------------------------------------------------------- */

static int parse_db(const char *s, int *db)
{
    char *end;
    long v;

    if (*s == '\0')
        return 0;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < 0 || v > 1000000)
        return -1;
    *db = (int)v;
    return 0;
}

/* Query parameters: db=N and password=P. */
static int parse_query(struct dexec_discovery *d, char *q)
{
    for (char *tok = strtok(q, "&"); tok != NULL; tok = strtok(NULL, "&")) {
        if (strncmp(tok, "db=", 3) == 0) {
            if (parse_db(tok + 3, &d->db) != 0)
                return -1;
        } else if (strncmp(tok, "password=", 9) == 0) {
            free(d->password);
            if ((d->password = strdup(tok + 9)) == NULL)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* redis://[[user]:password@]host[:port][/db][?db=N] or unix:/path[?db=N]. */
static dexec_status parse_url(struct dexec_discovery *d, const char *url, char *err, size_t errlen)
{
    char buf[1024], *p, *q, *at, *slash;

    if (strlen(url) >= sizeof(buf))
        goto bad;
    snprintf(buf, sizeof(buf), "%s", url);
    q = strchr(buf, '?');
    if (q != NULL)
        *q++ = '\0';
    if (strncmp(buf, "unix:", 5) == 0) {
        p = buf + 5;
        if (strncmp(p, "//", 2) == 0)
            p += 2;
        if (*p != '/' || strlen(p) >= sizeof(d->unix_path))
            goto bad;
        snprintf(d->unix_path, sizeof(d->unix_path), "%s", p);
    } else if (strncmp(buf, "redis://", 8) == 0) {
        char host[256], port[16];

        p = buf + 8;
        at = strrchr(p, '@');
        if (at != NULL) {
            char *colon;

            *at = '\0';
            colon = strchr(p, ':');
            if (colon != NULL) {
                *colon = '\0';
                if (*p != '\0' && (d->user = strdup(p)) == NULL)
                    return DEXEC_ENOMEM;
                p = colon + 1;
            }
            if (*p != '\0' && (d->password = strdup(p)) == NULL)
                return DEXEC_ENOMEM;
            p = at + 1;
        }
        slash = strchr(p, '/');
        if (slash != NULL) {
            *slash = '\0';
            if (parse_db(slash + 1, &d->db) != 0)
                goto bad;
        }
        if (*p == '\0')
            goto bad;
        if (strchr(p, ':') != NULL && (p[0] != '[' || strstr(p, "]:") != NULL)) {
            char *end;
            long v;

            if (dexec_split_hostport(p, host, sizeof(host), port, sizeof(port)) != 0)
                goto bad;
            v = strtol(port, &end, 10);
            if (*end != '\0' || v < 1 || v > 65535)
                goto bad;
            d->port = (int)v;
        } else {
            if (strlen(p) >= sizeof(host))
                goto bad;
            memcpy(host, p, strlen(p) + 1);
            d->port = 6379;
        }
        if (host[0] == '[') { /* [v6] without a port */
            memmove(host, host + 1, strlen(host));
            host[strcspn(host, "]")] = '\0';
        }
        if (host[0] == '\0')
            goto bad;
        snprintf(d->tcp_host, sizeof(d->tcp_host), "%s", host);
    } else {
        goto bad;
    }
    if (q != NULL && parse_query(d, q) != 0)
        goto bad;
    if (d->tcp_host[0] != '\0')
        snprintf(d->url, sizeof(d->url), strchr(d->tcp_host, ':') ? "redis://[%s]:%d/%d"
                                                                   : "redis://%s:%d/%d",
                 d->tcp_host, d->port, d->db);
    else if (d->db != 0)
        snprintf(d->url, sizeof(d->url), "unix:%s?db=%d", d->unix_path, d->db);
    else
        snprintf(d->url, sizeof(d->url), "unix:%s", d->unix_path);
    return DEXEC_OK;
bad:
    dexec_errorf(err, errlen,
                 "bad Redis URL '%s': expected redis://[:PASSWORD@]HOST[:PORT][/DB] or "
                 "unix:/PATH[?db=N]",
                 url);
    return DEXEC_EINVAL;
}

/* ---- connection ---------------------------------------------------------------- */

/* hiredis keeps only strerror() text: a socket timeout reads as EAGAIN
 * ("Resource temporarily unavailable"), a connect timeout as ETIMEDOUT. */
static int is_timeout(const redisContext *c)
{
    return c->err == REDIS_ERR_IO &&
           (strstr(c->errstr, strerror(EAGAIN)) != NULL ||
            strstr(c->errstr, strerror(ETIMEDOUT)) != NULL ||
            strstr(c->errstr, strerror(EINPROGRESS)) != NULL || strstr(c->errstr, "timed out"));
}

/* Turns a failed context into a status and message; frees nothing. */
static dexec_status context_error(struct dexec_discovery *d, const redisContext *c, int connecting,
                                  char *err, size_t errlen)
{
    if (is_timeout(c)) {
        dexec_errorf(err, errlen, "cannot reach Redis at %s: no answer within %.3g s (%s)",
                     d->url, connecting ? d->connect_timeout : d->command_timeout,
                     connecting ? "discovery.redis.connect_timeout"
                                : "discovery.redis.command_timeout");
        return DEXEC_ETIMEDOUT;
    }
    dexec_errorf(err, errlen, "cannot reach Redis at %s: %s", d->url,
                 c->errstr[0] != '\0' ? c->errstr : "connection lost");
    return DEXEC_EIO;
}

static void drop_connection(struct dexec_discovery *d)
{
    if (d->rc != NULL)
        redisFree(d->rc);
    d->rc = NULL;
}

/* A command on a fresh context during setup (AUTH, SELECT). */
static dexec_status setup_command(struct dexec_discovery *d, const char *what, int argc,
                                  const char **argv, char *err, size_t errlen)
{
    redisReply *r = redisCommandArgv(d->rc, argc, argv, NULL);
    dexec_status st = DEXEC_OK;

    if (r == NULL)
        return context_error(d, d->rc, 0, err, errlen);
    if (r->type == REDIS_REPLY_ERROR) {
        dexec_errorf(err, errlen, "Redis at %s refused %s: %s", d->url, what, r->str);
        st = strcmp(what, "AUTH") == 0 ? DEXEC_EAUTH : DEXEC_EINVAL;
    }
    freeReplyObject(r);
    return st;
}

/* Opens a new context with the timeouts, CLOEXEC, AUTH and SELECT. */
static dexec_status connect_fresh(struct dexec_discovery *d, char *err, size_t errlen)
{
    struct timeval ctv = to_timeval(d->connect_timeout);
    dexec_status st;
    redisContext *c;

    drop_connection(d);
    if (d->tcp_host[0] != '\0')
        c = redisConnectWithTimeout(d->tcp_host, d->port, ctv);
    else
        c = redisConnectUnixWithTimeout(d->unix_path, ctv);
    if (c == NULL) {
        dexec_errorf(err, errlen, "cannot reach Redis at %s: out of memory", d->url);
        return DEXEC_ENOMEM;
    }
    if (c->err) {
        st = context_error(d, c, 1, err, errlen);
        redisFree(c);
        return st;
    }
    /* hiredis does not ask for SOCK_CLOEXEC; workers we might spawn must
     * not inherit the registry connection */
    fcntl(c->fd, F_SETFD, FD_CLOEXEC);
    if (redisSetTimeout(c, to_timeval(d->command_timeout)) != REDIS_OK) {
        st = context_error(d, c, 1, err, errlen);
        redisFree(c);
        return st;
    }
    if (d->tcp_host[0] != '\0')
        redisEnableKeepAlive(c);
    d->rc = c;
    if (d->password != NULL) {
        const char *argv[3] = {"AUTH", d->user != NULL ? d->user : d->password, d->password};

        st = setup_command(d, "AUTH", d->user != NULL ? 3 : 2, argv, err, errlen);
        if (st != DEXEC_OK) {
            drop_connection(d);
            return st;
        }
    }
    if (d->db != 0) {
        char dbs[16];
        const char *argv[2] = {"SELECT", dbs};

        snprintf(dbs, sizeof(dbs), "%d", d->db);
        st = setup_command(d, "SELECT", 2, argv, err, errlen);
        if (st != DEXEC_OK) {
            drop_connection(d);
            return st;
        }
    }
    return DEXEC_OK;
}

/* Runs one command (argv form, binary safe). A connection found broken is
 * replaced once and the command sent again: every command here is safe to
 * repeat (register recognises its own entry). A timeout is not retried, so
 * a call never takes more than connect + command timeout twice. The reply
 * is the caller's; an error reply is returned as DEXEC_EIO. Lock held. */
static dexec_status command(struct dexec_discovery *d, int argc, const char **argv,
                            redisReply **out, char *err, size_t errlen)
{
    dexec_status st;
    redisReply *r;

    for (int attempt = 0; attempt < 2; attempt++) {
        int fresh = 0;

        if (d->rc == NULL || d->rc->err) {
            st = connect_fresh(d, err, errlen);
            if (st != DEXEC_OK)
                return st;
            fresh = 1;
        }
        r = redisCommandArgv(d->rc, argc, argv, NULL);
        if (r != NULL) {
            if (r->type == REDIS_REPLY_ERROR) {
                dexec_errorf(err, errlen, "Redis at %s: %s: %s", d->url, argv[0], r->str);
                freeReplyObject(r);
                return DEXEC_EIO;
            }
            *out = r;
            return DEXEC_OK;
        }
        st = context_error(d, d->rc, 0, err, errlen);
        drop_connection(d);
        if (fresh || st == DEXEC_ETIMEDOUT)
            return st;
    }
    return st;
}

/* ---- entries ------------------------------------------------------------------ */

static int valid_name(const char *s)
{
    size_t n = 0;

    for (; s[n] != '\0'; n++)
        if (!(isalnum((unsigned char)s[n]) || s[n] == '_' || s[n] == '-' || s[n] == '.'))
            return 0;
    return n > 0 && n <= NAME_MAX_LEN;
}

static const char *entry_kind(const dexec_actor_info *a)
{
    const char *k = dexec_value_as_str(dexec_value_map_get(a->meta, "kind"), "actor");

    return strcmp(k, "node") == 0 ? "node" : "actor";
}

static dexec_status check_entry(const dexec_actor_info *a, char *err, size_t errlen)
{
    if (a != NULL && DEXEC_STRUCT_CHECK(a, dexec_actor_info, DEXEC_ACTOR_INFO_SIZE_1_1, err,
                                        errlen) != DEXEC_OK)
        return DEXEC_EINVAL;
    if (a == NULL || a->name == NULL || !valid_name(a->name)) {
        dexec_errorf(err, errlen, "bad actor name '%s': use 1 to %d characters of [A-Za-z0-9_.-]",
                     a != NULL && a->name != NULL ? a->name : "", NAME_MAX_LEN);
        return DEXEC_EINVAL;
    }
    if (a->address == NULL || a->instance == NULL || a->instance[0] == '\0') {
        dexec_errorf(err, errlen, "actor %s: an address and an instance id are required", a->name);
        return DEXEC_EINVAL;
    }
    return DEXEC_OK;
}

static void make_key(const struct dexec_discovery *d, const char *kind, const char *name, char *key,
                     size_t len)
{
    snprintf(key, len, "%s:%s:%s", d->ns, kind, name);
}

/* The JSON text stored for a; NULL on ENOMEM. */
static char *entry_json(const dexec_actor_info *a)
{
    dexec_value *m = dexec_value_map();
    char *s;

    if (m == NULL)
        return NULL;
    dexec_value_map_set(m, "name", dexec_value_str(a->name));
    dexec_value_map_set(m, "address", dexec_value_str(a->address));
    dexec_value_map_set(m, "rank", dexec_value_int(a->rank));
    dexec_value_map_set(m, "pid", dexec_value_int(a->pid));
    dexec_value_map_set(m, "host", dexec_value_str(a->host != NULL ? a->host : ""));
    dexec_value_map_set(m, "protocol",
                        dexec_value_int(a->protocol > 0 ? a->protocol : DEXEC_PROTOCOL_VERSION));
    dexec_value_map_set(m, "started", dexec_value_float(a->started > 0 ? a->started : wall_now()));
    dexec_value_map_set(m, "instance", dexec_value_str(a->instance));
    if (a->meta != NULL)
        dexec_value_map_set(m, "meta", dexec_value_clone(a->meta));
    s = dexec_value_to_json(m, 0);
    dexec_value_free(m);
    return s;
}

static char *dup_str(const dexec_value *m, const char *key)
{
    return strdup(dexec_value_as_str(dexec_value_map_get(m, key), ""));
}

/* Parses a stored entry into out (cleared first). */
static dexec_status entry_parse(const struct dexec_discovery *d, const char *key, const char *text,
                                size_t len, dexec_actor_info *out, char *err, size_t errlen)
{
    char jerr[256];
    dexec_value *m = dexec_value_from_json(text, len, jerr, sizeof(jerr));
    const dexec_value *meta;

    dexec_actor_info_init(out);
    if (m == NULL || m->type != DEXEC_VAL_MAP) {
        dexec_errorf(err, errlen, "registry %s: key %s does not hold a dexec entry: %s", d->url,
                     key, m == NULL ? jerr : "not a JSON object");
        dexec_value_free(m);
        return DEXEC_EPROTO;
    }
    out->name = dup_str(m, "name");
    out->address = dup_str(m, "address");
    out->host = dup_str(m, "host");
    out->instance = dup_str(m, "instance");
    out->rank = (int)dexec_value_as_int(dexec_value_map_get(m, "rank"), -1);
    out->pid = (int)dexec_value_as_int(dexec_value_map_get(m, "pid"), 0);
    out->protocol = (int)dexec_value_as_int(dexec_value_map_get(m, "protocol"), 0);
    out->started = dexec_value_as_float(dexec_value_map_get(m, "started"), 0);
    out->age_s = out->started > 0 ? wall_now() - out->started : 0;
    meta = dexec_value_map_get(m, "meta");
    if (meta != NULL && meta->type == DEXEC_VAL_MAP)
        out->meta = dexec_value_clone(meta);
    dexec_value_free(m);
    if (out->name == NULL || out->address == NULL || out->host == NULL || out->instance == NULL) {
        dexec_actor_info_clear(out);
        return DEXEC_ENOMEM;
    }
    return DEXEC_OK;
}

/* "name X is held by pid P on host H (instance I)" from the holder's entry. */
static dexec_status held_error(const struct dexec_discovery *d, const char *key, const char *name,
                               const char *text, size_t len, char *err, size_t errlen)
{
    dexec_actor_info h;

    if (entry_parse(d, key, text, len, &h, err, errlen) != DEXEC_OK) {
        dexec_errorf(err, errlen, "name %s is held in registry %s by an entry dexec cannot read",
                     name, d->url);
        return DEXEC_EINVAL;
    }
    dexec_errorf(err, errlen,
                 "name %s is held by pid %d on host %s (instance %s, address %s); stop that "
                 "worker or choose another name",
                 name, h.pid, h.host, h.instance, h.address);
    dexec_actor_info_clear(&h);
    return DEXEC_EINVAL;
}

/* ---- operations --------------------------------------------------------------- */

static dexec_status rd_open(const dexec_host *host, const char *url, dexec_discovery **out,
                            char *err, size_t errlen)
{
    const dexec_config *cfg = host != NULL ? host->config : NULL;
    const char *ns = "dexec";
    struct dexec_discovery *d;
    dexec_status st;

    d = calloc(1, sizeof(*d));
    if (d == NULL)
        return DEXEC_ENOMEM;
    d->connect_timeout = 2.0;
    d->command_timeout = 2.0;
    d->log = host != NULL ? host->log : NULL;
    if (cfg != NULL) {
        if (url == NULL || *url == '\0')
            dexec_config_get_string(cfg, "discovery.redis.url", &url);
        dexec_config_get_string(cfg, "discovery.redis.namespace", &ns);
        dexec_config_get_float(cfg, "discovery.redis.connect_timeout", &d->connect_timeout);
        dexec_config_get_float(cfg, "discovery.redis.command_timeout", &d->command_timeout);
    }
    if (url == NULL || *url == '\0')
        url = "redis://127.0.0.1:6379/0";
    snprintf(d->ns, sizeof(d->ns), "%s", ns);
    st = parse_url(d, url, err, errlen);
    if (st == DEXEC_OK)
        st = connect_fresh(d, err, errlen);
    if (st != DEXEC_OK) {
        free(d->user);
        free(d->password);
        free(d);
        return st;
    }
    pthread_mutex_init(&d->lock, NULL);
    *out = d;
    return DEXEC_OK;
}

/* Whether the holder of an entry is gone: its pid no longer exists (when it
 * registered from this host), or nothing accepts connections at its
 * address (refused, no such socket). A holder that does not answer in
 * time is taken as alive: only a certain death frees a name. 1 dead, with
 * the reason in why; 0 alive or unknown. */
static int holder_dead(const struct dexec_discovery *d, const dexec_actor_info *h, char *why,
                       size_t whylen)
{
    char me[256] = "", perr[512];
    dexec_conn *c = NULL;
    dexec_status st;

    if (gethostname(me, sizeof(me) - 1) == 0 && strcmp(me, h->host) == 0 && h->pid > 0 &&
        kill(h->pid, 0) != 0 && errno == ESRCH) {
        snprintf(why, whylen, "pid %d does not exist on this host", h->pid);
        return 1;
    }
    st = dexec_conn_connect(h->address, d->connect_timeout, &c, perr, sizeof(perr));
    dexec_conn_free(c);
    if (st == DEXEC_EIO) {
        snprintf(why, whylen, "%s", perr);
        return 1;
    }
    return 0;
}

/* SET NX; on refusal, recognise our own entry (refresh it), take over the
 * entry of a holder that is certainly dead, or name the holder. */
static dexec_status do_register(dexec_discovery *d, const dexec_actor_info *a, int ttl_s,
                                char *err, size_t errlen)
{
    char key[512], ttl[16];
    char *json;
    dexec_status st = DEXEC_OK;

    make_key(d, entry_kind(a), a->name, key, sizeof(key));
    snprintf(ttl, sizeof(ttl), "%d", ttl_s > 0 ? ttl_s : 10);
    json = entry_json(a);
    if (json == NULL)
        return DEXEC_ENOMEM;
    /* a few rounds: the holder's key may expire between our SET and GET,
     * or another newcomer may take a dead holder's entry before us */
    for (int round = 0; round < 3; round++) {
        const char *set[6] = {"SET", key, json, "EX", ttl, "NX"};
        const char *get[2] = {"GET", key};
        redisReply *r = NULL;
        dexec_actor_info h;

        st = command(d, 6, set, &r, err, errlen);
        if (st != DEXEC_OK)
            break;
        if (r->type == REDIS_REPLY_STATUS) {
            freeReplyObject(r);
            break;
        }
        freeReplyObject(r);
        st = command(d, 2, get, &r, err, errlen);
        if (st != DEXEC_OK)
            break;
        if (r->type != REDIS_REPLY_STRING) {
            freeReplyObject(r);
            st = DEXEC_EINVAL;
            dexec_errorf(err, errlen, "name %s is held by an instance that keeps changing",
                         a->name);
            continue;
        }
        if (entry_parse(d, key, r->str, r->len, &h, err, errlen) == DEXEC_OK &&
            strcmp(h.instance, a->instance) == 0) {
            const char *xx[6] = {"SET", key, json, "EX", ttl, "XX"};
            redisReply *r2 = NULL;

            dexec_actor_info_clear(&h);
            freeReplyObject(r);
            st = command(d, 6, xx, &r2, err, errlen);
            if (st == DEXEC_OK)
                freeReplyObject(r2);
            break;
        }
        if (h.instance != NULL) {
            char why[600];

            if (holder_dead(d, &h, why, sizeof(why))) {
                const char *cas[7] = {"EVAL", takeover_lua, "1", key, r->str, json, ttl};
                redisReply *r2 = NULL;
                int won;

                st = command(d, 7, cas, &r2, err, errlen);
                won = st == DEXEC_OK && r2->type == REDIS_REPLY_INTEGER && r2->integer == 1;
                if (st == DEXEC_OK)
                    freeReplyObject(r2);
                if (won && d->log != NULL)
                    d->log(DEXEC_LOG_WARN, "redis_discovery",
                           "name %s: took over the entry of pid %d on host %s (instance %s), "
                           "which is gone: %s",
                           a->name, h.pid, h.host, h.instance, why);
                dexec_actor_info_clear(&h);
                freeReplyObject(r);
                if (st != DEXEC_OK || won)
                    break;
                continue; /* changed meanwhile: look again */
            }
        }
        dexec_actor_info_clear(&h);
        st = held_error(d, key, a->name, r->str, r->len, err, errlen);
        freeReplyObject(r);
        break;
    }
    free(json);
    return st;
}

static dexec_status rd_register(dexec_discovery *d, const dexec_actor_info *a, int ttl_s,
                                char *err, size_t errlen)
{
    dexec_status st = check_entry(a, err, errlen);

    if (st != DEXEC_OK)
        return st;
    pthread_mutex_lock(&d->lock);
    st = do_register(d, a, ttl_s, err, errlen);
    pthread_mutex_unlock(&d->lock);
    return st;
}

static dexec_status rd_heartbeat(dexec_discovery *d, const dexec_actor_info *a, int ttl_s,
                                 char *err, size_t errlen)
{
    char key[512], ttl[16];
    char *json;
    redisReply *r = NULL;
    dexec_status st = check_entry(a, err, errlen);

    if (st != DEXEC_OK)
        return st;
    make_key(d, entry_kind(a), a->name, key, sizeof(key));
    snprintf(ttl, sizeof(ttl), "%d", ttl_s > 0 ? ttl_s : 10);
    json = entry_json(a);
    if (json == NULL)
        return DEXEC_ENOMEM;
    {
        const char *argv[7] = {"EVAL", heartbeat_lua, "1", key, a->instance, json, ttl};

        pthread_mutex_lock(&d->lock);
        st = command(d, 7, argv, &r, err, errlen);
        pthread_mutex_unlock(&d->lock);
    }
    if (st == DEXEC_OK) {
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
            r->element[0]->type != REDIS_REPLY_INTEGER) {
            dexec_errorf(err, errlen, "Redis at %s: unexpected reply to the heartbeat script",
                         d->url);
            st = DEXEC_EPROTO;
        } else if (r->element[0]->integer == 0) {
            if (r->elements >= 2 && r->element[1]->type == REDIS_REPLY_STRING)
                st = held_error(d, key, a->name, r->element[1]->str, r->element[1]->len, err,
                                errlen);
            else
                st = DEXEC_EINVAL;
        } else if (r->element[0]->integer == 2) {
            dexec_log(DEXEC_LOG_INFO, "redis_discovery",
                      "%s: entry had vanished from %s (expired, or Redis restarted): "
                      "registered again",
                      a->name, d->url);
        }
        freeReplyObject(r);
    }
    free(json);
    return st;
}

static dexec_status rd_resolve(dexec_discovery *d, const char *name, dexec_actor_info *out,
                               char *err, size_t errlen)
{
    char key[512];
    redisReply *r = NULL;
    dexec_status st;

    if (name == NULL || !valid_name(name)) {
        dexec_errorf(err, errlen, "bad actor name '%s': use 1 to %d characters of [A-Za-z0-9_.-]",
                     name != NULL ? name : "", NAME_MAX_LEN);
        return DEXEC_EINVAL;
    }
    make_key(d, "actor", name, key, sizeof(key));
    {
        const char *argv[2] = {"GET", key};

        pthread_mutex_lock(&d->lock);
        st = command(d, 2, argv, &r, err, errlen);
        pthread_mutex_unlock(&d->lock);
    }
    if (st != DEXEC_OK)
        return st;
    if (r->type == REDIS_REPLY_STRING) {
        st = entry_parse(d, key, r->str, r->len, out, err, errlen);
    } else {
        dexec_errorf(err, errlen, "no actor named %s in registry %s (namespace %s)", name, d->url,
                     d->ns);
        st = DEXEC_ENOTFOUND;
    }
    freeReplyObject(r);
    return st;
}

/* Copies s with the glob characters of MATCH escaped. */
static void glob_escape(const char *s, char *out, size_t len)
{
    size_t k = 0;

    for (; *s != '\0' && k + 2 < len; s++) {
        if (strchr("*?[]\\", *s) != NULL)
            out[k++] = '\\';
        out[k++] = *s;
    }
    out[k] = '\0';
}

static int by_name(const void *a, const void *b)
{
    const dexec_actor_info *x = a, *y = b;

    return strcmp(x->name, y->name);
}

static dexec_status append_entry(dexec_actor_info **v, size_t *n, size_t *cap,
                                 dexec_actor_info *e)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        dexec_actor_info *nv = realloc(*v, nc * sizeof(*nv));

        if (nv == NULL)
            return DEXEC_ENOMEM;
        *v = nv;
        *cap = nc;
    }
    (*v)[(*n)++] = *e;
    return DEXEC_OK;
}

/* SCAN the kind's keys, then GET each (an entry that expires in between is
 * skipped). Lock held. */
static dexec_status list_locked(dexec_discovery *d, const char *kind, dexec_actor_info **v,
                                size_t *n, size_t *cap, char *err, size_t errlen)
{
    char pattern[600], esc[300], cursor[32] = "0";
    dexec_status st = DEXEC_OK;

    glob_escape(d->ns, esc, sizeof(esc));
    snprintf(pattern, sizeof(pattern), "%s:%s:*", esc, kind);
    do {
        const char *scan[6] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "200"};
        redisReply *r = NULL;

        st = command(d, 6, scan, &r, err, errlen);
        if (st != DEXEC_OK)
            return st;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            dexec_errorf(err, errlen, "Redis at %s: unexpected reply to SCAN", d->url);
            return DEXEC_EPROTO;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements && st == DEXEC_OK; i++) {
            const redisReply *k = r->element[1]->element[i];
            const char *get[2] = {"GET", k->str};
            redisReply *g = NULL;
            dexec_actor_info e;
            char perr[256];

            if (k->type != REDIS_REPLY_STRING)
                continue;
            st = command(d, 2, get, &g, err, errlen);
            if (st != DEXEC_OK)
                break;
            if (g->type == REDIS_REPLY_STRING &&
                entry_parse(d, k->str, g->str, g->len, &e, perr, sizeof(perr)) == DEXEC_OK) {
                st = append_entry(v, n, cap, &e);
                if (st != DEXEC_OK)
                    dexec_actor_info_clear(&e);
            } else if (g->type == REDIS_REPLY_STRING) {
                dexec_log(DEXEC_LOG_WARN, "redis_discovery", "%s", perr);
            }
            freeReplyObject(g);
        }
        freeReplyObject(r);
    } while (st == DEXEC_OK && strcmp(cursor, "0") != 0);
    return st;
}

static dexec_status rd_list(dexec_discovery *d, const char *kind, dexec_actor_info **out,
                            size_t *n, char *err, size_t errlen)
{
    dexec_actor_info *v = NULL;
    size_t cnt = 0, cap = 0;
    dexec_status st = DEXEC_OK;

    if (kind != NULL && strcmp(kind, "actor") != 0 && strcmp(kind, "node") != 0) {
        dexec_errorf(err, errlen, "bad entry kind '%s': actor or node", kind);
        return DEXEC_EINVAL;
    }
    pthread_mutex_lock(&d->lock);
    if (kind == NULL || strcmp(kind, "actor") == 0)
        st = list_locked(d, "actor", &v, &cnt, &cap, err, errlen);
    if (st == DEXEC_OK && (kind == NULL || strcmp(kind, "node") == 0))
        st = list_locked(d, "node", &v, &cnt, &cap, err, errlen);
    pthread_mutex_unlock(&d->lock);
    if (st != DEXEC_OK) {
        for (size_t i = 0; i < cnt; i++)
            dexec_actor_info_clear(&v[i]);
        free(v);
        return st;
    }
    if (cnt > 1)
        qsort(v, cnt, sizeof(*v), by_name);
    *out = v;
    *n = cnt;
    return DEXEC_OK;
}

static dexec_status rd_deregister(dexec_discovery *d, const dexec_actor_info *a, char *err,
                                  size_t errlen)
{
    char key[512];
    redisReply *r = NULL;
    dexec_status st = check_entry(a, err, errlen);

    if (st != DEXEC_OK)
        return st;
    make_key(d, entry_kind(a), a->name, key, sizeof(key));
    {
        const char *argv[5] = {"EVAL", deregister_lua, "1", key, a->instance};

        pthread_mutex_lock(&d->lock);
        st = command(d, 5, argv, &r, err, errlen);
        pthread_mutex_unlock(&d->lock);
    }
    if (st != DEXEC_OK)
        return st;
    if (r->type == REDIS_REPLY_INTEGER && r->integer < 0)
        dexec_log(DEXEC_LOG_WARN, "redis_discovery",
                  "%s: the entry in %s belongs to another instance now: left in place", a->name,
                  d->url);
    freeReplyObject(r);
    return DEXEC_OK;
}

static void rd_close(dexec_discovery *d)
{
    if (d == NULL)
        return;
    drop_connection(d);
    pthread_mutex_destroy(&d->lock);
    free(d->user);
    free(d->password);
    free(d);
}

static const dexec_discovery_ops rd_ops = {
    .struct_size = sizeof(dexec_discovery_ops),
    .open = rd_open,
    .register_actor = rd_register,
    .heartbeat = rd_heartbeat,
    .resolve = rd_resolve,
    .list = rd_list,
    .deregister = rd_deregister,
    .close = rd_close,
};

/* The discovery.redis section of the configuration file is this plugin's:
 * the core validates it from this table, and every reader (this plugin, the
 * worker's registry client and node agent, `dexec actors`) gets the values
 * through dexec_config_get_*("discovery.redis.KEY"). */
static const dexec_setting rd_settings[] = {
    {.name = "url",
     .type = DEXEC_SETTING_STRING,
     .flags = DEXEC_SETTING_URL_PASSWORD,
     .def = "redis://127.0.0.1:6379/0",
     .prefixes = "redis://|unix:/",
     .range = "a URL redis://[:PASSWORD@]HOST[:PORT][/DB] or unix:/PATH[?db=N]",
     .doc = "the Redis server of the actor registry"},
    {.name = "namespace",
     .type = DEXEC_SETTING_STRING,
     .flags = DEXEC_SETTING_NONEMPTY | DEXEC_SETTING_NO_SPACES,
     .def = "dexec",
     .range = "non-empty, no spaces",
     .doc = "prefix of the registry keys (NAMESPACE:actor:NAME)"},
    {.name = "ttl",
     .type = DEXEC_SETTING_INT,
     .def = "10",
     .imin = 1,
     .imax = 3600,
     .doc = "seconds a registration lives without a heartbeat"},
    {.name = "connect_timeout",
     .type = DEXEC_SETTING_FLOAT,
     .flags = DEXEC_SETTING_ABOVE_MIN,
     .def = "2.0",
     .fmin = 0,
     .fmax = 86400,
     .range = "> 0, <= 86400 (seconds)",
     .doc = "deadline of connecting to Redis"},
    {.name = "command_timeout",
     .type = DEXEC_SETTING_FLOAT,
     .flags = DEXEC_SETTING_ABOVE_MIN,
     .def = "2.0",
     .fmin = 0,
     .fmax = 86400,
     .range = "> 0, <= 86400 (seconds)",
     .doc = "deadline of one Redis command"},
};

static const dexec_settings rd_settings_table = {
    DEXEC_SETTINGS_INIT("discovery.redis", rd_settings)};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_DISCOVERY, "redis_discovery", PACKAGE_VERSION,
                           "named actors and node agents registered in Redis, with a TTL",
                           &rd_ops),
    .settings = &rd_settings_table};
