// Vocabulary-side ops on f32 logits [rows, vocab]. CPU twin: src/backend/cpu/logits.rs
// (`log_softmax`, `argmax`, `top_k`). One block per row.
#include "common.cuh"

// y = x - (max + ln(sum(exp(x - max)))), the exponentials in f32 (accurate expf) and
// their sum in f64 as on the CPU; the subtraction is done in f64 and rounded once.
extern "C" __global__ void __launch_bounds__(1024)
    log_softmax_f32(const float* __restrict__ x, float* __restrict__ y, int vocab, int rows) {
    __shared__ float fscratch[32];
    __shared__ double dscratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * vocab;
    float* yr = y + (size_t)r * vocab;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = qs_block_max(m, fscratch);
    double s = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += (double)expf(xr[i] - m);
    s = qs_block_sum(s, dscratch);
    const double lse = (double)m + log(s);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) yr[i] = (float)((double)xr[i] - lse);
}

// A 64-bit key whose unsigned order is: larger float first, then smaller index.
// `total` selects Rust's f32::total_cmp order (-0 < +0, NaN above +inf) as top_k uses;
// otherwise IEEE `>` order as argmax uses (-0 == +0, NaN never selected).
__device__ __forceinline__ unsigned long long qs_rank_key(float v, uint32_t i, bool total) {
    uint32_t b = __float_as_uint(v);
    uint32_t key;
    if (!total && v != v) {
        key = 0u;  // NaN: below every number
    } else {
        if (!total && v == 0.0f) b = 0u;  // -0 ties with +0
        key = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    }
    return ((unsigned long long)key << 32) | (unsigned long long)(0xffffffffu - i);
}

// out[r] = the first index of the largest value (torch.argmax / the CPU loop). As on the
// CPU, a NaN at index 0 is returned as 0 and NaNs elsewhere are never chosen.
extern "C" __global__ void __launch_bounds__(1024)
    argmax_f32(const float* __restrict__ x, uint32_t* __restrict__ out, int vocab, int rows) {
    __shared__ unsigned long long scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * vocab;
    unsigned long long best = 0ull;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const unsigned long long k = qs_rank_key(xr[i], (uint32_t)i, false);
        best = k > best ? k : best;
    }
    best = qs_block_max_u64(best, scratch);
    if (threadIdx.x == 0) {
        const float x0 = xr[0];
        out[r] = (x0 != x0) ? 0u : 0xffffffffu - (uint32_t)(best & 0xffffffffull);
    }
}

// The k largest values of each row with their indices, largest first, ties by smaller
// index, in f32::total_cmp order (as the CPU top_k). k rounds, each a full scan of the row
// for the best key below the previous round's: meant for small k (the wrapper allows up
// to 256); the row stays in L2 between rounds.
extern "C" __global__ void __launch_bounds__(1024)
    topk_f32(const float* __restrict__ x, uint32_t* __restrict__ idx, float* __restrict__ vals,
             int vocab, int k, int rows) {
    __shared__ unsigned long long scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * vocab;
    unsigned long long prev = 0ull;
    for (int j = 0; j < k; ++j) {
        unsigned long long best = 0ull;
        bool found = false;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const unsigned long long key = qs_rank_key(xr[i], (uint32_t)i, true);
            if ((j == 0 || key < prev) && (!found || key > best)) {
                best = key;
                found = true;
            }
        }
        // Keys are never 0 in total order except for index 0xffffffff, which a row of at
        // most 2^31 values cannot reach, so 0 can stand for "none".
        best = qs_block_max_u64(found ? best : 0ull, scratch);
        if (threadIdx.x == 0) {
            const uint32_t i = 0xffffffffu - (uint32_t)(best & 0xffffffffull);
            idx[(size_t)r * k + j] = i;
            vals[(size_t)r * k + j] = xr[i];
        }
        prev = best;
    }
}
