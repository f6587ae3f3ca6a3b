#!/usr/bin/env python3
"""PyTorch/transformers baselines for the token-identity part of the next-token sweep.

NOT a CI step: needs torch + transformers (5.x) + tokenizers + numpy, CPU float32.
Used by tools/bench_cpu.sh to compare qwen-scope against PyTorch on the same protocol
as tools/reference_sweep.py (same prompts, train/val split, seeded source positions,
target prompt, final-layer rule), restricted to the token-identity cells with
source layer == target layer (L cells per validation prompt).

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
All three must give the same predicted token per cell (argmax, first index); a
mismatch is reported and only tolerated if the top-2 logits are exactly equal.

Also times transformers' forward like `qwen-scope bench --tokens 32 --repeat 5
--decode 16`: prefill of 32 fixed ids (token i = (i*104729 + 13) % vocab; logits of
the last position only) median of 5, then 16 decode steps with the KV cache fed the
same fixed ids as qwen-scope bench (token s % 32; same work as greedy decoding, whose
argmax cost is negligible), median ms/step.

Usage:
    python tools/bench_torch.py --model DIR --prompts FILE --train N --val M --seed S \
        [--batch B] [--threads 2] [--attn sdpa] [--ways abc] --out FILE.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import numpy as np
import tokenizers
import torch
import transformers

# the protocol's target prompt and seeded positions, shared with the reference sweep
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_sweep import TARGET_PROMPT, splitmix64  # noqa: E402


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


def top2(row: torch.Tensor):
    """(first argmax, top-1 minus top-2 logit) of a 1-D logit vector."""
    arr = row.detach().float().cpu().numpy()
    pred = int(np.argmax(arr))
    rest = np.delete(arr, pred)
    return pred, float(arr[pred] - rest.max())


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
    T = max(len(s["ids"]) for s in batch)
    ids = torch.zeros((len(batch), T), dtype=torch.int64)
    mask = torch.zeros((len(batch), T), dtype=torch.int64)
    for i, s in enumerate(batch):
        ids[i, :len(s["ids"])] = s["ids"]
        mask[i, :len(s["ids"])] = 1
    out = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                      use_cache=False)
    hs = out.hidden_states
    L = len(model.model.layers)
    rows = torch.arange(len(batch))
    pos = torch.tensor([s["pos"] for s in batch])
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
            p, m = top2(out.logits[0, i_star])
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
        p_rows = [[None] * L for _ in range(B)]
        m_rows = [[None] * L for _ in range(B)]
        for l in range(L):
            vecs = reps[:, l]

            def hook(_m, _i, output, vecs=vecs):
                _hs(output)[:, i_star] = vecs

            h = patch_module(model, l).register_forward_hook(hook)
            try:
                out = model(input_ids=tgt, use_cache=False, logits_to_keep=1)
            finally:
                h.remove()
            for i in range(B):
                p_rows[i][l], m_rows[i][l] = top2(out.logits[i, -1])
        preds += p_rows
        margins += m_rows
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
        p_rows = [[None] * L for _ in range(B)]
        m_rows = [[None] * L for _ in range(B)]
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
            for i in range(B):
                p_rows[i][l], m_rows[i][l] = top2(out.logits[i, -1])
        preds += p_rows
        margins += m_rows
    return preds, margins


WAYS = {
    "a": ("per_cell_hooks", way_per_cell),
    "b": ("batched_nnterp", way_batched),
    "c": ("prefix_cached", way_prefix_cached),
}


# ------------------------------------------------------------------ forward bench

@torch.no_grad()
def bench_forward(model, tokens=32, repeat=5, decode=16):
    vocab = model.config.vocab_size
    row = torch.tensor([[(i * 104729 + 13) % vocab for i in range(tokens)]])
    prefill, step = [], []
    kw = _cache_kw(model)
    for _ in range(repeat):
        cache = transformers.DynamicCache(config=model.config)
        t = time.perf_counter()
        model(input_ids=row, use_cache=True, logits_to_keep=1, **{kw: cache})
        prefill.append(time.perf_counter() - t)
        t = time.perf_counter()
        for s in range(decode):
            model(input_ids=row[:, s % tokens][:, None], use_cache=True,
                  logits_to_keep=1, **{kw: cache})
        step.append((time.perf_counter() - t) / max(decode, 1))
        assert cache.get_seq_length() == tokens + decode
    p = float(np.median(prefill))
    s = float(np.median(step))
    print(f"prefill  1 x {tokens} tokens: {p * 1e3:8.2f} ms  {tokens / p:9.1f} tokens/s")
    print(f"decode   1 rows, {decode} steps: {s * 1e3:8.2f} ms/step  {1 / s:9.1f} tokens/s")
    return {"tokens": tokens, "repeat": repeat, "decode": decode,
            "prefill_ms": p * 1e3, "prefill_tokens_per_s": tokens / p,
            "decode_ms_per_step": s * 1e3, "decode_tokens_per_s": 1 / s}


# ------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--train", type=int, required=True,
                    help="prompts skipped (the tuned-lens training prompts of qwen-scope)")
    ap.add_argument("--val", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager)")
    ap.add_argument("--ways", default="abc", help="subset of a, b, c")
    ap.add_argument("--no-forward-bench", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    transformers.utils.logging.disable_progress_bar()

    with open(args.prompts, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f]
    prompts = [p for p in prompts if p != ""]
    if len(prompts) < args.train + args.val:
        sys.exit(f"{args.prompts}: {len(prompts)} prompts < train + val")

    tok = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation=args.attn)
    model.eval()
    L = len(model.model.layers)
    enc = lambda t: torch.tensor(tok.encode(t, add_special_tokens=False).ids,
                                 dtype=torch.int64)
    val = []
    for k in range(args.train, args.train + args.val):
        ids = enc(prompts[k])
        assert len(ids) > 0, k
        val.append({"index": k, "ids": ids, "pos": splitmix64(args.seed + k) % len(ids)})
    target_ids = enc(TARGET_PROMPT)
    print(f"{type(model).__name__}: L={L} threads={torch.get_num_threads()} "
          f"attn={args.attn} val={len(val)} batch={args.batch} "
          f"target={len(target_ids)} tokens", flush=True)

    # warm-up (one untimed target forward) so the first way does not pay for it
    model(input_ids=target_ids[None], use_cache=False)

    results = {}
    for key in args.ways:
        name, fn = WAYS[key]
        t = time.perf_counter()
        preds, margins = fn(model, val, target_ids, args.batch)
        secs = time.perf_counter() - t
        cells = len(val) * L
        results[name] = {"way": key, "seconds": secs, "cells": cells,
                         "cells_per_s": cells / secs, "pred": preds, "margin": margins}
        print(f"  ({key}) {name:<16} {secs:8.2f} s  {cells:5d} cells  "
              f"{cells / secs:8.1f} cells/s", flush=True)

    # agreement between the ways, cell by cell
    names = list(results)
    ref = names[0]
    mismatches = []
    for other in names[1:]:
        for i, s in enumerate(val):
            for l in range(L):
                pa, pb = results[ref]["pred"][i][l], results[other]["pred"][i][l]
                if pa != pb:
                    ma, mb = results[ref]["margin"][i][l], results[other]["margin"][i][l]
                    mismatches.append({"ways": [ref, other], "index": s["index"],
                                       "layer": l, "pred": [pa, pb],
                                       "margin": [ma, mb], "exact_tie": min(ma, mb) == 0.0})
    bad = [m for m in mismatches if not m["exact_tie"]]

    print(f"\ntoken identity, same layer, {len(val)} validation prompts x {L} layers, "
          f"CPU f32, {torch.get_num_threads()} threads, attn={args.attn}")
    print(f"{'way':<22} {'seconds':>9} {'cells':>6} {'cells/s':>9}")
    for name, r in results.items():
        print(f"({r['way']}) {name:<18} {r['seconds']:9.2f} {r['cells']:6d} "
              f"{r['cells_per_s']:9.1f}")
    print(f"predictions: {len(names)} ways agree on "
          f"{len(val) * L * max(len(names) - 1, 1) - len(mismatches)} of "
          f"{len(val) * L * max(len(names) - 1, 1)} cell comparisons; "
          f"{len(mismatches)} mismatches ({len(mismatches) - len(bad)} exact ties)")
    for m in mismatches[:20]:
        print(f"  mismatch {m}")

    fwd = None
    if not args.no_forward_bench:
        print("\ntransformers forward (same ids as qwen-scope bench):")
        fwd = bench_forward(model)

    out = {
        "model": args.model, "prompts": args.prompts, "train": args.train,
        "val": args.val, "seed": args.seed, "batch": args.batch,
        "threads": torch.get_num_threads(), "attn": args.attn, "num_layers": L,
        "target_ids": target_ids.tolist(),
        "samples": [{"index": s["index"], "position": s["pos"],
                     "num_tokens": len(s["ids"])} for s in val],
        "ways": results, "mismatches": mismatches, "forward": fwd,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
