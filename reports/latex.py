"""The report's tables as LaTeX (booktabs) that fit an article's text width: `table(d, caption, label, sha256)`.

Every file needs `\\usepackage{booktabs,tabularx,longtable}` (said in its first lines; tabularx and longtable ship
with every LaTeX). How a table is made to fit, from estimates in characters (compiled and checked for overfull
boxes in tests/test_reports_fidelity.py when pdflatex is installed):
- a column of words with a cell over WRAP_CHARS wraps: an X column of `tabularx` at \\linewidth;
- the largest size that fits (\\small, \\footnotesize, \\scriptsize, then narrower column gaps), after the fewest
  of these steps: a header longer than its column's cells in two lines (Train / img/s); text over 12 characters
  wrapping too; the columns that are the same on every row named in the caption instead ("every row: Device
  NVIDIA H200; Batch 256": the throughput table's 14 columns);
- a table taller than a page (the claims, whose cells wrap) is a `longtable`, which breaks across pages and
  repeats its header (in a two-column document it needs a page of one column: LaTeX refuses it in two).
The estimates are for an article's text width (345 pt, at 10, 11 or 12 pt, on letter or A4 paper; though a
float of over about 36 rows is taller than a 12 pt article's page): columns that do not wrap keep their width in a
narrower text. One column of two (229 pt) is too narrow for most tables (7 to 87 pt too wide); as `table*`
(sed 's/{table}/{table*}/') they span both columns and fit. A long word from a record (a path, a device's name) may
break across lines (`BREAK_AFTER`, `WORD_CHARS`). A table that fits at no size (many columns of long numbers) is
written at the smallest, wider than the text.
"""
from __future__ import annotations

import math
import re
import unicodedata

import pandas as pd

from reports.formats import NONE, numeric_column

SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}",  # OT1 prints —, ¡, ¿
            "[": "{[}", "*": "{*}",  # after \\ or a booktabs rule, [ opens an optional argument; after \\, * its star
            "±": r"$\pm$", "Δ": r"$\Delta$", "—": "---", "×": r"$\times$",
            "−": "$-$", "≈": r"$\approx$", "≤": r"$\le$", "≥": r"$\ge$", "«": '"', "»": '"'}
PRINTED = frozenset(map(chr, range(0xA0, 0x100))) - set("«»ÐÞðþ") | set("–‘’“”…€•→←")
"""Characters beyond ASCII that pdflatex prints in its default encoding (OT1, utf8 input), checked one by one: other
text from a record (a device's name) is written by its decomposition's ASCII letters (ą: a), else as ?, which never
stops the document with "Unicode character ... not set up for use with LaTeX"."""
PACKAGES = "booktabs,tabularx,longtable"
WRAP_CHARS = 24
"""A column of words with a longer cell wraps; where the table is still too wide, one with a cell over 12."""
SIZES = [(r"\small", 6.0, 5.1), (r"\footnotesize", 3.0, 4.5), (r"\scriptsize", 3.0, 3.9), (r"\scriptsize", 1.5, 3.9)]
"""The sizes tried, largest first: (font size, tabcolsep in pt, pt a character): Computer Modern at 9, 8 and 7 pt
averages about 5.1, 4.5 and 3.9 pt a character in these tables."""
TEXT_PT = 320
"""An article's text width (345 pt), less a margin for the estimates."""
PAGE_LINES = 48
"""Lines of \\footnotesize a page holds beneath a caption (an article's 550 pt at 9.5 pt a line, less the rules)."""
RAGGED = r">{\raggedright\arraybackslash}"
BREAK_AFTER, WORD_CHARS = "/\\_-.", 16
"""A word longer than WORD_CHARS characters may break after each of BREAK_AFTER and every WORD_CHARS characters of a
run without them: one unbreakable word (a 120-character path) ran a table past the text width. Shorter words (a
number, a model's name: "ConvPool-CNN-C" is 14) are written as before."""


