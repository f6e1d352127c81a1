"""Tests for the throughput benchmark (issue 6): FLOP and MFU arithmetic, the peak table, the CLI on CPU.

Nothing here asserts on time (STYLE section 6): timings on a shared CPU are noise. The CLI runs on tiny
settings (batch 4, one step) so the whole file takes seconds.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import allconv
import loaders
from bench import devices, throughput, timing

ROOT = Path(__file__).resolve().parents[1]
H100_SXM = "NVIDIA H100 80GB HBM3"  # what torch.cuda.get_device_name() says on an H100 SXM5


# ---- FLOP and MFU arithmetic ---------------------------------------------------------------------------------

def test_flop_per_image_counts_training_as_three_forward_passes():
    macs = allconv.macs("allcnn-c")
    assert macs == 270_798_336
    assert devices.eval_flop_per_image(macs) == 541_596_672  # 2 FLOP per MAC
    assert devices.train_flop_per_image(macs) == 1_624_790_016  # forward + backward = 3x forward


def test_tflops_and_mfu_on_known_numbers():
    # 1000 img/s of All-CNN-C training is 1.6248 TFLOP/s
    assert devices.tflops(1000, devices.train_flop_per_image(270_798_336)) == pytest.approx(1.62479, rel=1e-5)
    assert devices.tflops(None, 1) is None
    assert devices.mfu(296.7, H100_SXM, "bf16") == pytest.approx(0.3)
    assert devices.mfu(33.5, H100_SXM, "fp32") == pytest.approx(0.5)
    assert devices.mfu(33.5, H100_SXM, "no") == devices.mfu(33.5, H100_SXM, "fp32")  # Accelerate's name
    assert devices.mfu(1.0, "CPU: AMD EPYC", "bf16") is None
    assert devices.mfu(None, H100_SXM, "bf16") is None
    assert devices.mfu(593.4, H100_SXM, "bf16", count=2) == pytest.approx(0.3)  # two GPUs' summed rate


def test_device_name_of_this_cpu_is_what_records_and_benchmarks_share():
    import torch

    from bench import results
    name = devices.device_name(torch.device("cpu"))
    assert name.startswith("CPU: ") and len(name) > 5
    assert results.environment(torch.device("cpu"))["device_name"] == name


# ---- the peak table ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, precision, peak", [
    (H100_SXM, "bf16", 989.0), (H100_SXM, "fp32", 67.0), ("NVIDIA H100 SXM5 80GB", "fp16", 989.0),
    ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H100 PCIe", "fp32", 51.0),
    ("NVIDIA H200", "bf16", 989.0), ("NVIDIA H200", "fp32", 67.0), ("NVIDIA H200 NVL", "bf16", 835.5),
    ("NVIDIA GH200 480GB", "bf16", 989.0),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("NVIDIA A100 80GB PCIe", "fp32", 19.5),
    ("NVIDIA L4", "bf16", 121.0), ("NVIDIA L4", "fp32", 30.3), ("NVIDIA L40S", "bf16", 362.0),
    ("NVIDIA A10", "bf16", 125.0), ("Tesla T4", "fp16", 65.0),
])
def test_peak_table_lookups(name, precision, peak):
    assert devices.peak_tflops(name, precision) == peak


@pytest.mark.parametrize("name", [None, "", "CPU: AMD EPYC", "NVIDIA A10G", "NVIDIA H100 NVL", "NVIDIA GeForce RTX 4090"])
def test_unknown_devices_have_no_peak(name):
    assert devices.peak_tflops(name, "bf16") is None
    assert devices.mfu(100.0, name, "bf16") is None


def test_no_tensor_core_precision_has_no_peak():
    assert devices.peak_tflops("Tesla T4", "bf16") is None  # Turing has no bf16 tensor cores
    assert devices.peak_tflops("Tesla V100-SXM2-16GB", "fp16") == 125.0


def test_fp32_with_tf32_convolutions_is_compared_with_the_tf32_peak():
    assert devices.peak_tflops("NVIDIA A100-SXM4-40GB", "fp32", tf32=True) == 156.0
    assert devices.peak_precision("NVIDIA A100-SXM4-40GB", "fp32", tf32=True) == "tf32"
    assert devices.peak_tflops("Tesla T4", "fp32", tf32=True) == 8.1  # no TF32 there: plain fp32
    assert devices.peak_tflops(H100_SXM, "bf16", tf32=True) == 989.0  # tf32 only concerns fp32 runs


def test_unknown_precision_raises():
    with pytest.raises(ValueError, match="unknown precision"):
        devices.peak_tflops(H100_SXM, "fp64")


def test_devices_imports_no_torch():
    code = "import sys, bench.devices; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ---- timing helpers -------------------------------------------------------------------------------------------

def test_time_windows_excludes_warmup_and_times_each_window():
    import torch
    calls = []
    seconds, cpu_share = timing.time_windows(lambda: calls.append(1), torch.device("cpu"), steps=3, warmup=2,
                                             repeats=4)
    assert len(calls) == 2 + 3 * 4 and len(seconds) == 4 and all(s > 0 for s in seconds)
    assert cpu_share >= 0
    median, spread = timing.images_per_s([1.0, 2.0, 4.0], images_per_window=100)
    assert median == 50.0 and spread == pytest.approx(150.0)


# ---- the CLI -------------------------------------------------------------------------------------------------

def test_resolve_models_takes_names_and_patterns_in_table_order():
    assert throughput.resolve_models(["*-c"]) == ["model-c", "strided-c", "convpool-c", "allcnn-c"]
    assert throughput.resolve_models(["allcnn-c,model-a"]) == ["model-a", "allcnn-c"]
    assert throughput.resolve_models(["*"])[:12] == list(allconv.PAPER_MODELS)  # then any network of one's own


def test_cli_on_cpu_writes_json_and_csv(tmp_path):
    out_json, out_csv = tmp_path / "tp.json", tmp_path / "sub" / "tp.csv"
    argv = ["--device", "cpu", "--models", "strided-c", "model-a", "--precision", "fp32", "bf16",
            "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "2",
            "--json", str(out_json), "--csv", str(out_csv)]
    assert throughput.main(argv) == 0
    rows = json.loads(out_json.read_text())
    assert [(r["model"], r["precision"]) for r in rows] == [
        ("model-a", "fp32"), ("model-a", "bf16"), ("strided-c", "fp32"), ("strided-c", "bf16")]
    for row in rows:
        assert list(row) == throughput.COLUMNS
        assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
        flop = devices.train_flop_per_image(allconv.macs(row["model"]))
        assert row["train_tflops"] == pytest.approx(row["train_images_per_s"] * flop / 1e12)
        assert row["display_name"] == allconv.VARIANTS[row["model"]]
        assert (row["device"], row["backend"], row["batch_size"], row["repeats"]) == ("cpu", "synthetic", 4, 2)
        assert row["peak_tflops"] is None and row["mfu"] is None  # a CPU: unknown peak
        assert row["torch_version"] and row["date"]
    with open(out_csv, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == throughput.COLUMNS
        table = list(reader)
    assert [r["model"] for r in table] == [r["model"] for r in rows]
    assert float(table[0]["train_images_per_s"]) == pytest.approx(rows[0]["train_images_per_s"])



def test_a_rows_device_and_precision_are_what_the_plan_matches_a_ledger_by(tmp_path):
    """bench.plan scales its estimate by a file's images/s measured on the ledger's device (the records'
    device_name) at the run's precision: a row naming its device otherwise ("cpu") was never used."""
    import torch

    from bench import plan
    out_json = tmp_path / "tp.json"
    assert throughput.main(["--device", "cpu", "--models", "strided-c", "--precision", "fp32", "--batch-size", "4",
                            "--steps", "1", "--warmup", "0", "--repeats", "1", "--no-eval", "--json",
                            str(out_json)]) == 0
    (row,) = json.loads(out_json.read_text())
    name = devices.device_name(torch.device("cpu"))  # a record's device_name on this machine
    assert plan.benchmark_rates(str(out_json), name) == ({("strided-c", "no"): row["train_images_per_s"]}, [name])

