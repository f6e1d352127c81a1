"""The ablations, declared as data (no torch import: the reports read this file too).

Each ablation is a named set of arms; an arm is a set of run-config overrides on top of BASELINE, the
paper's protocol. A run belongs to an arm when its model is one the ablation studies and its value of
every BASELINE field equals the arm's (overrides first, BASELINE otherwise): so the baseline arm of every
ablation is the same run as the plain Table 3 grid run, trained once and shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.config import RunConfig  # config imports this module only inside functions

BASELINE_FIELDS = ("bn", "dropout", "final_relu", "optimizer", "augment", "train_split", "precision")
"""The fields an ablation varies. Their BASELINE values are RunConfig's defaults, the paper's protocol: no batch
norm; dropout 20% on the input and 50% after each downsampling step; the ReLU after the last 1x1 conv (Table 1);
SGD with momentum 0.9 and weight decay 1e-3; no augmentation (Table 3); all 50k training images with the LR judged
on the test set, as the paper does; bf16 autocast in training (our default for speed; the precision ablation checks
it changes nothing), evaluation in fp32 (`eval_precision` "no"). The precision ablation's "fp32" arm is full fp32:
autocast off in training and evaluation and, on CUDA, TF32 off for its convolutions and matmuls
(`bench.engine.full_fp32`: cuDNN would otherwise run "fp32" convolutions in TF32 on Ampere and later)."""
BASELINE: dict[str, object] = {k: getattr(RunConfig(), k) for k in BASELINE_FIELDS}


@dataclass(frozen=True)
class Ablation:
    title: str
    arms: dict[str, dict]  # arm label -> overrides of BASELINE fields (and optionally "lrs"); first is the baseline
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
        note="fp32 = autocast off and TF32 off on CUDA (bench.engine.full_fp32); both arms evaluate in fp32."),
}


def arm_values(ablation: Ablation, arm: str) -> dict[str, object]:
    """The BASELINE fields as an arm sets them."""
    overrides = ablation.arms[arm]
    return {k: overrides.get(k, v) for k, v in BASELINE.items()}


def arm_of(record: dict, name: str) -> str | None:
    """The label of the arm of ablation `name` that a run (ledger record or resolved config) belongs to."""
    ablation = ABLATIONS[name]
    if record.get("model") not in ablation.models:
        return None
    for arm in ablation.arms:
        if all(record.get(k) == v for k, v in arm_values(ablation, arm).items()):
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
