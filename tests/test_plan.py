"""bench/plan.py on a real ledger: what run_all would do with the same options, and how long it would take."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from allconv import macs
from bench import claims, launch, plan, results, runs
from bench.cli import parse_args
from bench.config import config_key
from bench.run_all import main as run_all
from tests.test_untrusted import history


def checkpoint_of(run, **parts) -> dict:
    """A checkpoint of `run` as run_all writes one (its freshly built network and optimizer), with `parts`."""
    net, optimizer = runs.build_net(run, torch.device("cpu"))
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "rng": [], "extra": {}, **parts}


@pytest.fixture(scope="module")
def ledger(smoke_data_dir, jpeg_tarball, tmp_path_factory):
    """One completed Strided-CNN-A run (2 epochs, LR 0.05) and the options that trained it."""
    from accelerate.state import AcceleratorState

    out = tmp_path_factory.mktemp("plan") / "out"
    options = ["--preset", "smoke", "--source", str(jpeg_tarball), "--data-dir", str(smoke_data_dir), "--out",
               str(out), "--no-progress", "--batch-size", "32", "--models", "strided-a"]
    AcceleratorState._reset_state()
    assert run_all(options + ["--lrs", "0.05"]) == 0
    AcceleratorState._reset_state()
    return out, options


def test_the_plan_names_each_runs_state_and_the_time_left(ledger, capsys):
    out, options = ledger
    cfg = parse_args(options + ["--models", "strided-a", "allcnn-a", "--lrs", "0.1", "0.05", "0.01", "0.005",
                                "0.002"])
    record, = results.read_records(out)
    by_lr = {r.lr: r for r in plan.expand(cfg) if r.model == "strided-a"}
    keys = {lr: r.key(record["config"]["data_sha256"]) for lr, r in by_lr.items()}
    assert keys[0.05] == record["run_key"]  # the keys run_all uses
    (out / "checkpoints").mkdir(exist_ok=True)
    torch.save(checkpoint_of(by_lr[0.1], epoch=1, history=history(1)), out / "checkpoints" / f"{keys[0.1]}.pt")
    (out / "checkpoints" / f"{keys[0.005]}.pt").write_bytes(b"not a checkpoint")
    torch.save({"epoch": 999, "history": []}, out / "checkpoints" / f"{keys[0.002]}.pt")  # run_all sets it aside
    claims.claims_dir(out).mkdir(exist_ok=True)
    (claims.claims_dir(out) / f"{keys[0.01]}.json").write_text(json.dumps(
        {"host": claims.HOST, "pid": os.getpid(), "pid_start": claims._pid_start(os.getpid())}))

    rows, summary = plan.plan(cfg)
    by = {(r["model"], r["lr"]): r for r in rows}
    done, resumed = by[("strided-a", 0.05)], by[("strided-a", 0.1)]
    assert done["state"] == f"completed {record['test_error_pct']:.2f}%" and done["start"] is None
    assert resumed["state"] == "resumes at epoch 1" and resumed["start"] == 1
    assert by[("strided-a", 0.01)]["state"] == f"being trained by {claims.HOST} pid {os.getpid()} (to train)"
    assert by[("strided-a", 0.005)]["state"].startswith("unreadable checkpoint") and by[("strided-a", 0.005)][
        "start"] == 0
    assert by[("strided-a", 0.002)]["state"].startswith("malformed checkpoint") and by[("strided-a", 0.002)][
        "start"] == 0
    per_epoch = record["wall_time_s"] / 2  # this ledger's one timed run, on this machine
    assert resumed["seconds_left"] == pytest.approx(per_epoch) and not resumed["scaled"]
    assert by[("strided-a", 0.01)]["seconds_left"] == pytest.approx(2 * per_epoch)
    other = by[("allcnn-a", 0.05)]  # never timed here: scaled from Strided-CNN-A by forward MACs
    assert other["scaled"] and other["seconds_left"] == pytest.approx(2 * per_epoch * macs("allcnn-a") /
                                                                      macs("strided-a"))
    assert summary["timed"] == 1 and summary["device"] == record["device_name"]

    assert plan.main(options + ["--lrs", "0.1", "0.05"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3] == "2 runs: 1 recorded, 0 to train, 1 to resume"
    assert lines[-2].startswith("time left: ") and f"of {record['device_name']}, from 1 run(s)" in lines[-2]
    assert lines[-1].startswith(f"2 checkpoints in {out / 'checkpoints'} (0 MiB) belong to no run of these options")


def test_a_throughput_file_scales_by_measured_images_per_s(ledger, tmp_path, capsys):
    """On a launch-bound GPU the models' speeds do not follow their MACs (H200: 43-65k img/s for all 12): a
    bench/throughput.py file measured on the ledger's device scales by its images/s instead, where it has both
    models at the run's precision; elsewhere MACs still do, and another device's numbers are not used."""
    out, options = ledger
    record, = results.read_records(out)
    per_epoch, device = record["wall_time_s"] / 2, record["device_name"]
    assert record["precision"] == "no"  # written "fp32" by bench/throughput.py, as below
    rows = [{"model": "strided-a", "precision": "fp32", "device_name": device, "train_images_per_s": 300.0},
            {"model": "allcnn-a", "precision": "fp32", "device_name": device, "train_images_per_s": 100.0},
            {"model": "allcnn-a", "precision": "bf16", "device_name": device, "train_images_per_s": 900.0},
            {"model": "allcnn-a", "precision": "fp32", "device_name": device, "train_images_per_s": "n/a"},
            {"model": "model-a", "precision": "fp32", "device_name": device, "train_images_per_s": 1e400},
            {"model": "model-a", "precision": "fp32", "device_name": "another GPU", "train_images_per_s": 1.0}]
    (tmp_path / "tp.json").write_text(json.dumps(rows))
    cfg = parse_args(options + ["--models", "allcnn-a", "model-a", "--lrs", "0.05"])
    by = {r["model"]: r for r in plan.plan(cfg, str(tmp_path / "tp.json"))[0]}
    assert by["allcnn-a"]["seconds_left"] == pytest.approx(2 * per_epoch * 3) and by["allcnn-a"]["scaled"] == \
        "benchmark"
    assert by["model-a"]["seconds_left"] == pytest.approx(2 * per_epoch * macs("model-a") / macs("strided-a"))
    assert by["model-a"]["scaled"] == "macs"
    assert plan.main(["--throughput", str(tmp_path / "tp.json"), *options, "--models", "allcnn-a", "--lrs",
                      "0.05"]) == 0
    assert f"by the images/s {tmp_path / 'tp.json'} measured" in capsys.readouterr().out
    pd.DataFrame(rows).to_csv(tmp_path / "tp.csv", index=False)  # its CSV form reads the same
    assert plan.plan(cfg, str(tmp_path / "tp.csv"))[0] == list(by.values())
    (tmp_path / "bad.json").write_text(json.dumps([{"model": "allcnn-a"}]))
    assert plan.main(["--throughput", str(tmp_path / "bad.json"), *options]) == 2
    assert "not bench/throughput.py output" in capsys.readouterr().err
    for text in ("[" * 100_000, "{bad", "\xff", '[{"model": ["allcnn-a"]}]'):  # too deep (RecursionError); a list
        (tmp_path / "bad.json").write_text(text, encoding="latin-1")
        assert plan.main(["--throughput", str(tmp_path / "bad.json"), *options]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --throughput {tmp_path / 'bad.json'}: ") and "\n" not in err, err


def test_a_list_in_a_records_config_times_no_run():
    """config.precision ["bf16"] (a list where one value belongs) crashed the plan (unhashable list)."""
    timed = {"status": "completed", "wall_time_s": 10.0, "epochs_completed": 2, "finished_at": "2025-01-01T00:00:00",
             "device_name": "GPU", "model": "allcnn-c", "config": {"batch_size": 32, "precision": "bf16",
                                                                     "train_split": "train", "preset": "smoke"}}
    listed = {**timed, "config": {**timed["config"], "precision": ["bf16"]}}
    assert plan.timings([timed, listed]) == ({("allcnn-c", 32, "bf16", "train", None, "smoke", False, False, 1): 5.0}, "GPU", 1)


def test_a_checkpoint_run_all_sets_aside_is_planned_as_such(ledger):
    """A part-done epoch that run_all refuses (a float loss sum), or a checkpoint of another LR's run (copied under
    this run's key), is not "resumes at epoch 1" in the plan."""
    out, options = ledger
    cfg = parse_args(options + ["--lrs", "0.2"])
    (run,) = plan.expand(cfg)
    record, = results.read_records(out)
    (out / "checkpoints").mkdir(exist_ok=True)
    path = out / "checkpoints" / f"{run.key(record['config']['data_sha256'])}.pt"
    part = {"step": 1, "loss_sum": 1.5, "correct": torch.tensor(1), "seen": torch.tensor(2), "train_seconds": 0.1,
            "steady_seconds": 0.0, "steady_images": 0}
    at_02 = [dict(h, lr=0.2) for h in history(1)]
    torch.save(checkpoint_of(run, epoch=1, history=at_02, epoch_state=part), path)
    try:
        assert plan.plan(cfg)[0][0]["state"].startswith("malformed checkpoint")
        torch.save(checkpoint_of(run, epoch=1, history=at_02, epoch_state={**part, "loss_sum": torch.tensor(1.5)}),
                   path)
        assert plan.plan(cfg)[0][0]["state"] == "resumes at epoch 1"
        torch.save(checkpoint_of(run, epoch=1, history=history(1)), path)  # trained at LR 0.1
        assert plan.plan(cfg)[0][0]["state"] == ("malformed checkpoint: its history's learning rates are not this "
                                                 "run's (a checkpoint of another run): set aside, trains from epoch 0")
        path.unlink()
        os.mkfifo(path)  # run_all sets it aside (bench.checkpoint.read_bytes): not "to train" as if none were there
        assert plan.plan(cfg)[0][0]["state"] == "unreadable checkpoint (not a regular file): set aside, trains from epoch 0"
    finally:
        path.unlink()


