"""loaders.prepare and loaders.sources on bad input: one line naming what is wrong, exit 2, nothing half-done."""
from __future__ import annotations

import io
import tarfile
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from loaders import prepare
from loaders.manifest import load_manifest
from loaders.prepare import prepare_cifar10
from tests.conftest import official_batches_archive as official_archive
from tests.test_prepare import REPO, _one_line_error, synthetic_split

SAMPLE = REPO / "data-sample" / "cifar10-jpeg-sample.tar.gz"


def test_images_and_labels_are_counted_per_batch(tmp_path, capsys):
    """data_batch_1 one image more than its labels, data_batch_2 one fewer: the totals agreed, so prepare stored
    every image of data_batch_2 and after with the label of its neighbour."""
    x, y = synthetic_split(10, 1)  # 100 images, labels 0..9 over and over
    batches = {f"data_batch_{i}": (x[20 * (i - 1):20 * i], y[20 * (i - 1):20 * i]) for i in range(1, 6)}
    batches["data_batch_1"] = (x[:21], y[:20])
    batches["data_batch_2"] = (x[21:40], y[20:40])
    batches["test_batch"] = synthetic_split(1, 2)
    archive = official_archive(tmp_path / "shifted.tar.gz", batches)
    err = _one_line_error(capsys, ["--source", str(archive), "--data-dir", str(tmp_path / "out"),
                                   "--subset-per-class", "1"])
    assert err.endswith("data_batch_1: 21 images but 20 labels"), err
    assert not (tmp_path / "out" / "manifest.json").exists()


def png_tree(root: Path) -> Path:
    """An ImageFolder tree of one 32x32 PNG per class and split."""
    for split in ("train", "test"):
        for c, name in enumerate(prepare.CLASSES):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), c, np.uint8)).save(root / split / name / "0.png")
    return root


def sparse(path: Path, size: int) -> Path:
    """A file of `size` zero bytes that takes no disk (nor memory to write)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def peak_bytes(call) -> int:
    """The most memory Python's allocator held above its start while `call()` ran, the second time: the first
    imports what it needs (torch's import alone takes some 70 MB)."""
    call()
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("counts", [None, {"train": 10, "test": 10},
                                    {"train": 10, "test": -1, "train45k": 9, "val5k": 1},
                                    {"train": "10", "test": 10, "train45k": 9, "val5k": 1},
                                    {"train": 10, "test": True, "train45k": 9, "val5k": 1},
                                    {"train": 10, "test": 10, "train45k": 10, "val5k": 1}])
def test_a_manifest_without_sound_counts_is_no_manifest(tmp_path, write_official_archive, capsys, no_ffcv, counts):
    """A manifest without `num_images`: prepare said "nothing to do", then run_all stopped with a KeyError
    traceback where it reads the counts."""
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(1, 1), synthetic_split(1, 2))
    data = tmp_path / "data"
    good = prepare_cifar10(str(archive), data, subset_per_class=1)
    damaged = {k: v for k, v in good.items() if k != "num_images"}
    if counts is not None:
        damaged["num_images"] = counts
    (data / "manifest.json").write_text(prepare.json.dumps(damaged))
    with pytest.raises(ValueError, match="not prepared"):
        load_manifest(data)
    capsys.readouterr()
    assert prepare_cifar10(str(archive), data, subset_per_class=1)["num_images"] == good["num_images"]
    assert "nothing to do" not in capsys.readouterr().out  # rebuilt
    assert load_manifest(data)["num_images"] == good["num_images"]


@pytest.mark.parametrize("seed", [-1, 2 ** 32])
def test_a_bad_seed_is_refused_before_anything_is_touched(tmp_path, write_official_archive, capsys, no_ffcv,
                                                          monkeypatch, seed):
    """--seed -1 removed the manifest of a prepared folder before the split failed ("expected non-negative
    integer", not naming --seed), and left an empty folder where there was none; 2 ** 32 was taken."""
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(1, 1), synthetic_split(1, 2))
    data = tmp_path / "data"
    prepare_cifar10(str(archive), data, subset_per_class=1)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    for where in (data, tmp_path / "new"):
        err = _one_line_error(capsys, ["--source", str(archive), "--data-dir", str(where), "--seed", str(seed),
                                       "--subset-per-class", "1"])
        assert f"--seed must be in 0..{2 ** 32 - 1}, got {seed}" in err, err
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before and load_manifest(data)
    assert not (tmp_path / "new").exists()

    def refused(labels, seed):  # the split is the last step that may refuse the input: nothing is touched before
        raise ValueError("refused")
    monkeypatch.setattr(prepare, "stratified_split", refused)
    for where in (data, tmp_path / "new"):
        _one_line_error(capsys, ["--source", str(archive), "--data-dir", str(where), "--seed", "1",
                                 "--subset-per-class", "1"])
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv", [["--subset-per-class", "abc"], ["--bogus"], ["--seed"]])
def test_a_bad_command_line_is_one_line(argv, capsys):
    """argparse printed its usage block above the error (and exited from inside main); run_all says it in one."""
    err = _one_line_error(capsys, argv)
    assert err.removeprefix("prepare: error: ").startswith(("argument --", "unrecognized arguments: --bogus")), err


