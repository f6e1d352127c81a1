"""A ledger is outside input: what a record says reaches the report as text, never as a link, a heading, a table
row or a script; a record the schema cannot vouch for is set aside, never a crash; a run is counted once."""
from __future__ import annotations

import json
import re

import markdown as md_lib
import pandas as pd
import pytest

from bench import results
from reports import formats
from reports.__main__ import main as reports_main
from reports.ledger import load_ledger
from reports.tables import table3
from reports.throughput import throughput_table
from tests.test_reports import ROOT, record, write_ledger

LINK = "[Download the fixed weights](javascript:alert(1)) ![x](https://evil.example/p.png) <script>alert(2)</script>"


def test_record_strings_stay_text_in_every_file(tmp_path):
    rec = record(lr=0.05, test=9.3, backend="tensor\\|ffcv")
    rec["data"]["source"] = f"cifar.tar.gz\n\n# Table 3 (verified)\n\n{LINK}"
    rec["device_name"] = f"GPU\rX {LINK}"
    other = record(lr=0.1, test=9.5)
    other["device_name"] = "N/A"
    out = tmp_path / "report"
    assert reports_main(["--results", str(write_ledger(tmp_path / "results", [rec, other])), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    from_md = md_lib.markdown((out / "report.md").read_text(), extensions=["tables"])
    for html in (page, from_md):
        assert 'href="javascript' not in html and "<script" not in html and 'src="https://evil' not in html
        assert "Table 3 (verified)</h1>" not in html
    assert page.count("<h1>") == 1 and "[Download the fixed weights](javascript:alert(1))" in page  # as text
    tp = throughput_table(load_ledger(tmp_path / "results").df)
    back = formats.read_csv(out / "throughput.csv")
    assert len(back) == len(tp) and sorted(back["device_name"]) == sorted(tp["device_name"])
    assert "N/A" in set(back["device_name"]) and any(d.startswith("GPU X [") for d in back["device_name"])


def test_a_record_string_that_a_spreadsheet_would_run_is_quoted_in_every_csv(tmp_path):
    """CSV injection: a device name "=HYPERLINK(...)" would be a live formula in a spreadsheet that opens
    throughput.csv; it is written as text (a quote in front) and read back as the record's string."""
    names = ["=HYPERLINK(\"https://evil.example\",\"fix\")", "+1+cmd|' /C calc'!A0", "@SUM(1)", "-2+3", "'quoted",
             "NVIDIA H200"]
    recs = [record(lr=lr, test=9.5) for lr in (0.25, 0.1, 0.05, 0.01, 0.005, 0.001)]
    for rec, name in zip(recs, names):
        rec["device_name"] = name
    out = tmp_path / "report"
    assert reports_main(["--results", str(write_ledger(tmp_path / "results", recs)), "--out", str(out)]) == 0
    raw = pd.read_csv(out / "throughput.csv", dtype=str, keep_default_na=False)["device_name"]
    assert not any(cell.startswith(formats.FORMULA_START[:-1]) for cell in raw)
    assert sorted(raw) == sorted(n if n == "NVIDIA H200" else "'" + n for n in names)
    assert sorted(formats.read_csv(out / "throughput.csv")["device_name"]) == sorted(names)


@pytest.mark.parametrize("damage, why", [
    (lambda r: r.update(test_error_pct="NUMBER 1e400"), "out of range"),  # JSON parses it to infinity
    (lambda r: r.update(test_error_pct="NUMBER 1" + "0" * 400), "out of range"),  # an int beyond any float
    (lambda r: r.update(newer="NUMBER 1e400"), "out of range"),  # a newer writer's field: the schema allows any
    (lambda r: r["config"].update(newer="NUMBER 1" + "0" * 400), "out of range"),  # a config value: any number
    (lambda r: r.update(newer="NUMBER NaN"), "NaN is not valid JSON"),
    (lambda r: r["history"][0].update(seconds="12s"), "history"),
    (lambda r: r.update(grid={"models": [["allcnn-c"]]}), "grid"),
    (lambda r: r["config"].update(weight_decay={"a": 1}), "config values"),
    (lambda r: r["config"].update(preset=["paper"]), "config says preset ['paper'], the record 'paper'"),
    (lambda r: r["config"].pop("train_split"), "config has no 'train_split'"),
    (lambda r: r["config"].update(lr=0.25), "config says lr 0.25, the record 0.05"),
    (lambda r: r.update(diagnosis={"train_error_pct": 1.0, "test_error_by_class_pct": ["cat"] * 10,
                                   "dead_relu_channels": {}}), "field 'diagnosis'"),
    (lambda r: r.update(diagnosis={"train_error_pct": None, "test_error_by_class_pct": [],
                                   "dead_relu_channels": {}}), "field 'diagnosis'"),
    (lambda r: r.update(diagnosis={"train_error_pct": 1.0, "test_error_by_class_pct": [],
                                   "dead_relu_channels": {"top.conv3_relu": [11, 10]}}), "field 'diagnosis'"),
])
def test_a_record_the_schema_cannot_vouch_for_is_set_aside(tmp_path, capsys, damage, why):
    good, bad = record(lr=0.1, test=9.5), record(lr=0.05, test=9.3)
    write_ledger(tmp_path / "results", [good])
    damage(bad)
    text = re.sub(r'"NUMBER (\w+)"', r"\1", json.dumps(bad))  # a number literal of any size
    (results.runs_dir(tmp_path / "results") / f"{bad['run_key']}.json").write_text(text)
    assert reports_main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "report")]) == 0
    assert why in capsys.readouterr().err and (results.runs_dir(tmp_path / "results") / ".invalid").is_dir()
    assert list(load_ledger(tmp_path / "results").df["lr"]) == [0.1]


