"""The paper's Tables 1-3 as plain data (no torch import, so reports can read it too).

Table 1 gives three base networks (families A, B, C); Table 2 four ways to end each stage (variants);
Table 3 the CIFAR-10 test error of each of the twelve combinations. `layers(name)` expands one name
into the exact layer list that `allconv.build` turns into modules and `macs` counts.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

# Table 1: each of the two stages as (kernel, width) convolutions, before the downsampling step.
FAMILIES: dict[str, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {
    "A": ([(5, 96)], [(5, 192)]),
    "B": ([(5, 96), (1, 96)], [(5, 192), (1, 192)]),
    "C": ([(3, 96), (3, 96)], [(3, 192), (3, 192)]),
}
VARIANT_KINDS = ("model", "strided", "convpool", "allcnn")

INITS = ("caffe-xavier", "xavier", "kaiming", "torch")
DEFAULT_INIT = "caffe-xavier"
"""Weight initialisation, which the paper does not state. Default "caffe-xavier": Caffe's XavierFiller
(uniform on +-sqrt(3 / fan_in), zero biases), what the Caffe port of All-CNN-C that reached 90.25% used
(../shared/FACTS.md). "xavier" is Glorot-uniform (fan_in + fan_out), "kaiming" He-normal for ReLU,
"torch" leaves PyTorch's default (kaiming-uniform with a=sqrt(5), uniform biases).
Measured at initialisation on GCN+ZCA-whitened CIFAR-10 (5,000 images, All-CNN-C, eval mode): with
caffe-xavier each conv's output std is about 1/sqrt(2) of the previous one (0.46 -> 0.03 over 9 layers; logits
std 0.013), with kaiming it stays near 0.5-0.7 (logits 0.16). So caffe-xavier runs start slowly (loss near ln 10
for the first ~100-300 steps). Chosen on the measured start of the C family under the paper's defaults
(reports/measured/cpu-init-c-family-2026-11-28.txt: CPU, fp32, batch 256, 50,000 real images, one seed): at
LR 0.05 kaiming kills All-CNN-C and ConvPool-CNN-C (loss at ln 10 from the start: the final ReLU outputs zeros)
while caffe-xavier leaves chance in both (All-CNN-C by step 100 and trained 350 epochs on the GPU; ConvPool-CNN-C
by step 125, dead by 175 in that seed); at LR 0.01 both inits leave chance within 300 steps of the 68,000
(kaiming sooner on All-CNN-C, caffe-xavier on ConvPool-CNN-C). `init="kaiming"` is a switch, recorded with
every result."""

POOL_KERNEL = 3
"""Max-pool 3x3, stride 2 (Table 1). Padding 1 takes 32 -> 16 -> 8, as Caffe's ceil-mode pooling does;
plain `MaxPool2d(3, 2)` would give 15 and 7 and a 5x5 map at the top instead of the paper's 6x6."""
POOL_STRIDE = 2
POOL_PADDING = 1
EXTRA_KERNEL = 3
"""The layer that ConvPool adds before each pool, and that All-CNN puts in place of it, is 3x3 in every
family (it mirrors the 3x3 pooling window, Table 2). Only then do A and B reach the paper's 1.28 M / 1.35 M."""
INPUT_DROPOUT = 0.2
"""Dropout on the input image (Section 3.2.1 of the paper)."""
STAGE_DROPOUT = 0.5
"""Dropout after each pooling layer or the layer that replaces it (for Strided-CNN: after the strided conv)."""

# Shared top (Table 1): 3x3 conv 192 *unpadded* (8x8 -> 6x6), 1x1 conv 192, 1x1 conv to the classes,
# global average over 6x6. The ReLU after the last 1x1 conv is printed in Table 1; `final_relu` switches it.
TOP: list[tuple[int, int | str, int]] = [(3, 192, 0), (1, 192, 0), (1, "classes", 0)]


