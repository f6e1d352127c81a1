"""The ablations, declared as data (no torch import: the reports read this file too).

Each ablation is a named set of arms; an arm is a set of run-config overrides (any RunConfig field that changes a
run's result, and `lrs`, an LR grid of its own) on top of the grid's config, the paper's protocol under the paper
preset (`arm_overrides`): so the first arm of every ablation, which overrides nothing, is the same run as the plain
Table 3 grid run, trained once and shared.

To add an ablation, add an entry to ABLATIONS: `--ablations NAME` trains it and `python -m reports` shows its table;
a mistyped or unusable field is refused when this module is imported.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

from bench.config import NOT_IN_KEY, RunConfig  # config imports this module only inside functions
from bench.devices import PRECISION_LABELS  # no torch


@dataclass(frozen=True)
class Ablation:
    title: str
    arms: dict[str, dict]  # arm label -> RunConfig overrides (and optionally "lrs"); the first, {}, is the baseline
    models: tuple[str, ...] = ("allcnn-c",)
    paper_error_pct: dict[str, float] = field(default_factory=dict)  # arm label -> the paper's figure, if any
    note: str = ""


ABLATIONS: dict[str, Ablation] = {
    "bn-dropout": Ablation(
        "Batch norm x dropout",
        {"dropout, no BN (paper)": {}, "BN + dropout": {"bn": True},
         "neither": {"dropout": False}, "BN, no dropout": {"bn": True, "dropout": False}},
        note="BN is not in the paper; dropout is."),
    "optimizer": Ablation(
        "Optimizer",
        {"SGD momentum 0.9 (paper)": {},
         "Adam": {"optimizer": "adam", "lrs": (3e-3, 1e-3, 3e-4, 1e-4)}},
        note="Adam gets its own LR grid: the SGD grid diverges with Adam."),
    "head": Ablation(
        "Head: ReLU before global averaging",
        {"final ReLU (paper, Table 1)": {}, "no final ReLU (softmax head)": {"final_relu": False}},
        models=("model-c", "allcnn-c"),
        note="The final ReLU is a known cause of runs stuck at 10% accuracy."),
    "augmentation": Ablation(
        "Augmentation",
        {"none (Table 3)": {}, "flip + translate 5 px (Table 4)": {"augment": "flip-translate"}},
        paper_error_pct={"none (Table 3)": 9.08, "flip + translate 5 px (Table 4)": 7.25}),
    "lr-selection": Ablation(
        "LR selection protocol",
        {"judged on test (paper)": {}, "judged on val5k, trained on train45k": {"train_split": "train45k"}},
        note="The honest protocol trains on 45k images and picks the LR on the 5k held out."),
    "precision": Ablation(
        "Precision",
        {"bf16 autocast (default)": {}, "fp32": {"precision": "no"}},
        note="fp32 = autocast off and TF32 off on CUDA (bench.engine.full_fp32); both arms evaluate without autocast "
             "(the bf16 arm's convolutions in TF32 on CUDA)."),
    "init": Ablation(
        "Weight initialisation (paper: unstated)",
        {"caffe-xavier (Caffe port)": {}, "kaiming": {"init": "kaiming"}},
        models=("convpool-c", "allcnn-c"),
        note="On CPU, kaiming left both models at chance at LR 0.05 (reports/measured/cpu-init-c-family-*.txt)."),
    "batch-size": Ablation(
        "Batch size (paper: unstated)",
        {"256 (Caffe port)": {}, "128": {"batch_size": 128}},
        note="Same LR grid and epochs: the smaller batch takes more SGD steps per epoch."),
    "preprocessing": Ablation(
        "Input preprocessing",
        {"GCN + ZCA whitening (paper)": {}, "per-channel mean/std": {"preprocess": "meanstd"},
         "GCN + ZCA, filter bias 1.0": {"preprocess": "gcn-zca-fb1"}},
        note="Whitening is the paper's (as maxout's); per-channel standardisation is what most PyTorch ports use. On "
             "lossy data, whitening rescales what the compression left (reports/measured/cpu-zca-spectrum-*.txt), and "
             "with the paper's filter bias 0.1 it amplifies most the directions where JPEG's error lives; bias 1.0 "
             "amplifies them less (reports/measured/cpu-jpeg-whitening-*.txt)."),
}


NOT_ARM_FIELDS = ("model", "lr", "seed", "preset", "models", "lrs", "seeds", "ablations", "eval_precision", "epochs",
                  "subset_per_class")
"""What an arm may not set (besides `lrs`, its own LR grid): what the grid varies; `eval_precision`, which follows
`precision` in an fp32 arm; `epochs` (a report compares runs of one length) and `subset_per_class` (the data is
prepared once for the grid). Nor may it set a field outside the run key (bench.config.NOT_IN_KEY): two arms would
then be one run."""


def check(name: str, ablation: Ablation) -> None:
    """Raise a ValueError, naming the ablation and the field, unless every arm sets only fields of RunConfig that
    change what a run computes (and `lrs`), each to a value of the field's type (`lrs`: a non-empty tuple of LRs
    > 0): an arm on any other field would train or report as its baseline, and a value of another type (`0` for
    False, `"lrs": 0.1`) would stop run_all with a traceback, before or after training the run."""
    fields = {f.name for f in dataclasses.fields(RunConfig)} - set(NOT_IN_KEY) - set(NOT_ARM_FIELDS)
    hints = typing.get_type_hints(RunConfig)
    for arm, overrides in ablation.arms.items():
        bad = sorted(set(overrides) - fields - {"lrs"})
        if bad:
            raise ValueError(f"ablation {name!r}, arm {arm!r}: {', '.join(bad)} cannot be varied by an arm; "
                             f"use fields of bench.config.RunConfig that change a run's result")
        for field_name, value in overrides.items():
            lrs = field_name == "lrs"
            if not (_fits(value, hints["lrs"]) and value and all(v > 0 and math.isfinite(v) for v in value)
                    if lrs else _fits(value, hints[field_name])):
                want = "a non-empty tuple of learning rates > 0" if lrs else _type_name(hints[field_name])
                raise ValueError(f"ablation {name!r}, arm {arm!r}: {field_name} must be {want}, got {value!r:.60}")
    if next(iter(ablation.arms.values()), None) != {}:
        raise ValueError(f"ablation {name!r}: its first arm is the baseline and must override nothing ({{}})")


def _fits(value, hint) -> bool:
    """Whether `value` is of the RunConfig type `hint` (bool is not a number here; a tuple field takes a tuple)."""
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    """How a RunConfig type reads in an error: "True or False", "a number", "a tuple, each item an int", "an int or
    None"."""
    if typing.get_origin(hint) is tuple:
        return f"a tuple, each item {_type_name(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return {bool: "True or False", float: "a number", int: "an int", str: "a str", type(None): "None"}.get(hint, str(hint))


