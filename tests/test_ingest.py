"""bench/ingest.py on the committed campaign ledger's real records and checkpoint: what a campaign call brings back
goes into the ledger once, a finished run is never replaced, and nothing from outside is trusted."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from bench import ingest

CAMPAIGN = Path(__file__).resolve().parents[1] / "reports" / "measured" / "campaign"
LR005, LR001, LR01 = "f827e2053e7b9174", "489234371f2401e9", "86ce826000eb7539"  # LR 0.1 is checkpointed, unfinished


def tar_gz(path: Path, members: dict[str, bytes | str]) -> Path:
    """A gzipped tar of `members`: name -> bytes (a file) or str (a symbolic link to that target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return path


def record_bytes(key: str) -> bytes:
    return (CAMPAIGN / "runs" / f"{key}.json").read_bytes()


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def campaign(tmp_path):
    """A ledger as it stood before LR 0.01 finished (its record missing, its checkpoint there), and the folder a
    campaign call brought back: both records, LR 0.1's checkpoint, the log, the throughput JSON and a stray file."""
    ledger, out = tmp_path / "ledger", tmp_path / "out"
    (ledger / "runs").mkdir(parents=True)
    (ledger / "checkpoints").mkdir()
    out.mkdir()
    shutil.copy(CAMPAIGN / "runs" / f"{LR005}.json", ledger / "runs")
    for key in (LR01, LR001):
        shutil.copy(CAMPAIGN / "checkpoints" / f"{LR01}.pt", ledger / "checkpoints" / f"{key}.pt")
    tar_gz(out / "ledger.tar.gz", {"runs": b"", **{f"runs/{k}.json": record_bytes(k) for k in (LR005, LR001)}})
    shutil.copy(CAMPAIGN / "checkpoints" / f"{LR01}.pt", out)
    shutil.copy(CAMPAIGN / "logs" / "2026-12-04-h200.txt", out / "campaign.txt")
    shutil.copy(CAMPAIGN / "throughput-h200-2026-11-27.json", out / "throughput.json")
    (out / "notes.txt").write_text("not the script's")
    return ledger, out


def test_a_calls_folder_comes_into_the_ledger_once(campaign, capsys):
    ledger, out = campaign
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "2026-12-06-h100"]) == 0
    printed = capsys.readouterr()
    assert (ledger / "runs" / f"{LR001}.json").read_bytes() == record_bytes(LR001)
    assert not (ledger / "checkpoints" / f"{LR001}.pt").exists()  # its run finished: the checkpoint goes
    assert (ledger / "checkpoints" / f"{LR01}.pt").exists()  # unfinished: kept (the returned one is no further on)
    assert (ledger / "logs" / "2026-12-06-h100.txt").read_bytes() == (out / "campaign.txt").read_bytes()
    assert (ledger / "throughput-2026-12-06-h100.json").read_bytes() == (out / "throughput.json").read_bytes()
    assert f"record {LR001}: allcnn-c lr 0.01 seed 0 completed 17.19%" in printed.out
    assert f"--throughput {ledger / 'throughput-2026-12-06-h100.json'}" in printed.out
    assert f"{out / 'notes.txt'} left out" in printed.err and not (ledger / "notes.txt").exists()
    before = tree(ledger)
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "2026-12-06-h100"]) == 0  # again: a no-op
    again = capsys.readouterr()
    assert again.out == "nothing new\n" and tree(ledger) == before
    assert "differs" not in again.err and "further on" not in again.err  # its own records, its own checkpoint


def test_a_dry_run_says_the_same_and_changes_nothing(campaign, capsys):
    ledger, out = campaign
    before = tree(ledger)
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n", "--dry-run"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert tree(ledger) == before and len(said) == 4
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    assert capsys.readouterr().out.splitlines()[:-1] == said  # the real one did what the dry run said


def test_a_finished_runs_record_is_never_replaced_a_failed_one_is(campaign, capsys):
    ledger, out = campaign
    other = json.loads(record_bytes(LR005))
    other["finished_at"] = "2026-12-06T00:00:00+00:00"  # a valid record of the same run, other bytes
    failed = {**json.loads(record_bytes(LR001)), "status": "failed"}
    (ledger / "runs" / f"{LR001}.json").write_text(json.dumps(failed))
    tar_gz(out / "ledger.tar.gz", {f"runs/{LR005}.json": json.dumps(other).encode(),
                                   f"runs/{LR001}.json": record_bytes(LR001)})
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    printed = capsys.readouterr()
    assert (ledger / "runs" / f"{LR005}.json").read_bytes() == record_bytes(LR005)
    assert f"runs/{LR005}.json differs from" in printed.err and "kept the ledger's" in printed.err
    assert (ledger / "runs" / f"{LR001}.json").read_bytes() == record_bytes(LR001)  # run_all trains failed again
    assert "(replaces a record run_all trains again)" in printed.out


