"""loaders.prepare: real and synthetic sources, counts and manifest, idempotence, atomicity, one-line errors."""
from __future__ import annotations

import hashlib
import io
import os
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import loaders
from loaders import prepare, sources
from loaders.manifest import MANIFEST, arrays_sha256, load_manifest
from loaders.prepare import prepare_cifar10

REPO = Path(__file__).resolve().parents[1]


def synthetic_split(per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(10), per_class)
    return rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels


def test_full_jpeg_tarball(full_data_dir, jpeg_tarball):
    m = json.loads((full_data_dir / "manifest.json").read_text())
    assert m["num_images"] == {"train": 50000, "test": 10000, "train45k": 45000, "val5k": 5000}
    assert m["images_per_class"]["train"] == [5000] * 10 and m["images_per_class"]["test"] == [1000] * 10
    assert m["images_per_class"]["train45k"] == [4500] * 10 and m["images_per_class"]["val5k"] == [500] * 10
    assert m["source"] == str(jpeg_tarball.resolve()) and m["seed"] == 0 and m["created_at"]
    assert m["source_sha256"] == prepare.sha256_file(jpeg_tarball)
    for name, digest in m["files"].items():
        assert prepare.sha256_file(full_data_dir / name) == digest
    images = np.load(full_data_dir / "train_images.npy", mmap_mode="r")
    labels = np.load(full_data_dir / "train_labels.npy")
    assert images.shape == (50000, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    with np.load(full_data_dir / "splits.npz") as z:
        train45k, val5k = z["train45k"], z["val5k"]
    assert len(np.intersect1d(train45k, val5k)) == 0
    assert np.array_equal(np.union1d(train45k, val5k), np.arange(50000))
    # the first stored image is train/airplane/0000.jpg, decoded exactly (the tarball lists it first)
    with tarfile.open(jpeg_tarball) as tf:
        member = next(m for m in tf if m.name.endswith("train/airplane/0000.jpg"))
        first = np.asarray(Image.open(io.BytesIO(tf.extractfile(member).read())).convert("RGB"))
    assert np.array_equal(images[0], first) and labels[0] == 0
    if m["ffcv_version"] is not None:
        assert {"train.beton", "test.beton"} <= set(m["files"])


def test_second_run_is_a_noop(full_data_dir, jpeg_tarball, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in full_data_dir.iterdir()}
    manifest = prepare_cifar10(str(jpeg_tarball), full_data_dir)
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in full_data_dir.iterdir()} == before
    assert manifest == json.loads((full_data_dir / "manifest.json").read_text())


def test_official_archive_and_folder_round_trip(tmp_path, write_official_archive):
    train, test = synthetic_split(6, seed=1), synthetic_split(3, seed=2)
    archive = write_official_archive(tmp_path / "cifar-10-python.tar.gz", train, test)
    m = prepare_cifar10(str(archive), tmp_path / "a", subset_per_class=3, seed=0)
    assert m["num_images"]["train"] == 30 and m["num_images"]["test"] == 30
    assert m["images_per_class"]["train"] == [3] * 10 and m["subset_per_class"] == 3
    assert m["num_images"]["train45k"] + m["num_images"]["val5k"] == 30
    stored = np.load(tmp_path / "a" / "test_images.npy")
    assert np.array_equal(stored, test[0]) and np.array_equal(np.load(tmp_path / "a" / "test_labels.npy"), test[1])
    kept = np.load(tmp_path / "a" / "train_images.npy")  # a subset of the source, pixels exact, in source order
    rows = [int(np.flatnonzero((train[0] == img).all(axis=(1, 2, 3)))[0]) for img in kept]
    assert rows == sorted(rows) and np.array_equal(train[1][rows], np.load(tmp_path / "a" / "train_labels.npy"))
    # the extracted folder is the same source in another form: same arrays
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "extracted", filter="data")
    other = prepare_cifar10(str(tmp_path / "extracted"), tmp_path / "b", subset_per_class=3, seed=0)
    for name in ("train_images.npy", "train_labels.npy", "test_images.npy", "splits.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # so the arrays' digest is the same (sha256sum's lines over the four arrays), though the manifests differ
    assert arrays_sha256(m) == arrays_sha256(other) != arrays_sha256(
        {"files": dict(m["files"], **{"test_labels.npy": "0" * 64})})
    lines = subprocess.run(["sha256sum", "test_images.npy", "test_labels.npy", "train_images.npy",
                            "train_labels.npy"], cwd=tmp_path / "a", capture_output=True, text=True, check=True)
    assert arrays_sha256(m) == hashlib.sha256(lines.stdout.encode()).hexdigest()
    assert prepare.sha256_file(tmp_path / "a" / MANIFEST) != prepare.sha256_file(tmp_path / "b" / MANIFEST)


def test_imagefolder_folder_labels_and_png(tmp_path):
    classes = sorted(prepare.CLASSES)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            (tmp_path / "src" / split / name).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), c * 20, np.uint8)).save(tmp_path / "src" / split / name / "0.png")
    prepare_cifar10(str(tmp_path / "src"), tmp_path / "out", subset_per_class=1)
    images, labels = np.load(tmp_path / "out" / "test_images.npy"), np.load(tmp_path / "out" / "test_labels.npy")
    assert labels.tolist() == list(range(10)) and [int(x[0, 0, 0]) for x in images] == [c * 20 for c in range(10)]


