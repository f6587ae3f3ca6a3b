#!/usr/bin/env python3
"""Slow, independent reference for PatchScopes attribute extraction (paper section 4.2).

Usage:
    python tools/reference_attributes.py --model DIR --relations FILE [FILE ...] \
        [--source-layers LIST] [--target-layers LIST] [--max-new N] [--all-rows] \
        [--limit N] [--target PROMPT] [--demonstrations K] [--demo-seed S] \
        [--way per-cell|batched] [--batch B] [--check] [--time] [--threads K] --out FILE.json

    LIST: all (default: 0..L-1), 3, 0-5, 0,4,8-10, 0-23:4 (a range with a step).

Run by hand, never in CI: it needs torch, transformers (5.x), tokenizers and numpy (the
venv of tools/reference_sweep.py). CPU, float32, eager attention. It exists only to
check `qwen-scope attributes` (src/patchscope/attributes.rs) and to make the committed
fixtures in tests/fixtures/attributes (see the README there for the exact commands); it
is not fast. Written the way the official PatchScopes code (PAIR-code/interpretability,
patchscopes/code, `evaluate_attriburte_exraction_batch` and `set_hs_patch_hooks_*` with
generation_mode=True) does it: forward hooks on model.model.layers[l*] (on
model.model.norm for the final-layer rule), output_hidden_states=True for the source
states, and HF `generate` for the continuations.

Protocol (the Rust command follows the same one):
  * relations: LRE JSON (`{name, prompt_templates, target_templates?, samples:
    [{subject, object}]}`) or the official preprocessed TSVs (pandas to_csv(sep="\\t"):
    read with the csv module, tab-delimited; quoted fields may hold tabs and newlines).
    - TSV: relation name = file stem; target = column prompt_target; source text =
      prompt_source. Rows are dropped, in this order: a field count unlike the header's
      or a field that is not UTF-8 ("malformed row"); prompt_source empty; prompt_source
      containing "\\n"; the official notebook's two hand-picked rows (star_constellation
      with "service" in prompt_source, object_superclass with "Swainson ’ s hawk and
      the prairie"); subject or object empty or whitespace; subject not in prompt_source.
    - LRE: relation name = "name". Samples with an empty/whitespace subject or object
      are dropped. With --target or target_templates (target = --target, else
      target_templates[0]), or with --demonstrations 0: target = that, else the first
      prompt template containing "{}" after some context (not at its start) cut at "{}"
      plus "x" ("The capital city of {} is" -> "The capital city of x"); source text =
      that template with the subject in place of "{}" (with no such template: the target
      with its placeholder replaced by the subject).
    - LRE default (--demonstrations K > 0, no --target, no target_templates): K
      demonstrations, written by this script's own code from the rule of
      src/patchscope/demonstrations.rs:
      template T = the first prompt template with "{}" after some context, else the
      first with "{}"; pool = samples (index i in the file) whose subject and object are
      not blank and hold neither "\n" nor "x"; order = the pool sorted by
      (splitmix64((splitmix64(seed) + i) mod 2^64), i); a row's demonstrations = the
      first K of that order that are not its own sample and whose subject and object
      both differ from the row's subject and object; a line = T with the subject, " ",
      the object; target = the lines each followed by "\n", then T with "x"; source = T
      with the subject where T has context before "{}", else the lines then T with the
      subject, the subject ending where that last line's slot ends; a slot-first row
      with no demonstration left is dropped ("no sample left to demonstrate the
      relation"). A generation (baseline or patched) of such a row is correct iff the
      object occurs in its text before its first "\n" as whole words (case-sensitive, no
      letter or digit right before or after it).
    - --target overrides every row's target prompt.
    - --limit N keeps the first N kept rows of each file, in file order; "row" is the
      0-based index among the kept rows of its file, "line" the 1-based line where the
      row starts (LRE: the sample's index + 1).
  * tokenizer: tokenizers.Tokenizer.from_file(<model>/tokenizer.json), no special
    tokens added; decode = Tokenizer.decode(ids, skip_special_tokens=False).
  * baseline: the target with its placeholder (the last whole-word "x") replaced by the
    subject, greedy --max-new tokens, unpatched. Correct iff the object with spaces
    removed is a substring of the generation with spaces removed (case-sensitive).
    Rows whose baseline is wrong are not evaluated unless --all-rows (the official
    only_correct rule).
  * source: the subject's first occurrence in the source text ends at char offset e;
    the source position is the first token whose offsets (s, t) have s < e <= t (no such
    token: the row is skipped, with a reason). When the subject's last character is split
    over several byte-level tokens they all share its offsets and the FIRST is taken, as
    qwen-scope does (the Qwen2 tokenizer splits no subject's last character in the
    official data; the 512-token test tokenizer does, e.g. "Beyoncé"). The source pass
    runs tokens 0..=pos only; the layer-l representation is hidden_states[l + 1][0, pos]
    (for l = L-1 that is the final-normed state: HF replaces the last entry).
  * target: the patch position is the single token of the target prompt whose decoded
    text, stripped, equals "x" (none or several: an error).
  * cell (source layer l, target layer l*): during the PROMPT pass of generate only (the
    first forward call; later steps feed one token and reuse the cache), overwrite the
    output of block l* at the patch position with the layer-l source representation;
    when l == l* == L-1, overwrite model.model.norm's output instead (the state is
    already final-normed; official skip_final_ln). The patched keys/values stay in the
    KV cache for the generated tokens.
  * generation: HF generate, greedy (do_sample=False, num_beams=1, use_cache=True),
    exactly --max-new new tokens: the model's generation config is replaced by a fresh
    one without eos_token_id, so it never stops early, and no logits processor runs
    (the script asserts each generated token is the argmax of the raw logits).
  * --way per-cell: one generate per cell, batch of one. --way batched (the official
    evaluate_attriburte_exraction_batch): the cells (evaluated rows x source layers x
    target layers, in that order), grouped by identical target prompt, in chunks of
    --batch; ONE generate per chunk over the chunk's copies of the target prompt (no
    padding is needed, so none is used), with one hook per needed module (block l*, or
    the final norm) that patches each of its batch rows with that row's own state.
    --check runs both ways on the same cells and lists every cell whose generated ids
    differ (exit status 1 if any), and the largest difference of the per-token margins
    (4 decimals) over the common prefix of the two generations, as "check".
  * --time: wall time of the chosen way, baselines and source passes included (model
    loading excluded), and cells/s with cells = evaluated rows x source layers x target
    layers; printed and stored as "timing".

Output JSON (--out): "model", "relations" (paths), "num_layers", "settings", "versions",
"dropped" (per relation, counts by reason), "summary" (per relation: rows, known
unpatched, evaluated, accuracy[si][ti]), optional "timing" and "check", and "rows" (one
object per line), each with: relation, row, line, subject, object, source,
source_position, source_top1 and source_margin (the source's own next-token argmax at
the source position, and its top-1 minus top-2 logit), target, target_position,
baseline_prompt, baseline, baseline_ids, baseline_correct, evaluated, skipped (a reason,
or null), and per cell [si][ti] (indices into settings.source_layers /
settings.target_layers; empty lists when not evaluated): generations (text), correct,
ids (generated token ids) and margins (per generated token: top-1 minus top-2 raw logit,
4 decimals, so a comparison can tell a float near-tie from a real difference);
baseline_margins likewise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time

import numpy as np
import tokenizers
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_sweep  # noqa: E402  (the same model loading)

PLACEHOLDER = "x"
# the last whole-word "x" of a target prompt
PLACEHOLDER_RE = re.compile(r"(?<!\w)x(?!\w)")

MALFORMED = "malformed row"
EMPTY_SOURCE = "empty prompt_source"
NEWLINE_SOURCE = "prompt_source contains a newline"
HAND_PICKED = "dropped by hand in the official notebook"
EMPTY_FIELD = "empty subject or object"
SUBJECT_MISSING = "subject not in prompt_source"
NO_DEMONSTRATION = "no sample left to demonstrate the relation"


# ---------------------------------------------------------------- relations

def fill_placeholder(target: str, subject: str) -> str:
    """The target with its last whole-word placeholder replaced by the subject."""
    matches = list(PLACEHOLDER_RE.finditer(target))
    if not matches:
        raise ValueError(f"target prompt {target!r} has no whole-word {PLACEHOLDER!r}")
    m = matches[-1]
    return target[:m.start()] + subject + target[m.end():]


def demonstration_rows(lre, k, seed):
    """The default LRE prompts: (rows, dropped) with k demonstrations before each query
    (the rule in the docstring), or None when no template has a "{}" slot."""
    with_slot = [t for t in lre.get("prompt_templates", []) if "{}" in t]
    context = [t for t in with_slot if not t.lstrip().startswith("{}")]
    if not with_slot:
        return None
    template = (context or with_slot)[0]
    slot_first = not context

    def usable(text):
        return text.strip() != "" and "\n" not in text and "x" not in text

    samples = lre["samples"]
    base = reference_sweep.splitmix64(seed)
    pool = sorted(
        (reference_sweep.splitmix64((base + i) & reference_sweep.MASK64), i)
        for i, s in enumerate(samples) if usable(s["subject"]) and usable(s["object"]))
    order = [i for _, i in pool]
    rows, dropped = [], {}
    for i, s in enumerate(samples):
        subject, obj = s["subject"], s["object"]
        if not subject.strip() or not obj.strip():
            dropped[EMPTY_FIELD] = dropped.get(EMPTY_FIELD, 0) + 1
            continue
        mine = {subject, obj}
        demos = []
        for j in order:
            if len(demos) == k:
                break
            d = samples[j]
            if j != i and d["subject"] not in mine and d["object"] not in mine:
                demos.append(dict(line=j + 1, subject=d["subject"], object=d["object"]))
        if not demos and slot_first:
            dropped[NO_DEMONSTRATION] = dropped.get(NO_DEMONSTRATION, 0) + 1
            continue
        lines = "".join(template.replace("{}", d["subject"], 1) + " " + d["object"] + "\n"
                        for d in demos)
        target = lines + template.replace("{}", PLACEHOLDER, 1)
        head = lines if slot_first else ""
        source = head + template.replace("{}", subject, 1)
        subject_end = len(head) + template.index("{}") + len(subject)
        assert source[subject_end - len(subject):subject_end] == subject
        rows.append(dict(line=i + 1, subject=subject, object=obj, target=target,
                         source=source, subject_end=subject_end, demonstrations=demos))
    return rows, dropped


def load_lre(path, target_override, demonstrations=0, demo_seed=0):
    with open(path, encoding="utf-8") as f:
        lre = json.load(f)
    if target_override is None and not lre.get("target_templates") and demonstrations > 0:
        found = demonstration_rows(lre, demonstrations, demo_seed)
        if found is not None:
            return (lre["name"],) + found
    # only templates with context before the slot: "{} is led by" would put a one-token
    # subject at position 0, the attention sink
    templates = [t for t in lre.get("prompt_templates", [])
                 if "{}" in t and not t.lstrip().startswith("{}")]
    template = templates[0] if templates else None
    if target_override is not None:
        target = target_override
    elif lre.get("target_templates"):
        target = lre["target_templates"][0]
    elif template is not None:
        target = template[:template.index("{}")] + PLACEHOLDER
    else:
        sys.exit(f"{path}: no target prompt (target_templates, a template with context "
                 "before its {{}} slot, --target, or --demonstrations K > 0)")
    rows, dropped = [], {}
    for i, s in enumerate(lre["samples"]):
        subject, obj = s["subject"], s["object"]
        if not subject.strip() or not obj.strip():
            dropped[EMPTY_FIELD] = dropped.get(EMPTY_FIELD, 0) + 1
            continue
        if template is not None:
            source = template.replace("{}", subject, 1)
        else:
            source = fill_placeholder(target, subject)
        if subject not in source:
            dropped[SUBJECT_MISSING] = dropped.get(SUBJECT_MISSING, 0) + 1
            continue
        rows.append(dict(line=i + 1, subject=subject, object=obj, target=target,
                         source=source))
    return lre["name"], rows, dropped


def load_tsv(path, target_override):
    name = os.path.splitext(os.path.basename(path))[0]
    csv.field_size_limit(sys.maxsize)
    rows, dropped = [], {}

    def drop(reason):
        dropped[reason] = dropped.get(reason, 0) + 1

    # surrogateescape: a byte that is not UTF-8 becomes a lone surrogate, and its row is
    # dropped as malformed instead of failing the file
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        cols = {}
        for col in ("prompt_target", "subject", "object", "prompt_source"):
            if col not in header:
                sys.exit(f"{path}: TSV has no column {col!r}")
            cols[col] = header.index(col)
        prev_line = reader.line_num
        for record in reader:
            line = prev_line + 1
            prev_line = reader.line_num
            if not record:  # a blank line is no record
                continue
            if len(record) != len(header) or any(
                    any(0xDC80 <= ord(c) <= 0xDCFF for c in field) for field in record):
                drop(MALFORMED)
                continue
            source = record[cols["prompt_source"]]
            subject, obj = record[cols["subject"]], record[cols["object"]]
            if source == "":
                drop(EMPTY_SOURCE)
            elif "\n" in source:
                drop(NEWLINE_SOURCE)
            elif (name == "star_constellation" and "service" in source) or (
                    name == "object_superclass"
                    and "Swainson ’ s hawk and the prairie" in source):
                drop(HAND_PICKED)
            elif not subject.strip() or not obj.strip():
                drop(EMPTY_FIELD)
            elif subject not in source:
                drop(SUBJECT_MISSING)
            else:
                target = target_override if target_override is not None \
                    else record[cols["prompt_target"]]
                rows.append(dict(line=line, subject=subject, object=obj, target=target,
                                 source=source))
    return name, rows, dropped


def load_relation(path, target_override, demonstrations=0, demo_seed=0):
    if path.endswith(".json"):
        return load_lre(path, target_override, demonstrations, demo_seed)
    if path.endswith(".tsv"):
        return load_tsv(path, target_override)
    sys.exit(f"{path}: relation files must end in .json (LRE) or .tsv (official)")


def parse_layers(spec: str, num_layers: int) -> list[int]:
    if spec == "all":
        return list(range(num_layers))
    layers = []
    for part in spec.split(","):
        part, _, step = part.partition(":")
        step = int(step) if step else 1
        a, _, b = part.partition("-")
        a = int(a)
        b = int(b) if b else a
        if step < 1:
            sys.exit(f"bad layer list {spec!r}")
        for l in range(a, b + 1, step):
            if not 0 <= l < num_layers:
                sys.exit(f"layer {l} out of range: the model has {num_layers} blocks")
            layers.append(l)
    if not layers:
        sys.exit(f"layer list {spec!r} is empty")
    return layers


def is_correct(obj: str, generated: str, demonstrations=False) -> bool:
    """The official rule (the object without spaces in the generation without spaces);
    with demonstrations: the object as whole words (no letter or digit right before or
    after it, case-sensitive) in the generation's first line."""
    if not demonstrations:
        return obj.replace(" ", "") in generated.replace(" ", "")
    line = generated.split("\n")[0]
    start = line.find(obj)
    while obj and start >= 0:
        end = start + len(obj)
        if not (start > 0 and line[start - 1].isalnum()) and \
                not (end < len(line) and line[end].isalnum()):
            return True
        start = line.find(obj, start + 1)
    return False


