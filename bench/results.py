"""The results ledger: one JSON record per run in `<out>/runs/<run_key>.json`, written atomically.

    from bench import results
    df = results.load("results")   # pandas DataFrame, one row per run, the fields below as columns

A record is written once, by the process that ran it, after the run ended (completed, diverged or failed).
Readers see no file or the whole file. Re-running a command skips run keys already recorded.

Fields of a record (units in names; None where a value does not apply or was not measured):
  run_key            str   hash of the resolved per-run config (`run_key(config)`)
  status             str   "completed" | "diverged" | "failed"
  error              str   why it diverged or failed, else None
  model, display_name, family, variant       allconv name ("allcnn-c"), paper name, "A".."C", Table 2 kind
  lr, seed, epochs, epochs_completed
  preset             str   the preset the run's config started from ("paper", "smoke")
  bn, dropout, final_relu, init, optimizer, weight_decay, momentum, batch_size, augment, preprocess,
  train_split ("train" | "train45k"), val_split ("val5k" | None), precision ("no" | "bf16" | "fp16"),
  backend ("ffcv" | "torch" | "tensor"), mode ("ddp" | "grid"), channels_last, compile
  test_error_pct         final test error, %
  best_test_error_pct, best_epoch   lowest test error over the evaluated epochs and its epoch
  val_error_pct          final validation error (when val_split), %
  params, macs           exact trainable parameters; forward MACs per image
  train_images_per_s     steady-state training throughput (no evaluation, no first epoch / warm-up), all ranks
  eval_images_per_s      evaluation throughput, all ranks
  wall_time_s, peak_memory_mb
  device_name, device_count, world_size
  versions               {"python", "torch", "accelerate", "ffcv"}
  git_commit, git_dirty
  data                   {"source", "source_sha256", "manifest_sha256", "num_train", "num_test"}
  config                 the whole resolved per-run config (dict), enough to rerun it
  started_at, finished_at  ISO 8601 UTC
  (which ablation arm a run belongs to is derived from these fields: bench.ablations.arm_of)
  history                list of per-epoch dicts: epoch (1-based), loss, train_acc_pct, test_error_pct,
                         val_error_pct, lr, seconds
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

STATUSES = ("completed", "diverged", "failed")


def environment(device) -> dict:
    """The record fields every run of a process shares: versions, git commit and dirty flag, device name.
    (torch is imported here, not at the top: reports read this module without it.)"""
    import importlib.metadata
    import platform
    import subprocess

    import torch

    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    from bench.devices import device_name

    return {"versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "accelerate": version("accelerate"), "ffcv": version("ffcv")},
            "git_commit": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain")),
            "device_name": device_name(device)}


def run_key(config: dict) -> str:
    """A stable 16-hex-digit key for one resolved run config (order of keys does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def runs_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "runs"


def write_record(out: str | os.PathLike, record: dict) -> Path:
    """Publish one run. Readers see no file or the whole file, never half of one."""
    if record.get("status") not in STATUSES:
        raise ValueError(f"record status must be one of {STATUSES}, got {record.get('status')!r}")
    folder = runs_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['run_key']}.json"
    tmp = folder / f".{record['run_key']}.json.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, sort_keys=True, indent=1, allow_nan=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic within one filesystem
    return path


def has_record(out: str | os.PathLike, key: str) -> bool:
    return (runs_dir(out) / f"{key}.json").is_file()


def read_records(out: str | os.PathLike) -> list[dict]:
    """All records, sorted by run key (temporary files of interrupted writes are ignored)."""
    folder = runs_dir(out)
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def load(out: str | os.PathLike):
    """The ledger as a pandas DataFrame, one row per run (columns: the record fields above)."""
    import pandas as pd

    return pd.DataFrame.from_records(read_records(out))


def ledger_sha256(out: str | os.PathLike) -> str:
    """One hash of every record, so a report can name the exact ledger it came from."""
    h = hashlib.sha256()
    for p in sorted(runs_dir(out).glob("*.json")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()
