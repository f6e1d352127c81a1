"""Turn the report's tables into text: display cells, Markdown, HTML and CSV (LaTeX: reports/latex.py).

    display_table3(t)          -> DataFrame of strings, the columns a reader sees
    markdown_table(d), html_table(d, id), write_csv(t, path, sha)      (LaTeX: reports/latex.py)

Plain code, no tabulate or jinja2 (the HTML page renders its prose with `markdown`: reports/report.py).
Numbers are rounded half up
(toward +inf) in decimal, so a shown difference always equals the shown error minus the paper's.
"""
from __future__ import annotations

import html
import math
import re
from decimal import ROUND_FLOOR, Decimal, localcontext

import pandas as pd

from allconv.specs import SPECS
from reports.ledger import _known, precision_label
from reports.tables import TEXT_COLUMNS, lr_text



NONE = "None yet: no run of this kind has been recorded."
"""What a table of no rows says instead, in every format."""


def fixed(x, places: int = 2, sign: bool = False) -> str:
    """`x` with `places` decimals, halves rounded up; "" when missing."""
    if not _known(x):
        return ""
    if not math.isfinite(float(x)):
        return f"{float(x):+}" if sign else f"{float(x)}"
    step = Decimal(1).scaleb(-places)
    with localcontext() as context:
        context.prec = 400  # every finite float's digits (1e308 and more: a ledger's numbers are outside input)
        d = (Decimal(repr(float(x))) + step / 2).quantize(step, rounding=ROUND_FLOOR)
        d = d + 0  # no "-0.00"
    return (f"{d:+f}" if sign and d != 0 else f"{d:f}")


def error_cell(mean, std, n, status) -> str:
    """"9.30 ± 0.14 (n=2)" ("9.30 ± 0.14" with n=1: the count shown elsewhere), "9.30" with one seed; the status
    word when there is no number ("missing", "diverged", ...)."""
    if not _known(mean):
        return status
    if _known(std):
        return f"{fixed(mean)} ± {fixed(std)}" + (f" (n={int(n)})" if int(n) > 1 else "")
    return fixed(mean)


def _int(x) -> str:
    """`x` rounded, with thousands separators; "inf" for a sum or product of outside numbers beyond a float."""
    if not _known(x):
        return ""
    return f"{int(round(float(x))):,}" if math.isfinite(float(x)) else f"{float(x)}"


def _lr(x) -> str:
    return lr_text(float(x)) if _known(x) else ""


def _text(x) -> str:
    return "" if not _known(x) else str(x)


def _sig(x, digits: int = 3) -> str:
    return f"{float(x):.{digits}g}" if _known(x) else ""


def display_table3(t: pd.DataFrame) -> pd.DataFrame:
    """The compact Table 3: the paper's columns, ours (mean ± std), Δ, LR, seeds; the val5k protocol only when
    some runs trained on train45k. What was not measured is one short note per row."""
    rows = []
    for r in t.to_dict("records"):
        notes = [f"diverged: {r['diverged_lrs']}" if _known(r["diverged_lrs"]) else "", _text(r["not_measured"])]
        rows.append({
            "Model": r["paper_name"], "Paper %": fixed(r["paper_error_pct"]),
            "Ours %": error_cell(r["error_pct"], r["error_std"], 1, r["status"]),
            "Δ pp": fixed(r["diff_pp"], sign=True), "LR": _lr(r["lr"]), "n": _count(r["n_seeds"]),
            "Ours % (LR on val5k)": error_cell(r["val_error_pct"], r["val_error_std"],  # its own n when not n's
                                               1 if r["val_n_seeds"] == r["n_seeds"] else r["val_n_seeds"],
                                               r["val_status"]),
            "Δ pp (val5k)": fixed(r["val_diff_pp"], sign=True),
            "Notes": "; ".join(x for x in notes if x)})
    return drop_empty(pd.DataFrame(rows))


