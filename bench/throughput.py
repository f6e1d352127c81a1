"""How fast each Table 3 network trains and evaluates, and how close that is to the device's peak (issue 6).

    python bench/throughput.py --device cpu --models allcnn-c --precision fp32 bf16 --json out.json
    accelerate launch bench/throughput.py --precision bf16 --compile      # one benchmark per process, summed

Model-only rows time a training step and an evaluation pass on synthetic data already on the device; end-to-end
rows (`--loaders ffcv torch tensor --data-dir DIR`) time the same step fed by a real loader. See `--help`.
One Accelerator per process, as in training: at bf16 or fp16 when asked for, fp32 rows with autocast off under it
and TF32 off (bf16 and fp16 need a process each). The step's fast paths (SGD implementations, no host sync per step)
are measured by tests/benchmarks/test_step_bench.py.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import allconv  # noqa: E402  (specs only: no torch until a network is built)
from allconv import resolve_models  # noqa: E402  (one helper for names and patterns)
import loaders  # noqa: E402  (loaders/__init__ imports no torch)
from bench import devices, timing  # noqa: E402  (timing: the step and its clock, also for tests/benchmarks)
from bench.cli import Parser, UsageError, check_output_file, precision_arg  # noqa: E402
from bench.files import WriteError  # noqa: E402  (bench.files imports no torch)

COLUMNS = ["model", "display_name", "device", "device_name", "precision", "eval_precision", "channels_last", "compile",
           "cuda_graphs", "batch_size",
           "train_images_per_s", "eval_images_per_s", "train_tflops", "eval_tflops", "peak_tflops", "mfu",
           "eval_mfu", "fused_runs", "fused_train_images_per_s", "fused_train_tflops", "fused_mfu",
           "fused_over_separate", "repeats", "backend", "steps", "warmup", "world_size", "device_count", "threads",
           "peak_precision", "train_spread_pct", "train_cpu_share", "peak_memory_mb", "torch_version", "date"]
"""One row per (model, precision, backend). Images/s are summed over processes (one device each); `mfu` is
the training step's share of the dense peak of all `device_count` devices (a fraction); `train_spread_pct` is
(max - min) / median of the timed windows; `train_cpu_share` (CPU only) is the share of its cores the process got
while timed (see `timing.time_windows`). With `--fused K`: `fused_train_images_per_s` is the images a K-run
bench.fused group trains per second summed over its K runs (each run sees every image), timed in the same process
right after the separate step, and `fused_over_separate` its ratio to `train_images_per_s` (> 1: fusing pays)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog="bench/throughput.py", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["*"], help="API names or fnmatch patterns ('*-c'); default all "
                   "(Table 3's 12, then any of one's own)")
    p.add_argument("--precision", nargs="+", type=precision_arg, default=["no", "bf16"],
                   help="no (alias fp32) | bf16 | fp16 autocast, as run_all's --precision; bf16 and fp16 need a "
                        "process each (default: no bf16)")
    p.add_argument("--eval-precision", type=precision_arg, default="no",
                   help="evaluation autocast, as run_all's: no (fp32, default) or a --precision, which rows at that "
                        "precision evaluate in (the others in fp32)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for the model and the batch (default on)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is warm-up)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="training step replayed from a CUDA graph (bench/graphs.py; captured in the warm-up, >= 4)")
    p.add_argument("--fused", type=int, default=0, metavar="K",
                   help="also time K runs as one fused model (bench/fused.py: fp32 or bf16, graphed with "
                        "--cuda-graphs; issue 12) and report its images/s over the K runs against the separate "
                        "step's (default 0: off)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per SGD step of one model, as run_all's --batch-size: each process times its own "
                        "model at this batch, like run_all --mode grid (default 256, the paper preset's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the first window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported")
    p.add_argument("--no-eval", action="store_true", help="time training only")
    p.add_argument("--loaders", nargs="*", default=[], choices=loaders.BACKENDS,
                   help="end-to-end rows for these backends")
    p.add_argument("--data-dir", type=Path, default=None, help="prepared data (loaders.prepare) for --loaders")
    p.add_argument("--preprocess", choices=loaders.PREPROCESS, default="gcn-zca",
                   help="device-side preprocessing of end-to-end rows (gcn-zca: the paper's)")
    p.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list of dicts")
    p.add_argument("--csv", type=Path, default=None, help="write the rows as CSV, same columns")
    args = p.parse_args(argv)
    for flag in ("batch_size", "steps", "repeats"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.warmup < 0 or args.fused < 0 or args.fused == 1:
        raise UsageError(f"--warmup must be 0 or more and --fused 0 (off) or at least 2, got {args.warmup} and "
                         f"{args.fused}")
    args.precision = list(dict.fromkeys(args.precision))
    if args.eval_precision not in ("no", *args.precision):
        raise UsageError(f"--eval-precision must be no or one of --precision's, got {args.eval_precision}")
    if {"bf16", "fp16"} <= set(args.precision):
        raise UsageError("--precision bf16 and fp16 need a process each (Accelerate fixes it per process)")
    if args.cuda_graphs:
        from bench.graphs import WARMUP  # eager steps before the capture, which must stay out of the timing

        if args.warmup <= WARMUP or "fp16" in args.precision or args.compile:
            raise UsageError(f"--cuda-graphs needs --warmup {WARMUP + 1} or more (warm-up and capture), and "
                             "neither --precision fp16 (its loss scaler reads the GPU every step) nor --compile")
    try:
        args.models = resolve_models(args.models)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.loaders and args.data_dir is None:
        raise UsageError("--loaders needs --data-dir (a folder written by loaders.prepare)")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder")
    if args.loaders:  # prepare's own check, every file against its sha256: not a traceback once timing began
        from loaders.manifest import load_manifest

        try:
            load_manifest(args.data_dir, verify=True)
        except ValueError as e:
            raise UsageError(f"--data-dir {e}") from None
    check_output_file(args.json, "--json")
    check_output_file(args.csv, "--csv")
    return args


# ---- one row ------------------------------------------------------------------------------------------------

def data_source(backend: str, args, device, world_size: int):
    """(train batches, test batches or None, preprocess) for one loader backend, built once for all rows; None
    when the backend cannot load here (FFCV is not installed on the GPU machines)."""
    cache = loaders.Cache(args.data_dir, backend=backend, device=device, distributed=world_size > 1,
                          batch_size=args.batch_size)
    try:
        train_batch = timing.loader_batches(cache, "train", args.batch_size)
        eval_batch = None if args.no_eval else timing.loader_batches(cache, "test", args.batch_size)
        return train_batch, eval_batch, cache.preprocess(args.preprocess)
    except loaders.BackendUnavailable as error:
        print(f"skipping the {backend} backend: {error}", file=sys.stderr)
        return None
    except ValueError as error:  # too few images, or what only this backend reads is missing (no .beton files)
        raise UsageError(f"--loaders {backend}: {' '.join(str(error).split())}") from None


def measure(name: str, precision: str, args, accelerator, backend: str = "synthetic", source=None) -> dict:
    """Time training (and evaluation) of one network at one precision; returns this process's row. End-to-end
    rows take their batches and preprocessing from `source` (`data_source`), as in training. An fp32 row runs
    under engine.full_fp32 (TF32 off on CUDA), as run_all trains and evaluates a precision-"no" run."""
    import torch

    from bench import engine
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if source is None:
        images, labels = timing.synthetic_batch(args.batch_size, device, args.channels_last)
        train_batch = eval_batch = lambda: (images, labels)
        preprocess = None
    else:
        train_batch, eval_batch, preprocess = source
    with engine.full_fp32(device, precision == "no"):
        tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32  # what the convolutions ran with
        model = timing.build_model(name, device, args.channels_last, args.compile).train()
        optimizer = timing.build_optimizer(model, device)
        train_step = timing.accumulating(timing.make_step(model, accelerator, precision, args.channels_last,
                                                          preprocess, optimizer, args.cuda_graphs), train_batch, device)
        seconds, cpu_share = timing.time_windows(train_step, device, args.steps, args.warmup, args.repeats)
        train_ips, spread = timing.images_per_s(seconds, args.steps * args.batch_size)
        eval_ips, eval_precision = None, precision if args.eval_precision == precision else "no"
        if not args.no_eval and eval_batch is not None:
            model.eval()
            eval_step = timing.accumulating(timing.make_step(model, accelerator, eval_precision, args.channels_last,
                                                             preprocess), eval_batch, device)
            seconds, _ = timing.time_windows(eval_step, device, args.steps, args.warmup, args.repeats)
            eval_ips, _ = timing.images_per_s(seconds, args.steps * args.batch_size)
        fused_ips = None
        fused_step = args.fused and timing.make_fused_step(name, accelerator, precision, args.channels_last,
                                                           args.fused, preprocess, args.cuda_graphs)
        if fused_step:
            seconds, _ = timing.time_windows(timing.accumulating(fused_step, train_batch, device), device,
                                             args.steps, args.warmup, args.repeats)
            fused_ips, _ = timing.images_per_s(seconds, args.steps * args.batch_size * args.fused)
    return {"model": name, "precision": devices.PRECISION_LABELS[precision], "backend": backend, "tf32": tf32,
            "eval_precision": devices.PRECISION_LABELS[eval_precision],
            "train_images_per_s": train_ips, "eval_images_per_s": eval_ips, "train_spread_pct": spread,
            "fused_runs": args.fused if fused_step else None, "fused_train_images_per_s": fused_ips,
            "train_cpu_share": cpu_share,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def complete_row(row: dict, args, device, name_of_device: str, world_size: int) -> dict:
    """Add the derived figures (FLOP/s from allconv.macs, share of peak) and the run's settings. The peak is the
    one of the precision the step ran at: tf32 only for a row whose fp32 convolutions ran with TF32 (`row["tf32"]`,
    never an fp32 row, which runs under engine.full_fp32)."""
    import torch
    tf32 = row["tf32"]
    macs = allconv.macs(row["model"])
    train_tflops = devices.tflops(row["train_images_per_s"], devices.train_flop_per_image(macs))
    eval_tflops = devices.tflops(row["eval_images_per_s"], devices.eval_flop_per_image(macs))
    fused_tflops = devices.tflops(row["fused_train_images_per_s"], devices.train_flop_per_image(macs))
    precision = row["precision"]
    out = {"display_name": allconv.VARIANTS[row["model"]], "device": device.type, "device_name": name_of_device,
           "channels_last": args.channels_last, "compile": args.compile, "cuda_graphs": args.cuda_graphs,
           "batch_size": args.batch_size,
           "train_tflops": train_tflops, "eval_tflops": eval_tflops,
           "peak_tflops": devices.peak_tflops(name_of_device, precision, tf32),
           "mfu": devices.mfu(train_tflops, name_of_device, precision, tf32, count=world_size),
           "eval_mfu": devices.mfu(eval_tflops, name_of_device, row["eval_precision"], tf32, count=world_size),
           "fused_train_tflops": fused_tflops,
           "fused_mfu": devices.mfu(fused_tflops, name_of_device, precision, tf32, count=world_size),
           "fused_over_separate": None if fused_tflops is None else row["fused_train_images_per_s"] /
           row["train_images_per_s"],
           "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "world_size": world_size,
           "device_count": world_size, "threads": torch.get_num_threads(),
           "peak_precision": devices.peak_precision(name_of_device, precision, tf32),
           "torch_version": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return {col: {**row, **out}.get(col) for col in COLUMNS}


def sum_over_processes(row: dict, accelerator) -> dict:
    """Aggregate images/s: the sum of every process's rate (each timed its own device)."""
    if accelerator.num_processes == 1:
        return row
    import torch
    keys = ("train_images_per_s", "eval_images_per_s", "fused_train_images_per_s")
    local = torch.tensor([math.nan if row[k] is None else row[k] for k in keys], dtype=torch.float64,
                         device=accelerator.device)
    total = accelerator.reduce(local, "sum").tolist()
    return {**row, **{k: None if math.isnan(v) else v for k, v in zip(keys, total)}}


def write_outputs(rows: list[dict], json_path: Path | None, csv_path: Path | None) -> None:
    """JSON: a list of dicts; CSV: the same columns (empty cells for None). Each file replaced atomically."""
    from bench.files import atomic_write  # bench.files imports no torch

    if json_path:
        atomic_write(json_path, lambda f: f.write((json.dumps(rows, indent=1) + "\n").encode()))
    if csv_path:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(csv_path, lambda f: f.write(text.getvalue().encode()))


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run(args) -> list[dict]:
    """Benchmark every (model, precision[, backend]) on this process's device; the main process prints."""
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available here")
    if args.cuda_graphs and (args.device == "cpu" or not torch.cuda.is_available()):
        raise UsageError("--cuda-graphs needs a CUDA device")
    accelerator = timing.make_accelerator(args.precision, args.device or ("cpu", "cuda")[torch.cuda.is_available()])
    world_size, device = accelerator.num_processes, accelerator.device
    name_of_device = devices.device_name(device)
    threads = torch.get_num_threads()  # every row starts at it: FFCV's Loader sets it to its workers when built
    built = {backend: data_source(backend, args, device, world_size) for backend in args.loaders}  # they check
    sources = {"synthetic": None, **{b: s for b, s in built.items() if s is not None}}  # before any output
    accelerator.print(f"# {name_of_device} x{world_size}, torch {torch.__version__}, {threads} threads, "
                      f"batch {args.batch_size}, channels_last={args.channels_last}, compile={args.compile}, "
                      f"cuda_graphs={args.cuda_graphs}, "
                      f"{args.repeats} x {args.steps} steps after {args.warmup} warm-up")
    width = max([16, *(len(m) + 1 for m in args.models)])  # a network of one's own may have a longer name
    accelerator.print(f"{'model':<{width}}{'prec':<6}{'backend':<10}{'train img/s':>12}{'eval img/s':>12}"
                      f"{'train TFLOP/s':>15}{'MFU%':>7}{'spread%':>9}{'cpu%':>6}"
                      + (f"{f'fused x{args.fused} img/s':>18}{'fused/sep':>10}" if args.fused else ""))
    rows = []
    for name in args.models:
        for precision in args.precision:
            for backend, source in sources.items():
                torch.set_num_threads(threads)  # an ffcv row runs at FFCV's count (it sets it at every epoch)
                row = measure(name, precision, args, accelerator, backend, source)
                row = complete_row(sum_over_processes(row, accelerator), args, device, name_of_device, world_size)
                rows.append(row)
                if accelerator.is_main_process:  # after every row: a run cut short by a time limit keeps its rows
                    write_outputs(rows, args.json, args.csv)
                accelerator.free_memory()  # the prepared optimizer, and with it the model
                mfu = None if row["mfu"] is None else 100 * row["mfu"]
                share = None if row["train_cpu_share"] is None else 100 * row["train_cpu_share"]
                accelerator.print(f"{name:<{width}}{row['precision']:<6}{backend:<10}{row['train_images_per_s']:>12.1f}"
                                  f"{fmt(row['eval_images_per_s'], '.1f'):>12}{row['train_tflops']:>15.4f}"
                                  f"{fmt(mfu, '.1f'):>7}{row['train_spread_pct']:>9.1f}"
                                  f"{fmt(share, '.0f'):>6}" + (f"{fmt(row['fused_train_images_per_s'], '.1f'):>18}"
                                                                f"{fmt(row['fused_over_separate'], '.2f'):>10}"
                                                                if args.fused else ""))
    accelerator.wait_for_everyone()  # then destroy the group: a rank that exits while a peer still talks aborts
    accelerator.end_training()
    return rows


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except UsageError as error:
        print(f"throughput.py: error: {error}", file=sys.stderr)
        return 2
    except WriteError as error:  # e.g. a full disk: the rows written before it are kept
        print(f"throughput.py: error: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
