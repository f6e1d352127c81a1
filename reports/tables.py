"""The report's tables as pandas DataFrames of numbers and status words, from ledger runs (reports.ledger).

    table3(df, reference)          Table 3 beside the paper: one row per model, in the paper's order
    table3_by_lr(df, reference)    every requested (model, LR) cell, missing/diverged/failed/stalled named
    ablation_table(df, name, ref)  one ablation of bench.ablations: each model x arm, the difference to the baseline
    left_out(df, reference)        runs in no table, grouped by the config fields that differ

Like with like: a run counts only when its whole config equals the reference's (reports.ledger.same_config).

Protocols: `best_over_lr` (the paper's: the LR judged on the test set) and `select_on_val` (the LR judged on the
val5k split, for runs trained on train45k). Missing, diverged, stalled, failed and unfinished runs are named, never
filled.
"""
from __future__ import annotations

import statistics
from collections import Counter
from fractions import Fraction

import pandas as pd

from allconv.specs import PAPER_AUGMENTED_ERROR_PCT, SPECS, macs
from bench.ablations import ABLATIONS, arm_overrides, arm_values, as_recorded, varied
from reports.ledger import _known, differences, requested_grid, same_config
from reports.requested import lr_grid, missing_seeds, requested_runs, seeds_text

DIGITS = 6
"""Stored numbers are rounded to 6 decimals: exact for errors on <= 10^6 test images and seed means, and free of
float noise (9.5 - 9.08 is stored as 0.42, not 0.41999999999999993)."""


TEXT_COLUMNS = ("paper_name", "status", "diverged_lrs", "not_measured", "val_status", "val_diverged_lrs",
                "val_not_measured", "paper_params", "ablation", "model", "arm", "arm_here", "protocol", "source",
                "device_name", "precision", "eval_precision", "backend", "peak_basis", "eval_peak_basis", "claim", "x",
                "relation", "y", "test", "verdict", "run_keys", "val_run_keys")
"""Columns of words: pandas "string" dtype (missing = pd.NA), so a CSV read back with these as "string" equals
the table, even where a cell looks like a number (diverged LRs "0.25")."""


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    return table.astype({c: "string" for c in TEXT_COLUMNS if c in table.columns})


def _round(x):
    return round(float(x), DIGITS) if _known(x) else float("nan")


def lr_text(lr: float) -> str:
    return f"{lr:g}"


def exact_mean(values: list[float]) -> Fraction:
    """The mean of errors as recorded (each its shortest decimal, as JSON wrote it), exactly: the float means of
    equal decimal means can differ in their last bit (9.0, 9.3 and 9.1, 9.2: 9.15 and 9.149999999999999), which
    made a tie of seed means no tie."""
    return sum(map(Fraction, map(repr, map(float, values))), Fraction(0)) / len(values)


def per_lr(runs: pd.DataFrame, grid: list[float]) -> list[dict]:
    """Seeds aggregated per LR of one model's runs: the completed runs' test and val errors, how many runs ended
    otherwise, and `absent`, the seeds a command asked for at that LR without a run there (reports.requested; none
    at an LR with no run at all, which is "missing" as a whole)."""
    out, requested = [], requested_runs(runs)
    for lr in grid:
        at = runs[runs["lr"].map(lambda x: _known(x) and float(x) == lr).astype(bool)]
        done = at[at["outcome"] == "completed"]
        out.append({"lr": lr, "n": len(at), "outcomes": Counter(at["outcome"]),
                    "test": [float(x) for x in done["test_error_pct"] if _known(x)],
                    "val": [float(x) for x in done["val_error_pct"] if _known(x)],
                    "absent": missing_seeds(at, requested.get(lr)) if len(at) else []})
    return out


