"""The results ledger: one JSON record per run in `<out>/runs/<run_key>.json`, written atomically.

    from bench import results
    df = results.load("results")   # pandas DataFrame, one row per valid record; df.attrs["skipped"]: files set aside

A record is written once, by the process that ran it, after the run ended. Readers see no file or the whole file
(`bench.files.atomic_write`). Re-running a command skips run keys already recorded. A ledger is outside input
(copied, merged, hand-edited): every file is checked when read; one that is not a regular file of at most
`MAX_RECORD_BYTES`, not JSON, or not a record (`bench.schema`: the fields of a record, and `validate`) is named in
one warning line on stderr and moved to `<out>/runs/.invalid/` (`bench.files.set_aside`), and its run counts as not
recorded (a rerun trains it again).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

from bench.files import atomic_write, read_regular, set_aside
from bench.schema import utf8, validate

MAX_RECORD_BYTES = 16 * 2 ** 20
"""A record file is read only up to this size: a 350-epoch record is about 70 kB, so 16 MiB holds a history two
hundred times as long, while a link to /dev/zero or a huge file cannot fill the memory."""


CODE = ("allconv", "bench", "loaders")
"""The packages whose code trains a run (`code_sha256`)."""


def code_sha256(root: Path = Path(__file__).resolve().parents[1]) -> str:
    """A digest of the code that trains a run, from the files themselves: sha256 over each .py file of `CODE` under
    `root`, as "<sha256 of its bytes>  <path from root>" lines sorted by path (the format of `sha256sum`). A record's
    git_commit is what `git rev-parse HEAD` says, which is wrong in a copy of a tree whose .git is older than its
    files (a GPU machine's copy was, twice: reports/measured/campaign/README.md); the same digest at a checkout of a
    commit says the run's code was that commit's."""
    files = sorted(p.relative_to(root).as_posix() for package in CODE for p in (root / package).rglob("*.py"))
    lines = "".join(f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def environment(device) -> dict:
    """The record fields every run of a process shares: versions (Python, torch, accelerate, ffcv, numpy and Pillow,
    which decodes the images; on a CUDA device also the CUDA runtime and cuDNN, whose kernels differ between
    versions), git commit and dirty flag, the code's digest (`code_sha256`), device name. (torch is imported here,
    not at the top: reports read this module without it.)"""
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

    cuda = torch.device(device).type == "cuda"  # cuDNN and the CUDA runtime say nothing of a run on another device
    return {"versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "accelerate": version("accelerate"), "ffcv": version("ffcv"), "numpy": version("numpy"),
                         "pillow": version("pillow"), "cuda": torch.version.cuda if cuda else None,
                         "cudnn": str(torch.backends.cudnn.version()) if cuda and torch.backends.cudnn.is_available()
                         else None},
            "git_commit": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain")),
            "code_sha256": code_sha256(), "device_name": device_name(device)}


def run_key(config: dict) -> str:
    """A stable 16-hex-digit key for one resolved run config (order of keys does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def runs_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "runs"


def write_record(out: str | os.PathLike, record: dict) -> Path:
    """Check `record` against the schema (ValueError with the reason) and publish it atomically; its strings as
    `bench.schema.utf8` makes them (a path with a byte that is not UTF-8)."""
    record = utf8(record)
    reason = validate(record)
    if reason is not None:
        raise ValueError(f"record {record.get('run_key') if isinstance(record, dict) else ''}: {reason}")
    text = json.dumps(record, sort_keys=True, indent=1, allow_nan=False, default=str)
    return atomic_write(runs_dir(out) / f"{record['run_key']}.json", lambda f: f.write(text.encode()))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):  # 1e400: valid JSON, but no record field is infinite
        raise ValueError(f"{text:.40} is out of range")
    return x


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 300:  # beyond any float: a report could not compute with it
        raise ValueError(f"{text:.40}... is out of range")
    return int(text)


