// The block executor (see exec.h). Every CUDA thread of a block is a fiber on one worker
// thread: it runs until it reaches __syncthreads or a warp shuffle, or ends. A block barrier
// opens when every live thread of the block waits at it; a shuffle completes when all 32
// lanes of the warp have put their value in. Threads start lazily: one fiber runs thread
// after thread until one of them waits, so kernels without barriers cost one fiber per
// block. A thread that exits while its warp waits in a shuffle, or threads that wait at
// different barriers, fail the launch (the GPU would hang or read garbage).
#include "exec.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#error "the CUDA emulator's fibers are written for x86-64"
#endif

namespace qs_emu {

thread_local LaneView* cur_lane __attribute__((tls_model("initial-exec"))) = nullptr;
thread_local BlockView* cur_block __attribute__((tls_model("initial-exec"))) = nullptr;
std::string (*describe_address)(uintptr_t) = nullptr;

namespace {

// ---- fibers: a stack and a saved stack pointer ----------------------------------------------

extern "C" void qs_emu_switch(void** save_sp, void* load_sp);
extern "C" void qs_emu_fiber_entry();
// Saves the callee-saved registers on the current stack, stores its pointer in *save_sp,
// switches to load_sp and restores the registers saved there. A new fiber's stack is laid
// out so that the first switch "returns" into qs_emu_fiber_entry with the fiber in r12.
asm(R"(
    .text
    .globl qs_emu_switch
    .hidden qs_emu_switch
    .type qs_emu_switch,@function
qs_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size qs_emu_switch,.-qs_emu_switch

    .globl qs_emu_fiber_entry
    .hidden qs_emu_fiber_entry
    .type qs_emu_fiber_entry,@function
qs_emu_fiber_entry:
    movq %r12, %rdi
    call qs_emu_fiber_main
    ud2
    .size qs_emu_fiber_entry,.-qs_emu_fiber_entry
)");

constexpr size_t kStack = 256 * 1024;
constexpr size_t kPage = 4096;
constexpr size_t kStaticShared = 48 * 1024;  // CUDA's limit for static shared memory
constexpr size_t kDynamicSharedMax = 256 * 1024;

void* map_guarded(size_t bytes, bool guard_below) {
    const size_t len = bytes + kPage;
    char* p = static_cast<char*>(
        mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
             -1, 0));
    if (p == MAP_FAILED) {
        perror("cuda-emulator: mmap");
        abort();
    }
    if (guard_below) {
        mprotect(p, kPage, PROT_NONE);
        return p + kPage;
    }
    mprotect(p + bytes, kPage, PROT_NONE);
    return p;
}

struct Fiber {
    char* stack;  // lowest usable byte; a guard page lies below
    void* sp;
    void reset() {
        uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + kStack) & ~uintptr_t(15);
        void** s = reinterpret_cast<void**>(top - 56);
        s[0] = s[1] = s[2] = nullptr;                  // r15 r14 r13
        s[3] = this;                                   // r12
        s[4] = s[5] = nullptr;                         // rbx rbp
        s[6] = reinterpret_cast<void*>(&qs_emu_fiber_entry);  // return address
        sp = s;
    }
};

enum State : uint8_t { UNSTARTED, RUNNING, AT_WARP, AT_BLOCK, DONE };

struct Lane : LaneView {
    uint32_t index, lane, warp;
    uint32_t shuffles;  // how many this lane has done (double-buffered slots)
    Fiber* fiber;
    State state;
};

struct Warp {
    uint32_t size, live, arrived;
};

struct Abort {};

