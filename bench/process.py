"""This process under `accelerate launch` (or plain python): its Accelerator at one precision, the data prepared once
per machine, and a clean end.

    acc = make_accelerator("bf16")      # bench/run_all.py and bench/throughput.py
    group = finish_group(acc)
    manifest = prepare_data(source, data_dir, acc)
    ...
    finish(acc, group)
"""
from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch

from bench.config import UsageError


def make_accelerator(precision: str, *, log_with: str | None = None, project_dir: str | None = None,
                     cpu: bool = False):
    """The process's Accelerator at one mixed precision ("no" | "bf16" | "fp16"), checked: a launch that did not
    form one process group, or a precision Accelerate cannot autocast to here, is a UsageError."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision=precision, log_with=log_with, project_dir=project_dir, cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and acc.num_processes != launched:
        raise UsageError(f"launched {launched} processes but Accelerate is not distributed (no CUDA?): on CPU use "
                         f"`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {launched} "
                         f"{os.path.basename(sys.argv[0]) or 'bench/run_all.py'} ...`")
    if acc.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    if precision != "no" and not acc.native_amp:  # Accelerate would silently train fp16 on CPU in fp32
        raise UsageError(f"--precision {precision} is not supported on {acc.device.type} by Accelerate; "
                         "use --precision bf16 or no")
    return acc


FINISH_TIMEOUT = datetime.timedelta(days=7)
"""How long a process that has finished its share of the grid waits for the others before the last barrier."""


def finish_group(acc):
    """A gloo group with a long timeout for the barrier at the end, or None with one process. In grid mode
    processes finish hours apart, and the default group's timeout (10-30 min) would kill the first to finish;
    without the barrier, a process that destroys its group while a peer still talks to it can abort."""
    if acc.num_processes == 1:
        return None
    return torch.distributed.new_group(backend="gloo", timeout=FINISH_TIMEOUT)


def finish(acc, group) -> None:
    """Wait for every process, then close the trackers and the process group (so no rank aborts at exit)."""
    if group is not None:
        torch.distributed.barrier(group=group)
    acc.end_training()


def prepare_data(source: str, data_dir: str, acc, *, subset_per_class: int | None = None) -> dict:
    """One process per machine prepares (idempotent: on a shared filesystem, prepare once beforehand and these
    become checks); every process then reads the manifest (plus its own sha256), or every process stops with the
    first error (a UsageError)."""
    from accelerate.utils import gather_object

    from loaders import prepare

    error = None
    if acc.is_local_main_process:
        try:
            prepare.prepare_cifar10(source, data_dir, subset_per_class=subset_per_class, seed=0)
        except (ValueError, OSError) as e:
            error = f"data: {e}"
    errors = [e for e in (gather_object([error]) if acc.num_processes > 1 else [error]) if e]
    if errors:
        raise UsageError(errors[0])
    manifest = prepare.load_manifest(data_dir)
    manifest["manifest_sha256"] = prepare.sha256_file(Path(data_dir) / prepare.MANIFEST)
    return manifest
