"""bench/diagnose.py on real images (the smoke subset: 10 a class and split): its per-class test errors are the
errors evaluation counts, and a class map sunk below zero shows as a dead channel under the final ReLU and a class
that is never predicted (FACTS.md: the final ReLU's failure). scripts/inspect_checkpoint.py, which reports the same
for a checkpoint: built as its run built it, and a file it cannot use is one line."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import allconv
import loaders
from bench import engine
from bench.diagnose import diagnose

ROOT = Path(__file__).resolve().parents[1]


def test_per_class_errors_and_a_dead_class_map(smoke_data_dir):
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    acc = SimpleNamespace(device=cpu, autocast=lambda _kwargs=None: contextlib.nullcontext())
    data = loaders.Cache(smoke_data_dir, backend="tensor", device=cpu, distributed=False, batch_size=32)
    whiten = data.preprocess("gcn-zca")
    net = allconv.build("strided-a", 10)
    d = diagnose(net, data.loader("train"), data.loader("test"), whiten, acc)
    correct, seen, _, _ = engine.evaluate(net, data.loader("test"), whiten, acc)
    assert sum(d["test_error_by_class_pct"]) / 10 == pytest.approx(100 * (1 - correct / seen), abs=1e-9)
    assert set(d["dead_relu_channels"]) == {n for n, m in net.named_modules() if isinstance(m, torch.nn.ReLU)}
    assert d["dead_relu_channels"]["top.conv3_relu"] == [0, 10]  # a fresh net: every class map fires somewhere

    with torch.no_grad():
        net.top.conv3.bias[5] = -1e4  # class 5's map is below zero everywhere: the final ReLU makes it 0
    d = diagnose(net, data.loader("train"), data.loader("test"), whiten, acc)
    assert d["dead_relu_channels"]["top.conv3_relu"] == [1, 10]
    assert d["test_error_by_class_pct"][5] == 100.0  # it can only tie at 0, and argmax takes the lower class


def inspect(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/inspect_checkpoint.py", *map(str, argv)], cwd=ROOT, text=True,
                          capture_output=True, timeout=120)


def run_checkpoint(path: Path, **build) -> Path:
    """A run checkpoint as bench/checkpoint.py writes it, of a fresh strided-a built with `build`."""
    net = allconv.build("strided-a", 10, **build)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scaler": None, "rng": [],
                "epoch": 0, "epoch_state": None, "history": [], "extra": {}}, path)
    return path


def test_inspect_checkpoint_refuses_what_is_not_a_fitting_checkpoint_in_one_line(smoke_data_dir, tmp_path):
    """A truncated file, a pickle weights_only refuses, a checkpoint that lacks its parts, a model name its weights
    do not fit, a missing file: one line, exit 2, nothing on stdout (each was a traceback, the model's a "size
    mismatch" one)."""
    good = run_checkpoint(tmp_path / "good.pt")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    torch.save(contextlib.ExitStack(), tmp_path / "object.pt")  # unpickling it would need a class: refused
    torch.save({"model": {}}, tmp_path / "parts.pt")
    cases = {"truncated.pt": [], "object.pt": [], "parts.pt": [], "good.pt": ["allcnn-c"], "missing.pt": []}
    for name, extra in cases.items():
        p = inspect(tmp_path / name, *extra, "--data-dir", smoke_data_dir)
        assert p.returncode == 2 and p.stdout == "" and p.stderr.startswith("error: "), (name, p.stderr[-2000:])
        assert p.stderr.count("\n") == 1 and str(tmp_path / name) in p.stderr, (name, p.stderr[-2000:])


def test_inspect_checkpoint_builds_the_network_its_run_built(smoke_data_dir, tmp_path):
    """The model and --bn come from the weights, the final ReLU from the run's record beside the checkpoint or the
    option run_all took: a --no-final-relu run's checkpoint is diagnosed without the ReLU it never had (the script
    built the paper's network whatever the run, and printed that layer). What contradicts them is one line."""
    key = "0123456789abcdef"
    path = run_checkpoint(tmp_path / "out" / "checkpoints" / f"{key}.pt", final_relu=False)
    p = inspect(path, "--no-final-relu", "--data-dir", smoke_data_dir, "--images", 50)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "strided-a after epoch 0" in p.stdout and "top.conv2_relu" in p.stdout, p.stdout
    assert "top.conv3_relu" not in p.stdout and "final_relu False" in p.stdout, p.stdout
    record = json.loads(next((ROOT / "reports/measured/campaign/runs").glob("*.json")).read_text())
    record.update(run_key=key, model="strided-a", final_relu=False, status="stalled")  # a stalled run keeps both
    record["config"].update(model="strided-a", final_relu=False)
    (tmp_path / "out" / "runs").mkdir()
    (tmp_path / "out" / "runs" / f"{key}.json").write_text(json.dumps(record))
    p = inspect(path, "--data-dir", smoke_data_dir, "--images", 50)  # no option: the record says
    assert p.returncode == 0 and "top.conv3_relu" not in p.stdout and "its record" in p.stdout, p.stdout + p.stderr
    for extra, why in ((["--final-relu"], "says final_relu False, not True"), (["--bn"], "fit no allconv network"),
                       (["model-a"], "fit no allconv network")):
        p = inspect(path, *extra, "--data-dir", smoke_data_dir)
        assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1 and why in p.stderr, p.stderr


def training_rows(data_dir):
    """(a CPU accelerator stand-in, the data, its GCN+ZCA, the whitened training images as fp64 rows, their labels):
    what an exact least-squares class map is fitted to."""
    cpu = torch.device("cpu")
    acc = SimpleNamespace(device=cpu, autocast=lambda _kwargs=None: contextlib.nullcontext())
    data = loaders.Cache(data_dir, backend="tensor", device=cpu, distributed=False, batch_size=50)
    whiten = data.preprocess("gcn-zca")
    x, y = zip(*((engine.prepare_input(images, whiten, False).flatten(1), labels)
                 for images, labels in data.loader("train")))
    return acc, data, whiten, torch.cat(x).double(), torch.cat(y)


def test_train_error_is_measured_on_the_training_images(smoke_data_dir):
    """`train_error_pct` is the error on the training split, what tells over-fitting from under-fitting: a linear
    map fitted exactly to the 100 training images (least squares, one-hot targets) gets them all right, and its
    error on the 100 test images is far from 0; each class map is positive on its own images, so no ReLU is dead."""
    acc, data, whiten, x, y = training_rows(smoke_data_dir)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x.shape[1], 10), torch.nn.Unflatten(1, (10, 1, 1)),
                              torch.nn.ReLU(), torch.nn.Flatten())  # class maps of 1x1, as allconv's
    with torch.no_grad():
        net[1].weight.copy_((torch.linalg.pinv(x) @ torch.nn.functional.one_hot(y, 10).double()).T)
        net[1].bias.zero_()
    d = diagnose(net, data.loader("train"), data.loader("test"), whiten, acc)
    correct, seen, _, _ = engine.evaluate(net, data.loader("test"), whiten, acc)
    assert d["train_error_pct"] == 0 and 100 * (1 - correct / seen) > 20
    assert sum(d["test_error_by_class_pct"]) / 10 == pytest.approx(100 * (1 - correct / seen), abs=1e-9)
    assert d["dead_relu_channels"] == {"3": [0, 10]}


