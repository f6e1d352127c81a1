"""The report's files from tests/test_reports.py's small hand-made ledger: every file written and parseable (CSV
back to the same frame, PNG headers, HTML tables, LaTeX column counts), the same bytes from the same ledger, bad
input with no output, and the CLI without torch."""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench import results
from reports import formats, latex
from reports.ledger import LedgerError
from reports.report import write_report
from reports.tables import ablation_table, table3
from reports.throughput import throughput_table
from test_reports import ROOT, led, ledger_dir, report_dir  # noqa: F401 (fixtures)
from test_reports_fidelity import check_latex, pdflatex_log


EXPECTED_FILES = {"report.md", "report.html", "table3.csv", "table3.tex", "throughput.csv", "throughput.tex",
                  "table3-by-lr.csv", "table3-by-lr.tex", "table3-details.tex", "claims.csv", "claims.tex",
                  "curves.png", "fit.png", "error_vs_params.png", "throughput.png",
                  *(f"ablation-{n}.{ext}" for n in ("bn-dropout", "optimizer", "head", "augmentation",
                                                    "lr-selection", "precision", "init", "batch-size",
                                                    "preprocessing")
                    for ext in ("csv", "tex"))}


def test_every_file_is_written_and_parses(report_dir, ledger_dir, led):
    assert {p.name for p in report_dir.iterdir()} == EXPECTED_FILES
    assert_frame_equal_csv(report_dir / "table3.csv", table3(led.df, led.reference))
    assert_frame_equal_csv(report_dir / "ablation-bn-dropout.csv", ablation_table(led.df, "bn-dropout", led.reference))
    assert_frame_equal_csv(report_dir / "throughput.csv", throughput_table(led.df))
    assert set(pd.read_csv(report_dir / "table3.csv")["ledger_sha256"]) == {results.ledger_sha256(ledger_dir)}
    for png in ("curves.png", "fit.png", "error_vs_params.png", "throughput.png"):
        data = (report_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in data
        width, height = struct.unpack(">II", data[16:24])
        assert width > 300 and height > 200
    md = (report_dir / "report.md").read_text()
    assert results.ledger_sha256(ledger_dir) in md and "2026-11-25T00:00:00+00:00" in md
    assert "cifar10-jpeg.tar.gz (lossy JPEG" in md and "| All-CNN-C | 9.08 | 9.30 ± 0.14 | +0.22 | 0.05 | 2 |" in md
    rows = TableRows()
    rows.feed((report_dir / "report.html").read_text())
    assert rows.rows["table3"] == 12 and rows.images == 4
    assert all(rows.rows[f"ablation-{n}"] >= 2 for n in ("bn-dropout", "precision", "preprocessing"))
    for tex in report_dir.glob("*.tex"):
        check_latex(tex.read_text())
    t3_tex = (report_dir / "table3.tex").read_text()
    assert sum(line.endswith(r" \\") for line in t3_tex.splitlines()) == 13 and r"9.30 $\pm$ 0.14" in t3_tex
    assert r"\usepackage{booktabs,tabularx,longtable}" in t3_tex


def assert_frame_equal_csv(path: Path, table: pd.DataFrame) -> None:
    back = formats.read_csv(path)
    assert list(back.columns) == list(table.columns)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)


class TableRows(HTMLParser):
    """Counts body rows per <table id=...> and embedded PNGs."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.table, self.in_body = {}, 0, None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = attrs["id"]
            self.rows[self.table] = 0
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows[self.table] += 1
        elif tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,"):
            self.images += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False


def test_same_ledger_same_bytes(report_dir, ledger_dir, tmp_path):
    again = tmp_path / "again"
    write_report(ledger_dir, again)
    for p in report_dir.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name


def test_bad_input_exits_2_without_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(LedgerError):
        write_report(tmp_path / "nothing", out)
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(LedgerError, match="empty"):
        write_report(tmp_path / "empty", out)
    (tmp_path / "empty" / "checkpoints").mkdir()
    (tmp_path / "empty" / "checkpoints" / "0123456789abcdef.pt").write_bytes(b"not read")
    with pytest.raises(LedgerError, match=r"empty .* but for 1 checkpoint\(s\) of runs still training"):
        write_report(tmp_path / "empty", out)
    assert not out.exists() and not any(p.name.startswith(".out.") for p in tmp_path.iterdir())


NO_TORCH = """
import runpy, sys
for name in ("torch", "accelerate", "ffcv"):
    sys.modules[name] = None  # any import of them now raises ImportError
