// An emulated cuBLAS (libcublas.so) for tests: the calls qwen-scope makes through cudarc
// (handle, stream, cublasGemmEx with f32, f16 or bf16 inputs and f32 compute), computed in
// f32 on the CPU with the BLAS column-major conventions, transposes and leading dimensions
// as documented. Every matrix's extent is checked against its device allocation first, so a
// wrong leading dimension fails with the operand's name instead of reading other memory.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <thread>
#include <vector>

#include "kernel.h"  // __half, __nv_bfloat16 and CUDA's conversions

typedef int cublasStatus_t;
enum : cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum { OP_N = 0, OP_T = 1, OP_C = 2 };
enum { R_32F = 0, R_16F = 2, R_16BF = 14 };
enum { COMPUTE_32F = 68, COMPUTE_32F_PEDANTIC = 69 };

// From the emulated driver (driver.cpp), which owns the allocations and the lock.
extern "C" int qs_emu_check_range(const void* p, size_t bytes, const char* call, const char* what);
extern "C" void qs_emu_log(const char* msg);
extern "C" int qs_emu_sticky_error();

#define API extern "C" __attribute__((visibility("default")))

namespace {

struct Handle {
    void* stream;
    int pointer_mode;  // 0 host, 1 device: both are plain memory here
    int math_mode;
};

void log(const std::string& s) { qs_emu_log(s.c_str()); }

void report(const std::string& s) { fprintf(stderr, "cuda-emulator: %s\n", s.c_str()); }

size_t elem_size(int t) { return t == R_32F ? 4 : 2; }

float load(const void* p, int t, size_t i) {
    switch (t) {
        case R_32F: return static_cast<const float*>(p)[i];
        case R_16F: return __half2float(static_cast<const __half*>(p)[i]);
        default: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    }
}

void store(void* p, int t, size_t i, float v) {
    switch (t) {
        case R_32F: static_cast<float*>(p)[i] = v; break;
        case R_16F: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
        default: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
    }
}

// One operand as a function of (row, inner index): op(X)[r, p].
struct Operand {
    const void* data;
    int type, op;
    long long ld;
    // element offset of op(X)[r, p] when X is column-major with leading dimension ld
    size_t at(long long r, long long p, bool is_a) const {
        // A: op(A) is m x k. N: A[r + p*ld]; T: A[p + r*ld].
        // B: op(B) is k x n, read as B^T rows (r = column j of op(B)). N: B[p + r*ld];
        //    T: B[r + p*ld].
        const bool plain = is_a ? op == OP_N : op == OP_T;
        return plain ? (size_t)(r + p * ld) : (size_t)(p + r * ld);
    }
    // Row r of the operand (op(A) row, or op(B) column) as k contiguous f32 values: the data
    // itself when it is f32 and contiguous that way, else a converted copy in `buf`.
    const float* row(long long r, long long k, bool is_a, std::vector<float>& buf) const {
        const bool contiguous = is_a ? op != OP_N : op == OP_N;
        if (contiguous && type == R_32F) return static_cast<const float*>(data) + r * ld;
        buf.resize(k);
        for (long long p = 0; p < k; ++p) buf[p] = load(data, type, at(r, p, is_a));
        return buf.data();
    }
};

typedef float v8 __attribute__((vector_size(32)));

// Dot products of rows a[0..4) with rows b[0..3) over k, in a fixed order (8 partial sums per
// pair, then summed pairwise), so results do not depend on the thread split.
inline float hsum(v8 v) {
    const float s0 = (v[0] + v[4]) + (v[2] + v[6]);
    const float s1 = (v[1] + v[5]) + (v[3] + v[7]);
    return s0 + s1;
}

inline v8 load8(const float* p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

void dot_block(const float* const* a, int na, const float* const* b, int nb, long long k,
               float out[4][3]) {
    v8 acc[4][3] = {};
    long long p = 0;
    for (; p + 8 <= k; p += 8) {
        v8 bv[3];
        for (int j = 0; j < nb; ++j) bv[j] = load8(b[j] + p);
        for (int i = 0; i < na; ++i) {
            const v8 av = load8(a[i] + p);
            for (int j = 0; j < nb; ++j) acc[i][j] += av * bv[j];
        }
    }
    for (int i = 0; i < na; ++i)
        for (int j = 0; j < nb; ++j) {
            float s = hsum(acc[i][j]);
            for (long long q = p; q < k; ++q) s += a[i][q] * b[j][q];
            out[i][j] = s;
        }
}

unsigned threads() {
    const char* s = getenv("QWEN_SCOPE_EMU_THREADS");
    long v = s ? atol(s) : (long)std::thread::hardware_concurrency();
    return (unsigned)(v < 1 ? 1 : v > 64 ? 64 : v);
}

}  // namespace

API cublasStatus_t cublasCreate_v2(void** handle) {
    qs_emu_log("cublasCreate_v2");
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new Handle{nullptr, 0, 0};
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasDestroy_v2(void* handle) {
    qs_emu_log("cublasDestroy_v2");
    delete static_cast<Handle*>(handle);
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSetStream_v2(void* handle, void* stream) {
    qs_emu_log("cublasSetStream_v2");
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    static_cast<Handle*>(handle)->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasGetStream_v2(void* handle, void** stream) {
    qs_emu_log("cublasGetStream_v2");
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    *stream = static_cast<Handle*>(handle)->stream;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSetPointerMode_v2(void* handle, int mode) {
    qs_emu_log("cublasSetPointerMode_v2");
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    static_cast<Handle*>(handle)->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSetMathMode(void* handle, int mode) {
    qs_emu_log("cublasSetMathMode");
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    static_cast<Handle*>(handle)->math_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSetWorkspace_v2(void* handle, void*, size_t) {
    qs_emu_log("cublasSetWorkspace_v2");
    return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

API cublasStatus_t cublasGetVersion_v2(void*, int* version) {
    qs_emu_log("cublasGetVersion_v2");
    *version = 130000;
    return CUBLAS_STATUS_SUCCESS;
}

API const char* cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

API cublasStatus_t cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k,
                                const void* alpha, const void* A, int Atype, int lda,
                                const void* B, int Btype, int ldb, const void* beta, void* C,
                                int Ctype, int ldc, int compute, int algo) {
    char buf[256];
    snprintf(buf, sizeof buf,
             "cublasGemmEx(op %c%c, m %d, n %d, k %d, types %d/%d/%d, lda %d, ldb %d, ldc %d, "
             "compute %d, algo %d)",
             "NTC"[transa % 3], "NTC"[transb % 3], m, n, k, Atype, Btype, Ctype, lda, ldb, ldc,
             compute, algo);
    log(buf);
    auto fail = [&](cublasStatus_t s, const std::string& why) {
        report(std::string(buf) + ": " + why);
        return s;
    };
    if (!handle) return fail(CUBLAS_STATUS_NOT_INITIALIZED, "no handle");
    if (qs_emu_sticky_error()) return fail(CUBLAS_STATUS_EXECUTION_FAILED, "the context has faulted");
    if (transa < 0 || transa > 2 || transb < 0 || transb > 2)
        return fail(CUBLAS_STATUS_INVALID_VALUE, "unknown operation");
    if (m < 0 || n < 0 || k < 0) return fail(CUBLAS_STATUS_INVALID_VALUE, "negative size");
    for (int t : {Atype, Btype, Ctype})
        if (t != R_32F && t != R_16F && t != R_16BF)
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, "only f32, f16 and bf16 are emulated");
    if (Atype != Btype) return fail(CUBLAS_STATUS_NOT_SUPPORTED, "A and B of different types");
    if (compute != COMPUTE_32F && compute != COMPUTE_32F_PEDANTIC)
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, "only CUBLAS_COMPUTE_32F is emulated");
    // Leading dimensions, as cuBLAS checks them.
    const long long a_rows = transa == OP_N ? m : k, b_rows = transb == OP_N ? k : n;
    if (lda < std::max(1LL, a_rows))
        return fail(CUBLAS_STATUS_INVALID_VALUE, "lda " + std::to_string(lda) + " < rows of A " +
                                                     std::to_string(a_rows));
    if (ldb < std::max(1LL, b_rows))
        return fail(CUBLAS_STATUS_INVALID_VALUE, "ldb " + std::to_string(ldb) + " < rows of B " +
                                                     std::to_string(b_rows));
    if (ldc < std::max(1, m))
        return fail(CUBLAS_STATUS_INVALID_VALUE, "ldc " + std::to_string(ldc) + " < m");
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    // Extents against the allocations.
    const long long a_cols = transa == OP_N ? k : m, b_cols = transb == OP_N ? n : k;
    const size_t es = elem_size(Atype);
    if (k > 0) {
        if (!qs_emu_check_range(A, ((a_cols - 1) * lda + a_rows) * es, "cublasGemmEx", "A"))
            return fail(CUBLAS_STATUS_EXECUTION_FAILED, "A reaches outside its allocation");
        if (!qs_emu_check_range(B, ((b_cols - 1) * ldb + b_rows) * es, "cublasGemmEx", "B"))
            return fail(CUBLAS_STATUS_EXECUTION_FAILED, "B reaches outside its allocation");
    }
    if (!qs_emu_check_range(C, ((long long)(n - 1) * ldc + m) * elem_size(Ctype), "cublasGemmEx",
                            "C"))
        return fail(CUBLAS_STATUS_EXECUTION_FAILED, "C reaches outside its allocation");

    // alpha and beta are f32 for CUBLAS_COMPUTE_32F, in host or device memory alike here.
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    const Operand a{A, Atype, transa, lda}, b{B, Btype, transb, ldb};
    // op(B) columns, converted once (they are the activations: small).
    std::vector<float> bcols((size_t)n * k);
    {
        std::vector<float> tmp;
        for (long long j = 0; j < n; ++j) {
            const float* r = b.row(j, k, false, tmp);
            std::copy(r, r + k, bcols.begin() + j * k);
        }
    }
    auto rows = [&](long long i0, long long i1) {
        std::vector<float> abuf[4];
        for (long long i = i0; i < i1; i += 4) {
            const int na = (int)std::min<long long>(4, i1 - i);
            const float* ar[4];
            for (int r = 0; r < na; ++r) ar[r] = a.row(i + r, k, true, abuf[r]);
            for (long long j = 0; j < n; j += 3) {
                const int nb = (int)std::min<long long>(3, n - j);
                const float* br[3];
                for (int c = 0; c < nb; ++c) br[c] = bcols.data() + (j + c) * k;
                float out[4][3];
                dot_block(ar, na, br, nb, k, out);
                for (int r = 0; r < na; ++r)
                    for (int c = 0; c < nb; ++c) {
                        const size_t at = (size_t)(i + r) + (size_t)(j + c) * ldc;
                        float v = al * out[r][c];
                        if (be != 0.0f) v += be * load(C, Ctype, at);  // beta 0: C is not read
                        store(C, Ctype, at, v);
                    }
            }
        }
    };
    const unsigned t = std::min<long long>(threads(), ((long long)m * n * k) >> 18 ? m / 4 + 1 : 1);
    if (t <= 1) {
        rows(0, m);
    } else {
        std::vector<std::thread> pool;
        const long long per = ((m + t - 1) / t + 3) / 4 * 4;
        for (unsigned w = 0; w < t; ++w) {
            const long long i0 = w * per, i1 = std::min<long long>(m, i0 + per);
            if (i0 < i1) pool.emplace_back(rows, i0, i1);
        }
        for (auto& th : pool) th.join();
    }
    return CUBLAS_STATUS_SUCCESS;
}
