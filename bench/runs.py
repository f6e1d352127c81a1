"""One run's pieces that its two ways of training share: bench/run_all.py's one run at a time and
bench/fused_train.py's runs in lockstep. Its network and optimizer, when it stops early, its result fields and its
ledger record (`make_record`).
"""
from __future__ import annotations

import datetime
import math
import sys

import allconv
from bench import checkpoint, engine
from bench.config import VAL_SPLIT_OF, Run, RunConfig
from bench.schema import SESSION_FLAGS

CHANCE_MARGIN_PCT = 1.0  # --stall-after: training accuracy within this of 1/num_classes is "at chance"
NUM_CLASSES = 10


class Interrupted(Exception):
    """SIGTERM: the run was checkpointed; the process exits non-zero without a record."""


def build_net(run: Run, device):
    """The run's network on the device in its memory format, and its optimizer."""
    import torch

    c = run.cfg
    net = allconv.build(run.model, NUM_CLASSES, bn=c.bn, dropout=c.dropout, final_relu=c.final_relu, init=c.init)
    net.to(device, memory_format=torch.channels_last if c.channels_last else torch.contiguous_format)
    return net, engine.make_optimizer(c.optimizer, net.parameters(), run.lr, c.momentum, c.weight_decay, device)


def stop_reason(entry: dict, epochs_done: int, c: RunConfig) -> tuple[str, str] | None:
    """(status, why) when a run stops early, else None: the one place for early-stop rules. Only a loss that is
    not finite stops a run by default ("diverged"; the epoch is then not evaluated). A finite run at chance trains
    its whole schedule and its error is recorded as measured: at chance may mean not yet started (a slow init) or
    dead (ReLUs before the global average), neither is divergence. Opt-in `--stall-after N`: training accuracy
    still within CHANCE_MARGIN_PCT of chance after N epochs, before the last, stops the run as "stalled", retried
    on rerun (at the last epoch it has completed: there is nothing left to stop)."""
    if not math.isfinite(entry["loss"]):
        return "diverged", f"loss is {entry['loss']} in epoch {epochs_done}"
    if c.stall_after is not None and c.stall_after <= epochs_done < c.epochs \
            and entry["train_acc_pct"] <= 100 / NUM_CLASSES + CHANCE_MARGIN_PCT:  # the last epoch: it completed
        return "stalled", f"training accuracy {entry['train_acc_pct']:.1f}% (chance) after epoch {epochs_done}"
    return None