def test_different_source_rebuilds_and_killed_rebuild_leaves_nothing_valid(tmp_path, write_official_archive,
                                                                           monkeypatch):
    a = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(2, 1), synthetic_split(2, 2))
    b = write_official_archive(tmp_path / "b.tar.gz", synthetic_split(2, 3), synthetic_split(2, 4))
    data = tmp_path / "data"
    prepare_cifar10(str(a), data, subset_per_class=2)
    m = prepare_cifar10(str(b), data, subset_per_class=2)
    assert m["source"] == str(b.resolve())
    assert np.array_equal(np.load(data / "test_images.npy"), synthetic_split(2, 4)[0])

    calls = []

    def killed(path, array):  # the process dies while writing the second file of the rebuild
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return save(path, array)

    save = prepare._save_npy
    monkeypatch.setattr(prepare, "_save_npy", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_cifar10(str(a), data, subset_per_class=2)
    assert not (data / "manifest.json").exists()
    assert not list(data.glob(".*tmp"))
    with pytest.raises(ValueError, match="not prepared"):
        loaders.make("test", 4, data_dir=data, backend="tensor")
    monkeypatch.setattr(prepare, "_save_npy", save)
    assert prepare_cifar10(str(a), data, subset_per_class=2)["source"] == str(a.resolve())


def _one_line_error(capsys, argv) -> str:
    assert prepare.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("prepare: error:")
    return err


def test_bad_sources_give_one_line_errors(tmp_path, write_official_archive, capsys):
    out = ["--data-dir", str(tmp_path / "out")]
    assert "not found" in _one_line_error(capsys, ["--source", str(tmp_path / "missing.tar.gz"), *out])
    (tmp_path / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08" + bytes(range(256)) * 4)
    error = _one_line_error(capsys, ["--source", str(tmp_path / "corrupt.tar.gz"), *out])
    assert "unreadable archive (" in error and ":)" not in error and "fetched again if it was cut short" in error
    good = write_official_archive(tmp_path / "good.tar.gz", synthetic_split(2, 1), synthetic_split(2, 2))
    assert "CIFAR-10 has 5000" in _one_line_error(capsys, ["--source", str(good), *out])
    x, y = synthetic_split(2, 1)
    bad_label = write_official_archive(tmp_path / "l.tar.gz", (x, np.where(y == 9, 10, y)), (x, y))
    err = _one_line_error(capsys, ["--source", str(bad_label), "--subset-per-class", "1", *out])
    assert "labels outside 0..9" in err
    nine = write_official_archive(tmp_path / "n.tar.gz", (x, np.where(y == 9, 8, y)), (x, y))
    assert "classes missing" in _one_line_error(capsys, ["--source", str(nine), "--subset-per-class", "1", *out])
    partial = write_official_archive(tmp_path / "p.tar.gz", (x, y), (x, y), members={"data_batch_1", "test_batch"})
    assert "neither" in _one_line_error(capsys, ["--source", str(partial), *out])
    for split in ("train", "test"):
        for c, name in enumerate(prepare.CLASSES):
            (tmp_path / "small" / split / name).mkdir(parents=True)
            size = 16 if (split, c) == ("test", 3) else 32
            Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(tmp_path / "small" / split / name / "0.png")
    err = _one_line_error(capsys, ["--source", str(tmp_path / "small"), "--subset-per-class", "1", *out])
    assert "test/cat/0.png" in err and "32x32" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_exit_code_and_message():
    r = subprocess.run([sys.executable, "-m", "loaders.prepare", "--source", "/nonexistent/cifar.tar.gz",
                        "--data-dir", "/nonexistent/out"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip() == "prepare: error: source not found: /nonexistent/cifar.tar.gz"


def test_without_ffcv_prepares_arrays_and_later_adds_betons(tmp_path, write_official_archive, capsys):
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(2, 1), synthetic_split(2, 2))
    script = ("import sys; sys.modules['ffcv'] = None\n"  # as on the GPU machines
              "from loaders.prepare import prepare_cifar10\n"
              f"prepare_cifar10({str(archive)!r}, {str(tmp_path / 'data')!r}, subset_per_class=2)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert m["ffcv_version"] is None and not list((tmp_path / "data").glob("*.beton"))
    assert {"train_images.npy", "test_labels.npy", "splits.npz"} <= set(m["files"])
    if prepare._ffcv_available():  # ffcv here: the same call only adds the .beton files
        m = prepare_cifar10(str(archive), tmp_path / "data", subset_per_class=2)
        assert "adding the FFCV files" in capsys.readouterr().out
        assert m["ffcv_version"] and {"train.beton", "test.beton"} <= set(m["files"])


def test_a_prepare_leaves_torchs_thread_count_as_it_found_it(tmp_path, write_official_archive):
    """Importing ffcv sets torch's intra-op threads to 1 for the whole process: run_all, which prepares its data
    itself, then trained a tensor- or torch-backend grid on one core of two (measured: 238 img/s). A fresh process,
    as ffcv's import happens once per process."""
    pytest.importorskip("ffcv")
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(2, 1), synthetic_split(2, 2))
    script = ("import torch; torch.set_num_threads(3)\n"
              "from loaders.prepare import prepare_cifar10\n"
              f"m = prepare_cifar10({str(archive)!r}, {str(tmp_path / 'data')!r}, subset_per_class=2)\n"
              "assert m['ffcv_version'], 'ffcv was not used'\n"
              "print(torch.get_num_threads())\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "3"


def test_official_batches_in_every_pickle_form_and_a_non_batch(tmp_path):
    """The restricted unpickler reads batches as numpy 1 (Python 2's cPickle, numpy.core) and numpy 2 write them
    at protocols 0-5, and turns a pickle that is not a batch into one line naming the member."""
    x, y = synthetic_split(1, 5)
    data = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(10, -1)
    batch = {b"batch_label": b"b", b"data": data, b"labels": y.tolist(), b"filenames": [b"a.png"] * 10}
    blobs = [pickle.dumps(batch, protocol=p) for p in range(6)]
    blobs.append(blobs[2].replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    for blob in blobs:
        d = sources._load_batch("data_batch_1", blob)
        assert np.array_equal(d[b"data"], data) and d[b"labels"] == y.tolist()
    with pytest.raises(ValueError, match=r"^test_batch: not an official CIFAR-10 batch"):
        sources._load_batch("test_batch", pickle.dumps([data]))
    with pytest.raises(ValueError, match=r"^test_batch: unreadable official batch"):
        sources._load_batch("test_batch", pickle.dumps(batch)[:50])


def _copy_tarball(src: Path, dst: Path, rename=lambda name: name, extra=()) -> Path:
    """`src` rewritten to `dst` with each member's name passed through `rename`, plus `extra` (name, bytes) pairs."""
    with tarfile.open(src) as tf_in, tarfile.open(dst, "w:gz") as tf_out:
        members = [(rename(m.name), tf_in.extractfile(m).read()) for m in tf_in if m.isfile()]
        for name, blob in [*members, *extra]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf_out.addfile(info, io.BytesIO(blob))
    return dst


def test_a_class_folder_named_otherwise_is_refused_not_relabelled(tmp_path, capsys):
    """test/airplane/ renamed test/zzz-airplane/ once sorted last, so every test label shifted by one, silently."""
    sample = REPO / "data-sample" / "cifar10-jpeg-sample.tar.gz"
    renamed = _copy_tarball(sample, tmp_path / "renamed.tar.gz",
                            lambda n: n.replace("test/airplane/", "test/zzz-airplane/"))
    err = _one_line_error(capsys, ["--source", str(renamed), "--data-dir", str(tmp_path / "out"),
                                   "--subset-per-class", "20"])
    assert "test/" in err and "unexpected: zzz-airplane" in err and "missing: airplane" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_class_folders_named_by_their_numbers_keep_cifars_labels(tmp_path):
    """An ImageFolder tree whose folders are CIFAR-10's label numbers 0..9 gives the labels the names would (the
    names rule refused it)."""
    for split in ("train", "test"):
        for c in range(10):
            (tmp_path / "src" / split / str(c)).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 20 * c, np.uint8)).save(tmp_path / "src" / split / str(c) / "0.png")
    prepare_cifar10(str(tmp_path / "src"), tmp_path / "out", subset_per_class=1)
    for split in ("train", "test"):
        images, labels = (np.load(tmp_path / "out" / f"{split}_{kind}.npy") for kind in ("images", "labels"))
        assert sorted(zip(labels.tolist(), images[:, 0, 0, 0].tolist())) == [(c, 20 * c) for c in range(10)]


def test_folder_entries_that_are_not_regular_files_are_skipped(tmp_path):
    for split in ("train", "test"):
        for c, name in enumerate(prepare.CLASSES):
            (tmp_path / "src" / split / name).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), c, np.uint8)).save(tmp_path / "src" / split / name / "0.png")
    (tmp_path / "src" / "train" / "cat" / "dir.png").mkdir()  # was IsADirectoryError
    (tmp_path / "src" / "train" / "dog" / "dangling.png").symlink_to(tmp_path / "nowhere.png")  # FileNotFoundError
    m = prepare_cifar10(str(tmp_path / "src"), tmp_path / "out", subset_per_class=1)
    assert m["encoding"]["formats"] == {"PNG": 20} and m["num_images"]["train"] == 10


