/*
 * discovery.c - opens the configured discovery plugin and connects it to
 * its registry: the plugin name and URL are chosen, the plugin loaded as a
 * discovery plugin and opened in one place, so every caller reports a
 * failure the same way and none of them prints a registry password.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/discovery.h>

#include "internal.h"

#define MASK "***"

struct dexec_discovery_handle {
    dexec_plugin_handle *plugin;
    const dexec_discovery_ops *ops;
    dexec_discovery *d;
    dexec_host host;
    char *url; /* redacted; NULL: the plugin's configured one */
};

/* Finds the password in url: its start and length, or -1. */
static int find_password(const char *url, size_t *start, size_t *n)
{
    const char *scheme = strstr(url, "://"), *q;

    if (scheme != NULL) {
        const char *auth = scheme + 3;
        size_t authlen = strcspn(auth, "/?#");
        const char *at = memchr(auth, '@', authlen);
        const char *colon = at != NULL ? memchr(auth, ':', (size_t)(at - auth)) : NULL;

        if (colon != NULL && at > colon + 1) {
            *start = (size_t)(colon + 1 - url);
            *n = (size_t)(at - colon - 1);
            return 0;
        }
    }
    for (q = strchr(url, '?'); q != NULL; q = strchr(q + 1, '&')) {
        if (strncmp(q + 1, "password=", 9) == 0 && q[10] != '\0' && q[10] != '&') {
            *start = (size_t)(q + 10 - url);
            *n = strcspn(q + 10, "&#");
            return 0;
        }
    }
    return -1;
}

void dexec_url_redact(const char *url, char *buf, size_t len)
{
    size_t start, n;

    if (buf == NULL || len == 0)
        return;
    if (url == NULL) {
        buf[0] = '\0';
        return;
    }
    if (find_password(url, &start, &n) != 0) {
        snprintf(buf, len, "%s", url);
        return;
    }
    snprintf(buf, len, "%.*s" MASK "%s", (int)start, url, url + start + n);
}

/* Replaces every occurrence of the URL's password in msg (a plugin may echo
 * the URL it was given) with ***. */
static void mask_echoes(const char *url, char *msg, size_t msglen)
{
    size_t start, n;
    char secret[256], *p, *from = msg;

    if (url == NULL || find_password(url, &start, &n) != 0 || n == 0 || n >= sizeof(secret))
        return;
    memcpy(secret, url + start, n);
    secret[n] = '\0';
    while ((p = strstr(from, secret)) != NULL) {
        size_t tail = strlen(p + n) + 1;

        if (n < sizeof(MASK) - 1 && (size_t)(p - msg) + sizeof(MASK) - 1 + tail > msglen)
            tail = msglen - (size_t)(p - msg) - (sizeof(MASK) - 1);
        memmove(p + sizeof(MASK) - 1, p + n, tail);
        memcpy(p, MASK, sizeof(MASK) - 1);
        msg[msglen - 1] = '\0';
        from = p + sizeof(MASK) - 1;
    }
}

dexec_status dexec_discovery_open(const dexec_config *cfg, const char *plugin, const char *url,
                                  dexec_discovery_handle **out, char *err, size_t errlen)
{
    const char *from_config = "";
    const char *env = getenv("DEXEC_REGISTRY");
    dexec_discovery_handle *h;
    char msg[1536], shown[512];
    dexec_status st;

    if (out == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "dexec_discovery_open: out is NULL");
    *out = NULL;
    if (plugin == NULL) {
        plugin = "redis_discovery";
        dexec_config_get_string(cfg, "external.discovery", &plugin);
        from_config = " (external.discovery)";
    }
    if (url == NULL && env != NULL && env[0] != '\0')
        url = env;
    if (url != NULL && url[0] == '\0')
        url = NULL;
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "discovery plugin '%s': out of memory", plugin);
    st = dexec_plugin_load(plugin, DEXEC_PLUGIN_DISCOVERY, cfg, &h->plugin, msg, sizeof(msg));
    if (st != DEXEC_OK) {
        free(h);
        return dx_fail(err, errlen, st, "discovery plugin '%s'%s: %s", plugin, from_config, msg);
    }
    h->ops = dexec_plugin_descriptor(h->plugin)->ops;
    h->host.struct_size = sizeof(h->host);
    h->host.config = cfg;
    h->host.log = dexec_log;
    if (url != NULL) {
        dexec_url_redact(url, shown, sizeof(shown));
        h->url = strdup(shown);
        if (h->url == NULL) {
            dexec_discovery_close(h);
            return dx_fail(err, errlen, DEXEC_ENOMEM, "discovery plugin '%s': out of memory",
                           plugin);
        }
    }
    msg[0] = '\0';
    st = h->ops->open(&h->host, url, &h->d, msg, sizeof(msg));
    if (st != DEXEC_OK) {
        mask_echoes(url, msg, sizeof(msg));
        dx_fail(err, errlen, st, "discovery plugin %s (%s), registry %s: %s",
                dexec_discovery_plugin_name(h), dexec_plugin_file(h->plugin),
                h->url != NULL ? h->url : "from the configuration",
                msg[0] != '\0' ? msg : dexec_status_name(st));
        h->d = NULL;
        dexec_discovery_close(h);
        return st;
    }
    *out = h;
    return DEXEC_OK;
}

dexec_status dexec_discovery_register(dexec_discovery_handle *h, const dexec_actor_info *a,
                                      int ttl_s, char *err, size_t errlen)
{
    return h->ops->register_actor(h->d, a, ttl_s, err, errlen);
}

dexec_status dexec_discovery_heartbeat(dexec_discovery_handle *h, const dexec_actor_info *a,
                                       int ttl_s, char *err, size_t errlen)
{
    return h->ops->heartbeat(h->d, a, ttl_s, err, errlen);
}

dexec_status dexec_discovery_resolve(dexec_discovery_handle *h, const char *name,
                                     dexec_actor_info *out, char *err, size_t errlen)
{
    return h->ops->resolve(h->d, name, out, err, errlen);
}

dexec_status dexec_discovery_list(dexec_discovery_handle *h, const char *kind,
                                  dexec_actor_info **out, size_t *n, char *err, size_t errlen)
{
    return h->ops->list(h->d, kind, out, n, err, errlen);
}

dexec_status dexec_discovery_deregister(dexec_discovery_handle *h, const dexec_actor_info *a,
                                        char *err, size_t errlen)
{
    return h->ops->deregister(h->d, a, err, errlen);
}

const char *dexec_discovery_plugin_name(const dexec_discovery_handle *h)
{
    return h != NULL ? dexec_plugin_descriptor(h->plugin)->name : NULL;
}

const char *dexec_discovery_plugin_file(const dexec_discovery_handle *h)
{
    return h != NULL ? dexec_plugin_file(h->plugin) : NULL;
}

const char *dexec_discovery_url(const dexec_discovery_handle *h)
{
    return h != NULL ? h->url : NULL;
}

void dexec_discovery_close(dexec_discovery_handle *h)
{
    if (h == NULL)
        return;
    if (h->d != NULL)
        h->ops->close(h->d);
    dexec_plugin_release(h->plugin);
    free(h->url);
    free(h);
}
