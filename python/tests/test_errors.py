"""Bad input raises ValueError, FileNotFoundError or RuntimeError with the CLI's message,
and never a panic; the GIL is released while a pass runs; progress and Ctrl-C."""

import threading
import time

import numpy as np
import pytest

import qwen_scope as qs
from conftest import FIXTURES, ROOT

TINY = FIXTURES / "tiny-qwen2"


@pytest.mark.parametrize("spec, exc, msg", [
    ("/no/such/model", FileNotFoundError, "is neither a model folder nor a Hugging Face repo id"),
    (ROOT / "tests", FileNotFoundError, "config.json is missing"),
    ("./nope", FileNotFoundError, "neither a model folder"),
    ("/nope", FileNotFoundError, "neither a model folder"),
])
def test_missing_models(spec, exc, msg):
    with pytest.raises(exc, match=msg) as e:
        qs.Model(spec, device="cpu")
    # the model is named, once
    assert str(e.value).count(str(spec)) == 1, str(e.value)


def test_broken_model_folder(tmp_path):
    for f in ["tokenizer.json", "model.safetensors"]:
        (tmp_path / f).write_bytes((TINY / f).read_bytes())
    (tmp_path / "config.json").write_text('{"hidden_size": "big"}')
    with pytest.raises(ValueError, match="invalid config"):
        qs.Model(tmp_path, device="cpu")


