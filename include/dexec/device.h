/*
 * device.h - the ABI of device plugins (DEXEC_PLUGIN_DEVICE): the op
 * backends that run the model's tensor arithmetic on some hardware.
 *
 * A device plugin is a shared object like any other dexec plugin (see
 * plugin.h: one exported descriptor, the same ABI and name checks), whose
 * descriptor has kind DEXEC_PLUGIN_DEVICE and points at a
 * dexec_device_ops. dexec ships one: dexec_cuda.so (cuBLAS + CUDA
 * kernels), loaded by the worker when `device = "cuda"`, or by
 * `device = "auto"` when the module loads and its probe() reports a
 * device. It is the only object of dexec that links the CUDA libraries,
 * so a distribution can ship it in a package of its own.
 *
 * The CPU backend is not a plugin: it is built into the worker library
 * because it is always present, it is what `auto` falls back to, and it
 * needs nothing beyond OpenBLAS, which the worker links anyway.
 *
 * Conventions every device follows (the model code relies on them):
 *  - A "buffer" is a float pointer in the device's memory (host memory for
 *    the CPU, device memory for a GPU). Every op reads and writes buffers,
 *    except where a parameter is documented as "host" (a handful of
 *    scalars per image that the caller keeps on the host).
 *  - Tensors are dense, row-major, float32. Token tensors are [B, T, D].
 *  - Ops return nothing: a device whose work is asynchronous can only learn
 *    of a failure later. Failures are sticky: the first one is kept and
 *    sync() reports it; after a failure ops do nothing.
 *  - Ops on one device are issued from one thread at a time (a model
 *    serves one request at a time); a device may use threads inside, and
 *    the issuing thread need not be the one that opened it.
 *  - Results match the CPU backend within 1e-4 relative to the tensor's
 *    scale (no reduced-precision math: the same seed gives the same image
 *    on any device).
 *  - A device module reports through status codes and messages only: it
 *    never exits, never prints, and calls no function of libdexec (so it
 *    can be built and tested with the device's toolkit alone).
 */
#ifndef DEXEC_DEVICE_H
#define DEXEC_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/dexec.h>
#include <dexec/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Size of the sinusoidal timestep features of timestep_embed(). */
#define DEXEC_DEVICE_TFREQ_DIM 256

typedef struct dexec_device dexec_device;

/* One opened device: its identity and its ops. Created by
 * dexec_device_ops.open(), freed by its own destroy(). Fields are never
 * reordered; new ones take the reserved space, and a caller reads a field
 * past the 1.1 layout only when struct_size covers it. Every function
 * pointer is set. */
struct dexec_device {
    uint32_t struct_size;  /* sizeof(dexec_device) the device was built with */
    const char *name;      /* the backend: "cpu", "cuda" */
    char device_name[128]; /* e.g. "NVIDIA H100 80GB HBM3", or the CPU model */
    int host_memory;       /* buffers are host memory: mapped weights can be used in place */
    void *priv;            /* the device's own state */

    /* ---- buffers ---- */

    /* n floats, uninitialised; NULL when out of memory (also recorded as the
     * sticky error). */
    float *(*alloc)(dexec_device *be, size_t n);
    void (*release)(dexec_device *be, float *p); /* NULL is accepted */
    /* host -> buffer, buffer -> host, buffer -> buffer; n floats. download()
     * returns with dst filled (it waits for the ops queued before it). */
    void (*upload)(dexec_device *be, float *dst, const float *src, size_t n);
    void (*download)(dexec_device *be, float *dst, const float *src, size_t n);
    void (*copy)(dexec_device *be, float *dst, const float *src, size_t n);
    /* Bytes of device memory held now and at most (0 when unknown); may be
     * called from any thread. */
    void (*memory)(dexec_device *be, size_t *used, size_t *peak);

    /* ---- ops ---- */

    /* y[M,N] = x[M,K] W^T + b, W of shape [N,K] (PyTorch Linear); b may be
     * NULL. y must not alias x. */
    void (*linear)(dexec_device *be, float *y, const float *x, const float *w, const float *b,
                   int M, int N, int K);

    /* y[b,t,:] = LN(x[b,t,:]) * (1 + scale_b) + shift_b, LN over D without
     * affine parameters (eps 1e-6, biased variance); shift_b = shift +
     * b*mod_stride, likewise scale. y may alias x. */
    void (*ln_modulate)(dexec_device *be, float *y, const float *x, const float *shift,
                        const float *scale, int mod_stride, int B, int T, int D);

    /* qkv [B,T,3D] laid out per token as [3, H, D/H] -> out [B,T,D], heads
     * concatenated: per head softmax(q k^T / sqrt(D/H)) v. scratch holds
     * attention_scratch(B,T,H) floats. */
    void (*attention)(dexec_device *be, float *out, const float *qkv, float *scratch, int B,
                      int T, int H, int D);
    size_t (*attention_scratch)(dexec_device *be, int B, int T, int H);

