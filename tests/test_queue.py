"""The grid's work queue (bench/workqueue.py) and what rests on it: claims taken over only from dead owners,
longest-first order, independent processes sharing one ledger, no orphan ranks after a launcher dies, a full disk
that stops the grid without recording a failed run, and the wall-clock checkpoint / evaluation cadence.

The process tests run the smoke preset on conftest's 10-images-per-class data, one epoch of the smallest models."""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from bench import process, results, workqueue
from bench.config import PRESETS, expand, parse_args

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
GRID = ("--models", "strided-b", "strided-c", "strided-a", "--lrs", "0.25", "0.1", "0.05", "0.01")  # 12 runs


@pytest.fixture(scope="module")
def data(smoke_data_dir, jpeg_tarball, tmp_path_factory):
    """(data_dir, source): a copy of the session's prepared data, which processes here share at the same time."""
    copy = tmp_path_factory.mktemp("queue-data") / "data"
    shutil.copytree(smoke_data_dir, copy, ignore=shutil.ignore_patterns(".*.tmp"))  # not a cache file another worker is writing
    return copy, str(jpeg_tarball)


def args(data, out, *extra) -> list[str]:
    return ["--preset", "smoke", "--source", data[1], "--data-dir", str(data[0]), "--out", str(out), "--no-progress",
            "--batch-size", "32", "--epochs", "1", "--backend", "tensor", *extra]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_"))}
    return {**e, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}


def start(argv, log: Path, launcher: list[str] | None = None, **extra_env) -> subprocess.Popen:
    cmd = [*(launcher or [sys.executable]), "bench/run_all.py", *argv]
    with open(log, "a") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env(**extra_env), stdout=f, stderr=subprocess.STDOUT)


