/* listen.h - the worker's listening socket, with its safety rules. */
#ifndef DEXEC_WORKER_LISTEN_H
#define DEXEC_WORKER_LISTEN_H

#include <stddef.h>

#include <dexec/dexec.h>

typedef struct dxw_listener {
    int fd;
    char unix_path[256]; /* removed again by dxw_listener_close */
} dxw_listener;

/* Listens on unix:/PATH or tcp:HOST:PORT. Refuses, unless insecure:
 * a TCP address that is not loopback when no token is configured, and a
 * unix socket whose directory others can enter (the socket itself is
 * created 0600). bound receives the address actually listened on (the
 * port chosen when PORT is 0). */
dexec_status dxw_listen(const char *address, int have_token, int insecure, dxw_listener *out,
                        char *bound, size_t boundlen, char *err, size_t errlen);

/* Closes fd (if >= 0) and removes the unix socket file. */
void dxw_listener_close(dxw_listener *l);

#endif
