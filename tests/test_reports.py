"""Reports from a small hand-made ledger whose right answers are known (bench.results schema, written with
bench.results.write_record): protocols, seeds, diverged / failed / missing runs, ablations. The files written from
it: tests/test_reports_files.py; the throughput table: tests/test_reports_throughput.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from allconv.specs import PAPER_MODELS, SPECS, macs
from bench import ablations, results, schema
from bench.ablations import BASELINE
from reports import formats
from reports.ledger import load_ledger
from reports.report import write_report
from reports.tables import (ablation_has_runs, ablation_table, best_over_lr, left_out, select_on_val, table3,
                            table3_by_lr)
from reports.throughput import throughput_table

ROOT = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"


CONFIG = {**BASELINE, "init": "caffe-xavier", "weight_decay": 1e-3, "momentum": 0.9, "batch_size": 256,
          "preprocess": "gcn-zca", "lr_drops": [200, 250, 300], "subset_per_class": None, "data_sha256": "ab12",
          "backend": "ffcv", "out": "results", "data_dir": "data", "progress": True, "num_workers": None}
"""A resolved run config as bench/config.py records it (the fields a report compares, and some it ignores)."""


def record(model="allcnn-c", lr=0.05, seed=0, status="completed", test=None, val=None, preset="paper", epochs=3,
           finished="2026-11-20T10:00:00+00:00", img_s=20000.0, grid=None, **fields) -> dict:
    """One ledger record with every schema field; `fields` override config fields (bn, precision, init, ...);
    `grid`: the command's requested grid (None: an older record without one)."""
    config = {**CONFIG, "model": model, "lr": lr, "seed": seed, "preset": preset, "epochs": epochs, **fields}
    config["val_split"] = "val5k" if config["train_split"] == "train45k" else None
    done = epochs if status == "completed" else 1
    history = [{"epoch": e, "loss": 1.0 / e, "train_acc_pct": 50.0, "lr": lr, "seconds": 10.0 + e,
                "test_error_pct": (test if test is not None else 90.0) + (epochs - e), "val_error_pct": val}
               for e in range(1, done + 1)]
    spec = SPECS[model]
    rec = {
        "run_key": results.run_key(config), "status": status,
        "error": None if status == "completed" else f"{status} at epoch 1",
        "model": model, "display_name": spec.paper_name, "family": spec.family, "variant": spec.variant,
        "lr": lr, "seed": seed, "epochs": epochs, "epochs_completed": done, "preset": preset,
        "init": config["init"], "weight_decay": 1e-3, "momentum": 0.9, "batch_size": 256,
        "preprocess": "gcn-zca", "val_split": config["val_split"], "eval_precision": "no", "grid": grid,
        "backend": config["backend"], "mode": "grid", "channels_last": True, "compile": False,
        "test_error_pct": test if status == "completed" else None, "best_test_error_pct": test,
        "best_epoch": epochs, "val_error_pct": val if status == "completed" else None,
        "params": spec.num_params, "macs": macs(model),
        "train_images_per_s": img_s if status == "completed" else None, "eval_images_per_s": 2 * img_s,
        "wall_time_s": 100.0, "peak_memory_mb": 1000.0, "device_name": H100, "device_count": 1, "world_size": 1,
        "versions": {"python": "3.11.9", "torch": "2.14.1", "accelerate": "1.2.0", "ffcv": "1.0.2"},
        "git_commit": "519e8c2aaaaabbbbcccc", "git_dirty": False,
        "data": {"source": "cifar10-jpeg.tar.gz", "source_sha256": "ab", "manifest_sha256": "cd",
                 "num_train": 50000, "num_test": 10000},
        "config": config, "started_at": "2026-11-20T09:00:00+00:00", "finished_at": finished, "history": history,
    }
    rec.update({k: v for k, v in config.items() if k in BASELINE})
    return rec


