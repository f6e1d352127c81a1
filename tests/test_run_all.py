"""bench/run_all.py end to end on CPU: the 2-process gloo grid, SIGKILL/SIGTERM/Ctrl-C resume, divergence, bad inputs.

Runs use the session's prepared 10-images-per-class data (conftest.smoke_data_dir) and tiny model/LR subsets so
the file stays near two minutes on 2 cores. Launched and interrupted runs, and the runs compared with them, are
subprocesses (an interrupted run needs a process to kill); several others call main in this process (conftest's
fresh_accelerator: Accelerate keeps one state per process), ~4 CPU s of imports less each.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL
import pytest

from bench import results, run_all, weights
from bench.run_all import main
import loaders
from loaders import prepare
from loaders.manifest import arrays_sha256, load_manifest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
SCHEMA = {
    "run_key", "status", "error", "model", "display_name", "family", "variant", "lr", "seed", "epochs",
    "epochs_completed", "preset", "bn", "dropout", "final_relu", "init", "optimizer", "weight_decay", "momentum",
    "batch_size", "augment", "preprocess", "train_split", "val_split", "precision", "backend", "mode",
    "channels_last", "compile", "cuda_graphs", "test_error_pct", "best_test_error_pct", "best_epoch", "val_error_pct", "params",
    "macs", "train_images_per_s", "eval_images_per_s", "wall_time_s", "peak_memory_mb", "device_name",
    "device_count", "world_size", "versions", "git_commit", "git_dirty", "data", "config", "started_at",
    "finished_at", "history", "grid", "eval_precision", "fused_runs", "diagnosis", "sessions",
    "code_sha256",
}  # bench/schema.py's docstring, field by field
HISTORY = {"epoch", "loss", "train_acc_pct", "test_error_pct", "val_error_pct", "test_loss", "val_loss", "lr",
           "seconds"}


@pytest.fixture(scope="module")
def data(smoke_data_dir, jpeg_tarball):
    """(data_dir, source) for run_all: the prepared session data, named by the tarball it came from."""
    return smoke_data_dir, str(jpeg_tarball)


def args(data, out, *extra) -> list[str]:
    data_dir, source = data
    return ["--preset", "smoke", "--source", source, "--data-dir", str(data_dir), "--subset-per-class", "10",
            "--out", str(out), "--no-progress", "--batch-size", "32", *extra]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK"))}
    e.update(PYTHONUNBUFFERED="1", **extra)
    return e


def launch(argv, nproc: int, port: int, timeout=240, cpu=True) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes N`: with ACCELERATE_USE_CPU=1, N ranks of DDP over gloo.
    `port`: conftest's free_port (the default 29500 collides with other launches running at the same time)."""
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
           "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
           "bench/run_all.py", *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env(**({"ACCELERATE_USE_CPU": "1"} if cpu else {})),
                          capture_output=True, text=True, timeout=timeout)


def run_py(argv, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "bench/run_all.py", *argv], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def check_sane(record: dict) -> None:
    assert set(record) == SCHEMA
    assert record["status"] == "completed" and record["error"] is None
    assert record["epochs_completed"] == record["epochs"] == len(record["history"])
    assert all(set(h) == HISTORY for h in record["history"])
    assert all((h["test_loss"] is None) == (h["test_error_pct"] is None) for h in record["history"])
    assert all(0 < h["test_loss"] < 10 for h in record["history"] if h["test_loss"] is not None)
    assert 0 <= record["test_error_pct"] <= 100 and record["best_test_error_pct"] <= record["test_error_pct"]
    assert record["data"]["num_test"] == 100 and record["data"]["num_train"] == 100
    assert record["data"]["encoding"]["jpeg_chroma"].keys() == {"4:2:0"} and not record["data"]["encoding"]["lossless"]
    assert record["train_images_per_s"] > 0 and record["eval_images_per_s"] > 0 and record["wall_time_s"] > 0
    assert record["run_key"] == results.run_key({k: v for k, v in record["config"].items() if k not in
                                                 ("out", "source", "data_dir", "progress", "log_with",
                                                  "checkpoint_minutes", "claim_lease_minutes", "mode", "num_workers",
                                                  "channels_last", "compile", "cuda_graphs", "deterministic",
                                                  "fuse_lrs", "backend", "stall_after", "verbose", "diagnose",
                                                  "save_weights")})
    assert record["versions"]["torch"] and record["precision"] == "no" and record["preset"] == "smoke"
    assert record["versions"]["numpy"] == np.__version__ and record["versions"]["pillow"] == PIL.__version__
    assert record["versions"]["cudnn"] is None and record["versions"]["cuda"] is None  # a CPU run: no CUDA kernels
    assert record["data"]["arrays_sha256"] == arrays_sha256(load_manifest(ROOT / record["config"]["data_dir"]))
    assert record["eval_precision"] == "no" and set(record["grid"]) == {"models", "lrs", "seeds"}


