"""The training loop's pieces for `bench/run_all.py`: one step, one epoch (`EpochState`: its sums so far) and
evaluation; a run's state across epochs and its checkpoints are bench/run_state.py's (`RunState`).

    loss, correct = train_step(model, optimizer, images, labels, preprocess, accelerator)  # also bench/throughput.py
    stats = train_one_epoch(model, optimizer, loader, preprocess, accelerator, ...)
    correct, seen, seconds = evaluate(model, loader, preprocess, accelerator, distributed=...)

Losses and accuracies accumulate on the device and are read once per epoch: no `.item()` inside the step loop.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate.utils import AutocastKwargs

STOP_CHECK_EVERY = 25
"""In DDP mode the ranks agree on a SIGTERM stop with one all-reduce of a flag every this many steps (a host sync
per step would stall a GPU); in grid mode a process checks its own flag every step."""


def lr_at(epoch: int, base_lr: float, drops: tuple[int, ...]) -> float:
    """The paper's schedule: gamma x 0.1 for each drop epoch already reached (epoch is 0-based: the LR drops after
    `drops[i]` epochs have been trained)."""
    return base_lr * 0.1 ** sum(epoch >= d for d in drops)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float, device: torch.device):
    """SGD with momentum and L2 weight decay (the paper), or Adam with the same L2 decay (the ablation).
    Fused kernels on CUDA (one launch for all parameters); torch's default implementation elsewhere."""
    fused = {"fused": True} if device.type == "cuda" else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    raise ValueError(f"unknown optimizer {name!r}")


def autocast_for(precision: str, accelerator) -> AutocastKwargs:
    """A run's autocast setting. The Accelerator's mixed precision is fixed per process, so an fp32 run
    ("no", the precision ablation) under a bf16 Accelerator turns autocast off instead."""
    return AutocastKwargs(enabled=precision != "no" and accelerator.native_amp)


@contextmanager
def full_fp32(device: torch.device, on: bool):
    """With `on` and on CUDA: TF32 off for convolutions and matmuls while the block runs, restored after. cuDNN's
    default lets "fp32" convolutions run in TF32 (10-bit mantissa) on Ampere and later; the paper trained in fp32,
    so a run at precision "no" (the precision ablation's fp32 arm) is fp32 throughout."""
    if not (on and device.type == "cuda"):
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def sync(device: torch.device) -> None:
    """Wait for queued device work before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_input(images: torch.Tensor, preprocess, channels_last: bool) -> torch.Tensor:
    x = preprocess(images)  # float32, outside autocast: ZCA amplifies any rounding of low-variance directions
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(model, optimizer, images, labels, preprocess, accelerator, autocast: AutocastKwargs | None = None,
               channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on one batch. Returns (summed loss, number correct), detached, still on the device."""
    x = prepare_input(images, preprocess, channels_last)
    with accelerator.autocast(autocast):
        logits = model(x)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    with torch.no_grad():
        correct = (logits.argmax(1) == labels).sum()
    return loss.detach() * labels.shape[0], correct


@dataclass
class EpochState:
    """What one epoch has accumulated so far (device tensors, read once at its end) and its timing. Saved in a
    mid-epoch checkpoint, so a resumed epoch ends with the same sums as an uninterrupted one: in DDP mode the saved
    sums are those of all ranks and rank 0 alone resumes them, so this holds for another process count too."""
    step: int = 0  # batches done in this epoch
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    train_seconds: float = 0.0
    steady_seconds: float = 0.0  # after the warm-up steps
    steady_images: int = 0  # images in steady_seconds: this rank's (rank 0 resumes all ranks' part-done ones)
    stopped: bool = False  # left early because a stop was requested

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "stopped"}


def train_one_epoch(model, optimizer, loader, preprocess, accelerator, *, autocast=None, channels_last=False,
                    state: EpochState | None = None, warmup_steps: int = 0, stop_flag=None,
                    distributed: bool = False, progress=None, step=None) -> EpochState:
    """Train over `loader` once (its epoch already set); `step(images, labels)` replaces `train_step` (a
    bench.graphs.GraphedStep). `state` resumes a checkpointed epoch: its first
    `state.step` batches are skipped (the loader order is a function of seed and epoch). Between steps, a set
    `stop_flag()` ends the epoch early with `stopped=True` (agreed by all ranks in DDP mode)."""
    device = accelerator.device
    st = state or EpochState()
    zero = torch.zeros((), device=device)
    st.loss_sum = zero.clone() if st.loss_sum is None else st.loss_sum.to(device)
    st.correct = zero.clone().long() if st.correct is None else st.correct.to(device)
    st.seen = zero.clone().long() if st.seen is None else st.seen.to(device)
    model.train()
    sync(device)
    t0 = t_steady = time.perf_counter()
    steady_images, resume_at = 0, st.step
    for i, (images, labels) in enumerate(loader):
        if i < resume_at:
            continue
        if i == resume_at + warmup_steps and warmup_steps:
            sync(device)
            t_steady, steady_images = time.perf_counter(), 0
        loss_sum, correct = step(images, labels) if step else train_step(
            model, optimizer, images, labels, preprocess, accelerator, autocast, channels_last)
        st.loss_sum += loss_sum
        st.correct += correct
        st.seen += labels.shape[0]
        steady_images += labels.shape[0]
        st.step = i + 1
        if progress is not None:
            progress.update(1)
        if stop_flag is not None and (not distributed or st.step % STOP_CHECK_EVERY == 0) \
                and stop_agreed(stop_flag, accelerator, distributed):
            st.stopped = True
            break
    sync(device)
    t1 = time.perf_counter()
    st.train_seconds += t1 - t0
    if not warmup_steps or t_steady > t0:  # with a warm-up, only epochs that got past it count
        st.steady_seconds += t1 - t_steady
        st.steady_images += steady_images
    return st


