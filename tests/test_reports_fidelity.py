"""What a reader of the report relies on (issues 10 and 14): like-with-like Table 3, every requested cell shown,
HTML without raw Markdown, a compact Table 3, only ablations that ran, LaTeX that compiles with the one package it
names, and a banner on numbers not comparable with the paper. The paper's claims: tests/test_reports_claims.py."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import markdown as md_lib
import pandas as pd
import pytest

from reports import formats, latex
from reports.ledger import load_ledger
from reports.report import write_report
from reports.tables import table3, table3_by_lr
from test_reports import ledger_dir, record, report_dir, write_ledger  # noqa: F401 (fixtures)

GRID = {"models": ["model-a", "strided-a", "allcnn-c"], "lrs": [0.1, 0.05, 0.01], "seeds": [0]}
JPEG = {"source": "cifar10-jpeg.tar.gz"}


def paper_like(**overrides) -> list[dict]:
    """A paper-preset ledger on the official data: 3 requested models x 3 LRs, LR 0.01 never ran, one stalled
    cell, and one run with another weight decay that must not enter Table 3."""
    r = record
    recs = [r(model=m, lr=lr, test=t, grid=GRID, **overrides)
            for m, lr, t in (("model-a", 0.1, 12.6), ("model-a", 0.05, 12.4), ("strided-a", 0.1, 13.5),
                             ("allcnn-c", 0.1, 9.2), ("allcnn-c", 0.05, 9.1))]
    recs.append(r(model="strided-a", lr=0.05, status="stalled", grid=GRID, **overrides))
    recs.append(r(model="allcnn-c", lr=0.05, test=8.0, weight_decay=5e-4, grid=GRID, **overrides))
    for rec in recs:
        rec["data"] = {**rec["data"], "source": "cifar-10-python.tar.gz"}
    return recs


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("paper-like")
    results = write_ledger(tmp / "results", paper_like())
    write_report(results, tmp / "report")
    return results, tmp / "report"


def test_a_run_with_another_config_is_excluded_and_listed(paper_report):
    results, out = paper_report
    led = load_ledger(results)
    assert led.reference["weight_decay"] == 1e-3
    t3 = table3(led.df, led.reference).set_index("model")
    assert t3.loc["allcnn-c", "error_pct"] == 9.1  # not the other run's 8.0
    assert "- 1 run(s) excluded (config differs from the reference): weight_decay=0.0005" in (
        out / "report.md").read_text()


def test_every_requested_cell_is_shown(paper_report):
    results, out = paper_report
    led = load_ledger(results)
    cells = table3_by_lr(led.df, led.reference).set_index(["model", "lr"])
    assert cells.loc[("model-a", 0.01), "status"] == "missing"  # requested, never ran
    assert cells.loc[("strided-a", 0.05), "status"] == "stalled"
    assert len(cells) == 3 * 3  # the three requested models, nothing else
    t3 = table3(led.df, led.reference).set_index("model")
    assert "0.01 missing" in t3.loc["model-a", "not_measured"]
    assert "0.05 stalled" in t3.loc["strided-a", "not_measured"]
    assert t3.loc["model-c", "status"] == "not run" and t3.loc["allcnn-a", "status"] == "not run"
    shown = formats.display_by_lr(table3_by_lr(led.df, led.reference)).set_index("Model")
    assert shown.loc["Model A", "LR 0.01"] == "missing" and shown.loc["Strided-CNN-A", "LR 0.05"] == "stalled"


def test_no_ablation_runs_no_ablation_section_no_banner(paper_report):
    _, out = paper_report
    md = (out / "report.md").read_text()
    assert "Ablation" not in md and not list(out.glob("ablation-*"))
    assert "Not comparable" not in md  # paper preset, official data


def test_compact_table3_has_no_empty_column(paper_report, report_dir):
    header = (paper_report[1] / "table3.tex").read_text()
    assert "val5k" not in header  # no run on train45k: no all-"not run" column
    for out in (paper_report[1], report_dir):
        lines = (out / "report.md").read_text().split("## Table 3: CIFAR-10")[1].splitlines()
        columns = next(line for line in lines if line.startswith("| Model")).count(" | ") + 1
        assert columns <= 9


def test_banner_on_smoke_and_jpeg(tmp_path):
    recs = [record(preset="smoke", test=80.0, subset_per_class=10)]
    recs[0]["data"] = {**JPEG, "num_train": 100, "num_test": 100}
    write_report(write_ledger(tmp_path / "r", recs), tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert '<div class="banner"><p><strong>Not comparable with the paper:</strong>' in html
    assert "`smoke` preset" not in html and "<code>smoke</code> preset (3 epochs, 10 images per class)" in html
    assert "lossy JPEG copy" in html


def test_record_text_adds_no_emphasis_in_markdown_or_html(tmp_path):
    """A record's * _ ~ in report.md made emphasis and strikethrough of its text (a device "A*B*C" showed as
    A<em>B</em>C, in a table cell and in the header) and a subset's "*5*" in the HTML banner; they are literal
    now, and our own notes keep their Markdown."""
    recs = [record(lr=lr, test=9.3, preset="smoke", subset_per_class="*5* _k_") for lr in (0.05, 0.1)]
    for rec in recs:
        rec["device_name"], rec["data"]["source"] = "A*B*C", "_my_ *data* ~x~ ~~y~~.tar.gz"
    write_report(write_ledger(tmp_path / "r", recs), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| A\\*B\\*C |" in md and "\\_my\\_ \\*data\\* \\~x\\~ \\~\\~y\\~\\~.tar.gz" in md
    page = (tmp_path / "out" / "report.html").read_text()
    for html in (md_lib.markdown(md, extensions=["tables"]), page):
        assert "A*B*C" in html and not re.search(r"<(em|strong|del|s)>(B|my|data|5|k)<", html)
    banner = page[page.index('<div class="banner">'):page.index("</div>")]
    assert "*5* _k_ images per class" in banner and "<em>Ours %</em>" in page  # TABLE3_NOTE's own Markdown


class Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.skip = [], False

    def handle_starttag(self, tag, attrs):
        self.skip = tag in ("style", "script")

    def handle_endtag(self, tag):
        self.skip = False

    def handle_data(self, data):
        if not self.skip:
            self.text.append(data)


def test_html_shows_no_raw_markdown(report_dir, paper_report):
    for out in (report_dir, paper_report[1]):
        parser = Text()
        parser.feed((out / "report.html").read_text())
        text = "".join(parser.text)
        assert "Ours %" in text and "`" not in text and "**" not in text
        assert not re.search(r"(^|\s)\*[A-Za-z]", text), re.search(r".{30}(^|\s)\*[A-Za-z].{30}", text)
        assert "<em>Ours %</em>" in (out / "report.html").read_text()


def test_html_from_a_ledger_is_shown_not_run(tmp_path):
    rec = record(test=9.5)  # a ledger is outside input: its strings reach the header (Markdown) and the tables
    rec["data"]["source"], rec["device_name"] = "<script>alert(1)</script>", "<img src=x onerror=alert(2)>"
    page = (write_report(write_ledger(tmp_path / "ledger", [rec]), tmp_path / "out")[0].parent / "report.html")
    text = page.read_text()
    assert "<script" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (as recorded" in text and "&lt;img src=x onerror=alert(2)&gt;" in text


# ---- LaTeX: only booktabs, tabularx, longtable and LaTeX's own commands; compiled when a TeX toolchain is installed

KNOWN_COMMANDS = {"begin", "end", "centering", "small", "caption", "label", "toprule", "midrule", "bottomrule",
                  "pm", "Delta", "times", "textbackslash", "textasciitilde", "textasciicircum", "footnotesize",
                  "setlength", "tabcolsep", "linewidth", "textbar", "textless", "textgreater", "raggedright",
                  "arraybackslash", "endfirsthead", "endhead", "begingroup", "endgroup", "scriptsize", "approx", "le",
                  "ge", "allowbreak"}
COLUMN = r"(?:>\{\\raggedright\\arraybackslash\})?(?:p\{[^}]*\}|[lrcX])"
"""One column of a table's spec: l, r, c, X or p{width}, words ragged right."""


