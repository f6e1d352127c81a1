"""scripts/campaign.sh, tiny on CPU: two processes share one grid without training a run twice, what comes back
fits the GPU machines' limits (<= 8 plain files of <= 16 MiB), and a second campaign continues the first's ledger
(recorded runs skipped) after the GPU tests (skipped here, so no CUDA graphs) and the concurrency probe have
decided and the init probe has run; a third on the second's warm work folder takes those decisions without
measuring again and, with FUSE=1, trains the new LRs as one fused group (run_all --fuse-lrs) in one process. Each
record reaches OUT's ledger archive while the next run trains (a call killed outright keeps it), and a time budget
the device would cut short is refused."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def environment(tmp_path: Path, name: str, jpeg_tarball, work: str = "", **env) -> dict:
    """The script's environment: tiny CPU settings, OUT = tmp_path / name."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK"))}
    settings = {"PY": sys.executable, "PYTHONPATH": str(ROOT), "DEVICE": "cpu", "OUT": str(tmp_path / name),
                "WORK": str(tmp_path / f"work-{work or name}"), "SRC": str(jpeg_tarball), "SUBSET": "10", "THROUGHPUT": "",
                "INIT_PROBE": "", "GRAPHS": "0", "ORDER": "strided-a", "TOTAL": "400",
                "EXTRA": "--epochs 1 --lr-drops --batch-size 32 --num-workers 1 --backend tensor --precision no", **env}
    return {**base, **settings}


def archived(path: Path) -> dict:
    """{run_key: record} of a ledger archive."""
    with tarfile.open(path) as tf:
        return {Path(n).stem: json.load(tf.extractfile(n)) for n in tf.getnames()
                if n.startswith("runs/") and n.endswith(".json")}


