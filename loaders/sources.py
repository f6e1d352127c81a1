"""Reading CIFAR-10 from its sources (for `loaders.prepare`, the only caller): the official python archive or its
folder, or an ImageFolder tree or tarball (train/<class>/*, test/<class>/*). Each reader returns
{"train": (images N x 32 x 32 x 3 uint8, labels N int64), "test": (...)}. Sources are outside input: the official
pickles are read with a restricted unpickler, archives in memory (each file's size checked before it is read:
loaders/members.py), and every problem is a one-line ValueError.
"""
from __future__ import annotations

import functools
import hashlib
import io
import lzma
import pickle
import tarfile
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
COUNTS_PER_CLASS = {"train": 5000, "test": 1000}  # CIFAR-10: 50,000 training and 10,000 test images
OFFICIAL_MEMBERS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
PIL_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "WEBP")  # the formats of IMAGE_EXTS, the only ones Pillow may open: a
# file named *.jpg is read by its content, and among Pillow's other formats EPS is rendered by running Ghostscript
OFFICIAL_FORMAT = "CIFAR-10 python batches"  # the official archive: raw pixels
LOSSLESS_FORMATS = (OFFICIAL_FORMAT, "PNG", "BMP", "PPM", "WEBP-lossless")  # formats that store pixels exactly
CHROMA = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}  # Pillow's JpegImagePlugin.get_sampling codes


def _jpeg(n: int, quality: str, chroma: str) -> dict:
    return {"formats": {"JPEG": n}, "lossless": False, "jpeg_quality": {quality: n}, "jpeg_chroma": {chroma: n}}


KNOWN_ENCODINGS = {  # sha256 -> `encoding` of the copies this project names (tests/test_encoding.py measures them),
    # for records written before the field existed
    "caee4964ee157074cd166f19fc57801edbb2493096149057c636738291eee788": _jpeg(60000, "75", "4:2:0"),  # ../shared/data
    "3dab5332f28d684bbd756b795d1ca5a520fff8c062b855d733529daed21380aa": _jpeg(400, "75", "4:2:0"),  # data-sample/
}


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


@contextmanager
def _headers_quiet():
    """Around a loop that opens images (Pillow reads the header, decodes nothing): a header that claims a huge image
    raises no DecompressionBombWarning (two lines on stderr): decoding refuses it by its size, naming the file.
    Once per loop, not per image (it costs as much as a tenth of a decode)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """One image, inside `_headers_quiet`."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
        if im.size == (32, 32):  # checked on the header, before decoding (a 10000x10000 image takes 300 MB)
            pixels = np.asarray(im if im.mode.startswith(("I", "F")) else im.convert("RGB"))
    except Exception as e:  # Pillow's plugins raise OSError, ValueError, NotImplementedError... on damaged headers
        raise ValueError(f"{name}: unreadable image ({type(e).__name__}: {e})") from None
    if im.size != (32, 32):
        raise ValueError(f"{name}: image is {im.size[0]}x{im.size[1]}, CIFAR-10 images are 32x32")
    return _rgb(pixels, im.mode, name)


def _rgb(pixels: np.ndarray, mode: str, name: str) -> np.ndarray:
    """A decoded 32x32 image's 8-bit RGB pixels (`pixels`: convert("RGB")'s, or the bare array of a mode I or F
    image). 16-bit grayscale (mode I;16 from a PNG, I from a PGM whose maxval is over 255, which Pillow scales to
    0..65535) keeps its high byte, as Pillow reads 16-bit RGB: convert("RGB") clipped every value above 255 to
    white. A floating-point image (mode F: a PFM) has no 8-bit scale: refused."""
    if mode == "F":
        raise ValueError(f"{name}: floating-point image (mode F): save it as 8-bit RGB")
    if mode.startswith("I"):
        gray = pixels.astype(np.int64)
        if gray.size and (gray.min() < 0 or gray.max() > 0xFFFF):
            raise ValueError(f"{name}: {mode} image with values outside 0..65535: save it as 8-bit RGB")
        return np.repeat((gray >> 8).astype(np.uint8)[..., None], 3, axis=2)
    return pixels


class EncodedImages:
    """One split's encoded images, decoded when indexed with an array of positions (`np.asarray` decodes all): a
    subset (`--subset-per-class`) decodes only the images it keeps, not all 60,000."""

    def __init__(self, blobs: list[tuple[str, bytes]]):
        self.blobs = blobs  # (name for errors, encoded image), in source order

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, positions) -> np.ndarray:
        with _headers_quiet():
            return np.stack([_decode_image(self.blobs[i][1], self.blobs[i][0]) for i in np.asarray(positions)])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self[np.arange(len(self))]
        return images if dtype is None else images.astype(dtype)


