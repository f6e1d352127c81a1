"""How a source stores its images (loaders.images.encoding): read from the headers, kept in the manifest and in
every run's record, and what the reports say from it instead of guessing from a file name."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loaders import images, sources
from loaders.prepare import prepare_cifar10
from reports.ledger import load_ledger
from reports.data import data_source, lossy, short
from reports.report import banner
from test_reports import record, write_ledger

REPO = Path(__file__).resolve().parents[1]


def encoded(fmt: str, seed: int = 0, **kw) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **kw)
    return buf.getvalue()


def test_quality_and_chroma_come_from_the_headers():
    gray = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32), dtype=np.uint8)).save(gray, "JPEG", quality=75)
    blobs = [encoded("JPEG", quality=75), encoded("JPEG", quality=90, subsampling=0),
             encoded("JPEG", quality=100, subsampling=1), encoded("PNG"),
             encoded("JPEG", qtables=[[3] * 64, [5] * 64]),  # not an IJG quality's tables
             gray.getvalue()]
    assert images.encoding(blobs) == {"formats": {"JPEG": 5, "PNG": 1}, "lossless": False,
                                       "jpeg_quality": {"75": 2, "90": 1, "100": 1, "other": 1},
                                       "jpeg_chroma": {"4:2:0": 2, "4:4:4": 1, "4:2:2": 1, "gray": 1}}
    assert images.describe(images.encoding(blobs)) == \
        "JPEG x5, PNG x1, quality 75 x2, 90 x1, 100 x1, other x1, chroma 4:2:0 x2, 4:2:2 x1, 4:4:4 x1, gray x1"
    assert images.encoding([encoded("PNG"), encoded("BMP"), encoded("WEBP", lossless=True)]) == \
        {"formats": {"PNG": 1, "BMP": 1, "WEBP-lossless": 1}, "lossless": True}
    assert not images.encoding([encoded("WEBP", quality=80)])["lossless"]
    # non-ASCII digits ("²".isdigit() is True) are names, not numbers
    assert images.describe({"formats": {"JPEG": 3}, "jpeg_quality": {"\u00b2": 1, "\u0661": 1, "75": 1},
                             "jpeg_chroma": {"4:2:0": 3}}) == "JPEG, quality 75 x1, \u00b2 x1, \u0661 x1, chroma 4:2:0"
    assert images.encoding([b"not an image", encoded("PNG")]) == \
        {"formats": {"unreadable": 1, "PNG": 1}, "lossless": False}  # described; decoding refuses it if kept


def _dds_of_unknown_pixel_format() -> bytes:
    d = bytearray(encoded("DDS"))
    d[80:84] = (0x180000).to_bytes(4, "little")  # the pixel format's flags: Pillow raises NotImplementedError
    return bytes(d)


@pytest.mark.parametrize("damaged", [
    b"damaged",  # OSError: not an image
    _dds_of_unknown_pixel_format(),  # NotImplementedError
    b"\x01\xda\x00\x01" + bytes(508),  # SGI with a zero header: ValueError
    b"P6\n32 32\n0\n" + bytes(3072),  # PPM with maxval 0: ValueError
], ids=["garbage", "dds", "sgi", "ppm"])
def test_a_damaged_image_is_counted_then_refused_where_it_is_kept(tmp_path, damaged):
    for split in ("train", "test"):
        for c, name in enumerate(sources.CLASSES):
            (tmp_path / "src" / split / name).mkdir(parents=True)
            for i in range(2):
                (tmp_path / "src" / split / name / f"{i}.png").write_bytes(encoded("PNG", seed=2 * c + i))
    (tmp_path / "src" / "train" / "airplane" / "1.png").write_bytes(damaged)
    assert sources.read_source(str(tmp_path / "src"), tmp_path)[3] == \
        {"formats": {"PNG": 39, "unreadable": 1}, "lossless": False}
    with pytest.raises(ValueError, match=r"^train/airplane/1\.png: unreadable image"):
        prepare_cifar10(str(tmp_path / "src"), tmp_path / "out", subset_per_class=2)


def test_the_shipped_sample_is_what_the_table_says(tmp_path):
    _, _, digest, enc = sources.read_source(str(REPO / "data-sample" / "cifar10-jpeg-sample.tar.gz"), tmp_path)
    assert images.KNOWN_ENCODINGS[digest] == enc
    assert images.describe(enc) == "JPEG, quality 75, chroma 4:2:0"


def test_the_shared_copy_is_what_the_table_says(full_data_dir):
    m = json.loads((full_data_dir / "manifest.json").read_text())
    assert images.KNOWN_ENCODINGS[m["source_sha256"]] == m["encoding"]


def test_the_manifest_keeps_it_and_an_older_manifest_gains_it_in_place(tmp_path, write_official_archive, capsys):
    labels = np.tile(np.arange(10), 2)
    images = np.random.default_rng(1).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    archive = write_official_archive(tmp_path / "a.tar.gz", (images, labels), (images, labels))
    m = prepare_cifar10(str(archive), tmp_path / "data", subset_per_class=2)
    assert m["encoding"] == {"formats": {"CIFAR-10 python batches": 40}, "lossless": True}
    assert "source images: CIFAR-10 python batches (lossless)" in capsys.readouterr().out
    path = tmp_path / "data" / "manifest.json"
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir() if p.name != path.name}

    def strip():  # as prepared before the field existed
        old = json.loads(path.read_text())
        del old["encoding"]
        path.write_text(json.dumps(old))

    strip()
    assert prepare_cifar10(str(archive), tmp_path / "data", subset_per_class=2)["encoding"] == m["encoding"]
    assert "recorded how the source stores its images: CIFAR-10 python batches" in capsys.readouterr().out
    assert json.loads(path.read_text())["encoding"] == m["encoding"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir() if p.name != path.name} == files
    strip()
    archive.unlink()  # an old folder whose source is gone stays usable; its encoding is unknown
    assert prepare_cifar10(str(archive), tmp_path / "data", subset_per_class=2)["encoding"] is None
    assert "unknown (the source is not here)" in capsys.readouterr().out


def test_reports_say_what_the_encoding_was_not_what_the_name_suggests(tmp_path):
    q90 = {"formats": {"JPEG": 60000}, "lossless": False, "jpeg_quality": {"90": 60000},
           "jpeg_chroma": {"4:4:4": 60000}}
    png = {"formats": {"PNG": 60000}, "lossless": True}
    cases = [  # (data, lossy, words in its description)
        ({"source": "/data/images", "encoding": q90}, True,
         "lossy copy of CIFAR-10 stored as JPEG, quality 90, chroma 4:4:4"),
        ({"source": "/data/cifar10-jpeg-as-png", "encoding": png}, False,
         "lossless copy of CIFAR-10 stored as PNG; its pixels are not checked against the official archive"),
        ({"source": "/x/cifar-10-python.tar.gz", "encoding": {"formats": {"CIFAR-10 python batches": 60000},
                                                              "lossless": True}}, False, "official CIFAR-10 archive"),
        # older records: the measured encoding of a copy this project names, by its digest; else the name
        ({"source": "/old/copy.tar.gz", "source_sha256": next(iter(images.KNOWN_ENCODINGS))}, True,
         "lossy copy of CIFAR-10 stored as JPEG, quality 75, chroma 4:2:0"),
        ({"source": "/old/cifar10-jpeg.tar.gz", "source_sha256": "ab"}, True, "judged by its name"),
        ({"source": "/old/images.tar.gz", "source_sha256": "ab"}, False, "as recorded"),
        # a record is outside input: a malformed encoding is no encoding
        ({"source": "/x/cifar10-jpeg.tar.gz", "encoding": {"lossless": False, "formats": ["JPEG"]}}, True,
         "judged by its name"),
        ({"source": "/x/images", "encoding": {"lossless": "no", "formats": {"JPEG": 1}}}, False, "as recorded"),
        ({"source": "/x/images", "encoding": {"lossless": True, "formats": {"PNG": "many"}}}, False, "as recorded"),
        ({"source": "/x/images", "encoding": {"lossless": False, "formats": {"<img src=x>": 1}}}, False, "as recorded"),
        ({"source": "/x/images", "encoding": {"lossless": False, "formats": {"JPEG": 1}, "jpeg_quality": {"\u00b2": 1},
                                              "jpeg_chroma": {"4:2:0": 1}}}, False, "as recorded"),  # "²".isdigit()
    ]
    for data, is_lossy, words in cases:
        assert lossy(data) is is_lossy and words in data_source(data), data
    assert [short(data) for data, _, _ in cases[:4]] == [
        "CIFAR-10 JPEG, quality 90, chroma 4:4:4 (lossy)", "CIFAR-10 PNG (lossless)", "CIFAR-10 (official archive)",
        "CIFAR-10 JPEG, quality 75, chroma 4:2:0 (lossy)"]
    recs = [record(test=9.5), record(lr=0.1, test=9.6)]
    for rec, enc in zip(recs, (q90, png)):
        rec["data"] = {**rec["data"], "source": "/data/images", "encoding": enc}
    assert banner(load_ledger(write_ledger(tmp_path / "mixed", recs))) == (
        "**Not comparable with the paper:** it trained on a lossy copy of CIFAR-10 (JPEG, quality 90, chroma 4:4:4), "
        "not the official images. The Δ columns measure this setup, not the method.")
    recs[0]["data"]["encoding"] = png
    assert banner(load_ledger(write_ledger(tmp_path / "png", recs))) is None


def test_the_banner_warns_whichever_run_trained_on_lossy_data(tmp_path):
    for lossy_lr in (0.05, 0.1):  # the lossy run first or last in the ledger
        recs = [record(lr=lr, test=9.5) for lr in (0.05, 0.1)]  # record's data: cifar10-jpeg.tar.gz (lossy)
        for rec in recs:
            if rec["lr"] != lossy_lr:
                rec["data"] = {**rec["data"], "source": "/data/images", "source_sha256": "png"}
        assert "lossy JPEG copy" in banner(load_ledger(write_ledger(tmp_path / str(lossy_lr), recs))), lossy_lr


def test_the_header_counts_the_train_and_test_images_as_recorded():
    data = {"source": "/x/cifar-10-python.tar.gz", "num_train": 45000, "num_test": 10000}
    assert data_source(data) == "/x/cifar-10-python.tar.gz (official CIFAR-10 archive; 45000 train / 10000 test images)"


def test_a_table_cell_names_data_of_no_known_encoding_by_its_file_name():
    """Neither an encoding recorded nor a known copy nor a lossy name: the campaign table's Data cell is the
    source's file name, as recorded, not a claim that it is the official archive."""
    assert short({"source": "/data/my-images.tar.gz", "source_sha256": "ab"}) == "my-images.tar.gz"
