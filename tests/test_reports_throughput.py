"""The throughput table from the ledger and from bench/throughput.py's JSON (reports/throughput.py): TFLOP/s and
share of peak per device, fused LR groups (--fuse-lrs, --fused K), CUDA-graphed rows, the bar labels. The ledger
is tests/test_reports.py's small hand-made one."""
from __future__ import annotations

import hashlib
import math

import pandas as pd
import pytest
from PIL import Image

from allconv.specs import macs
from bench import results
from reports import formats
from reports.ledger import LedgerError, load_ledger
from reports.report import build_sections, write_report
from reports.tables import table3
from reports.throughput import load_throughput, throughput_table
from test_reports import H100, led, ledger_dir, record, write_ledger  # noqa: F401 (fixtures)


def test_throughput_from_ledger_and_benchmark(led):
    tp = throughput_table(led.df).set_index(["model", "precision"])
    row = tp.loc[("allcnn-c", "bf16")]
    assert row["train_images_per_s"] == 20000.0 and row["source"] == "ledger"
    assert row["train_tflops"] == round(20000 * 270_798_336 * 6 / 1e12, 6)
    assert row["peak_tflops"] == 989.0 and row["train_peak_pct"] == round(100 * row["train_tflops"] / 989.0, 6)
    assert tp.loc[("allcnn-c", "no"), "peak_basis"] == "fp32"  # a full-fp32 run: TF32 off
    bench = pd.DataFrame([{"model": "model-c", "precision": "bf16", "device_name": "cpu", "batch_size": 256,
                           "train_images_per_s": 400.0, "eval_images_per_s": 900.0}])
    tb = throughput_table(led.df, bench)
    assert len(tb) == 1 and tb.loc[0, "source"] == "benchmark" and math.isnan(tb.loc[0, "train_peak_pct"])


def test_share_of_peak_counts_the_devices_a_run_used(led):
    """A grid run on 8 processes used one GPU (device_count 1): its share is against one peak. A DDP run over 2
    GPUs and a 2-process benchmark row are against two."""
    df = led.df[(led.df["model"] == "allcnn-c") & (led.df["precision"] == "bf16")
                & led.df["train_images_per_s"].notna()].copy()
    one = throughput_table(df).loc[0]
    grid = throughput_table(df.assign(world_size=8, device_count=1)).loc[0]
    ddp = throughput_table(df.assign(world_size=2, device_count=2)).loc[0]
    assert grid["train_peak_pct"] == one["train_peak_pct"] and grid["devices"] == 1
    assert ddp["devices"] == 2 and ddp["train_peak_pct"] == round(100 * ddp["train_tflops"] / (2 * 989.0), 6)
    bench = pd.DataFrame([{"model": "allcnn-c", "precision": "bf16", "device_name": H100, "world_size": 2,
                           "train_images_per_s": 20000.0, "eval_images_per_s": 40000.0}])
    assert throughput_table(df, bench).loc[0, "train_peak_pct"] == ddp["train_peak_pct"]


def test_fused_columns_are_shown_only_when_measured():
    """bench/throughput.py --fused K rows: the report shows the fused group's images/s and its ratio to the
    separate step; rows without them add no empty columns."""
    row = {"model": "allcnn-c", "precision": "bf16", "device_name": "NVIDIA H200", "batch_size": 256,
           "train_images_per_s": 40000.0, "eval_images_per_s": 60000.0, "backend": "synthetic", "world_size": 1}
    fused = dict(row, fused_runs=4, fused_train_images_per_s=100000.0, fused_over_separate=2.5)
    shown = formats.display_throughput(throughput_table(pd.DataFrame(), pd.DataFrame([fused, fused])))
    assert shown.loc[0, ["Fused runs", "Fused img/s (all runs)", "Fused / separate"]].tolist() == ["4", "100,000",
                                                                                                   "2.50"]
    plain = formats.display_throughput(throughput_table(pd.DataFrame(), pd.DataFrame([row])))
    assert plain.loc[0, "Train img/s"] == "40,000" and not any(c.startswith("Fused") for c in plain.columns)

    from reports import plots
    table = throughput_table(pd.DataFrame(), pd.DataFrame([fused, dict(fused, model="strided-c",
                                                                        device_name="NVIDIA H100 80GB HBM3")]))
    labels, common = plots.bar_labels(table.to_dict("records"))  # only what differs labels a bar
    assert sorted(labels) == ["All-CNN-C · NVIDIA H200 x1", "Strided-CNN-C · NVIDIA H100 80GB HBM3 x1"], labels
    assert "bf16" in common and "batch 256" in common and "H200" not in common, common