def test_bad_data_dirs_and_sources_give_one_line_errors(tmp_path, write_official_archive, capsys):
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(1, 1), synthetic_split(1, 2))
    src = ["--source", str(archive), "--subset-per-class", "1"]
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in _one_line_error(capsys, [*src, "--data-dir", str(tmp_path / "file")])  # FileExistsError
    assert "Not a directory" in _one_line_error(capsys, [*src, "--data-dir", str(tmp_path / "file" / "sub")])
    os.mkfifo(tmp_path / "fifo")  # opened as a tarball, it blocked forever
    r = subprocess.run([sys.executable, "-m", "loaders.prepare", "--source", str(tmp_path / "fifo"), "--data-dir",
                        str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("fifo: neither a folder nor a regular file")


@pytest.mark.parametrize("damaged", [{"x": 1}, [], {"source": "s", "source_sha256": "h", "options": {}, "files": [],
                                                    "ffcv_version": None}])
def test_a_manifest_of_another_shape_is_no_manifest(tmp_path, write_official_archive, damaged):
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(1, 1), synthetic_split(1, 2))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(damaged))  # was KeyError 'source' in prepare
    with pytest.raises(ValueError, match="not prepared"):
        load_manifest(tmp_path / "data")
    assert prepare_cifar10(str(archive), tmp_path / "data", subset_per_class=1)["source"] == str(archive.resolve())
    assert load_manifest(tmp_path / "data")["num_images"]["test"] == 10


