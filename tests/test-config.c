/* test-config.c - the "config" suite: what a deployer relies on from the
 * configuration: the exact message for each kind of mistake, the defaults,
 * environment overrides, dexec_config_set() validation and a dump that
 * reads back to the same configuration. */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dexec/dexec.h>
#include <dexec/plugin.h>

static char tmpdir[256];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Runs in the parent, so the directory goes even when a test fails. */
static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/test-config-XXXXXX",
             getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Writes text to tmpdir/name; returns the path (static, overwritten). */
static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    FILE *fp;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    ck_assert_int_eq(fclose(fp), 0);
    return path;
}

/* The build tree's plugins ($DEXEC_PLUGIN_PATH of "make check"): the
 * discovery.redis keys are the redis_discovery plugin's settings. */
static char *plugin_path;

static void clear_env(void)
{
    unsetenv("DEXEC_CONFIG");
    unsetenv("DEXEC_LOG_LEVEL");
    if (plugin_path != NULL)
        setenv("DEXEC_PLUGIN_PATH", plugin_path, 1);
    else
        unsetenv("DEXEC_PLUGIN_PATH");
    unsetenv("DIFFUSION_WORKER_ACTOR_NAMES");
}

/* ---- bad files ------------------------------------------------------------ */

static const struct {
    const char *text;
    const char *message; /* %s is the file's path */
} bad_files[] = {
    {"foo = 1;\n", "%s:1: foo: unknown key ('dexec config keys' lists the known ones)"},
    {"model = \"x\";\nnum_gpu = 2;\n", "%s:2: num_gpu: unknown key (did you mean num_gpus?)"},
    {"timeouts = {\n  init = 10.0;\n  rcp = 3.0;\n};\n",
     "%s:3: timeouts.rcp: unknown key (did you mean timeouts.rpc?)"},
    {"discovery = { redis = { tll = 5; }; };\n",
     "%s:1: discovery.redis.tll: unknown key (did you mean discovery.redis.ttl?)"},
    {"address = \"auto\";\n", "%s:1: address: unknown key (did you mean ray_init.address?)"},
    {"tmeouts = { rpc = 1.0; };\n", "%s:1: tmeouts: unknown key (did you mean timeouts?)"},
    {"timeouts = { rpc = \"30\"; };\n", "%s:1: timeouts.rpc: expected a float, got a string"},
    {"num_gpus = 2.0;\n", "%s:1: num_gpus: expected an integer, got a float"},
    {"model = 3;\n", "%s:1: model: expected a string, got an integer"},
    {"timeouts = 3;\n", "%s:1: timeouts: expected a group, got an integer"},
    {"plugin_path = \"/opt/p\";\n", "%s:1: plugin_path: expected a list of strings, got a string"},
    {"external = { worker_names = ( \"a\", 1 ); };\n",
     "%s:1: external.worker_names: element 2: expected a string, got an integer"},
    {"external = {\n  worker_names = [ \"a\", \"\" ];\n};\n",
     "%s:2: external.worker_names: element 2 is empty"},
    {"ray_actor = { resources = 1; };\n",
     "%s:1: ray_actor.resources: expected a group of NAME = number settings, got an integer"},
    {"ray_actor = {\n  resources = {\n    gpu_worker = \"yes\";\n  };\n};\n",
     "%s:3: ray_actor.resources: gpu_worker: expected a number, got a string"},
    {"ray_actor = { resources = { ssd = -1; }; };\n",
     "%s:1: ray_actor.resources: ssd: must be a number >= 0"},
    {"num_gpus = 65;\n", "%s:1: num_gpus: must be between 1 and 64, got 65"},
    {"num_gpus = 0;\n", "%s:1: num_gpus: must be between 1 and 64, got 0"},
    {"max_frame_bytes = 100;\n",
     "%s:1: max_frame_bytes: must be between 4096 and 4294967295, got 100"},
    {"ray_actor = { gpus = -2; };\n", "%s:1: ray_actor.gpus: must be between -1 and 64, got -2"},
    {"ray_actor = { memory = -1L; };\n",
     "%s:1: ray_actor.memory: must be between 0 and 9223372036854775807, got -1"},
    {"discovery = { redis = { ttl = 0; }; };\n",
     "%s:1: discovery.redis.ttl: must be between 1 and 3600, got 0"},
    {"timeouts = { health = 0.0; };\n",
     "%s:1: timeouts.health: must be greater than 0 and at most 86400, got 0"},
    {"timeouts = { generate = 100000; };\n",
     "%s:1: timeouts.generate: must be greater than 0 and at most 86400, got 100000"},
    {"device = \"gpu\";\n", "%s:1: device: \"gpu\" is not one of: auto, cpu, cuda"},
    {"log_level = \"verbose\";\n",
     "%s:1: log_level: \"verbose\" is not one of: error, warn, info, debug"},
    {"distributed_executor_backend = \"Ray-Actor\";\n",
     "%s:1: distributed_executor_backend: \"Ray-Actor\" must be a plugin name of a-z, 0-9 and _, "
     "or a path containing '/'"},
    {"ray_init = { address = \"head:6379\"; };\n",
     "%s:1: ray_init.address: \"head:6379\" must be local, slurm, auto or a URL "
     "redis://HOST[:PORT][/DB] (or unix:/PATH)"},
    {"discovery = { redis = { url = \"http://x\"; }; };\n",
     "%s:1: discovery.redis.url: \"http://x\" must be a URL "
     "redis://[:PASSWORD@]HOST[:PORT][/DB] or unix:/PATH[?db=N]"},
    {"model = \"\";\n", "%s:1: model: \"\" must not be empty"},
    {"model = \"x\";\nnum_gpus = ;\n", "%s:2: syntax error"},
    {"model = \"x\";\nnum_gpus = 2 3;\n", "%s:2: syntax error"},
};

