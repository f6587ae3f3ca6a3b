// Causal grouped-query attention over packed tokens, and the KV-cache append.
// CPU twins: src/backend/cpu/attention.rs (`attention`, `attend_one`) for the attention,
// src/kv.rs (`KvCache::append`, `segments`) for the cache layout and the append.
//
// Tokens are packed: token t belongs to batch row tok[2t] at absolute position tok[2t+1].
// Row r's cache is `rows[r]`: an optional read-only shared prefix, of which the row sees
// the first prefix_len positions, then its own buffers (own_cap positions). Position j of
// the row is prefix[j] for j < prefix_len, own[j - prefix_len] after that. K and V rows are
// [kv_dim] = [num_kv_heads * head_dim] in the cache dtype (f32, f16 or bf16). A token
// attends to positions 0..=pos. Softmax and accumulation are in f32, online (flash-style)
// over tiles of 32 keys; scores are q.k * scale with scale = 1/sqrt(head_dim) from the host.
//
// The K/V tile's rows are `ld` floats apart: hd + 1 so that the 32 lanes reading one
// column each (a key per lane) hit different shared-memory banks, or hd where the padded
// tile does not fit the card's shared memory (head_dim 256 on sm_60's 48 KiB).
//
// Work split: `tiles` lists (first token, count) runs of tokens of one row (the host
// builds them). Block (tile, kv head * head chunk, split) computes QROWS = 16 query rows =
// up to tile_tokens tokens x head_chunk query heads that share one KV head, so each K/V
// tile loaded into shared memory serves all of them (prefill: several tokens per tile;
// decode: one token and its whole head group). With splits > 1 the KV range is cut into
// `splits` parts whose unnormalised partial results go to `partial` and are merged by
// attention_combine (flash-decoding for long caches with few rows).
#include "common.cuh"

struct RowKv {
    unsigned long long prefix_k, prefix_v;  // [>= prefix_len, kv_dim], may be 0 if prefix_len == 0
    unsigned long long own_k, own_v;        // [own_cap, kv_dim]
    unsigned int prefix_len;
    unsigned int own_cap;
};

#define QS_ATT_WARPS 4
#define QS_ATT_QROWS 16  // query rows per block: QS_ATT_WARPS warps x 4 rows
#define QS_ATT_RPW 4     // rows per warp
#define QS_ATT_BK 32     // keys per shared-memory tile (one per lane in the score phase)

template <typename KV>
__device__ __forceinline__ const KV* qs_kv_row(const RowKv& r, unsigned int j, bool value,
                                               int kv_dim) {
    if (j < r.prefix_len)
        return reinterpret_cast<const KV*>(value ? r.prefix_v : r.prefix_k) + (size_t)j * kv_dim;
    return reinterpret_cast<const KV*>(value ? r.own_v : r.own_k) +
           (size_t)(j - r.prefix_len) * kv_dim;
}

