"""How fast each Table 3 network trains and evaluates, and how close that is to the device's peak (issue 6).

    python bench/throughput.py --device cpu --models allcnn-c --precision fp32 bf16 --json out.json
    accelerate launch bench/throughput.py --precision bf16 --compile      # one benchmark per process, summed

Model-only rows time a training step and an evaluation pass on synthetic data already on the device; end-to-end
rows (`--loaders ffcv torch tensor --data-dir DIR`) time the same step fed by a real loader. See `--help`.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import allconv  # noqa: E402  (specs only: no torch until a network is built)
from bench import devices  # noqa: E402
from loaders import BACKENDS, PREPROCESS  # noqa: E402  (loaders/__init__ imports no torch)

PRECISIONS = {"fp32": None, "no": None, "bf16": "bfloat16", "fp16": "float16"}  # name -> autocast dtype
SGD_IMPLS = ("engine", "for-loop", "foreach", "fused")
"""How torch.optim.SGD applies the update: "engine" as bench/engine.py trains (fused on CUDA, torch's default,
the for-loop, on CPU); the others force one implementation, to measure what it buys."""
SGD_SETTINGS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}  # the paper's SGD; lr does not change speed

COLUMNS = ["model", "display_name", "device", "device_name", "precision", "channels_last", "compile", "batch_size",
           "train_images_per_s", "eval_images_per_s", "train_tflops", "eval_tflops", "peak_tflops", "mfu",
           "eval_mfu", "repeats", "backend", "steps", "warmup", "sgd", "item_every_step", "world_size", "device_count", "threads",
           "peak_precision", "train_spread_pct", "train_cpu_share", "peak_memory_mb", "torch_version", "date"]
"""One row per (model, precision, backend). Images/s are summed over processes (one device each); `mfu` is
the training step's share of the dense peak of all `device_count` devices (a fraction); `train_spread_pct` is
(max - min) / median of the timed windows; `train_cpu_share` (CPU only) is the share of its cores the process got while timed (see `time_windows`)."""


class CliError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise CliError(message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="bench/throughput.py", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["*"], help="API names or fnmatch patterns ('*-c'); default all 12")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], help="any of fp32 (alias no), bf16, fp16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for the model and the batch (default on)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is warm-up)")
    p.add_argument("--batch-size", type=int, default=256, help="images per step and per process")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the first window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported")
    p.add_argument("--sgd", choices=SGD_IMPLS, default="engine", help="SGD update implementation")
    p.add_argument("--item-every-step", action="store_true",
                   help="read the loss on the host after every step (a sync), as a naive loop does")
    p.add_argument("--no-eval", action="store_true", help="time training only")
    p.add_argument("--loaders", nargs="*", default=[], choices=BACKENDS, help="end-to-end rows for these backends")
    p.add_argument("--data-dir", type=Path, default=None, help="prepared data (loaders.prepare) for --loaders")
    p.add_argument("--preprocess", choices=PREPROCESS, default="gcn-zca",
                   help="device-side preprocessing of end-to-end rows (gcn-zca: the paper's)")
    p.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list of dicts")
    p.add_argument("--csv", type=Path, default=None, help="write the rows as CSV, same columns")
    args = p.parse_args(argv)
    for flag in ("batch_size", "steps", "repeats"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        raise CliError(f"--warmup must be 0 or more, got {args.warmup}")
    bad = [p for p in args.precision if p not in PRECISIONS]
    if bad:
        raise CliError(f"unknown precision {', '.join(bad)}; valid: fp32 (or no), bf16, fp16")
    args.precision = list(dict.fromkeys(devices.normalise_precision(p) for p in args.precision))
    args.models = resolve_models(args.models)
    if args.loaders and args.data_dir is None:
        raise CliError("--loaders needs --data-dir (a folder written by loaders.prepare)")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise CliError(f"--data-dir {args.data_dir} is not a folder")
    if args.loaders and not (args.data_dir / "manifest.json").is_file():
        raise CliError(f"--data-dir {args.data_dir} is not prepared (no manifest.json): run python -m loaders.prepare")
    return args


def resolve_models(patterns: list[str]) -> list[str]:
    """Names or fnmatch patterns (also comma-separated) -> API names in Table 3 order."""
    patterns = [p.strip() for arg in patterns for p in arg.split(",") if p.strip()]
    chosen = set()
    for pattern in patterns:
        hits = allconv.list_models(pattern)
        if not hits:
            raise CliError(f"no model matches {pattern!r}; valid names: {', '.join(allconv.VARIANTS)}")
        chosen.update(hits)
    return [name for name in allconv.VARIANTS if name in chosen]


# ---- timing -------------------------------------------------------------------------------------------------

def time_windows(step, device, steps: int, warmup: int, repeats: int) -> tuple[list[float], float | None]:
    """Seconds for each of `repeats` windows of `steps` calls, after `warmup` untimed calls. CUDA is timed with
    events (what the GPU did between them); the CPU with the wall clock after a synchronize.

    Also returns, on the CPU, the share of the cores this process got while timed: its CPU time over wall time
    x torch threads. Well below 1 means other processes took cores and the figure is low by about that much."""
    import torch

    from bench.engine import sync
    for _ in range(warmup):
        step()
    sync(device)
    seconds, cpu0, wall0 = [], time.process_time(), time.perf_counter()
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                step()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            seconds.append(time.perf_counter() - t0)
    if device.type == "cuda":
        return seconds, None
    return seconds, (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * torch.get_num_threads())


def images_per_s(seconds: list[float], images_per_window: int) -> tuple[float, float]:
    """(median images/s, spread in % of the median) over the timed windows."""
    rates = [images_per_window / s for s in seconds]
    median = statistics.median(rates)
    return median, 100.0 * (max(rates) - min(rates)) / median


# ---- the step being timed -----------------------------------------------------------------------------------

def build_model(name: str, device, channels_last: bool, compile: bool):
    """The network as training builds it (paper defaults: dropout, final ReLU), on the device."""
    import torch
    model = allconv.build(name).to(device, memory_format=torch.channels_last if channels_last else
                                   torch.contiguous_format)
    return torch.compile(model) if compile else model


def build_optimizer(model, sgd: str, device):
    """SGD with momentum 0.9 and weight decay 1e-3 (the paper). "engine": what bench/engine.py's training uses
    (fused on CUDA, torch's default elsewhere); the others force one implementation, to measure it."""
    import torch
    if sgd == "engine":
        from bench import engine
        return engine.make_optimizer("sgd", model.parameters(), device=device, **SGD_SETTINGS)
    impl = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[sgd]
    return torch.optim.SGD(model.parameters(), **SGD_SETTINGS, **impl)


class Precision:
    """Stands in for the two Accelerator methods bench/engine.py's step calls (`autocast`, `backward`), so one
    process can time several precisions (Accelerate fixes the mixed precision once per process). Same effect:
    autocast to bf16/fp16 on the device, and for fp16 a GradScaler around backward and the update."""

    def __init__(self, precision: str, device):
        import torch
        self.device = device
        self.dtype = getattr(torch, PRECISIONS[precision]) if PRECISIONS[precision] else None
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self, autocast_handler=None):
        import torch
        enabled = self.dtype is not None and getattr(autocast_handler, "enabled", True)
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def backward(self, loss):
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def wrap(self, optimizer):
        """The optimizer as the step sees it: with a scaler, step() unscales, skips on inf and updates the scale."""
        if self.scaler is None:
            return optimizer
        scaler = self.scaler

        class Scaled:
            def zero_grad(self, set_to_none=True):
                optimizer.zero_grad(set_to_none=set_to_none)

            def step(self):
                scaler.step(optimizer)
                scaler.update()
        return Scaled()