// One per OS thread that runs blocks.
struct Worker {
    // the launch
    const Launch* launch = nullptr;
    BlockView view{};
    uint32_t n = 0;  // threads per block
    std::vector<Lane> lanes;
    std::vector<Warp> warps;
    std::vector<uint64_t> slots;  // [warp][2][32]
    // scheduling
    uint32_t unstarted = 0, live = 0, block_arrived = 0;
    std::vector<uint32_t> ready;
    size_t ready_head = 0;
    std::vector<Fiber*> fibers, idle;
    Fiber* running = nullptr;
    void* sched_sp = nullptr;
    bool aborting = false;
    std::string error;
    // shared memory
    char* dyn_end = nullptr;  // a guard page follows
    char* dyn = nullptr;
    char* stat = nullptr;  // static arena, guard page follows
    size_t stat_used = 0, stat_max = 0;
    std::vector<void*> stat_ptr;
    // faults
    sigjmp_buf fault_jmp;
    volatile bool in_kernel = false;
    uintptr_t fault_addr = 0;
    bool fault_write = false;
    char* altstack = nullptr;

    Worker() {
        dyn_end = static_cast<char*>(map_guarded(kDynamicSharedMax, false)) + kDynamicSharedMax;
        stat = static_cast<char*>(map_guarded(kStaticShared, false));
        // A fault on an overflowed fiber stack needs a stack of its own for the handler.
        stack_t cur;
        if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
            altstack = static_cast<char*>(map_guarded(64 * 1024, true));
            stack_t ss{};
            ss.ss_sp = altstack;
            ss.ss_size = 64 * 1024;
            sigaltstack(&ss, nullptr);
        }
    }

    [[noreturn]] void fail(std::string msg) {
        error = std::move(msg);
        aborting = true;
        qs_emu_switch(&running->sp, sched_sp);
        __builtin_unreachable();
    }

    void park(Lane* l) {
        qs_emu_switch(&l->fiber->sp, sched_sp);
        // resumed by the scheduler, which has set cur_lane and running
    }

    void resume(Fiber* f, Lane* l) {
        if (l) {
            l->state = RUNNING;
            cur_lane = l;
        }
        running = f;
        qs_emu_switch(&sched_sp, f->sp);
    }

    Fiber* idle_fiber() {
        if (!idle.empty()) {
            Fiber* f = idle.back();
            idle.pop_back();
            return f;
        }
        Fiber* f = new Fiber;
        f->stack = static_cast<char*>(map_guarded(kStack, true));
        f->reset();
        fibers.push_back(f);
        return f;
    }

    // Runs threads until none is left to start, then waits as an idle fiber.
    [[noreturn]] void fiber_loop(Fiber* f) {
        for (;;) {
            while (unstarted < n) {
                Lane* l = &lanes[unstarted++];
                l->fiber = f;
                l->state = RUNNING;
                cur_lane = l;
                launch->invoke(launch->fn, launch->params);
                l = static_cast<Lane*>(cur_lane);
                l->state = DONE;
                --live;
                Warp& w = warps[l->warp];
                --w.live;
                if (w.arrived > 0 && w.arrived == w.live)
                    fail("thread " + std::to_string(l->index) + " (lane " +
                         std::to_string(l->lane) + " of warp " + std::to_string(l->warp) +
                         ") exited while the rest of its warp waits in a full-mask shuffle");
            }
            idle.push_back(f);
            qs_emu_switch(&f->sp, sched_sp);
        }
    }

    void release_warp(uint32_t wi) {
        Warp& w = warps[wi];
        if (w.live != w.size)
            fail("warp " + std::to_string(wi) + " does a full-mask shuffle with " +
                 std::to_string(w.size - w.live) + " of its lanes exited");
        const uint32_t first = wi * 32;
        const uint32_t count = lanes[first].shuffles;
        for (uint32_t i = first; i < first + w.size; ++i)
            if (lanes[i].shuffles != count)
                fail("lanes of warp " + std::to_string(wi) + " meet at different shuffles");
        // The released warp runs next, ahead of the warps already queued: a warp that runs
        // ahead to reuse shared memory before the others have read it (a missing trailing
        // __syncthreads) then overwrites what they read, as it can on a GPU.
        if (ready_head > 0) {
            ready.erase(ready.begin(), ready.begin() + ready_head);
            ready_head = 0;
        }
        ready.insert(ready.begin(), w.size, 0);
        for (uint32_t i = 0; i < w.size; ++i) ready[i] = first + i;
        w.arrived = 0;
    }

    uint64_t shuffle(uint64_t bits, unsigned mask, int src, int width, int mode) {
        Lane* l = static_cast<Lane*>(cur_lane);
        if (mask != 0xffffffffu) fail("only full-mask warp shuffles are emulated");
        if (width < 1 || width > 32 || (width & (width - 1)))
            fail("shuffle width " + std::to_string(width) + " is not a power of two <= 32");
        Warp& w = warps[l->warp];
        if (w.size != 32)
            fail("a full-mask shuffle in a partial warp (blockDim " + std::to_string(n) +
                 " is not a multiple of 32)");
        uint64_t* slot = &slots[(l->warp * 2 + (l->shuffles & 1)) * 32];
        ++l->shuffles;
        slot[l->lane] = bits;
        l->state = AT_WARP;
        if (++w.arrived == w.live) release_warp(l->warp);
        park(l);
        const int lane = (int)l->lane, base = lane & ~(width - 1);
        int s = lane;
        switch (mode) {
            case SHFL_IDX: s = base + (src & (width - 1)); break;
            case SHFL_XOR: s = lane ^ src; break;
            case SHFL_DOWN: s = lane + src; break;
            case SHFL_UP: s = lane - src; break;
        }
        if (s < base || s >= base + width) s = lane;  // outside the segment: own value
        return slot[s];
    }

    void syncthreads() {
        Lane* l = static_cast<Lane*>(cur_lane);
        l->state = AT_BLOCK;
        ++block_arrived;
        park(l);
    }

    void* dynamic_shared(size_t align) {
        (void)align;  // dyn is 16-aligned, and alignment above 16 is not asked for
        return dyn;
    }

    void* static_shared(size_t bytes, size_t align, int id) {
        if ((size_t)id >= stat_ptr.size()) stat_ptr.resize(id + 1, nullptr);
        if (!stat_ptr[id]) {
            size_t off = (stat_used + align - 1) & ~(align - 1);
            if (off + bytes > kStaticShared)
                fail("static shared memory above " + std::to_string(kStaticShared) + " bytes");
            stat_ptr[id] = stat + off;
            stat_used = off + bytes;
            if (stat_used > stat_max) stat_max = stat_used;
        }
        return stat_ptr[id];
    }

    void begin_launch(const Launch* l) {
        launch = l;
        view.bdim = l->block;
        view.gdim = l->grid;
        n = l->block.x * l->block.y * l->block.z;
        lanes.assign(n, Lane{});
        for (uint32_t i = 0; i < n; ++i) {
            Lane& ln = lanes[i];
            ln.tid = {i % l->block.x, (i / l->block.x) % l->block.y,
                      i / (l->block.x * l->block.y)};
            ln.index = i;
            ln.lane = i % 32;
            ln.warp = i / 32;
        }
        warps.assign((n + 31) / 32, Warp{});
        slots.assign(warps.size() * 64, 0);
        dyn = dyn_end - ((l->dynamic_smem + 15) & ~size_t(15));
        stat_max = 0;
    }

    void abandon_fibers() {
        idle.clear();
        for (Fiber* f : fibers) {
            f->reset();
            idle.push_back(f);
        }
    }

    // Runs block `b` (linear index); false with `error` set when it fails.
    bool run_block(uint64_t b) {
        const Dim g = launch->grid;
        view.bid = {(unsigned)(b % g.x), (unsigned)((b / g.x) % g.y),
                    (unsigned)(b / ((uint64_t)g.x * g.y))};
        cur_block = &view;
        for (Lane& l : lanes) {
            l.state = UNSTARTED;
            l.shuffles = 0;
            l.fiber = nullptr;
        }
        for (uint32_t i = 0; i < warps.size(); ++i) {
            const uint32_t size = std::min<uint32_t>(32, n - 32 * i);
            warps[i] = {size, size, 0};
        }
        unstarted = 0;
        live = n;
        block_arrived = 0;
        ready.clear();
        ready_head = 0;
        aborting = false;
        // Shared memory starts as garbage on a GPU: here as 0xff bytes (NaN, or ~0).
        memset(dyn, 0xff, dyn_end - dyn);
        memset(stat, 0xff, stat_used);
        stat_used = 0;
        std::fill(stat_ptr.begin(), stat_ptr.end(), nullptr);

        if (sigsetjmp(fault_jmp, 1)) {
            in_kernel = false;
            abandon_fibers();
            return false;  // error set by the caller of run_block
        }
        in_kernel = true;
        for (;;) {
            if (aborting) break;
            if (ready_head < ready.size()) {
                Lane* l = &lanes[ready[ready_head++]];
                if (ready_head == ready.size()) ready.clear(), ready_head = 0;
                resume(l->fiber, l);
                continue;
            }
            if (unstarted < n) {
                resume(idle_fiber(), nullptr);
                continue;
            }
            if (live == 0) break;
            if (block_arrived == live) {
                for (uint32_t i = 0; i < n; ++i)
                    if (lanes[i].state == AT_BLOCK) ready.push_back(i);
                block_arrived = 0;
                continue;
            }
            uint32_t at_warp = 0;
            for (const Lane& l : lanes) at_warp += l.state == AT_WARP;
            error = "threads of one block wait at different barriers: " +
                    std::to_string(block_arrived) + " at __syncthreads, " +
                    std::to_string(at_warp) + " in warp shuffles";
            aborting = true;
        }
        in_kernel = false;
        if (aborting) {
            abandon_fibers();
            return false;
        }
        return true;
    }
};

