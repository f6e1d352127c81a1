"""Train the whole Table 3 grid (12 models x the LR grid, plus any ablations) into a resumable results ledger.

    accelerate launch --config_file accelerate_config.yaml bench/run_all.py        # the paper, every GPU
    python bench/run_all.py --preset smoke --source ../shared/data/cifar10-jpeg.tar.gz --out /tmp/smoke

Each run's record lands in <out>/runs/<run_key>.json (bench/results.py); a rerun of the same command skips
recorded runs and resumes unfinished ones from <out>/checkpoints/. `--help` lists every option (bench/cli.py: one
per bench/config.py field).

--mode grid (one run per process, no gradient sync, each run at the full batch): the fast way whenever there are at
least as many runs as processes, e.g. the 48-run grid on 8 GPUs; results do not depend on the process count.
--mode ddp (every run on all processes, global batch split): when runs are fewer than processes, or one run must
finish soon. auto (default) picks grid when len(runs) >= processes. Which one ran is recorded as `mode`.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # and not bench/, whose modules are not top-level

import loaders  # noqa: E402
from bench import engine, files, fused_train, graphs, process, results, weights, workqueue  # noqa: E402
from bench.run_state import RunState  # noqa: E402
from bench.cli import UsageError, parse_args  # noqa: E402
from bench.config import Run, expand, graphable  # noqa: E402
from bench.progress import Progress  # noqa: E402
from bench.runs import (Interrupted, build_net, diagnosed, eval_loaders, failed, make_record, now,  # noqa: E402
                        session, stop_reason, summary, train_loader)

STOP = {"requested": False, "signal": signal.SIGTERM}  # set by SIGTERM or Ctrl-C (SIGINT), `stop_on`: the loop
# checkpoints at the next step boundary and exits with 128 + the signal's number (143, 130)


def stop_on(signum, _frame) -> None:
    """SIGTERM's and the first Ctrl-C's handler: stop at the next step boundary, checkpointing. A second Ctrl-C kills
    at once (the default action), as a user who presses it again expects."""
    STOP.update(requested=True, signal=signal.Signals(signum))
    if signum == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(run: Run, key: str, acc, ddp: bool, proc: dict | None = None):
    """The run's bare net, the model that trains (DDP-wrapped and compiled as configured), its optimizer and its
    `RunState`, restored from the run's checkpoint if there is one, with this session (`runs.session`) added."""
    import torch
    from accelerate.utils import set_seed

    set_seed(run.seed)  # the same initial weights on every rank
    net, optimizer = build_net(run, acc.device)
    if ddp:
        set_seed(run.seed, device_specific=True)  # each rank its own dropout masks
    state = RunState.resume(Path(run.cfg.out) / "checkpoints" / f"{key}.pt", acc, net, optimizer,
                            rank=acc.process_index if ddp else 0, world=acc.num_processes if ddp else 1,
                            lr_at=run.lr_at,
                            session=session(run, proc))
    model = net
    if ddp:
        model, optimizer = acc.prepare(net, optimizer)
        # prepare() also wraps the bare net's own forward in the Accelerator's autocast, which evaluation (on the
        # bare net) would inherit: a bf16 Accelerator would evaluate in bf16 under --eval-precision no. train_step
        # enters the run's autocast itself, so the class's forward is all DDP needs.
        net.__dict__.pop("forward", None)
    else:
        optimizer = acc.prepare_optimizer(optimizer)  # the grad scaler (fp16); no DDP wrapper, no gradient sync
    return net, torch.compile(model) if run.cfg.compile else model, optimizer, state


def train_one(run: Run, key: str, acc, data, num_images: dict, ddp: bool, show: Progress, claim=None,
              proc: dict | None = None) -> dict:
    """Train and evaluate one run, resuming its checkpoint if there is one, with its own tracker run. Returns the
    record's result fields. A run at precision "no" is full fp32 (TF32 off on CUDA, `engine.full_fp32`)."""
    tracker, outcome = show.tracker(run, key), None
    try:
        with engine.full_fp32(acc.device, run.cfg.precision == "no"):
            outcome = _train(run, key, acc, data, num_images, ddp, show, tracker, claim, proc)
        return outcome
    finally:
        tracker.finish(outcome)


