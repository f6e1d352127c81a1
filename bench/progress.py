"""Everything bench/run_all.py shows and logs: the plan, the ETA, progress bars, one line per finished run, the
end-of-grid summary, and one tracker run per training run.

    show = Progress(cfg, acc)                   # checks --log-with before anything trains
    show.plan(runs, done, pending, mine, mode, world, ddp)
    tracker = show.tracker(run, key)            # per training run; skipped runs get none
    bar = show.epoch_bar(run, epoch, steps, last_entry)
    show.run_done(run, key, record)
    show.summary(keys)

On a terminal (and with --progress) the main process draws bars that fit its width (tqdm dynamic_ncols) and writes
its lines above them (`tqdm.write`); when stdout is a file or a pipe there are no bars and no control codes, only
plain lines (a line per evaluated epoch with --progress). The resolved configuration is printed whole only with
--verbose; otherwise one line names the preset and the fields that differ from it.

Tracking (`--log-with tensorboard`, or another Accelerate tracker): one tracker run per training run under
<out>/logs/<name>, named readably (`allcnn-c_lr0.05_seed0`, plus what an ablation arm changes: `..._bn_no-dropout`),
scalars under plain tags (train/loss, train/acc, test/error, val/error, lr; step = epoch), and the run's own hparams,
typed, with its final metrics (final/test_error, ...) so TensorBoard's HParams view compares the grid's runs. In grid
mode each process logs the runs it trains; in DDP mode the main process.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from collections import Counter
from pathlib import Path

from bench import results
from bench.cli import UsageError
from bench.config import GRID_FIELDS, NOT_IN_KEY, PRESETS, Run, RunConfig, arm_changes
from bench.devices import precision_label

SCALARS = {"loss": "train/loss", "train_acc_pct": "train/acc", "test_error_pct": "test/error",
           "val_error_pct": "val/error", "test_loss": "test/loss", "val_loss": "val/loss", "lr": "lr"}
"""History entry field -> tracker tag."""
FINAL = {"test_error_pct": "final/test_error", "best_test_error_pct": "final/best_test_error",
         "val_error_pct": "final/val_error", "epochs_completed": "final/epochs"}
"""Record field -> the metric the HParams view compares."""


def fmt_pct(value) -> str:
    return "-" if value is None else f"{value:.2f}%"


def run_label(run: Run, grid_cfg: RunConfig | None = None) -> str:
    """"allcnn-c lr=0.01 seed=0", and for an ablation arm's run what the arm changes on top of `grid_cfg`
    ("allcnn-c lr=0.01 seed=0 [preprocess=meanstd]": the arms of one model, LR and seed read apart)."""
    arm = arm_changes(run.cfg, grid_cfg) if grid_cfg is not None else ""
    return f"{run.model} lr={run.lr:g} seed={run.seed}" + (f" [{arm}]" if arm else "")


def tracker_class(log_with: str | None):
    """Accelerate's tracker class for --log-with, checked before anything trains (a UsageError otherwise)."""
    if log_with is None:
        return None
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    from accelerate.utils import imports

    if log_with not in LOGGER_TYPE_TO_CLASS:
        raise UsageError(f"--log-with {log_with} is not an Accelerate tracker; valid: {', '.join(LOGGER_TYPE_TO_CLASS)}")
    available = getattr(imports, f"is_{log_with}_available", lambda: True)
    if not available():
        raise UsageError(f"--log-with {log_with}: its package is not installed (pip install {log_with})")
    return LOGGER_TYPE_TO_CLASS[log_with]


