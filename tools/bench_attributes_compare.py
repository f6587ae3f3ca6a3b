#!/usr/bin/env python3
"""The comparison step of tools/bench_attributes.sh (Python standard library only).

    python tools/bench_attributes_compare.py OUT LIMIT [--qwen-scope-only]

OUT holds what the script wrote: qs.stderr and qs/rows.jsonl (qwen-scope attributes) and
torch.json (tools/reference_attributes.py --time). Checks every cell's generation on both
sides (a difference is tolerated at a float near-tie: PyTorch's top-1 minus top-2 logit
< 1e-3) and prints the speed-up, or refuses to when a side evaluated no cell, saying why:
rows the model does not know unpatched are not evaluated (the official only_correct
rule), so a relation the model does not know gives no work to time.

--qwen-scope-only checks qwen-scope's side alone, before the slower PyTorch side is run.

Exit status: 0 compared, 1 a generation differs beyond a near-tie, 3 nothing to compare
(no ratio printed).
"""

from __future__ import annotations

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ratio import NOTHING_TO_COMPARE, Refusal, speedup  # noqa: E402

EVALUATED = re.compile(r"^evaluated (\d+) rows \((\d+) cells.*in ([0-9.]+)s", re.M)


def qwen_scope_side(out):
    """(rows, evaluated rows, cells, seconds) of the qwen-scope run."""
    m = EVALUATED.search(open(os.path.join(out, "qs.stderr")).read())
    if not m:
        raise Refusal("no speed-up: qwen-scope printed no 'evaluated ...' line "
                      f"(see {out}/qs.stderr)")
    rows = [json.loads(line) for line in open(os.path.join(out, "qs", "rows.jsonl"))]
    return rows, sum(r["evaluated"] for r in rows), int(m[2]), float(m[3])


def hint(rows, limit):
    """What to change when no row was evaluated."""
    relations = sorted({r["relation"] for r in rows})
    known = sum(r["baseline_correct"] for r in rows)
    return (f"no row known unpatched in the first {limit} rows of "
            f"{', '.join(relations) or 'the relations'} ({known} of {len(rows)} rows known);"
            " raise LIMIT or pick a relation the model knows")


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--qwen-scope-only"]
    if len(args) != 2:
        sys.exit(__doc__)
    out, limit = args
    try:
        qs_rows, qs_evaluated, qs_cells, qs_secs = qwen_scope_side(out)
        if "--qwen-scope-only" in sys.argv:
            if qs_cells == 0:
                raise Refusal(f"no speed-up: qwen-scope evaluated 0 cells "
                              f"({hint(qs_rows, limit)}); PyTorch not run")
            return 0
        torch = json.load(open(os.path.join(out, "torch.json")))
        by_key = {(r["relation"], r["row"]): r for r in qs_rows}
        cells = equal = near = bad = 0
        for t in torch["rows"]:
            q = by_key.get((t["relation"], t["row"]))
            if q is None:
                print(f"row {t['relation']} {t['row']}: only PyTorch has it")
                bad += 1
                continue
            if q["baseline"] != t["baseline"]:
                tie = min(t.get("baseline_margins") or [1.0]) < 1e-3
                print(f"row {t['relation']} {t['row']}: baselines differ"
                      f"{' at a float near-tie' if tie else ''}: {q['baseline']!r} vs "
                      f"PyTorch {t['baseline']!r}")
                bad += not tie
            if q["evaluated"] != t["evaluated"]:
                print(f"row {t['relation']} {t['row']}: evaluated on one side only")
                continue
            if not t["evaluated"]:
                continue
            for si, gens in enumerate(t["generations"]):
                for ti, g in enumerate(gens):
                    cells += 1
                    if q["generations"][si][ti] == g:
                        equal += 1
                    elif min(t["margins"][si][ti]) < 1e-3:
                        near += 1
                    else:
                        bad += 1
        t_cells, t_secs = torch["timing"]["cells"], torch["timing"]["wall_s"]
        print(f"cells: {cells} ({equal} equal generations, {near} differ at a float "
              f"near-tie, {bad} differ)")
        print(f"{'':34} {'seconds':>8} {'cells':>6}")
        print(f"{'qwen-scope':34} {qs_secs:8.2f} {qs_cells:6d}")
        print(f"{'PyTorch, official batched way':34} {t_secs:8.2f} {t_cells:6d}")
        x = speedup(t_cells, t_secs, qs_cells, qs_secs, base="PyTorch", ours="qwen-scope",
                    hint=hint(qs_rows, limit))
        print(f"qwen-scope speed-up: {x:.2f}x")
        return 1 if bad else 0
    except Refusal as e:
        print(e)
        return NOTHING_TO_COMPARE


if __name__ == "__main__":
    sys.exit(main())
