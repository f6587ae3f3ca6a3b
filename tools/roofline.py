#!/usr/bin/env python3
"""Roofline arithmetic for qwen-scope's forward pass: bytes moved and FLOPs per step of a
model (from its config.json), and the times and rates a card's bandwidth and matrix rate
allow. The same counts as `qwen-scope bench` prints (src/cli/bench.rs):

  matrix elements a token multiplies with  M = L * (h*(q + 2kv) + q*h + 3*h*i) + vocab*h
  FLOPs per token                          2 * M   (attention scores left out)
  bytes a decode step reads                M * elem + f32 norms/biases + rows * KV bytes
  KV bytes of one row at context c         2 * L * kv * c * elem

Cards come from --measured FILE.json (tools/gpu_roofline.py output: measured on the card)
or from the built-in datasheet peaks (T4, P100, ...), and every line says which. Numbers
for a card nobody ran on are projections, and are printed as such.

Usage:
  tools/roofline.py --config MODEL/config.json [--dtype f16] [--batch 1] [--tokens 128]
                    [--context 160] [--measured roofline.json] [--card T4 --card P100 ...]
Standard library only; not a CI step.
"""

import argparse
import json
import sys

# Datasheet peaks: memory bandwidth (GB/s) and dense matrix rate (TFLOP/s) per element
# type; f16 on sm_75/sm_80+ is the tensor-core rate with f32 accumulation. P100 has no
# tensor cores (f16 rate is its packed-half rate) and no bf16.
DATASHEET = {
    "T4": {"bw": 320, "f16": 65.0, "bf16": None, "f32": 8.1},
    "P100": {"bw": 732, "f16": 18.7, "bf16": None, "f32": 9.3},
    "A100-40GB": {"bw": 1555, "f16": 312.0, "bf16": 312.0, "f32": 19.5},
    "H100-SXM": {"bw": 3350, "f16": 989.0, "bf16": 989.0, "f32": 67.0},
    "H200": {"bw": 4800, "f16": 989.0, "bf16": 989.0, "f32": 67.0},
}
ELEM = {"f32": 4, "f16": 2, "bf16": 2}


def shapes(cfg):
    h = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    d = cfg.get("head_dim") or h // heads
    return dict(
        L=cfg["num_hidden_layers"],
        h=h,
        q=heads * d,
        kv=cfg.get("num_key_value_heads", heads) * d,
        i=cfg["intermediate_size"],
        vocab=cfg["vocab_size"],
    )


def matrix_params(s):
    per_block = s["h"] * (s["q"] + 2 * s["kv"]) + s["q"] * s["h"] + 3 * s["h"] * s["i"]
    return s["L"] * per_block + s["vocab"] * s["h"]


def weight_bytes(s, elem):
    small = s["L"] * (2 * s["h"] + s["q"] + 2 * s["kv"]) + s["h"]
    return matrix_params(s) * elem + small * 4


def kv_bytes(s, elem, context):
    return 2 * s["L"] * s["kv"] * context * elem


def card_rows(args):
    rows = []
    if args.measured:
        m = json.load(open(args.measured))
        rows.append((f"{m['device']} (measured)", {
            "bw": m["bandwidth_copy_gbs"],
            "f16": m["tflops_f16"],
            "bf16": m.get("tflops_bf16"),
            "f32": m["tflops_f32"],
        }))
    for name in args.card:
        if name not in DATASHEET:
            sys.exit(f"unknown card {name!r}: one of {', '.join(DATASHEET)}")
        rows.append((f"{name} (datasheet peak; projection)", DATASHEET[name]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--dtype", default="f16", choices=sorted(ELEM))
    ap.add_argument("--batch", type=int, default=1, help="rows per decode step")
    ap.add_argument("--tokens", type=int, default=128, help="prefill length")
    ap.add_argument("--context", type=int, default=160, help="cached positions per row")
    ap.add_argument("--measured", help="tools/gpu_roofline.py JSON")
    ap.add_argument("--card", action="append", default=[], help="datasheet card")
    args = ap.parse_args()

    s = shapes(json.load(open(args.config)))
    elem = ELEM[args.dtype]
    m = matrix_params(s)
    flops_tok = 2 * m
    step_bytes = weight_bytes(s, elem) + args.batch * kv_bytes(s, elem, args.context)
    step_flops = args.batch * flops_tok
    prefill_flops = args.tokens * flops_tok
    print(f"model: {args.config}: {s}; weights {args.dtype}")
    print(f"matrix elements per token {m / 1e6:.1f} M; {flops_tok / 1e9:.3f} GFLOP per token")
    print(f"decode step, {args.batch} row(s) at context {args.context}: reads "
          f"{step_bytes / 1e6:.1f} MB, {step_flops / 1e9:.3f} GFLOP "
          f"(intensity {step_flops / step_bytes:.2f} FLOP/byte)")
    print(f"prefill of {args.tokens} tokens: {prefill_flops / 1e9:.1f} GFLOP\n")
    print(f"{'card':<44} {'GB/s':>7} {'TFLOP/s':>8} {'decode ms':>10} {'decode tok/s':>13} "
          f"{'prefill ms':>11} {'prefill tok/s':>14}")
    for name, c in card_rows(args):
        rate = c.get(args.dtype)
        if rate is None:
            print(f"{name:<44} no {args.dtype} arithmetic")
            continue
        # a step takes at least its bytes over the bandwidth and its FLOPs over the rate
        decode = max(step_bytes / (c["bw"] * 1e9), step_flops / (rate * 1e12))
        prefill = max(weight_bytes(s, elem) / (c["bw"] * 1e9), prefill_flops / (rate * 1e12))
        print(f"{name:<44} {c['bw']:7.0f} {rate:8.1f} {decode * 1e3:10.3f} "
              f"{args.batch / decode:13.0f} {prefill * 1e3:11.3f} {args.tokens / prefill:14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
