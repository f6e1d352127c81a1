"""The report's tables as pandas DataFrames of numbers and status words, from ledger runs (reports.ledger).

    table3(df, precision)      Table 3 beside the paper: one row per model, in the paper's order
    ablation_table(df, name)   one ablation of bench.ablations: each model x arm, with the difference to the baseline
    throughput_table(df)       img/s, achieved TFLOP/s and share of the device's peak

Protocols: `best_over_lr` (the paper's: the LR judged on the test set) and `select_on_val` (the LR judged on the
val5k split, for runs trained on train45k). Missing, diverged, failed and unfinished runs are named, never filled.
"""
from __future__ import annotations

import statistics
from collections import Counter

import pandas as pd

from allconv.specs import PAPER_AUGMENTED_ERROR_PCT, SPECS, macs
from bench import devices
from bench.ablations import ABLATIONS, BASELINE, arm_of, arm_values
from reports.ledger import _known, matches

DIGITS = 6
"""Stored numbers are rounded to 6 decimals: exact for errors on <= 10^6 test images and seed means, and free of
float noise (9.5 - 9.08 is stored as 0.42, not 0.41999999999999993)."""


TEXT_COLUMNS = ("paper_name", "status", "diverged_lrs", "not_measured", "val_status", "val_diverged_lrs",
                "val_not_measured", "paper_params", "ablation", "model", "arm", "protocol", "source",
                "device_name", "precision", "backend", "peak_basis")
"""Columns of words: pandas "string" dtype (missing = pd.NA), so a CSV read back with these as "string" equals
the table, even where a cell looks like a number (diverged LRs "0.25")."""


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    return table.astype({c: "string" for c in TEXT_COLUMNS if c in table.columns})


def _round(x):
    return round(float(x), DIGITS) if _known(x) else float("nan")


def lr_text(lr: float) -> str:
    return f"{lr:g}"


def lr_grid(runs: pd.DataFrame) -> list[float]:
    """The LRs a group of runs was meant to cover: every LR run, and every LR of the runs' configs (`lrs`),
    largest first (the paper's order: 0.25, 0.1, 0.05, 0.01)."""
    grid = {float(lr) for lr in runs["lr"] if _known(lr)}
    for config in runs["config"]:
        if isinstance(config, dict) and isinstance(config.get("lrs"), (list, tuple)):
            grid |= {float(lr) for lr in config["lrs"]}
    return sorted(grid, reverse=True)


def per_lr(runs: pd.DataFrame, grid: list[float]) -> list[dict]:
    """Seeds aggregated per LR: the completed runs' test and val errors, and how many runs ended otherwise."""
    out = []
    for lr in grid:
        at = runs[runs["lr"].map(lambda x: _known(x) and float(x) == lr).astype(bool)]
        done = at[at["outcome"] == "completed"]
        out.append({"lr": lr, "n": len(at), "outcomes": Counter(at["outcome"]),
                    "test": [float(x) for x in done["test_error_pct"] if _known(x)],
                    "val": [float(x) for x in done["val_error_pct"] if _known(x)]})
    return out


def _select(runs: pd.DataFrame, grid: list[float], judge: str) -> dict:
    """Aggregate over seeds per LR, pick the LR with the lowest mean of `judge` ("test" or "val"; ties: the larger
    LR), and report the test error there: mean, sample std (ddof=1, only when n > 1) and seed count.
    An LR is a candidate only when none of its runs diverged: an LR that diverges for some seeds is not a stable
    choice, and averaging only the survivors would flatter it. Failed or unfinished seeds were not measured; they
    are listed, and the LR is judged on the seeds that completed."""
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
        for word in ("failed", "unfinished"):
            if c[word]:
                unmeasured.append(f"{lr_text(r['lr'])} {word}" + ("" if c[word] == n else f" ({c[word]}/{n} seeds)"))
        if judge == "val" and c["completed"] and len(r["val"]) < c["completed"]:
            unmeasured.append(f"{lr_text(r['lr'])} no val error")
        if not c["diverged"] and r["test"] and (judge == "test" or len(r["val"]) == len(r["test"])):
            candidates.append(r)
    base = {**base, "diverged_lrs": ", ".join(diverged) or None, "not_measured": ", ".join(unmeasured) or None}
    if not candidates:
        ended = Counter(runs["outcome"])
        status = "diverged" if ended["diverged"] == len(runs) else ("failed" if not ended["diverged"] else
                                                                    "diverged/failed")
        return {**base, "status": status}
    best = min(candidates, key=lambda r: (statistics.fmean(r[judge]), -r["lr"]))
    test = best["test"]
    return {**base, "error_pct": _round(statistics.fmean(test)),
            "error_std": _round(statistics.stdev(test)) if len(test) > 1 else float("nan"),
            "n_seeds": len(test), "lr": best["lr"], "status": "partial" if unmeasured else "ok"}


