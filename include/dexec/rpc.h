/*
 * rpc.h - the worker protocol, client and server side, in one include:
 *
 *   <dexec/conn.h>    one connection to a worker (connect, hello, calls)
 *   <dexec/group.h>   a group of ranks with the collective semantics
 *   <dexec/codec.h>   frames, MessagePack, requests/outputs as values
 *   <dexec/server.h>  server-side helpers (frame reader, tokens, sockets)
 *
 * Executor plugins use these to drive workers; any msgpack-rpc client in
 * another language can do the same by following doc/protocol.md. Include
 * the topic header you need, or this one for all of them.
 */
#ifndef DEXEC_RPC_H
#define DEXEC_RPC_H

#include <dexec/codec.h>
#include <dexec/conn.h>
#include <dexec/group.h>
#include <dexec/server.h>

#endif
