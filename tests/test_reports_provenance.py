"""Where a number of the report came from: the code of every session that trained its runs (the header's "Code"
line) and the runs behind each Table 3 cell (table3.csv's run keys)."""
from __future__ import annotations

import pandas as pd

from bench import schema
from reports import formats
from reports.ledger import load_ledger
from reports.report import header, write_report
from reports.tables import table3
from test_reports import record, write_ledger


def session(from_epoch: int, commit: str | None = None, dirty: bool | None = None, code: str | None = None) -> dict:
    """One entry of a record's `sessions` as bench.runs.session writes it (all None but from_epoch: unknown)."""
    entry = dict.fromkeys(schema.SESSION_TYPES)
    return {**entry, "from_epoch": from_epoch, "git_commit": commit, "git_dirty": dirty, "code_sha256": code}


def test_the_code_line_counts_every_session_of_every_record(tmp_path):
    """A run resumed twice, from a checkpoint older than `sessions` and then from other code, shows all its code,
    not only its last session's (the record's own fields), and says that its first session is unknown."""
    resumed = record(lr=0.05, seed=0, test=9.2)
    resumed["sessions"] = [session(1), session(2, "a" * 40, False, "d0" * 32), session(3, "b" * 40, True, "e1" * 32)]
    resumed.update(git_commit="b" * 40, git_dirty=True, code_sha256="e1" * 32)
    older = record(lr=0.05, seed=1, test=9.4)  # no sessions: its own fields
    code = dict(header(load_ledger(write_ledger(tmp_path / "ledger", [resumed, older]))))["Code"]
    assert code == ("519e8c2aaaaa (1), aaaaaaaaaaaa (1), bbbbbbbbbbbb (dirty) (1); code_sha256 d0d0d0d0d0d0 (1), "
                    "code_sha256 e1e1e1e1e1e1 (1); 1 session unknown")


def test_the_pixels_line_counts_each_runs_arrays_digest(tmp_path):
    """The header names the prepared pixels behind the runs (data.arrays_sha256), says how many records are older
    than the field, and calls two digests MIXED: the same source decoded twice into different pixels."""
    recs = [record(lr=lr, test=9.2) for lr in (0.25, 0.1, 0.05, 0.01)]
    for r, digest in zip(recs, ("5d" * 32, "5d" * 32, "e7" * 32, None)):
        if digest:
            r["data"] = {**r["data"], "arrays_sha256": digest}
    pixels = dict(header(load_ledger(write_ledger(tmp_path / "mixed", recs))))["Pixels"]
    assert pixels == ("arrays_sha256 5d5d5d5d5d5d (2), arrays_sha256 e7e7e7e7e7e7 (1); not recorded (1) -- MIXED: "
                      "not every run saw the same pixels")
    same = dict(header(load_ledger(write_ledger(tmp_path / "same", recs[:2]))))["Pixels"]
    assert same == "arrays_sha256 5d5d5d5d5d5d (2)"
    assert dict(header(load_ledger(write_ledger(tmp_path / "old", recs[3:]))))["Pixels"] == "not recorded"


def test_the_versions_line_names_what_was_installed_and_used(tmp_path):
    """A record names numpy, Pillow, CUDA and cuDNN too; a null one (ffcv not installed, CUDA on a CPU run) is left
    out of the header rather than shown as "None"."""
    cpu, gpu = record(lr=0.05, test=9.2), record(lr=0.1, test=9.5)
    cpu["versions"] = {"python": "3.11.7", "torch": "2.14.1", "ffcv": "1.0.2", "numpy": "2.4.6", "cuda": None}
    gpu["versions"] = {"python": "3.12.3", "torch": "2.11.0", "ffcv": None, "cuda": "13.0", "cudnn": "91900"}
    versions = dict(header(load_ledger(write_ledger(tmp_path / "ledger", [cpu, gpu]))))["Versions"]
    assert versions == ("cuda 13.0, cudnn 91900, python 3.12.3, torch 2.11.0 (1 run); "
                        "ffcv 1.0.2, numpy 2.4.6, python 3.11.7, torch 2.14.1 (1 run)")


def test_table3_csv_names_the_runs_behind_each_cell(tmp_path):
    """Each Table 3 number names its runs in table3.csv (run_keys; val_run_keys for the LR judged on val5k): the
    completed seeds at the selected LR, not a diverged one nor another LR's. The shown tables stay for reading."""
    recs = [record(lr=0.05, seed=0, test=9.2), record(lr=0.05, seed=1, test=9.4), record(lr=0.1, seed=0, test=9.9),
            record(lr=0.25, seed=0, status="diverged"), record(model="model-a", lr=0.05, status="failed"),
            record(lr=0.1, train_split="train45k", test=9.9, val=10.0),
            record(lr=0.05, train_split="train45k", test=9.8, val=9.5)]
    out = tmp_path / "report"
    write_report(write_ledger(tmp_path / "ledger", recs), out)
    t3 = formats.read_csv(out / "table3.csv").set_index("model")
    assert t3.loc["allcnn-c", "run_keys"] == " ".join(sorted(r["run_key"] for r in recs[:2]))
    assert t3.loc["allcnn-c", "val_run_keys"] == recs[6]["run_key"]
    assert pd.isna(t3.loc["model-a", "run_keys"]) and pd.isna(t3.loc["model-a", "val_run_keys"])
    for name in ("report.md", "report.html", "table3.tex", "table3-details.tex"):
        assert not any(r["run_key"] in (out / name).read_text() for r in recs), name


def test_run_keys_that_look_like_numbers_read_back_as_written(tmp_path):
    """A run key is a hex digest: "1234567812345678" or "12345678e1234567" would read back as a number."""
    led = load_ledger(write_ledger(tmp_path / "ledger", [record(test=9.3)]))
    t3 = table3(led.df, led.reference)
    t3 = t3.assign(run_keys=pd.array(["1234567812345678", "12345678e1234567"] + [None] * (len(t3) - 2), "string"))
    formats.write_csv(t3, tmp_path / "table3.csv", "sha")
    pd.testing.assert_frame_equal(formats.read_csv(tmp_path / "table3.csv"), t3, check_dtype=False)


def test_run_keys_leave_out_an_unfinished_seed_at_the_selected_lr(tmp_path):
    """Seed 1 at LR 0.05 is "completed" after 2 of its 3 epochs (unfinished: outcome) yet records a test error: it
    is not in the cell's number (9.2, one seed), so its key is not among the runs behind it either."""
    early = record(lr=0.05, seed=1, test=8.0)
    early.update(epochs_completed=2, history=early["history"][:2])
    recs = [record(lr=0.05, seed=0, test=9.2), early]
    led = load_ledger(write_ledger(tmp_path, recs))
    row = table3(led.df, led.reference).set_index("model").loc["allcnn-c"]
    assert (row["error_pct"], row["n_seeds"], row["status"]) == (9.2, 1, "partial")
    assert row["run_keys"] == recs[0]["run_key"]


def test_a_session_known_by_its_code_digest_alone_is_not_unknown(tmp_path):
    """A run trained from a copy without .git names its code by code_sha256 only: that session is known."""
    rec = record(lr=0.05, test=9.2)
    rec.update(git_commit=None, code_sha256="d0" * 32)
    code = dict(header(load_ledger(write_ledger(tmp_path / "ledger", [rec]))))["Code"]
    assert code == "code_sha256 d0d0d0d0d0d0 (1)"
