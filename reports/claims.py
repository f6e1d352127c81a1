"""The claims of Section 3.2.1 of the paper as data, each checked against the ledger's Table 3.

    claims_table(df, reference)   one row per claim: our numbers, the paper's, the test and a verdict

Each model's numbers are its seeds' final test errors at the LR Table 3 selects (`best_over_lr`). A claim compares
two models (or a model and a number) and gets a verdict:
- with at least two seeds on both sides, Welch's t-test (unequal variances; p two-sided, ALPHA = 0.05): a claimed
  order is "reproduced" when the difference has the claimed sign and p < ALPHA, "not reproduced" when it has the
  opposite sign and p < ALPHA, else "inconclusive"; "on par" is reproduced when the 95% confidence interval of the
  difference lies within +-MARGIN_PP, not reproduced when it lies wholly outside, else inconclusive;
- with one seed on a side there is no estimate of the training noise: a gap beyond MARGIN_PP decides, anything
  smaller is "inconclusive" (and "on par" can then only be refuted, never reproduced);
- on a test set small enough for its own sampling noise to exceed MARGIN_PP (a subset of a few hundred images), a
  gap within that noise is "inconclusive" whatever the seeds say (`sampling_noise`);
- a claim with a model that has no number is "not measured" (nothing was tested);
- a model whose LR grid is incomplete (`best_over_lr` status "partial": an LR or seed still to measure) is named in
  the test, and a verdict its missing runs could reverse is "inconclusive (LR grid incomplete)" (`_unless_open`).
"The best" is reproduced only when every other model has a number and is beaten; it is refuted by any model that
beats it. "At least as good" is judged like "better": it is reproduced only when the data show the order beyond noise.
Vague statements ("the drop in performance is not as dramatic as one might expect") are not claims here.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pandas as pd

from allconv.specs import PAPER_MODELS, SPECS
from reports.data import num_test
from reports.requested import lr_grid
from reports.tables import _round, _typed, best_over_lr, table3_runs

ALPHA = 0.05
MARGIN_PP = 1.0
"""Percentage points: the gap that decides a claim with one seed (at least), and the tolerance of "on par"."""
Z95 = 1.959964  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Claim:
    text: str  # what the paper says, in brief
    x: str  # model
    relation: str  # "better" (x lower error than y) | "on par" | "best" (x lower than every other model)
    y: str | float | None = None  # model, a number (% error), or None for "best"


def _families(text, x, relation, y) -> list[Claim]:
    return [Claim(text.format(f=f), f"{x}-{f.lower()}", relation, f"{y}-{f.lower()}") for f in "ABC"]


CLAIMS: tuple[Claim, ...] = (
    Claim("Model A already performs remarkably well, achieving 12.5% error", "model-a", "on par", 12.47),
    *_families("Removing max-pooling and striding the previous layer diminishes performance (family {f})",
               "model", "better", "strided"),
    *_families("Replacing pooling by a stride-2 conv stabilises and even improves on the base model (family {f})",
               "allcnn", "better", "model"),
    *_families("The ConvPool-CNN is at least as good as the base model (Table 3, family {f})",
               "convpool", "better", "model"),
    *_families("Without pooling and with a conv added before pooling perform about on par (family {f})",
               "allcnn", "on par", "convpool"),
    Claim("Stacked 3x3 convolutions suffice for the best performance: All-CNN-C is the best of Table 3",
          "allcnn-c", "best"),
)


def t_sf(t: float, dof: float) -> float:
    """P(T > t) for Student's t with `dof` degrees of freedom (regularised incomplete beta, continued fraction)."""
    x = dof / (dof + t * t)
    tail = 0.5 * _betainc(dof / 2, 0.5, x)
    return tail if t >= 0 else 1 - tail


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0 or x >= 1:
        return float(x >= 1)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    c, d, f = 1.0, 1 - (a + b) * x / (a + 1), 0.0  # Lentz's method
    d = 1 / (d if abs(d) > 1e-300 else 1e-300)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1 + num / c if abs(1 + num / c) > 1e-300 else 1e-300
            f *= c * d
        if abs(c * d - 1) < 1e-14:
            break
    return front * f / a