START_TEST(test_bad_file)
{
    const char *path = write_file("bad.conf", bad_files[_i].text);
    dexec_config *cfg = (dexec_config *)1;
    char want[1024], err[1024] = "";

    clear_env();
    snprintf(want, sizeof(want), bad_files[_i].message, path);
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    ck_assert_ptr_null(cfg);
    ck_assert_str_eq(err, want);

    /* the same text given to parse() is reported under the name given */
    snprintf(want, sizeof(want), bad_files[_i].message, "inline");
    ck_assert_int_eq(dexec_config_parse(bad_files[_i].text, "inline", &cfg, err, sizeof(err)),
                     DEXEC_ECONFIG);
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(test_missing_file)
{
    dexec_config *cfg = NULL;
    char err[512];

    clear_env();
    ck_assert_int_eq(dexec_config_load("/nonexistent/dexec.conf", &cfg, err, sizeof(err)),
                     DEXEC_ECONFIG);
    ck_assert_ptr_null(cfg);
    ck_assert_str_eq(err, "/nonexistent/dexec.conf: cannot read the configuration file: "
                          "No such file or directory");
    ck_assert_int_eq(dexec_config_load(tmpdir, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    ck_assert_str_eq(strstr(err, ": cannot"),
                     ": cannot read the configuration file: Is a directory");

    /* $DEXEC_CONFIG is what a path NULL means */
    setenv("DEXEC_CONFIG", "/nonexistent/env.conf", 1);
    ck_assert_int_eq(dexec_config_load(NULL, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    ck_assert_str_eq(err, "/nonexistent/env.conf: cannot read the configuration file: "
                          "No such file or directory");
}
END_TEST

START_TEST(test_bad_env)
{
    const char *path = write_file("ok.conf", "num_gpus = 2;\n");
    dexec_config *cfg = NULL;
    char err[512];

    clear_env();
    setenv("DIFFUSION_WORKER_ACTOR_NAMES", "worker_0,,worker_2", 1);
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    ck_assert_ptr_null(cfg);
    ck_assert_str_eq(err, "env DIFFUSION_WORKER_ACTOR_NAMES: external.worker_names: entry 2 of "
                          "\"worker_0,,worker_2\" is empty; separate the entries with single "
                          "commas");
    setenv("DIFFUSION_WORKER_ACTOR_NAMES", "worker_0, ", 1);
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    ck_assert_str_eq(err, "env DIFFUSION_WORKER_ACTOR_NAMES: external.worker_names: entry 2 of "
                          "\"worker_0, \" is empty; separate the entries with single commas");
    unsetenv("DIFFUSION_WORKER_ACTOR_NAMES");
    setenv("DEXEC_LOG_LEVEL", "loud", 1);
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    ck_assert_str_eq(err, "env DEXEC_LOG_LEVEL: log_level: \"loud\" is not one of: error, warn, "
                          "info, debug");
}
END_TEST

/* ---- defaults ------------------------------------------------------------- */

static void assert_default_values(const dexec_config *cfg)
{
    static const struct {
        const char *key, *value;
    } strings[] = {
        {"model", "fashion-dit"},
        {"device", "auto"},
        {"dtype", "float32"},
        {"distributed_executor_backend", "mp"},
        {"log_level", "warn"},
        {"token_file", ""},
        {"ray_init.address", "local"},
        {"mp.launcher", "local"},
        {"slurm.partition", ""},
        {"slurm.account", ""},
        {"slurm.time", ""},
        {"external.discovery", "redis_discovery"},
        {"external.token_file", ""},
        {"discovery.redis.url", "redis://127.0.0.1:6379/0"},
        {"discovery.redis.namespace", "dexec"},
        {"serve.listen", "127.0.0.1:8000"},
        {"serve.token_file", ""},
        {"parallel.transport", "auto"},
    };
    static const struct {
        const char *key;
        int64_t value;
    } ints[] = {
        {"num_gpus", 1},        {"max_frame_bytes", 256 << 20}, {"ray_actor.cpus", 1},
        {"ray_actor.gpus", -1}, {"ray_actor.memory", 0},        {"discovery.redis.ttl", 10},
        {"engine.max_queued", 1024}, {"ray_init.num_cpus", -1},  {"ray_init.num_gpus", -1},
        {"max_restarts", 3},    {"max_task_retries", 3},    {"mp.cpus_per_rank", 0}, {"mp.spin_us", -1},
        {"serve.insecure", 0}, {"serve.max_body_bytes", 65536}, {"serve.max_prompt_bytes", 4096},
        {"serve.max_images", 16}, {"serve.max_connections", 256},
        {"parallel.cfg", 1},    {"parallel.sequence", 1},
    };
    static const struct {
        const char *key;
        double value;
    } floats[] = {
        {"timeouts.init", 60.0},
        {"timeouts.rpc", 30.0},
        {"timeouts.generate", 300.0},
        {"timeouts.health", 5.0},
        {"timeouts.write", 30.0},
        {"timeouts.shutdown_grace", 5.0},
        {"timeouts.stall", 60.0},
        {"discovery.redis.connect_timeout", 2.0},
        {"discovery.redis.command_timeout", 2.0},
        {"serve.request_timeout", 300.0},
        {"serve.drain_grace", 30.0},
        {"serve.health_interval", 10.0},
    };
    static const char *const lists[] = {"plugin_path", "external.worker_names", "slurm.options"};
    size_t checked = 0, nkeys = 0, n = 99;
    const char *const *items = NULL;
    const dexec_value *map = NULL;

    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++, checked++) {
        const char *s = NULL;

        ck_assert_int_eq(dexec_config_get_string(cfg, strings[i].key, &s), DEXEC_OK);
        ck_assert_str_eq(s, strings[i].value);
        ck_assert_str_eq(dexec_config_origin(cfg, strings[i].key), "default");
    }
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++, checked++) {
        int64_t v = 12345;

        ck_assert_int_eq(dexec_config_get_int(cfg, ints[i].key, &v), DEXEC_OK);
        ck_assert_int_eq(v, ints[i].value);
    }
    for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++, checked++) {
        double v = -1;

        ck_assert_int_eq(dexec_config_get_float(cfg, floats[i].key, &v), DEXEC_OK);
        ck_assert_double_eq(v, floats[i].value);
    }
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++, checked++) {
        ck_assert_int_eq(dexec_config_get_list(cfg, lists[i], &n, &items), DEXEC_OK);
        ck_assert_uint_eq(n, 0);
        ck_assert_ptr_nonnull(items);
        ck_assert_ptr_null(items[0]);
    }
    {
        int b = -1;

        ck_assert_int_eq(dexec_config_get_bool(cfg, "allow_admin_methods", &b), DEXEC_OK);
        ck_assert_int_eq(b, 0);
        checked++;
    }
    ck_assert_int_eq(dexec_config_get_map(cfg, "ray_actor.resources", &map), DEXEC_OK);
    ck_assert_int_eq(map->type, DEXEC_VAL_MAP);
    ck_assert_uint_eq(map->u.map.len, 0);
    checked++;
    ck_assert_int_eq(dexec_config_get_map(cfg, "runtime_env.env_vars", &map), DEXEC_OK);
    ck_assert_uint_eq(map->u.map.len, 0);
    checked++;

    /* every key of the schema, the redis_discovery plugin's included, was
     * looked at above */
    while (dexec_config_schema_key(cfg, nkeys, NULL, NULL, NULL, NULL, NULL, NULL) == DEXEC_OK)
        nkeys++;
    ck_assert_uint_eq(checked, nkeys);
}

START_TEST(test_defaults)
{
    dexec_config *cfg = NULL;
    char err[512] = "";

    clear_env();
    ck_assert_int_eq(dexec_config_load(NULL, &cfg, err, sizeof(err)), DEXEC_OK);
    ck_assert_ptr_null(dexec_config_path(cfg));
    assert_default_values(cfg);
    dexec_config_free(cfg);

    /* an empty file, and a file of comments, are the defaults too */
    ck_assert_int_eq(dexec_config_load(write_file("empty.conf", ""), &cfg, err, sizeof(err)),
                     DEXEC_OK);
    assert_default_values(cfg);
    ck_assert_str_eq(dexec_config_path(cfg), write_file("empty.conf", ""));
    dexec_config_free(cfg);
    ck_assert_int_eq(dexec_config_parse("# nothing\n// here\n", "c", &cfg, err, sizeof(err)),
                     DEXEC_OK);
    assert_default_values(cfg);
    dexec_config_free(cfg);
}
END_TEST

START_TEST(test_file_values)
{
    const char *path = write_file(
        "full.conf", "model = \"/srv/models/dit.safetensors\";\n"
                     "device = \"cpu\";\n"
                     "num_gpus = 4;\n"
                     "distributed_executor_backend = \"ray_actor\";\n"
                     "timeouts = { init = 120; rpc = 2.5; };\n"
                     "ray_actor = {\n"
                     "  cpus = 8;\n"
                     "  gpus = 2;\n"
                     "  memory =\n    34359738368;\n" /* no L: libconfig alone keeps 0 */
                     "  resources = { gpu_worker = 1; ssd = 0.5; big = 5000000000L; };\n"
                     "};\n"
                     "ray_init = { address = \"redis://head:6379/0\"; };\n");
    dexec_config *cfg = NULL;
    const dexec_value *map = NULL;
    const char *s = NULL;
    char err[512] = "", where[600];
    int64_t i = 0;
    double f = 0;

    clear_env();
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_string(cfg, "model", &s), DEXEC_OK);
    ck_assert_str_eq(s, "/srv/models/dit.safetensors");
    ck_assert_int_eq(dexec_config_get_int(cfg, "num_gpus", &i), DEXEC_OK);
    ck_assert_int_eq(i, 4);
    snprintf(where, sizeof(where), "%s:3", path);
    ck_assert_str_eq(dexec_config_origin(cfg, "num_gpus"), where);
    ck_assert_int_eq(dexec_config_get_float(cfg, "timeouts.init", &f), DEXEC_OK);
    ck_assert_double_eq(f, 120.0);
    ck_assert_int_eq(dexec_config_get_float(cfg, "timeouts.rpc", &f), DEXEC_OK);
    ck_assert_double_eq(f, 2.5);
    ck_assert_str_eq(dexec_config_origin(cfg, "timeouts.health"), "default");
    ck_assert_int_eq(dexec_config_get_int(cfg, "ray_actor.memory", &i), DEXEC_OK);
    ck_assert_int_eq(i, 34359738368LL);
    snprintf(where, sizeof(where), "%s:9", path);
    ck_assert_str_eq(dexec_config_origin(cfg, "ray_actor.memory"), where);
    ck_assert_int_eq(dexec_config_get_map(cfg, "ray_actor.resources", &map), DEXEC_OK);
    ck_assert_uint_eq(map->u.map.len, 3);
    ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(map, "gpu_worker"), -1), 1);
    ck_assert_double_eq(dexec_value_as_float(dexec_value_map_get(map, "ssd"), -1), 0.5);
    ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(map, "big"), -1), 5000000000LL);
    ck_assert_int_eq(dexec_config_get_string(cfg, "ray_init.address", &s), DEXEC_OK);
    ck_assert_str_eq(s, "redis://head:6379/0");

    dexec_config_free(cfg);
    cfg = NULL;

    /* Integers as libconfig 1.7 reads them, whatever stands around them
     * (libconfig 1.5 keeps the low 32 bits: 0 for 32 GiB). */
    {
        static const struct {
            const char *text;
            int64_t want;
        } cases[] = {
            {"ray_actor = { memory = /* 32 GiB */ 34359738368; };", 34359738368LL},
            {"ray_actor = { memory = 34359738368; # 32 GiB\n};", 34359738368LL},
            {"ray_actor = { memory = // 32 GiB\n 34359738368; };", 34359738368LL},
            {"ray_actor = { memory : 0x800000000; };", 34359738368LL},
            {"ray_actor = { memory = 9223372036854775807; };", INT64_MAX},
            {"ray_actor = { memory = 34359738368L; };", 34359738368LL},
            {"ray_actor = { cpus = 2; memory = 4294967297; };", 4294967297LL},
            {"# memory = 5;\nray_actor = { /* memory = 7; */ memory = 4294967297; };",
             4294967297LL},
            {"ray_actor = { resources = { memory = 1; }; memory = 4294967297; };", 4294967297LL},
        };

        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
            path = write_file("int.conf", cases[c].text);
            ck_assert_msg(dexec_config_load(path, &cfg, err, sizeof(err)) == DEXEC_OK, "%s: %s",
                          cases[c].text, err);
            ck_assert_int_eq(dexec_config_get_int(cfg, "ray_actor.memory", &i), DEXEC_OK);
            ck_assert_msg(i == cases[c].want, "%s: got %lld", cases[c].text, (long long)i);
            dexec_config_free(cfg);
            cfg = NULL;
        }
    }
    path = write_file("int.conf", "ray_actor = {\n memory = 9223372036854775808;\n};\n");
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    snprintf(where, sizeof(where),
             "%s:2: ray_actor.memory: 9223372036854775808 is out of range (a 64-bit integer is "
             "-9223372036854775808..9223372036854775807)",
             path);
    ck_assert_str_eq(err, where);
    path = write_file("int.conf", "ray_actor = { resources = { ssd = -99999999999999999999; }; };");
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    snprintf(where, sizeof(where),
             "%s:1: ray_actor.resources: -99999999999999999999 is out of range (a 64-bit "
             "integer is -9223372036854775808..9223372036854775807)",
             path);
    ck_assert_str_eq(err, where);
    ck_assert_int_eq(dexec_config_load(write_file("int.conf", "ray_actor = { memory = 1; };"),
                                       &cfg, err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_config_set(cfg, "ray_actor.memory", "9223372036854775808", err,
                                      sizeof(err)),
                     DEXEC_ECONFIG);
    ck_assert_str_eq(err, "ray_actor.memory: 9223372036854775808 is out of range (a 64-bit "
                          "integer is -9223372036854775808..9223372036854775807)");

    /* getters: unknown key and key of another type */
    ck_assert_int_eq(dexec_config_get_int(cfg, "num_gpu", &i), DEXEC_ENOTFOUND);
    ck_assert_int_eq(dexec_config_get_int(cfg, "model", &i), DEXEC_EINVAL);
    ck_assert_int_eq(dexec_config_get_float(cfg, "num_gpus", &f), DEXEC_EINVAL);
    ck_assert_int_eq(dexec_config_get_string(cfg, "timeouts", &s), DEXEC_ENOTFOUND);
    ck_assert_int_eq(dexec_config_get_bool(cfg, "device", NULL), DEXEC_EINVAL);
    ck_assert_int_eq(dexec_config_get_map(cfg, "plugin_path", &map), DEXEC_EINVAL);
    ck_assert_ptr_null(dexec_config_origin(cfg, "nope"));
    dexec_config_free(cfg);
}
END_TEST