sys.argv = ["reports"] + sys.argv[1:]
try:
    runpy.run_module("reports", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "accelerate", "ffcv") and sys.modules[m] is not None]
print("LOADED", loaded)
sys.exit(code if not loaded else 3)
"""


def test_cli_runs_without_torch(ledger_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    ok = subprocess.run([sys.executable, "-c", NO_TORCH, "--results", str(ledger_dir), "--out", str(tmp_path / "r")],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "LOADED []" in ok.stdout and (tmp_path / "r" / "report.html").is_file()
    bad = subprocess.run([sys.executable, "-m", "reports", "--results", str(tmp_path / "none"), "--out",
                          str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_curves_legend_lists_only_the_lrs_drawn(tmp_path):
    """A campaign mid-way: the grid asks for 4 LRs, one has run. The legend names that one, not 4 colours of which
    three mark nothing; a diverged LR is drawn (dashed, to where it stopped) and so is listed."""
    from reports.ledger import load_ledger
    from reports.plots import plot_curves
    from reports.tables import table3_runs
    from test_reports import record, write_ledger

    grid = {"models": ["allcnn-c"], "lrs": [0.25, 0.1, 0.05, 0.01], "seeds": [0]}
    led = load_ledger(write_ledger(tmp_path / "one", [record(lr=0.05, test=31.6, grid=grid)]))
    labels = plot_curves(table3_runs(led.df, led.reference), table3(led.df, led.reference), tmp_path / "c.png")
    assert labels == ["LR 0.05", "LR Table 3 selects", "paper's error"]
    led = load_ledger(write_ledger(tmp_path / "two", [record(lr=0.05, test=31.6, grid=grid),
                                                      record(lr=0.25, status="diverged", grid=grid)]))
    labels = plot_curves(table3_runs(led.df, led.reference), table3(led.df, led.reference), tmp_path / "d.png")
    assert labels == ["LR 0.25", "LR 0.05", "LR Table 3 selects", "paper's error", "not completed"]


REFUSE_ON_IMPORT = """
import sys

class Refuse:  # bench/ablations.py's own check of ABLATIONS, as a user's typo'd arm makes it fail on import
    def find_spec(self, name, path=None, target=None):
        if name == "bench.ablations":
            raise ValueError("ablation 'wd', arm '5e-4': weight_decy cannot be varied by an arm")