thread_local Worker* tls_worker __attribute__((tls_model("initial-exec"))) = nullptr;

Worker& this_worker() {
    if (!tls_worker) tls_worker = new Worker;  // lives as long as its thread (never freed)
    return *tls_worker;
}

std::string where(const Worker& w) {
    const BlockView& v = w.view;
    char buf[160];
    snprintf(buf, sizeof buf, "block (%u,%u,%u) of grid (%u,%u,%u), blockDim (%u,%u,%u)",
             v.bid.x, v.bid.y, v.bid.z, v.gdim.x, v.gdim.y, v.gdim.z, v.bdim.x, v.bdim.y,
             v.bdim.z);
    return buf;
}

std::string fault_message(const Worker& w) {
    char buf[96];
    snprintf(buf, sizeof buf, "out-of-bounds %s at 0x%lx", w.fault_write ? "write" : "read",
             (unsigned long)w.fault_addr);
    std::string m = std::string(buf) + " in kernel " + w.launch->kernel + ", " + where(w);
    const Lane* l = static_cast<const Lane*>(cur_lane);
    if (l) m += ", thread " + std::to_string(l->index);
    if (describe_address) m += ": " + describe_address(w.fault_addr);
    return m;
}

// ---- the pool of worker threads -----------------------------------------------------------------