    /* x = 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))), in place */
    void (*gelu_tanh)(dexec_device *be, float *x, size_t n);
    /* y = x * sigmoid(x); y may alias x */
    void (*silu)(dexec_device *be, float *y, const float *x, size_t n);

    /* out[B, DEXEC_DEVICE_TFREQ_DIM] = concat(cos(t f), sin(t f)),
     * f_k = exp(-ln(1e4) k/128), computed in double; t is host memory (B
     * timesteps, in double because float would move t = 1000 s by 6e-5 and
     * the features with it). */
    void (*timestep_embed)(dexec_device *be, float *out, const double *t, int B);

    /* c[b,:] += table[y[b],:]; y is host memory (B class indices, already
     * checked against the table). */
    void (*add_embedding)(dexec_device *be, float *c, const float *table, const int *y, int B,
                          int D);

    /* img [B,C,H,W] -> tok [B,T,C*p*p], token n = gy*(W/p)+gx, features in
     * (c,py,px) order. */
    void (*patchify)(dexec_device *be, float *tok, const float *img, int B, int C, int H, int W,
                     int p);
    /* tok [B,T,p*p*C] (features (py,px,c)) -> img [B,C,H,W] */
    void (*unpatchify)(dexec_device *be, float *img, const float *tok, int B, int C, int H,
                       int W, int p);

    /* tok[b, gy*w+gx, :] += concat(E(D/2, gy), E(D/2, gx)), the 2-D sin-cos
     * position embedding of doc/model-format.md step 2, computed in double. */
    void (*pos_embed_add)(dexec_device *be, float *tok, int B, int h, int w, int D);

    /* x[b,t,d] += gate[b*gate_stride + d] * y[b,t,d] */
    void (*gated_residual)(dexec_device *be, float *x, const float *y, const float *gate,
                           int gate_stride, int B, int T, int D);

    /* x += dt * v (n floats) */
    void (*euler)(dexec_device *be, float *x, const float *v, float dt, size_t n);
    /* out = vu + g (vc - vu) (n floats); out may alias vc or vu */
    void (*cfg_combine)(dexec_device *be, float *out, const float *vc, const float *vu, float g,
                        size_t n);

    /* ---- control ---- */

    /* Waits for the work issued so far and reports the first failure since
     * the device was opened: DEXEC_OK, or DEXEC_ENOMEM / DEXEC_EIO /
     * DEXEC_EINVAL with the message in err (which names the device). */
    dexec_status (*sync)(dexec_device *be, char *err, size_t errlen);
    /* Frees the device and whatever buffers are still allocated on it. */
    void (*destroy)(dexec_device *be);

    /* ---- ops added in 1.2: the latent models (published DiT/SiT and the
     * autoencoder's decoder, doc/model.md "Published models"). A device
     * built against 1.1 leaves them zero (its struct_size is below
     * DEXEC_DEVICE_SIZE_1_2); the worker then refuses those models on it
     * and still runs the bundled one. A device that cannot run one of them
     * sets the pointer to NULL rather than faking it. ---- */

    /* y[B,Cout,H,W] = conv(x[B,Cin,H,W], w[Cout,Cin,k,k]) + b: stride 1,
     * zero padding (k-1)/2, k odd (1 or 3 in the models); b may be NULL.
     * y must not alias x. The device keeps its own scratch (the CPU one an
     * im2col panel of at most 16 Mi floats, made in bands of rows). */
    void (*conv2d)(dexec_device *be, float *y, const float *x, const float *w, const float *b,
                   int B, int Cin, int H, int W, int Cout, int k);

    /* y[b,c,:] = (x - mean_g) / sqrt(var_g + eps) * gamma[c] + beta[c],
     * mean and biased variance over the HW positions of the C/G channels
     * of group g (PyTorch GroupNorm on [B, C, HW]); then y = SiLU(y) when
     * silu is non-zero. C must be a multiple of G. y may alias x. */
    void (*group_norm)(dexec_device *be, float *y, const float *x, const float *gamma,
                       const float *beta, int B, int C, int HW, int G, float eps, int silu);

    /* y[B,C,2H,2W] = x[B,C,H,W] repeated 2x2 (nearest). y must not alias x. */
    void (*upsample_nearest2x)(dexec_device *be, float *y, const float *x, int B, int C, int H,
                               int W);

    /* ln_modulate() with the LayerNorm's eps given (the published models'
     * configuration names it: 1e-6 in DiT's own code, norm_eps in a
     * diffusers configuration). */
    void (*ln_modulate_eps)(dexec_device *be, float *y, const float *x, const float *shift,
                            const float *scale, int mod_stride, int B, int T, int D, float eps);

