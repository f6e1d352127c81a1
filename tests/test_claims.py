"""Claims on the grid's runs (bench/workqueue.py): taken over only from dead owners (or after the lease, from
another host), never released by an old owner, won by exactly one of many takers; longest-first order, the
wall-clock checkpoint and evaluation cadences, and the launch check. Processes sharing a ledger: test_queue.py."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from bench import claims, process, workqueue
from bench.cli import parse_args
from bench.config import PRESETS, expand

GRID = ("--models", "strided-b", "strided-c", "strided-a", "--lrs", "0.25", "0.1", "0.05", "0.01")  # 12 runs


def write_claim(out, key, **info) -> Path:
    path = claims.claims_dir(out) / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return path


def test_claim_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = write_claim(tmp_path, "k", host=claims.HOST, pid=dead.pid, started_at=0)
    claim = claims.try_claim(tmp_path, "k", lease_s=3600)
    assert claim is not None and json.loads(path.read_text())["pid"] == os.getpid()
    claims.log(tmp_path, "claimed k")
    assert "took over k from" in (claims.claims_dir(tmp_path) / "log.txt").read_text()
    assert claims.try_claim(tmp_path, "k", lease_s=3600) is None  # now held by a live process: this one
    claim.release()
    assert not path.exists() and sorted(p.name for p in path.parent.iterdir()) == [".lock", "log.txt"]


def test_claim_of_another_machine_of_this_host_name_is_judged_by_its_heartbeat(tmp_path):
    """Two machines (or containers) of one host name: the other's pid means nothing here. Its live claim, whose
    pid no process here has, was taken over as dead until claims named their process space."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = write_claim(tmp_path, "k", host=claims.HOST, pid=dead.pid, space="another boot pid:[1]")
    assert claims.try_claim(tmp_path, "k", lease_s=3600) is None
    two_hours_ago = time.time() - 7200
    os.utime(path, (two_hours_ago, two_hours_ago))
    assert claims.try_claim(tmp_path, "k", lease_s=3600) is not None
    assert json.loads(path.read_text())["space"] == claims.SPACE is not None


def test_a_claim_taken_over_is_not_released_by_its_old_owner(tmp_path):
    """An owner whose lease expired while it lived (another host took the run over) leaves the new claim alone,
    even when the new file has the same inode number as its own had."""
    claim = claims.try_claim(tmp_path, "k", lease_s=3600)
    path = claim.path
    theirs = json.dumps({"host": "other-host", "pid": 1, "started_at": 0}).encode()
    path.write_bytes(theirs)  # same inode, another owner's claim
    old = time.time() - 7200
    os.utime(path, (old, old))
    claim.heartbeat()
    assert path.stat().st_mtime == old  # not refreshed: not ours
    claim.release()
    assert path.read_bytes() == theirs


def test_a_heartbeat_keeps_a_live_claim_from_other_hosts(tmp_path, monkeypatch):
    """Another machine sharing the ledger judges this process's claim by its age (it cannot see the process): each
    epoch's end (workqueue.Checkpoints.due) refreshes it. A heartbeat that did not, left a run longer than the lease
    (60 min; a paper run takes hours) to be taken over while alive and trained twice, its owner's work thrown away."""
    beating, silent = (claims.try_claim(tmp_path, key, lease_s=3600) for key in ("beating", "silent"))
    old = time.time() - 7200  # the claims were made two hours ago, in the run's first epoch
    for claim in (beating, silent):
        os.utime(claim.path, (old, old))
    assert beating.heartbeat() and time.time() - beating.path.stat().st_mtime < 600
    monkeypatch.setattr(claims, "HOST", "another-machine")  # as a process there judges them
    assert claims.try_claim(tmp_path, "beating", lease_s=3600) is None and beating.held()
    assert claims.try_claim(tmp_path, "silent", lease_s=3600) is not None and not silent.held()  # the lease ran out


