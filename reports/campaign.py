"""The README's "Measured so far" table, made from the committed GPU campaign ledger (issue 13), so it stays true.

    python -m reports.campaign            # rewrite README.md's block from reports/measured/campaign
    python -m reports.campaign --check    # exit 1 when README.md's block differs (tests/test_campaign.py runs it)

One row per run in the ledger (`<results>/runs/*.json`, as bench/run_all.py wrote them) and one per unfinished run
whose checkpoint travelled back beside it (`<results>/checkpoints/<run_key>.pt`, resumed by the next campaign; a run
with both, one that failed or stalled after its checkpoint, is its record's one row, which says so): model
(and what an ablation arm changes, bracketed), LR, seed, how it ended (as the full report counts it,
reports.ledger.outcome: "completed" before its last epoch is unfinished), its final test error beside the paper's (Table
3: the best LR's), epochs, seconds, training images/s, GPU, data, and what bench/diagnose.py saw when the run ended
(eval-mode training error: under- or over-fitting; dead ReLU channels: capacity lost), where the record has it. A
checkpoint's run is found by recomputing the run keys of every Table 3 (model, LR) under a recorded run's config,
whose record gives its planned epochs and data (the run key names both) and the GPU shown (a checkpoint names
none); its epoch and last test error are read from the checkpoint (torch, weights_only: nothing in it runs; without
torch the row still appears, without them). The full report (Table 3, claims, plots) is
`python -m reports --results reports/measured/campaign`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from allconv.specs import SPECS
from bench import results
from bench.files import atomic_write
from loaders.sources import CLASSES

RESULTS = Path("reports/measured/campaign")
BEGIN, END = "<!-- measured-table:begin (python -m reports.campaign) -->", "<!-- measured-table:end -->"
COLUMNS = ("Model", "LR", "Seed", "Status", "Test error %", "Paper % (best LR)", "Epochs", "Seconds", "Train img/s",
           "GPU", "Data", "At the end")


def checkpoint_state(path: Path) -> tuple[int | None, dict | None, float | None]:
    """(epochs done, last evaluated history entry, seconds so far) of a checkpoint, or Nones when it cannot be
    read here (no torch, or damaged: run_all sets those aside when it resumes)."""
    try:
        from bench.checkpoint import progress

        state = progress(path)
    except (ImportError, ValueError):
        return None, None, None
    evaluated = [h for h in state["history"] if h.get("test_error_pct") is not None]
    return state["epoch"], (evaluated[-1] if evaluated else None), state["wall_s"]


def rows(results_dir: Path) -> list[list[str]]:
    from reports.data import short  # these three and md_text here, not at the top: they import bench/ablations.py,
    from reports.running import run_of_key  # which raises ValueError on a user's typo'd arm: main makes it one line
    from bench.ablations import arm_label
    from reports.ledger import outcome

    records = results.read_records(results_dir)
    checkpoints = {p.stem: p for p in sorted((results_dir / "checkpoints").glob("*.pt"))}
    out = []
    for r in records:
        status = outcome(r)
        if r["run_key"] in checkpoints and status not in ("completed", "diverged"):  # run_all resumes it there
            epoch = checkpoint_state(checkpoints[r["run_key"]])[0]
            status += f": checkpointed{'' if epoch is None else f' at epoch {epoch}'}, resumed by the next campaign"
        spec = SPECS.get(r["model"])  # a model this code does not know: its own name, no paper number, listed last
        out.append((list(SPECS).index(r["model"]) if spec else len(SPECS), -r["lr"], r["seed"], [
            (spec.paper_name if spec else f"{r['model']} (not in Table 3)") + arm_label(r["config"]), f"{r['lr']:g}",
            str(r["seed"]), status,
            _pct(r["test_error_pct"]), f"{spec.paper_error_pct:.2f}" if spec and spec.in_paper else "",
            f"{r['epochs_completed']}/{r['epochs']}", _int(r["wall_time_s"]), _int(r["train_images_per_s"]),
            str(r["device_name"] or ""), short(r["data"]), _diagnosis(r.get("diagnosis"))]))
    cells = run_of_key(pd.DataFrame.from_records(records))
    recorded = {r["run_key"] for r in records}  # its record's row speaks for it; a finished run's is never resumed
    for path in (p for key, p in checkpoints.items() if key not in recorded):
        model, lr, sibling = cells.get(path.stem, (None, None, None))
        seed, arm_text = (sibling["seed"], arm_label(sibling["config"])) if sibling else (None, "")
        mine = sibling or (records[0] if records else None)  # its config's record (its epochs, data; the GPU
        # shown); a checkpoint of no record's config: the first record's, as before
        spec = SPECS.get(model)
        epoch, last, seconds = checkpoint_state(path)
        out.append((list(SPECS).index(model) if spec else len(SPECS), -(lr or 0), -1 if seed is None else seed, [
            (spec.paper_name if spec else f"run {path.stem}") + arm_text, f"{lr:g}" if lr else "?",
            "?" if seed is None else str(seed),
            "unfinished: checkpointed, resumed by the next campaign",
            f"{_pct(last['test_error_pct'])} (epoch {last['epoch']})" if last else "",
            f"{spec.paper_error_pct:.2f}" if spec and spec.in_paper else "",
            f"{epoch}/{mine['epochs']}" if epoch is not None and mine else "",
            f"{_int(seconds)} so far" if seconds else "", "",
            str(mine["device_name"] or "") if mine else "", short(mine["data"]) if mine else "", ""]))
    return [row for *_, row in sorted(out, key=lambda t: t[:3])]


def _pct(v) -> str:
    return "" if v is None else f"{v:.2f}"


def _int(v) -> str:
    return "" if v is None else f"{v:,.0f}"


FINAL_RELU = "top.conv3_relu"  # allconv.build's name for the ReLU over the class maps (Table 1's last layer)


def _diagnosis(d: dict | None) -> str:
    """"train error 0.15% (eval mode), 0 of 1,258 ReLU channels dead" from a record's diagnosis, and what caps its
    accuracy when it happens: class maps dead under the final ReLU (such a class wins only ties at 0), classes
    that no test image of was classified right."""
    if not d:
        return ""
    dead, channels = (sum(v[i] for v in d["dead_relu_channels"].values()) for i in (0, 1))
    text = f"train error {d['train_error_pct']:.2f}% (eval mode), {dead:,} of {channels:,} ReLU channels dead"
    final = d["dead_relu_channels"].get(FINAL_RELU)
    if final and final[0]:
        text += f" ({final[0]} of the {final[1]} class maps)"
    lost = [CLASSES[i] if i < len(CLASSES) else str(i) for i, e in enumerate(d["test_error_by_class_pct"])
            if e is not None and e >= 100]  # None: no test image of that class (a subset)
    return text + (f"; never right on test: {', '.join(lost)}" if lost else "")


def table(results_dir: Path = RESULTS) -> str:
    """The Markdown table; every cell literal text (`formats.md_text`: a record's strings and a checkpoint's file
    name add no line, cell, link or marker of the block)."""
    from reports.formats import md_text

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in rows(results_dir)]
    return "\n".join(lines)


def block(results_dir: Path = RESULTS) -> str:
    return f"{BEGIN}\n{table(results_dir)}\n{END}"


def updated(readme: str, results_dir: Path = RESULTS) -> str:
    """README text with its measured-table block replaced (ValueError when the markers are missing)."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no measured-table block: add the lines {BEGIN!r} and {END!r}")
    return readme[:start] + block(results_dir) + readme[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.campaign", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="campaign ledger (runs/, checkpoints/)")
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the README's block is stale")
    args = p.parse_args(argv)
    try:
        text = args.readme.read_text()
        new = updated(text, args.results)
    except (OSError, ValueError) as e:
        print(f"reports.campaign: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"reports.campaign: {args.readme}'s measured table is stale: run python -m reports.campaign",
                  file=sys.stderr)
            return 1
        return 0
    try:  # whole or not at all: a write that fails (a full disk) leaves the README as it was
        atomic_write(args.readme, lambda f: f.write(new.encode()))
    except OSError as e:
        print(f"reports.campaign: {e}", file=sys.stderr)
        return 2
    print(f"reports.campaign: {args.readme}'s measured table {'was already' if new == text else 'is now'} "
          f"up to date with {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
