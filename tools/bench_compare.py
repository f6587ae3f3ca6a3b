#!/usr/bin/env python3
"""Ratios of qwen-scope against PyTorch/transformers from one benchmark run's files, and
a cell-by-cell check of the token-identity predictions. Shared by tools/bench_cpu.sh
and tools/bench_gpu.sh; NOT a CI step (needs only the Python standard library).

    python tools/bench_compare.py OUT START [--tol X] [--label NAME] [--roofline FILE]

OUT holds what the calling script wrote:
  sweep.stderr     qwen-scope sweep's stderr ('evaluated ...', 'token identity alone ...')
  sweep/samples.csv  its per-cell results
  bench*.stdout    qwen-scope bench outputs ('prefill  B x T tokens: ...' and
                   'decode   B rows, N steps: ...'), one or more settings
  torch.json       tools/bench_torch.py's results (ways, forward benches, device, dtype)
START is the run's start time (Unix seconds), for the total wall time printed last.

Every qwen-scope token-identity prediction (same layer) is compared with every PyTorch
way's. A differing cell is tolerated when PyTorch's top-1 minus top-2 logit margin there
is exactly 0 (a tie), or is <= --tol logits (default 0: ties only, for float32 runs; half
precision runs pass a small tolerance, see tools/bench_gpu.sh). Exit status 1 when a
mismatch exceeds it or qwen-scope's cells are not the expected ones, 3 when there is
nothing to compare: a ratio over a side that did no work (no token-identity cell, a
timing of 0) is never printed; the script says why instead (tools/bench_ratio.py).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ratio import NOTHING_TO_COMPARE, Refusal, per_unit_ratio, speedup  # noqa: E402

SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def read_sweep(out):
    """qwen-scope sweep: totals, token-identity seconds and its same-layer TI rows."""
    err = open(os.path.join(out, "sweep.stderr")).read()
    m = re.search(r"evaluated (\d+) samples \((\d+) cells\) in ([\d.]+)s: ([\d.]+) cells/s",
                  err)
    assert m, "no 'evaluated ...' line in qwen-scope sweep stderr"
    n_samples, all_cells, cells_per_s = int(m[1]), int(m[2]), float(m[4])
    rows = list(csv.DictReader(open(os.path.join(out, "sweep", "samples.csv"), newline="")))
    ti = [r for r in rows if r["method"] == "token_identity"
          and r["source_layer"] == r["target_layer"]]
    m2 = re.search(r"token identity alone: (\d+) cells in ([\d.]+)s", err)
    assert m2, "no 'token identity alone' line in qwen-scope sweep stderr"
    assert int(m2[1]) == len(ti), (m2[1], len(ti))
    return {"samples": n_samples, "cells": all_cells, "cells_per_s": cells_per_s,
            # more digits than the printed "in Xs" (which a run of no cell has alone)
            "secs": all_cells / cells_per_s if cells_per_s > 0 else float(m[3]),
            "ti": ti, "ti_secs": float(m2[2])}


PREFILL = re.compile(r"^prefill\s+(\d+) x (\d+) tokens:\s+([\d.]+) ms")
DECODE = re.compile(r"^decode\s+(\d+) rows, (\d+) steps:\s+([\d.]+) ms/step")
GFLOP = re.compile(r"\(([\d.]+) GFLOP in matrix products")
MB_READ = re.compile(r"\(([\d.]+) MB read per step")


def _number(pattern, line):
    m = pattern.search(line)
    return float(m[1]) if m else None


def parse_bench(text):
    """{(B, T, D): {prefill_ms, gflop, decode_ms, mb}} of one qwen-scope bench output
    (gflop: the prefill's matrix work, mb: the bytes a decode step reads, when given)."""
    found, cur = {}, None
    for line in text.splitlines():
        if m := PREFILL.match(line):
            cur = {"key": (int(m[1]), int(m[2]), 0), "prefill_ms": float(m[3]),
                   "gflop": _number(GFLOP, line), "decode_ms": None, "mb": None}
            found[id(cur)] = cur
        elif (m := DECODE.match(line)) and cur is not None and int(m[1]) == cur["key"][0]:
            cur["key"] = (cur["key"][0], cur["key"][1], int(m[2]))
            cur["decode_ms"], cur["mb"] = float(m[3]), _number(MB_READ, line)
    return {c.pop("key"): c for c in found.values()}


def read_benches(out):
    """qwen-scope bench results of every OUT/bench*.stdout, keyed by (B, T, D)."""
    res = {}
    for path in sorted(glob.glob(os.path.join(out, "bench*.stdout"))):
        res.update(parse_bench(open(path).read()))
    assert res, f"no qwen-scope bench output (bench*.stdout) in {out}"
    return res


def torch_forwards(t):
    """bench_torch.py's forward benches keyed by (B, T, D); older JSON had one dict."""
    f = t.get("forward") or []
    f = [f] if isinstance(f, dict) else f
    return {(x.get("batch", 1), x["tokens"], x["decode"]): x for x in f}


def torch_setting(t):
    """'CPU f32, 2 threads' or 'NVIDIA H100 ... f16' (older JSON: CPU float32)."""
    dtype = SHORT.get(t.get("dtype", "float32"), t.get("dtype"))
    if t.get("device", "cpu").startswith("cuda"):
        return f"{t.get('device_name', t['device'])} {dtype}"
    return f"CPU {dtype}, {t['threads']} threads"


def print_throughput(q, t):
    """The throughput table; raises Refusal when qwen-scope timed no token-identity
    cell. A PyTorch way that timed none gets "n/a" and the reason."""
    ti, ti_secs = q["ti"], q["ti_secs"]
    if not ti or ti_secs <= 0:
        raise Refusal(f"no speed-up: qwen-scope timed {len(ti)} token-identity cells in "
                      f"{ti_secs}s (give the sweep validation prompts: VAL > 0)")
    qs_ti = len(ti) / ti_secs
    print(f"\nqwen-scope sweep: {q['samples']} samples, {q['cells']} cells "
          f"(token_identity + logit_lens + tuned_lens) in {q['secs']:.2f}s = "
          f"{q['cells_per_s']:.1f} cells/s")
    print(f"token identity alone (source passes + token-identity target passes, lens "
          f"phases excluded): {len(ti)} cells in {ti_secs:.2f}s = {qs_ti:.1f} cells/s")
    print(f"PyTorch timings include the source passes; {torch_setting(t)}, "
          f"attn={t['attn']}, torch {t['versions']['torch']}, "
          f"transformers {t['versions']['transformers']}\n")
    print(f"{'token identity (same layer)':<34} {'seconds':>8} {'cells':>6} {'cells/s':>9} "
          f"{'qwen-scope x':>13}")
    print(f"{'qwen-scope (token identity alone)':<34} {ti_secs:8.2f} {len(ti):6d} "
          f"{qs_ti:9.1f} {'1.00':>13}")
    for name, w in t["ways"].items():
        label = f"torch ({w['way']}) {name}"
        rate = w["cells_per_s"] if w["cells"] > 0 and w["seconds"] > 0 else 0.0
        try:
            x = f"{per_unit_ratio(rate, qs_ti, base=label):13.2f}"
        except Refusal as e:
            x = f"  n/a: {e}"
        print(f"{label:<34} {w['seconds']:8.2f} {w['cells']:6d} {rate:9.1f} {x}")


def print_forward(benches, forwards, roof=None, dtype="float32"):
    """One table per setting run on both sides; settings run on one side are listed.
    With a roofline (tools/gpu_roofline.py's JSON), each side's prefill matrix rate and
    decode read rate (qwen-scope's FLOP and byte counts, the same work on both sides) as
    a percentage of the measured matmul peak of the dtype and of the measured bandwidth."""
    for key in sorted(set(benches) | set(forwards)):
        b, tk, d = key
        if key not in benches or key not in forwards:
            side = "qwen-scope" if key in benches else "torch"
            print(f"\nforward {b} x {tk} prefill, {d} decode: only run by {side}")
            continue
        q, f = benches[key], forwards[key]
        qp, qd = q["prefill_ms"], q["decode_ms"]
        head = f"forward ({b} x {tk} prefill, {d} decode)"
        w = max(34, len(head))
        print(f"\n{head:<{w}} {'qwen-scope':>11} {'torch':>9} {'speedup':>8}")
        print(f"{'prefill ms':<{w}} {_ms(qp):>11} {_ms(f['prefill_ms']):>9} "
              f"{_times(f['prefill_ms'], qp)}")
        if d > 0:
            print(f"{'decode ms/step':<{w}} {_ms(qd):>11} "
                  f"{_ms(f['decode_ms_per_step']):>9} "
                  f"{_times(f['decode_ms_per_step'], qd)}")
        if roof:
            print_roofline(q, f, roof, dtype, w)


def _ms(x):
    return f"{x:.2f}" if isinstance(x, (int, float)) else "none"


def _times(torch_ms, qs_ms):
    """torch_ms / qs_ms, or "n/a" and why (a time of 0 or none: nothing measured)."""
    try:
        return f"{speedup(1, torch_ms, 1, qs_ms, base='torch', unit='runs'):8.2f}"
    except Refusal as e:
        return f"{'n/a':>8} ({e})"


def print_roofline(q, f, roof, dtype, w):
    peak = roof.get(f"tflops_{SHORT.get(dtype, dtype)}")
    if q["gflop"] and peak:
        pct = [100 * q["gflop"] / ms / (peak * 1e3) for ms in (q["prefill_ms"],
                                                               f["prefill_ms"])]
        label = f"prefill % of {peak:.4g} TFLOP/s"
        print(f"{label:<{w}} {pct[0]:10.1f}% {pct[1]:8.1f}%")
    bw = max(roof.get("bandwidth_copy_gbs") or 0, roof.get("bandwidth_read_gbs") or 0)
    if q["mb"] and bw and q["decode_ms"]:
        pct = [100 * q["mb"] / ms / bw for ms in (q["decode_ms"], f["decode_ms_per_step"])]
        label = f"decode % of {bw:.4g} GB/s"
        print(f"{label:<{w}} {pct[0]:10.1f}% {pct[1]:8.1f}%")


def check_cells(q, t, tol):
    """qwen-scope's token-identity pred vs every PyTorch way, cell by cell."""
    ti = q["ti"]
    L = t["num_layers"]
    by_index = {s["index"]: i for i, s in enumerate(t["samples"])}
    bad, ties, near_margins, checked = [], 0, [], 0
    for r in ti:
        i, l = by_index[int(r["index"])], int(r["source_layer"])
        sample = t["samples"][i]
        assert int(r["position"]) == sample["position"], ("position", r["index"])
        for name, w in t["ways"].items():
            checked += 1
            if int(r["pred"]) == w["pred"][i][l]:
                continue
            margin = w["margin"][i][l]
            if margin == 0.0:
                ties += 1
            elif margin <= tol:
                near_margins.append(margin)
            else:
                bad.append((r["index"], l, name, int(r["pred"]), w["pred"][i][l], margin))
    near = len(near_margins)
    expected = len(t["samples"]) * L
    ok = not bad and len(ti) == expected
    near_s = f", {near} near ties within tol {tol:g}" if tol > 0 else ""
    if near:
        near_s += f" (largest torch margin {max(near_margins):.3g})"
    among = len(t["mismatches"])
    beyond = sum(not m.get("within_tol", m.get("exact_tie")) for m in t["mismatches"])
    among_s = f" ({beyond} beyond tol {t['tolerance']:g})" if t.get("tolerance") else ""
    print(f"\npredictions: qwen-scope token_identity vs {len(t['ways'])} PyTorch ways: "
          f"{checked - len(bad) - ties - near} of {checked} cell comparisons equal, "
          f"{ties} exact ties{near_s}, {len(bad)} mismatches ({len(ti)} qwen-scope cells, "
          f"{expected} expected); torch ways among themselves: {among} mismatches"
          f"{among_s}")
    for b in bad[:20]:
        print(f"  mismatch index={b[0]} layer={b[1]} way={b[2]} qwen-scope={b[3]} "
              f"torch={b[4]} torch margin={b[5]:.3g}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the benchmark run's folder")
    ap.add_argument("start", type=int, help="the run's start time, Unix seconds")
    ap.add_argument("--tol", type=float, default=0.0,
                    help="largest PyTorch top-1 minus top-2 margin (logits) at which a "
                         "differing prediction counts as a near tie (default 0: ties only)")
    ap.add_argument("--label", default="bench", help="name in the wall-time line")
    ap.add_argument("--roofline", help="tools/gpu_roofline.py's JSON: also print the "
                    "forward rates as % of the measured peaks")
    args = ap.parse_args()

    q = read_sweep(args.out)
    t = json.load(open(os.path.join(args.out, "torch.json")))
    try:
        print_throughput(q, t)
    except Refusal as e:
        print(e)
        return NOTHING_TO_COMPARE
    roof = json.load(open(args.roofline)) if args.roofline else None
    print_forward(read_benches(args.out), torch_forwards(t), roof,
                  t.get("dtype", "float32"))
    ok = check_cells(q, t, args.tol)
    print(f"\n{args.label} total wall time: {time.time() - args.start:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