// NI = ceil(head_dim / 32) rounded up to 2, 4 or 8: output values per lane and row.
template <typename KV, int NI>
__device__ __forceinline__ void attention_impl(
    const float* __restrict__ q, long long q_stride, long long q_offset,
    const uint32_t* __restrict__ tok, const uint32_t* __restrict__ tiles,
    const RowKv* __restrict__ rows, float* __restrict__ out, float* __restrict__ partial,
    int n_tokens, int num_heads, int num_kv_heads, int hd, float scale, int tile_tokens,
    int head_chunk, int splits, int ld) {
    extern __shared__ float smem[];
    float* sq = smem;                          // [QROWS][hd]
    float* skv = smem + QS_ATT_QROWS * hd;     // [BK][ld]

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = num_heads / num_kv_heads;
    const int chunks = (group + head_chunk - 1) / head_chunk;
    const int kvh = blockIdx.y / chunks, chunk = blockIdx.y % chunks;
    const int kv_dim = num_kv_heads * hd;
    const uint32_t first = tiles[2 * blockIdx.x];
    const int count = min((int)tiles[2 * blockIdx.x + 1], tile_tokens);
    const RowKv rkv = rows[tok[2 * first]];

    // This warp's query rows: token, head and position (-1 when the row is unused).
    int r_tok[QS_ATT_RPW], r_head[QS_ATT_RPW], r_pos[QS_ATT_RPW];
#pragma unroll
    for (int i = 0; i < QS_ATT_RPW; ++i) {
        const int rr = warp * QS_ATT_RPW + i;
        const int tt = rr / head_chunk, hh = chunk * head_chunk + rr % head_chunk;
        const bool ok = tt < count && hh < group && rr < tile_tokens * head_chunk;
        r_tok[i] = ok ? (int)first + tt : 0;
        r_head[i] = ok ? kvh * group + hh : 0;
        r_pos[i] = ok ? (int)tok[2 * (first + tt) + 1] : -1;
    }
    int kv_len = 0;
    for (int tt = 0; tt < count; ++tt) kv_len = max(kv_len, (int)tok[2 * (first + tt) + 1] + 1);

    // Q rows into shared memory (zeros for unused rows).
    for (int rr = warp; rr < QS_ATT_QROWS; rr += QS_ATT_WARPS) {
        const int tt = rr / head_chunk, hh = chunk * head_chunk + rr % head_chunk;
        const bool ok = tt < count && hh < group && rr < tile_tokens * head_chunk;
        if (ok) {
            const float* src = q + (long long)(first + tt) * q_stride + q_offset +
                               (long long)(kvh * group + hh) * hd;
            for (int d = lane; d < hd; d += 32) sq[rr * hd + d] = src[d];
        } else {
            for (int d = lane; d < hd; d += 32) sq[rr * hd + d] = 0.0f;
        }
    }

    // This split's key range, in whole tiles.
    int per = (kv_len + splits - 1) / splits;
    per = (per + QS_ATT_BK - 1) / QS_ATT_BK * QS_ATT_BK;
    const int j_begin = blockIdx.z * per;
    const int j_end = min(kv_len, j_begin + per);

    float m[QS_ATT_RPW], l[QS_ATT_RPW], acc[QS_ATT_RPW][NI];
#pragma unroll
    for (int i = 0; i < QS_ATT_RPW; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int e = 0; e < NI; ++e) acc[i][e] = 0.0f;
    }

    for (int j0 = j_begin; j0 < j_end; j0 += QS_ATT_BK) {
        const int nk = min(QS_ATT_BK, j_end - j0);
        __syncthreads();  // previous V tile fully consumed (and Q stored, first time)
        for (int jj = warp; jj < QS_ATT_BK; jj += QS_ATT_WARPS) {
            const KV* src = jj < nk ? qs_kv_row<KV>(rkv, j0 + jj, false, kv_dim) + kvh * hd : nullptr;
            for (int d = lane; d < hd; d += 32) skv[jj * ld + d] = jj < nk ? qs_load(src + d) : 0.0f;
        }
        __syncthreads();

        // Scores: lane = key.
        float s[QS_ATT_RPW];
#pragma unroll
        for (int i = 0; i < QS_ATT_RPW; ++i) s[i] = 0.0f;
        const float* kr = skv + lane * ld;
        const float* q0 = sq + (warp * QS_ATT_RPW) * hd;
        for (int d = 0; d < hd; ++d) {
            const float kd = kr[d];
#pragma unroll
            for (int i = 0; i < QS_ATT_RPW; ++i) s[i] += q0[i * hd + d] * kd;
        }
        const int j = j0 + lane;
        float p[QS_ATT_RPW];
#pragma unroll
        for (int i = 0; i < QS_ATT_RPW; ++i) {
            const bool valid = lane < nk && j <= r_pos[i];
            const float si = valid ? s[i] * scale : -INFINITY;
            const float m_new = fmaxf(m[i], qs_warp_max(si));
            if (m_new == -INFINITY) {  // nothing visible yet for this row
                p[i] = 0.0f;
                continue;
            }
            p[i] = valid ? expf(si - m_new) : 0.0f;
            const float alpha = expf(m[i] - m_new);  // 0 when m was -inf
            l[i] = l[i] * alpha + qs_warp_sum(p[i]);
#pragma unroll
            for (int e = 0; e < NI; ++e) acc[i][e] *= alpha;
            m[i] = m_new;
        }

        __syncthreads();  // scores done with the K tile
        for (int jj = warp; jj < QS_ATT_BK; jj += QS_ATT_WARPS) {
            const KV* src = jj < nk ? qs_kv_row<KV>(rkv, j0 + jj, true, kv_dim) + kvh * hd : nullptr;
            for (int d = lane; d < hd; d += 32) skv[jj * ld + d] = jj < nk ? qs_load(src + d) : 0.0f;
        }
        __syncthreads();

        for (int jj = 0; jj < nk; ++jj) {
            const float* vr = skv + jj * ld;
            float vv[NI];
#pragma unroll
            for (int e = 0; e < NI; ++e) {
                const int d = lane + 32 * e;
                vv[e] = d < hd ? vr[d] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < QS_ATT_RPW; ++i) {
                const float pj = __shfl_sync(QS_FULL_MASK, p[i], jj);
#pragma unroll
                for (int e = 0; e < NI; ++e) acc[i][e] += pj * vv[e];
            }
        }
    }

#pragma unroll
    for (int i = 0; i < QS_ATT_RPW; ++i) {
        if (r_pos[i] < 0) continue;
        const long long base = ((long long)r_tok[i] * num_heads + r_head[i]) * hd;
        if (splits == 1) {
            const float inv = 1.0f / l[i];
#pragma unroll
            for (int e = 0; e < NI; ++e) {
                const int d = lane + 32 * e;
                if (d < hd) out[base + d] = acc[i][e] * inv;
            }
        } else {
            float* pp = partial + ((long long)blockIdx.z * n_tokens * num_heads +
                                   (long long)r_tok[i] * num_heads + r_head[i]) * (hd + 2);
#pragma unroll
            for (int e = 0; e < NI; ++e) {
                const int d = lane + 32 * e;
                if (d < hd) pp[d] = acc[i][e];
            }
            if (lane == 0) {
                pp[hd] = m[i];
                pp[hd + 1] = l[i];
            }
        }
    }
}

