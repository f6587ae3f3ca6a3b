#!/usr/bin/env bash
# The cost of the Python boundary: the same next-token sweep through the CLI and through
# `import qwen_scope`, in one run, alternating, each as a fresh process (model load
# included), best of REPEAT; then the ratio. The Python run's summary is checked equal to
# the CLI's summary.csv, so both did the same work; with no cell evaluated it prints no ratio
# and exits with status 3, saying why (tools/bench_ratio.py).
#
#   tools/bench_python.sh [MODEL] [sweep flags...]    (default: models/qwen2.5-coder-0.5b,
#                                                     the default sweep: 150 + 150 prompts)
#   PYTHON=.venv-py/bin/python QWEN_SCOPE_BIN=target/release/qwen-scope REPEAT=2
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/qwen2.5-coder-0.5b}
shift || true
PYTHON=${PYTHON:-.venv-py/bin/python}
BIN=${QWEN_SCOPE_BIN:-target/release/qwen-scope}
REPEAT=${REPEAT:-2}
[ -x "$BIN" ] || { echo "$BIN not found: cargo build --release" >&2; exit 1; }
"$PYTHON" -c 'import qwen_scope' || { echo "qwen_scope not importable by $PYTHON: pip install ." >&2; exit 1; }

exec "$PYTHON" - "$MODEL" "$BIN" "$REPEAT" "$@" <<'PYEOF'
import os, subprocess, sys, tempfile, time
import pandas as pd

model, binary, repeat, flags = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]

def kwargs(flags):
    """CLI sweep flags -> Model.sweep keywords (--train 40 -> train=40)."""
    out, it = {}, iter(flags)
    for f in it:
        k = f.lstrip("-").replace("-", "_")
        out[k] = True if k in ("grid", "reference") else next(it)
        if k in ("train", "val", "seed", "batch"):
            out[k] = int(out[k])
    return out

PY = f"""
import time, sys
t0 = time.time()
import qwen_scope as qs
m = qs.Model({model!r}, device="cpu", quiet=True)
t1 = time.time()
r = m.sweep(progress=False, **{kwargs(flags)!r})
t2 = time.time()
r.summary.to_csv(sys.argv[1], index=False)
print(f"{{t1 - t0:.3f}} {{t2 - t1:.3f}}")
"""

cli_times, py_times, py_sweep = [], [], []
with tempfile.TemporaryDirectory() as tmp:
    for i in range(repeat):
        out = os.path.join(tmp, f"cli{i}")
        t = time.time()
        subprocess.run([binary, "sweep", "--model", model, "--device", "cpu", "--out", out, *flags],
                       check=True, capture_output=True)
        cli_times.append(time.time() - t)
        csv = os.path.join(tmp, f"py{i}.csv")
        t = time.time()
        p = subprocess.run([sys.executable, "-c", PY, csv], check=True, capture_output=True, text=True)
        py_times.append(time.time() - t)
        load, sweep = map(float, p.stdout.split())
        py_sweep.append(sweep)
        want = pd.read_csv(os.path.join(out, "summary.csv"))
        got = pd.read_csv(csv)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
        cells = len(pd.read_csv(os.path.join(out, "samples.csv")))
        print(f"run {i + 1}: CLI {cli_times[-1]:.2f}s, Python {py_times[-1]:.2f}s "
              f"(load {load:.2f}s, sweep {sweep:.2f}s)", flush=True)

c, p = min(cli_times), min(py_times)
sys.path.insert(0, "tools")
from bench_ratio import NOTHING_TO_COMPARE, Refusal, speedup  # noqa: E402

print(f"model {model}, sweep flags {' '.join(flags) or '(defaults)'}, best of {repeat}")
print(f"CLI    {c:.2f}s  (process: load, sweep, tables and plots)")
print(f"Python {p:.2f}s  (process: import, load, sweep into DataFrames; sweep alone {min(py_sweep):.2f}s)")
# both sides did the same work (equal summaries); a ratio needs some (samples.csv cells)
try:
    x = speedup(cells, p, cells, c, unit="cells", base="Python",
                ours="CLI", hint="the sweep evaluated nothing: give it --val > 0")
except Refusal as e:
    print(e)
    sys.exit(NOTHING_TO_COMPARE)
print(f"ratio Python / CLI = {x:.3f}  ({(x - 1) * 100:+.1f}%)")
PYEOF
