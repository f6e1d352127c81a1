"""A run still training has a checkpoint and no record: the report shows it as unfinished (not missing), from its
checkpoint's epochs and history, found by its run key; a damaged or foreign checkpoint is named, left where it is,
and never a crash (reports.running.unfinished_runs)."""
from __future__ import annotations

import torch

from bench.config import config_key
from reports.ledger import load_ledger
from reports.report import header, write_report
from reports.tables import table3, table3_by_lr, table3_runs
from tests.test_untrusted import history
from test_reports import record, write_ledger


def checkpoint(path, epochs: int, test: float = 40.0) -> None:
    """What run_all's checkpoint holds that a reader uses: the epoch counter, one history entry per epoch (test
    error every other epoch), the seconds trained."""
    entries = [dict(h, train_acc_pct=60.0, seconds=9.0, test_error_pct=test - h["epoch"] if h["epoch"] % 2 == 0
                    else None) for h in history(epochs)]
    torch.save({"epoch": epochs, "history": entries, "extra": {"wall_s": 9.0 * epochs}}, path)


def test_a_run_still_training_is_unfinished_not_missing(tmp_path):
    grid = {"models": ["allcnn-c"], "lrs": [0.25, 0.1, 0.05, 0.01], "seeds": [0]}
    done = record(lr=0.05, test=9.5, epochs=6, grid=grid)
    failed = record(lr=0.25, status="failed", epochs=6, grid=grid)
    folder = write_ledger(tmp_path / "results", [done, failed])
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir()
    checkpoint(checkpoints / f"{config_key({**done['config'], 'lr': 0.1})}.pt", 4)  # LR 0.1, 4 of 6 epochs
    checkpoint(checkpoints / f"{failed['run_key']}.pt", 1)  # a failed run keeps one: its record speaks for it
    (checkpoints / f"{config_key({**done['config'], 'lr': 0.01})}.pt").write_bytes(b"cut off")  # damaged
    checkpoint(checkpoints / "0123456789abcdef.pt", 2)  # of a config no record has

    led = load_ledger(folder)
    by_lr = table3_by_lr(led.df, led.reference).set_index("lr")["status"]
    assert dict(by_lr) == {0.25: "failed", 0.1: "unfinished", 0.05: "ok", 0.01: "missing"}
    (row,) = table3(led.df, led.reference).query("model == 'allcnn-c'").to_dict("records")
    assert row["error_pct"] == 9.5 and row["not_measured"] == "0.25 failed, 0.1 unfinished, 0.01 missing"
    running = table3_runs(led.df, led.reference).query("lr == 0.1").iloc[0]
    assert running["epochs_completed"] == 4 and running["wall_time_s"] == 36.0 and running["from_checkpoint"]
    assert [h["test_error_pct"] for h in running["history"]][1::2] == [38.0, 36.0]  # drawn in the curves
    text = dict(header(led))
    assert text["Runs"] == "completed 1, failed 1, unfinished 1" and "(2 records; 2 of this preset" in text["Ledger"]
    notes = [v for k, v in header(led) if k == "Note"]
    assert any("still training" in n and "at epoch 4" in n for n in notes)
    assert any("1 damaged checkpoint(s)" in n and "unreadable" in n for n in notes)
    assert any("1 checkpoint(s) of runs no record's config describes" in n for n in notes)
    assert len(list(checkpoints.glob("*.pt"))) == 4  # nothing moved: run_all sets aside what it cannot resume

    page = (write_report(folder, tmp_path / "report")[0].parent / "report.md").read_text()
    assert "| All-CNN-C | failed | unfinished | 9.50 | missing |" in page  # Table 3 by learning rate
    assert "0.25 failed, 0.1 unfinished, 0.01 missing" in page


