"""Write the whole report for one ledger: Markdown, one standalone HTML page, CSV and LaTeX per table, PNG plots.

    from reports import write_report
    paths = write_report("results", "report", preset=None, throughput=None)

The report says what its numbers are (`header`: data, preset, precision, devices, versions) and warns in a banner
when they cannot be compared with the paper (`banner`: a preset other than "paper", or lossy data). All files
are built in a temporary folder beside `out_dir` and moved in only when every one was written, so bad input leaves
no partial report. The same ledger (and throughput file) gives byte-identical files.
"""
from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import markdown as md_lib
import pandas as pd

from bench.ablations import ABLATIONS
from loaders.images import describe
from reports import fit, formats, latex, plots
from reports.claims import ALPHA, MARGIN_PP, claims_table
from reports.data import data_source, encoding_of, lossy
from reports.ledger import Ledger, LedgerError, _counted, _known, load_ledger, precision_label
from reports.provenance import code_line, pixels_line
from reports.tables import (ablation_has_runs, ablation_table, left_out, table3, table3_by_lr, table3_runs)
from reports.throughput import load_throughput, throughput_table

TITLE = "Striving for Simplicity (All-CNN): Table 3 reproduction"
TABLE3_NOTE = (
    "CIFAR-10 test error %, no augmentation, runs of the reference config only (header). *Ours %* follows the "
    "paper: the LR with the lowest final test error, judged on the test set itself; with several seeds the LR "
    "with the lowest seed mean, then mean ± sample std, *n* seeds. An LR where any seed diverged is not "
    "selectable. *LR on val5k* (when runs trained on 45k images): the LR with the lowest validation error, and "
    "that run's test error. Δ: ours minus the paper, percentage points. Every requested learning rate is in the "
    "next table.")
BY_LR_NOTE = ("Every (model, LR) cell the grid requested (record field `grid`; older records: the LRs that ran): "
              "the seed mean of the completed runs, or how the runs ended (*missing*: no run; *missing seeds*: "
              "seeds a command asked for at that LR without a run; *stalled*: stopped early at chance; "
              "*unfinished*: stopped before its last epoch).")
DETAILS_NOTE = ("Params: exact count; the paper prints rounded ones (its 1.3 M for Model C does not match the "
                "architecture). MACs: forward, per image. s/epoch: median of the per-epoch seconds (training and "
                "that epoch's evaluation), first epoch left out. Train img/s: median over the completed runs.")
FUSED_DETAILS_NOTE = (" A run trained in a fused group (--fuse-lrs) counts its own images: the group trained its "
                      "runs' rates summed (the throughput table's img/s).")
CLAIMS_NOTE = (
    f"Each statement of the paper's Section 3.2.1, checked on Table 3's numbers (seeds at the selected LR). "
    f"Several seeds: Welch's t-test, p < {ALPHA:g} decides an order; *on par* needs the 95% interval of Δ "
    f"within ±{MARGIN_PP:g} pp. One seed: no estimate of the training noise, so only a gap over {MARGIN_PP:g} pp "
    f"decides; smaller gaps are *inconclusive*. On a test set small enough for its own sampling noise to exceed "
    f"{MARGIN_PP:g} pp, a gap within that noise is *inconclusive* however many seeds agree. An incomplete LR grid "
    f"is named in the Test column; a verdict that its missing runs could reverse (a missing LR can only lower a "
    f"model's error, a seed still to measure at its selected LR can move it either way) is *inconclusive (LR grid "
    f"incomplete)*. *Not measured*: a "
    f"model in the claim has no number; \"the best\" needs all 12 and is shown against our runner-up. Paper Δ: "
    f"the same difference in the paper's Table 3 (one run each; \"the best\" with no runner-up of ours: the "
    f"paper's).")
THROUGHPUT_NOTE = (
    "Median over runs of the same setting. TFLOP/s: training 3x the forward pass, 2 FLOP per MAC; share of the "
    "dense peak of the devices that ran it (a grid run: one; a DDP run or a benchmark: one per process) "
    "(bench/devices.py; fp32 against the TF32 peak, PyTorch's default for convolutions, but for runs trained in "
    "fp32, which turn TF32 off); evaluation against the peak of the precision it ran in (*eval* in the peak "
    "column where that differs: fp32 evaluation of a bf16 run); blank where the device's peak is unknown (CPUs).")
RUNS_PER_STEP_NOTE = (" Runs per step: runs trained in lockstep as one fused model (--fuse-lrs); img/s count all "
                      "their images.")


