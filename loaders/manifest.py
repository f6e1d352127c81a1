"""The manifest of a prepared directory (loaders/prepare.py writes it, last): read and checked for the shape prepare
writes (`load_manifest`; `verify` also checks every file it lists against its sha256 and the counts it states), and
`arrays_sha256`, one digest of the pixels and labels a run sees, for the records (bench/process.py).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .sources import COUNTS_PER_CLASS, sha256_file

MANIFEST = "manifest.json"


def read_manifest(data_dir: Path) -> dict | None:
    """The manifest, or None when there is none or it is unreadable or not of the shape prepare writes (checked for
    the fields prepare and its readers use: run_all and the loaders read `num_images`): such a directory is not
    prepared, and prepare rebuilds it."""
    try:
        m = json.loads((data_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(m, dict) and all(isinstance(m.get(k), str) for k in ("source", "source_sha256"))
          and isinstance(m.get("options"), dict) and isinstance(m.get("files"), dict)
          and all(isinstance(n, str) and isinstance(h, str) for n, h in m["files"].items())
          and "ffcv_version" in m and (m["ffcv_version"] is None or isinstance(m["ffcv_version"], str))
          and (m.get("encoding") is None or isinstance(m["encoding"], dict)) and _counts_ok(m.get("num_images")))
    return m if ok else None


def _counts_ok(num_images) -> bool:
    """`num_images` as prepare writes it: a count (an int, not a bool) for each split, train45k and val5k adding
    up to train."""
    splits = (*COUNTS_PER_CLASS, "train45k", "val5k")
    return (isinstance(num_images, dict) and set(splits) <= set(num_images)
            and all(type(num_images[s]) is int and num_images[s] >= 0 for s in splits)
            and num_images["train45k"] + num_images["val5k"] == num_images["train"])


def files_intact(data_dir: Path, manifest: dict) -> bool:
    """Every file prepare writes (the .beton files when the manifest names an ffcv version) listed and matching its
    sha256, and the manifest's counts those of the arrays: a manifest edited to list no files passed whatever the
    arrays held, and one whose counts were lowered trained and tested on the first images only (the test set's
    first classes), its record naming the lowered counts."""
    need = {f"{s}_{k}.npy" for s in COUNTS_PER_CLASS for k in ("images", "labels")} | {"splits.npz"}
    need |= {f"{s}.beton" for s in COUNTS_PER_CLASS} if manifest["ffcv_version"] is not None else set()
    if not need <= set(manifest["files"]) or not all(
            (data_dir / n).is_file() and sha256_file(data_dir / n) == h for n, h in manifest["files"].items()):
        return False
    try:
        # the labels' lengths from their headers (mmap): the images were just hashed, not to be read again
        counts = {s: len(np.load(data_dir / f"{s}_labels.npy", mmap_mode="r")) for s in COUNTS_PER_CLASS}
        with np.load(data_dir / "splits.npz") as z:
            counts.update({s: len(z[s]) for s in ("train45k", "val5k")})
    except (OSError, ValueError, KeyError):
        return False
    return all(manifest["num_images"][s] == n for s, n in counts.items())


def arrays_sha256(manifest: dict) -> str:
    """One digest of the pixels and labels a run sees: sha256 over the manifest's digests of the image and label
    arrays, as `sha256sum` lines sorted by name. The manifest's own digest changes with its `created_at` on every
    prepare, and the source's does not show how this machine's Pillow decoded it; two runs with the same arrays
    digest trained and tested on the same pixels and labels."""
    names = sorted(f"{s}_{k}.npy" for s in COUNTS_PER_CLASS for k in ("images", "labels"))
    return hashlib.sha256("".join(f"{manifest['files'][n]}  {n}\n" for n in names).encode()).hexdigest()


def load_manifest(data_dir: str | os.PathLike, verify: bool = False) -> dict:
    """The manifest of a prepared directory, or a one-line ValueError saying how to make it. `verify`: also every
    file it lists present with its sha256 and the counts it states (prepare's own check; reads every file once)."""
    m = read_manifest(Path(data_dir))
    if m is None:
        raise ValueError(f"{data_dir} is not prepared (no valid {MANIFEST}): run python -m loaders.prepare "
                         f"--source SRC --data-dir {data_dir}")
    if verify and not files_intact(Path(data_dir), m):
        raise ValueError(f"{data_dir} is damaged or incomplete (its files are not those {MANIFEST} lists): run "
                         f"python -m loaders.prepare --source SRC --data-dir {data_dir} again")
    return m