def campaign(tmp_path: Path, name: str, jpeg_tarball, work: str = "", **env) -> tuple[str, dict]:
    """Run the script once; returns (log, {run_key: record}) from the ledger archive it left in OUT."""
    out = tmp_path / name
    env = environment(tmp_path, name, jpeg_tarball, work, **env)
    p = subprocess.run(["bash", "scripts/campaign.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=450)
    assert p.returncode == 0, p.stderr[-2000:]
    files = sorted(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and f.stat().st_size <= 16 * 2**20 for f in files), files
    log = (out / "campaign.txt").read_text()
    with tarfile.open(out / "ledger.tar.gz") as tf:
        names = tf.getnames()
        assert not [n for n in names if "claim" in n], names  # claims belong to the machine that made them
        tf.extractall(tmp_path / f"ledger-{name}", filter="data")
    return log, archived(out / "ledger.tar.gz")


def test_campaign_two_processes_then_continued(smoke_data_dir, jpeg_tarball, tmp_path):
    for name in ("first", "second"):  # the prepared subset: prepare then says there is nothing to do
        shutil.copytree(smoke_data_dir, tmp_path / f"work-{name}" / "data", ignore=shutil.ignore_patterns(".*.tmp"))

    (tmp_path / "first").mkdir()  # a step 1 cut short before All-CNN-C, the fused group's model: nothing to decide
    (tmp_path / "first" / "throughput.json").write_text(json.dumps([{"model": "strided-a", "fused_over_separate": 2}]))
    log, first = campaign(tmp_path, "first", jpeg_tarball, PARALLEL="2", LRS="0.05 0.01",
                          LEDGER=str(tmp_path / "no-ledger-yet"))
    assert "worker 2 of 2, sharing the ledger" in log and log.count(": strided-a exit 0 after") == 2, log[-3000:]
    assert "no fused All-CNN-C row" in log and "-m pytest" not in log, log[-3000:]  # so no fused gate either
    # the switches the caller set hold for a later call on this machine (FUSE: decided by nothing, so not kept)
    assert (tmp_path / "work-first" / "decided").read_text().split() == ["GRAPHS=0", "PARALLEL=2"]
    assert "--checkpoint-minutes 2 " in log, log[-3000:]  # a checkpoint every 2 minutes, not only on SIGTERM
    assert sorted(r["lr"] for r in first.values()) == [0.01, 0.05], log[-3000:]  # each run once, by either process
    assert all(r["status"] == "completed" and r["epochs_completed"] == 1 for r in first.values())

    log, second = campaign(tmp_path, "second", jpeg_tarball, PARALLEL="auto", GRAPHS="auto", LRS="0.05 0.01 0.1",
                           LEDGER=str(tmp_path / "ledger-first"),
                           PROBE="--model strided-a --procs 2 --steps 1 --warmup 0 --batch-size 4 --precision no",
                           INIT_PROBE="--models strided-a --lrs 0.05 --inits kaiming --epochs 1 --batch-size 32")
    assert "# continuing: 2 records" in log and "2 already in" in log, log[-3000:]
    assert "# GRAPHS=0 (" in log and "SKIPPED [1] tests/test_graphs.py" in log, log[-3000:]  # no CUDA here
    assert "# PARALLEL=" in log and (tmp_path / "second" / "concurrency.json").is_file(), log[-3000:]
    assert {k: v["finished_at"] for k, v in second.items() if k in first} == \
        {k: v["finished_at"] for k, v in first.items()}  # the first campaign's records, untouched
    probe = (tmp_path / "second" / "init-probe.txt").read_text()
    assert "strided-a   lr=0.05  init=kaiming" in probe, probe[-2000:]  # its table, from its own ledger
    (new,) = [r for k, r in second.items() if k not in first]
    assert new["lr"] == 0.1 and new["status"] == "completed" and new["fused_runs"] == 1

    decided = tmp_path / "work-second" / "decided"  # as if the probe had found 2 processes faster: FUSE=1 overrules
    decided.write_text(re.sub(r"(?m)^PARALLEL=\d+$", "PARALLEL=2", decided.read_text()))  # it (they'd split a group)
    log, third = campaign(tmp_path, "third", jpeg_tarball, work="second", PARALLEL="auto", GRAPHS="auto", FUSE="1",
                          LRS="0.05 0.01 0.1 0.25 0.5", LEDGER=str(tmp_path / "ledger-second"))
    assert "(an earlier call on this machine): GRAPHS=0 PARALLEL=2" in log, log[-3000:]  # FUSE: nothing measured
    assert "-m pytest" not in log and "concurrency_probe" not in log, log[-3000:]  # decided already: not measured again
    assert "# PARALLEL=1 (FUSE=1" in log and "--fuse-lrs" in log, log[-3000:]
    assert "worker 1 of 1, sharing the ledger" in log, log[-3000:]
    new = sorted((r for k, r in third.items() if k not in second), key=lambda r: r["lr"])
    assert [(r["lr"], r["status"], r["fused_runs"]) for r in new] == [(0.25, "completed", 2), (0.5, "completed", 2)]


def test_no_more_than_eight_files_come_back(smoke_data_dir, jpeg_tarball, tmp_path):
    """Each unfinished checkpoint comes back as a file of its own, but never more files than the machines return
    (8): the rest are named in the log and stay in the work folder."""
    shutil.copytree(smoke_data_dir, tmp_path / "work-many" / "data", ignore=shutil.ignore_patterns(".*.tmp"))
    (tmp_path / "ledger" / "checkpoints").mkdir(parents=True)
    for i in range(9):
        (tmp_path / "ledger" / "checkpoints" / f"{i:016x}.pt").write_bytes(b"a checkpoint")
    log, _ = campaign(tmp_path, "many", jpeg_tarball, TOTAL="40", PARALLEL="1", LEDGER=str(tmp_path / "ledger"))
    assert "# done in" in log, log[-2000:]  # the budget spent, or prepare out of its 4 s on a loaded machine
    back = sorted(p.name for p in (tmp_path / "many").glob("*.pt"))
    assert len(back) == 6 and log.count("# not returned (8 files in OUT already)") == 3  # + campaign.txt, ledger


def test_a_warm_machines_checkpoints_win_and_finished_runs_stay_home(jpeg_tarball, tmp_path):
    """The committed ledger joins a warm machine's work folder without replacing its newer files (a checkpoint the
    last call wrote, further along than the committed one: overwritten, those epochs would be trained again); a
    finished run's checkpoint (its record beside it) is stale and takes none of the 8 places in OUT, while a failed
    run's comes back (run_all resumes the failed run from it); and the default
    ORDER trains All-CNN-C first, at the LRs that trained the Caffe/neon ports first. The summary tells apart runs
    of one model and LR by seed and ablation arm."""
    from bench.config import config_key

    ledger, work = tmp_path / "ledger", tmp_path / "work-warm" / "results"
    record, other = sorted((ROOT / "reports/measured/campaign/runs").glob("*.json"))
    for folder in (ledger / "runs", ledger / "checkpoints", work / "checkpoints"):
        folder.mkdir(parents=True)
    shutil.copy(record, ledger / "runs")
    arm = json.loads(record.read_text())  # its gcn-zca-fb1 arm (--ablations preprocessing)
    arm = dict(arm, preprocess="gcn-zca-fb1", config={**arm["config"], "preprocess": "gcn-zca-fb1"},
               test_error_pct=14.5)
    arm["run_key"] = config_key(arm["config"])
    (ledger / "runs" / f"{arm['run_key']}.json").write_text(json.dumps(arm))
    (ledger / "checkpoints" / f"{record.stem}.pt").write_bytes(b"finished")
    failed = dict(json.loads(other.read_text()), status="failed", error="RuntimeError: out of memory")
    (ledger / "runs" / other.name).write_text(json.dumps(failed))  # its run trains again: from its checkpoint
    (ledger / "checkpoints" / f"{other.stem}.pt").write_bytes(b"failed, to resume")
    (ledger / "checkpoints" / "0123456789abcdef.pt").write_bytes(b"committed")
    (work / "checkpoints" / "0123456789abcdef.pt").write_bytes(b"newer, on the warm machine")
    log, records = campaign(tmp_path, "warm", jpeg_tarball, TOTAL="30", RESERVE="30", ORDER="", LEDGER=str(ledger),
                            PARALLEL="1")  # no probe: cut at its 1 s, it told nothing here (the spent budget test)
    assert " ORDER=allcnn-c model-c convpool-c strided-c allcnn-b " in log and " LRS=0.05 0.01 0.1 0.25 " in log
    assert sorted(records) == sorted([record.stem, other.stem, arm["run_key"]])
    assert "# All-CNN-C lr=0.01 seed=0 completed: test error 17.19" in log, log[-3000:]
    assert "# All-CNN-C lr=0.01 seed=0 [preprocess=gcn-zca-fb1] completed: test error 14.5%" in log, log[-3000:]
    assert sorted(p.name for p in (tmp_path / "warm").glob("*.pt")) == ["0123456789abcdef.pt", f"{other.stem}.pt"]
    assert (tmp_path / "warm" / "0123456789abcdef.pt").read_bytes() == b"newer, on the warm machine"
    assert not (work / "checkpoints" / f"{record.stem}.pt").exists()


def test_a_failed_run_all_stops_the_campaign_at_once(smoke_data_dir, jpeg_tarball, tmp_path):
    """Fail fast: a run_all that exits non-zero (here refusing --epochs 0) stops the campaign before the next
    model, so the call returns early with time left to fix and rerun instead of failing every model."""
    shutil.copytree(smoke_data_dir, tmp_path / "work-fails" / "data", ignore=shutil.ignore_patterns(".*.tmp"))
    log, records = campaign(tmp_path, "fails", jpeg_tarball, PARALLEL="1", ORDER="strided-a strided-b",
                            LEDGER=str(tmp_path / "none"), EXTRA="--epochs 0 --backend tensor --precision no")
    assert "# stopping: worker 1 exit 2, 0 failed runs of strided-a" in log, log[-3000:]
    assert "--models strided-b" not in log, log[-3000:]
    assert not records


def test_readme_measured_table_is_made_from_the_committed_ledger():
    """The README's "Measured so far" table is what `python -m reports.campaign` makes of the committed ledger."""
    from reports import campaign

    readme = ROOT / "README.md"
    assert campaign.main(["--check", "--results", str(ROOT / campaign.RESULTS), "--readme", str(readme)]) == 0
    assert campaign.block(ROOT / campaign.RESULTS) in readme.read_text()


def test_campaign_table_rows_for_records_and_checkpoints(tmp_path):
    """A record gives a finished row; a checkpoint beside it is found by its run key (the same config at another
    LR) with its epoch, last test error and seconds; a damaged one still gets a row; a stale README is refused."""
    import torch

    from bench.config import config_key
    from reports import campaign
    from tests.test_untrusted import history

    (tmp_path / "runs").mkdir()
    (tmp_path / "checkpoints").mkdir()
    record = json.loads(next((ROOT / campaign.RESULTS / "runs").glob("*.json")).read_text())
    record["diagnosis"] = {"train_error_pct": 22.25, "test_error_by_class_pct": [30.0] * 3 + [100.0, None] + [30.0] * 5,
                           "dead_relu_channels": {"stage1.conv1_relu": [3, 96], "top.conv3_relu": [1, 10]}}
    (tmp_path / "runs" / f"{record['run_key']}.json").write_text(json.dumps(record))
    key = config_key({**record["config"], "lr": 0.1})
    torch.save({"epoch": 5, "extra": {"wall_s": 12.0},
                "history": [dict(h, test_error_pct=50.0 - h["epoch"] if h["epoch"] % 2 else None)
                            for h in history(5)]},
               tmp_path / "checkpoints" / f"{key}.pt")
    (tmp_path / "checkpoints" / "0123456789abcdef.pt").write_bytes(b"not a checkpoint")
    rows = campaign.rows(tmp_path)
    assert [r[:4] for r in rows] == [[record["display_name"], "0.1", "0", rows[0][3]],
                                     [record["display_name"], f"{record['lr']:g}", "0", record["status"]],
                                     ["run 0123456789abcdef", "?", "?", rows[2][3]]]
    assert rows[0][3].startswith("unfinished") and rows[0][4] == "45.00 (epoch 5)" and rows[0][6:8] == ["5/350",
                                                                                                     "12 so far"]
    assert rows[2][6] == "" and rows[2][4] == ""  # damaged: listed, nothing read from it
    assert rows[1][11] == ("train error 22.25% (eval mode), 4 of 106 ReLU channels dead (1 of the 10 class maps); "
                           "never right on test: cat") and rows[0][11] == ""
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{campaign.BEGIN}\nold table\n{campaign.END}\nafter\n")
    assert campaign.main(["--check", "--results", str(tmp_path), "--readme", str(readme)]) == 1
    assert campaign.main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nafter\n") and "old table" not in text and "12 so far" in text
    assert campaign.main(["--check", "--results", str(tmp_path), "--readme", str(readme)]) == 0



def test_a_run_that_ended_early_shows_the_epochs_it_trained(tmp_path):
    """A run that diverged in epoch 40 of 350 is "40/350" with its status: the table showed every record at its
    schedule's length, as if each run had trained all its epochs."""
    from reports import campaign

    (tmp_path / "runs").mkdir()
    record = json.loads(next((ROOT / campaign.RESULTS / "runs").glob("*.json")).read_text())
    record.pop("sessions", None)
    record.update(status="diverged", epochs_completed=40, history=record["history"][:40], test_error_pct=None)
    (tmp_path / "runs" / f"{record['run_key']}.json").write_text(json.dumps(record))
    (row,) = campaign.rows(tmp_path)
    assert (row[3], row[4], row[6]) == ("diverged", "", "40/350")


# a record's `data` for the official archive (the committed records' is the JPEG copy)
OFFICIAL = {"source": "cifar-10-python.tar.gz", "encoding": {"formats": {"CIFAR-10 python batches": 60000},
                                                             "lossless": True}}


def test_each_campaign_row_shows_its_own_records_cells(tmp_path):
    """Two records of other GPUs, data, seconds and images/s: each row's cells are its own record's (the committed
    ledger's two records share their GPU and data, so a row showing another record's passed the README check)."""
    from reports import campaign

    (tmp_path / "runs").mkdir()
    for path in sorted((ROOT / campaign.RESULTS / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        if record["lr"] == 0.05:
            record.update(device_name="NVIDIA H100 80GB HBM3", data=OFFICIAL, wall_time_s=1000.4,
                          train_images_per_s=12345.6)
        (tmp_path / "runs" / path.name).write_text(json.dumps(record))
    lossy = "CIFAR-10 JPEG, quality 75, chroma 4:2:0 (lossy)"
    assert campaign.rows(tmp_path) == [
        ["All-CNN-C", "0.05", "0", "completed", "31.59", "9.08", "350/350", "1,000", "12,346", "NVIDIA H100 80GB HBM3",
         "CIFAR-10 (official archive)", ""],
        ["All-CNN-C", "0.01", "0", "completed", "17.19", "9.08", "350/350", "392", "45,582", "NVIDIA H200", lossy,
         "train error 0.04% (eval mode), 0 of 1,258 ReLU channels dead"]]


def test_a_checkpoint_row_shows_the_data_of_its_own_config(tmp_path):
    """Two configs that differ in their data (data_sha256), each with a run still training at LR 0.1: each
    checkpoint's row shows the data its run key names (its sibling record's), not the first record's for both."""
    import torch

    from bench.config import config_key
    from reports import campaign
    from tests.test_untrusted import history

    (tmp_path / "runs").mkdir()
    (tmp_path / "checkpoints").mkdir()
    for path in sorted((ROOT / campaign.RESULTS / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        if record["lr"] == 0.05:
            record.update(data=OFFICIAL, config={**record["config"], "data_sha256": "ab" * 32})
            record["run_key"] = config_key(record["config"])
        (tmp_path / "runs" / f"{record['run_key']}.json").write_text(json.dumps(record))
        torch.save({"epoch": 3, "extra": {"wall_s": 9.0}, "history": history(3)},
                   tmp_path / "checkpoints" / f"{config_key({**record['config'], 'lr': 0.1})}.pt")
    running = [r for r in campaign.rows(tmp_path) if r[3].startswith("unfinished")]
    lossy = "CIFAR-10 JPEG, quality 75, chroma 4:2:0 (lossy)"
    assert sorted((r[1], r[6], r[10]) for r in running) == [("0.1", "3/350", "CIFAR-10 (official archive)"),
                                                             ("0.1", "3/350", lossy)]


def test_a_run_with_a_record_and_a_checkpoint_is_one_row_counted_as_the_report_counts_it(tmp_path):
    """A run that failed after its last checkpoint (run_all resumes it there) was two rows, "failed" and
    "unfinished"; a finished run's leftover checkpoint was a second, "unfinished" row too; a "completed" record of
    238 of its 350 epochs read "completed" where the full report counts it unfinished. One row each, as counted."""
    import torch

    from reports import campaign
    from tests.test_untrusted import history

    (tmp_path / "runs").mkdir()
    (tmp_path / "checkpoints").mkdir()
    statuses = {0.05: {"status": "failed", "error": "RuntimeError: CUDA error: unknown error"},
                0.01: {"epochs_completed": 238}}
    for path in sorted((ROOT / campaign.RESULTS / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        record.update(statuses[record["lr"]])
        record["history"] = record["history"][:record["epochs_completed"]]
        (tmp_path / "runs" / path.name).write_text(json.dumps(record))
        torch.save({"epoch": 3, "extra": {"wall_s": 9.0}, "history": history(3)},
                   tmp_path / "checkpoints" / f"{path.stem}.pt")
    assert [(r[1], r[3], r[6]) for r in campaign.rows(tmp_path)] == [
        ("0.05", "failed: checkpointed at epoch 3, resumed by the next campaign", "350/350"),
        ("0.01", "unfinished: checkpointed at epoch 3, resumed by the next campaign", "238/350")]
    for path in (tmp_path / "runs").glob("*.json"):
        path.write_bytes((ROOT / campaign.RESULTS / "runs" / path.name).read_bytes())
    assert [(r[1], r[3]) for r in campaign.rows(tmp_path)] == [("0.05", "completed"), ("0.01", "completed")]


def test_a_spent_budget_still_limits_every_step(jpeg_tarball, tmp_path):
    """`timeout 0` means no limit at all: with no time left each step still gets a limit of at least 1 s, and a test
    cut short decides nothing (no GRAPHS=0 kept for a later call, as if the graph tests had failed)."""
    log, records = campaign(tmp_path, "late", jpeg_tarball, TOTAL="30", RESERVE="30", GRAPHS="auto",
                            LEDGER=str(tmp_path / "no-ledger"))
    limits = [int(line.split()[2]) for line in log.splitlines() if line.startswith("$ timeout ")]
    assert len(limits) == 3 and min(limits) >= 1 and "bench/run_all.py" not in log, log[-3000:]  # prepare, gate, probe
    assert not records and not (tmp_path / "work-late" / "decided").exists(), log[-3000:]


def test_campaign_table_of_untrusted_records_and_file_names(tmp_path, capsys):
    """What a record or a checkpoint's file name says is a cell's text: no line, cell or block marker of its own
    (the README stays the same on a second run), a model or GPU this code does not expect is no crash
    (a config without epochs is no record: bench.schema sets it aside), and a file name that is not UTF-8 (a lone
    surrogate in Python) leaves the README whole and readable."""
    from reports import campaign

    (tmp_path / "runs").mkdir()
    (tmp_path / "checkpoints").mkdir()
    base = json.loads(next((ROOT / campaign.RESULTS / "runs").glob("*.json")).read_text())
    changes = [{"model": "foo"}, {"device_name": None}, {"device_name": f"x | y\n{campaign.END}\n| z"}]
    for i, change in enumerate(changes):
        record = {**base, **change, "run_key": f"{i:016x}", "config": dict(base["config"], model=change.get(
            "model", base["model"]))}
        (tmp_path / "runs" / f"{i:016x}.json").write_text(json.dumps(record))
    (tmp_path / "checkpoints" / f"{campaign.END} | x\n.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "checkpoints" / "\udcff.pt").write_bytes(b"not a checkpoint")  # the file name b"\xff.pt"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{campaign.BEGIN}\nold table\n{campaign.END}\nafter\n")
    assert campaign.main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    lines = text.splitlines()
    assert lines[0] == "intro" and lines[-1] == "after" and len(lines) == 2 + 2 + 2 + 5, lines
    assert text.count(campaign.END) == 1 and "foo (not in Table 3)" in text and "\ufffd" in text
    assert all(len(re.findall(r"(?<!\\)\|", line)) == len(campaign.COLUMNS) + 1 for line in lines[2:-2]), lines
    assert campaign.main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    assert readme.read_text() == text and "was already up to date" in capsys.readouterr().out


def test_campaign_readme_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A README write that fails (here: text that cannot be encoded) leaves the README as it was, not empty."""
    from reports import campaign

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{campaign.BEGIN}\nold table\n{campaign.END}\n")
    monkeypatch.setattr(campaign, "updated", lambda text, results_dir: text + "\udcff")
    with pytest.raises(UnicodeEncodeError):
        campaign.main(["--results", str(tmp_path), "--readme", str(readme)])
    assert readme.read_text() == f"intro\n{campaign.BEGIN}\nold table\n{campaign.END}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left


def test_an_ablation_refused_on_import_is_one_line_and_leaves_the_readme(tmp_path):
    from test_reports_files import REFUSE_ON_IMPORT

    script = REFUSE_ON_IMPORT + ('import runpy\n'
                                 'runpy.run_module("reports.campaign", run_name="__main__", alter_sys=True)\n')
    readme, text = tmp_path / "README.md", "# x\n<!-- measured-table:begin (python -m reports.campaign) -->\n<!-- " \
                                            "measured-table:end -->\n"
    readme.write_text(text)
    p = subprocess.run([sys.executable, "-c", script, "--results", str(ROOT / "reports/measured/campaign"),
                        "--readme", str(readme)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stderr) == (2, "reports.campaign: ablation 'wd', arm '5e-4': weight_decy cannot be varied "
                                           "by an arm\n")
    assert readme.read_text() == text


def test_each_record_reaches_out_while_the_next_run_trains(smoke_data_dir, jpeg_tarball, tmp_path):
    """The ledger archive in OUT is refreshed within seconds of each new record, so a call killed outright (the
    device tool kills at its timeout_s) still returns what finished: it was written once, at the very end."""
    shutil.copytree(smoke_data_dir, tmp_path / "work-live" / "data", ignore=shutil.ignore_patterns(".*.tmp"))
    # 6 epochs a run: the second trains for seconds (~3 on an idle machine), many of the script's 0.5 s polls
    env = environment(tmp_path, "live", jpeg_tarball, PARALLEL="1", LRS="0.05 0.01", LEDGER=str(tmp_path / "none"),
                      EXTRA="--epochs 6 --lr-drops --batch-size 32 --backend tensor --precision no")
    archive, runs = tmp_path / "live" / "ledger.tar.gz", tmp_path / "work-live" / "results" / "runs"
    proc = subprocess.Popen(["bash", "scripts/campaign.sh"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen = None  # (records in the archive, records in the work ledger) when the archive first held one
    while proc.poll() is None and seen is None:
        got = archived(archive) if archive.is_file() else {}  # mv'd into place whole: never a partial archive
        if got:
            seen = len(got), len(list(runs.glob("*.json")))
        time.sleep(0.2)
    assert proc.wait(timeout=450) == 0, proc.stderr.read()[-2000:]
    assert seen == (1, 1), seen  # the first run's record, while the second was still training
    assert len(archived(archive)) == 2 and not list((tmp_path / "live").glob("*.part"))


def test_a_call_the_device_would_cut_short_is_refused_in_one_line(tmp_path):
    """TOTAL over 570 s (a device call runs at most 600, 30 of them the margin), a RESERVE shorter than what may run
    after training (the header's arithmetic: 30 s), or a TOTAL that is not whole seconds: one line, exit 2, no
    OUT folder."""
    for bad, says in (({"TOTAL": "571"}, "TOTAL=571 is over 570 s"), ({"RESERVE": "29"}, "RESERVE=29 is under"),
                      ({"TOTAL": "9m"}, "whole seconds")):
        env = {**os.environ, "OUT": str(tmp_path / "out"), "SRC": str(tmp_path), **bad}
        p = subprocess.run(["bash", "scripts/campaign.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and says in p.stderr, p.stderr
        assert not (tmp_path / "out").exists()


def test_a_failure_stops_the_other_workers_run_at_once(smoke_data_dir, jpeg_tarball, tmp_path):
    """Fail fast with PARALLEL=2: when one worker's run_all fails (here: a model name it refuses), the other worker's
    run_all, training a run that would go on until the time budget is spent, gets SIGTERM at once; it checkpoints, and
    the call returns within seconds with that checkpoint in OUT, as at a timeout."""
    shutil.copytree(smoke_data_dir, tmp_path / "work-halt" / "data", ignore=shutil.ignore_patterns(".*.tmp"))
    t0 = time.monotonic()  # one strided-a run for two workers: one trains it, the other goes on to the bad name
    log, records = campaign(tmp_path, "halt", jpeg_tarball, PARALLEL="2", ORDER="strided-a strided-x", LRS="0.05",
                            TOTAL="150", LEDGER=str(tmp_path / "none"),
                            EXTRA="--epochs 5000 --batch-size 32 --num-workers 1 --backend tensor --precision no")
    took = time.monotonic() - t0
    (failing,) = re.findall(r"# stopping: worker (\d) exit 2, 0 failed runs of strided-x", log) or [log[-3000:]]
    other = {"1": "2", "2": "1"}[failing]
    assert f"# worker {other}: stopped (worker {failing} failed)" in log, log[-3000:]
    assert "stopped by SIGTERM: " in log and "checkpointed" in log, log[-3000:]  # run_all's own line
    assert not records  # unfinished: its checkpoint comes back instead
    (ckpt,) = (tmp_path / "halt").glob("*.pt")
    assert (tmp_path / "work-halt" / "results" / "checkpoints" / ckpt.name).read_bytes() == ckpt.read_bytes()
    assert f"{ckpt.stem} checkpointed" in log, log[-3000:]
    assert took < 80, (took, log[-3000:])  # not TOTAL - RESERVE = 120 s, when the run would have been cut short