def test_rows_measured_before_a_run_is_cut_short_are_kept(tmp_path, monkeypatch):
    """The JSON is rewritten after every row, so a benchmark killed by a time limit (scripts/campaign.sh's step 1)
    leaves the rows it measured; here the second model's measurement raises."""
    out_json = tmp_path / "tp.json"
    measured = throughput.measure

    def second_fails(name, *a, **k):
        if name == "strided-c":
            raise RuntimeError("cut short")
        return measured(name, *a, **k)

    monkeypatch.setattr(throughput, "measure", second_fails)
    with pytest.raises(RuntimeError, match="cut short"):
        throughput.main(["--device", "cpu", "--models", "strided-c", "model-a", "--precision", "fp32", "--batch-size",
                         "4", "--steps", "1", "--warmup", "1", "--repeats", "1", "--no-eval", "--json", str(out_json)])
    assert [r["model"] for r in json.loads(out_json.read_text())] == ["model-a"]
    assert [p.name for p in tmp_path.iterdir()] == ["tp.json"]  # no temporary file left


def test_fused_rows_time_k_runs_against_the_separate_step(tmp_path, monkeypatch):
    """--fused K: each row also times a K-run bench.fused group in the same process; its images/s count every run's
    images (K x steps x batch per window: scripts/campaign.sh fuses when the ratio is >= 1.25), and the ratio,
    TFLOP/s and share of the peak (of every device that trained: two processes, twice the peak) follow from the two
    rates."""
    out_json = tmp_path / "fused.json"
    argv = ["--device", "cpu", "--models", "strided-c", "--precision", "fp32", "bf16", "--batch-size", "4",
            "--steps", "1", "--warmup", "1", "--repeats", "2", "--no-eval", "--fused", "3", "--json", str(out_json)]
    timed, time_windows = [], timing.time_windows
    monkeypatch.setattr(timing, "time_windows", lambda *a, **k: timed.append(time_windows(*a, **k)) or timed[-1])
    assert throughput.main(argv) == 0
    rows = json.loads(out_json.read_text())
    assert [r["precision"] for r in rows] == ["fp32", "bf16"] and len(timed) == 4  # per row: separate, fused
    for row, (separate, _), (fused, _) in zip(rows, timed[::2], timed[1::2]):
        assert row["train_images_per_s"] == timing.images_per_s(separate, 1 * 4)[0]
        assert row["fused_train_images_per_s"] == timing.images_per_s(fused, 3 * 1 * 4)[0]
        h200 = throughput.complete_row({**row, "tf32": False}, throughput.parse_args(argv), torch_device_cpu(),
                                       "NVIDIA H200", 2)
        peak = {"fp32": 67.0, "bf16": 989.0}[row["precision"]]
        assert h200["mfu"] == pytest.approx(row["train_tflops"] / (2 * peak))
        assert h200["fused_mfu"] == pytest.approx(row["fused_train_tflops"] / (2 * peak))
    for row in rows:
        assert row["fused_runs"] == 3 and row["fused_train_images_per_s"] > 0
        assert row["fused_over_separate"] == pytest.approx(row["fused_train_images_per_s"] / row["train_images_per_s"])
        flop = devices.train_flop_per_image(allconv.macs("strided-c"))
        assert row["fused_train_tflops"] == pytest.approx(row["fused_train_images_per_s"] * flop / 1e12)
    assert throughput.main(argv[:-4] + ["--json", str(out_json)]) == 0  # without --fused: no fused figures
    assert all(r["fused_runs"] is None and r["fused_over_separate"] is None for r in json.loads(out_json.read_text()))