def stop_agreed(stop_flag, accelerator, distributed: bool) -> bool:
    """Whether to stop now: this process's flag, or in DDP mode any rank's (all ranks must call it together)."""
    if not distributed:
        return bool(stop_flag())
    flag = torch.tensor([float(bool(stop_flag()))], device=accelerator.device)
    return accelerator.reduce(flag, "sum").item() > 0


@torch.no_grad()
def eval_step(model, images, labels, preprocess, accelerator, autocast: AutocastKwargs | None = None,
              channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One evaluation batch: (number correct, summed cross-entropy in float32), still on the device."""
    x = prepare_input(images, preprocess, channels_last)
    with accelerator.autocast(autocast):
        logits = model(x)
    return (logits.argmax(1) == labels).sum(), F.cross_entropy(logits.float(), labels, reduction="sum")


@torch.no_grad()
def evaluate(model, loader, preprocess, accelerator, *, autocast=None, channels_last=False,
             distributed: bool = False, step=None) -> tuple[int | list[int], int, float, float | list[float]]:
    """(correct, seen, seconds, loss_sum) over the whole split, loss_sum the summed cross-entropy (the mean is
    loss_sum / seen). With `distributed`, each rank sees its own shard (each image once, no padding: the loaders'
    contract) and the sums are taken over ranks; callers assert seen == N. `step(images, labels)` replaces
    `eval_step` (a bench.fused group's, counting per run: `correct` and `loss_sum` are then lists)."""
    model.eval()
    device = accelerator.device
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    sync(device)
    t0 = time.perf_counter()
    for images, labels in loader:
        batch_correct, batch_loss = (step(images, labels) if step else
                                     eval_step(model, images, labels, preprocess, accelerator, autocast, channels_last))
        correct, loss = correct + batch_correct, loss + batch_loss.double()
        seen += labels.shape[0]
    sync(device)
    seconds = time.perf_counter() - t0
    sums = torch.cat([correct.reshape(-1).double(), loss.reshape(-1), seen.reshape(1).double()])  # exact counts
    if distributed:
        sums = accelerator.reduce(sums, "sum")
    values, k = sums.tolist(), correct.numel()
    correct_n, loss_sum, seen_n = [int(v) for v in values[:k]], values[k:2 * k], int(values[-1])
    if not correct.dim():
        correct_n, loss_sum = correct_n[0], loss_sum[0]
    return correct_n, seen_n, seconds, loss_sum


def check_replicas(net, accelerator) -> None:
    """DDP keeps every rank's weights identical; raise if they are not (a launch that did not synchronise)."""
    sums = torch.stack([p.detach().double().sum() for p in net.parameters()])
    every = accelerator.gather(sums[None])
    if not bool((every == every[0]).all()):
        raise RuntimeError("DDP ranks ended with different weights: gradients were not synchronised")


def measure_step_rate(model, optimizer, images, labels, preprocess, accelerator, autocast=None,
                      channels_last=False, steps: int = 2) -> float:
    """Training images/s of `train_step` on one batch, after one warm-up step (for an ETA, not a benchmark)."""
    train_step(model, optimizer, images, labels, preprocess, accelerator, autocast, channels_last)
    sync(accelerator.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, images, labels, preprocess, accelerator, autocast, channels_last)
    sync(accelerator.device)
    return steps * labels.shape[0] / (time.perf_counter() - t0)


def reset_peak_memory(device: torch.device) -> None:
    """Start counting `peak_memory_mb` for a new run: on CUDA the peak is the process's since the last reset, which
    without one was the largest of all its runs so far (a batch-128 arm after batch 256 showed the latter's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory of this run on CUDA (since `reset_peak_memory`); on CPU the process's peak resident set
    (across runs: it cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

