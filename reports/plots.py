"""The report's figures (matplotlib, Agg backend, PNG), byte-identical for the same ledger.

    plot_curves(runs, t3, path)         test error per epoch, a panel per model with runs, a colour per LR
    plot_error_vs_params(t3, path)      our error and the paper's at the exact parameter count
    plot_throughput(tp, path)           training img/s per variant and setting
    (fit.png, training vs test error and loss per epoch: reports/fit.py, `plot_fit`)

Fixed figure sizes and DPI, no "Software" PNG tag, and the ledger's sha256 in the figure: nothing varies by run.
"""
from __future__ import annotations

from collections import Counter

import matplotlib
import matplotlib.patches
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import pandas as pd  # noqa: E402

from allconv.specs import FAMILIES, SPECS  # noqa: E402
from reports.ledger import _known, precision_label  # noqa: E402
from reports.requested import lr_grid  # noqa: E402
from reports.tables import lr_text  # noqa: E402

DPI = 100
FAMILY_COLORS = {"A": "tab:blue", "B": "tab:orange", "C": "tab:green"}
EXTRA_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
"""Colours of the families added to allconv.specs.FAMILIES beyond the paper's three, in its order (`family_color`)."""


def family_color(family: str) -> str:
    """The paper's families A-C their FAMILY_COLORS; a family of one's own the next of EXTRA_COLORS."""
    if family in FAMILY_COLORS:
        return FAMILY_COLORS[family]
    extra = [f for f in FAMILIES if f not in FAMILY_COLORS]
    return EXTRA_COLORS[extra.index(family) % len(EXTRA_COLORS)] if family in extra else "tab:gray"


VARIANT_MARKERS = {"model": "o", "strided": "v", "convpool": "s", "allcnn": "D"}
VARIANT_NAMES = {"model": "Model", "strided": "Strided-CNN", "convpool": "ConvPool-CNN", "allcnn": "All-CNN"}


STAMP_IN = 0.12
"""Inches at the foot of a figure kept for `_save`'s stamp: a figure legend at the foot sits above them."""


def _save(fig, path, sha256: str, kind: str = "ledger") -> None:
    """`kind`: what `sha256` is the hash of, "ledger" or "throughput file"."""
    fig.text(0.995, 0.005, f"{kind} sha256 {sha256[:16]}", ha="right", va="bottom", fontsize=6, color="0.5")
    fig.savefig(path, dpi=DPI, metadata={"Software": None, "Source": f"{kind} sha256 {sha256}"})
    plt.close(fig)


def run_curve(history, key: str = "test_error_pct") -> list[tuple[int, float]]:
    """(epoch, value of `key`) of each epoch of a run's `history` that has one: the test error of each evaluated
    epoch by default; "train_acc_pct" and "loss" are in every epoch, "test_loss" in evaluated ones of newer records."""
    return [(int(h["epoch"]), float(h[key])) for h in (history if isinstance(history, list) else [])
            if isinstance(h, dict) and _known(h.get("epoch")) and _known(h.get(key))]


def seed_curves(runs: pd.DataFrame, key: str = "test_error_pct") -> list[list[tuple[int, float]]]:
    """The curves of `key` (`run_curve`) to draw for the runs of one LR: their mean per epoch when every run has
    it at the same epochs, else each run's own. A mean over the runs that reached each epoch would jump where one of
    them stopped (a seed still training, or diverged), which reads as a training event; a mean over the runs that
    have `key` at all would stand beside other curves' means over all of them as if of the same seeds."""
    curves = [c for c in (run_curve(h, key) for h in runs["history"]) if c]
    if len(curves) != len(runs) or len({tuple(e for e, _ in c) for c in curves}) != 1:
        return curves
    return [[(e, sum(c[i][1] for c in curves) / len(curves)) for i, (e, _) in enumerate(curves[0])]]