def best_over_lr(runs: pd.DataFrame, grid: list[float] | None = None) -> dict:
    """The paper's protocol (Table 3): each model's lowest test error over the LR grid, the LR judged on the test
    set itself (the paper has no validation split). Uses each run's final `test_error_pct`, not its best epoch."""
    return _select(runs, lr_grid(runs) if grid is None else grid, "test")


def select_on_val(runs: pd.DataFrame, grid: list[float] | None = None) -> dict:
    """The honest protocol: among runs trained on train45k, the LR with the lowest `val_error_pct` (val5k), and
    that LR's test error. With seeds, the LR is chosen on the seed-mean validation error."""
    return _select(runs, lr_grid(runs) if grid is None else grid, "val")


def _paper_params(text: str) -> float:
    return float(text.split()[0]) * 1e6


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


def baseline_runs(df: pd.DataFrame, precision: str, train_split: str = "train") -> pd.DataFrame:
    """Runs that are baseline in every BASELINE field, at `precision` and on `train_split`."""
    return df[matches(df, {**BASELINE, "precision": precision, "train_split": train_split})]


def table3(df: pd.DataFrame, precision: str) -> pd.DataFrame:
    """Table 3 beside the paper: the 12 models in the paper's order. `error_pct` is `best_over_lr` on the baseline
    runs (train split "train"); `val_error_pct` is the test error of `select_on_val` on train45k runs. Differences
    are ours minus the paper's, in percentage points. `precision`: Table 3's (`reports.ledger.table3_precision`)."""
    runs, val_runs = baseline_runs(df, precision), baseline_runs(df, precision, "train45k")
    grid = lr_grid(runs)
    val_grid = sorted(set(grid) | set(lr_grid(val_runs)), reverse=True)  # the same gamma grid, on train45k
    rows = []
    for name, spec in SPECS.items():
        mine, val_mine = runs[runs["model"] == name], val_runs[val_runs["model"] == name]
        test, val = best_over_lr(mine, grid), select_on_val(val_mine, val_grid)
        done = mine[mine["outcome"] == "completed"]
        rows.append({
            "model": name, "paper_name": spec.paper_name, "paper_error_pct": spec.paper_error_pct,
            "error_pct": test["error_pct"], "error_std": test["error_std"], "n_seeds": test["n_seeds"],
            "diff_pp": _round(test["error_pct"] - spec.paper_error_pct), "lr": test["lr"],
            "status": test["status"], "diverged_lrs": test["diverged_lrs"], "not_measured": test["not_measured"],
            "val_error_pct": val["error_pct"], "val_error_std": val["error_std"], "val_n_seeds": val["n_seeds"],
            "val_diff_pp": _round(val["error_pct"] - spec.paper_error_pct), "val_lr": val["lr"],
            "val_status": val["status"] if len(val_runs) else "not run",
            "val_diverged_lrs": val["diverged_lrs"], "val_not_measured": val["not_measured"],
            "params": spec.num_params, "paper_params": spec.paper_params, "paper_params_n": _paper_params(
                spec.paper_params), "macs": macs(name),
            "train_images_per_s": _median(done["train_images_per_s"]),
            "epoch_s": _median(_epoch_seconds(h) for h in done["history"]),
        })
    return _typed(pd.DataFrame(rows))


def ablation_runs(df: pd.DataFrame, name: str, precision: str) -> pd.DataFrame:
    """The runs of ablation `name`, with their arm (bench.ablations.arm_of). Every ablation but "precision" is
    compared at Table 3's precision: runs at that precision stand in for BASELINE's, others are left out."""
    records = df.to_dict("records")
    arms = []
    for record in records:
        if name != "precision":
            if record.get("precision") != precision:
                arms.append(None)
                continue
            record = {**record, "precision": BASELINE["precision"]}
        arms.append(arm_of(record, name))
    out = df.assign(arm=arms)
    return out[out["arm"].notna()]


def ablation_table(df: pd.DataFrame, name: str, precision: str = BASELINE["precision"]) -> pd.DataFrame:
    """One ablation: each studied model x arm, the first arm the baseline. Arms trained on train45k are judged
    with `select_on_val`, the others with `best_over_lr`; each arm has its own LR grid (Adam has its own)."""
    ablation = ABLATIONS[name]
    runs = ablation_runs(df, name, precision)
    first = next(iter(ablation.arms))
    arms = []  # per arm, the same for every model: its runs, LR grid, protocol and whether it is augmented
    for arm in ablation.arms:
        arm_runs, values = runs[runs["arm"] == arm], arm_values(ablation, arm)
        arms.append((arm, arm_runs, lr_grid(arm_runs), values["train_split"] == "train45k",
                     values["augment"] != "none"))
    rows = []
    for model in ablation.models:
        baseline = None
        for arm, arm_runs, grid, on_val, augmented in arms:
            pick = select_on_val if on_val else best_over_lr
            sel = pick(arm_runs[arm_runs["model"] == model], grid)
            baseline = sel["error_pct"] if baseline is None else baseline
            paper = ablation.paper_error_pct.get(arm)
            if paper is None and arm == first:
                paper = SPECS[model].paper_error_pct
            if paper is None and augmented:
                paper = PAPER_AUGMENTED_ERROR_PCT.get(model)
            paper = float("nan") if paper is None else paper
            rows.append({"ablation": name, "model": model, "paper_name": SPECS[model].paper_name, "arm": arm,
                         "protocol": "LR judged on val5k" if on_val else "LR judged on test",
                         "error_pct": sel["error_pct"], "error_std": sel["error_std"], "n_seeds": sel["n_seeds"],
                         "lr": sel["lr"], "status": sel["status"], "diff_vs_baseline_pp": _round(
                             sel["error_pct"] - baseline), "paper_error_pct": paper,
                         "diff_vs_paper_pp": _round(sel["error_pct"] - paper),
                         "diverged_lrs": sel["diverged_lrs"], "not_measured": sel["not_measured"]})
    return _typed(pd.DataFrame(rows))


