#!/usr/bin/env bash
# Builds the emulated CUDA driver and cuBLAS (emu/, see docs/CUDA.md "Emulated CUDA") into
# target/cuda-emulator/ and prints, on its last line, the folder to put on LD_LIBRARY_PATH:
#
#   export LD_LIBRARY_PATH="$(tools/cuda_emulator.sh | tail -1)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
#
# Then any qwen-scope binary (and the Python package) runs its CUDA path on the CPU: cudarc
# loads libcuda.so and libcublas.so by name, and these serve its calls with the real
# kernels/*.cu compiled for the host. Needs g++ (Debian's build-essential) and python3.
# Rebuilds only when emu/ or kernels/ changed; CXX overrides the compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/target/cuda-emulator"
cxx="${CXX:-g++}"
command -v "$cxx" >/dev/null || { echo "cuda_emulator: $cxx not found (apt-get install g++)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "cuda_emulator: python3 not found" >&2; exit 1; }

stamp="$( (cat emu/*.* emu/include/* kernels/* tools/cuda_emulator.sh; "$cxx" --version) | sha256sum | cut -c1-16)"
if [[ -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" && -f "$out/libcublas.so" ]]; then
  echo "cuda_emulator: up to date" >&2
  echo "$out"
  exit 0
fi
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
python3 emu/gen_kernels.py kernels emu "$out.tmp/gen" "$cxx" >&2

# -O2 -march=native: the emulator runs where it is built. -fno-strict-aliasing because
# kernels reinterpret device memory freely, as CUDA code does.
flags=(-std=c++17 -O2 -march=native -g -fPIC -fvisibility=hidden -fno-strict-aliasing
       -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas)
"$cxx" "${flags[@]}" -Iemu -Iemu/include -I"$out.tmp/gen/src" -include emu/kernel.h \
  -shared -Wl,-soname,libcuda.so.1 -o "$out.tmp/libcuda.so" \
  emu/driver.cpp emu/exec.cpp emu/fatbin.cpp "$out.tmp/gen/kernels.cpp" -lpthread
"$cxx" "${flags[@]}" -O3 -Iemu -shared -Wl,-soname,libcublas.so -o "$out.tmp/libcublas.so" \
  emu/cublas.cpp -L"$out.tmp" -l:libcuda.so -Wl,-rpath,'$ORIGIN' -lpthread
# The emulator's own checks (tools/test_cuda_emulated.sh runs them on the build's fatbin).
"$cxx" -std=c++17 -O2 -Iemu -o "$out.tmp/selftest" emu/selftest.cpp -L"$out.tmp" \
  -l:libcuda.so -l:libcublas.so -Wl,-rpath,'$ORIGIN'
# The versioned names cudarc also tries, so the emulator answers whichever it asks for.
for n in libcuda.so.1 ; do ln -s libcuda.so "$out.tmp/$n"; done
for n in libcublas.so.12 libcublas.so.13; do ln -s libcublas.so "$out.tmp/$n"; done
echo "$stamp" > "$out.tmp/stamp"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "cuda_emulator: built $out" >&2
echo "$out"
