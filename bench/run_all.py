"""Train the whole Table 3 grid (12 models x the LR grid, plus any ablations) into a resumable results ledger.

    accelerate launch --config_file accelerate_config.yaml bench/run_all.py        # the paper, every GPU
    python bench/run_all.py --preset smoke --source ../shared/data/cifar10-jpeg.tar.gz --out /tmp/smoke

Each run's record lands in <out>/runs/<run_key>.json (bench/results.py); a rerun of the same command skips
recorded runs and resumes unfinished ones from <out>/checkpoints/. `--help` lists every option (bench/config.py).

--mode grid (one run per process, no gradient sync, each run at the full batch): the fast way whenever there are at
least as many runs as processes, e.g. the 48-run grid on 8 GPUs; results do not depend on the process count.
--mode ddp (every run on all processes, global batch split): when runs are fewer than processes, or one run must
finish soon. auto (default) picks grid when len(runs) >= processes. Which one ran is recorded as `mode`.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import allconv  # noqa: E402
from bench import engine, results  # noqa: E402
from bench.config import TRAIN_SPLITS, Run, RunConfig, UsageError, expand, parse_args  # noqa: E402

CHANCE_MARGIN_PCT = 1.0  # a run whose training accuracy stays within this of 1/num_classes has diverged
NUM_CLASSES = 10
STOP = {"requested": False}  # set by SIGTERM; the loop checkpoints at the next step boundary and exits


class Interrupted(Exception):
    """SIGTERM: the run was checkpointed; the process exits non-zero without a record."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision=cfg.precision, log_with=cfg.log_with, project_dir=cfg.out)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and acc.num_processes != launched:
        raise UsageError(f"launched {launched} processes but Accelerate is not distributed (no CUDA?): on CPU use "
                         f"`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {launched} "
                         "bench/run_all.py ...`")
    if acc.device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    if cfg.precision != "no" and not acc.native_amp:  # Accelerate would silently train fp16 on CPU in fp32
        raise UsageError(f"--precision {cfg.precision} is not supported on {acc.device.type} by Accelerate; "
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
    import torch.distributed as dist

    return dist.new_group(backend="gloo", timeout=FINISH_TIMEOUT)


def finish(acc, group) -> None:
    """Wait for every process, then close the trackers and the process group (so no rank aborts at exit)."""
    if group is not None:
        import torch.distributed as dist

        dist.barrier(group=group)
    acc.end_training()


def check_writable(out: str) -> None:
    probe = Path(out) / f".write-probe.{os.getpid()}"
    try:
        results.runs_dir(out).mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--out {out} is not writable ({e.strerror or e})") from None


def prepare_data(cfg: RunConfig, acc) -> dict:
    """One process per machine prepares (idempotent: on a shared filesystem, prepare once beforehand and these
    become checks); every process then reads the manifest, or every process stops with the first error."""
    from accelerate.utils import gather_object

    from loaders import prepare

    error = None
    if acc.is_local_main_process:
        try:
            prepare.prepare_cifar10(cfg.source, cfg.data_dir, subset_per_class=cfg.subset_per_class, seed=0)
        except (ValueError, OSError) as e:
            error = f"data: {e}"
    errors = [e for e in (gather_object([error]) if acc.num_processes > 1 else [error]) if e]
    if errors:
        raise UsageError(errors[0])
    manifest = prepare.load_manifest(cfg.data_dir)
    manifest["manifest_sha256"] = prepare.sha256_file(Path(cfg.data_dir) / prepare.MANIFEST)
    return manifest


class Data:
    """Loaders and preprocessing built once per process and shared by every run (an FFCV Loader compiles its
    pipeline for 5-9 s: once per process, not once per run)."""

    def __init__(self, cfg: RunConfig, acc, manifest: dict, distributed: bool, per_process_batch: int):
        self.cfg, self.acc, self.manifest = cfg, acc, manifest
        self.distributed, self.batch = distributed, per_process_batch
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # FFCV sets torch's thread count to its worker count at every epoch: share the cores between processes
        self.num_workers = cfg.num_workers or max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        self._cache = {}

    def loader(self, split: str, *, augment: str = "none", seed: int = 0):
        import loaders

        key = (split, augment, seed)
        if key not in self._cache:
            self._cache[key] = loaders.make(split, self.batch, data_dir=self.cfg.data_dir, backend=self.cfg.backend,
                                            augment=augment, device=self.acc.device, distributed=self.distributed,
                                            seed=seed, num_workers=self.num_workers)
        return self._cache[key]

    def preprocess(self, kind: str, fit_split: str):
        from loaders.preprocess import build_preprocess

        key = ("preprocess", kind, fit_split)
        if key not in self._cache:
            self._cache[key] = build_preprocess(kind, self.cfg.data_dir, fit_split=fit_split).to(self.acc.device)
        return self._cache[key]


def build_net(run: Run, device):
    """The run's network on the device in its memory format, and its optimizer."""
    import torch

    c = run.cfg
    net = allconv.build(run.model, NUM_CLASSES, bn=c.bn, dropout=c.dropout, final_relu=c.final_relu, init=c.init)
    net.to(device, memory_format=torch.channels_last if c.channels_last else torch.contiguous_format)
    return net, engine.make_optimizer(c.optimizer, net.parameters(), run.lr, c.momentum, c.weight_decay, device)


def train_one(run: Run, key: str, acc, data: Data, ddp: bool, bar_epochs) -> dict:
    """Train and evaluate one run, resuming its checkpoint if there is one. Returns the record's result fields."""
    import torch
    from accelerate.utils import set_seed

    c, device, world = run.cfg, acc.device, acc.num_processes if ddp else 1
    autocast = engine.autocast_for(c.precision, acc)
    set_seed(run.seed)  # the same initial weights on every rank
    net, optimizer = build_net(run, device)
    if ddp:
        set_seed(run.seed, device_specific=True)  # each rank its own dropout masks
    ckpt_path = Path(c.out) / "checkpoints" / f"{key}.pt"
    ckpt = engine.load_checkpoint(ckpt_path, acc, net, optimizer, rank=acc.process_index if ddp else 0, world=world)
    model = net
    if ddp:
        acc.autocast_handler = autocast  # prepare() wraps forward in autocast with the handler set now
        model, optimizer = acc.prepare(net, optimizer)
    else:
        optimizer = acc.prepare_optimizer(optimizer)  # the grad scaler (fp16); no DDP wrapper, no gradient sync
    if c.compile:
        model = torch.compile(model)
    train = data.loader(c.train_split, augment=c.augment, seed=run.seed)
    preprocess = data.preprocess(c.preprocess, c.train_split)
    evals = {"test": data.loader("test")}
    if TRAIN_SPLITS[c.train_split]:
        evals["val"] = data.loader(TRAIN_SPLITS[c.train_split])
    num = {"test": data.manifest["num_images"]["test"], "val": data.manifest["num_images"].get("val5k")}

    history = ckpt["history"] if ckpt else []
    t = ckpt["extra"] if ckpt else {"steady_s": 0.0, "steady_img": 0, "eval_s": 0.0, "eval_img": 0, "wall_s": 0.0}
    es = ckpt["epoch_state"] if ckpt else None
    status, error, t_start = "completed", None, time.perf_counter()
    stop = (lambda: STOP["requested"])

    def checkpoint(epoch, epoch_state=None):
        extra = dict(t, wall_s=t["wall_s"] + time.perf_counter() - t_start)
        engine.save_checkpoint(ckpt_path, acc, net, optimizer, epoch=epoch, epoch_state=epoch_state,
                               history=history, extra=extra, distributed=ddp)

    for epoch in range(ckpt["epoch"] if ckpt else 0, c.epochs):
        lr = engine.lr_at(epoch, run.lr, c.lr_drops)
        engine.set_lr(optimizer, lr)
        train.set_epoch(epoch)
        bar = bar_epochs(len(train), f"{run.model} lr={run.lr:g} epoch {epoch + 1}/{c.epochs}")
        warmup = min(5, len(train) // 4) if c.epochs == 1 else 0  # one epoch: time it after a few steps
        es = engine.train_one_epoch(model, optimizer, train, preprocess, acc, autocast=autocast,
                                    channels_last=c.channels_last, state=es, warmup_steps=warmup, stop_flag=stop,
                                    distributed=ddp, progress=bar)
        if bar is not None:
            bar.close()
        if es.stopped:
            checkpoint(epoch, es)
            raise Interrupted
        sums = torch.stack([es.loss_sum.float(), es.correct.float(), es.seen.float()])
        loss_sum, correct, seen = (acc.reduce(sums, "sum") if ddp else sums).tolist()
        if epoch > 0 or c.epochs == 1:  # the first epoch (JIT, compile, cache warm-up) is not steady state
            t["steady_s"] += es.steady_seconds
            t["steady_img"] += es.steady_images * world
        entry = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc_pct": 100 * correct / seen,
                 "test_error_pct": None, "val_error_pct": None, "lr": lr, "seconds": es.train_seconds}
        es = None
        if not math.isfinite(entry["loss"]):
            status, error, entry["loss"] = "diverged", f"loss is {entry['loss']} in epoch {epoch + 1}", None
            history.append(entry)
            break
        if (epoch + 1) % c.eval_every == 0 or epoch + 1 == c.epochs:
            for name, loader in evals.items():  # the bare net: DDP's forward syncs buffers, ranks' batch counts differ
                ok, n, secs = engine.evaluate(net, loader, preprocess, acc, autocast=autocast,
                                              channels_last=c.channels_last, distributed=ddp)
                if n != num[name]:
                    raise RuntimeError(f"{name} evaluation counted {n} images, the split has {num[name]}")
                entry[f"{name}_error_pct"] = 100 * (1 - ok / n)
                entry["seconds"] += secs
                t["eval_s"], t["eval_img"] = t["eval_s"] + secs, t["eval_img"] + n
        history.append(entry)
        if acc.trackers:
            acc.log({f"{key}/{k}": v for k, v in entry.items() if v is not None and k != "epoch"}, step=epoch + 1)
        if epoch + 1 >= c.diverge_after and entry["train_acc_pct"] <= 100 / NUM_CLASSES + CHANCE_MARGIN_PCT:
            status = "diverged"
            error = f"training accuracy {entry['train_acc_pct']:.1f}% (chance) after epoch {epoch + 1}"
            break
        if engine.stop_agreed(stop, acc, ddp):
            checkpoint(epoch + 1)
            raise Interrupted
        if (epoch + 1) % c.checkpoint_every == 0 and epoch + 1 < c.epochs:
            checkpoint(epoch + 1)

    if ddp and status == "completed":
        engine.check_replicas(net, acc)
    evaluated = [h for h in history if h["test_error_pct"] is not None]
    best = min(evaluated, key=lambda h: h["test_error_pct"]) if evaluated else None
    return {"status": status, "error": error, "history": history, "epochs_completed": len(history),
            "test_error_pct": history[-1]["test_error_pct"] if history else None,
            "best_test_error_pct": best["test_error_pct"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "val_error_pct": history[-1]["val_error_pct"] if history else None,
            "params": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "train_images_per_s": t["steady_img"] / t["steady_s"] if t["steady_s"] else None,
            "eval_images_per_s": t["eval_img"] / t["eval_s"] if t["eval_s"] else None,
            "wall_time_s": t["wall_s"] + time.perf_counter() - t_start,
            "peak_memory_mb": engine.peak_memory_mb(device),
            "precision": "no" if not autocast.enabled else acc.mixed_precision}


def make_record(run: Run, key: str, data_sha: str, manifest: dict, env: dict, mode: str, world: int,
                started_at: str, outcome: dict) -> dict:
    spec = allconv.get_spec(run.model)
    cfg = run.config(data_sha)
    baseline = {k: cfg[k] for k in ("epochs", "preset", "bn", "dropout", "final_relu", "init", "optimizer",
                                    "weight_decay", "momentum", "batch_size", "augment", "preprocess",
                                    "train_split", "val_split", "precision", "backend", "channels_last", "compile")}
    record = {"run_key": key, "status": "failed", "error": None, "model": run.model, "lr": run.lr, "seed": run.seed,
              "display_name": spec.paper_name, "family": spec.family, "variant": spec.variant, **baseline,
              "mode": mode, "epochs_completed": 0, "test_error_pct": None, "best_test_error_pct": None,
              "best_epoch": None, "val_error_pct": None, "params": None, "macs": allconv.macs(run.model),
              "train_images_per_s": None, "eval_images_per_s": None, "wall_time_s": None, "peak_memory_mb": None,
              "device_name": env["device_name"], "device_count": world if mode == "ddp" else 1,
              "world_size": world,
              "versions": env["versions"], "git_commit": env["git_commit"], "git_dirty": env["git_dirty"],
              "data": {"source": manifest["source"], "source_sha256": manifest["source_sha256"],
                       "manifest_sha256": manifest["manifest_sha256"],
                       "num_train": manifest["num_images"][run.cfg.train_split],
                       "num_test": manifest["num_images"]["test"]},
              "config": cfg, "started_at": started_at, "finished_at": now(), "history": []}
    record.update(outcome)
    return record


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        if cfg.source != "torchvision" and not Path(cfg.source).expanduser().exists():
            raise UsageError(f"data: source not found: {cfg.source}")
        check_writable(cfg.out)
        acc = make_accelerator(cfg)
        group = finish_group(acc)
        manifest = prepare_data(cfg, acc)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    data_sha = manifest["source_sha256"]
    runs = expand(cfg, data_sha)
    keys = [r.key(data_sha) for r in runs]
    done = {r["run_key"] for r in results.read_records(cfg.out) if r.get("status") != "failed"} & set(keys)
    acc.wait_for_everyone()  # every process has listed the ledger before anyone adds to it
    world = acc.num_processes
    mode = cfg.mode if cfg.mode != "auto" else ("grid" if len(runs) >= world else "ddp")
    if mode == "ddp" and cfg.batch_size % world:
        print(f"error: --batch-size {cfg.batch_size} is not divisible by {world} processes", file=sys.stderr)
        return 2
    ddp = mode == "ddp" and world > 1
    pending = [(r, k) for r, k in zip(runs, keys) if k not in done]
    mine = pending if mode == "ddp" else pending[acc.process_index::world]

    show = cfg.progress and acc.is_main_process
    acc.print("resolved configuration:\n" + "\n".join(f"  {k} = {v!r}" for k, v in dataclasses.asdict(cfg).items()))
    acc.print(f"{len(runs)} runs: {len(done)} already in {results.runs_dir(cfg.out)} (skipped), {len(pending)} to "
              f"train (failed ones again); mode {mode} on {world} process(es)")
    if cfg.log_with:
        acc.init_trackers("run_all", config={k: str(v) for k, v in dataclasses.asdict(cfg).items()})
    data = Data(cfg, acc, manifest, distributed=ddp, per_process_batch=cfg.batch_size // (world if ddp else 1))
    env = results.environment(acc.device)
    if mine and acc.is_main_process:
        rate = measure_rate(mine[0][0], acc, data)
        acc.print(f"ETA {eta_seconds(pending, manifest, rate, world) / 3600:.2f} h "
                  f"(measured {rate:.0f} img/s per process on {mine[0][0].model})")
    signal.signal(signal.SIGTERM, lambda *_: STOP.update(requested=True))

    def bar_epochs(total, desc):
        return tqdm(total=total, desc=desc, leave=False, unit="step") if show else None

    grid_bar = tqdm(total=len(mine), desc="grid", unit="run") if show else None
    for run, key in mine:
        started_at = now()
        try:
            outcome = train_one(run, key, acc, data, ddp, bar_epochs)
        except Interrupted:
            acc.print(f"stopped by SIGTERM: {key} checkpointed; rerun the same command to resume")
            return 143
        except Exception as e:  # one broken run is recorded and the grid goes on; config bugs raised above
            outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        record = make_record(run, key, data_sha, manifest, env, mode, world, started_at, outcome)
        if ddp:
            acc.wait_for_everyone()
        if acc.is_main_process or not ddp:
            results.write_record(cfg.out, record)
            (Path(cfg.out) / "checkpoints" / f"{key}.pt").unlink(missing_ok=True)
        acc.free_memory()
        error_pct = "-" if record["test_error_pct"] is None else f"{record['test_error_pct']:.2f}%"
        if grid_bar is not None:
            grid_bar.update(1)
            grid_bar.set_postfix_str(f"{run.model} lr={run.lr:g}: {record['status']} {error_pct}")
        elif acc.is_main_process:
            acc.print(f"{key} {run.model} lr={run.lr:g} seed={run.seed}: {record['status']}, test error {error_pct}")
    if grid_bar is not None:
        grid_bar.close()
    finish(acc, group)
    return 0


def measure_rate(run: Run, acc, data: Data) -> float:
    """Training images/s of this process on a few steps of the first pending run, for the ETA."""
    c = run.cfg
    net, opt = build_net(run, acc.device)
    images, labels = next(iter(data.loader(c.train_split, augment=c.augment, seed=run.seed)))
    return engine.measure_step_rate(net, opt, images, labels, data.preprocess(c.preprocess, c.train_split), acc,
                                    engine.autocast_for(c.precision, acc), c.channels_last)


def eta_seconds(pending, manifest: dict, rate: float, world: int) -> float:
    """Pending training + evaluation work, scaled from the measured model by forward MACs (an evaluation image
    costs about a third of a training image), spread over all processes."""
    first = allconv.macs(pending[0][0].model)
    work = sum(r.cfg.epochs * (manifest["num_images"][r.cfg.train_split] + manifest["num_images"]["test"] / 3)
               * allconv.macs(r.model) / first for r, _ in pending)
    return work / (rate * world)


if __name__ == "__main__":
    sys.exit(main())
