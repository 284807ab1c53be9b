/*
 * discovery.h - the configured discovery plugin (the registry that turns
 * actor names into addresses), opened the one way every caller uses: the
 * node agent, a named dexec-worker, `dexec actors`, and the ray_actor and
 * external executors.
 *
 * A handle holds the loaded plugin and its open connection; the calls
 * below are the plugin's operations (see dexec_discovery_ops in
 * <dexec/plugin.h>) with their errors passed through unchanged.
 */
#ifndef DEXEC_DISCOVERY_H
#define DEXEC_DISCOVERY_H

#include <stddef.h>

#include <dexec/dexec.h>
#include <dexec/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dexec_discovery_handle dexec_discovery_handle;

/* Opens a discovery plugin and connects it to its registry.
 *
 * plugin: a name or a path (see dexec_plugin_load); NULL takes the
 *   configuration's external.discovery (default "redis_discovery").
 * url: the registry URL; NULL takes $DEXEC_REGISTRY when it is set and not
 *   empty, else lets the plugin use its own configuration (for
 *   redis_discovery, discovery.redis.url).
 * cfg: the configuration handed to the plugin (dexec_host.config) and
 *   searched for plugin_path; may be NULL. It must outlive the handle.
 *
 * On success *out is the caller's (dexec_discovery_close). On failure
 * *out is NULL, nothing stays loaded or open, and err holds one message:
 *   loading:  "discovery plugin 'NAME' (external.discovery): " + the
 *             loader's message, which names the file or lists every
 *             directory searched (DEXEC_ENOTFOUND), or says why the file
 *             was refused: wrong kind, ABI, not a plugin (DEXEC_EPLUGIN,
 *             DEXEC_EABI); "(external.discovery)" only when the name
 *             came from the configuration;
 *   opening:  "discovery plugin NAME (FILE), registry URL: " + the
 *             plugin's message, with the plugin's status (DEXEC_EIO when
 *             the registry is unreachable, ...); "registry from the
 *             configuration" when no URL was given.
 * A password in the URL never appears: it is written as *** (see
 * dexec_url_redact), in the plugin's part of the message too. */
dexec_status dexec_discovery_open(const dexec_config *cfg, const char *plugin, const char *url,
                                  dexec_discovery_handle **out, char *err, size_t errlen);

/* The plugin's operations on the open registry; see dexec_discovery_ops. */
dexec_status dexec_discovery_register(dexec_discovery_handle *h, const dexec_actor_info *a,
                                      int ttl_s, char *err, size_t errlen);
dexec_status dexec_discovery_heartbeat(dexec_discovery_handle *h, const dexec_actor_info *a,
                                       int ttl_s, char *err, size_t errlen);
dexec_status dexec_discovery_resolve(dexec_discovery_handle *h, const char *name,
                                     dexec_actor_info *out, char *err, size_t errlen);
dexec_status dexec_discovery_list(dexec_discovery_handle *h, const char *kind,
                                  dexec_actor_info **out, size_t *n, char *err, size_t errlen);
dexec_status dexec_discovery_deregister(dexec_discovery_handle *h, const dexec_actor_info *a,
                                        char *err, size_t errlen);

/* For messages: the plugin's name, the file it was loaded from, and the
 * registry URL with its password masked (NULL when the plugin took the URL
 * from its configuration). Owned by the handle. */
const char *dexec_discovery_plugin_name(const dexec_discovery_handle *h);
const char *dexec_discovery_plugin_file(const dexec_discovery_handle *h);
const char *dexec_discovery_url(const dexec_discovery_handle *h);

/* Closes the registry connection and releases the plugin. NULL is accepted. */
void dexec_discovery_close(dexec_discovery_handle *h);

/* Copies url into buf (always NUL-terminated, truncated to len) with its
 * password replaced by ***: the userinfo password of
 * scheme://[user]:PASSWORD@host and the value of a password=VALUE query
 * parameter. Use it wherever a registry URL is logged or shown. */
void dexec_url_redact(const char *url, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
