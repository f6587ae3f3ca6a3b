#!/usr/bin/env python3
"""Download the Pile subset used by the PatchScopes next-token experiment (paper 4.1).

Usage (needs network access and `pip install datasets`):
    python tools/prepare_pile.py --out results/pile.jsonl [--train 10000] [--val 2000]
        [--pool 200000] [--mode pool|buffer] [--buffer-size 10000]

Writes --train + --val lines of JSON Lines, {"text": ...}, train rows first; the
qwen-scope sweep then takes rows [0, train) for the affine maps and [train,
train + val) for validation (file order).

How the official code does it (PAIR-code/interpretability, patchscopes/code):
  download_the_pile_text_data.py streams "EleutherAI/the_pile_deduplicated" (split
  "train") and keeps the FIRST 200000 rows (dataset.take(200000)); the notebook then
  keeps texts with len(text.split(' ')) < 250 and len(text) < 2000, shuffles the
  filtered rows with datasets' .shuffle(seed=42), and takes the first 10000 as train
  and the next 2000 as validation.

Modes here:
  --mode pool (default, closest to the official code): take the first --pool streamed
      rows (200000 as in the official script), filter them with the same rule, then
      shuffle the filtered list with random.Random(42).shuffle. The row SET is the
      official one; the ORDER differs, because datasets' Dataset.shuffle(seed=42)
      permutes with a numpy Generator (PCG64), not Python's random module, so the
      train/validation split is not the same rows as the paper's. Pass
      --official-order to permute with numpy.random.default_rng(42).permutation(n)
      instead: that is what Dataset.shuffle(seed=42) does (it builds
      np.random.default_rng(seed) and selects generator.permutation(len(self))), so
      with the same 200000 streamed rows it reproduces the official row order.
  --mode buffer: datasets' streaming shuffle, IterableDataset.shuffle(seed=42,
      buffer_size=--buffer-size), filter while streaming, stop after train + val
      matching rows. Cheaper (no 200000-row pool) but a different sample: a streaming
      shuffle only mixes rows within the buffer and across shards.

Note the filter counts words with split(' ') (single spaces), exactly as the
official notebook, not str.split().
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

DATASET = "EleutherAI/the_pile_deduplicated"
SEED = 42


def keep(text: str) -> bool:
    """The official notebook's filter."""
    return len(text.split(" ")) < 250 and len(text) < 2000


def rows_pool(pool: int, official_order: bool):
    from datasets import load_dataset

    stream = load_dataset(DATASET, streaming=True, split="train")
    texts = [row["text"] for row in stream.take(pool)]
    print(f"streamed {len(texts)} rows", file=sys.stderr)
    texts = [t for t in texts if keep(t)]
    print(f"{len(texts)} rows pass the filter", file=sys.stderr)
    if official_order:
        import numpy as np

        order = np.random.default_rng(SEED).permutation(len(texts))
        return [texts[i] for i in order]
    random.Random(SEED).shuffle(texts)
    return texts


def rows_buffer(needed: int, buffer_size: int):
    from datasets import load_dataset

    stream = load_dataset(DATASET, streaming=True, split="train")
    stream = stream.shuffle(seed=SEED, buffer_size=buffer_size)
    out = []
    for row in stream:
        if keep(row["text"]):
            out.append(row["text"])
            if len(out) == needed:
                break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="Pile subset for the next-token sweep")
    ap.add_argument("--out", required=True, help="output JSONL file")
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--mode", choices=["pool", "buffer"], default="pool")
    ap.add_argument("--pool", type=int, default=200000,
                    help="pool mode: streamed rows to take before filtering (official: 200000)")
    ap.add_argument("--official-order", action="store_true",
                    help="pool mode: permute with numpy default_rng(42) like Dataset.shuffle")
    ap.add_argument("--buffer-size", type=int, default=10000,
                    help="buffer mode: streaming shuffle buffer size")
    args = ap.parse_args()

    needed = args.train + args.val
    if args.mode == "pool":
        texts = rows_pool(args.pool, args.official_order)
    else:
        texts = rows_buffer(needed, args.buffer_size)
    if len(texts) < needed:
        sys.exit(f"only {len(texts)} rows pass the filter, need {needed} "
                 f"(raise --pool)")
    texts = texts[:needed]

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: {args.train} train + {args.val} validation rows",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