    /* ---- ops added in 1.3: weights kept in half precision (the
     * configuration's dtype = "float16" or "bfloat16", doc/model.md
     * "Half precision"). The one exception to the 1e-4 convention above:
     * a user asks for it, knowing that it moves the pixels slightly. A
     * device that computes only in float32 (the CPU) leaves all three
     * NULL, and the worker refuses such a dtype on it with DEXEC_ENOTSUP.
     * Activations stay float32 buffers; only the weight operand of
     * linear_half() and conv2d_half() is half. ---- */

    /* A buffer of n weights of element type dtype (DEXEC_DTYPE_F16 or
     * DEXEC_DTYPE_BF16, 2 bytes each), filled from the n host floats src
     * converted on the host with round-to-nearest-even (values beyond
     * float16's range become +-inf); returns once src may be reused. NULL
     * when out of memory or dtype is not one of the two (recorded as the
     * sticky error). Released with release(be, (float *)p). */
    void *(*upload_half)(dexec_device *be, const float *src, size_t n, int dtype);

    /* linear() with w [N,K] a buffer of upload_half(dtype): x is rounded
     * to dtype (a scratch copy the device keeps), the products are
     * accumulated in float32, b (float32, may be NULL) is added in
     * float32, y is float32. */
    void (*linear_half)(dexec_device *be, float *y, const float *x, const void *w, int dtype,
                        const float *b, int M, int N, int K);

    /* conv2d() with w [Cout,Cin,k,k] a buffer of upload_half(dtype): the
     * input is rounded to dtype as it is gathered into the device's
     * panel, products accumulated in float32, b and y float32. */
    void (*conv2d_half)(dexec_device *be, float *y, const float *x, const void *w, int dtype,
                        const float *b, int B, int Cin, int H, int W, int Cout, int k);

    void *reserved[1]; /* zero */
};

/* Element types of upload_half() (the values of the configuration's dtype:
 * "float32" is DEXEC_DTYPE_F32, which needs none of the 1.3 ops). */
#define DEXEC_DTYPE_F32 0
#define DEXEC_DTYPE_F16 1  /* IEEE binary16: 11-bit significand, max 65504 */
#define DEXEC_DTYPE_BF16 2 /* bfloat16: float32's range, 8-bit significand */

/* The refusal of a half dtype on the CPU (a printf format taking the
 * dtype's name), said alike by the worker that opens the model and by
 * dexec_engine_create() when the configuration has device = "cpu". */
#define DEXEC_DTYPE_CPU_REFUSAL                                                                 \
    "dtype = \"%s\" is not supported on the CPU: the CPU backend computes in float32 "          \
    "(float16 and bfloat16 files are converted to float32 when loaded); use dtype = "         \
    "\"float32\" (the default), or device = \"cuda\""

/* Bytes of named fields of a 1.1 device (up to destroy), of a 1.2 one
 * (the latent models' ops too) and of a 1.3 one (half-precision weights). */
#define DEXEC_DEVICE_SIZE_1_1 offsetof(dexec_device, conv2d)
#define DEXEC_DEVICE_SIZE_1_2 offsetof(dexec_device, upload_half)
#define DEXEC_DEVICE_SIZE_1_3 offsetof(dexec_device, reserved)

/* What a device plugin's descriptor points at. Fields are never reordered;
 * new ones take the reserved space. All functions are required; the loader
 * refuses a table with a NULL one. */
typedef struct dexec_device_ops {
    uint32_t struct_size; /* sizeof(dexec_device_ops) at build time */
    uint32_t flags;       /* none defined yet: 0 */

    /* Cheap check whether the hardware can be used, for `device = "auto"`
     * and `dexec plugins`: returns the number of devices usable now, or 0
     * and a one-line reason in (reason, reasonlen) (e.g. "no NVIDIA driver
     * is installed (libcuda.so.1 not found)"). reason may be NULL. Never
     * fails otherwise, allocates nothing the caller must free. */
    int (*probe)(char *reason, size_t reasonlen);

    /* Opens device ordinal index (0 .. probe()-1, as this process sees them,
     * e.g. after CUDA_VISIBLE_DEVICES). On success *out is a device the
     * caller frees with (*out)->destroy(*out). On failure *out is NULL and
     * err says what is missing and what to do: DEXEC_ENOTSUP (no usable
     * device, index out of range, a device this build cannot drive),
     * DEXEC_ENOMEM, DEXEC_EIO. */
    dexec_status (*open)(int index, dexec_device **out, char *err, size_t errlen);

    void *reserved[8]; /* zero */
} dexec_device_ops;

#ifdef __cplusplus
}
#endif
#endif
