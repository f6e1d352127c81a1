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
import errno
import os
import sys
from pathlib import Path

import torch

from bench.cli import UsageError


class LaunchError(UsageError):
    """A launch this machine cannot run as asked: rank 0 prints it, every rank exits with the same status."""


def check_launch() -> None:
    """Before any Accelerator: refuse a launch with more processes on this machine than it has GPUs, or a
    MULTI_GPU launch without CUDA and without ACCELERATE_USE_CPU (torchrun would start unsynchronised copies),
    naming the command that fits this machine."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if local <= 1 or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return
    gpus = torch.cuda.device_count()
    script = os.path.basename(sys.argv[0]) or "run_all.py"
    if gpus == 0:
        raise LaunchError(f"launched {local} processes but Accelerate is not distributed (no CUDA here): run "
                          f"`make run`, or for {local}-rank DDP on CPU `ACCELERATE_USE_CPU=1 accelerate launch "
                          f"--multi_gpu --num_processes {local} bench/{script} ...`")
    if local > gpus:
        raise LaunchError(f"launched {local} processes on a machine with {gpus} GPU(s): run `make run`, or "
                          f"`accelerate launch --num_processes {gpus} bench/{script} ...`")


def launch_rank() -> str:
    """This process's rank in the launch ("0" without a launcher), readable before the process group exists."""
    return os.environ.get("RANK", "0")


def die_with_launcher() -> None:
    """Under a launcher (accelerate launch / torchrun: LOCAL_RANK set), ask Linux for SIGTERM when the launcher
    dies (e.g. SIGKILLed): run_all's SIGTERM handler then checkpoints and exits instead of training on as an
    orphan beside a rerun. If the launcher died while this asked (its parent changed), SIGTERM now. A parent that
    is pid 1 is left alone: it is the launcher when a container's entrypoint is `accelerate launch` or torchrun
    (whose death ends the container's processes), and cannot be told from a launcher that died before this looked."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def make_accelerator(precision: str, *, log_with: str | None = None, project_dir: str | None = None,
                     cpu: bool = False, deterministic: bool = False):
    """The process's Accelerator at one mixed precision ("no" | "bf16" | "fp16"), checked: a launch that did not
    form one process group, or a precision Accelerate cannot autocast to here, is a UsageError. `deterministic`:
    deterministic kernels only, for the whole process (PyTorch's reproducibility notes: cuBLAS's workspace setting,
    which must be in the environment before the first cuBLAS call, and no cuDNN benchmarking)."""
    from accelerate import Accelerator

    check_launch()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if os.environ["CUBLAS_WORKSPACE_CONFIG"] not in (":4096:8", ":16:8"):
            raise UsageError("--deterministic needs CUBLAS_WORKSPACE_CONFIG=:4096:8 or :16:8 (cuBLAS's deterministic "
                             f"settings); this environment sets {os.environ['CUBLAS_WORKSPACE_CONFIG']!r:.40}: unset it")
    torch.use_deterministic_algorithms(deterministic)
    acc = Accelerator(mixed_precision=precision, log_with=log_with, project_dir=project_dir, cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and acc.num_processes != launched:
        raise UsageError(f"launched {launched} processes but Accelerate is not distributed (no CUDA?): on CPU use "
                         f"`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {launched} "
                         f"{os.path.basename(sys.argv[0]) or 'bench/run_all.py'} ...`")
    if acc.device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic  # fixed shapes: cuDNN times its kernels once, then
        # uses the fastest, which may differ from one process to the next
    if precision != "no" and not acc.native_amp:  # Accelerate would silently train fp16 on CPU in fp32
        raise UsageError(f"--precision {precision} is not supported on {acc.device.type} by Accelerate; "
                         "use --precision bf16 or no")
    return acc


def check_writable(out: str) -> list[Path]:
    """Create <out>/runs (checking it is writable); returns the folders it created, for `remove_empty`."""
    runs = Path(out) / "runs"
    created = []
    probe = Path(out) / f".write-probe.{os.getpid()}"
    try:
        created = [p for p in (runs, *runs.parents) if not p.exists()][::-1]  # PermissionError: a folder above
        runs.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        remove_empty(created)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # not bad input: the disk is full (exit 1, as later on)
            from bench.files import WriteError

            raise WriteError(e.errno, e.strerror, str(probe)) from None
        raise UsageError(f"--out {out} is not writable ({e.strerror or e})") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders this command created if they stayed empty (a refused command leaves nothing behind)."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


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
    from loaders.manifest import MANIFEST, arrays_sha256, load_manifest
    from loaders.sources import sha256_file

    from bench.files import WriteError

    error = None
    if acc.is_local_main_process:
        try:
            prepare.prepare_cifar10(source, data_dir, subset_per_class=subset_per_class, seed=0)
        except WriteError as e:  # a full disk: not bad input (exit 1)
            error = e
        except (ValueError, OSError) as e:
            error = f"data: {e}"
    errors = [e for e in (gather_object([error]) if acc.num_processes > 1 else [error]) if e]
    if errors:
        raise errors[0] if isinstance(errors[0], WriteError) else UsageError(errors[0])
    manifest = load_manifest(data_dir)
    manifest["manifest_sha256"] = sha256_file(Path(data_dir) / MANIFEST)
    manifest["arrays_sha256"] = arrays_sha256(manifest)
    return manifest
