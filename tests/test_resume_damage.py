"""Resuming stays honest: a checkpoint that loads but disagrees with itself is set aside, not trusted; one saved in
another memory layout resumes; a full disk while claiming a run is one line and exit 1, not a run skipped; a run
at chance in its last epoch has completed, not stalled; a killed writer's temporary file does not stay forever."""
from __future__ import annotations

import dataclasses
import errno
import os
import re

import pytest
import torch

from bench import checkpoint, claims, files, results, workqueue
from bench.config import PRESETS
from bench.run_state import RunState
from bench.runs import stop_reason
from tests.test_untrusted import Acc, assert_set_aside, build, history, session


def saved(path, layout=torch.contiguous_format, **blob):
    """A real checkpoint of a small conv net after two SGD steps (epoch 2, its two history entries), with `blob`
    replacing parts of it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    net = net.to(memory_format=layout)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        net(torch.ones(2, 3, 8, 8).contiguous(memory_format=layout)).sum().backward()
        opt.step()
    checkpoint.save_checkpoint(path, Acc(), net, opt, epoch=2, epoch_state=None,
                               history=history(2), extra={"wall_s": 3.0}, distributed=False)
    if blob:
        torch.save({**torch.load(path, weights_only=True), **blob}, path)
    return net, opt


ONE, TWO = history(2)


@pytest.mark.parametrize("damage", [
    {"epoch": 999}, {"history": [ONE]}, {"extra": []},
    {"epoch": True, "history": [ONE]},  # a bool is an int to Python
    {"history": [ONE, dict(TWO, epoch=float("inf"))]}, {"history": [ONE, dict(TWO, loss=10 ** 400)]},
    {"history": [TWO, ONE]}, {"history": [ONE, dict(TWO, loss="low")]},
    {"history": [{"epoch": 1}, {"epoch": 2}]}, {"history": [ONE, {k: v for k, v in TWO.items() if k != "lr"}]},
])
def test_a_checkpoint_that_disagrees_with_itself_is_set_aside(damage, tmp_path, capsys):
    """A tampered epoch counter once made a 6-epoch run 'completed' after 2 epochs, its checkpoint then deleted.
    History entries without the keys a record is made from (test_error_pct...) were resumed, and the run failed
    with a KeyError at its end, on every rerun."""
    path = tmp_path / "ckpt.pt"
    trained, _ = build()
    torch.save({"model": trained.state_dict(), "optimizer": torch.optim.SGD(trained.parameters(), 0.1).state_dict(),
                "rng": [checkpoint.rng_state()], "epoch": 2, "history": [ONE, TWO],
                "extra": {}, **damage}, path)
    net, opt = build()
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1) is None
    assert_set_aside(path, capsys, fresh, net)



def test_momentum_of_other_shapes_than_the_runs_parameters_is_set_aside(tmp_path, capsys):
    """The model fits, its momentum does not (a damaged or foreign checkpoint): resumed, the run's first step
    failed ("size of tensor a must match"), the checkpoint kept for the next rerun to fail on again."""
    path = tmp_path / "ckpt.pt"
    net, opt = saved(path)
    blob = torch.load(path, weights_only=True)
    blob["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(5)
    torch.save(blob, path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1) is None
    assert_set_aside(path, capsys, before, net)

def test_a_checkpoint_named_for_another_run_is_set_aside(tmp_path, capsys):
    """Checkpoints are named by run key, and nothing else told a renamed one of the same network at the same LR
    apart (another seed or ablation arm: same shapes, same LRs): it resumed as the other run, whose record then
    described training it never had. Each file now carries its run's key; bench.plan and the reports refuse it too.
    A file written before it carried one (the committed campaign's) still resumes."""
    mine = tmp_path / "0123456789abcdef.pt"
    net, opt = saved(mine)
    assert torch.load(mine, weights_only=True)["extra"]["run_key"] == "0123456789abcdef"
    assert checkpoint.progress(mine)["epoch"] == 2
    theirs = tmp_path / "fedcba9876543210.pt"
    theirs.write_bytes(mine.read_bytes())
    with pytest.raises(ValueError, match="malformed checkpoint: it is the checkpoint of run '0123456789abcdef', not "
                                         "of 'fedcba9876543210'"):
        checkpoint.progress(theirs)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert checkpoint.load_checkpoint(theirs, Acc(), net, opt, rank=0, world=1) is None
    assert_set_aside(theirs, capsys, before, net)
    assert checkpoint.load_checkpoint(mine, Acc(), net, opt, rank=0, world=1)["epoch"] == 2
    blob = torch.load(mine, weights_only=True)
    del blob["extra"]["run_key"]
    torch.save(blob, theirs)
    assert checkpoint.load_checkpoint(theirs, Acc(), net, opt, rank=0, world=1)["epoch"] == 2


def quantized():
    return torch.quantize_per_tensor(torch.tensor(4.0), 1.0, 0, torch.qint8)


PART = {"step": 2, "loss_sum": torch.tensor(1.5), "correct": torch.tensor(4), "seen": torch.tensor(9),
        "train_seconds": 1.0, "steady_seconds": 0.5, "steady_images": 9}  # as engine.EpochState.to_dict() saves it


@pytest.mark.parametrize("damage", [{"loss_sum": 1.5}, {"step": -1}, {"seen": torch.tensor(-3)},
                                    {"correct": torch.tensor(4.0)}, {"loss_sum": torch.ones(2)}, {"seen": quantized()},
                                    {"train_seconds": float("nan")}, {"steady_images": True}, {"more": 1}])
def test_a_malformed_part_done_epoch_is_set_aside(damage, tmp_path, capsys):
    """In DDP mode rank 0 alone resumes a part-done epoch's sums: a bad value there (a float loss sum) failed rank 0
    only, and the other ranks waited for it forever. It is now refused like any damage, on every rank alike."""
    path = tmp_path / "ckpt.pt"
    net, opt = saved(path, epoch_state=PART)
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1, epoch_state=dict)["epoch_state"] == PART
    net, opt = saved(path, epoch_state={**PART, **damage})
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1) is None
    assert_set_aside(path, capsys, fresh, net)


