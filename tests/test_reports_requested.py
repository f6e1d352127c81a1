"""Seeds a command asked for that never ran (no record, no checkpoint) are named in Table 3, not read as a clean
cell of fewer seeds (reports.requested): per command, its LRs x its seeds."""
from __future__ import annotations

import pandas as pd

from reports import formats
from reports.claims import claims_table
from reports.ledger import load_ledger
from reports.requested import requested_runs
from reports.tables import table3, table3_by_lr
from test_reports import record, write_ledger

SWEEP = {"models": ["allcnn-c", "model-c"], "lrs": [0.05, 0.01, 0.1, 0.25], "seeds": [0]}
SEEDS = {"models": ["allcnn-c"], "lrs": [0.05], "seeds": [0, 1, 2]}
"""The campaign: `--lrs 0.05 0.01 0.1 0.25` with seed 0, then `--lrs 0.05 --seeds 0 1 2` for All-CNN-C."""


def campaign(seeds=(), **fields) -> list[dict]:
    """Seed 0 at the four LRs (All-CNN-C's LR 0.05 run recorded again by the second command), and `seeds` more of
    the second command at 0.05."""
    tests = {0.05: 9.0, 0.01: 11.0, 0.1: 9.5, 0.25: 10.0}
    recs = [record(model=m, lr=lr, test=t, val=t, grid=SEEDS if (m, lr) == ("allcnn-c", 0.05) else SWEEP, **fields)
            for m in SWEEP["models"] for lr, t in tests.items()]
    return recs + [record(lr=0.05, seed=s, test=9.0 + s / 10, val=9.0, grid=SEEDS, **fields) for s in seeds]


def tables(tmp_path, recs):
    led = load_ledger(write_ledger(tmp_path, recs))
    return led, table3(led.df, led.reference).set_index("model"), table3_by_lr(led.df, led.reference)


def test_requested_seeds_that_never_ran_make_the_cell_partial(tmp_path):
    led, t3, by_lr = tables(tmp_path, campaign())
    row = t3.loc["allcnn-c"]
    assert (row["lr"], row["n_seeds"], row["status"]) == (0.05, 1, "partial")
    assert row["not_measured"] == "0.05 missing seeds 1, 2"  # not at the LRs the second command did not ask for
    assert t3.loc["model-c", "status"] == "ok" and pd.isna(t3.loc["model-c", "not_measured"])
    cells = by_lr.set_index(["model", "lr"])["status"]
    assert cells[("allcnn-c", 0.05)] == "missing seeds 1, 2" and by_lr["n_runs"].tolist() == [1] * 8
    assert {s for (m, lr), s in cells.items() if (m, lr) != ("allcnn-c", 0.05)} == {"ok"}
    shown = formats.display_table3(table3(led.df, led.reference)).set_index("Model")
    assert shown.loc["All-CNN-C", "Notes"] == "0.05 missing seeds 1, 2"
    shown = formats.display_by_lr(by_lr).set_index("Model")
    assert shown.loc["All-CNN-C", "LR 0.05"] == "9.00; missing seeds 1, 2"
    claims = claims_table(led.df, led.reference)  # its error can still move either way: not settled
    assert any("All-CNN-C: 0.05 missing seeds 1, 2" in t for t in claims["test"])


def test_once_the_seeds_ran_the_cell_is_ok(tmp_path):
    _, t3, by_lr = tables(tmp_path, campaign(seeds=(1, 2)))
    row = t3.loc["allcnn-c"]
    assert (row["lr"], row["n_seeds"], row["status"], row["error_pct"]) == (0.05, 3, "ok", 9.1)
    assert pd.isna(row["not_measured"])
    assert set(by_lr["status"]) == {"ok"}


def test_a_seed_that_ran_and_failed_is_not_also_missing(tmp_path):
    _, t3, _ = tables(tmp_path, campaign(seeds=(1,)) + [record(lr=0.05, seed=2, status="failed", grid=SEEDS)])
    assert t3.loc["allcnn-c", "not_measured"] == "0.05 failed (1/3 seeds)"


