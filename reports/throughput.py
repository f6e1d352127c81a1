"""Throughput table: img/s, achieved TFLOP/s and share of the device's peak, from the ledger or a benchmark file.

    throughput_table(df, benchmark=None)
    load_throughput(path)   a benchmark file (bench/throughput.py's JSON or CSV), checked
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pandas as pd

from allconv.specs import SPECS, macs
from bench import devices
from bench.ablations import BASELINE_FIELDS
from reports.ledger import LedgerError, _known, reference_config
from reports.tables import _median, _round, _typed


THROUGHPUT_KEYS = ("model", "device_name", "devices", "precision", "backend", "batch_size", "runs_per_step",
                   "channels_last", "compile", "cuda_graphs")
"""`runs_per_step`: how many runs one training step trained (a record's `fused_runs`: --fuse-lrs); the row's img/s
count every run's images. A benchmark row's own figures are one run's (its fused_* columns a K-run group's)."""
GROUP_KEYS = (*THROUGHPUT_KEYS, "eval_precision", "peak_precision")
"""What makes a row of the table: a setting (THROUGHPUT_KEYS), the precision evaluation ran in, and the peak a
benchmark row states (ledger: "fp32" for a run with TF32 off)."""


def _device_count(record: dict) -> int:
    """How many devices produced a record's images/s: `device_count` (a grid run uses one device whatever the
    world size; a DDP run all of them), else the world size (benchmark rows: one device per process), else 1."""
    for key in ("device_count", "world_size"):
        if _known(record.get(key)):
            return int(record[key])
    return 1


def throughput_table(df: pd.DataFrame, benchmark: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per variant and setting: median training and evaluation img/s (all ranks), achieved TFLOP/s (training 3x
    forward, 2 FLOP per MAC: bench.devices) and its share of the peak of the devices that produced it
    (`_device_count`), evaluation's at the precision it ran in (a record's `eval_precision`: fp32 under bf16
    training; a benchmark row's too, older ones evaluated at their training precision). fp32 is compared with
    the TF32 peak, PyTorch's default for convolutions, but for a ledger run trained in fp32, which ran with TF32
    off (`bench.engine.full_fp32`; a benchmark row's `peak_precision` overrides). From `benchmark`
    (bench/throughput.py rows) when given, else from the ledger's baseline runs of any precision (a fused
    group's: all its runs' images, `runs_per_step`). Benchmark rows made with `--fused K` add the K-run fused
    group's images/s over its K runs and its ratio to the separate step (medians; NaN without)."""
    if benchmark is not None:
        source, rows = "benchmark", benchmark.copy()
        rows["runs_per_step"] = 1
    else:
        ref, same = reference_config(df), [k for k in BASELINE_FIELDS if k not in ("precision", "train_split")]
        plain = df["config"].map(lambda c: isinstance(c, dict) and ref is not None and all(
            c.get(k) == ref.get(k) for k in same)).astype(bool)  # Table 3's runs, of any precision and split
        source, rows = "ledger", df[plain & df["train_images_per_s"].map(_known).astype(bool)].copy()
        together = rows["fused_runs"] if "fused_runs" in rows.columns else pd.Series(1, index=rows.index)
        rows["runs_per_step"] = together.map(lambda v: int(v) if _known(v) else 1)  # older ledgers: alone
        for k in ("train_images_per_s", "eval_images_per_s"):  # a fused run recorded its share of the group's
            rows[k] = rows[k] * rows["runs_per_step"]
    evaluated = rows.get("eval_precision", pd.Series(None, index=rows.index))
    if source == "ledger":  # a run trained in fp32 ran with TF32 off (bench.engine.full_fp32), training and
        # evaluation: the plain fp32 peak. Records from before that state no eval_precision (it came with it): TF32
        # on, PyTorch's default
        rows["peak_precision"] = ["fp32" if p == "no" and _known(e) else None
                                  for p, e in zip(rows["precision"], evaluated)]
    for key in THROUGHPUT_KEYS:
        if key not in rows.columns:
            rows[key] = None
    # rows from before bench/graphs.py existed did not replay graphs
    rows["cuda_graphs"] = rows["cuda_graphs"].map(lambda v: _known(v) and bool(v))
    # what evaluation ran in: a record's eval_precision (older records: the training precision, as a benchmark's)
    rows["eval_precision"] = [e if _known(e) else p for e, p in zip(evaluated, rows["precision"])]
    rows = rows[rows["model"].isin(list(SPECS))]
    order = {name: i for i, name in enumerate(SPECS)}
    groups: dict[tuple, list[dict]] = {}
    for record in rows.to_dict("records"):
        record["devices"] = _device_count(record)
        key = tuple(record.get(k) if _known(record.get(k)) else None for k in GROUP_KEYS)
        groups.setdefault(key, []).append(record)
    out = []
    for key in sorted(groups, key=lambda k: (order[k[0]], *(str(v) for v in k[1:]))):
        group, row = groups[key], dict(zip(GROUP_KEYS, key))
        stated = row.pop("peak_precision")  # a benchmark row's, or "fp32" for a full-fp32 run of the ledger
        train, evals, fused, ratio = (_median(r.get(k) for r in group) for k in (
            "train_images_per_s", "eval_images_per_s", "fused_train_images_per_s", "fused_over_separate"))
        recorded = _median(r.get("macs") for r in group)  # a ledger run's: the network it trained
        flop = recorded if recorded == recorded else macs(row["model"])  # a benchmark row's: this code's
        train_tf = _round(devices.tflops(train, devices.train_flop_per_image(flop)))  # NaN stays NaN
        eval_tf = _round(devices.tflops(evals, devices.eval_flop_per_image(flop)))
        tf32 = stated == "tf32" if stated else True  # else PyTorch's default for convolutions
        peak, basis, train_pct = _peak(row["device_name"], row["precision"], tf32, row["devices"], train_tf)
        # evaluation ran with TF32 off only inside a full-fp32 run; an fp32 evaluation of a bf16 run had it on
        eval_peak, eval_basis, eval_pct = _peak(row["device_name"], row["eval_precision"], stated != "fp32",
                                                row["devices"], eval_tf)
        out.append({"source": source, **row, "paper_name": SPECS[row["model"]].paper_name, "n_runs": len(group),
                    "train_images_per_s": train, "eval_images_per_s": evals, "train_tflops": train_tf,
                    "eval_tflops": eval_tf, "peak_tflops": peak, "peak_basis": basis, "eval_peak_tflops": eval_peak,
                    "eval_peak_basis": eval_basis, "train_peak_pct": train_pct, "eval_peak_pct": eval_pct,
                    "fused_runs": _median(r.get("fused_runs") for r in group), "fused_train_images_per_s": fused,
                    "fused_over_separate": ratio})
    columns = ["source", *THROUGHPUT_KEYS, "eval_precision", "paper_name", "n_runs", "train_images_per_s",
               "eval_images_per_s", "train_tflops", "eval_tflops", "peak_tflops", "peak_basis", "eval_peak_tflops",
               "eval_peak_basis", "train_peak_pct", "eval_peak_pct", "fused_runs", "fused_train_images_per_s",
               "fused_over_separate"]
    return _typed(pd.DataFrame(out, columns=columns))


