"""Checkpoints: one file per run, written atomically by the main process (`bench.run_state.RunState` uses them).

    save_checkpoint(path, accelerator, net, optimizer, epoch=5, epoch_state=None, history=[...], extra={...},
                    distributed=False)
    blob = load_checkpoint(path, accelerator, net, optimizer, rank=0, world=1)  # None: start from epoch 0

A checkpoint is outside input (a shared results folder): it is read with torch.load(weights_only=True), so it
holds only tensors, lists, dicts, numbers and strings (RNG states included), and unpickling it runs no code. Only
a regular file of at most `MAX_BYTES` is read (`read_bytes`): a FIFO or a device in its place would hang or fill
memory.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object

from bench.files import WriteError, atomic_write, read_regular, set_aside
from bench.schema import HISTORY_KEYS, in_range, valid_history, valid_sessions

TIMINGS = ("steady_s", "steady_img", "eval_s", "eval_img", "wall_s")
"""The timing sums in a checkpoint's `extra` (bench.run_state.RunState.timings: seconds and images); one it lacks
starts at 0."""


def rates(t: dict) -> dict:
    """The record's images per second made of the timing sums `t` (None where no time was spent)."""
    return {"train_images_per_s": t["steady_img"] / t["steady_s"] if t["steady_s"] else None,
            "eval_images_per_s": t["eval_img"] / t["eval_s"] if t["eval_s"] else None}


def rng_state(device: torch.device | None = None) -> dict:
    """This process's RNG states in forms `torch.load(weights_only=True)` accepts. Only the run's own CUDA device
    (not every visible GPU), so a checkpoint resumes with another GPU count or on CPU."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                       has_gauss, gauss],
             "python": [version, list(internal), gauss_next]}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore `rng_state`'s output. A CUDA state is restored only on a CUDA device (a list, as older checkpoints
    held for every GPU, gives this device's entry when it has one); on CPU it is ignored."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda")
    if isinstance(cuda, list):
        index = (device.index or 0) if device is not None else 0
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


MAX_BYTES = 1 << 30
"""The largest checkpoint read, 1 GiB: an All-CNN-C checkpoint (weights, momentum, RNG states) is ~11 MB, and the
largest model under Adam (two moments) stays well under 100 MB; a bigger file is no checkpoint of ours, and it is
read into memory whole."""


def read_bytes(path: Path) -> bytes:
    """The bytes of a checkpoint (`bench.files.read_regular`: a regular file, a symlink to one included, of at most
    `MAX_BYTES`), else ValueError "unreadable checkpoint (why)": a FIFO in its place is refused, not waited on."""
    try:
        return read_regular(path, MAX_BYTES)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise ValueError(f"unreadable checkpoint ({why})") from None


def _device_of(net) -> torch.device:
    return next(net.parameters()).device


def save_checkpoint(path: Path, accelerator, net, optimizer, *, epoch: int, epoch_state: dict | None,
                    history: list, extra: dict, distributed: bool) -> None:
    """Model, optimizer, grad scaler, every rank's RNG state, the epoch (the LR schedule is a function of it), a
    part-done epoch's sums, and the history; `extra` gains `run_key`, the file's stem (checkpoints are named by
    their run's key), which binds the file to its run (`check_progress`). Every rank must call it in DDP mode (the
    RNG states are gathered); only the main process (or, in grid mode, the process running the run) writes, with
    `files.atomic_write` (a failed write, e.g. a full disk, leaves the previous checkpoint and raises
    `files.WriteError` on every rank)."""
    state = rng_state(_device_of(net))
    rngs = gather_object([state]) if distributed else [state]
    error = None
    if accelerator.is_main_process or not distributed:
        scaler = getattr(accelerator, "scaler", None)
        blob = {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs, "epoch": epoch,
                "epoch_state": epoch_state,
                "history": history, "extra": dict(extra, run_key=path.stem)}
        try:
            atomic_write(path, lambda f: torch.save(blob, f))
        except WriteError as e:
            error = (e.errno, e.strerror, e.filename)
    from bench.workqueue import agree

    error = agree(error, accelerator, distributed)  # every rank learns of a failed write before the next collective
    if error:
        raise WriteError(*error)


def _check_matches(blob, net, optimizer, lr_at=None, key=None) -> None:
    """Raise ValueError unless `blob` is a checkpoint of this run: its parts present, the model's keys and shapes,
    the optimizer's parameter groups and its per-parameter state shapes the same as the freshly built ones."""
    check_model(blob, net)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    groups = blob["optimizer"]["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("optimizer state does not match this run's parameters")
    ids = [i for g in groups for i in g["params"]]
    for i, s in blob["optimizer"]["state"].items():
        p = params[ids.index(i)]
        if any(torch.is_tensor(v) and v.dim() and v.shape != p.shape for v in s.values()):
            raise ValueError("optimizer state does not match this run's parameter shapes")
    if not isinstance(blob["rng"], list) or not isinstance(blob["extra"], dict):
        raise ValueError("epoch, RNG state or timings malformed")
    check_progress(blob, lr_at, key)


def check_model(blob, net) -> None:
    """Raise ValueError unless `blob` has a run checkpoint's parts and its model's keys and shapes are `net`'s (a
    freshly built network of the run): run_all's first check (`_check_matches`), and bench.plan's."""
    if not isinstance(blob, dict) or not {"model", "optimizer", "rng", "epoch", "history", "extra"} <= set(blob):
        raise ValueError("not a run checkpoint (parts missing)")
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in blob["model"].items()} if isinstance(blob["model"], dict) else {}
    if have != want:
        raise ValueError("model weights do not match this run's model (keys or shapes differ)")