def test_betons_added_to_a_folder_whose_source_and_encoding_are_unknown(tmp_path, write_official_archive, capsys):
    if not prepare._ffcv_available():
        pytest.skip("ffcv is not importable here")
    archive = write_official_archive(tmp_path / "a.tar.gz", synthetic_split(1, 1), synthetic_split(1, 2))
    script = ("import sys; sys.modules['ffcv'] = None\nfrom loaders.prepare import prepare_cifar10\n"
              f"prepare_cifar10({str(archive)!r}, {str(tmp_path / 'data')!r}, subset_per_class=1)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    path = tmp_path / "data" / "manifest.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "encoding"}))
    archive.unlink()  # prepared before `encoding` existed, the source gone: describe(None) raised AttributeError
    m = prepare_cifar10(str(archive), tmp_path / "data", subset_per_class=1)
    assert m["encoding"] is None and m["ffcv_version"] and "source images: unknown" in capsys.readouterr().out


def test_official_pixels_of_a_wider_type_are_checked_not_wrapped(tmp_path, write_official_archive, capsys):
    x, y = synthetic_split(1, 1)
    wide = write_official_archive(tmp_path / "w.tar.gz", (x.astype(np.int64), y), (x.astype(np.int64), y))
    m = prepare_cifar10(str(wide), tmp_path / "ok", subset_per_class=1)  # int64 in 0..255: the same pixels
    assert m["num_images"]["test"] == 10 and np.array_equal(np.load(tmp_path / "ok" / "test_images.npy"), x)
    capsys.readouterr()  # its output (FFCV's progress bars)
    over = x.astype(np.int64)
    over[3, 0, 0, 0] = 300  # was stored as 44
    out = ["--data-dir", str(tmp_path / "out"), "--subset-per-class", "1"]
    bad = write_official_archive(tmp_path / "o.tar.gz", (x, y), (over, y))
    err = _one_line_error(capsys, ["--source", str(bad), *out])
    assert "test_batch: pixel values outside 0..255 (min 0, max 300)" in err
    floats = write_official_archive(tmp_path / "f.tar.gz", (x / 2, y), (x, y))
    err = _one_line_error(capsys, ["--source", str(floats), *out])
    assert "data_batch_1: data or labels are not integer arrays" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_imagefolder_tarball_keeps_each_image_with_its_folders_label(tmp_path, no_ffcv):
    """Labels are paired with images by their (class, file name) order: the shipped sample (20 real JPEGs a class
    and split), stored whole, is each split's images decoded in that order, each labelled by its class folder. An
    image stored in another order than its label (sorted by file name first) left every label on a wrong image."""
    from tests.conftest import SAMPLE_TARBALL

    prepare_cifar10(str(SAMPLE_TARBALL), tmp_path / "out", subset_per_class=20)
    with tarfile.open(SAMPLE_TARBALL) as tf:
        members = sorted((Path(m.name).parts[-3:], m) for m in tf if m.isfile())
        for split in ("train", "test"):
            mine = [(parts, m) for parts, m in members if parts[0] == split]
            want = np.stack([np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB"))
                             for _, m in mine])
            labels = [prepare.CLASSES.index(parts[1]) for parts, _ in mine]
            assert np.array_equal(np.load(tmp_path / "out" / f"{split}_images.npy"), want)
            assert np.load(tmp_path / "out" / f"{split}_labels.npy").tolist() == labels == sorted(labels)


