"""One typed configuration for `bench/run_all.py`: a frozen dataclass, its presets, and the grid it expands to.

    cfg = dataclasses.replace(PRESETS["smoke"], models=("allcnn-c",), lrs=(0.05,))  # or bench.cli.parse_args
    runs = expand(cfg)          # [Run(model, lr, seed, cfg with ablation overrides)], deduplicated by run key

Every field is one CLI option of the same name (`--batch-size` -> batch_size; bench/cli.py builds the parser).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from allconv.specs import DEFAULT_INIT, INITS, PAPER_MODELS, SPECS  # noqa: F401  (INITS: also read from here)
from bench import results
from bench.devices import PRECISION_LABELS
from bench.schema import RANGES, in_range
from loaders import AUGMENTS, BACKENDS, PREPROCESS  # loaders/__init__ imports no torch

# No torch import here (the reports read bench/ablations.py, which builds its BASELINE from RunConfig()); the
# ablations are imported where a config names some (`bench.ablations` imports this module).
OPTIMIZERS = ("sgd", "adam")
VAL_SPLIT_OF = {"train": None, "train45k": "val5k"}  # train split -> the split its LR is judged on
MODES = ("auto", "ddp", "grid")
PRESETS_NAMES = ("paper", "smoke")  # the keys of PRESETS, which is built from the class below

GRID_FIELDS = ("models", "lrs", "seeds", "ablations")
"""Fields that describe the grid, not one run: a run has one model, one lr, one seed instead."""
NOT_IN_KEY = ("out", "source", "data_dir", "progress", "log_with", "checkpoint_minutes", "claim_lease_minutes", "mode",
              "num_workers", "channels_last", "compile", "cuda_graphs", "deterministic", "fuse_lrs", "backend",
              "stall_after", "verbose", "diagnose", "save_weights")
"""Fields that do not change what a run computes (where it is written, how it is shown or scheduled, memory
layout, the loader backend: the three yield identical batches, tests/test_loaders.py; the choice among
deterministic and faster kernels, which differ in float rounding only; fusing the LRs, whose runs
are separate ones up to float rounding and the draw of their dropout masks, bench/fused.py): left out of the run key
so a rerun with other values of them skips and resumes the same runs (e.g. a grid begun with ffcv on one
machine and finished with the tensor backend on a GPU machine without ffcv) and never records a run twice. The data
enters the key as the prepared source's sha256 instead of its path. `stall_after` only decides whether a run stops
early (as "stalled", never a result): a stalled run retried without it resumes under the same key."""


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class RunConfig:
    preset: str = _f("paper", "base configuration: " + " | ".join(PRESETS_NAMES))
    models: tuple[str, ...] = _f(PAPER_MODELS, "allconv API names or fnmatch patterns ('*-c'), trained in Table 3 "
                                 "order (default: Table 3's 12; a network of one's own in allconv/specs.py when named)")
    lrs: tuple[float, ...] = _f((0.25, 0.1, 0.05, 0.01), "learning rates (the paper's gamma grid)")
    seeds: tuple[int, ...] = _f((0,), "one run per seed; seeds the model, dropout and the loader order")
    ablations: tuple[str, ...] = _f((), "none | all | NAME,... from bench/ablations.py (each adds its arms' runs)")
    epochs: int = _f(350, "training epochs (paper: 350)")
    lr_drops: tuple[int, ...] = _f((200, 250, 300), "epochs at which the LR is multiplied by 0.1 (paper: 200 250 300)")
    batch_size: int = _f(256, "images per SGD step of one run, whatever the process count: --mode grid trains each "
                              "run at this batch on one process, --mode ddp splits it over the processes (as "
                              "bench/throughput.py --batch-size; paper: unstated, the Caffe port that reached "
                              "90.25%% used 256)")
    optimizer: str = _f("sgd", "sgd (paper) | adam", choices=OPTIMIZERS)
    momentum: float = _f(0.9, "SGD momentum (paper: 0.9)")
    weight_decay: float = _f(1e-3, "L2 weight decay (paper: 0.001)")
    bn: bool = _f(False, "batch norm after every conv (not in the paper)")
    dropout: bool = _f(True, "20%% input dropout, 50%% after each downsampling step (paper)")
    final_relu: bool = _f(True, "ReLU after the last 1x1 conv, before averaging (Table 1)")
    init: str = _f(DEFAULT_INIT, "weight init (paper: unstated; see allconv.DEFAULT_INIT)", choices=INITS)
    preprocess: str = _f("gcn-zca", "gcn-zca: GCN + ZCA whitening, filter bias 0.1 (paper) | gcn-zca-fb1: filter "
                                    "bias 1.0 (amplifies JPEG's error less) | meanstd | none", choices=PREPROCESS)
    augment: str = _f("none", "none (Table 3) | flip-translate (Table 4)", choices=AUGMENTS)
    train_split: str = _f("train", "train (50k, LR judged on test as the paper does) | train45k (judged on val5k)",
                          choices=tuple(VAL_SPLIT_OF))
    precision: str = _f("bf16", "training autocast: no (alias fp32; TF32 off on CUDA) | bf16 | fp16, passed to "
                                "Accelerator (as bench/throughput.py --precision)", choices=tuple(PRECISION_LABELS))
    eval_precision: str = _f("no", "evaluation autocast: no (fp32 as the paper, default; on CUDA its convolutions "
                                   "run in TF32 unless --precision no) or the training precision",
                             choices=tuple(PRECISION_LABELS))
    backend: str = _f("auto", "data loader backend; auto: tensor on a GPU, else ffcv when importable "
                              "(loaders.resolve_backend; the record has the resolved one)", choices=("auto", *BACKENDS))
    source: str = _f("torchvision", "CIFAR-10 source for loaders.prepare: torchvision | archive | folder")
    data_dir: str = _f("data", "prepared data directory")
    subset_per_class: int | None = _f(None, "keep N seeded images per class and split (smoke tests)")
    out: str = _f("results", "ledger folder: <out>/runs/*.json, <out>/checkpoints/, <out>/weights/")
    mode: str = _f("auto", "ddp: every run on all processes | grid: one run per process | auto: grid when there "
                           "are at least as many runs as processes", choices=MODES)
    eval_every: int = _f(10, "evaluate on test (and val) every N epochs, plus each of the last --eval-last epochs "
                             "and always the last (the paper preset's cost: under 2%% of a run on a GPU)")
    eval_last: int = _f(10, "evaluate each of the last N epochs (the final ones: where the best error is)")
    checkpoint_minutes: float = _f(10.0, "checkpoint every N minutes of wall-clock time, at an epoch's end (0: after "
                                         "every epoch), and always on SIGTERM or Ctrl-C")
    claim_lease_minutes: float = _f(60.0, "grid mode: a run claimed by a process on another host whose claim was not "
                                          "refreshed for this long (no epoch ended) is taken over (bench/workqueue.py)")
    stall_after: int | None = _f(None, "opt-in early stop: a run whose training accuracy is still within 1 pp of "
                                       "chance after N epochs stops as 'stalled' (retried on rerun); default off: "
                                       "only a NaN/inf loss stops a run early ('diverged')")
    channels_last: bool = _f(True, "NHWC memory format for model and batch")
    compile: bool = _f(False, "torch.compile the model")
    cuda_graphs: bool = _f(False, "replay each full training batch's step from one CUDA graph (bench/graphs.py; "
                                  "CUDA, one process per run, not with fp16 or --compile)")
    deterministic: bool = _f(False, "deterministic kernels only (torch.use_deterministic_algorithms, no cuDNN "
                                    "benchmarking, CUBLAS_WORKSPACE_CONFIG=:4096:8): the same command on the same GPU "
                                    "model, software and process count repeats a run bit for bit (a CPU run does "
                                    "anyway); slower on CUDA")
    fuse_lrs: bool = _f(False, "train the LRs of one model and seed in lockstep as one fused model (bench/fused.py; "
                               "grid mode, SGD with momentum, no BN, fp32 or bf16, with or without --cuda-graphs; "
                               "other runs train alone): each run's record and checkpoint as if trained alone, up to "
                               "float rounding and the draw of the dropout masks")
    diagnose: bool = _f(True, "when a run ends (completed or stalled), record its eval-mode training error, test "
                              "error per class and dead ReLU channels per layer (bench/diagnose.py; one pass over the "
                              "training and the test split)")
    save_weights: bool = _f(True, "when a run completes, keep its trained network in <out>/weights/<run key>.pt "
                                  "(bench/weights.py; bench.weights.load rebuilds it; its checkpoint is deleted)")
    num_workers: int | None = _f(None, "loader worker threads (default: the loader's choice)")
    progress: bool = _f(True, "progress on the main process: bars on a terminal, plain lines otherwise")
    verbose: bool = _f(False, "print the whole resolved configuration (default: the preset and what differs)")
    log_with: str | None = _f(None, "Accelerate tracker, e.g. tensorboard (logs under <out>)")

    def evaluates(self, epochs_done: int) -> bool:
        """Whether the epoch that brings the run to `epochs_done` is evaluated (the last one always is)."""
        return epochs_done % self.eval_every == 0 or epochs_done > self.epochs - max(self.eval_last, 1)

    def __post_init__(self):
        def bad(msg):
            raise ValueError(msg)

        for f in dataclasses.fields(self):  # an int where a float is meant (lrs=(1,), weight_decay=0: the Python API)
            value = getattr(self, f.name)  # as the command line's float: JSON writes 1 and 1.0 apart in the run key
            if f.type == "float":
                object.__setattr__(self, f.name, _float(value))
            elif f.type == "tuple[float, ...]" and isinstance(value, tuple):
                object.__setattr__(self, f.name, tuple(map(_float, value)))

        if self.preset not in PRESETS_NAMES:
            bad(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS_NAMES)}")
        ablations = _ablations().parse(",".join(self.ablations)) if self.ablations else []  # unknown names raise
        for name in (*self.models, *(m for a in ablations for m in _ablations().ABLATIONS[a].models)):
            if name not in SPECS:
                bad(f"unknown model {name!r}; valid: {', '.join(SPECS)}")
        for group in ("models", "lrs", "seeds"):
            if not getattr(self, group):
                bad(f"--{group} needs at least one value")
        for lr in self.lrs:
            if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
                bad(f"learning rates must be finite and > 0, got {lr!r}")
        for name in ("epochs", "batch_size", "eval_every", "stall_after"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_last", "checkpoint_minutes", "claim_lease_minutes"):
            if not getattr(self, name) >= 0:
                bad(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for seed in self.seeds:  # numpy takes seeds below 2**32, and DDP ranks seed with seed + rank
            if not 0 <= seed < 2 ** 31:
                bad(f"seeds must be in 0..2147483647 (2**31 - 1), got {str(seed):.40}")
        if any(not 0 < d < self.epochs for d in self.lr_drops) or list(self.lr_drops) != sorted(set(self.lr_drops)):
            bad(f"--lr-drops must be increasing epochs in 1..{self.epochs - 1}, got {list(self.lr_drops)} "
                "(a bare --lr-drops means none)")
        if not 0 <= self.momentum < 1:
            bad(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.subset_per_class is not None and self.subset_per_class < 1:
            bad(f"--subset-per-class must be >= 1, got {self.subset_per_class}")
        if self.num_workers is not None and self.num_workers < 1:
            bad(f"--num-workers must be >= 1, got {self.num_workers}")
        for f in dataclasses.fields(self):
            if f.name in RANGES and not in_range(f.name, getattr(self, f.name)):  # now, not when the record is
                bad(f"--{f.name.replace('_', '-')} must be finite and in [{', '.join(map(str, RANGES[f.name]))}], "
                    f"got {getattr(self, f.name)}")  # checked after training (bench.schema)
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                bad(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if self.fuse_lrs and not fusable(self):
            bad("--fuse-lrs trains SGD with momentum, without --bn, at --precision no or bf16, without --compile "
                "(bench/fused.py): drop --fuse-lrs or those options")
        if self.eval_precision not in ("no", self.precision):
            bad(f"--eval-precision must be no or the training precision {self.precision}, got {self.eval_precision}")
        for name in ablations:
            ablation = _ablations().ABLATIONS[name]
            for label in ablation.arms:
                arm = _ablations().arm_overrides(ablation, label)  # "fp32" as "no"
                try:  # the checks above on the arm's config, as the same values on the command line would meet
                    dataclasses.replace(self, ablations=(), fuse_lrs=False, **arm)  # (expand unfuses an arm)
                except ValueError as e:  # {"momentum": 1.5}; {"lr_drops": (250,)} under a shorter preset
                    bad(f"ablation {name!r}, arm {label!r}: {e}")
                precision = arm.get("precision", self.precision)
                if precision not in (self.precision, "no"):  # an arm may only turn autocast off: one Accelerator
                    bad(f"ablation {name!r}, arm {label!r}: --precision {precision} needs the grid at --precision "
                        f"{precision} too (an arm can only turn autocast off: one precision per process)")


def _float(value):
    """An int as the float the command line gives for it (an arm's lrs=(1,) as `--lrs 1`); any other value, and an int
    beyond any float (left to the range checks), as it is."""
    try:
        return float(value) if type(value) is int else value
    except OverflowError:
        return value


def graphable(c: RunConfig) -> bool:
    """Whether runs under config `c` can replay their step from a CUDA graph (bench/graphs.py): not with Adam (torch
    refuses to capture its step unless it was built capturable), fp16 (its loss scaler reads the GPU every step) or
    compile."""
    return c.optimizer == "sgd" and c.precision != "fp16" and not c.compile


def fusable(c: RunConfig) -> bool:
    """Whether runs under config `c` can train in lockstep as one fused model (bench/fused.py's FusedRuns)."""
    return c.optimizer == "sgd" and c.momentum > 0 and not c.bn and c.precision in ("no", "bf16") and not c.compile


@dataclass(frozen=True)
class Run:
    """One training run: a model, an lr and a seed under a config (ablation overrides already applied)."""
    model: str
    lr: float
    seed: int
    cfg: RunConfig

    def config(self, data_sha256: str | None = None) -> dict:
        """The resolved per-run config: what the run key hashes and the record stores."""
        d = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in GRID_FIELDS}
        d.update(model=self.model, lr=_float(self.lr), seed=self.seed, val_split=VAL_SPLIT_OF[self.cfg.train_split])
        d["data_sha256"] = data_sha256
        return d

    def key(self, data_sha256: str | None = None) -> str:
        return config_key(self.config(data_sha256))

    def lr_at(self, epoch: int) -> float:
        """The run's LR in 0-based `epoch`: the paper's schedule (bench.engine.lr_at) at its lr and lr_drops."""
        from bench.engine import lr_at  # torch: not at this module's import (the reports read it without)

        return lr_at(epoch, self.lr, self.cfg.lr_drops)


def config_key(config: dict) -> str:
    """The run key of a resolved per-run config (`Run.config`, or a record's `config`): a hash of what changes
    results, so the same run on another machine, backend or output folder has the same key."""
    return results.run_key({k: v for k, v in config.items() if k not in NOT_IN_KEY})


def arm_changes(run_cfg: RunConfig, grid_cfg: RunConfig) -> str:
    """What an ablation arm's run changes on top of its grid, "batch_size=128" ("" for the grid's own runs): the
    fields in the run key other than the grid's lists. bench.plan's rows and run_all's progress lines name it, so
    the arms of one model, LR and seed read apart."""
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(run_cfg).items()
                     if k not in (*GRID_FIELDS, *NOT_IN_KEY) and v != getattr(grid_cfg, k))