@dataclass
class Section:
    stem: str  # file name stem and HTML id
    title: str
    note: str  # Markdown
    table: pd.DataFrame  # numbers (CSV)
    display: pd.DataFrame  # strings (Markdown, HTML, LaTeX)
    after: list[str] = field(default_factory=list)  # Markdown list items under the table
    level: int = 2


def build_sections(led: Ledger, benchmark: pd.DataFrame | None = None) -> list[Section]:
    ref = led.reference
    t3 = table3(led.df, ref)
    excluded = [f"{n} run(s) excluded (config differs from the reference): {diff}"
                for n, diff in left_out(led.df, ref)]
    out = [Section("table3", "Table 3: CIFAR-10 test error, ours beside the paper", TABLE3_NOTE, t3,
                   formats.display_table3(t3), excluded),
           Section("table3-by-lr", "Table 3 by learning rate", BY_LR_NOTE, by_lr := table3_by_lr(led.df, ref),
                   formats.display_by_lr(by_lr), level=3),
           Section("table3-details", "Table 3 details: size and speed", DETAILS_NOTE
                   + (FUSED_DETAILS_NOTE if (led.df["fused_runs"].fillna(1) > 1).any() else ""), t3,
                   formats.display_details(t3), level=3)]
    claims = claims_table(led.df, ref)
    out.append(Section("claims", "The paper's claims (Section 3.2.1)", CLAIMS_NOTE, claims,
                       formats.display_claims(claims)))
    for name, ablation in ABLATIONS.items():
        if not ablation_has_runs(led.df, name, ref):
            continue
        t = ablation_table(led.df, name, ref)
        label = formats.md_text(precision_label(led.precision))  # the reference config's: a record's value
        at = "Arms as labelled." if name == "precision" else f"All arms at Table 3's precision ({label})."
        note = " ".join(x for x in (ablation.note, at, "Δ vs baseline: arm minus the first arm, same model, pp.") if x)
        out.append(Section(f"ablation-{name}", f"Ablation: {ablation.title}", note, t, formats.display_ablation(t),
                           level=3))
    tp = throughput_table(led.df, benchmark)
    shown = formats.display_throughput(tp)
    source = "the throughput benchmark file" if benchmark is not None else "the ledger's baseline runs"
    note = THROUGHPUT_NOTE + (RUNS_PER_STEP_NOTE if "Runs per step" in shown.columns else "")
    out.append(Section("throughput", "Throughput", f"From {source}. {note}", tp, shown))
    return out


FIGURES = (("curves.png", "Test error per epoch of Table 3's runs: one colour per LR"),
           ("fit.png", "Training vs test error per epoch at the LR Table 3 selects (seed mean). Training error is "
                       "measured with dropout on, in training mode, over each epoch as the weights change: not the "
                       "test error's measurement; the star, where recorded, is the training error in eval mode at "
                       "the end. Training vs test loss where the records have test_loss"),
           ("error_vs_params.png", "Test error against exact parameter count, ours beside the paper's"),
           ("throughput.png", "Training throughput"))


def banner(led: Ledger) -> str | None:
    """Why this report's numbers cannot be set beside the paper's, or None when they can."""
    reasons = []
    if led.preset != "paper":
        ref = led.reference or {}
        subset = ref.get("subset_per_class")
        preset = "".join(c for c in led.preset if c != "`" and c.isprintable())  # a record's, in a code span
        reasons.append(f"it is of the `{preset}` preset ({led.epochs} epochs"
                       + (f", {formats.md_text(subset)} images per class" if subset else "")  # a record's
                       + "), not the paper's protocol")
    lossy_data = [d for d in led.df["data"] if isinstance(d, dict) and lossy(d)]
    if lossy_data:
        encodings = _distinct(formats.md_text(describe(enc)) for enc in map(encoding_of, lossy_data) if enc)
        reasons.append("it trained on a lossy " + (f"copy of CIFAR-10 ({' / '.join(encodings)})" if encodings
                                                   else "JPEG copy of CIFAR-10") + ", not the official images")
    if not reasons:
        return None
    return ("**Not comparable with the paper:** " + "; and ".join(reasons)
            + ". The Δ columns measure this setup, not the method.")


