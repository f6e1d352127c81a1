"""Processes sharing one ledger through the grid's work queue (bench/workqueue.py, bench/claims.py; its claims alone:
test_claims.py): independent processes, a killed one's claim taken over, no orphan ranks after a launcher dies,
a full disk that stops the grid without recording a failed run, two machines filling one ledger.

The process tests run the smoke preset on conftest's 10-images-per-class data, one epoch of the smallest models."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import claims, results, workqueue
from bench.cli import parse_args
from bench.config import expand

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
GRID = ("--models", "strided-b", "strided-c", "strided-a", "--lrs", "0.25", "0.1", "0.05", "0.01")  # 12 runs


@pytest.fixture(scope="module")
def data(smoke_data_dir, jpeg_tarball, tmp_path_factory):
    """(data_dir, source): a copy of the session's prepared data, which processes here share at the same time."""
    copy = tmp_path_factory.mktemp("queue-data") / "data"
    shutil.copytree(smoke_data_dir, copy, ignore=shutil.ignore_patterns(".*.tmp"))  # not another's half-written file
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


def held_claims(out) -> dict[str, dict]:
    """The live claim files: run key -> content."""
    found = {}
    for p in claims.claims_dir(out).glob("*.json"):
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
    return [line.split() for line in (claims.claims_dir(out) / "log.txt").read_text().splitlines()]


def state(pid: int) -> str:
    """The process's state letter from /proc (R, S, T: stopped, Z: zombie), "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def running(pid: int) -> bool:
    return state(pid) not in ("", "Z")


# ---- processes sharing one ledger ----

def test_a_record_whose_config_does_not_hash_to_its_key_is_not_that_run(tmp_path, capsys):
    """A record copied under another run's key (allcnn-c at LR 0.25 here) counted as that run: run_all would never
    train it. It is named once and not counted, and stays readable (the reports read it); the campaign's records,
    which run_all wrote, hash to their keys."""
    campaign = ROOT / "reports" / "measured" / "campaign" / "runs"
    shutil.copytree(campaign, tmp_path / "runs")
    real = {p.stem for p in campaign.glob("*.json")}
    forged = "bc61a10cbc461ec0"
    record = json.loads((campaign / "489234371f2401e9.json").read_text())
    (tmp_path / "runs" / f"{forged}.json").write_text(json.dumps({**record, "run_key": forged}))
    assert workqueue.done_keys(tmp_path) == real and len(real) == 2
    assert workqueue.done_keys(tmp_path) == real  # a second look does not name it again (one line, below)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{forged}.json: its config does not hash to its run key" in err, err
    assert {r["run_key"] for r in results.read_records(tmp_path)} == real | {forged}


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_a_record_not_of_its_run_is_set_aside_when_the_run_is_claimed(tmp_path, capsys, status):
    """Such a record (above) was overwritten by the run's own record once run_all had trained the run, though it
    was said to stay in the ledger. The process that claims the run sets it aside first, naming it; a failed one
    too (it was replaced: a failed run's record is, but this one is another run's)."""
    forged = "bc61a10cbc461ec0"
    record = json.loads((ROOT / "reports" / "measured" / "campaign" / "runs" / "489234371f2401e9.json").read_text())
    path = results.runs_dir(tmp_path) / f"{forged}.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**record, "run_key": forged, "status": status}))
    evidence = path.read_bytes()
    assert workqueue.done_keys(tmp_path) == set() and path.is_file()  # counting the ledger moves nothing
    (members,) = workqueue.claimed([[("run", forged)]], tmp_path, lease_s=3600)
    assert [key for _, key, _ in members] == [forged] and not path.exists()
    assert (path.parent / ".invalid" / path.name).read_bytes() == evidence
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 + (status == "completed") and (status != "completed" or "not counted as that run" in err[0])
    assert str(path) in err[-1] and \
        f"moved to {path.parent / '.invalid' / path.name} before the run is trained" in err[-1], err


@pytest.mark.parametrize("change", [{"epochs_completed": 3}, {"error": "RuntimeError: CUDA out of memory"},
                                    {"status": "diverged"}, {"history": []}])
def test_a_final_status_its_record_belies_does_not_end_the_run(tmp_path, capsys, change):
    """A "completed" record of 3 of its 350 epochs (or one with an error; a diverged one saying no why) ended its
    run for good: run_all never trained it again, while the reports called it unfinished and bench.ingest refused
    it. Now it is not counted as done (named once) and is set aside, as evidence, when the run is claimed. So is a
    "completed" record of all its epochs whose history holds none of them (no curve, no last errors to report)."""
    key = "489234371f2401e9"
    record = json.loads((ROOT / "reports" / "measured" / "campaign" / "runs" / f"{key}.json").read_text())
    record.update(change)
    record["history"] = record["history"][:record["epochs_completed"]]
    path = results.runs_dir(tmp_path) / f"{key}.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    assert results.read_records(tmp_path) == [record]  # valid by the schema: only its status is belied
    assert workqueue.done_keys(tmp_path) == set()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{path}: status {record['status']}, but" in err[0] and "not counted" in err[0], err
    (members,) = workqueue.claimed([[("run", key)]], tmp_path, lease_s=3600)
    assert [k for _, k, _ in members] == [key] and not path.exists()
    assert json.loads((path.parent / ".invalid" / path.name).read_text()) == record


def test_a_run_recorded_meanwhile_is_skipped_and_each_claim_is_released_when_the_next_is_asked_for(tmp_path):
    """run_all lists the ledger once, at its start: a run another process has recorded since is skipped when its turn
    comes, leaving no claim (else it is trained twice and its record replaced). A run's claim is released when the
    loop asks for the next item, or is left (SIGTERM, a failed write): a process holds only the run it trains."""
    recorded = "489234371f2401e9"
    results.runs_dir(tmp_path).mkdir()
    shutil.copy(ROOT / "reports" / "measured" / "campaign" / "runs" / f"{recorded}.json", results.runs_dir(tmp_path))
    loop = workqueue.claimed([[("run", recorded)], [("run", "a")], [("run", "b")]], tmp_path, lease_s=3600)
    ((_, key, first),) = next(loop)
    assert key == "a" and first.held() and set(held_claims(tmp_path)) == {"a"}
    ((_, key, second),) = next(loop)
    assert key == "b" and second.held() and set(held_claims(tmp_path)) == {"b"}
    loop.close()  # the loop is left
    assert held_claims(tmp_path) == {} and not second.held()
    assert [line[3:] for line in log_lines(tmp_path)] == [["claimed", "a"], ["claimed", "b"]]


def test_a_failed_record_of_its_own_run_is_left_for_the_runs_new_record(tmp_path, capsys):
    """A run that failed is trained again and its new record replaces the failed one: it is its run's, so claiming
    the run neither sets it aside as another's nor names it."""
    key = "489234371f2401e9"
    record = json.loads((ROOT / "reports" / "measured" / "campaign" / "runs" / f"{key}.json").read_text())
    path = results.runs_dir(tmp_path) / f"{key}.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**record, "status": "failed", "error": "RuntimeError: CUDA error: unknown error"}))
    (members,) = workqueue.claimed([[("run", key)]], tmp_path, lease_s=3600)
    assert [k for _, k, _ in members] == [key] and path.is_file() and not (path.parent / ".invalid").exists()
    assert capsys.readouterr().err == ""