def _select(runs: pd.DataFrame, grid: list[float], judge: str) -> dict:
    """Aggregate over seeds per LR, pick the LR with the lowest mean of `judge` ("test" or "val", compared exactly:
    `exact_mean`; ties: the larger LR), and report the test error there: mean, sample std (ddof=1, only when
    n > 1) and seed count.
    An LR is a candidate only when none of its runs diverged: an LR that diverges for some seeds is not a stable
    choice, and averaging only the survivors would flatter it. Failed or unfinished seeds were not measured, nor
    were seeds a command asked for at an LR but that have no run there (reports.requested: "0.05 missing seeds 1,
    2"); they are listed, and the LR is judged on the seeds that completed. `settled`: the selected LR has no seed
    still to measure ("partial" but settled: only an LR yet to measure can change the error, and only lower it)."""
    base = {"error_pct": float("nan"), "error_std": float("nan"), "n_seeds": 0, "lr": float("nan")}
    if len(runs) == 0:  # "missing" says it all: no LR list
        return {**base, "diverged_lrs": None, "not_measured": None, "status": "missing"}
    diverged, unmeasured, candidates = [], [], []
    for r in per_lr(runs, grid):
        c, n = r["outcomes"], r["n"]
        if n == 0:
            unmeasured.append(f"{lr_text(r['lr'])} missing")
            continue
        if c["diverged"]:
            diverged.append(lr_text(r["lr"]) + ("" if c["diverged"] == n else f" ({c['diverged']}/{n} seeds)"))
        r["open"] = bool(r["absent"]) or any(c[w] for w in ("stalled", "failed", "unfinished"))  # seeds to measure
        for word in ("stalled", "failed", "unfinished"):
            if c[word]:
                unmeasured.append(f"{lr_text(r['lr'])} {word}" + ("" if c[word] == n else f" ({c[word]}/{n} seeds)"))
        if r["absent"]:
            unmeasured.append(f"{lr_text(r['lr'])} {seeds_text(r['absent'])}")
        if judge == "val" and c["completed"] and len(r["val"]) < c["completed"]:
            unmeasured.append(f"{lr_text(r['lr'])} no val error")
        if not c["diverged"] and r["test"] and (judge == "test" or len(r["val"]) == len(r["test"])):
            candidates.append(r)
    base = {**base, "diverged_lrs": ", ".join(diverged) or None, "not_measured": ", ".join(unmeasured) or None}
    if not candidates:
        return {**base, "status": "/".join(sorted(set(runs["outcome"]) - {"completed"})) or "failed"}
    best = min(candidates, key=lambda r: (exact_mean(r[judge]), -r["lr"]))
    test = best["test"]
    return {**base, "error_pct": _round(statistics.fmean(test)),
            "error_std": _round(statistics.stdev(test)) if len(test) > 1 else float("nan"),
            "n_seeds": len(test), "lr": best["lr"], "status": "partial" if unmeasured else "ok", "errors": test,
            "settled": not best["open"]}


def best_over_lr(runs: pd.DataFrame, grid: list[float] | None = None) -> dict:
    """The paper's protocol (Table 3): each model's lowest test error over the LR grid, the LR judged on the test
    set itself (the paper has no validation split). Uses each run's final `test_error_pct`, not its best epoch."""
    return _select(runs, lr_grid(runs) if grid is None else grid, "test")


def select_on_val(runs: pd.DataFrame, grid: list[float] | None = None) -> dict:
    """The honest protocol: among runs trained on train45k, the LR with the lowest `val_error_pct` (val5k), and
    that LR's test error. With seeds, the LR is chosen on the seed-mean validation error."""
    return _select(runs, lr_grid(runs) if grid is None else grid, "val")


def run_keys(runs: pd.DataFrame, lr: float) -> str | None:
    """The runs behind a selected cell, to find their records: the run keys (record field `run_key`) of the
    completed runs at the selected `lr` whose test errors make its number, sorted, space-separated; None where
    no LR was selected."""
    if not _known(lr):
        return None
    at = runs["lr"].map(lambda x: _known(x) and float(x) == lr) & (runs["outcome"] == "completed")
    at &= runs["test_error_pct"].map(_known)
    return " ".join(sorted(map(str, runs.loc[at.astype(bool), "run_key"]))) or None


def _paper_params(text: str) -> float:
    """The paper's printed count ("1.28 M") as a number; nan for a network the paper does not print (""), as
    allconv.specs.ModelSpec declares one of one's own."""
    return float(text.split()[0]) * 1e6 if text.strip() else float("nan")


def _epoch_seconds(history) -> float | None:
    """Median seconds per epoch of one run's history (bench/run_all.py records training plus that epoch's
    evaluation), the first epoch left out when there are more (JIT, compile and cache warm-up)."""
    if not isinstance(history, list):
        return None
    secs = [float(h["seconds"]) for h in history if isinstance(h, dict) and _known(h.get("seconds"))]
    secs = secs[1:] if len(secs) > 1 else secs
    return statistics.median(secs) if secs else None


def _median(values) -> float:
    values = [float(v) for v in values if _known(v)]
    return _round(statistics.median(values)) if values else float("nan")


def table3_runs(df: pd.DataFrame, reference: dict | None, train_split: str = "train") -> pd.DataFrame:
    """Runs whose compared config equals the reference (on `train_split`): like with like (issue 10)."""
    return df[same_config(df, None if reference is None else {**reference, "train_split": train_split})]


