"""Shared set-up for the pytest-benchmark suite (`make bench`).

    make bench                                   # time everything, save .benchmarks/<machine>/NNNN_*.json
    .venv/bin/python -m pytest tests/benchmarks --benchmark-enable --benchmark-compare   # against the last save

Compare saves from one machine only: the JSON records the CPU, thread count and torch version (below) so a
comparison across machines shows up as such. The default `pytest` run disables timing (pyproject addopts), so
these tests then run each function once as a plain test.
"""
from __future__ import annotations

import pytest


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what decides CPU speed besides the CPU itself: torch, its threads, and the ISA it found."""
    import torch

    machine_info["torch_version"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None


@pytest.fixture
def cpu():
    """The device every CPU benchmark runs on (a torch.device, as loaders and ToDevice want)."""
    import torch

    return torch.device("cpu")
