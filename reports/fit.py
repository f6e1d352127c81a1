"""fit.png: how well each model of Table 3 fits its training set beside how it does on the test set, per epoch.

    plot_fit(runs, t3, path)    a panel per model with runs, at the LR Table 3 selects: training error (dropout on,
                                training mode) and test error; under it, where records have test_loss, training
                                loss and test loss

Same conventions as reports.plots.plot_curves (panel order and layout, seed mean, log axis, one legend, the
ledger's sha256 stamp), and byte-identical for the same ledger.
"""
from __future__ import annotations

from collections import Counter

import matplotlib.ticker
import pandas as pd

from allconv.specs import SPECS
from reports.ledger import _known
from reports.plots import STAMP_IN, _save, plt, run_curve, seed_curves
from reports.tables import lr_text

TEST = {"color": "0.1", "linestyle": "-"}
TRAIN = {"color": "tab:blue", "linestyle": "--"}
TEST_LABEL = "test (eval mode)"
TRAIN_LABEL = "training (dropout on, training mode; mean over the epoch)"
EVAL_TRAIN_LABEL = "training error, eval mode, at the end (diagnosis)"
TICKS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
LOSS_TICKS = [1e-4, 3e-4, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 1e3, 1e4]
NARROW_TICKS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 1.5, 2, 2.5, 3, 5, 10, 20, 50, 100]
"""A loss panel within a factor 10 (2.3 to 2.5 over a short run) has these, so a tick is in it still."""


def _at(runs: pd.DataFrame, lr: float) -> pd.DataFrame:
    return runs[runs["lr"].map(lambda x: _known(x) and float(x) == lr).astype(bool)]


def train_error_curves(runs: pd.DataFrame) -> list[list[tuple[int, float]]]:
    """100 - train_acc_pct per epoch: the seed mean (or each seed: `seed_curves`; the mean of the errors is 100 -
    the mean of the accuracies)."""
    return [[(e, 100.0 - a) for e, a in c] for c in seed_curves(runs, "train_acc_pct")]


def one_mean(runs: pd.DataFrame, key: str, curves) -> bool:
    """Whether `curves` (`seed_curves` of `key`) is one curve over every run: a mean (or the one run's own), not a
    curve of the only seed that has `key` (the others' histories lack it), which must not read as the seed mean."""
    return len(curves) == 1 and all(run_curve(h, key) for h in runs["history"])


def eval_train_errors(runs: pd.DataFrame) -> tuple[list[tuple[int, float]], bool]:
    """(last epoch, eval-mode training error) from the records' `diagnosis` (bench/diagnose.py): the seed mean when
    every run has one and they ended at the same epoch, else each run's own; and whether it is that one point over
    every run (only then does it stand beside the seed-mean curves in `gap_text`)."""
    points = [(int(r["epochs_completed"]), float(r["diagnosis"]["train_error_pct"])) for r in runs.to_dict("records")
              if isinstance(r.get("diagnosis"), dict) and _known(r["diagnosis"].get("train_error_pct"))
              and _known(r.get("epochs_completed"))]
    if len(points) == len(runs) > 0 and len({e for e, _ in points}) == 1:
        return [(points[0][0], sum(v for _, v in points) / len(points))], True
    return points, False


def _draw(ax, curves, style) -> list[float]:
    """The curves in `style`; their positive values (a log axis shows no 0)."""
    for c in curves:
        ax.plot([e for e, _ in c], [v for _, v in c], linewidth=1.5, marker="o" if len(c) <= 30 else None,
                markersize=3, **style)
    return [v for c in curves for _, v in c if v > 0]


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.3")


def _log_axis(ax, values, last_epoch: int, ylabel: str, percent: bool) -> None:
    """Log y: an error from below its lowest value (5% at most) to 100%; a loss around its values."""
    ax.set_yscale("log")
    if percent:
        ax.set_ylim(min([5.0, *(0.8 * v for v in values)]), 100)
    elif values:  # none: every loss 0, below a log axis
        ax.set_ylim(min(values) / 1.5, max(values) * 1.5)
    narrow = bool(values) and max(values) < 10 * min(values)
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(TICKS if percent else NARROW_TICKS if narrow
                                                              else LOSS_TICKS))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlim(0.5, last_epoch + 0.5)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def gap_text(train, test, eval_train) -> str | None:
    """"epoch 350: training 4.0%, test 17.2%" at the last epoch with both (one curve each, not seeds apart), and the
    eval-mode training error of the end when there is one."""
    if len(train) != 1 or len(test) != 1:
        return None
    at = dict(train[0])
    both = [(e, v) for e, v in test[0] if e in at]
    if not both:
        return None
    e, v = both[-1]
    text = f"epoch {e}: test {v:.2f}%,\ntraining {at[e]:.2f}% (gap {v - at[e]:.2f} pp)"
    if len(eval_train) == 1:
        text += f"\ntraining, eval mode, end: {eval_train[0][1]:.2f}%"
    return text


