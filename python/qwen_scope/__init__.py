"""qwen-scope for notebooks: a Qwen2-family model whose residual stream is data.

    import qwen_scope as qs
    model = qs.Model("Qwen/Qwen2.5-Coder-0.5B-Instruct")     # or a converted folder
    out = model.forward("The capital of France is",
                        reads=["blocks.12.hook_resid_post"], logits="last")
    out["blocks.12.hook_resid_post"]        # [rows, positions, hidden] numpy array
    res = model.sweep(val=20)               # the paper's next-token sweep
    res.samples, res.summary                # long DataFrames for seaborn

See docs/PYTHON.md for the API, the site names and the measured cost of the boundary.
"""

from ._native import (  # noqa: F401
    ENTITY_DESCRIPTION_PROMPT,
    TOKEN_IDENTITY_PROMPT,
    __version__,
    build_info,
)
from ._model import Config, Generation, Model, Output, Tokenizer, site_name  # noqa: F401
from ._experiments import AttributesResult, SweepResult  # noqa: F401

__all__ = [
    "Model",
    "Output",
    "Config",
    "Tokenizer",
    "Generation",
    "SweepResult",
    "AttributesResult",
    "site_name",
    "build_info",
    "TOKEN_IDENTITY_PROMPT",
    "ENTITY_DESCRIPTION_PROMPT",
    "__version__",
]