def expand(cfg: RunConfig, data_sha256: str | None = None) -> list[Run]:
    """The grid (models x lrs x seeds), then each ablation's arms (its own models; an arm may bring its own
    lrs), in that order; a run that two of them share (every ablation's baseline arm) appears once."""
    runs = [Run(m, lr, s, cfg) for m in cfg.models for lr in cfg.lrs for s in cfg.seeds]
    for name in cfg.ablations:
        ablation = _ablations().ABLATIONS[name]
        for label, overrides in ablation.arms.items():
            arm = _ablations().arm_overrides(ablation, label)
            if cfg.fuse_lrs and not fusable(dataclasses.replace(cfg, fuse_lrs=False, **arm)):
                arm["fuse_lrs"] = False  # e.g. the BN or Adam arm: its runs train alone
            if cfg.cuda_graphs and not graphable(dataclasses.replace(cfg, **arm)):
                arm["cuda_graphs"] = False  # the Adam arm: its step runs eagerly (not in the run key)
            arm_cfg = dataclasses.replace(cfg, **arm)  # its values were checked with the grid's (__post_init__)
            lrs = overrides.get("lrs", cfg.lrs)
            runs += [Run(m, lr, s, arm_cfg) for m in ablation.models for lr in lrs for s in cfg.seeds]
    seen, unique = set(), []
    for run in runs:
        key = run.key(data_sha256)
        if key not in seen:
            seen.add(key)
            unique.append(run)
    return unique


