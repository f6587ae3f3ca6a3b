// Reads a CUDA fatbin container and picks the image a driver would run on a given card.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

namespace qs_emu {

struct FatbinImage {
    bool ptx;         // else SASS (an ELF cubin)
    unsigned arch;    // e.g. 75 for sm_75 / compute_75
    unsigned ptx_isa; // PTX only: ISA version as major * 10 + minor (e.g. 90 for 9.0)
    bool compressed;
    unsigned elf_abi;  // SASS only: the cubin's ELF ABI version (8 from CUDA 13 on, 7 before)
    const uint8_t* payload;
    size_t size;
};

// Parses `image` (a fatbin, as cuModuleLoadData receives it). False with `error` set when it
// is not one.
bool parse_fatbin(const void* image, std::vector<FatbinImage>& out, std::string& error);

// The highest PTX ISA version a driver of CUDA version `driver` (e.g. 12040) can JIT.
unsigned max_ptx_isa(int driver);

}  // namespace qs_emu
