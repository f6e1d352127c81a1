"""What the report's figures show (reports/plots.py, reports/fit.py), read from the drawn matplotlib figure: a
panel with runs but no evaluated epoch, the error-vs-params points (offset, LR grid incomplete), the ledger stamp
clear of the legend, training vs test error and loss at the LR Table 3 selects."""
from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from reports import fit, plots
from reports.ledger import load_ledger
from reports.tables import table3, table3_runs
from test_reports import record, write_ledger


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, drawn (a renderer holds their text's extents), in order."""
    drawn, save = [], plots._save

    def keep(fig, *args, **kwargs):
        save(fig, *args, **kwargs)
        drawn.append(fig)

    monkeypatch.setattr(plots, "_save", keep)
    monkeypatch.setattr(fit, "_save", keep)
    return drawn


def ledger(tmp_path, records):
    led = load_ledger(write_ledger(tmp_path, records))
    return table3_runs(led.df, led.reference), table3(led.df, led.reference)


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_visible() for t in ax.texts]


def test_a_panel_with_runs_but_no_evaluated_epoch_says_why(tmp_path, figures):
    """Model A's four LRs all diverged before their first evaluation: its panel says so, not an empty plot."""
    runs, t3 = ledger(tmp_path, [record(lr=0.05, test=9.3),
                                 *(dict(record(model="model-a", lr=lr, status="diverged"), history=[])
                                   for lr in (0.25, 0.1, 0.05, 0.01))])
    plots.plot_curves(runs, t3, tmp_path / "curves.png")
    assert texts(figures[0]) == ["no evaluated epoch:\nevery run diverged"]  # Model A's panel; All-CNN-C's has curves
    assert [ax.get_title() for ax in figures[0].axes if ax.texts] == ["Model A"]


def test_error_vs_params_marks_partial_cells_and_says_points_are_offset(tmp_path, figures):
    """Model C and Strided-CNN-C have the same parameter count: the axis says their points are offset sideways. A
    model whose LR grid is incomplete (All-CNN-C lacks LR 0.1: a missing LR may still lower its error) is half
    filled, with a legend entry, and a complete one filled."""
    grid = {"models": ["allcnn-c", "model-c"], "lrs": [0.1, 0.05], "seeds": [0]}
    _, t3 = ledger(tmp_path, [record(lr=0.05, test=11.0, grid=grid), record(model="model-c", lr=0.05, test=12.0,
                                                                            grid=grid),
                              record(model="model-c", lr=0.1, test=12.5, grid=grid)])
    plots.plot_error_vs_params(t3, tmp_path / "e.png")
    ax = figures[0].axes[0]
    assert "points offset ±0.012 M sideways for visibility" in ax.get_xlabel()
    ours = {float(c.lines[0].get_ydata()[0]): c.lines[0].get_fillstyle() for c in ax.containers}
    assert ours == {11.0: "bottom", 12.0: "full"}
    labels = [h.get_label() for h in figures[0].legends[0].legend_handles]
    assert "ours, LR grid incomplete" in labels
    plots.plot_error_vs_params(t3.assign(status="ok"), tmp_path / "f.png")
    assert "ours, LR grid incomplete" not in [h.get_label() for h in figures[1].legends[0].legend_handles]


def test_the_ledger_stamp_is_clear_of_the_figure_legend(tmp_path, figures):
    """The stamp (ledger sha256, bottom right) and a figure legend at the foot of the figure (curves: one row
    across the width, as the campaign's six entries make it) do not overlap."""
    grid = {"models": ["allcnn-c"], "lrs": [0.25, 0.1, 0.05, 0.01], "seeds": [0]}
    runs, t3 = ledger(tmp_path, [record(lr=0.05, test=31.6, grid=grid), record(lr=0.01, test=17.2, grid=grid),
                                 record(lr=0.1, status="diverged", grid=grid)])
    plots.plot_curves(runs, t3, tmp_path / "c.png", "d44f43e55df4893b" * 4)
    plots.plot_error_vs_params(t3, tmp_path / "e.png", "d44f43e55df4893b" * 4)
    fit.plot_fit(runs, t3, tmp_path / "f.png", "d44f43e55df4893b" * 4)
    assert len(figures) == 3
    for fig in figures:
        canvas = FigureCanvasAgg(fig)  # as saved (closing the figure took pyplot's canvas away)
        canvas.draw()
        renderer = canvas.get_renderer()
        stamp = next(t for t in fig.texts if "sha256" in t.get_text()).get_window_extent(renderer)
        legend = fig.legends[0].get_window_extent(renderer)
        assert not stamp.overlaps(legend), (stamp, legend)