def summary(state, status: str, error: str | None, net, acc, autocast, eval_autocast, fused_runs: int = 1) -> dict:
    """The result fields of a finished (completed, diverged or stalled) run, from its state; `fused_runs`: how many
    runs trained in lockstep with it as one model, itself included (bench/fused_train.py; 1: alone). Its
    `diagnosis` is None: callers fill it in with `diagnosed` afterwards, so that its time is not the run's."""
    history, t = state.history, state.timings
    evaluated = [h for h in history if h["test_error_pct"] is not None]
    best = min(evaluated, key=lambda h: h["test_error_pct"]) if evaluated else None
    return {"status": status, "error": error, "history": history, "epochs_completed": len(history),
            "test_error_pct": history[-1]["test_error_pct"] if history else None,
            "best_test_error_pct": best["test_error_pct"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "val_error_pct": history[-1]["val_error_pct"] if history else None,
            "params": sum(p.numel() for p in net.parameters() if p.requires_grad),
            **checkpoint.rates(t),
            "wall_time_s": state.wall_seconds(), "peak_memory_mb": engine.peak_memory_mb(acc.device),
            "precision": "no" if not autocast.enabled else acc.mixed_precision,
            "eval_precision": "no" if not eval_autocast.enabled else acc.mixed_precision, "fused_runs": fused_runs,
            "diagnosis": None, **({"sessions": state.sessions} if state.sessions else {})}


def session(run: Run, proc: dict | None) -> dict | None:
    """This process's entry in the run's `sessions` (bench/schema.py; from_epoch is added when it resumes:
    bench.run_state.sessions_after), starting now: `proc` is `bench.results.environment`'s dict with the process's
    `mode` and `world_size` (None: no session recorded)."""
    if proc is None:
        return None
    plain = {k: proc[k] for k in ("git_commit", "git_dirty", "code_sha256", "device_name", "mode", "world_size")}
    versions = {k: None if v is None else str(v) for k, v in proc["versions"].items()}  # torch's is a str subclass,
    # which a checkpoint's weights_only unpickler refuses
    return {"started_at": now(), **plain, "versions": versions, **{k: getattr(run.cfg, k) for k in SESSION_FLAGS}}


def diagnosed(status: str, net, data, c: RunConfig, acc, eval_autocast, distributed: bool = False) -> dict | None:
    """bench/diagnose.py's look at a run's network when it ends, or None (--no-diagnose; a diverged or failed run,
    whose weights are not finite or not there; or the look itself failed: a warning, and the run keeps its result)."""
    if not c.diagnose or status not in ("completed", "stalled"):
        return None
    from bench.diagnose import diagnose

    try:
        return diagnose(net, data.loader(c.train_split), data.loader("test"),
                        data.preprocess(c.preprocess, c.train_split), acc, autocast=eval_autocast,
                        channels_last=c.channels_last, distributed=distributed)
    except Exception as e:  # e.g. out of memory: the trained run is worth more than its diagnosis
        print(f"warning: no diagnosis for this run: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def train_loader(data, run: Run, processes: int = 1):
    """A run's training batches, at its own batch size (an ablation arm's may differ from the grid's), split over
    the `processes` of a DDP run."""
    c = run.cfg
    return data.loader(c.train_split, augment=c.augment, seed=run.seed, batch_size=c.batch_size // processes)


def eval_loaders(data, c: RunConfig, num_images: dict) -> dict:
    """name -> (loader, the split's image count) for each split a run is evaluated on: test, and val5k under
    train45k (its LR is judged there)."""
    return {name: (data.loader(split), num_images.get(split))
            for name, split in (("test", "test"), ("val", VAL_SPLIT_OF[c.train_split])) if split}


def failed(e: Exception) -> dict:
    """The result fields of a run that raised (recorded "failed"; trained again on rerun)."""
    return {"status": "failed", "error": f"{type(e).__name__}: {e}"}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def make_record(run: Run, key: str, data_sha: str, manifest: dict, env: dict, mode: str, world: int,
                started_at: str, outcome: dict) -> dict:
    """The run's ledger record (bench/schema.py): what it was and where it ran, then its result fields `outcome`."""
    spec = allconv.get_spec(run.model)
    cfg = run.config(data_sha)
    baseline = {k: cfg[k] for k in ("epochs", "preset", "bn", "dropout", "final_relu", "init", "optimizer",
                                    "weight_decay", "momentum", "batch_size", "augment", "preprocess",
                                    "train_split", "val_split", "precision", "backend", "channels_last", "compile",
                                    "cuda_graphs")}
    record = {"run_key": key, "status": "failed", "error": None, "model": run.model, "lr": run.lr, "seed": run.seed,
              "display_name": spec.paper_name, "family": spec.family, "variant": spec.variant, **baseline,
              "mode": mode, "epochs_completed": 0, "test_error_pct": None, "best_test_error_pct": None,
              "best_epoch": None, "val_error_pct": None, "params": None, "macs": allconv.macs(run.model),
              "train_images_per_s": None, "eval_images_per_s": None, "wall_time_s": None, "peak_memory_mb": None,
              "fused_runs": 1,
              "device_name": env["device_name"], "device_count": world if mode == "ddp" else 1,
              "world_size": world,
              "versions": env["versions"], "git_commit": env["git_commit"], "git_dirty": env["git_dirty"],
              "code_sha256": env["code_sha256"],
              "data": {"source": manifest["source"], "source_sha256": manifest["source_sha256"],
                       "encoding": manifest.get("encoding"), "manifest_sha256": manifest["manifest_sha256"],
                       "arrays_sha256": manifest["arrays_sha256"],
                       "num_train": manifest["num_images"][run.cfg.train_split],
                       "num_test": manifest["num_images"]["test"]},
              "config": cfg, "started_at": started_at, "finished_at": now(), "history": [],
              "grid": {"models": list(run.cfg.models), "lrs": list(run.cfg.lrs), "seeds": list(run.cfg.seeds)},
              "eval_precision": run.cfg.eval_precision}
    record.update(outcome)
    first = record.get("sessions", [{}])[0].get("started_at")
    record["started_at"] = first or started_at  # the run's start, in an earlier session when it was resumed
    return record
