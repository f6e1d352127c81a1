"""Prepare CIFAR-10 once (run: python -m loaders.prepare --help); loaders/sources.py reads the raw source.

    python -m loaders.prepare --source ../shared/data/cifar10-jpeg.tar.gz --data-dir data [--subset-per-class N]

What lands in DATA_DIR (every file written by bench.files.atomic_write; manifest.json last):
  train_images.npy, test_images.npy   uint8 N x 32 x 32 x 3 (HWC, RGB), lossless; read by the torch/tensor backends
  train_labels.npy, test_labels.npy   int64 N, in 0..9 (airplane, automobile, bird, cat, deer, dog, frog, horse,
                                      ship, truck: CIFAR-10's own numbering, also ImageFolder's alphabetical order)
  splits.npz                          train45k, val5k: int64 indices into train, a fixed seeded class-stratified
                                      split (10% of each class to val5k) for choosing the LR honestly; the paper
                                      picks it on the test set (Section 3.2.1), so Table 3 runs use train/test.
  train.beton, test.beton             FFCV files (raw RGB, IntField label), only when ffcv is importable
  manifest.json                       counts per split and class, source and its sha256, how the source stores
                                      its images (`encoding`, images.encoding: JPEG quality and chroma, or
                                      lossless), options, versions, sha256 of every file above, creation time
Image order inside a split is fixed: (class, file name) for folder sources, archive order for the official one.
A prepare killed at any point leaves no manifest (the old one is removed before any file is replaced), and a
directory without a manifest whose file hashes match is never taken as valid. loaders/manifest.py reads and checks it.
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from bench.files import atomic_write

from . import load_arrays
from .images import KNOWN_ENCODINGS, describe
from .manifest import MANIFEST, files_intact, read_manifest
from .sources import (CLASSES, COUNTS_PER_CLASS, official_encoding, read_source,  # noqa: F401 (CLASSES: API)
                      sha256_file, source_sha256)

VAL_FRACTION = 0.1  # train45k / val5k: 500 of each class's 5,000 training images go to val5k


def _ffcv_available() -> bool:
    """Whether ffcv imports. Importing it sets torch's intra-op threads to 1, process-wide (ffcv.pipeline.compiler
    does so at import), which halved CPU training on 2 cores after an in-process prepare: the count is put back.
    The ffcv backend's own Loader then sets it to its worker count, as run_all chooses (loaders.workers_per_process).
    """
    import torch

    threads = torch.get_num_threads()
    try:
        importlib.import_module("ffcv")  # the import is the test (a bare import reads as unused to pyflakes)
    except ImportError:
        return False
    finally:
        torch.set_num_threads(threads)
    return True


# ---- checking, subsetting, splitting ----

def check_and_subset(splits: dict, subset_per_class: int | None, seed: int) -> dict:
    """Labels in 0..9, all classes present, CIFAR-10's counts unless a subset is asked for (then N per class and
    split, chosen with a seeded generator, kept in source order)."""
    out = {}
    for split, (images, labels) in splits.items():
        if len(images) != len(labels):
            raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
            raise ValueError(f"{split}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
        counts = np.bincount(labels, minlength=len(CLASSES))
        if (counts == 0).any():
            raise ValueError(f"{split}: classes missing: {[CLASSES[c] for c in np.flatnonzero(counts == 0)]}")
        if subset_per_class is None:
            if (counts != COUNTS_PER_CLASS[split]).any():
                raise ValueError(f"{split}: {counts.tolist()} images per class, CIFAR-10 has "
                                 f"{COUNTS_PER_CLASS[split]} each (use --subset-per-class for a subset)")
            out[split] = (np.asarray(images), labels)
            continue
        if counts.min() < subset_per_class:
            raise ValueError(f"{split}: --subset-per-class {subset_per_class} but a class has only {counts.min()}")
        rng = np.random.default_rng([seed, 1 if split == "train" else 2])
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), subset_per_class, replace=False)
                                       for c in range(len(CLASSES))]))
        out[split] = (np.ascontiguousarray(images[keep]), labels[keep])
    return out


def stratified_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """train45k / val5k: per class, a seeded VAL_FRACTION of the training images goes to val (sorted indices)."""
    rng = np.random.default_rng([seed, 3])
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:round(VAL_FRACTION * (labels == c).sum())]
                          for c in range(len(CLASSES))])
    val = np.sort(val)
    return np.setdiff1d(np.arange(len(labels)), val), val


# ---- writing ----

def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def _save_npz(path: Path, **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def write_beton(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Raw (lossless) RGB images and integer labels, FFCV's format."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    class _Pairs:
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i], int(labels[i])

    def write(f):  # FFCV writes by file name: the temporary file's
        writer = DatasetWriter(f.name, {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                               num_workers=min(os.cpu_count() or 1, 8))
        writer.from_indexed_dataset(_Pairs(), chunksize=1000)
    atomic_write(path, write)


def prepare_cifar10(source: str = "torchvision", data_dir: str | os.PathLike = "data", *,
                    subset_per_class: int | None = None, seed: int = 0) -> dict:
    """Turn `source` into the files listed in the module docstring and return the manifest.

    The same source and options again is a no-op that says so (it only adds the .beton files when ffcv has become
    importable since); anything else rebuilds. Bad sources raise ValueError with a one-line message.
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"--data-dir {data_dir} is not a folder")
    if subset_per_class is not None and subset_per_class < 1:
        raise ValueError(f"--subset-per-class must be >= 1, got {subset_per_class}")
    if not 0 <= seed < 2 ** 32:
        raise ValueError(f"--seed must be in 0..{2 ** 32 - 1}, got {seed}")
    old = read_manifest(data_dir)
    options = {"subset_per_class": subset_per_class, "seed": seed}
    want_source = source if source == "torchvision" else str(Path(source).expanduser().resolve())
    if old and old["source"] == want_source and old["options"] == options and files_intact(data_dir, old):
        if source == "torchvision" or not Path(source).exists() or old["source_sha256"] == source_sha256(source):
            if "encoding" not in old:  # prepared before the field: add it, in place (the files stay)
                old = _add_encoding(data_dir, old, source)
            if old["ffcv_version"] is not None or not _ffcv_available():
                print(f"prepare: {data_dir} already holds this source and options; nothing to do")
                return old
            print(f"prepare: {data_dir} is up to date; adding the FFCV files now that ffcv is importable")
            arrays = {s: load_arrays(data_dir, s) for s in COUNTS_PER_CLASS}
            return _write_all(data_dir, arrays, old["source"], old["source_sha256"], old["encoding"], options,
                              only_betons=True)
    splits, described, digest, enc = read_source(source, data_dir)
    splits = check_and_subset(splits, subset_per_class, seed)
    return _write_all(data_dir, splits, described if source != "torchvision" else "torchvision", digest, enc, options)