def test_fp32_rows_are_timed_in_full_fp32_as_run_all_trains_them(tmp_path, monkeypatch):
    """run_all trains and evaluates a precision-"no" run inside engine.full_fp32 (TF32 off on CUDA); so are the
    fp32 rows timed (training and evaluation), and compared with the fp32 peak, never tf32's. bf16 rows are not:
    their convolutions run in bf16. On the CPU full_fp32 changes nothing, so a spy records where it was on."""
    from contextlib import contextmanager

    from bench import engine
    full, real = [], engine.full_fp32

    @contextmanager
    def spy(device, on):
        with real(device, on):
            full.append(on)
            try:
                yield
            finally:
                full.pop()

    timed, time_windows = [], timing.time_windows
    monkeypatch.setattr(engine, "full_fp32", spy)
    monkeypatch.setattr(timing, "time_windows", lambda *a, **k: timed.append(any(full)) or time_windows(*a, **k))
    monkeypatch.setattr(devices, "device_name", lambda device: "NVIDIA A100-SXM4-40GB")  # a GPU with a tf32 peak
    out_json = tmp_path / "fp32.json"
    assert throughput.main(["--device", "cpu", "--models", "strided-c", "--precision", "fp32", "bf16", "--batch-size",
                            "4", "--steps", "1", "--warmup", "0", "--repeats", "1", "--json", str(out_json)]) == 0
    assert timed == [True, True, False, False]  # fp32 row: train, eval; bf16 row: train, eval
    rows = json.loads(out_json.read_text())
    assert [(r["precision"], r["peak_precision"], r["peak_tflops"]) for r in rows] == [("fp32", "fp32", 19.5),
                                                                                       ("bf16", "bf16", 312.0)]


