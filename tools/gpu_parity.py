#!/usr/bin/env python3
"""Whole-model parity of qwen-scope's CUDA forward pass with transformers, on a random
model with the real Qwen2-0.5B shapes. Run by tools/gpu-check.sh on a CUDA machine that has
PyTorch and transformers (no network, no Rust toolchain needed).

1. Makes OUT/qwen2-0.5b-random (unless it exists): Qwen2ForCausalLM with hidden 896, 24
   blocks, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, tied embeddings, random
   weights (seeded), RMSNorm weights and q/k/v biases perturbed away from transformers'
   1 and 0 so that a missing norm or bias shows; saved in f32 with the tokenizer.json of
   tests/fixtures/tiny-qwen2 (the test feeds token ids, never text).
2. Runs transformers on the GPU (eager attention, TF32 off) in f32, bf16 and f16 on two
   random 32-token prompts and writes OUT/qwen2-0.5b-reference.safetensors:
     input_ids [2, 32] i64; {f32,bf16,f16}.logits [2, 32, vocab] and
     {f32,bf16,f16}.hidden.{i} [2, 32, 896] (transformers' hidden_states[i], i = 0..24),
   all stored as f32.
3. Runs the prebuilt test `qwen2_05b_parity` (tests/cuda_model.rs) with
   QWEN_SCOPE_PARITY_MODEL / QWEN_SCOPE_PARITY_REF pointing at them; it asserts f32 logits
   and states within 1e-3 relative of transformers' f32, and bf16/f16 top-1 agreement
   >= 99% (near-ties allowed) and relative error <= max(2e-2, 1.25 x transformers' own
   half-precision error), and prints a table.

Usage: tools/gpu_parity.py --out OUT --test-bin gpu-bin/cuda_model [--repo .]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

SHAPES = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
    hidden_act="silu",
    initializer_range=0.02,
)
ROPE_THETA = 1000000.0
ROWS, SEQ = 2, 32


def log(msg):
    print(f"[gpu_parity] {msg}", flush=True)


def transformers_version():
    import transformers

    parts = transformers.__version__.split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def dtype_kwarg(dtype):
    """from_pretrained's dtype argument: `dtype` from 4.56, `torch_dtype` before."""
    major, minor = transformers_version()
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def make_config():
    from transformers import Qwen2Config

    try:
        cfg = Qwen2Config(**SHAPES, rope_theta=ROPE_THETA)
    except TypeError:
        cfg = Qwen2Config(
            **SHAPES, rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}
        )
    text = json.dumps(cfg.to_dict())
    if "1000000" not in text:  # transformers 5 keeps it under rope_parameters
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    cfg.architectures = ["Qwen2ForCausalLM"]
    return cfg


def make_model(model_dir, repo, seed):
    import torch
    from transformers import Qwen2ForCausalLM

    if os.path.isfile(os.path.join(model_dir, "config.json")):
        log(f"reusing {model_dir}")
        return
    t0 = time.time()
    torch.manual_seed(seed)
    cfg = make_config()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = Qwen2ForCausalLM(cfg).float()
    g = torch.Generator(device=dev).manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g, device=dev))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g, device=dev))
    model = model.cpu()
    os.makedirs(model_dir, exist_ok=True)
    try:
        model.save_pretrained(model_dir, safe_serialization=True, max_shard_size="10GB")
    except TypeError:
        model.save_pretrained(model_dir, max_shard_size="10GB")
    shutil.copy(
        os.path.join(repo, "tests", "fixtures", "tiny-qwen2", "tokenizer.json"),
        os.path.join(model_dir, "tokenizer.json"),
    )
    n = sum(p.numel() for p in model.parameters())
    log(f"made {model_dir}: {n / 1e6:.1f} M parameters in {time.time() - t0:.1f} s")
    del model


def run_hf(model_dir, dtype, ids):
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(
        model_dir, attn_implementation="eager", **dtype_kwarg(dtype)
    )
    model = model.to(device="cuda", dtype=dtype).eval()
    with torch.no_grad():
        out = model(input_ids=ids.cuda(), output_hidden_states=True, use_cache=False)
    logits = out.logits.float().cpu().contiguous()
    hidden = [h.float().cpu().contiguous() for h in out.hidden_states]
    del model, out
    torch.cuda.empty_cache()
    return logits, hidden


def make_reference(model_dir, ref_path, seed):
    import torch
    from safetensors.torch import save_file

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    g = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(0, SHAPES["vocab_size"], (ROWS, SEQ), generator=g, dtype=torch.int64)
    tensors = {"input_ids": ids}
    info = {}
    base = None
    for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)]:
        t0 = time.time()
        logits, hidden = run_hf(model_dir, dtype, ids)
        if not torch.isfinite(logits).all():
            log(f"transformers {name}: non-finite logits, not used as a reference")
            continue
        tensors[f"{name}.logits"] = logits
        for i, h in enumerate(hidden):
            tensors[f"{name}.hidden.{i}"] = h
        if base is None:
            base = logits
        rel = ((logits - base).abs().amax(-1) / base.abs().amax(-1)).max().item()
        top1 = (logits.argmax(-1) == base.argmax(-1)).float().mean().item()
        info[name] = dict(seconds=round(time.time() - t0, 2), rel_vs_f32=rel, top1_vs_f32=top1)
        log(f"transformers {name}: {time.time() - t0:.1f} s, rel err vs f32 {rel:.3e}, "
            f"top-1 vs f32 {100 * top1:.1f}%")
    save_file(tensors, ref_path)
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--test-bin", help="prebuilt tests/cuda_model.rs binary (gpu-bin/cuda_model)")
    ap.add_argument("--repo", default=os.path.dirname(HERE), help="qwen-scope source tree")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-only", action="store_true", help="do not run the test binary")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers

    if not torch.cuda.is_available():
        log("torch sees no CUDA device")
        return 2
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    model_dir = os.path.join(out, "qwen2-0.5b-random")
    ref_path = os.path.join(out, "qwen2-0.5b-reference.safetensors")
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.cuda.get_device_name(0)}")
    make_model(model_dir, args.repo, args.seed)
    info = make_reference(model_dir, ref_path, args.seed)
    meta = dict(
        torch=torch.__version__,
        transformers=transformers.__version__,
        gpu=torch.cuda.get_device_name(0),
        rows=ROWS,
        seq=SEQ,
        references=info,
    )
    with open(os.path.join(out, "qwen2-0.5b-reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
    if args.reference_only or not args.test_bin:
        return 0
    env = dict(os.environ, QWEN_SCOPE_PARITY_MODEL=model_dir, QWEN_SCOPE_PARITY_REF=ref_path)
    cmd = [args.test_bin, "qwen2_05b_parity", "--exact", "--ignored", "--nocapture",
           "--test-threads=1"]
    log(" ".join(cmd))
    sys.stdout.flush()
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