START_TEST(test_include)
{
    const char *path;
    dexec_config *cfg = NULL;
    char err[512] = "", want[600];
    int64_t i = 0;

    clear_env();
    write_file("part.conf", "device = \"cpu\";\n"
                            "num_gpus = 3;\n"
                            "ray_actor = { memory = 8589934593; };\n");
    path = write_file("main.conf", "model = \"m\";\n@include \"part.conf\"\n");
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_int(cfg, "num_gpus", &i), DEXEC_OK);
    ck_assert_int_eq(i, 3);
    snprintf(want, sizeof(want), "%s/part.conf:2", tmpdir);
    ck_assert_str_eq(dexec_config_origin(cfg, "num_gpus"), want);
    ck_assert_int_eq(dexec_config_get_int(cfg, "ray_actor.memory", &i), DEXEC_OK);
    ck_assert_int_eq(i, 8589934593LL);
    dexec_config_free(cfg);

    /* a mistake in an included file names that file */
    write_file("part.conf", "device = \"cpu\";\nnum_gpus = 99;\n");
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    snprintf(want, sizeof(want), "%s/part.conf:2: num_gpus: must be between 1 and 64, got 99",
             tmpdir);
    ck_assert_str_eq(err, want);
    write_file("part.conf", "device = \"cpu\";\nnum_gpus = ;\n");
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    snprintf(want, sizeof(want), "%s/part.conf:2: syntax error", tmpdir);
    ck_assert_str_eq(err, want);

    /* doc/configuration.md: a relative name is taken from the directory of
     * the file given, in an included file too. */
    snprintf(want, sizeof(want), "%s/sub", tmpdir);
    ck_assert_int_eq(mkdir(want, 0700) == 0 || errno == EEXIST, 1);
    write_file("sub/b.conf", "device = \"cpu\";\n");
    write_file("sub/a.conf", "num_gpus = 2;\n@include \"sub/b.conf\"\n");
    path = write_file("main.conf", "model = \"m\";\n@include \"sub/a.conf\"\n");
    ck_assert_msg(dexec_config_load(path, &cfg, err, sizeof(err)) == DEXEC_OK, "%s", err);
    snprintf(want, sizeof(want), "%s/sub/b.conf:1", tmpdir);
    ck_assert_str_eq(dexec_config_origin(cfg, "device"), want);
    dexec_config_free(cfg);
    cfg = NULL;
    write_file("sub/a.conf", "num_gpus = 2;\n@include \"b.conf\"\n");
    path = write_file("main.conf", "model = \"m\";\n@include \"sub/a.conf\"\n");
    ck_assert_msg(dexec_config_load(path, &cfg, err, sizeof(err)) == DEXEC_ECONFIG, "%s", path);
    snprintf(want, sizeof(want), "%s/sub/a.conf:2: cannot open include file", tmpdir);
    ck_assert_str_eq(err, want);
}
END_TEST