PRESETS: dict[str, RunConfig] = {
    # The paper's protocol (Section 3.2.1): all 12 models, the gamma grid, 350 epochs, x0.1 at 200/250/300.
    "paper": RunConfig(),
    # The same 12 x 4 grid shape on 10 images per class and split, 2 epochs, no drops: the whole path in minutes
    # on 2 CPU cores. Its own data_dir, so it never replaces a full prepared copy in data/. It trains in fp32, not
    # the paper preset's bf16: it is a CPU smoke test of the code path, not the protocol, and bf16 autocast is ~3x
    # slower than fp32 on a CPU without native bf16 (no AVX512-BF16/AMX: convpool-c at batch 64, 15.4 vs 46.9 img/s
    # with bench/throughput.py). A fixed choice, not one per machine, so a run's key does not depend on the CPU;
    # `--precision bf16` still asks for bf16 (tests/test_fidelity.py trains with it).
    "smoke": RunConfig(preset="smoke", epochs=2, lr_drops=(), batch_size=64, subset_per_class=10,
                       data_dir="data/smoke", checkpoint_minutes=0, eval_every=1, precision="no", diagnose=False,
                       save_weights=False),
}


def _ablations():
    from bench import ablations  # not at the top: ablations imports this module for RunConfig

    return ablations