def test_two_process_gloo_grid_fills_the_ledger(data, tmp_path, free_port, capsys, fresh_accelerator):
    """2 models x 2 LRs over 2 gloo ranks in grid mode, FFCV backend: four completed, sane, distinct records."""
    if not prepare._ffcv_available():  # checked here, not at collection: importing ffcv takes seconds
        pytest.skip("ffcv is not installed (the GPU machines have none)")
    out = tmp_path / "out"
    p = launch(args(data, out, "--models", "strided-a", "strided-b", "--lrs", "0.05", "0.01", "--epochs", "1",
                    "--backend", "ffcv"), 2, free_port)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "mode grid on 2 process(es)" in p.stdout
    records = results.read_records(out)
    assert sorted((r["model"], r["lr"]) for r in records) == [
        ("strided-a", 0.01), ("strided-a", 0.05), ("strided-b", 0.01), ("strided-b", 0.05)]
    for r in records:
        check_sane(r)
        assert r["mode"] == "grid" and r["world_size"] == 2 and r["device_count"] == 1 and r["backend"] == "ffcv"
    assert not list((out / "checkpoints").glob("*.pt"))
    # the same grid on a machine without ffcv (the tensor backend yields the same batches): nothing to redo. In this
    # process: the run keys, not the process count, decide it (a second 2-rank launch cost ~9 s of CPU)
    assert main(args(data, out, "--models", "strided-a", "strided-b", "--lrs", "0.05", "0.01", "--epochs", "1",
                     "--backend", "tensor")) == 0
    again = capsys.readouterr().out
    assert "4 already in" in again and "0 to train" in again, again
    assert len(results.read_records(out)) == 4


def test_two_process_ddp_run_is_synchronised(data, tmp_path, free_port):
    """DDP mode: one run on both ranks (global batch 32 = 2 x 16); run_all checks the replicas agree and that
    evaluation counted exactly the 100 test images over the two shards. --diagnose sums both shards too: its
    per-class test errors (10 images a class) average to the recorded test error. --save-weights: rank 0 writes
    the bare network's weights once, under the run key."""
    out = tmp_path / "out"
    p = launch(args(data, out, "--models", "strided-a", "--lrs", "0.05", "--mode", "ddp", "--backend", "tensor",
                    "--diagnose", "--save-weights"), 2, free_port)
    assert p.returncode == 0, p.stderr[-3000:]
    (record,) = results.read_records(out)
    check_sane(record)
    assert record["mode"] == "ddp" and record["world_size"] == 2 and record["device_count"] == 2
    (only,) = record["sessions"]  # both ranks trained it in one session; rank 0 wrote it once
    assert only["mode"] == "ddp" and only["world_size"] == 2 and only["from_epoch"] == 1
    diagnosis = record["diagnosis"]
    assert sum(diagnosis["test_error_by_class_pct"]) / 10 == pytest.approx(record["test_error_pct"], abs=1e-9)
    assert 0 <= diagnosis["train_error_pct"] <= 100 and diagnosis["dead_relu_channels"]["top.conv3_relu"][1] == 10
    assert [p.name for p in (out / "weights").iterdir()] == [f"{record['run_key']}.pt"]
    assert sum(p.numel() for p in weights.load(out / "weights" / f"{record['run_key']}.pt").parameters()) == \
        record["params"]


RESUME = ("--models", "strided-a", "--lrs", "0.05", "0.01", "--epochs", "3", "--checkpoint-minutes", "0",
          "--backend", "tensor", "--precision", "no")  # two runs of the smallest model (Model-A cost ~4 CPU s a run)