/* ---- environment ---------------------------------------------------------- */

START_TEST(test_env_overrides_file)
{
    const char *path = write_file("env.conf", "log_level = \"error\";\n"
                                              "external = {\n"
                                              "  worker_names = [ \"from_file\" ];\n"
                                              "};\n"
                                              "plugin_path = [ \"/opt/cfg-plugins\" ];\n");
    dexec_config *cfg = NULL;
    const char *const *items = NULL;
    const char *s = NULL;
    char err[512] = "", want[600];
    char **dirs;
    size_t n = 0;

    clear_env();
    setenv("DEXEC_LOG_LEVEL", "DEBUG", 1);
    setenv("DIFFUSION_WORKER_ACTOR_NAMES", " diffusion_worker_0 ,diffusion_worker_1", 1);
    setenv("DEXEC_PLUGIN_PATH", "/env/a::/env/b:", 1);
    setenv("DEXEC_CONFIG", path, 1);
    ck_assert_int_eq(dexec_config_load(NULL, &cfg, err, sizeof(err)), DEXEC_OK);
    ck_assert_str_eq(dexec_config_path(cfg), path);

    ck_assert_int_eq(dexec_config_get_string(cfg, "log_level", &s), DEXEC_OK);
    ck_assert_str_eq(s, "debug");
    ck_assert_str_eq(dexec_config_origin(cfg, "log_level"), "env DEXEC_LOG_LEVEL");
    ck_assert_int_eq(dexec_log_get_level(), DEXEC_LOG_DEBUG);

    ck_assert_int_eq(dexec_config_get_list(cfg, "external.worker_names", &n, &items), DEXEC_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(items[0], "diffusion_worker_0");
    ck_assert_str_eq(items[1], "diffusion_worker_1");
    ck_assert_ptr_null(items[2]);
    ck_assert_str_eq(dexec_config_origin(cfg, "external.worker_names"),
                     "env DIFFUSION_WORKER_ACTOR_NAMES");

    /* DEXEC_PLUGIN_PATH stays out of plugin_path; the search path puts it first */
    ck_assert_int_eq(dexec_config_get_list(cfg, "plugin_path", &n, &items), DEXEC_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(items[0], "/opt/cfg-plugins");
    snprintf(want, sizeof(want), "%s:5", path);
    ck_assert_str_eq(dexec_config_origin(cfg, "plugin_path"), want);
    dirs = dexec_plugin_search_path(cfg);
    ck_assert_ptr_nonnull(dirs);
    ck_assert_str_eq(dirs[0], "/env/a");
    ck_assert_str_eq(dirs[1], "/env/b");
    ck_assert_str_eq(dirs[2], "/opt/cfg-plugins");
    ck_assert_ptr_nonnull(dirs[3]); /* the installed plugin directory */
    ck_assert_ptr_null(dirs[4]);
    dexec_plugin_search_path_free(dirs);
    dexec_config_free(cfg);

    /* parse() is the text alone: no environment */
    ck_assert_int_eq(dexec_config_parse("log_level = \"error\";\n", "t", &cfg, err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_string(cfg, "log_level", &s), DEXEC_OK);
    ck_assert_str_eq(s, "error");
    ck_assert_str_eq(dexec_config_origin(cfg, "log_level"), "t:1");
    dexec_config_free(cfg);
}
END_TEST

/* ---- set ------------------------------------------------------------------ */

START_TEST(test_set)
{
    static const struct {
        const char *key, *text;
        dexec_status code;
        const char *message;
    } bad[] = {
        {"num_gpu", "2", DEXEC_ENOTFOUND, "num_gpu: unknown key (did you mean num_gpus?)"},
        {"timeouts", "2", DEXEC_ENOTFOUND,
         "timeouts: a group, not a key; set one of its keys: timeouts.init timeouts.rpc "
         "timeouts.generate timeouts.health timeouts.write timeouts.shutdown_grace timeouts.stall"},
        {"num_gpus", "two", DEXEC_ECONFIG, "num_gpus: expected an integer, got \"two\""},
        {"num_gpus", "2.5", DEXEC_ECONFIG, "num_gpus: expected an integer, got \"2.5\""},
        {"num_gpus", "100", DEXEC_ECONFIG, "num_gpus: must be between 1 and 64, got 100"},
        {"timeouts.rpc", "soon", DEXEC_ECONFIG, "timeouts.rpc: expected a number, got \"soon\""},
        {"timeouts.rpc", "nan", DEXEC_ECONFIG, "timeouts.rpc: expected a number, got \"nan\""},
        {"timeouts.rpc", "-1", DEXEC_ECONFIG,
         "timeouts.rpc: must be greater than 0 and at most 86400, got -1"},
        {"device", "tpu", DEXEC_ECONFIG, "device: \"tpu\" is not one of: auto, cpu, cuda"},
        {"external.worker_names", "a,,b", DEXEC_ECONFIG,
         "external.worker_names: entry 2 of \"a,,b\" is empty; separate the entries with "
         "single commas"},
        {"ray_actor.resources", "gpu", DEXEC_ECONFIG,
         "ray_actor.resources: expected NAME=NUMBER, got \"gpu\""},
        {"ray_actor.resources", "gpu=many", DEXEC_ECONFIG,
         "ray_actor.resources: gpu: expected a number, got \"many\""},
        {"ray_actor.resources", "node:gpu=1", DEXEC_ECONFIG,
         "ray_actor.resources: \"node:gpu\" is not a valid resource name (a letter, then "
         "letters, digits, '-' or '_')"},
    };
    dexec_config *cfg = NULL;
    const dexec_value *map = NULL;
    const char *const *items = NULL;
    char err[512] = "";
    int64_t i = 0;
    double f = 0;
    size_t n = 0;

    clear_env();
    ck_assert_int_eq(dexec_config_parse("num_gpus = 2;\n", "t", &cfg, err, sizeof(err)), DEXEC_OK);
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        ck_assert_int_eq(dexec_config_set(cfg, bad[k].key, bad[k].text, err, sizeof(err)),
                         bad[k].code);
        ck_assert_str_eq(err, bad[k].message);
    }
    /* a refused value leaves the old one */
    ck_assert_int_eq(dexec_config_get_int(cfg, "num_gpus", &i), DEXEC_OK);
    ck_assert_int_eq(i, 2);
    ck_assert_str_eq(dexec_config_origin(cfg, "num_gpus"), "t:1");

    ck_assert_int_eq(dexec_config_set(cfg, "num_gpus", " 8 ", err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_int(cfg, "num_gpus", &i), DEXEC_OK);
    ck_assert_int_eq(i, 8);
    ck_assert_str_eq(dexec_config_origin(cfg, "num_gpus"), "set");
    ck_assert_int_eq(dexec_config_set(cfg, "ray_actor.memory", "34359738368", err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_int(cfg, "ray_actor.memory", &i), DEXEC_OK);
    ck_assert_int_eq(i, 34359738368LL);
    ck_assert_int_eq(dexec_config_set(cfg, "timeouts.rpc", "4", err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_float(cfg, "timeouts.rpc", &f), DEXEC_OK);
    ck_assert_double_eq(f, 4.0);
    ck_assert_int_eq(dexec_config_set(cfg, "external.worker_names", "w0, w1,w2", err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_list(cfg, "external.worker_names", &n, &items), DEXEC_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(items[1], "w1");
    ck_assert_int_eq(dexec_config_set(cfg, "external.worker_names", "", err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_list(cfg, "external.worker_names", &n, &items), DEXEC_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(
        dexec_config_set(cfg, "ray_actor.resources", "gpu_worker=1, ssd=0.25", err, sizeof(err)),
        DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_map(cfg, "ray_actor.resources", &map), DEXEC_OK);
    ck_assert_uint_eq(map->u.map.len, 2);
    ck_assert_int_eq(dexec_value_map_get(map, "gpu_worker")->type, DEXEC_VAL_INT);
    ck_assert_double_eq(dexec_value_as_float(dexec_value_map_get(map, "ssd"), 0), 0.25);
    ck_assert_int_eq(dexec_config_set(cfg, "distributed_executor_backend", "./my/dexec_k8s.so",
                                      err, sizeof(err)),
                     DEXEC_OK);
    dexec_config_free(cfg);
}
END_TEST

/* ---- dump ----------------------------------------------------------------- */

/* Every key of a and b holds the same value. */
static void assert_same_config(const dexec_config *a, const dexec_config *b)
{
    const char *key, *type;

    for (size_t k = 0; dexec_config_schema_key(a, k, &key, &type, NULL, NULL, NULL, NULL) == DEXEC_OK;
         k++) {
        if (strcmp(type, "integer") == 0) {
            int64_t x = 0, y = 1;

            ck_assert_int_eq(dexec_config_get_int(a, key, &x), DEXEC_OK);
            ck_assert_int_eq(dexec_config_get_int(b, key, &y), DEXEC_OK);
            ck_assert_int_eq(x, y);
        } else if (strcmp(type, "float") == 0) {
            double x = 0, y = 1;

            ck_assert_int_eq(dexec_config_get_float(a, key, &x), DEXEC_OK);
            ck_assert_int_eq(dexec_config_get_float(b, key, &y), DEXEC_OK);
            ck_assert_msg(x == y, "%s: %.17g != %.17g", key, x, y);
        } else if (strcmp(type, "string") == 0) {
            const char *x = NULL, *y = NULL;

            ck_assert_int_eq(dexec_config_get_string(a, key, &x), DEXEC_OK);
            ck_assert_int_eq(dexec_config_get_string(b, key, &y), DEXEC_OK);
            ck_assert_str_eq(x, y);
        } else if (strcmp(type, "list") == 0) {
            const char *const *x = NULL, *const *y = NULL;
            size_t nx = 0, ny = 1;

            ck_assert_int_eq(dexec_config_get_list(a, key, &nx, &x), DEXEC_OK);
            ck_assert_int_eq(dexec_config_get_list(b, key, &ny, &y), DEXEC_OK);
            ck_assert_uint_eq(nx, ny);
            for (size_t i = 0; i < nx; i++)
                ck_assert_str_eq(x[i], y[i]);
        } else if (strcmp(type, "boolean") == 0) {
            int x = 0, y = 1;

            ck_assert_int_eq(dexec_config_get_bool(a, key, &x), DEXEC_OK);
            ck_assert_int_eq(dexec_config_get_bool(b, key, &y), DEXEC_OK);
            ck_assert_int_eq(x, y);
        } else {
            const dexec_value *x = NULL, *y = NULL;

            ck_assert_str_eq(type, "map");
            ck_assert_int_eq(dexec_config_get_map(a, key, &x), DEXEC_OK);
            ck_assert_int_eq(dexec_config_get_map(b, key, &y), DEXEC_OK);
            ck_assert_int_eq(dexec_value_equal(x, y), 1);
            for (size_t i = 0; i < x->u.map.len; i++)
                ck_assert_int_eq(x->u.map.items[i].val->type, y->u.map.items[i].val->type);
        }
    }
}

START_TEST(test_dump_round_trip)
{
    static const char *const sets[][2] = {
        {"model", "/models/a \"quoted\"\tname\\with\nnewline.safetensors"},
        {"device", "cuda"},
        {"num_gpus", "64"},
        {"distributed_executor_backend", "external"},
        {"plugin_path", "/opt/a,/opt/b c"},
        {"log_level", "info"},
        {"token_file", "/etc/dexec/token"},
        {"max_frame_bytes", "4294967295"},
        {"allow_admin_methods", "true"},
        {"timeouts.init", "0.1"},
        {"timeouts.rpc", "1e-05"},
        {"timeouts.generate", "86400"},
        {"timeouts.health", "0.30000000000000004"},
        {"ray_actor.gpus", "-1"},
        {"ray_actor.memory", "9223372036854775807"},
        {"ray_actor.resources", "gpu_worker=1,fast-ssd=0.5,huge=5000000000,x=2.0"},
        {"ray_init.address", "auto"},
        {"external.worker_names", "w0,w1"},
        {"discovery.redis.namespace", "prod/dexec"},
        {"discovery.redis.ttl", "3600"},
    };
    dexec_config *cfg = NULL, *back = NULL, *defaults = NULL;
    char err[512] = "", *text, *again;

    clear_env();
    ck_assert_int_eq(dexec_config_load(NULL, &defaults, err, sizeof(err)), DEXEC_OK);
    text = dexec_config_dump(defaults);
    ck_assert_ptr_nonnull(strstr(text, "num_gpus = 1;  # default\n"));
    ck_assert_int_eq(dexec_config_parse(text, "dump", &back, err, sizeof(err)), DEXEC_OK);
    assert_same_config(defaults, back);
    dexec_config_free(back);
    free(text);

    ck_assert_int_eq(dexec_config_parse("num_gpus = 2;\n", "orig.conf", &cfg, err, sizeof(err)),
                     DEXEC_OK);
    for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++)
        ck_assert_msg(dexec_config_set(cfg, sets[i][0], sets[i][1], err, sizeof(err)) == DEXEC_OK,
                      "%s", err);
    ck_assert_int_eq(dexec_config_set(cfg, "num_gpus", "2", err, sizeof(err)), DEXEC_OK);
    text = dexec_config_dump(cfg);
    ck_assert_ptr_nonnull(text);
    ck_assert_ptr_nonnull(strstr(text, "num_gpus = 2;  # from set\n"));
    ck_assert_ptr_nonnull(strstr(text, "  memory = 9223372036854775807L;  # from set\n"));
    ck_assert_ptr_nonnull(strstr(text, "  rpc = 1.0e-05;  # from set\n"));
    ck_assert_ptr_nonnull(strstr(text, "  address = \"auto\";  # from set\n"));
    ck_assert_ptr_nonnull(strstr(text, "    ttl = 3600;  # from set\n"));
    ck_assert_ptr_nonnull(strstr(text, "    url = \"redis://127.0.0.1:6379/0\";  # default\n"));
    ck_assert_msg(dexec_config_parse(text, "dump", &back, err, sizeof(err)) == DEXEC_OK,
                  "%s\n%s", err, text);
    assert_same_config(cfg, back);
    ck_assert_int_eq(dexec_config_set(cfg, "num_gpus", "3", err, sizeof(err)), DEXEC_OK);

    /* the dump of the copy is the same text, but for where values came from */
    again = dexec_config_dump(back);
    ck_assert_uint_eq(strlen(again) > 0, 1);
    ck_assert_ptr_nonnull(strstr(again, "num_gpus = 2;  # from dump:"));
    free(again);
    free(text);
    dexec_config_free(back);
    dexec_config_free(cfg);
    dexec_config_free(defaults);
}
END_TEST

/* runtime_env.env_vars: NAME = "value" in files; NAME=value,... on a
 * command line, where a value may hold commas */
START_TEST(test_env_vars)
{
    char err[512];
    dexec_config *cfg = NULL;
    const dexec_value *m = NULL;
    char *dump;

    ck_assert_int_eq(dexec_config_parse("runtime_env = { env_vars = { CUDA_VISIBLE_DEVICES = "
                                        "\"0,1\"; OMP_NUM_THREADS = \"4\"; }; };",
                                        "t.conf", &cfg, err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_map(cfg, "runtime_env.env_vars", &m), DEXEC_OK);
    ck_assert_uint_eq(m->u.map.len, 2);
    ck_assert_str_eq(dexec_value_as_str(dexec_value_map_get(m, "CUDA_VISIBLE_DEVICES"), ""),
                     "0,1");
    dump = dexec_config_dump(cfg);
    ck_assert_ptr_nonnull(
        strstr(dump, "env_vars = { CUDA_VISIBLE_DEVICES = \"0,1\"; OMP_NUM_THREADS = \"4\"; };"));
    free(dump);
    ck_assert_int_eq(
        dexec_config_set(cfg, "runtime_env.env_vars", "A=1,2, B_2=x y", err, sizeof(err)),
        DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_map(cfg, "runtime_env.env_vars", &m), DEXEC_OK);
    ck_assert_uint_eq(m->u.map.len, 2);
    ck_assert_str_eq(dexec_value_as_str(dexec_value_map_get(m, "A"), ""), "1,2");
    ck_assert_str_eq(dexec_value_as_str(dexec_value_map_get(m, "B_2"), ""), "x y");
    ck_assert_int_eq(dexec_config_set(cfg, "runtime_env.env_vars", "1A=x", err, sizeof(err)),
                     DEXEC_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err, "\"1A\" is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"));
    dexec_config_free(cfg);
    cfg = NULL;
    ck_assert_int_eq(dexec_config_parse("runtime_env = { env_vars = { A = 1; }; };", "t.conf",
                                        &cfg, err, sizeof(err)),
                     DEXEC_ECONFIG);
    ck_assert_str_eq(err, "t.conf:1: runtime_env.env_vars: A: expected a string, got an integer");
}
END_TEST

START_TEST(test_key_info)
{
    const char *key = NULL, *type = NULL, *def = NULL, *range = NULL, *doc = NULL;
    size_t n = 0;

    ck_assert_int_eq(dexec_config_key_info(2, &key, &type, &def, &range, &doc), DEXEC_OK);
    ck_assert_str_eq(key, "num_gpus");
    ck_assert_str_eq(type, "integer");
    ck_assert_str_eq(def, "1");
    ck_assert_str_eq(range, "1..64");
    ck_assert_uint_ne(strlen(doc), 0);
    while (dexec_config_key_info(n, &key, &type, &def, &range, &doc) == DEXEC_OK) {
        ck_assert_uint_ne(strlen(doc), 0);
        n++;
    }
    /* the core's keys; discovery.redis.* are the redis_discovery plugin's */
    ck_assert_uint_eq(n, 51);
    ck_assert_int_eq(dexec_config_key_info(n, &key, NULL, NULL, NULL, NULL), DEXEC_ENOTFOUND);
}
END_TEST

/* ---- the dexec config command ---------------------------------------------- */

/* Runs the dexec tool with args (shell words); returns its exit status and
 * its stdout and stderr together in out. */
static int run_cli(const char *args, char *out, size_t outlen)
{
    const char *cli = getenv("DEXEC_CLI");
    char cmd[1024];
    size_t len = 0;
    FILE *p;
    int status;

    snprintf(cmd, sizeof(cmd), "'%s' %s 2>&1", cli, args);
    p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    len = fread(out, 1, outlen - 1, p);
    out[len] = '\0';
    status = pclose(p);
    ck_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

START_TEST(test_cli)
{
    const char *path;
    char out[16384], args[600], want[700];

    clear_env();
    path = write_file("cli.conf", "num_gpus = 2;\nexternal = { worker_names = [ \"w0\" ]; };\n");
    snprintf(args, sizeof(args), "config check -s timeouts.rpc=4 %s", path);
    ck_assert_int_eq(run_cli(args, out, sizeof(out)), 0);
    snprintf(want, sizeof(want), "num_gpus = 2;  # from %s:1\n", path);
    ck_assert_ptr_nonnull(strstr(out, want));
    ck_assert_ptr_nonnull(strstr(out, "  rpc = 4.0;  # from set\n"));
    ck_assert_ptr_nonnull(strstr(out, "  worker_names = [ \"w0\" ];"));

    path = write_file("cli.conf", "timeouts = {\n  rcp = 4.0;\n};\n");
    snprintf(args, sizeof(args), "config check -c %s", path);
    ck_assert_int_eq(run_cli(args, out, sizeof(out)), 1);
    snprintf(want, sizeof(want),
             "dexec: %s:2: timeouts.rcp: unknown key (did you mean timeouts.rpc?)\n", path);
    ck_assert_str_eq(out, want);

    /* num_gpus against the parallel groups, as the engine checks it */
    path = write_file("cli.conf", "num_gpus = 3;\nparallel = { cfg = 2; };\n");
    snprintf(args, sizeof(args), "config check %s", path);
    ck_assert_int_eq(run_cli(args, out, sizeof(out)), 1);
    snprintf(want, sizeof(want),
             "dexec: %s:1: num_gpus = 3 is not a multiple of parallel.cfg x parallel.sequence = "
             "2 x 1: num_gpus = data-parallel groups x cfg x sequence\n",
             path);
    ck_assert_str_eq(out, want);
    snprintf(args, sizeof(args), "config check -s num_gpus=4 -s parallel.sequence=2 %s", path);
    ck_assert_int_eq(run_cli(args, out, sizeof(out)), 0);
    snprintf(args, sizeof(args), "config check -s num_gpus=6 -s parallel.sequence=2 %s", path);
    ck_assert_int_eq(run_cli(args, out, sizeof(out)), 1);
    ck_assert_str_eq(out, "dexec: set: num_gpus = 6 is not a multiple of parallel.cfg x "
                          "parallel.sequence = 2 x 2: num_gpus = data-parallel groups x cfg x "
                          "sequence\n");
    /* unset, num_gpus is left to the command line (--num-gpus): a note */
    path = write_file("cli.conf", "parallel = { cfg = 2; };\n");
    snprintf(args, sizeof(args), "config check %s", path);
    ck_assert_int_eq(run_cli(args, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "dexec: note: num_gpus is not set (default 1), and parallel.cfg x "
                              "parallel.sequence = 2 x 1 needs a multiple of 2: give it with "
                              "--num-gpus when you run, or here with -s num_gpus=N to check "
                              "it\n") != NULL,
                  "got: %s", out);

    ck_assert_int_eq(run_cli("config keys", out, sizeof(out)), 0);
    ck_assert_ptr_nonnull(strstr(out, "\nnum_gpus "));
    ck_assert_ptr_nonnull(strstr(out, "discovery.redis.command_timeout"));
    ck_assert_int_eq(run_cli("config --help", out, sizeof(out)), 0);
    ck_assert_ptr_nonnull(strstr(out, "Usage: dexec config check"));
    ck_assert_int_eq(run_cli("config frobnicate", out, sizeof(out)), 2);
}
END_TEST

/* ---- settings of a third-party plugin ---------------------------------------- */

/* The test plugins (tests/plugins/.libs) in front of the build tree's. */
static int use_test_plugins(void)
{
    const char *b = getenv("DEXEC_TEST_BUILDDIR");
    char path[2048];

    clear_env();
    if (b == NULL)
        return 0;
    snprintf(path, sizeof(path), "%s/plugins/.libs%s%s", b, plugin_path ? ":" : "",
             plugin_path ? plugin_path : "");
    setenv("DEXEC_PLUGIN_PATH", path, 1);
    return 1;
}

static const struct {
    const char *text;
    const char *message; /* %s is the file's path */
} bad_plugin_files[] = {
    {"testsettings = { retries = \"3\"; };\n",
     "%s:1: testsettings.retries: expected an integer, got a string"},
    {"num_gpus = 2;\ntestsettings = {\n  queue = \"q\";\n  retires = 3;\n};\n",
     "%s:4: testsettings.retires: unknown key (did you mean testsettings.retries?)"},
    {"testsettings = {\n  retries = 11;\n};\n",
     "%s:2: testsettings.retries: must be between 0 and 10, got 11"},
    {"testsettings = { ratio = 1.5; };\n",
     "%s:1: testsettings.ratio: must be between 0 and 1, got 1.5"},
    {"testsettings = { verbose = 1; };\n",
     "%s:1: testsettings.verbose: expected a boolean, got an integer"},
    {"testsettings = { mode = \"quick\"; };\n",
     "%s:1: testsettings.mode: \"quick\" is not one of: fast, safe"},
    {"testsettings = { queue = \"\"; };\n", "%s:1: testsettings.queue: \"\" must not be empty"},
    {"testsettings = { limits = { cpu = { a = \"x\"; }; }; };\n",
     "%s:1: testsettings.limits.cpu: a: expected a number, got a string"},
    {"testsettings = 3;\n", "%s:1: testsettings: expected a group, got an integer"},
    /* named as the backend, the plugin is known before its section is met */
    {"distributed_executor_backend = \"testsettings\";\ntestsettings = { tags = [ \"\" ]; };\n",
     "%s:2: testsettings.tags: element 1 is empty"},
};

START_TEST(test_plugin_bad_file)
{
    const char *path = write_file("plugin.conf", bad_plugin_files[_i].text);
    dexec_config *cfg = (dexec_config *)1;
    char want[1024], err[2048] = "";

    ck_assert(use_test_plugins());
    snprintf(want, sizeof(want), bad_plugin_files[_i].message, path);
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    ck_assert_ptr_null(cfg);
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(test_plugin_values)
{
    const char *path = write_file("plugin.conf", "testsettings = {\n"
                                                 "  queue = \"gpu-high\";\n"
                                                 "  retries = 7;\n"
                                                 "  ratio = 1;\n"
                                                 "  verbose = true;\n"
                                                 "  tags = [ \"a\", \"b\" ];\n"
                                                 "  limits = { cpu = { small = 2; }; };\n"
                                                 "  api_key = \"k-123456\";\n"
                                                 "};\n");
    const char *s = NULL, *key, *plugin;
    const char *const *items = NULL;
    const dexec_value *map = NULL;
    dexec_config *cfg = NULL;
    dexec_engine *e = NULL;
    char err[2048] = "", *text;
    int64_t i = 0;
    double f = 0;
    int b = -1, seen = 0;
    size_t n = 0;

    ck_assert(use_test_plugins());
    /* found by its section: the configuration does not name the plugin */
    ck_assert_msg(dexec_config_load(path, &cfg, err, sizeof(err)) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(dexec_config_get_string(cfg, "testsettings.queue", &s), DEXEC_OK);
    ck_assert_str_eq(s, "gpu-high");
    ck_assert_int_eq(dexec_config_get_int(cfg, "testsettings.retries", &i), DEXEC_OK);
    ck_assert_int_eq(i, 7);
    ck_assert_int_eq(dexec_config_get_float(cfg, "testsettings.ratio", &f), DEXEC_OK);
    ck_assert_double_eq(f, 1.0);
    ck_assert_int_eq(dexec_config_get_bool(cfg, "testsettings.verbose", &b), DEXEC_OK);
    ck_assert_int_eq(b, 1);
    ck_assert_int_eq(dexec_config_get_list(cfg, "testsettings.tags", &n, &items), DEXEC_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(items[1], "b");
    ck_assert_int_eq(dexec_config_get_map(cfg, "testsettings.limits.cpu", &map), DEXEC_OK);
    ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(map, "small"), 0), 2);
    ck_assert_int_eq(dexec_config_get_string(cfg, "testsettings.mode", &s), DEXEC_OK);
    ck_assert_str_eq(s, "fast"); /* the plugin's default */
    ck_assert_str_eq(dexec_config_origin(cfg, "testsettings.mode"), "default");
    {
        char want[600];

        snprintf(want, sizeof(want), "%s:3", path);
        ck_assert_str_eq(dexec_config_origin(cfg, "testsettings.retries"), want);
    }
    /* a getter of another type, as for the core's keys */
    ck_assert_int_eq(dexec_config_get_int(cfg, "testsettings.queue", &i), DEXEC_EINVAL);
    /* the schema lists the settings with their plugin */
    for (size_t k = 0; dexec_config_schema_key(cfg, k, &key, NULL, NULL, NULL, NULL, &plugin) ==
                       DEXEC_OK;
         k++)
        if (strncmp(key, "testsettings.", 13) == 0) {
            ck_assert_str_eq(plugin, "testsettings");
            seen++;
        }
    ck_assert_int_eq(seen, 8);
    /* the plugin reads them through the getters (its create() reports them) */
    ck_assert_int_eq(dexec_config_set(cfg, "distributed_executor_backend", "testsettings", err,
                                      sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_ENOTSUP);
    ck_assert_ptr_nonnull(strstr(err, "testsettings: queue=gpu-high retries=7 ratio=1 verbose=1 "
                                      "mode=fast tags=2:a cpu=1 key=k-123456"));
    /* set() validates them like the file */
    ck_assert_int_eq(dexec_config_set(cfg, "testsettings.retries", "12", err, sizeof(err)),
                     DEXEC_ECONFIG);
    ck_assert_str_eq(err, "testsettings.retries: must be between 0 and 10, got 12");
    ck_assert_int_eq(dexec_config_set(cfg, "testsettings.verbose", "off", err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_bool(cfg, "testsettings.verbose", &b), DEXEC_OK);
    ck_assert_int_eq(b, 0);
    /* the dump names the plugin, never shows the secret, and reads back */
    text = dexec_config_dump(cfg);
    ck_assert_ptr_nonnull(strstr(text, "# testsettings: the settings of plugin testsettings ("));
    ck_assert_ptr_nonnull(strstr(text, "  retries = 7;  # from "));
    ck_assert_ptr_nonnull(strstr(text, "  api_key = \"********\";"));
    ck_assert_ptr_null(strstr(text, "k-123456"));
    ck_assert_ptr_nonnull(strstr(text, "  verbose = false;  # from set\n"));
    dexec_config_free(cfg);
    cfg = NULL;
    ck_assert_msg(dexec_config_parse(text, "dump", &cfg, err, sizeof(err)) == DEXEC_OK, "%s",
                  err);
    ck_assert_int_eq(dexec_config_get_int(cfg, "testsettings.retries", &i), DEXEC_OK);
    ck_assert_int_eq(i, 7);
    free(text);

    dexec_config_free(cfg);

    /* named by set(), the plugin brings its defaults, and its keys can be set */
    ck_assert_int_eq(dexec_config_parse("", "t", &cfg, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_int(cfg, "testsettings.retries", &i), DEXEC_ENOTFOUND);
    ck_assert_int_eq(dexec_config_set(cfg, "testsettings.retries", "4", err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_config_get_int(cfg, "testsettings.retries", &i), DEXEC_OK);
    ck_assert_int_eq(i, 4);
    ck_assert_int_eq(dexec_config_get_string(cfg, "testsettings.queue", &s), DEXEC_OK);
    ck_assert_str_eq(s, "default");
    dexec_config_free(cfg);
}
END_TEST

START_TEST(test_plugin_missing)
{
    const char *path = write_file("plugin.conf", "testsettings = { retries = 3; };\n");
    dexec_config *cfg = NULL;
    char want[1024], err[2048] = "";

    /* without the plugin in the search path the section is unknown */
    clear_env();
    snprintf(want, sizeof(want),
             "%s:1: testsettings: unknown key ('dexec config keys' lists the known ones)", path);
    ck_assert_int_eq(dexec_config_load(path, &cfg, err, sizeof(err)), DEXEC_ECONFIG);
    ck_assert_str_eq(err, want);

    /* a plugin built for ABI 1.0 is refused (its structs predate 1.1): a
     * file naming it still parses, and asking for its settings says why */
    ck_assert(use_test_plugins());
    ck_assert_int_eq(dexec_config_parse("distributed_executor_backend = \"testold\";\n", "t",
                                        &cfg, err, sizeof(err)),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_config_add_plugin_settings(cfg, "testold", err, sizeof(err)),
                     DEXEC_EABI);
    ck_assert_msg(strstr(err, "rebuild") != NULL, "%s", err);
    dexec_config_free(cfg);
}
END_TEST

START_TEST(test_plugin_cli)
{
    const char *path;
    char out[65536], args[600], want[700];

    ck_assert(use_test_plugins());
    ck_assert_int_eq(run_cli("config keys", out, sizeof(out)), 0);
    ck_assert_ptr_nonnull(strstr(out, "\ntestsettings.retries             integer  default 2; "
                                      "accepts 0..10  (plugin testsettings)\n"
                                      "    times a failed job is submitted again\n"));
    ck_assert_ptr_nonnull(strstr(out, "\ntestsettings.mode                string   default fast; "
                                      "accepts fast|safe  (plugin testsettings)\n"));
    ck_assert_ptr_nonnull(strstr(out, "\ndiscovery.redis.ttl              integer  default 10; "
                                      "accepts 1..3600  (plugin redis_discovery)\n"));

    path = write_file("cli.conf", "testsettings = {\n  ratio = -0.5;\n};\n");
    snprintf(args, sizeof(args), "config check %s", path);
    ck_assert_int_eq(run_cli(args, out, sizeof(out)), 1);
    snprintf(want, sizeof(want),
             "dexec: %s:2: testsettings.ratio: must be between 0 and 1, got -0.5\n", path);
    ck_assert_str_eq(out, want);

    path = write_file("cli.conf", "testsettings = { tags = [ \"x\" ]; };\n"
                                  "discovery = { redis = { url = \"redis://u:hunter2@r:6379/1\"; "
                                  "}; };\n");
    snprintf(args, sizeof(args), "config check -s testsettings.retries=9 %s", path);
    ck_assert_int_eq(run_cli(args, out, sizeof(out)), 0);
    ck_assert_ptr_nonnull(strstr(out, "  retries = 9;  # from set\n"));
    ck_assert_ptr_nonnull(strstr(out, "  tags = [ \"x\" ];  # from "));
    ck_assert_ptr_nonnull(strstr(out, "    url = \"redis://u:****@r:6379/1\";  # from "));
    ck_assert_ptr_null(strstr(out, "hunter2"));
}
END_TEST

/* The CLI cases need the dexec tool's path and the plugin cases the build
 * directory, which "make check" sets; without them those cases are not
 * run and the suite says it skipped them (exit 77). */
static int have_cli(void)
{
    return getenv("DEXEC_CLI") != NULL && access(getenv("DEXEC_CLI"), X_OK) == 0;
}

static int have_builddir(void)
{
    return getenv("DEXEC_TEST_BUILDDIR") != NULL;
}

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");

    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_loop_test(tc, test_bad_file, 0, (int)(sizeof(bad_files) / sizeof(bad_files[0])));
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_bad_env);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_file_values);
    tcase_add_test(tc, test_include);
    tcase_add_test(tc, test_env_overrides_file);
    tcase_add_test(tc, test_set);
    tcase_add_test(tc, test_dump_round_trip);
    tcase_add_test(tc, test_key_info);
    tcase_add_test(tc, test_env_vars);
    if (have_cli())
        tcase_add_test(tc, test_cli);
    if (have_builddir()) {
        tcase_add_loop_test(tc, test_plugin_bad_file, 0,
                            (int)(sizeof(bad_plugin_files) / sizeof(bad_plugin_files[0])));
        tcase_add_test(tc, test_plugin_values);
        tcase_add_test(tc, test_plugin_missing);
        if (have_cli())
            tcase_add_test(tc, test_plugin_cli);
    }
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (getenv("DEXEC_PLUGIN_PATH") != NULL)
        plugin_path = strdup(getenv("DEXEC_PLUGIN_PATH"));
    SRunner *sr = srunner_create(config_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    free(plugin_path);
    if (failed == 0 && (!have_cli() || !have_builddir())) {
        printf("SKIP: %s\n", !have_cli() ? "the dexec config command cases need $DEXEC_CLI, "
                                           "the path of the dexec tool (make check sets it)"
                                         : "the plugin cases need $DEXEC_TEST_BUILDDIR (make "
                                           "check sets it)");
        return 77;
    }
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
