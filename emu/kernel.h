// The host side of the CUDA language, for compiling kernels/*.cu with a C++ compiler so that
// the emulated driver (driver.cpp) can run them on the CPU. Test equipment only: nothing in
// src/ depends on it.
//
// What a kernel sees here is what it sees on a GPU: threadIdx/blockIdx/blockDim/gridDim,
// __syncthreads (every live thread of the block reaches it before any passes), 32-lane warp
// shuffles that exchange values exactly, static and dynamic shared memory (poisoned with
// 0xff bytes at every block start, as uninitialised memory), and __half/__nv_bfloat16 with
// CUDA's round-to-nearest-even conversions. Threads run as fibers (exec.cpp); shared memory
// declarations are rewritten by gen_kernels.py into calls below.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace qs_emu {

struct Dim {
    unsigned int x, y, z;
};

// The running thread and block; set by the block executor before a thread resumes.
struct LaneView {
    Dim tid;
};
struct BlockView {
    Dim bid, bdim, gdim;
};
extern thread_local LaneView* cur_lane __attribute__((tls_model("initial-exec")));
extern thread_local BlockView* cur_block __attribute__((tls_model("initial-exec")));

void syncthreads();
uint64_t shuffle(uint64_t bits, unsigned mask, int src_lane, int width, int mode);
void* dynamic_shared(size_t align);
void* static_shared(size_t bytes, size_t align, int id);

enum { SHFL_IDX = 0, SHFL_XOR = 1, SHFL_DOWN = 2, SHFL_UP = 3 };

template <typename T>
inline T shfl(T v, unsigned mask, int lane, int width, int mode) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 64 bits");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    b = shuffle(b, mask, lane, width, mode);
    T r;
    memcpy(&r, &b, sizeof(T));
    return r;
}

template <typename T>
inline T* dynamic_shared_as() {
    return static_cast<T*>(dynamic_shared(alignof(T) > 16 ? alignof(T) : 16));
}

template <typename T>
inline T* static_shared_as(size_t count, int id) {
    return static_cast<T*>(static_shared(count * sizeof(T), alignof(T), id));
}

}  // namespace qs_emu

#define threadIdx (qs_emu::cur_lane->tid)
#define blockIdx (qs_emu::cur_block->bid)
#define blockDim (qs_emu::cur_block->bdim)
#define gridDim (qs_emu::cur_block->gdim)
#define warpSize 32

// gen_kernels.py predefines these two as markers to find the entry points.
#ifndef __global__
#define __global__
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))

inline void __syncthreads() { qs_emu::syncthreads(); }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return qs_emu::shfl(v, mask, src, width, qs_emu::SHFL_IDX);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return qs_emu::shfl(v, mask, lane_mask, width, qs_emu::SHFL_XOR);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return qs_emu::shfl(v, mask, (int)delta, width, qs_emu::SHFL_DOWN);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return qs_emu::shfl(v, mask, (int)delta, width, qs_emu::SHFL_UP);
}

// ---- integer and bit helpers of the CUDA math API ------------------------------------------
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

template <typename To, typename From>
inline To bits_as(From v) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To r;
    memcpy(&r, &v, sizeof r);
    return r;
}
inline float __int_as_float(int v) { return bits_as<float>(v); }
inline float __uint_as_float(unsigned v) { return bits_as<float>(v); }
inline int __float_as_int(float f) { return bits_as<int>(f); }
inline unsigned __float_as_uint(float f) { return bits_as<unsigned>(f); }

// ---- half precision with CUDA's conversions ---------------------------------------------------
struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};

inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
    const uint32_t exp = (h.bits >> 10) & 0x1fu, man = h.bits & 0x3ffu;
    uint32_t out;
    if (exp == 0x1f) {
        out = sign | 0x7f800000u | (man << 13);  // inf, NaN (payload kept)
    } else if (exp != 0) {
        out = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        out = sign;
    } else {  // subnormal: man * 2^-24, exact in f32
        float f = (float)man * 5.9604644775390625e-8f;
        memcpy(&out, &f, 4);
        out |= sign;
    }
    return __uint_as_float(out);
}

// Round to nearest, ties to even; overflow to infinity; NaN to the canonical 0x7fff.
inline __half __float2half_rn(float f) {
    const uint32_t x = __float_as_uint(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    __half h;
    if (a > 0x7f800000u) {
        h.bits = 0x7fff;
    } else if (a >= 0x477ff000u) {  // >= 65520 (or inf): rounds to inf
        h.bits = sign | 0x7c00u;
    } else if (a >= 0x38800000u) {  // normal half
        uint32_t r = (a - 0x38000000u) >> 13;
        const uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
        h.bits = sign | (uint16_t)r;
    } else if (a < 0x33000000u) {  // below half the smallest subnormal (ties to 0)
        h.bits = sign;
    } else {  // subnormal half: round(|f| * 2^24)
        const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e;  // 14..24
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
        h.bits = sign | (uint16_t)r;
    }
    return h;
}

inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float((uint32_t)b.bits << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    const uint32_t x = __float_as_uint(f);
    __nv_bfloat16 b;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        b.bits = 0x7fff;
    } else {
        b.bits = (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
    return b;
}