def table3(df: pd.DataFrame, reference: dict | None) -> pd.DataFrame:
    """Table 3 beside the paper: the 12 models in the paper's order (then a network of one's own that was asked
    for or trained, with no paper number). `error_pct` is `best_over_lr` over the
    requested LR grid on the runs of the reference config (`reports.ledger.reference_config`); `val_error_pct`
    is the test error of `select_on_val` on the same config trained on train45k. Differences are ours minus the
    paper's, in percentage points. A model the grid did not request and that has no runs is "not run".
    `run_keys` and `val_run_keys` name the runs behind each number (table3.csv only: the shown tables are read)."""
    runs, val_runs = table3_runs(df, reference), table3_runs(df, reference, "train45k")
    grid = lr_grid(runs)
    val_grid = sorted(set(grid) | set(lr_grid(val_runs)), reverse=True)  # the same gamma grid, on train45k
    requested = requested_grid(runs)["models"]
    rows = []
    for name, spec in SPECS.items():
        mine, val_mine = runs[runs["model"] == name], val_runs[val_runs["model"] == name]
        if not spec.in_paper and mine.empty and val_mine.empty and (requested is None or name not in requested):
            continue  # a network of one's own that was neither asked for nor trained
        test, val = best_over_lr(mine, grid), select_on_val(val_mine, val_grid)
        if mine.empty and requested is not None and name not in requested:
            test["status"], test["not_measured"] = "not run", None
        done = mine[mine["outcome"] == "completed"]
        rows.append({
            "model": name, "paper_name": spec.paper_name, "paper_error_pct": spec.paper_error_pct,
            "error_pct": test["error_pct"], "error_std": test["error_std"], "n_seeds": test["n_seeds"],
            "diff_pp": _round(test["error_pct"] - spec.paper_error_pct), "lr": test["lr"],
            "run_keys": run_keys(mine, test["lr"]),
            "status": test["status"], "diverged_lrs": test["diverged_lrs"], "not_measured": test["not_measured"],
            "val_error_pct": val["error_pct"], "val_error_std": val["error_std"], "val_n_seeds": val["n_seeds"],
            "val_diff_pp": _round(val["error_pct"] - spec.paper_error_pct), "val_lr": val["lr"],
            "val_run_keys": run_keys(val_mine, val["lr"]),
            "val_status": val["status"] if len(val_runs) else "not run",
            "val_diverged_lrs": val["diverged_lrs"], "val_not_measured": val["not_measured"],
            "params": spec.num_params, "paper_params": spec.paper_params or None, "paper_params_n": _paper_params(
                spec.paper_params), "macs": macs(name),
            "train_images_per_s": _median(done["train_images_per_s"]),
            "epoch_s": _median(_epoch_seconds(h) for h in done["history"]),
        })
    return _typed(pd.DataFrame(rows))


def table3_by_lr(df: pd.DataFrame, reference: dict | None) -> pd.DataFrame:
    """Every requested (model, LR) cell of Table 3's runs, one row each: the seed mean, std and count of the
    completed runs, and how the others ended ("missing" where nothing ran; "missing seeds 1, 2" where seeds a
    command asked for have no run, which `n_runs` does not count). Models with no runs that the grid did not
    request are left out."""
    runs = table3_runs(df, reference)
    grid, requested = lr_grid(runs), requested_grid(runs)["models"]
    rows = []
    for name, spec in SPECS.items():
        mine = runs[runs["model"] == name]
        if mine.empty and (requested is None or name not in requested):
            continue
        for r in per_lr(mine, grid):
            ended = [f"{k}" + ("" if n == r["n"] else f" {n}/{r['n']}")
                     for k, n in sorted(r["outcomes"].items()) if k != "completed"]
            absent = [seeds_text(r["absent"])] if r["absent"] else []
            status = "missing" if r["n"] == 0 else ", ".join(ended + absent) or "ok"
            test = r["test"]
            rows.append({"model": name, "paper_name": spec.paper_name, "lr": r["lr"], "n_runs": r["n"],
                         "n_seeds": len(test), "error_pct": _round(statistics.fmean(test)) if test else float("nan"),
                         "error_std": _round(statistics.stdev(test)) if len(test) > 1 else float("nan"),
                         "status": status})
    columns = ["model", "paper_name", "lr", "n_runs", "n_seeds", "error_pct", "error_std", "status"]
    return _typed(pd.DataFrame(rows, columns=columns))


