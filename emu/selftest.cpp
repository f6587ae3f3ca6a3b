// Checks the emulator itself (tools/cuda_emulator.sh --check runs it): CUDA's f16/bf16
// conversions, the driver's refusals (launch limits, shared memory, cards without code,
// memory size), out-of-bounds detection naming the kernel, and cublasGemmEx against a plain
// loop for every transpose and type. Each driver scenario runs in a child process, since a
// fault poisons the context for good, as on a GPU.
//
// Usage: selftest FATBIN (the kernels fatbin built by build.rs, with SASS for sm_90 and
// none for sm_60, as a CUDA 13 build has)
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernel.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
extern "C" {
CUresult cuInit(unsigned);
CUresult cuDeviceGet(int*, int);
CUresult cuDevicePrimaryCtxRetain(void**, int);
CUresult cuCtxSetCurrent(void*);
CUresult cuModuleLoadData(void**, const void*);
CUresult cuModuleGetFunction(void**, void*, const char*);
CUresult cuMemAlloc_v2(CUdeviceptr*, size_t);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void*, size_t);
CUresult cuMemcpyDtoH_v2(void*, CUdeviceptr, size_t);
CUresult cuLaunchKernel(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                        unsigned, void*, void**, void**);
int cublasCreate_v2(void**);
int cublasGemmEx(void*, int, int, int, int, int, const void*, const void*, int, int,
                 const void*, int, int, const void*, void*, int, int, int, int);
}

static int failures = 0;
#define CHECK(cond, ...)                                  \
    do {                                                  \
        if (!(cond)) {                                    \
            fprintf(stderr, "selftest FAILED: " __VA_ARGS__); \
            fprintf(stderr, "  (%s:%d)\n", __FILE__, __LINE__); \
            ++failures;                                   \
        }                                                 \
    } while (0)

static std::vector<char> fatbin;

// ---- conversions ------------------------------------------------------------------------------

static void conversions() {
    std::mt19937_64 rng(1);
    auto check = [](uint32_t bits) {
        float f;
        memcpy(&f, &bits, 4);
        const _Float16 want = (_Float16)f;  // the compiler's IEEE round-to-nearest-even
        uint16_t wb;
        memcpy(&wb, &want, 2);
        const uint16_t got = __float2half_rn(f).bits;
        if (std::isnan(f)) {
            CHECK((got & 0x7c00) == 0x7c00 && (got & 0x3ff), "f16 NaN of %08x\n", bits);
        } else {
            CHECK(got == wb, "f16(%08x) = %04x, want %04x\n", bits, got, wb);
            const float back = __half2float(__half{got});
            CHECK(back == (float)want, "f16 -> f32 of %04x\n", got);
        }
        // bf16: round to nearest even on the top 16 bits, by long division as a reference
        if (!std::isnan(f)) {
            const double d = f;
            const uint16_t b = __float2bfloat16_rn(f).bits;
            const float lo = __bfloat162float(__nv_bfloat16{b});
            // the neighbours of the result must not be closer to f
            for (int s : {-1, 1}) {
                const uint16_t nb = (uint16_t)(b + s);
                if ((nb & 0x7f80) == 0x7f80) continue;
                const double other = __bfloat162float(__nv_bfloat16{nb});
                CHECK(std::fabs(other - d) >= std::fabs((double)lo - d) || std::isinf(lo),
                      "bf16(%08x) = %04x is not the nearest\n", bits, b);
            }
        }
    };
    for (uint32_t e = 0; e < 256; ++e)  // every exponent, edge mantissas
        for (uint32_t m : {0u, 1u, 0x0fffu, 0x1000u, 0x1001u, 0x2000u, 0x3000u, 0x7fffffu})
            for (uint32_t s : {0u, 0x80000000u}) check(s | (e << 23) | m);
    for (int i = 0; i < 2000000; ++i) check((uint32_t)rng());
}

// ---- driver scenarios, each in a child process --------------------------------------------------

static void* module() {
    int dev;
    void* ctx;
    void* mod = nullptr;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) ||
        cuCtxSetCurrent(ctx))
        exit(90);
    CUresult r = cuModuleLoadData(&mod, fatbin.data());
    if (r) exit(r);
    return mod;
}

static void* function(const char* name) {
    void* f;
    if (cuModuleGetFunction(&f, module(), name)) exit(91);
    return f;
}

