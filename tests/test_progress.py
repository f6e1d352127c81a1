"""bench/progress.py: what run_all says about the whole grid, read from a real ledger folder (bench.results)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from bench import results
from bench.config import RunConfig
from bench.progress import Progress
from test_reports import record, write_ledger


def test_the_eta_is_in_hours_and_the_summary_counts_this_grids_runs_only(tmp_path, capsys):
    """The ledger also holds another grid's run (Model A): the summary counts only the runs of this grid's keys,
    and names the one not recorded yet."""
    out = write_ledger(tmp_path / "out", [record(lr=0.05, test=9.2), record(lr=0.1, status="diverged"),
                                          record(model="model-a", lr=0.05, test=12.0)])
    keys = [r["run_key"] for r in results.read_records(out) if r["model"] == "allcnn-c"] + ["0123456789abcdef"]
    show = Progress(RunConfig(out=str(out), progress=False), SimpleNamespace(is_main_process=True))
    show.eta(5400.0, 1234.4, "allcnn-c")
    show.summary(keys)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ETA 1.50 h (measured 1234 img/s per process on allcnn-c)"
    assert lines[1].startswith("grid of 3 runs: 1 completed, 1 diverged, 1 not recorded yet (")


def test_an_arms_lines_name_what_it_changes_and_the_grids_do_not(capsys):
    """`--ablations preprocessing` at one LR trains three All-CNN-C runs of LR 0.01, seed 0: their progress lines
    (each run's end here) name the arm, as bench.plan's rows do; the grid's own run's line is as before. The Adam
    arm's own LR grid (a grid field) and eager step (not in the run key) are not what it changes."""
    from bench.config import expand

    grid = RunConfig(models=("allcnn-c",), lrs=(0.01,), ablations=("preprocessing", "optimizer"), cuda_graphs=True)
    show = Progress(grid, SimpleNamespace(is_main_process=True))
    show.owner = lambda: True
    for run in expand(grid):
        show.run_done(run, "k", {"status": "completed", "error": None, "test_error_pct": 17.19})
    assert capsys.readouterr().out.splitlines() == [
        "allcnn-c lr=0.01 seed=0: completed, test error 17.19% [k]",
        "allcnn-c lr=0.01 seed=0 [preprocess=meanstd]: completed, test error 17.19% [k]",
        "allcnn-c lr=0.01 seed=0 [preprocess=gcn-zca-fb1]: completed, test error 17.19% [k]",
        *(f"allcnn-c lr={lr:g} seed=0 [optimizer=adam]: completed, test error 17.19% [k]"
          for lr in (3e-3, 1e-3, 3e-4, 1e-4))]


def test_the_summary_names_the_ledger_folder_and_the_logs_and_only_the_main_process_says_it(tmp_path, capsys):
    """The summary line names where the records are (<out>/runs, what `python -m reports` reads) and, with a
    tracker, the logs; a process other than the main one says nothing (one summary per grid, not one per GPU)."""
    out = write_ledger(tmp_path / "out", [record(lr=0.05, test=9.2), record(lr=0.1, status="diverged")])
    keys = [r["run_key"] for r in results.read_records(out)]
    cfg = RunConfig(out=str(out), progress=False, log_with="tensorboard")
    Progress(cfg, SimpleNamespace(is_main_process=False)).summary(keys)
    assert capsys.readouterr().out == ""
    Progress(cfg, SimpleNamespace(is_main_process=True)).summary(keys)
    line = capsys.readouterr().out.splitlines()[0]
    assert line == f"grid of 2 runs: 1 completed, 1 diverged; ledger: {out / 'runs'}; tensorboard logs: {out / 'logs'}"


def test_the_plan_line_counts_and_names_the_ledger_folder(tmp_path, capsys):
    out = tmp_path / "out"
    show = Progress(RunConfig(out=str(out), progress=False), SimpleNamespace(is_main_process=True))
    show.plan(runs=[1, 2, 3], done={1}, pending=[2, 3], mine=[2], mode="grid", world=2, ddp=False)
    assert capsys.readouterr().out.splitlines()[1] == (f"3 runs: 1 already in {out / 'runs'} (skipped), 2 to train "
                                                       "(failed and stalled ones again); mode grid on 2 process(es)")


def test_a_run_line_says_why_it_did_not_complete_and_each_process_of_a_grid_says_its_own(capsys):
    """A diverged run's line carries its reason; in grid mode a process other than the main one reports the runs
    it trained itself (no one else does), in DDP mode it leaves them to the main process (one line per run)."""
    from bench.config import PRESETS, Run

    cfg = dataclasses.replace(PRESETS["smoke"], progress=False)
    run = Run("allcnn-c", 0.05, 0, cfg)
    show = Progress(cfg, SimpleNamespace(is_main_process=False))
    show.plan([run], set(), [run], [run], "grid", 2, ddp=False)
    show.run_done(run, "k", {"status": "diverged", "error": "loss is nan in epoch 2", "test_error_pct": None})
    assert capsys.readouterr().out == "allcnn-c lr=0.05 seed=0: diverged, test error - (loss is nan in epoch 2) [k]\n"
    show.plan([run], set(), [run], [run], "ddp", 2, ddp=True)
    show.run_done(run, "k", {"status": "completed", "error": None, "test_error_pct": 9.5})
    assert capsys.readouterr().out == ""


def test_off_a_terminal_progress_is_plain_lines_for_evaluated_epochs_only(capsys, monkeypatch):
    """stdout a file or pipe (as here): no bars even with --progress, a plain line per evaluated epoch and none for
    an epoch without an evaluation; on a terminal, bars instead of those lines."""
    from bench import progress
    from bench.config import PRESETS, Run

    cfg = dataclasses.replace(PRESETS["smoke"], progress=True)
    run = Run("allcnn-c", 0.05, 0, cfg)
    entry = {"epoch": 2, "loss": 0.5, "train_acc_pct": 80.0, "test_error_pct": 20.0, "test_loss": 0.6}
    show = Progress(cfg, SimpleNamespace(is_main_process=True))
    assert not show.bars and show.epoch_bar(run, 1, 10, None) is None
    show.epoch_done(run, {**entry, "epoch": 1, "test_error_pct": None, "test_loss": None})
    show.epoch_done(run, entry)
    assert capsys.readouterr().out == ("allcnn-c lr=0.05 seed=0 epoch 2/2: loss 0.500, train acc 80.0%, test error "
                                       "20.00% (loss 0.600)\n")
    monkeypatch.setattr(progress, "sys", SimpleNamespace(stdout=SimpleNamespace(isatty=lambda: True)))
    show = Progress(cfg, SimpleNamespace(is_main_process=True))
    show.epoch_done(run, entry)
    assert show.bars and capsys.readouterr().out == ""


def test_a_log_with_that_cannot_log_is_a_usage_error_before_anything_trains(monkeypatch):
    """`--log-with` names no Accelerate tracker, or one whose package is missing: one line (UsageError) when
    Progress is made, before any run trains, not a KeyError or an ImportError at the first run's tracker."""
    from accelerate.utils import imports

    from bench.cli import UsageError
    from bench.progress import tracker_class

    with pytest.raises(UsageError, match=r"^--log-with tensorbored is not an Accelerate tracker; valid: .*tensorboard"):
        Progress(RunConfig(log_with="tensorbored", progress=False), SimpleNamespace(is_main_process=True))
    monkeypatch.setattr(imports, "is_mlflow_available", lambda: False)
    with pytest.raises(UsageError, match=r"^--log-with mlflow: its package is not installed \(pip install mlflow\)$"):
        tracker_class("mlflow")
    assert tracker_class(None) is None and tracker_class("tensorboard").name == "tensorboard"