def test_fused_runs_in_the_ledger_count_the_whole_group(tmp_path):
    """A run trained in a fused group (--fuse-lrs) recorded its share of the group's img/s: the ledger's throughput
    row counts the group's, as "Runs per step" says. CUDA-graphed runs get a row of their own."""
    alone = record(lr=0.1, seed=1, test=9.0, img_s=20000.0)  # seed 1: seed 0 at 0.1 is one of the group's
    group = [record(lr=lr, test=9.5, img_s=15000.0, fuse_lrs=True, fused_runs=4) for lr in (0.25, 0.1, 0.05, 0.01)]
    for rec in group:  # the config says what was asked; the top-level field what happened
        rec["fused_runs"] = rec["config"].pop("fused_runs")
    graphed = dict(record(lr=0.05, seed=1, test=9.1, img_s=50000.0), cuda_graphs=True)  # a row of its own too
    fused_led = load_ledger(write_ledger(tmp_path / "results", [alone, *group, graphed]))
    assert throughput_table(fused_led.df).query("cuda_graphs")["train_images_per_s"].tolist() == [50000.0]
    tp = throughput_table(fused_led.df).query("not cuda_graphs").set_index("runs_per_step")
    assert tp.loc[1, "train_images_per_s"] == 20000.0 and tp.loc[4, "train_images_per_s"] == 60000.0
    assert tp.loc[4, "eval_images_per_s"] == 120000.0 and tp.loc[4, "n_runs"] == 4
    shown = formats.display_throughput(throughput_table(fused_led.df))
    assert shown["Runs per step"].tolist() == ["1", "1", "4"]
    assert shown["Train img/s"].tolist() == ["20,000", "50,000", "60,000"]
    assert "Runs per step" not in formats.display_throughput(throughput_table(load_ledger(
        write_ledger(tmp_path / "alone", [alone])).df)).columns
    # the details table shows a fused run's own share (15,000), and says so only where such a run is
    notes = {name: {s.stem: s.note for s in build_sections(load_ledger(write_ledger(tmp_path / name, recs)))}
             for name, recs in (("fused", [alone, *group]), ("plain", [alone]))}
    assert "fused group (--fuse-lrs) counts its own images" in notes["fused"]["table3-details"]
    assert "fused group" not in notes["plain"]["table3-details"]


def test_throughput_file_and_preset_choice(ledger_dir, tmp_path):
    bench_json = tmp_path / "bench.json"
    bench_json.write_text('[{"model": "allcnn-c", "precision": "fp32", "device_name": "NVIDIA A100-SXM4-80GB", '
                          '"batch_size": 256, "train_images_per_s": 10000.0, "eval_images_per_s": 30000.0, '
                          '"backend": "synthetic", "peak_precision": "fp32", "world_size": 1}]')
    out = tmp_path / "smoke-report"
    write_report(ledger_dir, out, preset="smoke", throughput=bench_json)
    tp = formats.read_csv(out / "throughput.csv")
    assert list(tp["source"]) == ["benchmark"] and tp.loc[0, "peak_tflops"] == 19.5  # A100 plain fp32
    digest = hashlib.sha256(bench_json.read_bytes()).hexdigest()  # its numbers are stamped with their file
    assert list(pd.read_csv(out / "throughput.csv")["throughput_file_sha256"]) == [digest]
    assert f"from throughput file sha256 {digest}" in (out / "throughput.tex").read_text()
    assert Image.open(out / "throughput.png").text["Source"] == f"throughput file sha256 {digest}"
    ledger = results.ledger_sha256(ledger_dir)  # and the rest with the ledger
    assert set(pd.read_csv(out / "table3.csv")["ledger_sha256"]) == {ledger}
    assert Image.open(out / "curves.png").text["Source"] == f"ledger sha256 {ledger}"
    md = (out / "report.md").read_text()
    assert "- **Preset**: smoke" in md and "bench.json, sha256 " in md and "other presets: paper (34)" in md
    with pytest.raises(LedgerError, match="preset 'nope' has no records"):
        write_report(ledger_dir, tmp_path / "x", preset="nope")
    with pytest.raises(LedgerError, match="a folder, not a throughput file"):  # was "no such throughput file"
        load_throughput(tmp_path)