def test_a_channel_is_dead_only_if_no_training_image_in_any_batch_fires_it(smoke_data_dir):
    """One channel per image, positive on that image alone (least squares over the 200 train and test images): the
    100 of training images are alive, whichever batch holds their image; the 100 of test images are dead, since
    the test pass does not count (a channel never positive on a training image is capacity lost)."""
    cpu = torch.device("cpu")
    acc = SimpleNamespace(device=cpu, autocast=lambda _kwargs=None: contextlib.nullcontext())
    data = loaders.Cache(smoke_data_dir, backend="tensor", device=cpu, distributed=False, batch_size=25)
    whiten = data.preprocess("gcn-zca")
    x = torch.cat([engine.prepare_input(images, whiten, False).flatten(1)
                   for split in ("train", "test") for images, _ in data.loader(split)]).double()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x.shape[1], 200), torch.nn.Unflatten(1, (200, 1, 1)),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(200, 10))
    with torch.no_grad():
        net[1].weight.copy_(torch.linalg.pinv(x).T)  # channel i: 1 on image i, 0 on the 199 others
        net[1].bias.fill_(-0.5)
        assert torch.equal(net[3](net[1](x.float())).gt(0), torch.eye(200, dtype=torch.bool))
    d = diagnose(net, data.loader("train"), data.loader("test"), whiten, acc)
    assert d["dead_relu_channels"] == {"3": [100, 200]}


