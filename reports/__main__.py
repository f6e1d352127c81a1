"""CLI: python -m reports [--results DIR] [--out DIR] [--preset NAME] [--throughput PATH]

Reads the ledger in DIR/runs (bench.results) and writes report.md, report.html, CSV and LaTeX per table and
four PNG plots into --out. Never trains. Bad input (no ledger, unknown preset): one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reports", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write the Table 3 report (Markdown, HTML, CSV, LaTeX, PNG) from a results ledger; never trains.")
    parser.add_argument("--results", default="results", help="results folder holding the ledger (runs/*.json), "
                                                              "as bench/run_all.py --out wrote it")
    parser.add_argument("--out", default="report", help="folder for the report files (created; files replaced)")
    parser.add_argument("--preset", default=None,
                        help="preset to report (default: the only one, else the one with most records)")
    parser.add_argument("--throughput", default=None,
                        help="optional bench/throughput.py output (JSON or CSV) for the throughput table")
    args = parser.parse_args(argv)

    try:
        from reports.ledger import LedgerError
        from reports.report import write_report
    except ValueError as e:  # bench/ablations.py refused an arm of ABLATIONS (a user's own ablation, say) on import
        print(f"reports: {e}", file=sys.stderr)
        return 2

    try:
        paths = write_report(args.results, args.out, preset=args.preset, throughput=args.throughput)
    except LedgerError as e:
        print(f"reports: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the report could not be written (no permission, a full disk); nothing was moved in
        print(f"reports: cannot write the report into {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"reports: wrote {len(paths)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
