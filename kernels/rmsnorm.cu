// RMSNorm. CPU twin: src/backend/cpu/rmsnorm.rs (`rmsnorm`, `rmsnorm_row`).
//
// y[r, :] = w * (x[r, :] * inv), inv = 1 / sqrt(mean(x[r, :]^2) + eps), all in f32 with
// the same operation order as the CPU (1/sqrtf, not the approximate rsqrtf). x and w are
// f32; y is f32, or f16/bf16 when it feeds a GEMM with half-precision weights. One block
// per row; the block size is a multiple of 32, at most 1024.
#include "common.cuh"

template <typename O>
__device__ __forceinline__ void rmsnorm_impl(const float* __restrict__ x,
                                             const float* __restrict__ w, O* __restrict__ y,
                                             int d, float eps, int rows) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * d;
    O* yr = y + (size_t)r * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float v = xr[c];
        ss += v * v;
    }
    ss = qs_block_sum(ss, scratch);
    const float mean_sq = ss / (float)d;
    const float inv = 1.0f / sqrtf(mean_sq + eps);
    for (int c = threadIdx.x; c < d; c += blockDim.x) qs_store(yr + c, w[c] * (xr[c] * inv));
}

#define QS_RMSNORM(NAME, O)                                                                    \
    extern "C" __global__ void __launch_bounds__(1024)                                         \
        NAME(const float* x, const float* w, O* y, int d, float eps, int rows) {               \
        rmsnorm_impl<O>(x, w, y, d, eps, rows);                                                \
    }

QS_RMSNORM(rmsnorm_f32, qs_f32)
QS_RMSNORM(rmsnorm_f16, qs_f16)
QS_RMSNORM(rmsnorm_bf16, qs_bf16)

// Per-head RMSNorm in place (Qwen3's q_norm / k_norm). CPU twin: `rmsnorm_heads` in
// src/backend/cpu/rmsnorm.rs.
//
// Token t, head h is the head_dim values at x + t * row_stride + col_offset + h * head_dim
// (q or k inside the fused [tokens, q_dim + 2 kv_dim] QKV buffer); each is replaced by
// w * (head * inv), inv = 1 / sqrt(mean(head^2) + eps), as `rmsnorm_impl` computes a row.
// One block per (token, head), blockIdx.x = t * heads + h; every thread reads its values
// before the reduction's barriers and writes them after, so the update in place is safe.
extern "C" __global__ void __launch_bounds__(1024)
    rmsnorm_heads_f32(float* __restrict__ x, const float* __restrict__ w, int head_dim,
                      float eps, int n_tokens, int heads, long long row_stride,
                      long long col_offset) {
    __shared__ float scratch[32];
    const long long i = blockIdx.x;
    if (i >= (long long)n_tokens * heads) return;
    const long long t = i / heads;
    const int h = (int)(i % heads);
    float* p = x + t * row_stride + col_offset + (long long)h * head_dim;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        const float v = p[c];
        ss += v * v;
    }
    ss = qs_block_sum(ss, scratch);
    const float mean_sq = ss / (float)head_dim;
    const float inv = 1.0f / sqrtf(mean_sq + eps);
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) p[c] = w[c] * (p[c] * inv);
}