def test_a_member_too_large_for_an_image_is_refused_before_it_is_read(tmp_path, capsys):
    """A small .tar.gz holding one member of zeros named like an image was read whole (600 MB of them reached 657 MB
    of memory) before any check."""
    archive = tmp_path / "zeros.tar.gz"
    with tarfile.open(SAMPLE) as src, tarfile.open(archive, "w:gz") as dst:
        for m in src:
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        dst.add(sparse(tmp_path / "zeros", 32 << 20), arcname="train/cat/zeros.png")
    assert archive.stat().st_size < 1 << 20
    argv = ["--source", str(archive), "--data-dir", str(tmp_path / "out"), "--subset-per-class", "1"]
    assert peak_bytes(lambda: _one_line_error(capsys, argv)) < 8 << 20
    err = _one_line_error(capsys, argv)
    assert err.endswith(f"train/cat/zeros.png: {32 << 20:,} bytes, more than an image file of CIFAR-10 may take "
                        f"({1 << 20:,}): not read"), err
    src = png_tree(tmp_path / "tree")  # the same in a folder
    sparse(src / "test" / "dog" / "1.png", 2 << 20)
    err = _one_line_error(capsys, ["--source", str(src), "--data-dir", str(tmp_path / "out"),
                                   "--subset-per-class", "1"])
    assert f"{src / 'test' / 'dog' / '1.png'}: {2 << 20:,} bytes, more than an image file" in err, err
    assert not (tmp_path / "out").exists()


def test_official_batches_and_whole_sources_have_caps_too(tmp_path, write_official_archive, capsys, monkeypatch):
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(1, 1), synthetic_split(1, 2))
    with tarfile.open(archive) as tf:
        sizes = {Path(m.name).name: m.size for m in tf}
        tf.extractall(tmp_path / "folder", filter="data")
    out = ["--data-dir", str(tmp_path / "out"), "--subset-per-class", "1"]
    monkeypatch.setattr("loaders.members.MAX_BATCH_BYTES", sizes["data_batch_1"] - 1)
    err = _one_line_error(capsys, ["--source", str(archive), *out])
    assert err.endswith(f"data_batch_1: {sizes['data_batch_1']:,} bytes, more than an official batch of CIFAR-10 "
                        f"may take ({sizes['data_batch_1'] - 1:,}): not read"), err
    batch = tmp_path / "folder" / "cifar-10-batches-py" / "data_batch_1"
    err = _one_line_error(capsys, ["--source", str(batch.parent), *out])
    assert f"error: {batch}: {sizes['data_batch_1']:,} bytes" in err, err
    monkeypatch.setattr("loaders.members.MAX_BATCH_BYTES", 256 << 20)
    monkeypatch.setattr("loaders.members.MAX_SOURCE_BYTES", sizes["data_batch_1"] + sizes["data_batch_2"])
    err = _one_line_error(capsys, ["--source", str(archive), *out])
    assert err.endswith(f"data_batch_3: the source's files pass {sizes['data_batch_1'] + sizes['data_batch_2']:,} "
                        "bytes, more than all of CIFAR-10 takes: not read"), err
    assert not (tmp_path / "out").exists()


