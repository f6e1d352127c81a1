"""Reading CIFAR-10 from its sources (for `loaders.prepare`, the only caller): the official python archive or its
folder, or an ImageFolder tree or tarball (train/<class>/*, test/<class>/*). Each reader returns
{"train": (images N x 32 x 32 x 3 uint8, labels N int64), "test": (...)}. Sources are outside input: the official
pickles are read with a restricted unpickler, archives in memory (each file's size checked before it is read:
loaders/members.py), images decoded and described by loaders/images.py, and every problem is a one-line ValueError.
"""
from __future__ import annotations

import hashlib
import io
import lzma
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .images import OFFICIAL_FORMAT, EncodedImages, encoding

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
COUNTS_PER_CLASS = {"train": 5000, "test": 1000}  # CIFAR-10: 50,000 training and 10,000 test images
OFFICIAL_MEMBERS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _hash_file(h, path: Path):
    """`h` updated with the file's bytes, read in chunks (a source's folder may hold a file of any size)."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h


def sha256_file(path: Path) -> str:
    return _hash_file(hashlib.sha256(), path).hexdigest()


def _sha256_tree(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        _hash_file(h, p)
    return h.hexdigest()


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what an official CIFAR-10 batch holds: dicts, lists, bytes, str and ints (native pickle
    opcodes), numpy arrays (as numpy 1 and 2 pickle them, protocols 0-5) with their dtypes, and `_codecs.encode`
    (how Python 3 writes bytes at protocol 2; it only encodes a string). Any other global (os.system,
    builtins.open, subprocess...) is refused before it is looked up, so nothing from the archive is executed."""
    ALLOWED = {(f"numpy.{core}.{module}", name) for core in ("core", "_core")
               for module, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))} | \
              {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


class _Refused(pickle.UnpicklingError):
    pass


def _load_batch(name: str, blob: bytes) -> dict:
    try:
        d = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except _Refused as e:
        raise ValueError(f"{name}: refused, the batch asks to run {e} (an official CIFAR-10 batch holds only numpy "
                         "arrays, lists and bytes): not a genuine CIFAR-10 archive, nothing from it was run") from None
    except Exception as e:
        raise ValueError(f"{name}: unreadable official batch ({type(e).__name__})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{name}: not an official CIFAR-10 batch (no b'data' and b'labels' entries)")
    return d


def _read_official(batches: dict[str, bytes]) -> dict:
    """The official python pickles: b'data' is N x 3072 (channel-major 32x32 planes), b'labels' N ints. Read with
    `_BatchUnpickler`: an archive is outside input."""
    out = {}
    for split, names in OFFICIAL_MEMBERS.items():
        xs, ys = [], []
        for name in names:
            d = _load_batch(name, batches[name])
            if not isinstance(d[b"data"], np.ndarray) or not (isinstance(d[b"labels"], np.ndarray) or (
                    isinstance(d[b"labels"], list) and all(type(v) is int for v in d[b"labels"]))):
                # as the official batches hold them; a nested list is walked whole by np.asarray, and one of a few
                # hundred bytes that shares its sublists (x = [x, x], 40 deep) takes days and terabytes
                raise ValueError(f"{name}: data is not a numpy array or labels not a flat list of ints (types "
                                 f"{type(d[b'data']).__name__}, {type(d[b'labels']).__name__})")
            try:
                data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
            except (TypeError, ValueError, OverflowError) as e:
                raise ValueError(f"{name}: data or labels are not integer arrays ({type(e).__name__})") from None
            if data.dtype.kind not in "iu" or labels.dtype.kind not in "iu":
                raise ValueError(f"{name}: data or labels are not integer arrays ({data.dtype}, {labels.dtype})")
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{name}: images are not 32x32 RGB (data shape {data.shape})")
            if len(data) != labels.size:  # per batch: totals that agree can still pair images with others' labels
                raise ValueError(f"{name}: {len(data)} images but {labels.size} labels")
            if data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):  # a cast would wrap
                raise ValueError(f"{name}: pixel values outside 0..255 (min {data.min()}, max {data.max()})")
            xs.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(labels.astype(np.int64).reshape(-1))
        out[split] = (np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys))
    return out


def official_encoding(num_images: int = len(CLASSES) * sum(COUNTS_PER_CLASS.values())) -> dict:
    """The `encoding` of the official archive (raw pixels)."""
    return {"formats": {OFFICIAL_FORMAT: num_images}, "lossless": True}