def make_train_step(model, optimizer, precision: str, device, channels_last: bool, preprocess=None):
    """bench/engine.py's `train_step`: preprocess (float32, outside autocast), forward under autocast,
    cross-entropy, backward, update. Returns the summed loss as a device tensor; nothing waits for the device.
    `preprocess` None: the batch is already float (synthetic data)."""
    from bench import engine
    amp = Precision(precision, device)
    optimizer = amp.wrap(optimizer)
    preprocess = preprocess or (lambda images: images)

    def step(images, labels):
        loss_sum, _correct = engine.train_step(model, optimizer, images, labels, preprocess, amp,
                                               channels_last=channels_last)
        return loss_sum
    return step


def make_eval_step(model, precision: str, device, channels_last: bool, preprocess=None):
    """bench/engine.py's `eval_step`: no gradients, autocast forward, number correct (on the device)."""
    from bench import engine
    amp = Precision(precision, device)
    preprocess = preprocess or (lambda images: images)

    def step(images, labels):
        return engine.eval_step(model, images, labels, preprocess, amp, channels_last=channels_last)
    return step


def accumulating(step, batch, device, item_every_step: bool):
    """A no-argument call for `time_windows`. The default keeps the running sum on the device, to be read once
    per epoch; `item_every_step` reads it on the host after each step, which waits for the device each time."""
    import torch
    total = {"value": torch.zeros((), device=device)}

    def call():
        out = step(*batch())
        if item_every_step:
            total["value"] += out.item()
        else:
            total["value"] += out
    return call


