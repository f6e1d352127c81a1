"""`make run` (bench/launch.py): one process per GPU, or the smoke grid on offline data without one."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from allconv import PAPER_MODELS, macs
from bench import launch
from bench.ablations import ABLATIONS

ROOT = Path(__file__).resolve().parents[1]


def dry_run(env_gpus: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.launch", "--dry-run", *args], cwd=ROOT, text=True,
                          capture_output=True, env={**__import__("os").environ, "ALLCONV_GPUS": env_gpus}, timeout=300)


@pytest.mark.parametrize("gpus", ["1", "2", "8"])
def test_one_process_per_gpu(gpus):
    p = dry_run(gpus, "--lrs", "0.1")
    assert p.returncode == 0, p.stderr
    cmd = p.stdout.split()
    assert cmd[cmd.index("--num_processes") + 1] == gpus
    assert "accelerate.commands.launch" in cmd and cmd[-3:] == [str(ROOT / "bench/run_all.py"), "--lrs", "0.1"]
    assert "smoke" not in p.stdout


def test_runs_per_gpu_starts_k_launches_on_their_own_ports():
    """ALLCONV_RUNS_PER_GPU=3: three launches of the same command (one process per GPU each), ports 29500-29502;
    without a GPU it changes nothing; a bad value is one line."""
    env = {**__import__("os").environ, "ALLCONV_GPUS": "2", "ALLCONV_RUNS_PER_GPU": "3"}
    p = subprocess.run([sys.executable, "-m", "bench.launch", "--dry-run", "--lrs", "0.1"], cwd=ROOT, text=True,
                       capture_output=True, env=env, timeout=300)
    cmds = [line.split() for line in p.stdout.splitlines()]
    assert p.returncode == 0 and len(cmds) == 3, p.stdout + p.stderr
    assert [c[c.index("--main_process_port") + 1] for c in cmds] == ["29500", "29501", "29502"]
    assert all(c[c.index("--num_processes") + 1] == "2" and c[-2:] == ["--lrs", "0.1"] for c in cmds)
    assert launch.concurrent(["a", "--num_processes", "1"], 1) == [["a", "--num_processes", "1"]]
    p = subprocess.run([sys.executable, "-m", "bench.launch", "--dry-run"], cwd=ROOT, text=True, capture_output=True,
                       env={**env, "ALLCONV_RUNS_PER_GPU": "0"}, timeout=300)
    assert p.returncode != 0 and p.stderr.strip() == "error: ALLCONV_RUNS_PER_GPU must be a whole number >= 1, got '0'"


def test_no_gpu_runs_the_smoke_grid_on_offline_data_and_says_why():
    p = dry_run("0")
    assert p.returncode == 0, p.stderr
    note, cmd = p.stdout.strip().splitlines()
    assert note.startswith("no GPU here: the paper grid") and " h on this CPU" in note
    assert "--preset smoke --source" in cmd and Path(cmd.split("--source ")[1].split()[0]).is_file()


def test_no_gpu_a_typo_is_one_line_before_any_timing():
    p = dry_run("0", "--lrs", "0.1,x")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == "error: argument --lrs: invalid float value: '0.1,x'\n"


def test_no_gpu_keeps_an_explicit_preset_and_source(monkeypatch):
    # the note's measured estimate is checked above; here it would only cost ~8 s of bf16 steps on a CPU
    monkeypatch.setattr(launch, "paper_grid_cpu_hours", lambda runs: 1234.0)
    cmd, note = launch.command(["--preset", "paper", "--lrs", "0.1"], gpus=0)
    assert note is None and cmd[-4:] == ["--preset", "paper", "--lrs", "0.1"]
    cmd, note = launch.command(["--source", "x.tar.gz"], gpus=0)
    assert note.startswith("no GPU here") and "~1,234 h on this CPU" in note
    assert cmd.count("--source") == 1 and cmd[-2:] == ["--source", "x.tar.gz"]


def test_no_gpu_runs_one_smoke_grid_whatever_runs_per_gpu_says(monkeypatch, capsys):
    """ALLCONV_RUNS_PER_GPU=3 without a GPU changes nothing: one smoke-grid command (K launches are K accelerate
    launches on their own ports, which a CPU command has none of: it was a traceback)."""
    monkeypatch.setattr(launch, "paper_grid_cpu_hours", lambda runs: 1234.0)  # measured in the test above
    monkeypatch.setenv("ALLCONV_GPUS", "0")
    monkeypatch.setenv("ALLCONV_RUNS_PER_GPU", "3")
    assert launch.main(["--dry-run", "--lrs", "0.1"]) == 0
    note, cmd = capsys.readouterr().out.strip().splitlines()
    assert note.startswith("no GPU here") and "--preset smoke" in cmd and cmd.endswith("--lrs 0.1")


def test_bad_gpu_override_is_one_line():
    p = dry_run("two")
    assert p.returncode != 0 and p.stderr.strip() == "error: ALLCONV_GPUS must be a whole number of GPUs, got 'two'"


def test_the_shipped_sample_prepares_for_the_smoke_grid(tmp_path):
    """The 400-image sample (20 per class and split) is enough for the smoke preset's 10 per class."""
    from loaders.manifest import load_manifest
    from loaders.prepare import prepare_cifar10

    prepare_cifar10(str(launch.OFFLINE_SOURCES[-1]), tmp_path, subset_per_class=10, seed=0)
    assert load_manifest(tmp_path)["num_images"]["train"] == 100
    assert load_manifest(tmp_path)["num_images"]["test"] == 100


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 143)])
def test_a_signal_to_the_launcher_stops_its_run_all_which_checkpoints(sig, code, smoke_data_dir, jpeg_tarball,
                                                                      tmp_path):
    """SIGTERM or Ctrl-C to `python -m bench.launch` reaches its run_all, which checkpoints and exits; the launcher
    waits for it and exits with its status. It exited at once (143), its run_all training on as an orphan."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "bench.launch", "--preset", "smoke", "--source", str(jpeg_tarball), "--data-dir",
           str(smoke_data_dir), "--out", str(out), "--no-progress", "--models", "strided-a", "--lrs", "0.05",
           "--epochs", "100", "--batch-size", "32", "--backend", "tensor"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "ALLCONV_GPUS": "0"}, stdout=f,
                                stderr=subprocess.STDOUT)
    children = []
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("*.pt")):  # smoke: a checkpoint after every epoch
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        children = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == code, log.read_text()[-2000:]
        assert "checkpointed; rerun the same command to resume" in log.read_text(), log.read_text()[-2000:]
        assert len(children) == 1 and not Path(f"/proc/{children[0]}").exists()  # exited, and reaped
    finally:
        for pid in children:  # an orphan left by a launcher that did not wait
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_a_child_killed_by_a_signal_is_a_failure_not_success():
    """The launcher exits with the highest status of its launches, a launch killed by signal N (the OOM killer's
    SIGKILL) counting as 128 + N: as Popen's -N it would lose to a sibling's 0, and `make run` would say it
    succeeded."""
    cmds = [["sh", "-c", "exit 0"], ["sh", "-c", "kill -KILL $$"], ["sh", "-c", "exit 3"]]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:  # run_children forwards these to its children: pytest's own come back after
        assert launch.run_children(cmds) == 128 + signal.SIGKILL
        assert launch.run_children([cmds[0], cmds[2]]) == 3
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def test_the_cpu_estimate_counts_the_runs_asked_for_and_the_evaluated_epochs(monkeypatch):
    """The no-GPU line counted an evaluation in every one of the 350 epochs (the paper preset evaluates 44: every
    10th and the last 10) and always said 48 runs, --ablations all included."""
    from bench.config import PRESETS, expand

    paper = PRESETS["paper"]
    assert sum(map(paper.evaluates, range(1, 351))) == 44
    grid = expand(paper)
    assert len(grid) == 48
    per_run = 350 * launch.TRAIN_IMAGES + 44 * launch.TEST_IMAGES / 3
    assert launch.grid_work(grid) == pytest.approx(sum(4 * per_run * macs(m) / macs("allcnn-c")
                                                       for m in PAPER_MODELS))
    asked = []
    monkeypatch.setattr(launch, "paper_grid_cpu_hours", lambda runs: asked.append(runs) or 1234.0)
    _, note = launch.command(["--ablations", "all", "--source", "x.tar.gz"], gpus=0)
    with_arms = expand(dataclasses.replace(paper, ablations=tuple(ABLATIONS)))
    assert len(with_arms) > 48 and f"the paper grid ({len(with_arms)} runs x 350 epochs)" in note
    assert [r.key() for r in asked[0]] == [r.key() for r in with_arms]
    _, note = launch.command(["--models", "allcnn-c", "--lrs", "0.1", "--source", "x.tar.gz"], gpus=0)
    assert "the paper grid (1 run x 350 epochs)" in note


def test_no_gpu_reads_a_preset_and_a_source_given_as_option_equals_value(monkeypatch):
    """`--preset=paper` is an explicit preset (the paper grid runs as asked, with no note) and `--source=FILE` an
    explicit source (no offline one added before it), as their spaced forms are."""
    monkeypatch.setattr(launch, "paper_grid_cpu_hours", lambda runs: 1234.0)  # measured in a test above
    cmd, note = launch.command(["--preset=paper", "--lrs", "0.1"], gpus=0)
    assert note is None and "smoke" not in cmd and cmd[-3:] == ["--preset=paper", "--lrs", "0.1"]
    cmd, note = launch.command(["--source=x.tar.gz"], gpus=0)
    assert note.startswith("no GPU here") and "--source" not in cmd and cmd[-1] == "--source=x.tar.gz"


def test_the_cpu_estimate_counts_the_seeds_asked_for(monkeypatch):
    """`--seeds 0,1,2` is three runs of the one model and LR in the no-GPU line, not the paper preset's one seed."""
    monkeypatch.setattr(launch, "paper_grid_cpu_hours", lambda runs: 1234.0)
    _, note = launch.command(["--models", "allcnn-c", "--lrs", "0.1", "--seeds", "0,1,2", "--source", "x.tar.gz"],
                             gpus=0)
    assert "the paper grid (3 runs x 350 epochs)" in note