@dataclass(frozen=True)
class ModelSpec:
    """One row of Table 3: the architecture key and the numbers the paper printed for it.

    A network of one's own is one more entry of SPECS, after the paper's 12: a family of its own in FAMILIES when
    its widths differ, one of Table 2's four variants, `paper_error_pct=math.nan` and `paper_params=""` (the paper
    printed nothing for it), and its exact `num_params` (`python -m allconv NAME` counts it; a test checks every
    spec's). It is trained when `--models` names it (the default grid is Table 3's, `PAPER_MODELS`); reports show
    it after the 12 with no paper number and leave it out of the paper's claims."""

    family: str  # "A" | "B" | "C" (Table 1), or a family of one's own
    variant: str  # "model" | "strided" | "convpool" | "allcnn" (Table 2)
    paper_name: str  # as printed in Table 3
    paper_error_pct: float  # Table 3: CIFAR-10 test error, no augmentation; nan: not in the paper
    paper_params: str  # parameter count as the paper prints it (rounded); "": not in the paper
    num_params: int  # exact, weights + biases, 10 classes, no BN; a test checks it

    @property
    def in_paper(self) -> bool:
        return not math.isnan(self.paper_error_pct)


SPECS: dict[str, ModelSpec] = {  # Table 3's row order; these names are the public API
    "model-a": ModelSpec("A", "model", "Model A", 12.47, "0.9 M", 839_242),
    "strided-a": ModelSpec("A", "strided", "Strided-CNN-A", 13.46, "0.9 M", 839_242),
    "convpool-a": ModelSpec("A", "convpool", "ConvPool-CNN-A", 10.21, "1.28 M", 1_254_250),
    "allcnn-a": ModelSpec("A", "allcnn", "All-CNN-A", 10.30, "1.28 M", 1_254_250),
    "model-b": ModelSpec("B", "model", "Model B", 10.20, "1 M", 885_610),
    "strided-b": ModelSpec("B", "strided", "Strided-CNN-B", 10.98, "1 M", 885_610),
    "convpool-b": ModelSpec("B", "convpool", "ConvPool-CNN-B", 9.33, "1.35 M", 1_300_618),
    "allcnn-b": ModelSpec("B", "allcnn", "All-CNN-B", 9.10, "1.35 M", 1_300_618),
    "model-c": ModelSpec("C", "model", "Model C", 9.74, "1.3 M", 954_730),
    "strided-c": ModelSpec("C", "strided", "Strided-CNN-C", 10.19, "1.3 M", 954_730),
    "convpool-c": ModelSpec("C", "convpool", "ConvPool-CNN-C", 9.31, "1.4 M", 1_369_738),
    "allcnn-c": ModelSpec("C", "allcnn", "All-CNN-C", 9.08, "1.4 M", 1_369_738),
}
VARIANTS: dict[str, str] = {name: spec.paper_name for name, spec in SPECS.items()}
"""The API names in Table 3 order (then any network of one's own), each mapped to its display name."""
PAPER_MODELS: tuple[str, ...] = tuple(name for name, spec in SPECS.items() if spec.in_paper)
"""Table 3's 12 API names: the default grid of bench/run_all.py and the models of the paper's claims."""

PAPER_AUGMENTED_ERROR_PCT = {"allcnn-c": 7.25}
"""Table 4: All-CNN-C with horizontal flips and translations of up to 5 px (quoted second-hand, approximate)."""


@dataclass(frozen=True)
class Conv:
    kernel: int
    out: int
    stride: int = 1
    padding: int | None = None  # None: "same" padding, kernel // 2

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding is None else self.padding


@dataclass(frozen=True)
class Pool:
    """3x3 max-pool, stride 2, padding 1 (see POOL_PADDING)."""


@dataclass(frozen=True)
class Drop:
    p: float


Layer = Conv | Pool | Drop


def get_spec(name: str) -> ModelSpec:
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(SPECS)}")
    return SPECS[name]


def list_models(pattern: str = "*") -> list[str]:
    """Names matching an fnmatch pattern (as timm.list_models), in Table 3 order: list_models('*-c')."""
    return [name for name in SPECS if fnmatch.fnmatchcase(name, pattern)]