@pytest.mark.parametrize("eval_flag, evaluated", [([], ["no", "no"]), (["--eval-precision", "bf16"], ["no", "bf16"])])
def test_evaluation_runs_at_the_eval_precision_as_run_all_evaluates(tmp_path, monkeypatch, eval_flag, evaluated):
    """run_all evaluates in fp32 unless --eval-precision names the training precision; so do the rows here (a bf16
    row's eval img/s was timed under bf16 autocast), each row says which, and its eval MFU is of that peak."""
    steps, make_step = [], timing.make_step

    def spy(model, acc, precision, channels_last, preprocess=None, optimizer=None, *a, **k):
        steps.append((precision, optimizer is None))  # no optimizer: the evaluation step
        return make_step(model, acc, precision, channels_last, preprocess, optimizer, *a, **k)

    monkeypatch.setattr(timing, "make_step", spy)
    monkeypatch.setattr(devices, "device_name", lambda device: "NVIDIA H200")
    out_json = tmp_path / "eval.json"
    assert throughput.main(["--device", "cpu", "--models", "strided-c", "--precision", "fp32", "bf16", "--batch-size",
                            "4", "--steps", "1", "--warmup", "0", "--repeats", "1", *eval_flag,
                            "--json", str(out_json)]) == 0
    assert [p for p, is_eval in steps if is_eval] == evaluated
    assert [p for p, is_eval in steps if not is_eval] == ["no", "bf16"]
    rows = json.loads(out_json.read_text())
    assert [r["eval_precision"] for r in rows] == [devices.PRECISION_LABELS[p] for p in evaluated]
    for row in rows:
        peak = {"fp32": 67.0, "bf16": 989.0}[row["eval_precision"]]
        assert row["eval_mfu"] == pytest.approx(row["eval_tflops"] / peak)


def test_fused_step_trains_every_run_on_the_batch():
    """The timed fused step is a real training step of K runs: its first loss is K x a separate run's (the same
    initial weights, batch and dropout masks), and fp16, which FusedRuns refuses, has no fused step. Contiguous
    format: under channels_last a separate run draws its dropout masks in NHWC order, the group in NCHW order."""
    import torch
    acc = timing.make_accelerator(["no"], "cpu")
    images, labels = timing.synthetic_batch(8, acc.device, channels_last=False)
    fused = timing.make_fused_step("strided-c", acc, "no", False, runs=3)
    torch.manual_seed(5)
    group_loss = fused(images, labels)
    torch.manual_seed(0)
    model = timing.build_model("strided-c", acc.device, channels_last=False, compile=False).train()
    step = timing.make_step(model, acc, "no", False, optimizer=timing.build_optimizer(model, acc.device))
    torch.manual_seed(5)
    assert float(group_loss) == pytest.approx(3 * float(step(images, labels)), rel=1e-5)
    assert float(fused(images, labels)) != pytest.approx(float(group_loss), rel=1e-5)  # the runs were updated
    assert timing.make_fused_step("strided-c", acc, "fp16", True, runs=3) is None


TINY = ["--models", "strided-a", "--precision", "fp32", "--steps", "1", "--repeats", "1", "--warmup", "0",
        "--batch-size", "2", "--no-eval"]