def test_a_folder_sources_digest_changes_when_an_image_changes_class(tmp_path):
    """Run keys hold the source's sha256: an image moved to another class folder (a label fixed by hand) is other
    data, so its digest differs even when the files' bytes, in the order they are hashed, stay the same (the last
    airplane becomes the first automobile). A digest of the bytes alone kept the old key, and run_all would skip
    the new data's runs as recorded."""
    from tests.conftest import SAMPLE_TARBALL

    with tarfile.open(SAMPLE_TARBALL) as tf:
        tf.extractall(tmp_path / "src", filter="data")
    before = sources.source_sha256(str(tmp_path / "src"))
    last = sorted((tmp_path / "src" / "train" / "airplane").iterdir())[-1]
    last.rename(tmp_path / "src" / "train" / "automobile" / "0.jpg")  # sorts before automobile/0000.jpg
    assert sources.source_sha256(str(tmp_path / "src")) != before
    _, labels = sources.read_source(str(tmp_path / "src"), tmp_path)[0]["train"]
    assert np.bincount(labels).tolist() == [19, 21] + [20] * 8


def test_the_seed_chooses_the_subset_and_the_val_split(tmp_path, no_ffcv):
    """--seed draws the subset and the train45k/val5k split: the same seed again gives the same files, another seed
    other images and another split, and a folder prepared with one seed is rebuilt (not a no-op) for another."""
    from tests.conftest import SAMPLE_TARBALL

    names = ("train_images.npy", "test_images.npy", "splits.npz")
    data = tmp_path / "data"
    prepare_cifar10(str(SAMPLE_TARBALL), data, subset_per_class=10, seed=0)
    first = {n: (data / n).read_bytes() for n in names}
    m = prepare_cifar10(str(SAMPLE_TARBALL), data, subset_per_class=10, seed=1)
    assert m["seed"] == 1 and m["images_per_class"]["val5k"] == [1] * 10
    assert all((data / n).read_bytes() != first[n] for n in names)
    prepare_cifar10(str(SAMPLE_TARBALL), tmp_path / "again", subset_per_class=10, seed=0)
    assert {n: (tmp_path / "again" / n).read_bytes() for n in names} == first