// Runs `body` in a child with `env` set; returns its exit status (the CUresult it exits with).
static int in_child(const std::vector<std::pair<const char*, const char*>>& env,
                    const std::function<int()>& body) {
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        for (auto& [k, v] : env) setenv(k, v, 1);
        _exit(body());
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int rmsnorm(unsigned rows_allocated, unsigned rows_launched, unsigned threads,
                   unsigned smem) {
    void* f = function("rmsnorm_f32");
    int d = 1024;  // 4 KiB per row: a row past the end is in the guard page
    float eps = 1e-6f;
    int rows = (int)rows_launched;
    CUdeviceptr x, w, y;
    if (cuMemAlloc_v2(&x, rows_allocated * d * 4) || cuMemAlloc_v2(&w, d * 4) ||
        cuMemAlloc_v2(&y, rows_launched * d * 4))
        return 92;
    std::vector<float> h(rows_allocated * d, 1.5f);
    cuMemcpyHtoD_v2(x, h.data(), h.size() * 4);
    cuMemcpyHtoD_v2(w, h.data(), d * 4);
    void* args[] = {&x, &w, &y, &d, &eps, &rows};
    CUresult r = cuLaunchKernel(f, rows_launched, 1, 1, threads, 1, 1, smem, nullptr, args,
                                nullptr);
    if (r) return r;
    std::vector<float> out(rows_launched * d);
    cuMemcpyDtoH_v2(out.data(), y, out.size() * 4);
    // y = w * x / sqrt(mean(x^2) + eps) = 1.5 * 1.5 / sqrt(2.25 + 1e-6)
    const float want = 2.25f / std::sqrt(2.25f + 1e-6f);
    for (float v : out)
        if (std::fabs(v - want) > 1e-5f) return 93;
    return 0;
}

static void driver() {
    // exit statuses keep the low 8 bits of the CUresult
    const int ILLEGAL_ADDRESS = 700 & 0xff, INVALID_VALUE = 1, NO_BINARY = 209, PTX_VERSION = 222,
              OOM = 2;
    CHECK(in_child({}, [] { return rmsnorm(3, 3, 256, 0); }) == 0, "rmsnorm runs and is right\n");
    CHECK(in_child({{"QWEN_SCOPE_EMU_THREADS", "1"}}, [] { return rmsnorm(3, 3, 1024, 0); }) == 0,
          "rmsnorm with 1024 threads on one worker\n");
    fprintf(stderr, "selftest: the next launch must report an out-of-bounds read in rmsnorm_f32:\n");
    CHECK(in_child({}, [] { return rmsnorm(3, 4, 256, 0); }) == ILLEGAL_ADDRESS,
          "a read past the end is an illegal address\n");
    CHECK(in_child({{"QWEN_SCOPE_EMU_GUARD", "before"}},
                   [] {
                       // with the guard before the buffer a read past its end goes unseen
                       // only within the page rounding; 3 rows of 4 KiB fill pages exactly
                       return rmsnorm(3, 3, 256, 0);
                   }) == 0,
          "guard before\n");
    CHECK(in_child({}, [] {
              int r = rmsnorm(3, 4, 256, 0);
              CUdeviceptr p;
              return r == 700 ? cuMemAlloc_v2(&p, 16) : 0;
          }) == ILLEGAL_ADDRESS,
          "a fault is sticky\n");
    CHECK(in_child({}, [] { return rmsnorm(3, 3, 2048, 0); }) == INVALID_VALUE,
          "2048 threads per block are refused\n");
    CHECK(in_child({}, [] {
              void* f = function("swiglu_f32");  // __launch_bounds__(256)
              CUdeviceptr a;
              cuMemAlloc_v2(&a, 4096);
              int inter = 4, tokens = 1;
              void* args[] = {&a, &a, &inter, &tokens};
              return cuLaunchKernel(f, 1, 1, 1, 512, 1, 1, 0, nullptr, args, nullptr);
          }) == INVALID_VALUE,
          "more threads than __launch_bounds__ are refused\n");
    CHECK(in_child({}, [] { return rmsnorm(3, 3, 256, 64 * 1024); }) == INVALID_VALUE,
          "dynamic shared memory above 48 KiB without the attribute is refused\n");
    CHECK(in_child({{"QWEN_SCOPE_EMU_CARD", "p100"}}, [] { return (module(), 0); }) == NO_BINARY,
          "a CUDA 13 fatbin has no code for sm_60\n");
    CHECK(in_child({{"QWEN_SCOPE_EMU_CC", "13.0"}, {"QWEN_SCOPE_EMU_DRIVER", "12.4"}},
                   [] { return (module(), 0); }) == PTX_VERSION,
          "driver 12.4 cannot JIT PTX ISA 9.0\n");
    CHECK(in_child({{"QWEN_SCOPE_EMU_CC", "13.0"}}, [] { return (module(), 0); }) == 0,
          "driver 13.0 JITs PTX ISA 9.0 for a newer card\n");
    CHECK(in_child({{"QWEN_SCOPE_EMU_CARD", "t4"}}, [] { return (module(), 0); }) == 200,
          "a CUDA 13 cubin is an invalid image for driver 12.4\n");
    CHECK(in_child({{"QWEN_SCOPE_EMU_CARD", "t4"}, {"QWEN_SCOPE_EMU_DRIVER", "13.0"}}, [] {
              module();
              CUdeviceptr p;
              return cuMemAlloc_v2(&p, 16ull << 30);
          }) == OOM,
          "16 GiB do not fit a 15 GiB T4\n");
}

// ---- cuBLAS -------------------------------------------------------------------------------------

static void gemm() {
    CHECK(in_child({}, [] {
              module();
              void* h;
              cublasCreate_v2(&h);
              std::mt19937 rng(7);
              std::uniform_real_distribution<float> u(-1, 1);
              const int m = 37, n = 5, k = 70;
              for (int type : {0, 2, 14})
                  for (int ta = 0; ta < 2; ++ta)
                      for (int tb = 0; tb < 2; ++tb) {
                          const int lda = (ta ? k : m) + 3, ldb = (tb ? n : k) + 2, ldc = m + 1;
                          const size_t es = type == 0 ? 4 : 2;
                          const size_t na = (size_t)lda * (ta ? m : k),
                                       nb = (size_t)ldb * (tb ? k : n);
                          std::vector<float> A(na), B(nb);
                          std::vector<char> Ab(na * es), Bb(nb * es);
                          auto put = [&](std::vector<float>& v, std::vector<char>& raw) {
                              for (size_t i = 0; i < v.size(); ++i) {
                                  float x = u(rng);
                                  if (type == 2) {
                                      __half hv = __float2half_rn(x);
                                      x = __half2float(hv);
                                      memcpy(&raw[i * 2], &hv, 2);
                                  } else if (type == 14) {
                                      __nv_bfloat16 bv = __float2bfloat16_rn(x);
                                      x = __bfloat162float(bv);
                                      memcpy(&raw[i * 2], &bv, 2);
                                  } else {
                                      memcpy(&raw[i * 4], &x, 4);
                                  }
                                  v[i] = x;
                              }
                          };
                          put(A, Ab);
                          put(B, Bb);
                          CUdeviceptr dA, dB, dC;
                          cuMemAlloc_v2(&dA, Ab.size());
                          cuMemAlloc_v2(&dB, Bb.size());
                          cuMemAlloc_v2(&dC, (size_t)ldc * n * 4);
                          cuMemcpyHtoD_v2(dA, Ab.data(), Ab.size());
                          cuMemcpyHtoD_v2(dB, Bb.data(), Bb.size());
                          std::vector<float> C((size_t)ldc * n, 0.5f);
                          cuMemcpyHtoD_v2(dC, C.data(), C.size() * 4);
                          const float alpha = 1.25f, beta = -0.5f;
                          int r = cublasGemmEx(h, ta, tb, m, n, k, &alpha, (void*)dA, type, lda,
                                               (void*)dB, type, ldb, &beta, (void*)dC, 0, ldc,
                                               68, -1);
                          if (r) return 10 + r;
                          std::vector<float> got(C.size());
                          cuMemcpyDtoH_v2(got.data(), dC, got.size() * 4);
                          for (int i = 0; i < m; ++i)
                              for (int j = 0; j < n; ++j) {
                                  double s = 0;
                                  for (int p = 0; p < k; ++p)
                                      s += (double)A[ta ? p + i * lda : i + p * lda] *
                                           B[tb ? j + p * ldb : p + j * ldb];
                                  const double want = alpha * s + beta * 0.5;
                                  if (std::fabs(got[i + j * ldc] - want) > 1e-4) return 30;
                              }
                          for (int j = 0; j < n; ++j)  // the padding rows of C untouched
                              if (got[m + j * ldc] != 0.5f) return 31;
                      }
              return 0;
          }) == 0,
          "cublasGemmEx equals a plain loop for every transpose and type\n");
    CHECK(in_child({}, [] {
              module();
              void* h;
              cublasCreate_v2(&h);
              CUdeviceptr a;
              cuMemAlloc_v2(&a, 64 * 64 * 4);
              const float one = 1, zero = 0;
              // lda below the rows of A: refused as cuBLAS does
              int r1 = cublasGemmEx(h, 0, 0, 64, 8, 8, &one, (void*)a, 0, 32, (void*)a, 0, 8,
                                    &zero, (void*)a, 0, 64, 68, -1);
              // lda one too large: A reaches past its allocation
              int r2 = cublasGemmEx(h, 1, 0, 64, 8, 64, &one, (void*)a, 0, 65, (void*)a, 0, 64,
                                    &zero, (void*)a, 0, 64, 68, -1);
              return r1 == 7 && r2 == 13 ? 0 : 1;
          }) == 0,
          "bad leading dimensions are refused\n");
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: selftest FATBIN\n");
        return 2;
    }
    FILE* f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) fatbin.insert(fatbin.end(), buf, buf + got);
    fclose(f);
    conversions();
    driver();
    gemm();
    if (failures) {
        fprintf(stderr, "selftest: %d checks failed\n", failures);
        return 1;
    }
    fprintf(stderr, "selftest: all checks passed\n");
    return 0;
}