def read_one(path: Path) -> tuple[dict | None, str | None]:
    """One ledger file: (record, None) when it is a regular file of at most `MAX_RECORD_BYTES` holding valid JSON
    that matches `FIELDS`, `RANGES` and its file name, else (None, why)."""
    return _read(path)[:2]


def _read(path: Path) -> tuple[dict | None, str | None, bytes]:
    """`read_one`, and the bytes it read (b"" when none)."""
    try:
        blob = read_regular(path, MAX_RECORD_BYTES)
    except OSError as e:
        return None, f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})", b""
    except ValueError as e:  # not a regular file, or too large
        return None, f"unreadable ({e})", b""
    return (*parse(path, blob), blob)


def parse(path: Path, blob: bytes) -> tuple[dict | None, str | None]:
    """`read_one` for the bytes read from `path` (or found elsewhere under that name: an archive's member)."""
    try:  # utf8: a lone surrogate (a JSON escape, or an older writer's path) as its escape in text
        record = utf8(json.loads(blob, parse_constant=_reject_constant, parse_float=_finite, parse_int=_int))
    except (ValueError, RecursionError, MemoryError) as e:  # JSONDecodeError, UnicodeDecodeError; nested too deep
        return None, f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    reason = validate(record)
    if reason is None and record["run_key"] != path.stem:
        reason = f"run_key {record['run_key']!r:.40} does not match the file name"
    return (record, None) if reason is None else (None, reason)


def _scan(out: str | os.PathLike, set_bad_aside: bool = True) -> tuple[list[dict], list[tuple], list[tuple]]:
    """(valid records sorted by run key, (file name, where `set_aside` put it) of each file set aside, (file name,
    sha256) of each valid record's bytes as read). `set_bad_aside` False: other files are only skipped (not moved,
    not named)."""
    folder = runs_dir(out)
    if not folder.is_dir():
        return [], [], []
    records, skipped, digests = [], [], []
    for path in sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")):
        record, reason, blob = _read(path)
        if record is not None:
            records.append(record)
            digests.append((path.name, hashlib.sha256(blob).hexdigest()))
        elif set_bad_aside:
            skipped.append((path.name, set_aside(path)))
            print(f"warning: ledger file {path} skipped, {skipped[-1][1]}: {reason}; its run counts as not "
                  "recorded", file=sys.stderr)
    return records, skipped, digests


def read_records(out: str | os.PathLike) -> list[dict]:
    """The valid records, sorted by run key; every other file is set aside as the module docstring says."""
    return _scan(out)[0]


def load(out: str | os.PathLike):
    """The ledger as a pandas DataFrame, one row per valid record (columns: the record fields above);
    `df.attrs["skipped"]` lists the file names set aside, `df.attrs["set_aside"]` says where each went ("moved to
    ...", or "left in place (why)": bench.files.set_aside), `df.attrs["digests"]` (file name, sha256) of the records
    read, for `ledger_sha256`."""
    import pandas as pd

    records, skipped, digests = _scan(out)
    df = pd.DataFrame.from_records(records)
    df.attrs["skipped"], df.attrs["set_aside"] = [name for name, _ in skipped], dict(skipped)
    df.attrs["digests"] = digests
    return df


def ledger_sha256(out: str | os.PathLike, checkpoints=(), digests=None) -> str:
    """One hash of the valid record files in `<out>/runs/` (those `load` reads; any other file, set aside or left in
    place, is not part of the ledger), so a report can name the exact ledger it came from: over (file name, sha256)
    of each, `digests` as `load` read them (`df.attrs["digests"]`; None: read now, nothing set aside), then
    `checkpoints`: (file name, sha256) of the checkpoints a report also read (runs still training,
    bench.checkpoint.progress)."""
    h = hashlib.sha256()
    for name, digest in [*(_scan(out, set_bad_aside=False)[2] if digests is None else digests), *checkpoints]:
        h.update(f"{name}:{digest}".encode())
    return h.hexdigest()