def test_live_claims_are_not_taken(tmp_path):
    me = {"host": claims.HOST, "pid": os.getppid(), "pid_start": claims._pid_start(os.getppid())}
    write_claim(tmp_path, "here", **me)
    write_claim(tmp_path, "elsewhere", host="other-host", pid=1)  # fresh heartbeat, another host
    assert claims.try_claim(tmp_path, "here", lease_s=3600) is None
    assert claims.try_claim(tmp_path, "elsewhere", lease_s=3600) is None
    # the same pid number now belonging to another process (reused) is not the owner
    write_claim(tmp_path, "reused", **dict(me, pid_start="1"))
    assert claims.try_claim(tmp_path, "reused", lease_s=3600) is not None


def test_claim_from_another_host_expires_after_the_lease(tmp_path):
    path = write_claim(tmp_path, "k", host="other-host", pid=os.getpid())
    two_hours_ago = time.time() - 7200
    os.utime(path, (two_hours_ago, two_hours_ago))
    assert claims.try_claim(tmp_path, "k", lease_s=3 * 3600) is None
    assert claims.try_claim(tmp_path, "k", lease_s=3600) is not None


def test_a_damaged_claim_is_stale_after_a_minute_whatever_the_lease(tmp_path):
    """An empty claim (its owner died between create and write) names no process to ask: it is stale after
    DAMAGED_LEASE_S (60 s) without a heartbeat, not after the whole lease (an hour by default, the run left
    untrained that long); a readable claim of another host keeps the whole lease."""
    empty, foreign = claims.claims_dir(tmp_path) / "empty.json", write_claim(tmp_path, "foreign", host="other", pid=1)
    empty.write_bytes(b"")
    for age, taken in ((30, False), (120, True)):
        for path in (empty, foreign):
            os.utime(path, (time.time() - age, time.time() - age))
        assert (claims.try_claim(tmp_path, "empty", lease_s=3600) is not None) == taken, age
        assert claims.try_claim(tmp_path, "foreign", lease_s=3600) is None


def test_a_claim_of_a_process_that_exited_unreaped_is_taken_over(tmp_path):
    """A process that has exited but is not yet reaped by its parent (a zombie: a launcher that is stopped or
    stuck) keeps its pid and its start time in /proc, and os.kill(pid, 0) still succeeds: its claim is stale."""
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        start = claims._pid_start(child.pid)
        assert start is not None
        write_claim(tmp_path, "k", host=claims.HOST, pid=child.pid, pid_start=start, space=claims.SPACE)
        assert claims.try_claim(tmp_path, "k", lease_s=3600) is not None
    finally:
        child.wait()


def test_a_deleted_claim_is_lost_and_a_released_one_beats_on_as_a_no_op(tmp_path):
    """A claim whose file is gone (deleted under a live process: any process may claim the run now) is lost at the
    next heartbeat, so its owner stops rather than train the run beside another. A released claim (a run of a
    fused group that ended early) heartbeats as held: the group's next checkpoint raises no ClaimLost for it."""
    gone, ended = (claims.try_claim(tmp_path, key, lease_s=3600) for key in ("gone", "ended"))
    gone.path.unlink()
    assert not gone.heartbeat()
    with pytest.raises(workqueue.ClaimLost, match="^gone taken over"):
        workqueue.Checkpoints(0, [gone]).due(1, 3)
    ended.release()
    assert not (claims.claims_dir(tmp_path) / "ended.json").exists()
    assert ended.heartbeat() and workqueue.Checkpoints(0, [ended]).due(1, 3)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("info", [{"host": claims.HOST, "pid": 2 ** 40}, {"host": claims.HOST, "pid": -1},
                                  {"host": claims.HOST, "pid": 0}, {"host": claims.HOST, "pid": 2 ** 22},
                                  {"host": claims.HOST, "pid": os.getppid(), "pid_start": ["1"]},
                                  {"host": "x\n" * 1000, "pid": [1]}, [1, 2], "[" * 100_000, "fifo", "x" * 5000,
                                  "folder", "dangling link"])
