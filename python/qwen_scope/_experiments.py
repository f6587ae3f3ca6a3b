"""The experiments (sweep, attributes, inspect) as DataFrames, with progress bars.

The work is the engine's own runners, the code behind `qwen-scope sweep | attributes |
inspect`; this file only turns their columns into DataFrames (pandas when installed, else
dicts of numpy arrays) and shows progress (tqdm when installed: tqdm.auto picks the
notebook widget in Jupyter, Colab and Kaggle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from . import _native

try:
    import pandas as _pd
except ImportError:  # pandas is optional
    _pd = None


def _frame(columns: Dict[str, list]):
    """A DataFrame, or without pandas a dict of numpy arrays (strings as object arrays)."""
    if _pd is not None:
        return _pd.DataFrame(columns)
    out = {}
    for k, v in columns.items():
        if v and isinstance(v[0], (str, list)) or any(x is None for x in v):
            out[k] = np.array(v, dtype=object)
        else:
            out[k] = np.asarray(v)
    return out


class _Bars:
    """The progress callback the engine calls as (phase, done, total): one tqdm bar per
    phase. False disables it; without tqdm nothing is shown."""

    def __init__(self, enabled: bool):
        self.bars: Dict[str, Any] = {}
        self.tqdm = None
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.tqdm = tqdm
            except ImportError:
                pass

    def __call__(self, phase: str, done: int, total: int) -> None:
        bar = self.bars.get(phase)
        if bar is None:
            for other in self.bars.values():
                other.close()
            bar = self.bars[phase] = self.tqdm(total=total, desc=phase)
        bar.update(done - bar.n)

    def callback(self):
        return self if self.tqdm is not None else None

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _count(name: str, v: Optional[int], optional: bool = False) -> Optional[int]:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(v).__name__}")
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return int(v)


def _layers(spec: Union[str, int, Sequence[int]]) -> str:
    """Layer lists as the CLI takes them: "all", "0-23:4", 5, or [0, 4, 8]."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, (int, np.integer)):
        return str(_count("layer", spec))
    return ",".join(str(_count("layer", l)) for l in spec)


@dataclass
class SweepResult:
    """samples: one row per (sample, method, source layer, target layer), the columns of
    samples.csv; summary: precision@1 and surprisal per (method, source layer, target
    layer), the columns of summary.csv."""

    samples: Any
    summary: Any

    def layer_table(self):
        """summary as the CLI prints it: one row per layer, same-layer token identity."""
        if _pd is None:
            raise ImportError("layer_table needs pandas")
        s = self.summary
        s = s[(s.method != "token_identity") | (s.source_layer == s.target_layer)]
        return s.pivot_table(index="source_layer", columns="method",
                             values=["precision_at_1", "surprisal"])


@dataclass
class AttributesResult:
    """cells: one row per (relation row, source layer, target layer) evaluated, with the
    generation and whether it is correct; rows: one row per relation row (baseline,
    evaluated or why not); summary: the columns of summary.csv (accuracy per relation,
    including "all", and cell)."""

    cells: Any
    rows: Any
    summary: Any


def sweep(self, prompts: Union[None, str, os.PathLike, Sequence[str]] = None,
          train: Optional[int] = None, val: Optional[int] = None, seed: int = 42,
          grid: bool = False, target_prompt: str = _native.TOKEN_IDENTITY_PROMPT,
          batch: int = 16, lens_positions: str = "all", reference: bool = False,
          progress: bool = True) -> SweepResult:
    """The next-token experiment (paper section 4.1) at every layer: token-identity
    patchscope, logit lens and tuned lens, exactly as `qwen-scope sweep`.

    prompts: None (the 300 shipped sentences), a .txt / .jsonl file, or a list of str.
    train: prompts fitting the tuned lens (the first ones; default half); val: prompts
    evaluated (the next ones; default the rest). See `qwen-scope sweep --help`.
    """
    if isinstance(prompts, (str, os.PathLike)):
        prompts = os.fspath(prompts)
        if not os.path.exists(prompts):
            raise FileNotFoundError(f"{prompts}: no such prompt file")
    elif prompts is not None:
        prompts = list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a file path or a list of str")
    bars = _Bars(progress)
    try:
        raw = _native.sweep(self._native, prompts, _count("train", train, True),
                            _count("val", val, True), _count("seed", seed), bool(grid),
                            target_prompt, _count("batch", batch), lens_positions,
                            bool(reference), bars.callback())
    finally:
        bars.close()
    return SweepResult(samples=_frame(raw["samples"]), summary=_frame(raw["summary"]))


def attributes(self, relations: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
               target: Optional[str] = None, source_layers: Any = "all",
               target_layers: Any = "all", max_new: int = 10, all_rows: bool = False,
               limit: Optional[int] = None, batch: int = 8,
               progress: bool = True, demonstrations: int = 3,
               demo_seed: int = 0) -> AttributesResult:
    """Attribute extraction (paper section 4.2) over relation files (LRE .json or the
    official .tsv), exactly as `qwen-scope attributes`: accuracy per (source layer,
    target layer). LRE files without a target of their own get `demonstrations` other
    samples of the relation (seeded by `demo_seed`) before each query, as the CLI's
    --demonstrations and --demo-seed; `rows.demonstrations` lists them."""
    if isinstance(relations, (str, os.PathLike)):
        relations = [relations]
    relations = [os.fspath(r) for r in relations]
    if not relations:
        raise ValueError("no relation files")
    bars = _Bars(progress)
    try:
        raw = _native.attributes(self._native, relations, target, _layers(source_layers),
                                 _layers(target_layers), _count("max_new", max_new),
                                 bool(all_rows), _count("limit", limit, True),
                                 _count("batch", batch), bars.callback(),
                                 _count("demonstrations", demonstrations),
                                 _count("demo_seed", demo_seed))
    finally:
        bars.close()
    return AttributesResult(cells=_frame(raw["cells"]), rows=_frame(raw["rows"]),
                            summary=_frame(raw["summary"]))


def inspect(self, source: str, position: int = -1,
            target: str = _native.ENTITY_DESCRIPTION_PROMPT, layers: Any = "all",
            target_layer: Optional[int] = None, max_new: int = 20,
            mapping: Union[None, str, os.PathLike] = None):
    """One patchscope by hand, exactly as `qwen-scope inspect`: the source's state at
    `position` (negative from the end) at each layer, patched into `target` at its
    placeholder "x", and the greedy continuation. Returns one row per layer (source_layer,
    target_layer, text, tokens); `.attrs` (pandas) holds the source token and the
    placeholder position."""
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
        raise TypeError("position must be an int")
    raw = _native.inspect(self._native, source, int(position), target, _layers(layers),
                          _count("target_layer", target_layer, True),
                          _count("max_new", max_new),
                          None if mapping is None else os.fspath(mapping))
    df = _frame(raw["rows"])
    if _pd is not None:
        df.attrs.update(source=source, position=raw["position"],
                        source_token=raw["source_token"], patch_pos=raw["patch_pos"])
    return df