THROUGHPUT_KEYS = ("model", "device_name", "devices", "precision", "backend", "batch_size", "channels_last",
                   "compile")


def _device_count(record: dict) -> int:
    """How many devices produced a record's images/s: `device_count` (a grid run uses one device whatever the
    world size; a DDP run all of them), else the world size (benchmark rows: one device per process), else 1."""
    for key in ("device_count", "world_size"):
        if _known(record.get(key)):
            return int(record[key])
    return 1


def throughput_table(df: pd.DataFrame, benchmark: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per variant and setting: median training and evaluation img/s (all ranks), achieved TFLOP/s (training
    3x forward, 2 FLOP per MAC: bench.devices) and its share of the peak of the devices that produced it
    (`_device_count`). fp32 runs are compared with the TF32 peak, PyTorch's default for
    convolutions (a benchmark row's `peak_precision` overrides). From `benchmark` (bench/throughput.py rows)
    when given, else from the ledger's baseline runs of any precision."""
    if benchmark is not None:
        source, rows = "benchmark", benchmark.copy()
    else:
        others = {k: v for k, v in BASELINE.items() if k not in ("precision", "train_split")}
        source, rows = "ledger", df[matches(df, others) & df["train_images_per_s"].map(_known).astype(bool)]
    for key in THROUGHPUT_KEYS:
        if key not in rows.columns:
            rows[key] = None
    rows = rows[rows["model"].isin(list(SPECS))]
    order = {name: i for i, name in enumerate(SPECS)}
    groups: dict[tuple, list[dict]] = {}
    for record in rows.to_dict("records"):
        record["devices"] = _device_count(record)
        key = tuple(record[k] if _known(record[k]) else None for k in THROUGHPUT_KEYS)
        groups.setdefault(key, []).append(record)
    out = []
    for key in sorted(groups, key=lambda k: (order[k[0]], *(str(v) for v in k[1:]))):
        group, row = groups[key], dict(zip(THROUGHPUT_KEYS, key))
        train, evals = (_median(r.get(k) for r in group) for k in ("train_images_per_s", "eval_images_per_s"))
        flop = macs(row["model"])
        train_tf = _round(devices.tflops(train, devices.train_flop_per_image(flop)))  # NaN stays NaN
        eval_tf = _round(devices.tflops(evals, devices.eval_flop_per_image(flop)))
        precision = str(row["precision"]) if row["precision"] is not None else None
        stated = [r["peak_precision"] for r in group if _known(r.get("peak_precision"))]  # the benchmark says
        tf32 = stated[0] == "tf32" if stated else True  # the ledger does not: PyTorch's default for convolutions
        try:
            peak = devices.peak_tflops(row["device_name"], precision, tf32=tf32) if precision else None
            basis = devices.peak_precision(row["device_name"], precision, tf32=tf32) if peak else None
        except ValueError:  # a precision bench.devices does not know
            peak = basis = None
        # mfu of 100 x tf: the share in %, by the same float operations as 100 * tf / (peak * devices)
        share = (lambda tf: _round(devices.mfu(100 * tf, row["device_name"], precision, tf32, count=row["devices"]))
                 if peak and tf == tf else float("nan"))
        out.append({"source": source, **row, "paper_name": SPECS[row["model"]].paper_name, "n_runs": len(group),
                    "train_images_per_s": train, "eval_images_per_s": evals, "train_tflops": train_tf,
                    "eval_tflops": eval_tf, "peak_tflops": float("nan") if peak is None else peak,
                    "peak_basis": basis, "train_peak_pct": share(train_tf), "eval_peak_pct": share(eval_tf)})
    columns = ["source", *THROUGHPUT_KEYS, "paper_name", "n_runs", "train_images_per_s", "eval_images_per_s",
               "train_tflops", "eval_tflops", "peak_tflops", "peak_basis", "train_peak_pct", "eval_peak_pct"]
    return _typed(pd.DataFrame(out, columns=columns))