struct Pool {
    std::mutex mu;
    std::condition_variable start, done;
    const Launch* job = nullptr;
    uint64_t generation = 0;
    uint32_t active = 0;
    std::atomic<uint64_t> next{0};
    uint64_t total = 0;
    std::atomic<bool> failed{false};
    LaunchResult result;
    std::vector<std::thread> threads;

    void work(Worker& w) {
        w.begin_launch(job);
        uint64_t b;
        while (!failed.load(std::memory_order_relaxed) &&
               (b = next.fetch_add(1, std::memory_order_relaxed)) < total) {
            if (!w.run_block(b)) {
                std::lock_guard<std::mutex> g(mu);
                if (!failed.exchange(true)) {
                    result.ok = false;
                    result.illegal_address = w.fault_addr != 0;
                    result.message = w.fault_addr
                                         ? fault_message(w)
                                         : "kernel " + std::string(job->kernel) + ", " +
                                               where(w) + ": " + w.error;
                }
                w.fault_addr = 0;
            }
        }
        std::lock_guard<std::mutex> g(mu);
        if (w.stat_max > result.static_smem) result.static_smem = w.stat_max;
    }

    void thread_main() {
        Worker& w = this_worker();
        uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> g(mu);
                start.wait(g, [&] { return generation != seen; });
                seen = generation;
            }
            work(w);
            std::lock_guard<std::mutex> g(mu);
            if (--active == 0) done.notify_all();
        }
    }

    void begin(const Launch& l) {
        job = &l;
        total = (uint64_t)l.grid.x * l.grid.y * l.grid.z;
        next = 0;
        failed = false;
        result = LaunchResult{};
    }

    // A one-block launch (or one worker): no hand-over to other threads. The driver
    // serialises launches, so the pool's state is free.
    LaunchResult run_inline(const Launch& l) {
        begin(l);
        work(this_worker());
        return result;
    }

    LaunchResult run(const Launch& l, uint32_t helpers) {
        while (threads.size() < helpers) threads.emplace_back([this] { thread_main(); });
        {
            std::lock_guard<std::mutex> g(mu);
            begin(l);
            active = (uint32_t)threads.size();
            ++generation;
        }
        start.notify_all();
        work(this_worker());
        std::unique_lock<std::mutex> g(mu);
        done.wait(g, [&] { return active == 0; });
        return result;
    }
};

