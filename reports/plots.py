"""The report's figures (matplotlib, Agg backend, PNG), byte-identical for the same ledger.

    plot_curves(runs, t3, path)         test error per epoch, one panel per model, one line per LR (seed mean)
    plot_error_vs_params(t3, path)      our error at the exact parameter count beside the paper's printed point
    plot_throughput(tp, path)           training img/s per variant and setting

Fixed figure sizes and DPI, no "Software" PNG tag, and the ledger's sha256 in the figure: nothing varies by run.
"""
from __future__ import annotations

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import pandas as pd  # noqa: E402

from allconv.specs import SPECS  # noqa: E402
from reports.formats import PRECISION_LABELS  # noqa: E402
from reports.ledger import _known  # noqa: E402
from reports.tables import lr_grid, lr_text  # noqa: E402

DPI = 100
FAMILY_COLORS = {"A": "tab:blue", "B": "tab:orange", "C": "tab:green"}
VARIANT_MARKERS = {"model": "o", "strided": "v", "convpool": "s", "allcnn": "D"}


def _save(fig, path, sha256: str) -> None:
    fig.text(0.995, 0.005, f"ledger sha256 {sha256[:16]}", ha="right", va="bottom", fontsize=6, color="0.5")
    fig.savefig(path, dpi=DPI, metadata={"Software": None, "Source": f"ledger sha256 {sha256}"})
    plt.close(fig)


def mean_curve(runs: pd.DataFrame) -> list[tuple[int, float]]:
    """(epoch, mean test error over the runs that reached that epoch), from each run's `history`."""
    by_epoch: dict[int, list[float]] = {}
    for history in runs["history"]:
        for h in history if isinstance(history, list) else []:
            if isinstance(h, dict) and _known(h.get("epoch")) and _known(h.get("test_error_pct")):
                by_epoch.setdefault(int(h["epoch"]), []).append(float(h["test_error_pct"]))
    return [(e, sum(v) / len(v)) for e, v in sorted(by_epoch.items())]


def plot_curves(runs: pd.DataFrame, t3: pd.DataFrame, path, sha256: str = "") -> None:
    """Test error per epoch for each of the 12 models (Table 3's runs), one line per LR (the seed mean; LRs with
    diverged, failed or unfinished runs dashed, up to where they stopped), the selected LR drawn thick, the
    paper's error dotted. Log scale: 9% vs 10% stays visible beside the first epochs' 90%."""
    fig, axes = plt.subplots(3, 4, figsize=(14, 9), sharey=False)
    grid = lr_grid(runs)
    colors = {lr: f"C{i}" for i, lr in enumerate(grid)}
    selected = dict(zip(t3["model"], t3["lr"]))
    low: dict[str, list[float]] = {}
    last_epoch = max([1, *(int(e) for e in runs["epochs"] if _known(e))])
    for ax, (name, spec) in zip(axes.flat, SPECS.items()):
        mine = runs[runs["model"] == name]
        ax.set_title(spec.paper_name, fontsize=10)
        ax.axhline(spec.paper_error_pct, color="0.3", linestyle=":", linewidth=1, label="paper")
        for lr in grid:
            at = mine[mine["lr"].map(lambda x, lr=lr: _known(x) and float(x) == lr).astype(bool)]
            curve = mean_curve(at)
            if not curve:
                continue
            low.setdefault(name, []).append(min(v for _, v in curve))
            ended = sorted(set(at["outcome"]) - {"completed"})  # diverged, failed, unfinished: dashed
            ax.plot([e for e, _ in curve], [v for _, v in curve], marker="o" if len(curve) <= 30 else None,
                    markersize=3, color=colors[lr],
                    linestyle="--" if ended else "-", linewidth=2.5 if selected.get(name) == lr else 1,
                    label=f"γ={lr_text(lr)}" + (f" ({', '.join(ended)})" if ended else ""))
        if mine.empty:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_yscale("log")  # 9% vs 10% stays visible beside the first epochs' 90%
        ax.set_ylim(min([5.0, *(0.8 * y for y in low.get(name, []))]), 100)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlim(0.5, last_epoch + 0.5)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("test error %", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("CIFAR-10 test error per epoch (seed mean per LR; thick: the LR Table 3 selects)")
    fig.tight_layout(rect=(0, 0.01, 1, 0.97))
    _save(fig, path, sha256)


def plot_error_vs_params(t3: pd.DataFrame, path, sha256: str = "") -> None:
    """Each model's error against its parameters: the paper's point at its printed (rounded) count, ours at the
    exact count (error bar: seed std), joined by a thin line. Models without a number have no point of ours."""
    fig, ax = plt.subplots(figsize=(8, 6))
    for r in t3.to_dict("records"):
        spec = SPECS[r["model"]]
        color, marker = FAMILY_COLORS[spec.family], VARIANT_MARKERS[spec.variant]
        px, py = r["paper_params_n"] / 1e6, r["paper_error_pct"]
        ax.scatter([px], [py], marker=marker, facecolors="none", edgecolors=color, s=50)
        if _known(r["error_pct"]):
            x, y = r["params"] / 1e6, r["error_pct"]
            ax.errorbar([x], [y], yerr=[r["error_std"]] if _known(r["error_std"]) else None, fmt=marker,
                        color=color, markersize=7, capsize=3)
            ax.plot([px, x], [py, y], color=color, linewidth=0.6, alpha=0.6)
            ax.annotate(spec.paper_name, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    handles = [plt.Line2D([], [], color="0.3", marker="o", linestyle="", markerfacecolor="none", label="paper"),
               plt.Line2D([], [], color="0.3", marker="o", linestyle="", label="ours")]
    handles += [plt.Line2D([], [], color=c, linestyle="-", label=f"family {f}") for f, c in FAMILY_COLORS.items()]
    ax.legend(handles=handles, fontsize=8)
    ax.set_xlabel("parameters (M): paper as printed, ours exact")
    ax.set_ylabel("CIFAR-10 test error % (LR judged on test)")
    ax.set_title("Error vs parameters: the paper's Table 3 beside ours")
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    _save(fig, path, sha256)


def plot_throughput(tp: pd.DataFrame, path, sha256: str = "") -> None:
    """Horizontal bars of training img/s, one per row of the throughput table (model, device, precision...)."""
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.35 * len(tp) + 1.5)))
    rows = tp[tp["train_images_per_s"].map(_known).astype(bool)].to_dict("records")
    labels = [f"{r['paper_name']} · {PRECISION_LABELS.get(r['precision'], r['precision'])} · {r['device_name']} "
              f"x{r['devices']}" for r in rows]
    ax.barh(range(len(rows)), [r["train_images_per_s"] for r in rows],
            color=[FAMILY_COLORS[SPECS[r["model"]].family] for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    if not rows:
        ax.text(0.5, 0.5, "no throughput measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training images / s (all ranks)")
    ax.set_title("Training throughput per variant")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _save(fig, path, sha256)