def check_latex(text: str) -> None:
    """A small parser: braces and math balanced, environments nested, every command known, rows complete (in a
    tabular, a tabularx at the line width, or a longtable with its header repeated)."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    commands = set(re.findall(r"\\([A-Za-z]+)", body.replace("\\\\", " ")))  # a line break is no command
    assert commands <= KNOWN_COMMANDS, commands - KNOWN_COMMANDS
    plain = re.sub(r"\\[&%$#_{}\\]", "", body)
    depth = 0
    for ch in plain:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0 and plain.count("$") % 2 == 0
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack.pop() == env
    assert not stack
    opening = re.search(r"\\begin\{(tabular|tabularx|longtable)\}(\{\\linewidth\})?\{((?:" + COLUMN + r")+)\}\n", body)
    assert (opening.group(1) == "tabularx") == bool(opening.group(2))  # a tabularx is as wide as the text
    columns = re.findall(COLUMN, opening.group(3))
    rules = re.compile(r"\\(toprule|midrule|endfirsthead|endhead|caption\{.*)")
    rows = [row for row in body[opening.end():body.index(r"\bottomrule")].splitlines() if not rules.match(row)]
    assert len(rows) >= 2
    for row in rows:
        assert row.endswith(r"\\") and row.replace(r"\&", "").count("&") == len(columns) - 1, row


def pdflatex_log(tmp_path: Path, tex: str) -> str | None:
    """`tex` alone in an article, compiled twice: the log (None without pdflatex; a failed compile fails)."""
    if shutil.which("pdflatex") is None:
        return None
    (tmp_path / "t.tex").write_text(tex)
    (tmp_path / "doc.tex").write_text(f"\\documentclass{{article}}\n\\usepackage{{{latex.PACKAGES}}}\n"
                                      "\\begin{document}\n\\input{t.tex}\n\\end{document}\n")
    for _ in range(2):
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                              capture_output=True, timeout=120)  # bytes: TeX echoes a partial UTF-8 sequence
        assert done.returncode == 0, done.stdout[-2000:].decode(errors="replace")
    return (tmp_path / "doc.log").read_text(errors="replace")


@pytest.mark.parametrize("which", ["report_dir", "paper_report"])
def test_latex_parses_and_compiles_within_the_page(which, request, tmp_path):
    """Every .tex of two reports parses; with pdflatex installed, all of them in one article compile (twice, as a
    longtable needs) with no row wider than the text and no float taller than a page. Before reports/latex.py,
    Table 3 ran 25 pt past the text width, the throughput table 370 pt, and the claims 223 pt past the page's foot."""
    report = request.getfixturevalue(which)
    report = report if which == "report_dir" else report[1]
    tex = sorted(report.glob("*.tex"))
    assert len(tex) >= 5
    for path in tex:
        check_latex(path.read_text())
        cells = [x for x in path.read_text().splitlines() if not x.startswith(("%", r"\begin{"))]
        assert not any(c in x for x in cells for c in "|<>"), path.name  # OT1 fonts print them as —, ¡, ¿
    assert r"\textbar{}$\Delta$\textbar{}" in (report / "claims.tex").read_text()  # "one seed: |Δ| ..."
    assert latex.escape("a<b>c|d ±") == r"a\textless{}b\textgreater{}c\textbar{}d $\pm$"
    log = pdflatex_log(tmp_path, "".join(path.read_text() for path in tex))
    if log is None:
        return  # the parser above is the check; a TeX toolchain is not a dependency
    assert not re.findall(r"Overfull \\hbox.*|Float too large.*", log)


