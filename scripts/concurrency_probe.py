"""Do K training processes on one device train more images per second in all than one? (issue 12, campaign.sh)

    python3 scripts/concurrency_probe.py --model allcnn-c --procs 1 4 --json $OUT/concurrency.json

On the lent H200 every variant trains at 43-65k img/s whatever its size (2-11% of the bf16 peak,
reports/measured/campaign): the step is bound by the host launching ~150 small kernels, not by the GPU. Separate
processes launch in parallel, so K runs at once (the 4 LRs of a Table 3 row) may finish sooner than one after the
other. Each process builds the model, optimizer and Accelerator as training does (bench/timing.py: run_all's step,
paper SGD, bf16 autocast, channels_last, synthetic batch), warms up, waits at a barrier with the others, then times
`--steps` steps by the wall clock; the aggregate is K x steps x batch over the span from the first start to the
last end. Prints one line per K and, with --json, the rows. `--device cpu` for the test; real answers need a GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(rank: int, args, barrier, spans) -> None:
    from bench import engine, timing

    acc = timing.make_accelerator([args.precision], args.device)
    model = timing.build_model(args.model, acc.device, channels_last=True, compile=False)
    step = timing.make_step(model, acc, args.precision, True, optimizer=timing.build_optimizer(model, acc.device),
                            cuda_graphs=args.cuda_graphs)
    images, labels = timing.synthetic_batch(args.batch_size, acc.device, True)
    run = timing.accumulating(step, lambda: (images, labels), acc.device)
    for _ in range(args.warmup):
        run()
    engine.sync(acc.device)
    barrier.wait()
    t0 = time.time()
    for _ in range(args.steps):
        run()
    engine.sync(acc.device)
    spans[rank] = (t0, time.time())


def measure(args, procs: int) -> dict:
    import multiprocessing as mp  # not torch's: no tensor crosses processes, and importing torch here costs ~2 s

    ctx = mp.get_context("spawn")
    barrier, spans = ctx.Barrier(procs), ctx.Manager().dict()
    workers = [ctx.Process(target=worker, args=(rank, args, barrier, spans)) for rank in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if any(w.exitcode for w in workers) or len(spans) != procs:
        raise SystemExit(f"concurrency_probe: a worker failed with {procs} processes (exit codes "
                         f"{[w.exitcode for w in workers]})")
    span = max(end for _, end in spans.values()) - min(start for start, _ in spans.values())
    total = procs * args.steps * args.batch_size / span
    return {"model": args.model, "device": args.device, "precision": args.precision, "batch_size": args.batch_size,
            "processes": procs, "steps": args.steps, "cuda_graphs": args.cuda_graphs, "images_per_s": total, "per_process_images_per_s": total / procs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="allcnn-c")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 4])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--precision", default="bf16", choices=("no", "bf16"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--cuda-graphs", action="store_true", help="the graphed step (bench/graphs.py), as run_all's")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.cuda_graphs and args.device != "cuda":
        p.error("--cuda-graphs needs --device cuda")
    rows = [measure(args, k) for k in args.procs]
    for r in rows:
        print(f"{r['model']} {r['precision']} batch {r['batch_size']}, {r['processes']} process(es): "
              f"{r['images_per_s']:,.0f} img/s in all, {r['per_process_images_per_s']:,.0f} each", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
