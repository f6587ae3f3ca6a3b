#!/usr/bin/env python3
"""Check qwen-scope against transformers on a random Qwen3 of any shape: logits and every
residual state of a batch of prompts (`qwen-scope forward`), and the next-token sweep
(`qwen-scope sweep` against tools/reference_sweep.py).

    python tools/check_random_qwen3.py --out /tmp/q3 [--hidden 192 --layers 5 --heads 6
        --kv-heads 2 --head-dim 48 --intermediate 320 --attention-bias --untied]
        [--tokenizer models/qwen2.5-coder-0.5b] [--bin target/release/qwen-scope]
        [--device cpu] [--sweep --train 8 --val 8]

Needs torch, transformers and safetensors (run by hand, like tools/make_fixtures.py; never a
test dependency). The model is Qwen3ForCausalLM with seeded random weights, every norm weight
(q_norm and k_norm included) 1 + 0.2 N(0, 1) and every attention bias 0.2 N(0, 1), saved in
f32 to OUT/model; the tokenizer is the folder --tokenizer names (default the fixture's 512-token
one; a Qwen2/Qwen3 tokenizer gives the real vocabulary of 151936). Exits 1 when a logit or a
state differs by more than --tol (default 1e-4, max |diff| / max(1, max |reference|) per
position) or the sweep's precision@1 differs / its surprisal by more than 1e-3 nats.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    "The capital of France is",
    "In 1969, two astronauts walked on the Moon, and the whole world watched them on television.",
    "def add(a, b): return a + b",
    "Rain fell all night.",
]


def build(args, vocab):
    cfg = Qwen3Config(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
        intermediate_size=args.intermediate, vocab_size=vocab, max_position_embeddings=512,
        rms_norm_eps=args.eps, rope_theta=args.rope_theta, tie_word_embeddings=not args.untied,
        attention_bias=args.attention_bias, initializer_range=0.1, hidden_act="silu",
        bos_token_id=None, eos_token_id=0,
    )
    torch.manual_seed(args.seed)
    model = Qwen3ForCausalLM(cfg).float().eval()
    g = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight",)):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=48)
    ap.add_argument("--intermediate", type=int, default=320)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--rope-theta", type=float, default=1e6)
    ap.add_argument("--attention-bias", action="store_true")
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "tests/fixtures/tiny-qwen3"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/qwen-scope"))
    ap.add_argument("--device", default="cpu", help="qwen-scope's --device (cuda: add --dtype f32)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--train", type=int, default=8)
    ap.add_argument("--val", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    mdir = os.path.join(args.out, "model")
    os.makedirs(mdir, exist_ok=True)
    tok = json.load(open(os.path.join(args.tokenizer, "tokenizer.json")))
    vocab = max(max(tok["model"]["vocab"].values()), max((a["id"] for a in tok.get("added_tokens", [])), default=0)) + 1
    cfg_path = os.path.join(args.tokenizer, "config.json")
    if os.path.exists(cfg_path):
        vocab = max(vocab, json.load(open(cfg_path))["vocab_size"])
    model = build(args, vocab)
    model.save_pretrained(mdir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(args.tokenizer, f), os.path.join(mdir, f))
    model = transformers.AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(mdir)
    c = model.config
    print(f"Qwen3: hidden {c.hidden_size}, {c.num_hidden_layers} blocks, {c.num_attention_heads}/"
          f"{c.num_key_value_heads} heads of {c.head_dim}, vocab {c.vocab_size}, "
          f"attention_bias {c.attention_bias}, tied {c.tie_word_embeddings}")

    dump = os.path.join(args.out, "dump.safetensors")
    cmd = [args.bin, "forward", "--model", mdir, "--out", dump, "--device", args.device]
    if args.device != "cpu":
        cmd += ["--dtype", "f32"]
    for p in PROMPTS:
        cmd += ["--prompt", p]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    ours = load_file(dump)
    L = c.num_hidden_layers
    worst = {"logits": 0.0, "states": 0.0}
    for r, text in enumerate(PROMPTS):
        ids = torch.tensor([hf_tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        hs = out.hidden_states
        refs = {"logits": out.logits[0], "embed": hs[0][0], "final_norm": hs[L][0]}
        for l in range(L - 1):
            refs[f"resid_post.{l}"] = hs[l + 1][0]
        for name, want in refs.items():
            got = ours[f"row{r}.{name}"]
            assert got.shape == want.shape, (name, got.shape, want.shape)
            scale = want.abs().amax(dim=-1).clamp(min=1.0)
            err = ((got - want).abs().amax(dim=-1) / scale).max().item()
            key = "logits" if name == "logits" else "states"
            worst[key] = max(worst[key], err)
    print(f"forward ({len(PROMPTS)} prompts, {args.device}): max relative |diff| logits "
          f"{worst['logits']:.2e}, residual states {worst['states']:.2e} (tolerance {args.tol:g})")
    ok = max(worst.values()) <= args.tol

    if args.sweep:
        prompts = os.path.join(ROOT, "data/prompts.txt")
        ref = os.path.join(args.out, "reference_sweep.json")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools/reference_sweep.py"), "--model", mdir,
                        "--prompts", prompts, "--train", str(args.train), "--val", str(args.val),
                        "--seed", "7", "--out", ref], check=True, stdout=subprocess.DEVNULL)
        sdir = os.path.join(args.out, "sweep")
        shutil.rmtree(sdir, ignore_errors=True)
        cmd = [args.bin, "sweep", "--model", mdir, "--prompts", prompts, "--train", str(args.train),
               "--val", str(args.val), "--seed", "7", "--lens-positions", "one", "--out", sdir,
               "--device", args.device]
        if args.device != "cpu":
            cmd += ["--dtype", "f32"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = json.load(open(ref))
        rows = list(csv.DictReader(open(os.path.join(sdir, "summary.csv"))))
        bad, cells = [], 0
        for m, v in r["methods"].items():
            for l in range(L):
                s = next(x for x in rows if x["method"] == m and int(x["source_layer"]) == l
                         and (m != "token_identity" or int(x["target_layer"]) == l))
                cells += 1
                dp = abs(float(s["precision_at_1"]) - v["prec1"][l])
                ds = abs(float(s["surprisal"]) - v["surprisal"][l])
                if dp > 0 or ds > 1e-3:
                    bad.append(f"{m} layer {l}: prec1 {s['precision_at_1']} vs {v['prec1'][l]}, "
                               f"surprisal {s['surprisal']} vs {v['surprisal'][l]}")
        print(f"sweep ({args.train} + {args.val} prompts): {cells} (method, layer) cells, "
              f"{len(bad)} differ" + "".join("\n  " + b for b in bad))
        ok = ok and not bad
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
