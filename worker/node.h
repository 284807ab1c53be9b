/*
 * node.h - dexec-worker --node: the node agent that lets ray_actor
 * executors place their actor on this host. It registers the host's
 * capacity and free resources in the registry (<ns>:node:<name>), spawns
 * actors on request (spawn_actor), accounts their resources until they
 * are reaped, and kills the actors of an engine whose connection drops.
 * The protocol is in doc/ray-actor.md.
 */
#ifndef DEXEC_WORKER_NODE_H
#define DEXEC_WORKER_NODE_H

#include <stddef.h>
#include <stdint.h>

typedef struct dxn_options {
    const char *listen;     /* unix:/PATH or tcp:HOST:PORT */
    const char *name;       /* node name in the registry */
    const char *registry;   /* registry URL; NULL: $DEXEC_REGISTRY, else discovery.redis.url */
    const char *advertise;  /* host or tcp:HOST:PORT to register instead of the bound address */
    const char *token_file; /* token engines must present, or NULL */
    int insecure;           /* see dexec-worker --insecure */
    int ttl;                /* registration lifetime in seconds; 0: discovery.redis.ttl */
    int cpus;               /* capacity; -1: the CPUs this process may use */
    int gpus;               /* capacity; -1: the /dev/nvidiaN devices present */
    int64_t memory;         /* capacity in bytes; -1: physical memory */
    const char *resources;  /* custom resources "a=1,b=2", or NULL */
    size_t max_frame;
    double frame_timeout; /* seconds a frame begun may take to arrive whole; 0: none */
    double idle_timeout;  /* seconds a client may stay silent after hello; 0: none */
    double hello_timeout; /* seconds a connection may stay without hello; 0: none */
    size_t hello_max_frame; /* frame limit before hello */
    int hello_max_conns;  /* connections kept without hello */
    int print_address;      /* print the registered address to stdout once registered */
} dxn_options;

/* Runs the agent until SIGTERM/SIGINT. Returns the process exit status
 * (2 for bad options, 1 when it cannot start), after printing why. */
int dxn_run(const dxn_options *opt);

#endif