def _count(splits: dict) -> int:
    return sum(len(labels) for _, labels in splits.values())


def _read_imagefolder(files: dict[tuple[str, str, str], bytes]) -> dict:
    """files: (split, class, name) -> encoded image. Each split's class folders must be named as CLASSES or by
    CIFAR-10's label numbers 0..9 (a folder named otherwise would shift the labels of all after it); a label is its
    folder's place in that list (CLASSES is alphabetical, CIFAR-10's own numbering); images are `EncodedImages`,
    decoded when the split is subset or stored."""
    out = {}
    for split in COUNTS_PER_CLASS:
        folders = {c for s, c, _ in files if s == split}
        names = CLASSES if folders & set(CLASSES) or not folders else [str(i) for i in range(len(CLASSES))]
        if folders != set(names):
            extra, missing = sorted(folders - set(names)), sorted(set(names) - folders)
            raise ValueError(f"{split}/: class folders must be CIFAR-10's {len(CLASSES)} classes "
                             f"({', '.join(CLASSES)}) or their numbers 0-9; unexpected: {', '.join(extra) or 'none'}; "
                             f"missing: {', '.join(missing) or 'none'}")
        keys = sorted(k for k in files if k[0] == split)
        images = EncodedImages([("/".join(k), files[k]) for k in keys])
        labels = np.array([names.index(k[1]) for k in keys], dtype=np.int64)
        out[split] = (images, labels)
    return out


def _official_dir(path: Path) -> Path | None:
    """The folder holding the official batches when `path` is that folder or holds cifar-10-batches-py/, else None."""
    batches = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    return batches if (batches / "data_batch_1").is_file() else None


def source_sha256(source: str) -> str:
    """The digest a prepared copy records for its source: of the official batches' folder or the image tree for a
    directory, of the file for an archive."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _sha256_tree(_official_dir(path) or path)
    return sha256_file(path)


def read_source(source: str, data_dir: Path) -> tuple[dict, str, str, dict]:
    """Returns (splits, source description, sha256 of the source, its `encoding`). Raises ValueError with one line
    on bad input. Files are read by loaders.members, which caps their sizes."""
    from .members import batch_files, folder_files, tar_files

    if source == "torchvision":
        from torchvision.datasets import CIFAR10

        download_dir = data_dir / "downloads"
        download_dir.mkdir(parents=True, exist_ok=True)
        try:  # the official archive, checked against its md5
            CIFAR10(str(download_dir), train=True, download=True)
        except Exception as e:
            raise ValueError(f"torchvision download failed ({type(e).__name__}: {e}); pass --source PATH "
                             "(e.g. ../shared/data/cifar10-jpeg.tar.gz)") from None
        source = str(download_dir / "cifar-10-python.tar.gz")
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(f"source not found: {source}")
    if not (path.is_dir() or path.is_file()):  # a FIFO or device would block or never end
        raise ValueError(f"{source}: neither a folder nor a regular file")
    if path.is_dir():
        batches = _official_dir(path)
        if batches is not None:
            names = OFFICIAL_MEMBERS["train"] + OFFICIAL_MEMBERS["test"]
            missing = [n for n in names if not (batches / n).is_file()]
            if missing:
                raise ValueError(f"{source}: official batches missing: {', '.join(missing)}")
            splits = _read_official(batch_files(batches))
            return splits, str(path.resolve()), source_sha256(source), official_encoding(_count(splits))
        files = folder_files(path)
        if not files:
            raise ValueError(f"{source}: neither official CIFAR-10 batches nor train/<class>/ and test/<class>/ images")
        return _read_imagefolder(files), str(path.resolve()), source_sha256(source), encoding(files.values())
    try:
        with tarfile.open(path) as tf:
            official, folder = tar_files(tf)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        why = (str(e).splitlines() or [""])[0].rstrip(" :") or "no detail"
        raise ValueError(f"{source}: unreadable archive ({type(e).__name__}: {why}); give a tar or tar.gz of CIFAR-10 "
                         "(the official download, or train/<class>/ and test/<class>/ images), fetched again if "
                         "it was cut short") from None
    digest = sha256_file(path)
    if len(official) == 6:
        splits = _read_official(official)
        return splits, str(path.resolve()), digest, official_encoding(_count(splits))
    if folder:
        return _read_imagefolder(folder), str(path.resolve()), digest, encoding(folder.values())
    raise ValueError(f"{source}: archive holds neither the 6 official batches nor train/<class>/ and "
                     "test/<class>/ images")
