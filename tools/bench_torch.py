#!/usr/bin/env python3
"""PyTorch/transformers baselines for the token-identity part of the next-token sweep.

NOT a CI step: needs torch + transformers (5.x) + tokenizers + numpy; runs on the CPU
(float32 by default) or on a CUDA GPU (--device cuda, --dtype float32/float16/bfloat16).
Used by tools/bench_cpu.sh and tools/bench_gpu.sh to compare qwen-scope against PyTorch
on the same protocol as tools/reference_sweep.py (same prompts, train/val split, seeded
source positions, target prompt, final-layer rule), restricted to the token-identity
cells with source layer == target layer (L cells per validation prompt).

Three ways, each timed in this one process, source passes included in each timing:
  (a) per-cell: the official PatchScopes code's way. One source forward per sample
      (output_hidden_states=True), then per (sample, layer) one full target forward
      with a forward hook overwriting block l's output at the last position (the
      final norm's output when l == L-1). Full logits, as the official code.
  (b) batched (nnterp-style): one right-padded batched source pass per batch of
      samples (base model only, no lm_head), then per layer one batched target
      forward (target prompt repeated B times, no padding needed), a hook overwriting
      row i's last position with sample i's state, logits of the last position only.
  (c) prefix-cached: the target prefix (all tokens but the last) is run once with
      use_cache=True; per batch the DynamicCache is copied and expanded to B rows;
      per layer one batched single-token forward of the last target token against
      it (cropped back after each forward), hook on block l (norm when l == L-1).
      Same batched source pass as (b).
All three must give the same predicted token per cell (argmax, first index). A cell
where two ways differ is a mismatch; its margin is the sum of the two ways' top-1 minus
top-2 logit gaps (their logits must differ by at least that much for the argmaxes to
differ). A mismatch is tolerated when either way has an exact tie (margin 0), or when
its margin is <= --tol: 0 in float32 (exact ties only), and by default 0.05 logits in
float16 and 0.25 in bfloat16, about 2.5 times the logit error of those formats seen on
a random model with Qwen2-0.5B shapes (whose top-1 minus top-2 gaps have a median near
0.08: near ties are common; bfloat16 logits near 3 come in steps of 1/64). Exit status
1 when any mismatch exceeds the tolerance.

Also times transformers' forward like `qwen-scope bench --batch B --tokens T --decode D
--repeat R`, for every --forward BxT+D (default 1x32+16; repeatable): a prefill of B rows
of T fixed ids (row r token i = (r*7919 + i*104729 + 13) % vocab, as qwen-scope bench;
logits of the last position only), median of R, then D decode steps with the KV cache,
row r fed token s % T of its prompt at step s (the same work as greedy decoding, whose
argmax cost is negligible), median ms/step. Printed in qwen-scope bench's line format.

On CUDA, TF32 is switched off (float32 means float32) and every timer is read after
torch.cuda.synchronize(), so times cover the GPU work. --threads only matters on the CPU.

Usage:
    python tools/bench_torch.py --model DIR --prompts FILE --train N --val M --seed S \
        [--batch B] [--device cpu|cuda[:N]] [--dtype float32|float16|bfloat16] \
        [--threads 2] [--attn sdpa] [--ways abc] [--tol X] \
        [--forward BxT+D ...] [--repeat 5] [--no-forward-bench] --out FILE.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import sys
import time

import numpy as np
import tokenizers
import torch
import transformers

# the protocol's target prompt and seeded positions, shared with the reference sweep
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_sweep import TARGET_PROMPT, splitmix64  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
# largest margin (logits) of a cross-way mismatch taken as a near-tie, per dtype
DEFAULT_TOL = {"float32": 0.0, "float16": 0.05, "bfloat16": 0.25}


def _cache_kw(model):
    """transformers 5.x renamed the forward argument past_key_values -> cache."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"


def _out_cache(out):
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


def _hs(output):
    return output[0] if isinstance(output, tuple) else output


