"""Loader throughput: one training epoch (50,000 real images, flip-translate, batch 512) per backend on CPU.

    .venv/bin/python -m pytest tests/benchmarks/test_loader_bench.py --benchmark-enable -q
    (make bench runs it with the other benchmarks)

Rows: the project's three backends (loaders.make) and `bare-ffcv`, a plain FFCV Loader doing the same work with
FFCV's own RandomHorizontalFlip + RandomTranslate(5) and shuffling: the yardstick for the ffcv backend's
overhead. Goals (issue 3): ffcv >= 6x torch, and within 10% of bare-ffcv. images/s goes to extra_info.
Under the default --benchmark-disable each project row runs 3 batches once, untimed (bare-ffcv skips).
Nothing asserts on time.
"""
from __future__ import annotations

import os

import pytest
import torch

import loaders

BATCH = 512
ROWS = ["ffcv", "bare-ffcv", "torch", "tensor"]


def bare_ffcv_loader(data_dir):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import (RandomHorizontalFlip, RandomTranslate, Squeeze, ToDevice, ToTensor,
                                 ToTorchImage)

    cpu = torch.device("cpu")
    from loaders.ffcv_loaders import default_num_workers

    return Loader(str(data_dir / "train.beton"), batch_size=BATCH, num_workers=default_num_workers(),
                  order=OrderOption.RANDOM, drop_last=False, seed=0, os_cache=True,
                  pipelines={"image": [SimpleRGBImageDecoder(), RandomHorizontalFlip(), RandomTranslate(padding=5),
                                       ToTensor(), ToDevice(cpu, non_blocking=True), ToTorchImage()],
                             "label": [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(cpu, non_blocking=True)]})


@pytest.mark.parametrize("row", ROWS)
def test_training_epoch(benchmark, full_data_dir, row):
    if "ffcv" in row:
        pytest.importorskip("ffcv")
    if row == "bare-ffcv" and benchmark.disabled:
        pytest.skip("bare-ffcv is only a yardstick for timed runs (its pipeline compiles for ~10 s)")
    if row == "bare-ffcv":
        loader = bare_ffcv_loader(full_data_dir)
    else:
        loader = loaders.make("train", BATCH, data_dir=full_data_dir, backend=row, augment="flip-translate")
    limit = 3 if benchmark.disabled else None  # batches per call: the whole epoch only when timing

    def epoch():
        seen = 0
        for i, (images, labels) in enumerate(loader):
            seen += len(labels)
            if limit is not None and i + 1 == limit:
                break
        return seen

    seen = benchmark.pedantic(epoch, rounds=3, warmup_rounds=1)  # warm-up: FFCV's JIT, DataLoader workers
    assert seen == (50000 if limit is None else limit * BATCH)
    benchmark.extra_info.update(backend=row, images_per_epoch=seen, batch_size=BATCH, augment="flip-translate",
                                device="cpu", num_workers=getattr(loader, "num_workers", None),
                                cpu_count=os.cpu_count())
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = seen / benchmark.stats.stats.median
