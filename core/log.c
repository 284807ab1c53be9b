/* log.c - the logger shared by the core, the tools and the plugins. */
#include "config.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#include "internal.h"

static int log_level = -1; /* -1: not yet read from DEXEC_LOG_LEVEL */
static int log_syslog;
static char log_program[64] = "dexec"; /* the label of every line: PROGRAM[pid] */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

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

    if ((int)level > (int)dexec_log_get_level() || (int)level < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    fprintf(stderr, "%s[%ld] %s %s: %s\n", log_program, (long)getpid(), level_names[level],
            component != NULL ? component : log_program, msg);
    if (log_syslog)
        syslog(prio[level], "%s: %s", component != NULL ? component : "dexec", msg);
    pthread_mutex_unlock(&log_lock);
}
