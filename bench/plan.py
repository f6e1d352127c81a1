"""What `bench/run_all.py` would do with the same options, read from its ledger without training anything:

    python -m bench.plan --source ../shared/data/cifar10-jpeg.tar.gz --out reports/measured/campaign --models allcnn-c

One line per run of the grid and its ablation arms, in run_all's grid order: recorded (its status and test error),
to resume (its checkpoint's epoch; one run_all sets aside, another network's included: from epoch 0), being trained
(a live claim in <out>/claims/) or to train; then the counts and the training time left, estimated from the seconds
per epoch of the runs this ledger holds on the device that recorded the newest of them, trained alike
(`record_cost`: a DDP run's seconds are its processes' together, the estimate is one process's per run; for a model
it has not timed at the same batch, precision and data: scaled by the images/s of `--throughput FILE`,
bench/throughput.py's output on that device, where it has both models, else by forward MACs). The run keys come from
the source's sha256, as run_all's do, so nothing is prepared; nothing is written (a damaged ledger file is set
aside, as run_all and the reports do; a record whose config does not hash to its key is named and its run planned as
run_all trains it, `workqueue.final`). Checkpoints in <out>/checkpoints of no run of the grid (another grid's, or a
run whose options changed) are counted in a last line: run_all never resumes them.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import allconv  # noqa: E402
from bench import claims, results, workqueue  # noqa: E402
from bench.cli import Parser, UsageError, parse_args  # noqa: E402
from bench.config import arm_changes, expand  # noqa: E402

SAME_COST = ("batch_size", "precision", "train_split", "subset_per_class", "preset")
"""Config fields that change a run's seconds per epoch beyond its model: runs timed alike share these, and how they
were trained (`record_cost`): fused with other LRs or alone, with CUDA graphs or not, on how many processes."""


def record_cost(r: dict) -> tuple:
    """What made a record's seconds per epoch what they are, beyond its model: `SAME_COST`, whether it trained
    fused (its seconds a share of its group's), with CUDA graphs, and on how many processes (a DDP run's seconds
    are its N processes' together, not one process's)."""
    processes = (r.get("world_size") or 1) if r.get("mode") == "ddp" else 1
    return (*(r["config"].get(k) for k in SAME_COST), (r.get("fused_runs") or 1) > 1,
            r["config"].get("cuda_graphs", False), processes)


def run_cost(run) -> tuple:
    """`record_cost` of a run to plan, on one process: the plan estimates one process's time per run (grid mode),
    so a DDP record on N processes is never taken for it."""
    return (*(getattr(run.cfg, k) for k in SAME_COST), run.cfg.fuse_lrs, run.cfg.cuda_graphs, 1)


def data_sha(cfg) -> str:
    """The sha256 run_all keys runs by: the source's, or for the official download the prepared copy's."""
    from loaders import sources
    from loaders.manifest import load_manifest

    if cfg.source != "torchvision":
        if not Path(cfg.source).expanduser().exists():
            raise UsageError(f"data: source not found: {cfg.source}")
        return sources.source_sha256(cfg.source)
    try:
        manifest = load_manifest(cfg.data_dir)  # the download's digest is known once it is prepared
    except ValueError:
        raise UsageError(f"{cfg.data_dir} is not prepared, and the run keys hold the official download's sha256: "
                         f"plan after the first run has prepared it (or python -m loaders.prepare --data-dir "
                         f"{cfg.data_dir}), or give --source FILE") from None
    if manifest["source"] != "torchvision":
        raise UsageError(f"{cfg.data_dir} holds {manifest['source']}, not the official download: give --source")
    return manifest["source_sha256"]


def checkpoint_epoch(path: Path, run) -> int | str:
    """The epoch a checkpoint of `run` resumes at, or why it cannot: run_all then sets it aside and starts at epoch 0
    (a checkpoint of another LR's run, or of another network: its weights are checked against the run's network,
    built on the CPU as run_all builds it, with run_all's own check, `checkpoint.check_model`)."""
    import torch

    from bench import checkpoint, runs

    net, _ = runs.build_net(run, torch.device("cpu"))  # All-CNN-C: ~0.1 s, once per checkpoint of the grid
    try:
        return checkpoint.progress(path, run.lr_at, net)["epoch"]
    except ValueError as e:  # "unreadable checkpoint (UnpicklingError)" or "malformed checkpoint: <why>"
        return f"{e}: set aside, trains from epoch 0"


def claim_holder(path: Path, lease_s: float) -> str | None:
    """'host pid N' of a live claim on a run, else None (no claim, or a stale one: the next start takes it over). A
    damaged claim is judged as run_all judges it (`claims.examine`: by its age)."""
    try:
        found = claims.examine(path, lease_s)
    except OSError:
        return None
    return None if found is None or found[2] else claims.owner(found[1])


def timings(records: list[dict]) -> tuple[dict, str | None, int]:
    """Seconds per epoch of the ledger's finished runs on the device of the newest one: {(model, *record_cost):
    median}, that device, how many runs. A fused run's seconds are its group's, shared by its runs."""
    timed = [r for r in records if r["status"] in workqueue.DONE + ("stalled",) and r["wall_time_s"]
             and r["epochs_completed"]]
    if not timed:
        return {}, None, 0
    device = max(timed, key=lambda r: r["finished_at"])["device_name"]
    per: dict[tuple, list[float]] = {}
    for r in (r for r in timed if r["device_name"] == device):
        key = (r["model"], *record_cost(r))
        if not all(isinstance(v, (str, int, float, bool, type(None))) for v in key):
            continue  # a list where a config holds one value (outside input): alike to no run
        per.setdefault(key, []).append(r["wall_time_s"] / r["epochs_completed"] / (r.get("fused_runs") or 1))
    return {k: statistics.median(v) for k, v in per.items()}, device, sum(map(len, per.values()))


def benchmark_rates(path: str, device: str | None) -> tuple[dict[tuple[str, str], float], list[str]]:
    """Training images/s per (model, precision) in a bench/throughput.py file (JSON or CSV), measured on `device`
    (the median where it holds several rows), and the devices the file measured. A row without a model name or a
    positive rate is left out; a file the reports' reader refuses (`load_throughput`) is a UsageError naming it."""
    from reports.ledger import LedgerError
    from reports.throughput import load_throughput

    try:
        tp = load_throughput(path)
    except LedgerError as e:  # the reports' reader: one line naming the file first
        raise UsageError(f"--throughput {e}") from None
    if not {"model", "precision", "device_name", "train_images_per_s"} <= set(tp.columns):
        raise UsageError(f"{path}: not bench/throughput.py output (model, precision, device_name, "
                         "train_images_per_s)")
    devices = sorted(map(str, tp["device_name"].dropna().unique()))
    rate = tp["train_images_per_s"]  # a number or NaN (load_throughput)
    tp = tp.assign(precision=tp["precision"].map(_precision))
    tp = tp[(tp["device_name"] == device) & (rate > 0) & tp["precision"].notna()]
    return tp.groupby(["model", "precision"])["train_images_per_s"].median().to_dict(), devices


def _precision(label) -> str | None:
    """Accelerate's name for a precision label bench/throughput.py writes ("fp32" -> "no"), None if unknown."""
    from bench.devices import precision_name

    try:
        return precision_name(str(label))
    except ValueError:
        return None


def epoch_seconds(run, seconds: dict, rates: dict | None = None) -> tuple[float | None, str]:
    """(seconds per epoch, how it was scaled from other models: "" not, "benchmark" by `rates`' images/s,
    "macs" by forward MACs) for a run, or (None, "") when the ledger has timed nothing alike."""
    cost = run_cost(run)
    if (run.model, *cost) in seconds:
        return seconds[(run.model, *cost)], ""
    alike = {k[0]: s for k, s in seconds.items() if k[1:] == cost}
    rate = {m: r for (m, p), r in (rates or {}).items() if p == run.cfg.precision}
    measured = [s * rate[m] / rate[run.model] for m, s in alike.items() if m in rate and run.model in rate]
    if measured:
        return statistics.median(measured), "benchmark"
    macs = [s / allconv.macs(m) for m, s in alike.items()]
    return (statistics.median(macs) * allconv.macs(run.model), "macs") if macs else (None, "")


def plan(cfg, throughput: str | None = None) -> tuple[list[dict], dict]:
    """One row per run (model, lr, seed, arm, state, epoch it starts at, estimated seconds left) and a summary.
    `throughput`: a bench/throughput.py file whose images/s, on the ledger's device, scale the seconds per epoch
    to models the ledger has not timed (else forward MACs do)."""
    sha = data_sha(cfg)
    runs = expand(cfg, sha)
    records = {r["run_key"]: r for r in results.read_records(cfg.out)} if Path(cfg.out, "runs").is_dir() else {}
    seconds, device, n_timed = timings(list(records.values()))
    rates, measured_on = benchmark_rates(throughput, device) if throughput else ({}, [])
    rows = []
    for run in runs:
        key = run.key(sha)
        record, ckpt = records.get(key), Path(cfg.out, "checkpoints", f"{key}.pt")
        start, state = 0, "to train"
        if record is not None and record["status"] in workqueue.DONE and not workqueue.final(cfg.out, record):
            record = None  # not this run's, or not what its status says (named on stderr): run_all trains the run
        if record is not None and record["status"] in workqueue.DONE:
            error = record["test_error_pct"]
            state, start = record["status"] + (f" {error:.2f}%" if error is not None else ""), None
        elif os.path.lexists(ckpt):  # as run_all: a FIFO or a link to a device there is set aside, not resumed
            epoch = checkpoint_epoch(ckpt, run)
            start, state = (epoch, f"resumes at epoch {epoch}") if isinstance(epoch, int) else (0, epoch)
            if record is not None:
                state = f"{record['status']} before: {state}"
        elif record is not None:
            state = f"{record['status']} before: trains again"
        holder = claim_holder(claims.claims_dir(cfg.out) / f"{key}.json", cfg.claim_lease_minutes * 60)
        if holder is not None and start is not None:
            state = f"being trained by {holder} ({state})"
        per_epoch, scaled = epoch_seconds(run, seconds, rates)
        left = None if start is None or per_epoch is None else (run.cfg.epochs - start) * per_epoch
        arm = arm_changes(run.cfg, cfg)
        rows.append({"model": run.model, "lr": run.lr, "seed": run.seed, "arm": arm, "key": key, "state": state,
                     "start": start, "epochs": run.cfg.epochs, "seconds_left": left, "scaled": scaled})
    folder, keys, sizes = Path(cfg.out, "checkpoints"), {row["key"] for row in rows}, []
    for path in folder.glob("*.pt"):  # no folder: none
        if path.stem not in keys:
            with contextlib.suppress(OSError):  # deleted meanwhile by a run_all that recorded its run
                sizes.append(path.lstat().st_size)
    return rows, {"device": device, "timed": n_timed, "throughput": throughput if rates else None,
                  "throughput_unused": (throughput, measured_on) if throughput and not rates and device else None,
                  "other_checkpoints": (folder, len(sizes), sum(sizes))}


def render(rows: list[dict], summary: dict) -> str:
    width = max([12, *(len(r["model"]) for r in rows)])  # a network of one's own may have a longer name
    lines = [f"{'model':<{width}} {'lr':>7} {'seed':>4}  {'run key':<16}  {'epochs':>9}  {'left':>8}  state"]
    for r in rows:
        epochs = f"{r['start']}/{r['epochs']}" if r["start"] is not None else "done"
        left = "" if r["seconds_left"] is None else ("~" if r["scaled"] else "") + hours(r["seconds_left"])
        state = r["state"] + (f" [{r['arm']}]" if r["arm"] else "")
        lines.append(f"{r['model']:<{width}} {r['lr']:>7g} {r['seed']:>4}  {r['key']:<16}  {epochs:>9}  {left:>8}  "
                     f"{state}")
    todo = [r for r in rows if r["start"] is not None]
    resumes = sum(r["start"] > 0 for r in todo)
    lines.append(f"{len(rows)} run{'s' * (len(rows) != 1)}: {len(rows) - len(todo)} recorded, "
                 f"{len(todo) - resumes} to train, {resumes} to resume")
    known = [r["seconds_left"] for r in todo if r["seconds_left"] is not None]
    if todo and not known:
        lines.append("time left: no estimate (this ledger has timed no run alike; run_all measures its rate when it "
                     "starts)")
    elif todo:
        missing = f"; {len(todo) - len(known)} run(s) without an estimate" if len(known) < len(todo) else ""
        how = "forward MACs" if not summary["throughput"] else \
            f"the images/s {summary['throughput']} measured, else forward MACs"
        lines.append(f"time left: {hours(sum(known))} of training on one process of {summary['device']}, from "
                     f"{summary['timed']} run(s) it recorded ('~': scaled from other models by {how}){missing}; "
                     "grid mode spreads runs over processes")
    if summary.get("throughput_unused"):  # another device's file: its images/s say nothing of this one's
        path, measured_on = summary["throughput_unused"]
        lines.append(f"--throughput {path}: no usable rows for {summary['device']}, the device of this ledger's "
                     f"timings (it measured {', '.join(measured_on) or 'no device'}): not used")
    folder, n, size = summary["other_checkpoints"]
    if n:  # another grid's on the same --out, or runs whose options changed: never resumed by this one
        lines.append(f"{n} checkpoint{'s' * (n != 1)} in {folder} ({size / 2**20:,.0f} MiB) "
                     f"{'belong' if n != 1 else 'belongs'} to no run of these options (another grid's, or runs "
                     "whose options changed): run_all leaves them as they are")
    return "\n".join(lines)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 \
        else f"{seconds:.0f} s"


def own_options(argv: list[str]) -> tuple[Parser, str | None, list[str]]:
    """This tool's own parser, its --throughput FILE (None: not given) and the rest of `argv` (run_all's options).
    Bad input (--throughput without a FILE) is a one-line UsageError, as run_all's options are (bench.cli.Parser)."""
    own = Parser(prog="python -m bench.plan", usage="%(prog)s [--throughput FILE] [run_all options]", add_help=False)
    own.add_argument("--throughput", metavar="FILE", help="bench/throughput.py output measured on the ledger's "
                     "device: its images/s scale the estimates to models the ledger has not timed")
    known, rest = own.parse_known_args(argv)
    return own, known.throughput, rest


def main(argv: list[str] | None = None) -> int:
    try:
        own, throughput, rest = own_options(sys.argv[1:] if argv is None else argv)
        if {"-h", "--help"} & set(rest):  # this tool's own option, then run_all's (which it takes as run_all does)
            print(own.format_help() + "\nrun_all's options:", flush=True)
        cfg = parse_args(rest)
        rows, summary = plan(cfg, throughput)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder it may not look into (--out /proc/1/root): it only reads, so bad input
        print(f"error: cannot read {e.filename or '--out'}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(render(rows, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
