"""A network of one's own beside the paper's 12: a spec added to allconv.specs as data (a family of its own, no paper
number: paper_error_pct nan, paper_params "") trains when named, stays out of the default grid and the paper's
claims, and goes through `python -m allconv`, the plan and the reports without a traceback. An ablation of one's
own that bench/ablations.py refuses is one line from every command."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from allconv.specs import FAMILIES, PAPER_MODELS, SPECS, VARIANTS, ModelSpec, num_params
from reports.ledger import load_ledger
from reports.report import write_report
from reports.tables import table3
from tests.test_reports import record, write_ledger

WIDE = "allcnn-c-wide"
THIN = "allcnn-c-thin-own"  # longer than any paper name: the plan's model column must widen


def own(monkeypatch, name, paper_name, family, widths, params):
    monkeypatch.setitem(FAMILIES, family, widths)
    spec = ModelSpec(family, "allcnn", paper_name, math.nan, "", params)
    monkeypatch.setitem(SPECS, name, spec)
    monkeypatch.setitem(VARIANTS, name, spec.paper_name)
    assert num_params(name) == spec.num_params and not spec.in_paper
    return spec


@pytest.fixture
def wide(monkeypatch):
    """All-CNN-C with twice the stage widths, in a family of its own, with no paper number."""
    return own(monkeypatch, WIDE, "All-CNN-C-wide", "Cw", ([(3, 192), (3, 192)], [(3, 384), (3, 384)]), 4_690_954)


@pytest.fixture
def thin(monkeypatch):
    """All-CNN-C with a quarter of the stage widths: small enough to train in a test."""
    return own(monkeypatch, THIN, "All-CNN-C-thin-own", "Ct", ([(3, 24), (3, 24)], [(3, 48), (3, 48)]), 185_194)


def test_table3_shows_a_network_without_a_paper_number(tmp_path, wide):
    led = load_ledger(write_ledger(tmp_path, [record(lr=0.05, test=9.3), record(model=WIDE, lr=0.05, test=8.0)]))
    t3 = table3(led.df, led.reference).set_index("model")
    assert t3.loc[WIDE, "error_pct"] == 8.0 and t3.loc[WIDE, "params"] == 4_690_954
    assert math.isnan(t3.loc[WIDE, "paper_error_pct"]) and math.isnan(t3.loc[WIDE, "paper_params_n"])
    assert math.isnan(t3.loc[WIDE, "diff_pp"]) and t3.loc["allcnn-c", "paper_params_n"] == 1.4e6
    led = load_ledger(write_ledger(tmp_path / "paper-only", [record(lr=0.05, test=9.3)]))
    assert list(table3(led.df, led.reference)["model"]) == list(PAPER_MODELS)  # not trained, not asked for: no row


def test_table3_csv_reads_back_as_the_table_with_a_network_of_ones_own(tmp_path, wide):
    """Its missing printed count is missing in the table (not ""), as a CSV can only say "missing": table3.csv
    read back equals the table, and the details table shows an empty cell."""
    from reports.formats import display_details, read_csv, write_csv

    led = load_ledger(write_ledger(tmp_path, [record(lr=0.05, test=9.3), record(model=WIDE, lr=0.05, test=8.0)]))
    t3 = table3(led.df, led.reference)
    write_csv(t3, tmp_path / "table3.csv", "sha")
    pd.testing.assert_frame_equal(read_csv(tmp_path / "table3.csv"), t3, check_dtype=False)
    assert list(display_details(t3)["Paper params"])[-2:] == ["1.4 M", ""]


def test_the_report_draws_a_family_of_its_own(tmp_path, wide):
    """Its points and throughput bar get a colour of their own (a KeyError in reports.plots before), and the
    legend names the family."""
    from reports import plots

    ledger = write_ledger(tmp_path / "r", [record(lr=0.05, test=9.3), record(model=WIDE, lr=0.05, test=8.0)])
    paths = write_report(ledger, tmp_path / "out")
    assert {"error_vs_params.png", "throughput.png"} <= {p.name for p in paths}
    assert "| All-CNN-C-wide |  | 8.00 |" in (tmp_path / "out" / "report.md").read_text()  # no paper number, no Δ
    assert plots.family_color("Cw") not in plots.FAMILY_COLORS.values()


def test_a_network_of_ones_own_is_not_in_the_best_of_table3(tmp_path, wide):
    """"All-CNN-C is the best of Table 3" is judged against the paper's other 11, not against a network the paper
    does not have (here better than All-CNN-C by 2 pp, which refuted the claim)."""
    from tests.test_reports_claims import BEST, claims_of

    paper = {m: [10.3 + i / 10, 10.4 + i / 10] for i, m in enumerate(SPECS) if m not in ("allcnn-c", WIDE)}
    c = claims_of(tmp_path, {**paper, "allcnn-c": [9.0, 9.1], WIDE: [7.0, 7.1]})
    assert c.loc[BEST, "verdict"] == "reproduced" and c.loc[BEST, "test"].startswith("against each of 11 models;")
    c = claims_of(tmp_path / "only", {"allcnn-c": [9.0], WIDE: [7.0]})
    assert tuple(c.loc[BEST, ["verdict", "test"]]) == ("not measured", "no other model has a number")


def test_it_trains_when_named_and_only_then(tmp_path, thin, smoke_data_dir, jpeg_tarball, fresh_accelerator,
                                            capsys):
    """The real path: `--models` names it, run_all trains and records it, the plan and `python -m allconv` list
    it, and the report shows it with no paper number; the default grid is still Table 3's 12."""
    from allconv.__main__ import main as allconv_main
    from bench import plan, results
    from bench.cli import parse_args
    from bench.run_all import main as run_all

    assert parse_args([]).models == PAPER_MODELS and THIN not in parse_args(["--preset", "smoke"]).models
    assert THIN in parse_args(["--models", "*"]).models
    argv = ["--preset", "smoke", "--models", THIN, "--lrs", "0.05", "--source", str(jpeg_tarball), "--data-dir",
            str(smoke_data_dir), "--out", str(tmp_path / "out"), "--backend", "tensor", "--no-progress"]
    assert run_all(argv) == 0
    (rec,) = results.read_records(tmp_path / "out")
    assert (rec["model"], rec["status"], rec["params"]) == (THIN, "completed", 185_194)
    assert plan.main(argv) == 0
    capsys.readouterr()
    assert plan.main([*argv, "--lrs", "0.05", "0.01"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(THIN)]
    assert [line.split()[1:3] for line in rows] == [["0.05", "0"], ["0.01", "0"]]  # columns still apart
    assert allconv_main([THIN]) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[:3] == ["All-CNN-C-thin-own", "185,194", "-"] and line[4] == "-"  # no paper count, no paper error
    write_report(tmp_path / "out", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert re.search(r"\n\| All-CNN-C-thin-own \|  \| \d+\.\d\d \| 0\.05 \| 1 \|\n", md)  # no paper number
    assert "| All-CNN-C | 9.08 | not run |" in md


def test_a_network_changed_after_its_run_is_trained_again(tmp_path, monkeypatch, thin, smoke_data_dir,
                                                          jpeg_tarball, fresh_accelerator, capsys):
    """The run key names the model, not its layers: a network of one's own widened after its run kept the same
    key, so run_all skipped it as recorded and the ledger went on showing the narrower network's error under its
    name. A record whose network is not the one this code builds (its MACs differ) is not that run: trained again,
    the old record kept in .invalid/."""
    from bench import results
    from bench.run_all import main as run_all

    argv = ["--preset", "smoke", "--models", THIN, "--lrs", "0.05", "--source", str(jpeg_tarball), "--data-dir",
            str(smoke_data_dir), "--out", str(tmp_path / "out"), "--backend", "tensor", "--no-progress"]
    assert run_all(argv) == 0
    (old,) = results.read_records(tmp_path / "out")
    own(monkeypatch, THIN, "All-CNN-C-thin-own", "Ct", ([(3, 32), (3, 32)], [(3, 64), (3, 64)]), 261_514)
    capsys.readouterr()
    assert run_all(argv) == 0
    (new,) = results.read_records(tmp_path / "out")
    assert new["run_key"] == old["run_key"] and (old["params"], new["params"]) == (185_194, 261_514)
    kept = tmp_path / "out" / "runs" / ".invalid" / f"{old['run_key']}.json"
    assert json.loads(kept.read_text()) == old
    err = capsys.readouterr().err
    assert f"it trained another {THIN} than this code builds (" in err and f"moved to {kept}" in err


@pytest.mark.parametrize("command", [["bench/run_all.py"], ["-m", "bench.plan"]])
def test_an_ablation_refused_on_import_is_one_line_from_run_all_and_the_plan(tmp_path, command):
    """A typo'd arm stopped run_all and the plan with a traceback (bench/cli.py imported bench/ablations.py)."""
    from tests.test_reports import ROOT
    from tests.test_reports_files import REFUSE_ON_IMPORT

    script = REFUSE_ON_IMPORT + f"import runpy\nsys.argv[0] = {command[-1]!r}\n" + (
        f"runpy.run_module({command[1]!r}, run_name='__main__', alter_sys=True)\n" if command[0] == "-m" else
        f"runpy.run_path({command[0]!r}, run_name='__main__')\n")
    p = subprocess.run([sys.executable, "-c", script, "--preset", "smoke", "--ablations", "wd", "--out",
                        str(tmp_path / "out")], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stderr) == (2, "error: argument --ablations: ablation 'wd', arm '5e-4': weight_decy "
                                           "cannot be varied by an arm\n")
    assert not (tmp_path / "out").exists()


def test_the_throughput_table_keeps_a_long_name_apart_from_its_precision(thin, capsys):
    """bench/throughput.py printed the model in 16 columns: a longer name ran into the precision
    ("allcnn-c-thin-ownfp32"), as the plan's did."""
    from bench import throughput

    assert throughput.main(["--device", "cpu", "--models", THIN, "--precision", "fp32", "--batch-size", "2",
                            "--steps", "1", "--warmup", "1", "--repeats", "1", "--no-eval"]) == 0
    (row,) = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(THIN)]
    assert row[:3] == [THIN, "fp32", "synthetic"]