def plot_fit(runs: pd.DataFrame, t3: pd.DataFrame, path, sha256: str = "") -> list[str]:
    """Training vs test per epoch, one panel per model that has runs (Table 3's runs, `plot_curves`' order and
    layout), at the LR Table 3 selects for it (a model with none: its panel says why): the error (training: 100 -
    train_acc_pct, measured with dropout on while the weights change; test: evaluated epochs) on a log axis, the
    paper's error dotted, the eval-mode training error of the end (`diagnosis`) as a star where recorded; and where
    any of these runs recorded test_loss, a row under each with training vs test loss (a model without: says so).
    Seed mean as in `seed_curves`. One legend for the figure, of what is drawn (its labels are returned)."""
    selected = {m: float(lr) for m, lr in zip(t3["model"], t3["lr"]) if _known(lr)}
    names = [n for n in SPECS if (runs["model"] == n).any()]
    chosen = {n: _at(runs[runs["model"] == n], selected[n]) for n in names if n in selected}
    losses = any(_known(h.get("test_loss")) for at in chosen.values() for hist in at["history"]
                 if isinstance(hist, list) for h in hist if isinstance(h, dict))
    cols = max(1, min(4, len(names)))
    rows, per = max(1, -(-len(names) // cols)), 2 if losses else 1
    fig, axes = plt.subplots(rows * per, cols, figsize=(max(8.0, 3.5 * cols + 0.5), 2.8 * rows * per + 1.4),
                             squeeze=False)
    last_epoch = max([1, *(int(e) for e in runs["epochs"] if _known(e))])
    drawn, apart, used = set(), False, set()
    for i, name in enumerate(names):
        ax, spec = axes[i // cols * per, i % cols], SPECS[name]
        values = []
        used.add(ax)
        if name not in selected:  # no LR selectable: say how its runs ended, as plot_curves says why a panel is empty
            ax.set_title(spec.paper_name, fontsize=10)
            ended = Counter(runs.loc[runs["model"] == name, "outcome"])
            _note(ax, "Table 3 selects no LR:\n" + ", ".join(f"{n} {o}" for o, n in sorted(ended.items())))
        else:
            at = chosen[name]
            ax.set_title(f"{spec.paper_name}, LR {lr_text(selected[name])} ({len(at)} run{'s' * (len(at) != 1)})",
                         fontsize=10)
            if spec.in_paper:  # a network of one's own has no paper line
                ax.axhline(spec.paper_error_pct, color="0.3", linestyle=":", linewidth=1)
                drawn.add("paper")
            train, test, (end, whole) = train_error_curves(at), seed_curves(at), eval_train_errors(at)
            means = one_mean(at, "train_acc_pct", train), one_mean(at, "test_error_pct", test)
            apart |= (bool(train) and not means[0]) or (bool(test) and not means[1])
            values += _draw(ax, train, TRAIN) + _draw(ax, test, TEST)
            drawn |= {"train"} if train else set()
            drawn |= {"test"} if test else set()
            for e, v in end:
                if v > 0:  # 0: below every log axis; the gap text gives it
                    ax.plot([e], [v], marker="*", markersize=9, linestyle="", color=TRAIN["color"], clip_on=False)
                    values.append(v)
                    drawn.add("eval")
            text = gap_text(train, test, end if whole else []) if all(means) else None  # of the same seeds
            if text:
                # lower left: a learning curve is not low in its first epochs
                ax.text(0.03, 0.04, text, ha="left", va="bottom", transform=ax.transAxes, fontsize=7, color="0.2")
            if not train and not test:
                _note(ax, "no epoch recorded")
        _log_axis(ax, values, last_epoch, "error %", True)
        if not losses or name not in selected:  # no loss panel under a panel with no LR
            continue
        lx = axes[i // cols * per + 1, i % cols]
        used.add(lx)
        lx.set_title(f"{spec.paper_name}: cross-entropy loss", fontsize=9)
        test_loss = seed_curves(chosen[name], "test_loss")
        if test_loss:
            train_loss = seed_curves(chosen[name], "loss")
            apart |= not (one_mean(chosen[name], "loss", train_loss) and one_mean(chosen[name], "test_loss", test_loss))
            lv = _draw(lx, train_loss, TRAIN) + _draw(lx, test_loss, TEST)
            _log_axis(lx, lv, last_epoch, "loss", False)
        else:  # a training loss alone shows no gap
            _note(lx, "no test loss recorded\n(records older than test_loss)")
            lx.set_xticks([])
            lx.set_yticks([])
    for ax in axes.flat:
        ax.set_visible(ax in used)  # a panel of no model
    if not names:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "no runs of Table 3's config", ha="center", va="center")
    styles = {"test": (TEST, TEST_LABEL), "train": (TRAIN, TRAIN_LABEL),
              "paper": ({"color": "0.3", "linestyle": ":"}, "paper's error")}
    handles = [plt.Line2D([], [], label=label, **style) for k, (style, label) in styles.items() if k in drawn]
    if "eval" in drawn:
        handles.append(plt.Line2D([], [], color=TRAIN["color"], marker="*", markersize=9, linestyle="",
                                  label=EVAL_TRAIN_LABEL))
    height = fig.get_figheight()
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, STAMP_IN / height),
               ncol=min(2, len(handles)) or 1, fontsize=8, frameon=False)
    fig.suptitle("CIFAR-10 training vs test per epoch at the LR Table 3 selects (seed mean"
                 + ("; each seed where they stopped apart)" if apart else ")"))
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.75 / height, bottom=(1.05 + STAMP_IN) / height,
                        hspace=0.6, wspace=0.3)
    _save(fig, path, sha256)
    return [h.get_label() for h in handles]
