/* test-loader.c - the plugin loader: finding plugins by name and path, the
 * search order, and every refusal with its exact code and message. Uses
 * the test-only plugins built in tests/plugins/. */
#include "config.h"

#include <check.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dexec/device.h>
#include <dexec/discovery.h>
#include <dexec/plugin.h>

#include "paths.h"

/* snprintf that fails the test instead of truncating. */
#define fmt(buf, size, ...) ck_assert_int_lt(snprintf(buf, size, __VA_ARGS__), (int)(size))

static char plugdir[PATH_MAX];
static char tmpdir[PATH_MAX];
static char err[2048];

static void setup(void)
{
    const char *b = getenv("DEXEC_TEST_BUILDDIR");

    fmt(plugdir, sizeof(plugdir), "%s/plugins/.libs", b != NULL ? b : ".");
    setenv("DEXEC_PLUGIN_PATH", plugdir, 1);
    unsetenv("DEXEC_PLUGIN_UNLOAD");
    fmt(tmpdir, sizeof(tmpdir), "/tmp/dexec-test-loader-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    err[0] = '\0';
}

static void teardown(void)
{
    char cmd[PATH_MAX + 16];

    fmt(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static void plugin_path(char *buf, size_t size, const char *dir, const char *name)
{
    fmt(buf, size, "%s/dexec_%s.so", dir, name);
}

/* Copies a file (not a link: each copy must be a distinct object). */
static void copy_file(const char *from, const char *to)
{
    char buf[65536];
    ssize_t n;
    int in = open(from, O_RDONLY | O_CLOEXEC), out;

    ck_assert_msg(in >= 0, "cannot open %s", from);
    out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    ck_assert_msg(out >= 0, "cannot create %s", to);
    while ((n = read(in, buf, sizeof(buf))) > 0)
        ck_assert_int_eq(write(out, buf, (size_t)n), n);
    ck_assert_int_eq(n, 0);
    close(in);
    close(out);
}

/* Loads by name or path and expects a refusal with code and exact message. */
static void expect_refusal(const char *what, dexec_plugin_kind kind, dexec_status code,
                           const char *msg)
{
    dexec_plugin_handle *p = (dexec_plugin_handle *)&p;

    ck_assert_int_eq(dexec_plugin_load(what, kind, NULL, &p, err, sizeof(err)), code);
    ck_assert_ptr_null(p);
    ck_assert_str_eq(err, msg);
}

START_TEST(load_by_name)
{
    char want[PATH_MAX];
    dexec_plugin_handle *p = NULL;
    const dexec_plugin_desc *d;

    ck_assert_int_eq(dexec_plugin_load("testgood", DEXEC_PLUGIN_EXECUTOR, NULL, &p, err,
                                       sizeof(err)),
                     DEXEC_OK);
    d = dexec_plugin_descriptor(p);
    ck_assert_str_eq(d->name, "testgood");
    ck_assert_str_eq(d->version, "1.2.3");
    ck_assert_uint_eq(d->kind, DEXEC_PLUGIN_EXECUTOR);
    plugin_path(want, sizeof(want), plugdir, "testgood");
    ck_assert_str_eq(dexec_plugin_file(p), want);
    dexec_plugin_release(p);
}
END_TEST

START_TEST(load_by_path)
{
    char path[PATH_MAX];
    dexec_plugin_handle *p = NULL, *q = NULL;

    plugin_path(path, sizeof(path), plugdir, "testgood");
    /* An empty search path proves the path is not searched for. */
    setenv("DEXEC_PLUGIN_PATH", tmpdir, 1);
    ck_assert_int_eq(dexec_plugin_load(path, DEXEC_PLUGIN_EXECUTOR, NULL, &p, err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_str_eq(dexec_plugin_file(p), path);
    ck_assert_str_eq(dexec_plugin_descriptor(p)->name, "testgood");
    /* Loading the same file again reuses the open object. */
    ck_assert_int_eq(dexec_plugin_load(path, DEXEC_PLUGIN_EXECUTOR, NULL, &q, err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_ptr_eq(dexec_plugin_descriptor(p), dexec_plugin_descriptor(q));
    dexec_plugin_release(p);
    dexec_plugin_release(q);
}
END_TEST

START_TEST(discovery_kind)
{
    char path[PATH_MAX], msg[PATH_MAX + 512];
    dexec_plugin_handle *p = NULL;

    ck_assert_int_eq(dexec_plugin_load("testdisc", DEXEC_PLUGIN_DISCOVERY, NULL, &p, err,
                                       sizeof(err)),
                     DEXEC_OK);
    ck_assert_uint_eq(dexec_plugin_descriptor(p)->kind, DEXEC_PLUGIN_DISCOVERY);
    dexec_plugin_release(p);
    /* Kind 0 takes either kind, as "dexec plugins" needs. */
    ck_assert_int_eq(dexec_plugin_load("testdisc", 0, NULL, &p, err, sizeof(err)), DEXEC_OK);
    dexec_plugin_release(p);

    plugin_path(path, sizeof(path), plugdir, "testdisc");
    fmt(msg, sizeof(msg), "plugin %s is a discovery plugin, not an executor plugin: a discovery plugin is named by external.discovery (or, if this is the plugin you meant, set its kind in the descriptor to DEXEC_PLUGIN_EXECUTOR)",
        path);
    expect_refusal("testdisc", DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN, msg);
    plugin_path(path, sizeof(path), plugdir, "testgood");
    fmt(msg, sizeof(msg), "plugin %s is an executor plugin, not a discovery plugin: an executor plugin is named by distributed_executor_backend (or, if this is the plugin you meant, set its kind in the descriptor to DEXEC_PLUGIN_DISCOVERY)",
        path);
    expect_refusal(path, DEXEC_PLUGIN_DISCOVERY, DEXEC_EPLUGIN, msg);
}
END_TEST

/* A device plugin (an op backend, <dexec/device.h>) loads as such and only
 * as such; its probe is callable straight from the descriptor. */
START_TEST(device_kind)
{
    char path[PATH_MAX], msg[PATH_MAX + 512], reason[128];
    const dexec_device_ops *ops;
    dexec_device *dev = (dexec_device *)&dev;
    dexec_plugin_handle *p = NULL;

    ck_assert_int_eq(dexec_plugin_load("testdevice", DEXEC_PLUGIN_DEVICE, NULL, &p, err,
                                       sizeof(err)),
                     DEXEC_OK);
    ck_assert_uint_eq(dexec_plugin_descriptor(p)->kind, DEXEC_PLUGIN_DEVICE);
    ops = dexec_plugin_descriptor(p)->ops;
    ck_assert_int_eq(ops->probe(reason, sizeof(reason)), 0);
    ck_assert_str_eq(reason, "testdevice has no hardware");
    ck_assert_int_eq(ops->open(0, &dev, err, sizeof(err)), DEXEC_ENOTSUP);
    ck_assert_ptr_null(dev);
    dexec_plugin_release(p);

    plugin_path(path, sizeof(path), plugdir, "testdevice");
    fmt(msg, sizeof(msg), "plugin %s is a device plugin, not an executor plugin: a device plugin is named by device (or, if this is the plugin you meant, set its kind in the descriptor to DEXEC_PLUGIN_EXECUTOR)",
        path);
    expect_refusal("testdevice", DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN, msg);
    plugin_path(path, sizeof(path), plugdir, "testdisc");
    fmt(msg, sizeof(msg), "plugin %s is a discovery plugin, not a device plugin: a discovery plugin is named by external.discovery (or, if this is the plugin you meant, set its kind in the descriptor to DEXEC_PLUGIN_DEVICE)",
        path);
    expect_refusal("testdisc", DEXEC_PLUGIN_DEVICE, DEXEC_EPLUGIN, msg);
}
END_TEST

START_TEST(abi_major_mismatch)
{
    char path[PATH_MAX], msg[PATH_MAX + 512];

    plugin_path(path, sizeof(path), plugdir, "testabi2");
    /* testabi2 keeps this build's minor version */
    fmt(msg, sizeof(msg),
             "plugin %s: ABI 2.%d, this dexec speaks 1.%d: rebuild the plugin against dexec 1",
             path, DEXEC_ABI_MINOR, DEXEC_ABI_MINOR);
    unsetenv("DEXEC_TESTBAD_LOADED");
    expect_refusal("testabi2", DEXEC_PLUGIN_EXECUTOR, DEXEC_EABI, msg);
    /* refused from the file: its constructor never ran */
    ck_assert_ptr_null(getenv("DEXEC_TESTBAD_LOADED"));
}
END_TEST

/* The same holds for a plugin of the wrong kind (testbadops is an
 * executor, asked for as a discovery plugin); the same plugin asked for
 * as an executor is opened, and refused for its NULL op afterwards. */
START_TEST(wrong_kind_not_run)
{
    dexec_plugin_handle *p = NULL;

    unsetenv("DEXEC_TESTBAD_LOADED");
    ck_assert_int_eq(dexec_plugin_load("testbadops", DEXEC_PLUGIN_DISCOVERY, NULL, &p, err,
                                       sizeof(err)),
                     DEXEC_EPLUGIN);
    ck_assert_msg(strstr(err, "is an executor plugin, not a discovery plugin") != NULL, "%s", err);
    ck_assert_ptr_null(getenv("DEXEC_TESTBAD_LOADED"));
    ck_assert_int_eq(dexec_plugin_load("testbadops", DEXEC_PLUGIN_EXECUTOR, NULL, &p, err,
                                       sizeof(err)),
                     DEXEC_EPLUGIN);
    ck_assert_ptr_nonnull(getenv("DEXEC_TESTBAD_LOADED"));
}
END_TEST

/* A descriptor defined without DEXEC_PLUGIN_EXPORT under hidden
 * visibility: refused unopened, saying what to add. */
START_TEST(hidden_descriptor)
{
    char path[PATH_MAX], msg[PATH_MAX + 512];

    plugin_path(path, sizeof(path), plugdir, "testhidden");
    fmt(msg, sizeof(msg),
        "plugin %s does not export its dexec_plugin symbol (it is defined with hidden "
        "visibility, as -fvisibility=hidden makes it): declare it DEXEC_PLUGIN_EXPORT const "
        "dexec_plugin_desc dexec_plugin",
        path);
    unsetenv("DEXEC_TESTBAD_LOADED");
    expect_refusal("testhidden", DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN, msg);
    ck_assert_ptr_null(getenv("DEXEC_TESTBAD_LOADED"));
}
END_TEST

START_TEST(abi_minor_newer)
{
    char path[PATH_MAX], msg[PATH_MAX + 512];

    plugin_path(path, sizeof(path), plugdir, "testnewer");
    fmt(msg, sizeof(msg),
             "plugin %s: ABI 1.%d is newer than this dexec's 1.%d: upgrade dexec, or rebuild "
             "the plugin against this one",
             path, DEXEC_ABI_MINOR + 1, DEXEC_ABI_MINOR);
    expect_refusal("testnewer", DEXEC_PLUGIN_EXECUTOR, DEXEC_EABI, msg);
}
END_TEST

/* A 1.0 plugin would read the 1.1 request and output structs at the wrong
 * offsets: refused before any of its code runs. */
START_TEST(abi_minor_too_old)
{
    char path[PATH_MAX], msg[PATH_MAX + 512];

    plugin_path(path, sizeof(path), plugdir, "testold");
    fmt(msg, sizeof(msg),
        "plugin %s: ABI 1.0 predates the sized request, output and actor structs of ABI 1.1: "
        "rebuild the plugin against this dexec",
        path);
    expect_refusal("testold", DEXEC_PLUGIN_EXECUTOR, DEXEC_EABI, msg);
}
END_TEST

START_TEST(no_descriptor)
{
    char path[PATH_MAX], msg[PATH_MAX + 512];

    plugin_path(path, sizeof(path), plugdir, "testnodesc");
    fmt(msg, sizeof(msg),
        "plugin %s is not a dexec plugin (no dexec_plugin symbol): define DEXEC_PLUGIN_EXPORT "
        "const dexec_plugin_desc dexec_plugin (DEXEC_PLUGIN_EXPORT exports it under "
        "-fvisibility=hidden)",
        path);
    expect_refusal("testnodesc", DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN, msg);
}
END_TEST

START_TEST(name_mismatch)
{
    char path[PATH_MAX], msg[PATH_MAX + 512];
    dexec_plugin_handle *p = NULL;

    plugin_path(path, sizeof(path), plugdir, "testmismatch");
    fmt(msg, sizeof(msg),
             "plugin %s calls itself 'other', but was loaded as 'testmismatch': its file "
             "should be named dexec_other.so",
             path);
    expect_refusal("testmismatch", DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN, msg);
    /* By path the name is the descriptor's business. */
    ck_assert_int_eq(dexec_plugin_load(path, DEXEC_PLUGIN_EXECUTOR, NULL, &p, err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_str_eq(dexec_plugin_descriptor(p)->name, "other");
    dexec_plugin_release(p);
}
END_TEST

/* The example of <dexec/plugin.h> (contrib/example-plugin/minimal.c, built
 * with -fvisibility=hidden) loads, and an engine runs on it. */
START_TEST(header_example_loads)
{
    char path[PATH_MAX], text[PATH_MAX + 128];
    dexec_config *cfg = NULL;
    dexec_engine *e = NULL;
    dexec_value *r = NULL;
    dexec_output *outs = NULL;
    dexec_request req;

    plugin_path(path, sizeof(path), plugdir, "minimal");
    fmt(text, sizeof(text), "distributed_executor_backend = \"%s\";\n", path);
    ck_assert_int_eq(dexec_config_parse(text, "test", &cfg, err, sizeof(err)), DEXEC_OK);
    ck_assert_msg(dexec_engine_create(cfg, &e, err, sizeof(err)) == DEXEC_OK, "%s", err);
    dexec_config_free(cfg);
    ck_assert_str_eq(dexec_engine_backend(e), "minimal 1.0");
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, -1, &r), DEXEC_OK);
    ck_assert_int_eq(r->type, DEXEC_VAL_ARRAY);
    ck_assert_int_eq(dexec_value_as_int(dexec_value_array_get(r, 0), -1), 0);
    dexec_value_free(r);
    dexec_request_init(&req);
    ck_assert_int_eq(dexec_engine_step(e, &req, 1, &outs, NULL, NULL), DEXEC_ENOTSUP);
    ck_assert_ptr_nonnull(strstr(dexec_engine_last_error(e),
                                 "this plugin generates nothing (it is the minimal example)"));
    /* an optional ABI 1.2 op it leaves out is reported as not supported */
    {
        dexec_rank_stats rs;

        dexec_rank_stats_init(&rs);
        ck_assert_int_eq(dexec_engine_rank_stats(e, 0, &rs), DEXEC_ENOTSUP);
        ck_assert_str_eq(dexec_engine_last_error(e),
                         "rank_stats: the executor minimal 1.0 keeps no death or restart counts "
                         "(its plugin has no rank_stats op, ABI 1.2)");
    }
    dexec_engine_free(e);
}
END_TEST

START_TEST(missing_operation)
{
    char path[PATH_MAX], msg[PATH_MAX + 512];

    plugin_path(path, sizeof(path), plugdir, "testbadops");
    fmt(msg, sizeof(msg),
             "plugin %s: executor operation 'add_requests' is missing (NULL in its ops table): "
             "every operation is required (<dexec/plugin.h>); one the plugin cannot do returns "
             "DEXEC_ENOTSUP with a message",
             path);
    expect_refusal("testbadops", DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN, msg);
}
END_TEST

START_TEST(not_a_shared_object)
{
    char path[PATH_MAX], msg[PATH_MAX + 1024];
    const char *text = "this is a text file, not a shared object\n";
    void *dl;
    FILE *f;

    plugin_path(path, sizeof(path), tmpdir, "notso");
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    /* The message carries dlerror()'s own words, whatever this libc says. */
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    ck_assert_ptr_null(dl);
    fmt(msg, sizeof(msg), "plugin %s: cannot be loaded: %s", path, dlerror());
    setenv("DEXEC_PLUGIN_PATH", tmpdir, 1);
    expect_refusal("notso", DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN, msg);
    expect_refusal(path, DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN, msg);
}
END_TEST

START_TEST(bad_names)
{
    expect_refusal("Bad-Name", DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN,
                   "invalid plugin name 'Bad-Name': a name is 1 to 64 of [a-z0-9_] "
                   "(a value containing '/' is a path)");
    expect_refusal("", DEXEC_PLUGIN_EXECUTOR, DEXEC_EPLUGIN,
                   "invalid plugin name '': a name is 1 to 64 of [a-z0-9_] "
                   "(a value containing '/' is a path)");
    expect_refusal("../x", DEXEC_PLUGIN_EXECUTOR, DEXEC_ENOTFOUND,
                   "plugin ../x: No such file or directory");
}
END_TEST

START_TEST(not_found_lists_dirs)
{
    char path[2 * PATH_MAX + 16], msg[3 * PATH_MAX];

    fmt(path, sizeof(path), "%s:%s/sub", tmpdir, tmpdir);
    setenv("DEXEC_PLUGIN_PATH", path, 1);
    fmt(msg, sizeof(msg),
             "plugin 'nosuch' not found: no dexec_nosuch.so in %s, %s/sub, %s (set "
             "DEXEC_PLUGIN_PATH or plugin_path, or give the plugin's path)",
             tmpdir, tmpdir, DEXEC_PLUGINDIR);
    expect_refusal("nosuch", DEXEC_PLUGIN_EXECUTOR, DEXEC_ENOTFOUND, msg);

    /* external_launcher is another name for external. The last directory
     * is the installed one: after `make install` it holds dexec_external.so,
     * which the alias must then find (the suite must not depend on what is
     * installed, only assert the alias either way). */
    fmt(path, sizeof(path), "%s/dexec_external.so", DEXEC_PLUGINDIR);
    if (access(path, F_OK) == 0) {
        dexec_plugin_handle *p = NULL;

        ck_assert_msg(dexec_plugin_load("external_launcher", DEXEC_PLUGIN_EXECUTOR, NULL, &p,
                                        err, sizeof(err)) == DEXEC_OK,
                      "%s", err);
        ck_assert_str_eq(dexec_plugin_descriptor(p)->name, "external");
        ck_assert_str_eq(dexec_plugin_file(p), path);
        dexec_plugin_release(p);
    } else {
        fmt(msg, sizeof(msg),
                 "plugin 'external' not found: no dexec_external.so in %s, %s/sub, %s (set "
                 "DEXEC_PLUGIN_PATH or plugin_path, or give the plugin's path)",
                 tmpdir, tmpdir, DEXEC_PLUGINDIR);
        expect_refusal("external_launcher", DEXEC_PLUGIN_EXECUTOR, DEXEC_ENOTFOUND, msg);
    }

    expect_refusal("/nonexistent/dexec_x.so", DEXEC_PLUGIN_EXECUTOR, DEXEC_ENOTFOUND,
                   "plugin /nonexistent/dexec_x.so: No such file or directory");
}
END_TEST

START_TEST(search_order)
{
    char d1[PATH_MAX + 4], d2[PATH_MAX + 4], src[PATH_MAX], dst[2 * PATH_MAX], path[3 * PATH_MAX];
    dexec_plugin_handle *p = NULL;

    fmt(d1, sizeof(d1), "%s/d1", tmpdir);
    fmt(d2, sizeof(d2), "%s/d2", tmpdir);
    ck_assert_int_eq(mkdir(d1, 0755), 0);
    ck_assert_int_eq(mkdir(d2, 0755), 0);
    plugin_path(src, sizeof(src), plugdir, "testgood");
    plugin_path(dst, sizeof(dst), d1, "testgood");
    copy_file(src, dst);
    plugin_path(dst, sizeof(dst), d2, "testgood");
    copy_file(src, dst);

    fmt(path, sizeof(path), "%s:%s", d1, d2);
    setenv("DEXEC_PLUGIN_PATH", path, 1);
    ck_assert_int_eq(dexec_plugin_load("testgood", DEXEC_PLUGIN_EXECUTOR, NULL, &p, err,
                                       sizeof(err)),
                     DEXEC_OK);
    plugin_path(dst, sizeof(dst), d1, "testgood");
    ck_assert_str_eq(dexec_plugin_file(p), dst);
    dexec_plugin_release(p);

    fmt(path, sizeof(path), "%s:%s", d2, d1);
    setenv("DEXEC_PLUGIN_PATH", path, 1);
    ck_assert_int_eq(dexec_plugin_load("testgood", DEXEC_PLUGIN_EXECUTOR, NULL, &p, err,
                                       sizeof(err)),
                     DEXEC_OK);
    plugin_path(dst, sizeof(dst), d2, "testgood");
    ck_assert_str_eq(dexec_plugin_file(p), dst);
    dexec_plugin_release(p);
}
END_TEST

START_TEST(first_match_wins_even_broken)
{
    char d1[PATH_MAX + 4], dst[2 * PATH_MAX], path[3 * PATH_MAX], msg[3 * PATH_MAX];
    FILE *f;

    /* A broken file early in the path is reported, not skipped: skipping
     * would silently run another build than the deployer installed. */
    fmt(d1, sizeof(d1), "%s/d1", tmpdir);
    ck_assert_int_eq(mkdir(d1, 0755), 0);
    plugin_path(dst, sizeof(dst), d1, "testgood");
    f = fopen(dst, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    fmt(path, sizeof(path), "%s:%s", d1, plugdir);
    setenv("DEXEC_PLUGIN_PATH", path, 1);
    fmt(msg, sizeof(msg), "plugin %s: cannot be loaded: ", dst);
    ck_assert_int_eq(dexec_plugin_load("testgood", DEXEC_PLUGIN_EXECUTOR, NULL,
                                       &(dexec_plugin_handle *){NULL}, err, sizeof(err)),
                     DEXEC_EPLUGIN);
    ck_assert_msg(strncmp(err, msg, strlen(msg)) == 0, "unexpected message: %s", err);
}
END_TEST

START_TEST(unload_for_leak_checkers)
{
    dexec_plugin_handle *p = NULL;

    setenv("DEXEC_PLUGIN_UNLOAD", "1", 1);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(dexec_plugin_load("testgood", DEXEC_PLUGIN_EXECUTOR, NULL, &p, err,
                                           sizeof(err)),
                         DEXEC_OK);
        ck_assert_str_eq(dexec_plugin_descriptor(p)->name, "testgood");
        dexec_plugin_release(p);
    }
    /* A refused object is unloaded at once and refused the same way again. */
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(dexec_plugin_load("testabi2", DEXEC_PLUGIN_EXECUTOR, NULL, &p, err,
                                           sizeof(err)),
                         DEXEC_EABI);
        ck_assert_ptr_null(p);
    }
}
END_TEST

START_TEST(misuse)
{
    dexec_plugin_handle *p = NULL;

    ck_assert_int_eq(dexec_plugin_load(NULL, DEXEC_PLUGIN_EXECUTOR, NULL, &p, err, sizeof(err)),
                     DEXEC_EINVAL);
    ck_assert_str_eq(err, "dexec_plugin_load: name_or_path is NULL");
    ck_assert_int_eq(dexec_plugin_load("testgood", DEXEC_PLUGIN_EXECUTOR, NULL, NULL, err,
                                       sizeof(err)),
                     DEXEC_EINVAL);
    ck_assert_str_eq(err, "dexec_plugin_load: out is NULL");
    ck_assert_int_eq(dexec_plugin_load("testgood", (dexec_plugin_kind)7, NULL, &p, err,
                                       sizeof(err)),
                     DEXEC_EINVAL);
    ck_assert_str_eq(err, "dexec_plugin_load: unknown plugin kind 7");
    /* No message buffer is fine too. */
    ck_assert_int_eq(dexec_plugin_load("nosuch", DEXEC_PLUGIN_EXECUTOR, NULL, &p, NULL, 0),
                     DEXEC_ENOTFOUND);
    ck_assert_ptr_null(dexec_plugin_descriptor(NULL));
    ck_assert_ptr_null(dexec_plugin_file(NULL));
    dexec_plugin_release(NULL);
}
END_TEST

START_TEST(search_path_public)
{
    char path[2 * PATH_MAX];
    char **dirs;

    fmt(path, sizeof(path), "%s:%s", tmpdir, plugdir);
    setenv("DEXEC_PLUGIN_PATH", path, 1);
    dirs = dexec_plugin_search_path(NULL);
    ck_assert_ptr_nonnull(dirs);
    ck_assert_str_eq(dirs[0], tmpdir);
    ck_assert_str_eq(dirs[1], plugdir);
    ck_assert_str_eq(dirs[2], DEXEC_PLUGINDIR);
    ck_assert_ptr_null(dirs[3]);
    dexec_plugin_search_path_free(dirs);
}
END_TEST

/* ---- dexec_discovery_open: one way to open the configured discovery plugin ---- */

/* The directories searched, as the not-found message lists them. */
static void searched(const dexec_config *cfg, char *buf, size_t size)
{
    char **dirs = dexec_plugin_search_path(cfg);
    size_t len = 0;

    ck_assert_ptr_nonnull(dirs);
    buf[0] = '\0';
    for (size_t i = 0; dirs[i] != NULL; i++) {
        fmt(buf + len, size - len, "%s%s", i > 0 ? ", " : "", dirs[i]);
        len = strlen(buf);
    }
    dexec_plugin_search_path_free(dirs);
}

START_TEST(discovery_open_unknown_lists_dirs)
{
    dexec_config *cfg = NULL;
    dexec_discovery_handle *h = (dexec_discovery_handle *)&h;
    char dirs[4096], want[5000];

    ck_assert_int_eq(dexec_config_load(NULL, &cfg, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_config_set(cfg, "external.discovery", "nosuch", err, sizeof(err)),
                     DEXEC_OK);
    searched(cfg, dirs, sizeof(dirs));
    ck_assert_int_eq(dexec_discovery_open(cfg, NULL, NULL, &h, err, sizeof(err)),
                     DEXEC_ENOTFOUND);
    ck_assert_ptr_null(h);
    fmt(want, sizeof(want),
        "discovery plugin 'nosuch' (external.discovery): plugin 'nosuch' not found: no "
        "dexec_nosuch.so in %s (set DEXEC_PLUGIN_PATH or plugin_path, or give the plugin's "
        "path)",
        dirs);
    ck_assert_str_eq(err, want);
    ck_assert_ptr_nonnull(strstr(err, plugdir));
    dexec_config_free(cfg);
}
END_TEST

START_TEST(discovery_open_wrong_kind)
{
    dexec_discovery_handle *h = NULL;
    char path[PATH_MAX], want[PATH_MAX + 512];

    plugin_path(path, sizeof(path), plugdir, "testgood");
    ck_assert_int_eq(dexec_discovery_open(NULL, "testgood", "redis://h/0", &h, err, sizeof(err)),
                     DEXEC_EPLUGIN);
    ck_assert_ptr_null(h);
    fmt(want, sizeof(want),
        "discovery plugin 'testgood': plugin %s is an executor plugin, not a discovery plugin: "
        "an executor plugin is named by distributed_executor_backend (or, if this is the plugin "
        "you meant, set its kind in the descriptor to DEXEC_PLUGIN_DISCOVERY)",
        path);
    ck_assert_str_eq(err, want);
}
END_TEST

/* The open failure names the plugin, its file and the URL, never the
 * password, even where the plugin echoes the URL it was given. */
START_TEST(discovery_open_masks_password)
{
    static const struct {
        const char *url, *shown, *secret;
    } cases[] = {
        {"redis://:s3cret@db.example:6379/0", "redis://:***@db.example:6379/0", "s3cret"},
        {"redis://app:pa55word@[::1]:6380/2", "redis://app:***@[::1]:6380/2", "pa55word"},
        {"unix:/run/redis.sock?db=2&password=hunter2", "unix:/run/redis.sock?db=2&password=***",
         "hunter2"},
        {"redis://db.example/0", "redis://db.example/0", NULL},
    };
    char path[PATH_MAX], want[PATH_MAX + 400];

    plugin_path(path, sizeof(path), plugdir, "testdisc");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        dexec_discovery_handle *h = NULL;

        ck_assert_int_eq(dexec_discovery_open(NULL, "testdisc", cases[i].url, &h, err,
                                              sizeof(err)),
                         DEXEC_ENOTSUP);
        ck_assert_ptr_null(h);
        fmt(want, sizeof(want),
            "discovery plugin testdisc (%s), registry %s: testdisc has no registry (asked for %s)",
            path, cases[i].shown, cases[i].shown);
        ck_assert_str_eq(err, want);
        if (cases[i].secret != NULL)
            ck_assert_ptr_null(strstr(err, cases[i].secret));
    }
}
END_TEST

/* No URL: $DEXEC_REGISTRY, else the plugin's own configuration. */
START_TEST(discovery_open_url_sources)
{
    dexec_discovery_handle *h = NULL;
    char path[PATH_MAX], want[PATH_MAX + 400];

    plugin_path(path, sizeof(path), plugdir, "testdisc");
    setenv("DEXEC_REGISTRY", "redis://:topsecret@env.example/1", 1);
    ck_assert_int_eq(dexec_discovery_open(NULL, "testdisc", NULL, &h, err, sizeof(err)),
                     DEXEC_ENOTSUP);
    fmt(want, sizeof(want),
        "discovery plugin testdisc (%s), registry redis://:***@env.example/1: testdisc has no "
        "registry (asked for redis://:***@env.example/1)",
        path);
    ck_assert_str_eq(err, want);
    unsetenv("DEXEC_REGISTRY");
    ck_assert_int_eq(dexec_discovery_open(NULL, "testdisc", NULL, &h, err, sizeof(err)),
                     DEXEC_ENOTSUP);
    fmt(want, sizeof(want),
        "discovery plugin testdisc (%s), registry from the configuration: testdisc has no "
        "registry (asked for its configured one)",
        path);
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(url_redact)
{
    char buf[256];

    dexec_url_redact("redis://:pw@h:1/0", buf, sizeof(buf));
    ck_assert_str_eq(buf, "redis://:***@h:1/0");
    dexec_url_redact("redis://u:pw@h", buf, sizeof(buf));
    ck_assert_str_eq(buf, "redis://u:***@h");
    /* a user without a password, and an @ after the authority, stay */
    dexec_url_redact("redis://u@h/0", buf, sizeof(buf));
    ck_assert_str_eq(buf, "redis://u@h/0");
    dexec_url_redact("redis://h/0?x=a@b:c", buf, sizeof(buf));
    ck_assert_str_eq(buf, "redis://h/0?x=a@b:c");
    dexec_url_redact("redis://h/0?password=pw&db=3", buf, sizeof(buf));
    ck_assert_str_eq(buf, "redis://h/0?password=***&db=3");
    dexec_url_redact(NULL, buf, sizeof(buf));
    ck_assert_str_eq(buf, "");
    dexec_url_redact("redis://:pw@h:1/0", buf, 12);
    ck_assert_str_eq(buf, "redis://:**");
}
END_TEST

static Suite *loader_suite(void)
{
    Suite *s = suite_create("loader");
    TCase *tc = tcase_create("load");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, load_by_name);
    tcase_add_test(tc, load_by_path);
    tcase_add_test(tc, header_example_loads);
    tcase_add_test(tc, wrong_kind_not_run);
    tcase_add_test(tc, hidden_descriptor);
    tcase_add_test(tc, discovery_kind);
    tcase_add_test(tc, device_kind);
    tcase_add_test(tc, abi_major_mismatch);
    tcase_add_test(tc, abi_minor_newer);
    tcase_add_test(tc, abi_minor_too_old);
    tcase_add_test(tc, no_descriptor);
    tcase_add_test(tc, name_mismatch);
    tcase_add_test(tc, missing_operation);
    tcase_add_test(tc, not_a_shared_object);
    tcase_add_test(tc, bad_names);
    tcase_add_test(tc, not_found_lists_dirs);
    tcase_add_test(tc, search_order);
    tcase_add_test(tc, first_match_wins_even_broken);
    tcase_add_test(tc, unload_for_leak_checkers);
    tcase_add_test(tc, misuse);
    tcase_add_test(tc, search_path_public);
    tcase_add_test(tc, discovery_open_unknown_lists_dirs);
    tcase_add_test(tc, discovery_open_wrong_kind);
    tcase_add_test(tc, discovery_open_masks_password);
    tcase_add_test(tc, discovery_open_url_sources);
    tcase_add_test(tc, url_redact);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(loader_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