def uninterrupted(data, out, *extra) -> dict:
    """The resume grid run without interruption: {lr: record}."""
    p = run_py(args(data, out, *RESUME, *extra))
    assert p.returncode == 0, p.stderr[-3000:]
    return {r["lr"]: r for r in results.read_records(out)}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return uninterrupted(data, tmp_path_factory.mktemp("reference"))


TORCH = ("--backend", "torch", "--num-workers", "1")  # the DataLoader backend, with a worker process


def start_and_interrupt(data, out, sig, *extra, group=False) -> tuple[subprocess.Popen, str]:
    """Start the resume grid and send `sig` once the second run has written a checkpoint (mid-grid, mid-run); with
    `group`, to its whole process group, as a terminal's Ctrl-C or `timeout` signal."""
    log = out.parent / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([PYTHON, "bench/run_all.py", *args(data, out, *RESUME, *extra)], cwd=ROOT, env=env(),
                                stdout=f, stderr=subprocess.STDOUT, text=True, start_new_session=group)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        # run_all writes a run's record, then removes its checkpoint: look at checkpoints first, records second,
        # and wait for one that is not the first run's (it lives on for a moment after that run's record)
        checkpoints = {p.stem for p in (out / "checkpoints").glob("*.pt")}
        records = results.read_records(out)
        if len(records) == 1 and checkpoints - {records[0]["run_key"]}:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
            break
        time.sleep(0.02)
    proc.wait(timeout=120)
    assert len(results.read_records(out)) == 1, "the grid ended before it could be interrupted"
    return proc, log.read_text()


def check_resumed(data, out, reference, *extra) -> None:
    p = run_py(args(data, out, *RESUME, *extra))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "1 already in" in p.stdout
    records = results.read_records(out)
    assert sorted(r["lr"] for r in records) == [0.01, 0.05]  # none lost, none twice
    for r in records:
        ref = reference[r["lr"]]
        assert r["run_key"] == ref["run_key"] and r["status"] == "completed"
        for field in ("test_error_pct", "best_test_error_pct", "best_epoch", "epochs_completed"):
            assert r[field] == ref[field], field
        for mine, theirs in zip(r["history"], ref["history"], strict=True):
            for field in ("loss", "train_acc_pct", "test_error_pct", "lr"):
                assert mine[field] == theirs[field], (r["lr"], mine["epoch"], field)
    assert not list((out / "checkpoints").glob("*.pt"))


def test_sigkill_mid_run_then_rerun_matches_uninterrupted(data, tmp_path, reference):
    out = tmp_path / "out"
    proc, _ = start_and_interrupt(data, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    check_resumed(data, out, reference)


def test_sigterm_checkpoints_and_exits_then_rerun_matches(data, tmp_path, reference):
    out = tmp_path / "out"
    proc, log = start_and_interrupt(data, out, signal.SIGTERM)
    assert proc.returncode == 143 and "checkpointed" in log, log[-2000:]
    check_resumed(data, out, reference)


def test_ctrl_c_checkpoints_and_exits_then_rerun_matches(data, tmp_path, reference, monkeypatch):
    """Ctrl-C (SIGINT) stops a run as SIGTERM does: checkpointed, one line, exit 130. It was a KeyboardInterrupt
    traceback that lost every epoch since the last periodic checkpoint (--checkpoint-minutes, 10 by default)."""
    out = tmp_path / "out"
    proc, log = start_and_interrupt(data, out, signal.SIGINT)
    assert proc.returncode == 130 and "stopped by SIGINT:" in log and "checkpointed" in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]
    check_resumed(data, out, reference)
    calls = []  # a second Ctrl-C kills at once: the first gives SIGINT back its default action
    monkeypatch.setattr(signal, "signal", lambda *a: calls.append(a))
    monkeypatch.setitem(run_all.STOP, "requested", False)
    monkeypatch.setitem(run_all.STOP, "signal", signal.SIGTERM)
    run_all.stop_on(signal.SIGINT, None)
    assert run_all.STOP == {"requested": True, "signal": signal.SIGINT} and calls == [(signal.SIGINT, signal.SIG_DFL)]


