"""Shared fixtures of the Python tests: the committed tiny models and their transformers
references (tests/fixtures, made by tools/make_fixtures.py), read without torch."""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import qwen_scope as qs

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
TINY_MODELS = ["tiny-qwen2", "tiny-qwen2-untied", "tiny-llama", "tiny-qwen3",
               "tiny-qwen3-untied-bias"]

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "U32": np.uint32, "F16": np.float16}


def read_safetensors(path):
    """The tensors of a safetensors file as numpy arrays (the format is an 8-byte header
    length, a JSON header, then the raw little-endian data)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=_DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


class Reference:
    def __init__(self, name):
        d = FIXTURES / name
        self.json = json.loads((d / "reference.json").read_text())
        self.t = read_safetensors(d / "reference.safetensors")

    def __getitem__(self, key):
        return self.t[key]


@pytest.fixture(scope="session", params=TINY_MODELS)
def tiny(request):
    """(model, reference) for each tiny fixture."""
    name = request.param
    return qs.Model(FIXTURES / name, device="cpu"), Reference(name)


@pytest.fixture(scope="session")
def qwen():
    return qs.Model(FIXTURES / "tiny-qwen2", device="cpu")


def _cargo_target():
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


@pytest.fixture(scope="session")
def cli():
    """The qwen-scope binary: $QWEN_SCOPE_BIN, else target/release/qwen-scope (built by
    `cargo test --release` / `cargo build --release`, which tools/test.sh runs first)."""
    path = Path(os.environ.get("QWEN_SCOPE_BIN", _cargo_target() / "release" / "qwen-scope"))
    if not path.is_file():
        pytest.fail(f"{path} not found: run `cargo build --release` first (or set QWEN_SCOPE_BIN)")

    def run(*args):
        p = subprocess.run([str(path), *map(str, args), "--device", "cpu"],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return p
    return run


@pytest.fixture(scope="session")
def rust_writes():
    """python/examples/rust_writes.rs, built once: the Rust API's answer to a request."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo not found: the Rust-API comparison builds python/examples/rust_writes.rs")
    subprocess.run([cargo, "build", "--release", "-q", "-p", "qwen-scope-python",
                    "--example", "rust_writes"], cwd=ROOT, check=True)
    exe = _cargo_target() / "release" / "examples" / "rust_writes"

    def run(spec, tmp_path):
        f = tmp_path / "spec.json"
        f.write_text(json.dumps(spec))
        p = subprocess.run([str(exe), str(f)], capture_output=True, text=True, check=True)
        return json.loads(p.stdout)
    return run