def test_a_record_under_another_runs_key_is_planned_as_to_train(ledger, capsys):
    """A completed record copied under another run's key showed that run as done, which run_all then never
    trained; it is named on stderr and the run is to train. The record run_all wrote hashes to its key."""
    out, options = ledger
    cfg = parse_args(options + ["--lrs", "0.3", "0.05"])
    record, = results.read_records(out)
    assert config_key(record["config"]) == record["run_key"]
    key = plan.expand(cfg)[0].key(record["config"]["data_sha256"])
    path = results.runs_dir(out) / f"{key}.json"
    path.write_text(json.dumps({**record, "run_key": key}))
    try:
        rows, _ = plan.plan(cfg)
        assert [r["state"] for r in rows] == ["to train", f"completed {record['test_error_pct']:.2f}%"]
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{key}.json: its config does not hash to its run key" in err, err
    finally:
        path.unlink()


def test_an_ablation_arm_is_named_by_what_it_changes(ledger):
    out, options = ledger
    rows, _ = plan.plan(parse_args(options + ["--lrs", "0.05", "--ablations", "batch-size"]))
    assert [(r["model"], r["arm"]) for r in rows] == [("strided-a", ""), ("allcnn-c", ""),
                                                      ("allcnn-c", "batch_size=128")]
    assert rows[2]["seconds_left"] is None  # nothing timed at batch 128: no estimate rather than a wrong one


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert plan.main(["--preset", "smoke", "--data-dir", str(tmp_path / "none")]) == 2  # torchvision, unprepared
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not prepared" in err and "loaders.prepare" in err
    assert plan.main(["--preset", "smoke", "--source", str(tmp_path / "missing.tar.gz")]) == 2
    assert capsys.readouterr().err.strip() == f"error: data: source not found: {tmp_path / 'missing.tar.gz'}"
    assert plan.main(["--preset", "smoke", "--throughput"]) == 2  # argparse's own: the usage block, then the error
    assert capsys.readouterr().err == "error: argument --throughput: expected one argument\n"


