"""`--fuse-lrs` (issue 12): the runs of one model and seed that differ only in LR, trained in lockstep as one fused
model (bench/fused.py's FusedRuns) through the same epochs, evaluations, checkpoints and records as run_all's
one run at a time (bench/run_all.py `_train`), so that each run's record and checkpoint read as if it had trained
alone, up to float rounding and the draw of the dropout masks (tests/test_fused_train.py; bench/fused.py).

    train_group([(run, key, claim), ...], acc, data, num_images, show, stop=..., alone=..., finished=...)

Each run keeps its own checkpoint file (a fused group resumes from separate runs' checkpoints and the other way
round), history, early stop (a run whose loss is not finite is recorded "diverged" at that epoch and masked out of
the group; the others go on) and timings: its train_images_per_s is its own images over the group's time, so the
group's throughput is the sum over its runs (`fused_runs` in each record says how many; wall time and peak memory
are the group's). A run that diverges keeps its last finite weights in the group, so the training accuracy of its
diverged epoch counts their predictions where a separate run's counts NaN logits: that one figure may differ. A run
is recorded as soon as it ends (`finished(run, key, claim, outcome)`), so an interrupted group never trains a
finished run again. A run whose claim another process took over (this one was stopped past the lease) leaves the
group at the next epoch's end, with a warning and nothing more written for it; the others train on (every run's:
the group stops, workqueue.ClaimLost). Runs whose checkpoints are at different points (epoch and step) cannot
share steps: the runs at each point train as a group of their own, the furthest along first, and a run alone at its
point trains and records itself (`alone`). So a grid resumed with one LR's run part-trained (the GPU campaign's
All-CNN-C: LR 0.01 at epoch 223, LR 0.1 and 0.25 not begun) trains that run alone, then the others fused.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from bench import engine, graphs, weights, workqueue
from bench.engine import EpochState
from bench.run_state import RunState
from bench.fused import FusedRuns
from bench.files import WriteError
from bench.runs import (Interrupted, build_net, diagnosed, eval_loaders, failed, session, stop_reason, summary,
                        train_loader)


def train_group(members: list, acc, data, num_images: dict, show, *, stop, alone, finished, proc=None) -> None:
    """Train the runs of `members` ([(run, key, claim), ...]: one model, seed and config, LRs differ) together,
    recording each with `finished` when it ends. Raises Interrupted after checkpointing every run still training
    when `stop()` turns true. When building or training raises, every run not yet recorded is recorded "failed"
    (retried on rerun) and the grid goes on, as for a run trained alone. `proc`: this process for each run's
    session (bench.runs.session)."""
    c = members[0][0].cfg
    ended, trackers = set(), []  # the members already recorded (or left to another process)
    engine.reset_peak_memory(acc.device)  # the records' peak_memory_mb: this group's, not the process's

    def done(k, outcome):  # outcome None: the run's claim was taken over, the run left to its new owner
        ended.add(k)
        if trackers:
            trackers[k].finish(outcome)
        if outcome is not None:
            finished(*members[k], outcome)

    with engine.full_fp32(acc.device, c.precision == "no"):
        try:
            nets, optimizers, states = [], [], []
            for run, key, _ in members:
                set_seed(run.seed)  # as run_all's start_run: each run's initial weights; after the last, the RNG
                net, optimizer = build_net(run, acc.device)
                path = Path(c.out) / "checkpoints" / f"{key}.pt"
                states.append(RunState.resume(path, acc, net, optimizer, rank=0, world=1,
                                              lr_at=run.lr_at,
                                              session=session(run, proc)))
                nets.append(net)
                optimizers.append(optimizer)
            points = [(s.epoch, s.epoch_state.step if s.epoch_state else 0) for s in states]
            if len(set(points)) > 1:  # the runs at each point as a group of their own, the furthest along first
                for point in sorted(set(points), reverse=True):
                    ks = [k for k, p in enumerate(points) if p == point]
                    ended.update(ks)  # from here on recorded by the calls below (or left to another process)
                    held = [k for k in ks if members[k][2].held()]  # a waiting claim may have gone stale
                    for k in held:
                        members[k][2].heartbeat()
                    if len(held) > 1:
                        train_group([members[k] for k in held], acc, data, num_images, show, stop=stop,
                                    alone=alone, finished=finished, proc=proc)
                    elif held:
                        alone(*members[held[0]])  # records the run itself
                return
            trackers.extend(show.tracker(run, key) for run, key, _ in members)
            group = FusedRuns(nets, optimizers, preprocess=data.preprocess(c.preprocess, c.train_split),
                              precision=c.precision, eval_precision=c.eval_precision, channels_last=c.channels_last)
            _train(group, members, states, acc, data, num_images, show, trackers, stop, done)
        except (Interrupted, WriteError, workqueue.ClaimLost):
            for k, tracker in enumerate(trackers):
                if k not in ended:
                    tracker.finish(None)
            raise
        except Exception as e:  # as run_all's one run: recorded, and the grid goes on
            left = [k for k in range(len(members)) if k not in ended]
            if not left:  # raised outside any run (e.g. by a claim): as it would for a run trained alone
                raise
            for k in left:
                done(k, failed(e))


def _train(group: FusedRuns, members, states, acc, data, num_images, show, trackers, stop, done) -> None:
    runs = [run for run, _, _ in members]
    c = runs[0].cfg
    train = train_loader(data, runs[0])  # grid mode: one process
    evals = eval_loaders(data, c, num_images)
    autocast, eval_autocast = engine.autocast_for(c.precision, acc), engine.autocast_for(c.eval_precision, acc)
    checkpoints = workqueue.Checkpoints(c.checkpoint_minutes, [claim for _, _, claim in members])
    live = list(range(len(members)))
    step = graphs.GraphedStep(group.train_step, acc.device) if c.cuda_graphs else group.train_step

    def finish(ks, status, error):
        """Record the runs `ks` as ended: every summary first (no run's time includes another's diagnosis)."""
        outcomes = {k: summary(states[k], status, error, group.nets[k], acc, autocast, eval_autocast,
                               fused_runs=len(members)) for k in ks}
        for k in ks:
            outcomes[k]["diagnosis"] = diagnosed(status, group.nets[k], data, c, acc, eval_autocast)
            weights.save(status, runs[k], members[k][1], group.nets[k], outcomes[k])
            done(k, outcomes[k])

    def save(epoch, split=None):
        group.write_back()
        for k in live:
            states[k].save(acc, group.nets[k], group.optimizers[k], epoch, split[k] if split else None,
                           distributed=False)

    for epoch in range(states[0].epoch, c.epochs):
        lrs = [run.lr_at(epoch) for run in runs]
        group.set_lrs(lrs)
        train.set_epoch(epoch)
        bar = show.epoch_bar(runs[live[0]], epoch, len(train), states[live[0]].history[-1]
                             if states[live[0]].history else None)
        parts = [s.epoch_state or EpochState() for s in states]  # a part-done epoch per run, or a fresh one
        es = engine.train_one_epoch(group.base, None, train, None, acc, state=_joined(parts, acc.device),
                                    stop_flag=stop, warmup_steps=min(5, len(train) // 4) if c.epochs == 1 else 0,
                                    progress=bar, step=step)  # group.base: train() only
        if bar is not None:
            bar.close()
        split = _split(es, parts)
        due = checkpoints.due(epoch + 1, c.epochs, lost := [])  # the heartbeat, before anything is written
        gone = [k for k in live if members[k][1] in lost]  # another process trains these now: they leave the group
        if gone == live:  # every run: as for a run alone
            raise workqueue.ClaimLost(lost)
        if gone:
            print(f"warning: {workqueue.ClaimLost(lost)}; the others train on", file=sys.stderr, flush=True)
        for k in gone:
            group.drop(k)
            live.remove(k)
            done(k, None)  # its tracker finished, no record, its claim the new owner's
        if es.stopped:  # SIGTERM mid-epoch: the runs still ours checkpoint where they are
            save(epoch, split)
            raise Interrupted
        entries = {k: states[k].end_epoch(split[k], epoch, lrs[k], acc, distributed=False,
                                          steady=epoch > 0 or c.epochs == 1) for k in live}
        if c.evaluates(epoch + 1):
            _evaluate(group, {k: e for k, e in entries.items() if math.isfinite(e["loss"])}, states, evals, acc)
        for k, entry in entries.items():
            stopped = stop_reason(entry, epoch + 1, c)
            states[k].append(entry)
            trackers[k].log(states[k].history[-1])
            show.epoch_done(runs[k], states[k].history[-1])
            if stopped:
                group.drop(k)
                live.remove(k)
                if stopped[0] == "stalled":  # a retry resumes here, as run_all's
                    group.write_back()
                    states[k].save(acc, group.nets[k], group.optimizers[k], epoch + 1, distributed=False)
                finish([k], *stopped)
        if not live:
            return
        if engine.stop_agreed(stop, acc, False):
            save(epoch + 1)
            raise Interrupted
        if due:
            save(epoch + 1)
    group.write_back()
    finish(list(live), "completed", None)


def _joined(parts: list[EpochState], device) -> EpochState:
    """The runs' part-done epochs (all at one step: train_group checks) as one EpochState whose sums are [K]; its
    times start at 0 and are added to each run's own (`_split`)."""
    zero, first = torch.zeros((), device=device), parts[0]
    return EpochState(step=first.step, seen=first.seen,
                      loss_sum=torch.stack([zero if p.loss_sum is None else p.loss_sum.to(device) for p in parts]),
                      correct=torch.stack([zero.long() if p.correct is None else p.correct.to(device) for p in parts]))


def _split(es: EpochState, parts: list[EpochState]) -> list[EpochState]:
    """The group's epoch as each run's own EpochState: its loss and correct sums, the shared image count, and the
    group's time added to the time the run had spent in this epoch before (a checkpoint of its own)."""
    return [EpochState(step=es.step, loss_sum=es.loss_sum[i].clone(), correct=es.correct[i].clone(), seen=es.seen,
                       train_seconds=p.train_seconds + es.train_seconds,
                       steady_seconds=p.steady_seconds + es.steady_seconds,
                       steady_images=p.steady_images + es.steady_images, stopped=es.stopped)
            for i, p in enumerate(parts)]


def _evaluate(group: FusedRuns, entries: dict, states, evals: dict, acc) -> None:
    """RunState.evaluate for the runs of `entries` (index -> history entry) at once: every run in one pass over
    each split; the time is each run's."""
    if not entries:
        return
    for name, (loader, expected) in evals.items():
        correct, seen, seconds, loss_sum = engine.evaluate(group.base, loader, None, acc, step=group.eval_step)
        for k, entry in entries.items():
            states[k].add_evaluation(entry, name, correct[k], seen, expected, seconds, loss_sum[k])
