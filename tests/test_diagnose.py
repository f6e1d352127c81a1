"""bench/diagnose.py on real images (the smoke subset: 10 a class and split): its per-class test errors are the
errors evaluation counts, and a class map sunk below zero shows as a dead channel under the final ReLU and a class
that is never predicted (FACTS.md: the final ReLU's failure)."""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

import allconv
import loaders
from bench import engine
from bench.diagnose import diagnose


def test_per_class_errors_and_a_dead_class_map(smoke_data_dir):
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    acc = SimpleNamespace(device=cpu, autocast=lambda _kwargs=None: contextlib.nullcontext())
    data = loaders.Cache(smoke_data_dir, backend="tensor", device=cpu, distributed=False, batch_size=32)
    whiten = data.preprocess("gcn-zca")
    net = allconv.build("strided-a", 10)
    d = diagnose(net, data.loader("train"), data.loader("test"), whiten, acc)
    correct, seen, _ = engine.evaluate(net, data.loader("test"), whiten, acc)
    assert sum(d["test_error_by_class_pct"]) / 10 == pytest.approx(100 * (1 - correct / seen), abs=1e-9)
    assert set(d["dead_relu_channels"]) == {n for n, m in net.named_modules() if isinstance(m, torch.nn.ReLU)}
    assert d["dead_relu_channels"]["top.conv3_relu"] == [0, 10]  # a fresh net: every class map fires somewhere

    with torch.no_grad():
        net.top.conv3.bias[5] = -1e4  # class 5's map is below zero everywhere: the final ReLU makes it 0
    d = diagnose(net, data.loader("train"), data.loader("test"), whiten, acc)
    assert d["dead_relu_channels"]["top.conv3_relu"] == [1, 10]
    assert d["test_error_by_class_pct"][5] == 100.0  # it can only tie at 0, and argmax takes the lower class
