#!/usr/bin/env python3
"""Markdown tables of `qwen-scope attributes` runs on LRE relation files, as in
docs/ATTRIBUTES.md (Python standard library only).

    python tools/lre_table.py RUN [--without RUN_K0] [--tsv RUN_TSV]

RUN is a results folder (run.json, summary.json, rows.jsonl); its relation files are read
again from the paths in run.json for their kind (the folder above the file), sample count,
template and distinct objects. With --without (the same files and settings run with
--demonstrations 0), the relations both runs have are also compared: rows known unpatched
and accuracy, without and with the demonstrations. With --tsv (a run on the official
TSVs with the same layers and limit), the relations that are in both formats (matched by
file name) get its rows known unpatched and accuracy beside the LRE ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os


def load(run_dir):
    run = json.load(open(os.path.join(run_dir, "run.json")))
    summary = {s["relation"]: s for s in
               json.load(open(os.path.join(run_dir, "summary.json")))["summary"]}
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "rows.jsonl"))]
    files = {}
    for path in run["relations"]:
        lre = json.load(open(path))
        templates = [t for t in lre.get("prompt_templates", []) if "{}" in t]
        files[lre["name"]] = dict(
            stem=os.path.splitext(os.path.basename(path))[0],
            kind=os.path.basename(os.path.dirname(path)),
            samples=len(lre["samples"]),
            objects=len({s["object"] for s in lre["samples"]}),
            slot_first=all(t.lstrip().startswith("{}") for t in templates))
    return run, summary, rows, files


def cells(s):
    """{(source, target): accuracy} of a summary entry (NaN-free)."""
    return {(a, b): v for a, b, v in s["accuracy"] if v is not None and not math.isnan(v)}


def best(s):
    c = cells(s)
    if not c:
        return "n/a"
    # the first best cell in (source, target) order
    (a, b), v = max(sorted(c.items()), key=lambda kv: kv[1])
    return f"{a} -> {b}: {v:.2f}"


def band(s, sources, targets):
    """Mean accuracy over the cells with source in `sources` and target in `targets`."""
    vals = [v for (a, b), v in cells(s).items() if a in sources and b in targets]
    return f"{sum(vals) / len(vals):.2f}" if vals else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--without", help="the same run with --demonstrations 0")
    ap.add_argument("--tsv", help="a run on the official TSVs, same layers and limit")
    a = ap.parse_args()
    run, summary, rows, files = load(a.run)
    tsv = {}
    if a.tsv:
        run_t = json.load(open(os.path.join(a.tsv, "run.json")))
        assert (run_t["source_layers"], run_t["target_layers"], run_t["limit"]) == \
            (run["source_layers"], run["target_layers"], run["limit"]), \
            "the TSV run differs in layers or limit"
        tsv = {s["relation"]: s for s in
               json.load(open(os.path.join(a.tsv, "summary.json")))["summary"]}
    src, tgt = run["source_layers"], run["target_layers"]
    mid_s = [l for l in src if 4 <= l <= 16]
    early_t = [l for l in tgt if l <= 8]
    band_name = f"mean, source {mid_s[0]}-{mid_s[-1]} -> target {early_t[0]}-{early_t[-1]}" \
        if mid_s and early_t else "band"
    order = sorted(files, key=lambda n: (files[n]["kind"], files[n]["stem"]))
    extra = " TSV: known unpatched | TSV: best cell | TSV: band |" if tsv else ""
    print(f"| relation | kind | samples | objects | slot first | known unpatched "
          f"(first {run['limit']}) | best cell, source -> target | {band_name} |{extra}")
    print("|---|---|---|---|---|---|---|---|" + ("---|---|---|" if tsv else ""))
    tot = dict(rows=0, known=0)
    for name in order:
        f, s = files[name], summary[name]
        tot["rows"] += s["rows"]
        tot["known"] += s["known_unpatched"]
        t = tsv.get(f["stem"])
        more = "" if not tsv else " | | |" if t is None else \
            f" {t['known_unpatched']} of {t['rows']} | {best(t)} | {band(t, mid_s, early_t)} |"
        print(f"| {f['stem']} | {f['kind']} | {f['samples']} | {f['objects']} | "
              f"{'yes' if f['slot_first'] else 'no'} | {s['known_unpatched']} of {s['rows']} | "
              f"{best(s)} | {band(s, mid_s, early_t)} |{more}")
    s = summary["all"]
    slot_first = [n for n in order if files[n]["slot_first"]]
    sf_rows = sum(summary[n]["rows"] for n in slot_first)
    sf_known = sum(summary[n]["known_unpatched"] for n in slot_first)
    more = ""
    if tsv:
        t = tsv["all"]
        more = f" **{t['known_unpatched']} of {t['rows']}** | {best(t)} | " \
            f"{band(t, mid_s, early_t)} |"
    print(f"| **all {len(order)}** | | | | {len(slot_first)} | **{tot['known']} of "
          f"{tot['rows']}** | {best(s)} | {band(s, mid_s, early_t)} |{more}")
    if tsv:
        both = [n for n in order if files[n]["stem"] in tsv]
        k_l = sum(summary[n]["known_unpatched"] for n in both)
        k_t = sum(tsv[files[n]["stem"]]["known_unpatched"] for n in both)
        print(f"\nthe {len(both)} relations in both formats: {k_l} rows known unpatched "
              f"(LRE, demonstrations) against {k_t} (official TSVs), of "
              f"{sum(summary[n]['rows'] for n in both)} each")
    print(f"\nslot-first files: {sf_known} of {sf_rows} rows known unpatched; "
          f"evaluated rows in all: {s['evaluated']}")

    print(f"\nAll relations ({s['evaluated']} evaluated rows; rows: source layer, "
          "columns: target layer):\n")
    c = cells(s)
    print("| source \\ target | " + " | ".join(map(str, tgt)) + " |")
    print("|---|" + "---|" * len(tgt))
    for a_ in src:
        print(f"| **{a_}** | " + " | ".join(
            f"{c[(a_, b)]:.2f}" if (a_, b) in c else "n/a" for b in tgt) + " |")

    if a.without:
        run0, summary0, _, files0 = load(a.without)
        assert (run0["source_layers"], run0["target_layers"], run0["limit"]) == \
            (src, tgt, run["limit"]), "the two runs differ in layers or limit"
        both = [n for n in order if n in summary0]
        print(f"\nWithout and with demonstrations ({len(both)} relations whose templates "
              f"have context before the slot):\n")
        print(f"| relation | known unpatched, without | with | best cell, without | with | "
              f"{band_name}, without | with |")
        print("|---|---|---|---|---|---|---|")
        k0 = k1 = 0
        for n in both:
            s0, s1 = summary0[n], summary[n]
            k0 += s0["known_unpatched"]
            k1 += s1["known_unpatched"]
            print(f"| {files[n]['stem']} | {s0['known_unpatched']} | {s1['known_unpatched']} | "
                  f"{best(s0)} | {best(s1)} | {band(s0, mid_s, early_t)} | "
                  f"{band(s1, mid_s, early_t)} |")
        # the with-demonstrations "all" over these relations only
        ev1 = [r for r in rows if r["relation"] in both and r["evaluated"]]
        acc1 = {}
        for si, a_ in enumerate(src):
            for ti, b in enumerate(tgt):
                if ev1:
                    acc1[(a_, b)] = sum(r["correct"][si][ti] for r in ev1) / len(ev1)
        s1 = dict(accuracy=[(a_, b, v) for (a_, b), v in acc1.items()])
        s0 = summary0["all"]
        print(f"| **all {len(both)}** | **{k0}** | **{k1}** | {best(s0)} | {best(s1)} | "
              f"{band(s0, mid_s, early_t)} | {band(s1, mid_s, early_t)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