def test_curves_draw_the_seed_mean_per_lr_and_the_selected_lr_thick(tmp_path, figures):
    """All-CNN-C's panel: one solid line per LR, each the mean over its seeds per epoch (seeds 9.2 and 9.4 at LR
    0.05: 11.3, 10.3, 9.3), the LR Table 3 selects (0.05, lowest mean) drawn thick, the other thin."""
    runs, t3 = ledger(tmp_path, [record(lr=0.05, seed=0, test=9.2), record(lr=0.05, seed=1, test=9.4),
                                 record(lr=0.1, seed=0, test=10.0)])
    plots.plot_curves(runs, t3, tmp_path / "curves.png")
    (ax,) = [ax for ax in figures[0].axes if ax.get_visible()]
    curves = sorted((line.get_linewidth(), list(line.get_ydata())) for line in ax.lines
                    if line.get_linestyle() == "-")
    assert [width for width, _ in curves] == [1, 2.5]
    assert curves[0][1] == pytest.approx([12.0, 11.0, 10.0]) and curves[1][1] == pytest.approx([11.3, 10.3, 9.3])


def test_seeds_stopped_at_different_epochs_are_drawn_each_not_as_a_mean_that_jumps(tmp_path, figures):
    """LR 0.05: seed 0 completed its 3 epochs (11.2, 10.2, 9.2), seed 1 failed after its first (92.0). A mean over
    the seeds that reached each epoch would fall from 51.6 to 10.2 at epoch 2, a drop no run made: each seed is
    drawn instead, dashed (not every run completed). LR 0.1's two complete seeds stay one mean line."""
    runs, t3 = ledger(tmp_path, [record(lr=0.05, seed=0, test=9.2), record(lr=0.05, seed=1, status="failed"),
                                 record(lr=0.1, seed=0, test=10.0), record(lr=0.1, seed=1, test=11.0)])
    plots.plot_curves(runs, t3, tmp_path / "curves.png")
    (ax,) = [ax for ax in figures[0].axes if ax.get_visible()]
    lines = sorted((line.get_linestyle(), list(line.get_ydata())) for line in ax.lines if line.get_linestyle() != ":")
    assert lines == [("-", pytest.approx([12.5, 11.5, 10.5])), ("--", pytest.approx([11.2, 10.2, 9.2])),
                     ("--", pytest.approx([92.0]))]
    assert figures[0]._suptitle.get_text().endswith("(seed mean per LR; each seed where they stopped apart)")


def with_history(rec: dict, train_acc=None, test_loss=None) -> dict:
    """`rec` with its history's train_acc_pct (and test_loss) per epoch set from lists."""
    for i, h in enumerate(rec["history"]):
        if train_acc is not None:
            h["train_acc_pct"] = train_acc[i]
        if test_loss is not None:
            h["test_loss"] = test_loss[i]
    return rec


def test_fit_draws_training_and_test_error_at_the_selected_lr_and_the_gap_from_the_data(tmp_path, figures):
    """All-CNN-C at LR 0.05 (the LR Table 3 selects: seed mean 9.3): training error 100 - train_acc_pct dashed and
    test error solid, each the seed mean; LR 0.1 is not drawn; the gap at the last epoch is the data's. No record
    has test_loss: no loss panel, no empty axes."""
    runs, t3 = ledger(tmp_path, [with_history(record(lr=0.05, seed=0, test=9.2), train_acc=[40.0, 70.0, 96.0]),
                                 with_history(record(lr=0.05, seed=1, test=9.4), train_acc=[50.0, 80.0, 98.0]),
                                 with_history(record(lr=0.1, seed=0, test=10.0), train_acc=[1.0, 2.0, 3.0])])
    labels = fit.plot_fit(runs, t3, tmp_path / "fit.png")
    assert labels == [fit.TEST_LABEL, fit.TRAIN_LABEL, "paper's error"]
    assert "dropout on" in fit.TRAIN_LABEL
    (ax,) = figures[0].axes
    assert ax.get_title() == "All-CNN-C, LR 0.05 (2 runs)"
    lines = {line.get_linestyle(): list(line.get_ydata()) for line in ax.lines if line.get_linestyle() != ":"}
    assert lines == {"--": pytest.approx([55.0, 25.0, 3.0]), "-": pytest.approx([11.3, 10.3, 9.3])}
    assert texts(figures[0]) == ["epoch 3: test 9.30%,\ntraining 3.00% (gap 6.30 pp)"]