#define QS_ATTENTION(NAME, KV, NI)                                                             \
    extern "C" __global__ void __launch_bounds__(QS_ATT_WARPS * 32) NAME(                      \
        const float* q, long long q_stride, long long q_offset, const uint32_t* tok,           \
        const uint32_t* tiles, const RowKv* rows, float* out, float* partial, int n_tokens,    \
        int num_heads, int num_kv_heads, int hd, float scale, int tile_tokens, int head_chunk, \
        int splits, int ld) {                                                                  \
        attention_impl<KV, NI>(q, q_stride, q_offset, tok, tiles, rows, out, partial,          \
                               n_tokens, num_heads, num_kv_heads, hd, scale, tile_tokens,      \
                               head_chunk, splits, ld);                                        \
    }

QS_ATTENTION(attention_f32_d64, qs_f32, 2)
QS_ATTENTION(attention_f32_d128, qs_f32, 4)
QS_ATTENTION(attention_f32_d256, qs_f32, 8)
QS_ATTENTION(attention_f16_d64, qs_f16, 2)
QS_ATTENTION(attention_f16_d128, qs_f16, 4)
QS_ATTENTION(attention_f16_d256, qs_f16, 8)
QS_ATTENTION(attention_bf16_d64, qs_bf16, 2)
QS_ATTENTION(attention_bf16_d128, qs_bf16, 4)
QS_ATTENTION(attention_bf16_d256, qs_bf16, 8)

// Merges the `splits` partial results of attention_*: out[t, h, :] = sum_s acc_s e^(m_s - M)
// / sum_s l_s e^(m_s - M). One block of 32..256 threads per (token, head).
extern "C" __global__ void __launch_bounds__(256)
    attention_combine(const float* __restrict__ partial, float* __restrict__ out, int n_tokens,
                      int num_heads, int hd, int splits) {
    const long long th = blockIdx.x;
    if (th >= (long long)n_tokens * num_heads) return;
    const long long split_stride = (long long)n_tokens * num_heads * (hd + 2);
    const float* p0 = partial + th * (hd + 2);
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, p0[s * split_stride + hd]);
    float den = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const float* ps = p0 + s * split_stride;
        if (ps[hd] != -INFINITY) den += ps[hd + 1] * expf(ps[hd] - mx);
    }
    const float inv = 1.0f / den;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f;
        for (int s = 0; s < splits; ++s) {
            const float* ps = p0 + s * split_stride;
            if (ps[hd] != -INFINITY) num += ps[d] * expf(ps[hd] - mx);
        }
        out[th * hd + d] = num * inv;
    }
}

// Appends the new keys and values to each token's row: token t (row tok[2t], position
// tok[2t+1]) writes K = src[t * src_stride + k_offset ..][..kv_dim] and V likewise at
// v_offset (f32, e.g. inside the fused QKV buffer after RoPE) into own slot
// pos - prefix_len of its row, converted to the cache dtype. Out-of-range slots are
// skipped (the host checks them). One block per token.
template <typename KV>
__device__ __forceinline__ void kv_append_impl(const float* __restrict__ src,
                                               long long src_stride, long long k_offset,
                                               long long v_offset,
                                               const uint32_t* __restrict__ tok,
                                               const RowKv* __restrict__ rows, int n_tokens,
                                               int kv_dim) {
    const int t = blockIdx.x;
    if (t >= n_tokens) return;
    const RowKv r = rows[tok[2 * t]];
    const uint32_t pos = tok[2 * t + 1];
    if (pos < r.prefix_len || pos - r.prefix_len >= r.own_cap) return;
    const size_t slot = (size_t)(pos - r.prefix_len) * kv_dim;
    KV* k = reinterpret_cast<KV*>(r.own_k) + slot;
    KV* v = reinterpret_cast<KV*>(r.own_v) + slot;
    const float* s = src + (long long)t * src_stride;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
        qs_store(k + c, s[k_offset + c]);
        qs_store(v + c, s[v_offset + c]);
    }
}

#define QS_KV_APPEND(NAME, KV)                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        NAME(const float* src, long long src_stride, long long k_offset, long long v_offset,   \
             const uint32_t* tok, const RowKv* rows, int n_tokens, int kv_dim) {               \
        kv_append_impl<KV>(src, src_stride, k_offset, v_offset, tok, rows, n_tokens, kv_dim);  \
    }

QS_KV_APPEND(kv_append_f32, qs_f32)
QS_KV_APPEND(kv_append_f16, qs_f16)
QS_KV_APPEND(kv_append_bf16, qs_bf16)