def test_the_val_protocol_names_missing_seeds_too(tmp_path):
    _, t3, _ = tables(tmp_path, campaign(train_split="train45k"))
    row = t3.loc["allcnn-c"]
    assert (row["val_status"], row["val_not_measured"]) == ("partial", "0.05 missing seeds 1, 2")


def test_an_older_record_without_a_grid_asks_for_nothing_more(tmp_path):
    _, t3, _ = tables(tmp_path, [record(lr=0.05, seed=0, test=9.0), record(lr=0.05, seed=2, test=9.2)])
    assert (t3.loc["allcnn-c", "status"], t3.loc["allcnn-c", "n_seeds"]) == ("ok", 2)


def test_a_requested_model_with_no_runs_keeps_its_missing_cells_after_one_with_runs(tmp_path):
    """`--models model-c allcnn-c --lrs 0.05 0.01`, stopped after Model C: All-CNN-C's cells read "missing" in the
    by-LR table too (a model's requested seeds must not stand in for the grid's requested models)."""
    grid = {"models": ["model-c", "allcnn-c"], "lrs": [0.05, 0.01], "seeds": [0]}
    _, t3, by_lr = tables(tmp_path, [record(model="model-c", lr=lr, test=10.0, grid=grid) for lr in (0.05, 0.01)])
    cells = by_lr.set_index(["model", "lr"])["status"].to_dict()
    assert cells == {("model-c", 0.05): "ok", ("model-c", 0.01): "ok",
                     ("allcnn-c", 0.05): "missing", ("allcnn-c", 0.01): "missing"}
    assert t3.loc["allcnn-c", "status"] == "missing"


def test_a_huge_requested_grid_is_counted_not_multiplied_out(tmp_path):
    """An untrusted record's grid of 300 LRs x 30,000 seeds (schema-valid: only its types are checked): the seeds
    are kept as one set per grid, never the 9-million-pair product, and a cell counts them past the first few."""
    lrs = [0.05] + [1e-4 * (i + 1) for i in range(299)]
    grid = {"models": ["allcnn-c"], "lrs": lrs, "seeds": list(range(30_000))}
    led, t3, by_lr = tables(tmp_path, [record(lr=0.05, test=9.0, grid=grid)])
    asked = requested_runs(led.df[led.df["model"] == "allcnn-c"])
    assert len(asked) == 300 and len({id(s) for sets in asked.values() for s in sets}) == 1
    assert t3.loc["allcnn-c", "not_measured"].startswith("0.05 missing 29,999 seeds (1, 2, 3, 4, 5, ...), ")
    assert by_lr.set_index("lr").loc[0.05, "status"] == "missing 29,999 seeds (1, 2, 3, 4, 5, ...)"
    assert (by_lr["status"] == "missing").sum() == 299  # the LRs with no run: no seed list at all


def test_every_commands_seeds_are_asked_for(tmp_path):
    """Two commands of the same LRs, each asking for a seed that never ran: both seeds are named, whichever
    command's record is read first (one command's request stood for the other's: its seed read as never asked for)."""
    first = {"models": ["allcnn-c"], "lrs": [0.05, 0.01], "seeds": [0, 2]}
    second = {"models": ["allcnn-c"], "lrs": [0.05, 0.01], "seeds": [1, 3]}
    recs = [record(lr=0.05, seed=0, test=9.0, grid=first), record(lr=0.05, seed=1, test=9.2, grid=second)]
    _, _, by_lr = tables(tmp_path, recs)
    assert by_lr.set_index("lr")["status"].to_dict() == {0.05: "missing seeds 2, 3", 0.01: "missing"}


def test_up_to_five_missing_seeds_are_named_and_more_are_counted():
    from reports.requested import seeds_text

    assert seeds_text([1]) == "missing seed 1"
    assert seeds_text([1, 2, 3, 4, 5]) == "missing seeds 1, 2, 3, 4, 5"  # all of them: no "..."
    assert seeds_text([1, 2, 3, 4, 5, 6]) == "missing 6 seeds (1, 2, 3, 4, 5, ...)"