def patch_module(model, layer):
    """Block `layer`, or the final norm for the last layer (final-layer rule: the
    source state of layer L-1 is post-norm and must not be normed again)."""
    L = len(model.model.layers)
    return model.model.norm if layer == L - 1 else model.model.layers[layer]


def top2(logits: torch.Tensor):
    """Per row of [B, V] logits: (first argmax, top-1 minus top-2 logit), as lists."""
    x = logits.detach().float()
    pred = x.argmax(dim=-1, keepdim=True)  # first index of the maximum
    top = x.gather(1, pred)
    rest = x.scatter(1, pred, float("-inf")).amax(dim=-1, keepdim=True)
    return pred[:, 0].tolist(), (top - rest)[:, 0].tolist()


def fail(msg: str):
    """A setup error: message and exit status 2 (status 1 means the ways disagree)."""
    print(f"bench_torch.py: {msg}", file=sys.stderr)
    sys.exit(2)


def now(device: torch.device) -> float:
    """A timer reading taken after the device has finished the work queued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ------------------------------------------------------------------ source passes

@torch.no_grad()
def source_single(model, ids, pos):
    """Official style: one full forward, hidden_states[l+1][0, pos] for every l."""
    out = model(input_ids=ids[None], output_hidden_states=True, use_cache=False)
    L = len(model.model.layers)
    return torch.stack([out.hidden_states[l + 1][0, pos] for l in range(L)])


@torch.no_grad()
def source_batched(model, batch):
    """Right-padded batched source pass of the base model (no lm_head). Returns
    [B, L, H]: hidden_states[l+1][i, pos_i]. Right padding leaves the causal states
    at real positions unaffected; the attention mask is passed anyway."""
    dev = model.device
    T = max(len(s["ids"]) for s in batch)
    ids = torch.zeros((len(batch), T), dtype=torch.int64, device=dev)
    mask = torch.zeros((len(batch), T), dtype=torch.int64, device=dev)
    for i, s in enumerate(batch):
        ids[i, :len(s["ids"])] = s["ids"]
        mask[i, :len(s["ids"])] = 1
    out = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                      use_cache=False)
    hs = out.hidden_states
    L = len(model.model.layers)
    rows = torch.arange(len(batch), device=dev)
    pos = torch.tensor([s["pos"] for s in batch], device=dev)
    return torch.stack([hs[l + 1][rows, pos] for l in range(L)], dim=1)


# ------------------------------------------------------------------ the three ways

@torch.no_grad()
def way_per_cell(model, val, target_ids, batch_size):
    L = len(model.model.layers)
    i_star = len(target_ids) - 1
    preds, margins = [], []
    for s in val:
        reps = source_single(model, s["ids"], s["pos"])
        p_row, m_row = [], []
        for l in range(L):
            vec = reps[l]

            def hook(_m, _i, output, vec=vec):
                _hs(output)[0, i_star] = vec

            h = patch_module(model, l).register_forward_hook(hook)
            try:
                out = model(input_ids=target_ids[None], use_cache=False)
            finally:
                h.remove()
            (p,), (m,) = top2(out.logits[:, i_star])
            p_row.append(p)
            m_row.append(m)
        preds.append(p_row)
        margins.append(m_row)
    return preds, margins


@torch.no_grad()
def way_batched(model, val, target_ids, batch_size):
    L = len(model.model.layers)
    i_star = len(target_ids) - 1
    preds, margins = [], []
    for b0 in range(0, len(val), batch_size):
        batch = val[b0:b0 + batch_size]
        B = len(batch)
        reps = source_batched(model, batch)  # [B, L, H]
        tgt = target_ids[None].expand(B, -1).contiguous()
        p_cols, m_cols = [], []
        for l in range(L):
            vecs = reps[:, l]

            def hook(_m, _i, output, vecs=vecs):
                _hs(output)[:, i_star] = vecs

            h = patch_module(model, l).register_forward_hook(hook)
            try:
                out = model(input_ids=tgt, use_cache=False, logits_to_keep=1)
            finally:
                h.remove()
            p, m = top2(out.logits[:, -1])
            p_cols.append(p)
            m_cols.append(m)
        preds += [list(r) for r in zip(*p_cols)]
        margins += [list(r) for r in zip(*m_cols)]
    return preds, margins


@torch.no_grad()
def way_prefix_cached(model, val, target_ids, batch_size):
    L = len(model.model.layers)
    prefix = target_ids[:-1]
    last = target_ids[-1:]
    pre = model.model(input_ids=prefix[None], use_cache=True)
    prefix_cache = _out_cache(pre)
    assert prefix_cache.get_seq_length() == len(prefix)
    preds, margins = [], []
    for b0 in range(0, len(val), batch_size):
        batch = val[b0:b0 + batch_size]
        B = len(batch)
        reps = source_batched(model, batch)  # [B, L, H]
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(B)
        tok = last[None].expand(B, 1).contiguous()
        p_cols, m_cols = [], []
        for l in range(L):
            vecs = reps[:, l]

            def hook(_m, _i, output, vecs=vecs):
                _hs(output)[:, 0] = vecs

            h = patch_module(model, l).register_forward_hook(hook)
            try:
                out = model(input_ids=tok, use_cache=True, logits_to_keep=1,
                            **{_cache_kw(model): cache})
            finally:
                h.remove()
            cache.crop(-1)  # back to the prefix for the next layer
            assert cache.get_seq_length() == len(prefix)
            p, m = top2(out.logits[:, -1])
            p_cols.append(p)
            m_cols.append(m)
        preds += [list(r) for r in zip(*p_cols)]
        margins += [list(r) for r in zip(*m_cols)]
    return preds, margins


WAYS = {
    "a": ("per_cell_hooks", way_per_cell),
    "b": ("batched_nnterp", way_batched),
    "c": ("prefix_cached", way_prefix_cached),
}


def run_ways(model, keys, val, target_ids, batch_size):
    """Times each way (source passes included); returns {name: result}."""
    L = len(model.model.layers)
    results = {}
    for key in keys:
        name, fn = WAYS[key]
        t = now(model.device)
        preds, margins = fn(model, val, target_ids, batch_size)
        secs = now(model.device) - t
        cells = len(val) * L
        results[name] = {"way": key, "seconds": secs, "cells": cells,
                         "cells_per_s": cells / secs, "pred": preds, "margin": margins}
        print(f"  ({key}) {name:<16} {secs:8.2f} s  {cells:5d} cells  "
              f"{cells / secs:8.1f} cells/s", flush=True)
    return results


def compare_ways(results, val, L, tol):
    """Cells where a way's prediction differs from the first way's, with margins."""
    names = list(results)
    ref = names[0]
    mismatches = []
    for other in names[1:]:
        for i, s in enumerate(val):
            for l in range(L):
                pa, pb = results[ref]["pred"][i][l], results[other]["pred"][i][l]
                if pa == pb:
                    continue
                ma, mb = results[ref]["margin"][i][l], results[other]["margin"][i][l]
                exact = min(ma, mb) == 0.0
                mismatches.append({"ways": [ref, other], "index": s["index"], "layer": l,
                                   "pred": [pa, pb], "margin": [ma, mb],
                                   "exact_tie": exact,
                                   "within_tol": exact or ma + mb <= tol})
    return mismatches


# ------------------------------------------------------------------ forward bench

def parse_forward(spec: str):
    """'BxT+D' (e.g. 1x32+16; '+D' optional, default 16) -> (B, T, D)."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*(?:\+\s*(\d+))?\s*", spec)
    if not m or int(m[1]) == 0 or int(m[2]) == 0:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected BxT+D, e.g. 1x32+16")
    return int(m[1]), int(m[2]), int(m[3] or 16)