def test_a_claim_with_fields_no_live_process_here_has_is_judged_by_its_age(info, tmp_path, capsys):
    """A pid of 2**40 raised OverflowError in os.kill (bench.plan and run_all crashed); -1 and 0 (which os.kill takes
    as every process, this group) held the run forever; so did a pid_start no process has; deep nesting raised
    RecursionError, and a FIFO hung both; a folder stopped run_all (unlink failed); JSON that is no object (a list)
    has no fields to read. Each is now a claim judged by its heartbeat, named in one line; a folder is then set
    aside, not deleted."""
    from bench import plan

    path = claims.claims_dir(tmp_path) / "k.json"
    path.parent.mkdir(parents=True)
    if info == "fifo":
        os.mkfifo(path)
    elif info == "folder":
        path.mkdir()
        (path / "kept.txt").write_text("evidence")
    elif info == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    else:
        path.write_text(info if isinstance(info, str) else json.dumps(info))
    held = plan.claim_holder(path, 3600)
    assert held is not None and "\n" not in held and len(held) < 100, held  # fresh: held, as run_all sees it
    assert claims.try_claim(tmp_path, "k", lease_s=3600) is None
    old = time.time() - 7200
    os.utime(path, (old, old), follow_symlinks=False)
    assert plan.claim_holder(path, 3600) is None
    claim = claims.try_claim(tmp_path, "k", lease_s=3600)
    assert claim is not None and claim.held()
    (line,) = [x for x in (path.parent / "log.txt").read_text().splitlines() if "took over k from" in x]
    assert len(line) < 200, line
    if info == "folder":
        assert (path.parent / ".invalid" / "k.json" / "kept.txt").read_text() == "evidence"
        assert capsys.readouterr().err == (f"warning: {path} is a folder where a claim file belongs, moved to "
                                           f"{path.parent / '.invalid' / 'k.json'}\n")


def _race(out) -> bool:
    return claims.try_claim(out, "k", lease_s=3600) is not None  # kept: the pool's process lives on, holding it


def test_only_one_of_many_takers_wins_a_stale_claim(tmp_path):
    """12 takers race for one dead owner's claim, 10 times over (the rename-and-compare-inodes takeover this replaced
    let two win in ~3% of single rounds)."""
    # forkserver, not fork: fork() copies this process's torch threads mid-lock (Python 3.12 warns: deadlock risk)
    with ProcessPoolExecutor(6, mp_context=multiprocessing.get_context("forkserver")) as pool:
        for round in range(10):
            out = tmp_path / str(round)
            dead = subprocess.Popen(["true"])
            dead.wait()
            write_claim(out, "k", host=claims.HOST, pid=dead.pid)
            wins = list(pool.map(_race, [out] * 12))
            assert sum(wins) == 1, (round, wins)
            assert sorted(p.name for p in claims.claims_dir(out).iterdir()) == [".lock", "k.json", "log.txt"]


def test_longest_first_by_epochs_images_and_macs():
    import allconv

    runs = expand(parse_args(["--preset", "smoke", *GRID]), "sha")
    order = workqueue.longest_first([(r, r.key("sha")) for r in runs], {"train": 100, "test": 100})
    assert [r.model for r, _ in order] == ["strided-b"] * 4 + ["strided-c"] * 4 + ["strided-a"] * 4
    assert allconv.macs("strided-b") > allconv.macs("strided-c") > allconv.macs("strided-a")
    one = runs[0]  # the same network on train45k (the lr-selection arm) trains on fewer images: it goes after
    held = dataclasses.replace(one, cfg=dataclasses.replace(one.cfg, train_split="train45k"))
    order = workqueue.longest_first([(held, "held"), (one, "full")], {"train": 500, "train45k": 450, "test": 100})
    assert [key for _, key in order] == ["full", "held"]


def test_fused_work_items_are_one_model_and_seed_at_its_lrs():
    """--fuse-lrs trains each (model, seed) at all its LRs as one item: never two seeds in one fused model (a seed
    is its own init and data order); without it every run is an item of its own."""
    argv = ["--preset", "smoke", "--models", "strided-a", "strided-b", "--lrs", "0.1", "0.05", "--seeds", "0", "1"]
    for fuse, items in ((True, 4), (False, 8)):
        runs = expand(parse_args(argv + (["--fuse-lrs"] if fuse else [])), "sha")
        got = workqueue.work_items([(r, r.key("sha")) for r in runs])
        assert len(got) == items and sum(map(len, got)) == 8
        assert all(len({(r.model, r.seed) for r, _ in item}) == 1 for item in got)


