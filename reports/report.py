"""Write the whole report for one ledger: Markdown, one standalone HTML page, CSV and LaTeX per table, PNG plots.

    from reports import write_report
    paths = write_report("results", "report", preset=None, throughput=None)

All files are built in a temporary folder beside `out_dir` and moved in only when every one was written, so bad
input leaves no partial report. The same ledger (and throughput file) gives byte-identical files.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.ablations import ABLATIONS
from reports import formats, plots
from reports.ledger import PRECISION_NAMES, LedgerError, header as ledger_header, load_ledger
from reports.tables import ablation_table, baseline_runs, table3, throughput_table

TITLE = "Striving for Simplicity (All-CNN): Table 3 reproduction"
TABLE3_NOTE = (
    "CIFAR-10 test error %, no augmentation. *Ours (LR on test)* is the paper's protocol (`best_over_lr`): the LR "
    "with the lowest final test error, judged on the test set itself. *LR on val5k* (`select_on_val`): trained on "
    "45k images, the LR with the lowest validation error, and that run's test error. With several seeds: the LR "
    "with the lowest seed mean, then mean ± sample std (n seeds). An LR where any seed diverged is not selectable "
    "and is listed under *Diverged LRs*. *Not measured*: LRs of the grid with no run (missing), or whose runs failed "
    "or stopped early (unfinished). Δ: ours minus the paper, percentage points. Params: exact count; the paper "
    "prints rounded ones (its 1.3 M for Model C does not match the architecture). MACs: forward, per image. "
    "s/epoch: median of the ledger's per-epoch seconds (training and that epoch's evaluation), first epoch "
    "(warm-up) left out. Train img/s: steady-state training throughput, median over the completed runs.")
THROUGHPUT_NOTE = (
    "Median over runs of the same setting. TFLOP/s: training 3x the forward pass, 2 FLOP per MAC; share of the "
    "dense peak of the devices that ran it (a grid run: one; a DDP run or a benchmark: one per process) "
    "(bench/devices.py; fp32 against the TF32 peak, PyTorch's default for "
    "convolutions); blank where the device's peak is unknown (CPUs).")


@dataclass
class Section:
    stem: str  # file name stem and HTML id
    title: str
    note: str
    table: pd.DataFrame  # numbers (CSV)
    display: pd.DataFrame  # strings (Markdown, HTML, LaTeX)


def load_throughput(path: str | os.PathLike) -> pd.DataFrame:
    """Rows of bench/throughput.py output: a JSON list of dicts (or a dict holding one) or a CSV file."""
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"no throughput file at {path}")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), [data])
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise LedgerError(f"{path}: expected a list of dicts (model, precision, device_name, ...)")
    return pd.DataFrame.from_records(data)


def build_sections(led, benchmark: pd.DataFrame | None = None) -> list[Section]:
    t3 = table3(led.df, led.precision)
    out = [Section("table3", "Table 3: CIFAR-10 test error, ours beside the paper", TABLE3_NOTE, t3,
                   formats.display_table3(t3))]
    for name, ablation in ABLATIONS.items():
        t = ablation_table(led.df, name, led.precision)
        at = ("Arms as labelled." if name == "precision" else
              f"All arms at Table 3's precision ({PRECISION_NAMES.get(led.precision, led.precision)}).")
        note = " ".join(x for x in (ablation.note, at, "Δ vs baseline: arm minus the first arm, same model, pp.") if x)
        out.append(Section(f"ablation-{name}", f"Ablation: {ablation.title}", note, t, formats.display_ablation(t)))
    tp = throughput_table(led.df, benchmark)
    source = "the throughput benchmark file" if benchmark is not None else "the ledger's baseline runs"
    out.append(Section("throughput", "Throughput", f"From {source}. {THROUGHPUT_NOTE}", tp,
                       formats.display_throughput(tp)))
    return out


FIGURES = (("curves.png", "Test error per epoch"), ("error_vs_params.png", "Error vs parameters"),
           ("throughput.png", "Training throughput"))


def markdown(header, sections) -> str:
    parts = [f"# {TITLE}\n", "\n".join(f"- **{k}**: {v}" for k, v in header) + "\n"]
    for s in sections:
        level = "###" if s.stem.startswith("ablation-") else "##"
        if s.stem == "ablation-" + next(iter(ABLATIONS)):
            parts.append("## Ablations\n")
        parts.append(f"{level} {s.title}\n\n{s.note}\n\n{formats.markdown_table(s.display)}")
    parts.append("## Figures\n\n" + "\n\n".join(f"![{alt}]({name})" for name, alt in FIGURES) + "\n")
    return "\n".join(parts)


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:100em}table{border-collapse:collapse;margin:1em 0;"
         "font-size:0.85em}th,td{border:1px solid #ccc;padding:0.2em 0.5em;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%}")


def html_page(header, sections, folder: Path) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(TITLE)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(TITLE)}</h1>",
             "<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in header) + "</ul>"]
    for s in sections:
        tag = "h3" if s.stem.startswith("ablation-") else "h2"
        parts.append(f"<{tag}>{e(s.title)}</{tag}>\n<p>{e(s.note)}</p>\n{formats.html_table(s.display, s.stem)}")
    parts.append("<h2>Figures</h2>")
    for name, alt in FIGURES:
        data = base64.b64encode((folder / name).read_bytes()).decode()
        parts.append(f'<figure><img alt="{e(alt)}" src="data:image/png;base64,{data}"><figcaption>{e(alt)}'
                     "</figcaption></figure>")
    return "\n".join(parts) + "\n</body></html>\n"


def write_report(results_dir, out_dir, preset: str | None = None, throughput=None) -> list[Path]:
    """Read the ledger in `results_dir` and write every report file into `out_dir`; returns their paths.
    Raises LedgerError on bad input, before anything is written."""
    led = load_ledger(results_dir, preset)
    benchmark = load_throughput(throughput) if throughput is not None else None
    header = ledger_header(led)
    if throughput is not None:
        digest = hashlib.sha256(Path(throughput).read_bytes()).hexdigest()
        header.insert(1, ("Throughput file", f"{Path(throughput).name}, sha256 {digest}"))
    sections = build_sections(led, benchmark)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for s in sections:
            formats.write_csv(s.table, tmp / f"{s.stem}.csv", led.sha256)
            (tmp / f"{s.stem}.tex").write_text(formats.latex_table(s.display, s.title, s.stem, led.sha256))
        t3 = sections[0].table
        plots.plot_curves(baseline_runs(led.df, led.precision), t3, tmp / "curves.png", led.sha256)
        plots.plot_error_vs_params(t3, tmp / "error_vs_params.png", led.sha256)
        plots.plot_throughput(sections[-1].table, tmp / "throughput.png", led.sha256)
        (tmp / "report.md").write_text(markdown(header, sections))
        (tmp / "report.html").write_text(html_page(header, sections, tmp))
        out.mkdir(exist_ok=True)
        names = sorted(p.name for p in tmp.iterdir())
        for name in names:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / name for name in names]