def test_sigterm_to_the_group_on_the_torch_backend_then_rerun_matches(data, tmp_path, reference):
    """The torch backend's DataLoader worker under a signal to the whole process group (`timeout`'s SIGTERM, a
    terminal's Ctrl-C): the worker leaves the stop to run_all (it died of it, and run_all with a RuntimeError),
    and the resumed run matches the uninterrupted one exactly (the loaders drew their workers' seed from torch's
    global RNG, which draws the dropout masks, and a resumed process drew it at another point). The uninterrupted
    run is the tensor backend's: every backend yields the same batches (loaders/__init__.py), so it is the same run
    (measured: equal histories), and one reference run less."""
    out = tmp_path / "out"
    proc, log = start_and_interrupt(data, out, signal.SIGTERM, *TORCH, group=True)
    assert proc.returncode == 143 and "checkpointed" in log and "Traceback" not in log, log[-2000:]
    check_resumed(data, out, reference, *TORCH)


def test_a_kill_after_a_periodic_checkpoint_resumes_at_the_next_epoch(data, tmp_path, monkeypatch, capsys,
                                                                        fresh_accelerator):
    """A kill (SIGKILL, a preempted machine) right after the checkpoint at an epoch's end (--checkpoint-minutes 0:
    every epoch) loses nothing: the rerun resumes that checkpoint and trains only the epochs after it. A checkpoint
    whose epoch counter disagreed with its history was set aside on the rerun and the run trained again from epoch 1;
    on CPU the retrained run ends as the uninterrupted one does, so the SIGKILL test above cannot tell."""
    from bench import checkpoint
    from bench.run_state import RunState

    class Killed(BaseException):  # not an Exception: run_all records no failed run for it, as for a real kill
        pass

    real_save = RunState.save

    def save_then_die(self, *a, **kw):
        real_save(self, *a, **kw)
        if len(self.history) == 2:  # the checkpoint after epoch 2 of 3 is on disk
            raise Killed

    monkeypatch.setattr(run_all, "measure_rate", lambda *a: 1.0)  # the ETA's steps, on a net of their own
    monkeypatch.setattr(RunState, "save", save_then_die)
    out = tmp_path / "out"
    argv = args(data, out, "--models", "strided-a", "--lrs", "0.05", "--epochs", "3", "--checkpoint-minutes", "0",
                "--backend", "tensor")
    with pytest.raises(Killed):
        main(argv)
    (path,) = (out / "checkpoints").glob("*.pt")
    assert results.read_records(out) == []
    saved = checkpoint.progress(path)  # what a reader (bench.plan, the reports) makes of it
    assert saved["epoch"] == 2 and [h["epoch"] for h in saved["history"]] == [1, 2]
    monkeypatch.setattr(RunState, "save", real_save)
    capsys.readouterr()
    assert main(argv) == 0
    assert "not resumed" not in capsys.readouterr().err
    (record,) = results.read_records(out)
    assert record["status"] == "completed" and record["run_key"] == path.stem
    assert [s["from_epoch"] for s in record["sessions"]] == [1, 3]  # the rerun trained epoch 3 only
    assert record["history"][:2] == saved["history"]


def test_diverged_run_is_recorded_and_the_grid_goes_on(data, tmp_path, fresh_accelerator):
    out = tmp_path / "out"
    assert main(args(data, out, "--models", "strided-a", "--lrs", "1e9", "0.01", "--epochs", "1", "--backend",
                     "tensor")) == 0
    by_lr = {r["lr"]: r for r in results.read_records(out)}
    assert by_lr[1e9]["status"] == "diverged" and "loss is" in by_lr[1e9]["error"]
    assert by_lr[1e9]["history"][-1]["loss"] is None
    assert by_lr[0.01]["status"] == "completed"


