"""A whole training step as one CUDA graph (issue 12, `--cuda-graphs`): gather-side copy, whitening, forward,
backward and the fused SGD update replayed with one launch instead of ~150.

Why: on the lent H200 every Table 3 variant trains at 43-65k img/s whatever its size (1.7-10.7% of the bf16 peak,
reports/measured/campaign): the eager step is bound by launching small kernels from Python, not by the GPU.

    step = graphed_train_step(model, optimizer, preprocess, accelerator, autocast, channels_last=True)
    loss_sum, correct = step(images, labels)   # as engine.train_step, same results up to dropout's random stream
    step = GraphedStep(group.train_step, device)   # a bench.fused group's step (--fuse-lrs): its LRs live on the device

How (PyTorch's whole-network capture recipe): the first WARMUP full-size steps run eagerly on a side stream (cuDNN
autotuning, momentum buffers, workspaces), then the step is captured once on static input buffers and replayed for
every later batch of that size; a smaller batch (the short last batch, 50,000 mod 256 = 80 images) runs eagerly. The LR is a constant inside the captured fused SGD kernel, so an LR change (the paper's drops at epochs
200/250/300, or a resumed run) captures again (a fused group reads its LRs from a device tensor: one capture).
Autocast runs with its weight-cast cache off, as capture requires. Dropout draws from the graph-safe Philox stream:
masks differ from an eager run's, their distribution does not. Not under DDP (the gradient all-reduce is not
captured). `capture` is injectable: tests on CPU pass `capture_eagerly`, which replays by running the step again on
the static buffers.
"""
from __future__ import annotations

import dataclasses

import torch

from bench import engine

WARMUP = 3  # eager full-size steps before the capture (the recipe uses 3)


def capture_cuda(fn, pool):
    """Capture `fn()` into a CUDA graph: (replay, the static tensors it returned)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = fn()
    return graph.replay, outputs


def capture_eagerly(fn, pool):
    """CPU stand-in for tests: replay runs `fn()` again and copies its results into the same output tensors (made
    at the first replay, as a capture makes them)."""
    outputs = []

    def replay():
        values = fn()
        if not outputs:
            outputs.extend(v.clone() for v in values)
        for out, value in zip(outputs, values):
            out.copy_(value)
    return replay, outputs


class GraphedStep:
    """`eager(images, labels)` (a training step returning its outputs as device tensors) replayed from a CUDA
    graph; `settings()` returns what the captured step bakes in (the LRs): when it changes, the step is captured
    again."""

    def __init__(self, eager, device, *, settings=lambda: None, capture=None):
        self.eager, self.settings = eager, settings
        self.capture = capture or capture_cuda
        cuda = device.type == "cuda"
        self.device = device
        self.side = torch.cuda.Stream(device) if cuda else None
        self.full, self.warm, self.replay, self.baked = None, 0, None, None
        self.captures = 0  # how many times the step was captured (tests, logs)

    def _warm_step(self, images, labels):
        """An eager step on the side stream, as the recipe warms up before capture."""
        if self.side is None:
            return self.eager(images, labels)
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            out = self.eager(images, labels)
        torch.cuda.current_stream(self.device).wait_stream(self.side)
        return out

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        settings = self.settings()
        if self.replay is not None and settings != self.baked:
            self.replay = None  # the old LR is baked into the captured update
        if self.full is None or images.shape[0] > self.full:  # the full size is the largest seen: a run resumed
            self.full, self.warm, self.replay = images.shape[0], 0, None  # at its short last batch starts on it
        if images.shape[0] != self.full:
            return self.eager(images, labels)
        if self.replay is None and self.warm < WARMUP:
            self.warm += 1
            return self._warm_step(images, labels)
        if self.replay is None:
            self.images, self.labels = images.clone(), labels.clone()
            # a memory pool of its own: the dropped graph's pool is released with it, and torch 2.11 fails an
            # internal assert when a capture begins in a released pool (the H200 campaign, 2026-12-04)
            pool = torch.cuda.graph_pool_handle() if self.side is not None else None
            self.replay, self.outputs = self.capture(lambda: self.eager(self.images, self.labels), pool)
            self.baked, self.captures = settings, self.captures + 1
        else:
            self.images.copy_(images)
            self.labels.copy_(labels)
        self.replay()
        return self.outputs


def graphed_train_step(model, optimizer, preprocess, accelerator, autocast, channels_last: bool,
                       capture=None) -> GraphedStep:
    """engine.train_step of one model as a GraphedStep (autocast's weight-cast cache off, as capture requires)."""
    autocast = dataclasses.replace(autocast, cache_enabled=False)
    return GraphedStep(lambda images, labels: engine.train_step(model, optimizer, images, labels, preprocess,
                                                                accelerator, autocast, channels_last),
                       accelerator.device, settings=lambda: [g["lr"] for g in optimizer.param_groups],
                       capture=capture)