def encoding(blobs) -> dict:
    """How a source stores its images, read from the headers of all of them (nothing is decoded; with
    --subset-per-class too, so the whole source is described): the manifest's `encoding`, recorded with every run,
    so a report says what the data was rather than guessing from a file name.

        {"formats": {"JPEG": 60000}, "lossless": false, "jpeg_quality": {"75": 60000}, "jpeg_chroma": {"4:2:0": 60000}}

    `jpeg_quality`: the IJG quality whose tables the image's quantization tables equal ("other" for another
    encoder's tables); `jpeg_chroma`: the chroma subsampling ("4:2:0": colour at half the resolution each way,
    16x16 for CIFAR-10; "gray" for one channel). `lossless` only when every image is in a format that stores pixels
    exactly (WebP only in its lossless form, "WEBP-lossless"); an image whose header cannot be read counts as
    "unreadable" (a subset may leave it out; one that is kept fails its decoding with a one-line error)."""
    from collections import Counter

    from PIL import Image, JpegImagePlugin

    formats, quality, chroma = Counter(), Counter(), Counter()
    with _headers_quiet():
        for blob in blobs:  # the encoded images' bytes
            try:
                im = Image.open(io.BytesIO(blob), formats=PIL_FORMATS)
            except Exception:  # a damaged header (OSError, ValueError, NotImplementedError...): counted, not refused;
                formats["unreadable"] += 1  # decoding refuses it, naming the file, when it is kept
                continue
            lossless_webp = im.format == "WEBP" and (blob[12:16] == b"VP8L" or (blob[12:16] == b"VP8X" and
                                                                               b"VP8L" in blob and b"VP8 " not in blob))
            formats["WEBP-lossless" if lossless_webp else im.format] += 1
            if im.format == "JPEG":
                quality[str(_ijg_quality().get(_tables(im), "other"))] += 1
                chroma["gray" if im.mode == "L" else CHROMA.get(JpegImagePlugin.get_sampling(im), "other")] += 1
    out = {"formats": dict(formats), "lossless": set(formats) <= set(LOSSLESS_FORMATS)}
    if quality:
        out.update(jpeg_quality=dict(quality), jpeg_chroma=dict(chroma))
    return out


def describe(enc: dict, *, loss: bool = False) -> str:
    """A manifest's `encoding` in words: "JPEG, quality 75, chroma 4:2:0" (mixed: "quality 75 x59,000, 90 x1,000");
    `loss` adds " (lossy)" or " (lossless)"."""
    def counted(c: dict) -> str:
        def number(k) -> bool:  # ASCII digits only: "²".isdigit() is True but int("²") fails
            return k.isascii() and k.isdecimal()

        order = sorted(c.items(), key=lambda kv: (not number(kv[0]), int(kv[0]) if number(kv[0]) else 0, kv[0]))
        return ", ".join(k if len(c) == 1 else f"{k} x{n:,}" for k, n in order)

    words = counted(enc.get("formats") or {}) or "no images"
    if enc.get("jpeg_quality"):
        words += f", quality {counted(enc['jpeg_quality'])}, chroma {counted(enc.get('jpeg_chroma') or {})}"
    return words + (f" ({'lossless' if enc.get('lossless') else 'lossy'})" if loss else "")


def official_encoding(num_images: int = len(CLASSES) * sum(COUNTS_PER_CLASS.values())) -> dict:
    """The `encoding` of the official archive (raw pixels)."""
    return {"formats": {OFFICIAL_FORMAT: num_images}, "lossless": True}


def _count(splits: dict) -> int:
    return sum(len(labels) for _, labels in splits.values())


def _tables(im) -> tuple:
    return tuple(tuple(im.quantization[k]) for k in sorted(im.quantization))


@functools.cache
def _ijg_quality() -> dict:
    """Quantization tables -> the IJG quality (1-100) that writes them: libjpeg's, as Pillow encodes with it."""
    from PIL import Image

    out = {}
    for q in range(1, 101):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "JPEG", quality=q)
        tables = _tables(Image.open(buf))
        out.setdefault(tables, q)
        out.setdefault(tables[:1], q)  # a grayscale JPEG has the luminance table only
    return out


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
