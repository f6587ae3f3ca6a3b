"""Writes through Python: reading a state and writing it back changes nothing, bit for
bit, and every write gives exactly what the Rust API gives for the same request."""

import numpy as np
import pytest

PROMPTS = ["The bridge was built in 1887.", "Hi there."]


def all_sites(model):
    return ["embed"] + [f"resid_post.{l}" for l in range(model.num_layers)] + ["final_norm"]


def test_reading_a_state_and_writing_it_back_leaves_logits_bit_identical(qwen):
    base = qwen.forward(PROMPTS, reads=all_sites(qwen), logits="all")
    for site in all_sites(qwen):
        for row, pos in [(0, 0), (0, 5), (1, -1)]:
            v = base.state(site, row, pos)
            for mode, value in [("replace", v), ("add", np.zeros_like(v))]:
                out = qwen.forward(PROMPTS, writes=[(site, row, pos, value, mode)], logits="all")
                assert np.array_equal(out.logits, base.logits, equal_nan=True), (site, row, pos, mode)
    # and a real change does change them (the comparison above can fail)
    v = base.state("resid_post.1", 0, 5)
    out = qwen.forward(PROMPTS, writes=[("resid_post.1", 0, 5, v + 1.0, "replace")], logits="all")
    assert not np.array_equal(out.logits[0], base.logits[0], equal_nan=True)
    np.testing.assert_array_equal(out.logits[1], base.logits[1])  # other rows untouched


def test_writes_match_the_rust_api_bit_for_bit(qwen, rust_writes, tmp_path):
    from conftest import FIXTURES
    rows = [qwen.tokenizer.encode(p) for p in PROMPTS]
    rng = np.random.default_rng(0)
    h = qwen.config.hidden_size
    writes = [
        ("resid_post.1", 0, 3, rng.standard_normal(h).astype(np.float32), "replace"),
        ("blocks.2.hook_resid_post", 1, 1, rng.standard_normal(h).astype(np.float32), "add"),
        ("hook_embed", 0, 0, rng.standard_normal(h).astype(np.float32), "add"),
        ("ln_final.hook_normalized", 1, 2, rng.standard_normal(h).astype(np.float32), "replace"),
    ]
    reads = ["resid_post.2", "final_norm"]
    out = qwen.forward(rows, writes=writes, reads=reads, logits="all")
    canonical = {"resid_post.1": "resid_post.1", "blocks.2.hook_resid_post": "resid_post.2",
                 "hook_embed": "embed", "ln_final.hook_normalized": "final_norm"}
    spec = {
        "model": str(FIXTURES / "tiny-qwen2"), "rows": rows, "reads": reads,
        "writes": [{"site": canonical[s], "row": r, "pos": p,
                    "bits": v.view(np.uint32).tolist(), "add": m == "add"}
                   for s, r, p, v, m in writes],
    }
    rust = rust_writes(spec, tmp_path)
    assert len(rust["logits"]) == sum(len(r) for r in rows)
    for l in rust["logits"]:
        mine = out.logits[l["row"], l["pos"]]
        assert np.array_equal(mine.view(np.uint32), np.array(l["bits"], np.uint32)), l["pos"]
    assert len(rust["states"]) == 2 * sum(len(r) for r in rows)
    for s in rust["states"]:
        mine = out[s["site"]][s["row"], s["pos"]]
        assert np.array_equal(mine.view(np.uint32), np.array(s["bits"], np.uint32)), s["site"]
    # the writes did something: the Rust answer differs from the unpatched pass
    plain = qwen.forward(rows, logits="all")
    assert not np.array_equal(plain.logits, out.logits, equal_nan=True)


def test_chosen_logit_positions(qwen):
    full = qwen.forward(PROMPTS, logits="all").logits
    at = [(1, 0), (0, -1), (0, 2)]
    out = qwen.forward(PROMPTS, logits=at).logits
    n0 = len(qwen.tokenizer.encode(PROMPTS[0]))
    for k, (r, p) in enumerate([(1, 0), (0, n0 - 1), (0, 2)]):
        np.testing.assert_array_equal(out[k], full[r, p])


def test_generate_keeps_the_patch_in_the_kv_cache(qwen):
    """A patch on the prompt changes every later step through the cache: the patched
    continuation equals feeding the patched prompt's own greedy tokens back by hand."""
    prompt = qwen.tokenizer.encode("The bridge was built in")
    v = 10 * np.random.default_rng(1).standard_normal(qwen.config.hidden_size).astype(np.float32)
    write = ("resid_post.1", 0, 2, v, "replace")
    gen = qwen.generate(prompt, max_new=5, writes=[write])
    ids = list(prompt)
    for _ in range(5):
        logits = qwen.forward([ids], writes=[write], logits="last").logits[0]
        ids.append(int(np.argmax(logits)))
    assert gen.tokens == ids[len(prompt):]
    assert gen.tokens != qwen.generate(prompt, max_new=5).tokens


@pytest.mark.parametrize("pos", [0, 4])
def test_hook_resid_pre_is_the_previous_block_output(qwen, pos):
    out = qwen.forward(PROMPTS[0], reads=["blocks.3.hook_resid_pre", "resid_post.2"])
    np.testing.assert_array_equal(out["blocks.3.hook_resid_pre"][0, pos], out["resid_post.2"][0, pos])
