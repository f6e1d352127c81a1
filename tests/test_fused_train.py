"""`run_all --fuse-lrs` (bench/fused_train.py, issue 12) on real images: the LRs of one model trained in lockstep
give each run the record a separate run gets (float rounding aside); a run that diverges in the group is recorded
and masked out while the others go on; a group killed by SIGTERM resumes exactly; a group resumes from
separately trained checkpoints, and runs at different points train as one group per point; a run whose claim
another process took over leaves the group, which goes on without it.

Contiguous memory format throughout: under channels_last a separate run draws its dropout masks in NHWC order,
the group in NCHW order (bench/fused.py), so only the contiguous runs are mask-for-mask the same.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import claims, engine, results, run_all, workqueue

ROOT = Path(__file__).resolve().parents[1]
LRS = ("1e9", "0.05", "0.01")  # 1e9 diverges in epoch 1


def args(data, out, *extra) -> list[str]:
    data_dir, source = data
    return ["--preset", "smoke", "--source", source, "--data-dir", str(data_dir), "--subset-per-class", "10",
            "--out", str(out), "--no-progress", "--batch-size", "32", "--models", "strided-a", "--epochs", "2",
            "--backend", "tensor", "--no-channels-last", "--diagnose", "--lr-drops", "1", *extra]  # each run's drop


def main(argv) -> dict:
    """run_all in this process (a fresh Accelerate state each time); the records by LR."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    try:
        assert run_all.main(argv) == 0
    finally:
        AcceleratorState._reset_state()
    out = Path(argv[argv.index("--out") + 1])
    return {r["lr"]: r for r in results.read_records(out)}


@pytest.fixture(scope="module")
def data(smoke_data_dir, jpeg_tarball):
    return smoke_data_dir, str(jpeg_tarball)


@pytest.fixture(scope="module")
def separate(data, tmp_path_factory):
    return main(args(data, tmp_path_factory.mktemp("separate") / "out", "--lrs", *LRS))


def test_each_run_and_each_group_counts_its_own_peak_memory(data, tmp_path, monkeypatch):
    """A record's peak_memory_mb is its run's (its fused group's): the CUDA peak is reset as each separate run and
    each fused group starts, not left at the process's largest so far."""
    devices = []
    monkeypatch.setattr(engine, "reset_peak_memory", devices.append)
    short = ("--epochs", "1", "--lr-drops", "--no-diagnose")  # what a run trains does not matter here
    main(args(data, tmp_path / "separate", "--lrs", "0.05", "0.01", *short))
    assert len(devices) == 2 and all(d.type == "cpu" for d in devices)  # once per run
    main(args(data, tmp_path / "fused", "--lrs", "0.05", "0.01", "--fuse-lrs", *short))
    assert len(devices) == 3  # once for the group of both


def test_a_group_evaluates_at_the_runs_cadence_and_eval_precision(data, tmp_path, monkeypatch):
    """A group is evaluated after the epochs a separate run is (--eval-every 2 --eval-last 0: the second, the last)
    and in its --eval-precision (fp32 under bf16 training): the other tests' smoke runs evaluate every epoch in
    fp32, where an evaluation one epoch early (the last epoch then not evaluated: no test error) or in bf16 looked
    the same."""
    from bench import fused, fused_train

    built = []

    def spy(*a, **kw):
        built.append((kw["precision"], kw["eval_precision"]))
        return fused.FusedRuns(*a, **kw)

    monkeypatch.setattr(fused_train, "FusedRuns", spy)
    got = main(args(data, tmp_path / "out", "--lrs", "0.05", "0.01", "--fuse-lrs", "--precision", "bf16",
                    "--eval-every", "2", "--eval-last", "0", "--no-diagnose"))
    assert built == [("bf16", "no")]
    for r in got.values():
        assert [h["test_error_pct"] is None for h in r["history"]] == [True, False], r["history"]
        assert r["test_error_pct"] == r["history"][-1]["test_error_pct"] is not None


def test_a_run_that_stalls_in_a_group_checkpoints_the_epochs_it_trained(data, tmp_path):
    """--stall-after 1: both runs of a group stall after epoch 1 and each keeps a checkpoint of that 1 epoch, as a
    separate run's, which a rerun resumes at epoch 2; one stamped epoch 0 disagrees with its history of 1 epoch, so
    a rerun set it aside and trained the run from scratch."""
    from bench import checkpoint

    out = tmp_path / "out"
    got = main(args(data, out, "--lrs", "0.05", "0.01", "--fuse-lrs", "--stall-after", "1", "--no-diagnose"))
    assert [r["status"] for r in got.values()] == ["stalled", "stalled"]
    assert [checkpoint.progress(out / "checkpoints" / f"{r['run_key']}.pt")["epoch"] for r in got.values()] == [1, 1]