def check_progress(blob: dict, lr_at=None, key: str | None = None) -> None:
    """Raise ValueError unless the checkpoint's progress agrees with itself: an epoch counter equal to its history's
    length, each entry with all `HISTORY_KEYS`, timing sums its run's record takes (`_timings_ok`: a NaN there
    failed the run after its last epoch, on every rerun), and a part-done epoch (if any) holding what
    `engine.EpochState.to_dict` writes: counts, seconds and 0-dim sums (None before the first step); sessions as
    `bench.schema.valid_sessions` takes them; and given `lr_at(epoch)`, the run's LR in each epoch (from 0), a
    history at those LRs (a checkpoint of another run of the same network, another LR, was resumed as this one's,
    its record then claiming an LR it was not trained at); given the run's `key`, the run the checkpoint says it is
    of (`extra["run_key"]`; files written before 2026-12-05 have none and pass), which tells apart what the other
    checks cannot: a renamed checkpoint of the same network at the same LR (another seed, another ablation arm).
    Checked before any rank resumes it (and by bench.plan): in DDP mode only rank 0 takes the sums, so a bad value
    must not reach rank 0 alone (the others would wait)."""
    if not isinstance(blob["epoch"], int) or isinstance(blob["epoch"], bool) or blob["epoch"] < 0:
        raise ValueError("epoch, RNG state or timings malformed")
    history = blob["history"]
    if not isinstance(history, list) or len(history) != blob["epoch"]:
        raise ValueError(f"its history has {len(history) if isinstance(history, list) else 'no'} epochs, its epoch "
                         f"counter {blob['epoch']}")
    if not valid_history(history) or [h.get("epoch") for h in history] != list(range(1, len(history) + 1)):
        raise ValueError("its history is not one entry of numbers per epoch, in order")
    missing = [k for k in HISTORY_KEYS if any(k not in h for h in history)]
    if missing:  # runs.summary reads them: a KeyError failed the run on every rerun
        raise ValueError(f"its history lacks {', '.join(missing)}")
    if lr_at is not None and any(not math.isclose(h["lr"], lr_at(h["epoch"] - 1), rel_tol=1e-9) for h in history):
        raise ValueError("its history's learning rates are not this run's (a checkpoint of another run)")
    if not _timings_ok(blob.get("extra")):
        raise ValueError("its timings are not numbers the run's record accepts (finite, >= 0, at most 1e12)")
    if key is not None and blob["extra"].get("run_key", key) != key:
        raise ValueError(f"it is the checkpoint of run {str(blob['extra']['run_key'])[:40]!r}, not of {key!r} "
                         "(a renamed file)")
    if "sessions" in blob["extra"] and not valid_sessions(blob["extra"]["sessions"], blob["epoch"] + 1):
        raise ValueError("its sessions are not what bench.runs.session writes (bench.schema.valid_sessions)")
    es = blob.get("epoch_state")
    if es is not None and not _part_epoch_ok(es):
        raise ValueError("its part-done epoch is malformed")


def read(path: Path) -> tuple[bytes, object]:
    """A checkpoint's bytes (`read_bytes`) and what torch.load(weights_only=True) makes of them, for readers that
    do not resume it; ValueError "unreadable checkpoint (why)" when either fails."""
    import io

    data = read_bytes(path)
    try:
        return data, torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (truncated, not a torch file, or a pickle weights_only refuses)
        raise ValueError(f"unreadable checkpoint ({type(e).__name__})") from None


