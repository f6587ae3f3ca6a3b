// An emulated CUDA driver (libcuda.so) for tests: the driver functions qwen-scope calls
// through cudarc, served on the CPU. Device memory is host memory with guard pages, copies
// are memcpy, streams and events are synchronous and in order, and kernels are the host
// builds of kernels/*.cu (kernels.cpp) run by the block executor (exec.cpp). The emulated
// card (name, compute capability, SMs, memory, shared-memory limits, driver version) comes
// from QWEN_SCOPE_EMU_* settings; see docs/CUDA.md.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "fatbin.h"
#include "registry.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_NO_BINARY_FOR_GPU = 209,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

namespace qs_emu {
namespace {

// ---- settings and logging ------------------------------------------------------------------

struct Card {
    std::string name;
    int major, minor, sms;
    size_t memory;
    int smem_block, smem_optin, smem_sm;
    int driver;  // e.g. 12040
};

[[noreturn]] void die(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda-emulator: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

const char* setting(const char* name) {
    const char* v = getenv(name);
    return v && *v ? v : nullptr;
}

// QWEN_SCOPE_EMU_CARD picks a preset; each field can then be set on its own.
Card load_card() {
    const char* preset = setting("QWEN_SCOPE_EMU_CARD");
    std::string p = preset ? preset : "h100";
    Card c;
    if (p == "h100") {
        c = {"NVIDIA H100 80GB HBM3 (emulated)", 9, 0, 132, 80ull << 30, 49152, 232448, 233472,
             13000};
    } else if (p == "t4") {
        c = {"Tesla T4 (emulated)", 7, 5, 40, 15ull << 30, 49152, 65536, 65536, 12040};
    } else if (p == "p100") {
        c = {"Tesla P100-PCIE-16GB (emulated)", 6, 0, 56, 16ull << 30, 49152, 49152, 65536,
             12040};
    } else {
        die("QWEN_SCOPE_EMU_CARD=%s: unknown card (h100, t4 or p100)", p.c_str());
    }
    if (const char* v = setting("QWEN_SCOPE_EMU_NAME")) c.name = v;
    if (const char* v = setting("QWEN_SCOPE_EMU_CC")) {
        if (sscanf(v, "%d.%d", &c.major, &c.minor) != 2)
            die("QWEN_SCOPE_EMU_CC=%s: expected MAJOR.MINOR, e.g. 7.5", v);
    }
    if (const char* v = setting("QWEN_SCOPE_EMU_SMS")) c.sms = atoi(v);
    if (const char* v = setting("QWEN_SCOPE_EMU_MEMORY_GB"))
        c.memory = (size_t)(atof(v) * (double)(1ull << 30));
    if (const char* v = setting("QWEN_SCOPE_EMU_SMEM_OPTIN")) c.smem_optin = atoi(v);
    if (const char* v = setting("QWEN_SCOPE_EMU_DRIVER")) {
        int ma = 0, mi = 0;
        if (sscanf(v, "%d.%d", &ma, &mi) != 2)
            die("QWEN_SCOPE_EMU_DRIVER=%s: expected a CUDA version, e.g. 12.4", v);
        c.driver = ma * 1000 + mi * 10;
    }
    if (c.sms < 1 || c.memory == 0 || c.major < 1)
        die("emulated card settings out of range (SMs %d, memory %zu, sm_%d%d)", c.sms,
            c.memory, c.major, c.minor);
    return c;
}

FILE* log_file() {
    static FILE* f = [] {
        const char* v = setting("QWEN_SCOPE_EMU_LOG");
        if (!v || !strcmp(v, "0")) return (FILE*)nullptr;
        if (!strcmp(v, "1")) return stderr;
        FILE* o = fopen(v, "a");
        if (!o) die("QWEN_SCOPE_EMU_LOG=%s: cannot open for appending", v);
        setvbuf(o, nullptr, _IOLBF, 0);
        return o;
    }();
    return f;
}

// One line per call, written at once so that lines of concurrent callers do not mix.
void vline(FILE* f, const char* fmt, va_list ap) {
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    fprintf(f, "cuda-emulator: %s\n", buf);
}

void logf(const char* fmt, ...) {
    FILE* f = log_file();
    if (!f) return;
    va_list ap;
    va_start(ap, fmt);
    vline(f, fmt, ap);
    va_end(ap);
}

void report(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vline(stderr, fmt, ap);
    va_end(ap);
}

// ---- state ---------------------------------------------------------------------------------------

struct Alloc {
    size_t size;
    int device;
    void* map;
    size_t map_len;
    bool host;  // pinned host memory (cuMemHostAlloc)
};

struct Ctx {
    int device;
    int refs;
};

struct Module {
    int device;
};

struct Function {
    const KernelEntry* k;
    int max_dynamic_smem;
};

struct Driver {
    std::recursive_mutex mu;
    bool initialised = false;
    std::vector<Card> cards;
    std::vector<Ctx*> primary;
    std::vector<size_t> used;
    std::map<uintptr_t, Alloc> allocs;
    CUresult sticky = CUDA_SUCCESS;  // a fault in a kernel poisons the context, as on a GPU
    bool guard_before = false;
};

Driver& drv() {
    static Driver* d = new Driver;  // never destroyed: cudarc may call in during exit
    return *d;
}

thread_local Ctx* current = nullptr;

#define LOCK std::lock_guard<std::recursive_mutex> lock_(drv().mu)

// A pointer's allocation, or null. `p` may point anywhere inside it.
const std::pair<const uintptr_t, Alloc>* find_alloc(uintptr_t p) {
    auto& m = drv().allocs;
    auto it = m.upper_bound(p);
    if (it == m.begin()) return nullptr;
    --it;
    return p < it->first + it->second.size ? &*it : nullptr;
}

std::string describe(uintptr_t a) {
    auto& m = drv().allocs;
    auto it = m.upper_bound(a);
    char buf[200];
    if (it != m.begin()) {
        auto prev = std::prev(it);
        const uintptr_t end = prev->first + prev->second.size;
        if (a < end) {
            snprintf(buf, sizeof buf, "byte %zu of a %zu-byte allocation at 0x%lx",
                     (size_t)(a - prev->first), prev->second.size, (unsigned long)prev->first);
            return buf;
        }
        if (a - end < 65536) {
            snprintf(buf, sizeof buf, "%zu bytes past the end of a %zu-byte allocation at 0x%lx",
                     (size_t)(a - end), prev->second.size, (unsigned long)prev->first);
            return buf;
        }
    }
    if (it != m.end() && it->first - a < 65536) {
        snprintf(buf, sizeof buf, "%zu bytes before a %zu-byte allocation at 0x%lx",
                 (size_t)(it->first - a), it->second.size, (unsigned long)it->first);
        return buf;
    }
    return "not in or next to any device allocation (shared memory, a fiber stack, or a wild "
           "pointer)";
}

CUresult check_range(uintptr_t p, size_t bytes, const char* call, const char* what) {
    if (bytes == 0) return CUDA_SUCCESS;
    const auto* a = find_alloc(p);
    if (!a || p + bytes > a->first + a->second.size) {
        report("%s: %s [0x%lx, +%zu bytes) is not inside one allocation (%s)", call, what,
               (unsigned long)p, bytes, describe(p).c_str());
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult init_check() {
    if (!drv().initialised) return CUDA_ERROR_NOT_INITIALIZED;
    return drv().sticky;
}

CUresult device_alloc(CUdeviceptr* out, size_t bytes, int device, bool host) {
    Driver& d = drv();
    if (!host && d.used[device] + bytes > d.cards[device].memory) {
        report("out of memory: %zu bytes asked, %zu of %zu in use on device %d", bytes,
               d.used[device], d.cards[device].memory, device);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // Rounded to 16 bytes (what the kernels may assume of alignment) and placed against a
    // guard page: after the end by default, before the start with QWEN_SCOPE_EMU_GUARD=before.
    const size_t page = 4096, size = (bytes + 15) & ~size_t(15);
    const size_t data = (size + page - 1) / page * page;
    const size_t len = data + 2 * page;
    char* m = static_cast<char*>(mmap(nullptr, len, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    mprotect(m, page, PROT_NONE);
    mprotect(m + page + data, page, PROT_NONE);
    char* p = d.guard_before ? m + page : m + page + data - size;
    // New device memory holds garbage on a GPU: here 0xff bytes (NaN, or ~0).
    memset(p, 0xff, size);
    d.allocs[(uintptr_t)p] = Alloc{size == 0 ? 1 : size, device, m, len, host};
    if (!host) d.used[device] += size;
    *out = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult device_free(CUdeviceptr p, const char* call) {
    Driver& d = drv();
    auto it = d.allocs.find((uintptr_t)p);
    if (it == d.allocs.end()) {
        report("%s(0x%llx): not the start of an allocation", call, p);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!it->second.host) d.used[it->second.device] -= it->second.size;
    munmap(it->second.map, it->second.map_len);
    d.allocs.erase(it);
    return CUDA_SUCCESS;
}

// FNV-1a (64-bit) over every file of the kernels folder in name order (name, NUL,
// contents, NUL), as gen_kernels.py computes it when the emulator is built.
uint64_t fnv(uint64_t h, const void* data, size_t n) {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

// Empty when the kernels this emulator was built from are still those in kKernelsDir (or
// that folder is gone, e.g. the emulator was copied elsewhere); else why not.
std::string stale_kernels() {
    std::vector<std::string> names;
    if (DIR* dir = opendir(kKernelsDir)) {
        while (dirent* e = readdir(dir)) {
            std::string n = e->d_name;
            std::string path = std::string(kKernelsDir) + "/" + n;
            struct stat st;
            if (n[0] != '.' && stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode))
                names.push_back(n);
        }
        closedir(dir);
    } else {
        return "";
    }
    std::sort(names.begin(), names.end());
    uint64_t h = 0xcbf29ce484222325ull;
    for (const std::string& n : names) {
        FILE* f = fopen((std::string(kKernelsDir) + "/" + n).c_str(), "rb");
        if (!f) continue;
        h = fnv(h, n.data(), n.size());
        h = fnv(h, "", 1);
        char buf[65536];
        size_t got;
        while ((got = fread(buf, 1, sizeof buf, f)) > 0) h = fnv(h, buf, got);
        fclose(f);
        h = fnv(h, "", 1);
    }
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    if (hex == std::string(kKernelsHash)) return "";
    return std::string("the emulator was built from other kernel sources than ") + kKernelsDir +
           " holds now: rerun tools/cuda_emulator.sh";
}

}  // namespace
}  // namespace qs_emu

using namespace qs_emu;

#define API extern "C" __attribute__((visibility("default")))

// ---- initialisation, devices, contexts -------------------------------------------------------

API CUresult cuInit(unsigned flags) {
    LOCK;
    logf("cuInit(flags=%u)", flags);
    Driver& d = drv();
    if (!d.initialised) {
        const char* n = setting("QWEN_SCOPE_EMU_DEVICES");
        const int count = n ? atoi(n) : 1;
        if (count < 0 || count > 16) die("QWEN_SCOPE_EMU_DEVICES=%s: expected 0 to 16", n);
        const Card c = load_card();
        d.cards.assign(count, c);
        d.primary.assign(count, nullptr);
        d.used.assign(count, 0);
        const char* g = setting("QWEN_SCOPE_EMU_GUARD");
        if (g && strcmp(g, "after") && strcmp(g, "before"))
            die("QWEN_SCOPE_EMU_GUARD=%s: expected after (the default) or before", g);
        d.guard_before = g && !strcmp(g, "before");
        describe_address = describe;
        install_fault_handler();
        d.initialised = true;
    }
    return CUDA_SUCCESS;
}

API CUresult cuDriverGetVersion(int* v) {
    LOCK;
    logf("cuDriverGetVersion");
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = load_card().driver;  // answered before cuInit too, as the real driver does
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetCount(int* n) {
    LOCK;
    logf("cuDeviceGetCount");
    if (!drv().initialised) return CUDA_ERROR_NOT_INITIALIZED;
    *n = (int)drv().cards.size();
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
    LOCK;
    logf("cuDeviceGet(%d)", ordinal);
    if (!drv().initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= (int)drv().cards.size()) return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

static bool valid_device(CUdevice d) { return d >= 0 && d < (int)drv().cards.size(); }

API CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    LOCK;
    logf("cuDeviceGetName(%d)", dev);
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    if (len > 0) snprintf(name, len, "%s", drv().cards[dev].name.c_str());
    return CUDA_SUCCESS;
}

API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
    LOCK;
    logf("cuDeviceTotalMem_v2(%d)", dev);
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = drv().cards[dev].memory;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice dev) {
    LOCK;
    logf("cuDeviceGetUuid_v2(%d)", dev);
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    memset(uuid, 0, 16);
    uuid[15] = (unsigned char)dev;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice dev) {
    return cuDeviceGetUuid_v2(uuid, dev);
}

API CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice dev) {
    LOCK;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    const Card& c = drv().cards[dev];
    int r;
    switch (attr) {
        case 1: r = 1024; break;                      // MAX_THREADS_PER_BLOCK
        case 2: case 3: r = 1024; break;              // MAX_BLOCK_DIM_X, _Y
        case 4: r = 64; break;                        // MAX_BLOCK_DIM_Z
        case 5: r = 2147483647; break;                // MAX_GRID_DIM_X
        case 6: case 7: r = 65535; break;             // MAX_GRID_DIM_Y, _Z
        case 8: r = c.smem_block; break;              // MAX_SHARED_MEMORY_PER_BLOCK
        case 9: r = 65536; break;                     // TOTAL_CONSTANT_MEMORY
        case 10: r = 32; break;                       // WARP_SIZE
        case 12: case 82: r = 65536; break;           // MAX_REGISTERS_PER_BLOCK / _PER_SM
        case 16: r = c.sms; break;                    // MULTIPROCESSOR_COUNT
        case 39: r = c.major >= 8 && c.minor == 0 ? 2048 : c.major == 7 && c.minor == 5 ? 1024 : 2048;
            break;                                     // MAX_THREADS_PER_MULTIPROCESSOR
        case 41: r = 1; break;                        // UNIFIED_ADDRESSING
        case 75: r = c.major; break;                  // COMPUTE_CAPABILITY_MAJOR
        case 76: r = c.minor; break;                  // COMPUTE_CAPABILITY_MINOR
        case 81: r = c.smem_sm; break;                // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 97: r = c.smem_optin; break;             // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 115: r = 1; break;                       // MEMORY_POOLS_SUPPORTED
        default: r = 0;
    }
    *v = r;
    logf("cuDeviceGetAttribute(attr=%d, dev=%d) = %d", attr, dev, r);
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice dev) {
    LOCK;
    logf("cuDevicePrimaryCtxRetain(%d)", dev);
    if (!drv().initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    Ctx*& c = drv().primary[dev];
    if (!c) c = new Ctx{dev, 0};
    ++c->refs;
    *ctx = c;
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    LOCK;
    logf("cuDevicePrimaryCtxRelease_v2(%d)", dev);
    if (!valid_device(dev) || !drv().primary[dev]) return CUDA_ERROR_INVALID_DEVICE;
    --drv().primary[dev]->refs;  // the context stays: its memory is the process's anyway
    return CUDA_SUCCESS;
}

API CUresult cuCtxSetCurrent(void* ctx) {
    LOCK;
    logf("cuCtxSetCurrent(%p)", ctx);
    current = static_cast<Ctx*>(ctx);
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetCurrent(void** ctx) {
    LOCK;
    logf("cuCtxGetCurrent");
    *ctx = current;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetDevice(CUdevice* dev) {
    LOCK;
    logf("cuCtxGetDevice");
    if (!current) return CUDA_ERROR_INVALID_CONTEXT;
    *dev = current->device;
    return CUDA_SUCCESS;
}

API CUresult cuCtxSynchronize() {
    LOCK;
    logf("cuCtxSynchronize");
    return init_check();
}

static CUresult need_ctx(const char* call) {
    if (CUresult r = init_check()) return r;
    if (!current) {
        report("%s without a current context", call);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    return CUDA_SUCCESS;
}

// ---- streams and events: synchronous, so there is nothing to wait for ------------------------

API CUresult cuStreamCreate(void** s, unsigned flags) {
    LOCK;
    logf("cuStreamCreate(flags=%u)", flags);
    if (CUresult r = need_ctx("cuStreamCreate")) return r;
    *s = new char(0);
    return CUDA_SUCCESS;
}

API CUresult cuStreamCreateWithPriority(void** s, unsigned flags, int priority) {
    logf("cuStreamCreateWithPriority(priority=%d)", priority);
    return cuStreamCreate(s, flags);
}

API CUresult cuStreamDestroy_v2(void* s) {
    LOCK;
    logf("cuStreamDestroy_v2");
    delete static_cast<char*>(s);
    return CUDA_SUCCESS;
}

API CUresult cuStreamSynchronize(void*) {
    LOCK;
    logf("cuStreamSynchronize");
    return init_check();
}

API CUresult cuStreamQuery(void*) {
    LOCK;
    logf("cuStreamQuery");
    return init_check();
}

API CUresult cuStreamWaitEvent(void*, void*, unsigned) {
    LOCK;
    logf("cuStreamWaitEvent");
    return init_check();
}

API CUresult cuEventCreate(void** e, unsigned flags) {
    LOCK;
    logf("cuEventCreate(flags=%u)", flags);
    if (CUresult r = need_ctx("cuEventCreate")) return r;
    *e = new char(0);
    return CUDA_SUCCESS;
}

API CUresult cuEventRecord(void*, void*) {
    LOCK;
    logf("cuEventRecord");
    return init_check();
}

API CUresult cuEventSynchronize(void*) {
    LOCK;
    logf("cuEventSynchronize");
    return init_check();
}

API CUresult cuEventQuery(void*) {
    LOCK;
    logf("cuEventQuery");
    return init_check();
}

API CUresult cuEventDestroy_v2(void* e) {
    LOCK;
    logf("cuEventDestroy_v2");
    delete static_cast<char*>(e);
    return CUDA_SUCCESS;
}

API CUresult cuEventElapsedTime(float* ms, void*, void*) {
    LOCK;
    logf("cuEventElapsedTime");
    *ms = 0.0f;  // no timing: the emulator says nothing about speed
    return init_check();
}

API CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) {
    return cuEventElapsedTime(ms, a, b);
}

API CUresult cuLaunchHostFunc(void*, void (*fn)(void*), void* data) {
    LOCK;
    logf("cuLaunchHostFunc");
    if (CUresult r = init_check()) return r;
    fn(data);
    return CUDA_SUCCESS;
}

// ---- memory ----------------------------------------------------------------------------------

API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCK;
    logf("cuMemAlloc_v2(%zu)", bytes);
    if (CUresult r = need_ctx("cuMemAlloc_v2")) return r;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    return device_alloc(p, bytes, current->device, false);
}

API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) {
    LOCK;
    logf("cuMemAllocAsync(%zu)", bytes);
    if (CUresult r = need_ctx("cuMemAllocAsync")) return r;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    return device_alloc(p, bytes, current->device, false);
}

API CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    logf("cuMemFree_v2");
    if (!drv().initialised) return CUDA_ERROR_NOT_INITIALIZED;
    return device_free(p, "cuMemFree_v2");  // freeing works on a faulted context too
}

API CUresult cuMemFreeAsync(CUdeviceptr p, void*) {
    LOCK;
    logf("cuMemFreeAsync");
    if (!drv().initialised) return CUDA_ERROR_NOT_INITIALIZED;
    return device_free(p, "cuMemFreeAsync");
}

API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCK;
    logf("cuMemGetInfo_v2");
    if (CUresult r = need_ctx("cuMemGetInfo_v2")) return r;
    const int d = current->device;
    *total = drv().cards[d].memory;
    *free_bytes = *total - drv().used[d];
    return CUDA_SUCCESS;
}

API CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned flags) {
    LOCK;
    logf("cuMemHostAlloc(%zu, flags=%u)", bytes, flags);
    if (CUresult r = need_ctx("cuMemHostAlloc")) return r;
    CUdeviceptr d;
    if (CUresult r = device_alloc(&d, bytes ? bytes : 1, current->device, true)) return r;
    *p = (void*)(uintptr_t)d;
    return CUDA_SUCCESS;
}

API CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }

API CUresult cuMemFreeHost(void* p) {
    LOCK;
    logf("cuMemFreeHost");
    return device_free((CUdeviceptr)(uintptr_t)p, "cuMemFreeHost");
}

static CUresult copy(const char* call, void* dst, const void* src, size_t n, bool dst_dev,
                     bool src_dev) {
    LOCK;
    logf("%s(%zu bytes)", call, n);
    if (CUresult r = need_ctx(call)) return r;
    if (dst_dev)
        if (CUresult r = check_range((uintptr_t)dst, n, call, "destination")) return r;
    if (src_dev)
        if (CUresult r = check_range((uintptr_t)src, n, call, "source")) return r;
    if (n) memmove(dst, src, n);
    return CUDA_SUCCESS;
}

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    return copy("cuMemcpyHtoD_v2", (void*)(uintptr_t)dst, src, n, true, false);
}
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void*) {
    return copy("cuMemcpyHtoDAsync_v2", (void*)(uintptr_t)dst, src, n, true, false);
}
API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    return copy("cuMemcpyDtoH_v2", dst, (const void*)(uintptr_t)src, n, false, true);
}
API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void*) {
    return copy("cuMemcpyDtoHAsync_v2", dst, (const void*)(uintptr_t)src, n, false, true);
}
API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return copy("cuMemcpyDtoD_v2", (void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n, true,
                true);
}
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void*) {
    return copy("cuMemcpyDtoDAsync_v2", (void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n,
                true, true);
}

static CUresult memset8(const char* call, CUdeviceptr dst, unsigned char v, size_t n) {
    LOCK;
    logf("%s(%zu bytes)", call, n);
    if (CUresult r = need_ctx(call)) return r;
    if (CUresult r = check_range((uintptr_t)dst, n, call, "destination")) return r;
    memset((void*)(uintptr_t)dst, v, n);
    return CUDA_SUCCESS;
}

API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    return memset8("cuMemsetD8_v2", dst, v, n);
}
API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void*) {
    return memset8("cuMemsetD8Async", dst, v, n);
}