def header(led: Ledger) -> list[tuple[str, str]]:
    """What the numbers are, as (label, text) pairs: data, preset, epochs, precision, devices, versions, date."""
    df, all_df = led.df[~led.df["from_checkpoint"].astype(bool)], led.all_df  # what records say (no checkpoint)
    running = len(led.df) - len(df)
    sources = _distinct(data_source(d) for d in df["data"] if isinstance(d, dict)) or ["not recorded"]
    devices = Counter(f"{d if _known(d) else 'device not named'}" + (f" x{c}" if _known(c) else "")
                      for d, c in zip(df["device_name"], df["device_count"]))
    worlds = sorted({int(w) for w in df["world_size"] if _known(w)})
    versions = Counter(", ".join(f"{k} {v}" for k, v in sorted(x.items()) if v is not None) for x in df["versions"]
                       if isinstance(x, dict))  # null: not installed (ffcv), or not used (CUDA and cuDNN on a CPU)
    finished = [str(t) for t in all_df["finished_at"] if _known(t)]
    evals = Counter(precision_label(str(p)) for p in table3_runs(df, led.reference)["eval_precision"]
                    if _known(p))
    ref = led.reference
    rows = [
        ("Ledger", f"sha256 {led.sha256} ({len(all_df)} record{'s' * (len(all_df) != 1)}; {len(df)} of this preset "
                   "and length" + (f"; and {running} checkpoint(s) of runs still training" if running else "") + ")"),
        ("Data", "; ".join(sources) + (" -- MIXED SOURCES" if len(sources) > 1 else "")),
        ("Pixels", pixels_line(df)),  # the prepared arrays each run saw
        ("Preset", led.preset),
        ("Epochs", str(led.epochs) if led.epochs is not None else "not recorded"),
        ("Precision", f"Table 3 trained in {precision_label(led.precision)}; "
                      + (f"evaluated in {_counted(evals)}" if evals else "evaluation precision not recorded")),
        ("Runs", ", ".join(f"{s} {n}" for s, n in sorted(Counter(led.df["outcome"]).items()))),
        ("Reference config", ", ".join(f"{k}={v}" for k, v in sorted(ref.items())) if ref else "not recorded"),
        ("Devices", _counted(devices) if devices else "not recorded"),
        ("World size", ", ".join(map(str, worlds)) or "not recorded"),
        ("Setup", "; ".join(f"{k}: {', '.join(map(str, _distinct(df[k]))) or 'not recorded'}"
                            for k in ("backend", "mode", "batch_size"))),
        ("Versions", "; ".join(f"{v} ({n} run{'s' * (n != 1)})" for v, n in sorted(versions.items()))
         or "not recorded"),
        ("Code", code_line(df)),  # every session of every record
        ("Date", f"{max(finished)} (latest run finished)" if finished else "not recorded"),
    ]
    return rows + [("Note", n) for n in led.notes]


def _distinct(values) -> list:
    seen = []
    for v in values:
        if _known(v) and v not in seen:
            seen.append(v)
    return seen


def markdown(warning: str | None, header, sections, figures: bool = True) -> str:
    parts = [f"# {TITLE}\n"] + ([f"> {warning}\n"] if warning else [])
    parts.append("\n".join(f"- **{k}**: {formats.md_text(v)}" for k, v in header) + "\n")
    ablations = [s for s in sections if s.stem.startswith("ablation-")]
    for s in sections:
        if ablations and s is ablations[0]:
            parts.append("## Ablations\n")
        after = "".join(f"\n- {formats.md_text(x)}" for x in s.after)
        parts.append(f"{'#' * s.level} {s.title}\n\n{s.note}\n\n{formats.markdown_table(s.display)}{after}\n")
    if figures:
        parts.append("## Figures\n\n" + "\n\n".join(f"![{alt}]({name})" for name, alt in FIGURES) + "\n")
    return "\n".join(parts)


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:100em}table{border-collapse:collapse;margin:1em 0;"
         "font-size:0.85em}th,td{border:1px solid #ccc;padding:0.2em 0.5em;text-align:right}"
         "td:first-child,th:first-child{white-space:nowrap}.t{text-align:left}img{max-width:100%}"
         ".banner{background:#fff3cd;border:2px solid #d39e00;padding:0.6em 1em;font-size:1.1em}"
         "code{background:#f4f4f4;padding:0 0.2em}")


