"""Turn the report's tables into text: display cells, Markdown, HTML, LaTeX (booktabs) and CSV.

    display_table3(t)          -> DataFrame of strings, the columns a reader sees
    markdown_table(d), html_table(d, id), latex_table(d, caption), write_csv(t, path, sha)

Plain code, no tabulate or jinja2, so the report needs only pandas and matplotlib. Numbers are rounded half up
(toward +inf) in decimal, so a shown difference always equals the shown error minus the paper's.
"""
from __future__ import annotations

import html
from decimal import ROUND_FLOOR, Decimal

import pandas as pd

from reports.ledger import _known
from reports.tables import TEXT_COLUMNS, lr_text

PRECISION_LABELS = {"no": "fp32"}
"""Accelerate's "no" mixed precision is fp32."""


def fixed(x, places: int = 2, sign: bool = False) -> str:
    """`x` with `places` decimals, halves rounded up; "" when missing."""
    if not _known(x):
        return ""
    step = Decimal(1).scaleb(-places)
    d = (Decimal(repr(float(x))) + step / 2).quantize(step, rounding=ROUND_FLOOR)
    d = d + 0  # no "-0.00"
    return (f"{d:+f}" if sign and d != 0 else f"{d:f}")


def error_cell(mean, std, n, status) -> str:
    """"9.30 ± 0.14 (n=2)" or "9.30"; the status word when there is no number ("missing", "diverged", ...)."""
    if not _known(mean):
        return status
    if n and int(n) > 1:
        return f"{fixed(mean)} ± {fixed(std)} (n={int(n)})"
    return fixed(mean)


def _int(x) -> str:
    return f"{int(round(float(x))):,}" if _known(x) else ""


def _lr(x) -> str:
    return lr_text(float(x)) if _known(x) else ""


def _text(x) -> str:
    return "" if not _known(x) else str(x)


def _sig(x, digits: int = 3) -> str:
    return f"{float(x):.{digits}g}" if _known(x) else ""


def display_table3(t: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in t.to_dict("records"):
        rows.append({
            "Model": r["paper_name"], "Paper %": fixed(r["paper_error_pct"]),
            "Ours % (LR on test)": error_cell(r["error_pct"], r["error_std"], r["n_seeds"], r["status"]),
            "Δ pp": fixed(r["diff_pp"], sign=True), "LR": _lr(r["lr"]),
            "Ours % (LR on val5k)": error_cell(r["val_error_pct"], r["val_error_std"], r["val_n_seeds"],
                                               r["val_status"]),
            "Δ pp (val)": fixed(r["val_diff_pp"], sign=True), "LR (val)": _lr(r["val_lr"]),
            "Diverged LRs": _both(r["diverged_lrs"], r["val_diverged_lrs"]),
            "Not measured": _both(r["not_measured"], r["val_not_measured"]),
            "Params": _int(r["params"]), "Paper params": r["paper_params"],
            "MACs (M)": fixed(r["macs"] / 1e6, 1), "Train img/s": _int(r["train_images_per_s"]),
            "s/epoch": _sig(r["epoch_s"]),
        })
    return pd.DataFrame(rows)


def _both(test, val) -> str:
    """A Table 3 note for both protocols: "0.25; val5k: 0.25"."""
    return "; ".join(x for x in (_text(test), f"val5k: {val}" if _known(val) else "") if x)


def display_ablation(t: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in t.to_dict("records"):
        rows.append({
            "Model": r["paper_name"], "Arm": r["arm"], "Protocol": r["protocol"],
            "Error %": error_cell(r["error_pct"], r["error_std"], r["n_seeds"], r["status"]), "LR": _lr(r["lr"]),
            "Δ vs baseline pp": fixed(r["diff_vs_baseline_pp"], sign=True),
            "Paper %": fixed(r["paper_error_pct"]), "Δ vs paper pp": fixed(r["diff_vs_paper_pp"], sign=True),
            "Diverged LRs": _text(r["diverged_lrs"]), "Not measured": _text(r["not_measured"]),
        })
    return pd.DataFrame(rows, columns=["Model", "Arm", "Protocol", "Error %", "LR", "Δ vs baseline pp", "Paper %",
                                       "Δ vs paper pp", "Diverged LRs", "Not measured"])


def display_throughput(t: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in t.to_dict("records"):
        peak = f"{fixed(r['peak_tflops'], 1)} ({r['peak_basis']})" if _known(r["peak_tflops"]) else "unknown"
        rows.append({
            "Model": r["paper_name"], "Device": _text(r["device_name"]), "Devices": _text(r["devices"]),
            "Precision": PRECISION_LABELS.get(_text(r["precision"]), _text(r["precision"])),
            "Backend": _text(r["backend"]), "Batch": _text(r["batch_size"]),
            "Runs": str(r["n_runs"]), "Train img/s": _int(r["train_images_per_s"]),
            "Eval img/s": _int(r["eval_images_per_s"]), "Train TFLOP/s": fixed(r["train_tflops"], 2),
            "Eval TFLOP/s": fixed(r["eval_tflops"], 2), "Peak TFLOP/s": peak,
            "Train % of peak": fixed(r["train_peak_pct"], 1), "Eval % of peak": fixed(r["eval_peak_pct"], 1),
        })
    return pd.DataFrame(rows, columns=["Model", "Device", "Devices", "Precision", "Backend", "Batch", "Runs",
                                       "Train img/s", "Eval img/s", "Train TFLOP/s", "Eval TFLOP/s",
                                       "Peak TFLOP/s", "Train % of peak", "Eval % of peak"])


def markdown_table(d: pd.DataFrame) -> str:
    """A GitHub pipe table; numeric-looking columns right-aligned."""
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")

    align = ["---:" if _numeric(d[c]) else "---" for c in d.columns]
    lines = ["| " + " | ".join(cell(c) for c in d.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in d.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _numeric(column: pd.Series) -> bool:
    cells = [str(x) for x in column if str(x)]
    return bool(cells) and all(c.lstrip("+-").replace(",", "").replace(".", "", 1).isdigit() for c in cells)


def html_table(d: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in row) + "</tr>"
                     for row in d.itertuples(index=False))
    return f'<table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n'


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "—": "---", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def latex_table(d: pd.DataFrame, caption: str, label: str, sha256: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); numeric-looking columns right-aligned."""
    spec = "".join("r" if _numeric(d[c]) else "l" for c in d.columns)
    lines = [f"% generated by `python -m reports` from ledger sha256 {sha256}", r"\begin{table}[ht]",
             r"\centering", f"\\caption{{{latex_escape(caption)}}}", f"\\label{{tab:{label}}}",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in d.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(x) for x in row) + r" \\" for row in d.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_csv(t: pd.DataFrame, path, sha256: str) -> None:
    """The table's numbers (not the display strings) plus a `ledger_sha256` column naming the ledger."""
    t.assign(ledger_sha256=sha256).to_csv(path, index=False, lineterminator="\n")


def read_csv(path) -> pd.DataFrame:
    """A table written by `write_csv`, without its `ledger_sha256` column: equals the table it came from."""
    return pd.read_csv(path, dtype={c: "string" for c in TEXT_COLUMNS}).drop(columns="ledger_sha256")