def test_a_huge_image_is_refused_by_its_header_not_decoded(tmp_path, capsys, monkeypatch):
    """A 10000x10000 PNG (12 KB of zeros) was decoded whole, 300 MB in RGB, before its size was checked, and Pillow
    printed a two-line DecompressionBombWarning."""
    src = png_tree(tmp_path / "src")
    Image.new("1", (10000, 10000)).save(src / "train" / "cat" / "0.png")
    decoded, load = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: (decoded.append(im.size), load(im))[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = _one_line_error(capsys, ["--source", str(src), "--data-dir", str(tmp_path / "out"),
                                       "--subset-per-class", "1"])
    assert err.endswith("train/cat/0.png: image is 10000x10000, CIFAR-10 images are 32x32"), err
    assert (10000, 10000) not in decoded and not [w for w in caught if "Decompression" in str(w.category)]


def test_a_source_folder_is_hashed_in_chunks(tmp_path, no_ffcv):
    """The digest of a source folder read each of its files whole: a large file beside the images (notes, a
    download) took its size in memory."""
    src = png_tree(tmp_path / "src")
    sparse(src / "download.bin", 64 << 20)
    outs = iter(["out1", "out2"])  # a new folder each time: a full prepare, not a no-op
    assert peak_bytes(lambda: prepare_cifar10(str(src), tmp_path / next(outs), subset_per_class=1)) < 16 << 20
    assert load_manifest(tmp_path / "out2")["num_images"]["test"] == 10


@pytest.mark.parametrize("extra", ["backup/train/cat/0001.jpg", "train/cat/0001.jpg"])  # as `tar -r` appends
def test_two_members_for_one_image_are_refused_naming_both(tmp_path, capsys, extra):
    """backup/train/cat/0001.jpg (a dog's picture) silently replaced train/cat/0001.jpg: the image's key is its
    split, class and file name, wherever the archive keeps it."""
    archive = tmp_path / "twice.tar.gz"
    with tarfile.open(SAMPLE) as src, tarfile.open(archive, "w:gz") as dst:
        for m in src:
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        dog = src.extractfile("train/dog/0000.jpg").read()
        info = tarfile.TarInfo(extra)
        info.size = len(dog)
        dst.addfile(info, io.BytesIO(dog))
    err = _one_line_error(capsys, ["--source", str(archive), "--data-dir", str(tmp_path / "out"),
                                   "--subset-per-class", "20"])
    assert err.endswith(f"train/cat/0001.jpg and {extra}: two members for train/cat/0001.jpg; remove one"), err
    assert not (tmp_path / "out").exists()


def test_two_members_for_one_batch_are_refused_naming_both(tmp_path, write_official_archive, capsys):
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(1, 1), synthetic_split(1, 2))
    with tarfile.open(archive) as src:
        members = [(m, src.extractfile(m).read()) for m in src]
    with tarfile.open(archive, "w:gz") as dst:
        for m, blob in [*members, (tarfile.TarInfo("old/test_batch"), members[0][1])]:
            m.size = len(blob)
            dst.addfile(m, io.BytesIO(blob))
    err = _one_line_error(capsys, ["--source", str(archive), "--data-dir", str(tmp_path / "out"),
                                   "--subset-per-class", "1"])
    assert err.endswith("cifar-10-batches-py/test_batch and old/test_batch: two members for test_batch; "
                        "remove one"), err


