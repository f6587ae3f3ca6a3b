// SwiGLU from the fused gate/up product. CPU twin: src/backend/cpu/swiglu.rs (`swiglu`,
// `silu`).
//
// gate_up is [tokens, 2 * inter] (gate first, then up); out[t, i] = silu(g) * u with
// silu(g) = g / (1 + expf(-g)) in f32 as on the CPU. out is f32, or f16/bf16 when it feeds
// the down projection with half-precision weights.
#include "common.cuh"

template <typename O>
__device__ __forceinline__ void swiglu_impl(const float* __restrict__ gate_up,
                                            O* __restrict__ out, int inter, int tokens) {
    const long long total = (long long)tokens * inter;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long t = i / inter;
        const int c = (int)(i - t * inter);
        const float* row = gate_up + t * 2 * inter;
        const float g = row[c], u = row[inter + c];
        const float silu = g / (1.0f + expf(-g));
        qs_store(out + i, silu * u);
    }
}

#define QS_SWIGLU(NAME, O)                                                                     \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        NAME(const float* gate_up, O* out, int inter, int tokens) {                            \
        swiglu_impl<O>(gate_up, out, inter, tokens);                                           \
    }

QS_SWIGLU(swiglu_f32, qs_f32)
QS_SWIGLU(swiglu_f16, qs_f16)
QS_SWIGLU(swiglu_bf16, qs_bf16)
