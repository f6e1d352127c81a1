"""Training-step and evaluation benchmarks per family on CPU, batch 32 (issue 6).

    make bench      # = .venv/bin/python -m pytest tests/benchmarks --benchmark-enable --benchmark-autosave
    .venv/bin/python -m pytest tests/benchmarks --benchmark-enable --benchmark-compare   # vs the last save

Each test times the same step `bench/throughput.py` times (bench/timing.py), on a fixed synthetic batch, and records
images per second and achieved TFLOP/s in `extra_info`. Under the default `--benchmark-disable` each runs once as a
plain test (a few seconds for the file), checking that the step trains. Nothing asserts on time.
`test_train_step_variants` measures what the step's fast paths buy: each torch.optim.SGD implementation, and reading
the loss on the host after every step (a sync per step, as a naive loop does); they change nothing but speed.
"""
from __future__ import annotations

import pytest
import torch

import allconv
from bench import devices, timing

BATCH = 32
ROUNDS = 8  # timed steps per test under --benchmark-enable; the first (warm-up) round is not timed
TRAIN_CASES = [  # the Model and All-CNN variant of each family in fp32; All-CNN-C also in bf16 and without NHWC
    ("model-a", "fp32", True), ("allcnn-a", "fp32", True),
    ("model-b", "fp32", True), ("allcnn-b", "fp32", True),
    ("model-c", "fp32", True), ("allcnn-c", "fp32", True),
    ("allcnn-c", "bf16", True), ("allcnn-c", "fp32", False),
]


@pytest.fixture
def accelerator():
    """This process's Accelerator at bf16; fp32 cases run with autocast off under it (as bench/throughput.py)."""
    return timing.make_accelerator(["no", "bf16"], "cpu")


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
def test_train_step(benchmark, cpu, accelerator, name, precision, channels_last):
    torch.manual_seed(0)
    model = timing.build_model(name, cpu, channels_last, compile=False).train()
    optimizer = timing.build_optimizer(model, cpu)  # what training uses
    step = timing.make_step(model, accelerator, devices.precision_name(precision), channels_last, optimizer=optimizer)
    images, labels = timing.synthetic_batch(BATCH, cpu, channels_last)
    first_conv = next(model.parameters()).detach().clone()

    loss = benchmark.pedantic(step, args=(images, labels), rounds=ROUNDS, warmup_rounds=1)

    assert loss.shape == () and torch.isfinite(loss)
    assert not torch.equal(first_conv, next(model.parameters()))  # the step reached the first layer
    _record(benchmark, name, precision, channels_last, devices.train_flop_per_image(allconv.macs(name)))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eval_step(benchmark, cpu, accelerator, precision):
    name = "allcnn-c"
    model = timing.build_model(name, cpu, channels_last=True, compile=False).eval()
    step = timing.make_step(model, accelerator, devices.precision_name(precision), channels_last=True)
    images, labels = timing.synthetic_batch(BATCH, cpu, channels_last=True)

    correct = benchmark.pedantic(step, args=(images, labels), rounds=ROUNDS, warmup_rounds=1)

    assert 0 <= int(correct) <= BATCH
    assert step(images, labels) == correct  # eval mode: no dropout, so the same batch scores the same
    _record(benchmark, name, precision, True, devices.eval_flop_per_image(allconv.macs(name)))


SGD_IMPLS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}, "engine": None}
"""How torch.optim.SGD applies the update: "engine" as bench/engine.py trains (fused on CUDA, torch's default, the
for-loop, on CPU); the others force one implementation."""


def _sgd_step(cpu, accelerator, sgd: str, host_sync: bool):
    """Strided-CNN-C from seed 0 and a no-argument training step on a fixed batch, with the given SGD update and,
    with `host_sync`, the loss read on the host after every step."""
    torch.manual_seed(0)
    model = timing.build_model("strided-c", cpu, channels_last=True, compile=False).train()
    optimizer = (timing.build_optimizer(model, cpu) if SGD_IMPLS[sgd] is None else
                 torch.optim.SGD(model.parameters(), **timing.SGD_SETTINGS, **SGD_IMPLS[sgd]))
    step = timing.make_step(model, accelerator, "no", True, optimizer=optimizer)
    images, labels = timing.synthetic_batch(4, cpu, channels_last=True)
    return model, (lambda: step(images, labels).item()) if host_sync else (lambda: step(images, labels))


@pytest.mark.parametrize("host_sync", [False, True], ids=["device-sum", "item-every-step"])
@pytest.mark.parametrize("sgd", list(SGD_IMPLS))
def test_train_step_variants(benchmark, cpu, accelerator, sgd, host_sync):
    """The fast-path switches must give the same weights as the for-loop SGD (up to rounding); then timed."""
    reference, ref_step = _sgd_step(cpu, accelerator, "for-loop", False)
    initial = [p.detach().clone() for p in reference.parameters()]
    ref_step(), ref_step()
    model, step = _sgd_step(cpu, accelerator, sgd, host_sync)  # reseeds: the same weights and dropout masks
    step(), step()
    for ref, got in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert not torch.equal(next(reference.parameters()), initial[0])  # the step did train

    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info.update(model="strided-c", sgd=sgd, item_every_step=host_sync, batch_size=4, device="cpu")