def hparam(value):
    """A value TensorBoard's HParams plugin takes and shows readably: numbers stay numbers, the rest is text
    (torch would store a bool as the number 0/1)."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) or "none"
    return "none" if value is None else str(value).lower()


def tracker_name(run: Run, launched: RunConfig) -> str:
    """`allcnn-c_lr0.05_seed0`, plus each field an ablation arm changes against the launched config
    (`allcnn-c_lr0.05_seed0_bn_no-dropout`, `..._precision-fp32`)."""
    parts = [run.model, f"lr{run.lr:g}", f"seed{run.seed}"]
    for f in dataclasses.fields(run.cfg):
        value = getattr(run.cfg, f.name)
        if f.name in GRID_FIELDS or value == getattr(launched, f.name):
            continue
        if isinstance(value, bool):
            parts.append(f.name if value else f"no-{f.name}")
        else:
            parts.append(f"{f.name}-{precision_label(value) if 'precision' in f.name else value}")
    return "_".join(parts).replace("/", "-")


class RunTracker:
    """One tracker run for one training run."""

    def __init__(self, cls, name: str, log_dir: Path, hparams: dict):
        self.hparams = {k: hparam(v) for k, v in hparams.items()}
        self.tracker = cls(name, str(log_dir)) if cls.requires_logging_directory else cls(name)
        self.tracker.main_process_only = False  # run_all decides which process logs a run
        self.tracker.start()
        if cls.name != "tensorboard":  # TensorBoard takes hparams once, with the final metrics (finish)
            self.tracker.store_init_configuration(self.hparams)

    def log(self, entry: dict) -> None:
        values = {tag: entry[k] for k, tag in SCALARS.items()
                  if isinstance(entry.get(k), (int, float)) and math.isfinite(entry[k])}
        self.tracker.log(values, step=entry["epoch"])

    def finish(self, outcome: dict | None) -> None:
        """The final metrics beside the hparams and the status; without an outcome (interrupted or failed: the
        run is trained again) only the scalars so far."""
        if outcome is None:
            self.tracker.finish()
            return
        metrics = {tag: outcome[k] for k, tag in FINAL.items()
                   if isinstance(outcome.get(k), (int, float)) and math.isfinite(outcome[k])}
        hparams = dict(self.hparams, status=outcome["status"])
        if self.tracker.name == "tensorboard":  # run_name ".": the hparams session is this run's own directory
            self.tracker.writer.add_hparams(hparams, metrics, run_name=".")
        else:
            self.tracker.log(metrics)
        self.tracker.finish()


class NoTracker:
    def log(self, entry: dict) -> None:
        pass

    def finish(self, outcome: dict | None) -> None:
        pass


class Progress:
    def __init__(self, cfg: RunConfig, acc):
        from tqdm.auto import tqdm

        self.cfg, self.acc, self.tqdm = cfg, acc, tqdm
        self.tracker_cls = tracker_class(cfg.log_with)
        self.log_dir = Path(cfg.out) / "logs"
        self.tty = sys.stdout.isatty()
        self.bars = cfg.progress and acc.is_main_process and self.tty
        self.grid_bar, self.ddp = None, False

    def say(self, line: str, everywhere: bool = False) -> None:
        """A plain line from the main process (or from this one with `everywhere`), above any bars."""
        if not (everywhere or self.acc.is_main_process):
            return
        if self.bars:
            self.tqdm.write(line)
        else:
            print(line, flush=True)

    def config_lines(self) -> str:
        cfg, base = self.cfg, PRESETS[self.cfg.preset]
        if cfg.verbose:
            return "resolved configuration:\n" + "\n".join(f"  {k} = {v!r}" for k, v in dataclasses.asdict(cfg).items())
        diff = [f"{f.name}={hparam(getattr(cfg, f.name))}" for f in dataclasses.fields(cfg)
                if getattr(cfg, f.name) != getattr(base, f.name)]
        return f"preset {cfg.preset}; differs: {', '.join(diff) or 'nothing'} (--verbose: the whole configuration)"

    def plan(self, runs: list, done: set, pending: list, mine: list, mode: str, world: int, ddp: bool) -> None:
        self.ddp = ddp
        self.say(self.config_lines())
        self.say(f"{len(runs)} runs: {len(done)} already in {results.runs_dir(self.cfg.out)} (skipped), "
                 f"{len(pending)} to train (failed and stalled ones again); mode {mode} on {world} process(es)")
        if self.tracker_cls is not None:
            self.say(f"{self.cfg.log_with} logs: {self.log_dir}/<run> (one per training run)"
                     + (f"; view: tensorboard --logdir {self.log_dir}" if self.cfg.log_with == "tensorboard" else ""))
        if self.bars:
            self.grid_bar = self.tqdm(total=len(mine), desc="grid", unit="run", dynamic_ncols=True)

    def eta(self, seconds: float, rate: float, model: str) -> None:
        self.say(f"ETA {seconds / 3600:.2f} h (measured {rate:.0f} img/s per process on {model})")

    def owner(self) -> bool:
        """Whether this process reports the run it just trained (in DDP mode every process trained it)."""
        return self.acc.is_main_process or not self.ddp

    def tracker(self, run: Run, key: str):
        if self.tracker_cls is None or not self.owner():
            return NoTracker()
        hparams = {k: v for k, v in run.config().items() if k not in NOT_IN_KEY and k != "data_sha256"}
        return RunTracker(self.tracker_cls, tracker_name(run, self.cfg), self.log_dir, {"run_key": key, **hparams})

    def epoch_bar(self, run: Run, epoch: int, steps: int, last: dict | None):
        """The epoch's bar (None without bars), the last epoch's loss and accuracy in its postfix."""
        if not self.bars:
            return None
        label = run_label(run, self.cfg)
        bar = self.tqdm(total=steps, desc=f"{label} epoch {epoch + 1}/{run.cfg.epochs}", leave=False, unit="step",
                        dynamic_ncols=True)
        if last is not None and last["loss"] is not None:
            bar.set_postfix_str(f"loss {last['loss']:.3f} acc {last['train_acc_pct']:.1f}%", refresh=False)
        return bar

    def epoch_done(self, run: Run, entry: dict) -> None:
        """Without bars, a plain line per evaluated epoch (with --progress)."""
        if self.cfg.progress and not self.bars and entry["test_error_pct"] is not None and self.owner():
            label = run_label(run, self.cfg)
            self.say(f"{label} epoch {entry['epoch']}/{run.cfg.epochs}: loss {entry['loss']:.3f}, "
                     f"train acc {entry['train_acc_pct']:.1f}%, test error {fmt_pct(entry['test_error_pct'])}"
                     + (f" (loss {entry['test_loss']:.3f})" if entry.get("test_loss") is not None else ""),
                     everywhere=True)

    def run_done(self, run: Run, key: str, record: dict) -> None:
        if self.grid_bar is not None:
            self.grid_bar.update(1)
        if self.owner():
            why = f" ({record['error']})" if record["error"] and record["status"] != "completed" else ""
            self.say(f"{run_label(run, self.cfg)}: {record['status']}, test error "
                     f"{fmt_pct(record['test_error_pct'])}{why} [{key}]", everywhere=True)

    def interrupted(self, key: str | None, by: str = "SIGTERM") -> None:
        """Stopped by signal `by`: `key` names the run(s) checkpointed mid-run, None a stop between runs (nothing to
        save)."""
        self.close()
        what = f"{key} checkpointed" if key else "between runs, nothing lost"
        self.say(f"stopped by {by}: {what}; rerun the same command to resume", everywhere=True)

    def close(self) -> None:
        if self.grid_bar is not None:
            self.grid_bar.close()
            self.grid_bar = None

    def summary(self, keys: list[str]) -> None:
        """Counts per status over the whole grid (every process's runs, from the ledger), where things are, and
        the command to run next."""
        self.close()
        if not self.acc.is_main_process:
            return
        wanted = set(keys)
        counts = Counter(r["status"] for r in results.read_records(self.cfg.out) if r["run_key"] in wanted)
        missing = len(wanted) - sum(counts.values())
        parts = [f"{n} {s}" for s, n in sorted(counts.items())]
        if missing:
            parts.append(f"{missing} not recorded yet (another process is training them, or they stopped: rerun "
                         "the same command)")
        out = self.cfg.out
        self.say(f"grid of {len(wanted)} runs: {', '.join(parts) or 'nothing'}; ledger: {results.runs_dir(out)}"
                 + (f"; {self.cfg.log_with} logs: {self.log_dir}" if self.tracker_cls is not None else ""))
        if Path(out).resolve() == Path("results").resolve():  # both defaults: results/ -> report/ (make report)
            self.say("next: python -m reports (or make report): Table 3 beside the paper in report/")
        else:
            self.say(f"next: python -m reports --results {out} --out {Path(out) / 'report'}")
