"""Untrusted and damaged inputs (issue 16): a crafted archive or checkpoint runs no code, a damaged ledger file or
checkpoint is set aside and its run trained again, a failed write (full disk) leaves the previous file intact.

The payloads below really run code when unpickled freely: each test first shows that on a throw-away marker,
then checks the code under test never creates its own marker.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import resource
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import checkpoint, results, run_state, schema
from loaders.prepare import prepare_cifar10

ROOT = Path(__file__).resolve().parents[1]
GRID = ("--models", "strided-a", "--lrs", "0.1", "0.05", "0.02", "0.01", "--epochs", "1", "--backend", "tensor",
        "--precision", "no")


def payloads(marker: Path) -> dict[str, bytes]:
    """Protocol-0 pickles that create `marker` when loaded with pickle.loads."""
    m = str(marker).encode()
    cmd = shlex.join(["touch", str(marker)]).encode()
    return {"os.system": b"cos\nsystem\n(V" + cmd + b"\ntR.",
            "builtins.open": b"cbuiltins\nopen\n(V" + m + b"\nVw\ntR.",
            "subprocess.call": b"csubprocess\ncall\n((Vtouch\nV" + m + b"\nltR."}


class RunsCode:
    """An object whose unpickling runs `touch marker` (torch.load with weights_only=False would run it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (shlex.join(["touch", str(self.marker)]),)


def crafted_archive(tmp_path: Path, write_official_archive, payload: bytes) -> Path:
    """A genuine-looking official archive whose data_batch_1 is `payload`."""
    rng = np.random.default_rng(0)
    split = lambda n: (rng.integers(0, 256, (10 * n, 32, 32, 3), dtype=np.uint8), np.tile(np.arange(10), n))  # noqa: E731
    genuine = write_official_archive(tmp_path / "genuine.tar.gz", split(5), split(2))
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(genuine) as src, tarfile.open(path, "w:gz") as dst:
        for m in src:
            blob = payload if m.name.endswith("data_batch_1") else src.extractfile(m).read()
            m.size = len(blob)
            dst.addfile(m, io.BytesIO(blob))
    return path


def run_all(argv, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE"))}
    return subprocess.run([sys.executable, "bench/run_all.py", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def smoke_args(data_dir, source, out, *extra) -> list[str]:
    return ["--preset", "smoke", "--source", str(source), "--data-dir", str(data_dir), "--subset-per-class", "10",
            "--out", str(out), "--no-progress", "--batch-size", "32", "--backend", "tensor", *extra]


# ---- archives ----

@pytest.mark.parametrize("kind", ["os.system", "builtins.open", "subprocess.call"])
def test_crafted_archive_is_refused_and_runs_nothing(kind, tmp_path, write_official_archive):
    proof = tmp_path / "proof"
    pickle.loads(payloads(proof)[kind])  # the payload is real: unpickled freely, it creates its file
    assert proof.exists()
    marker = tmp_path / "pwned"
    archive = crafted_archive(tmp_path, write_official_archive, payloads(marker)[kind])
    with pytest.raises(ValueError) as e:
        prepare_cifar10(str(archive), tmp_path / "data")
    msg = str(e.value)
    assert "data_batch_1" in msg and "refused" in msg and kind.split(".")[-1] in msg and "\n" not in msg
    assert not marker.exists() and not (tmp_path / "data" / "manifest.json").exists()


def test_crafted_archive_through_prepare_and_run_all(tmp_path, write_official_archive):
    marker = tmp_path / "pwned"
    archive = crafted_archive(tmp_path, write_official_archive, payloads(marker)["os.system"])
    p = subprocess.run([sys.executable, "-m", "loaders.prepare", "--source", str(archive), "--data-dir",
                        str(tmp_path / "d1")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "data_batch_1" in p.stderr, p.stderr
    p = run_all(smoke_args(tmp_path / "d2", archive, tmp_path / "out", "--models", "strided-a", "--lrs", "0.1"),
                timeout=180)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.startswith("error: data: data_batch_1: refused") and p.stderr.count("\n") == 1, p.stderr
    assert not marker.exists() and results.read_records(tmp_path / "out") == []


# ---- checkpoints (in process) ----

class Acc:  # the parts of an Accelerator that save/load use
    scaler, num_processes, is_main_process = None, 1, True


def history(epochs: int) -> list[dict]:
    """A checkpoint's history, one entry per epoch with every key run_state.RunState.end_epoch writes."""
    return [{"epoch": e, "loss": 1.0, "train_acc_pct": 50.0, "test_error_pct": 40.0, "val_error_pct": None, "lr": 0.1,
             "seconds": 1.0} for e in range(1, epochs + 1)]


def session(**fields) -> dict:
    """A session entry as bench.runs.session writes it (bench/schema.py), from_epoch 1."""
    return {"from_epoch": 1, "started_at": "2026-01-01T00:00:00+00:00", "git_commit": "0" * 40, "git_dirty": False,
            "code_sha256": "1" * 64, "device_name": "CPU", "versions": {"torch": "2.0", "ffcv": None}, "mode": "grid", "world_size": 1,
            "backend": "tensor", "channels_last": True, "compile": False, "cuda_graphs": False, "deterministic": False,
            "fuse_lrs": False, **fields}


def build(out_features=3):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(4, out_features))
    return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)


def trained_checkpoint(path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    net, opt = build()
    for _ in range(2):
        opt.zero_grad()
        net(torch.ones(5, 4)).sum().backward()
        opt.step()
    checkpoint.save_checkpoint(path, Acc(), net, opt, epoch=3, epoch_state=None,
                               history=history(3),
                           extra={"wall_s": 1.0}, distributed=False)
    return net, opt


def assert_set_aside(path: Path, capsys, fresh, net):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "epoch 0" in err, err
    assert not path.exists() and (path.parent / ".invalid" / path.name).is_file()
    assert all(torch.equal(a, b) for a, b in zip(fresh.values(), net.state_dict().values()))  # untouched


def test_checkpoint_that_runs_code_is_not_executed(tmp_path, capsys):
    proof, marker = tmp_path / "proof", tmp_path / "pwned"
    torch.save({"model": RunsCode(proof)}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)  # the payload is real
    assert proof.exists()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": RunsCode(marker), "optimizer": {}, "rng": [], "epoch": 9, "history": [], "extra": {}}, path)
    net, opt = build()
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1) is None
    assert not marker.exists()
    assert_set_aside(path, capsys, fresh, net)



def test_a_checkpoint_that_runs_code_is_not_executed_by_its_readers(tmp_path):
    """bench.plan, the reports and scripts/inspect_checkpoint.py read a checkpoint through checkpoint.read (and
    progress): weights_only as run_all's load, or a crafted checkpoint in a shared results folder runs its code."""
    marker, path = tmp_path / "pwned", tmp_path / "ckpt.pt"
    torch.save({"model": RunsCode(marker), "epoch": 0, "history": [], "extra": {}}, path)
    for read in (checkpoint.read, checkpoint.progress):
        with pytest.raises(ValueError, match=r"^unreadable checkpoint \(UnpicklingError\)$"):
            read(path)
    assert not marker.exists()

@pytest.mark.parametrize("damage", ["truncated", "other model", "not a checkpoint"])
def test_damaged_or_foreign_checkpoint_is_set_aside(damage, tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    trained_checkpoint(path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "not a checkpoint":
        torch.save([1, 2, 3], path)
    net, opt = build(out_features=5 if damage == "other model" else 3)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    assert checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1) is None
    assert torch.equal(rng, torch.get_rng_state()) and not opt.state_dict()["state"]
    assert_set_aside(path, capsys, fresh, net)


def test_checkpoint_with_eight_cuda_rng_states_resumes_on_cpu(tmp_path):
    """A checkpoint written on an 8-GPU machine (an older one held every GPU's CUDA RNG state) resumes here."""
    path = tmp_path / "ckpt.pt"
    saved, _ = trained_checkpoint(path)
    blob = torch.load(path, weights_only=True)
    assert "cuda" not in blob["rng"][0]  # CPU run: no CUDA state stored
    blob["rng"][0]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 8
    torch.save(blob, path)
    expected = saved(torch.ones(5, 4))  # the dropout mask drawn right after the save
    net, opt = build()
    resumed = checkpoint.load_checkpoint(path, Acc(), net, opt, rank=0, world=1)
    assert resumed is not None and resumed["epoch"] == 3 and path.is_file()
    assert torch.equal(net(torch.ones(5, 4)), expected)  # weights and the torch RNG restored


# ---- full disk ----

def test_enospc_in_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    trained_checkpoint(path)
    before = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    net, opt = build()
    with pytest.raises(OSError) as e:
        checkpoint.save_checkpoint(path, Acc(), net, opt, epoch=4, epoch_state=None, history=[], extra={},
                               distributed=False)
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


# ---- the ledger ----

@pytest.fixture(scope="module")
def grid(smoke_data_dir, jpeg_tarball, tmp_path_factory):
    """Four 1-epoch runs (strided-a, four LRs) recorded by run_all: (ledger folder, its records by lr)."""
    out = tmp_path_factory.mktemp("grid") / "out"
    p = run_all(smoke_args(smoke_data_dir, jpeg_tarball, out, *GRID))
    assert p.returncode == 0, p.stderr[-3000:]
    return out, {r["lr"]: r for r in results.read_records(out)}


def test_enospc_in_write_record_keeps_the_previous_one(grid, tmp_path, monkeypatch):
    record = grid[1][0.1]
    path = results.write_record(tmp_path, record)
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", full_disk)
    with pytest.raises(OSError) as e:
        results.write_record(tmp_path, dict(record, status="failed", error="again"))
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == [path.name]


def test_write_record_refuses_an_invalid_record(grid, tmp_path):
    with pytest.raises(ValueError, match="test_error_pct"):
        results.write_record(tmp_path, dict(grid[1][0.1], test_error_pct="9.5"))
    assert not results.runs_dir(tmp_path).exists() or not list(results.runs_dir(tmp_path).iterdir())


def damage(out: Path, records: dict) -> dict[float, str]:
    """Damage three of the four record files: truncated, a JSON list, a wrong field type. Returns lr -> name."""
    names = {lr: f"{records[lr]['run_key']}.json" for lr in (0.1, 0.05, 0.02)}
    runs = results.runs_dir(out)
    text = (runs / names[0.1]).read_text()
    (runs / names[0.1]).write_text(text[: len(text) // 2])
    (runs / names[0.05]).write_text(json.dumps([records[0.05]]))
    (runs / names[0.02]).write_text(json.dumps(dict(records[0.02], test_error_pct="9.5")))
    return names


def test_validate_names_what_is_wrong(grid):
    record = grid[1][0.01]
    assert schema.validate(record) is None
    newer = ("grid", "eval_precision", "cuda_graphs", "fused_runs", "diagnosis",
             "sessions", "code_sha256")  # not from schema.OPTIONAL itself
    assert schema.validate({k: v for k, v in record.items() if k not in newer}) is None  # old ledgers lack them
    assert "list" in schema.validate([record])
    assert "'lr'" in schema.validate(dict(record, lr=True))
    assert "'status'" in schema.validate(dict(record, status="done"))
    assert "'history'" in schema.validate({k: v for k, v in record.items() if k != "history"})
    assert "config says epochs 7" in schema.validate(dict(record, config={**record["config"], "epochs": 7}))
    assert schema.validate(dict(record, status="stalled", grid={"models": ["strided-a"]}, eval_precision="no")) \
        is None
    for bad in ({"lrs": ["0.1"]}, {"models": [3]}, {"seeds": [0.5]}, {"seeds": [True]}, {"lrs": 0.1}, ["lrs"]):
        assert "'grid'" in schema.validate(dict(record, grid=bad)), bad  # lr_grid raised on a string LR
    assert schema.validate(dict(record, grid={"lrs": [0.1, 1], "seeds": [0, 2], "batch": [128, "b"]})) is None


def test_validate_refuses_numbers_out_of_range_and_lists_in_config(grid):
    """Percentages beyond [0, 100] and sizes negative or beyond 1e12 crashed the reports (an overflowing sum, the
    square root of a negative variance); a list for a config name crashed bench.plan (unhashable); a lone surrogate
    crashed every writer. What run_all writes, the committed campaign records included, still passes."""
    record = grid[1][0.01]
    for name, bad in (("test_error_pct", 150.0), ("best_test_error_pct", -1.0), ("val_error_pct", 1e308),
                      ("wall_time_s", -1e6), ("train_images_per_s", 1e308), ("fused_runs", 10 ** 299),
                      ("device_count", 0), ("epochs", 10 ** 299), ("peak_memory_mb", -1.0), ("lr", -0.1)):
        assert f"field {name!r}" in schema.validate(dict(record, **{name: bad})), (name, bad)
    h = record["history"][-1]
    for name, bad in (("train_acc_pct", 101.0), ("test_error_pct", -3.0), ("seconds", -1.0), ("loss", -1.0)):
        assert "'history'" in schema.validate(dict(record, history=[dict(h, **{name: bad})])), name
    assert schema.validate(dict(record, history=[dict(h, loss=None)])) is None  # a diverged epoch
    assert schema.validate(dict(record, lr=1e9, config={**record["config"], "lr": 1e9},
                                 history=[dict(h, loss=1.3e35, lr=1e9)])) is None  # diverging, as run_all wrote it
    committed = sorted((ROOT / "reports/measured/campaign/runs").glob("*.json"))
    assert committed and all(results.read_one(p) == (json.loads(p.read_text()), None) for p in committed)
    diagnosis = json.loads(committed[0].read_text())["diagnosis"]  # as bench/diagnose.py writes it
    assert schema.validate(dict(record, diagnosis=diagnosis)) is None
    for bad in ({"train_error_pct": 10 ** 299}, {"test_error_by_class_pct": [101.0] * 10},
                {"dead_relu_channels": {"x": [10 ** 299, 10 ** 299]}}):
        assert "'diagnosis'" in schema.validate(dict(record, diagnosis={**diagnosis, **bad})), bad
    assert "'grid'" in schema.validate(dict(record, grid={"lrs": [-0.1], "seeds": [0]}))
    assert "lone surrogate" in schema.validate(dict(record, device_name="GPU \ud800"))  # no writer can write it
    assert "'precision' is ['no']" in schema.validate(dict(record, config={**record["config"], "precision": ["no"]}))
    assert schema.validate(dict(record, config={**record["config"], "lr_drops": [1, 2]})) is None


def test_validate_checks_sessions_when_present(grid):
    """A record's sessions (one per process session that trained the run) are outside input like the rest of a
    ledger: malformed ones refuse the record; a record without them (older ledgers) stays valid."""
    record = grid[1][0.01]
    assert "sessions" in record  # run_all writes them
    assert schema.validate({k: v for k, v in record.items() if k != "sessions"}) is None
    last = record["epochs_completed"] + 1
    assert schema.validate(dict(record, sessions=[session(), session(from_epoch=last, extra="x")])) is None
    for bad in ("grid", None, [], [session(from_epoch=0)], [session(from_epoch=last + 1)],
                [session(from_epoch=2), session()], [session(from_epoch=1.0)], [session(git_dirty="no")],
                [{k: v for k, v in session().items() if k != "deterministic"}], [session(git_commit="a" * 201)],
                [session(versions={"torch": ["2"]})], [session(versions={str(i): "" for i in range(17)})],
                [session(world_size=0)], [session(extra=[1])], [session()] * 1001, ["session"]):
        assert "'sessions'" in schema.validate(dict(record, sessions=bad)), bad


def test_validate_refuses_what_no_writer_writes_where_a_range_alone_would_not(grid):
    """Values that passed every test (a mutation spot-check dropped each check and no test failed): a bool where a
    session holds an integer (True == 1 is within from_epoch's range), an evaluation precision Accelerate does not
    have, a negative seed, a negative LR or loss in the history, and inf under a history key of a newer writer."""
    record = grid[1][0.01]
    h = record["history"][-1]
    assert "'sessions'" in schema.validate(dict(record, sessions=[session(from_epoch=True)]))
    assert "'eval_precision'" in schema.validate(dict(record, eval_precision="fp8"))
    assert "'seed'" in schema.validate(dict(record, seed=-1, config={**record["config"], "seed": -1}))
    for name, bad in (("test_loss", -1.0), ("val_loss", -0.5), ("lr", -0.1), ("newer_key", float("inf"))):
        assert "'history'" in schema.validate(dict(record, history=[dict(h, **{name: bad})])), name


def test_validate_refuses_a_foreign_record_that_no_run_could_have_written():
    """Values that passed the schema tests here and in tests/test_reports_untrusted.py (a mutation spot-check
    dropped each check): a config whose seed, model or augmentation is not the record's (the run key hashes the
    config, the reports select by the record's fields: the run would show as another), a precision Accelerate does
    not name, a fused group of 0 runs, a negative momentum and 0 epochs. Checked on a committed campaign record,
    which passes."""
    record = json.loads((ROOT / "reports/measured/campaign/runs/489234371f2401e9.json").read_text())
    assert schema.validate(record) is None and record["fused_runs"] == 1
    for name, other in (("seed", 1), ("model", "allcnn-b"), ("augment", "flip-translate"), ("preset", "smoke"),
                        ("train_split", "train45k")):
        why = schema.validate(dict(record, config={**record["config"], name: other}))
        assert why is not None and why.startswith(f"config says {name} "), (name, why)
    for name, bad in (("precision", "fp32"), ("fused_runs", 0), ("momentum", -0.9), ("epochs", 0)):
        config = {**record["config"], name: bad} if name in record["config"] else record["config"]
        why = schema.validate(dict(record, config=config, **{name: bad}))
        assert why is not None and why.startswith(f"field {name!r} is "), (name, why)


def test_a_run_resumed_past_the_session_cap_keeps_its_first_and_latest_sessions():
    """A run resumed more than `MAX_SESSIONS` times (a record must stay small) keeps its first session and the latest
    ones: the oldest in between are dropped, the list stays valid, and the new session is last."""
    cap = schema.MAX_SESSIONS
    earlier = [session(from_epoch=1 + e // 10, git_commit=f"{e:040x}") for e in range(cap)]
    resumed = run_state.sessions_after({"extra": {"sessions": earlier}}, session(git_commit="f" * 40), cap // 10)
    assert len(resumed) == cap and resumed[0] == earlier[0] and resumed[1:-1] == earlier[2:]
    assert resumed[-1]["git_commit"] == "f" * 40 and resumed[-1]["from_epoch"] == cap // 10 + 1
    assert schema.valid_sessions(resumed, cap // 10 + 1)
    below = run_state.sessions_after({"extra": {"sessions": earlier[:-1]}}, session(), cap // 10)
    assert below[:-1] == earlier[:-1] and len(below) == cap  # at the cap nothing is dropped


def test_damaged_ledger_loads_the_valid_rows(grid, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(grid[0], out)
    names = damage(out, grid[1])
    before = results.ledger_sha256(out)
    df = results.load(out)
    assert list(df["lr"]) == [0.01] and df.attrs["skipped"] == sorted(names.values())
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(any(n in line for line in err) for n in names.values())
    assert "JSONDecodeError" in "".join(err) and "list" in "".join(err) and "test_error_pct" in "".join(err)
    invalid = results.runs_dir(out) / ".invalid"
    assert sorted(p.name for p in invalid.iterdir()) == sorted(names.values())
    assert results.ledger_sha256(out) == before != results.ledger_sha256(grid[0])  # the valid records alone
    assert [r["lr"] for r in results.read_records(out)] == [0.01] and capsys.readouterr().err == ""


def test_ledger_files_that_are_no_records_are_set_aside(grid, tmp_path):
    """A FIFO (it hung every reader), a link to /dev/zero (it filled the memory), a folder and a record nested
    100,000 deep (RecursionError): each named and set aside; the valid records are read, and the hash covers them
    alone. A record whose device name holds a lone surrogate (a JSON escape; read as it was, it crashed every writer
    after) is read with the escape as text."""
    out, two = tmp_path / "out", tmp_path / "two"
    shutil.copytree(grid[0], out)
    shutil.copytree(grid[0], two)
    runs = results.runs_dir(out)
    surrogate, deep = sorted(grid[1].values(), key=lambda r: r["run_key"])[:2]
    (results.runs_dir(two) / f"{deep['run_key']}.json").unlink()
    for folder in (out, two):
        (results.runs_dir(folder) / f"{surrogate['run_key']}.json").write_text(
            json.dumps(dict(surrogate, device_name="GPU \ud800")))
    (runs / f"{deep['run_key']}.json").write_text(json.dumps(dict(deep, deep=0))[:-2] + "[" * 100_000 + "]" * 100_000
                                                  + "}")
    os.mkfifo(runs / "fifo.json")
    (runs / "zero.json").symlink_to("/dev/zero")
    (runs / "folder.json").mkdir()
    code = ("import sys; from bench import results; print(*sorted(r['device_name'] for r in "
            "results.read_records(sys.argv[1])), sep='\\n')")
    p = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 ** 31, 2 ** 31)))
    names = p.stdout.splitlines()
    assert p.returncode == 0 and len(names) == 3 and names[-1] == "GPU \\ud800", (p.stdout, p.stderr[-2000:])
    err = p.stderr.splitlines()
    expected = {"fifo.json": "not a regular file", "zero.json": "not a regular file",
                "folder.json": "not a regular file", f"{deep['run_key']}.json": "RecursionError"}
    assert len(err) == 4 and all(any(n in line and why in line for line in err) for n, why in expected.items()), err
    assert sorted(p.name for p in (runs / ".invalid").iterdir()) == sorted(expected)
    assert results.ledger_sha256(out) == results.ledger_sha256(two)


def test_a_record_nested_deep_enough_for_json_but_not_for_python_is_damage(tmp_path):
    """600 levels: json.loads reads them, the walk that escapes lone surrogates (schema.utf8) ran out of stack and
    the RecursionError escaped every reader of the ledger. Python 3.12 (the GPU machines') walks 600 levels: the
    record is then refused for what it lacks; damage either way, never a crash."""
    path = tmp_path / "runs" / "0123456789abcdef.json"
    path.parent.mkdir()
    path.write_text('{"a": ' * 600 + "1" + "}" * 600)
    record, why = results.read_one(path)
    assert record is None and why.startswith(("unreadable (RecursionError", "field 'run_key' is missing")), why
    if sys.version_info < (3, 12):
        assert why.startswith("unreadable (RecursionError"), why


def test_a_path_that_is_not_utf8_is_written_and_read_as_its_escape(grid, tmp_path):
    """A source path with a byte that is not UTF-8 reaches Python as a lone surrogate (os.fsdecode): the record
    holding it was refused by write_record, so run_all crashed after the last epoch of every run and retrained it
    on every rerun. It is written with the byte as its escape, and read back valid."""
    record = grid[1][0.1]
    path = results.write_record(tmp_path, dict(record, data={**record["data"], "source": "/data/caf\udce9.tar.gz"}))
    (again,) = results.read_records(tmp_path)
    assert again["data"]["source"] == "/data/caf\\xe9.tar.gz" and path.read_text().count("caf\\\\xe9") == 1


def test_a_file_set_aside_under_a_name_set_aside_before_keeps_both(tmp_path, capsys):
    """The same ledger file damaged again (a second bad copy): set_aside's os.replace overwrote the first one in
    `.invalid/`, though set-aside files are evidence, never deleted. Each is kept, the later under a new name."""
    runs = results.runs_dir(tmp_path)
    runs.mkdir()
    path = runs / "0123456789abcdef.json"
    for n in range(3):
        path.write_text(f"damaged {n}")
        assert results.read_records(tmp_path) == []
    names = [path.name, f"{path.name}.1", f"{path.name}.2"]
    assert sorted((p.name, p.read_text()) for p in (runs / ".invalid").iterdir()) == [
        (name, f"damaged {n}") for n, name in enumerate(names)]
    err = capsys.readouterr().err.splitlines()
    assert [line.split(", moved to ")[1].split(":")[0] for line in err] == [str(runs / ".invalid" / n) for n in names]


@pytest.mark.parametrize("invalid", ["file", "link"])
def test_a_file_is_never_set_aside_out_of_its_folder(invalid, grid, tmp_path, capsys):
    """A `.invalid` that is a link to a folder elsewhere (the file went there) or a file (set_aside failed, then the
    hash crashed on the folder left in place): the files stay, named, and the hash covers the valid records."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    shutil.copytree(grid[0], out)
    elsewhere.mkdir()
    runs = results.runs_dir(out)
    before = results.ledger_sha256(out)
    if invalid == "file":
        (runs / ".invalid").write_text("x")
    else:
        (runs / ".invalid").symlink_to(elsewhere)
    (runs / "bad.json").write_text("[]")
    (runs / "folder.json").mkdir()
    df = results.load(out)
    assert len(df) == 4 and df.attrs["skipped"] == ["bad.json", "folder.json"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(f"left in place ({runs / '.invalid'} is not a folder)" in line for line in err), err
    assert (runs / "bad.json").is_file() and (runs / "folder.json").is_dir() and not any(elsewhere.iterdir())
    assert results.ledger_sha256(out) == before


def test_rerun_trains_the_damaged_runs_and_restarts_bad_checkpoints(grid, smoke_data_dir, jpeg_tarball, tmp_path):
    """Three damaged record files, two of whose runs also left a checkpoint: one crafted to run code on
    unpickling, one truncated. The rerun trains exactly those three again, from epoch 0, to the results of the
    first time, keeps the intact record, and executes nothing."""
    out, records = tmp_path / "out", grid[1]
    shutil.copytree(grid[0], out)
    names = damage(out, records)
    intact = results.runs_dir(out) / f"{records[0.01]['run_key']}.json"
    intact_bytes = intact.read_bytes()
    ckpts = out / "checkpoints"
    ckpts.mkdir(exist_ok=True)
    marker = tmp_path / "pwned"
    crafted, truncated = (ckpts / f"{records[lr]['run_key']}.pt" for lr in (0.05, 0.1))
    torch.save({"model": RunsCode(marker)}, crafted)
    blob = io.BytesIO()
    torch.save({"model": {"w": torch.ones(100)}, "epoch": 1}, blob)
    truncated.write_bytes(blob.getvalue()[:200])
    p = run_all(smoke_args(smoke_data_dir, jpeg_tarball, out, *GRID))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "1 already in" in p.stdout and "3 to train" in p.stdout, p.stdout[-2000:]
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 5, p.stderr[-3000:]  # three ledger files, two checkpoints
    assert not marker.exists() and intact.read_bytes() == intact_bytes
    again = {r["lr"]: r for r in results.read_records(out)}
    assert sorted(again) == sorted(records)
    for lr, r in again.items():
        assert r["status"] == "completed" and r["run_key"] == records[lr]["run_key"]
        assert [h["loss"] for h in r["history"]] == [h["loss"] for h in records[lr]["history"]]  # from epoch 0
        assert r["test_error_pct"] == records[lr]["test_error_pct"]
    assert sorted(p.name for p in (ckpts / ".invalid").iterdir()) == sorted([crafted.name, truncated.name])
    assert not list(ckpts.glob("*.pt"))
    assert {p.name for p in (results.runs_dir(out) / ".invalid").iterdir()} == set(names.values())


def test_a_read_reserves_the_files_size_not_the_cap(tmp_path):
    """bench.files.read_regular with a checkpoint's 1 GiB cap, under an address-space limit 256 MiB above what the
    process uses (strict overcommit, a container): reading the cap's worth reserved 1 GiB, so a valid checkpoint
    failed with MemoryError and was set aside as damaged."""
    (tmp_path / "small.pt").write_bytes(b"x" * 1000)
    code = ("import resource, sys; from bench.files import read_regular; "
            "used = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024; "
            "resource.setrlimit(resource.RLIMIT_AS, (used + 2 ** 28, used + 2 ** 28)); "
            "print(len(read_regular(sys.argv[1], 2 ** 30)))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "small.pt")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "1000\n", p.stderr[-2000:]