@pytest.mark.parametrize("damage", [{"seen": torch.tensor(9).to("meta")}, {"correct": torch.tensor(4).to_sparse()},
                                    {"correct": quantized()}])
def test_a_part_done_epoch_of_no_cpu_dense_tensors_is_malformed(damage, tmp_path, capsys):
    """A meta tensor's item() raised RuntimeError, which crashed plan and the reports (only ValueError was caught);
    a sparse or quantized one passed. Readers now say "malformed checkpoint", run_all sets it aside."""
    path = tmp_path / "ckpt.pt"
    net, opt = saved(path, epoch_state={**PART, **damage})
    with pytest.raises(ValueError, match="^malformed checkpoint: its part-done epoch is malformed$"):
        checkpoint.progress(path)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1) is None
    assert_set_aside(path, capsys, fresh, net)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "folder", "dev-zero", "dangling", "too big"])
def test_only_a_regular_file_of_sane_size_is_read_as_a_checkpoint(kind, tmp_path, capsys, monkeypatch):
    """A FIFO named like a checkpoint hung plan and the reports (read_bytes waits for a writer), and run_all never
    set it (or a link to /dev/zero, or a folder) aside. Now each is "unreadable checkpoint" and set aside."""
    path = tmp_path / "ckpt.pt"
    net, opt = saved(path)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dangling":
        path.symlink_to(tmp_path / "gone.pt")
    else:
        saved(path)
        monkeypatch.setattr(checkpoint, "MAX_BYTES", path.stat().st_size - 1)
    why = "(larger than" if kind == "too big" else "(No such file" if kind == "dangling" else "(not a regular file)"
    if kind != "dev-zero":  # which read_bytes reads until memory runs out
        with pytest.raises(ValueError, match="^unreadable checkpoint " + re.escape(why)):
            checkpoint.progress(path)
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {path} not resumed, moved to" in err and why in err, err
    assert not os.path.lexists(path) and os.path.lexists(tmp_path / ".invalid" / "ckpt.pt")


def test_timings_a_checkpoint_lacks_start_at_zero(tmp_path):
    """Timings missing from a checkpoint (a KeyError once failed the run on every rerun) start at 0."""
    path = tmp_path / "ckpt.pt"
    net, opt = saved(path)  # its timings: wall_s only
    state = RunState.resume(path, Acc(), net, opt, rank=0, world=1)
    assert state.epoch == 2 and state.timings == {"steady_s": 0.0, "steady_img": 0, "eval_s": 0.0, "eval_img": 0,
                                                  "wall_s": 3.0}