@pytest.mark.parametrize("seed", ["4294967296", "2147483648", "-1"])
def test_a_seed_numpy_cannot_take_is_a_usage_error(seed, tmp_path, capsys):
    """--seeds 4294967296 was accepted: run_all then recorded a failed run (numpy: "Seed must be between 0 and
    2**32 - 1") and exited 0. 2**31 and above: a DDP rank seeds with seed + its rank."""
    options = ["--preset", "smoke", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--seeds",
               "0", seed]
    for main in (plan.main, run_all):
        assert main(options) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: seeds must be in 0..2147483647") and "\n" not in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "none").exists()


def test_an_out_that_cannot_be_looked_into_is_one_line_exit_2(jpeg_tarball, tmp_path, capsys, monkeypatch):
    """--out inside a folder this user may not search (/proc/1/root: even root may not, in a container): the
    check whether the folder exists raised PermissionError, and plan and run_all ended in a traceback (exit 1)."""
    locked, stat = tmp_path / "locked", os.stat

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", denied)
    options = ["--preset", "smoke", "--source", str(jpeg_tarball), "--data-dir", str(tmp_path / "none"), "--out",
               str(locked / "out")]
    for main, says in ((plan.main, f"cannot read {locked / 'out' / 'runs'}: Permission denied"),
                       (run_all, f"--out {locked / 'out'} is not writable (Permission denied)")):
        assert main(options) == 2
        assert capsys.readouterr().err == f"error: {says}\n"
    monkeypatch.undo()
    assert not locked.exists() and not (tmp_path / "none").exists()


