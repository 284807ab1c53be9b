/*
 * kernels.h - the worker library's entry points, as dexec-worker uses them:
 * open a model on a device, generate the images of one request, describe
 * the model. Everything about tensors stays behind this header.
 */
#ifndef DEXEC_KERNELS_H
#define DEXEC_KERNELS_H

#include <stddef.h>

#include <dexec/dexec.h>
#include <dexec/value.h>

typedef struct dxk_model dxk_model;
struct dxk_parallel;

/* Turns a model name into a file path: a value containing '/' or ending in
 * ".safetensors" is a path; a bare NAME is NAME.safetensors searched in
 * $DEXEC_MODEL_PATH (colon-separated) and then $(pkgdatadir)/models.
 * DEXEC_ENOTFOUND lists the places searched. */
dexec_status dxk_resolve_model(const char *name, char *path, size_t pathlen, char *err,
                               size_t errlen);

/* Opens (maps and validates) a model and prepares it on device
 * ("auto", "cpu", "cuda"; "auto" picks CUDA when a device is present).
 * gpu is the CUDA device ordinal to use (normally 0: the process sees only
 * its own GPU through CUDA_VISIBLE_DEVICES). Errors: DEXEC_ENOTFOUND,
 * DEXEC_EINVAL (malformed file: the message names the file and tensor),
 * DEXEC_ENOTSUP ("cuda" with no device or no CUDA build). *out is the
 * caller's (dxk_model_free). */
dexec_status dxk_model_open(const char *name, const char *device, int gpu, dxk_model **out,
                            char *err, size_t errlen);
void dxk_model_free(dxk_model *m);

/* dxk_model_open() with the weights' dtype on the device: "float32" (what
 * dxk_model_open uses), or "float16" / "bfloat16": the weight matrices of
 * every linear layer and convolution converted once at load (from
 * whatever the file holds) and kept in that type on the device, their
 * products accumulated in float32 (doc/model.md "Half precision").
 * DEXEC_EINVAL for another name; DEXEC_ENOTSUP on a device without
 * half-precision weights, the CPU among them ("dtype = \"float16\" is not
 * supported on the CPU: ..."). */
dexec_status dxk_model_open_dtype(const char *name, const char *device, const char *dtype,
                                  int gpu, dxk_model **out, char *err, size_t errlen);

/* Called after each denoising step of each image. Returns 0 to go on, or
 * nonzero to stop the request there: dxk_generate then fails with
 * DEXEC_ECANCELED ("cancelled after step S of N"). */
typedef int (*dxk_step_fn)(void *user, int image_index, int step, int total_steps);

/* Generates the images of one request (num_outputs_per_prompt of them).
 * Zero/negative fields of req take the model's defaults (size, steps,
 * guidance) and seed < 0 is not accepted here (the engine resolves random
 * seeds). Fills out: images, seed, steps, guidance_scale, timings
 * (encode_s, denoise_s, decode_s); not request_id or rank. Errors:
 * DEXEC_EINVAL for a bad request (unknown prompt: the message lists the
 * known words; size not a multiple of the patch size; ...). */
dexec_status dxk_generate(dxk_model *m, const dexec_request *req, dexec_output *out,
                          dxk_step_fn step, void *user, char *err, size_t errlen);

/* Sets (par != NULL) or clears (NULL) the parallel group this rank computes
 * with: later dxk_generate calls compute each request together with the
 * group's other ranks, which must call dxk_generate with the same request.
 * *par is copied; its communicators stay the caller's.
 *
 * Sequence (Ulysses) parallelism, par->seq of size S, rank r: each
 * forward pass of the DiT holds tokens floor(r T/S) .. floor((r+1) T/S) - 1
 * of each image's T (shards differ by at most one token when S does not
 * divide T) through the blocks, and all T tokens of heads r H/S ..
 * (r+1) H/S - 1 inside attention (two all-to-alls per block, then one
 * all-gather of the output); every rank ends each step with the full
 * prediction and keeps identical latents, so every rank's images are the
 * same (see dxk_dit_forward and doc/parallelism.md). The tensor methods
 * (dxk_tensor_method) split the same way: call them on every rank too.
 *
 * Errors: DEXEC_ENOTSUP for a layout this build or model cannot compute
 * (the message says which axis), DEXEC_EINVAL for sizes the model cannot
 * split: "sequence = 3 does not divide the 16 attention heads of this
 * model" here; a request with fewer tokens than S fails at dxk_generate
 * ("sequence = 8 is more than the 4 tokens of a 8x8 image (patch 4): ...").
 * A collective's failure (its deadline passed, a peer died) fails the
 * request being generated with the transport's status (DEXEC_ETIMEDOUT,
 * DEXEC_EIO) and a message naming the rank, the exchange and the block. */
dexec_status dxk_model_set_parallel(dxk_model *m, const struct dxk_parallel *par, char *err,
                                    size_t errlen);

/* OpenBLAS (DYNAMIC_ARCH) picks its kernels from the CPU's model number
 * and falls back to its oldest (Prescott, SSE3) ones on a model it does
 * not know (0.3.21 on Emerald Rapids: a fifth of the AVX-512 SGEMM rate).
 * It reads OPENBLAS_CORETYPE only when it is loaded, so a program fixes
 * that by calling this first thing in main(), before it starts any
 * thread: when OpenBLAS chose a pre-AVX2 core on a CPU with AVX2 or
 * AVX-512 and OPENBLAS_CORETYPE is unset, it sets OPENBLAS_CORETYPE
 * (Cooperlake, SkylakeX or Haswell) and re-executes the program
 * (/proc/self/exe, the same argv and environment); otherwise, or when the
 * exec fails, it returns having changed nothing. A value the user set is
 * left alone. dexec-worker and the benchmarks call it. */
void dxk_blas_core_reexec(char **argv);

/* A MAP describing the model and device: path, device, dtype, device_name,
 * parameters, bytes (weights), metadata (map of the file's __metadata__),
 * memory (rss/peak in bytes; device memory on CUDA). Caller owns it. */
dexec_value *dxk_model_info(const dxk_model *m);

/* "cpu" or "cuda" */
const char *dxk_model_device(const dxk_model *m);
/* "float32", "float16" or "bfloat16" */
const char *dxk_model_dtype(const dxk_model *m);

/* 1 when method is one of the tensor methods of a published latent model
 * (latent_forward, latent_guided, latent_sample, vae_decode). */
int dxk_tensor_method_known(const char *method);

/* Runs a tensor method (doc/protocol.md "Tensor methods"): args[0] a MAP
 * of options, then the input tensors as BIN values of little-endian
 * float32 in the documented shapes. *out is a MAP {shape: [dims], data:
 * BIN float32}, the caller's. Reads no file. Errors: DEXEC_ENOTSUP (the
 * model is not a latent one), DEXEC_EINVAL (an option or a tensor's size:
 * the message names it and the expected shape), the backend's. */
dexec_status dxk_tensor_method(dxk_model *m, const char *method, const dexec_value *args,
                               dexec_value **out, char *err, size_t errlen);

#endif