# ---------------------------------------------------------------- model

def load(model_dir):
    tok, model = reference_sweep.load(model_dir)
    # A fresh generation config: greedy, no eos (never stop early), no processors. Values
    # left None in a generate() call are filled from model.generation_config, so the
    # model's own one (eos, maybe a repetition penalty) must go.
    pad = model.generation_config.pad_token_id
    if isinstance(pad, list):
        pad = pad[0]
    model.generation_config = transformers.GenerationConfig(
        do_sample=False, num_beams=1, eos_token_id=None, bos_token_id=None,
        pad_token_id=0 if pad is None else pad)
    return tok, model


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False)


def _hs(output):
    # transformers 5 decoder layers return a tensor [B, T, H]; older ones a tuple whose
    # first element is that tensor.
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def source_reps(model, ids, pos):
    """hidden_states[l + 1][0, pos] for every l, from a pass over ids[0..=pos], and the
    logits at pos."""
    num_layers = len(model.model.layers)
    x = torch.tensor([ids[:pos + 1]], dtype=torch.int64)
    out = model(input_ids=x, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    assert len(hs) == num_layers + 1, len(hs)
    reps = [hs[l + 1][0, pos].detach().clone() for l in range(num_layers)]
    return reps, out.logits[0, pos].float()


@torch.no_grad()
def generate(model, ids, max_new, patch_pos=None, cells=()):
    """Greedy continuations of len(cells) copies of `ids` (one copy if no cells), row r
    patched with cells[r] = (layer_target, skip_final_ln, vector) during the prompt pass.
    Returns (new ids per row, margins per row)."""
    num_layers = len(model.model.layers)
    batch = max(1, len(cells))
    T = len(ids)
    # one hook per module, patching all of its rows
    per_module = {}
    for r, (lt, skip_final_ln, vec) in enumerate(cells):
        if skip_final_ln:
            assert lt == num_layers - 1
            module = model.model.norm
        else:
            module = model.model.layers[lt]
        per_module.setdefault(module, []).append((r, vec))
    hooks = []

    def make_hook(rows):
        index = torch.tensor([r for r, _ in rows], dtype=torch.int64)
        vecs = torch.stack([v for _, v in rows])
        calls = [0]

        def hook(_module, _inputs, output):
            calls[0] += 1
            if calls[0] > 1:
                return  # a decoding step: the prompt's patched keys/values are cached
            h = _hs(output)
            assert h.shape[:2] == (batch, T), (h.shape, batch, T)
            h[index, patch_pos] = vecs

        return hook, calls

    counters = []
    try:
        for module, rows in per_module.items():
            hook, calls = make_hook(rows)
            counters.append(calls)
            hooks.append(module.register_forward_hook(hook))
        x = torch.tensor([ids] * batch, dtype=torch.int64)
        out = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1,
            use_cache=True, max_new_tokens=max_new, return_dict_in_generate=True,
            output_logits=True)
    finally:
        for h in hooks:
            h.remove()
    assert all(c[0] == max_new for c in counters), ([c[0] for c in counters], max_new)
    new = out.sequences[:, T:]
    assert new.shape == (batch, max_new), new.shape
    logits = torch.stack(out.logits, dim=1).float()  # [B, max_new, V]
    assert logits.shape[:2] == (batch, max_new)
    top2 = torch.topk(logits, 2, dim=-1)
    # greedy over the raw logits: no processor changed them (torch.topk and argmax may
    # break exact ties differently; a float-exact tie would show as margin 0)
    chosen = torch.gather(logits, 2, new[:, :, None])[:, :, 0]
    assert torch.equal(chosen, top2.values[:, :, 0]), "generated token is not the argmax"
    margins = (top2.values[:, :, 0] - top2.values[:, :, 1]).tolist()
    return new.tolist(), [[round(m, 4) for m in row] for row in margins]


