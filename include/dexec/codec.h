/*
 * codec.h - the worker protocol's encoding: frames (4-byte big-endian
 * length, then one MessagePack object), MessagePack encoding of values, and
 * requests and outputs as protocol values (the "generate" method's
 * argument and reply). For servers, foreign clients and tests.
 */
#ifndef DEXEC_CODEC_H
#define DEXEC_CODEC_H

#include <stddef.h>

#include <dexec/dexec.h>
#include <dexec/value.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DEXEC_PROTOCOL_VERSION 1
/* Frames larger than this are refused before anything is allocated. */
#define DEXEC_FRAME_MAX_DEFAULT (256u * 1024u * 1024u)

/* ---- Frames ----------------------------------------------------------- */

/* Writes one frame (4-byte big-endian length, then msg as MessagePack)
 * before the absolute deadline. */
dexec_status dexec_frame_write(int fd, const dexec_value *msg, double deadline, char *err,
                               size_t errlen);
/* Reads one frame; a length above max_len is refused (DEXEC_EPROTO) before
 * anything is allocated. EOF before the first byte is DEXEC_ECLOSED. */
dexec_status dexec_frame_read(int fd, size_t max_len, double deadline, dexec_value **msg,
                              char *err, size_t errlen);
/* MessagePack encoding of a value; *buf is malloc'd. */
dexec_status dexec_value_to_msgpack(const dexec_value *v, char **buf, size_t *len);
/* Decodes exactly one MessagePack object filling len bytes, nesting at most
 * DEXEC_VALUE_MAX_DEPTH. DEXEC_EPROTO with a message otherwise. */
dexec_status dexec_value_from_msgpack(const char *buf, size_t len, dexec_value **out, char *err,
                                      size_t errlen);

/* ---- Requests and outputs as protocol values --------------------------- */

/* Request -> MAP value as sent in "generate". NULL on ENOMEM or when r's
 * struct_size is not one this dexec reads (see dexec_struct_check). */
dexec_value *dexec_request_to_value(const dexec_request *r);
/* Output MAP value -> output. *out is initialised here (dexec_output_init;
 * its previous contents are not freed); the caller clears it. DEXEC_EPROTO
 * with a message on bad shape. */
dexec_status dexec_output_from_value(const dexec_value *v, dexec_output *out, char *err,
                                     size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
