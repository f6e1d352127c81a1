"""Reports from the ledger alone: Table 3 beside the paper, the ablations, throughput and plots.

    python -m reports --results results --out report [--preset smoke] [--throughput bench.json]

Reads bench.results records and allconv.specs; never trains. It imports torch (and accelerate) only to read the
checkpoints of runs still training, when the ledger has some (reports.ledger.unfinished_runs; without torch they
are named in a note), and never ffcv.
"""
from reports.ledger import Ledger, LedgerError, load_ledger
from reports.report import write_report
from reports.tables import ablation_table, best_over_lr, select_on_val, table3
from reports.throughput import throughput_table

__all__ = ["Ledger", "LedgerError", "ablation_table", "best_over_lr", "load_ledger", "select_on_val", "table3",
           "throughput_table", "write_report"]