def placeholder_position(tok, ids, prompt):
    at = [i for i, t in enumerate(ids) if tok.decode([t], skip_special_tokens=False).strip()
          == PLACEHOLDER]
    if len(at) != 1:
        sys.exit(f"target prompt {prompt!r} has {len(at)} placeholder {PLACEHOLDER!r} "
                 "tokens: use exactly one")
    return at[0]


def token_ending_at(offsets, end):
    for i, (s, t) in enumerate(offsets):
        if s < end <= t:
            return i
    return None


# ---------------------------------------------------------------- the experiment

def prepare(tok, model, relations, args, source_layers):
    """Baselines and source passes: per row, the dict written to the JSON (cells empty)
    plus the states to patch. The same for both ways."""
    baselines = {}
    targets = {}
    out_rows = []
    for name, rows in relations:
        for i, row in enumerate(rows):
            prompt = fill_placeholder(row["target"], row["subject"])
            if prompt not in baselines:
                ids, margins = generate(model, encode(tok, prompt).ids, args.max_new)
                baselines[prompt] = (ids[0], margins[0])
            b_ids, b_margins = baselines[prompt]
            baseline = tok.decode(b_ids, skip_special_tokens=False)
            if row["target"] not in targets:
                t_ids = encode(tok, row["target"]).ids
                targets[row["target"]] = (t_ids,
                                          placeholder_position(tok, t_ids, row["target"]))
            t_ids, t_pos = targets[row["target"]]
            r = dict(relation=name, row=i, line=row["line"], subject=row["subject"],
                     object=row["object"], source=row["source"], source_position=None,
                     source_top1=None, source_margin=None,
                     target=row["target"], target_position=t_pos, baseline_prompt=prompt,
                     baseline=baseline, baseline_ids=b_ids, baseline_margins=b_margins,
                     baseline_correct=is_correct(row["object"], baseline,
                                                 bool(row.get("demonstrations"))),
                     evaluated=False, skipped=None,
                     generations=[], correct=[], ids=[], margins=[])
            if row.get("demonstrations"):
                r["demonstrations"] = row["demonstrations"]
            r["evaluated"] = r["baseline_correct"] or args.all_rows
            reps = None
            if r["evaluated"]:
                enc = encode(tok, row["source"])
                end = row.get("subject_end")
                if end is None:
                    end = row["source"].index(row["subject"]) + len(row["subject"])
                pos = token_ending_at(enc.offsets, end)
                if pos is None:
                    r["evaluated"] = False
                    r["skipped"] = "no token ends the subject in the source text"
                else:
                    r["source_position"] = pos
                    all_reps, logits = source_reps(model, enc.ids, pos)
                    reps = [all_reps[l] for l in source_layers]
                    top2 = torch.topk(logits, 2)
                    r["source_top1"] = int(top2.indices[0])
                    r["source_margin"] = round(float(top2.values[0] - top2.values[1]), 4)
            out_rows.append((r, reps, t_ids))
    return out_rows