def display_details(t: pd.DataFrame) -> pd.DataFrame:
    """Table 3's second table: sizes and speed (and the val5k protocol's LR and notes when it ran)."""
    rows = []
    for r in t.to_dict("records"):
        rows.append({
            "Model": r["paper_name"], "Params": _int(r["params"]), "Paper params": _text(r["paper_params"]),
            "MACs (M)": fixed(r["macs"] / 1e6, 1), "Train img/s": _int(r["train_images_per_s"]),
            "s/epoch": _sig(r["epoch_s"]), "LR (val5k)": _lr(r["val_lr"]),
            "val5k: diverged": _text(r["val_diverged_lrs"]), "val5k: not measured": _text(r["val_not_measured"])})
    return drop_empty(pd.DataFrame(rows))


def display_by_lr(t: pd.DataFrame) -> pd.DataFrame:
    """Every requested (model, LR) cell: "9.30 ± 0.14 (n=2)", or how its runs ended ("missing", "diverged")."""
    if t.empty:
        return pd.DataFrame({"Model": []})
    lrs = sorted(set(t["lr"]), reverse=True)
    out = {}
    for r in t.to_dict("records"):
        cell = error_cell(r["error_pct"], r["error_std"], r["n_seeds"], r["status"])
        if _known(r["error_pct"]) and r["status"] != "ok":
            cell += f"; {r['status']}"
        out.setdefault(r["paper_name"], {"Model": r["paper_name"]})[f"LR {lr_text(r['lr'])}"] = cell
    return pd.DataFrame(list(out.values()), columns=["Model", *(f"LR {lr_text(lr)}" for lr in lrs)])