def _train(run: Run, key: str, acc, data, num_images: dict, ddp: bool, show: Progress, tracker, claim,
           proc=None) -> dict:
    c, world = run.cfg, acc.num_processes if ddp else 1
    engine.reset_peak_memory(acc.device)  # the record's peak_memory_mb: this run's, not the process's
    train = train_loader(data, run, world)
    preprocess = data.preprocess(c.preprocess, c.train_split)
    evals = eval_loaders(data, c, num_images)
    autocast = engine.autocast_for(c.precision, acc)
    eval_autocast = engine.autocast_for(c.eval_precision, acc)  # fp32 unless --eval-precision says otherwise
    net, model, optimizer, state = start_run(run, key, acc, ddp, proc)
    step = graphs.graphed_train_step(model, optimizer, preprocess, acc, autocast, c.channels_last) \
        if c.cuda_graphs else None
    stop, status, error = (lambda: STOP["requested"]), "completed", None
    checkpoints = workqueue.Checkpoints(c.checkpoint_minutes, [claim] if claim is not None else [], acc, ddp)

    for epoch in range(state.epoch, c.epochs):
        lr = run.lr_at(epoch)
        engine.set_lr(optimizer, lr)
        train.set_epoch(epoch)
        bar = show.epoch_bar(run, epoch, len(train), state.history[-1] if state.history else None)
        es = engine.train_one_epoch(model, optimizer, train, preprocess, acc, autocast=autocast,
                                    channels_last=c.channels_last, state=state.epoch_state, stop_flag=stop,
                                    warmup_steps=min(5, len(train) // 4) if c.epochs == 1 else 0,  # time 1 epoch
                                    distributed=ddp, progress=bar, step=step)
        if bar is not None:
            bar.close()
        due = checkpoints.due(epoch + 1, c.epochs)  # the claim's heartbeat (ClaimLost) before anything is written
        if es.stopped:  # SIGTERM or Ctrl-C mid-epoch: checkpoint where it is
            state.save(acc, net, optimizer, epoch, es, distributed=ddp)
            raise Interrupted
        # the first epoch (JIT, compile, cache warm-up) is not steady state
        entry = state.end_epoch(es, epoch, lr, acc, distributed=ddp, steady=epoch > 0 or c.epochs == 1)
        if math.isfinite(entry["loss"]) and c.evaluates(epoch + 1):
            state.evaluate(entry, net, evals, preprocess, acc, autocast=eval_autocast, channels_last=c.channels_last,
                           distributed=ddp)
        stopped = stop_reason(entry, epoch + 1, c)
        state.append(entry)
        tracker.log(state.history[-1])
        show.epoch_done(run, state.history[-1])
        if stopped:
            status, error = stopped
            if status == "stalled":  # a retry (e.g. without --stall-after) resumes here
                state.save(acc, net, optimizer, epoch + 1, distributed=ddp)
            break
        if engine.stop_agreed(stop, acc, ddp):
            state.save(acc, net, optimizer, epoch + 1, distributed=ddp)
            raise Interrupted
        if due:
            state.save(acc, net, optimizer, epoch + 1, distributed=ddp)

    if ddp and status == "completed":
        engine.check_replicas(net, acc)
    outcome = summary(state, status, error, net, acc, autocast, eval_autocast)
    outcome["diagnosis"] = diagnosed(status, net, data, c, acc, eval_autocast, distributed=ddp)
    weights.save(status, run, key, net, outcome, writer=acc.is_main_process or not ddp)
    return outcome


def main(argv: list[str] | None = None) -> int:
    process.die_with_launcher()
    created = []
    try:
        cfg = parse_args(argv)
        cfg = dataclasses.replace(cfg, backend=loaders.resolve_backend(cfg.backend))  # recorded resolved
        if cfg.source != "torchvision" and not Path(cfg.source).expanduser().exists():
            raise UsageError(f"data: source not found: {cfg.source}")
        if cfg.cuda_graphs and not graphable(cfg):
            raise UsageError("--cuda-graphs captures the whole step: not with --optimizer adam (torch captures no "
                             "Adam step), --precision fp16 (its loss scaler reads the GPU every step) or --compile")
        acc = process.make_accelerator(cfg.precision, project_dir=cfg.out,  # trackers: one per run (progress.py)
                                       deterministic=cfg.deterministic)
        world = acc.num_processes
        planned = expand(cfg)  # the grid and its ablation arms (their keys need the data: below)
        mode = cfg.mode if cfg.mode != "auto" else ("grid" if len(planned) >= world else "ddp")
        if cfg.cuda_graphs and (acc.device.type != "cuda" or mode == "ddp"):
            raise UsageError("--cuda-graphs needs a CUDA device and --mode grid (one process per run); "
                             f"here: {acc.device.type}, mode {mode}")
        if cfg.fuse_lrs and mode == "ddp" and world > 1:
            raise UsageError(f"--fuse-lrs needs --mode grid (each process trains its own runs); here: {world} "
                             "processes in mode ddp")
        for batch in sorted({r.cfg.batch_size for r in planned}) if mode == "ddp" else ():  # and the arms'
            if batch % world:
                what = "--batch-size" if batch == cfg.batch_size else "an ablation arm's batch size"
                raise UsageError(f"{what} {batch} is not divisible by {world} processes")
        created = process.check_writable(cfg.out)
        show = Progress(cfg, acc)
        group = process.finish_group(acc)
        manifest = process.prepare_data(cfg.source, cfg.data_dir, acc, subset_per_class=cfg.subset_per_class)
    except (UsageError, ValueError, files.WriteError) as e:  # bad input: 2; a full disk: 1, as later on
        process.remove_empty(created)
        rank, full = process.launch_rank(), isinstance(e, files.WriteError)
        message = workqueue.write_failed(e) if full else f"error: {e}"
        if rank == "0":  # once per launch, not once per rank
            print(message, file=sys.stderr, flush=True)
        else:  # the launcher kills every rank when the first exits: let rank 0 say why before this one does
            time.sleep(30)  # (cut short by the launcher as soon as rank 0 has exited)
            # still here: rank 0 did not fail (an error of this rank only, e.g. its own disk), so say it here
            print(f"{message} (rank {rank})", file=sys.stderr, flush=True)
        return 1 if full else 2
    data_sha = manifest["source_sha256"]
    runs = expand(cfg, data_sha)
    keys = [r.key(data_sha) for r in runs]
    ddp = mode == "ddp" and world > 1
    done = workqueue.agree(workqueue.done_keys(cfg.out) & set(keys), acc, ddp)  # DDP: rank 0's list for all
    pending = [(r, k) for r, k in zip(runs, keys) if k not in done]
    mine = workqueue.longest_first(pending, manifest["num_images"])  # claimed one by one below

    show.plan(runs, done, pending, mine, mode, world, ddp)
    data = loaders.Cache(cfg.data_dir, backend=cfg.backend, device=acc.device, distributed=ddp,
                         batch_size=cfg.batch_size // (world if ddp else 1),
                         num_workers=cfg.num_workers or loaders.workers_per_process())
    env = results.environment(acc.device)
    proc = dict(env, mode=mode, world_size=world)  # each run's session (runs.session) in this process
    if mine and acc.is_main_process:
        rate = measure_rate(mine[0][0], acc, data, ddp)
        show.eta(workqueue.eta_seconds(mine, manifest["num_images"], rate, world), rate, mine[0][0].model)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_on)

    items = workqueue.work_items(mine)  # one run each, or with --fuse-lrs one model's LRs together
    try:
        for members in workqueue.claimed(items, cfg.out, stop=lambda: STOP["requested"],
                                         lease_s=cfg.claim_lease_minutes * 60, acc=acc, ddp=ddp):
            started_at = now()

            def finished(run, key, claim, outcome, started=started_at):
                """Write the run's record, drop its checkpoint when it is done, release its claim; raises WriteError.
                Nothing when the claim was taken over meanwhile (e.g. a run that failed after a suspension): the new
                owner records the run."""
                lost = workqueue.agree((acc.is_main_process or not ddp) and not claim.held(), acc, ddp)
                if lost:
                    print(f"warning: {workqueue.ClaimLost([key])}", file=sys.stderr, flush=True)
                    return
                record = make_record(run, key, data_sha, manifest, env, mode, world, started, outcome)
                failure = None
                if acc.is_main_process or not ddp:
                    try:
                        results.write_record(cfg.out, record)
                    except files.WriteError as e:
                        failure = e
                    if failure is None and record["status"] in workqueue.DONE:  # failed/stalled keep their checkpoint
                        (Path(cfg.out) / "checkpoints" / f"{key}.pt").unlink(missing_ok=True)
                    claim.release()
                failure = workqueue.agree(failure, acc, ddp)
                if failure is not None:
                    raise failure
                show.run_done(run, key, record)

            def alone(run, key, claim):
                """Train one run by itself and record it."""
                started = now()
                try:
                    outcome = train_one(run, key, acc, data, manifest["num_images"], ddp, show, claim, proc)
                except (Interrupted, files.WriteError, workqueue.ClaimLost):
                    raise
                except Exception as e:  # one broken run is recorded and the grid goes on; config bugs raised above
                    outcome = failed(e)
                finished(run, key, claim, outcome, started)

            try:
                if len(members) > 1:
                    fused_train.train_group(members, acc, data, manifest["num_images"], show,
                                            stop=lambda: STOP["requested"], alone=alone, finished=finished,
                                            proc=proc)
                else:
                    alone(*members[0])
            except Interrupted:
                show.interrupted(", ".join(key for _, key, _ in members), STOP["signal"].name)
                return 128 + STOP["signal"]
            except workqueue.ClaimLost as e:
                print(f"warning: {e}", file=sys.stderr, flush=True)
            acc.free_memory()
    except files.WriteError as e:  # full disk (a record, a checkpoint, a claim): not the run's fault, so not
        return write_failed(e, acc, ddp)  # recorded as failed
    if STOP["requested"]:  # a signal between runs: nothing to checkpoint
        show.interrupted(None, STOP["signal"].name)
        return 128 + STOP["signal"]
    process.finish(acc, group)
    show.summary(keys)
    return 0


def write_failed(e: OSError, acc, ddp: bool) -> int:
    """A write failed (full disk): one line, exit 1 (the claim is released as the queue is closed)."""
    if acc.is_main_process or not ddp:
        print(workqueue.write_failed(e), file=sys.stderr)
    return 1


def measure_rate(run: Run, acc, data: loaders.Cache, ddp: bool) -> float:
    """Training images/s of this process on a few steps of the first pending run, for the ETA."""
    c = run.cfg
    net, opt = build_net(run, acc.device)
    images, labels = next(iter(train_loader(data, run, acc.num_processes if ddp else 1)))
    return engine.measure_step_rate(net, opt, images, labels, data.preprocess(c.preprocess, c.train_split), acc,
                                    engine.autocast_for(c.precision, acc), c.channels_last)


if __name__ == "__main__":
    sys.exit(main())
