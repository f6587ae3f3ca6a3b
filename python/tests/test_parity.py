"""Parity with transformers through the Python API, on the committed references
(tests/fixtures/*/reference.safetensors): logits and every residual state, single and
batched, the hooked replace / add writes, and greedy generation with a patch."""

import numpy as np

TOL = 1e-4

# reference name of each site -> the TransformerLens name read through the Python API
def tl_names(num_layers):
    names = {"embed": "hook_embed", "final_norm": "ln_final.hook_normalized"}
    names.update({f"resid_post.{l}": f"blocks.{l}.hook_resid_post" for l in range(num_layers)})
    return names


def close(a, b, what):
    diff = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    assert diff <= TOL, f"{what}: max |diff| {diff:.3g} > {TOL}"
    return diff


def test_tokenizer_matches_transformers(tiny):
    model, ref = tiny
    ids = model.tokenizer.encode(ref.json["single"])
    assert ids == ref["single.input_ids"].reshape(-1).tolist()
    assert model.tokenizer.decode(ids) == ref.json["single"]


def test_single_prompt_logits_and_every_state(tiny):
    model, ref = tiny
    ids = ref["single.input_ids"].reshape(-1).tolist()
    logits, cache = model.run_with_cache([ids])
    n = len(ids)
    close(logits[0], ref["single.logits"].reshape(n, -1), "logits")
    for site, name in tl_names(model.num_layers).items():
        close(cache[name][0], ref[f"single.{site}"].reshape(n, -1), site)
    # the qwen-scope names and the TransformerLens resid_pre names read the same states
    out = model.forward([ids], reads=["embed", "blocks.1.hook_resid_pre", "resid_post.0"],
                        logits=None)
    assert out.logits is None
    np.testing.assert_array_equal(out["blocks.0.hook_resid_pre"], cache["hook_embed"])
    np.testing.assert_array_equal(out["blocks.1.hook_resid_pre"], out["resid_post.0"])


def test_batched_rows_of_unequal_length_match_padded_reference(tiny):
    model, ref = tiny
    padded, mask = ref["batch.input_ids"], ref["batch.attention_mask"]
    offsets = [int(np.argmax(m == 1)) for m in mask]
    rows = [p[o:].tolist() for p, o in zip(padded, offsets)]
    assert len({len(r) for r in rows}) == len(rows), "rows must differ in length"
    sites = tl_names(model.num_layers)
    out = model.forward(rows, reads=list(sites.values()), logits="all")
    for i, (row, off) in enumerate(zip(rows, offsets)):
        n = len(row)
        close(out.logits[i, :n], ref["batch.logits"][i, off:], f"row {i} logits")
        assert np.isnan(out.logits[i, n:]).all(), "positions past a row's end are NaN"
        for site, name in sites.items():
            close(out[name][i, :n], ref[f"batch.{site}"][i, off:], f"row {i} {site}")
    # the last logits of each row are the "all" logits at its last position
    last = model.forward(rows, logits="last").logits
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(last[i], out.logits[i, len(row) - 1])


def test_replace_and_add_writes_match_hooked_transformers(tiny):
    model, ref = tiny
    ids = ref["single.input_ids"].reshape(-1).tolist()
    layer, pos = ref.json["patch_layer"], ref.json["patch_pos"]
    v = ref["patch.vector"].reshape(-1)
    n = len(ids)
    for mode, key in [("replace", "patch"), ("add", "patch_add")]:
        out = model.forward([ids], writes=[(f"blocks.{layer}.hook_resid_post", 0, pos, v, mode)],
                            reads=[f"resid_post.{l}" for l in range(model.num_layers)],
                            logits="all")
        close(out.logits[0], ref[f"{key}.logits"].reshape(n, -1), f"{mode} logits")
        if mode == "replace":
            np.testing.assert_array_equal(out.state(f"resid_post.{layer}", 0, pos), v)
            for l in range(model.num_layers):
                close(out[f"resid_post.{l}"][0], ref[f"patch.resid_post.{l}"].reshape(n, -1),
                      f"patched resid_post.{l}")


def test_greedy_generation_with_and_without_a_prompt_patch(tiny):
    model, ref = tiny
    ids = ref["single.input_ids"].reshape(-1).tolist()
    k = ref.json["num_generate"]
    plain = model.generate([ids], max_new=k)
    assert plain[0].tokens == ref["generate.new_tokens"].reshape(-1).tolist()
    layer, pos = ref.json["patch_layer"], ref.json["patch_pos"]
    write = (f"resid_post.{layer}", 0, pos, ref["patch.vector"].reshape(-1))
    patched = model.generate(ids, max_new=k, writes=[write])
    assert patched.tokens == ref["generate_patched.new_tokens"].reshape(-1).tolist()
    assert patched.text == model.tokenizer.decode(patched.tokens)
    assert patched.tokens != plain[0].tokens, "the patch must change the continuation"


def test_hidden_states_are_transformers_tuple(tiny):
    model, ref = tiny
    ids = ref["single.input_ids"].reshape(-1).tolist()
    n, L = len(ids), model.num_layers
    logits, hidden = model.hidden_states(ids)
    assert hidden.shape == (L + 1, 1, n, model.config.hidden_size)
    close(logits[0], ref["single.logits"].reshape(n, -1), "logits")
    # transformers' tuple: embeddings, blocks 0..L-2, then the final-normed state
    names = ["embed"] + [f"resid_post.{l}" for l in range(L - 1)] + ["final_norm"]
    for i, site in enumerate(names):
        close(hidden[i, 0], ref[f"single.{site}"].reshape(n, -1), f"hidden_states[{i}]")
