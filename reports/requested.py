"""What the runs' commands asked for (record field `grid`), beyond what ran: the LRs a table covers, and per LR the
seeds that never ran (no record, no checkpoint), which the runs alone cannot show.

    lr_grid(runs)               the LRs requested or run, largest first
    requested_runs(runs)        {lr: [seed set, ...]} the records' commands asked for, model by model
    missing_seeds(at, sets)     the seeds asked for at one LR that have no run there, sorted
"""
from __future__ import annotations

import pandas as pd

from reports.ledger import _known, requested_grid


def lr_grid(runs: pd.DataFrame, requested=None) -> list[float]:
    """The LRs a group of runs was meant to cover: the requested LRs (record field `grid`, or `requested`) and
    every LR that ran, largest first (the paper's order: 0.25, 0.1, 0.05, 0.01)."""
    if requested is None and "grid" in runs.columns:
        requested = requested_grid(runs)["lrs"]
    grid = {float(lr) for lr in runs["lr"] if _known(lr)} | {float(lr) for lr in requested or ()}
    return sorted(grid, reverse=True)


def requested_runs(runs: pd.DataFrame) -> dict[float, list[frozenset[int]]]:
    """Per LR, the seed sets the commands behind one model's `runs` asked for there: each command's own LRs x
    seeds (record field `grid`), from the records whose grid names their model. Per command, not the union of all
    LRs x all seeds: `--lrs 0.05 0.01 --seeds 0` then `--lrs 0.05 --seeds 0 1 2` asks for seeds 1 and 2 at 0.05
    only. A record without a grid (older) asks for nothing beyond what ran. One shared set per distinct grid, never
    the product: an untrusted record's grid may hold 10^5 seeds and 10^3 LRs (bench.schema bounds only its types)."""
    out: dict[float, list[frozenset[int]]] = {}
    if "grid" not in runs.columns:
        return out
    seen = set()
    for model, grid in zip(runs["model"], runs["grid"]):
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), (list, tuple)) for k in
                                                 ("models", "lrs", "seeds")):
            continue
        if model in grid["models"]:
            key = (tuple(grid["lrs"]), tuple(grid["seeds"]))
            if key in seen:
                continue
            seen.add(key)
            seeds = frozenset(int(s) for s in grid["seeds"])
            for lr in dict.fromkeys(float(x) for x in grid["lrs"]):
                out.setdefault(lr, []).append(seeds)
    return out


def missing_seeds(at: pd.DataFrame, sets) -> list[int]:
    """The seeds of `sets` (`requested_runs(...)[lr]`) that no run of one LR, `at`, has (any outcome), sorted."""
    if not sets:
        return []
    return sorted(frozenset().union(*sets) - {int(s) for s in at["seed"] if _known(s)})


SHOWN = 5
"""At most this many missing seeds are named in a cell; more are counted ("missing 120 seeds (5, 6, 7, 8, 9, ...)")."""


def seeds_text(seeds: list[int]) -> str:
    """"missing seeds 1, 2" ("missing seed 1"), as Table 3's cells name them; past `SHOWN`, counted."""
    if len(seeds) > SHOWN:
        return f"missing {len(seeds):,} seeds ({', '.join(map(str, seeds[:SHOWN]))}, ...)"
    return f"missing seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}"