def _md(text: str) -> str:
    """Our Markdown (a banner, a note) as HTML. The text is HTML-escaped first, so no raw HTML passes whatever it
    quotes; the record strings it quotes are literal Markdown already (`formats.md_text`, or a code span), so they
    add no link or image either. Record strings elsewhere in the page are escaped as HTML and never Markdown.
    md_text's escapes of <, >, | and ~ (GitHub's) would show here as backslashes: Python-Markdown reads no \\| or
    \\~ (it reads \\* and \\_) and, after html.escape, sees \\&lt; and \\&gt;, so those backslashes go. In a code
    span (a preset's name) Markdown escapes the & of our escapes once more, which is undone there."""
    text = html.escape(text, quote=False)
    for c in ("&lt;", "&gt;", "|", "~"):
        text = text.replace("\\" + c, c)
    return re.sub(r"<code>(.*?)</code>", lambda m: f"<code>{m[1].replace('&amp;', '&')}</code>",
                  md_lib.markdown(text), flags=re.S)


def _list(items) -> str:
    """An HTML list of items that are HTML already (record strings escaped by the caller, never Markdown)."""
    return "<ul>\n" + "".join(f"<li>{x}</li>\n" for x in items) + "</ul>"


def html_page(warning: str | None, header, sections, folder: Path) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(TITLE)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(TITLE)}</h1>"]
    if warning:
        parts.append(f'<div class="banner">{_md(warning)}</div>')
    parts.append(_list(f"<strong>{e(k)}</strong>: {e(str(v))}" for k, v in header))
    ablations = [s for s in sections if s.stem.startswith("ablation-")]
    for s in sections:
        if ablations and s is ablations[0]:
            parts.append("<h2>Ablations</h2>")
        parts.append(f"<h{s.level} id=\"{s.stem}-title\">{e(s.title)}</h{s.level}>\n{_md(s.note)}\n"
                     f"{formats.html_table(s.display, s.stem)}" + (_list(map(e, s.after)) if s.after else ""))
    parts.append("<h2>Figures</h2>")
    for name, alt in FIGURES:
        data = base64.b64encode((folder / name).read_bytes()).decode()
        parts.append(f'<figure><img alt="{e(alt)}" src="data:image/png;base64,{data}"><figcaption>{e(alt)}'
                     "</figcaption></figure>")
    return "\n".join(parts) + "\n</body></html>\n"


def write_report(results_dir, out_dir, preset: str | None = None, throughput=None) -> list[Path]:
    """Read the ledger in `results_dir` and write every report file into `out_dir`; returns their paths.
    Raises LedgerError on bad input, before anything is written: `out_dir` (or the nearest folder above it that
    exists) a file, an unreadable throughput file."""
    out = Path(out_dir)
    there = next((p for p in (out, *out.parents) if p.exists() or p.is_symlink()), None)
    if there is not None and not there.is_dir():
        raise LedgerError(f"{there} is not a folder: the report cannot be written into {out}")
    led = load_ledger(results_dir, preset)
    benchmark = load_throughput(throughput) if throughput is not None else None
    rows = header(led)
    tp_source = (led.sha256, "ledger")  # what the throughput table and plot are stamped with: where they came from
    if throughput is not None:
        digest = hashlib.sha256(Path(throughput).read_bytes()).hexdigest()
        rows.insert(1, ("Throughput file", f"{Path(throughput).name}, sha256 {digest}"))
        tp_source = (digest, "throughput file")
    sections = build_sections(led, benchmark)
    warning = banner(led)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for s in sections:
            source = tp_source if s.stem == "throughput" else (led.sha256, "ledger")
            if s.stem != "table3-details":  # its numbers are table3.csv's
                formats.write_csv(s.table, tmp / f"{s.stem}.csv", *source)
            (tmp / f"{s.stem}.tex").write_text(latex.table(s.display, s.title, s.stem, *source))
        t3 = sections[0].table
        plots.plot_curves(t3_runs := table3_runs(led.df, led.reference), t3, tmp / "curves.png", led.sha256)
        fit.plot_fit(t3_runs, t3, tmp / "fit.png", led.sha256)
        plots.plot_error_vs_params(t3, tmp / "error_vs_params.png", led.sha256)
        plots.plot_throughput(sections[-1].table, tmp / "throughput.png", *tp_source)
        (tmp / "report.md").write_text(markdown(warning, rows, sections))
        (tmp / "report.html").write_text(html_page(warning, rows, sections, tmp))
        out.mkdir(exist_ok=True)
        names = sorted(p.name for p in tmp.iterdir())
        for name in names:
            os.replace(tmp / name, out / name)
    except UnicodeEncodeError as e:  # a lone surrogate from a record (a JSON escape): nothing was moved in
        raise LedgerError(f"a record's text {e.object[max(0, e.start - 30):e.end]!r} cannot be written as "
                          "UTF-8 (a lone surrogate)") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / name for name in names]