def test_a_record_under_another_runs_file_name_is_set_aside(tmp_path, capsys):
    """A record is its run's only under its own run key: copied (or merged) to another run's file name it would
    mark that run recorded, and a rerun would skip it though it never trained."""
    good, other = record(lr=0.1, test=9.5), record(lr=0.05, test=9.3)
    folder = write_ledger(tmp_path / "results", [good])
    path = results.runs_dir(folder) / f"{other['run_key']}.json"
    path.write_bytes((results.runs_dir(folder) / f"{good['run_key']}.json").read_bytes())
    assert results.read_one(path) == (None, f"run_key {good['run_key']!r} does not match the file name")
    assert [r["run_key"] for r in results.read_records(folder)] == [good["run_key"]]
    assert "does not match the file name" in capsys.readouterr().err and not path.exists()


def test_the_ledger_hash_names_the_records_bytes_and_the_checkpoints_read(tmp_path):
    """ledger_sha256 names the exact ledger a report came from: the same files elsewhere give the same hash, a
    record rewritten in place (the same run and file name, another finish time) another, as does a checkpoint read."""
    good = record(lr=0.1, test=9.5)
    folder = write_ledger(tmp_path / "results", [good])
    before = results.ledger_sha256(folder)
    assert results.ledger_sha256(write_ledger(tmp_path / "copy", [good])) == before
    assert results.ledger_sha256(folder, [("0123456789abcdef.pt", "ab" * 32)]) != before
    path = results.runs_dir(folder) / f"{good['run_key']}.json"
    path.write_text(json.dumps(json.loads(path.read_text())))  # the same record, other bytes (no indentation)
    assert results.ledger_sha256(folder) != before
    write_ledger(folder, [dict(good, finished_at="2026-11-21T10:00:00+00:00")])
    assert results.ledger_sha256(folder) != before


def test_a_hidden_file_in_runs_is_neither_read_nor_set_aside(tmp_path, capsys):
    """A name starting with "." is no ledger file (a copy's `._<key>.json`, macOS's AppleDouble): it is not read,
    named or moved, so a report does not count it among the files set aside."""
    good = record(lr=0.1, test=9.5)
    folder = write_ledger(tmp_path / "results", [good])
    hidden = results.runs_dir(folder) / f"._{good['run_key']}.json"
    hidden.write_bytes(b"\x00\x05\x16\x07 resource fork")
    assert [r["run_key"] for r in results.read_records(folder)] == [good["run_key"]]
    assert hidden.exists() and capsys.readouterr().err == ""