uint32_t worker_threads() {
    static const uint32_t n = [] {
        const char* s = getenv("QWEN_SCOPE_EMU_THREADS");
        long v = s ? atol(s) : (long)std::thread::hardware_concurrency();
        return (uint32_t)(v < 1 ? 1 : v > 64 ? 64 : v);
    }();
    return n;
}

struct sigaction old_segv, old_bus;

void on_fault(int sig, siginfo_t* si, void* uc) {
    Worker* w = tls_worker;
    if (w && w->in_kernel) {
        w->fault_addr = reinterpret_cast<uintptr_t>(si->si_addr);
        if (!w->fault_addr) w->fault_addr = 1;
        w->fault_write = (static_cast<ucontext_t*>(uc)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
        w->in_kernel = false;
        siglongjmp(w->fault_jmp, 1);
    }
    // Not a kernel's fault: give it to whoever handled it before us.
    const struct sigaction& old = sig == SIGBUS ? old_bus : old_segv;
    if (old.sa_flags & SA_SIGINFO) {
        old.sa_sigaction(sig, si, uc);
    } else if (old.sa_handler != SIG_IGN && old.sa_handler != SIG_DFL) {
        old.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);  // the fault repeats on return and ends the process
    }
}

}  // namespace

extern "C" __attribute__((visibility("hidden"))) void qs_emu_fiber_main(Fiber* f) {
    tls_worker->fiber_loop(f);
}

void syncthreads() { tls_worker->syncthreads(); }

uint64_t shuffle(uint64_t bits, unsigned mask, int src_lane, int width, int mode) {
    return tls_worker->shuffle(bits, mask, src_lane, width, mode);
}

void* dynamic_shared(size_t align) { return tls_worker->dynamic_shared(align); }

void* static_shared(size_t bytes, size_t align, int id) {
    return tls_worker->static_shared(bytes, align, id);
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &old_segv);
        sigaction(SIGBUS, &sa, &old_bus);
    });
}

LaunchResult run(const Launch& l) {
    static Pool* pool = new Pool;  // never destroyed: its threads live until exit
    const uint64_t blocks = (uint64_t)l.grid.x * l.grid.y * l.grid.z;
    const uint32_t helpers = (uint32_t)std::min<uint64_t>(worker_threads(), blocks) - 1;
    if (helpers == 0) return pool->run_inline(l);
    return pool->run(l, helpers);
}

}  // namespace qs_emu
