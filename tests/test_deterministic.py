"""`--deterministic`: deterministic kernels for the whole process, recorded in the run's config, outside the run key;
and the same command twice gives the same network bit for bit. On CPU that holds with or without the switch; on a
GPU (marked `gpu`) it is what the switch is for: cuDNN's benchmarking and its atomics-based kernels otherwise pick
and sum differently from one process to the next."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import engine, results, run_all

ROOT = Path(__file__).resolve().parents[1]


def args(data_dir, source, out, *extra, device: str = "cpu") -> list[str]:
    """One All-CNN-C run of 2 epochs on the 100 real training images, batch 20, dropout on (its masks come from
    the seeded generator), the paper's bf16 on a GPU."""
    return ["--preset", "smoke", "--models", "allcnn-c", "--lrs", "0.05", "--epochs", "2", "--batch-size", "20",
            "--source", str(source), "--data-dir", str(data_dir), "--subset-per-class", "10", "--out", str(out),
            "--backend", "tensor", "--no-progress", "--save-weights",
            *(["--precision", "bf16"] if device == "cuda" else []), *extra]


@pytest.fixture
def restore_determinism():
    """run_all's main sets process-wide state: put it back for the other tests of this process."""
    saved = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(False)
    if saved is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved


def test_the_switch_reaches_training_is_recorded_and_keeps_the_key(smoke_data_dir, jpeg_tarball, tmp_path,
                                                                   monkeypatch, fresh_accelerator,
                                                                   restore_determinism):
    seen = []
    real = engine.train_step
    monkeypatch.setattr(engine, "train_step", lambda *a, **kw: seen.append(
        (torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))) or real(*a, **kw))
    out = tmp_path / "out"
    assert run_all.main(args(smoke_data_dir, jpeg_tarball, out, "--epochs", "1", "--deterministic")) == 0
    assert seen and set(seen) == {(True, ":4096:8")}
    (record,) = results.read_records(out)
    assert record["status"] == "completed" and record["config"]["deterministic"] is True

    seen.clear()  # the same run without the switch: recorded already (the key ignores it), so skipped
    assert run_all.main(args(smoke_data_dir, jpeg_tarball, out, "--epochs", "1")) == 0
    assert seen == [] and [r["run_key"] for r in results.read_records(out)] == [record["run_key"]]
    assert not torch.are_deterministic_algorithms_enabled()  # a process without the switch turns it off


def twice(data_dir, source, tmp_path, device: str, *extra) -> list[dict]:
    """Two separate processes, each training the same run into its own ledger; their trained networks
    (bench/weights.py) and records."""
    out = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
        p = subprocess.run([sys.executable, "bench/run_all.py", *args(data_dir, source, tmp_path / f"out{i}",
                                                                      *extra, device=device)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        (record,) = results.read_records(tmp_path / f"out{i}")
        blob = torch.load(tmp_path / f"out{i}" / "weights" / f"{record['run_key']}.pt", weights_only=True)
        out.append({"record": record, "state": blob["state_dict"]})
    return out


def check_identical(a: dict, b: dict) -> None:
    assert a["record"]["status"] == b["record"]["status"] == "completed"
    assert a["record"]["run_key"] == b["record"]["run_key"]
    assert [(h["loss"], h["train_acc_pct"]) for h in a["record"]["history"]] == \
        [(h["loss"], h["train_acc_pct"]) for h in b["record"]["history"]]
    assert a["state"].keys() == b["state"].keys()
    for name in a["state"]:
        assert torch.equal(a["state"][name], b["state"][name]), name


def test_the_same_command_twice_gives_the_same_network_on_cpu(smoke_data_dir, jpeg_tarball, tmp_path):
    """Without the switch: what the README says of a CPU run."""
    check_identical(*twice(smoke_data_dir, jpeg_tarball, tmp_path, "cpu"))


def test_a_cublas_setting_that_is_not_deterministic_is_refused(smoke_data_dir, jpeg_tarball, tmp_path, capsys,
                                                               monkeypatch, fresh_accelerator, restore_determinism):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:2")
    assert run_all.main(args(smoke_data_dir, jpeg_tarball, tmp_path / "out", "--deterministic")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --deterministic needs CUBLAS_WORKSPACE_CONFIG=:4096:8") and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_command_twice_gives_the_same_network_on_gpu(smoke_data_dir, jpeg_tarball, tmp_path):
    """bf16, channels_last, cuBLAS (the whitening), cuDNN convolutions, dropout, fused SGD: every kernel of the
    paper preset's step, run with deterministic algorithms only, twice."""
    check_identical(*twice(smoke_data_dir, jpeg_tarball, tmp_path, "cuda", "--deterministic"))
