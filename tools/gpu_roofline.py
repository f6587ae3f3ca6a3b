#!/usr/bin/env python3
"""The GPU's practical roofline with PyTorch: memory bandwidth and dense matrix rate, the
ceilings to hold qwen-scope's `bench` numbers against (decode is bandwidth-bound,
prefill matrix-bound). NOT a CI step: needs torch with a CUDA device.

    python tools/gpu_roofline.py --out FILE.json [--copy-gib 1] [--n 8192] [--reps 20]
    python tools/gpu_roofline.py --out FILE.json --cpu-smoke   # tiny sizes, on the CPU

Measures, each the median over --reps timed runs after --warmup untimed ones (CUDA
events on the GPU):
  bandwidth_copy_gbs   device-to-device copy of a --copy-gib tensor: bytes read +
                       written / time (GB = 1e9 bytes)
  bandwidth_read_gbs   a plain read: sum of a --copy-gib float16 tensor, bytes / time
  tflops_{f16,bf16,f32}  torch.matmul of two n x n matrices (--n, default 8192) in
                       float16, bfloat16 and float32 with TF32 off: 2 n^3 / time
Prints a table and writes the JSON {device, bandwidth_copy_gbs, bandwidth_read_gbs,
tflops_f16, tflops_bf16, tflops_f32} (plus the sizes and versions used). A dtype the GPU
cannot multiply is reported as null. Without torch or CUDA it exits with status 2 and a
message, unless --cpu-smoke (a check of this script's code paths, not a measurement).
Environment: none (CUDA_VISIBLE_DEVICES picks the GPU as usual).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

try:
    import torch
except ImportError:
    print("gpu_roofline.py: needs torch (with CUDA) in this Python; it is not a CI step",
          file=sys.stderr)
    sys.exit(2)

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


def time_op(fn, device: torch.device, reps: int, warmup: int) -> float:
    """Median seconds of fn() over reps runs after warmup untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(nbytes: int, device, reps, warmup) -> float:
    """GB/s of a device-to-device copy: read + written bytes over the time."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    secs = time_op(lambda: dst.copy_(src), device, reps, warmup)
    del src, dst
    return 2 * nbytes / secs / 1e9


def read_bandwidth(nbytes: int, device, reps, warmup) -> float:
    """GB/s of a plain read: the sum of a float16 tensor (one scalar written)."""
    n = nbytes // 2
    x = torch.rand(n, dtype=torch.float16, device=device)
    secs = time_op(lambda: x.sum(), device, reps, warmup)
    del x
    return 2 * n / secs / 1e9


def matmul_tflops(n: int, dtype, device, reps, warmup) -> float | None:
    """TFLOP/s of an n x n x n matmul in dtype (None when the device cannot do it)."""
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.empty(n, n, dtype=dtype, device=device)
        secs = time_op(lambda: torch.matmul(a, b, out=c), device, reps, warmup)
    except RuntimeError as e:  # e.g. bf16 on a GPU without it
        print(f"  matmul {dtype}: {str(e).splitlines()[0]}", file=sys.stderr)
        return None
    return 2 * n**3 / secs / 1e12


def setup(cpu_smoke: bool) -> torch.device:
    """The device measured: cuda (TF32 off), or the CPU for --cpu-smoke."""
    if cpu_smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        print(f"gpu_roofline.py: CUDA is not available to torch {torch.__version__} "
              f"(built for CUDA {torch.version.cuda}); this tool needs an NVIDIA GPU "
              f"(--cpu-smoke exercises it on the CPU with tiny sizes)", file=sys.stderr)
        sys.exit(2)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, smoke test sizes)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file written")
    ap.add_argument("--copy-gib", type=float, default=1.0,
                    help="size of the copied / read tensor in GiB (default 1)")
    ap.add_argument("--n", type=int, default=8192, help="matmul size n (default 8192)")
    ap.add_argument("--reps", type=int, default=20, help="timed runs (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny sizes on the CPU: checks the code, measures nothing")
    args = ap.parse_args()
    device = setup(args.cpu_smoke)
    if args.cpu_smoke:
        args.copy_gib, args.n, args.reps, args.warmup = 1 / 1024, 128, 3, 1
    nbytes = int(args.copy_gib * 2**30) // 2 * 2

    name = device_name(device)
    print(f"roofline of {name}: copy/read {nbytes / 2**30:.3g} GiB, matmul n={args.n}, "
          f"median of {args.reps} after {args.warmup} warm-up runs", flush=True)
    res = {"device": name,
           "bandwidth_copy_gbs": copy_bandwidth(nbytes, device, args.reps, args.warmup),
           "bandwidth_read_gbs": read_bandwidth(nbytes, device, args.reps, args.warmup)}
    for short, dtype in DTYPES.items():
        res[f"tflops_{short}"] = matmul_tflops(args.n, dtype, device, args.reps,
                                               args.warmup)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"{'measure':<28} {'rate':>10}")
    print(f"{'copy bandwidth (r+w)':<28} {res['bandwidth_copy_gbs']:10.1f} GB/s")
    print(f"{'read bandwidth (f16 sum)':<28} {res['bandwidth_read_gbs']:10.1f} GB/s")
    for short in DTYPES:
        v = res[f"tflops_{short}"]
        rate = f"{v:10.1f} TFLOP/s" if v is not None else f"{'n/a':>10}"
        print(f"{f'matmul {short} (n={args.n})':<28} {rate}")

    res.update({"copy_bytes": nbytes, "matmul_n": args.n, "reps": args.reps,
                "warmup": args.warmup, "tf32": False, "cpu_smoke": args.cpu_smoke,
                "torch": torch.__version__, "cuda": torch.version.cuda})
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
