"""What the report's figures show (reports/plots.py), read from the drawn matplotlib figure: a panel with runs but
no evaluated epoch, the error-vs-params points (offset, LR grid incomplete), the ledger stamp clear of the legend."""
from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from reports import plots
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