def varied(ablation: Ablation) -> tuple[str, ...]:
    """The config fields this ablation's arms set, in the order they first appear (its labels speak of these)."""
    return tuple(dict.fromkeys(k for arm in ablation.arms.values() for k in arm if k != "lrs"))


for _name, _ablation in ABLATIONS.items():
    check(_name, _ablation)

BASELINE_FIELDS = tuple(dict.fromkeys(k for a in ABLATIONS.values() for k in varied(a)))
"""The fields an ablation varies: every field some arm overrides (so a new ablation needs no other edit). Their
BASELINE values are RunConfig's defaults, the paper's protocol: no batch norm; dropout 20% on the input and 50% after
each downsampling step; SGD (momentum 0.9 and weight decay 1e-3 are RunConfig's, not varied here); the ReLU after the
last 1x1 conv (Table 1); no augmentation (Table 3); all 50k training images with the LR judged on the test set, as
the paper does; bf16 autocast in training (our default for speed; the precision ablation checks it changes nothing;
evaluation runs in fp32 either way); and the two choices the paper leaves open, taken from the Caffe port that reached 90.25%:
`caffe-xavier` init and batch 256. The precision ablation's "fp32" arm is full fp32: autocast off in training and
evaluation and, on CUDA, TF32 off for its convolutions and matmuls (`bench.engine.full_fp32`: cuDNN would otherwise
run "fp32" convolutions in TF32 on Ampere and later)."""
BASELINE: dict[str, object] = {k: getattr(RunConfig(), k) for k in BASELINE_FIELDS}