def test_make_plan_passes_run_alls_own_options(ledger, capsys, monkeypatch):
    """`make plan ARGS=...` (bench.launch --plan) on a GPU machine: the plan of the run_all command that `make run`
    would launch there, not of the accelerate launcher's options."""
    out, options = ledger
    monkeypatch.setenv("ALLCONV_GPUS", "2")
    assert launch.main(["--plan", *options, "--lrs", "0.05"]) == 0
    assert "1 run: 1 recorded, 0 to train, 0 to resume" in capsys.readouterr().out.splitlines()


def test_time_per_epoch_is_the_newest_devices_and_a_fused_groups_is_shared():
    """The estimate uses the device that recorded the newest run (an older ledger entry from another GPU is left
    out), and a fused run's seconds are its group's: 40 s over 2 epochs for 2 runs is 10 s a run and epoch."""
    timed = {"status": "completed", "wall_time_s": 10.0, "epochs_completed": 2, "finished_at": "2025-01-02T00:00:00",
             "device_name": "H100", "model": "allcnn-c", "config": {"batch_size": 32, "precision": "bf16",
                                                                      "train_split": "train", "preset": "smoke"}}
    older = {**timed, "device_name": "A100", "wall_time_s": 100.0, "finished_at": "2025-01-01T00:00:00"}
    fused = {**timed, "model": "strided-a", "wall_time_s": 40.0, "fused_runs": 2}
    cost = (32, "bf16", "train", None, "smoke", False, False, 1)
    fused_cost = (*cost[:5], True, *cost[6:])  # a fused group's share: not what a run trained alone takes
    assert plan.timings([older, timed, fused]) == ({("allcnn-c", *cost): 5.0, ("strided-a", *fused_cost): 10.0},
                                                   "H100", 2)


def test_make_plan_without_a_gpu_takes_the_plans_own_options(ledger, tmp_path, capsys, monkeypatch):
    """`make plan ARGS="--throughput FILE"` on a machine without a GPU (and without --preset): the launcher checked
    the options with run_all's parser, which does not know --throughput ("unrecognized arguments", exit 2)."""
    out, options = ledger
    record, = results.read_records(out)
    tp = tmp_path / "tp.json"
    tp.write_text(json.dumps([{"model": m, "precision": "fp32", "device_name": record["device_name"],
                               "train_images_per_s": 100.0} for m in ("strided-a", "allcnn-a")]))
    monkeypatch.setenv("ALLCONV_GPUS", "0")
    monkeypatch.setattr(launch, "paper_grid_cpu_hours", lambda *args, **kwargs: 1234.0)  # tested in test_launch
    unpreset = [a for a in options if a not in ("--preset", "smoke")]  # the launcher picks the smoke grid itself
    assert launch.main(["--plan", *unpreset, "--throughput", str(tp), "--models", "allcnn-a", "--lrs", "0.05"]) == 0
    lines = capsys.readouterr().out.splitlines()  # (then a line on other tests' checkpoints in this ledger)
    assert lines[0].startswith("no GPU here") and "1 run: 0 recorded, 1 to train, 0 to resume" in lines
    assert f"by the images/s {tp} measured" in next(line for line in lines if line.startswith("time left: "))
    assert launch.main(["--plan", *unpreset, "--throughput"]) == 2
    assert capsys.readouterr().err == "error: argument --throughput: expected one argument\n"


