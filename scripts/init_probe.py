"""How quickly does each weight init leave chance? (issue 10: choose the paper preset's init with evidence)

    nice -n 15 env PYTHONPATH=$PWD .venv/bin/python scripts/init_probe.py --inits caffe-xavier kaiming \
        --models allcnn-c convpool-c --lrs 0.05 0.01 --source ../shared/data/cifar10-jpeg.tar.gz \
        --data-dir /tmp/probe/data --out /tmp/probe/out --subset-per-class 500 --epochs 6

Drives bench/run_all.py in this one process, once per (LR, init) (its `--init` takes one value), with the paper preset
and no LR drops (nothing stops early: only a NaN loss would) and test evaluation only after
the last epoch. Every option this script does not know goes to run_all unchanged. After each call it prints the
table of every record in --out so far (partial results survive an interrupted probe; a rerun skips recorded runs).

Per run: training loss and accuracy per epoch (dropout on), the first epoch (and step) at which training accuracy
exceeds --threshold, "died" when it rose above the threshold and then fell back within 1 pp of chance with a
finite loss, and the final test error.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allconv.network import INITS  # noqa: E402
from bench import results, run_all, runs  # noqa: E402

CHANCE_PCT = 100 / runs.NUM_CLASSES


def summary(record: dict, threshold: float) -> dict:
    """The probe's reading of one record: when it left chance, whether it died, the curve."""
    hist = record.get("history") or []
    accs = [h["train_acc_pct"] for h in hist]
    steps_per_epoch = math.ceil(record["data"]["num_train"] / record["batch_size"])
    left = next((h["epoch"] for h in hist if h["train_acc_pct"] > threshold), None)
    died = left is not None and accs[-1] <= CHANCE_PCT + runs.CHANCE_MARGIN_PCT and hist[-1]["loss"] is not None
    return {"model": record["model"], "lr": record["lr"], "init": record["init"], "status": record["status"],
            "batch": record["batch_size"], "n_train": record["data"]["num_train"],
            "left_epoch": left, "left_step": left * steps_per_epoch if left else None, "died": died,
            "max_acc": max(accs) if accs else None, "test_err": record.get("test_error_pct"),
            "acc": " ".join(f"{a:.1f}" for a in accs),
            "loss": " ".join("nan" if h["loss"] is None else f"{h['loss']:.3f}" for h in hist),
            "min_per_epoch": (record.get("wall_time_s") or 0) / 60 / max(1, len(hist))}


def print_table(out: str, threshold: float) -> None:
    rows = sorted((summary(r, threshold) for r in results.read_records(out)),
                  key=lambda s: (s["model"], -s["lr"], INITS.index(s["init"])))
    print(f"\n== {len(rows)} runs in {out}; 'left' = first epoch (step) with training accuracy > {threshold:g}% ==")
    for s in rows:
        left = f"epoch {s['left_epoch']} (step {s['left_step']})" if s["left_epoch"] else "never"
        err = "-" if s["test_err"] is None else f"{s['test_err']:.1f}%"
        print(f"{s['model']:<11} lr={s['lr']:<5g} init={s['init']:<12} {s['status']:<9} batch {s['batch']} "
              f"n={s['n_train']}  left: {left:<18} died: {'YES' if s['died'] else 'no':<3} "
              f"max acc {s['max_acc']:.1f}%  test err {err}  ({s['min_per_epoch']:.1f} min/epoch)")
        print(f"    train acc % per epoch: {s['acc']}")
        print(f"    train loss per epoch:  {s['loss']}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inits", nargs="+", default=["caffe-xavier", "kaiming"], choices=INITS)
    p.add_argument("--lrs", nargs="+", default=["0.05", "0.01"], help="outer loop: every init at one LR, then the next")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--threshold", type=float, default=15.0, help="training accuracy %% that counts as left chance")
    p.add_argument("--out", default="results-init-probe")
    args, rest = p.parse_known_args(argv)
    import torch

    print(f"command: {' '.join(sys.argv)}\nmachine: {platform.node()} {platform.machine()}, "
          f"{len(__import__('os').sched_getaffinity(0))} cores, torch {torch.__version__}, "
          f"python {platform.python_version()}\nrun_all args: {rest}", flush=True)
    for lr, init in ((lr, init) for lr in args.lrs for init in args.inits):
        t0 = time.perf_counter()
        code = run_all.main(["--preset", "paper", "--init", init, "--lrs", lr, "--epochs", str(args.epochs), "--lr-drops",
                             "--eval-every", str(args.epochs), "--eval-last", "0",
                             "--out", args.out, "--no-progress", *rest])
        print(f"lr {lr} init {init}: run_all exited {code} after {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            return code
        print_table(args.out, args.threshold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