def _peak(device_name, precision, tf32: bool, count: int, tf: float):
    """(peak TFLOP/s or NaN, its column in bench.devices' table or None, the share of it in % that `tf` TFLOP/s
    is) for `count` devices at `precision` (Accelerate's name or a label; None: unknown)."""
    try:
        peak = devices.peak_tflops(device_name, str(precision), tf32=tf32) if precision is not None else None
        basis = devices.peak_precision(device_name, str(precision), tf32=tf32) if peak else None
    except ValueError:  # a precision bench.devices does not know
        peak = basis = None
    # mfu of 100 x tf: the share in %, by the same float operations as 100 * tf / (peak * devices)
    share = _round(devices.mfu(100 * tf, device_name, str(precision), tf32, count=count)) \
        if peak and tf == tf else float("nan")
    return float("nan") if peak is None else peak, basis, share


THROUGHPUT_NUMBERS = ("train_images_per_s", "eval_images_per_s", "fused_train_images_per_s", "fused_over_separate",
                      "fused_runs", "device_count", "world_size")
THROUGHPUT_TEXT = ("model", "device_name", "precision", "eval_precision", "backend", "peak_precision")


def load_throughput(path: str | os.PathLike) -> pd.DataFrame:
    """Rows of bench/throughput.py output: a JSON list of dicts (or a dict holding one) or a CSV file, as read by
    the reports and bench.plan, with the columns they read (THROUGHPUT_TEXT, THROUGHPUT_NUMBERS, THROUGHPUT_KEYS;
    older files hold more, e.g. lists of rounds). An outside file: one it cannot read, or a row whose
    THROUGHPUT_TEXT field is not text, whose other field is a list or an object, or with a lone surrogate (a JSON
    escape, no text), is a LedgerError naming it; a figure (THROUGHPUT_NUMBERS) that is not a finite number is
    unknown (NaN): that row measured nothing there, which the readers skip."""
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a throughput file" if path.is_dir() else "no such throughput file"
        raise LedgerError(f"{path}: {what} (give the .json or .csv that bench/throughput.py wrote)")
    try:
        if path.suffix.lower() == ".csv":
            rows = pd.read_csv(path)
        else:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise LedgerError(f"{path}: expected a list of dicts (model, precision, device_name, ...)")
            rows = pd.DataFrame.from_records(data)
    except (OSError, ValueError, RecursionError) as e:  # bad JSON or CSV, not UTF-8: ValueErrors
        raise LedgerError(f"{path}: not a throughput file ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
    rows = rows[[c for c in rows.columns if c in (*THROUGHPUT_TEXT, *THROUGHPUT_NUMBERS, *THROUGHPUT_KEYS)]]
    for i, row in enumerate(rows.to_dict("records"), 1):
        for key, value in row.items():
            kind, fits = ("text", isinstance(value, str)) if key in THROUGHPUT_TEXT else \
                ("a single value", not isinstance(value, (list, dict)))
            surrogate = re.search("[\ud800-\udfff]", f"{key}{value}")  # a JSON escape, no character
            if surrogate or _known(value) and not fits:
                raise LedgerError(f"{path}: row {i}: {str(key)[:40]!r} is {str(value)[:40]!r}, not "
                                  + ("text (a lone surrogate)" if surrogate else kind))
    for key in set(THROUGHPUT_NUMBERS) & set(rows.columns):
        rows[key] = rows[key].map(_figure)
    return rows


def _figure(value) -> float:
    """A benchmark figure as a finite float, else NaN (text, a bool, inf, an integer beyond a float)."""
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return x if math.isfinite(x) else math.nan
