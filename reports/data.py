"""The data a run trained on, in words, from its record's `data`: how the source stored its images (`encoding`,
written by loaders.images.encoding and kept in the manifest and every record), so that a report says what the
headers said rather than what a file name suggests. A record is outside input: an `encoding` of another shape
counts as absent, and a record from before the field falls back to the measured encoding of a copy this project
names (loaders.images.KNOWN_ENCODINGS, by the source's sha256), then to the source's name."""
from __future__ import annotations

import re
from pathlib import Path

from loaders.images import KNOWN_ENCODINGS, OFFICIAL_FORMAT, describe

_KEY = re.compile(r"[A-Za-z0-9_:. -]{1,32}")  # a format, quality or chroma name (ASCII only: shown in the
# report's Markdown and HTML, and images.describe sorts the all-digit ones as numbers)


def encoding_of(data: dict) -> dict | None:
    """The record's `encoding` when it has the shape images.encoding writes, else the known copy's, else None."""
    enc = data.get("encoding")
    if _well_formed(enc):
        return enc
    return KNOWN_ENCODINGS.get(str(data.get("source_sha256")))


def _well_formed(enc) -> bool:
    """`lossless` a bool, and each of formats, jpeg_quality, jpeg_chroma (when present) a {short name: int} dict."""
    if not (isinstance(enc, dict) and isinstance(enc.get("lossless"), bool)):
        return False
    counts = [enc.get(k, {}) for k in ("formats", "jpeg_quality", "jpeg_chroma")]
    return all(isinstance(c, dict) and all(isinstance(k, str) and _KEY.fullmatch(k) and type(n) is int
                                           for k, n in c.items()) for c in counts)


def num_test(data) -> int | None:
    """The number of test images the run was scored on (`data.num_test`) when it is a positive int, else None."""
    n = data.get("num_test") if isinstance(data, dict) else None
    return n if type(n) is int and n > 0 else None


def official(enc: dict) -> bool:
    return OFFICIAL_FORMAT in enc.get("formats", {})


def lossy(data: dict) -> bool:
    """Whether the images were stored lossily: `encoding_of`, else "jpeg"/"jpg" in the source's name."""
    enc = encoding_of(data)
    if enc:
        return not enc["lossless"]
    source = str(data.get("source") or "").lower()
    return "jpeg" in source or "jpg" in source


def data_source(data: dict) -> str:
    """"<source> (<what it is>; <train> train / <test> test images)" for the report's header."""
    source = str(data.get("source") or "unknown")
    enc = encoding_of(data)
    if enc and official(enc):
        kind = "official CIFAR-10 archive"
    elif enc and enc["lossless"]:
        kind = f"lossless copy of CIFAR-10 stored as {describe(enc)}; its pixels are not checked against the " \
               "official archive"
    elif enc:
        kind = f"lossy copy of CIFAR-10 stored as {describe(enc)}; not the official archive"
    elif lossy(data):
        kind = "lossy JPEG copy of CIFAR-10 (judged by its name: the record does not say how it was encoded); not " \
               "the official archive"
    elif any(w in source.lower() for w in ("cifar-10-python", "torchvision", "official")):
        kind = "official CIFAR-10 archive"
    else:
        kind = "as recorded"
    counts = f"; {data['num_train']} train / {data.get('num_test')} test images" if data.get("num_train") else ""
    return f"{source} ({kind}{counts})"


def short(data: dict) -> str:
    """The data in a table cell: "CIFAR-10 JPEG, quality 75, chroma 4:2:0 (lossy)"."""
    enc = encoding_of(data)
    if enc:
        return "CIFAR-10 (official archive)" if official(enc) else f"CIFAR-10 {describe(enc, loss=True)}"
    return "CIFAR-10 JPEG (lossy)" if lossy(data) else Path(str(data.get("source"))).name