def small_ledger() -> list[dict]:
    r = record
    return [
        # All-CNN-C, 2 seeds: LR 0.1 holds the single best run (9.00) but 0.05 has the best seed mean (9.30).
        r(lr=0.25, seed=0, status="diverged"), r(lr=0.25, seed=1, status="diverged"),
        r(lr=0.1, seed=0, test=9.0), r(lr=0.1, seed=1, test=10.0),
        r(lr=0.05, seed=0, test=9.2), r(lr=0.05, seed=1, test=9.4, finished="2026-11-21T12:34:56+00:00"),
        r(lr=0.01, seed=0, test=11.0), r(lr=0.01, seed=1, test=11.2),
        # ... trained on train45k: lowest val at 0.05 (test 9.8), lowest test at 0.01 (not selected).
        r(lr=0.1, train_split="train45k", test=9.9, val=10.0), r(lr=0.05, train_split="train45k", test=9.8, val=9.5),
        r(lr=0.01, train_split="train45k", test=9.1, val=12.0),
        # ... one arm of every ablation.
        r(lr=0.1, bn=True, test=8.5), r(lr=0.05, bn=True, test=8.9),
        r(lr=1e-3, optimizer="adam", test=9.9),
        r(lr=0.05, augment="flip-translate", test=7.5),
        r(lr=0.05, precision="no", test=9.35, img_s=5000.0),
        r(lr=0.1, final_relu=False, test=9.0),
        r(model="model-c", lr=0.1, final_relu=False, test=9.6),
        r(lr=0.05, init="kaiming", test=90.0), r(lr=0.05, batch_size=128, test=9.6),
        r(lr=0.05, preprocess="meanstd", test=9.7),
        # Model A: one failed LR; best 12.5 at 0.1.
        r(model="model-a", lr=0.25, test=12.9), r(model="model-a", lr=0.1, test=12.5),
        r(model="model-a", lr=0.05, test=12.6), r(model="model-a", lr=0.01, status="failed"),
        # Strided-A: every LR diverged. ConvPool-A: its one run failed. All-CNN-A: no records at all.
        *(r(model="strided-a", lr=lr, status="diverged") for lr in (0.25, 0.1, 0.05, 0.01)),
        r(model="convpool-a", lr=0.1, status="failed"),
        # Model B: only LR 0.1 ran. Model C: exactly the paper's 9.74.
        r(model="model-b", lr=0.1, test=10.0),
        r(model="model-c", lr=0.1, test=10.0), r(model="model-c", lr=0.05, test=9.74),
        # Left out: another preset, and a run of another length.
        r(preset="smoke", epochs=1, test=80.0, finished="2026-11-25T00:00:00+00:00"),
        r(model="model-c", lr=0.01, epochs=1, test=50.0),
    ]


def write_ledger(folder: Path, records: list[dict]) -> Path:
    for rec in records:
        if rec["status"] in schema.STATUSES:
            results.write_record(folder, rec)
        else:  # "stalled", before bench/results.py knows it (CONTRACT.md)
            results.runs_dir(folder).mkdir(parents=True, exist_ok=True)
            (results.runs_dir(folder) / f"{rec['run_key']}.json").write_text(json.dumps(rec, sort_keys=True))
    return folder


@pytest.fixture(scope="module")
def ledger_dir(tmp_path_factory) -> Path:
    return write_ledger(tmp_path_factory.mktemp("results"), small_ledger())


@pytest.fixture(scope="module")
def led(ledger_dir):
    return load_ledger(ledger_dir)


@pytest.fixture(scope="module")
def t3(led):
    return table3(led.df, led.reference).set_index("model")