def bench_rows(batch: int, tokens: int, vocab: int) -> list[list[int]]:
    """qwen-scope bench's fixed ids: row r token i = (r*7919 + i*104729 + 13) % vocab."""
    return [[(r * 7919 + i * 104729 + 13) % vocab for i in range(tokens)]
            for r in range(batch)]


@torch.no_grad()
def bench_forward(model, batch=1, tokens=32, decode=16, repeat=5):
    dev = model.device
    rows = torch.tensor(bench_rows(batch, tokens, model.config.vocab_size), device=dev)
    prefill, step = [], []
    kw = _cache_kw(model)
    for _ in range(repeat):
        cache = transformers.DynamicCache(config=model.config)
        t = now(dev)
        model(input_ids=rows, use_cache=True, logits_to_keep=1, **{kw: cache})
        prefill.append(now(dev) - t)
        t = now(dev)
        for s in range(decode):
            model(input_ids=rows[:, s % tokens][:, None], use_cache=True,
                  logits_to_keep=1, **{kw: cache})
        step.append((now(dev) - t) / max(decode, 1))
        assert cache.get_seq_length() == tokens + decode
    p = float(np.median(prefill))
    s = float(np.median(step))
    print(f"prefill  {batch} x {tokens} tokens: {p * 1e3:8.2f} ms  "
          f"{batch * tokens / p:9.1f} tokens/s")
    if decode > 0:
        print(f"decode   {batch} rows, {decode} steps: {s * 1e3:8.2f} ms/step  "
              f"{batch / s:9.1f} tokens/s")
    return {"batch": batch, "tokens": tokens, "repeat": repeat, "decode": decode,
            "prefill_ms": p * 1e3, "prefill_tokens_per_s": batch * tokens / p,
            "decode_ms_per_step": s * 1e3 if decode > 0 else None,
            "decode_tokens_per_s": batch / s if decode > 0 else None}


