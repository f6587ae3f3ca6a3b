// Precision casts for GEMM inputs and for reading half-precision buffers back.
// CPU twin: none in src/backend/cpu/ (the CPU backend is f32 throughout); the reference is
// half::f16::from_f32 / half::bf16::from_f32 (round to nearest even) and to_f32 (exact).
#include "common.cuh"

template <typename I, typename O>
__device__ __forceinline__ void cast_impl(const I* __restrict__ x, O* __restrict__ y,
                                          long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        qs_store(y + i, qs_load(x + i));
}

#define QS_CAST(NAME, I, O)                                                                    \
    extern "C" __global__ void __launch_bounds__(256) NAME(const I* x, O* y, long long n) {    \
        cast_impl<I, O>(x, y, n);                                                              \
    }

QS_CAST(cast_f32_f16, qs_f32, qs_f16)
QS_CAST(cast_f32_bf16, qs_f32, qs_bf16)
QS_CAST(cast_f16_f32, qs_f16, qs_f32)
QS_CAST(cast_bf16_f32, qs_bf16, qs_f32)
