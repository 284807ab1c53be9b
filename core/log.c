/* log.c - the logger shared by the core, the tools and the plugins, and
 * the ring of recent lines a worker serves through get_logs. */
#include "config.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

static int log_level = -1; /* -1: not yet read from DEXEC_LOG_LEVEL */
static int log_syslog;
static char log_program[64] = "dexec"; /* the label of every line: PROGRAM[pid] */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* The last lines logged (dexec_log_keep), oldest at ring_next once full. */
typedef struct kept_line {
    double time; /* unix time */
    int level;
    char *component, *message;
} kept_line;

static kept_line *ring;
static size_t ring_cap, ring_len, ring_next;
static int ring_level = -1; /* -1: nothing kept */

static void kept_clear(kept_line *k)
{
    free(k->component);
    free(k->message);
    memset(k, 0, sizeof(*k));
}

dexec_status dexec_log_keep(size_t n, dexec_log_level level)
{
    kept_line *r = NULL;

    if (n > DEXEC_LOG_KEEP_MAX || (int)level < DEXEC_LOG_ERROR || level > DEXEC_LOG_DEBUG)
        return DEXEC_EINVAL;
    if (n > 0 && (r = calloc(n, sizeof(*r))) == NULL)
        return DEXEC_ENOMEM;
    pthread_mutex_lock(&log_lock);
    for (size_t i = 0; i < ring_len; i++)
        kept_clear(&ring[i]);
    free(ring);
    ring = r;
    ring_cap = n;
    ring_len = ring_next = 0;
    __atomic_store_n(&ring_level, n > 0 ? (int)level : -1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&log_lock);
    return DEXEC_OK;
}

/* Called with log_lock held. Out of memory: the line is not kept. */
static void keep(int level, const char *component, const char *msg)
{
    struct timespec ts;
    kept_line *k;

    if (ring_cap == 0 || level > ring_level)
        return;
    k = &ring[ring_next];
    kept_clear(k);
    clock_gettime(CLOCK_REALTIME, &ts);
    k->time = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    k->level = level;
    k->component = strdup(component);
    k->message = strdup(msg);
    ring_next = (ring_next + 1) % ring_cap;
    if (ring_len < ring_cap)
        ring_len++;
}

dexec_value *dexec_log_recent(size_t max)
{
    dexec_value *a = dexec_value_array();
    size_t first, count;

    if (a == NULL)
        return NULL;
    pthread_mutex_lock(&log_lock);
    count = max > 0 && max < ring_len ? max : ring_len;
    /* the oldest kept line is at ring_next once the ring is full */
    first = (ring_len == ring_cap ? ring_next : 0) + (ring_len - count);
    for (size_t i = 0; i < count; i++) {
        const kept_line *k = &ring[(first + i) % ring_cap];
        dexec_value *m = dexec_value_map();

        if (m == NULL || dexec_value_array_push(a, m) != 0) {
            dexec_value_free(m);
            dexec_value_free(a);
            a = NULL;
            break;
        }
        dexec_value_map_set(m, "time", dexec_value_float(k->time));
        dexec_value_map_set(m, "level", dexec_value_str(level_names[k->level]));
        dexec_value_map_set(m, "component",
                            dexec_value_str(k->component != NULL ? k->component : ""));
        dexec_value_map_set(m, "message", dexec_value_str(k->message != NULL ? k->message : ""));
    }
    pthread_mutex_unlock(&log_lock);
    return a;
}

int dexec_log_level_parse(const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    if (strcasecmp(name, "warning") == 0)
        return DEXEC_LOG_WARN;
    return -1;
}

dexec_log_level dexec_log_get_level(void)
{
    if (log_level < 0) {
        int l = dexec_log_level_parse(getenv("DEXEC_LOG_LEVEL"));
        log_level = l >= 0 ? l : DEXEC_LOG_WARN;
    }
    return (dexec_log_level)log_level;
}

void dexec_log_set_level(dexec_log_level level)
{
    if ((int)level >= DEXEC_LOG_ERROR && level <= DEXEC_LOG_DEBUG)
        log_level = (int)level;
}

void dexec_log_set_program(const char *name)
{
    pthread_mutex_lock(&log_lock);
    snprintf(log_program, sizeof(log_program), "%s", name != NULL && *name ? name : "dexec");
    pthread_mutex_unlock(&log_lock);
}

void dexec_log_use_syslog(int on, const char *ident)
{
    pthread_mutex_lock(&log_lock);
    if (on && !log_syslog)
        openlog(ident != NULL ? ident : log_program, LOG_PID, LOG_DAEMON);
    else if (!on && log_syslog)
        closelog();
    log_syslog = on;
    pthread_mutex_unlock(&log_lock);
}

void dexec_log(dexec_log_level level, const char *component, const char *fmt, ...)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    char msg[2048];
    va_list ap;

    int shown;

    if ((int)level < 0 || (int)level > DEXEC_LOG_DEBUG)
        return;
    shown = (int)level <= (int)dexec_log_get_level();
    if (!shown && (int)level > __atomic_load_n(&ring_level, __ATOMIC_RELAXED))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    keep((int)level, component != NULL ? component : log_program, msg);
    if (!shown) {
        pthread_mutex_unlock(&log_lock);
        return;
    }
    fprintf(stderr, "%s[%ld] %s %s: %s\n", log_program, (long)getpid(), level_names[level],
            component != NULL ? component : log_program, msg);
    if (log_syslog)
        syslog(prio[level], "%s: %s", component != NULL ? component : "dexec", msg);
    pthread_mutex_unlock(&log_lock);
}