def resolve_models(patterns) -> list[str]:
    """API names or fnmatch patterns (also comma-separated: "model-*,allcnn-c") -> API names in Table 3 order, each
    once. One helper for `python -m allconv`, bench/run_all.py and bench/throughput.py; a pattern that matches
    nothing raises a ValueError naming the valid names."""
    chosen = set()
    for pattern in (p.strip() for arg in patterns for p in arg.split(",") if p.strip()):
        hits = list_models(pattern)
        if not hits:
            raise ValueError(f"no model matches {pattern!r}; valid names: {', '.join(SPECS)}")
        chosen.update(hits)
    return [name for name in SPECS if name in chosen]


def downsample_stage(convs: list[tuple[int, int]], variant: str) -> list[Layer]:
    """Table 2 as one function: how each variant ends a stage of Table 1 convolutions."""
    *rest, (k, width) = convs
    body = [Conv(kk, w) for kk, w in convs]
    match variant:
        case "model":  # keep the 3x3 max-pool, stride 2
            return [*body, Pool()]
        case "strided":  # remove the pool; the conv before it takes stride 2 (for B: the 1x1 conv)
            return [*(Conv(kk, w) for kk, w in rest), Conv(k, width, stride=2)]
        case "convpool":  # a dense 3x3 conv of the same width before the pool
            return [*body, Conv(EXTRA_KERNEL, width), Pool()]
        case "allcnn":  # the pool becomes a 3x3 conv of the same width, stride 2
            return [*body, Conv(EXTRA_KERNEL, width, stride=2)]
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANT_KINDS)}")


def stages(name: str, num_classes: int = 10) -> dict[str, list[Layer]]:
    """The network as named stages of layers, without dropout: stage1, stage2 (each ending in its
    downsampling step) and top. `layers` adds the dropout positions."""
    spec = get_spec(name)
    first, second = FAMILIES[spec.family]
    top = [Conv(k, num_classes if w == "classes" else w, 1, pad) for k, w, pad in TOP]
    return {
        "stage1": downsample_stage(first, spec.variant),
        "stage2": downsample_stage(second, spec.variant),
        "top": top,
    }


def conv_shapes(name: str, num_classes: int = 10, image_size: int = 32, in_channels: int = 3):
    """(stage, conv, in_channels, out_hw) for every conv in order; the spatial bookkeeping in one place."""
    hw, cin, out = image_size, in_channels, []
    for stage, layers in stages(name, num_classes).items():
        for layer in layers:
            if isinstance(layer, Conv):
                hw = (hw + 2 * layer.pad - layer.kernel) // layer.stride + 1
                out.append((stage, layer, cin, hw))
                cin = layer.out
            elif isinstance(layer, Pool):
                hw = (hw + 2 * POOL_PADDING - POOL_KERNEL) // POOL_STRIDE + 1
    return out, hw


def macs(name: str, image_size: int = 32, num_classes: int = 10) -> int:
    """Forward multiply-accumulates per image, from the spec alone (convolutions; pooling, ReLU, biases
    and averaging are not MACs). All-CNN-C: 270,798,336."""
    if num_classes < 1 or image_size < 1:
        raise ValueError(f"num_classes and image_size must be positive, got {num_classes}, {image_size}")
    convs, _ = conv_shapes(name, num_classes, image_size)
    return sum(c.kernel * c.kernel * cin * c.out * hw * hw for _, c, cin, hw in convs)


def built_otherwise(name: str, recorded_macs) -> bool:
    """Whether a run recorded `recorded_macs` forward MACs per image for a network this code builds otherwise under
    `name` (a network of one's own edited after its runs: the name stays, the layers change). An unknown name or
    count says nothing."""
    return name in SPECS and recorded_macs is not None and int(recorded_macs) != macs(name)


def num_params(name: str, num_classes: int = 10, bn: bool = False) -> int:
    """Exact trainable parameters. Without BN each conv has weights and a bias; with BN the conv bias
    is dropped (BN's shift replaces it) and BN adds a scale and a shift per channel."""
    convs, _ = conv_shapes(name, num_classes)
    weights = sum(c.kernel * c.kernel * cin * c.out for _, c, cin, _ in convs)
    return weights + sum((2 if bn else 1) * c.out for _, c, _, _ in convs)