def escape(text) -> str:
    """`text` as LaTeX prints it, character by character: the math it writes for ±, Δ and × is never escaped;
    a line break or another control character is a space (a blank line would end a cell's paragraph); TeX's
    ligatures are broken (a record's "--lr" is not "–lr", nor `` a quote mark, nor ?` an inverted ?)."""
    text = str(text)
    breaks = _breaks(text)
    return "".join(("{}" if i and ch in "-`'" and text[i - 1] in "-`'!?" else "") + _char(ch)
                   + (r"\allowbreak{}" if i in breaks else "") for i, ch in enumerate(text))


def _breaks(text: str) -> set[int]:
    """Where a line may break in `text`: the indices after which a long word breaks (BREAK_AFTER, WORD_CHARS)."""
    out = set()
    for word in re.finditer(rf"\S{{{WORD_CHARS + 1},}}", text):
        run = 0
        for i in range(word.start(), word.end() - 1):
            run = 0 if text[i] in BREAK_AFTER else run + 1
            if run in (0, WORD_CHARS):
                out.add(i)
                run = 0
    return out


def _unbroken(word: str) -> int:
    """The length of `word`'s longest part that cannot break (`_breaks`): what a wrapping column must hold."""
    cuts = [-1, *sorted(_breaks(word)), len(word) - 1]
    return max(b - a for a, b in zip(cuts, cuts[1:]))


def _char(ch: str) -> str:
    if ch in SPECIALS:
        return SPECIALS[ch]
    if ch < " " or ch == "\x7f":
        return " "
    if ch.isascii() or ch in PRINTED:
        return ch
    return "".join(_char(c) for c in unicodedata.normalize("NFKD", ch) if c.isascii()) or "?"


def _two_lines(name: str) -> tuple[str, str] | None:
    """`name` split at the space that makes its longer line shortest; None for one word."""
    words = name.split(" ")
    if len(words) < 2:
        return None
    i = min(range(1, len(words)), key=lambda i: max(len(" ".join(words[:i])), len(" ".join(words[i:]))))
    return " ".join(words[:i]), " ".join(words[i:])


def _header(name: str, cells: int, align: str, stack: bool) -> tuple[str, int]:
    """A column's header cell and its width in characters: with `stack`, in two lines when it is longer than the
    cells."""
    lines = _two_lines(name) if stack and len(name) > cells else None
    if lines is None:
        return escape(name), len(name)
    return (f"\\begin{{tabular}}[b]{{@{{}}{align}@{{}}}}{escape(lines[0])}\\\\{escape(lines[1])}\\end{{tabular}}",
            max(map(len, lines)))


def _fit(d: pd.DataFrame, numeric: dict, size: tuple, stack: bool, wrap_at: int) -> dict:
    """The layout at `size` (one of SIZES): its wrapping columns (text with a cell over `wrap_at`), header cells
    (`stack`: in two lines where that narrows a column), the characters a wrapping column gets per line, whether it
    is too wide, and its height in lines."""
    text = {c: [str(x) for x in d[c]] for c in d.columns}
    cells = {c: max([0, *map(len, text[c])]) for c in d.columns}
    wrap = [c for c in d.columns if not numeric[c] and cells[c] > wrap_at]
    heads = {c: _header(str(c), cells[c], "r" if numeric[c] else "l", stack) if c not in wrap else (escape(c), 0)
             for c in d.columns}
    least = max([_unbroken(w) for c in wrap for x in [str(c), *text[c]] for w in x.split()], default=0)  # a word
    _, sep, pt = size
    chars = TEXT_PT / pt  # characters across the text width at this size
    fixed = sum(max(cells[c], heads[c][1]) for c in d.columns if c not in wrap) + 2 * sep / pt * len(d.columns)
    per_line = max((chars - fixed) / len(wrap), least) if wrap else 0.0  # wrapping columns are alike wide
    lines = 2 + sum(max([1, *(math.ceil(len(x) / per_line) for x in map(str, row))])
                    for row in d[wrap].itertuples(index=False)) if wrap else 2 + len(d)
    return {"size": size, "wrap": wrap, "heads": {c: h for c, (h, _) in heads.items()}, "per_line": per_line,
            "chars": chars, "too_wide": fixed + least * len(wrap) > chars, "lines": lines}


