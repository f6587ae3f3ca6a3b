// Rotary position embedding, rotate_half (non-interleaved) form.
// CPU twin: src/backend/cpu/rope.rs (`rope`; `inv_freq` is computed on the host by
// `rope::inv_freq` and passed in).
//
// In place on x, where token t, head h starts at x + t * row_stride + col_offset + h *
// head_dim (so q and k can be rotated inside a fused [tokens, q_dim + 2 kv_dim] QKV
// buffer). Pair (i, i + half): x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, with angle =
// (float)pos * inv_freq[i] and accurate sincosf. One thread per (token, head, i).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    rope_f32(float* __restrict__ x, const uint32_t* __restrict__ positions,
             const float* __restrict__ inv_freq, int n_tokens, int heads, int head_dim,
             long long row_stride, long long col_offset) {
    const int half = head_dim >> 1;
    const long long total = (long long)n_tokens * heads * half;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i % half);
        const long long th = i / half;
        const int h = (int)(th % heads);
        const long long t = th / heads;
        const float a = (float)positions[t] * inv_freq[k];
        float s, c;
        sincosf(a, &s, &c);
        float* p = x + t * row_stride + col_offset + (long long)h * head_dim;
        const float x1 = p[k], x2 = p[k + half];
        p[k] = x1 * c - x2 * s;
        p[k + half] = x2 * c + x1 * s;
    }
}