def synthetic_batch(batch_size: int, device, channels_last: bool):
    """Whitened-looking float32 images (N(0, 1)) and labels, made once on the device: the model's own speed."""
    import torch
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32, generator=gen).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    return images, labels


def loader_batches(backend: str, split: str, args, device, world_size: int):
    """An endless stream of (uint8 images, labels) batches from a real loader, epoch after epoch; None when the
    backend cannot load here (FFCV is not installed on the GPU machines)."""
    import loaders
    try:
        loader = loaders.make(split, args.batch_size, data_dir=args.data_dir, backend=backend, augment="none",
                              device=device, distributed=world_size > 1, seed=0)
    except loaders.BackendUnavailable as error:  # ffcv is not installed on the GPU machines
        print(f"skipping the {backend} backend: {error}", file=sys.stderr)
        return None

    def forever():  # full batches only: the rate counts steps x --batch-size images
        while True:
            full = 0
            for images, labels in loader:
                if len(labels) == args.batch_size:
                    full += 1
                    yield images, labels
            if not full:
                raise CliError(f"the {split} split in {args.data_dir} has fewer images per process than "
                               f"--batch-size {args.batch_size}: lower it or prepare more data")
    stream = forever()
    return lambda: next(stream)


# ---- one row ------------------------------------------------------------------------------------------------

def data_source(backend: str, args, device, world_size: int):
    """(train batches, test batches or None, preprocess) for one loader backend, built once for all rows; None
    when the backend cannot load here."""
    train_batch = loader_batches(backend, "train", args, device, world_size)
    if train_batch is None:
        return None
    eval_batch = None if args.no_eval else loader_batches(backend, "test", args, device, world_size)
    from loaders.preprocess import build_preprocess
    return train_batch, eval_batch, build_preprocess(args.preprocess, args.data_dir).to(device)


