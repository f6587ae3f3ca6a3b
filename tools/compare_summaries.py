#!/usr/bin/env python3
"""Compares two sweep summaries (summary.csv) cell by cell: a run on the CUDA backend
against the CPU backend's run of the same command (docs/CUDA.md, "Emulated CUDA").

  f32:      the same cells, the same sample counts and precision@1 exactly, and surprisal
            within 1e-5 relative (f32 sums in another order: the last digits differ).
  f16/bf16: weights rounded to 11 (f16) or 8 (bf16) significant bits move a near-tie's
            top token: precision@1 may change by at most 5% of all (cell, sample) pairs
            (counted as sum over cells of |difference| x samples); where precision@1 agrees, token-identity and logit-lens surprisal within 0.02
            nats (f16) or 0.1 nats (bf16). Tuned-lens surprisal is not compared in half
            precision: its least-squares fit amplifies the rounding (docs/CUDA.md).

Usage: compare_summaries.py CPU_SUMMARY GPU_SUMMARY --dtype f32|f16|bf16
Exits 1, naming each cell out of tolerance, when they disagree.
"""
import argparse
import csv
import sys

SURPRISAL_NATS = {"f16": 0.02, "bf16": 0.1}


def rows(path):
    with open(path, newline="") as f:
        return {(r["method"], r["source_layer"], r["target_layer"]): r for r in csv.DictReader(f)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cpu")
    ap.add_argument("gpu")
    ap.add_argument("--dtype", required=True, choices=["f32", "f16", "bf16"])
    a = ap.parse_args()
    ref, got = rows(a.cpu), rows(a.gpu)
    problems = []
    if ref.keys() != got.keys():
        problems.append(f"different cells: only in {a.cpu}: {sorted(ref.keys() - got.keys())}; "
                        f"only in {a.gpu}: {sorted(got.keys() - ref.keys())}")
    flips, total, worst_s = 0, 0, 0.0
    cells = sorted(ref.keys() & got.keys())
    for key in cells:
        r, g = ref[key], got[key]
        name = "/".join(key)
        if r["samples"] != g["samples"]:
            problems.append(f"{name}: {g['samples']} samples, the CPU run has {r['samples']}")
            continue
        n = int(r["samples"])
        pr, pg = float(r["precision_at_1"]), float(g["precision_at_1"])
        sr, sg = float(r["surprisal"]), float(g["surprisal"])
        if a.dtype == "f32":
            if pr != pg:
                problems.append(f"{name}: precision@1 {pg} != {pr}")
            tol = 1e-5 * max(1.0, abs(sr))
            if abs(sg - sr) > tol:
                problems.append(f"{name}: surprisal {sg} vs {sr} (tolerance {tol:.2g})")
            worst_s = max(worst_s, abs(sg - sr) / max(1.0, abs(sr)))
            continue
        total += n
        if pg != pr:
            flips += round(abs(pg - pr) * n)
        elif key[0] != "tuned_lens":
            worst_s = max(worst_s, abs(sg - sr))
            if abs(sg - sr) > SURPRISAL_NATS[a.dtype]:
                problems.append(f"{name}: surprisal {sg:.4f} vs {sr:.4f} nats "
                                f"(tolerance {SURPRISAL_NATS[a.dtype]})")
    if a.dtype != "f32" and flips > 0.05 * total:
        problems.append(f"precision@1 moved by {flips} of {total} (cell, sample) pairs "
                        "(at most 5%)")
    what = "max relative surprisal difference" if a.dtype == "f32" else \
        "max surprisal difference (nats)"
    print(f"{a.dtype}: {len(cells)} cells, precision@1 moved by {flips} (cell, sample) pairs, "
          f"{what} {worst_s:.3g}", flush=True)
    for p in problems:
        print("  " + p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