def baseline(preset: str | None = "paper") -> dict[str, object]:
    """The BASELINE fields as `preset` sets them (the smoke preset trains in fp32 at batch 64); BASELINE for a
    preset this version does not know."""
    from bench.config import PRESETS  # not at the top: bench.config builds PRESETS after RunConfig

    cfg = PRESETS.get(preset, RunConfig())
    return as_recorded({k: getattr(cfg, k) for k in BASELINE_FIELDS})


def arm_values(ablation: Ablation, arm: str, preset: str | None = "paper") -> dict[str, object]:
    """The BASELINE fields as an arm sets them, on top of `preset`'s values."""
    return {**baseline(preset), **as_recorded(arm_overrides(ablation, arm))}


def as_recorded(values: dict) -> dict:
    """Config values as a record's JSON holds them, to compare with one: a tuple (lr_drops) as a list, since
    (200, 250, 300) != [200, 250, 300] would set every run apart from its preset's values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def arm_overrides(ablation: Ablation, arm: str) -> dict[str, object]:
    """The config fields an arm sets on top of the grid's config, as its runs are trained (bench.config.expand)
    and found on top of Table 3's (reports.tables.arm_config): its overrides without `lrs` (the first arm sets
    none: it is the grid's own run); a precision by its label ("fp32") by its name ("no"), as on the command line;
    an fp32 arm evaluates in fp32 too."""
    overrides = {k: v for k, v in ablation.arms[arm].items() if k != "lrs"}
    if "precision" in overrides:
        overrides["precision"] = {label: name for name, label in PRECISION_LABELS.items()}.get(
            overrides["precision"], overrides["precision"])
    if overrides.get("precision") == "no":
        overrides["eval_precision"] = "no"
    return overrides


def off_baseline(config: dict, ignore: tuple[str, ...] = ()) -> dict[str, object]:
    """The BASELINE fields (but those in `ignore`) where a run's config, as a record holds it, is not its preset's
    value, with the run's values: {} for a run of a grid at its preset's values, {"preprocess": "meanstd"} for an
    arm on top of it. reports.ledger counts them to find Table 3's config; the campaign table and
    scripts/campaign.sh's summary name them, as bench.plan names an arm's, to tell the runs of one model, LR
    and seed apart."""
    return {k: config.get(k) for k, v in baseline(config.get("preset")).items()
            if k not in ignore and config.get(k) != v}


def arm_label(config: dict) -> str:
    """" [preprocess=meanstd]" for an ablation arm's run (`off_baseline`), "" for a run of the grid at its preset's
    values: what tells apart, in the campaign's table and log, the runs of one model, LR and seed."""
    changed = ", ".join(f"{k}={v}" for k, v in off_baseline(config).items())
    return f" [{changed}]" if changed else ""


def arm_of(config: dict, name: str) -> str | None:
    """The label of the arm of ablation `name` that a run of a grid at its preset's values belongs to, from its
    resolved config (or ledger record): its model is one the ablation studies and every field an ablation varies
    has the arm's value (`arm_values`). The reports look on top of Table 3's config instead, whatever the grid's
    options were (reports.tables.ablation_runs)."""
    ablation = ABLATIONS[name]
    if config.get("model") not in ablation.models:
        return None
    for arm in ablation.arms:
        if all(config.get(k) == v for k, v in arm_values(ablation, arm, config.get("preset")).items()):
            return arm
    return None


def parse(spec: str) -> list[str]:
    """`--ablations none|all|NAME,...` -> names; unknown names raise a ValueError listing the valid ones."""
    if spec in ("", "none"):
        return []
    if spec == "all":
        return list(ABLATIONS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in ABLATIONS]
    if bad:
        raise ValueError(f"unknown ablation {', '.join(bad)}; valid: none, all, {', '.join(ABLATIONS)}")
    return names