def test_a_long_word_from_a_record_breaks_within_the_text_width(tmp_path):
    """One word of a record (a 120-character path as the data source, a device's name of one long word) could not
    break, and ran the table past the text width. A word over latex.WORD_CHARS characters may break after / _ - .
    and every WORD_CHARS characters of a run without them; a short word (a number, a model's name) never breaks."""
    path = "/" + "/".join(["cifar_10-jpeg.v2" + "x" * 7] * 5) + ".tar.gz"
    device = "GPU" + "A" * 117
    assert len(path) > 120 and len(device) == 120
    d = pd.DataFrame({"Model": ["All-CNN-C", "Model A"], "Data": [path, "cifar-10-python.tar.gz"],
                      "Device": [device, "NVIDIA H200"], "Ours %": ["9.30 ± 0.14 (n=2)", "-12.50"]})
    tex = latex.table(d, "Sources", "t", "sha")
    check_latex(tex)
    assert r"/\allowbreak{}cifar\_\allowbreak{}10-\allowbreak{}jpeg.\allowbreak{}v2xxxxxxx/" in tex
    n = latex.WORD_CHARS
    assert "GPU" + "A" * (n - 3) + r"\allowbreak{}" + "A" * n + r"\allowbreak{}" in tex
    assert r"9.30 $\pm$ 0.14 (n=2) & -12.50" not in tex and r"-12.50 \\" in tex  # numbers unbroken
    log = pdflatex_log(tmp_path, tex)
    assert log is None or not re.findall(r"Overfull \\hbox.*", log)