def test_a_checkpoint_of_another_network_is_planned_as_set_aside(ledger):
    """A checkpoint of the no-BN network under the BN arm's key (same model, LR and history): the plan said
    "resumes at epoch 1", while run_all's load_checkpoint checks the weights against the run's network, sets it
    aside and trains from epoch 0. The plan checks them as run_all does (checkpoint.check_model)."""
    out, options = ledger
    record, = results.read_records(out)
    sha = record["config"]["data_sha256"]
    cfg = parse_args(options + ["--models", "allcnn-c", "--lrs", "0.2", "--ablations", "bn-dropout"])
    alone, with_bn = [r for r in plan.expand(cfg, sha) if r.cfg.dropout]
    assert with_bn.cfg.bn and not alone.cfg.bn
    (out / "checkpoints").mkdir(exist_ok=True)
    paths = [out / "checkpoints" / f"{r.key(sha)}.pt" for r in (alone, with_bn)]
    at_02 = [dict(h, lr=0.2) for h in history(1)]
    for path in paths:
        torch.save(checkpoint_of(alone, epoch=1, history=at_02), path)  # the second: another network's
    try:
        rows = {r["key"]: r for r in plan.plan(cfg)[0]}
        assert rows[paths[0].stem]["state"] == "resumes at epoch 1"
        bn_row = rows[paths[1].stem]
        assert bn_row["state"] == ("malformed checkpoint: model weights do not match this run's model (keys or shapes "
                                   "differ): set aside, trains from epoch 0") and bn_row["start"] == 0
        assert bn_row["seconds_left"] == pytest.approx(2 * rows[paths[0].stem]["seconds_left"])  # both epochs
    finally:
        for path in paths:
            path.unlink()


def test_a_throughput_file_of_another_device_is_said_to_be_unused(ledger, tmp_path, capsys):
    """A --throughput file measured on another device only was silently left out while the summary said the
    estimates were scaled by its images/s; it is named in one line, with both devices, as not used."""
    out, options = ledger
    record, = results.read_records(out)
    tp = tmp_path / "tp.json"
    tp.write_text(json.dumps([{"model": m, "precision": "fp32", "device_name": "another GPU",
                               "train_images_per_s": 100.0} for m in ("strided-a", "allcnn-a")]))
    assert plan.main(["--throughput", str(tp), *options, "--models", "allcnn-a", "--lrs", "0.05"]) == 0
    lines = capsys.readouterr().out.splitlines()
    time_left = next(line for line in lines if line.startswith("time left: "))
    assert "scaled from other models by forward MACs)" in time_left and str(tp) not in time_left
    assert lines[lines.index(time_left) + 1] == (f"--throughput {tp}: no usable rows for {record['device_name']}, the device of this "
                         "ledger's timings (it measured another GPU): not used")