def test_without_torch_a_checkpoint_is_named_not_read(tmp_path):
    import os
    import subprocess
    import sys

    from test_reports_files import NO_TORCH, ROOT

    done = record(lr=0.05, test=9.5, epochs=6)
    folder = write_ledger(tmp_path / "results", [done])
    (folder / "checkpoints").mkdir()
    checkpoint(folder / "checkpoints" / f"{config_key({**done['config'], 'lr': 0.1})}.pt", 4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    p = subprocess.run([sys.executable, "-c", NO_TORCH, "--results", str(folder), "--out", str(tmp_path / "r")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "LOADED []" in p.stdout, p.stderr
    page = (tmp_path / "r" / "report.md").read_text()
    assert "1 checkpoint(s) of runs still training not read (torch is not installed)" in page


def test_checkpoints_do_not_choose_what_table3_compares(tmp_path):
    """Records decide the epoch count and the reference config; a checkpoint never outvotes them. A ledger mixing
    records with and without `grid` reads; the header's hash covers the checkpoints read."""
    from bench import results

    done = record(lr=0.05, test=9.5, epochs=6, grid={"models": ["allcnn-c"], "lrs": [0.1, 0.05], "seeds": [0]})
    old = record(lr=0.01, test=12.0, epochs=6)
    old.pop("grid")  # an older record: pandas gives it NaN in a frame where the other has a grid
    short = record(model="model-c", lr=0.05, test=11.0, epochs=3)
    folder = write_ledger(tmp_path / "results", [done, old, short])
    hash_before = load_ledger(folder).sha256
    (folder / "checkpoints").mkdir()
    for lr in (0.25, 0.1):  # two runs still training under the 3-epoch config: more than the 6-epoch records' one
        checkpoint(folder / "checkpoints" / f"{config_key({**short['config'], 'lr': lr})}.pt", 2)
    checkpoint(folder / "checkpoints" / f"{config_key({**done['config'], 'lr': 0.1})}.pt", 4)

    led = load_ledger(folder)
    assert led.epochs == 6 and led.reference["epochs"] == 6
    assert sorted(led.df.query("from_checkpoint")["lr"]) == [0.1]  # the 6-epoch one; the 3-epoch ones are left out
    assert led.sha256 != hash_before == results.ledger_sha256(folder)
    assert table3(led.df, led.reference).query("model == 'allcnn-c'")["error_pct"].item() == 9.5


def test_a_hostile_checkpoint_history_is_named_not_drawn(tmp_path):
    """A checkpoint is unpickled, not parsed as JSON: infinities and huge ints reach the reader (they crashed the
    curves and the campaign table). It is named as damaged, and the report is written."""
    from reports.campaign import rows

    done = record(lr=0.05, test=9.5, epochs=6)
    folder = write_ledger(tmp_path / "results", [done])
    (folder / "checkpoints").mkdir()
    for lr, bad in ((0.1, {"test_error_pct": float("inf")}), (0.01, {"epoch": 10 ** 400}), (0.25, {"epoch": True})):
        path = folder / "checkpoints" / f"{config_key({**done['config'], 'lr': lr})}.pt"
        torch.save({"epoch": 2, "history": [{"epoch": 1}, {"epoch": 2, **bad}], "extra": {"wall_s": 10 ** 400}}, path)
    led = load_ledger(folder)
    assert not led.df["from_checkpoint"].any()
    assert any("3 damaged checkpoint(s)" in n and "malformed" in n for n in led.notes), led.notes
    write_report(folder, tmp_path / "report")
    listed = [r for r in rows(folder) if r[3].startswith("unfinished")]  # the campaign table: nothing read
    assert [(r[1], r[4], r[6]) for r in listed] == [("0.25", "", ""), ("0.1", "", ""), ("0.01", "", "")]


def test_a_run_still_training_at_a_requested_lr_off_the_default_grid_is_found(tmp_path):
    """The grid asked for LR 0.02, which is not among the paper's LRs: its checkpoint is still placed by its run
    key, and the cell shows unfinished rather than missing."""
    grid = {"models": ["allcnn-c"], "lrs": [0.05, 0.02], "seeds": [0]}
    done = record(lr=0.05, test=9.5, epochs=6, grid=grid)
    folder = write_ledger(tmp_path / "results", [done])
    (folder / "checkpoints").mkdir()
    checkpoint(folder / "checkpoints" / f"{config_key({**done['config'], 'lr': 0.02})}.pt", 4)
    led = load_ledger(folder)
    assert dict(table3_by_lr(led.df, led.reference).set_index("lr")["status"]) == {0.05: "ok", 0.02: "unfinished"}
    assert not any("no record's config describes" in n for n in led.notes)


def test_a_seed_still_training_without_a_record_of_its_seed_is_found(tmp_path):
    """`--seeds 0 1 2` after seed 0 was recorded: seed 1's checkpoint has no record of its seed yet. It is still
    placed by its run key (unfinished, so the cell is partial), not called a run no record's config describes.
    The seeds asked for with neither a record nor a checkpoint are missing (reports.requested)."""
    grid = {"models": ["allcnn-c"], "lrs": [0.1, 0.05], "seeds": [0, 1, 2]}
    done = [record(lr=lr, test=test, epochs=6, grid=grid) for lr, test in ((0.1, 12.0), (0.05, 9.5))]
    folder = write_ledger(tmp_path / "results", done)
    (folder / "checkpoints").mkdir()
    checkpoint(folder / "checkpoints" / f"{config_key({**done[1]['config'], 'seed': 1})}.pt", 4)
    led = load_ledger(folder)
    assert not any("no record's config describes" in n for n in led.notes), led.notes
    assert dict(table3_by_lr(led.df, led.reference).set_index("lr")["status"]) == {
        0.1: "missing seeds 1, 2", 0.05: "unfinished 1/2, missing seed 2"}
    (row,) = table3(led.df, led.reference).query("model == 'allcnn-c'").to_dict("records")
    assert (row["status"], row["not_measured"]) == (
        "partial", "0.1 missing seeds 1, 2, 0.05 unfinished (1/2 seeds), 0.05 missing seed 2")
    running = led.df.query("from_checkpoint").iloc[0]
    assert (running["seed"], running["config"]["seed"], running["lr"]) == (1, 1, 0.05)


def test_campaign_table_tells_the_seeds_of_one_cell_apart(tmp_path):
    """The next campaign trains All-CNN-C LR 0.05 with seeds 1 and 2 beside the recorded seed 0: their rows had the
    same model and LR and no seed, so which error was seed 0's could not be read. A seed still training (a
    checkpoint, no record of its seed yet) is placed too."""
    import json

    from reports import campaign
    from test_reports import ROOT

    (tmp_path / "runs").mkdir()
    (tmp_path / "checkpoints").mkdir()
    base = json.loads((ROOT / campaign.RESULTS / "runs" / "f827e2053e7b9174.json").read_text())
    seed1 = {**base, "seed": 1, "test_error_pct": 12.5, "config": {**base["config"], "seed": 1},
             "grid": {**base["grid"], "lrs": [0.05], "seeds": [0, 1, 2]}}  # as `--lrs 0.05 --seeds 0 1 2` records
    seed1["run_key"] = config_key(seed1["config"])
    for r in (base, seed1):
        (tmp_path / "runs" / f"{r['run_key']}.json").write_text(json.dumps(r))
    torch.save({"epoch": 3, "extra": {"wall_s": 9.0}, "history": history(3)},
               tmp_path / "checkpoints" / f"{config_key({**base['config'], 'seed': 2})}.pt")
    rows = campaign.rows(tmp_path)
    assert [(r[1], r[2], r[4]) for r in rows[:2]] == [("0.05", "0", "31.59"), ("0.05", "1", "12.50")]
    assert rows[2][1:3] == ["0.05", "2"] and rows[2][3].startswith("unfinished")


def test_campaign_table_tells_the_arms_of_one_cell_apart(tmp_path):
    """`--ablations preprocessing` at LR 0.01 beside the recorded run (the next campaign's plan): the mean/std and
    filter-bias-1.0 arms' rows had the same model, LR and seed, and which error was whose could not be read. Each
    arm's row names what it changes, as bench.plan does; so does a checkpoint of an arm still training."""
    import json

    from reports import campaign
    from test_reports import ROOT

    (tmp_path / "runs").mkdir()
    (tmp_path / "checkpoints").mkdir()
    base = json.loads((ROOT / campaign.RESULTS / "runs" / "489234371f2401e9.json").read_text())
    for preprocess, error in (("meanstd", 12.5), ("gcn-zca-fb1", 14.5)):
        arm = {**base, "preprocess": preprocess, "test_error_pct": error,
               "config": {**base["config"], "preprocess": preprocess}}
        arm["run_key"] = config_key(arm["config"])
        (tmp_path / "runs" / f"{arm['run_key']}.json").write_text(json.dumps(arm))
    (tmp_path / "runs" / f"{base['run_key']}.json").write_text(json.dumps(base))
    torch.save({"epoch": 3, "extra": {"wall_s": 9.0}, "history": history(3)}, tmp_path / "checkpoints" /
               f"{config_key({**base['config'], 'preprocess': 'gcn-zca-fb1', 'lr': 0.05})}.pt")
    rows = campaign.rows(tmp_path)
    assert [(r[0], r[1], r[4]) for r in rows[:2]] == [
        ("All-CNN-C [preprocess=gcn-zca-fb1]", "0.05", "40.00 (epoch 3)"), ("All-CNN-C", "0.01", "17.19")]
    assert {(r[0], r[1], r[4]) for r in rows[2:]} == {("All-CNN-C [preprocess=gcn-zca-fb1]", "0.01", "14.50"),
                                                      ("All-CNN-C [preprocess=meanstd]", "0.01", "12.50")}


def test_a_checkpoint_of_a_run_recorded_under_an_older_key_is_not_a_second_run(tmp_path):
    """A run recorded under a key of another version of the code, with a checkpoint under this code's key: its
    record speaks for the run, which is not also shown as still training (a second, unfinished seed)."""
    done = record(lr=0.05, test=9.5, epochs=6)
    done["run_key"] = "0123456789abcdef"
    folder = write_ledger(tmp_path / "results", [done])
    (folder / "checkpoints").mkdir()
    checkpoint(folder / "checkpoints" / f"{config_key(done['config'])}.pt", 4)
    led = load_ledger(folder)
    assert not led.df["from_checkpoint"].any() and not any("still training" in n for n in led.notes), led.notes
    assert table3_by_lr(led.df, led.reference).set_index("lr").loc[0.05, "status"] == "ok"