def same_runs(got: dict, want: dict, exact: bool) -> None:
    """The same runs with the same outcomes; histories equal (exact) or within float rounding."""
    assert sorted(got) == sorted(want)
    for lr, r in got.items():
        w = want[lr]
        assert (r["run_key"], r["status"], r["error"], r["epochs_completed"]) == \
            (w["run_key"], w["status"], w["error"], w["epochs_completed"]), lr
        if r["status"] == "diverged":  # a masked-out run keeps its last finite weights, a separate one goes NaN
            assert r["history"][-1]["loss"] is None is w["history"][-1]["loss"]
            assert r["history"][-1]["test_error_pct"] is None is w["history"][-1]["test_error_pct"]  # not evaluated
            assert r["diagnosis"] is None is w["diagnosis"]  # nothing to look at in a diverged network
            continue
        mine, theirs = r["diagnosis"], w["diagnosis"]  # the fused group's nets, written back, are the runs' own
        if exact:
            assert mine == theirs, lr
        else:  # float rounding may flip one image near a tie, no more
            assert mine["train_error_pct"] == pytest.approx(theirs["train_error_pct"], abs=1.0), lr
            assert sum(abs(a - b) for a, b in zip(mine["test_error_by_class_pct"],
                                                  theirs["test_error_by_class_pct"])) <= 10.0, lr
            assert mine["dead_relu_channels"].keys() == theirs["dead_relu_channels"].keys(), lr
        for mine, theirs in zip(r["history"], w["history"], strict=True):
            for field in ("loss", "train_acc_pct", "test_error_pct", "test_loss", "lr"):  # each run's own test_loss
                if exact:
                    assert mine[field] == theirs[field], (lr, mine["epoch"], field)
                else:
                    assert mine[field] == pytest.approx(theirs[field], rel=1e-5), (lr, mine["epoch"], field)


def test_fused_group_records_equal_separate_runs(data, separate, tmp_path):
    fused = main(args(data, tmp_path / "out", "--lrs", *LRS, "--fuse-lrs"))
    same_runs(fused, separate, exact=False)
    assert [fused[lr]["fused_runs"] for lr in sorted(fused)] == [3, 3, 3]
    assert all(r["fused_runs"] == 1 and not r["config"]["fuse_lrs"] for r in separate.values())
    assert fused[1e9]["status"] == "diverged" and fused[0.05]["status"] == "completed"
    assert fused[0.05]["train_images_per_s"] > 0 and fused[0.05]["history"][1]["loss"] is not None


def by_subprocess(argv) -> dict:
    """run_all in a process of its own, as the interrupted one is: bit-exact comparisons need the same kind of
    process (in-process and subprocess runs of one group measured 1e-7 apart in fp32 on this CPU)."""
    p = subprocess.run([sys.executable, "bench/run_all.py", *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    return {r["lr"]: r for r in results.read_records(Path(argv[argv.index("--out") + 1]))}


def test_sigterm_mid_group_then_rerun_matches_uninterrupted(data, tmp_path):
    """Exact: the same group (LRs 0.05 and 0.01), uninterrupted and interrupted after its first checkpoint."""
    grid = ("--lrs", "0.05", "0.01", "--fuse-lrs", "--epochs", "3", "--checkpoint-minutes", "0")
    reference = by_subprocess(args(data, tmp_path / "reference", *grid))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "bench/run_all.py", *args(data, out, *grid)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "checkpoints").glob("*.pt"))) == 2 and not results.read_records(out):  # checkpoints first
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "checkpointed" in log, log[-2000:]
    assert not results.read_records(out)
    resumed = by_subprocess(args(data, out, *grid))
    same_runs(resumed, reference, exact=True)
    assert not list((out / "checkpoints").glob("*.pt"))