def test_a_ddp_records_seconds_are_not_taken_for_one_processs():
    """A `--mode ddp` run on 4 processes took 10 s an epoch on the 4 together; the plan, which estimates one
    process per run, took it as one process's time (and a fused group's share, or a CUDA-graph run's, as a plain
    run's). Each is timed only against runs trained alike: the 4-process record times no run of the plan."""
    cfg = parse_args(["--preset", "smoke", "--batch-size", "32", "--models", "allcnn-c", "--lrs", "0.1"])
    (run,) = plan.expand(cfg)
    record = {"status": "completed", "wall_time_s": 20.0, "epochs_completed": 2, "finished_at": "2025-01-02",
              "device_name": "H100", "model": "allcnn-c", "mode": "ddp", "world_size": 4, "fused_runs": 1,
              "config": {"batch_size": 32, "precision": "no", "train_split": "train", "subset_per_class": 10,
                         "preset": "smoke", "cuda_graphs": False}}
    assert plan.epoch_seconds(run, plan.timings([record])[0]) == (None, "")
    strided = {**record, "model": "strided-a", "mode": "grid", "world_size": 4}  # grid: each run on one process
    seconds = plan.timings([record, strided])[0]
    assert plan.epoch_seconds(run, seconds) == (pytest.approx(10.0 * macs("allcnn-c") / macs("strided-a")), "macs")
    one = {**record, "world_size": 1}  # DDP on one process is one process's time
    assert plan.epoch_seconds(run, plan.timings([one])[0]) == (10.0, "")
    for other in ({**one, "fused_runs": 4}, {**one, "config": {**one["config"], "cuda_graphs": True}}):
        assert plan.epoch_seconds(run, plan.timings([other])[0]) == (None, "")


def test_a_stalled_or_failed_record_is_planned_as_trained_again(ledger):
    """run_all trains a stalled or failed run again (workqueue.DONE): shown as recorded, it would be left out of
    the runs to train and of the time left."""
    out, options = ledger
    record, = results.read_records(out)
    path = results.runs_dir(out) / f"{record['run_key']}.json"
    before = path.read_bytes()
    try:
        for status in ("stalled", "failed"):
            path.write_text(json.dumps({**record, "status": status}))
            (row,), _ = plan.plan(parse_args(options + ["--lrs", "0.05"]))
            assert (row["state"], row["start"]) == (f"{status} before: trains again", 0)
            if status == "stalled":  # its own seconds time it: both epochs left
                assert row["seconds_left"] == pytest.approx(record["wall_time_s"])
    finally:
        path.write_bytes(before)


def test_a_diverged_record_is_planned_as_done_even_while_its_claim_is_held(ledger):
    """A diverged run ends for good (workqueue.DONE) with no test error (its last epoch is not evaluated): the plan
    says "diverged", not a crash formatting None. A live claim on a recorded run (its process releases it just
    after writing the record) does not make it "being trained"."""
    out, options = ledger
    record, = results.read_records(out)
    path = results.runs_dir(out) / f"{record['run_key']}.json"
    before = path.read_bytes()
    claim = claims.try_claim(out, record["run_key"], lease_s=3600)
    try:
        path.write_text(json.dumps({**record, "status": "diverged", "error": "loss is nan in epoch 2",
                                    "test_error_pct": None}))
        (row,), _ = plan.plan(parse_args(options + ["--lrs", "0.05"]))
        assert (row["state"], row["start"], row["seconds_left"]) == ("diverged", None, None)
    finally:
        claim.release()
        path.write_bytes(before)


def test_a_checkpoint_of_a_network_of_other_widths_is_planned_as_set_aside(tmp_path):
    """All-CNN-B's weights under All-CNN-C's names (the same keys, other shapes): run_all sets the checkpoint aside,
    so the plan must not say "resumes at epoch 1" (checkpoint.check_model compares the shapes, not the keys only)."""
    cfg = parse_args(["--preset", "smoke", "--models", "allcnn-b", "allcnn-c", "--lrs", "0.2"])
    other, run = plan.expand(cfg)
    assert (other.model, run.model) == ("allcnn-b", "allcnn-c")
    at_02 = [dict(h, lr=0.2) for h in history(1)]
    torch.save(checkpoint_of(run, epoch=1, history=at_02), tmp_path / "own.pt")
    torch.save(checkpoint_of(other, epoch=1, history=at_02), tmp_path / "other.pt")
    assert plan.checkpoint_epoch(tmp_path / "own.pt", run) == 1
    assert plan.checkpoint_epoch(tmp_path / "other.pt", run) == (
        "malformed checkpoint: model weights do not match this run's model (keys or shapes differ): set aside, "
        "trains from epoch 0")