@pytest.fixture(scope="module")
def report_dir(ledger_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    write_report(ledger_dir, out)
    return out


def test_ledger_picks_one_preset_and_epoch_count(led):
    assert led.preset == "paper" and led.epochs == 3 and led.precision == "bf16"
    assert set(led.df["preset"]) == {"paper"} and set(led.df["epochs"]) == {3}
    assert any("other presets: smoke (1)" in n for n in led.notes)
    assert any("Epochs are mixed" in n for n in led.notes)


def test_table3_rows_in_paper_order(t3):
    assert list(t3.index) == list(PAPER_MODELS)  # a network of one's own has a row only once it ran or is asked for
    assert list(t3["paper_error_pct"]) == [12.47, 13.46, 10.21, 10.30, 10.20, 10.98, 9.33, 9.10,  # the paper's
                                           9.74, 10.19, 9.31, 9.08]  # Table 3, not read back from SPECS
    assert t3.loc["allcnn-c", "params"] == 1_369_738 and t3.loc["allcnn-c", "paper_params"] == "1.4 M"
    assert t3.loc["allcnn-c", "macs"] == 270_798_336


def test_seeds_are_averaged_before_the_lr_is_chosen(t3):
    row = t3.loc["allcnn-c"]
    assert row["lr"] == 0.05 and row["n_seeds"] == 2
    assert row["error_pct"] == 9.3
    assert row["error_std"] == round(math.sqrt(0.02), 6)  # sample std of 9.2, 9.4 (ddof=1)
    assert row["diff_pp"] == 0.22
    assert row["diverged_lrs"] == "0.25" and row["status"] == "ok"


def test_best_over_lr_is_the_minimum_over_lrs(t3):
    row = t3.loc["model-a"]
    assert (row["error_pct"], row["lr"], row["n_seeds"]) == (12.5, 0.1, 1)
    assert math.isnan(row["error_std"])
    assert row["diff_pp"] == 0.03 and row["status"] == "partial" and row["not_measured"] == "0.01 failed"
    assert t3.loc["model-c", "error_pct"] == 9.74 and t3.loc["model-c", "diff_pp"] == 0.0


def test_select_on_val_reports_the_test_error_at_the_best_val_lr(t3):
    row = t3.loc["allcnn-c"]
    assert (row["val_error_pct"], row["val_lr"], row["val_n_seeds"]) == (9.8, 0.05, 1)
    assert row["val_diff_pp"] == 0.72 and row["val_status"] == "partial" and row["val_not_measured"] == "0.25 missing"
    assert t3.loc["model-a", "val_status"] == "missing" and pd.isna(t3.loc["model-a", "val_not_measured"])


def test_protocols_directly():
    runs = pd.DataFrame([{"lr": lr, "outcome": "completed", "test_error_pct": t, "val_error_pct": v, "config": None}
                         for lr, t, v in ((0.1, 9.0, 11.0), (0.05, 9.5, 10.0), (0.01, 8.0, 12.0))])
    assert best_over_lr(runs)["error_pct"] == 8.0 and best_over_lr(runs)["lr"] == 0.01
    assert select_on_val(runs)["error_pct"] == 9.5 and select_on_val(runs)["lr"] == 0.05
    tied = pd.DataFrame([{"lr": lr, "outcome": "completed", "test_error_pct": 9.0, "val_error_pct": 10.0,
                          "config": None} for lr in (0.01, 0.1, 0.05)])
    assert best_over_lr(tied)["lr"] == select_on_val(tied)["lr"] == 0.1  # a tie goes to the larger LR


def test_diverged_failed_missing_are_shown_not_filled(t3):
    assert t3.loc["strided-a", "status"] == "diverged"
    assert t3.loc["strided-a", "diverged_lrs"] == "0.25, 0.1, 0.05, 0.01"
    assert t3.loc["convpool-a", "status"] == "failed"
    assert t3.loc["allcnn-a", "status"] == "missing"
    assert t3.loc["model-b", "status"] == "partial"
    assert t3.loc["model-b", "not_measured"] == "0.25 missing, 0.05 missing, 0.01 missing"
    for name in ("strided-a", "convpool-a", "allcnn-a"):
        assert math.isnan(t3.loc[name, "error_pct"]) and math.isnan(t3.loc[name, "diff_pp"])
    shown = formats.display_table3(t3.reset_index()).set_index("Model")
    assert shown.loc["Strided-CNN-A", "Ours %"] == "diverged"
    assert shown.loc["ConvPool-CNN-A", "Ours %"] == "failed"
    assert shown.loc["All-CNN-A", "Ours %"] == "missing"
    assert shown.loc["All-CNN-C", "Ours %"] == "9.30 ± 0.14" and shown.loc["All-CNN-C", "n"] == "2"
    assert shown.loc["Model A", "Ours %"] == "12.50"  # no ± with one seed
    assert shown.loc["All-CNN-C", "Δ pp"] == "+0.22" and shown.loc["Model C", "Δ pp"] == "0.00"


def test_ablations(led):
    bn = ablation_table(led.df, "bn-dropout", led.reference).set_index("arm")
    assert bn.loc["dropout, no BN (paper)", "error_pct"] == 9.3
    assert bn.loc["BN + dropout", "error_pct"] == 8.5 and bn.loc["BN + dropout", "diff_vs_baseline_pp"] == -0.8
    assert bn.loc["neither", "status"] == "missing"
    aug = ablation_table(led.df, "augmentation", led.reference).set_index("arm")
    flip = aug.loc["flip + translate 5 px (Table 4)"]
    assert (flip["paper_error_pct"], flip["error_pct"], flip["diff_vs_paper_pp"]) == (7.25, 7.5, 0.25)
    lrsel = ablation_table(led.df, "lr-selection", led.reference).set_index("arm")
    assert lrsel.loc["judged on val5k, trained on train45k", "error_pct"] == 9.8
    assert lrsel.loc["judged on val5k, trained on train45k", "diff_vs_baseline_pp"] == 0.5
    prec = ablation_table(led.df, "precision", led.reference).set_index("arm")
    assert prec.loc["fp32", "error_pct"] == 9.35 and prec.loc["fp32", "diff_vs_baseline_pp"] == 0.05
    opt = ablation_table(led.df, "optimizer", led.reference).set_index("arm")
    assert opt.loc["Adam", "lr"] == 1e-3  # its own grid, not SGD's, every LR of it shown
    assert opt.loc["Adam", "not_measured"] == "0.003 missing, 0.0003 missing, 0.0001 missing"
    head = ablation_table(led.df, "head", led.reference)
    assert list(head["model"]) == ["model-c", "model-c", "allcnn-c", "allcnn-c"]
    assert list(head["error_pct"]) == [9.74, 9.6, 9.3, 9.0]
    init = ablation_table(led.df, "init", led.reference).set_index(["model", "arm"])  # fields the first six never
    assert init.loc[("allcnn-c", "kaiming"), "diff_vs_baseline_pp"] == 80.7  # varied: each run in its own arm
    assert init.loc[("convpool-c", "kaiming"), "status"] == "missing"
    batch = ablation_table(led.df, "batch-size", led.reference).set_index("arm")
    assert list(batch["error_pct"]) == [9.3, 9.6] and list(batch["n_seeds"]) == [2, 1]


def test_arms_are_taken_on_top_of_the_runs_preset(tmp_path):
    """The smoke preset trains at batch 64 in fp32: its grid runs are the baseline arm of the batch-size ablation
    (not "missing" for want of batch 256), its batch-128 run the other arm, and the throughput table from the
    ledger reads its baseline runs."""
    smoke = {"preset": "smoke", "epochs": 2, "batch_size": 64, "precision": "no"}
    recs = [record(lr=lr, test=t, **smoke) for lr, t in ((0.1, 88.0), (0.05, 86.0))]
    recs.append(record(lr=0.05, test=87.0, **{**smoke, "batch_size": 128}))
    led = load_ledger(write_ledger(tmp_path, recs))
    assert led.reference["batch_size"] == 64 and table3(led.df, led.reference).set_index("model").loc[
        "allcnn-c", "error_pct"] == 86.0
    batch = ablation_table(led.df, "batch-size", led.reference).set_index("arm")
    assert list(batch["error_pct"]) == [86.0, 87.0]
    assert list(batch["arm_here"].fillna("")) == ["batch_size=64", ""]  # "256 (Caffe port)" is the grid's run, at 64
    assert list(formats.display_ablation(batch.reset_index())["Arm"]) == ["256 (Caffe port); here batch_size=64", "128"]
    tp = throughput_table(led.df)
    assert list(tp["train_images_per_s"]) == [20000.0] and list(tp["n_runs"]) == [2]


def test_precision_rule_uses_the_most_common_precision(tmp_path):
    recs = [record(model="allcnn-c", lr=lr, test=t, precision="no") for lr, t in ((0.1, 9.5), (0.05, 9.4))]
    recs.append(record(model="allcnn-c", lr=0.05, test=8.0, precision="bf16"))
    led = load_ledger(write_ledger(tmp_path, recs))
    assert led.precision == "no"
    row = table3(led.df, led.reference).set_index("model").loc["allcnn-c"]
    assert (row["error_pct"], row["lr"]) == (9.4, 0.05)


def test_an_lr_where_one_seed_diverged_is_not_selected():
    runs = pd.DataFrame([{"lr": lr, "outcome": o, "test_error_pct": t, "val_error_pct": None, "config": None}
                         for lr, o, t in ((0.1, "completed", 8.0), (0.1, "diverged", None),
                                          (0.05, "completed", 9.0), (0.05, "unfinished", None))])
    sel = best_over_lr(runs)
    assert (sel["lr"], sel["error_pct"], sel["n_seeds"], sel["status"]) == (0.05, 9.0, 1, "partial")
    assert sel["diverged_lrs"] == "0.1 (1/2 seeds)" and sel["not_measured"] == "0.05 unfinished (1/2 seeds)"


def test_a_grid_at_another_batch_size_is_still_table3(tmp_path):
    """`--models allcnn-c --lrs 0.05 --batch-size 128 --ablations bn-dropout`: four configs of one run each. Table 3
    is the grid's (nearest its preset's values, not a tie-break among the arms), and the throughput table from the
    ledger reads it."""
    recs = [record(lr=0.05, test=t, batch_size=128, **arm) for t, arm in (
        (10.0, {}), (9.0, {"bn": True}), (5.0, {"dropout": False}), (6.0, {"bn": True, "dropout": False}))]
    led = load_ledger(write_ledger(tmp_path, recs))
    assert (led.reference["batch_size"], led.reference["bn"], led.reference["dropout"]) == (128, False, True)
    assert table3(led.df, led.reference).set_index("model").loc["allcnn-c", "error_pct"] == 10.0
    bn = ablation_table(led.df, "bn-dropout", led.reference).set_index("arm")
    assert list(bn["error_pct"]) == [10.0, 9.0, 5.0, 6.0] and bn["arm_here"].isna().all()  # labels hold
    assert list(throughput_table(led.df)["n_runs"]) == [1]


def test_an_arm_on_a_list_field_is_not_taken_for_table3(tmp_path, monkeypatch):
    """A user's ablation on lr_drops, a tuple in RunConfig and a list in a record: `--models allcnn-c --ablations
    schedule` gives one run per arm. The grid's run is Table 3's; the arm's (whose config sorts first) was, with
    the grid's own run excluded and the baseline arm labelled "here lr_drops=[200, 250, 300]"."""
    monkeypatch.setitem(ablations.ABLATIONS, "schedule", ablations.Ablation(
        "LR schedule", {"drops (paper)": {}, "earlier": {"lr_drops": (100, 200, 300)}}))
    monkeypatch.setattr(ablations, "BASELINE_FIELDS", (*ablations.BASELINE_FIELDS, "lr_drops"))  # as on import
    recs = [record(lr=0.05, test=10.0), record(lr=0.05, test=8.0, lr_drops=[100, 200, 300])]
    led = load_ledger(write_ledger(tmp_path, recs))
    assert led.reference["lr_drops"] == [200, 250, 300] and left_out(led.df, led.reference) == []
    assert table3(led.df, led.reference).set_index("model").loc["allcnn-c", "error_pct"] == 10.0
    sched = ablation_table(led.df, "schedule", led.reference).set_index("arm")
    assert list(sched["error_pct"]) == [10.0, 8.0] and sched["arm_here"].isna().all()
    assert [ablations.arm_of(r["config"], "schedule") for r in recs] == ["drops (paper)", "earlier"]


def test_a_stray_run_off_its_preset_is_not_the_reference_on_a_tie(tmp_path):
    """One run of the grid and one stray run at another value of a field no ablation varies (lr_drops [1]): a tie
    in every other rank. The reference was the first in sorted order, the stray one (its config sorts first),
    so the grid's own run was "excluded (config differs from the reference)". It is the one nearer its preset."""
    recs = [record(lr=0.05, test=10.0), record(lr=0.05, test=8.0, lr_drops=[1])]
    led = load_ledger(write_ledger(tmp_path, recs))
    assert led.reference["lr_drops"] == [200, 250, 300]
    assert table3(led.df, led.reference).set_index("model").loc["allcnn-c", "error_pct"] == 10.0


def test_an_ablation_is_shown_only_beyond_table3s_own_runs(tmp_path):
    """`--init kaiming --ablations init,bn-dropout`: the init ablation's arms are both the grid's runs, so it is not
    reported; bn-dropout's BN arm has a run of its own, so it is, on top of the kaiming grid."""
    recs = [record(lr=lr, test=t, init="kaiming") for lr, t in ((0.1, 9.5), (0.05, 9.4))]
    recs.append(record(lr=0.05, test=9.0, init="kaiming", bn=True))
    led = load_ledger(write_ledger(tmp_path, recs))
    assert led.reference["init"] == "kaiming" and left_out(led.df, led.reference) == []
    assert not ablation_has_runs(led.df, "init", led.reference)
    assert ablation_has_runs(led.df, "bn-dropout", led.reference)
    bn = ablation_table(led.df, "bn-dropout", led.reference).set_index("arm")
    assert list(bn["error_pct"].fillna(-1)) == [9.4, 9.0, -1, -1]


def test_arms_of_a_grid_on_train45k_are_judged_on_val(tmp_path):
    """`--train-split train45k --ablations precision`: both arms trained on 45k images, so both pick their LR on
    val5k (0.01 here, though 0.05 has the lower test error), as Table 3 does."""
    recs = [record(lr=lr, test=t, val=v, train_split="train45k", **arm) for arm in ({}, {"precision": "no"})
            for lr, t, v in ((0.05, 9.0, 11.0), (0.01, 9.5, 10.0))]
    led = load_ledger(write_ledger(tmp_path, recs))
    prec = ablation_table(led.df, "precision", led.reference)
    assert list(prec["protocol"]) == ["LR judged on val5k"] * 2 and list(prec["lr"]) == [0.01, 0.01]


def test_numbers_shown_are_rounded_half_up_with_std_and_seed_count(led):
    """What a reader sees: two decimals, halves rounded up in decimal (9.305 is 9.31, not a float's 9.30, nor a
    truncation's), so a shown Δ is the shown error minus the paper's; a seed mean with its std and its n."""
    assert [formats.fixed(x) for x in (9.305, 2.675, 9.999, 0.004)] == ["9.31", "2.68", "10.00", "0.00"]
    assert [formats.fixed(x, sign=True) for x in (0.125, -0.125, -0.004)] == ["+0.13", "-0.12", "0.00"]
    by_lr = formats.display_by_lr(table3_by_lr(led.df, led.reference)).set_index("Model")
    assert by_lr.loc["All-CNN-C", "LR 0.05"] == "9.30 ± 0.14 (n=2)"  # seeds 9.2 and 9.4
    assert by_lr.loc["Model A", "LR 0.1"] == "12.50"  # one seed: no std, no n


def test_runs_on_other_data_are_not_averaged_into_table3(tmp_path):
    """`data_sha256` is compared: a seed trained on another copy of the data (another source's sha256) is left out
    of Table 3 and listed as such, not averaged with the reference data's seeds."""
    records = [record(lr=0.05, seed=0, test=9.2), record(lr=0.05, seed=1, test=9.4),
               record(lr=0.05, seed=2, test=20.0, data_sha256="other")]
    led = load_ledger(write_ledger(tmp_path / "results", records))
    row = table3(led.df, led.reference).set_index("model").loc["allcnn-c"]
    assert row["error_pct"] == pytest.approx(9.3) and row["n_seeds"] == 2
    assert left_out(led.df, led.reference) == [(1, "data_sha256=other")]


def test_a_completed_record_that_stopped_early_is_unfinished_not_selected(tmp_path):
    """A record "completed" after 2 of its 3 epochs was measured at the wrong point: it counts as unfinished, and
    its lower error does not win its model's LR."""
    early = record(lr=0.1, test=8.0)
    early.update(epochs_completed=2, history=early["history"][:2])
    led = load_ledger(write_ledger(tmp_path / "results", [record(lr=0.05, test=9.2), early]))
    assert dict(table3_by_lr(led.df, led.reference).set_index("lr")["status"]) == {0.1: "unfinished", 0.05: "ok"}
    row = table3(led.df, led.reference).set_index("model").loc["allcnn-c"]
    assert (row["error_pct"], row["lr"]) == (9.2, 0.05)


def test_the_header_names_the_code_by_commit_and_by_digest(tmp_path):
    """A record's code_sha256 (bench.results.code_sha256: right where git_commit is not, in a copy with a stale
    .git) is shown beside the commits, counted per digest; records older than the field show commits only."""
    from reports.report import header

    digest = "d0" * 32
    records = [record(lr=0.05, seed=0, test=9.2), dict(record(lr=0.05, seed=1, test=9.4), code_sha256=digest)]
    code = dict(header(load_ledger(write_ledger(tmp_path / "both", records))))["Code"]
    assert code == "519e8c2aaaaa (2); code_sha256 d0d0d0d0d0d0 (1)"
    code = dict(header(load_ledger(write_ledger(tmp_path / "old", records[:1]))))["Code"]
    assert code == "519e8c2aaaaa (1)"


def test_the_lr_is_judged_on_the_seed_mean_not_on_one_seed():
    """LR 0.1's seeds 9.0, 10.0, 9.1 beat LR 0.05's three 9.3s in their best, first, last and median seed; only
    their mean (9.37), which judges the LR, is worse."""
    runs = pd.DataFrame([{"lr": lr, "outcome": "completed", "test_error_pct": t, "val_error_pct": t, "config": None}
                         for lr, ts in ((0.1, (9.0, 10.0, 9.1)), (0.05, (9.3, 9.3, 9.3))) for t in ts])
    assert best_over_lr(runs)["lr"] == select_on_val(runs)["lr"] == 0.05


def test_on_val_an_lr_with_a_seed_lacking_its_val_error_is_not_chosen():
    """LR 0.1's val mean would be one seed's of its two: not comparable, so not a candidate (and named)."""
    runs = pd.DataFrame([{"lr": lr, "outcome": "completed", "test_error_pct": t, "val_error_pct": v, "config": None}
                         for lr, t, v in ((0.1, 9.0, 9.0), (0.1, 9.0, None), (0.05, 9.5, 10.0))])
    sel = select_on_val(runs)
    assert (sel["lr"], sel["error_pct"], sel["not_measured"]) == (0.05, 9.5, "0.1 no val error")


def test_table3_reads_each_runs_final_error_not_its_best_epoch(tmp_path):
    """The paper's protocol takes a run's last epoch: LR 0.1's best epoch (8.0) does not win it the model."""
    led = load_ledger(write_ledger(tmp_path, [dict(record(lr=0.1, test=9.5), best_test_error_pct=8.0),
                                              record(lr=0.05, test=9.2)]))
    row = table3(led.df, led.reference).set_index("model").loc["allcnn-c"]
    assert (row["error_pct"], row["lr"]) == (9.2, 0.05)


def test_a_tie_of_epoch_counts_compares_the_longer_runs(tmp_path):
    led = load_ledger(write_ledger(tmp_path, [record(lr=0.05, test=9.2), record(lr=0.1, test=50.0, epochs=1)]))
    assert led.epochs == 3 and table3(led.df, led.reference).set_index("model").loc["allcnn-c", "error_pct"] == 9.2


def test_an_arm_with_more_runs_than_the_grid_is_not_table3(tmp_path):
    """`--models allcnn-c --lrs 0.05 --ablations optimizer`: Adam's own grid gives its arm four runs to the grid's
    one; Table 3 is still the SGD grid's (nearest the preset's values), not the most common config's."""
    recs = [record(lr=0.05, test=9.2), *(record(lr=lr, test=9.0, optimizer="adam") for lr in (3e-3, 1e-3, 3e-4, 1e-4))]
    led = load_ledger(write_ledger(tmp_path, recs))
    assert led.reference["optimizer"] == "sgd"
    assert table3(led.df, led.reference).set_index("model").loc["allcnn-c", "error_pct"] == 9.2


def test_an_ablation_shows_the_paper_number_only_where_the_paper_has_one(led):
    """The paper reports no BN run: only the baseline arm sits beside Table 3's 9.08; and the Δ column shown is the
    difference to the baseline, not to the paper."""
    bn = ablation_table(led.df, "bn-dropout", led.reference)
    assert bn["paper_error_pct"].iloc[0] == 9.08 and bn["paper_error_pct"].iloc[1:].isna().all()
    shown = formats.display_ablation(bn).set_index("Arm")
    assert shown.loc["BN + dropout", "Δ vs baseline pp"] == "-0.80"


def test_by_lr_cells_are_seed_means_and_name_diverged_runs(tmp_path):
    """Three seeds at LR 0.1 (9.0, 9.1, 10.0): the cell is their mean 9.37, not their median 9.1. An LR whose seeds
    all diverged reads "diverged", not "ok" with no number; one where one of three diverged shows the others' error
    and says so, its n the seeds measured (2), not the runs (3)."""
    recs = [record(lr=0.1, seed=s, test=t) for s, t in enumerate((9.0, 9.1, 10.0))]
    recs += [record(lr=0.05, seed=s, status="diverged") for s in (0, 1)]
    recs += [record(lr=0.01, seed=0, test=11.0), record(lr=0.01, seed=1, test=11.2),
             record(lr=0.01, seed=2, status="diverged")]
    led = load_ledger(write_ledger(tmp_path, recs))
    by_lr = table3_by_lr(led.df, led.reference).set_index("lr")
    assert by_lr.loc[0.1, "error_pct"] == round(28.1 / 3, 6) and by_lr.loc[0.1, "n_seeds"] == 3
    assert list(by_lr["status"]) == ["ok", "diverged", "diverged 1/3"]
    shown = formats.display_by_lr(by_lr.reset_index()).iloc[0]
    assert list(shown) == ["All-CNN-C", "9.37 ± 0.55 (n=3)", "diverged", "11.10 ± 0.14 (n=2); diverged 1/3"]


def test_an_ablation_arm_names_the_requested_lrs_it_has_not_run(tmp_path):
    """The command asked for LRs 0.1 and 0.05; the BN arm has run only 0.05. Its 8.9 is a partial result, with
    0.1 named as missing, as Table 3's cells are (the arm's grid is the requested one, not only what ran)."""
    grid = {"models": ["allcnn-c"], "lrs": [0.1, 0.05], "seeds": [0]}
    recs = [record(lr=0.1, test=9.5, grid=grid), record(lr=0.05, test=9.3, grid=grid),
            record(lr=0.05, test=8.9, bn=True, grid=grid)]
    led = load_ledger(write_ledger(tmp_path, recs))
    bn = ablation_table(led.df, "bn-dropout", led.reference).set_index("arm")
    assert (bn.loc["dropout, no BN (paper)", "status"], bn.loc["BN + dropout", "status"]) == ("ok", "partial")
    assert bn.loc["BN + dropout", "not_measured"] == "0.1 missing" and bn.loc["BN + dropout", "error_pct"] == 8.9


def test_the_shown_lr_is_the_test_protocols_and_s_per_epoch_leaves_out_the_first(t3):
    """Model A's LR 0.1 (best on test) is shown in the LR column, though nothing of it trained on train45k (no val5k
    LR). s/epoch is the median of the epochs after the first (11, 12, 13 s: 12.5, not 12)."""
    shown = formats.display_table3(t3.reset_index()).set_index("Model")
    assert shown.loc["Model A", "LR"] == "0.1" and shown.loc["All-CNN-C", "LR"] == "0.05"
    assert t3.loc["allcnn-c", "epoch_s"] == 12.5
    assert formats.display_details(t3.reset_index()).set_index("Model").loc["All-CNN-C", "s/epoch"] == "12.5"


def test_table3_notes_name_the_diverged_lrs_and_what_was_not_measured(t3):
    """A selected number's LRs that diverged are named beside it, as are the LRs still to measure: All-CNN-C's 9.30
    is of the LRs that did not diverge, Model B's of the one LR that ran."""
    notes = formats.display_table3(t3.reset_index()).set_index("Model")["Notes"]
    assert notes["All-CNN-C"] == "diverged: 0.25"
    assert notes["Strided-CNN-A"] == "diverged: 0.25, 0.1, 0.05, 0.01"
    assert notes["Model A"] == "0.01 failed" and notes["Model B"] == "0.25 missing, 0.05 missing, 0.01 missing"


def test_equal_seed_means_are_a_tie_whatever_the_floats_say():
    """LR 0.1's seeds 9.0 and 9.3 and LR 0.05's 9.1 and 9.2 both average 9.15: a tie, which goes to the larger LR.
    In floats the second mean is 9.149999999999999, which chose LR 0.05."""
    runs = pd.DataFrame([{"lr": lr, "outcome": "completed", "test_error_pct": t, "val_error_pct": t, "config": None}
                         for lr, ts in ((0.1, (9.0, 9.3)), (0.05, (9.1, 9.2))) for t in ts])
    for pick in (best_over_lr, select_on_val):
        assert (pick(runs)["lr"], pick(runs)["error_pct"]) == (0.1, 9.15), pick.__name__


def test_the_shown_ablation_counts_each_arms_seeds(led):
    """The baseline arm's 9.30 is of two seeds, the BN arm's 8.50 of one; an arm with no number counts none."""
    shown = formats.display_ablation(ablation_table(led.df, "bn-dropout", led.reference)).set_index("Arm")
    assert list(shown["n"]) == ["2", "1", "", ""] and list(shown["Error %"])[:2] == ["9.30 ± 0.14", "8.50"]


def test_table3_details_show_each_models_exact_size_beside_the_papers(led):
    """Params: this code's exact count beside the paper's rounded one; MACs: forward, per image, in millions."""
    shown = formats.display_details(table3(led.df, led.reference)).set_index("Model")
    columns = ["Params", "Paper params", "MACs (M)"]
    assert shown.loc["All-CNN-C", columns].tolist() == ["1,369,738", "1.4 M", "270.8"]
    assert shown.loc["Model A", columns].tolist() == ["839,242", "0.9 M", "138.7"]
