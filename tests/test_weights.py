"""bench/weights.py on real images (the smoke subset): a completed run, trained alone or in a fused group, leaves its
network in <out>/weights/<run key>.pt, and bench.weights.load gives back a network whose test error is the one the
record holds; a diverged run leaves none; a file that is not ours, or does not fit, is one ValueError line."""
from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import allconv
import loaders
from bench import engine, results, run_all, weights
from bench.config import PRESETS, RunConfig


def train(data, out: Path, *extra) -> dict:
    """run_all in this process (a fresh Accelerate state); the records by LR."""
    from accelerate.state import AcceleratorState

    data_dir, source = data
    AcceleratorState._reset_state()
    try:
        assert run_all.main(["--preset", "smoke", "--source", source, "--data-dir", str(data_dir), "--out", str(out),
                             "--no-progress", "--models", "strided-a", "--lrs", "0.05", "1e9", "--epochs", "2",
                             "--backend", "tensor", "--no-channels-last", *extra]) == 0
    finally:
        AcceleratorState._reset_state()
    return {r["lr"]: r for r in results.read_records(out)}


@pytest.fixture(scope="module")
def data(smoke_data_dir, jpeg_tarball):
    return smoke_data_dir, str(jpeg_tarball)


def test_on_in_the_paper_preset_only():
    assert PRESETS["paper"].save_weights and not PRESETS["smoke"].save_weights


@pytest.fixture(scope="module", params=[False, True], ids=["alone", "fused"])
def trained(data, tmp_path_factory, request) -> tuple[Path, dict, bool]:
    """(out, records by LR, fused): LRs 0.05 (completes) and 1e9 (diverges), with --save-weights; the fused runs
    without the final ReLU (the head ablation's arm) and without dropout, which their file must say: the network
    rebuilt otherwise has the same parameters and loads them without complaint."""
    out = tmp_path_factory.mktemp("weights") / "out"
    fused = ["--fuse-lrs", "--no-final-relu", "--no-dropout"] if request.param else []
    return out, train(data, out, "--save-weights", *fused), request.param


def test_a_completed_run_leaves_its_network(data, trained):
    out, records, fused = trained
    done, diverged = records[0.05], records[1e9]
    assert (done["status"], diverged["status"], done["fused_runs"]) == ("completed", "diverged", 2 if fused else 1)
    assert sorted(p.name for p in (out / "weights").iterdir()) == [f"{done['run_key']}.pt"]

    path = weights.path_of(out, done["run_key"])
    net, blob = weights.load(path), weights.read(path)
    assert not net.training and sum(p.numel() for p in net.parameters()) == done["params"]
    c = done["config"]  # rebuilt as the run built it (a net without its final ReLU has the same parameters)
    assert str(net) == str(allconv.build(done["model"], 10, bn=c["bn"], dropout=c["dropout"],
                                         final_relu=c["final_relu"]))
    assert (blob["run_key"], blob["lr"], blob["preprocess"], blob["train_split"]) == (done["run_key"], 0.05,
                                                                                      "gcn-zca", "train")
    assert blob["final_relu"] is blob["dropout"] is (not fused)
    assert blob["test_error_pct"] == done["test_error_pct"]  # the final error
    cpu = torch.device("cpu")
    cache = loaders.Cache(data[0], backend="tensor", device=cpu, distributed=False, batch_size=64)
    acc = SimpleNamespace(device=cpu, autocast=lambda _kwargs=None: contextlib.nullcontext())
    whiten = cache.preprocess(blob["preprocess"], blob["train_split"])
    correct, seen, _, loss_sum = engine.evaluate(net, cache.loader("test"), whiten, acc)
    assert seen == 100 and 100 * (1 - correct / seen) == pytest.approx(done["test_error_pct"], abs=1.0)  # one image
    # the test loss: the record's last epoch's, and the cross-entropy of the whole split written out here
    images, labels = (torch.from_numpy(a) for a in loaders.load_arrays(data[0], "test"))
    with torch.no_grad():
        direct = torch.nn.functional.cross_entropy(net(whiten(images.permute(0, 3, 1, 2))), labels.long())
    assert loss_sum / seen == pytest.approx(float(direct), rel=1e-5)
    assert done["history"][-1]["test_loss"] == pytest.approx(float(direct), rel=1e-3)


def test_only_the_writer_writes_and_only_completed_runs(tmp_path):
    """DDP: every rank holds the network, the main process alone writes it (run_all passes writer=)."""
    run = SimpleNamespace(model="strided-a", lr=0.05, cfg=RunConfig(out=str(tmp_path)))
    net = torch.nn.Linear(2, 2)
    assert weights.save("completed", run, "k1", net, {}, writer=False) is None
    assert weights.save("diverged", run, "k2", net, {}) is None
    assert not (tmp_path / "weights").exists()
    assert weights.save("completed", run, "k3", net, {}) == weights.path_of(tmp_path, "k3")


def test_bad_files_are_one_line(trained, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a torch file")
    other = tmp_path / "other.pt"
    torch.save({"model": {}, "optimizer": {}}, other)  # e.g. a checkpoint
    for path in (text, other, tmp_path / "missing.pt"):
        with pytest.raises(ValueError, match=r"not a weights file") as e:
            weights.load(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)

    [kept] = (trained[0] / "weights").iterdir()
    blob = torch.load(kept, weights_only=True)
    torch.save(dict(blob, model="allcnn-c"), tmp_path / "renamed.pt")  # names another network than its weights are
    with pytest.raises(ValueError, match="do not fit allcnn-c"):
        weights.load(tmp_path / "renamed.pt")
    partial = dict(list(blob["state_dict"].items())[:-2])  # the last layer's weight and bias missing
    torch.save(dict(blob, state_dict=partial), tmp_path / "partial.pt")  # would load with that layer at random
    with pytest.raises(ValueError, match=f"do not fit {blob['model']}"):
        weights.load(tmp_path / "partial.pt")
    torch.save(dict(blob, model="x\ny"), tmp_path / "crafted.pt")  # a name that is no model, with a line break
    with pytest.raises(ValueError, match="names no known model") as e:
        weights.load(tmp_path / "crafted.pt")
    assert "\n" not in str(e.value)


def test_the_file_rebuilds_each_switch_as_the_run_set_it(tmp_path):
    """bn, dropout and final_relu are stored each under its own name: a run with BN and dropout but without the final
    ReLU comes back as that network, weights included. The trained runs above have dropout and the final ReLU both
    on or both off and no BN, so a save that swapped the two or dropped bn passed them."""
    torch.manual_seed(0)
    cfg = RunConfig(out=str(tmp_path), bn=True, dropout=True, final_relu=False, save_weights=True)
    built = dict(bn=True, dropout=True, final_relu=False)
    net = allconv.build("strided-a", 10, **built)
    path = weights.save("completed", SimpleNamespace(model="strided-a", lr=0.05, cfg=cfg), "k", net, {})
    blob = weights.read(path)
    assert {k: blob[k] for k in built} == built
    loaded = weights.load(path)
    assert str(loaded) == str(allconv.build("strided-a", 10, **built))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in net.state_dict().items())
