/*
 * ops.h - the one interface between the DiT (dit.c, sampler.c) and the
 * hardware: a backend is a device of <dexec/device.h> (a table of buffer
 * functions and tensor ops, whose conventions that header documents). The
 * CPU backend (cpu/ops_cpu.c) is built into this library; the CUDA backend
 * (cuda/ops_cuda.cu) is the device plugin dexec_cuda.so, loaded at run
 * time by backend.c. The model code never knows which one it drives.
 */
#ifndef DEXEC_KERNELS_OPS_H
#define DEXEC_KERNELS_OPS_H

#include <stddef.h>

#include <dexec/device.h>

/* Size of the sinusoidal timestep features (doc/model-format.md step 3). */
#define DXK_TFREQ_DIM DEXEC_DEVICE_TFREQ_DIM

/* The kernels' name for an opened device. */
typedef dexec_device dxk_backend;

/* The CPU backend: OpenBLAS SGEMM for every linear and attention product, C
 * loops for the rest. Never fails except for memory (DEXEC_ENOMEM). */
dexec_status dxk_backend_cpu(dxk_backend **out, char *err, size_t errlen);

/* The CUDA backend on device ordinal gpu, from the device plugin "cuda"
 * (dexec_cuda.so, searched like every plugin: $DEXEC_PLUGIN_PATH, then the
 * installed plugin directory; loaded once per process). Returns
 * DEXEC_ENOTSUP "device cuda requested but ..." naming what is missing
 * (the module and the directories searched, the CUDA libraries it needs,
 * the driver, the device) and what to do. */
dexec_status dxk_backend_cuda(int gpu, dxk_backend **out, char *err, size_t errlen);

/* Number of usable CUDA devices: the module's probe. 0 when the module
 * cannot be loaded or the driver reports none (reason, when not NULL, says
 * which). */
int dxk_cuda_device_count(char *reason, size_t reasonlen);

/* 1 when the NVIDIA driver's library (libcuda.so.1) can be opened, else 0
 * with the dlopen() text in reason. Checked by device = auto before it
 * loads the CUDA module: on a host without a driver the module could only
 * say "no device", after mapping the ~200 MB of cuBLAS it links. */
int dxk_cuda_driver_present(char *reason, size_t reasonlen);

void dxk_backend_free(dxk_backend *be);

/* What dxk_cpu_conv3 does to its input before convolving it, and to its
 * output. */
typedef struct dxk_conv_pre {
    /* GroupNorm of the input (gamma, beta: Cin floats each, G groups, eps;
     * statistics over the whole input image as group_norm() takes them),
     * then SiLU when silu is non-zero; gamma NULL: no normalisation */
    const float *gamma, *beta;
    int G, silu;
    float eps;
    int up2; /* the input is [B, Cin, H/2, W/2], repeated 2x2 (nearest) */
    int acc; /* y += convolution + b, instead of y = convolution + b */
} dxk_conv_pre;

/* The CPU backend's fused 3x3 convolution (stride 1, zero padding 1) of
 * B images: y[B, Cout, H, W] (=, or += when pre->acc)
 * conv(SiLU(GN(up2(x)))) + b, one pass over the input instead of one per
 * op: the GroupNorm and SiLU are applied, and the upsampling done, as the
 * Winograd input transform reads x (ops_cpu.c; pre may be NULL: a plain
 * convolution). w [Cout, Cin, 3, 3]; b may be NULL; y must not alias x.
 * Returns 1 when it did the work (errors are the backend's sticky
 * failure, reported by sync()), 0 when it did nothing because be is not
 * the CPU backend or the shape does not go through Winograd (fewer than 16
 * channels in or out, W over 4096; odd H or W with up2; C not a multiple
 * of G): the caller then runs the ops one by one. */
int dxk_cpu_conv3(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                  int B, int Cin, int H, int W, int Cout, const dxk_conv_pre *pre);

/* The CPU backend's linear for few rows: y[M, N] = x[M, K] W^T + b (b may
 * be NULL; W [N, K] row-major, as be->linear takes it), each weight row
 * streamed once and dotted with the M rows, the output columns split over
 * the backend's threads. A row's result does not depend on M (any M works;
 * it is meant for few rows: for many, be->linear's SGEMM is faster). For
 * the adaLN modulation (M = batch), which OpenBLAS's SGEMM ran at a few
 * GFLOP/s. Returns 1 when it did the work, 0 when be is not the CPU
 * backend: the caller then runs be->linear. */
int dxk_cpu_linear_few(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                       int M, int N, int K);

/* DEXEC_OK when be has every op of the latent models (the 1.2 ops of
 * <dexec/device.h>: conv2d, group_norm, upsample_nearest2x,
 * ln_modulate_eps); otherwise DEXEC_ENOTSUP with a message naming the
 * device and the missing op. */
dexec_status dxk_backend_latent_ops(const dxk_backend *be, char *err, size_t errlen);

/* The configuration's dtype ("float32", "float16", "bfloat16") as a
 * DEXEC_DTYPE_* value; DEXEC_EINVAL names the accepted ones. */
dexec_status dxk_wdtype_parse(const char *name, int *out, char *err, size_t errlen);
const char *dxk_wdtype_name(int dtype);

/* DEXEC_OK when be can keep weights in dtype (always for DEXEC_DTYPE_F32;
 * the 1.3 ops of <dexec/device.h> otherwise). DEXEC_ENOTSUP with what to
 * do: on the CPU, which computes in float32 only, "dtype = \"float16\"
 * is not supported on the CPU: ...". */
dexec_status dxk_backend_half(const dxk_backend *be, int dtype, char *err, size_t errlen);

/* n host floats kept on be as a weight of dtype (upload_half), appended
 * to the list of buffers (*list, *count) its owner releases with
 * be->release. DEXEC_ENOMEM (or the device's error) with err saying what
 * failed, without the tensor's name (the caller adds it). */
dexec_status dxk_upload_half(dxk_backend *be, const float *host, size_t n, int dtype,
                             float ***list, size_t *count, const void **out, char *err,
                             size_t errlen);

#endif
