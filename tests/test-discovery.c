/*
 * test-discovery.c - the redis_discovery plugin and dexec-worker --name
 * against a real redis-server: registration, lookup, listing, collisions,
 * compare-and-delete, expiry of a killed worker, Redis restarts, AUTH and
 * SELECT after a reconnect, and clear errors within the configured
 * deadlines when Redis is down or silent.
 */
#include "config.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dexec/plugin.h>
#include <dexec/rpc.h>

#include "redis_helper.h"

static test_redis redis;
static dexec_config *cfg;
static dexec_host host;
static dexec_plugin_handle *plugin;
static const dexec_discovery_ops *ops;

static void setup(void)
{
    char text[512], err[1024], path[600];
    FILE *f;

    memset(&redis, 0, sizeof(redis));
    ck_assert_int_eq(test_redis_start(&redis, NULL), 0);
    snprintf(text, sizeof(text),
             "discovery = { redis = { url = \"%s\"; namespace = \"t\"; ttl = 3;"
             " connect_timeout = 1.0; command_timeout = 1.0; }; };\n",
             redis.url);
    /* the workers read the namespace and timeouts from $DEXEC_CONFIG */
    snprintf(path, sizeof(path), "%s/discovery-%d.conf", test_tmpdir(), (int)getpid());
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    setenv("DEXEC_CONFIG", path, 1);
    ck_assert_msg(dexec_config_load(path, &cfg, err, sizeof(err)) == DEXEC_OK, "%s", err);
    host.struct_size = sizeof(host);
    host.config = cfg;
    host.log = dexec_log;
    ck_assert_msg(dexec_plugin_load("redis_discovery", DEXEC_PLUGIN_DISCOVERY, cfg, &plugin, err,
                                    sizeof(err)) == DEXEC_OK,
                  "%s", err);
    ops = dexec_plugin_descriptor(plugin)->ops;
}

static void teardown(void)
{
    dexec_plugin_release(plugin);
    dexec_config_free(cfg);
    test_redis_stop(&redis);
}

static dexec_discovery *open_default(void)
{
    dexec_discovery *d = NULL;
    char err[1024];

    ck_assert_msg(ops->open(&host, NULL, &d, err, sizeof(err)) == DEXEC_OK, "%s", err);
    return d;
}

/* A unix socket that accepts connections, as a live worker's does: a
 * holder whose address refuses is taken for dead (see dead_holder_...). */
static char live_addr[400];
static int live_fd = -1;

