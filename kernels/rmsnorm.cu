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