def test_a_checkpoint_carries_the_wall_time_of_every_session(tmp_path):
    """RunState.save stores the run's wall time so far, its earlier sessions' included, which the record's
    wall_time_s becomes: a resumed run adds this session's time to the checkpoint's, not restarting it."""
    path = tmp_path / "ckpt.pt"
    net, opt = saved(path)  # 3 s in earlier sessions
    state = RunState.resume(path, Acc(), net, opt, rank=0, world=1)
    state.started -= 2.0  # this session has run for 2 s
    state.save(Acc(), net, opt, 2, distributed=False)
    assert checkpoint.read(path)[1]["extra"]["wall_s"] == pytest.approx(5.0, abs=0.5)


@pytest.mark.parametrize("extra", [{"wall_s": float("nan")}, {"wall_s": -1.0}, {"eval_s": float("inf")},
                                   {"steady_s": True}, {"eval_img": 10 ** 400}, {"wall_s": 2e12},
                                   {"steady_img": 10 ** 6, "steady_s": 1e-9}])  # 1e15 images/s
def test_timings_the_record_would_refuse_set_the_checkpoint_aside(extra, tmp_path, capsys):
    """A checkpoint's wall_s of NaN was resumed: the run trained to its end, then its record was refused
    ("wall_time_s is nan") with a traceback, no record, and the checkpoint kept, so every rerun did the same."""
    path = tmp_path / "ckpt.pt"
    net, opt = saved(path, extra=extra)
    with pytest.raises(ValueError, match="^malformed checkpoint: its timings"):
        checkpoint.progress(path)
    state = RunState.resume(path, Acc(), net, opt, rank=0, world=1)
    assert state.epoch == 0 and state.history == [] and state.timings["wall_s"] == 0.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {path} not resumed, moved to" in err and "timings" in err, err
    assert not os.path.lexists(path) and (tmp_path / ".invalid" / "ckpt.pt").is_file()


def test_a_resumed_run_carries_its_sessions_and_adds_its_own(tmp_path):
    """The sessions a checkpoint carries come first, this one after them from the epoch it resumes (1-based); a
    checkpoint written before sessions were kept starts the list with one of unknown fields; a fresh run's list is
    its own session alone; the list travels in the next checkpoint (readable with weights_only)."""
    path, mine = tmp_path / "ckpt.pt", {k: v for k, v in session(channels_last=False).items() if k != "from_epoch"}
    net, opt = saved(path, extra={"wall_s": 3.0, "sessions": [session()]})
    state = RunState.resume(path, Acc(), net, opt, rank=0, world=1, session=mine)
    assert state.sessions == [session(), dict(mine, from_epoch=3)]
    state.save(Acc(), net, opt, 2, distributed=False)
    assert checkpoint.read(path)[1]["extra"]["sessions"] == state.sessions
    net, opt = saved(path)  # no sessions: an older writer's
    unknown = RunState.resume(path, Acc(), net, opt, rank=0, world=1, session=mine).sessions[0]
    assert unknown["from_epoch"] == 1 and set(unknown.values()) == {1, None} and set(unknown) == set(session())
    path.unlink()
    assert RunState.resume(path, Acc(), net, opt, rank=0, world=1, session=mine).sessions == [
        dict(mine, from_epoch=1)]


@pytest.mark.parametrize("sessions", [
    "grid", [], [session(from_epoch=0)], [session(from_epoch=4)], [session(from_epoch=2), session()],
    [session(from_epoch=True)], [{"from_epoch": 1}], [session(git_commit="a" * 10_000)],
    [session(versions={"torch": 2})], [session(device_name=torch.ones(3))], [session(world_size=0)],
    [session(channels_last="yes")], [session()] * 1001, [session(extra=float("nan"))],
])
def test_malformed_sessions_set_the_checkpoint_aside(sessions, tmp_path, capsys):
    """A checkpoint's sessions are outside input: one it cannot vouch for (a wrong type, an epoch before 1 or past
    the one it resumes, out of order, a string of any length) makes it malformed, as other damage does."""
    path = tmp_path / "ckpt.pt"
    net, opt = saved(path, extra={"wall_s": 3.0, "sessions": sessions})
    with pytest.raises(ValueError, match="^malformed checkpoint: its sessions"):
        checkpoint.progress(path)
    state = RunState.resume(path, Acc(), net, opt, rank=0, world=1, session=session())
    assert state.epoch == 0 and state.history == [] and state.sessions == [session()]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {path} not resumed, moved to" in err and "sessions" in err, err
    assert not os.path.lexists(path) and (tmp_path / ".invalid" / "ckpt.pt").is_file()


