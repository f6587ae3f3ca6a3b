#!/usr/bin/env python3
"""Write a model folder (Qwen2, Qwen3 or Llama; safetensors + config.json + a byte-level BPE
tokenizer.json) as a GGUF file laid out the way llama.cpp's convert_hf_to_gguf.py lays out
these architectures: the test input of tools/convert_gguf.py, the way back.

Usage:
    python tools/gguf_from_model.py MODEL_DIR OUT.gguf

Needs only numpy and gguf (`pip install --no-deps gguf numpy pyyaml`, as get_model.sh's
.venv-tools has them). Every tensor is written as F32 (the folder's f16/bf16 values widen
exactly), so converting the GGUF back must give the folder's weights bit for bit.

What it follows from llama.cpp (convert_hf_to_gguf.py / conversion/qwen.py, gguf-py):
  * general.architecture qwen2 | qwen3 | llama; <arch>.block_count, context_length,
    embedding_length, feed_forward_length, attention.head_count(_kv),
    attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count, and for an
    explicit head_dim attention.key_length / value_length (Qwen3: 128 on the releases);
  * tensor names token_embd, output_norm, output (untied only), blk.N.attn_norm,
    attn_q/k/v(.bias), attn_q_norm / attn_k_norm (Qwen3), attn_output(.bias), ffn_norm,
    ffn_gate/up/down;
  * Q and K rows permuted for llama (LlamaModel.permute), not for qwen2 or qwen3 (Qwen3Model
    derives from Qwen2Model, which has no permutation);
  * the tokenizer as tokenizer.ggml.model "gpt2", pre "qwen2" (llama.cpp's name for the
    Qwen2/Qwen3 pre-tokenizer), tokens, token types (3 = control for special added tokens),
    merges, bos/eos/padding ids, add_bos_token false.
"""

import json
import os
import sys

import numpy as np

ARCH = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama"}


def read_safetensors(folder):
    """{name: f32 ndarray} of every safetensors file in folder (F32, F16 and BF16)."""
    out = {}
    for fn in sorted(os.listdir(folder)):
        if not fn.endswith(".safetensors") or fn.startswith("reference"):
            continue
        data = open(os.path.join(folder, fn), "rb").read()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        body = data[8 + n:]
        for name, t in header.items():
            if name == "__metadata__":
                continue
            a, b = t["data_offsets"]
            raw = body[a:b]
            if t["dtype"] == "F32":
                v = np.frombuffer(raw, "<f4")
            elif t["dtype"] == "F16":
                v = np.frombuffer(raw, "<f2").astype(np.float32)
            elif t["dtype"] == "BF16":
                v = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                sys.exit("unsupported dtype %s of %s" % (t["dtype"], name))
            out[name] = v.reshape(t["shape"]).astype(np.float32)
    return out


def llama_permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    import gguf

    folder, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(folder, "config.json")))
    arch = ARCH[cfg["architectures"][0]]
    tensors = read_safetensors(folder)
    L, E, H = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    D = cfg.get("head_dim") or E // H
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")

    w = gguf.GGUFWriter(out, arch)
    w.add_name(os.path.basename(os.path.normpath(folder)))
    w.add_block_count(L)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(E)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(D)
    if cfg.get("head_dim"):
        w.add_key_length(D)
        w.add_value_length(D)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tok = json.load(open(os.path.join(folder, "tokenizer.json")))
    vocab = tok["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for a in tok.get("added_tokens", []):
        types[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    gen_path = os.path.join(folder, "generation_config.json")
    gen = json.load(open(gen_path)) if os.path.exists(gen_path) else {}
    eos = cfg.get("eos_token_id", gen.get("eos_token_id"))
    if eos is not None:
        w.add_eos_token_id(eos)
    if gen.get("pad_token_id") is not None:
        w.add_pad_token_id(gen["pad_token_id"])
    w.add_add_bos_token(False)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.bias": "attn_output.bias",
        "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for l in range(L):
        for hf, gg in per_layer.items():
            names["model.layers.%d.%s" % (l, hf)] = "blk.%d.%s" % (l, gg)
    for name in sorted(tensors):
        if name not in names:
            sys.exit("no GGUF name for %s" % name)
        v = tensors[name]
        if arch == "llama" and name.endswith("q_proj.weight"):
            v = llama_permute(v, H)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            v = llama_permute(v, KV)
        w.add_tensor(names[name], np.ascontiguousarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote %s: %s, %d tensors" % (out, arch, len(tensors)))


if __name__ == "__main__":
    main()