def test_a_claim_that_cannot_be_read_for_a_moment_is_still_held(tmp_path, monkeypatch):
    """An I/O error reading the claim at a heartbeat (a shared filesystem's hiccup) is not a takeover: a run of
    hours goes on rather than stop for another process that does not exist."""
    claim = claims.try_claim(tmp_path, "k", lease_s=3600)

    def hiccup(self):
        raise OSError(5, "Input/output error", str(self))

    monkeypatch.setattr(Path, "read_bytes", hiccup)
    assert claim.heartbeat() and workqueue.Checkpoints(0, [claim]).due(1, 3)


def test_the_eta_is_training_and_evaluation_work_scaled_by_macs_and_spread_over_the_processes():
    """run_all's ETA: each pending run's epochs x training images + its evaluated epochs x a third of the test
    images, in units of the measured model (the first run) by forward MACs, at the measured rate on each of `world`
    processes. The paper preset evaluates 44 of its 350 epochs: counting all 350 made its ETA ~6% long."""
    import allconv

    runs = expand(parse_args(["--preset", "smoke", "--models", "strided-a", "allcnn-c", "--lrs", "0.1"]), "sha")
    assert [(r.model, r.cfg.epochs) for r in runs] == [("strided-a", 2), ("allcnn-c", 2)]
    images = {"train": 300, "test": 90}  # 330 images' work an epoch
    eta = workqueue.eta_seconds([(r, r.key("sha")) for r in runs], images, rate=11.0, world=2)
    assert eta == pytest.approx(2 * 330 * (1 + allconv.macs("allcnn-c") / allconv.macs("strided-a")) / 22)
    (paper,) = expand(parse_args(["--models", "strided-a", "--lrs", "0.1"]), "sha")
    assert sum(paper.cfg.evaluates(n) for n in range(1, 351)) == 44  # every 10th, and the last 10 (350 is both)
    eta = workqueue.eta_seconds([(paper, "k")], images, rate=11.0, world=1)
    assert eta == pytest.approx((350 * 300 + 44 * 30) / 11)


def test_a_failed_write_names_the_file_and_what_to_do():
    """A full disk or a full quota (EDQUOT: a shared cluster's filesystem) asks for space; a read-only one, to
    make it writable; either way the same command is rerun."""
    import errno

    for code, hint in ((errno.ENOSPC, "free space"), (errno.EDQUOT, "free space"), (errno.EROFS, "make it writable")):
        line = workqueue.write_failed(OSError(code, os.strerror(code), "/out/runs/k.json"))
        assert line == (f"error: cannot write /out/runs/k.json: {os.strerror(code)}; earlier records and checkpoints "
                        f"are intact; {hint} and rerun the same command")


def test_cadences():
    paper = PRESETS["paper"]
    evaluated = [e for e in range(1, paper.epochs + 1) if paper.evaluates(e)]
    assert evaluated[:3] == [10, 20, 30] and evaluated[-11:] == [340, *range(341, 351)] and len(evaluated) == 44
    smoke = PRESETS["smoke"]
    assert all(smoke.evaluates(e) for e in range(1, smoke.epochs + 1)) and smoke.checkpoint_minutes == 0
    # the paper's last 10 epochs start on a multiple of 10 (340), so >= in place of > would pass unseen there
    odd = dataclasses.replace(paper, epochs=20, lr_drops=(), eval_every=7, eval_last=3)
    assert [e for e in range(1, 21) if odd.evaluates(e)] == [7, 14, 18, 19, 20]
    every_epoch = workqueue.Checkpoints(0, [])
    assert [every_epoch.due(e, 3) for e in (1, 2, 3)] == [True, True, False]
    assert not workqueue.Checkpoints(10, []).due(1, 3)


def test_a_checkpoint_every_n_minutes_counts_from_the_last_one(monkeypatch):
    """--checkpoint-minutes 2: the clock restarts at each checkpoint. Had it not, every epoch after the first
    checkpoint would save one (~11 MB for All-CNN-C, each epoch ~1 s on the H200)."""
    now = [0.0]
    monkeypatch.setattr(workqueue.time, "monotonic", lambda: now[0])
    every_2_min = workqueue.Checkpoints(2, [])
    due = []
    for now[0] in (60, 121, 150, 200, 242, 250):
        due.append(every_2_min.due(1, 350))
    assert due == [False, True, False, False, True, False]