@pytest.mark.parametrize("saved_in, resumed_in", [(torch.channels_last, torch.contiguous_format),
                                                  (torch.contiguous_format, torch.channels_last)])
def test_a_checkpoint_resumes_in_the_other_memory_layout(saved_in, resumed_in, tmp_path):
    """channels_last is not part of a run's key, so a run may resume in the other layout: the momentum buffers
    take the parameters' strides (fused SGD on CUDA refuses others), with the same values."""
    path = tmp_path / "ckpt.pt"
    _, old = saved(path, saved_in)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    net = net.to(memory_format=resumed_in)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1)["epoch"] == 2
    conv = net[0].weight
    assert opt.state[conv]["momentum_buffer"].stride() == conv.stride() != old.state[old.param_groups[0]["params"][
        0]]["momentum_buffer"].stride()
    assert torch.equal(opt.state[conv]["momentum_buffer"], old.state[old.param_groups[0]["params"][0]][
        "momentum_buffer"])


def test_a_full_disk_while_claiming_leaves_no_claim(tmp_path, monkeypatch):
    """ENOSPC writing a claim: a WriteError naming the claim, and no empty claim file left to hold the run."""
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claims.os, "fsync", full)
    with pytest.raises(files.WriteError) as e:
        claims.try_claim(tmp_path, "0123456789abcdef", lease_s=60)
    assert e.value.errno == errno.ENOSPC and e.value.filename.endswith("claims/0123456789abcdef.json")
    assert not (claims.claims_dir(tmp_path) / "0123456789abcdef.json").exists()


