#!/usr/bin/env python3
"""The one way benchmark scripts turn two measurements into a ratio (Python standard
library only; tools/bench_attributes_compare.py, tools/bench_compare.py and
tools/bench_python.sh import it).

A ratio of two timings says something only when both sides did work, the same work, in
a time that was measured. `speedup` refuses otherwise and says why, for example

    no speed-up: qwen-scope evaluated 0 cells (no row known unpatched in the first 8 rows
    of each relation; raise LIMIT or pick a relation the model knows)

so that a script never prints "speed-up: 8.81x" over two runs that did nothing.

    python tools/bench_ratio.py BASE_WORK BASE_SECS OURS_WORK OURS_SECS [--unit cells]
        [--base NAME] [--ours NAME] [--hint TEXT]

prints the ratio BASE_SECS / OURS_SECS (exit status 0) or the refusal (exit status 3).
"""

from __future__ import annotations

import argparse
import math
import sys

# exit status of a benchmark that refused to print a ratio
NOTHING_TO_COMPARE = 3


class Refusal(Exception):
    """A ratio that would mean nothing; str() says why."""


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) \
        and x > 0


def speedup(base_work, base_secs, ours_work, ours_secs, *, unit="cells",
            base="the baseline", ours="qwen-scope", hint="", same_work=True) -> float:
    """base_secs / ours_secs, the factor by which `ours` is faster than `base` on the same
    work. Raises Refusal when a side did no work (work 0 or unknown), when the two did
    different work (same_work), or when a time is not a positive number. `hint` is added
    to a refusal for lack of work (what to change so that there is some)."""
    why = []
    for name, work in ((ours, ours_work), (base, base_work)):
        if not _positive(work):
            why.append(f"{name} did no work ({work if work is not None else 'no'} {unit})")
    if why:
        raise Refusal("no speed-up: " + "; ".join(why) + (f" ({hint})" if hint else ""))
    if same_work and base_work != ours_work:
        raise Refusal(f"no speed-up: the two sides did different work ({ours}: "
                      f"{ours_work} {unit}, {base}: {base_work} {unit})")
    for name, secs in ((ours, ours_secs), (base, base_secs)):
        if not _positive(secs):
            raise Refusal(f"no speed-up: {name}'s time is {secs!r}, not a measured duration")
    return base_secs / ours_secs


def per_unit_ratio(base_rate, ours_rate, *, unit="cells/s", base="the baseline",
                   ours="qwen-scope", hint="") -> float:
    """ours_rate / base_rate for throughputs (work per second), refusing a rate that is
    zero or unknown (a side that did no work)."""
    for name, rate in ((ours, ours_rate), (base, base_rate)):
        if not _positive(rate):
            raise Refusal(f"no ratio: {name} measured {rate!r} {unit}, no work"
                          + (f" ({hint})" if hint else ""))
    return ours_rate / base_rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base_work", type=float)
    ap.add_argument("base_secs", type=float)
    ap.add_argument("ours_work", type=float)
    ap.add_argument("ours_secs", type=float)
    ap.add_argument("--unit", default="cells")
    ap.add_argument("--base", default="the baseline")
    ap.add_argument("--ours", default="qwen-scope")
    ap.add_argument("--hint", default="")
    a = ap.parse_args()
    try:
        x = speedup(a.base_work, a.base_secs, a.ours_work, a.ours_secs, unit=a.unit,
                    base=a.base, ours=a.ours, hint=a.hint)
    except Refusal as e:
        print(e)
        return NOTHING_TO_COMPARE
    print(f"{a.ours} speed-up over {a.base}: {x:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