def test_devices():
    with pytest.raises(ValueError, match="unknown device \"tpu\""):
        qs.Model(TINY, device="tpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        qs.Model(TINY, device="cpu", dtype="f8")
    with pytest.raises(ValueError, match="--dtype applies to GPUs only"):
        qs.Model(TINY, device="cpu", dtype="f16")
    if not qs.build_info()["cuda_kernels"]:
        with pytest.raises(RuntimeError, match="CUDA"):
            qs.Model(TINY, device="cuda:0")


@pytest.mark.parametrize("call, exc, msg", [
    (lambda m: m.forward("hi", reads=["blocks.9.hook_resid_post"]), ValueError,
     "layer 9 out of range: the model has 4 blocks"),
    (lambda m: m.forward("hi", reads=["blocks.4.hook_resid_pre"]), ValueError, "out of range"),
    (lambda m: m.forward("hi", reads=["resid_mid.1"]), ValueError, "unknown site \"resid_mid.1\""),
    (lambda m: m.forward("hi", reads=[("embed", 3)]), ValueError, "row 3 out of range"),
    (lambda m: m.forward("hi", reads=[("embed", 0, 99)]), ValueError, "position 99 out of range"),
    (lambda m: m.forward("hi", reads=[("embed", 0, "first")]), ValueError, "positions are"),
    (lambda m: m.forward("hi", writes=[("embed", 0, 0, np.zeros(3))]), ValueError,
     "a vector of 3 values for hidden size 64"),
    (lambda m: m.forward("hi", writes=[("embed", 0, 0, np.zeros(64), "mul")]), ValueError,
     "write mode"),
    (lambda m: m.forward("hi", writes=[("embed", 0)]), ValueError, "a write is"),
    (lambda m: m.forward("hi", logits="first"), ValueError, "logits="),
    (lambda m: m.forward("hi", logits=[(0, 50)]), ValueError, "out of range"),
    (lambda m: m.forward([]), ValueError, "no prompts"),
    (lambda m: m.forward([""]), ValueError, "prompt 0 has no tokens"),
    (lambda m: m.forward([[1, 2, 10**6]]), ValueError, "token"),
    (lambda m: m.forward([[1, -2]]), ValueError, "must be >= 0"),
    (lambda m: m.tokenizer.decode([-1]), ValueError, "must be >= 0"),
    (lambda m: m.generate("hi", max_new=-1), ValueError, "max_new must be >= 0"),
    (lambda m: m.sweep(train=0, progress=False), ValueError, "--train 0: the tuned lens needs at least 1 training prompt"),
    (lambda m: m.sweep(train=200, val=200, progress=False), ValueError,
     r"--train 200 \+ --val 200 needs 400 prompts, but the default prompt set \(data/prompts.txt\) holds 300"),
    (lambda m: m.sweep(val=-1), ValueError, "val must be >= 0"),
    (lambda m: m.sweep(lens_positions="some"), ValueError, "lens_positions"),
    (lambda m: m.sweep("no/such/prompts.txt"), FileNotFoundError, "no such prompt file"),
    (lambda m: m.sweep(["a", ""], train=1, val=1), ValueError, "prompt 1 of the prompt list: the prompt has no tokens"),
    (lambda m: m.attributes("no/such.json"), FileNotFoundError, "no/such.json"),
    (lambda m: m.attributes(ROOT / "data/relations/capitals.json", source_layers="0-9"),
     ValueError, "--source-layers \"0-9\": \"0-9\" reaches layer 4, out of range"),
    (lambda m: m.attributes(ROOT / "data/relations/capitals.json", limit=0), ValueError,
     "--limit 0: --limit must be at least 1"),
    (lambda m: m.attributes(ROOT / "data/relations/capitals.json", target="no placeholder"),
     ValueError, "placeholder"),
    (lambda m: m.inspect("Paris", position=40), ValueError,
     "--position 40 out of range: the source \"Paris\" has"),
    (lambda m: m.inspect("", layers="0"), ValueError, "empty source text"),
    (lambda m: m.inspect("Paris", target_layer=7), ValueError,
     "--target-layer 7 is out of range: the model has 4 blocks"),
    (lambda m: m.inspect("Paris", mapping="no/such.safetensors"), FileNotFoundError, "no/such"),
])
def test_bad_input_raises_a_clear_exception(qwen, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(qwen)


def test_the_gil_is_released_while_a_pass_runs(qwen):
    """Another Python thread runs while the engine works: with the GIL held it could not
    take a single step until the sweep returned."""
    done = threading.Event()
    steps_during = []

    def work():
        qwen.sweep(progress=False)  # 300 prompts: long enough to watch
        done.set()

    t = threading.Thread(target=work)
    t.start()
    n = 0
    while not done.is_set():
        n += 1
        time.sleep(0.0005)
    t.join()
    steps_during.append(n)
    assert steps_during[0] > 20, steps_during


def test_progress_reports_and_an_exception_in_it_stops_the_run(qwen):
    seen = []

    def record(phase, done, total):
        seen.append((phase, done, total))

    qs._experiments._native.sweep(qwen._native, None, 4, 6, 1, False, qs.TOKEN_IDENTITY_PROMPT,
                                  2, "all", False, record)
    assert seen[0] == ("tuned lens", 0, 4) and seen[-1] == ("evaluating", 6, 6)
    assert ("tuned lens", 4, 4) in seen and ("evaluating", 2, 6) in seen

    def interrupt(phase, done, total):
        if phase == "evaluating" and done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qs._experiments._native.sweep(qwen._native, None, 4, 6, 1, False,
                                      qs.TOKEN_IDENTITY_PROMPT, 2, "all", False, interrupt)


def test_without_pandas_the_experiments_return_numpy_columns(qwen, monkeypatch):
    monkeypatch.setattr(qs._experiments, "_pd", None)
    res = qwen.sweep(train=4, val=3, progress=False)
    assert isinstance(res.summary, dict) and isinstance(res.summary["surprisal"], np.ndarray)
    assert res.samples["method"].dtype == object and len(res.samples["pred"]) == 3 * 12


def test_ctrl_c_stops_a_run_without_a_progress_bar(qwen):
    """SIGINT while the engine works (GIL released) is raised at the next batch."""
    import os
    import signal

    # a run of ~1,700 evaluated prompts in batches of 2 (~2 s here): long next to the
    # 0.05 s before the signal and one batch after it, so a loaded machine cannot make a
    # run that stops at its next batch look like one that finished
    prompts = [l for l in (ROOT / "data/prompts.txt").read_text().splitlines() if l.strip()]
    prompts = prompts * 6
    timer = threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    t = time.time()
    with pytest.raises(KeyboardInterrupt):
        qwen.sweep(prompts, train=20, progress=False, batch=2)
    timer.join()
    stopped_after = time.time() - t
    t = time.time()
    qwen.sweep(prompts, train=20, progress=False, batch=2)
    whole = time.time() - t
    # without the check the run would finish and KeyboardInterrupt come after it
    assert stopped_after < 0.5 * whole, (stopped_after, whole)
