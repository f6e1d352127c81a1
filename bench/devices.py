"""Peak dense throughput of known accelerators, for the share of peak (MFU) that the benchmark reports.

    from bench.devices import peak_tflops, mfu
    peak_tflops("NVIDIA H100 80GB HBM3", "bf16")   # 989.0 (H100 SXM, dense bf16 tensor core)
    mfu(300.0, "NVIDIA H100 80GB HBM3", "bf16")     # 0.303

No torch import: the reports read this file. Names are what `torch.cuda.get_device_name()` returns.
"""
from __future__ import annotations

import re

PRECISIONS = ("bf16", "fp16", "tf32", "fp32")
"""Columns of the table. bf16/fp16/tf32: tensor-core peaks, DENSE (the datasheets print 2x that "with sparsity",
which plain convolutions never use). fp32: plain (non-tensor-core) FP32. Note that PyTorch runs fp32 convolutions
on Ampere and newer GPUs in TF32 by default (`torch.backends.cudnn.allow_tf32` is True), so an "fp32" run there
is measured against the tf32 column: see `peak_precision`."""

PRECISION_LABELS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
"""The one precision vocabulary: Accelerate's names (every config, CLI and record) -> the label people read (reports,
throughput rows, the peak table's columns). Every CLI also accepts a label for its name ("fp32" for "no")."""


def precision_label(value):
    """The label people read for a precision name ("no" -> "fp32"); a label, or a value an old file holds that is
    neither, as given."""
    return PRECISION_LABELS.get(value, value)


def precision_name(text: str) -> str:
    """Accelerate's name for a precision given by name or label: "fp32" -> "no", "bf16" -> "bf16"; unknown raise."""
    names = {**{label: name for name, label in PRECISION_LABELS.items()}, **{name: name for name in PRECISION_LABELS}}
    if text not in names:
        raise ValueError(f"unknown precision {text}; valid: no (or fp32), bf16, fp16")
    return names[text]


PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    # regex on the device name -> dense TFLOP/s per precision, from NVIDIA's datasheets (per GPU, boost clock).
    # Order matters: the first pattern that matches wins, so specific names come before general ones.
    # None: the precision has no tensor-core support on that device (the peak would be meaningless).
    r"\bH100\b.*(SXM|HBM3)": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0},  # H100 SXM5 80GB
    r"\bH100\b.*PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
    r"\bH200\b.*NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},  # H200 NVL (PCIe)
    r"\bH200\b": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0},  # H200 SXM: H100 SXM's compute
    r"\bGH200\b": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0},  # Grace Hopper: H100 SXM's GPU
    r"\bA100\b": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},  # SXM4 and PCIe, 40 and 80 GB
    r"\bL40S\b": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    r"\bL40\b": {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5},
    r"\bL4\b": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    r"\bA10\b": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},  # A10, not A10G (AWS) or A100
    r"\bV100\b.*SXM": {"bf16": None, "fp16": 125.0, "tf32": None, "fp32": 15.7},
    r"\bV100\b.*PCI": {"bf16": None, "fp16": 112.0, "tf32": None, "fp32": 14.0},
    r"\bT4\b": {"bf16": None, "fp16": 65.0, "tf32": None, "fp32": 8.1},
}
"""Deliberately absent (so "unknown"): CPUs, H100 NVL (its datasheet changed between editions), A10G, consumer
cards (GeForce halves the fp32-accumulate tensor rate), AMD and Blackwell parts. Add a row when one is measured."""


def normalise_precision(precision: str) -> str:
    """The peak table's column for a precision name or label ("no"/"fp32" -> "fp32"; "tf32" as itself)."""
    return "tf32" if precision == "tf32" else PRECISION_LABELS[precision_name(precision)]


def match_device(device_name: str | None) -> str | None:
    """The PEAK_TFLOPS pattern that names this device, or None when the device is not in the table."""
    if not device_name:
        return None
    for pattern in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return pattern
    return None


def peak_precision(device_name: str | None, precision: str, tf32: bool = False) -> str:
    """The column an achieved figure is compared with: fp32 runs whose convolutions use TF32 (PyTorch's default
    on Ampere and newer) are compared with the tf32 peak, where the device has one."""
    column = normalise_precision(precision)
    pattern = match_device(device_name)
    if column == "fp32" and tf32 and pattern and PEAK_TFLOPS[pattern].get("tf32"):
        return "tf32"
    return column


def peak_tflops(device_name: str | None, precision: str, tf32: bool = False) -> float | None:
    """Dense peak TFLOP/s of a device at a precision; None for unknown devices (every CPU) or precisions the
    device has no tensor cores for. tf32=True: an fp32 run with TF32 convolutions (see `peak_precision`)."""
    pattern = match_device(device_name)
    if pattern is None:
        return None
    return PEAK_TFLOPS[pattern].get(peak_precision(device_name, precision, tf32))


def mfu(achieved_tflops: float | None, device_name: str | None, precision: str, tf32: bool = False,
        count: int = 1) -> float | None:
    """Model FLOP utilisation: achieved / (peak x count), a fraction (0.30 = 30%), where `count` is how many such
    devices produced `achieved_tflops` together; None when the peak is unknown."""
    peak = peak_tflops(device_name, precision, tf32)
    if peak is None or achieved_tflops is None:
        return None
    return achieved_tflops / (peak * max(1, int(count)))


def device_name(device) -> str:
    """The name the peak table and every result record use: what `torch.cuda.get_device_name` says for a GPU,
    "CPU: <model name>" from /proc/cpuinfo for a CPU. `device` is a torch.device."""
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return "CPU: " + (platform.processor() or platform.machine())


def train_flop_per_image(macs_per_image: int) -> int:
    """Training FLOP per image: forward + backward ~ 3x forward (backward computes gradients for both inputs and
    weights), 2 FLOP per multiply-accumulate. The convention MFU figures (PaLM, airbench) use."""
    return 3 * 2 * macs_per_image


def eval_flop_per_image(macs_per_image: int) -> int:
    """Evaluation FLOP per image: the forward pass only, 2 FLOP per multiply-accumulate."""
    return 2 * macs_per_image


def tflops(images_per_s: float | None, flop_per_image: int) -> float | None:
    """Achieved TFLOP/s from a throughput and a per-image FLOP count."""
    if images_per_s is None:
        return None
    return images_per_s * flop_per_image / 1e12