def test_untrusted_members_are_left_out_and_nothing_lands_outside(campaign, capsys):
    ledger, out = campaign
    not_its_run = {**json.loads(record_bytes(LR001)), "run_key": "0123456789abcdef"}
    tar_gz(out / "ledger.tar.gz", {
        f"runs/{LR001}.json": "/etc/passwd",  # a link
        "../escape.json": record_bytes(LR001),
        f"runs/{LR005[:-1]}0.json": record_bytes(LR005),  # a record under another run's name
        "runs/0123456789abcdef.json": json.dumps(not_its_run).encode(),  # its config hashes to another key
        "runs/fedcba9876543210.json": b"{not json",
    })
    (out / "0123.pt").write_bytes(b"x")
    (out / "fedcba9876543210.pt").write_bytes(b"not a checkpoint")
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in (ledger / "runs").iterdir()) == [f"{LR005}.json"]
    assert not (ledger.parent / "escape.json").exists() and not (out.parent / "escape.json").exists()
    assert sorted(p.name for p in (ledger / "checkpoints").iterdir()) == [f"{LR001}.pt", f"{LR01}.pt"]
    for why in (f"'runs/{LR001}.json' left out", "'../escape.json' left out", "does not match the file name",
                "its config does not hash to its run key", "unreadable (JSONDecodeError", "0123.pt left out",
                "fedcba9876543210.pt: unreadable checkpoint"):
        assert why in err, why


def test_an_older_checkpoint_does_not_replace_a_further_one(campaign, capsys):
    ledger, out = campaign
    blob = torch.load(CAMPAIGN / "checkpoints" / f"{LR01}.pt", map_location="cpu", weights_only=True)
    torch.save({**blob, "epoch": 10, "history": blob["history"][:10], "epoch_state": None}, out / f"{LR01}.pt")
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    assert "(epoch 10) left out" in capsys.readouterr().err
    kept = (ledger / "checkpoints" / f"{LR01}.pt").read_bytes()
    assert kept == (CAMPAIGN / "checkpoints" / f"{LR01}.pt").read_bytes()
    shutil.copy(out / f"{LR01}.pt", ledger / "checkpoints")  # the other way round: the further one comes in
    shutil.copy(CAMPAIGN / "checkpoints" / f"{LR01}.pt", out)
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    assert f"checkpoint {LR01}: epoch 238 (was 10)" in capsys.readouterr().out
    assert not (ledger / "checkpoints" / ".invalid").exists()  # an older checkpoint is no damage: not kept aside