def test_the_offline_data_is_the_full_copy_beside_the_repository_before_the_sample(tmp_path, monkeypatch):
    """../shared/data's 60,000 images when they are there; the 400-image sample only without them."""
    full, sample = tmp_path / "full.tar.gz", tmp_path / "sample.tar.gz"
    sample.write_bytes(b"")
    monkeypatch.setattr(launch, "OFFLINE_SOURCES", (full, sample))
    assert launch.offline_source() == sample
    full.write_bytes(b"")
    assert launch.offline_source() == full


def test_k_launches_refuse_a_typo_in_one_line_before_starting_any(monkeypatch, capsys):
    """With ALLCONV_RUNS_PER_GPU=2 the launcher parses run_all's options itself (to prepare the data once): a typo
    is run_all's one line and exit 2, and no launch starts."""
    monkeypatch.setenv("ALLCONV_GPUS", "2")
    monkeypatch.setenv("ALLCONV_RUNS_PER_GPU", "2")
    started = []
    monkeypatch.setattr(launch, "run_children", lambda cmds: started.append(cmds) or 0)
    assert launch.main(["--lrs", "fast"]) == 2
    assert capsys.readouterr().err == "error: argument --lrs: invalid float value: 'fast'\n" and started == []


def test_help_is_the_launchers_own_words_then_run_alls_options(capfd):
    """`python -m bench.launch --help` explains the launcher (ALLCONV_GPUS, ALLCONV_RUNS_PER_GPU, --plan) before the
    run_all options it passes on: run_all's help alone says nothing of how `make run` picks its grid."""
    assert launch.main(["--help"]) == 0
    out = capfd.readouterr().out
    assert "ALLCONV_GPUS=N" in out and "ALLCONV_RUNS_PER_GPU=K" in out and "--plan" in out
    assert out.index("run_all's options:") < out.index("usage: bench/run_all.py")
