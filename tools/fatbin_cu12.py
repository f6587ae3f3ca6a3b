#!/usr/bin/env python3
"""Compiles kernels/*.cu into a fatbin for older drivers and GPUs, from PyPI wheels alone.

CUDA 13 cannot target sm_60/sm_70 and its code needs an R580 driver; Kaggle's P100 (sm_60)
and Colab's T4 (sm_75, driver R550 = CUDA 12.4) need CUDA 12 code. PyPI has no CUDA 12
nvcc, but it has NVRTC, which compiles straight to SASS, and nvFatbin, which packs the
cubins; both are used through ctypes from the wheels (tools/build_cu12.sh installs them):
  nvidia-cuda-nvrtc-cu12, nvidia-cuda-runtime-cu12 (cuda_fp16.h, cuda_bf16.h), nvidia-nvfatbin-cu12
all 12.4.127: CUDA 12.4 is R550's own version, so its PTX (ISA 8.4) is JIT-able there too.

The kernels are compiled as build.rs compiles them with nvcc: one translation unit that
#includes every kernels/*.cu in name order, C++17, IEEE division and square root, denormals
kept, FMA contraction on (nvcc's defaults; NVRTC optimises fully by default). Two things
NVRTC lacks are supplied in memory, leaving kernels/ untouched: <stdint.h>, and INFINITY
(nvcc takes it from the host's <math.h>).

Usage: fatbin_cu12.py --kernels kernels --archs 60,75 --out FILE [--ptx auto|none|NN]
"""

import argparse
import concurrent.futures
import ctypes
import os
import re
import struct
import sys
import time

STDINT_H = """#pragma once
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef long intptr_t;
typedef unsigned long uintptr_t;
"""

COMPAT_H = """#pragma once
#ifndef INFINITY
#define INFINITY (__int_as_float(0x7f800000))
#endif
"""


def wheel_file(rel):
    """A file of the nvidia-* wheels on sys.path (site-packages/nvidia/REL)."""
    for p in sys.path:
        f = os.path.join(p, "nvidia", rel)
        if p and os.path.exists(f):
            return f
    sys.exit(f"fatbin_cu12: nvidia/{rel} not found on {sys.executable}'s path: install "
             "nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 nvidia-nvfatbin-cu12 (12.4.127)")


class Nvrtc:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "version")
        self.version = (major.value, minor.value)

    def check(self, rc, what, log=""):
        if rc:
            sys.exit(f"fatbin_cu12: nvrtc {what}: {self.lib.nvrtcGetErrorString(rc).decode()}"
                     + (f"\n{log}" if log else ""))

    def compile(self, source, options, headers, cubin):
        prog = ctypes.c_void_p()
        n = len(headers)
        bodies = (ctypes.c_char_p * n)(*[v.encode() for v in headers.values()])
        names = (ctypes.c_char_p * n)(*[k.encode() for k in headers])
        self.check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(),
                                               b"qwen_scope_kernels.cu", n, bodies, names),
                   "create")
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            rc = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(prog, log)
            self.check(rc, "compile", log.value.decode(errors="replace"))
            get_size, get = ((self.lib.nvrtcGetCUBINSize, self.lib.nvrtcGetCUBIN) if cubin
                             else (self.lib.nvrtcGetPTXSize, self.lib.nvrtcGetPTX))
            self.check(get_size(prog, ctypes.byref(size)), "output size")
            out = ctypes.create_string_buffer(size.value)
            self.check(get(prog, out), "output")
            return out.raw if cubin else out.raw.rstrip(b"\0")
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def elf_sm(cubin):
    """The architecture a CUDA cubin is for: e_flags bits 0-7 (ELF ABI <= 7, CUDA 12)."""
    if cubin[:4] != b"\x7fELF":
        sys.exit("fatbin_cu12: NVRTC returned something that is not an ELF cubin")
    flags = struct.unpack_from("<I", cubin, 0x30)[0]
    return (flags >> 8) & 0xFF if cubin[8] >= 8 else flags & 0xFF