def gnu_long_names(n: int) -> bytes:
    """A tar whose member has `n` GNU long-name headers in a row: tarfile reads each by recursing."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("runs/" + "a" * 200 + ".json")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()[:1024] * n + buf.getvalue()


@pytest.mark.parametrize("case", ["no folder", "bad name", "a slash in the name", "not gzip", "bomb", "name taken",
                                  "nested headers", "logs a file", "damaged header", "no ledger"])
def test_bad_input_is_one_line_and_changes_nothing(campaign, capsys, monkeypatch, case):
    ledger, out = campaign
    args = [str(out), "--ledger", str(ledger), "--name", "n"]
    if case == "no folder":
        args[0] = str(out / "missing")
    elif case == "bad name":
        args[-1] = "../n"
    elif case == "a slash in the name":  # throughput-n/../../x.json: a file outside the ledger
        args[-1] = "n/../../x"
    elif case == "not gzip":
        (out / "ledger.tar.gz").write_bytes(b"PK\x03\x04 not a tarball")
    elif case == "bomb":
        monkeypatch.setattr(ingest, "MAX_UNPACKED", 1000)
    elif case == "no ledger":  # a typo, or the default's relative path from another folder: not a new ledger
        args[2] = str(ledger / "missing")
    elif case == "logs a file":  # found only when the log is written, after the records and checkpoints were
        (ledger / "logs").write_text("not a folder")
        tar_gz(out / "ledger.tar.gz", {f"runs/{LR001}.json": record_bytes(LR001)})  # no warnings before the error
        (out / "notes.txt").unlink()
    elif case == "damaged header":  # tarfile ends its listing there, silently: LR 0.01's record would be lost
        tar = gzip.decompress((out / "ledger.tar.gz").read_bytes())
        second = tar.index(f"runs/{LR001}.json".encode())
        (out / "ledger.tar.gz").write_bytes(gzip.compress(tar[:second] + b"X" + tar[second + 1:]))
    elif case == "nested headers":  # a RecursionError in tarfile, not a traceback
        (out / "ledger.tar.gz").write_bytes(gzip.compress(gnu_long_names(2000)))
    else:
        (ledger / "logs").mkdir()
        (ledger / "logs" / "n.txt").write_text("another call's log")
    before = tree(ledger)
    assert ingest.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and tree(ledger) == before


def test_a_json_nested_too_deep_is_left_out(campaign, capsys):
    ledger, out = campaign
    (out / "throughput.json").write_bytes(b"[" * 100_000)  # json.loads: RecursionError, not ValueError
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    assert f"{out / 'throughput.json'} left out" in capsys.readouterr().err
    assert not (ledger / "throughput-n.json").exists()


def test_a_link_in_the_folder_is_left_out_not_followed(campaign, capsys):
    ledger, out = campaign
    (ledger / "checkpoints" / f"{LR01}.pt").unlink()
    (out / f"{LR01}.pt").unlink()
    (out / f"{LR01}.pt").symlink_to(CAMPAIGN / "checkpoints" / f"{LR01}.pt")  # a valid checkpoint, elsewhere
    (out / "campaign.txt").unlink()
    (out / "campaign.txt").symlink_to(ledger.parent / "secret")  # any file of this machine, into the commit
    (ledger.parent / "secret").write_text("not the call's")
    (out / "ledger.tar.gz").rename(ledger.parent / "elsewhere.tar.gz")  # valid records, elsewhere
    (out / "ledger.tar.gz").symlink_to(ledger.parent / "elsewhere.tar.gz")
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    err = capsys.readouterr().err
    assert f"{out / 'campaign.txt'} left out (a link" in err and f"{out / LR01}.pt left out (a link" in err
    assert not (ledger / "logs" / "n.txt").exists() and not (ledger / "checkpoints" / f"{LR01}.pt").exists()
    assert f"{out / 'ledger.tar.gz'} left out (a link" in err and not (ledger / "runs" / f"{LR001}.json").exists()


def test_a_record_archived_twice_differently_is_left_out(campaign, capsys):
    ledger, out = campaign
    failed = {**json.loads(record_bytes(LR001)), "status": "failed"}  # tar would extract the later one
    tar_gz(out / "ledger.tar.gz", {f"runs/{LR001}.json": record_bytes(LR001),
                                   f"./runs/{LR001}.json": json.dumps(failed).encode()})
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    assert f"runs/{LR001}.json is archived twice, differently: left out" in capsys.readouterr().err
    assert not (ledger / "runs" / f"{LR001}.json").exists() and (ledger / "checkpoints" / f"{LR001}.pt").exists()


def test_the_report_command_names_the_12_variants_throughput_not_the_graphed_one(campaign, capsys):
    ledger, out = campaign
    shutil.copy(out / "throughput.json", out / "throughput-graphs.json")  # campaign.sh's: All-CNN-C graphed only
    shutil.copy(out / "throughput.json", ledger / "throughput-graphs-old.json")
    shutil.copy(out / "throughput.json", ledger / "throughput-old.json")  # another call's
    for old in ("throughput-graphs-old.json", "throughput-old.json"):
        os.utime(ledger / old, (2e9, 2e9))  # newer than anything (a checkout's order)
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    assert said.startswith(f"next: python -m reports --results {ledger} --out {ledger / 'report'} --throughput "
                           f"{ledger / 'throughput-n.json'};")


def test_an_ablation_arms_record_is_told_from_the_grid_runs(campaign, capsys):
    ledger, out = campaign
    from bench.config import config_key

    arm = json.loads(record_bytes(LR001))
    arm["config"]["augment"] = arm["augment"] = "flip-translate"  # Table 4's arm of the same model, LR and seed
    arm["run_key"] = key = config_key(arm["config"])
    tar_gz(out / "ledger.tar.gz", {f"runs/{k}.json": record_bytes(k) for k in (LR005, LR001)}
           | {f"runs/{key}.json": json.dumps(arm).encode()})
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    said = capsys.readouterr().out
    assert f"record {key}: allcnn-c lr 0.01 seed 0 [augment=flip-translate] completed 17.19%" in said
    assert f"record {LR001}: allcnn-c lr 0.01 seed 0 completed 17.19%" in said


def test_a_ledger_record_not_of_its_run_is_set_aside_not_overwritten(campaign):
    ledger, out = campaign
    other = {**json.loads(record_bytes(LR001)), "macs": 1}  # completed, of a network this code builds otherwise
    (ledger / "runs" / f"{LR001}.json").write_text(json.dumps(other))
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    assert (ledger / "runs" / f"{LR001}.json").read_bytes() == record_bytes(LR001)
    assert json.loads((ledger / "runs" / ".invalid" / f"{LR001}.json").read_bytes()) == other  # as run_all keeps it


@pytest.mark.parametrize("change", [{"epochs_completed": 3}, {"error": "RuntimeError: CUDA out of memory"},
                                    {"status": "diverged"}])
def test_a_final_record_unlike_its_status_is_left_out(campaign, capsys, change):
    ledger, out = campaign
    record = {**json.loads(record_bytes(LR001)), **change}  # valid by schema; would end the run, delete its checkpoint
    record["history"] = record["history"][:record["epochs_completed"]]
    tar_gz(out / "ledger.tar.gz", {f"runs/{LR001}.json": json.dumps(record).encode()})
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    assert f"runs/{LR001}.json left out: status {record['status']}, but" in capsys.readouterr().err
    assert not (ledger / "runs" / f"{LR001}.json").exists() and (ledger / "checkpoints" / f"{LR001}.pt").exists()


def test_a_records_strings_cannot_break_its_line(campaign, capsys):
    ledger, out = campaign
    from bench.config import config_key

    odd = json.loads(record_bytes(LR001))
    odd["config"]["model"] = odd["model"] = "mine\nremoved everything"  # a model this code does not know: any name
    odd["run_key"] = key = config_key(odd["config"])
    tar_gz(out / "ledger.tar.gz", {f"runs/{key}.json": json.dumps(odd).encode()})
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert f"record {key}: mine removed everything lr 0.01 seed 0 completed 17.19%" in said
    assert not any(line.startswith("removed everything") for line in said)


def test_a_checkpoint_comes_in_where_the_ledger_has_none_unless_its_run_is_over(campaign, capsys):
    """A returned checkpoint of a run the ledger holds no checkpoint of comes in; one of a run that is over (its
    final record in the ledger, or in the archive beside it) stays out: the reports would count it still training."""
    ledger, out = campaign
    for key in (LR01, LR001):
        (ledger / "checkpoints" / f"{key}.pt").unlink()
    for key in (LR005, LR001):
        shutil.copy(out / f"{LR01}.pt", out / f"{key}.pt")
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    assert f"checkpoint {LR01}: epoch 238" in capsys.readouterr().out.splitlines()
    assert [p.name for p in (ledger / "checkpoints").iterdir()] == [f"{LR01}.pt"]
    assert (ledger / "checkpoints" / f"{LR01}.pt").read_bytes() == (out / f"{LR01}.pt").read_bytes()


def test_a_damaged_ledger_checkpoint_is_set_aside_and_replaced(campaign, capsys):
    """The ledger's checkpoint that run_all would set aside is replaced by the returned one, and kept in
    checkpoints/.invalid/ as run_all keeps it (evidence, never deleted)."""
    ledger, out = campaign
    (ledger / "checkpoints" / f"{LR01}.pt").write_bytes(b"damaged")
    assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
    assert f"checkpoint {LR01}: epoch 238 (was damaged)" in capsys.readouterr().out.splitlines()
    assert (ledger / "checkpoints" / f"{LR01}.pt").read_bytes() == (out / f"{LR01}.pt").read_bytes()
    assert [p.read_bytes() for p in (ledger / "checkpoints" / ".invalid").iterdir()] == [b"damaged"]


def test_a_failed_record_comes_in_and_its_runs_checkpoint_stays(campaign, capsys):
    """run_all trains a failed run again from its checkpoint: a returned failed record goes into the ledger (and
    replaces an older failed one, a valid record not set aside), and the run's checkpoint is kept."""
    ledger, out = campaign
    failed = {**json.loads(record_bytes(LR001)), "status": "failed", "error": "RuntimeError: CUDA out of memory"}
    for error in ("RuntimeError: CUDA out of memory", "RuntimeError: again"):
        failed["error"] = error
        tar_gz(out / "ledger.tar.gz", {f"runs/{LR001}.json": json.dumps(failed).encode()})
        assert ingest.main([str(out), "--ledger", str(ledger), "--name", "n"]) == 0
        assert f"record {LR001}: allcnn-c lr 0.01 seed 0 failed 17.19%" in capsys.readouterr().out
        assert json.loads((ledger / "runs" / f"{LR001}.json").read_bytes()) == failed
        assert (ledger / "checkpoints" / f"{LR001}.pt").exists() and not (ledger / "runs" / ".invalid").exists()
