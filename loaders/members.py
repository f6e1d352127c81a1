"""A source's files, read for loaders.sources.read_source (the only caller) with each file's size checked before it
is read: an image file up to MAX_IMAGE_BYTES, an official batch up to MAX_BATCH_BYTES, all of them together up to
MAX_SOURCE_BYTES. So a small archive that unpacks to gigabytes is refused in one line naming the member, not read
into memory. Two archive members that would be the same image or batch (backup/train/cat/0001.jpg beside
train/cat/0001.jpg) are refused, naming both: one silently replaced the other.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from bench.files import read_regular

from .images import IMAGE_EXTS
from .sources import COUNTS_PER_CLASS, OFFICIAL_MEMBERS

OFFICIAL_NAMES = OFFICIAL_MEMBERS["train"] + OFFICIAL_MEMBERS["test"]
MAX_IMAGE_BYTES = 1 << 20  # one image file: a 32x32 image takes a few KB in any of IMAGE_EXTS
MAX_BATCH_BYTES = 256 << 20  # one official batch: 10,000 images of 3,072 bytes, about 31 MB
MAX_SOURCE_BYTES = 1 << 30  # all files read: CIFAR-10's 60,000 images stored uncompressed take about 190 MB


def _take(name: str, size: int, batch: bool, used: int) -> int:
    """`used` plus this file's `size`; a one-line ValueError naming the file, before it is read, when it is larger
    than a file of its kind may be or takes the source past MAX_SOURCE_BYTES."""
    cap, what = (MAX_BATCH_BYTES, "an official batch") if batch else (MAX_IMAGE_BYTES, "an image file")
    if size > cap:
        raise ValueError(f"{name}: {size:,} bytes, more than {what} of CIFAR-10 may take ({cap:,}): not read")
    if used + size > MAX_SOURCE_BYTES:
        raise ValueError(f"{name}: the source's files pass {MAX_SOURCE_BYTES:,} bytes, more than all of CIFAR-10 "
                         "takes: not read")
    return used + size


def _read(path: Path, batch: bool) -> bytes:
    """A folder's file, its size already taken: read no further than its cap (it may have grown since)."""
    try:
        return read_regular(path, MAX_BATCH_BYTES if batch else MAX_IMAGE_BYTES)
    except ValueError as e:  # grown past its cap, or no longer a regular file
        raise ValueError(f"{path}: {e}: not read") from None


def tar_files(tf: tarfile.TarFile) -> tuple[dict, dict]:
    """(official batches by name, images by (split, class, file name)) of an archive."""
    official, folder, seen, used = {}, {}, {}, 0
    for m in tf:
        parts = Path(m.name).parts
        if not (m.isfile() and parts):
            continue
        if parts[-1] in OFFICIAL_NAMES:
            key, into, batch = parts[-1], official, True
        elif len(parts) >= 3 and parts[-3] in COUNTS_PER_CLASS and Path(m.name).suffix.lower() in IMAGE_EXTS:
            key, into, batch = parts[-3:], folder, False
        else:
            continue
        if key in seen:
            raise ValueError(f"{seen[key]} and {m.name}: two members for {key if batch else '/'.join(key)}; "
                             "remove one")
        seen[key] = m.name
        used = _take(m.name, m.size, batch, used)
        into[key] = tf.extractfile(m).read()
    _check_end(tf)
    return official, folder


MAX_TRAILER_BYTES = 16 << 20  # after a tar's end: zero blocks padding its last record (GNU tar: 10 KiB)


def _check_end(tf: tarfile.TarFile) -> None:
    """Read what follows the archive's end marker, to the end of its (decompressed) stream: tarfile stops at the
    first block that is no valid header, damaged or not, and never reads a compressed stream's checksum, so a
    .tar.gz with a flipped bit gave some images other pixels, and a damaged header lost every member after it,
    without a word. Raises tarfile.ReadError unless only zeros follow; a damaged stream raises its own error
    (BadGzipFile, an OSError; lzma.LZMAError; EOFError when cut short)."""
    left = MAX_TRAILER_BYTES
    while chunk := tf.fileobj.read(1 << 20):
        left -= len(chunk)
        if chunk.count(0) != len(chunk) or left < 0:
            raise tarfile.ReadError("data after the archive's end (a damaged member header, or archives joined "
                                    "together)")


def folder_files(root: Path) -> dict:
    """Images by (split, class, file name) of an ImageFolder tree. Regular files only (and links to them), as from
    a tarball: a folder or dangling link named *.png is skipped."""
    out, used = {}, 0
    for s in COUNTS_PER_CLASS:
        for p in (root / s).glob("*/*") if (root / s).is_dir() else ():
            if p.suffix.lower() in IMAGE_EXTS and p.is_file():
                used = _take(str(p), p.stat().st_size, False, used)
                out[(s, p.parent.name, p.name)] = _read(p, False)
    return out


def batch_files(folder: Path) -> dict:
    """The official batches by name, from their folder (all present: the caller has checked)."""
    out, used = {}, 0
    for n in OFFICIAL_NAMES:
        used = _take(str(folder / n), (folder / n).stat().st_size, True, used)
        out[n] = _read(folder / n, True)
    return out