def _add_encoding(data_dir: Path, manifest: dict, source: str) -> dict:
    """An older manifest given its `encoding`: read from the source's headers when it is here (the official download:
    raw pixels), else that of a copy this project knows by its sha256, else None (unknown); rewritten atomically, so
    a process reading the folder meanwhile still finds a manifest."""
    if source == "torchvision":
        enc = official_encoding()
    elif Path(source).exists():
        enc = read_source(source, data_dir)[3]
    else:
        enc = KNOWN_ENCODINGS.get(manifest["source_sha256"])
    manifest = {**manifest, "encoding": enc}
    _write_manifest(data_dir, manifest)
    print(f"prepare: {data_dir}: recorded how the source stores its images: "
          f"{describe(enc) if enc else 'unknown (the source is not here)'}")
    return manifest


def _write_manifest(data_dir: Path, manifest: dict) -> None:
    atomic_write(data_dir / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))


def _write_all(data_dir: Path, splits: dict, source: str, digest: str, enc: dict, options: dict,
               only_betons=False) -> dict:
    train_labels = splits["train"][1]
    train45k, val5k = stratified_split(train_labels, options["seed"])  # all that can fail on bad input, before:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)  # from here on the directory is invalid until the manifest lands
    names = []
    for split, (images, labels) in splits.items():
        if not only_betons:
            _save_npy(data_dir / f"{split}_images.npy", images)
            _save_npy(data_dir / f"{split}_labels.npy", labels)
        names += [f"{split}_images.npy", f"{split}_labels.npy"]
    if not only_betons:
        _save_npz(data_dir / "splits.npz", train45k=train45k, val5k=val5k)
    names.append("splits.npz")
    ffcv_version = None
    for split in splits:  # .beton files of an earlier build must never pass for this one
        (data_dir / f"{split}.beton").unlink(missing_ok=True)
    if _ffcv_available():
        import importlib.metadata

        ffcv_version = importlib.metadata.version("ffcv")
        for split, (images, labels) in splits.items():
            write_beton(data_dir / f"{split}.beton", images, labels)
            names.append(f"{split}.beton")
    per_class = {s: np.bincount(y, minlength=len(CLASSES)).tolist() for s, (_, y) in splits.items()}
    per_class["train45k"] = np.bincount(train_labels[train45k], minlength=len(CLASSES)).tolist()
    per_class["val5k"] = np.bincount(train_labels[val5k], minlength=len(CLASSES)).tolist()
    manifest = {
        "dataset": "CIFAR-10", "classes": list(CLASSES), "source": source, "source_sha256": digest, "encoding": enc,
        "options": options, "seed": options["seed"], "subset_per_class": options["subset_per_class"],
        "num_images": {s: int(sum(c)) for s, c in per_class.items()}, "images_per_class": per_class,
        "image_shape_hwc": [32, 32, 3], "ffcv_version": ffcv_version,
        "numpy_version": np.__version__, "files": {n: sha256_file(data_dir / n) for n in names},
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_manifest(data_dir, manifest)
    print(f"prepare: wrote {data_dir} ({manifest['num_images']['train']} train, "
          f"{manifest['num_images']['test']} test images{', FFCV files' if ffcv_version else ''}); "
          f"source images: {describe(enc, loss=True) if enc else 'unknown'}")
    return manifest


def main(argv=None) -> int:
    from bench.cli import Parser  # argparse whose errors are one line, as run_all's

    p = Parser(prog="python -m loaders.prepare", description=__doc__.splitlines()[0])
    p.add_argument("--source", default="torchvision", help="torchvision | cifar-10-python.tar.gz or its folder | "
                   "ImageFolder folder or tarball with train/<class>/* and test/<class>/*")
    p.add_argument("--data-dir", default="data", help="where the prepared files go")
    p.add_argument("--subset-per-class", type=int, default=None, help="keep N seeded images per class and split")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset and the train45k/val5k split")
    try:
        a = p.parse_args(argv)
        prepare_cifar10(a.source, a.data_dir, subset_per_class=a.subset_per_class, seed=a.seed)
    except (ValueError, OSError) as e:  # OSError: a file that cannot be read or written (permissions, full disk)
        print(f"prepare: error: {' '.join(str(e).split())}", file=sys.stderr)  # always one line
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