def fatbin(path, cubins, ptx):
    lib = ctypes.CDLL(path)
    lib.nvFatbinGetErrorString.restype = ctypes.c_char_p

    def check(rc, what):
        if rc:
            sys.exit(f"fatbin_cu12: nvFatbin {what}: {lib.nvFatbinGetErrorString(rc).decode()}")

    opts = (ctypes.c_char_p * 3)(b"-64", b"-host=linux", b"-compress=false")
    handle = ctypes.c_void_p()
    check(lib.nvFatbinCreate(ctypes.byref(handle), opts, ctypes.c_size_t(3)), "create")
    try:
        for arch, data in cubins:
            check(lib.nvFatbinAddCubin(handle, data, ctypes.c_size_t(len(data)),
                                       str(arch).encode(), f"sm_{arch}".encode()), f"sm_{arch}")
        if ptx:
            arch, data = ptx
            check(lib.nvFatbinAddPTX(handle, data, ctypes.c_size_t(len(data)),
                                     str(arch).encode(), f"compute_{arch}".encode(), b""),
                  f"compute_{arch}")
        size = ctypes.c_size_t()
        check(lib.nvFatbinSize(handle, ctypes.byref(size)), "size")
        buf = ctypes.create_string_buffer(size.value)
        check(lib.nvFatbinGet(handle, buf), "get")
        return buf.raw
    finally:
        lib.nvFatbinDestroy(ctypes.byref(handle))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", required=True)
    ap.add_argument("--archs", required=True, help="SASS targets, e.g. 60,75")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ptx", default="auto",
                    help="auto (compute_ of the newest arch, if its PTX ISA is <= 8.4), none, or NN")
    args = ap.parse_args()
    t0 = time.time()
    archs = sorted({int(a.strip().removeprefix("sm_").replace(".", ""))
                    for a in args.archs.split(",") if a.strip()})
    nvrtc = Nvrtc(wheel_file("cuda_nvrtc/lib/libnvrtc.so.12"))
    include = os.path.dirname(wheel_file("cuda_runtime/include/cuda_fp16.h"))
    kdir = os.path.abspath(args.kernels)
    sources = sorted(f for f in os.listdir(kdir) if f.endswith(".cu"))
    if not sources:
        sys.exit(f"fatbin_cu12: no .cu files in {kdir}")
    unity = "".join(f'#include "{os.path.join(kdir, s)}"\n' for s in sources)
    headers = {"stdint.h": STDINT_H, "qs_nvrtc_compat.h": COMPAT_H}
    common = ["-std=c++17", f"-I{kdir}", f"-I{include}", "--pre-include=qs_nvrtc_compat.h",
              "--fmad=true", "--ftz=false", "--prec-div=true", "--prec-sqrt=true"]
    ptx_arch = {"auto": max(archs), "none": None}.get(args.ptx) or int(args.ptx)
    if args.ptx == "auto" and nvrtc.version > (12, 4):
        ptx_arch = None  # its PTX would be newer than an R550 driver can JIT

    def build(job):
        kind, arch = job
        t = time.time()
        out = nvrtc.compile(unity, [f"--gpu-architecture={kind}_{arch}"] + common, headers,
                            kind == "sm")
        print(f"  {kind}_{arch}: {len(out)} bytes, {time.time() - t:.1f} s", flush=True)
        return out

    jobs = [("sm", a) for a in archs] + ([("compute", ptx_arch)] if ptx_arch else [])
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as ex:
        outs = list(ex.map(build, jobs))
    cubins = list(zip(archs, outs[:len(archs)]))
    for arch, data in cubins:
        if elf_sm(data) != arch:
            sys.exit(f"fatbin_cu12: NVRTC made an sm_{elf_sm(data)} cubin for sm_{arch}")
    ptx = None
    if ptx_arch:
        isa = re.search(rb"^\s*\.version\s+(\d+)\.(\d+)", outs[-1], re.M)
        if not isa or (int(isa[1]), int(isa[2])) > (8, 4):
            sys.exit("fatbin_cu12: the PTX is newer than ISA 8.4 (use NVRTC 12.4, or --ptx none)")
        ptx = (ptx_arch, outs[-1])
    blob = fatbin(wheel_file("nvfatbin/lib/libnvfatbin.so.12"), cubins, ptx)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "wb") as f:
        f.write(blob)
    os.replace(args.out + ".tmp", args.out)
    print(f"NVRTC {nvrtc.version[0]}.{nvrtc.version[1]}: {args.out}, {len(blob)} bytes, SASS "
          f"{' '.join(f'sm_{a}' for a in archs)}, PTX "
          f"{f'compute_{ptx_arch}' if ptx else 'none'}, {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
