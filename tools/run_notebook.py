#!/usr/bin/env python3
"""Executes examples/patchscopes.ipynb top to bottom (nbclient), as CI does; any cell that
raises fails the run. The executed copy goes to --out for a look at its outputs.

    QWEN_SCOPE_MODEL=models/qwen2.5-coder-0.5b QWEN_SCOPE_SAMPLES=8 \\
        .venv-py/bin/python tools/run_notebook.py --out results/patchscopes.ipynb
"""

import argparse
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser()
ap.add_argument("notebook", nargs="?", default=ROOT / "examples" / "patchscopes.ipynb")
ap.add_argument("--out", type=Path)
ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
a = ap.parse_args()

nb = nbformat.read(a.notebook, as_version=4)
t = time.time()
NotebookClient(nb, timeout=a.timeout, kernel_name="python3",
               resources={"metadata": {"path": str(ROOT)}}).execute()
print(f"{a.notebook}: {len(nb.cells)} cells executed in {time.time() - t:.1f}s")
if a.out:
    a.out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, a.out)