def cells_of(prepared, source_layers, target_layers, num_layers):
    """(row index, si, ti, target ids, patch position, cell) for every evaluated cell."""
    cells = []
    for k, (r, reps, t_ids) in enumerate(prepared):
        if not r["evaluated"]:
            continue
        for si, ls in enumerate(source_layers):
            for ti, lt in enumerate(target_layers):
                skip = ls == lt == num_layers - 1
                cells.append((k, si, ti, t_ids, r["target_position"], (lt, skip, reps[si])))
    return cells


def run(tok, model, relations, args, source_layers, target_layers, way):
    num_layers = len(model.model.layers)
    t0 = time.perf_counter()
    prepared = prepare(tok, model, relations, args, source_layers)
    cells = cells_of(prepared, source_layers, target_layers, num_layers)
    results = {}  # (row index, si, ti) -> (ids, margins)
    print(f"{way}: {len(cells)} cells", file=sys.stderr, flush=True)

    def progress(done):
        if done % 100 < (1 if way == "per-cell" else args.batch) or done == len(cells):
            print(f"  {done}/{len(cells)} cells, {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr, flush=True)

    if way == "per-cell":
        for n, (k, si, ti, t_ids, t_pos, cell) in enumerate(cells):
            ids, margins = generate(model, t_ids, args.max_new, t_pos, [cell])
            results[(k, si, ti)] = (ids[0], margins[0])
            progress(n + 1)
    else:
        groups = {}  # identical target prompts batch without padding
        for c in cells:
            groups.setdefault(tuple(c[3]), []).append(c)
        for group in groups.values():
            for b in range(0, len(group), args.batch):
                chunk = group[b:b + args.batch]
                t_ids, t_pos = chunk[0][3], chunk[0][4]
                ids, margins = generate(model, t_ids, args.max_new, t_pos,
                                        [c[5] for c in chunk])
                for c, i, m in zip(chunk, ids, margins):
                    results[(c[0], c[1], c[2])] = (i, m)
                progress(len(results))
    ns, nt = len(source_layers), len(target_layers)
    rows = []
    for k, (r, _, t_ids) in enumerate(prepared):
        last = num_layers - 1
        if r["evaluated"] and last in source_layers and last in target_layers \
                and r["target_position"] == len(t_ids) - 1:
            # final-layer rule: patching the final-normed state at the target's last
            # position makes its first token the source's own next-token prediction
            first = results[(k, source_layers.index(last), target_layers.index(last))][0][0]
            assert first == r["source_top1"] or r["source_margin"] < 1e-3, (r, first)
        if r["evaluated"]:
            r["ids"] = [[results[(k, si, ti)][0] for ti in range(nt)] for si in range(ns)]
            r["margins"] = [[results[(k, si, ti)][1] for ti in range(nt)]
                            for si in range(ns)]
            r["generations"] = [[tok.decode(i, skip_special_tokens=False) for i in row]
                                for row in r["ids"]]
            r["correct"] = [[is_correct(r["object"], g, bool(r.get("demonstrations")))
                             for g in row] for row in r["generations"]]
        rows.append(r)
    wall = time.perf_counter() - t0
    return rows, len(cells), wall


def summarize(rows, names, ns, nt):
    out = []
    for name in names:
        mine = [r for r in rows if r["relation"] == name]
        ev = [r for r in mine if r["evaluated"]]
        acc = [[(sum(r["correct"][si][ti] for r in ev) / len(ev)) if ev else None
                for ti in range(nt)] for si in range(ns)]
        out.append(dict(relation=name, rows=len(mine),
                        known_unpatched=sum(r["baseline_correct"] for r in mine),
                        evaluated=len(ev),
                        skipped=sum(r["skipped"] is not None for r in mine),
                        accuracy=acc))
    return out


def compare_ways(a_rows, b_rows, source_layers, target_layers):
    """Cells whose generated ids differ between two runs of the same cells."""
    mismatches, cells, max_margin_diff = [], 0, 0.0
    for a, b in zip(a_rows, b_rows):
        assert (a["relation"], a["row"], a["evaluated"]) == \
            (b["relation"], b["row"], b["evaluated"])
        if a["baseline_ids"] != b["baseline_ids"]:
            mismatches.append(dict(relation=a["relation"], row=a["row"], cell="baseline"))
        for si, ls in enumerate(source_layers):
            for ti, lt in enumerate(target_layers):
                if not a["evaluated"]:
                    continue
                cells += 1
                x, y = a["ids"][si][ti], b["ids"][si][ti]
                same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), len(x))
                for i in range(same):
                    max_margin_diff = max(max_margin_diff, abs(
                        a["margins"][si][ti][i] - b["margins"][si][ti][i]))
                if x != y:
                    step = next(i for i, (p, q) in enumerate(zip(x, y)) if p != q)
                    mismatches.append(dict(
                        relation=a["relation"], row=a["row"], source_layer=ls,
                        target_layer=lt, first_diff_step=step, ids=x, other_ids=y,
                        margin=a["margins"][si][ti][step],
                        other_margin=b["margins"][si][ti][step]))
    return cells, mismatches, max_margin_diff