def test_evaluation_is_compared_with_the_peak_of_the_precision_it_ran_in(tmp_path):
    """A bf16 run evaluates in fp32 (eval_precision "no": autocast off), whose convolutions run in TF32 on CUDA:
    its eval share is against the TF32 peak (494.5 on an H100 SXM), not bf16's 989, and the table says so. A run
    that evaluated in bf16, and an older record without eval_precision (evaluated as it trained), keep bf16's."""
    fp32_eval = record(lr=0.1, test=9.0, img_s=20000.0)  # eval_precision "no", 40,000 eval img/s
    bf16_eval = dict(record(lr=0.05, test=9.1, img_s=20000.0), eval_precision="bf16")
    older = dict(record(lr=0.01, test=9.2, img_s=20000.0), eval_precision=None)
    eval_tf = round(40000 * 2 * macs("allcnn-c") / 1e12, 6)
    alone = throughput_table(load_ledger(write_ledger(tmp_path / "alone", [fp32_eval])).df).loc[0]
    assert alone["eval_tflops"] == eval_tf and alone["eval_peak_pct"] == round(100 * eval_tf / 494.5, 6)  # 4.4%,
    # where bf16's peak said 2.2%
    tp = throughput_table(load_ledger(write_ledger(tmp_path / "results", [fp32_eval, bf16_eval, older])).df)
    tp = tp.set_index("eval_precision")
    assert sorted(tp.index) == ["bf16", "no"]  # the older record evaluated in bf16, as it trained
    row = tp.loc["no"]
    assert row["eval_peak_tflops"] == 494.5 and row["eval_peak_basis"] == "tf32"
    assert row["peak_tflops"] == 989.0 and row["train_peak_pct"] == round(100 * row["train_tflops"] / 989.0, 6)
    bf16 = tp.loc[["bf16"]].iloc[0]
    assert bf16["eval_peak_pct"] == round(100 * eval_tf / 989.0, 6) and bf16["n_runs"] == 2
    shown = formats.display_throughput(tp.reset_index()).set_index("Eval % of peak")
    assert shown.loc[formats.fixed(row["eval_peak_pct"], 1), "Peak TFLOP/s"] == "989.0 (bf16); eval 494.5 (tf32)"
    assert shown.loc[formats.fixed(bf16["eval_peak_pct"], 1), "Peak TFLOP/s"] == "989.0 (bf16)"


def test_a_run_trained_in_fp32_is_compared_with_the_plain_fp32_peak(tmp_path):
    """run_all trains and evaluates a precision-"no" run with TF32 off (bench.engine.full_fp32): its share is of the
    plain fp32 peak (67 on an H100 SXM), not TF32's 494.5. A record from before that (no eval_precision: it came
    with full_fp32) ran with TF32 on, cuDNN's default."""
    full = record(lr=0.1, test=9.0, img_s=5000.0, precision="no")  # eval_precision "no"
    older = dict(record(lr=0.05, test=9.1, img_s=5000.0, precision="no"), eval_precision=None)
    for name, rec, peak, basis in (("full", full, 67.0, "fp32"), ("older", older, 494.5, "tf32")):
        row = throughput_table(load_ledger(write_ledger(tmp_path / name, [rec])).df).loc[0]
        assert (row["peak_tflops"], row["peak_basis"], row["eval_peak_tflops"]) == (peak, basis, peak), name
        assert row["train_peak_pct"] == round(100 * row["train_tflops"] / peak, 6), name
        assert row["eval_peak_pct"] == round(100 * row["eval_tflops"] / peak, 6), name
    both = throughput_table(load_ledger(write_ledger(tmp_path / "both", [full, older])).df)
    assert sorted(both["peak_basis"]) == ["fp32", "tf32"]  # not one row with one of their peaks


def test_a_runs_flops_are_those_of_the_network_it_trained(tmp_path):
    """The run key names a model, not its layers: the records of a network edited after its runs (a network of
    one's own) stay in the ledger until run_all trains it again. Their TFLOP/s come from the MACs each record states, not from this code's network of that name,
    and the report says that the parameter and MAC columns (this code's) do not describe them."""
    edited = dict(record(lr=0.05, test=9.0, img_s=20000.0), macs=15_699_456)  # trained as a smaller network
    other = load_ledger(write_ledger(tmp_path / "results", [edited]))
    row = throughput_table(other.df).loc[0]
    assert row["train_tflops"] == round(20000 * 15_699_456 * 6 / 1e12, 6)
    assert [n for n in other.notes if "another network" in n] == [
        "Records of All-CNN-C trained another network than this code builds under that name (recorded 15,699,456 "
        f"forward MACs per image, this code's {macs('allcnn-c'):,}): the Params and MACs shown are this code's, "
        "not those runs'."]
    assert not [n for n in load_ledger(write_ledger(tmp_path / "same", [record()])).notes if "another network" in n]


def test_images_per_s_are_the_median_over_runs_in_both_tables(tmp_path):
    """Three runs at 10,000, 20,000 and 60,000 img/s (one slowed or sped by a shared device): the throughput
    table and Table 3's details both show the median, 20,000, not the mean, 30,000."""
    recs = [record(lr=lr, test=9.0, img_s=v) for lr, v in ((0.1, 10000.0), (0.05, 60000.0), (0.01, 20000.0))]
    led = load_ledger(write_ledger(tmp_path, recs))
    tp = throughput_table(led.df).loc[0]
    assert (tp["n_runs"], tp["train_images_per_s"], tp["eval_images_per_s"]) == (3, 20000.0, 40000.0)
    assert table3(led.df, led.reference).set_index("model").loc["allcnn-c", "train_images_per_s"] == 20000.0