def claims(out) -> dict[str, dict]:
    """The live claim files: run key -> content."""
    found = {}
    for p in workqueue.claims_dir(out).glob("*.json"):
        try:
            found[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            pass
    return found


def wait_for(condition, timeout=180, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def log_lines(out) -> list[list[str]]:
    """The claims log: [time, host, pid, verb..., key...] per line."""
    return [line.split() for line in (workqueue.claims_dir(out) / "log.txt").read_text().splitlines()]


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ---- claims ----

def write_claim(out, key, **info) -> Path:
    path = workqueue.claims_dir(out) / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return path


def test_claim_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = write_claim(tmp_path, "k", host=workqueue.HOST, pid=dead.pid, started_at=0)
    claim = workqueue.try_claim(tmp_path, "k", lease_s=3600)
    assert claim is not None and json.loads(path.read_text())["pid"] == os.getpid()
    workqueue.log(tmp_path, "claimed k")
    assert "took over k from" in (workqueue.claims_dir(tmp_path) / "log.txt").read_text()
    assert workqueue.try_claim(tmp_path, "k", lease_s=3600) is None  # now held by a live process: this one
    claim.release()
    assert not path.exists() and sorted(p.name for p in path.parent.iterdir()) == [".lock", "log.txt"]


def test_a_claim_taken_over_is_not_released_by_its_old_owner(tmp_path):
    """An owner whose lease expired while it lived (another host took the run over) leaves the new claim alone,
    even when the new file has the same inode number as its own had."""
    claim = workqueue.try_claim(tmp_path, "k", lease_s=3600)
    path = claim.path
    theirs = json.dumps({"host": "other-host", "pid": 1, "started_at": 0}).encode()
    path.write_bytes(theirs)  # same inode, another owner's claim
    old = time.time() - 7200
    os.utime(path, (old, old))
    claim.heartbeat()
    assert path.stat().st_mtime == old  # not refreshed: not ours
    claim.release()
    assert path.read_bytes() == theirs


def test_live_claims_are_not_taken(tmp_path):
    me = {"host": workqueue.HOST, "pid": os.getppid(), "pid_start": workqueue._pid_start(os.getppid())}
    write_claim(tmp_path, "here", **me)
    write_claim(tmp_path, "elsewhere", host="other-host", pid=1)  # fresh heartbeat, another host
    assert workqueue.try_claim(tmp_path, "here", lease_s=3600) is None
    assert workqueue.try_claim(tmp_path, "elsewhere", lease_s=3600) is None
    # the same pid number now belonging to another process (reused) is not the owner
    write_claim(tmp_path, "reused", **dict(me, pid_start="1"))
    assert workqueue.try_claim(tmp_path, "reused", lease_s=3600) is not None


def test_claim_from_another_host_expires_after_the_lease(tmp_path):
    path = write_claim(tmp_path, "k", host="other-host", pid=os.getpid())
    two_hours_ago = time.time() - 7200
    os.utime(path, (two_hours_ago, two_hours_ago))
    assert workqueue.try_claim(tmp_path, "k", lease_s=3 * 3600) is None
    assert workqueue.try_claim(tmp_path, "k", lease_s=3600) is not None


def _race(out) -> bool:
    return workqueue.try_claim(out, "k", lease_s=3600) is not None  # kept: the pool's process lives on, holding it


def test_only_one_of_many_takers_wins_a_stale_claim(tmp_path):
    """12 takers race for one dead owner's claim, 10 times over (the rename-and-compare-inodes takeover this replaced
    let two win in ~3% of single rounds)."""
    # forkserver, not fork: fork() copies this process's torch threads mid-lock (Python 3.12 warns: deadlock risk)
    with ProcessPoolExecutor(6, mp_context=multiprocessing.get_context("forkserver")) as pool:
        for round in range(10):
            out = tmp_path / str(round)
            dead = subprocess.Popen(["true"])
            dead.wait()
            write_claim(out, "k", host=workqueue.HOST, pid=dead.pid)
            wins = list(pool.map(_race, [out] * 12))
            assert sum(wins) == 1, (round, wins)
            assert sorted(p.name for p in workqueue.claims_dir(out).iterdir()) == [".lock", "k.json", "log.txt"]


def test_longest_first_by_epochs_images_and_macs():
    import allconv

    runs = expand(parse_args(["--preset", "smoke", *GRID]), "sha")
    order = workqueue.longest_first([(r, r.key("sha")) for r in runs], {"train": 100, "test": 100})
    assert [r.model for r, _ in order] == ["strided-b"] * 4 + ["strided-c"] * 4 + ["strided-a"] * 4
    assert allconv.macs("strided-b") > allconv.macs("strided-c") > allconv.macs("strided-a")


def test_cadences():
    paper = PRESETS["paper"]
    evaluated = [e for e in range(1, paper.epochs + 1) if paper.evaluates(e)]
    assert evaluated[:3] == [10, 20, 30] and evaluated[-11:] == [340, *range(341, 351)] and len(evaluated) == 44
    smoke = PRESETS["smoke"]
    assert all(smoke.evaluates(e) for e in range(1, smoke.epochs + 1)) and smoke.checkpoint_minutes == 0
    every_epoch = workqueue.Checkpoints(0, [])
    assert [every_epoch.due(e, 3) for e in (1, 2, 3)] == [True, True, False]
    assert not workqueue.Checkpoints(10, []).due(1, 3)


def test_more_processes_than_gpus_names_the_command(monkeypatch):
    import torch

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(process.LaunchError, match=r"4 processes on a machine with 2 GPU\(s\): run `make run`, or "
                                                  r"`accelerate launch --num_processes 2 "):
        process.check_launch()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(process.LaunchError, match="ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu"):
        process.check_launch()


# ---- processes sharing one ledger ----

def test_three_independent_processes_share_the_grid_and_take_over_a_killed_ones_claim(data, tmp_path):
    """12 runs, 3 plain processes started one after another; the first is SIGKILLed while it holds a claim and
    started again. Every run is recorded once, the dead claim is taken over, and claims go out longest first."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    first = start(args(data, out, *GRID), log)
    wait_for(lambda: any(c["pid"] == first.pid for c in claims(out).values()), what="a first claim")
    others = [start(args(data, out, *GRID), log)]
    wait_for(lambda: any(c["pid"] == others[0].pid for c in claims(out).values()) or others[0].poll() is not None,
             what="a second claim")
    deadline, held = time.monotonic() + 180, []
    while first.poll() is None and time.monotonic() < deadline:  # freeze the first while it holds a claim, kill it
        first.send_signal(signal.SIGSTOP)
        # a claim whose run is already recorded is one the process was about to release: not a run it holds
        held = [k for k, c in claims(out).items()
                if c["pid"] == first.pid and not (results.runs_dir(out) / f"{k}.json").exists()]
        if held:
            break
        first.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    assert held, "the first process ended before it could be killed holding a claim"
    first.kill()
    first.wait()
    others += [start(args(data, out, *GRID), log), start(args(data, out, *GRID), log)]  # the third, the restart
    for p in others:
        assert p.wait(timeout=300) == 0, log.read_text()[-3000:]

    records = results.read_records(out)
    runs = expand(parse_args(args(data, out, *GRID)), records[0]["data"]["source_sha256"])
    assert sorted(r["run_key"] for r in records) == sorted(r.key(records[0]["data"]["source_sha256"]) for r in runs)
    assert all(r["status"] == "completed" for r in records)
    assert sorted(p.name for p in workqueue.claims_dir(out).iterdir()) == [".lock", "log.txt"]  # all released
    lines = log_lines(out)
    took = [line for line in lines if line[3:5] == ["took", "over"]]
    assert [line[5] for line in took] == held and took[0][-1] == str(first.pid)
    cost = {r["run_key"]: r["epochs"] * r["data"]["num_train"] * r["macs"] for r in records}
    claimed = [line[4] for line in lines if line[3] == "claimed"]
    twice = {k for k in claimed if claimed.count(k) > 1}
    assert set(claimed) == set(cost) and twice <= set(held)  # only the killed process's run was claimed again
    for pid in {line[2] for line in lines}:  # each process took its runs longest first
        mine = [cost[line[4]] for line in lines if line[2] == pid and line[3] == "claimed"]
        assert mine == sorted(mine, reverse=True), pid
    assert cost[claimed[0]] == max(cost.values())


def test_full_disk_stops_the_grid_keeps_the_checkpoint_and_records_nothing(data, tmp_path, monkeypatch, capsys,
                                                                       fresh_accelerator):
    """ENOSPC while writing the record: one line, exit 1, the claim released, the run's checkpoint kept, no
    "failed" record; the same command then finishes the run."""
    from bench import run_all

    real_fsync = os.fsync

    def full_disk_for_records(fd):
        if "/runs/" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    out = tmp_path / "out"
    argv = args(data, out, "--models", "strided-a", "--lrs", "0.05", "--epochs", "2")
    monkeypatch.setattr(results.os, "fsync", full_disk_for_records)
    assert run_all.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write {out}/runs/") and err.endswith(
        ".json: No space left on device; earlier records and checkpoints are intact; free space and rerun the same "
        "command") and "\n" not in err, err
    assert results.read_records(out) == [] and claims(out) == {}
    assert len(list((out / "checkpoints").glob("*.pt"))) == 1
    monkeypatch.setattr(results.os, "fsync", real_fsync)
    assert run_all.main(argv) == 0
    (record,) = results.read_records(out)
    assert record["status"] == "completed" and not list((out / "checkpoints").glob("*.pt"))


def launcher(port: int, nproc: int = 2, machines: int = 1, rank: int = 0) -> list[str]:
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", str(machines),
            "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no"]


def test_killing_the_launcher_leaves_no_rank_running_and_a_rerun_resumes(data, tmp_path, free_port):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    # 10 epochs: rank 1 starts training while rank 0 still measures the rate; both must still be training when killed
    grid = ("--models", "strided-a", "--lrs", "0.1", "0.05", "--mode", "grid", "--epochs", "10")
    proc = start(args(data, out, *grid), log, launcher(free_port), ACCELERATE_USE_CPU="1")
    ranks = wait_for(lambda: len(claims(out)) == 2 and [c["pid"] for c in claims(out).values()],
                     what="both ranks training")
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(running(pid) for pid in ranks), timeout=30, what="the ranks to stop")
    assert claims(out) == {}, "a rank that stopped on SIGTERM releases its claim"
    assert len(list((out / "checkpoints").glob("*.pt"))) == 2, log.read_text()[-3000:]
    again = subprocess.run([sys.executable, "bench/run_all.py", *args(data, out, *grid)], cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "not resumed" not in again.stderr, again.stderr[-3000:]
    records = results.read_records(out)
    assert len(records) == 2 and all(r["status"] == "completed" and r["epochs_completed"] == 10 for r in records)
    assert not list((out / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("mode", ["grid", "ddp"])
def test_two_machines_fill_the_same_ledger_as_one_process(data, tmp_path, free_port, mode):
    """Two `accelerate launch` invocations, machine ranks 0 and 1 on the loopback, one process each (gloo)."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    grid = ("--models", "strided-a", "model-a", "--lrs", "0.05", "--mode", mode)
    machines = [start(args(data, out, *grid), log, launcher(free_port, 2, 2, rank), ACCELERATE_USE_CPU="1")
                for rank in (0, 1)]
    for p in machines:
        assert p.wait(timeout=300) == 0, log.read_text()[-3000:]
    records = results.read_records(out)
    sha = records[0]["data"]["source_sha256"]
    expected = sorted(r.key(sha) for r in expand(parse_args(args(data, out, *grid)), sha))
    assert sorted(r["run_key"] for r in records) == expected  # none lost, none twice, the keys one process makes
    assert all(r["status"] == "completed" and r["mode"] == mode and r["world_size"] == 2 for r in records)
    claimed = [line[4] for line in log_lines(out) if line[3] == "claimed"]
    assert sorted(claimed) == expected