def test_train_error_is_measured_with_dropout_off(smoke_data_dir):
    """`train_error_pct` is the eval-mode error (the history's train accuracy is the one with dropout on): the exact
    least-squares map of test_train_error_is_measured_on_the_training_images, with a 50% dropout on its class scores
    (in training mode it drops about half the right ones) and handed over in training mode, gets every training
    image right. A train pass left in training mode passed the tests (each of their networks either had no dropout
    or was compared on the test pass only)."""
    torch.manual_seed(0)
    acc, data, whiten, x, y = training_rows(smoke_data_dir)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x.shape[1], 10), torch.nn.Dropout(0.5))
    with torch.no_grad():
        net[1].weight.copy_((torch.linalg.pinv(x) @ torch.nn.functional.one_hot(y, 10).double()).T)
        net[1].bias.zero_()
    d = diagnose(net.train(), data.loader("train"), data.loader("test"), whiten, acc)
    assert d["train_error_pct"] == 0 and not net.training


def test_train_and_class_errors_are_percentages_of_their_own_images(smoke_data_dir):
    """A fresh strided-a (dropout on, handed over in training mode) on 96 training images and 64 test images (six
    classes, 4 of a seventh, none of the last three): `train_error_pct` is 100 x wrong / 96, as engine.evaluate
    counts it on the same images, and each class's test error is over that class's test images (None without
    any). The other tests saw a training error of 0 or 100 images, and 10 images a class in both splits, where a
    count, a fraction and a percentage, or the two splits' class counts, are alike."""
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    acc = SimpleNamespace(device=cpu, autocast=lambda _kwargs=None: contextlib.nullcontext())
    data = loaders.Cache(smoke_data_dir, backend="tensor", device=cpu, distributed=False, batch_size=32)
    whiten = data.preprocess("gcn-zca")
    train, test = list(data.loader("train"))[:3], list(data.loader("test"))[:2]
    net = allconv.build("strided-a", 10)
    d = diagnose(net, train, test, whiten, acc)
    correct, seen, _, _ = engine.evaluate(net, train, whiten, acc)
    assert seen == 96 and 0 < correct < 96
    assert d["train_error_pct"] == pytest.approx(100 * (seen - correct) / seen, abs=1e-9)
    x = torch.cat([engine.prepare_input(images, whiten, False) for images, _ in test])
    y = torch.cat([labels for _, labels in test])
    with torch.no_grad():
        wrong = net(x).argmax(1) != y
    n = torch.bincount(y, minlength=10).tolist()
    assert n == [10] * 6 + [4, 0, 0, 0]  # the test split in class order: 7, 8 and 9 have no image, so no error
    by_class = [100 * wrong[y == c].sum().item() / n[c] if n[c] else None for c in range(10)]
    assert d["test_error_by_class_pct"][7:] == [None] * 3
    assert d["test_error_by_class_pct"][:7] == pytest.approx(by_class[:7], abs=1e-9)