def display_claims(t: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in t.to_dict("records"):
        y = r["y"] if str(r["y"]).endswith("%") else _side(r["y"], r["y_error_pct"], r["y_n"])
        rows.append({
            "Claim (Section 3.2.1)": r["claim"], "Ours %": f"{_side(r['x'], r['x_error_pct'], r['x_n'])} vs {y}",
            "Δ pp": fixed(r["diff_pp"], sign=True), "Paper Δ pp": fixed(r["paper_diff_pp"], sign=True),
            "Test": r["test"], "Verdict": r["verdict"]})
    return pd.DataFrame(rows)


def _side(model, error, n) -> str:
    """One side of a claim: "Model A 12.50 (n=2)", or "Model A (no number)"; "no other model" without one (the
    best-of-Table-3 claim with one model measured)."""
    if not _known(model):
        return "no other model"
    return f"{_name(model)} {fixed(error)} (n={n})" if _known(error) else f"{_name(model)} (no number)"


def _name(model) -> str:
    return SPECS[model].paper_name if model in SPECS else _text(model)


def _count(n) -> str:
    return str(int(n)) if _known(n) and int(n) > 0 else ""


def drop_empty(d: pd.DataFrame) -> pd.DataFrame:
    """Without the columns that say nothing: every cell empty or "not run"."""
    return d[[c for c in d.columns if not all(str(x) in ("", "not run") for x in d[c])]]


def display_ablation(t: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in t.to_dict("records"):
        notes = [f"diverged: {r['diverged_lrs']}" if _known(r["diverged_lrs"]) else "", _text(r["not_measured"])]
        rows.append({
            "Model": r["paper_name"], "Arm": r["arm"] + (f"; here {r['arm_here']}" if _text(r["arm_here"]) else ""),
            "Error %": error_cell(r["error_pct"], r["error_std"], 1, r["status"]), "n": _count(r["n_seeds"]),
            "LR": _lr(r["lr"]), "Δ vs baseline pp": fixed(r["diff_vs_baseline_pp"], sign=True),
            "Paper %": fixed(r["paper_error_pct"]), "LR judged on": r["protocol"].removeprefix("LR judged on "),
            "Not measured": "; ".join(x for x in notes if x)})
    return drop_empty(pd.DataFrame(rows, columns=["Model", "Arm", "Error %", "n", "LR", "Δ vs baseline pp",
                                                  "Paper %", "LR judged on", "Not measured"]))


def display_throughput(t: pd.DataFrame) -> pd.DataFrame:
    """The throughput table as shown; "Runs per step" only when some row trained a fused group (--fuse-lrs), the
    fused-group columns only when some benchmark row measured one (--fused K)."""
    rows = []
    for r in t.to_dict("records"):
        peak = f"{fixed(r['peak_tflops'], 1)} ({r['peak_basis']})" if _known(r["peak_tflops"]) else "unknown"
        if _known(r["eval_peak_tflops"]) and r["eval_peak_basis"] != r["peak_basis"]:  # fp32 eval of a bf16 run
            peak += f"; eval {fixed(r['eval_peak_tflops'], 1)} ({r['eval_peak_basis']})"
        rows.append({
            "Model": r["paper_name"], "Device": _text(r["device_name"]), "Devices": _text(r["devices"]),
            "Precision": precision_label(_text(r["precision"])),
            "Backend": _text(r["backend"]), "Batch": _text(r["batch_size"]), "Runs per step": _int(r["runs_per_step"]),
            "Runs": str(r["n_runs"]), "Train img/s": _int(r["train_images_per_s"]),
            "Eval img/s": _int(r["eval_images_per_s"]), "Train TFLOP/s": fixed(r["train_tflops"], 2),
            "Eval TFLOP/s": fixed(r["eval_tflops"], 2), "Peak TFLOP/s": peak,
            "Train % of peak": fixed(r["train_peak_pct"], 1), "Eval % of peak": fixed(r["eval_peak_pct"], 1),
            "Fused runs": _int(r["fused_runs"]), "Fused img/s (all runs)": _int(r["fused_train_images_per_s"]),
            "Fused / separate": fixed(r["fused_over_separate"], 2),
        })
    together = ["Runs per step"] if (t["runs_per_step"].map(lambda v: _known(v) and v > 1)).any() else []
    columns = ["Model", "Device", "Devices", "Precision", "Backend", "Batch", *together, "Runs", "Train img/s",
               "Eval img/s", "Train TFLOP/s", "Eval TFLOP/s", "Peak TFLOP/s", "Train % of peak", "Eval % of peak"]
    if t["fused_over_separate"].map(_known).any():
        columns += ["Fused runs", "Fused img/s (all runs)", "Fused / separate"]
    return pd.DataFrame(rows, columns=columns)


MARKDOWN_ACTIVE = str.maketrans({c: "\\" + c for c in "\\`[]<>|*~"})
EDGE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
"""An underscore not between two letters or digits: only such a one opens or closes emphasis (GitHub and
Python-Markdown alike), so "weight_decay" stays as written."""


def md_text(x) -> str:
    """Outside text (a record's path, device name, config value) as literal Markdown: the characters that make
    links, images, code, raw HTML, table cells, emphasis and strikethrough (backslash, backtick, brackets, angle
    brackets, pipe, star, tilde, an underscore at a word's edge) escaped, line breaks and other control characters
    spaces, so a record cannot add a link with text of its own, an image, a heading, a table row, emphasis or
    strikethrough (a device "A*B*C" showed as A<em>B</em>C; a bare URL stays: GitHub shows it as itself, linked).
    A lone surrogate (a JSON escape such as \\ud800, no character) becomes U+FFFD, so the text can always be
    written as UTF-8."""
    text = "".join(" " if ord(c) < 32 or ord(c) == 127 else "\ufffd" if "\ud800" <= c <= "\udfff" else c
                   for c in str(x)).translate(MARKDOWN_ACTIVE)
    return EDGE_UNDERSCORE.sub(r"\\_", text)


def markdown_table(d: pd.DataFrame) -> str:
    """A GitHub pipe table; numeric-looking columns right-aligned; every cell literal text (`md_text`). A table of
    no rows (a throughput table before any run completed) is NONE, not a header alone."""
    if d.empty:
        return f"*{NONE}*\n"
    align = ["---:" if numeric_column(d[c]) else "---" for c in d.columns]
    lines = ["| " + " | ".join(md_text(c) for c in d.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(md_text(x) for x in row) + " |" for row in d.itertuples(index=False)]
    return "\n".join(lines) + "\n"


NUMBER = re.compile(r"[+-]?\d[\d,]*(\.\d+)?(e[+-]?\d+)?( ± \d+(\.\d+)?)?( \(n=\d+\))?|[+-]?(inf|nan)")
"""A cell that is a number as the display functions write one: "1,024", "-0.35", "5.55e-05", "9.30 ± 0.14 (n=2)"."""
STATUS_WORD = re.compile(r"[a-z][a-z /]*")
"""A cell where a number column has no number: a status in lower-case words ("missing", "not run", "diverged/failed")."""


def numeric_column(column: pd.Series) -> bool:
    """Whether a column holds numbers (right-aligned): at least one, and nothing else but status words, so that
    Table 3's errors align alike whether a model has one seed, several, or none yet."""
    cells = [str(x) for x in column if str(x)]
    numbers = [bool(NUMBER.fullmatch(c)) for c in cells]
    return any(numbers) and all(n or STATUS_WORD.fullmatch(c) for n, c in zip(numbers, cells))


def html_table(d: pd.DataFrame, table_id: str) -> str:
    """An HTML table; columns of words left-aligned (class "t"), numbers right-aligned (the page's default); NONE
    for a table of no rows."""
    if d.empty:
        return f'<p id="{table_id}"><em>{NONE}</em></p>\n'
    cls = ["" if numeric_column(d[c]) else ' class="t"' for c in d.columns]
    head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(d.columns, cls))
    body = "\n".join("<tr>" + "".join(f"<td{k}>{html.escape(str(x))}</td>" for x, k in zip(row, cls)) + "</tr>"
                     for row in d.itertuples(index=False))
    return f'<table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n'


SOURCE_COLUMNS = ("ledger_sha256", "throughput_file_sha256")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
"""What a spreadsheet reads as the start of a formula (and the quote that marks a cell as text): a record's text
cell starting with one is written with a quote in front (OWASP's advice on CSV injection), so opening the CSV
in a spreadsheet shows the text and runs nothing."""


def _text_cells(t: pd.DataFrame, change) -> pd.DataFrame:
    """`t` with `change` applied to every string cell of its text columns."""
    text = [c for c in t.columns if t[c].dtype == object or isinstance(t[c].dtype, pd.StringDtype)]
    return t.assign(**{c: t[c].map(lambda x: change(x) if isinstance(x, str) else x) for c in text})


def write_csv(t: pd.DataFrame, path, sha256: str, kind: str = "ledger") -> None:
    """The table's numbers (not the display strings) plus a column naming where they came from: `ledger_sha256`,
    or `throughput_file_sha256` for a throughput table read from a benchmark file. A text cell that a spreadsheet
    would run as a formula gets a quote in front (`FORMULA_START`); `read_csv` takes it off."""
    t = _text_cells(t, lambda x: "'" + x if x.startswith(FORMULA_START) else x)
    t.assign(**{f"{kind.replace(' ', '_')}_sha256": sha256}).to_csv(path, index=False, lineterminator="\n")


def read_csv(path) -> pd.DataFrame:
    """A table written by `write_csv`, without its source column: equals the table it came from."""
    t = pd.read_csv(path, dtype={c: "string" for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])  # a
    # device named "N/A" or "None" stays that name: only an empty field is missing
    t = _text_cells(t, lambda x: x[1:] if x.startswith("'") else x)
    return t.drop(columns=[c for c in SOURCE_COLUMNS if c in t.columns])