def test_fit_draws_loss_panels_only_where_records_have_test_loss(tmp_path, figures):
    """All-CNN-C's records have test_loss: a loss panel under its error panel, training loss (1/epoch) dashed and
    test loss solid. Model C's predate it: its loss panel draws no line and says so. Model A selected no LR (every
    run diverged): its error panel says why and it has no loss panel. The eval-mode training error of the end
    (`diagnosis`) is a star."""
    diagnosis = {"train_error_pct": 0.04, "test_error_by_class_pct": [9.0] * 10, "dead_relu_channels": {"r": [0, 8]}}
    runs, t3 = ledger(tmp_path, [dict(with_history(record(lr=0.05, test=9.2), test_loss=[1.5, 1.0, 0.9]),
                                      diagnosis=diagnosis),
                                 record(model="model-c", lr=0.05, test=10.0),
                                 *(dict(record(model="model-a", lr=lr, status="diverged"), history=[])
                                   for lr in (0.25, 0.1))])
    labels = fit.plot_fit(runs, t3, tmp_path / "fit.png")
    assert labels == [fit.TEST_LABEL, fit.TRAIN_LABEL, "paper's error", fit.EVAL_TRAIN_LABEL]
    shown = {ax.get_title(): ax for ax in figures[0].axes if ax.get_visible()}
    assert list(shown) == ["Model A", "Model C, LR 0.05 (1 run)", "All-CNN-C, LR 0.05 (1 run)",
                           "Model C: cross-entropy loss", "All-CNN-C: cross-entropy loss"]
    assert [t.get_text() for t in shown["Model A"].texts] == ["Table 3 selects no LR:\n2 diverged"]
    loss = {line.get_linestyle(): list(line.get_ydata()) for line in shown["All-CNN-C: cross-entropy loss"].lines}
    assert loss == {"--": pytest.approx([1.0, 0.5, 1 / 3]), "-": pytest.approx([1.5, 1.0, 0.9])}
    assert not shown["Model C: cross-entropy loss"].lines
    assert "no test loss recorded" in shown["Model C: cross-entropy loss"].texts[0].get_text()
    (star,) = [line for line in shown["All-CNN-C, LR 0.05 (1 run)"].lines if line.get_marker() == "*"]
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([3], [0.04])
    assert "training, eval mode, end: 0.04%" in shown["All-CNN-C, LR 0.05 (1 run)"].texts[0].get_text()


def test_fit_with_no_runs_of_table_3s_config_says_so_and_lists_nothing(tmp_path, figures):
    runs, t3 = ledger(tmp_path, [record(lr=0.05, test=9.2)])
    assert fit.plot_fit(runs.iloc[:0], t3, tmp_path / "fit.png") == []
    assert texts(figures[0]) == ["no runs of Table 3's config"]


def test_fit_compares_only_the_same_seeds(tmp_path, figures):
    """Two seeds at LR 0.05, only seed 0 with a `diagnosis`: the gap text gives the seed means but not seed 0's
    eval-mode error beside them (its star is seed 0's own). Then seed 1's history without train_acc_pct: the
    training curve is seed 0's alone, so there is no gap text and the title says the seeds are drawn apart."""
    diagnosis = {"train_error_pct": 0.04, "test_error_by_class_pct": [9.0] * 10, "dead_relu_channels": {"r": [0, 8]}}
    seed0 = dict(with_history(record(lr=0.05, seed=0, test=9.0), train_acc=[50.0, 80.0, 96.0]), diagnosis=diagnosis)
    seed1 = with_history(record(lr=0.05, seed=1, test=11.0), train_acc=[50.0, 80.0, 90.0])
    fit.plot_fit(*ledger(tmp_path / "a", [seed0, seed1]), tmp_path / "a.png")
    assert texts(figures[0]) == ["epoch 3: test 10.00%,\ntraining 7.00% (gap 3.00 pp)"]
    assert figures[0]._suptitle.get_text().endswith("(seed mean)")
    fit.plot_fit(*ledger(tmp_path / "b", [seed0, with_history(seed1, train_acc=[None] * 3)]), tmp_path / "b.png")
    assert texts(figures[1]) == []
    assert figures[1]._suptitle.get_text().endswith("(seed mean; each seed where they stopped apart)")


def test_fit_star_is_the_seed_mean_of_the_eval_mode_training_error(tmp_path, figures):
    """Both seeds at LR 0.05 ended at epoch 3 with a `diagnosis` (0.04% and 0.08%): the star and the gap text give
    their mean, beside the seed-mean curves, not one seed's."""
    recs = [dict(with_history(record(lr=0.05, seed=s, test=9.2), train_acc=[50.0, 80.0, 96.0]),
                 diagnosis={"train_error_pct": e, "test_error_by_class_pct": [9.0] * 10,
                            "dead_relu_channels": {"r": [0, 8]}}) for s, e in ((0, 0.04), (1, 0.08))]
    fit.plot_fit(*ledger(tmp_path, recs), tmp_path / "fit.png")
    (ax,) = figures[0].axes
    (star,) = [line for line in ax.lines if line.get_marker() == "*"]
    assert list(star.get_ydata()) == pytest.approx([0.06])
    assert texts(figures[0]) == ["epoch 3: test 9.20%,\ntraining 4.00% (gap 5.20 pp)\ntraining, eval mode, end: 0.06%"]
