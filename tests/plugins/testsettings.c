/* testsettings.c - a test-only executor written as a third-party plugin
 * would be (only <dexec/plugin.h>): it declares settings of its own in the
 * section "testsettings", and its create() reads them back through the
 * getters and reports them in its refusal, so a test can see what a
 * plugin sees. */
#include <stdio.h>

#include <dexec/plugin.h>

static const dexec_setting ts_settings[] = {
    {.name = "queue", .type = DEXEC_SETTING_STRING, .flags = DEXEC_SETTING_NONEMPTY,
     .def = "default", .doc = "queue the jobs go to"},
    {.name = "retries", .type = DEXEC_SETTING_INT, .def = "2", .imin = 0, .imax = 10,
     .doc = "times a failed job is submitted again"},
    {.name = "ratio", .type = DEXEC_SETTING_FLOAT, .def = "0.5", .fmin = 0, .fmax = 1,
     .doc = "share of the jobs sent to the fast queue"},
    {.name = "verbose", .type = DEXEC_SETTING_BOOL, .def = "false", .doc = "log every job"},
    {.name = "mode", .type = DEXEC_SETTING_STRING, .def = "fast", .choices = "fast|safe",
     .doc = "how jobs are placed"},
    {.name = "tags", .type = DEXEC_SETTING_LIST, .doc = "labels given to every job"},
    {.name = "limits.cpu", .type = DEXEC_SETTING_MAP, .doc = "CPU shares per pool"},
    {.name = "api_key", .type = DEXEC_SETTING_STRING, .flags = DEXEC_SETTING_SECRET,
     .doc = "key of the scheduler's API"},
};

static const dexec_settings ts_table = {DEXEC_SETTINGS_INIT("testsettings", ts_settings)};

static dexec_status ts_create(const dexec_host *host, dexec_executor **out, char *err,
                              size_t errlen)
{
    const char *queue = "?", *mode = "?", *key = "?";
    const char *const *tags = NULL;
    const dexec_value *cpu = NULL;
    int64_t retries = -1;
    double ratio = -1;
    int verbose = -1;
    size_t ntags = 0;

    (void)out;
    dexec_config_get_string(host->config, "testsettings.queue", &queue);
    dexec_config_get_int(host->config, "testsettings.retries", &retries);
    dexec_config_get_float(host->config, "testsettings.ratio", &ratio);
    dexec_config_get_bool(host->config, "testsettings.verbose", &verbose);
    dexec_config_get_string(host->config, "testsettings.mode", &mode);
    dexec_config_get_list(host->config, "testsettings.tags", &ntags, &tags);
    dexec_config_get_map(host->config, "testsettings.limits.cpu", &cpu);
    dexec_config_get_string(host->config, "testsettings.api_key", &key);
    snprintf(err, errlen,
             "testsettings: queue=%s retries=%lld ratio=%g verbose=%d mode=%s tags=%zu%s%s "
             "cpu=%zu key=%s",
             queue, (long long)retries, ratio, verbose, mode, ntags, ntags ? ":" : "",
             ntags ? tags[0] : "", cpu != NULL ? cpu->u.map.len : 0, key);
    return DEXEC_ENOTSUP;
}

static int ts_num_ranks(const dexec_executor *ex)
{
    (void)ex;
    return 0;
}

static dexec_status ts_rpc(dexec_executor *ex, const char *method, double timeout,
                           const dexec_value *args, const dexec_value *kwargs,
                           int unique_reply_rank, dexec_value **replies, char *err, size_t errlen)
{
    (void)ex, (void)method, (void)timeout, (void)args, (void)kwargs, (void)unique_reply_rank;
    (void)replies;
    snprintf(err, errlen, "testsettings: never created");
    return DEXEC_ENOTSUP;
}

static dexec_status ts_add(dexec_executor *ex, const dexec_request *reqs, size_t n,
                           dexec_output *outs, double timeout, dexec_progress_fn progress,
                           void *user, char *err, size_t errlen)
{
    (void)ex, (void)reqs, (void)n, (void)outs, (void)timeout, (void)progress, (void)user;
    snprintf(err, errlen, "testsettings: never created");
    return DEXEC_ENOTSUP;
}

static dexec_status ts_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    (void)ex, (void)timeout;
    snprintf(err, errlen, "testsettings: never created");
    return DEXEC_ENOTSUP;
}

static void ts_shutdown(dexec_executor *ex)
{
    (void)ex;
}

static const dexec_executor_ops ts_ops = {
    .struct_size = sizeof(dexec_executor_ops),
    .create = ts_create,
    .num_ranks = ts_num_ranks,
    .collective_rpc = ts_rpc,
    .add_requests = ts_add,
    .check_health = ts_health,
    .shutdown = ts_shutdown,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "testsettings", "0.0",
                           "test executor with settings of its own", &ts_ops),
    .settings = &ts_table};
