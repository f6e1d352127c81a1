"""A run's state across epochs, for `bench/run_all.py` and `bench/fused_train.py`: its history, timing sums, the
first epoch still to train and a part-done epoch (`bench.engine.EpochState`), restored from and saved to its
checkpoint (bench/checkpoint.py: one file per run).

    state = RunState.resume(path, accelerator, net, optimizer, rank=..., world=..., lr_at=run.lr_at, session=...)
    entry = state.end_epoch(es, epoch, lr, accelerator, distributed=..., steady=...)  # es: engine.train_one_epoch's
    state.evaluate(entry, net, evals, preprocess, accelerator, ...)
    state.append(entry)
    state.save(accelerator, net, optimizer, epoch + 1, distributed=...)

In DDP mode every rank calls `end_epoch` and `save` together: the epoch's sums are taken over all ranks (`rank_sums`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench import engine
from bench.checkpoint import TIMINGS, load_checkpoint, save_checkpoint
from bench.engine import EpochState
from bench.schema import MAX_SESSIONS, SESSION_TYPES


def sessions_after(blob: dict | None, session: dict | None, epoch: int) -> list:
    """The run's sessions (bench/schema.py) once `session` (None: not recorded) resumes the checkpoint `blob` (None:
    none, a fresh run) at 0-based `epoch`: those its `extra` carries (checked by `checkpoint.check_progress`), or for a
    checkpoint written before sessions were kept one entry from epoch 1 with every other field null (unknown), then
    this one. Past `MAX_SESSIONS`, the first and the latest are kept."""
    unknown = dict(dict.fromkeys(SESSION_TYPES), from_epoch=1)
    sessions = [] if blob is None else list(blob["extra"].get("sessions", [unknown]))
    if session is not None:
        sessions.append(dict(session, from_epoch=epoch + 1))
    return sessions if len(sessions) <= MAX_SESSIONS else sessions[:1] + sessions[1 - MAX_SESSIONS:]


@dataclass
class RunState:
    """A run's state across epochs: its history, timing sums, the first epoch still to train and a part-done
    epoch, restored from and saved to its checkpoint file (`save_checkpoint`: one file per run)."""
    path: Path
    history: list = field(default_factory=list)
    timings: dict = field(default_factory=lambda: {k: 0 if k.endswith("_img") else 0.0 for k in TIMINGS})
    epoch: int = 0
    epoch_state: EpochState | None = None
    started: float = field(default_factory=time.perf_counter)
    sessions: list = field(default_factory=list)  # the record's `sessions`, this one last (bench/schema.py)

    @classmethod
    def resume(cls, path: Path, accelerator, net, optimizer, *, rank: int, world: int, lr_at=None,
               session: dict | None = None) -> RunState:
        """The checkpointed state, restoring net and optimizer, or a fresh one without a checkpoint (or one whose
        history's LRs are not `lr_at(epoch)`'s: checkpoint.load_checkpoint); `session` (bench.runs.session) joins
        the sessions the checkpoint carries."""
        ckpt = load_checkpoint(path, accelerator, net, optimizer, rank=rank, world=world, epoch_state=EpochState,
                               lr_at=lr_at)
        if ckpt is None:
            return cls(path, sessions=sessions_after(None, session, 0))
        es = ckpt["epoch_state"]
        if es is not None and rank != 0:  # rank 0 resumes the part-done epoch's sums over all ranks (`save`)
            es = replace(es, loss_sum=None, correct=None, seen=None, steady_images=0)
        state = cls(path, ckpt["history"], epoch=ckpt["epoch"], epoch_state=es,
                    sessions=sessions_after(ckpt, session, ckpt["epoch"]))
        state.timings.update({k: v for k, v in ckpt["extra"].items() if k in TIMINGS})  # checked (check_progress);
        # a sum the file lacks starts at 0
        return state

    def wall_seconds(self) -> float:
        return self.timings["wall_s"] + time.perf_counter() - self.started

    def save(self, accelerator, net, optimizer, epoch: int, epoch_state: EpochState | None = None, *,
             distributed: bool) -> None:
        """Every rank calls it in DDP mode: a part-done epoch is saved with its sums over all ranks."""
        if epoch_state is not None and distributed:
            loss_sum, correct, seen, steady_images = rank_sums(epoch_state, accelerator, distributed)
            epoch_state = replace(epoch_state, loss_sum=torch.tensor(loss_sum), correct=torch.tensor(int(correct)),
                                  seen=torch.tensor(int(seen)), steady_images=int(steady_images))
        save_checkpoint(self.path, accelerator, net, optimizer, epoch=epoch,
                        epoch_state=epoch_state.to_dict() if epoch_state is not None else None,
                        history=self.history, extra=dict(self.timings, wall_s=self.wall_seconds(),
                                                         **({"sessions": self.sessions} if self.sessions else {})),
                        distributed=distributed)

    def end_epoch(self, es: EpochState, epoch: int, lr: float, accelerator, *, distributed: bool,
                  steady: bool) -> dict:
        """The epoch's history entry from its sums (over all ranks in DDP mode); `steady` epochs add to the
        training throughput. Evaluation fills the error fields later."""
        loss_sum, correct, seen, steady_images = rank_sums(es, accelerator, distributed)
        if steady:
            self.timings["steady_s"] += es.steady_seconds
            self.timings["steady_img"] += int(steady_images)
        self.epoch_state = None
        return {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc_pct": 100 * correct / seen,
                "test_error_pct": None, "val_error_pct": None, "test_loss": None, "val_loss": None, "lr": lr,
                "seconds": es.train_seconds}

    def evaluate(self, entry: dict, net, evals: dict, preprocess, accelerator, *, autocast=None, channels_last=False,
                 distributed: bool = False) -> None:
        """Fill the entry's `<name>_error_pct` and `<name>_loss` for each of `evals` (name -> (loader, the split's
        image count)), adding the time to the epoch's seconds and the evaluation throughput. Evaluates the bare net:
        DDP's forward syncs buffers, and ranks' batch counts may differ."""
        for name, (loader, expected) in evals.items():
            correct, seen, seconds, loss_sum = engine.evaluate(net, loader, preprocess, accelerator, autocast=autocast,
                                                               channels_last=channels_last, distributed=distributed)
            self.add_evaluation(entry, name, correct, seen, expected, seconds, loss_sum)

    def add_evaluation(self, entry: dict, name: str, correct: int, seen: int, expected: int, seconds: float,
                       loss_sum: float) -> None:
        """One split's evaluation into the entry (`<name>_error_pct`, `<name>_loss`: the mean cross-entropy, None
        when not finite, its seconds) and the evaluation throughput."""
        if seen != expected:
            raise RuntimeError(f"{name} evaluation counted {seen} images, the split has {expected}")
        entry[f"{name}_error_pct"] = 100 * (1 - correct / seen)
        entry[f"{name}_loss"] = loss_sum / seen if math.isfinite(loss_sum) else None
        entry["seconds"] += seconds
        self.timings["eval_s"] += seconds
        self.timings["eval_img"] += seen

    def append(self, entry: dict) -> None:
        """Add an epoch to the history; a loss that is not finite is stored as None (JSON has no NaN)."""
        self.history.append(dict(entry, loss=entry["loss"] if math.isfinite(entry["loss"]) else None))


def rank_sums(es: EpochState, accelerator, distributed: bool) -> list[float]:
    """The epoch's loss sum, correct count, images and steady-state images, over all ranks in DDP mode (one
    all-reduce: every rank must call it)."""
    sums = torch.stack([es.loss_sum.float(), es.correct.float(), es.seen.float(),
                        torch.tensor(float(es.steady_images), device=es.seen.device)])
    return (accelerator.reduce(sums, "sum") if distributed else sums).tolist()