def test_three_independent_processes_share_the_grid_and_take_over_a_killed_ones_claim(data, tmp_path):
    """12 runs, 3 plain processes started one after another; the first is SIGKILLed while it holds a claim and
    started again. Every run is recorded once, the dead claim is taken over, and claims go out longest first."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    first = start(args(data, out, *GRID), log)
    others = [first]  # killed at the end if a check fails, so they do not train on beside later tests
    try:
        wait_for(lambda: any(c["pid"] == first.pid for c in held_claims(out).values()), what="a first claim")
        others = [start(args(data, out, *GRID), log)]
        wait_for(lambda: any(c["pid"] == others[0].pid for c in held_claims(out).values()) or others[0].poll() is not None,
                 what="a second claim")
        deadline, held = time.monotonic() + 180, []
        while first.poll() is None and time.monotonic() < deadline:  # freeze the first holding a claim, kill it
            first.send_signal(signal.SIGSTOP)
            wait_for(lambda: state(first.pid) in ("T", "Z", ""), timeout=10, what="the first to stop")
            # a claim whose run is already recorded is one the process was about to release: not a run it holds
            held = [k for k, c in held_claims(out).items()
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
    finally:
        for p in [first, *others]:
            p.kill()

    records = results.read_records(out)
    runs = expand(parse_args(args(data, out, *GRID)), records[0]["data"]["source_sha256"])
    assert sorted(r["run_key"] for r in records) == sorted(r.key(records[0]["data"]["source_sha256"]) for r in runs)
    assert all(r["status"] == "completed" for r in records)
    assert sorted(p.name for p in claims.claims_dir(out).iterdir()) == [".lock", "log.txt"]  # all released
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
    assert results.read_records(out) == [] and held_claims(out) == {}
    assert len(list((out / "checkpoints").glob("*.pt"))) == 1
    monkeypatch.setattr(results.os, "fsync", real_fsync)
    assert run_all.main(argv) == 0
    (record,) = results.read_records(out)
    assert record["status"] == "completed" and not list((out / "checkpoints").glob("*.pt"))


def test_sigterm_between_runs_says_so_and_loses_nothing(data, tmp_path, monkeypatch, capsys, fresh_accelerator):
    """A stop requested just as a run is recorded (SIGTERM's handler sets run_all.STOP) ends the grid before the next
    run with exit 143 and one line; nothing to checkpoint, and the same command trains the rest."""
    from bench import run_all
    from bench.progress import Progress

    recorded = Progress.run_done

    def recorded_then_sigterm(self, *a):
        recorded(self, *a)
        run_all.STOP["requested"] = True

    monkeypatch.setitem(run_all.STOP, "requested", False)  # and back to False after the test
    monkeypatch.setattr(Progress, "run_done", recorded_then_sigterm)
    argv = args(data, tmp_path / "out", "--models", "strided-a", "--lrs", "0.05", "0.01")
    assert run_all.main(argv) == 143
    assert "stopped by SIGTERM: between runs, nothing lost; rerun the same command" in capsys.readouterr().out
    assert len(results.read_records(tmp_path / "out")) == 1 and not list((tmp_path / "out").glob("checkpoints/*"))
    monkeypatch.setattr(Progress, "run_done", recorded)
    run_all.STOP["requested"] = False
    assert run_all.main(argv) == 0 and len(results.read_records(tmp_path / "out")) == 2


def test_a_run_whose_claim_was_taken_over_is_left_to_its_new_owner(data, tmp_path, monkeypatch, capsys,
                                                                    fresh_accelerator):
    """A process stopped past the lease (a suspended job) finds at its next epoch's end that another host took its
    claim: it stops that run with one warning, writes neither a checkpoint nor a record for it (the new owner's
    would be overwritten), leaves the new owner's claim, and goes on to the next run."""
    from bench import run_all

    due, taken = workqueue.Checkpoints.due, []

    def taken_over_once(self, *a):
        if not taken:
            for claim in self.claims:
                claim.path.write_text(json.dumps({"host": "other-host", "pid": 1, "pid_start": None}))
                taken.append(claim.path)
        return due(self, *a)

    monkeypatch.setattr(workqueue.Checkpoints, "due", taken_over_once)
    out = tmp_path / "out"
    assert run_all.main(args(data, out, "--models", "strided-a", "--lrs", "0.05", "0.1", "--epochs", "2")) == 0
    assert "taken over by another process" in capsys.readouterr().err
    (record,) = results.read_records(out)
    assert record["run_key"] != taken[0].stem and record["status"] == "completed"
    assert not (out / "checkpoints" / f"{taken[0].stem}.pt").exists()
    assert json.loads(taken[0].read_text())["host"] == "other-host"


def test_a_run_that_ends_in_the_epoch_its_claim_was_taken_records_nothing(data, tmp_path, monkeypatch, capsys,
                                                                          fresh_accelerator):
    """The claim is checked before an epoch's end writes anything: a run that diverges (or stalls) in the epoch
    during which another host took its claim leaves the record to the new owner, as a run still training does."""
    from bench import engine, run_all

    epoch, taken = engine.train_one_epoch, []

    def taken_during_the_epoch(*a, **kw):
        es = epoch(*a, **kw)
        for path in claims.claims_dir(tmp_path / "out").glob("*.json"):
            path.write_text(json.dumps({"host": "other-host", "pid": 1, "pid_start": None}))
            taken.append(path)
        return es

    monkeypatch.setattr(engine, "train_one_epoch", taken_during_the_epoch)
    out = tmp_path / "out"
    assert run_all.main(args(data, out, "--models", "strided-a", "--lrs", "1e9")) == 0
    assert "taken over by another process" in capsys.readouterr().err
    assert len(taken) == 1 and results.read_records(out) == []
    assert json.loads(taken[0].read_text())["host"] == "other-host"


@pytest.mark.parametrize("fused", [False, True])
def test_sigterm_mid_epoch_after_the_claim_was_taken_checkpoints_nothing(data, tmp_path, monkeypatch, capsys,
                                                                         fresh_accelerator, fused):
    """SIGTERM mid-epoch, in the epoch during which another host took the claim(s): the checkpoint of where the run
    stopped would overwrite the new owner's, so none is written (alone, and every run of a fused group)."""
    from bench import engine, run_all

    epoch, taken = engine.train_one_epoch, []

    def taken_then_terminated(*a, **kw):
        for path in claims.claims_dir(tmp_path / "out").glob("*.json"):
            path.write_text(json.dumps({"host": "other-host", "pid": 1, "pid_start": None}))
            taken.append(path)
        run_all.STOP["requested"] = True  # as the SIGTERM handler does
        return epoch(*a, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", taken_then_terminated)
    out = tmp_path / "out"
    try:
        code = run_all.main(args(data, out, "--models", "strided-a", "--lrs", "0.05", "0.01", "--epochs", "2",
                                 *(["--fuse-lrs"] if fused else [])))
    finally:
        run_all.STOP["requested"] = False
    assert code == 143 and "taken over by another process" in capsys.readouterr().err
    assert len(taken) == (2 if fused else 1) and results.read_records(out) == []
    assert not list((out / "checkpoints").glob("*.pt"))
    assert all(json.loads(p.read_text())["host"] == "other-host" for p in taken)


@pytest.mark.parametrize("fused", [False, True])
def test_a_run_that_fails_after_its_claim_was_taken_records_nothing(data, tmp_path, monkeypatch, capsys,
                                                                    fresh_accelerator, fused):
    """An epoch that raises (a loader worker dead after a suspension) after another host took the claims: the runs
    are the new owner's, so they are not recorded "failed" here, where that would overwrite its records."""
    from bench import engine, run_all

    taken = []

    def taken_then_crash(*a, **kw):
        for path in claims.claims_dir(tmp_path / "out").glob("*.json"):
            path.write_text(json.dumps({"host": "other-host", "pid": 1, "pid_start": None}))
            taken.append(path)
        raise RuntimeError("a loader worker died")

    monkeypatch.setattr(engine, "train_one_epoch", taken_then_crash)
    out = tmp_path / "out"
    assert run_all.main(args(data, out, "--models", "strided-a", "--lrs", "0.05", "0.01", "--epochs", "2",
                             *(["--fuse-lrs"] if fused else []))) == 0
    assert "taken over by another process" in capsys.readouterr().err
    assert len(taken) >= 1 and results.read_records(out) == []
    assert all(json.loads(p.read_text())["host"] == "other-host" for p in taken)


def launcher(port: int, nproc: int = 2, machines: int = 1, rank: int = 0) -> list[str]:
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", str(machines),
            "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no"]


def test_killing_the_launcher_leaves_no_rank_running_and_a_rerun_resumes(data, tmp_path, free_port, capsys,
                                                                          fresh_accelerator):
    from bench import run_all

    out, log = tmp_path / "out", tmp_path / "log.txt"
    # 10 epochs: rank 1 starts training while rank 0 still measures the rate; both must still be training when killed
    grid = ("--models", "strided-a", "--lrs", "0.1", "0.05", "--mode", "grid", "--epochs", "10")
    proc = start(args(data, out, *grid), log, launcher(free_port), ACCELERATE_USE_CPU="1")
    ranks = wait_for(lambda: len(held_claims(out)) == 2 and [c["pid"] for c in held_claims(out).values()],
                     what="both ranks training")
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(running(pid) for pid in ranks), timeout=30, what="the ranks to stop")
    assert held_claims(out) == {}, "a rank that stopped on SIGTERM releases its claim"
    assert len(list((out / "checkpoints").glob("*.pt"))) == 2, log.read_text()[-3000:]
    capsys.readouterr()
    assert run_all.main(args(data, out, *grid)) == 0  # the rerun: in this process (~4 CPU s of imports less)
    err = capsys.readouterr().err
    assert "not resumed" not in err, err[-3000:]
    records = results.read_records(out)
    assert len(records) == 2 and all(r["status"] == "completed" and r["epochs_completed"] == 10 for r in records)
    assert not list((out / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("mode", ["grid", "ddp"])
def test_two_machines_fill_the_same_ledger_as_one_process(data, tmp_path, free_port, mode):
    """Two `accelerate launch` invocations, machine ranks 0 and 1 on the loopback, one process each (gloo)."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    grid = ("--models", "strided-a", "--lrs", "0.05", "0.01", "--mode", mode)
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