def progress(path: Path, lr_at=None, net=None) -> dict:
    """What a checkpoint says of its run, for readers that do not resume it (bench.plan, the reports): {"epoch":
    epochs done, "history": one entry per epoch as a record's, "wall_s": seconds trained or None, "sha256": of the
    file as read}. ValueError, one line starting "unreadable checkpoint" or "malformed checkpoint", for a file
    run_all would set aside (its history included: a report draws it; not a regular file: `read_bytes`; given
    `lr_at`, a history at other LRs: `check_progress`; given `net`, the run's freshly built network, another
    network's weights: `check_model`; a file named for another run than its own: `check_progress`)."""
    import hashlib

    data, blob = read(path)
    try:
        blob["epoch"], blob["history"]  # noqa: B018 (both there)
    except Exception as e:  # noqa: BLE001  (any damage: readers say so; run_all sets it aside when it resumes)
        raise ValueError(f"unreadable checkpoint ({type(e).__name__})") from None
    try:
        if net is not None:
            check_model(blob, net)
        check_progress(blob, lr_at, path.stem)
    except Exception as e:  # noqa: BLE001  (a value no check foresaw: malformed all the same)
        raise ValueError(f"malformed checkpoint: {e if isinstance(e, ValueError) else type(e).__name__}") from None
    return {"epoch": blob["epoch"], "history": blob["history"], "wall_s": blob["extra"].get("wall_s"),
            "sha256": hashlib.sha256(data).hexdigest()}


def _timings_ok(extra) -> bool:
    """`extra` as the run's record takes it: each of `TIMINGS` (0 when absent) a number in the range of the
    record's wall_time_s (finite, no bool, >= 0, at most 1e12), and the images per second made of them in theirs."""
    if not isinstance(extra, dict):
        return False
    t = {k: extra.get(k, 0) for k in TIMINGS}
    return all(in_range("wall_time_s", v) for v in t.values()) and all(
        v is None or in_range(k, v) for k, v in rates(t).items())


def _part_epoch_ok(es) -> bool:
    def number(v, kind) -> bool:
        return isinstance(v, kind) and not isinstance(v, bool) and 0 <= v < float("inf")

    def tensor(v, floating: bool) -> bool:  # a 0-dim CPU tensor as EpochState saves it (not meta, sparse, quantized)
        return v is None or (torch.is_tensor(v) and v.device.type == "cpu" and v.layout == torch.strided and
                             not v.is_quantized and v.dim() == 0 and v.dtype.is_floating_point == floating and
                             not v.dtype.is_complex and v.dtype != torch.bool and (floating or v.item() >= 0))

    return isinstance(es, dict) and set(es) == {"step", "loss_sum", "correct", "seen", "train_seconds",
                                                "steady_seconds", "steady_images"} \
        and number(es["step"], int) and number(es["steady_images"], int) \
        and number(es["train_seconds"], (int, float)) and number(es["steady_seconds"], (int, float)) \
        and tensor(es["loss_sum"], True) and tensor(es["correct"], False) and tensor(es["seen"], False)


def _match_layout(optimizer) -> None:
    """Each parameter's optimizer state (momentum, Adam's moments) in the parameter's memory layout: a checkpoint
    saved under channels_last resumes under the contiguous format and the other way round (`channels_last` is not
    part of a run's key), and fused optimizers refuse state whose strides differ from the parameter's."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def load_checkpoint(path: Path, accelerator, net, optimizer, *, rank: int, world: int,
                    epoch_state=dict, lr_at=None) -> dict | None:
    """Restore what `save_checkpoint` wrote into a freshly built model and optimizer (before any DDP wrapping);
    returns the checkpoint's epoch, epoch_state, history and extra, or None without a usable checkpoint. A file that
    is no regular file (a FIFO, a device, a folder, a dangling link) or is over `MAX_BYTES`, cannot be loaded safely
    (weights_only refuses it), is truncated, or does not match the run is set aside
    (rank 0 moves it) and None returned, with the model, optimizer and RNGs as they were: the run starts again from
    epoch 0. The RNG state is this rank's when the world size matches, else the caller's seeding stands (the run
    stays valid, not bit-identical). `rank` and `world` are the run's own (0 and 1 for a grid-mode run);
    `epoch_state` builds the part-done epoch from its saved fields (engine.EpochState); `lr_at(epoch)`, when given,
    is the run's LR schedule, which its history must show (`check_progress`)."""
    import copy
    import io
    import sys

    if not os.path.lexists(path):
        return None
    device = _device_of(net)
    before = copy.deepcopy((net.state_dict(), optimizer.state_dict())), rng_state(device)
    try:
        blob = torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=True)
        _check_matches(blob, net, optimizer, lr_at, path.stem)
        if len(blob["rng"]) == world:
            set_rng_state(blob["rng"][rank], device)
        net.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])  # torch moves the state to each parameter's device
        _match_layout(optimizer)
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and blob.get("scaler"):
            scaler.load_state_dict(blob["scaler"])
        es = blob.get("epoch_state")
        blob["epoch_state"] = epoch_state(**es) if es is not None else None
    except MemoryError:  # this machine's limit, not the file's damage: it stays for a rerun
        raise
    except Exception as e:  # untrusted input: whatever is wrong with it, the run restarts rather than fails
        (model_state, optimizer_state), rng = before
        net.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        set_rng_state(rng, device)
        reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        if rank == 0:
            print(f"warning: checkpoint {path} not resumed, {set_aside(path)}: {reason}; the run starts again from "
                  "epoch 0", file=sys.stderr)
        return None
    return blob
