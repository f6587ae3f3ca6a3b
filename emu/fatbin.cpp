// The fatbin container as nvcc writes it (read off nvcc 13.0's output; see docs/CUDA.md):
//   header: u32 magic 0xBA55ED50, u16 version, u16 header size, u64 size of the entries;
//   entry:  u16 kind (1 = PTX, 2 = ELF), u16 version, u32 entry header size,
//           u32 padded payload size, ..., at byte 24 a u32 whose high and low halves are the
//           PTX ISA major and minor version (PTX entries), at byte 28 the u32 architecture
//           (75 = sm_75), at byte 40 flags (0x8000: payload compressed);
//           the payload follows the entry header.
#include "fatbin.h"

#include <string.h>

namespace qs_emu {

namespace {
template <typename T>
T read(const uint8_t* p) {
    T v;
    memcpy(&v, p, sizeof v);
    return v;
}
}  // namespace

bool parse_fatbin(const void* image, std::vector<FatbinImage>& out, std::string& error) {
    const uint8_t* p = static_cast<const uint8_t*>(image);
    if (!p || read<uint32_t>(p) != 0xBA55ED50u) {
        error = "not a fatbin (no 0xBA55ED50 magic); this emulator takes fatbins only";
        return false;
    }
    const uint16_t header = read<uint16_t>(p + 6);
    const uint64_t size = read<uint64_t>(p + 8);
    const uint8_t* e = p + header;
    const uint8_t* end = e + size;
    while (e + 48 <= end) {
        const uint16_t kind = read<uint16_t>(e);
        const uint32_t eh = read<uint32_t>(e + 4);
        const uint32_t padded = read<uint32_t>(e + 8);
        if (eh < 48 || e + eh + padded > end) {
            error = "fatbin entry runs past the container";
            return false;
        }
        if (kind == 1 || kind == 2) {
            const uint32_t isa = read<uint32_t>(e + 24);
            FatbinImage img;
            img.ptx = kind == 1;
            img.arch = read<uint32_t>(e + 28);
            img.ptx_isa = img.ptx ? (isa >> 16) * 10 + (isa & 0xffff) : 0;
            img.compressed = (read<uint32_t>(e + 40) & 0x8000u) != 0;
            img.payload = e + eh;
            img.size = padded;
            img.elf_abi = !img.ptx && !img.compressed && padded > 8 &&
                                  !memcmp(img.payload, "\x7f" "ELF", 4)
                              ? img.payload[8]
                              : 0;
            out.push_back(img);
        }
        e += eh + padded;
    }
    if (out.empty()) {
        error = "fatbin holds no PTX or SASS image";
        return false;
    }
    return true;
}

unsigned max_ptx_isa(int driver) {
    const int major = driver / 1000, minor = (driver % 1000) / 10;
    if (major >= 13) return 90 + minor;  // 13.0: PTX ISA 9.0
    if (major == 12) {
        // 12.0..12.5: 8.0..8.5; 12.6: 8.5; 12.8: 8.7; 12.9: 8.8
        static const unsigned isa[] = {80, 81, 82, 83, 84, 85, 85, 86, 87, 88};
        return isa[minor > 9 ? 9 : minor];
    }
    if (major == 11) return 70 + minor;  // 11.0: 7.0 .. 11.8: 7.8
    return 0;
}

}  // namespace qs_emu
