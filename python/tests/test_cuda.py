"""The CUDA backend through Python, where a GPU is usable (skipped, saying why, elsewhere):
f32 on the GPU against the CPU reference within 1e-4 x max(1, max|cpu|), as
tests/cuda_model.rs does for the Rust API, and writes and generation alike.

With QWEN_SCOPE_EXPECT_GPU=1 (tools/test_cuda_emulated.sh sets it, with the emulated driver
on LD_LIBRARY_PATH) a missing GPU or kernels fail these tests instead of skipping them."""

import os

import numpy as np
import pytest

import qwen_scope as qs
from conftest import FIXTURES, TINY_MODELS


def gpu_or_skip(name):
    give_up = pytest.fail if os.environ.get("QWEN_SCOPE_EXPECT_GPU") == "1" else pytest.skip
    if not qs.build_info()["cuda_kernels"]:
        give_up("this build has no CUDA kernels (nvcc was not found at build time)")
    try:
        return qs.Model(FIXTURES / name, device="cuda", dtype="f32", quiet=True)
    except RuntimeError as e:
        give_up(f"no usable GPU: {e}")


def close(gpu, cpu, what, tol=1e-4):
    bound = tol * max(1.0, float(np.nanmax(np.abs(cpu))))
    diff = float(np.nanmax(np.abs(gpu - cpu)))
    assert diff <= bound, f"{what}: {diff:.3g} > {bound:.3g}"


@pytest.mark.parametrize("name", TINY_MODELS)
def test_gpu_f32_matches_the_cpu(name):
    gpu = gpu_or_skip(name)
    cpu = qs.Model(FIXTURES / name, device="cpu")
    assert gpu.device.startswith("cuda:0")
    prompts = ["The bridge was built in 1887.", "Hi there."]
    sites = ["embed"] + [f"resid_post.{l}" for l in range(cpu.num_layers)] + ["final_norm"]
    v = np.random.default_rng(0).standard_normal(cpu.config.hidden_size).astype(np.float32)
    writes = [("resid_post.1", 0, 3, v, "replace"), ("resid_post.2", 1, 1, v, "add")]
    g = gpu.forward(prompts, reads=sites, writes=writes, logits="all")
    c = cpu.forward(prompts, reads=sites, writes=writes, logits="all")
    close(g.logits, c.logits, "logits")
    for s in sites:
        close(g[s], c[s], s)
    assert gpu.generate(prompts[0], max_new=8).tokens == cpu.generate(prompts[0], max_new=8).tokens
