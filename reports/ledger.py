"""Read the ledger for a report: one preset, one epoch count, the reference config, and what was left out.

    from reports.ledger import load_ledger
    led = load_ledger("results")   # Ledger: .df (the preset's runs), .reference (the config Table 3 compares), ...

Reads `bench.results` records, and the checkpoints beside them of runs still training (reports.running: torch,
weights_only, nothing in them runs). Nothing is filled in: a field a record lacks stays missing.
Like with like (issue 10): a run enters Table 3, or an ablation arm, only when its whole resolved `config` equals
the reference config (with the arm's overrides), except the fields in `NOT_COMPARED`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from allconv.specs import SPECS, built_otherwise, macs
from bench import ablations, results
from bench.ablations import BASELINE, as_recorded
from bench.config import NOT_IN_KEY, PRESETS
from bench.devices import precision_label  # noqa: F401 (reports import it from here)

COLUMNS = (
    "run_key", "status", "error", "model", "lr", "seed", "epochs", "epochs_completed", "preset",
    *BASELINE, "val_split", "backend", "mode", "channels_last", "compile", "cuda_graphs", "fused_runs", "eval_precision",
    "test_error_pct", "best_test_error_pct", "val_error_pct", "train_images_per_s", "eval_images_per_s",
    "wall_time_s", "device_name", "device_count", "world_size", "versions", "git_commit", "git_dirty",
    "code_sha256", "sessions", "data", "config", "grid", "started_at", "finished_at", "history",
)
"""The record fields the reports read (bench/schema.py); a ledger lacking one gets an empty column, not a value."""

NOT_COMPARED = ("model", "lr", "seed", "val_split", *NOT_IN_KEY)
"""Config fields a run of Table 3 may differ in: what Table 3 varies (model, lr, seed), `val_split` (follows
`train_split`) and the fields that do not change results (bench.config.NOT_IN_KEY). Everything else counts,
`data_sha256` (the exact data), `init`, `epochs`, `lr_drops`, `eval_every` and `eval_precision` included."""

OUTCOMES = ("completed", "diverged", "stalled", "failed", "unfinished")


class LedgerError(ValueError):
    """Bad input (no results folder, an empty ledger, an unknown preset): one line for the CLI, exit code 2."""


@dataclass
class Ledger:
    df: pd.DataFrame  # the preset's runs of Table 3's models and one epoch count (any config)
    all_df: pd.DataFrame  # every record in the ledger
    sha256: str  # bench.results.ledger_sha256 of the folder
    preset: str
    epochs: int | None
    reference: dict | None  # the compared config (`compared`) Table 3 shows; None when no run records one
    notes: list[str] = field(default_factory=list)  # what was left out, and why

    @property
    def precision(self) -> str:
        """Table 3's training precision (Accelerate's name), from the reference config."""
        return str((self.reference or {}).get("precision", BASELINE["precision"]))


def outcome(record: dict) -> str:
    """A run's status as the tables count it: the ledger's status, except that a "completed" run that stopped
    before its last epoch counts as "unfinished" (measured at the wrong point, so not compared)."""
    status = record.get("status")
    done, planned = record.get("epochs_completed"), record.get("epochs")
    if status == "completed" and _known(done) and _known(planned) and int(done) < int(planned):
        return "unfinished"
    return status if status in OUTCOMES else "failed"


def _known(value) -> bool:
    """Not None, NaN or pd.NA (lists and dicts count as known)."""
    return isinstance(value, (list, dict)) or not bool(pd.isna(value))


def compared(config) -> dict | None:
    """The part of a resolved run config that must equal the reference: all but `NOT_COMPARED`."""
    if not isinstance(config, dict):
        return None
    return {k: v for k, v in config.items() if k not in NOT_COMPARED}


def off_baseline(config: dict, ignore: tuple[str, ...] = ()) -> int:
    """In how many of the fields an ablation varies (but those in `ignore`) a run's config differs from its
    preset's baseline (bench.ablations.off_baseline): 0 for a Table 3 run of a grid at its preset's values, one
    more for each field an ablation arm changes on top of its grid."""
    return len(ablations.off_baseline(config, ignore))


def off_preset(config: dict) -> int:
    """In how many of its fields a run's config differs from its preset's defaults (all of them: a stray run at
    another value of a field no ablation varies is further off than the grid's)."""
    preset = PRESETS.get(config.get("preset"))
    defaults = as_recorded(dataclasses.asdict(preset)) if preset else {}
    return sum(config.get(k) != v for k, v in defaults.items() if k in config)


def _blob(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def reference_config(df: pd.DataFrame) -> dict | None:
    """The config Table 3 compares: among the compared configs of the runs, the one closest to its preset's
    baseline in the fields an ablation varies but precision (`off_baseline`: a grid launched with another batch size
    or init is still Table 3, and its ablation arms, one field further off, are not; a grid run wholly in fp32
    still fills Table 3), then the most common; ties: the nearest its preset in all fields (`off_preset`), then
    BASELINE's precision, then the first in sorted order."""
    counts = Counter(_blob(c) for c in map(compared, df["config"]) if c is not None)
    if not counts:
        return None

    def rank(blob):
        config = json.loads(blob)
        return (off_baseline(config, ignore=("precision",)), -counts[blob], off_preset(config),
                config.get("precision") != BASELINE["precision"], blob)

    return json.loads(min(counts, key=rank))


def same_config(df: pd.DataFrame, want: dict | None) -> pd.Series:
    """Boolean mask: rows whose compared config equals `want` (a run without a config never matches)."""
    blob = None if want is None else _blob(want)
    return df["config"].map(lambda c: blob is not None and compared(c) is not None and _blob(compared(c)) == blob
                            ).astype(bool)


def differences(config, want: dict) -> str:
    """The fields where a run's compared config differs from `want`: "init=kaiming, weight_decay=0.0005"."""
    mine = compared(config)
    if mine is None:
        return "config not recorded"
    keys = sorted(k for k in set(mine) | set(want) if mine.get(k, "<absent>") != want.get(k, "<absent>"))
    return ", ".join(f"{k}={mine[k] if k in mine else '<absent>'}" for k in keys)


def requested_grid(runs: pd.DataFrame) -> dict:
    """The grid the runs' commands asked for (record field `grid`: models, lrs, seeds), merged over the runs;
    a key no record states is None (older records: the readers fall back to what ran)."""
    out: dict[str, list | None] = {"models": None, "lrs": None, "seeds": None}
    for grid in runs["grid"]:
        for key in out:
            if isinstance(grid, dict) and isinstance(grid.get(key), (list, tuple)):
                out[key] = sorted(set(out[key] or []) | set(grid[key]), key=str)
    return out


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
        return None, ["No record states its epochs."] if len(df) else []
    chosen = sorted(counts, key=lambda e: (-counts[e], -e))[0]
    others = {e: n for e, n in counts.items() if e != chosen}
    lengths = _counted({f"{e} epochs": n for e, n in others.items()})
    notes = ([f"Epochs are mixed: compared the {counts[chosen]} run(s) of {chosen} epochs; ignored "
              f"{sum(others.values())} run(s) of other lengths ({lengths})."] if others else [])
    return chosen, notes


def load_ledger(results_dir: str | os.PathLike, preset: str | None = None) -> Ledger:
    """The ledger in `results_dir` (bench.results layout), narrowed to one preset and one epoch count."""
    if not os.path.isdir(results_dir):
        raise LedgerError(f"no results folder at {results_dir}")
    all_df = results.load(results_dir)
    digests = all_df.attrs["digests"]  # the records as read, for the ledger's hash
    aside = set_aside_notes(results_dir, all_df.attrs["set_aside"])  # the files that were not records
    if len(all_df) == 0:
        training = len(list((Path(results_dir) / "checkpoints").glob("*.pt")))
        raise LedgerError(f"the ledger in {results_dir} is empty (no {results.runs_dir(results_dir)}/*.json)" + (
            f" but for {training} checkpoint(s) of runs still training: report again once a run has finished "
            "(its record is what places the checkpoints in the tables)" if training else ""))
    for column in COLUMNS:
        if column not in all_df.columns:
            all_df[column] = None
    all_df = all_df.apply(lambda column: column if pd.api.types.is_numeric_dtype(column) else column.map(_printable))
    all_df["outcome"] = [outcome(r) for r in all_df.to_dict("records")]
    all_df["from_checkpoint"] = False
    chosen, preset_notes = choose_preset(all_df, preset)
    notes = aside + preset_notes
    df = all_df[all_df["preset"].astype(str) == chosen]
    df, again = newest_of_each_run(df)
    if again:
        notes.append(f"Ignored {again} older record(s) of runs recorded again under another run key (the same "
                     "config, model, LR and seed: a key from another version of the code); the newest completed one "
                     "counts.")
    unknown = df[~df["model"].isin(list(SPECS))]
    if len(unknown):
        notes.append(f"Ignored {len(unknown)} record(s) of models not in Table 3: "
                     f"{', '.join(sorted(map(str, set(unknown['model']))))}.")
        df = df[df["model"].isin(list(SPECS))]
    notes += other_networks(df)
    epochs, epoch_notes = choose_epochs(df)  # the records decide: a checkpoint is not a result
    notes += epoch_notes
    if epochs is not None:
        df = df[df["epochs"].map(lambda e: _known(e) and int(e) == epochs).astype(bool)]
    reference = reference_config(df)
    from reports.running import unfinished_runs  # here: reports.running reads this module's COLUMNS
    running, running_notes = unfinished_runs(results_dir, df)
    notes += running_notes
    recorded = {_run_id(r) for r in df.to_dict("records")}  # a run with a record under an older key: that speaks
    running = [r for r in running if _run_id(r) not in recorded]
    if running:
        df = pd.concat([df, pd.DataFrame(running).drop(columns="checkpoint").assign(outcome="unfinished")],
                       ignore_index=True)
        where = ", ".join(f"{r['run_key']}.pt at epoch {r['epochs_completed']}" for r in running)
        notes.append(f"{len(running)} run(s) without a record are still training: shown as unfinished from their "
                     f"checkpoints ({where}).")
    df = df.reset_index(drop=True)
    sha256 = results.ledger_sha256(results_dir, [r["checkpoint"] for r in running], digests)
    return Ledger(df, all_df, sha256, chosen, epochs, reference, notes)


def other_networks(df: pd.DataFrame) -> list[str]:
    """A note per model whose records trained another network than this code builds under its name (their recorded
    forward MACs differ from `allconv.specs.macs`, e.g. a network of one's own edited after its runs, which run_all
    trains again: `bench.workqueue.not_its_run`): the report's parameter and MAC columns are this code's and do not
    describe them."""
    off: dict[str, set[int]] = {}
    for model, recorded in zip(df["model"], df["macs"] if "macs" in df else [None] * len(df)):
        if _known(recorded) and built_otherwise(model, recorded):
            off.setdefault(model, set()).add(int(recorded))
    return [f"Records of {SPECS[m].paper_name} trained another network than this code builds under that name "
            f"(recorded {', '.join(f'{v:,}' for v in sorted(off[m]))} forward MACs per image, this code's "
            f"{macs(m):,}): the Params and MACs shown are this code's, not those runs'." for m in sorted(off)]


def set_aside_notes(results_dir, set_aside: dict[str, str]) -> list[str]:
    """What the ledger's folder holds that is not in the report: the files this read found not to be records
    (`set_aside`: file name -> where bench.files.set_aside put it, runs/.invalid/ or left in place) and how many
    files earlier reads set aside there."""
    runs = results.runs_dir(results_dir)
    aside = runs / ".invalid"
    moved = [n for n, where in set_aside.items() if where.startswith("moved to ")]
    left = [n for n in set_aside if n not in moved]
    earlier = len(list(aside.iterdir())) - len(moved) if aside.is_dir() and not aside.is_symlink() else 0
    notes = [f"Set aside now: {len(moved)} ledger file(s) that are not valid records, moved to {aside} (the "
             f"warnings say why): {', '.join(moved)}."] if moved else []
    if left:
        notes.append(f"Skipped: {len(left)} ledger file(s) that are not valid records, left in {runs} (they could "
                     f"not be moved to {aside}): {', '.join(left)}.")
    if earlier:
        notes.append(f"{aside} holds {earlier} file(s) set aside by earlier reads: not records, not in this report.")
    return notes


def _run_id(row: dict) -> str:
    """One run whatever its key: model, LR, seed and compared config (as `newest_of_each_run` counts them)."""
    return json.dumps([row["model"], row["lr"], row["seed"], compared(row["config"])], sort_keys=True, default=str)


def newest_of_each_run(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One record per run (model, LR, seed and compared config), so a seed is never counted twice: the last
    finished of its completed records, else the last finished; and how many were dropped."""
    run = [_run_id(r) for r in df[["model", "lr", "seed", "config"]].to_dict("records")]
    latest = (df.assign(_run=run, _completed=df["outcome"] == "completed")
              .sort_values(["_completed", "finished_at"], kind="stable").drop_duplicates("_run", keep="last"))
    kept = df.loc[sorted(latest.index)]
    return kept, len(df) - len(kept)


def _printable(x):
    """A record's value with control characters in its strings (a line break in a device's name) as spaces, so
    no report file gets a line it did not mean: a CSV row split in two, a Markdown row broken."""
    if isinstance(x, str):
        return "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in x)
    if isinstance(x, dict):
        return {k: _printable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_printable(v) for v in x]
    return x


def _counted(counts: dict) -> str:
    return ", ".join(f"{k} ({n})" for k, n in sorted(counts.items(), key=lambda kv: str(kv[0])))