def test_a_damaged_compressed_archive_or_one_with_data_after_its_end_is_refused(tmp_path, capsys):
    """tarfile never reads a compressed stream's checksum and stops at the first block that is no valid header:
    the sample with one bit flipped (gzip -t: "crc error") was prepared with other pixels in train/truck/0009.jpg
    (by up to 130), and of two tars joined together (or one whose member header was damaged) only the first part
    was read, silently. A damaged .tar.xz raised lzma.LZMAError once its stream was read to the end."""
    blob = bytearray(SAMPLE.read_bytes())
    blob[61778] ^= 1 << 3  # inside train/truck/0009.jpg's compressed data
    (tmp_path / "flipped.tar.gz").write_bytes(bytes(blob))
    with tarfile.open(SAMPLE) as src:
        members = [(m, src.extractfile(m).read()) for m in src if m.isfile()]
    for name, split in (("train.tar", "train/"), ("test.tar", "test/"), ("all.tar.xz", "")):
        with tarfile.open(tmp_path / name, "w:xz" if name.endswith("xz") else "w") as dst:
            for m, data in members:
                if m.name.startswith(split):
                    dst.addfile(m, io.BytesIO(data))
    (tmp_path / "joined.tar").write_bytes((tmp_path / "train.tar").read_bytes() + (tmp_path / "test.tar").read_bytes())
    xz = bytearray((tmp_path / "all.tar.xz").read_bytes())
    xz[len(xz) // 2] ^= 0xFF
    (tmp_path / "damaged.tar.xz").write_bytes(bytes(xz))
    out = ["--data-dir", str(tmp_path / "out"), "--subset-per-class", "20"]
    for name, why in (("flipped.tar.gz", "(BadGzipFile: CRC check failed"),
                      ("joined.tar", "(ReadError: data after the archive's end"),
                      ("damaged.tar.xz", "(LZMAError: ")):
        err = _one_line_error(capsys, ["--source", str(tmp_path / name), *out])
        assert f"{name}: unreadable archive {why}" in err, err
    assert not (tmp_path / "out").exists()
    assert prepare_cifar10(str(tmp_path / "all.tar.xz"), tmp_path / "ok", subset_per_class=1)["num_images"]["test"] == 10


@pytest.mark.parametrize("entry", [b"data", b"labels"])
def test_an_official_batch_of_nested_lists_is_refused_not_walked(tmp_path, entry):
    """A batch of a few hundred bytes whose data (or labels) is a list that shares its sublists, x = [x, x] 40 deep:
    np.asarray walked its 2**40 leaves, and prepare hung (days, then terabytes)."""
    import pickle
    import subprocess
    import sys

    nested = [0]
    for _ in range(40):
        nested = [nested, nested]
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))}
            if name == "data_batch_1":
                batch[entry] = nested
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    assert archive.stat().st_size < 1000
    p = subprocess.run([sys.executable, "-m", "loaders.prepare", "--source", str(archive), "--data-dir",
                        str(tmp_path / "out"), "--subset-per-class", "1"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "data_batch_1: data is not a numpy array or labels not a flat list of ints" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def test_an_image_file_is_opened_only_in_the_formats_its_extensions_name(tmp_path, capsys, monkeypatch):
    """Pillow reads a file by its content, whatever its name: an EPS named train/cat/0.png was rendered by running
    Ghostscript on it (a program run on the source's PostScript)."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "ran"
    gs = tmp_path / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", str(gs))
    src = png_tree(tmp_path / "src")
    (src / "train" / "cat" / "0.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n"
                                                  b"%%EndComments\nshowpage\n")
    err = _one_line_error(capsys, ["--source", str(src), "--data-dir", str(tmp_path / "out"),
                                   "--subset-per-class", "1"])
    assert "train/cat/0.png: unreadable image (UnidentifiedImageError" in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_16_bit_grayscale_image_keeps_its_high_byte_and_a_float_one_is_refused(tmp_path, capsys, no_ffcv):
    """convert("RGB") clipped a 16-bit grayscale PNG's values above 255 to white (Pillow reads a 16-bit RGB PNG by
    its high byte), and a PFM's floats to 0 or 1, silently."""
    src = png_tree(tmp_path / "src")
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256
    # mode I;16, high byte v and low byte 255 - v: only the high byte gives v (stored as 257 v, either byte did)
    Image.fromarray(gray * 256 + (255 - gray)).save(src / "train" / "cat" / "0.png")
    assert Image.open(src / "train" / "cat" / "0.png").mode == "I;16"
    prepare_cifar10(str(src), tmp_path / "out", subset_per_class=1)
    images, labels = (np.load(tmp_path / "out" / f"train_{k}.npy") for k in ("images", "labels"))
    assert np.array_equal(images[labels == prepare.CLASSES.index("cat")][0], np.repeat(gray[..., None], 3, 2))
    pfm = b"Pf\n32 32\n-1.0\n" + np.full((32, 32), 0.5, "<f4").tobytes()
    (src / "train" / "cat" / "0.png").unlink()
    (src / "train" / "cat" / "0.ppm").write_bytes(pfm)
    err = _one_line_error(capsys, ["--source", str(src), "--data-dir", str(tmp_path / "out2"),
                                   "--subset-per-class", "1"])
    assert err.endswith("train/cat/0.ppm: floating-point image (mode F): save it as 8-bit RGB"), err
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("edit", ["no files listed", "counts lowered"])
def test_an_edited_manifest_is_no_proof_that_the_folder_is_prepared(tmp_path, capsys, no_ffcv, edit):
    """A manifest edited to list no files passed its hash check whatever the arrays held (here: zeroed); one whose
    counts were lowered was taken as prepared, and runs trained and tested on the first images only."""
    import json

    src, out = png_tree(tmp_path / "src"), tmp_path / "out"
    prepare_cifar10(str(src), out, subset_per_class=1)
    good = np.load(out / "train_images.npy")
    m = json.loads((out / "manifest.json").read_text())
    if edit == "no files listed":
        m["files"] = {}
        np.save(out / "train_images.npy", np.zeros_like(good))
    else:
        m["num_images"].update(test=6, train=8, train45k=8, val5k=0)
    (out / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    m = prepare_cifar10(str(src), out, subset_per_class=1)
    assert "nothing to do" not in capsys.readouterr().out
    assert m["num_images"]["test"] == 10 and np.array_equal(np.load(out / "train_images.npy"), good)


def test_an_8_bit_image_in_another_mode_is_stored_as_its_rgb_pixels(tmp_path, no_ffcv):
    """Grayscale (PNG and JPEG), palette and RGBA images become 32x32x3 RGB: gray repeated, the palette's colours
    (not the indices), alpha dropped. Stored as decoded, a grayscale image was 32x32 and a palette one its indices."""
    src, rng = png_tree(tmp_path / "src"), np.random.default_rng(0)
    gray, idx = rng.integers(0, 256, (2, 32, 32), dtype=np.uint8)
    palette, rgba = rng.integers(0, 256, (256, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 4), np.uint8)
    Image.fromarray(gray, "L").save(src / "train" / "cat" / "0.png")
    pal = Image.fromarray(idx, "P")
    pal.putpalette(palette.tobytes())
    pal.save(src / "train" / "dog" / "0.png")
    Image.fromarray(rgba, "RGBA").save(src / "train" / "frog" / "0.png")
    (src / "test" / "cat" / "0.png").unlink()
    Image.fromarray(gray, "L").save(src / "test" / "cat" / "0.jpg")
    jpeg_gray = np.asarray(Image.open(src / "test" / "cat" / "0.jpg"))
    assert Image.open(src / "train" / "dog" / "0.png").mode == "P" and jpeg_gray.shape == (32, 32)
    prepare_cifar10(str(src), tmp_path / "out", subset_per_class=1)
    train, test = (np.load(tmp_path / "out" / f"{s}_images.npy") for s in ("train", "test"))
    cat, dog, frog = (prepare.CLASSES.index(c) for c in ("cat", "dog", "frog"))
    assert train.shape == test.shape == (10, 32, 32, 3)
    assert np.array_equal(train[cat], np.repeat(gray[..., None], 3, 2)) and np.array_equal(train[dog], palette[idx])
    assert np.array_equal(train[frog], rgba[..., :3])
    assert np.array_equal(test[cat], np.repeat(jpeg_gray[..., None], 3, 2))


def test_a_folder_source_with_an_image_replaced_in_place_is_prepared_again(tmp_path, capsys, no_ffcv):
    """A folder source's digest covers its files' bytes, not only their names: an image replaced under the same name
    (a damaged file fetched again) is other data, so prepare rebuilds. Hashed by its names alone, the folder kept
    its digest and prepare said "nothing to do", training on the old pixels under the old run keys."""
    src, out = png_tree(tmp_path / "src"), tmp_path / "out"
    prepare_cifar10(str(src), out, subset_per_class=1)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(src / "test" / "cat" / "0.png")
    capsys.readouterr()
    m = prepare_cifar10(str(src), out, subset_per_class=1)
    assert "nothing to do" not in capsys.readouterr().out and m["source_sha256"] == prepare.source_sha256(str(src))
    images, labels = (np.load(out / f"test_{k}.npy") for k in ("images", "labels"))
    assert (images[labels == prepare.CLASSES.index("cat")] == 200).all()


def test_a_damaged_image_in_a_whole_source_leaves_the_prepared_folder_as_it_was(tmp_path, capsys, no_ffcv,
                                                                              monkeypatch):
    """Without --subset-per-class too, every image is decoded before the folder is touched: a damaged one is one line
    and the folder keeps its last good prepare, manifest and files. Decoded only as the arrays were written, the
    manifest was gone and train_images.npy rewritten by then. CIFAR-10's counts are lowered to 1 a class here, so
    a whole source is 20 PNGs."""
    from loaders import sources

    monkeypatch.setitem(sources.COUNTS_PER_CLASS, "train", 1)
    monkeypatch.setitem(sources.COUNTS_PER_CLASS, "test", 1)
    src, data = png_tree(tmp_path / "src"), tmp_path / "data"
    prepare_cifar10(str(src), data)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(src / "train" / "airplane" / "0.png")  # other pixels
    (src / "test" / "truck" / "0.png").write_bytes(b"damaged")
    err = _one_line_error(capsys, ["--source", str(src), "--data-dir", str(data)])
    assert "test/truck/0.png: unreadable image" in err, err
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before and load_manifest(data, verify=True)


def test_links_and_folders_named_like_images_in_an_archive_are_skipped(tmp_path, no_ffcv):
    """Only an archive's regular files are images. A folder member named train/cat/dir.jpg has no bytes (reading
    it was an AttributeError traceback); a hard link train/cat/link.jpg to train/dog/0000.jpg is a dog, not a cat
    of its own, and its size, 0, would pass every cap whatever it reads. Both are skipped, as a folder source
    skips a folder named *.png."""
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(SAMPLE) as src, tarfile.open(archive, "w:gz") as dst:
        for m in src:
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        folder, link = tarfile.TarInfo("train/cat/dir.jpg"), tarfile.TarInfo("train/cat/link.jpg")
        folder.type, link.type, link.linkname = tarfile.DIRTYPE, tarfile.LNKTYPE, "train/dog/0000.jpg"
        dst.addfile(folder)
        dst.addfile(link)
    m = prepare_cifar10(str(archive), tmp_path / "out", subset_per_class=20)
    assert m["encoding"]["formats"] == {"JPEG": 400} and m["images_per_class"]["train"] == [20] * 10


def test_a_whole_source_with_more_images_of_a_class_than_cifar10_is_refused(tmp_path, capsys, no_ffcv, monkeypatch):
    """Without --subset-per-class a source must hold CIFAR-10's counts exactly: one with an extra image of a class
    (a merged folder, a copy under another name) is refused, not prepared and recorded as CIFAR-10. Only fewer
    images than CIFAR-10's were refused. CIFAR-10's counts are lowered to 1 a class here."""
    from loaders import sources

    monkeypatch.setitem(sources.COUNTS_PER_CLASS, "train", 1)
    monkeypatch.setitem(sources.COUNTS_PER_CLASS, "test", 1)
    src = png_tree(tmp_path / "src")
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(src / "train" / "cat" / "1.png")
    err = _one_line_error(capsys, ["--source", str(src), "--data-dir", str(tmp_path / "out")])
    assert err.endswith("train: [1, 1, 1, 2, 1, 1, 1, 1, 1, 1] images per class, CIFAR-10 has 1 each (use "
                        "--subset-per-class for a subset)"), err
    assert not (tmp_path / "out").exists()


def test_an_official_label_out_of_range_is_refused_whatever_its_width(tmp_path, write_official_archive, capsys):
    """Labels are read as int64 and checked: 259 is refused as outside 0..9, not taken modulo 256 as the cat (3) a
    narrower cast would make of it, moving an image silently to another class."""
    x, y = synthetic_split(1, 1)
    archive = write_official_archive(tmp_path / "wide.tar.gz", (x, y), (x, np.where(y == 3, 259, y)))
    err = _one_line_error(capsys, ["--source", str(archive), "--data-dir", str(tmp_path / "out"),
                                   "--subset-per-class", "1"])
    assert err.endswith("test: labels outside 0..9 (min 0, max 259)"), err
    assert not (tmp_path / "out").exists()


def test_a_split_file_edited_in_place_is_no_longer_prepared(tmp_path, write_official_archive, capsys, no_ffcv):
    """splits.npz is listed in the manifest with its sha256, as the arrays are: train45k and val5k rewritten to
    overlap, at the same counts, leave the folder damaged, and prepare writes the seeded split again. Neither listed
    nor required, the edited file passed as prepared, and LR selection judged on an image it had trained on."""
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(10, 1), synthetic_split(10, 2))
    out = tmp_path / "out"
    prepare_cifar10(str(archive), out, subset_per_class=10)
    good = (out / "splits.npz").read_bytes()
    with np.load(out / "splits.npz") as z:
        train45k, val5k = z["train45k"], z["val5k"]
    np.savez(out / "splits.npz", train45k=np.sort(np.r_[train45k[1:], val5k[0]]), val5k=val5k)
    with pytest.raises(ValueError, match="is damaged or incomplete"):
        load_manifest(out, verify=True)
    capsys.readouterr()
    prepare_cifar10(str(archive), out, subset_per_class=10)
    assert "nothing to do" not in capsys.readouterr().out and (out / "splits.npz").read_bytes() == good
