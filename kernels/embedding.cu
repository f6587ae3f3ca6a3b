// Token embedding lookup. CPU twin: src/backend/cpu/embedding.rs (`embedding`).
//
// out[t, :] = table[ids[t], :] widened to f32. One block per token. An id >= vocab (the
// host checks ids, so this is a second line of defence) writes NaN instead of reading
// out of bounds.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void embedding_impl(const T* __restrict__ table,
                                               const uint32_t* __restrict__ ids,
                                               float* __restrict__ out, int hidden, int vocab,
                                               int n_tokens) {
    const int t = blockIdx.x;
    if (t >= n_tokens) return;
    const uint32_t id = ids[t];
    float* o = out + (size_t)t * hidden;
    if (id >= (uint32_t)vocab) {
        for (int c = threadIdx.x; c < hidden; c += blockDim.x) o[c] = __int_as_float(0x7fc00000);
        return;
    }
    const T* row = table + (size_t)id * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) o[c] = qs_load(row + c);
}

#define QS_EMBEDDING(NAME, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        NAME(const T* table, const uint32_t* ids, float* out, int hidden, int vocab,           \
             int n_tokens) {                                                                   \
        embedding_impl<T>(table, ids, out, hidden, vocab, n_tokens);                           \
    }

QS_EMBEDDING(embedding_f32, qs_f32)
QS_EMBEDDING(embedding_f16, qs_f16)
QS_EMBEDDING(embedding_bf16, qs_bf16)
