// Residual-stream arithmetic. CPU twins: src/backend/cpu/residual.rs (`add_inplace`,
// `write_row`) and the bias part of src/backend/cpu/matmul.rs (`linear`); `gather_rows`
// is the row selection the forward pass does on the host (reads, logit rows).
#include "common.cuh"

// h[i] += delta[i]
extern "C" __global__ void __launch_bounds__(256)
    add_inplace_f32(float* __restrict__ h, const float* __restrict__ delta, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        h[i] += delta[i];
}

// Stream writes: for w in 0..n_writes, in order, row idx[w] of h ([tokens, hidden]) is
// replaced by (mode[w] == 0) or incremented by (mode[w] == 1) values[w, :]. One thread per
// column walks the writes in order, so several writes to one row compose as on the CPU.
extern "C" __global__ void __launch_bounds__(256)
    write_rows_f32(float* __restrict__ h, int hidden, int n_tokens,
                   const uint32_t* __restrict__ idx, const uint32_t* __restrict__ mode,
                   const float* __restrict__ values, int n_writes) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= hidden) return;
    for (int w = 0; w < n_writes; ++w) {
        const uint32_t t = idx[w];
        if (t >= (uint32_t)n_tokens) continue;  // checked on the host
        float* p = h + (size_t)t * hidden + c;
        const float v = values[(size_t)w * hidden + c];
        if (mode[w] == 1) *p += v;
        else *p = v;
    }
}

// dst[i, :] = src[idx[i], :] for rows of width `width`; grid.y = rows, grid.x covers width.
extern "C" __global__ void __launch_bounds__(256)
    gather_rows_f32(const float* __restrict__ src, int src_rows, const uint32_t* __restrict__ idx,
                    float* __restrict__ dst, int width, int n_rows) {
    const int r = blockIdx.y;
    if (r >= n_rows) return;
    const uint32_t s = idx[r];
    float* d = dst + (size_t)r * width;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < width; c += gridDim.x * blockDim.x)
        d[c] = s < (uint32_t)src_rows ? src[(size_t)s * width + c] : __int_as_float(0x7fc00000);
}

// y[r, c] += b[c] for y [rows, n] f32, bias in f32/f16/bf16.
template <typename B>
__device__ __forceinline__ void add_bias_impl(float* __restrict__ y, const B* __restrict__ b,
                                              int rows, int n) {
    const long long total = (long long)rows * n;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x)
        y[i] += qs_load(b + (int)(i % n));
}

#define QS_ADD_BIAS(NAME, B)                                                                   \
    extern "C" __global__ void __launch_bounds__(256) NAME(float* y, const B* b, int rows,     \
                                                           int n) {                            \
        add_bias_impl<B>(y, b, rows, n);                                                       \
    }

QS_ADD_BIAS(add_bias_f32, qs_f32)
QS_ADD_BIAS(add_bias_f16, qs_f16)
QS_ADD_BIAS(add_bias_bf16, qs_bf16)