def test_a_run_resumed_in_another_session_records_both_sessions(data, tmp_path, capsys, monkeypatch,
                                                                fresh_accelerator):
    """A run stopped after epoch 1 (--stall-after: at chance, checkpointed) and finished by a later invocation with
    other NOT_IN_KEY flags: its record once described only the finishing session (its flags, commit, start). Now
    `sessions` lists both, each with its own flags and first epoch, and started_at is the first one's."""
    import torch

    out = tmp_path / "out"
    grid = ("--models", "strided-a", "--lrs", "1e-6", "--epochs", "3", "--backend", "tensor")
    assert main(args(data, out, *grid, "--stall-after", "1", "--channels-last", "--no-deterministic")) == 0
    (stalled,) = results.read_records(out)
    assert stalled["status"] == "stalled" and [s["from_epoch"] for s in stalled["sessions"]] == [1]
    capsys.readouterr()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what --deterministic sets, undone after the test
    try:  # in this process (two subprocesses' imports less): --deterministic is process-wide, so it is undone after
        assert main(args(data, out, *grid, "--no-channels-last", "--deterministic")) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    err = capsys.readouterr().err
    assert "warning" not in err, err[-3000:]  # resumed, not set aside
    (done,) = results.read_records(out)
    assert done["status"] == "completed" and done["history"][0] == stalled["history"][0]
    first, second = done["sessions"]
    assert (first["from_epoch"], first["channels_last"], first["deterministic"]) == (1, True, False)
    assert (second["from_epoch"], second["channels_last"], second["deterministic"]) == (2, False, True)
    assert first == stalled["sessions"][0]  # carried as the first session wrote it
    assert done["started_at"] == first["started_at"] == stalled["started_at"] <= second["started_at"]
    assert done["channels_last"] is False and done["config"]["deterministic"] is True  # the record: the last one's
    for s in (first, second):
        assert s["git_commit"] == done["git_commit"] and s["device_name"] == done["device_name"]
        assert s["backend"] == "tensor" and s["mode"] == "grid" and s["world_size"] == 1
        assert s["versions"]["torch"] == done["versions"]["torch"]
        assert s["code_sha256"] == done["code_sha256"] == results.code_sha256()


