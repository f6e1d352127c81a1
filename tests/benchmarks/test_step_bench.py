"""Training-step and evaluation benchmarks per family on CPU, batch 32 (issue 6).

    make bench      # = .venv/bin/python -m pytest tests/benchmarks --benchmark-enable --benchmark-autosave
    .venv/bin/python -m pytest tests/benchmarks --benchmark-enable --benchmark-compare   # vs the last save

Each test times the same step `bench/throughput.py` times, on a fixed synthetic batch, and records images per
second and achieved TFLOP/s in `extra_info`. Under the default `--benchmark-disable` each runs once as a plain
test (a few seconds for the file), checking that the step trains. Nothing asserts on time.
"""
from __future__ import annotations

import pytest
import torch

import allconv
from bench import devices, throughput

BATCH = 32
ROUNDS = 8  # timed steps per test under --benchmark-enable; the first (warm-up) round is not timed
TRAIN_CASES = [  # the Model and All-CNN variant of each family in fp32; All-CNN-C also in bf16 and without NHWC
    ("model-a", "fp32", True), ("allcnn-a", "fp32", True),
    ("model-b", "fp32", True), ("allcnn-b", "fp32", True),
    ("model-c", "fp32", True), ("allcnn-c", "fp32", True),
    ("allcnn-c", "bf16", True), ("allcnn-c", "fp32", False),
]


def _record(benchmark, name: str, precision: str, channels_last: bool, flop_per_image: int) -> None:
    benchmark.extra_info.update(model=name, precision=precision, channels_last=channels_last, batch_size=BATCH,
                                images_per_step=BATCH, device="cpu", threads=torch.get_num_threads(),
                                num_workers=0)
    if benchmark.stats:  # None under --benchmark-disable: the function ran once, untimed
        images_per_s = BATCH / benchmark.stats.stats.median
        benchmark.extra_info["images_per_s"] = images_per_s
        benchmark.extra_info["tflops"] = devices.tflops(images_per_s, flop_per_image)


@pytest.mark.parametrize("name, precision, channels_last", TRAIN_CASES,
                         ids=[f"{n}-{p}-{'nhwc' if cl else 'nchw'}" for n, p, cl in TRAIN_CASES])
def test_train_step(benchmark, cpu, name, precision, channels_last):
    torch.manual_seed(0)
    model = throughput.build_model(name, cpu, channels_last, compile=False).train()
    optimizer = throughput.build_optimizer(model, "engine", cpu)  # what training uses
    step = throughput.make_train_step(model, optimizer, precision, cpu, channels_last)
    images, labels = throughput.synthetic_batch(BATCH, cpu, channels_last)
    first_conv = next(model.parameters()).detach().clone()

    loss = benchmark.pedantic(step, args=(images, labels), rounds=ROUNDS, warmup_rounds=1)

    assert loss.shape == () and torch.isfinite(loss)
    assert not torch.equal(first_conv, next(model.parameters()))  # the step reached the first layer
    _record(benchmark, name, precision, channels_last, devices.train_flop_per_image(allconv.macs(name)))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eval_step(benchmark, cpu, precision):
    name = "allcnn-c"
    model = throughput.build_model(name, cpu, channels_last=True, compile=False).eval()
    step = throughput.make_eval_step(model, precision, cpu, channels_last=True)
    images, labels = throughput.synthetic_batch(BATCH, cpu, channels_last=True)

    correct = benchmark.pedantic(step, args=(images, labels), rounds=ROUNDS, warmup_rounds=1)

    assert 0 <= int(correct) <= BATCH
    assert step(images, labels) == correct  # eval mode: no dropout, so the same batch scores the same
    _record(benchmark, name, precision, True, devices.eval_flop_per_image(allconv.macs(name)))