def _narrowed(d: pd.DataFrame, numeric: dict) -> tuple[pd.DataFrame, dict, str]:
    """The table at the largest of SIZES where it fits after the fewest of these steps: headers in two lines;
    text over 12 characters wrapping too; without the columns (not the first) whose cell is the same non-empty
    value on every row (in a table of one row, any), words before numbers and the widest first, one at a time,
    named in a note for the caption. At the smallest size, as it then is. Returns the table left, its layout and
    the note."""
    same = sorted((c for c in d.columns[1:] if d[c].nunique() == 1 and str(d[c].iloc[0])),
                  key=lambda c: (numeric[c], -max(len(str(c)), len(str(d[c].iloc[0])))))
    for size in SIZES:
        fit = _fit(d, numeric, size, False, WRAP_CHARS)
        for stack, wrap_at in ((True, WRAP_CHARS), (True, 12)):
            fit = _fit(d, numeric, size, stack, wrap_at) if fit["too_wide"] else fit
        folded = []
        while fit["too_wide"] and len(folded) < len(same):
            folded.append(same[len(folded)])
            fit = _fit(d.drop(columns=folded), numeric, size, True, 12)
        if not fit["too_wide"]:
            break
    note = "; ".join(f"{c} {d[c].iloc[0]}" for c in d.columns if c in folded)
    return d.drop(columns=folded), fit, (f" (every row: {note})" if note else "")


def table(d: pd.DataFrame, caption: str, label: str, sha256: str, kind: str = "ledger") -> str:
    """A booktabs table that fits the text width (module docstring). Columns of numbers right-aligned. A table of no
    rows is its caption and formats.NONE (a header alone may not fit: the throughput table's 14 columns)."""
    source = [f"% generated by `python -m reports` from {kind} sha256 {sha256}",
              f"% needs \\usepackage{{{PACKAGES}}} in the preamble"]
    if d.empty:
        return "\n".join([*source, r"\begin{table}[ht]", r"\centering", f"\\caption{{{escape(caption)}}}",
                          f"\\label{{tab:{label}}}", escape(NONE), r"\end{table}"]) + "\n"
    numeric = {c: numeric_column(d[c]) for c in d.columns}
    d, fit, note = _narrowed(d, numeric)
    caption += note
    (size, sep, _), wrap, long = fit["size"], fit["wrap"], fit["lines"] > PAGE_LINES
    width = f"{fit['per_line'] / fit['chars']:.3f}\\linewidth"
    spec = "".join("r" if numeric[c] else (f"{RAGGED}p{{{width}}}" if long else f"{RAGGED}X") if c in wrap
                   else "l" for c in d.columns)
    env = "longtable" if long else "tabularx" if wrap else "tabular"
    opening = f"\\begin{{{env}}}" + ("{\\linewidth}" if env == "tabularx" else "") + f"{{{spec}}}"
    head = [r"\toprule", " & ".join(fit["heads"][c] for c in d.columns) + r" \\", r"\midrule"]
    title = [f"\\caption{{{escape(caption)}}}", f"\\label{{tab:{label}}}"]
    gaps = [f"\\setlength{{\\tabcolsep}}{{{sep:g}pt}}"] if sep != 6 else []  # 6 pt: LaTeX's own
    lines = list(source)
    if long:  # not a float: it breaks across pages, its header repeated
        lines[-1] += " (a longtable: on a page of one column)"
        lines += [r"\begingroup", size, *gaps, opening, title[0] + title[1] + r" \\", *head, r"\endfirsthead",
                  *head, r"\endhead"]
    else:
        lines += [r"\begin{table}[ht]", r"\centering", *title, size, *gaps, opening, *head]  # the caption full size
    lines += [" & ".join(escape(x) for x in row) + r" \\" for row in d.itertuples(index=False)]
    lines += [r"\bottomrule", f"\\end{{{env}}}", r"\endgroup" if long else r"\end{table}"]
    return "\n".join(lines) + "\n"