def measure(name: str, precision: str, args, device, backend: str = "synthetic", source=None) -> dict:
    """Time training (and evaluation) of one network at one precision; returns this process's row. End-to-end
    rows take their batches and preprocessing from `source` (`data_source`), as in training."""
    import torch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if source is None:
        images, labels = synthetic_batch(args.batch_size, device, args.channels_last)
        train_batch = eval_batch = lambda: (images, labels)
        preprocess = None
    else:
        train_batch, eval_batch, preprocess = source
    model = build_model(name, device, args.channels_last, args.compile).train()
    optimizer = build_optimizer(model, args.sgd, device)
    train_step = accumulating(make_train_step(model, optimizer, precision, device, args.channels_last, preprocess),
                              train_batch, device, args.item_every_step)
    seconds, cpu_share = time_windows(train_step, device, args.steps, args.warmup, args.repeats)
    train_ips, spread = images_per_s(seconds, args.steps * args.batch_size)
    eval_ips = None
    if not args.no_eval and eval_batch is not None:
        model.eval()
        eval_step = accumulating(make_eval_step(model, precision, device, args.channels_last, preprocess),
                                 eval_batch, device, args.item_every_step)
        seconds, _ = time_windows(eval_step, device, args.steps, args.warmup, args.repeats)
        eval_ips, _ = images_per_s(seconds, args.steps * args.batch_size)
    return {"model": name, "precision": precision, "backend": backend, "train_images_per_s": train_ips,
            "eval_images_per_s": eval_ips, "train_spread_pct": spread, "train_cpu_share": cpu_share,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def complete_row(row: dict, args, device, name_of_device: str, world_size: int, tf32: bool) -> dict:
    """Add the derived figures (FLOP/s from allconv.macs, share of peak) and the run's settings."""
    import torch
    macs = allconv.macs(row["model"])
    train_tflops = devices.tflops(row["train_images_per_s"], devices.train_flop_per_image(macs))
    eval_tflops = devices.tflops(row["eval_images_per_s"], devices.eval_flop_per_image(macs))
    precision = row["precision"]
    out = {"display_name": allconv.VARIANTS[row["model"]], "device": device.type, "device_name": name_of_device,
           "channels_last": args.channels_last, "compile": args.compile, "batch_size": args.batch_size,
           "train_tflops": train_tflops, "eval_tflops": eval_tflops,
           "peak_tflops": devices.peak_tflops(name_of_device, precision, tf32),
           "mfu": devices.mfu(train_tflops, name_of_device, precision, tf32, count=world_size),
           "eval_mfu": devices.mfu(eval_tflops, name_of_device, precision, tf32, count=world_size),
           "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "sgd": args.sgd,
           "item_every_step": args.item_every_step, "world_size": world_size, "device_count": world_size, "threads": torch.get_num_threads(),
           "peak_precision": devices.peak_precision(name_of_device, precision, tf32),
           "torch_version": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return {col: {**row, **out}.get(col) for col in COLUMNS}


def sum_over_processes(row: dict, accelerator) -> dict:
    """Aggregate images/s: the sum of every process's rate (each timed its own device)."""
    if accelerator.num_processes == 1:
        return row
    import torch
    keys = ("train_images_per_s", "eval_images_per_s")
    local = torch.tensor([math.nan if row[k] is None else row[k] for k in keys], dtype=torch.float64,
                         device=accelerator.device)
    total = accelerator.reduce(local, "sum").tolist()
    return {**row, **{k: None if math.isnan(v) else v for k, v in zip(keys, total)}}


def write_outputs(rows: list[dict], json_path: Path | None, csv_path: Path | None) -> None:
    """JSON: a list of dicts; CSV: the same columns (empty cells for None)."""
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(rows, indent=1) + "\n")
    if csv_path:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run(args) -> list[dict]:
    """Benchmark every (model, precision[, backend]) on this process's device; the main process prints."""
    import torch
    from accelerate import Accelerator
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda but CUDA is not available here")
    device_kind = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = Accelerator(cpu=device_kind == "cpu", mixed_precision="no")
    world_size = accelerator.num_processes
    if int(os.environ.get("WORLD_SIZE", "1")) != world_size:  # e.g. --multi_gpu without CUDA or --cpu
        raise CliError(f"launched {os.environ['WORLD_SIZE']} processes but they do not form one group")
    device = accelerator.device
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest conv algorithm for each fixed shape
    name_of_device = devices.device_name(device)
    accelerator.print(f"# {name_of_device} x{world_size}, torch {torch.__version__}, {torch.get_num_threads()} "
                      f"threads, batch {args.batch_size}, channels_last={args.channels_last}, compile={args.compile}, "
                      f"sgd={args.sgd}, {args.repeats} x {args.steps} steps after {args.warmup} warm-up")
    accelerator.print(f"{'model':<16}{'prec':<6}{'backend':<10}{'train img/s':>12}{'eval img/s':>12}"
                      f"{'train TFLOP/s':>15}{'MFU%':>7}{'spread%':>9}{'cpu%':>6}")
    sources = {"synthetic": None}
    for backend in args.loaders:
        source = data_source(backend, args, device, world_size)
        if source is not None:
            sources[backend] = source
    rows = []
    for name in args.models:
        for precision in args.precision:
            for backend, source in sources.items():
                row = measure(name, precision, args, device, backend, source)
                row = complete_row(sum_over_processes(row, accelerator), args, device, name_of_device,
                                   world_size, tf32)
                rows.append(row)
                mfu = None if row["mfu"] is None else 100 * row["mfu"]
                share = None if row["train_cpu_share"] is None else 100 * row["train_cpu_share"]
                accelerator.print(f"{name:<16}{precision:<6}{backend:<10}{row['train_images_per_s']:>12.1f}"
                                  f"{fmt(row['eval_images_per_s'], '.1f'):>12}{row['train_tflops']:>15.4f}"
                                  f"{fmt(mfu, '.1f'):>7}{row['train_spread_pct']:>9.1f}"
                                  f"{fmt(share, '.0f'):>6}")
    if accelerator.is_main_process:
        write_outputs(rows, args.json, args.csv)
    accelerator.wait_for_everyone()  # then destroy the group: a rank that exits while a peer still talks aborts
    accelerator.end_training()
    return rows


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except CliError as error:
        print(f"throughput.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
