"""Fused K-run group vs K separate runs, one process, same batches (issue 12, item 1). Relative figures only.

    nice -n 10 python tests/benchmarks/test_fused_bench.py [--batch 64] [--steps 3] [--rounds 2]

prints one JSON row per (model, precision): img/s per run (= images each run trained / wall time of the whole
group's steps) for K=4 separate sequential steps and for the fused group, and their ratio. Separate and fused
steps alternate in rounds (best round kept), so a busy machine hurts both alike. Under pytest the same code runs
once with one step as a smoke test (nothing asserts on time).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import allconv  # noqa: E402
from bench.fused import FusedRuns  # noqa: E402

LRS = [0.25, 0.1, 0.05, 0.01]
CASES = [("strided-a", "no"), ("strided-a", "bf16"), ("allcnn-c", "no"), ("allcnn-c", "bf16")]


def to_float(images: torch.Tensor) -> torch.Tensor:  # stands in for the whitening: fp32, before any cast
    return images.float().div_(255)


def build(name: str):
    nets, opts = [], []
    for lr in LRS:
        torch.manual_seed(0)
        net = allconv.build(name).to(memory_format=torch.channels_last).train()
        nets.append(net)
        opts.append(torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3))
    return nets, opts


def measure(name: str, precision: str, batch: int, steps: int, rounds: int) -> dict:
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch,))
    nets, opts = build(name)
    group = FusedRuns(*build(name), preprocess=to_float, precision=precision, channels_last=True)

    def separate_step():
        for net, opt in zip(nets, opts):
            x = to_float(images).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(net(x), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def timed(step) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - t0

    separate_step(), group.train_step(images, labels)  # warm-up
    sep, fus = [], []
    for _ in range(rounds):
        sep.append(timed(separate_step))
        fus.append(timed(lambda: group.train_step(images, labels)))
    sep_rate, fus_rate = batch * steps / min(sep), batch * steps / min(fus)
    return {"model": name, "precision": precision, "batch_size": batch, "runs": len(LRS), "steps": steps,
            "rounds": rounds, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "separate_img_s_per_run": round(sep_rate, 1), "fused_img_s_per_run": round(fus_rate, 1),
            "fused_over_separate": round(fus_rate / sep_rate, 3)}


def test_fused_bench_smoke():
    row = measure("strided-a", "bf16", batch=8, steps=1, rounds=1)
    assert row["separate_img_s_per_run"] > 0 and row["fused_img_s_per_run"] > 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for case in CASES:
        print(json.dumps(measure(*case, args.batch, args.steps, args.rounds)), flush=True)
