"""`make run`: launch `bench/run_all.py` in the shape this machine can run.

    python -m bench.launch [run_all options]            # what `make run ARGS="..."` calls
    python -m bench.launch --dry-run [run_all options]  # print the command instead of running it
    python -m bench.launch --plan [run_all options]     # what that command would train (bench/plan.py), and how long
    python -m bench.launch --plan --throughput FILE [run_all options]  # bench/plan.py's own option too

- With N GPUs (torch.cuda.device_count(); ALLCONV_GPUS=N overrides it, e.g. for tests or to use fewer):
  `accelerate launch --config_file accelerate_config.yaml --num_processes N bench/run_all.py [options]`,
  one process per GPU, the paper grid by default. ALLCONV_RUNS_PER_GPU=K (default 1) starts K such launches at
  once, each on its own rendezvous port, sharing the ledger like machines do (bench/workqueue.py claims): K runs
  train on each GPU at a time. On the H200 a step is bound by launching kernels, not by the GPU
  (reports/measured/campaign); scripts/concurrency_probe.py measures what K buys before you choose it.
- Without a GPU and without an explicit `--preset`: one line saying the paper grid needs GPUs and how long it would
  take here, then the smoke grid in one process on data that needs no internet: `../shared/data`'s JPEG copy when it
  is beside the repository, else the 400-image sample shipped in `data-sample/`. `--preset paper` forces the paper
  grid on the CPU.
- SIGTERM or Ctrl-C stops what it started: run_all checkpoints at the next step and exits (a second Ctrl-C kills at
  once), and this launcher exits with its status, never before it.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import allconv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_SOURCES = (ROOT.parent / "shared/data/cifar10-jpeg.tar.gz", ROOT / "data-sample/cifar10-jpeg-sample.tar.gz")
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000


def gpu_count() -> int:
    override = os.environ.get("ALLCONV_GPUS")
    if override is not None:
        if not override.isdigit():
            raise SystemExit(f"error: ALLCONV_GPUS must be a whole number of GPUs, got {override!r}")
        return int(override)
    import torch

    return torch.cuda.device_count()


def runs_per_gpu() -> int:
    value = os.environ.get("ALLCONV_RUNS_PER_GPU", "1")
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"error: ALLCONV_RUNS_PER_GPU must be a whole number >= 1, got {value!r}")
    return int(value)


def offline_source() -> Path:
    return next(p for p in OFFLINE_SOURCES if p.is_file())


def grid_work(runs) -> float:
    """The runs' training and evaluation work in All-CNN-C training images, scaled by forward MACs: each epoch's
    training images, and the test set at each epoch the run's preset evaluates (`RunConfig.evaluates`: 44 of the
    paper's 350), an evaluated image costing ~1/3 of a trained one."""
    return sum((r.cfg.epochs * TRAIN_IMAGES + sum(map(r.cfg.evaluates, range(1, r.cfg.epochs + 1))) * TEST_IMAGES / 3)
               * allconv.macs(r.model) / allconv.macs("allcnn-c") for r in runs)


def paper_grid_cpu_hours(runs, steps: int = 5, batch: int = 32) -> float:
    """The runs' training + evaluation time on this CPU (`grid_work`), scaled by MACs from the fastest of a few timed
    All-CNN-C steps (bf16 autocast, as the paper preset trains): the fastest, because a step that shared the cores
    with another process reads many times slower (20x seen on 2 busy cores), and an estimate is of this CPU."""
    import torch
    import torch.nn.functional as F

    net = allconv.build("allcnn-c").to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    fastest = float("inf")
    for i in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            fastest = min(fastest, time.perf_counter() - t0)
    return grid_work(runs) / (batch / fastest) / 3600  # All-CNN-C training images/s


