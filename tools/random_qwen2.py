"""Write a random-weight Qwen2 model folder with real model shapes, for speed and parity at scale.

    python tools/random_qwen2.py --shape qwen2-0.5b --out models/qwen2-0.5b-random [--dtype f16]

Needs numpy only (pip install numpy). Weights are N(0, 0.02), norm weights 1 + 0.1 N(0, 1),
q/k/v biases 0.1 N(0, 1), seeded, so every run writes the same files. The tokenizer is the
small fixture tokenizer (its 512 ids are valid in any of these vocabularies): these models are
for timing and numerical parity, not for text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_gguf import write_safetensors  # noqa: E402

SHAPES = {
    # hidden, blocks, heads, kv heads, intermediate, vocab, tied
    "qwen2-0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "qwen2-1.5b": (1536, 28, 12, 2, 8960, 151936, True),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-0.5b")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import numpy as np

    hidden, blocks, heads, kv_heads, inter, vocab, tied = SHAPES[args.shape]
    head_dim = hidden // heads
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(hidden, dtype=np.float32)).astype(np.float32)

    def bias(n):
        return (0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    t = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": norm()}
    if not tied:
        t["lm_head.weight"] = w(vocab, hidden)
    for l in range(blocks):
        p = f"model.layers.{l}"
        t[f"{p}.input_layernorm.weight"] = norm()
        t[f"{p}.post_attention_layernorm.weight"] = norm()
        t[f"{p}.self_attn.q_proj.weight"] = w(heads * head_dim, hidden)
        t[f"{p}.self_attn.q_proj.bias"] = bias(heads * head_dim)
        for n in ("k", "v"):
            t[f"{p}.self_attn.{n}_proj.weight"] = w(kv_heads * head_dim, hidden)
            t[f"{p}.self_attn.{n}_proj.bias"] = bias(kv_heads * head_dim)
        t[f"{p}.self_attn.o_proj.weight"] = w(hidden, heads * head_dim)
        t[f"{p}.mlp.gate_proj.weight"] = w(inter, hidden)
        t[f"{p}.mlp.up_proj.weight"] = w(inter, hidden)
        t[f"{p}.mlp.down_proj.weight"] = w(hidden, inter)

    os.makedirs(args.out, exist_ok=True)
    write_safetensors(os.path.join(args.out, "model.safetensors"), t, args.dtype, {"format": "pt"})
    dtype_name = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[args.dtype]
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": blocks,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "use_sliding_window": False,
        "torch_dtype": dtype_name,
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    fixture = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny-qwen2")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(fixture, name), os.path.join(args.out, name))
    n_params = sum(a.size for a in t.values())
    print(f"wrote {args.out}: {args.shape}, {n_params / 1e6:.1f}M parameters, {args.dtype}, {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
