/*
 * attention.cu - multi-head self-attention on the CUDA backend. Per image
 * and for all heads at once: S = Q K^T / sqrt(hd) in one strided-batched
 * SGEMM, a softmax over each row of S, then O = P V in a second one. Q, K
 * and V are read in place from the qkv activations (rows 3D apart, heads
 * hd apart) and O is written in place into out[T, D]: no gather or
 * scatter copies.
 *
 * The scores are materialised (H x T x T floats per pass), which for the
 * token counts of a DiT (a few hundred to a few thousand) costs less than
 * the GEMMs; a large image is processed a band of query rows at a time so
 * the scratch stays bounded.
 */
#include <config.h>

#include <math.h>
#include <stdio.h>

#include "ops_cuda.h"

/* Scores per pass at most (floats): 128 MiB. */
#define DXC_ATT_SCRATCH ((size_t)1 << 25)

/* Query rows per pass: all of them unless H x T x T exceeds the bound. */
static int att_rows(int T, int H)
{
    size_t rows = DXC_ATT_SCRATCH / ((size_t)H * T);

    if (rows < 1)
        rows = 1;
    return rows > (size_t)T ? T : (int)rows;
}

size_t dxc_attention_scratch(dxk_backend *be, int B, int T, int H)
{
    (void)be;
    (void)B;
    if (T <= 0 || H <= 0)
        return 0;
    return (size_t)H * att_rows(T, H) * T;
}

/* One block per row of cols scores, in place. Each thread rereads only the
 * elements it wrote, so the passes need no barrier beyond the reductions'. */
static __global__ void softmax_rows_kernel(float *s, int cols)
{
    float *r = s + (size_t)blockIdx.x * cols;
    float mx = -INFINITY, sum = 0.0f, inv;
    int j;

    for (j = threadIdx.x; j < cols; j += blockDim.x)
        mx = fmaxf(mx, r[j]);
    mx = dxc_block_reduce(mx, true);
    for (j = threadIdx.x; j < cols; j += blockDim.x) {
        float e = expf(r[j] - mx);

        r[j] = e;
        sum += e;
    }
    inv = 1.0f / dxc_block_reduce(sum, false);
    for (j = threadIdx.x; j < cols; j += blockDim.x)
        r[j] *= inv;
}

void dxc_attention(dxk_backend *be, float *out, const float *qkv, float *scratch, int B, int T,
                   int H, int D)
{
    dxc *c = dxc_of(be);
    const int hd = D / H, ld = 3 * D;
    const float scale = (float)(1.0 / sqrt((double)hd)), one = 1.0f, zero = 0.0f;
    int rows, threads, b, r0;
    char what[128];

    if (B <= 0 || T <= 0 || H <= 0 || !dxc_enter(be))
        return;
    rows = att_rows(T, H);
    /* a warp at least, 256 threads for rows long enough to share */
    threads = T >= DXC_THREADS ? DXC_THREADS : (T + 31) / 32 * 32;
    for (b = 0; b < B; b++) {
        const float *q = qkv + (size_t)b * T * ld;
        const float *k = q + D;
        const float *v = q + 2 * (size_t)D;
        float *o = out + (size_t)b * T * D;

        for (r0 = 0; r0 < T; r0 += rows) {
            const int nq = T - r0 < rows ? T - r0 : rows;
            cublasStatus_t s;

            /* Column-major view: scratch holds per head the T x nq matrix
             * S^T = K Q^T (ld T), i.e. row-major S[nq, T]. K is read as
             * the column-major hd x T matrix K^T (lda 3D), transposed;
             * the query band as the hd x nq matrix Q^T. */
            s = cublasSgemmStridedBatched(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, T, nq, hd, &scale, k,
                                          ld, hd, q + (size_t)r0 * ld, ld, hd, &zero, scratch, T,
                                          (long long)nq * T, H);
            if (s != CUBLAS_STATUS_SUCCESS) {
                snprintf(what, sizeof what,
                         "attention B=%d T=%d H=%d D=%d: Q K^T (cublasSgemmStridedBatched)", B, T,
                         H, D);
                dxc_blas_ok(c, s, what);
                return;
            }
            softmax_rows_kernel<<<(unsigned)H * nq, threads, 0, c->stream>>>(scratch, T);
            if (!dxc_launched(c, "softmax_rows (attention)"))
                return;
            /* O^T (hd x nq, ld D) = V^T P^T: V read as the column-major
             * hd x T matrix V^T (lda 3D), P^T as T x nq (ld T). */
            s = cublasSgemmStridedBatched(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, nq, T, &one, v,
                                          ld, hd, scratch, T, (long long)nq * T, &zero,
                                          o + (size_t)r0 * D, D, hd, H);
            if (s != CUBLAS_STATUS_SUCCESS) {
                snprintf(what, sizeof what,
                         "attention B=%d T=%d H=%d D=%d: P V (cublasSgemmStridedBatched)", B, T,
                         H, D);
                dxc_blas_ok(c, s, what);
                return;
            }
        }
    }
}