def left_out(df: pd.DataFrame, reference: dict | None) -> list[tuple[int, str]]:
    """Runs of the preset that are in neither Table 3 (either split) nor an ablation arm, grouped by how their
    config differs from the reference: [(3, "init=kaiming"), ...], largest group first."""
    used = table3_runs(df, reference).index.union(table3_runs(df, reference, "train45k").index)
    for name in ABLATIONS:
        used = used.union(ablation_runs(df, name, reference).index)
    rest = df.drop(index=used)
    counts = Counter(differences(c, reference or {}) for c in rest["config"])
    return sorted(((n, d) for d, n in counts.items()), key=lambda x: (-x[0], x[1]))


def arm_config(reference: dict | None, name: str, arm: str) -> dict | None:
    """The compared config of one arm: the reference (Table 3's) with the arm's overrides, as bench.config.expand
    trains it on top of that grid."""
    if reference is None:
        return None
    overrides = arm_overrides(ABLATIONS[name], arm)
    if "eval_precision" not in reference:  # recorded before eval_precision was
        overrides.pop("eval_precision", None)
    return {**reference, **as_recorded(overrides)}


def ablation_runs(df: pd.DataFrame, name: str, reference: dict | None) -> pd.DataFrame:
    """The runs of ablation `name` (its models, the config of one of its arms), with their arm."""
    ablation = ABLATIONS[name]
    mine = df[df["model"].isin(ablation.models)]
    parts = [mine[same_config(mine, arm_config(reference, name, arm))].assign(arm=arm) for arm in ablation.arms]
    return pd.concat(parts) if parts else mine.assign(arm=None)


def ablation_has_runs(df: pd.DataFrame, name: str, reference: dict | None) -> bool:
    """Whether any arm but those of Table 3's own config has runs: only then is it reported. The first arm (the
    baseline) is Table 3's; so is any arm whose overrides the grid already had (under an fp32 Table 3, the smoke
    preset's, the precision ablation's fp32 arm)."""
    own = [arm for arm in ABLATIONS[name].arms if arm_config(reference, name, arm) == reference]
    return bool((~ablation_runs(df, name, reference)["arm"].isin(own)).any())


def ablation_table(df: pd.DataFrame, name: str, reference: dict | None) -> pd.DataFrame:
    """One ablation: each studied model x arm, the first arm the baseline. Arms trained on train45k are judged
    with `select_on_val`, the others with `best_over_lr`; each arm has its own LR grid (Adam has its own).
    An arm's label describes it on top of the paper preset's values; `arm_here` names the fields of the
    ablation where this grid's arm has other values ("batch_size=64" for the smoke preset's first batch-size arm),
    missing where the label holds."""
    ablation = ABLATIONS[name]
    runs = ablation_runs(df, name, reference)
    first = next(iter(ablation.arms))
    requested = requested_grid(table3_runs(df, reference))["lrs"]
    arms = []  # per arm, the same for every model: its runs, LR grid, protocol and whether it is augmented
    for arm, overrides in ablation.arms.items():
        arm_runs = runs[runs["arm"] == arm]  # what the arm trained: Table 3's config and its overrides
        values, labelled = arm_config(reference, name, arm) or arm_values(ablation, arm), arm_values(ablation, arm)
        here = ", ".join(f"{k}={values.get(k)}" for k in varied(ablation) if values.get(k) != labelled[k]) or None
        arms.append((arm, here, arm_runs, lr_grid(arm_runs, overrides.get("lrs", requested)),
                     values["train_split"] == "train45k", values["augment"] != "none"))
    rows = []
    for model in ablation.models:
        baseline = None
        for arm, here, arm_runs, grid, on_val, augmented in arms:
            pick = select_on_val if on_val else best_over_lr
            sel = pick(arm_runs[arm_runs["model"] == model], grid)
            baseline = sel["error_pct"] if baseline is None else baseline
            paper = ablation.paper_error_pct.get(arm)
            if paper is None and augmented:
                paper = PAPER_AUGMENTED_ERROR_PCT.get(model)
            if paper is None and arm == first and not augmented:
                paper = SPECS[model].paper_error_pct
            paper = float("nan") if paper is None else paper
            rows.append({"ablation": name, "model": model, "paper_name": SPECS[model].paper_name, "arm": arm,
                         "arm_here": here, "protocol": "LR judged on val5k" if on_val else "LR judged on test",
                         "error_pct": sel["error_pct"], "error_std": sel["error_std"], "n_seeds": sel["n_seeds"],
                         "lr": sel["lr"], "status": sel["status"], "diff_vs_baseline_pp": _round(
                             sel["error_pct"] - baseline), "paper_error_pct": paper,
                         "diff_vs_paper_pp": _round(sel["error_pct"] - paper),
                         "diverged_lrs": sel["diverged_lrs"], "not_measured": sel["not_measured"]})
    return _typed(pd.DataFrame(rows))
