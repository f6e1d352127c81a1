"""CIFAR-10's images as files (for `loaders.sources`, which reads them from an ImageFolder tree or tarball): the
formats Pillow may open, one image decoded and checked (32x32 on its header, before decoding; 16-bit gray kept by its
high byte; floating-point images refused), a split's images decoded only when indexed (`EncodedImages`), and how a
source stores them (`encoding`, read from the headers alone; `describe` puts it in words for loaders.prepare and the
reports). Images are outside input: one that cannot be used is a one-line ValueError naming its file.
"""
from __future__ import annotations

import functools
import io
import warnings
from contextlib import contextmanager

import numpy as np

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