def welch(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Welch's t-test of mean(x) - mean(y): (t, degrees of freedom, standard error). `y` of one value is a
    constant (one-sample test)."""
    diff = statistics.fmean(x) - statistics.fmean(y)
    vx = statistics.variance(x) / len(x)
    vy = statistics.variance(y) / len(y) if len(y) > 1 else 0.0
    se = math.sqrt(vx + vy)
    if not se:  # every seed scored the same on both sides (a small test set quantises errors): t is 0 or infinite
        return (math.copysign(math.inf, diff) if diff else 0.0), float(len(x) + len(y) - 2), 0.0
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + (vy ** 2 / (len(y) - 1) if len(y) > 1 else 0.0))
    return diff / se, dof, se


def t_quantile(q: float, dof: float) -> float:
    """The t value with P(T > t) = 1 - q (bisection on `t_sf`)."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_sf(mid, dof) > 1 - q else (lo, mid)
    return (lo + hi) / 2


def sampling_noise(x: float, y: float | None, n_test: int | None) -> float:
    """The test set's own sampling noise (pp): the 95% half-width of the difference of two error rates on `n_test`
    images, taken as independent (conservative: both models see the same images); 0 when `n_test` is unknown.
    `y` None: a number from the paper, no noise. About 0.8 pp at 10% error on CIFAR-10's 10,000 test images."""
    if not n_test:
        return 0.0
    var = sum(e / 100 * (1 - e / 100) for e in (x, y) if e is not None) / n_test
    return Z95 * 100 * math.sqrt(var)


def verdict(x: list[float], y: list[float], relation: str, y_exact: bool = False,
            n_test: int | None = None) -> tuple[str, str, float]:
    """(verdict, the test in words, p) for `x` against `y` (lists of seed errors; "better": x lower), on a test
    set of `n_test` images (None: unknown). A difference within a small test set's sampling noise (over MARGIN_PP)
    decides nothing, however many seeds agree: every seed is scored on the same images."""
    diff = statistics.fmean(x) - statistics.fmean(y)
    noise = sampling_noise(statistics.fmean(x), None if y_exact else statistics.fmean(y), n_test)
    if noise > MARGIN_PP and abs(diff) <= noise:
        return "inconclusive", f"|Δ| within the noise of {n_test} test images (±{noise:.2g} pp)", float("nan")
    if len(x) < 2 or (len(y) < 2 and not y_exact):
        margin = max(MARGIN_PP, noise)
        test, p = f"one seed: |Δ| against the {margin:.2g} pp margin", float("nan")
        if margin > MARGIN_PP:
            test += f" (the noise of {n_test} test images)"
        if relation == "on par":
            return ("not reproduced" if abs(diff) > margin else "inconclusive"), test, p
        if abs(diff) <= margin:
            return "inconclusive", test, p
        return ("reproduced" if diff < 0 else "not reproduced"), test, p
    t, dof, se = welch(x, y)
    p = min(1.0, 2 * t_sf(abs(t), dof)) if math.isfinite(t) else 0.0
    if relation == "on par":
        half = t_quantile(1 - ALPHA / 2, dof) * se
        test = f"Welch t: 95% CI of Δ [{diff - half:.2f}, {diff + half:.2f}] against ±{MARGIN_PP:g} pp"
        if abs(diff) + half <= MARGIN_PP:
            return "reproduced", test, p
        return ("not reproduced" if abs(diff) - half > MARGIN_PP else "inconclusive"), test, p
    test = f"Welch t = {t:.2f}, dof {dof:.1f}, p = {p:.3g}"
    if p >= ALPHA:
        return "inconclusive", test, p
    return ("reproduced" if diff < 0 else "not reproduced"), test, p


def claims_table(df: pd.DataFrame, reference: dict | None) -> pd.DataFrame:
    """Every claim of `CLAIMS` with the ledger's numbers and the paper's, its test and verdict."""
    runs = table3_runs(df, reference)
    grid = lr_grid(runs)
    picked = {m: best_over_lr(runs[runs["model"] == m], grid) for m in SPECS}
    errors = {m: p.get("errors", []) for m, p in picked.items()}
    paper = {m: s.paper_error_pct for m, s in SPECS.items()}
    in_table3 = list(PAPER_MODELS)  # not a network of one's own (no paper number)
    n_test = min(filter(None, map(num_test, runs.get("data", []))), default=None)  # the fewest any run was scored on
    rows = []
    for c in CLAIMS:
        if c.relation == "best":
            others = [m for m in in_table3 if m != c.x and errors[m]]
            runner_up = min(others, key=lambda m: statistics.fmean(errors[m])) if others else None
            # the paper's difference for the same pair; with no runner-up of ours, the paper's own (All-CNN-B)
            y = runner_up
            y_paper = paper[y] if y else min(paper[m] for m in in_table3 if m != c.x)
        else:
            y, y_paper = c.y, paper.get(c.y, c.y)
        x_err = errors[c.x]
        y_err = [float(c.y)] if isinstance(c.y, float) else errors.get(y, []) if y else []
        y_label = y if isinstance(y, str) else f"{y:g} %" if isinstance(y, float) else None
        row = {"claim": c.text, "x": c.x, "relation": c.relation, "y": y_label,
               "x_error_pct": _mean(x_err), "x_n": len(x_err), "y_error_pct": _mean(y_err),
               "y_n": len(y_err) if isinstance(y, str) else 0, "diff_pp": _round(_mean(x_err) - _mean(y_err)),
               "paper_diff_pp": _round(paper[c.x] - y_paper), "p_value": float("nan")}
        if not x_err or not y_err:
            missing = [SPECS[m].paper_name for m in (c.x, y) if isinstance(m, str) and not errors.get(m)]
            row.update(verdict="not measured", test=f"no number for: {', '.join(missing)}" if missing
                       else "no other model has a number")
        elif c.relation == "best":
            found = {m: _unless_open(verdict(x_err, errors[m], "better", n_test=n_test), "better", x_err,
                                     errors[m], picked[c.x], picked[m]) for m in others}
            # the comparison that decides the verdict: the weakest; of equally weak ones the row's own (against the
            # runner-up, whose numbers the row shows), else the nearest; named when it is not the row's
            level = max(WEAKER.index(f[0]) for f in found.values())
            weakest = min((m for m in others if WEAKER.index(found[m][0]) == level),
                          key=lambda m: (m != runner_up, abs(statistics.fmean(errors[m]) - statistics.fmean(x_err))))
            worst = found[weakest]
            against = "" if weakest == runner_up else f"against {SPECS[weakest].paper_name}: "
            unmeasured = len(in_table3) - 1 - len(others)  # "the best" is shown only against every other model
            row.update(verdict=max(worst[0], "inconclusive" if unmeasured else worst[0], key=WEAKER.index),
                       test=f"against each of {len(others)} model{'s' * (len(others) != 1)}"
                       + (f" ({unmeasured} not measured)" if unmeasured else "") + f"; weakest: {against}{worst[1]}",
                       p_value=_round(worst[2]))
        else:
            v, test, p = _unless_open(verdict(x_err, y_err, c.relation, y_exact=isinstance(c.y, float),
                                              n_test=n_test), c.relation, x_err, y_err, picked[c.x], picked.get(y))
            row.update(verdict=v, test=test, p_value=_round(p))
        sides = [m for m in (c.x, *(others if c.relation == "best" else [y])) if m in picked and errors[m]]
        lacking = [f"{SPECS[m].paper_name}: {picked[m]['not_measured']}" for m in sides
                   if picked[m]["status"] == "partial"]
        if lacking and row["verdict"] != "not measured":
            row["test"] += f"; LR grid incomplete ({'; '.join(lacking)})"
        rows.append(row)
    return _typed(pd.DataFrame(rows))


OPEN = "inconclusive (LR grid incomplete)"
"""The verdict of a claim that runs still to measure could reverse (`_unless_open`)."""
WEAKER = ("reproduced", OPEN, "inconclusive", "not reproduced")
""""The best" takes the verdict of its weakest comparison, in this order (any model that beats it refutes it)."""


def _unless_open(found: tuple[str, str, float], relation: str, x: list[float], y: list[float],
                 x_pick: dict, y_pick: dict | None) -> tuple[str, str, float]:
    """`found` (`verdict` of errors `x` against `y`), or OPEN when runs still to measure could reverse it. A model's
    error (`best_over_lr`'s pick) can still move only down when LRs other than its selected one are unmeasured
    (one more LR can only lower the minimum), either way when its selected LR has seeds to measure (not
    `settled`). A verdict is reversed by a move of Δ = x - y toward the other side; "on par" reproduced by any."""
    moves = set()  # the directions Δ can still move: -1 down, +1 up
    for pick, sign in ((x_pick, 1), (y_pick, -1)):
        if pick is not None and pick["status"] == "partial":
            moves |= {-sign} if pick["settled"] else {-1, 1}
    v, _, p = found
    if v not in ("reproduced", "not reproduced") or not moves:
        return found
    back = -math.copysign(1, statistics.fmean(x) - statistics.fmean(y))  # toward the other side of Δ = 0
    if back in moves or (relation == "on par" and v == "reproduced"):
        return OPEN, found[1], p
    return found


def _mean(values: list[float]) -> float:
    return _round(statistics.fmean(values)) if values else float("nan")