def timed_like(run, **fields) -> dict:
    """A finished record timed as `run` would be (its model and `plan.SAME_COST` fields), 10 s an epoch."""
    config = {k: getattr(run.cfg, k) for k in plan.SAME_COST}
    return {"status": "completed", "wall_time_s": 20.0, "epochs_completed": 2, "finished_at": "2025-01-02",
            "device_name": "H100", "model": run.model, "mode": "grid", "world_size": 1, "fused_runs": 1,
            "config": {**config, "cuda_graphs": False}, **fields}


def test_a_throughput_file_scales_by_the_rates_at_the_runs_precision():
    """Images/s at bf16 and at fp32 differ by model: a run is scaled by the rates measured at its own precision,
    whatever order the file's rows come in (the fp32 run here: 3x Strided-CNN-A's time, not bf16's 1x)."""
    cfg = parse_args(["--preset", "smoke", "--models", "strided-a", "allcnn-a", "--lrs", "0.1"])
    timed, run = plan.expand(cfg)
    assert run.model == "allcnn-a" and run.cfg.precision == "no"
    seconds = plan.timings([timed_like(timed)])[0]
    rates = {("allcnn-a", "no"): 100.0, ("strided-a", "no"): 300.0, ("allcnn-a", "bf16"): 900.0,
             ("strided-a", "bf16"): 900.0}
    assert plan.epoch_seconds(run, seconds, rates) == (pytest.approx(30.0), "benchmark")


def test_a_fused_plan_is_timed_by_fused_records_only():
    """Under --fuse-lrs a run's seconds are its share of its group's (10 s an epoch here: a group of 2 runs that took
    40 s over 2 epochs); a run trained alone takes its own, so neither times the other."""
    fused = parse_args(["--preset", "smoke", "--models", "allcnn-a", "--lrs", "0.1", "0.05", "--fuse-lrs"])
    alone = parse_args(["--preset", "smoke", "--models", "allcnn-a", "--lrs", "0.1"])
    group = plan.expand(fused)
    seconds = plan.timings([timed_like(group[0], wall_time_s=40.0, fused_runs=2)])[0]
    assert [plan.epoch_seconds(run, seconds) for run in group] == [(10.0, ""), (10.0, "")]
    assert plan.epoch_seconds(plan.expand(alone)[0], seconds) == (None, "")


def test_a_record_of_no_completed_epoch_times_nothing():
    """A finished record with seconds but no completed epoch (the schema allows one; run_all writes none, but a
    ledger may hold a hand-made or ingested one) has no epoch to divide them by: it is left out of the timings,
    not a ZeroDivisionError that stops the plan."""
    (run,) = plan.expand(parse_args(["--preset", "smoke", "--models", "allcnn-a", "--lrs", "0.1"]))
    early = timed_like(run, status="diverged", epochs_completed=0, wall_time_s=3.0, error="loss is nan")
    assert plan.timings([early]) == ({}, None, 0)
    assert plan.timings([early, timed_like(run)])[0] == {(run.model, *plan.run_cost(run)): 10.0}


def test_the_summary_counts_what_is_left_and_what_has_no_estimate():
    """The time left sums the runs with an estimate and says how many have none; a grid all recorded has no
    time-left line, not "no estimate"."""
    row = {"model": "allcnn-c", "lr": 0.1, "seed": 0, "arm": "", "key": "0" * 16, "state": "to train", "start": 0,
           "epochs": 2, "seconds_left": 7200.0, "scaled": ""}
    done = {**row, "state": "completed 9.00%", "start": None, "seconds_left": None}
    resumed = {**row, "state": "resumes at epoch 1", "start": 1, "seconds_left": None}
    summary = {"device": "H100", "timed": 1, "throughput": None, "throughput_unused": None,
               "other_checkpoints": ("checkpoints", 0, 0)}
    lines = plan.render([done, row, resumed], summary).splitlines()
    assert lines[-2] == "3 runs: 1 recorded, 1 to train, 1 to resume"
    assert lines[-1].startswith("time left: 2.0 h of training on one process of H100, from 1 run(s) it recorded")
    assert "; 1 run(s) without an estimate; " in lines[-1]
    assert plan.render([done], summary).splitlines()[-1] == "1 run: 1 recorded, 0 to train, 0 to resume"