def dump(result, rows, path):
    """Pretty header, one row per line (keeps the fixtures small and diffable)."""
    head = json.dumps(result, indent=1, ensure_ascii=False)
    assert head.endswith("\n}")
    body = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in rows)
    with open(path, "w", encoding="utf-8") as f:
        f.write(head[:-2] + ',\n "rows": [\n' + body + "\n ]\n}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--relations", required=True, nargs="+")
    ap.add_argument("--target", help="target prompt with the placeholder x (overrides)")
    ap.add_argument("--demonstrations", type=int, default=3,
                    help="demonstrations before LRE queries without a target (0: none)")
    ap.add_argument("--demo-seed", type=int, default=0,
                    help="seed of the order of the demonstrations")
    ap.add_argument("--source-layers", default="all")
    ap.add_argument("--target-layers", default="all")
    ap.add_argument("--max-new", type=int, default=10)
    ap.add_argument("--all-rows", action="store_true",
                    help="evaluate rows whose baseline is wrong too")
    ap.add_argument("--limit", type=int, help="first N kept rows of each file")
    ap.add_argument("--way", choices=["per-cell", "batched"], default="per-cell")
    ap.add_argument("--batch", type=int, default=16, help="cells per generate (batched)")
    ap.add_argument("--check", action="store_true",
                    help="also run the other way and compare the generated ids")
    ap.add_argument("--time", action="store_true", help="report wall time and cells/s")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.max_new < 1 or args.batch < 1 or (args.limit is not None and args.limit < 1):
        sys.exit("--max-new, --batch and --limit must be at least 1")
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    relations, dropped = [], {}
    for path in args.relations:
        name, rows, drops = load_relation(path, args.target, args.demonstrations,
                                          args.demo_seed)
        if any(n == name for n, _ in relations):
            sys.exit(f"two relation files named {name!r}")
        kept = len(rows)
        if args.limit is not None:
            rows = rows[:args.limit]
        if not rows:
            sys.exit(f"{path}: no row left to evaluate (dropped: {drops})")
        print(f"{name}: {kept} rows kept, {len(rows)} used; dropped: {drops or 'none'}",
              flush=True)
        relations.append((name, rows))
        dropped[name] = drops

    tok, model = load(args.model)
    num_layers = len(model.model.layers)
    source_layers = parse_layers(args.source_layers, num_layers)
    target_layers = parse_layers(args.target_layers, num_layers)
    print(f"{type(model).__name__}: L={num_layers} H={model.config.hidden_size} "
          f"V={model.config.vocab_size}", flush=True)

    rows, n_cells, wall = run(tok, model, relations, args, source_layers, target_layers,
                              args.way)
    timing = dict(way=args.way, batch=args.batch if args.way == "batched" else 1,
                  threads=args.threads, cells=n_cells, wall_s=round(wall, 3),
                  cells_per_s=round(n_cells / wall, 3) if wall > 0 else None)
    check = None
    if args.check:
        other = "batched" if args.way == "per-cell" else "per-cell"
        other_rows, _, _ = run(tok, model, relations, args, source_layers, target_layers,
                               other)
        cells, mismatches, margin_diff = compare_ways(rows, other_rows, source_layers,
                                                      target_layers)
        check = dict(ways=[args.way, other], batch=args.batch, cells=cells,
                     mismatches=mismatches, max_margin_diff=round(margin_diff, 4))
        print(f"check {args.way} vs {other} (batch {args.batch}): {cells} cells, "
              f"{len(mismatches)} mismatches; largest margin difference over the tokens "
              f"both generate: {margin_diff:.4f}", flush=True)
        for m in mismatches:
            print(f"  mismatch: {m}", flush=True)

    names = [n for n, _ in relations]
    ns, nt = len(source_layers), len(target_layers)
    summary = summarize(rows, names, ns, nt)
    result = {
        "model": args.model,
        "relations": args.relations,
        "num_layers": num_layers,
        "settings": {"source_layers": source_layers, "target_layers": target_layers,
                     "max_new": args.max_new, "only_correct": not args.all_rows,
                     "limit": args.limit, "target": args.target, "way": args.way,
                     "batch": args.batch, "demonstrations": args.demonstrations,
                     "demo_seed": args.demo_seed},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__,
                     "tokenizers": tokenizers.__version__},
        "dropped": dropped,
        "summary": summary,
    }
    if args.time:
        result["timing"] = timing
    if check is not None:
        result["check"] = check
    dump(result, rows, args.out)

    for s in summary:
        # the first best cell, in (source layer, target layer) order
        best = max(((s["accuracy"][si][ti], source_layers[si], target_layers[ti])
                    for si in range(ns) for ti in range(nt)
                    if s["accuracy"][si][ti] is not None), key=lambda c: c[0],
                   default=None)
        print(f"{s['relation']}: {s['known_unpatched']} of {s['rows']} rows known "
              f"unpatched, {s['evaluated']} evaluated; best accuracy "
              + (f"{best[0]:.3f} at {best[1]} -> {best[2]}" if best else "n/a"))
    if args.time:
        print(f"time ({args.way}, batch {timing['batch']}, {args.threads} threads): "
              f"{timing['cells']} cells in {timing['wall_s']:.2f}s = "
              f"{timing['cells_per_s']} cells/s")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 1 if check is not None and check["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