def test_an_images_extension_is_matched_in_any_case(tmp_path, no_ffcv):
    """An archive whose cats are *.JPG (a camera's or Windows' spelling) beside *.jpg: every image is read. Matched
    case-sensitively, the cats were skipped without a word, and a subset drew from the images that were left."""
    from tests.conftest import SAMPLE_TARBALL

    archive = tmp_path / "upper.tar.gz"
    with tarfile.open(SAMPLE_TARBALL) as src, tarfile.open(archive, "w:gz") as dst:
        for m in (m for m in src if m.isfile()):
            data = src.extractfile(m)
            if "/cat/" in m.name:
                m.name = m.name[:-len(".jpg")] + ".JPG"
            dst.addfile(m, data)
    m = prepare_cifar10(str(archive), tmp_path / "out", subset_per_class=20)
    assert m["images_per_class"]["train"] == m["images_per_class"]["test"] == [20] * 10


def test_another_subset_or_a_source_rewritten_in_place_rebuilds(tmp_path, write_official_archive, no_ffcv, capsys):
    """Only the same source bytes and options are a no-op: a folder prepared as run_all's smoke subset (10 a class)
    taken as prepared for a later 20 a class would train the larger grid on the smaller subset, and an archive
    fixed or fetched again at the same path would keep the old pixels."""
    from tests.conftest import SAMPLE_TARBALL

    data = tmp_path / "data"
    prepare_cifar10(str(SAMPLE_TARBALL), data, subset_per_class=10)
    m = prepare_cifar10(str(SAMPLE_TARBALL), data, subset_per_class=20)
    assert m["num_images"]["train"] == 200 and len(np.load(data / "train_labels.npy")) == 200
    archive, other = tmp_path / "a.tar.gz", synthetic_split(2, 4)
    write_official_archive(archive, synthetic_split(2, 1), synthetic_split(2, 2))
    prepare_cifar10(str(archive), data, subset_per_class=2)
    write_official_archive(archive, synthetic_split(2, 3), other)  # the same path, other images
    capsys.readouterr()
    prepare_cifar10(str(archive), data, subset_per_class=2)
    assert "nothing to do" not in capsys.readouterr().out
    assert np.array_equal(np.load(data / "test_images.npy"), other[0])


def test_an_imagefolder_tarball_in_any_member_order_gives_the_same_arrays(tmp_path, no_ffcv):
    """Each split is stored in (class, file name) order, with its labels, whatever order the archive lists its
    members in. The shipped sample lists them sorted already, so images taken in archive order beside labels taken
    in sorted order passed every test on it; with the members shuffled, most labels sat on another class's image."""
    from tests.conftest import SAMPLE_TARBALL

    with tarfile.open(SAMPLE_TARBALL) as src:
        members = [(m, src.extractfile(m).read()) for m in src if m.isfile()]
    shuffled = tmp_path / "shuffled.tar.gz"
    with tarfile.open(shuffled, "w:gz") as dst:
        for i in np.random.default_rng(0).permutation(len(members)):
            dst.addfile(members[i][0], io.BytesIO(members[i][1]))
    prepare_cifar10(str(SAMPLE_TARBALL), tmp_path / "sorted", subset_per_class=20)
    prepare_cifar10(str(shuffled), tmp_path / "shuffled", subset_per_class=20)
    for name in ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy", "splits.npz"):
        assert (tmp_path / "sorted" / name).read_bytes() == (tmp_path / "shuffled" / name).read_bytes(), name