def test_numbers_at_the_records_bounds_are_shown_and_beyond_them_set_aside(tmp_path, capsys):
    """bench.results bounds a record's numbers (an error within 0-100%, images/s up to 1e12): records at the bounds
    make a report, records beyond them (1e30%, 1e300 img/s: they overflowed the tables) are set aside."""
    ok, beyond = record(lr=0.05, test=98.0, img_s=5e11), record(lr=0.01, test=1e30, img_s=1e300)  # ok: 100, 99, 98
    results_dir = write_ledger(tmp_path / "results", [ok])
    (results.runs_dir(results_dir) / f"{beyond['run_key']}.json").write_text(json.dumps(beyond))
    assert reports_main(["--results", str(results_dir), "--out", str(tmp_path / "report")]) == 0
    assert "test_error_pct" in capsys.readouterr().err and "500,000,000,000" in (tmp_path / "report" /
                                                                                 "report.md").read_text()
    assert formats.fixed(1e300) == "1" + "0" * 300 + ".00" and formats.fixed(float("inf")) == "inf"


def test_a_run_recorded_again_under_another_key_counts_once(tmp_path):
    """Records of one run (same config, model, LR and seed) under three keys, as keys from other versions of the
    code would give: one seed, the newest completed record's error (not a newer failed retry's), and a note."""
    old = record(lr=0.05, test=9.2, finished="2026-11-20T10:00:00+00:00")
    new = record(lr=0.05, test=9.4, finished="2026-11-21T10:00:00+00:00")
    new["run_key"] = "0123456789abcdef"
    retry = record(lr=0.05, status="failed", finished="2026-11-22T10:00:00+00:00")  # newer, but no result
    retry["run_key"] = "fedcba9876543210"
    led = load_ledger(write_ledger(tmp_path, [old, new, retry]))
    row = table3(led.df, led.reference).set_index("model").loc["allcnn-c"]
    assert (row["error_pct"], row["n_seeds"]) == (9.4, 1)
    assert any("2 older record(s) of runs recorded again" in n for n in led.notes)


def test_the_best_of_table3_with_one_model_names_no_empty_rival(tmp_path):
    assert reports_main(["--results", str(write_ledger(tmp_path / "results", [record(lr=0.05, test=9.3)])),
                         "--out", str(tmp_path / "report")]) == 0
    claims = (tmp_path / "report" / "report.md").read_text()
    assert "All-CNN-C 9.30 (n=1) vs no other model" in claims and "vs  (" not in claims


@pytest.mark.parametrize("text", ["bf16 <x> | y", "a\\<b", "p\\|q", "\\\\|", "a&lt;b", "[l](u) `c`",
                                  "A*B*C _d_ **e** ~f~ \\~ \\*"])
def test_quoted_record_text_reads_as_written_in_html(text):
    """A record string quoted in our Markdown (banner, notes: formats.md_text) shows in the HTML page as it was
    written: no backslash of GitHub's escapes left in front of <, > or |, and no markup from it."""
    import html

    from reports.report import _md

    page = _md(formats.md_text(text))
    assert page.startswith("<p>") and page.endswith("</p>") and "<" not in page[3:-4]
    assert html.unescape(page[3:-4]) == text


@pytest.mark.parametrize("preset", ["a<b", "a&b", "a&lt;b", "x|y"])
def test_preset_in_the_html_banner_reads_as_written(preset):
    """The banner quotes a record's preset in a code span: Markdown escapes a code span's & itself, so our escape
    of < or & showed as &lt; or &amp; there."""
    import html

    from reports.report import _md

    page = _md(f"the `{preset}` preset")
    code = page[page.index("<code>") + 6:page.index("</code>")]
    assert html.unescape(code) == preset and "<" not in code


