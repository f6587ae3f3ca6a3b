"""The model, its tokenizer and config, and the forward / generate calls."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from . import _experiments

Prompts = Union[str, Sequence[str], Sequence[Sequence[int]], np.ndarray]


@dataclass(frozen=True)
class Config:
    """The decoder's shapes and constants, as read from config.json and validated."""

    arch: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qkv_bias: bool
    dtype: Optional[str]

    @property
    def n_layers(self) -> int:  # TransformerLens' name
        return self.num_layers

    @property
    def d_model(self) -> int:  # TransformerLens' name
        return self.hidden_size


class Tokenizer:
    """The model's tokenizer (tokenizer.json), exactly as the engine uses it."""

    def __init__(self, native: _native.NativeModel):
        self._native = native

    def encode(self, text: str) -> List[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        return self._native.encode(text)

    def decode(self, ids: Union[int, Sequence[int]]) -> str:
        if isinstance(ids, (int, np.integer)):
            ids = [int(ids)]
        return self._native.decode([_index("token id", i) for i in ids])

    def token_to_id(self, token: str) -> Optional[int]:
        return self._native.token_to_id(token)

    def __call__(self, text: str) -> List[int]:
        return self.encode(text)


@dataclass
class Generation:
    """Greedy continuation of one prompt: the new token ids and their text."""

    tokens: List[int]
    text: str


def site_name(name: str, num_layers: int) -> str:
    """The qwen-scope name (embed, resid_post.<l>, final_norm) of a site given by its
    qwen-scope or TransformerLens name."""
    return _native.parse_site(name, num_layers)


def _index(what: str, v: Any) -> int:
    """A non-negative int, or ValueError (not OverflowError from the binding)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    if v < 0:
        raise ValueError(f"{what} must be >= 0, got {v}")
    return int(v)


class Output:
    """What a forward pass hands back.

    logits: ``logits="last"`` -> [rows, vocab]; ``"all"`` -> [rows, positions, vocab]
    (NaN past the end of a shorter row); a list of (row, position) -> [k, vocab] in that
    order; ``None`` -> None. ``states[site]`` (or ``out[name]`` with any site name) ->
    [rows, positions, hidden], NaN where nothing was read.
    """

    def __init__(self, raw: Dict[str, Any], tokens: List[List[int]], num_layers: int,
                 logits_mode: Any, at: List[Tuple[int, int]]):
        self.tokens = tokens
        self._num_layers = num_layers
        rows, width = len(tokens), max(len(t) for t in tokens)
        self.logits: Optional[np.ndarray] = None
        if raw["logits"] is not None:
            values, index = raw["logits"], raw["logit_index"]
            if logits_mode == "last":
                self.logits = values[np.argsort(index[:, 0], kind="stable")]
            elif logits_mode == "all":
                full = np.full((rows, width, values.shape[1]), np.nan, dtype=np.float32)
                full[index[:, 0], index[:, 1]] = values
                self.logits = full
            else:
                where = {(int(r), int(p)): i for i, (r, p) in enumerate(index)}
                self.logits = values[[where[(r, p)] for r, p in at]]
        self.states: Dict[str, np.ndarray] = {}
        for site, (values, index) in raw["states"].items():
            full = np.full((rows, width, values.shape[1]), np.nan, dtype=np.float32)
            full[index[:, 0], index[:, 1]] = values
            self.states[site] = full

    def __getitem__(self, name: str) -> np.ndarray:
        site = site_name(name, self._num_layers)
        if site not in self.states:
            raise KeyError(f"{name!r} ({site}) was not read; read: {sorted(self.states)}")
        return self.states[site]

    def __contains__(self, name: str) -> bool:
        try:
            return site_name(name, self._num_layers) in self.states
        except ValueError:
            return False

    def state(self, name: str, row: int = 0, pos: int = -1) -> np.ndarray:
        """One state vector [hidden]; ``pos`` may count from the end of the row."""
        n = len(self.tokens[row])
        p = pos + n if pos < 0 else pos
        return self[name][row, p]

    def __repr__(self) -> str:
        shape = None if self.logits is None else self.logits.shape
        return f"Output(rows={len(self.tokens)}, logits={shape}, states={sorted(self.states)})"


class Model:
    """A Qwen-family model (Qwen2, Qwen2.5, Qwen3, Llama-architecture such as SmolLM2).

    ``path_or_repo_id`` is a model folder or a Hugging Face repo id, loaded with the CLI's
    rules (the HF cache shared with transformers; HF_HOME, HF_HUB_OFFLINE=1 and
    ``revision`` honoured). ``device``: "cpu", "cuda", "cuda:N" or "auto" (GPU 0 when one
    is usable, else the CPU, with a note on stderr saying why). ``dtype`` (GPU weights):
    "auto", "f32", "f16" or "bf16"; the residual stream stays f32.
    """

    def __init__(self, path_or_repo_id: Union[str, os.PathLike], device: str = "auto",
                 dtype: str = "auto", revision: Optional[str] = None, quiet: bool = False):
        spec = os.fspath(path_or_repo_id)
        note = None if quiet else (lambda msg: print(msg, file=sys.stderr))
        self._native = _native.NativeModel(spec, device, dtype, revision, note)
        self.name = spec
        self.config = Config(**self._native.config())
        self.tokenizer = Tokenizer(self._native)
        self.device = self._native.describe()

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({self.name!r}, {c.arch}, {c.num_layers} blocks, hidden {c.hidden_size}, "
                f"on {self.device})")

    # -- inputs ---------------------------------------------------------------------------

    def _rows(self, prompts: Prompts) -> List[List[int]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if isinstance(prompts, np.ndarray):
            prompts = prompts.tolist() if prompts.ndim == 2 else [prompts.tolist()]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts: give a str, a list of str, or lists of token ids")
        if all(isinstance(p, (int, np.integer)) for p in prompts):
            prompts = [prompts]  # one row of token ids
        rows = []
        for i, p in enumerate(prompts):
            ids = self.tokenizer.encode(p) if isinstance(p, str) else [
                _index(f"prompt {i} token", t) for t in p]
            if not ids:
                raise ValueError(f"prompt {i} has no tokens")
            rows.append(ids)
        return rows

    @staticmethod
    def _pos(p: int, n: int, what: str) -> int:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise TypeError(f"{what}: a position must be an int, not {type(p).__name__}")
        q = int(p) + n if p < 0 else int(p)
        if not 0 <= q < n:
            raise ValueError(f"{what}: position {p} out of range: the row has {n} tokens")
        return q

    def _reads(self, reads: Any, rows: List[List[int]]) -> list:
        if isinstance(reads, str):
            reads = [reads]
        out = []
        for spec in reads or ():
            if isinstance(spec, str):  # a site: every row, every position
                out.extend((spec, r, "all", []) for r in range(len(rows)))
                continue
            if not isinstance(spec, (tuple, list)) or not 2 <= len(spec) <= 3:
                raise ValueError(f"read {spec!r}: use a site name, or (site, row[, positions])")
            site, row = spec[0], _index("read row", spec[1])
            pos = spec[2] if len(spec) == 3 else "all"
            if row >= len(rows):
                raise ValueError(f"read {spec!r}: row {row} out of range: {len(rows)} rows")
            if isinstance(pos, str):
                if pos not in ("all", "last"):
                    raise ValueError(f"read {spec!r}: positions are 'all', 'last', an int or ints")
                out.append((site, row, pos, []))
            else:
                ps = [pos] if isinstance(pos, (int, np.integer)) else list(pos)
                n = len(rows[row])
                out.append((site, row, "at", [self._pos(p, n, f"read {spec!r}") for p in ps]))
        return out

    def _writes(self, writes: Any, rows: List[List[int]]) -> list:
        if isinstance(writes, dict) or (isinstance(writes, tuple) and writes
                                        and isinstance(writes[0], str)):
            writes = [writes]
        out = []
        for w in writes or ():
            if isinstance(w, dict):
                w = (w["site"], w.get("row", 0), w["pos"], w["value"], w.get("mode", "replace"))
            if not isinstance(w, (tuple, list)) or len(w) not in (4, 5):
                raise ValueError(
                    "a write is (site, row, position, vector[, 'replace' | 'add'])")
            site, row, pos, vec = w[:4]
            mode = w[4] if len(w) == 5 else "replace"
            if mode not in ("replace", "add"):
                raise ValueError(f"write mode {mode!r}: use 'replace' or 'add'")
            row = _index("write row", row)
            if row >= len(rows):
                raise ValueError(f"write at {site}: row {row} out of range: {len(rows)} rows")
            pos = self._pos(pos, len(rows[row]), f"write at {site} row {row}")
            v = np.ascontiguousarray(np.asarray(vec, dtype=np.float32).reshape(-1))
            out.append((site, row, pos, v, mode == "add"))
        return out

    # -- passes ---------------------------------------------------------------------------

    def forward(self, prompts: Prompts, reads: Any = (), writes: Any = (),
                logits: Any = "last") -> Output:
        """One pass over the prompts (a batch of rows, each from a fresh cache).

        reads: site names (every row and position), or (site, row[, positions]) with
        positions "all", "last", an int (negative from the end) or a list of ints.
        Site names: embed / hook_embed / blocks.0.hook_resid_pre, resid_post.<l> /
        blocks.<l>.hook_resid_post (blocks.<l+1>.hook_resid_pre), final_norm /
        ln_final.hook_normalized.
        writes: (site, row, position, vector[, "replace" | "add"]), carried out before the
        pass goes on from that site.
        logits: "last", "all", None, or a list of (row, position).
        """
        rows = self._rows(prompts)
        if logits is None:
            mode, at = "none", []
        elif isinstance(logits, str):
            if logits not in ("last", "all"):
                raise ValueError(f"logits={logits!r}: use 'last', 'all', None or [(row, pos)]")
            mode, at = logits, []
        else:
            at = []
            for spec in logits:
                if not isinstance(spec, (tuple, list)) or len(spec) != 2:
                    raise ValueError(f"logits position {spec!r}: use (row, position)")
                r = _index("logits row", spec[0])
                if r >= len(rows):
                    raise ValueError(f"logits at {spec!r}: row {r} out of range: {len(rows)} rows")
                at.append((r, self._pos(spec[1], len(rows[r]), f"logits at {spec!r}")))
            mode = "at" if at else "none"
        raw = self._native.forward(rows, self._reads(reads, rows), self._writes(writes, rows),
                                   mode, at)
        return Output(raw, rows, self.num_layers, logits if mode != "at" else "at", at)

    def run_with_cache(self, prompts: Prompts, names: Optional[Sequence[str]] = None):
        """TransformerLens-style: (logits [rows, positions, vocab], {name: states}) with
        every block output (or the named sites) read at every position."""
        if names is None:
            names = ["hook_embed"] + [f"blocks.{l}.hook_resid_post"
                                      for l in range(self.num_layers)] + [
                "ln_final.hook_normalized"]
        out = self.forward(prompts, reads=list(names), logits="all")
        return out.logits, {n: out[n] for n in names}

    def hidden_states(self, prompts: Prompts, writes: Any = ()):
        """transformers' ``output_hidden_states=True``: (logits [rows, positions, vocab],
        hidden [L + 1, rows, positions, hidden]) with hidden[0] the embedding output,
        hidden[l + 1] the output of block l for l < L - 1, and hidden[L] the final-normed
        state (transformers' last entry), for comparisons with it position by position."""
        L = self.num_layers
        sites = ["embed"] + [f"resid_post.{l}" for l in range(L - 1)] + ["final_norm"]
        out = self.forward(prompts, reads=sites, writes=writes, logits="all")
        return out.logits, np.stack([out.states[s] for s in sites])

    def generate(self, prompts: Prompts, max_new: int = 20, writes: Any = ()):
        """Greedy generation. ``writes`` patch the prompt pass, so the patch stays in the
        KV cache for every generated token. One prompt -> a Generation; a list -> a list."""
        single = isinstance(prompts, str) or (
            not isinstance(prompts, np.ndarray) and len(prompts) > 0
            and all(isinstance(t, (int, np.integer)) for t in prompts))
        rows = self._rows(prompts)
        new = self._native.generate(rows, self._writes(writes, rows), _index("max_new", max_new))
        gens = [Generation(t, self.tokenizer.decode(t)) for t in new]
        return gens[0] if single else gens

    # -- experiments ----------------------------------------------------------------------

    sweep = _experiments.sweep
    attributes = _experiments.attributes
    inspect = _experiments.inspect
