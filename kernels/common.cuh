// Shared device helpers for the qwen-scope kernels: dtype loads/stores, warp and block
// reductions. Every kernel keeps the residual stream and all accumulation in f32; weights,
// KV caches and GEMM inputs may be f16 or bf16 and are widened to f32 on load.
//
// The kernels are compiled without --use_fast_math: expf/sinf/cosf/sqrtf and division are
// the accurate IEEE versions, and denormals are kept, so results stay close to the f32 CPU
// backend in src/backend/cpu/ (each .cu file names its CPU twin).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define QS_FULL_MASK 0xffffffffu

// ---- dtype helpers -------------------------------------------------------------------

__device__ __forceinline__ float qs_load(const float* p) { return *p; }
__device__ __forceinline__ float qs_load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float qs_load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ float qs_to_float(float v) { return v; }
__device__ __forceinline__ float qs_to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float qs_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Stores round to nearest even, as half::f16::from_f32 / half::bf16::from_f32 do.
__device__ __forceinline__ void qs_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void qs_store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void qs_store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// ---- reductions ----------------------------------------------------------------------

__device__ __forceinline__ float qs_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QS_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double qs_warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QS_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float qs_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(QS_FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ unsigned long long qs_warp_max_u64(unsigned long long v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        unsigned long long w = __shfl_xor_sync(QS_FULL_MASK, v, o);
        v = w > v ? w : v;
    }
    return v;
}

// Block-wide reductions for blockDim.x a multiple of 32 and at most 1024. `scratch` must
// hold 32 values; every thread gets the result. The trailing __syncthreads lets the
// caller reuse `scratch` right away.
template <typename T>
__device__ __forceinline__ T qs_block_sum(T v, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = qs_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    T r = lane < warps ? scratch[lane] : T(0);
    r = qs_warp_sum(r);
    __syncthreads();
    return r;
}

__device__ __forceinline__ float qs_block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = qs_warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < warps ? scratch[lane] : -INFINITY;
    r = qs_warp_max(r);
    __syncthreads();
    return r;
}

__device__ __forceinline__ unsigned long long qs_block_max_u64(unsigned long long v,
                                                              unsigned long long* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = qs_warp_max_u64(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    unsigned long long r = lane < warps ? scratch[lane] : 0ull;
    r = qs_warp_max_u64(r);
    __syncthreads();
    return r;
}

// ---- instantiation helpers -----------------------------------------------------------
// Kernels are templates; each extern "C" entry point is named <kernel>_<dtype>[_<dtype>]
// with dtype one of f32, f16, bf16, so the Rust side can find it by name.
typedef float qs_f32;
typedef __half qs_f16;
typedef __nv_bfloat16 qs_bf16;