static void listen_live(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    snprintf(live_addr, sizeof(live_addr), "unix:%s/live-%d.sock", test_tmpdir(), (int)getpid());
    ck_assert_uint_lt(strlen(live_addr + 5), sizeof(sa.sun_path));
    memcpy(sa.sun_path, live_addr + 5, strlen(live_addr + 5) + 1);
    unlink(sa.sun_path);
    live_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(live_fd, 0);
    ck_assert_int_eq(bind(live_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(live_fd, 16), 0);
}

static dexec_actor_info entry(const char *name, const char *instance, int pid)
{
    dexec_actor_info a;

    dexec_actor_info_init(&a);
    if (live_fd < 0)
        listen_live();
    a.name = (char *)name;
    a.address = live_addr;
    a.host = "hostA";
    a.instance = (char *)instance;
    a.rank = 1;
    a.pid = pid;
    a.protocol = DEXEC_PROTOCOL_VERSION;
    a.started = 1700000000.0;
    return a;
}

START_TEST(register_resolve_list_deregister)
{
    dexec_discovery *d = open_default();
    dexec_actor_info a = entry("w0", "inst-1", 123), b = entry("w0", "inst-2", 456), got;
    dexec_actor_info node = entry("n0", "inst-3", 789), *all = NULL;
    size_t n = 0;
    char err[1024], reply[256], expect[1024];

    ck_assert_int_eq(ops->register_actor(d, &a, 3, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(ops->resolve(d, "w0", &got, err, sizeof(err)), DEXEC_OK);
    ck_assert_str_eq(got.name, "w0");
    ck_assert_str_eq(got.address, live_addr);
    ck_assert_str_eq(got.host, "hostA");
    ck_assert_str_eq(got.instance, "inst-1");
    ck_assert_int_eq(got.rank, 1);
    ck_assert_int_eq(got.pid, 123);
    ck_assert_int_eq(got.protocol, DEXEC_PROTOCOL_VERSION);
    ck_assert(got.started == 1700000000.0);
    ck_assert(got.age_s > 0);
    /* filled by the plugin, initialised by it: the caller sees its size */
    ck_assert_uint_eq(got.struct_size, DEXEC_ACTOR_INFO_SIZE);
    dexec_actor_info_clear(&got);
    ck_assert_uint_eq(got.struct_size, DEXEC_ACTOR_INFO_SIZE);
    ck_assert_ptr_null(got.name);

    /* an entry the caller never initialised is refused, not read */
    b.struct_size = 0;
    ck_assert_int_eq(ops->register_actor(d, &b, 3, err, sizeof(err)), DEXEC_EINVAL);
    snprintf(expect, sizeof(expect),
        "dexec_actor_info.struct_size is 0, below the smallest dexec_actor_info this dexec reads "
        "(%zu bytes, ABI 1.1): initialise it with dexec_actor_info_init()",
        (size_t)DEXEC_ACTOR_INFO_SIZE_1_1);
    ck_assert_str_eq(err, expect);
    b.struct_size = (uint32_t)DEXEC_ACTOR_INFO_SIZE_1_1;

    /* the key carries the TTL */
    ck_assert_int_eq(test_redis_cmd(&redis, "TTL t:actor:w0", reply, sizeof(reply)), 0);
    ck_assert_msg(strcmp(reply, ":3") == 0 || strcmp(reply, ":2") == 0, "TTL %s", reply);

    /* registering again as the same instance is a refresh, not a collision */
    ck_assert_int_eq(ops->register_actor(d, &a, 3, err, sizeof(err)), DEXEC_OK);
    /* another instance is refused and told who holds the name */
    ck_assert_int_eq(ops->register_actor(d, &b, 3, err, sizeof(err)), DEXEC_EINVAL);
    snprintf(expect, sizeof(expect),
             "name w0 is held by pid 123 on host hostA (instance inst-1, address %s); stop that "
             "worker or choose another name",
             live_addr);
    ck_assert_str_eq(err, expect);
    /* its heartbeat is refused too: it must not steal the entry */
    ck_assert_int_eq(ops->heartbeat(d, &b, 3, err, sizeof(err)), DEXEC_EINVAL);

    node.meta = dexec_value_map();
    dexec_value_map_set(node.meta, "kind", dexec_value_str("node"));
    dexec_value_map_set(node.meta, "cpus", dexec_value_int(8));
    ck_assert_int_eq(ops->register_actor(d, &node, 3, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(test_redis_cmd(&redis, "EXISTS t:node:n0", reply, sizeof(reply)), 0);
    ck_assert_str_eq(reply, ":1");

    ck_assert_int_eq(ops->list(d, "actor", &all, &n, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq((int)n, 1);
    ck_assert_str_eq(all[0].name, "w0");
    dexec_actor_info_clear(&all[0]);
    free(all);
    ck_assert_int_eq(ops->list(d, "node", &all, &n, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq((int)n, 1);
    ck_assert_str_eq(all[0].name, "n0");
    ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(all[0].meta, "cpus"), 0), 8);
    dexec_actor_info_clear(&all[0]);
    free(all);
    ck_assert_int_eq(ops->list(d, NULL, &all, &n, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq((int)n, 2);
    for (size_t i = 0; i < n; i++)
        dexec_actor_info_clear(&all[i]);
    free(all);
    ck_assert_int_eq(ops->list(d, "pods", &all, &n, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_str_eq(err, "bad entry kind 'pods': actor or node");

    /* compare-and-delete: another instance's deregister leaves our entry */
    ck_assert_int_eq(ops->deregister(d, &b, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(ops->resolve(d, "w0", &got, err, sizeof(err)), DEXEC_OK);
    dexec_actor_info_clear(&got);
    ck_assert_int_eq(ops->deregister(d, &a, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(ops->resolve(d, "w0", &got, err, sizeof(err)), DEXEC_ENOTFOUND);
    snprintf(expect, sizeof(expect), "no actor named w0 in registry %s (namespace t)", redis.url);
    ck_assert_str_eq(err, expect);
    ck_assert_int_eq(ops->deregister(d, &node, err, sizeof(err)), DEXEC_OK);
    dexec_value_free(node.meta);

    ck_assert_int_eq(ops->resolve(d, "a:b", &got, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_str_eq(err, "bad actor name 'a:b': use 1 to 128 characters of [A-Za-z0-9_.-]");
    ops->close(d);
}
END_TEST

/* A pid that certainly does not exist: a child that was reaped. */
static int dead_pid(void)
{
    pid_t p = fork();

    if (p == 0)
        _exit(0);
    ck_assert_int_gt(p, 0);
    waitpid(p, NULL, 0);
    return (int)p;
}

/* A crashed holder's entry outlives it until its TTL runs out; a newcomer
 * that finds the holder certainly dead (nothing at its address, or its pid
 * gone on this host) takes the name over at once, by compare-and-swap, so
 * that of two newcomers only one wins. A holder that answers keeps it. */
START_TEST(dead_holder_is_taken_over)
{
    dexec_discovery *d = open_default();
    dexec_actor_info dead = entry("w1", "inst-dead", 123), b = entry("w1", "inst-b", 456);
    dexec_actor_info c = entry("w1", "inst-c", 789), here = entry("w2", "inst-gone", 0);
    dexec_actor_info d2 = entry("w2", "inst-new", 42), got;
    char err[1024], gone[400], me[256] = "", reply[64];

    snprintf(gone, sizeof(gone), "unix:%s/nobody-%d.sock", test_tmpdir(), (int)getpid());
    dead.address = gone;
    ck_assert_int_eq(ops->register_actor(d, &dead, 60, err, sizeof(err)), DEXEC_OK);
    ck_assert_msg(ops->register_actor(d, &b, 60, err, sizeof(err)) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(ops->resolve(d, "w1", &got, err, sizeof(err)), DEXEC_OK);
    ck_assert_str_eq(got.instance, "inst-b");
    dexec_actor_info_clear(&got);
    /* the new entry has the newcomer's TTL */
    ck_assert_int_eq(test_redis_cmd(&redis, "TTL t:actor:w1", reply, sizeof(reply)), 0);
    ck_assert_msg(strcmp(reply, ":60") == 0 || strcmp(reply, ":59") == 0, "TTL %s", reply);
    /* b answers at its address: the next newcomer is refused */
    ck_assert_int_eq(ops->register_actor(d, &c, 60, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_msg(strstr(err, "name w1 is held by pid 456 on host hostA (instance inst-b") == err,
                  "%s", err);

    /* same host, pid gone: dead even though something listens at the address */
    ck_assert_int_eq(gethostname(me, sizeof(me) - 1), 0);
    here.host = me;
    here.pid = dead_pid();
    ck_assert_int_eq(ops->register_actor(d, &here, 60, err, sizeof(err)), DEXEC_OK);
    ck_assert_msg(ops->register_actor(d, &d2, 60, err, sizeof(err)) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(ops->resolve(d, "w2", &got, err, sizeof(err)), DEXEC_OK);
    ck_assert_str_eq(got.instance, "inst-new");
    dexec_actor_info_clear(&got);
    ops->close(d);
}
END_TEST

START_TEST(heartbeat_reregisters_vanished_key)
{
    dexec_discovery *d = open_default();
    dexec_actor_info a = entry("w1", "inst-1", 10), got;
    char err[1024], reply[256];

    ck_assert_int_eq(ops->register_actor(d, &a, 30, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(test_redis_cmd(&redis, "EXPIRE t:actor:w1 2", reply, sizeof(reply)), 0);
    ck_assert_int_eq(ops->heartbeat(d, &a, 30, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(test_redis_cmd(&redis, "TTL t:actor:w1", reply, sizeof(reply)), 0);
    ck_assert_msg(strcmp(reply, ":30") == 0 || strcmp(reply, ":29") == 0, "TTL %s", reply);
    ck_assert_int_eq(test_redis_cmd(&redis, "FLUSHALL", reply, sizeof(reply)), 0);
    ck_assert_int_eq(ops->resolve(d, "w1", &got, err, sizeof(err)), DEXEC_ENOTFOUND);
    ck_assert_int_eq(ops->heartbeat(d, &a, 30, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(ops->resolve(d, "w1", &got, err, sizeof(err)), DEXEC_OK);
    ck_assert_str_eq(got.instance, "inst-1");
    dexec_actor_info_clear(&got);

    /* Redis restarted (empty): the handle reconnects and the heartbeat
     * writes the entry again */
    ck_assert_int_eq(test_redis_restart(&redis), 0);
    ck_assert_int_eq(ops->heartbeat(d, &a, 30, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(ops->resolve(d, "w1", &got, err, sizeof(err)), DEXEC_OK);
    dexec_actor_info_clear(&got);
    ops->close(d);
}
END_TEST

START_TEST(auth_and_select_survive_reconnect)
{
    dexec_discovery *d = NULL;
    dexec_actor_info a = entry("w2", "inst-1", 10), got;
    char url[600], err[1024], reply[256];

    test_redis_stop(&redis);
    ck_assert_int_eq(test_redis_start(&redis, "s3cret"), 0);
    snprintf(url, sizeof(url), "redis://:wrong@127.0.0.1:%d/3", redis.port);
    ck_assert_int_eq(ops->open(&host, url, &d, err, sizeof(err)), DEXEC_EAUTH);
    ck_assert_msg(strstr(err, "refused AUTH") != NULL, "%s", err);
    /* the message never shows the password */
    ck_assert_ptr_null(strstr(err, "wrong"));

    snprintf(url, sizeof(url), "redis://:s3cret@127.0.0.1:%d/3", redis.port);
    ck_assert_msg(ops->open(&host, url, &d, err, sizeof(err)) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(ops->register_actor(d, &a, 30, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(test_redis_cmd(&redis, "SELECT 3", reply, sizeof(reply)), 0);
    /* drop every client connection: the next command reconnects and must
     * authenticate and select db 3 again to find the entry */
    ck_assert_int_eq(test_redis_cmd(&redis, "CLIENT KILL TYPE normal", reply, sizeof(reply)), 0);
    ck_assert_msg(ops->resolve(d, "w2", &got, err, sizeof(err)) == DEXEC_OK, "%s", err);
    dexec_actor_info_clear(&got);
    ops->close(d);

    /* the same server through its unix socket, db in the query */
    snprintf(url, sizeof(url), "unix:%s?db=3&password=s3cret", redis.unix_path);
    ck_assert_msg(ops->open(&host, url, &d, err, sizeof(err)) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(ops->resolve(d, "w2", &got, err, sizeof(err)), DEXEC_OK);
    dexec_actor_info_clear(&got);
    ops->close(d);
}
END_TEST

START_TEST(bad_url)
{
    dexec_discovery *d = NULL;
    char err[1024];

    ck_assert_int_eq(ops->open(&host, "http://x", &d, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_str_eq(err, "bad Redis URL 'http://x': expected redis://[:PASSWORD@]HOST[:PORT][/DB] "
                          "or unix:/PATH[?db=N]");
    ck_assert_int_eq(ops->open(&host, "redis://h:99999", &d, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_int_eq(ops->open(&host, "redis://h/x", &d, err, sizeof(err)), DEXEC_EINVAL);
}
END_TEST

START_TEST(redis_down_fails_fast)
{
    dexec_discovery *d = NULL;
    char url[128], err[1024], expect[256];
    double t0;
    int port = redis.port;

    test_redis_stop(&redis);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", port);
    t0 = test_now();
    ck_assert_int_eq(ops->open(&host, url, &d, err, sizeof(err)), DEXEC_EIO);
    ck_assert(test_now() - t0 < 1.5);
    snprintf(expect, sizeof(expect), "cannot reach Redis at %s: Connection refused", url);
    ck_assert_str_eq(err, expect);
}
END_TEST

/* A server that accepts connections and never answers: every call must
 * give up after the command timeout instead of hanging. */
START_TEST(silent_redis_times_out)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    dexec_discovery *d = NULL;
    dexec_actor_info got;
    char url[128], err[1024], expect[256];
    double t0;

    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(fd, 8), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", ntohs(sa.sin_port));
    ck_assert_int_eq(ops->open(&host, url, &d, err, sizeof(err)), DEXEC_OK);
    t0 = test_now();
    ck_assert_int_eq(ops->resolve(d, "w0", &got, err, sizeof(err)), DEXEC_ETIMEDOUT);
    ck_assert_msg(test_now() - t0 < 1.0 + TEST_DEADLINE_MARGIN, "took %.2f s", test_now() - t0);
    snprintf(expect, sizeof(expect),
             "cannot reach Redis at %s: no answer within 1 s (discovery.redis.command_timeout)",
             url);
    ck_assert_str_eq(err, expect);
    ops->close(d);

    /* with a db to SELECT, open itself waits on the server */
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/2", ntohs(sa.sin_port));
    t0 = test_now();
    ck_assert_int_eq(ops->open(&host, url, &d, err, sizeof(err)), DEXEC_ETIMEDOUT);
    ck_assert_msg(test_now() - t0 < 1.0 + TEST_DEADLINE_MARGIN, "took %.2f s", test_now() - t0);
    close(fd);
}
END_TEST

/* ---- dexec-worker --name ------------------------------------------------------- */

static void worker_args(const char **args, const char *sock, const char *name, const char *rank,
                        const char *ttl)
{
    int i = 0;

    args[i++] = "--listen";
    args[i++] = sock;
    args[i++] = "--rank";
    args[i++] = rank;
    args[i++] = "--device";
    args[i++] = "cpu";
    args[i++] = "--name";
    args[i++] = name;
    args[i++] = "--registry";
    args[i++] = redis.url;
    args[i++] = "--ttl";
    args[i++] = ttl;
    args[i] = NULL;
}

static int registered(dexec_discovery *d, const char *name, dexec_actor_info *out)
{
    char err[1024];
    dexec_actor_info tmp;

    if (out == NULL)
        out = &tmp;
    if (ops->resolve(d, name, out, err, sizeof(err)) != DEXEC_OK)
        return 0;
    if (out == &tmp)
        dexec_actor_info_clear(&tmp);
    return 1;
}

START_TEST(worker_registers_and_deregisters)
{
    dexec_discovery *d = open_default();
    const char *args[16];
    char sock[400], sock2[400];
    test_worker w, w2;
    dexec_actor_info a;
    int st;

    snprintf(sock, sizeof(sock), "unix:%s/reg-a.sock", test_tmpdir());
    snprintf(sock2, sizeof(sock2), "unix:%s/reg-b.sock", test_tmpdir());
    worker_args(args, sock, "diffusion_worker_0", "0", "3");
    ck_assert_int_eq(test_worker_start(&w, args, 30), 0);
    ck_assert(registered(d, "diffusion_worker_0", &a));
    ck_assert_str_eq(a.address, sock);
    ck_assert_int_eq(a.pid, (int)w.pid);
    ck_assert_int_eq(a.rank, 0);
    ck_assert_str_eq(dexec_value_as_str(dexec_value_map_get(a.meta, "model"), ""), "fashion-dit");
    dexec_actor_info_clear(&a);

    /* a second worker under the same name is refused and exits 1 */
    worker_args(args, sock2, "diffusion_worker_0", "1", "3");
    ck_assert_int_eq(test_worker_start(&w2, args, 30), 1);
    ck_assert_msg(strstr(test_worker_stderr(&w2), "dexec-worker: name diffusion_worker_0 is held "
                                                  "by pid ") != NULL,
                  "%s", test_worker_stderr(&w2));
    ck_assert(access(sock2 + 5, F_OK) != 0); /* its socket file is gone */
    ck_assert(registered(d, "diffusion_worker_0", NULL));

    /* SIGTERM: a clean exit deletes the entry at once */
    kill(w.pid, SIGTERM);
    st = test_worker_wait(&w, 10);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ck_assert(!registered(d, "diffusion_worker_0", NULL));
    ops->close(d);
}
END_TEST

/* dexec-worker --name after the previous holder was SIGKILLed, long
 * before its TTL (60 s) runs out: the newcomer takes the name over (so a
 * systemd restart of a crashed worker succeeds) and logs it. */
START_TEST(killed_worker_name_taken_over)
{
    dexec_discovery *d = open_default();
    const char *args[16];
    char sock[400], sock2[400];
    test_worker w, w2;
    dexec_actor_info a;

    snprintf(sock, sizeof(sock), "unix:%s/crash-a.sock", test_tmpdir());
    snprintf(sock2, sizeof(sock2), "unix:%s/crash-b.sock", test_tmpdir());
    worker_args(args, sock, "phoenix", "0", "60");
    ck_assert_int_eq(test_worker_start(&w, args, 30), 0);
    kill(w.pid, SIGKILL);
    test_worker_wait(&w, 5);
    ck_assert(registered(d, "phoenix", NULL)); /* the entry outlives it */
    worker_args(args, sock2, "phoenix", "0", "60");
    ck_assert_msg(test_worker_start(&w2, args, 30) == 0, "%s", test_worker_stderr(&w2));
    ck_assert(registered(d, "phoenix", &a));
    ck_assert_str_eq(a.address, sock2);
    ck_assert_int_eq(a.pid, (int)w2.pid);
    dexec_actor_info_clear(&a);
    ck_assert_msg(strstr(test_worker_stderr(&w2), "name phoenix: took over the entry of pid ") !=
                      NULL,
                  "%s", test_worker_stderr(&w2));
    kill(w2.pid, SIGTERM);
    test_worker_wait(&w2, 10);
    ops->close(d);
}
END_TEST

START_TEST(killed_worker_expires_within_ttl)
{
    dexec_discovery *d = open_default();
    const char *args[16];
    char sock[400];
    test_worker w;
    double t0;

    snprintf(sock, sizeof(sock), "unix:%s/kill.sock", test_tmpdir());
    worker_args(args, sock, "victim", "0", "2");
    ck_assert_int_eq(test_worker_start(&w, args, 30), 0);
    /* heartbeats keep it alive past the TTL */
    usleep(3000000);
    ck_assert(registered(d, "victim", NULL));
    kill(w.pid, SIGKILL);
    t0 = test_now();
    test_worker_wait(&w, 5);
    while (registered(d, "victim", NULL) && test_now() - t0 < 5)
        usleep(50000);
    ck_assert_msg(test_now() - t0 <= 2 + 1, "entry outlived the TTL: %.2f s", test_now() - t0);
    ops->close(d);
}
END_TEST

START_TEST(worker_reregisters_after_redis_restart)
{
    dexec_discovery *d;
    const char *args[16];
    char sock[400];
    test_worker w;
    double t0;

    snprintf(sock, sizeof(sock), "unix:%s/restart.sock", test_tmpdir());
    worker_args(args, sock, "phoenix", "0", "3");
    ck_assert_int_eq(test_worker_start(&w, args, 30), 0);
    ck_assert_int_eq(test_redis_restart(&redis), 0);
    d = open_default();
    ck_assert(!registered(d, "phoenix", NULL));
    /* one heartbeat period is ttl/3 = 1 s; allow the reconnect and a loaded machine */
    t0 = test_now();
    while (!registered(d, "phoenix", NULL) && test_now() - t0 < 5)
        usleep(50000);
    ck_assert_msg(test_now() - t0 <= 1.0 + 1.0, "back after %.2f s", test_now() - t0);
    ck_assert(test_worker_alive(&w));
    test_worker_stop(&w);
    ck_assert(!registered(d, "phoenix", NULL));
    ops->close(d);
}
END_TEST

START_TEST(worker_refuses_unreachable_registry)
{
    const char *args[16];
    char sock[400];
    test_worker w;
    double t0;

    test_redis_stop(&redis);
    snprintf(sock, sizeof(sock), "unix:%s/down.sock", test_tmpdir());
    worker_args(args, sock, "lonely", "0", "3");
    t0 = test_now();
    ck_assert_int_eq(test_worker_start(&w, args, 30), 1);
    /* a refused connection fails at once; connect_timeout (1 s here) bounds it */
    ck_assert_msg(test_now() - t0 < 1.0 + TEST_START_MARGIN, "took %.2f s", test_now() - t0);
    ck_assert_msg(strstr(test_worker_stderr(&w), "cannot reach Redis at ") != NULL, "%s",
                  test_worker_stderr(&w));
}
END_TEST

/* dexec actors: the listing with a live ping, and a dead entry */
START_TEST(cli_lists_actors)
{
    const char *args[16], *cli = getenv("DEXEC_CLI");
    char sock[400], sock2[400], cmd[1200], out[8192];
    test_worker w, w2;
    FILE *p;
    size_t n;
    int st;

    ck_assert_ptr_nonnull(cli);
    snprintf(sock, sizeof(sock), "unix:%s/cli-a.sock", test_tmpdir());
    snprintf(sock2, sizeof(sock2), "unix:%s/cli-b.sock", test_tmpdir());
    worker_args(args, sock, "cli_w0", "0", "30");
    ck_assert_int_eq(test_worker_start(&w, args, 30), 0);
    worker_args(args, sock2, "cli_w1", "1", "30");
    ck_assert_int_eq(test_worker_start(&w2, args, 30), 0);
    snprintf(cmd, sizeof(cmd), "'%s' actors --registry %s --timeout 2 2>&1", cli, redis.url);

    p = popen(cmd, "r");
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    st = pclose(p);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", out);
    ck_assert_msg(strstr(out, "NAME ") == out, "%s", out);
    ck_assert_msg(strstr(out, "cli_w0 ") != NULL && strstr(out, sock) != NULL, "%s", out);
    ck_assert_msg(strstr(out, " ok ") != NULL && strstr(out, " ms\n") != NULL, "%s", out);

    /* SIGKILL leaves the entry until its TTL: shown as unreachable, exit 1 */
    kill(w2.pid, SIGKILL);
    test_worker_wait(&w2, 5);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    st = pclose(p);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s", out);
    ck_assert_msg(strstr(out, "unreachable: ") != NULL, "%s", out);

    /* a password in the registry URL is never printed, even when it is refused */
    snprintf(cmd, sizeof(cmd), "'%s' actors --registry redis://:hunter2@127.0.0.1:%d/0 2>&1",
             cli, redis.port);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    st = pclose(p);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s", out);
    ck_assert_msg(strstr(out, "hunter2") == NULL, "the password was printed: %s", out);
    ck_assert_msg(strstr(out, "redis://:***@127.0.0.1:") != NULL, "%s", out);
    test_worker_stop(&w);
}
END_TEST

static Suite *discovery_suite(void)
{
    Suite *s = suite_create("discovery");
    TCase *t = tcase_create("plugin");
    TCase *wk = tcase_create("worker");

    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, register_resolve_list_deregister);
    tcase_add_test(t, dead_holder_is_taken_over);
    tcase_add_test(t, heartbeat_reregisters_vanished_key);
    tcase_add_test(t, auth_and_select_survive_reconnect);
    tcase_add_test(t, bad_url);
    tcase_add_test(t, redis_down_fails_fast);
    tcase_add_test(t, silent_redis_times_out);
    tcase_set_timeout(t, 60);
    suite_add_tcase(s, t);

    tcase_add_checked_fixture(wk, setup, teardown);
    tcase_add_test(wk, worker_registers_and_deregisters);
    tcase_add_test(wk, killed_worker_name_taken_over);
    tcase_add_test(wk, killed_worker_expires_within_ttl);
    tcase_add_test(wk, worker_reregisters_after_redis_restart);
    tcase_add_test(wk, worker_refuses_unreachable_registry);
    tcase_add_test(wk, cli_lists_actors);
    tcase_set_timeout(wk, 90);
    suite_add_tcase(s, wk);
    return s;
}

int main(void)
{
    const char *skip = test_redis_skip_reason();
    SRunner *sr;
    int failed;

    if (skip != NULL) {
        printf("SKIP: %s\n", skip);
        return 77;
    }
    sr = srunner_create(discovery_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