// ---- modules and kernels ---------------------------------------------------------------------

API CUresult cuModuleLoadData(void** module, const void* image) {
    LOCK;
    logf("cuModuleLoadData");
    if (CUresult r = need_ctx("cuModuleLoadData")) return r;
    std::vector<FatbinImage> imgs;
    std::string err;
    if (!parse_fatbin(image, imgs, err)) {
        report("cuModuleLoadData: %s", err.c_str());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    const Card& c = drv().cards[current->device];
    const unsigned sm = c.major * 10 + c.minor;
    // SASS runs on the same major version with a minor not above the card's; otherwise
    // the newest PTX not above the card is JIT-compiled, if the driver knows its ISA.
    const FatbinImage* sass = nullptr;
    const FatbinImage* ptx = nullptr;
    std::string have;
    for (const FatbinImage& i : imgs) {
        have += (have.empty() ? "" : " ") + std::string(i.ptx ? "compute_" : "sm_") +
                std::to_string(i.arch);
        if (!i.ptx && i.arch / 10 == (unsigned)c.major && i.arch % 10 <= (unsigned)c.minor &&
            (!sass || i.arch > sass->arch))
            sass = &i;
        if (i.ptx && i.arch <= sm && (!ptx || i.arch > ptx->arch)) ptx = &i;
    }
    if (sass && sass->elf_abi >= 8 && c.driver < 13000) {
        // CUDA 13 writes cubins of ELF ABI 8 and needs an R580 (CUDA 13.0) driver. What an
        // older driver answers is not measured here: it is modelled as an invalid image.
        report("cuModuleLoadData: the sm_%u SASS is a CUDA 13 cubin (ELF ABI %u), which driver "
               "%d.%d predates", sass->arch, sass->elf_abi, c.driver / 1000,
               c.driver % 1000 / 10);
        return CUDA_ERROR_INVALID_IMAGE;
    }
    if (sass) {
        logf("cuModuleLoadData: SASS sm_%u (ELF ABI %u) for sm_%u", sass->arch, sass->elf_abi, sm);
    } else if (ptx) {
        const unsigned isa = max_ptx_isa(c.driver);
        if (ptx->ptx_isa > isa) {
            report("cuModuleLoadData: no SASS for sm_%u in the fatbin (%s), and its PTX "
                   "(compute_%u, ISA %u.%u) is newer than driver %d.%d can JIT (ISA %u.%u)",
                   sm, have.c_str(), ptx->arch, ptx->ptx_isa / 10, ptx->ptx_isa % 10,
                   c.driver / 1000, c.driver % 1000 / 10, isa / 10, isa % 10);
            return CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
        }
        logf("cuModuleLoadData: JIT of compute_%u PTX for sm_%u", ptx->arch, sm);
    } else {
        report("cuModuleLoadData: the fatbin has no code for sm_%u (it holds %s)", sm,
               have.c_str());
        return CUDA_ERROR_NO_BINARY_FOR_GPU;
    }
    const std::string stale = stale_kernels();
    if (!stale.empty()) {
        report("cuModuleLoadData: %s", stale.c_str());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *module = new Module{current->device};
    return CUDA_SUCCESS;
}

API CUresult cuModuleUnload(void* m) {
    LOCK;
    logf("cuModuleUnload");
    delete static_cast<Module*>(m);
    return CUDA_SUCCESS;
}

API CUresult cuModuleGetFunction(void** fn, void* module, const char* name) {
    LOCK;
    logf("cuModuleGetFunction(%s)", name);
    if (CUresult r = init_check()) return r;
    if (!module) return CUDA_ERROR_INVALID_HANDLE;
    for (size_t i = 0; i < kKernelCount; ++i) {
        if (!strcmp(kKernels[i].name, name)) {
            *fn = new Function{&kKernels[i], 48 * 1024};
            return CUDA_SUCCESS;
        }
    }
    report("cuModuleGetFunction: no kernel named %s in %s", name, kKernelsDir);
    return CUDA_ERROR_NOT_FOUND;
}

API CUresult cuFuncSetAttribute(void* fn, int attr, int value) {
    LOCK;
    logf("cuFuncSetAttribute(%s, attr=%d, %d)", fn ? static_cast<Function*>(fn)->k->name : "?",
         attr, value);
    if (!fn) return CUDA_ERROR_INVALID_HANDLE;
    if (CUresult r = need_ctx("cuFuncSetAttribute")) return r;
    if (attr == 8) {  // MAX_DYNAMIC_SHARED_SIZE_BYTES
        const int optin = drv().cards[current->device].smem_optin;
        if (value < 0 || value > optin) {
            report("cuFuncSetAttribute(%s): %d bytes of dynamic shared memory, the card allows "
                   "%d", static_cast<Function*>(fn)->k->name, value, optin);
            return CUDA_ERROR_INVALID_VALUE;
        }
        static_cast<Function*>(fn)->max_dynamic_smem = value;
    }
    return CUDA_SUCCESS;
}

API CUresult cuFuncGetAttribute(int* v, int attr, void* fn) {
    LOCK;
    logf("cuFuncGetAttribute(attr=%d)", attr);
    if (!fn) return CUDA_ERROR_INVALID_HANDLE;
    const Function* f = static_cast<Function*>(fn);
    switch (attr) {
        case 0: *v = (int)f->k->max_threads; break;  // MAX_THREADS_PER_BLOCK
        case 8: *v = f->max_dynamic_smem; break;
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}

API CUresult cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned smem, void* stream,
                            void** params, void** extra) {
    LOCK;
    (void)stream;
    Function* f = static_cast<Function*>(fn);
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    const char* name = f->k->name;
    logf("cuLaunchKernel(%s, grid (%u,%u,%u), block (%u,%u,%u), smem %u)", name, gx, gy, gz, bx,
         by, bz, smem);
    if (CUresult r = need_ctx("cuLaunchKernel")) return r;
    const Card& c = drv().cards[current->device];
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    const char* bad = nullptr;
    char why[160];
    if (extra) {
        bad = "kernel arguments through `extra` are not emulated";
    } else if (!params) {
        bad = "no kernel parameters";
    } else if (!gx || !gy || !gz || !bx || !by || !bz) {
        bad = "a zero grid or block dimension";
    } else if (gx > 2147483647u || gy > 65535 || gz > 65535) {
        bad = "grid dimensions above (2^31-1, 65535, 65535)";
    } else if (bx > 1024 || by > 1024 || bz > 64 || threads > 1024) {
        bad = "more than 1024 threads per block, or a block dimension above (1024, 1024, 64)";
    } else if (threads > f->k->max_threads) {
        snprintf(why, sizeof why, "%llu threads per block, above the kernel's "
                 "__launch_bounds__(%u)", threads, f->k->max_threads);
        bad = why;
    } else if (smem > (unsigned)f->max_dynamic_smem) {
        snprintf(why, sizeof why, "%u bytes of dynamic shared memory; the function allows %d "
                 "(cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES raises it up to %d)", smem,
                 f->max_dynamic_smem, c.smem_optin);
        bad = why;
    }
    if (bad) {
        report("cuLaunchKernel(%s): %s", name, bad);
        return CUDA_ERROR_INVALID_VALUE;
    }
    const Launch l{name, f->k->fn, f->k->invoke, {gx, gy, gz}, {bx, by, bz}, smem, params};
    const LaunchResult res = run(l);
    if (res.ok && res.static_smem + smem > (size_t)std::max(c.smem_optin, c.smem_block)) {
        report("cuLaunchKernel(%s): %zu bytes of static plus %u of dynamic shared memory "
               "exceed the card's %d per block", name, res.static_smem, smem, c.smem_optin);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!res.ok) {
        report("%s", res.message.c_str());
        drv().sticky = res.illegal_address ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_ERROR_LAUNCH_FAILED;
        return drv().sticky;
    }
    return CUDA_SUCCESS;
}

// ---- errors ----------------------------------------------------------------------------------

static const char* error_name(CUresult r) {
    switch (r) {
        case CUDA_SUCCESS: return "CUDA_SUCCESS";
        case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
        case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
        case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
        case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
        case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
        case CUDA_ERROR_NO_BINARY_FOR_GPU: return "CUDA_ERROR_NO_BINARY_FOR_GPU";
        case CUDA_ERROR_UNSUPPORTED_PTX_VERSION: return "CUDA_ERROR_UNSUPPORTED_PTX_VERSION";
        case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
        case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
        case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        default: return nullptr;
    }
}

API CUresult cuGetErrorName(CUresult r, const char** s) {
    *s = error_name(r);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuGetErrorString(CUresult r, const char** s) {
    *s = error_name(r);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// For the emulated cuBLAS (cublas.cpp, another library): bounds checks and the driver lock.
API int qs_emu_check_range(const void* p, size_t bytes, const char* call, const char* what) {
    LOCK;
    return check_range((uintptr_t)p, bytes, call, what) == CUDA_SUCCESS;
}

API void qs_emu_log(const char* msg) { logf("%s", msg); }

API int qs_emu_sticky_error() {
    LOCK;
    return drv().sticky;
}
