"""How the benchmark times a training or evaluation step (bench/throughput.py, tests/benchmarks): the step as
training runs it (bench/engine.py's, under this process's one Accelerator), the batches it is fed (synthetic, or a
loader's full batches) and the clock around it.

    acc = make_accelerator(["no", "bf16"], "cpu")
    model = build_model("allcnn-c", acc.device, channels_last=True, compile=False)
    step = make_step(model, acc, "bf16", True, optimizer=build_optimizer(model, acc.device))
    seconds, cpu_share = time_windows(accumulating(step, lambda: batch, acc.device), acc.device, 20, 5, 5)
"""
from __future__ import annotations

import statistics
import time

import allconv

SGD_SETTINGS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}  # the paper's SGD; lr does not change speed


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


def build_optimizer(model, device):
    """What bench/engine.py's training uses: SGD with momentum 0.9 and weight decay 1e-3 (the paper), fused on
    CUDA, torch's default elsewhere."""
    from bench import engine
    return engine.make_optimizer("sgd", model.parameters(), device=device, **SGD_SETTINGS)


def make_accelerator(precisions: list[str], device_kind: str):
    """This process's one Accelerator: at the bf16 or fp16 asked for, else "no"; fp32 rows turn autocast off
    under it (engine.autocast_for), as run_all's fp32 runs do. Accelerate keeps one state per process, so a caller
    that benchmarks again in the same process (the tests) starts a fresh one."""
    from accelerate.state import AcceleratorState

    from bench import process
    AcceleratorState._reset_state()
    mixed = [p for p in precisions if p != "no"]
    return process.make_accelerator(mixed[0] if mixed else "no", cpu=device_kind == "cpu")


def make_step(model, accelerator, precision: str, channels_last: bool, preprocess=None, optimizer=None,
              cuda_graphs: bool = False):
    """bench/engine.py's step at `precision` ("no" | the Accelerator's) as `step(images, labels)`. With an optimizer,
    `train_step` (preprocess in float32 outside autocast, forward under autocast, cross-entropy, backward, scaled
    for fp16, update), returning the summed loss; without, `eval_step`, returning the number correct. Both stay on
    the device: nothing waits for it. `preprocess` None: the batch is already float (synthetic). `cuda_graphs`:
    the training step replayed from a CUDA graph (bench/graphs.py; captured within the first 4 calls)."""
    from bench import engine
    autocast = engine.autocast_for(precision, accelerator)
    preprocess = preprocess or (lambda images: images)
    if optimizer is None:
        return lambda images, labels: engine.eval_step(model, images, labels, preprocess, accelerator, autocast,
                                                       channels_last)[0]
    optimizer = accelerator.prepare_optimizer(optimizer)  # the grad scaler (fp16); no DDP wrapper
    if cuda_graphs:
        from bench.graphs import graphed_train_step
        graphed = graphed_train_step(model, optimizer, preprocess, accelerator, autocast, channels_last)
        return lambda images, labels: graphed(images, labels)[0]
    return lambda images, labels: engine.train_step(model, optimizer, images, labels, preprocess, accelerator,
                                                    autocast, channels_last)[0]


def make_fused_step(name: str, accelerator, precision: str, channels_last: bool, runs: int, preprocess=None,
                    cuda_graphs: bool = False):
    """`runs` copies of the network (one seed, each its own SGD, LRs 0.01 apart: the LR does not change speed) as one
    bench.fused.FusedRuns group, as `step(images, labels)` returning the group's summed loss on the device: one
    call trains every run on the batch (replayed from a CUDA graph with `cuda_graphs`, as run_all --fuse-lrs
    --cuda-graphs does). At precision "no" or "bf16" (FusedRuns casts to bf16 itself: autocast does not reach inside
    vmap); None at fp16, which FusedRuns refuses."""
    import torch

    from bench.fused import DTYPES, FusedRuns
    if precision not in DTYPES:
        return None
    nets, optimizers = [], []
    for k in range(runs):
        torch.manual_seed(0)
        nets.append(build_model(name, accelerator.device, channels_last, compile=False).train())
        optimizers.append(build_optimizer(nets[-1], accelerator.device))
        optimizers[-1].param_groups[0]["lr"] = SGD_SETTINGS["lr"] * (k + 1)
    group = FusedRuns(nets, optimizers, preprocess=preprocess, precision=precision, channels_last=channels_last)
    step = group.train_step
    if cuda_graphs:
        from bench.graphs import GraphedStep
        step = GraphedStep(group.train_step, accelerator.device)
    return lambda images, labels: step(images, labels)[0].sum()


def accumulating(step, batch, device):
    """A no-argument call for `time_windows` that keeps the running sum on the device, as training does (a read
    per step would wait for the device each time)."""
    import torch
    total = {"value": torch.zeros((), device=device)}

    def call():
        total["value"] += step(*batch())
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


def loader_batches(cache, split: str, batch_size: int):
    """An endless stream of full (uint8 images, labels) batches from the loaders.Cache's loader, epoch after
    epoch (the rate counts steps x batch_size images, so a short last batch is skipped). Too few images for one
    full batch is a ValueError now, before anything is timed."""
    loader = cache.loader(split)
    if loader.num_images < batch_size:  # this process's images per epoch
        raise ValueError(f"the {split} split in {cache.data_dir} has fewer images per process ({loader.num_images}) "
                         f"than --batch-size {batch_size}: lower it or prepare more data")

    def forever():  # batches are yielded as they come: FFCV reuses its buffers a few batches later
        while True:
            for images, labels in loader:
                if len(labels) == batch_size:
                    yield images, labels
    stream = forever()
    return lambda: next(stream)