def test_the_last_epoch_is_evaluated_whatever_eval_every_and_eval_last_say():
    """--eval-every N and --eval-last M add evaluations; the last epoch is always evaluated: the record's
    test_error_pct is its error (Table 3's number). With --eval-last 0 and an epoch count that is no multiple of
    --eval-every, the last epoch was left out once the `max(eval_last, 1)` went: a completed run without an error."""
    paper = PRESETS["paper"]
    for epochs, every in ((350, 20), (7, 3), (1, 10)):
        cfg = dataclasses.replace(paper, epochs=epochs, lr_drops=(), eval_every=every, eval_last=0)
        assert [e for e in range(1, epochs + 1) if cfg.evaluates(e)] == [
            *range(every, epochs, every), epochs], (epochs, every)


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


def test_a_launch_that_fits_the_machine_passes_the_check(monkeypatch):
    """One process per GPU (2 on 2), one process without a GPU, a CPU DDP launch (ACCELERATE_USE_CPU=1) and a rank of
    a two-machine launch (2 of WORLD_SIZE 4 on this machine's 2 GPUs) all start: the check counts this machine's
    processes against its GPUs, and refuses only more."""
    import torch

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for local, world in (("2", "2"), ("2", "4"), ("1", "1")):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        monkeypatch.setenv("WORLD_SIZE", world)
        process.check_launch()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    process.check_launch()  # LOCAL_WORLD_SIZE 1: plain python on a CPU
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    process.check_launch()


def test_fp16_on_a_cpu_is_refused_not_trained_in_fp32(fresh_accelerator):
    """Accelerate would make an fp16 Accelerator on a CPU and autocast nothing: the run would train in fp32 and be
    recorded as fp16. make_accelerator refuses it in one line; bf16 autocasts on a CPU and is made."""
    from bench.cli import UsageError

    with pytest.raises(UsageError, match=r"^--precision fp16 is not supported on cpu by Accelerate; use --precision "
                                         r"bf16 or no$"):
        process.make_accelerator("fp16", cpu=True)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # one mixed precision per process: a new one for the bf16 Accelerator
    assert process.make_accelerator("bf16", cpu=True).mixed_precision == "bf16"


def test_a_rank_under_a_launcher_asks_for_sigterm_when_the_launcher_dies():
    """die_with_launcher under a launcher (LOCAL_RANK set) asks Linux for SIGTERM, which run_all checkpoints on,
    when its parent dies (SIGKILL would lose the epoch); without a launcher it asks for nothing."""
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    script = ("import ctypes; from bench import process; process.die_with_launcher(); "
              "sig = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0); print(sig.value)")
    root = Path(__file__).resolve().parents[1]
    for env, want in (({"LOCAL_RANK": "0"}, 15), ({}, 0)):  # PR_GET_PDEATHSIG = 2; SIGTERM = 15
        base = {k: v for k, v in os.environ.items() if k != "LOCAL_RANK"}
        p = subprocess.run([sys.executable, "-c", script], cwd=root, env={**base, **env}, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0 and p.stdout.strip() == str(want), p.stderr


def test_a_rank_whose_launcher_is_pid_1_trains_and_one_whose_launcher_just_died_stops(monkeypatch):
    """A container whose entrypoint is the launcher (`accelerate launch` or torchrun as pid 1): every rank's parent
    is pid 1, and die_with_launcher took that for a dead launcher: each rank SIGTERMed itself before run_all's
    handler was set, exit 143 and nothing trained. A parent that changes while it asks is a launcher that died."""
    import ctypes
    import signal
    from types import SimpleNamespace

    killed, parents = [], []
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **kw: SimpleNamespace(prctl=lambda *args: 0))  # not this pytest's
    monkeypatch.setattr(os, "getppid", lambda: parents.pop(0))
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
    parents[:] = [1, 1]
    process.die_with_launcher()
    assert killed == []
    parents[:] = [4242, 1]  # reparented to init between the two looks
    process.die_with_launcher()
    assert killed == [(os.getpid(), signal.SIGTERM)]
