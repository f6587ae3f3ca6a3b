// The block executor: runs every block of a launch on the CPU, each block's threads as
// fibers that meet at __syncthreads and at warp shuffles, blocks spread over worker threads.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>

#include "kernel.h"

namespace qs_emu {

// Calls the kernel for the current thread: unpacks `params` by the kernel's signature.
using Invoke = void (*)(void* fn, void** params);

struct Launch {
    const char* kernel;
    void* fn;
    Invoke invoke;
    Dim grid, block;
    size_t dynamic_smem;
    void** params;
};

struct LaunchResult {
    bool ok = true;
    bool illegal_address = false;  // a memory fault (sticky on a GPU); else a launch failure
    std::string message;
    size_t static_smem = 0;  // bytes of static shared memory one block used
};

// Runs all blocks; returns when they are done or the first one failed.
LaunchResult run(const Launch& l);

// Installs the fault handler (once); `describe` names an address for fault reports.
void install_fault_handler();
extern std::string (*describe_address)(uintptr_t addr);

}  // namespace qs_emu
