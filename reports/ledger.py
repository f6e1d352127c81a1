"""Read the ledger for a report: pick one preset and one epoch count, Table 3's precision, and say what was left out.

    from reports.ledger import load_ledger
    led = load_ledger("results")          # Ledger: .df (the runs compared), .notes (what was ignored), .preset, ...

Reads `bench.results` records only (no torch). Nothing is filled in: a field a record lacks stays missing.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from allconv.specs import SPECS
from bench import results
from bench.ablations import BASELINE

COLUMNS = (
    "run_key", "status", "error", "model", "lr", "seed", "epochs", "epochs_completed", "preset",
    *BASELINE, "val_split", "backend", "mode", "channels_last", "compile", "batch_size",
    "test_error_pct", "best_test_error_pct", "val_error_pct", "train_images_per_s", "eval_images_per_s",
    "wall_time_s", "device_name", "device_count", "world_size", "versions", "git_commit", "git_dirty", "data",
    "config", "started_at", "finished_at", "history",
)
"""The record fields the reports read (bench/results.py); a ledger lacking one gets an empty column, not a value."""

PRECISION_NAMES = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


class LedgerError(ValueError):
    """Bad input (no results folder, an empty ledger, an unknown preset): one line for the CLI, exit code 2."""


@dataclass
class Ledger:
    df: pd.DataFrame  # the runs a report compares: one preset, one epoch count, models of Table 3
    all_df: pd.DataFrame  # every record in the ledger
    sha256: str  # bench.results.ledger_sha256 of the folder
    preset: str
    epochs: int | None
    precision: str  # Table 3's precision (`table3_precision`)
    notes: list[str] = field(default_factory=list)  # what was left out, and why


def outcome(record: dict) -> str:
    """A run's status as the tables count it: the ledger's status, except that a "completed" run that stopped
    before its last epoch counts as "unfinished" (measured at the wrong point, so not compared)."""
    status = record.get("status")
    done, planned = record.get("epochs_completed"), record.get("epochs")
    if status == "completed" and _known(done) and _known(planned) and int(done) < int(planned):
        return "unfinished"
    return status if status in results.STATUSES else "failed"


def _known(value) -> bool:
    """Not None, NaN or pd.NA (lists and dicts count as known)."""
    return isinstance(value, (list, dict)) or not bool(pd.isna(value))


def choose_preset(df: pd.DataFrame, preset: str | None) -> tuple[str, list[str]]:
    """`preset` when given; else the only preset, else the one with most records (ties: alphabetical)."""
    counts = Counter(str(p) for p in df["preset"])
    if preset is not None:
        if preset not in counts:
            raise LedgerError(f"preset {preset!r} has no records; the ledger has: {_counted(counts)}")
        chosen = preset
    else:
        chosen = sorted(counts, key=lambda p: (-counts[p], p))[0]
    others = {p: n for p, n in counts.items() if p != chosen}
    notes = [f"Ignored {sum(others.values())} record(s) of other presets: {_counted(others)}."] if others else []
    return chosen, notes


def choose_epochs(df: pd.DataFrame) -> tuple[int | None, list[str]]:
    """Only runs of one length are compared: the most common `epochs` (ties: the longer)."""
    counts = Counter(int(e) for e in df["epochs"] if _known(e))
    if not counts:
        return None, ["No record states its epochs."]
    chosen = sorted(counts, key=lambda e: (-counts[e], -e))[0]
    others = {e: n for e, n in counts.items() if e != chosen}
    lengths = _counted({f"{e} epochs": n for e, n in others.items()})
    notes = ([f"Epochs are mixed: compared the {counts[chosen]} run(s) of {chosen} epochs; ignored "
              f"{sum(others.values())} run(s) of other lengths ({lengths})."] if others else [])
    return chosen, notes


def table3_precision(df: pd.DataFrame) -> str:
    """Table 3's precision: the most common one among runs that are baseline in every other field (BASELINE,
    train split "train"); ties and an empty ledger go to BASELINE's ("bf16"), then alphabetical. So a grid run
    wholly in fp32 (`--precision no`) still fills Table 3, and the header says which precision it shows."""
    others = {k: v for k, v in BASELINE.items() if k != "precision"}
    counts = Counter(str(p) for p in df.loc[matches(df, others), "precision"])
    default = BASELINE["precision"]
    return sorted(counts, key=lambda p: (-counts[p], p != default, p))[0] if counts else default


def matches(df: pd.DataFrame, values: dict) -> pd.Series:
    """Boolean mask: rows whose fields equal `values` (a missing field never matches)."""
    mask = pd.Series(True, index=df.index)
    for key, want in values.items():
        mask &= df[key].map(lambda got, want=want: _known(got) and got == want).astype(bool)
    return mask


def load_ledger(results_dir: str | os.PathLike, preset: str | None = None) -> Ledger:
    """The ledger in `results_dir` (bench.results layout), narrowed to one preset and one epoch count."""
    if not os.path.isdir(results_dir):
        raise LedgerError(f"no results folder at {results_dir}")
    all_df = results.load(results_dir)
    if len(all_df) == 0:
        raise LedgerError(f"the ledger in {results_dir} is empty (no {results.runs_dir(results_dir)}/*.json)")
    for column in COLUMNS:
        if column not in all_df.columns:
            all_df[column] = None
    all_df["outcome"] = [outcome(r) for r in all_df.to_dict("records")]
    chosen, notes = choose_preset(all_df, preset)
    df = all_df[all_df["preset"].astype(str) == chosen]
    unknown = df[~df["model"].isin(list(SPECS))]
    if len(unknown):
        notes.append(f"Ignored {len(unknown)} record(s) of models not in Table 3: "
                     f"{', '.join(sorted(map(str, set(unknown['model']))))}.")
        df = df[df["model"].isin(list(SPECS))]
    epochs, epoch_notes = choose_epochs(df)
    notes += epoch_notes
    if epochs is not None:
        df = df[df["epochs"].map(lambda e: _known(e) and int(e) == epochs).astype(bool)]
    df = df.reset_index(drop=True)
    return Ledger(df, all_df, results.ledger_sha256(results_dir), chosen, epochs, table3_precision(df), notes)


def _counted(counts: dict) -> str:
    return ", ".join(f"{k} ({n})" for k, n in sorted(counts.items(), key=lambda kv: str(kv[0])))


def _distinct(values) -> list:
    seen = []
    for v in values:
        if _known(v) and v not in seen:
            seen.append(v)
    return seen


def data_source(data: dict) -> str:
    """The data a run trained on, in words: the lossy JPEG copy is not the official archive."""
    source = str(data.get("source") or "unknown")
    low = source.lower()
    if "jpeg" in low or "jpg" in low:
        kind = "lossy JPEG re-encoding of CIFAR-10 (quality 75), not the official archive"
    elif "cifar-10-python" in low or "torchvision" in low or "official" in low:
        kind = "official CIFAR-10 archive"
    else:
        kind = "as recorded"
    counts = f", {data['num_train']} train / {data['num_test']} test images" if data.get("num_train") else ""
    return f"{source} ({kind}{counts})"


def header(led: Ledger) -> list[tuple[str, str]]:
    """What the numbers are, as (label, text) pairs: data, preset, epochs, precision, devices, versions, date."""
    df, all_df = led.df, led.all_df
    sources = _distinct(data_source(d) for d in df["data"] if isinstance(d, dict)) or ["not recorded"]
    devices = Counter(f"{d} x{c}" if _known(c) else str(d) for d, c in zip(df["device_name"], df["device_count"]))
    worlds = sorted({int(w) for w in df["world_size"] if _known(w)})
    versions = Counter(", ".join(f"{k} {v}" for k, v in sorted(x.items())) for x in df["versions"]
                       if isinstance(x, dict))
    commits = Counter(f"{str(c)[:12]}{' (dirty)' if d else ''}" for c, d in zip(df["git_commit"], df["git_dirty"])
                      if _known(c))
    finished = [str(t) for t in all_df["finished_at"] if _known(t)]
    statuses = Counter(df["outcome"])
    rows = [
        ("Ledger", f"sha256 {led.sha256} ({len(all_df)} records; {len(df)} compared)"),
        ("Data", "; ".join(sources) + (" -- MIXED SOURCES" if len(sources) > 1 else "")),
        ("Preset", led.preset),
        ("Epochs", str(led.epochs) if led.epochs is not None else "not recorded"),
        ("Precision", f"Table 3 shows {PRECISION_NAMES.get(led.precision, led.precision)} runs (the most common "
                      f"precision among baseline runs); the precision ablation compares the others"),
        ("Runs", ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()))),
        ("Devices", _counted(devices) if devices else "not recorded"),
        ("World size", ", ".join(map(str, worlds)) or "not recorded"),
        ("Setup", "; ".join(f"{k}: {', '.join(map(str, _distinct(df[k]))) or 'not recorded'}"
                            for k in ("backend", "mode", "batch_size"))),
        ("Versions", "; ".join(f"{v} ({n} runs)" for v, n in sorted(versions.items())) or "not recorded"),
        ("Code", _counted(commits) if commits else "not recorded"),
        ("Date", f"{max(finished)} (latest run finished)" if finished else "not recorded"),
    ]
    rows += [("Note", n) for n in led.notes]
    return rows