def test_group_resumes_separate_checkpoints_and_runs_at_other_points_group_per_point(data, separate, tmp_path):
    """--stall-after 1 stops both (separate) runs at chance after epoch 1 with a checkpoint each; a fused rerun
    resumes them as one group. With one checkpoint removed and a new LR added, the runs are at two points: the
    resumed one trains alone, the two at epoch 0 as a group."""
    grid = ("--lrs", "0.05", "0.01")
    stalled = main(args(data, tmp_path / "out", *grid, "--stall-after", "1"))
    assert [r["status"] for r in stalled.values()] == ["stalled", "stalled"]
    shutil.copytree(tmp_path / "out", tmp_path / "mismatched")
    want = {lr: separate[lr] for lr in (0.05, 0.01)}
    fused = main(args(data, tmp_path / "out", *grid, "--fuse-lrs"))
    same_runs(fused, want, exact=False)
    assert [r["fused_runs"] for r in fused.values()] == [2, 2]
    removed = next((tmp_path / "mismatched" / "checkpoints").glob("*.pt"))
    removed.unlink()  # that run starts again at epoch 0, as the new LR 1e9 does: those two train as a group
    split = main(args(data, tmp_path / "mismatched", "--lrs", *grid[1:], "1e9", "--fuse-lrs"))
    same_runs(split, separate, exact=False)
    assert {lr: r["fused_runs"] for lr, r in split.items()} == {
        lr: 2 if r["run_key"] == removed.stem or lr == 1e9 else 1 for lr, r in split.items()}


@pytest.mark.parametrize("lose", ["one", "all"])
def test_a_run_whose_claim_was_taken_over_leaves_the_group(data, tmp_path, monkeypatch, capsys, lose):
    """A process stopped past the lease (a suspended job) finds at the end of epoch 2 that another host took over
    the claim of one run of its group: that run leaves the group with a warning; its checkpoint (of epoch 1), its
    record and the new owner's claim are left alone; the other run trains on and is recorded. When every claim
    was taken, the whole group stops as a run alone does (tests/test_queue.py)."""
    due, taken = workqueue.Checkpoints.due, {}

    def taken_over_in_epoch_2(self, epochs_done, *a, **kw):
        if epochs_done == 2 and not taken:
            for claim in self.claims[-1:] if lose == "one" else self.claims:
                claim.path.write_text(json.dumps({"host": "other-host", "pid": 1, "pid_start": None}))
                checkpoint = claim.path.parents[1] / "checkpoints" / f"{claim.path.stem}.pt"
                taken[claim.path] = checkpoint, checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns
        return due(self, epochs_done, *a, **kw)

    monkeypatch.setattr(workqueue.Checkpoints, "due", taken_over_in_epoch_2)
    out = tmp_path / "out"
    records = main(args(data, out, "--lrs", "0.05", "0.01", "--fuse-lrs", "--epochs", "3",
                        "--checkpoint-minutes", "0"))
    err = capsys.readouterr().err
    assert len(taken) == (1 if lose == "one" else 2)
    for claim, (checkpoint, content, mtime) in taken.items():
        assert claim.stem in err and "taken over by another process" in err, err
        assert json.loads(claim.read_text())["host"] == "other-host"  # the new owner's claim, not released
        assert checkpoint.read_bytes() == content and checkpoint.stat().st_mtime_ns == mtime
    assert len([line for line in err.splitlines() if "taken over" in line]) == 1
    kept = [r for r in records.values() if r["run_key"] not in {c.stem for c in taken}]
    assert {r["run_key"] for r in records.values()} == {r["run_key"] for r in kept}  # none for a lost run
    assert [(r["status"], r["epochs_completed"], len(r["history"]), r["fused_runs"]) for r in kept] == \
        ([("completed", 3, 3, 2)] if lose == "one" else [])
    assert sorted(p.stem for p in (out / "checkpoints").glob("*.pt")) == sorted(c.stem for c in taken)
    assert sorted(p.stem for p in claims.claims_dir(out).glob("*.json")) == sorted(c.stem for c in taken)


@pytest.mark.parametrize("extra, message", [
    (("--optimizer", "adam"), "--fuse-lrs trains SGD with momentum"),
    (("--bn",), "without --bn"),
    (("--precision", "fp16"), "at --precision no or bf16"),
])
def test_fuse_lrs_refuses_what_it_cannot_fuse(data, tmp_path, capsys, extra, message):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    assert run_all.main(args(data, tmp_path / "out", "--fuse-lrs", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "out").exists()


def test_ablation_arms_that_cannot_fuse_train_alone():
    """--fuse-lrs with ablations: the BN arm (and any other that FusedRuns cannot run) is expanded without it."""
    from bench.cli import parse_args
    from bench.config import expand

    runs = expand(parse_args(["--models", "allcnn-c", "--ablations", "bn-dropout", "--fuse-lrs"]))
    assert {r.cfg.fuse_lrs for r in runs if r.cfg.bn} == {False}
    assert {r.cfg.fuse_lrs for r in runs if not r.cfg.bn} == {True}
