"""Reports from the ledger alone: Table 3 beside the paper, the ablations, throughput and plots.

    python -m reports --results results --out report [--preset smoke] [--throughput bench.json]

Reads bench.results records and allconv.specs; never trains. It imports torch (and accelerate) only to read the
checkpoints of runs still training, when the ledger has some (reports.running.unfinished_runs; without torch they
are named in a note), and never ffcv.
"""
import importlib

_HOME = {"Ledger": "ledger", "LedgerError": "ledger", "load_ledger": "ledger", "write_report": "report",
         "ablation_table": "tables", "best_over_lr": "tables", "select_on_val": "tables", "table3": "tables",
         "throughput_table": "throughput"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    """`reports.table3` and the rest, imported when first used: `python -m reports` imports this package before its
    CLI can turn an error on import (bench/ablations.py refusing a user's arm) into one line."""
    if name not in _HOME:
        raise AttributeError(f"module 'reports' has no attribute {name!r}")
    return getattr(importlib.import_module(f"reports.{_HOME[name]}"), name)
