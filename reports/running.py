"""Runs still training: a checkpoint in `<results>/checkpoints/` without a record, shown in the report as
unfinished from its checkpoint (reports.ledger.load_ledger), found by recomputing the run keys of Table 3's cells.

    rows, notes = unfinished_runs("results", records)
    run_of_key(records)   run_key -> (model, lr, a record) for every Table 3 cell under the records' configs
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from allconv.specs import SPECS
from bench.ablations import BASELINE
from bench.config import RunConfig, config_key
from reports.ledger import COLUMNS, _blob, requested_grid


def run_of_key(records: pd.DataFrame) -> dict[str, tuple[str, float, dict]]:
    """run_key -> (model, lr, a record of that seed) for every Table 3 cell (every model of allconv.specs at the
    paper's and the requested LRs, each requested seed and the records' own) under each distinct config of the
    records, model, LR and seed aside: where a checkpoint of a run without a record belongs (run_all names it by the
    run key only; a seed of `--seeds 0 1 2` still training has no record of its seed yet). The record given for a
    seed it was not trained with is a copy carrying that seed. A record's own key maps to itself."""
    grid = requested_grid(records) if "grid" in records else {}
    lrs, seeds = grid.get("lrs") or [], grid.get("seeds") or []  # numbers (bench.schema)
    configs = {}  # per config apart from model, LR and seed: a record of each seed (they give the same keys)
    for r in records.to_dict("records"):
        if isinstance(r.get("config"), dict):
            blob = _blob({k: v for k, v in r["config"].items() if k not in ("model", "lr", "seed")})
            configs.setdefault(blob, {}).setdefault(r["config"]["seed"], r)
    out = {}
    for by_seed in configs.values():
        r = next(iter(by_seed.values()))
        for seed in {*by_seed, *seeds}:
            sibling = by_seed.get(seed) or {**r, "seed": seed, "config": {**r["config"], "seed": seed}}
            out.update({config_key({**sibling["config"], "model": model, "lr": lr}): (model, lr, sibling)
                        for model in SPECS for lr in {*RunConfig().lrs, *lrs}})
    return out


def unfinished_runs(results_dir, records: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """A row per run that is still training: a checkpoint in `<results>/checkpoints/` without a record of its run,
    found by recomputing the run keys of every Table 3 cell under the records' configs (`run_of_key`). The row is
    its record's sibling as run_all would write it ("unfinished", the checkpoint's epochs and history; nothing it
    has not measured); `from_checkpoint` marks it. And notes on the checkpoints it could not read or place (left
    where they are: run_all sets a damaged one aside when it resumes)."""
    paths = sorted((Path(results_dir) / "checkpoints").glob("*.pt"))
    if not paths:
        return [], []
    try:
        from bench.checkpoint import progress
    except ImportError:  # no torch here
        return [], [f"{len(paths)} checkpoint(s) of runs still training not read (torch is not installed)."]
    cells, recorded, rows, bad, foreign = run_of_key(records), set(records["run_key"]), [], [], 0
    for path in paths:
        if path.stem in recorded:
            continue  # a failed or stalled run keeps its checkpoint: its record speaks for it
        if path.stem not in cells:
            foreign += 1
            continue
        try:
            state = progress(path)
        except ValueError as e:
            bad.append(f"{path.name} ({e})")
            continue
        model, lr, sibling = cells[path.stem]
        spec, history = SPECS[model], state["history"]
        row = {c: None for c in COLUMNS}
        shared = ("preset", *BASELINE, "val_split", "backend", "mode", "channels_last", "compile", "cuda_graphs",
                  "eval_precision", "data", "grid")  # the record's config and data: the run's own, bar model and LR
        row.update({k: sibling[k] for k in shared if k in sibling})
        row.update(run_key=path.stem, status="unfinished", model=model, lr=lr, seed=sibling["seed"],
                   display_name=spec.paper_name, epochs=sibling["epochs"], epochs_completed=state["epoch"],
                   config={**sibling["config"], "model": model, "lr": lr}, history=history,
                   wall_time_s=state["wall_s"], from_checkpoint=True, checkpoint=(path.name, state["sha256"]))
        rows.append(row)
    notes = [f"Not read: {len(bad)} damaged checkpoint(s): {', '.join(bad)}."] if bad else []
    if foreign:
        notes.append(f"{foreign} checkpoint(s) of runs no record's config describes: not shown.")
    return rows, notes