def plot_curves(runs: pd.DataFrame, t3: pd.DataFrame, path, sha256: str = "") -> list[str]:
    """Test error per epoch, one panel per model that has runs (Table 3's runs), one colour per LR for every
    panel (the seed mean, or each seed where they stopped at different epochs: `seed_curves`; LRs with diverged,
    stalled, failed or unfinished runs dashed, up to where they stopped),
    the LR Table 3 selects drawn thick, the paper's error dotted; one legend for the figure, of what is drawn (its
    labels are returned). Log scale: 9% vs 10% stays visible beside the first epochs' 90%."""
    grid = lr_grid(runs)
    colors = {lr: f"C{i}" for i, lr in enumerate(grid)}
    selected = dict(zip(t3["model"], t3["lr"]))
    names = [n for n in SPECS if (runs["model"] == n).any()]
    cols = max(1, min(4, len(names)))
    rows = max(1, -(-len(names) // cols))
    # at least 8 in wide: the title and the one-row legend must fit over a single panel too
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, 3.5 * cols + 0.5), 2.8 * rows + 1.4), squeeze=False)
    last_epoch = max([1, *(int(e) for e in runs["epochs"] if _known(e))])
    dashed, apart, drawn = False, False, set()
    for ax, name in zip(axes.flat, names):
        mine, spec = runs[runs["model"] == name], SPECS[name]
        ax.set_title(spec.paper_name, fontsize=10)
        if spec.in_paper:  # a network of one's own has no paper line
            ax.axhline(spec.paper_error_pct, color="0.3", linestyle=":", linewidth=1)
        low = [5.0]
        for lr in grid:
            at = mine[mine["lr"].map(lambda x, lr=lr: _known(x) and float(x) == lr).astype(bool)]
            curves = seed_curves(at)
            if not curves:
                continue
            low.append(0.8 * min(v for c in curves for _, v in c))
            ended = bool(set(at["outcome"]) - {"completed"})
            dashed, apart = dashed | ended, apart | (len(at) > 1 and len(curves) > 1)
            drawn.add(lr)
            for curve in curves:
                ax.plot([e for e, _ in curve], [v for _, v in curve], marker="o" if len(curve) <= 30 else None,
                        markersize=3, color=colors[lr], linestyle="--" if ended else "-",
                        linewidth=2.5 if selected.get(name) == lr else 1)
        if len(low) == 1:  # runs, but not one evaluated epoch: say why rather than show an empty panel
            ended = Counter(mine["outcome"])
            why = f"every run {next(iter(ended))}" if len(ended) == 1 else ", ".join(
                f"{n} {o}" for o, n in sorted(ended.items()))
            ax.text(0.5, 0.5, f"no evaluated epoch:\n{why}", ha="center", va="center", transform=ax.transAxes,
                    fontsize=9, color="0.3")
        ax.set_yscale("log")
        ax.set_ylim(min(low), 100)
        ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([2, 5, 10, 20, 50, 100]))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlim(0.5, last_epoch + 0.5)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("test error %", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    if not names:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "no runs of Table 3's config", ha="center", va="center")
    # an LR of the grid with no curve yet keeps its colour but has no legend entry: the legend lists what is drawn
    handles = [plt.Line2D([], [], color=colors[lr], label=f"LR {lr_text(lr)}") for lr in grid if lr in drawn]
    handles += [plt.Line2D([], [], color="0.3", linewidth=2.5, label="LR Table 3 selects"),
                plt.Line2D([], [], color="0.3", linestyle=":", label="paper's error")]
    if dashed:
        handles.append(plt.Line2D([], [], color="0.3", linestyle="--", label="not completed"))
    height = fig.get_figheight()
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, STAMP_IN / height), ncol=len(handles),
               fontsize=8, frameon=False)
    fig.suptitle("CIFAR-10 test error per epoch (seed mean per LR" + ("; each seed where they stopped apart)"
                                                                      if apart else ")"))
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.75 / height, bottom=(0.85 + STAMP_IN) / height,
                        hspace=0.55, wspace=0.3)
    _save(fig, path, sha256)
    return [h.get_label() for h in handles]


JITTER = {"model": -0.012, "strided": 0.012, "convpool": -0.012, "allcnn": 0.012}
"""M parameters: Model and Strided-CNN (and ConvPool and All-CNN) have the same count; shifted apart to be seen."""


def plot_error_vs_params(t3: pd.DataFrame, path, sha256: str = "") -> None:
    """Each model's error against its exact parameter count: the paper's (hollow) and ours (filled; error bar:
    seed std; half filled where its LR grid is incomplete) at the same x, offset sideways by variant (`JITTER`, said
    on the axis). The paper prints rounded counts (its 1.3 M for Model C is 0.95 M), so its points
    are placed at the exact count of the architecture it describes. Colour: family; marker: Table 2 variant."""
    fig, ax = plt.subplots(figsize=(8, 6.8))
    for r in t3.to_dict("records"):
        spec = SPECS[r["model"]]
        color, marker = family_color(spec.family), VARIANT_MARKERS[spec.variant]
        x = r["params"] / 1e6 + JITTER[spec.variant]
        ax.scatter([x], [r["paper_error_pct"]], marker=marker, facecolors="none", edgecolors=color, s=50)
        if _known(r["error_pct"]):  # half filled: the LR grid is incomplete, a missing LR may still lower it
            ax.errorbar([x], [r["error_pct"]], yerr=[r["error_std"]] if _known(r["error_std"]) else None,
                        fmt=marker, color=color, markersize=7, capsize=3,
                        fillstyle="bottom" if r["status"] == "partial" else "full")
    handles = [plt.Line2D([], [], color="0.3", marker="o", linestyle="", markerfacecolor="none",
                          label="paper (Table 3)"),
               plt.Line2D([], [], color="0.3", marker="o", linestyle="", label="ours")]
    if (t3["status"] == "partial").any():
        handles.append(plt.Line2D([], [], color="0.3", marker="o", linestyle="", fillstyle="bottom",
                                  label="ours, LR grid incomplete"))
    families = dict.fromkeys([*FAMILY_COLORS, *(SPECS[m].family for m in t3["model"])])
    handles += [matplotlib.patches.Patch(color=family_color(f), label=f"family {f}") for f in families]
    handles += [plt.Line2D([], [], color="0.3", marker=m, linestyle="", label=VARIANT_NAMES[v])
                for v, m in VARIANT_MARKERS.items()]
    fig.legend(handles=handles, fontsize=8, ncol=5, loc="lower center", frameon=False,  # outside: hides no point
               bbox_to_anchor=(0.5, STAMP_IN / fig.get_figheight()))
    ax.set_xlabel("exact parameters (M); the paper prints rounded counts\n"
                  f"points offset ±{max(JITTER.values()):g} M sideways for visibility (equal counts would overlap)")
    ax.set_ylabel("CIFAR-10 test error % (LR judged on test)")
    ax.set_title("Error vs parameters: the paper's Table 3 (hollow) beside ours (filled)")
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=0.23)
    _save(fig, path, sha256)


