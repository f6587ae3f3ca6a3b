"""The experiments through Python against the CLI's own files (the same run, cell for
cell) and the sweep against the independent transformers reference."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURES, ROOT

SWEEP = dict(train=8, val=12, batch=4, seed=5)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    lines = (ROOT / "data" / "prompts.txt").read_text().splitlines()[:20]
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(lines))
    return p


def read_csv(path):
    # the CSV's shortest float text parsed back to the exact f64 (pandas 3's default)
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(path, keep_default_na=False, **exact)


def rust_debug_str(s):
    """The text of a Rust `{:?}` string literal (the CLI prints generations that way)."""
    assert s[0] == s[-1] == '"', s
    out, i, s = [], 0, s[1:-1]
    simple = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
    while i < len(s):
        if s[i] != "\\":
            out.append(s[i])
            i += 1
        elif s[i + 1] == "u":
            end = s.index("}", i)
            out.append(chr(int(s[i + 3:end], 16)))
            i = end + 1
        else:
            out.append(simple[s[i + 1]])
            i += 2
    return "".join(out)


@pytest.mark.parametrize("grid", [False, True])
def test_sweep_dataframes_equal_the_clis_summary_and_samples(qwen, cli, prompts, tmp_path, grid):
    out = tmp_path / "cli"
    extra = ["--grid"] if grid else []
    cli("sweep", "--model", FIXTURES / "tiny-qwen2", "--prompts", prompts, "--out", out,
        *[f"--{k}={v}" for k, v in SWEEP.items()], *extra)
    res = qwen.sweep(prompts, grid=grid, progress=False, **SWEEP)

    want = read_csv(out / "summary.csv")
    assert list(res.summary.columns) == list(want.columns)
    assert len(res.summary) == (4 * 4 if grid else 4) + 8
    pd.testing.assert_frame_equal(res.summary, want, check_exact=True, check_dtype=False)

    samples = read_csv(out / "samples.csv")
    got = res.samples
    assert list(got.columns) == list(samples.columns)
    assert len(got) == len(samples) == 12 * len(want)
    for col in ["index", "position", "num_tokens", "method", "source_layer", "target_layer",
                "source_top1", "pred", "source_token", "pred_token"]:
        assert got[col].astype(str).tolist() == samples[col].astype(str).tolist(), col
    assert (got.prec1.astype(int) == samples.prec1).all()
    # samples.csv writes surprisal with 6 decimals
    np.testing.assert_allclose(got.surprisal, samples.surprisal, rtol=0, atol=5e-7)
    # the long form is what the summary averages
    means = got.groupby(["method", "source_layer", "target_layer"], sort=False).agg(
        precision_at_1=("prec1", "mean"), surprisal=("surprisal", "mean")).reset_index()
    np.testing.assert_allclose(means.precision_at_1, res.summary.precision_at_1)
    np.testing.assert_allclose(means.surprisal, res.summary.surprisal, rtol=1e-6)


def test_sweep_matches_the_transformers_reference():
    import qwen_scope as qs
    ref = json.loads((FIXTURES / "sweep" / "tiny-qwen2.json").read_text())
    model = qs.Model(FIXTURES / "tiny-qwen2", device="cpu")
    res = model.sweep(train=ref["train"], val=ref["val"], seed=ref["seed"], grid=True,
                      lens_positions="one", progress=False)
    s = res.summary
    for method, m in ref["methods"].items():
        for l in range(ref["num_layers"]):
            row = s[(s.method == method) & (s.source_layer == l)
                    & ((method != "token_identity") | (s.target_layer == l))]
            assert len(row) == 1
            assert row.precision_at_1.iloc[0] == m["prec1"][l], (method, l)
            assert abs(row.surprisal.iloc[0] - m["surprisal"][l]) <= 1e-3, (method, l)
    ti = s[s.method == "token_identity"]
    for _, r in ti.iterrows():
        assert r.precision_at_1 == ref["grid"]["prec1"][r.source_layer][r.target_layer]
    first = res.samples.drop_duplicates("index")
    assert first["index"].tolist() == [x["index"] for x in ref["samples"]]
    assert first["source_top1"].tolist() == [x["source_top1"] for x in ref["samples"]]


def test_attributes_dataframes_equal_the_clis_summary(qwen, cli, tmp_path):
    rel = ROOT / "data" / "relations" / "capitals.json"
    out = tmp_path / "attr"
    args = dict(limit=6, batch=4, max_new=3)
    cli("attributes", "--model", FIXTURES / "tiny-qwen2", "--relations", rel, "--all-rows",
        "--source-layers", "0-3:2", "--out", out, *[f"--{k.replace('_', '-')}={v}"
                                                   for k, v in args.items()])
    res = qwen.attributes(rel, all_rows=True, source_layers=[0, 2], progress=False, **args)
    want = read_csv(out / "summary.csv")
    assert list(res.summary.columns) == list(want.columns)
    assert res.summary.relation.tolist() == want.relation.tolist()
    for col in ["source_layer", "target_layer", "evaluated"]:
        assert res.summary[col].tolist() == want[col].tolist(), col
    # summary.csv writes accuracy with 6 decimals
    np.testing.assert_allclose(res.summary.accuracy, want.accuracy, atol=5e-7)
    rows = [json.loads(l) for l in (out / "rows.jsonl").read_text().splitlines()]
    assert res.rows.baseline.tolist() == [r["baseline"] for r in rows]
    cells = res.cells
    assert len(cells) == 6 * 2 * 4
    for r in rows:
        mine = cells[cells.row == r["row"]]
        assert mine.generation.tolist() == [g for per in r["generations"] for g in per]
        assert mine.correct.tolist() == [c for per in r["correct"] for c in per]


def test_attributes_demonstrations_as_the_cli(qwen, cli, tmp_path):
    # a template that starts with its slot: the default prompts have demonstrations
    rel = ROOT / "data" / "relations" / "cities.json"
    out = tmp_path / "attr"
    cli("attributes", "--model", FIXTURES / "tiny-qwen2", "--relations", rel, "--all-rows",
        "--source-layers", "1", "--target-layers", "0", "--limit", "5", "--max-new", "3",
        "--demonstrations", "2", "--demo-seed", "5", "--out", out)
    res = qwen.attributes(rel, all_rows=True, source_layers=1, target_layers=0, limit=5,
                          max_new=3, demonstrations=2, demo_seed=5, progress=False)
    rows = [json.loads(l) for l in (out / "rows.jsonl").read_text().splitlines()]
    want = ["\n".join(f"{d['subject']} => {d['object']}" for d in r["demonstrations"])
            for r in rows]
    assert all(len(r["demonstrations"]) == 2 for r in rows)
    assert res.rows.demonstrations.tolist() == want
    assert res.cells.generation.tolist() == [r["generations"][0][0] for r in rows]
    run = json.loads((out / "run.json").read_text())
    assert (run["demonstrations"]["k"], run["demonstrations"]["seed"]) == (2, 5)


def test_inspect_equals_the_cli(qwen, cli):
    p = cli("inspect", "--model", FIXTURES / "tiny-qwen2", "--source", "Leonardo DiCaprio",
            "--layers", "0-3", "--max-new", "6", "--target-layer", "2")
    df = qwen.inspect("Leonardo DiCaprio", layers="0-3", max_new=6, target_layer=2)
    lines = p.stdout.splitlines()
    head, tail = lines[0].split(" = ", 1)
    assert head == f"source token {df.attrs['position']}"
    token, rest = tail.rsplit("; ", 1)
    assert rust_debug_str(token) == df.attrs["source_token"]
    assert rest == f"target placeholder at token {df.attrs['patch_pos']}"
    for line, r in zip(lines[1:], df.itertuples()):
        assert line.startswith(f"layer {r.source_layer:>2} -> {r.target_layer:>2}: ")
        assert rust_debug_str(line.split(": ", 1)[1]) == r.text
        assert qwen.tokenizer.decode(r.tokens) == r.text
    assert len(df) == len(lines) - 1 == 4
