"""A network of one's own beside the paper's 12: a spec added to allconv.specs as data (a family of its own, no paper
number: paper_error_pct nan, paper_params "") goes through the reports without a traceback and without entering the
paper's comparisons."""
from __future__ import annotations

import math

import pytest

from allconv.specs import FAMILIES, SPECS, VARIANTS, ModelSpec, num_params
from reports.ledger import load_ledger
from reports.report import write_report
from reports.tables import table3
from test_reports import record, write_ledger

WIDE = "allcnn-c-wide"


@pytest.fixture
def wide(monkeypatch):
    """All-CNN-C with twice the stage widths, in a family of its own, with no paper number."""
    monkeypatch.setitem(FAMILIES, "Cw", ([(3, 192), (3, 192)], [(3, 384), (3, 384)]))
    spec = ModelSpec("Cw", "allcnn", "All-CNN-C-wide", float("nan"), "", 4_690_954)
    monkeypatch.setitem(SPECS, WIDE, spec)
    monkeypatch.setitem(VARIANTS, WIDE, spec.paper_name)
    assert num_params(WIDE) == spec.num_params
    return spec


def test_table3_shows_a_network_without_a_paper_number(tmp_path, wide):
    led = load_ledger(write_ledger(tmp_path, [record(lr=0.05, test=9.3), record(model=WIDE, lr=0.05, test=8.0)]))
    t3 = table3(led.df, led.reference).set_index("model")
    assert t3.loc[WIDE, "error_pct"] == 8.0 and t3.loc[WIDE, "params"] == 4_690_954
    assert math.isnan(t3.loc[WIDE, "paper_error_pct"]) and math.isnan(t3.loc[WIDE, "paper_params_n"])
    assert t3.loc["allcnn-c", "paper_params_n"] == 1.4e6


def test_the_report_draws_a_family_of_its_own(tmp_path, wide):
    """Its points and throughput bar get a colour of their own (a KeyError in reports.plots before), and the
    legend names the family."""
    from reports import plots

    ledger = write_ledger(tmp_path / "r", [record(lr=0.05, test=9.3), record(model=WIDE, lr=0.05, test=8.0)])
    paths = write_report(ledger, tmp_path / "out")
    assert {"error_vs_params.png", "throughput.png"} <= {p.name for p in paths}
    assert "| All-CNN-C-wide |" in (tmp_path / "out" / "report.md").read_text()
    assert plots.family_color("Cw") not in plots.FAMILY_COLORS.values()


def test_a_network_of_ones_own_is_not_in_the_best_of_table3(tmp_path, wide):
    """"All-CNN-C is the best of Table 3" is judged against the paper's other 11, not against a network the paper
    does not have (here better than All-CNN-C by 2 pp, which refuted the claim)."""
    from test_reports_claims import BEST, claims_of

    paper = {m: [10.3 + i / 10, 10.4 + i / 10] for i, m in enumerate(SPECS) if m not in ("allcnn-c", WIDE)}
    c = claims_of(tmp_path, {**paper, "allcnn-c": [9.0, 9.1], WIDE: [7.0, 7.1]})
    assert c.loc[BEST, "verdict"] == "reproduced" and c.loc[BEST, "test"].startswith("against each of 11 models;")
    c = claims_of(tmp_path / "only", {"allcnn-c": [9.0], WIDE: [7.0]})
    assert tuple(c.loc[BEST, ["verdict", "test"]]) == ("not measured", "no other model has a number")