SETTINGS = {  # throughput-table column -> how a bar's label names its value
    "source": str, "precision": precision_label, "backend": str, "batch_size": lambda b: f"batch {b}",
    "channels_last": lambda c: "channels_last" if c else "contiguous", "compile": lambda c: "compiled" if c else "",
    "cuda_graphs": lambda g: "CUDA graphs" if g else "eager",
    "runs_per_step": lambda k: f"{k:g} runs/step" if k != 1 else ""}


def bar_labels(rows: list[dict]) -> tuple[list[str], str]:
    """Each bar's label names its variant and only the settings that differ between bars; the settings all bars
    share go once into the subtitle (the device name alone is longer than the plot's margin). Literal text
    (`literal`): a record's or a benchmark file's strings are never matplotlib's mathtext."""
    named = [{"variant": r["paper_name"], "device": f"{r['device_name']} x{r['devices']}",
              **{c: SETTINGS[c](r[c]) for c in SETTINGS if c in r}} for r in rows]
    varies = [c for c in (named[0] if named else {}) if c == "variant" or len({n[c] for n in named}) > 1]
    common = [v for c, v in (named[0].items() if named else ()) if c not in varies and v]
    return [literal(" · ".join(n[c] for c in varies if n[c])) for n in named], literal(" · ".join(common))


def literal(text: str) -> str:
    """`text` drawn as written: every $ escaped, so matplotlib reads no mathtext in it (a "$\\frac{1}{$" failed
    the whole figure, a "$x^2$" showed as math); it draws each \\$ as $ and leaves other backslashes alone."""
    return text.replace("$", r"\$")


def plot_throughput(tp: pd.DataFrame, path, sha256: str = "", kind: str = "ledger") -> None:
    """Horizontal bars of training img/s, one per row of the throughput table (model, device, precision...), and
    beside each, when the benchmark timed it, the same variant's LR grid trained as one fused model (all its runs'
    images)."""
    rows = tp[tp["train_images_per_s"].map(_known).astype(bool)].to_dict("records")
    fused = [r.get("fused_train_images_per_s") for r in rows]
    has_fused = any(_known(f) for f in fused)
    fig, ax = plt.subplots(figsize=(9, max(3.0, (0.5 if has_fused else 0.35) * len(rows) + 1.7)),
                           layout="constrained")
    labels, common = bar_labels(rows)
    at = [float(i) for i in range(len(rows))]
    colors = [family_color(SPECS[r["model"]].family) for r in rows]
    height = 0.4 if has_fused else 0.8
    ax.barh([y - (height / 2 if has_fused else 0) for y in at], [r["train_images_per_s"] for r in rows],
            height=height, color=colors)
    if has_fused:
        runs = {int(r["fused_runs"]) for r, f in zip(rows, fused) if _known(f) and _known(r["fused_runs"])}
        ax.barh([y + height / 2 for y in at], [f if _known(f) else 0 for f in fused], height=height, color=colors,
                alpha=0.45, hatch="//", edgecolor="white")
        ax.legend(handles=[matplotlib.patches.Patch(color="0.4", label="one run"),
                           matplotlib.patches.Patch(facecolor="0.4", alpha=0.45, hatch="//", edgecolor="white",
                                                    label=f"{'/'.join(map(str, sorted(runs))) or 'several'} runs fused "
                                                          "(all runs' images)")],
                  fontsize=7, loc="lower right")
    ax.set_yticks(at, labels, fontsize=7)
    ax.invert_yaxis()
    if not rows:
        ax.text(0.5, 0.5, "no throughput measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training images / s (all ranks)")
    ax.set_title("Training throughput per variant" + (f"\n{common}" if common else ""), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path, sha256, kind)