sys.meta_path.insert(0, Refuse())
"""
"""The start of a script whose import of bench/ablations.py fails as a user's typo'd arm makes it fail."""
REFUSED_ARM = REFUSE_ON_IMPORT + """
from reports.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_ablation_refused_on_import_is_one_line(ledger_dir, tmp_path):
    p = subprocess.run([sys.executable, "-c", REFUSED_ARM, "--results", str(ledger_dir), "--out", str(tmp_path / "r")],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and not (tmp_path / "r").exists()
    assert p.stderr == "reports: ablation 'wd', arm '5e-4': weight_decy cannot be varied by an arm\n"


def test_number_columns_align_right_with_status_words_among_them():
    """Table 3's "Ours %" with one seed ("9.30"), several ("9.30 ± 0.14 (n=2)") and none ("not run", "diverged/
    failed") is a column of numbers in Markdown, HTML and LaTeX alike; it was left-aligned as soon as one cell was
    not a bare number. Names and notes stay text, though a note may begin with a number."""
    d = pd.DataFrame({"Model": ["Model A", "Model B", "Model C", "All-CNN-C"],
                      "Ours %": ["9.30", "9.30 ± 0.14 (n=2)", "not run", "diverged/failed"],
                      "p": ["5.55e-05", "0.0012", "", "-inf"],
                      "Notes": ["0.25 missing", "", "", "ok"]})
    assert formats.markdown_table(d).splitlines()[1] == "|---|---:|---:|---|"
    assert "\\begin{tabular}{lrrl}" in latex.table(d, "c", "t", "sha")
    assert formats.html_table(d, "t").count('<th class="t">') == 2
    assert '<tr><td class="t">Model A</td><td>9.30</td><td>5.55e-05</td><td class="t">0.25 missing</td></tr>' in \
        formats.html_table(d, "t")  # the cells, not only the header, are aligned as their column
    assert formats.markdown_table(d[["Model", "Notes"]].assign(x=["not run"] * 4)).splitlines()[1] == "|---|---|---|"


def test_latex_tables_are_laid_out_to_fit_the_text_width_and_the_page():
    """Without a TeX toolchain (tests/test_reports_fidelity.py compiles them where pdflatex is installed): a short
    table keeps its natural width and size; long text wraps in a tabularx at the line width; a table of many
    numbers sets its headers in two lines and names in its caption the columns that are alike on every row; a table
    taller than a page is a longtable whose header repeats."""
    short = latex.table(pd.DataFrame({"Model": ["All-CNN-C"], "Ours %": ["9.30"]}), "c", "t", "sha")
    assert "\\small\n" in short and "\\begin{tabular}{lr}" in short and "tabcolsep" not in short
    notes = pd.DataFrame({"Model": ["Model A", "All-CNN-C"],
                          "Notes": ["0.25 missing, 0.1 unfinished, 0.05 stalled", ""]})
    assert "\\begin{tabularx}{\\linewidth}{l>{\\raggedright\\arraybackslash}X}" in latex.table(notes, "c", "t", "sha")
    numbers = pd.DataFrame({"Model": ["Model A", "All-CNN-C"], "Device": ["NVIDIA H100 80GB HBM3"] * 2,
                            "Backend": ["synthetic"] * 2, "Batch": ["256"] * 2,
                            **{f"Train img/s {i}": ["62,127", "43,204"] for i in range(9)}})
    wide = latex.table(numbers, "Throughput", "t", "sha")
    assert "\\caption{Throughput (every row: Device NVIDIA H100 80GB HBM3" in wide
    assert wide.count("\\begin{tabular}[b]{@{}r@{}}Train\\\\img/s") == 9  # each header in two lines
    claim = "Removing max-pooling and striding the previous layer diminishes performance"
    claims = pd.DataFrame({"Claim": [claim] * 30,
                           "Verdict": ["inconclusive (LR grid incomplete)"] * 30})
    tall = latex.table(claims, "Claims", "claims", "sha")
    assert "\\begin{longtable}" in tall and tall.count("Claim & Verdict \\\\") == 2 and "\\begin{table}" not in tall
    for text in (short, wide, tall):
        check_latex(text)


def test_latex_cells_starting_with_a_bracket_or_a_star_are_printed(tmp_path):
    """A row's first cell comes after `\\\\` or a booktabs rule, which read a following [ as their optional argument
    (pdflatex stopped: "Illegal unit of measure") and \\\\ a following * as its star (the * vanished from the
    page); so did a stacked header's second line. A name of one's own network or a throughput file's display name
    may start with either."""
    d = pd.DataFrame({"Model": ["[ours] All-CNN-C", "*All-CNN-C", "[0.5pt] x"], "Error [%]": ["9.30", "9.31", "9.32"]})
    tex = latex.table(d, "Caption [draft]", "t", "sha")
    check_latex(tex)
    assert r"{[}ours] All-CNN-C" in tex and r"{*}All-CNN-C" in tex and r"{[}0.5pt] x" in tex
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert not re.search(r"(\\\\|rule)\s*[\[*]", body), body
    pdflatex_log(tmp_path, tex)


def test_latex_a_table_of_one_row_folds_its_columns_into_the_caption(tmp_path):
    """A throughput benchmark of one model is a table of one row and 14 columns: no column was folded (a column is
    alike on every row only with two rows), and it ran 130 pt past the text width, its last columns off the page.
    Words fold before numbers, so that its measurements stay in the table where they can."""
    row = {"Model": "All-CNN-C", "Device": "NVIDIA H200", "Devices": "1", "Precision": "bf16", "Backend": "synthetic",
           "Batch": "256", "Runs": "1", "Train img/s": "62,127", "Eval img/s": "160,405", "Train TFLOP/s": "51.69",
           "Eval TFLOP/s": "44.49", "Peak TFLOP/s": "989.0 (bf16)", "Train % of peak": "5.2", "Eval % of peak": "4.5"}
    tex = latex.table(pd.DataFrame([row]), "Throughput", "throughput", "sha")
    check_latex(tex)
    assert "\\caption{Throughput (every row: Device NVIDIA H200; Precision bf16; Backend synthetic;" in tex
    assert "Train\\\\img/s" in tex and "Eval\\\\img/s" in tex
    log = pdflatex_log(tmp_path, tex)
    assert log is None or not re.findall(r"Overfull \\hbox.*", log)


def test_latex_of_any_record_text_compiles(tmp_path):
    """A record's text is outside input: a character pdflatex cannot print (−, ≤, Greek, CJK, «, Þ) stopped the
    document with "Unicode character ... not set up for use with LaTeX", and a blank line in a cell ended its
    paragraph. They are written as math, as their ASCII letters or as ?, and a line break as a space."""
    device = "GPU − ≈ ≤ ≥ αβ 中 «x» Þ ą ǖ é € → ﬁ\n\nnext --lr ``q'' ?`"
    d = pd.DataFrame({"Model": ["All-CNN-C"], "Device": [device]})
    tex = latex.table(d, "Caption", "t", "sha")
    check_latex(tex)
    assert 'GPU $-$ $\\approx$ $\\le$ $\\ge$ ?? ? "x" ? a u é € → fi  next -{}-lr `{}`q\'{}\' ?{}`' in tex
    pdflatex_log(tmp_path, tex)


def test_a_table_of_no_rows_says_so_in_every_format(tmp_path):
    """A throughput table before any run completed: its header alone ran 64 pt past the text width in LaTeX."""
    d = pd.DataFrame(columns=["Model", "Train img/s", "Eval img/s"])
    assert formats.markdown_table(d) == f"*{formats.NONE}*\n"
    assert formats.html_table(d, "throughput") == f'<p id="throughput"><em>{formats.NONE}</em></p>\n'
    tex = latex.table(d, "Throughput", "throughput", "sha")
    assert "\\caption{Throughput}" in tex and formats.NONE in tex and "\\begin{tabular" not in tex
    log = pdflatex_log(tmp_path, tex)
    assert log is None or not re.findall(r"Overfull \\hbox.*", log)


def test_table3_names_the_val5k_seed_count_where_it_is_not_ns(tmp_path):
    """One seed on train, three on train45k: the val5k cell's mean ± std stood beside n = 1 (the test protocol's
    count), its own n = 3 in no shown table."""
    from reports.ledger import load_ledger
    from test_reports import record, write_ledger

    recs = [record(lr=0.05, test=9.5)] + [record(lr=0.05, seed=s, train_split="train45k", test=9.6 + s / 10,
                                                 val=9.7 + s / 10) for s in (0, 1, 2)]
    led = load_ledger(write_ledger(tmp_path, recs))
    row = formats.display_table3(table3(led.df, led.reference)).set_index("Model").loc["All-CNN-C"]
    assert (row["Ours %"], row["n"], row["Ours % (LR on val5k)"]) == ("9.50", "1", "9.70 ± 0.10 (n=3)")


def test_every_format_shows_the_numbers_of_its_csv(report_dir, led):
    """Each table's Markdown, HTML and LaTeX are its CSV's numbers as displayed, so every format says the same:
    table3-by-lr.csv and claims.csv were compared with nothing (a by-LR or claims CSV of other numbers than the
    tables shown passed every test); Table 3's details are table3.csv's."""
    from reports.report import build_sections

    md, page = (report_dir / "report.md").read_text(), (report_dir / "report.html").read_text()
    shown = {"table3": formats.display_table3, "table3-by-lr": formats.display_by_lr,
             "table3-details": formats.display_details, "claims": formats.display_claims,
             "throughput": formats.display_throughput}
    sections = build_sections(led)
    assert {s.stem for s in sections} - set(shown) == {p.stem for p in report_dir.glob("ablation-*.csv")}
    for s in sections:
        numbers = formats.read_csv(report_dir / f"{'table3' if s.stem == 'table3-details' else s.stem}.csv")
        d = shown.get(s.stem, formats.display_ablation)(numbers)
        assert formats.markdown_table(d) in md and formats.html_table(d, s.stem) in page, s.stem
        assert (report_dir / f"{s.stem}.tex").read_text() == latex.table(d, s.title, s.stem, led.sha256), s.stem