def test_the_code_digest_names_the_training_code_whatever_git_says(tmp_path):
    """A GPU machine's copy of the tree had a stale .git, so the campaign's records named a commit older than the
    code that trained them. code_sha256 digests the packages' .py files themselves: the same for a copy without
    .git, `sha256sum`'s lines over them, other after an edit, blind to what is not code."""
    for package in results.CODE:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert results.code_sha256(tmp_path) == results.code_sha256()
    files = sorted(str(p.relative_to(tmp_path)) for package in results.CODE for p in (tmp_path / package).glob("*.py"))
    lines = subprocess.run(["sha256sum", *files], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert hashlib.sha256(lines.encode()).hexdigest() == results.code_sha256(tmp_path)
    (tmp_path / "bench" / "notes.txt").write_text("not code")
    (tmp_path / "bench" / "__pycache__").mkdir()
    assert results.code_sha256(tmp_path) == results.code_sha256()
    with (tmp_path / "allconv" / "specs.py").open("a") as f:
        f.write("\n")
    assert results.code_sha256(tmp_path) != results.code_sha256()
    edited = results.code_sha256(tmp_path)
    with (tmp_path / "loaders" / "prepare.py").open("a") as f:  # the data pipeline trains a run too
        f.write("\n")
    assert results.code_sha256(tmp_path) != edited


# ---- bad inputs: one line on stderr starting "error: ", exit status 2, no record ----

BAD = {
    "unknown model": ["--models", "allcnn-z"],
    "lr not a number": ["--lrs", "fast"],
    "lr <= 0": ["--lrs", "0.1", "0"],
    "lr nan": ["--lrs", "nan"],
    "unknown preset": ["--preset", "tiny"],
    "unknown ablation": ["--ablations", "bn-dropout,dropconnect"],
    "epochs < 1": ["--epochs", "0"],
    "lr drop after the end": ["--epochs", "2", "--lr-drops", "2"],
    "bad precision": ["--precision", "fp8"],
    "bad backend": ["--backend", "dali"],
    "bad mode": ["--mode", "pipeline"],
    "batch size 0": ["--batch-size", "0"],
    "unknown option": ["--learning-rate", "0.1"],
    "negative weight decay": ["--weight-decay", "-1"],
    "weight decay nan": ["--weight-decay", "nan"],  # trained in full, then the record check raised
    "batch size over 2**63": ["--batch-size", str(10 ** 19)],
}


def test_a_rank_whose_rank_0_did_not_fail_says_its_own_error(data, tmp_path, capsys, monkeypatch):
    """A rank other than 0 waits for rank 0's line (the launcher ends it when rank 0 exits); if it is still there,
    the error was its own (its disk, its data folder), and it says so itself rather than exiting silently."""
    from types import SimpleNamespace

    import bench.run_all

    waited = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(bench.run_all, "time", SimpleNamespace(sleep=waited.append))  # this module's only
    assert main(args(data, tmp_path / "out", "--lrs", "fast")) == 2
    err = capsys.readouterr().err.strip()
    assert waited == [30] and err.startswith("error: ") and err.endswith("(rank 1)") and "\n" not in err, err


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_no_record(case, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args(data, out, *BAD[case])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert results.read_records(out) == []


def test_missing_data_and_unwritable_out(data, tmp_path, capsys, fresh_accelerator):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for argv, says in ((["--source", str(tmp_path / "no-such.tar.gz"), "--data-dir", str(tmp_path / "d")],
                        "source not found"), (["--out", str(blocker / "out")], "is not writable")):
        assert main([*args(data, tmp_path / "out"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and says in err and "\n" not in err, err
    assert results.read_records(tmp_path / "out") == []


def test_ffcv_asked_for_where_it_is_missing_is_refused_before_any_run(data, tmp_path, capsys, monkeypatch):
    """--backend ffcv on a machine without ffcv (the GPU machines): the one-line error that names the other
    backends, before the output folder exists, rather than a traceback from the first run's loader (where, under
    DDP, one rank failed alone and the other died in the barrier)."""
    monkeypatch.setattr(prepare, "_ffcv_available", lambda: False)
    assert main(args(data, tmp_path / "out", "--backend", "ffcv")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: " + loaders.FFCV_MISSING and not (tmp_path / "out").exists()


def test_cli_errors_through_the_command_line(data, tmp_path):
    """The exit status as a shell sees it, for a usage error, a config error, and fp16 where Accelerate would
    silently train in fp32 (CPU)."""
    import torch

    cases = [["--models", "nope"], ["--lrs", "-0.1"]] + ([] if torch.cuda.is_available() else [["--precision", "fp16"]])
    for extra in cases:
        p = run_py(args(data, tmp_path / "out", *extra), timeout=60)
        assert p.returncode == 2 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    assert results.read_records(tmp_path / "out") == []


def test_multi_process_launch_errors(data, tmp_path, free_port):
    """Two processes that Accelerate does not distribute (--multi_gpu without CUDA or the CPU flag) are refused
    with the CPU recipe; a global batch that 2 DDP ranks cannot split is refused too."""
    p = launch(args(data, tmp_path / "out", "--models", "strided-a", "--lrs", "0.1"), 2, free_port, cpu=False,
               timeout=120)
    assert p.returncode != 0
    assert p.stderr.count("error: launched 2 processes but Accelerate is not distributed") == 1, p.stderr
    assert "`make run`" in p.stderr and "ACCELERATE_USE_CPU=1" in p.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was created
    p = launch(args(data, tmp_path / "out", "--models", "strided-a", "--lrs", "0.1", "--mode", "ddp",
                    "--batch-size", "33", "--backend", "tensor"), 2, free_port, timeout=120)
    assert p.returncode != 0 and p.stderr.count("error: --batch-size 33 is not divisible by 2 processes") == 1
    assert not (tmp_path / "out").exists()
    assert results.read_records(tmp_path / "out") == []


def test_an_ablation_arm_trains_at_its_own_batch_size(data, tmp_path, monkeypatch, fresh_accelerator):
    """The batch-size ablation's runs load their training data at their own batch size, not the grid's (the loader
    cache is built with the grid's): the grid (the ablation's first arm) at --batch-size 32, its other arm at 128,
    each recorded as what it trained at."""
    made = []
    real = loaders.make
    monkeypatch.setattr(loaders, "make", lambda split, batch_size, **kw: made.append((split, batch_size)) or real(
        split, batch_size, **kw))
    out = tmp_path / "out"
    assert main(args(data, out, "--models", "allcnn-c", "--lrs", "0.05", "--epochs", "1",
                     "--ablations", "batch-size", "--backend", "tensor")) == 0
    assert sorted(b for split, b in made if split == "train") == [32, 128]
    assert sorted(r["batch_size"] for r in results.read_records(out)) == [32, 128]