def test_subset_in_the_banner_is_text(tmp_path):
    """The banner quotes a record's subset_per_class: a string there adds no image or link to either page."""
    recs = [record(lr=lr, test=9.3, preset="smoke", subset_per_class=LINK) for lr in (0.05, 0.1)]
    out = tmp_path / "report"
    assert reports_main(["--results", str(write_ledger(tmp_path / "results", recs)), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    banner = page[page.index('<div class="banner">'):page.index("</div>")]
    from_md = md_lib.markdown((out / "report.md").read_text(), extensions=["tables"])
    for html in (banner, from_md):
        assert 'src="https://evil' not in html and 'href="javascript' not in html and "<script" not in html
    assert "[Download the fixed weights](javascript:alert(1))" in banner  # as written


@pytest.mark.parametrize("device", ["NVIDIA H200 $\\frac{1}{$", "GPU $x^2$ \\$5"])
def test_record_strings_in_plots_are_not_mathtext(tmp_path, device):
    """A $ in a record string is drawn as a $: matplotlib's mathtext failed the whole report on "$\\frac{1}{$"
    (or an unknown command) and drew "$x^2$" as math."""
    from matplotlib import cbook

    from reports.plots import bar_labels

    recs = [record(lr=0.05, test=9.3, backend="$\\undefinedcommand$"), record(lr=0.1, test=9.5)]
    for r in recs:
        r["device_name"] = device
    assert reports_main(["--results", str(write_ledger(tmp_path / "results", recs)), "--out",
                         str(tmp_path / "report")]) == 0
    tp = throughput_table(load_ledger(tmp_path / "results").df)
    labels, common = bar_labels(tp.to_dict("records"))
    assert device in common.replace("\\$", "$") and not any(map(cbook.is_math_text, [common, *labels]))


def test_a_benchmark_figure_of_any_size_is_no_crash(tmp_path):
    """A --throughput file's figures are bounded by nothing but a float: a fused run's images/s times its group
    size beyond a float is shown as inf in the table and the plot, never an OverflowError."""
    from reports import plots

    led = load_ledger(write_ledger(tmp_path / "results", [record(lr=0.05, test=9.3)]))
    tp = throughput_table(led.df.assign(fused_runs=10, train_images_per_s=1e308))
    assert set(formats.display_throughput(tp)["Train img/s"]) == {"inf"}
    plots.plot_throughput(tp, tmp_path / "throughput.png")


ROW = '{"model": "allcnn-c", "precision": "bf16", "device_name": "NVIDIA H200", "train_images_per_s": %s}'


@pytest.mark.parametrize("name, text", [
    ("bad.json", b"{bad"), ("latin1.json", b"\xff\xfe[]"), ("bad.csv", b'a,b\n1,2,3,4\n"x'),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000), ("list.json", b'[{"model": ["allcnn-c"]}]'),
    ("surrogate.json", b"[" + (ROW % '5, "backend": "x\\ud800"').encode() + b"]"),
])
def test_a_bad_throughput_file_is_one_line_and_no_report(tmp_path, capsys, name, text):
    """--throughput names an outside file: one it cannot read or use is a one-line error, exit 2, no report."""
    results_dir = write_ledger(tmp_path / "results", [record(lr=0.05, test=9.3)])
    (tmp_path / name).write_bytes(text)
    out = tmp_path / "report"
    assert reports_main(["--results", str(results_dir), "--out", str(out), "--throughput", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and not out.exists(), err


@pytest.mark.parametrize("name, text", [
    ("rate.json", b"[" + (ROW % '"abc"').encode() + b"]"), ("inf.json", b"[" + (ROW % "1e400").encode() + b"]"),
    ("bool.json", b"[" + (ROW % "true").encode() + b"]"),
    ("big.json", b"[" + (ROW % ("1" + "0" * 400)).encode() + b"]"),
    ("rate.csv", b"model,precision,device_name,train_images_per_s\nallcnn-c,bf16,NVIDIA H200,abc\n"),
])
def test_a_throughput_figure_that_is_not_a_number_is_unknown(tmp_path, name, text):
    """A benchmark row's img/s that is not a finite number ("abc", 1e400, true) measured nothing: unknown, as
    bench.plan also reads it (tests/test_plan.py), and the report is written without it (it raised before)."""
    from reports.throughput import load_throughput

    (tmp_path / name).write_bytes(text)
    assert load_throughput(tmp_path / name)["train_images_per_s"].isna().all()
    results_dir = write_ledger(tmp_path / "results", [record(lr=0.05, test=9.3)])
    assert reports_main(["--results", str(results_dir), "--out", str(tmp_path / "report"), "--throughput",
                         str(tmp_path / name)]) == 0


def test_throughput_files_of_older_or_partial_rows_make_a_report(tmp_path):
    """An older bench/throughput.py file (committed: lists of rounds in columns no reader uses) was refused; a fused
    figure whose group size is unknown crashed the plot (int of NaN)."""
    results_dir = write_ledger(tmp_path / "results", [record(lr=0.05, test=9.3)])
    (tmp_path / "fused.json").write_bytes(b"[" + (ROW % '5, "fused_train_images_per_s": 9, "fused_runs": null')
                                          .encode() + b"]")
    for tp in (ROOT / "reports/measured/cpu-throughput-2026-11-26.json", tmp_path / "fused.json"):
        assert reports_main(["--results", str(results_dir), "--out", str(tmp_path / tp.stem), "--throughput",
                             str(tp)]) == 0, tp


def test_out_that_is_a_file_is_one_line_and_no_report(tmp_path, capsys):
    results_dir = write_ledger(tmp_path / "results", [record(lr=0.05, test=9.3)])
    (tmp_path / "afile").write_text("mine")
    for out in (tmp_path / "afile", tmp_path / "afile" / "report"):
        assert reports_main(["--results", str(results_dir), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "afile is not a folder" in err, err
    assert (tmp_path / "afile").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "afile", "results"]


def test_record_text_that_is_not_utf8_leaves_no_partial_report(tmp_path, capsys):
    """A lone surrogate (a JSON escape) in a record's device name: the record is set aside by the reader, or the
    report is a one-line error that wrote nothing; never a traceback or half a report folder."""
    rec = record(lr=0.05, test=9.3)
    results_dir = write_ledger(tmp_path / "results", [rec, record(lr=0.1, test=9.5)])
    rec["device_name"] = "NVIDIA \ud800"
    (results.runs_dir(results_dir) / f"{rec['run_key']}.json").write_text(json.dumps(rec))  # ASCII: \ud800
    out = tmp_path / "report"
    code = reports_main(["--results", str(results_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0 or (code == 2 and err.count("\n") == 1 and not out.exists()), err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_the_report_names_the_ledger_files_set_aside(tmp_path, capsys):
    """Files that are not records are set aside (runs/.invalid/) when read: the report built from that read names
    them, and a later report counts what runs/.invalid/ holds, so it never looks like a complete ledger."""
    results_dir = write_ledger(tmp_path / "results", [record(lr=0.1, test=9.5), record(lr=0.05, test=9.3)])
    runs = results.runs_dir(results_dir)
    (runs / "0123456789abcdef.json").write_text("{not json")
    (runs / "fedcba9876543210.json").write_text(json.dumps(record(lr=0.01, test=1e30)))
    assert reports_main(["--results", str(results_dir), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert (f"- **Note**: Set aside now: 2 ledger file(s) that are not valid records, moved to {runs}/.invalid (the "
            "warnings say why): 0123456789abcdef.json, fedcba9876543210.json.") in md
    assert reports_main(["--results", str(results_dir), "--out", str(tmp_path / "again")]) == 0
    again = (tmp_path / "again" / "report.md").read_text()
    assert "Set aside now" not in again and "holds 2 file(s) set aside by earlier reads" in again
    assert "(2 records;" in again  # what the ledger line counts
    (runs / "0123456789abcdef.json").write_text("{damaged again")  # kept beside the first, not over it
    third = load_ledger(results_dir).notes
    assert any("Set aside now: 1 ledger file(s)" in n for n in third) and \
        any("holds 2 file(s) set aside by earlier reads" in n for n in third), third
    (runs / ".invalid").rename(runs / "elsewhere")
    (runs / ".invalid").write_text("a file, no place to move one to")
    (runs / "0123456789abcdef.json").write_text("{not json")
    led = load_ledger(results_dir)
    assert led.notes[0] == (f"Skipped: 1 ledger file(s) that are not valid records, left in {runs} (they could not "
                            f"be moved to {runs}/.invalid): 0123456789abcdef.json.")


def test_a_pipe_in_a_record_string_stays_in_its_markdown_cell(tmp_path):
    """A device named "A | B" split its row of report.md's throughput table: every cell after it one column off."""
    rec = record(lr=0.05, test=9.3)
    rec["device_name"] = "A | B"
    out = tmp_path / "report"
    assert reports_main(["--results", str(write_ledger(tmp_path / "results", [rec])), "--out", str(out)]) == 0
    assert "<td>A | B</td>" in md_lib.markdown((out / "report.md").read_text(), extensions=["tables"])