def command(args: list[str], gpus: int) -> tuple[list[str], str | None]:
    """The command to run and the one line to say first (None: nothing to say)."""
    run_all = str(ROOT / "bench/run_all.py")
    if gpus > 0:
        accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                      str(ROOT / "accelerate_config.yaml"), "--num_processes", str(gpus)]
        return [*accelerate, run_all, *args], None
    if any(a == "--preset" or a.startswith("--preset=") for a in args):
        return [sys.executable, run_all, *args], None
    extra = [] if any(a == "--source" or a.startswith("--source=") for a in args) else ["--source", str(offline_source())]
    import dataclasses

    from bench.cli import parse_args
    from bench.config import PRESETS, expand

    cfg = parse_args(["--preset", "smoke", *extra, *args])  # a typo: run_all's one-line error now, not after timing
    paper = dataclasses.replace(PRESETS["paper"], **{k: getattr(cfg, k) for k in ("models", "lrs", "seeds",
                                                                                   "ablations")})
    runs = expand(paper)  # the grid asked for, and its ablation arms, under the paper preset
    note = (f"no GPU here: the paper grid ({len(runs)} run{'s' * (len(runs) != 1)} x {paper.epochs} epochs) would "
            f"take ~{paper_grid_cpu_hours(runs):,.0f} h on this CPU at best, so without --preset the smoke grid is "
            f"what runs here; force the paper grid with `make run ARGS=\"--preset paper --source ...\"`")
    return [sys.executable, run_all, "--preset", "smoke", *extra, *args], note


def concurrent(cmd: list[str], k: int, port: int = 29500) -> list[list[str]]:
    """K copies of an accelerate launch, each with its own rendezvous port (k = 1: the command itself)."""
    if k == 1:
        return [cmd]
    at = cmd.index("--num_processes")
    return [[*cmd[:at], "--main_process_port", str(port + i), *cmd[at:]] for i in range(k)]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:  # this launcher's own words, then run_all's options (which it passes on)
        print(__doc__.strip() + "\n\nrun_all's options:\n", flush=True)
        return subprocess.call([sys.executable, str(ROOT / "bench/run_all.py"), "--help"])
    dry, show_plan = "--dry-run" in args, "--plan" in args
    args = [a for a in args if a not in ("--dry-run", "--plan")]
    gpus = gpu_count()
    try:
        own = []  # bench.plan's own options (--throughput FILE): run_all would refuse them
        if show_plan:
            from bench import plan

            _, throughput, args = plan.own_options(args)
            own = ["--throughput", throughput] if throughput is not None else []
        cmd, note = command(args, gpus)
    except ValueError as e:  # bench.cli.UsageError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    cmds = concurrent(cmd, runs_per_gpu() if gpus > 0 else 1)
    if note:
        print(note, flush=True)
    if show_plan:  # run_all's own options, as this machine's command passes them, and the plan's own
        return plan.main([*own, *cmd[cmd.index(str(ROOT / "bench/run_all.py")) + 1:]])
    if dry:
        print("\n".join(shlex.join(c) for c in cmds))
        return 0
    if len(cmds) > 1:  # the launches would all prepare the same folder at once: prepare it once, here
        from bench.cli import UsageError, parse_args
        from loaders.prepare import prepare_cifar10
        try:
            cfg = parse_args(args)
            prepare_cifar10(cfg.source, cfg.data_dir, subset_per_class=cfg.subset_per_class, seed=0)
        except (UsageError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run_children(cmds)


def run_children(cmds: list[list[str]]) -> int:
    """Run the commands at once, each in a session of its own (as torchrun starts its ranks), and pass each SIGTERM
    and Ctrl-C (SIGINT) on to every child's process group once (a closed terminal's SIGHUP as SIGTERM): run_all
    checkpoints and exits, and torchrun passes it on to its ranks. Waits for all of them; returns the highest exit
    status (a child killed by signal N: 128 + N). In their own sessions a terminal's signals reach them only through
    here, so run_all sees a Ctrl-C once (a second one kills it at once)."""
    procs, received = [], []

    def forward(signum, _frame):
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                try:  # a closed terminal (SIGHUP) stops them as SIGTERM does: in their own sessions none reaches them
                    os.killpg(p.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
                except ProcessLookupError:  # exited meanwhile
                    pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for c in cmds:
        if received:  # stopped before this one started
            break
        procs.append(subprocess.Popen(c, start_new_session=True))
    codes = [p.wait() for p in procs]
    if not procs:
        return 128 + received[0]
    return max(128 - c if c < 0 else c for c in codes)


if __name__ == "__main__":
    sys.exit(main())
