#!/usr/bin/env python3
"""Slow, independent reference for the PatchScopes next-token sweep (paper section 4.1).

Usage:
    python tools/reference_sweep.py --model DIR --prompts FILE --train N --val M --seed S \
        [--grid] [--threads K] --out FILE.json

Written the way the official PatchScopes code (PAIR-code/interpretability,
patchscopes/code) does it: forward hooks on model.model.layers[i] that overwrite the
block output at one position (on model.model.norm when source layer == target layer
== L-1, "skip_final_ln"), output_hidden_states=True for the source states, and one
full target forward per cell. It exists only to check the Rust sweep; it is not fast.
Needs torch, transformers (5.x), tokenizers and numpy. CPU, float32, eager attention.

Protocol (the Rust sweep follows exactly the same one):
  * prompts = non-empty lines of FILE (trailing newline stripped); k = 0-based index in
    that list; train = prompts[0:N], validation = prompts[N:N+M] (file order).
  * ids = tokenizer.json (tokenizers library) without special tokens; T = len(ids).
  * source position: pos = splitmix64(S + k) % T (see splitmix64 below).
  * source representation of layer l: hidden_states[l + 1][0, pos]; for l = L-1 that is
    the POST-final-norm state (HF replaces the last entry). Source logits at pos,
    top-1 = first argmax, log-probs = float64 log_softmax of the float32 logits.
  * token identity: target "cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?", i* = last
    token; cell (l, l*): overwrite block l*'s output at i* with the layer-l source
    representation (l == l* == L-1: overwrite model.model.norm's output instead);
    prediction = argmax of the target logits at i*. Same layer always, every (l, l*)
    pair with --grid.
  * logit lens: lm_head(norm(raw output of block l at pos)); raw outputs are captured
    with hooks (the raw output of block L-1 is not in hidden_states).
  * tuned lens (affine, the official notebook's "mappings"): per l, A = lstsq(pad(X),
    pad(Y)) in float64 with X = layer-l source representations of the train prompts,
    Y = their hidden_states[L] (post-norm) at pos, pad = append a ones column;
    h' = unpad(pad(h) @ A) cast to float32; evaluated by patching h' into the SAME
    source prompt at block L-1, position pos (skip_final_ln when l == L-1) and taking
    argmax of the logits at pos. The script asserts this equals lm_head(norm(h'))
    (l < L-1) / lm_head(h') (l == L-1).
  * metrics per validation sample: prec1 = [pred == source top-1],
    surprisal = -log p_source(pred) (nats); averaged per layer (and per cell).

Output JSON: described in tests/fixtures/sweep/README.md. Besides the per-layer means
and per-sample predictions, each method also stores "margin" (top-1 minus top-2 logit of the prediction, per
sample per layer) so that comparisons can skip near-ties, and "grid" stores "pred"
[sample][l][l*].
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import tokenizers
import torch
import transformers

TARGET_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


# ---------------------------------------------------------------- hooks (official style)

def _hs(output):
    # transformers 5 decoder layers return a tensor [B, T, H]; older ones a tuple whose
    # first element is that tensor (the official code indexes output[0][0, pos]).
    return output[0] if isinstance(output, tuple) else output


def set_patch_hook(model, layer_target, position, vector, skip_final_ln):
    """Overwrite the output of block `layer_target` at `position` (batch row 0) with
    `vector`; with skip_final_ln and layer_target == L-1, overwrite the final norm's
    output instead (the vector is already post-norm and must not be normed again)."""
    num_layers = len(model.model.layers)
    if skip_final_ln and layer_target == num_layers - 1:
        module = model.model.norm
    else:
        module = model.model.layers[layer_target]

    def hook(_module, _inputs, output):
        _hs(output)[0, position] = vector

    return module.register_forward_hook(hook)


def top2(logits: torch.Tensor):
    """(first argmax, top-1 minus top-2 logit) of a 1-D float32 logit vector."""
    arr = logits.detach().cpu().numpy()
    pred = int(np.argmax(arr))  # numpy: first index on ties
    rest = np.delete(arr, pred)
    return pred, float(arr[pred] - rest.max())


# ---------------------------------------------------------------- passes

@torch.no_grad()
def source_pass(model, ids, pos):
    """Full source prompt. Returns reps [L,H] (hidden_states[l+1] at pos), raw [L,H]
    (raw block outputs at pos), logits [V] at pos."""
    layers = model.model.layers
    num_layers = len(layers)
    raw = [None] * num_layers

    def make_store(l):
        def store(_module, _inputs, output):
            raw[l] = _hs(output)[0, pos].detach().clone()
        return store

    hooks = [layer.register_forward_hook(make_store(l)) for l, layer in enumerate(layers)]
    try:
        out = model(input_ids=ids[None], output_hidden_states=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    hs = out.hidden_states
    assert len(hs) == num_layers + 1, len(hs)
    reps = torch.stack([hs[l + 1][0, pos] for l in range(num_layers)])
    raw = torch.stack(raw)
    # Sanity: hidden_states[l+1] is the raw block output except for the last entry,
    # which is the final-normed state.
    assert torch.equal(reps[:-1], raw[:-1]), "hidden_states[l+1] != raw block output"
    normed_last = model.model.norm(raw[-1][None, None])[0, 0]
    torch.testing.assert_close(normed_last, reps[-1], rtol=1e-5, atol=1e-5)
    return reps, raw, out.logits[0, pos].float()


@torch.no_grad()
def patched_logits(model, ids, layer_target, position, vector, skip_final_ln, read_pos):
    hook = set_patch_hook(model, layer_target, position, vector, skip_final_ln)
    try:
        out = model(input_ids=ids[None], use_cache=False)
    finally:
        hook.remove()
    return out.logits[0, read_pos].float()


# ---------------------------------------------------------------- main

def load(model_dir):
    tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert next(model.parameters()).dtype == torch.float32
    return tok, model


def encode(tok, text):
    return torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.int64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--train", type=int, required=True)
    ap.add_argument("--val", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--grid", action="store_true", help="every (l, l*) pair for token identity")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    transformers.utils.logging.disable_progress_bar()
    t_start = time.time()
    assert args.train >= 1 and args.val >= 1 and 0 <= args.seed <= MASK64

    with open(args.prompts, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f]
    prompts = [p for p in prompts if p != ""]
    if len(prompts) < args.train + args.val:
        sys.exit(f"{args.prompts}: {len(prompts)} prompts < train + val")

    tok, model = load(args.model)
    num_layers = len(model.model.layers)
    L = num_layers
    max_pos = model.config.max_position_embeddings
    print(f"{type(model).__name__}: L={L} H={model.config.hidden_size} "
          f"V={model.config.vocab_size}", flush=True)

    # ---- source passes (train + validation)
    samples = []
    for k in range(args.train + args.val):
        ids = encode(tok, prompts[k])
        T = len(ids)
        if T == 0 or T > max_pos:
            sys.exit(f"prompt {k}: {T} tokens (need 1..{max_pos})")
        pos = splitmix64(args.seed + k) % T
        reps, raw, logits = source_pass(model, ids, pos)
        top1, margin = top2(logits)
        samples.append(dict(index=k, ids=ids, pos=pos, T=T, reps=reps, raw=raw,
                            logits=logits, top1=top1, margin=margin,
                            logp=torch.log_softmax(logits.double(), dim=-1)))
    train, val = samples[:args.train], samples[args.train:]
    print(f"source passes: {time.time() - t_start:.1f}s", flush=True)

    target_ids = encode(tok, TARGET_PROMPT)
    i_star = len(target_ids) - 1

    def metrics(s, pred):
        return float(pred == s["top1"]), float(-s["logp"][pred])

    methods = {}

    # ---- token identity (same layer) and optional grid
    t0 = time.time()
    layer_pairs = [(l, lt) for l in range(L) for lt in range(L)] if args.grid else \
        [(l, l) for l in range(L)]
    cell = {}  # (sample i, l, l*) -> (pred, margin)
    for i, s in enumerate(val):
        for l, lt in layer_pairs:
            logits = patched_logits(model, target_ids, lt, i_star, s["reps"][l],
                                    skip_final_ln=(l == lt == L - 1), read_pos=i_star)
            cell[(i, l, lt)] = top2(logits)
    methods["token_identity"] = [[cell[(i, l, l)] for l in range(L)] for i in range(len(val))]
    print(f"token identity ({len(layer_pairs)} cells/sample): {time.time() - t0:.1f}s",
          flush=True)

    # ---- logit lens: lm_head(norm(raw block output))
    t0 = time.time()
    ll = []
    for s in val:
        logits = model.lm_head(model.model.norm(s["raw"][:, None, :]))[:, 0].float()
        ll.append([top2(logits[l]) for l in range(L)])
    methods["logit_lens"] = ll

    # ---- tuned lens (affine least squares, float64)
    pad = lambda x: np.hstack([x, np.ones((x.shape[0], 1))])
    unpad = lambda x: x[:, :-1]
    Y = np.stack([s["reps"][L - 1].numpy() for s in train]).astype(np.float64)
    tl = [[None] * L for _ in val]
    for l in range(L):
        X = np.stack([s["reps"][l].numpy() for s in train]).astype(np.float64)
        A = np.linalg.lstsq(pad(X), pad(Y), rcond=None)[0]
        for i, s in enumerate(val):
            h = s["reps"][l].numpy().astype(np.float64)[None]
            h_t = torch.from_numpy(unpad(pad(h) @ A)[0].astype(np.float32))
            logits = patched_logits(model, s["ids"], L - 1, s["pos"], h_t,
                                    skip_final_ln=(l == L - 1), read_pos=s["pos"])
            direct = model.lm_head(h_t if l == L - 1 else model.model.norm(h_t)).float()
            torch.testing.assert_close(logits, direct, rtol=1e-4, atol=1e-3)
            tl[i][l] = top2(logits)
            p_direct, m_direct = top2(direct)
            assert p_direct == tl[i][l][0] or min(m_direct, tl[i][l][1]) < 1e-3
    methods["tuned_lens"] = tl
    print(f"logit lens + tuned lens: {time.time() - t0:.1f}s", flush=True)

    # ---- aggregate
    out_methods = {}
    for name, per in methods.items():
        prec = [[metrics(s, per[i][l][0])[0] for l in range(L)] for i, s in enumerate(val)]
        surp = [[metrics(s, per[i][l][0])[1] for l in range(L)] for i, s in enumerate(val)]
        out_methods[name] = {
            "prec1": [float(np.mean([r[l] for r in prec])) for l in range(L)],
            "surprisal": [float(np.mean([r[l] for r in surp])) for l in range(L)],
            "pred": [[per[i][l][0] for l in range(L)] for i in range(len(val))],
            "margin": [[round(per[i][l][1], 6) for l in range(L)] for i in range(len(val))],
        }
    # skip_final_ln: at l = l* = L-1 the identity patch gives back the source model's own
    # top-1 (the post-norm state is not normed twice), barring a float near-tie.
    for i, s in enumerate(val):
        pred = methods["token_identity"][i][L - 1][0]
        assert pred == s["top1"] or s["margin"] < 1e-3, (s["index"], pred, s["top1"])

    grid = None
    if args.grid:
        g_prec = [[0.0] * L for _ in range(L)]
        g_surp = [[0.0] * L for _ in range(L)]
        for l in range(L):
            for lt in range(L):
                ms = [metrics(s, cell[(i, l, lt)][0]) for i, s in enumerate(val)]
                g_prec[l][lt] = float(np.mean([m[0] for m in ms]))
                g_surp[l][lt] = float(np.mean([m[1] for m in ms]))
        grid = {"prec1": g_prec, "surprisal": g_surp,
                "pred": [[[cell[(i, l, lt)][0] for lt in range(L)] for l in range(L)]
                         for i in range(len(val))]}

    result = {
        "model": args.model,
        "prompts": args.prompts,
        "num_layers": L,
        "seed": args.seed,
        "train": args.train,
        "val": args.val,
        "target_prompt": TARGET_PROMPT,
        "target_ids": target_ids.tolist(),
        "samples": [{"index": s["index"], "position": s["pos"], "num_tokens": s["T"],
                     "source_top1": s["top1"]} for s in val],
        "methods": out_methods,
        "grid": grid,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__,
                     "tokenizers": tokenizers.__version__},
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    print(f"\n{'layer':>5} | {'TI prec1':>8} {'TI surp':>8} | {'LL prec1':>8} {'LL surp':>8} "
          f"| {'TL prec1':>8} {'TL surp':>8}")
    for l in range(L):
        row = [out_methods[m][k][l] for m in ("token_identity", "logit_lens", "tuned_lens")
               for k in ("prec1", "surprisal")]
        print(f"{l:>5} | {row[0]:8.3f} {row[1]:8.3f} | {row[2]:8.3f} {row[3]:8.3f} "
              f"| {row[4]:8.3f} {row[5]:8.3f}")
    print(f"\nwrote {args.out} ({os.path.getsize(args.out)} bytes) in "
          f"{time.time() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