@pytest.mark.parametrize("argv, message", [
    (["--models", "allcnn-z"], "no model matches 'allcnn-z'"),
    (["--precision", "fp64"], "unknown precision fp64"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--fused", "1"], "--fused 0 (off) or at least 2"),
    (["--precision", "bf16", "--eval-precision", "fp16"], "--eval-precision must be no or one of --precision's"),
    (["--steps", "x"], "invalid int value"),
    (["--loaders", "torch"], "--loaders needs --data-dir"),
    (["--loaders", "tensor", "--data-dir", "/nonexistent"], "is not a folder"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--cuda-graphs", "--warmup", "3"], "--cuda-graphs needs --warmup 4 or more"),
    (["--cuda-graphs", "--precision", "fp16"], "neither --precision fp16"),
    # an output that cannot be written: a traceback once the first row was measured (here in ~1 s; all 12: minutes)
    (["--json", "README.md/tp.json", *TINY], "--json README.md/tp.json: cannot be written (README.md is not a"),
    (["--csv", "bench", *TINY], "--csv bench: cannot be written (it is a folder)"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    result = subprocess.run([sys.executable, "bench/throughput.py", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("throughput.py: error:") and message in lines[0]


def test_cuda_requested_without_cuda_is_exit_2(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert throughput.main(["--device", "cuda", "--models", "strided-c"]) == 2
    assert capsys.readouterr().err.strip() == "throughput.py: error: --device cuda but CUDA is not available here"


# ---- end-to-end rows ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    """A prepared CIFAR-10 look-alike: 3 PNG images per class and split, through loaders.prepare."""
    np = pytest.importorskip("numpy")
    Image = pytest.importorskip("PIL.Image")
    prepare = pytest.importorskip("loaders.prepare")
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in prepare.CLASSES:
            (root / "src" / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "src" / split / cls / f"{i}.png")
    with pytest.MonkeyPatch.context() as mp:  # importing ffcv to write .beton files costs ~5 s; no ffcv rows here
        if hasattr(prepare, "_ffcv_available"):
            mp.setattr(prepare, "_ffcv_available", lambda: False)
        prepare.prepare_cifar10(str(root / "src"), root / "data", subset_per_class=3)
    return root / "data"


def test_end_to_end_rows_per_backend(tmp_path, tiny_data_dir):
    """A loader row next to the synthetic row, through the same engine step with preprocessing. The tensor backend
    only: FFCV JIT-compiles each new loader for 5-9 s and the torch backend forks workers every epoch."""
    out_json = tmp_path / "e2e.json"
    argv = ["--device", "cpu", "--models", "strided-c", "--precision", "bf16", "--batch-size", "8", "--steps", "2",
            "--warmup", "1", "--repeats", "2", "--loaders", "tensor", "--data-dir", str(tiny_data_dir),
            "--preprocess", "meanstd", "--json", str(out_json)]
    assert throughput.main(argv) == 0
    rows = json.loads(out_json.read_text())
    assert [r["backend"] for r in rows] == ["synthetic", "tensor"]
    for row in rows:
        assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0


@pytest.mark.slow
def test_two_processes_each_time_their_device_and_the_main_one_writes(tmp_path, free_port):
    """Under `accelerate launch` (2 CPU ranks on gloo) each rank times its own copy and the rates are summed."""
    out_json = tmp_path / "two.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(free_port), "--mixed_precision", "no",
           "--dynamo_backend", "no", "bench/throughput.py", "--device", "cpu", "--models", "strided-c",
           "--precision", "fp32", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "2",
           "--json", str(out_json)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    [row] = json.loads(out_json.read_text())
    assert row["world_size"] == row["device_count"] == 2 and row["train_images_per_s"] > 0
    assert result.stdout.count("strided-c") == 1  # only the main process prints


def test_loader_rows_time_full_batches_only(tiny_data_dir, capsys):
    """The rate is steps x --batch-size images, so a short last batch must not be timed: 30 images per split give
    3 full batches of 8 and none of 64, which is a one-line error, not a rate inflated by short batches."""
    cache = loaders.Cache(tiny_data_dir, backend="tensor", device=torch_device_cpu(), distributed=False, batch_size=8)
    stream = timing.loader_batches(cache, "train", 8)
    assert all(len(stream()[1]) == 8 for _ in range(10))  # 10 batches over 3+ epochs, the short ones skipped
    argv = ["--device", "cpu", "--models", "strided-c", "--precision", "fp32", "--batch-size", "64", "--steps", "1",
            "--warmup", "1", "--repeats", "2", "--loaders", "tensor", "--data-dir", str(tiny_data_dir)]
    assert throughput.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer images per process (30) than --batch-size 64" in err[0]


def test_a_batch_larger_than_the_data_is_refused_before_any_row_and_keeps_the_json(tmp_path, tiny_data_dir, capsys):
    """30 images per split and --batch-size 64: refused before the synthetic row is timed, so the --json file of
    an earlier benchmark is left as it was (it is rewritten after every row once timing begins)."""
    keep = tmp_path / "keep.json"
    keep.write_text('[{"model": "earlier"}]\n')
    argv = [*TINY, "--device", "cpu", "--batch-size", "64", "--loaders", "tensor", "--data-dir", str(tiny_data_dir),
            "--json", str(keep)]
    assert throughput.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"throughput.py: error: --loaders tensor: the train split in {tiny_data_dir} has fewer images per process (30) than "
        "--batch-size 64: lower it or prepare more data"]
    assert keep.read_text() == '[{"model": "earlier"}]\n'


@pytest.fixture(scope="module")
def tiny_ffcv_data_dir(tiny_data_dir):
    """tiny_data_dir's images prepared again with FFCV's .beton files."""
    prepare = loaders.prepare
    if not prepare._ffcv_available():
        pytest.skip("ffcv is not installed here")
    prepare.prepare_cifar10(str(tiny_data_dir.parent / "src"), tiny_data_dir.parent / "ffcv", subset_per_class=3)
    return tiny_data_dir.parent / "ffcv"


def test_ffcv_rows_leave_the_other_rows_thread_count_alone(tmp_path, tiny_ffcv_data_dir, capsys):
    """FFCV's Loader sets torch's thread count to its worker count when built (before any row) and at every epoch:
    the synthetic rows, the one after an ffcv row included, ran at its count, not the one the header states."""
    import torch

    from loaders.ffcv_loaders import default_num_workers
    saved = torch.get_num_threads()
    threads = default_num_workers() + 1  # not FFCV's count
    torch.set_num_threads(threads)
    try:
        synthetic = {}
        for backends in ([], ["ffcv"]):
            out_json = tmp_path / "threads.json"
            argv = [*TINY, "--device", "cpu", "--models", "strided-a", "model-a", "--batch-size", "8",
                    "--data-dir", str(tiny_ffcv_data_dir), "--loaders", *backends, "--json", str(out_json)]
            assert throughput.main(argv) == 0
            assert f", {threads} threads, " in capsys.readouterr().out.splitlines()[0]
            rows = json.loads(out_json.read_text())
            assert [r["backend"] for r in rows] == ["synthetic", *backends] * 2
            synthetic[tuple(backends)] = [r["threads"] for r in rows if r["backend"] == "synthetic"]
    finally:
        torch.set_num_threads(saved)
    assert synthetic[()] == synthetic[("ffcv",)] == [threads, threads]


def damage(folder: Path, how: str) -> None:
    match how:
        case "manifest":
            (folder / "manifest.json").write_text("{\n")
        case "truncated":
            with open(folder / "train_images.npy", "r+b") as f:
                f.truncate(1000)
        case "missing":
            (folder / "test_images.npy").unlink()


@pytest.mark.parametrize("how, message", [
    ("manifest", "is not prepared (no valid manifest.json)"),
    ("truncated", "is damaged or incomplete"),
    ("missing", "is damaged or incomplete"),
])
def test_damaged_data_is_one_line_before_anything_is_timed(tmp_path, tiny_data_dir, capsys, how, message):
    """A folder whose manifest or files are damaged is refused by prepare's own check before the header is printed
    or a row timed, not with a traceback from the loader after the synthetic row."""
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_data_dir, bad)
    damage(bad, how)
    argv = [*TINY, "--device", "cpu", "--batch-size", "8", "--loaders", "tensor", "--data-dir", str(bad)]
    assert throughput.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"throughput.py: error: --data-dir {bad} {message}")
    assert line.endswith(f"run python -m loaders.prepare --source SRC --data-dir {bad}" + " again" * (how != "manifest"))


def test_ffcv_rows_on_data_prepared_without_ffcv_are_one_line(tiny_data_dir, capsys):
    """tiny_data_dir has no .beton files: --loaders ffcv says so before anything is printed or timed."""
    if not loaders.prepare._ffcv_available():
        pytest.skip("ffcv is not installed: the backend is skipped, not refused")
    argv = [*TINY, "--device", "cpu", "--batch-size", "8", "--loaders", "ffcv", "--data-dir", str(tiny_data_dir)]
    assert throughput.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"throughput.py: error: --loaders ffcv: {tiny_data_dir} was prepared without ffcv")


def torch_device_cpu():
    import torch
    return torch.device("cpu")


def test_a_rows_images_per_s_count_every_step_of_its_windows(tmp_path, monkeypatch):
    """A timed window of --steps steps trains (and evaluates) steps x --batch-size images, and the row's rates divide
    that by the window's seconds. The other rows here time one step per window, where one batch is the same count."""
    timed, time_windows = [], timing.time_windows
    monkeypatch.setattr(timing, "time_windows", lambda *a, **k: timed.append(time_windows(*a, **k)) or timed[-1])
    out_json = tmp_path / "steps.json"
    assert throughput.main(["--device", "cpu", "--models", "strided-a", "--precision", "fp32", "--batch-size", "2",
                            "--steps", "3", "--warmup", "0", "--repeats", "1", "--json", str(out_json)]) == 0
    (row,) = json.loads(out_json.read_text())
    ([train], _), ([evaluation], _) = timed
    assert row["train_images_per_s"] == pytest.approx(3 * 2 / train)
    assert row["eval_images_per_s"] == pytest.approx(3 * 2 / evaluation)


def test_a_bf16_row_is_timed_under_bf16_autocast():
    """The process's one Accelerator is made at the bf16 a row asks for (timing.make_accelerator), so the bf16 row's
    step runs under bf16 autocast and its fp32 row with autocast off: an Accelerator at "no" would time every row
    in fp32 while the rows still say bf16 (their images/s and MFU then of another step)."""
    import torch

    from bench import engine
    acc = timing.make_accelerator(["no", "bf16"], "cpu")
    model = timing.build_model("strided-a", acc.device, channels_last=False, compile=False).eval()
    images, labels = timing.synthetic_batch(2, acc.device, channels_last=False)
    dtypes = {}
    for precision in ("no", "bf16"):
        with acc.autocast(autocast_handler=engine.autocast_for(precision, acc)):
            dtypes[precision] = model(images).dtype
    assert dtypes == {"no": torch.float32, "bf16": torch.bfloat16}


def test_rows_time_training_in_train_mode_and_evaluation_in_eval_mode(tmp_path, monkeypatch):
    """As run_all trains (dropout on) and evaluates (dropout off), so are the steps a row times: a training step timed
    in eval mode skips the dropout masks, another step than the one training runs."""
    from bench import engine
    modes = []
    for name in ("train_step", "eval_step"):
        real = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda model, *a, _real=real, _name=name, **k: modes.append(
            (_name, model.training)) or _real(model, *a, **k))
    assert throughput.main(["--device", "cpu", "--models", "strided-a", "--precision", "fp32", "--batch-size", "2",
                            "--steps", "1", "--warmup", "0", "--repeats", "1", "--json", str(tmp_path / "m.json")]) == 0
    assert set(modes) == {("train_step", True), ("eval_step", False)}


def test_two_processes_rates_are_summed_and_one_no_process_measured_stays_none():
    """sum_over_processes: a row's images/s are the sum of its processes' rates (each timed its own device), as the
    column says; the two-process test cannot tell a sum from a mean (it knows neither rank's rate). A figure no
    process measured (--no-eval) stays None. Here the other rank is a stand-in reduce over known rates."""
    import math

    import torch
    keys = ("train_images_per_s", "eval_images_per_s", "fused_train_images_per_s")
    other = torch.tensor([30.0, math.nan, 5.0], dtype=torch.float64)

    class TwoRanks:
        num_processes, device = 2, torch.device("cpu")

        def reduce(self, local, reduction):
            return getattr(torch.stack([local, other]), reduction)(0)

    row = {"model": "strided-a", **dict(zip(keys, (10.0, None, 1.0)))}
    summed = throughput.sum_over_processes(row, TwoRanks())
    assert summed == {"model": "strided-a", **dict(zip(keys, (40.0, None, 6.0)))}