def test_run_all_stops_in_one_line_when_a_claim_cannot_be_written(smoke_data_dir, jpeg_tarball, tmp_path, capsys,
                                                                  monkeypatch, fresh_accelerator):
    from bench.run_all import main

    def full(out, key, lease_s):
        raise files.WriteError(errno.ENOSPC, "No space left on device", f"{out}/claims/{key}.json")

    monkeypatch.setattr(workqueue, "try_claim", full)
    out = tmp_path / "out"
    assert main(["--preset", "smoke", "--source", str(jpeg_tarball), "--data-dir", str(smoke_data_dir), "--out",
                 str(out), "--no-progress", "--models", "strided-a", "--lrs", "0.05"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write ") and "free space and rerun" in err and err.count("\n") == 0, err
    assert results.read_records(out) == []


def test_a_disk_full_while_preparing_the_data_is_exit_1(tmp_path, capsys, monkeypatch, fresh_accelerator,
                                                        jpeg_tarball):
    from bench.run_all import main
    from loaders import prepare

    def full(*a, **kw):
        raise files.WriteError(errno.ENOSPC, "No space left on device", str(tmp_path / "data" / "train.npz"))

    monkeypatch.setattr(prepare, "prepare_cifar10", full)
    assert main(["--preset", "smoke", "--source", str(jpeg_tarball), "--data-dir", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write {tmp_path / 'data' / 'train.npz'}") and "\n" not in err, err


def test_a_run_at_chance_in_its_last_epoch_has_completed():
    cfg = dataclasses.replace(PRESETS["smoke"], stall_after=1, epochs=2)
    at_chance = {"loss": 2.3, "train_acc_pct": 10.0}
    assert stop_reason(at_chance, 1, cfg)[0] == "stalled"
    assert stop_reason(at_chance, 2, cfg) is None  # a stalled record here once became "completed" on rerun


def test_a_loss_that_is_not_finite_is_diverged_inf_as_nan():
    """Only a loss that is not finite stops a run (bench.runs.stop_reason), +inf as NaN: an epoch's loss is a float32
    sum of its steps' (engine.EpochState), which overflows to inf while each step's is still finite (bf16 and fp32
    reach 3.4e38). Taken as finite, such an epoch went unevaluated and the run trained on, to be recorded "completed"
    without an error. A large finite loss (a diverging run's may be 1e35, bench/schema.py) is no stop."""
    import math

    cfg = PRESETS["smoke"]
    overflowed = (torch.tensor(3e38) + torch.tensor(3e38)).item()  # two steps' summed losses
    assert overflowed == math.inf
    for loss in (overflowed, -math.inf, math.nan):
        assert stop_reason({"loss": loss, "train_acc_pct": 50.0}, 1, cfg) == ("diverged", f"loss is {loss} in epoch 1")
    assert stop_reason({"loss": 1e35, "train_acc_pct": 50.0}, 1, cfg) is None



def test_a_killed_writers_temporary_file_goes_with_the_next_write(tmp_path):
    """SIGKILL during a checkpoint write leaves a checkpoint-sized temporary file: the next write of that file
    removes it, but not the temporary file of a live writer, of another host (whose pids mean nothing here), or
    one a writer holds locked under a pid this process cannot see (another pid namespace of the same host name);
    a name that is no pid is left alone without failing the write."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "run.pt"
    kill = ("import os, sys; from bench.files import atomic_write; "
            "atomic_write(sys.argv[1], lambda f: (f.write(b'x' * 4096), f.flush(), os.kill(os.getpid(), 9)))")
    p = subprocess.run([sys.executable, "-c", kill, str(path)], cwd=workqueue.Path(__file__).parents[1])
    assert p.returncode == -signal.SIGKILL
    (orphan,) = tmp_path.glob(".run.pt.*.tmp")
    assert orphan.stat().st_size == 4096 and not path.exists()
    dead = orphan.name.split(".")[-2]  # the killed writer's pid
    unseen = 4194399  # above Linux's largest pid_max: never running here
    assert not claims.alive(unseen, None)
    locked = tmp_path / f".run.pt.{claims.HOST}.{unseen}.tmp"
    hold = "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); " \
           "time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", hold, str(locked)], stdout=subprocess.PIPE) as live:
        assert live.stdout.readline() == b"1\n"  # holding the lock
        kept = [tmp_path / f".run.pt.{claims.HOST}.{live.pid}.tmp", tmp_path / f".run.pt.elsewhere.{dead}.tmp",
                tmp_path / f".run.pt.{claims.HOST}.{'9' * 30}.tmp"]
        for k in kept:
            k.write_bytes(b"half")
        kept.append(locked)
        files.atomic_write(path, lambda f: f.write(b"whole"))
        live.kill()
    assert path.read_bytes() == b"whole" and not orphan.exists()
    assert all(k.read_bytes() == b"half" for k in kept[:-1]) and locked.exists()
    assert sorted(tmp_path.glob(".*.tmp")) == sorted(kept)


def test_a_link_planted_under_the_temporary_name_is_not_written_through(tmp_path):
    """atomic_write opened its temporary file with open(tmp, "wb"), which follows a link planted under that name:
    the link's target was overwritten, and the link itself renamed over the file written."""
    victim, path = tmp_path / "victim", tmp_path / "run.pt"
    victim.write_bytes(b"keep")
    (tmp_path / f".run.pt.{claims.HOST}.{os.getpid()}.tmp").symlink_to(victim)
    files.atomic_write(path, lambda f: f.write(b"whole"))
    assert victim.read_bytes() == b"keep"
    assert not path.is_symlink() and path.read_bytes() == b"whole" and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.timeout(20)
def test_a_fifo_named_like_a_dead_writers_temporary_file_is_not_waited_on(tmp_path):
    """The clean-up of a killed writer's temporary files opened each one to lock it: a FIFO under such a name
    blocked that open, and with it every later write of the file, forever."""
    unseen = 4194399  # above Linux's largest pid_max: never running here
    assert not claims.alive(unseen, None)
    fifo = tmp_path / f".run.pt.{claims.HOST}.{unseen}.tmp"
    os.mkfifo(fifo)
    files.atomic_write(tmp_path / "run.pt", lambda f: f.write(b"whole"))
    assert (tmp_path / "run.pt").read_bytes() == b"whole" and fifo.is_fifo()


def test_a_checkpoint_of_another_runs_lr_is_set_aside(tmp_path, capsys):
    """A checkpoint of the same network at another LR (LR 0.1's, copied under LR 0.05's run key) was resumed: the
    run's record said LR 0.05, completed, with its first epochs trained at 0.1."""
    path = tmp_path / "ckpt.pt"
    trained, _ = build()
    torch.save({"model": trained.state_dict(), "optimizer": torch.optim.SGD(trained.parameters(), 0.1).state_dict(),
                "rng": [checkpoint.rng_state()], "epoch": 2, "history": [ONE, TWO], "extra": {}}, path)
    net, opt = build()
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1, lr_at=lambda epoch: 0.05) is None
    assert "its history's learning rates are not this run's" in capsys.readouterr().err
    assert not path.exists() and all(torch.equal(a, b) for a, b in zip(fresh.values(), net.state_dict().values()))
    os.replace(tmp_path / ".invalid" / "ckpt.pt", path)
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1, lr_at=lambda epoch: 0.1)["epoch"] == 2