# ------------------------------------------------------------------ setup

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--train", type=int, required=True,
                    help="prompts skipped (the tuned-lens training prompts of qwen-scope)")
    ap.add_argument("--val", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--batch", type=int, default=16, help="samples per batch of ways b, c")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--threads", type=int, default=2,
                    help="torch.set_num_threads (matters on the CPU only)")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager)")
    ap.add_argument("--ways", default="abc", help="subset of a, b, c")
    ap.add_argument("--tol", type=float, default=None,
                    help="largest tolerated margin of a mismatch between ways, in logits "
                         "(default: 0 in float32, 0.05 in float16, 0.25 in bfloat16)")
    ap.add_argument("--forward", type=parse_forward, action="append", default=None,
                    metavar="BxT+D", help="forward bench: B rows x T prompt tokens + D "
                    "decode steps; repeatable (default 1x32+16)")
    ap.add_argument("--repeat", type=int, default=5, help="forward bench runs (median)")
    ap.add_argument("--no-forward-bench", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        ap.error(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    if args.tol is None:
        args.tol = DEFAULT_TOL[args.dtype]
    args.forward = args.forward or [(1, 32, 16)]
    return args


def setup_device(name: str) -> torch.device:
    """The torch device; on CUDA, TF32 off so that float32 matmuls are float32."""
    device = torch.device(name)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)  # set_device needs an index
        if not torch.cuda.is_available():
            fail(f"--device {name}: CUDA is not available to this torch "
                 f"({torch.__version__}, built for CUDA {torch.version.cuda})")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.set_device(device)
    return device


def describe(device: torch.device, dtype: str) -> str:
    """'CPU f32, 2 threads' or 'NVIDIA H100 80GB HBM3 f16'."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} {SHORT[dtype]}"
    return f"CPU {SHORT[dtype]}, {torch.get_num_threads()} threads"


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"name": torch.cuda.get_device_name(device),
                "capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1),
                "tf32": torch.backends.cuda.matmul.allow_tf32,
                "fp16_reduced_precision_reduction":
                    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
                "bf16_reduced_precision_reduction":
                    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction}
    return {"name": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "numpy": np.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}


def load_samples(args, tok, device):
    """(validation samples, target ids) of the protocol, ids on `device`."""
    with open(args.prompts, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f]
    prompts = [p for p in prompts if p != ""]
    if len(prompts) < args.train + args.val:
        fail(f"{args.prompts}: {len(prompts)} prompts < train + val")

    def enc(text):
        return torch.tensor(tok.encode(text, add_special_tokens=False).ids,
                            dtype=torch.int64, device=device)

    val = []
    for k in range(args.train, args.train + args.val):
        ids = enc(prompts[k])
        assert len(ids) > 0, k
        val.append({"index": k, "ids": ids, "pos": splitmix64(args.seed + k) % len(ids)})
    return val, enc(TARGET_PROMPT)


def print_ways(results, mismatches, n_val, L, desc, attn, tol):
    bad = [m for m in mismatches if not m["within_tol"]]
    ties = sum(m["exact_tie"] for m in mismatches)
    print(f"\ntoken identity, same layer, {n_val} validation prompts x {L} layers, "
          f"{desc}, attn={attn}")
    print(f"{'way':<22} {'seconds':>9} {'cells':>6} {'cells/s':>9}")
    for name, r in results.items():
        print(f"({r['way']}) {name:<18} {r['seconds']:9.2f} {r['cells']:6d} "
              f"{r['cells_per_s']:9.1f}")
    total = n_val * L * max(len(results) - 1, 1)
    near = f", {len(mismatches) - ties - len(bad)} near ties within tol {tol:g}" \
        if tol > 0 else ""
    print(f"predictions: {len(results)} ways agree on {total - len(mismatches)} of "
          f"{total} cell comparisons; {len(mismatches)} mismatches ({ties} exact ties"
          f"{near}; {len(bad)} beyond the tolerance)")
    for m in sorted(mismatches, key=lambda m: -sum(m["margin"]))[:20]:
        print(f"  mismatch ways={m['ways'][0]}/{m['ways'][1]} index={m['index']} "
              f"layer={m['layer']} pred={m['pred'][0]}/{m['pred'][1]} "
              f"margins={m['margin'][0]:.4g}/{m['margin'][1]:.4g}"
              f"{'' if m['within_tol'] else '  BEYOND TOLERANCE'}")
    return bad


# ------------------------------------------------------------------ main

def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    transformers.utils.logging.disable_progress_bar()
    device = setup_device(args.device)

    tok = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=DTYPES[args.dtype], attn_implementation=args.attn)
    model.to(device)
    model.eval()
    L = len(model.model.layers)
    val, target_ids = load_samples(args, tok, device)
    desc = describe(device, args.dtype)
    print(f"{type(model).__name__}: L={L} device={device} ({desc}) "
          f"attn={args.attn} val={len(val)} batch={args.batch} "
          f"target={len(target_ids)} tokens", flush=True)

    # warm-up (one untimed target forward) so the first way does not pay for it
    model(input_ids=target_ids[None], use_cache=False)
    now(device)

    results = run_ways(model, args.ways, val, target_ids, args.batch)
    mismatches = compare_ways(results, val, L, args.tol)
    bad = print_ways(results, mismatches, len(val), L, desc, args.attn, args.tol)

    forward = []
    if not args.no_forward_bench:
        print("\ntransformers forward (same ids as qwen-scope bench):")
        print(f"device   torch {device} ({desc})")
        for b, t, d in args.forward:
            forward.append(bench_forward(model, b, t, d, args.repeat))

    out = {
        "model": args.model, "prompts": args.prompts, "train": args.train,
        "val": args.val, "seed": args.seed, "batch": args.batch,
        "device": str(device), "device_name": device_info(device)["name"],
        "device_info": device_info(device), "dtype": args.dtype, "tolerance": args.tol,
        "threads": torch.get_num_threads(), "attn": args.attn, "num_layers": L,
        "target_ids": target_ids.tolist(),
        "samples": [{"index": s["index"], "position": s["pos"],
                     "num_tokens": len(s["ids"])} for s in val],
        "ways": results, "mismatches": mismatches, "forward": forward,
        "versions": versions(),
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
