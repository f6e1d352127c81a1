"""Shared pytest fixtures. Add fixtures; do not change existing ones (other test files rely on them)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

# ALLCONV_TEST_TARBALL: the same tarball elsewhere (the GPU machines get it carried in data-src/: scripts/campaign.sh)
FULL_TARBALL = Path(os.environ.get("ALLCONV_TEST_TARBALL") or
                    Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz")
SAMPLE_TARBALL = Path(__file__).resolve().parents[1] / "data-sample/cifar10-jpeg-sample.tar.gz"  # 20 a class, split


@pytest.fixture(scope="session")
def full_tarball() -> Path:
    """All 60,000 real CIFAR-10 images as an ImageFolder tarball (../shared/data); skips when it is absent."""
    if not FULL_TARBALL.is_file():
        pytest.skip(f"{FULL_TARBALL} not found (set ALLCONV_TEST_TARBALL to a copy)")
    return FULL_TARBALL


@pytest.fixture(scope="session")
def jpeg_tarball() -> Path:
    """Real CIFAR-10 images as an ImageFolder tarball: the full one when it is here, else the 400-image sample
    shipped in data-sample/ (enough for the smoke subset of 10 a class and split), so that a user's machine
    without ../shared still runs every test that needs no more than that."""
    return FULL_TARBALL if FULL_TARBALL.is_file() else SAMPLE_TARBALL


def _prepared_once(tmp_path_factory, tarball: Path, name: str, **subset) -> Path:
    """A data directory prepared from the JPEG tarball once per test session, shared by pytest-xdist's workers
    (the first to arrive prepares it under a file lock; the others wait, then find it prepared)."""
    from filelock import FileLock

    from loaders.prepare import prepare_cifar10

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder all workers' temp folders share
    data_dir = root / name
    with FileLock(str(data_dir) + ".lock"):
        prepare_cifar10(str(tarball), data_dir, **subset)  # a no-op when prepared already
    return data_dir


@pytest.fixture
def no_ffcv(monkeypatch):
    """prepare without FFCV files (as on the GPU machines): quicker, where they are beside the point."""
    monkeypatch.setitem(sys.modules, "ffcv", None)


@pytest.fixture(scope="session")
def smoke_data_dir(jpeg_tarball, tmp_path_factory) -> Path:
    """A prepared data directory: 10 seeded images per class and split from `jpeg_tarball` (100 train, 100
    test), prepared once per test session. Read-only for tests: copy it before changing anything."""
    return _prepared_once(tmp_path_factory, jpeg_tarball, "smoke-data", subset_per_class=10, seed=0)


@pytest.fixture(scope="session")
def learning_data_dir(full_tarball, tmp_path_factory) -> Path:
    """300 seeded images per class and split (3,000 train, 3,000 test), prepared once per test session: enough for
    a small network to leave chance (tests/test_fidelity.py). Read-only for tests."""
    return _prepared_once(tmp_path_factory, full_tarball, "learning-data", subset_per_class=300, seed=0)


@pytest.fixture(scope="session")
def learning_arrays_dir(full_tarball, tmp_path_factory) -> Path:
    """learning_data_dir's images without the FFCV files, for tensor-backend runs under `no_ffcv` (which keeps
    prepare from adding them): writing them was ~3 of the ~8 CPU s of preparing. Read-only for tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "ffcv", None)
        return _prepared_once(tmp_path_factory, full_tarball, "learning-arrays", subset_per_class=300, seed=0)


@pytest.fixture(scope="session")
def full_data_dir(full_tarball, tmp_path_factory) -> Path:
    """All 60,000 real images from the JPEG tarball, prepared once per test session (npy arrays, splits, and the
    .beton files when ffcv is importable). Read-only for tests: copy it before changing anything."""
    return _prepared_once(tmp_path_factory, full_tarball, "full-data")


def _write_official_archive(path: Path, train: tuple, test: tuple, *, members=None) -> Path:
    """Write a cifar-10-python.tar.gz look-alike: `train`/`test` are (uint8 N x 32 x 32 x 3 HWC, labels) pairs;
    train is spread over data_batch_1..5 as in the official archive. `members` limits which batches are written."""
    import numpy as np

    parts = {f"data_batch_{i + 1}": (x, y) for i, (x, y) in
             enumerate(zip(np.array_split(train[0], 5), np.array_split(train[1], 5)))}
    parts["test_batch"] = test
    return official_batches_archive(path, {n: p for n, p in parts.items() if members is None or n in members})


def official_batches_archive(path: Path, batches: dict) -> Path:
    """An official-format archive whose members are `batches`: name -> (uint8 N x 32 x 32 x 3 HWC, labels), each
    pickled as the official batches are (images and labels may differ in number: a damaged archive)."""
    import io
    import pickle
    import tarfile

    import numpy as np

    with tarfile.open(path, "w:gz") as tf:
        for name, (x, y) in batches.items():
            data = np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)).reshape(len(x), -1)
            blob = pickle.dumps({b"data": data, b"labels": [int(v) for v in y]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


@pytest.fixture(scope="session")
def write_official_archive():
    """A function writing a small official-format CIFAR-10 archive: f(path, (train_x, train_y), (test_x, test_y))."""
    return _write_official_archive


@pytest.fixture
def free_port():
    """A TCP port free right now and reserved for the test, for `accelerate launch --main_process_port` (the
    default 29500 collides when several launches run at once). Below the kernel's ephemeral range (32768+), so no
    gloo connection or TCPStore is handed it between this check and the launch that binds it seconds later; held
    by a file lock for the whole test, so no other xdist worker or test session on this machine takes it."""
    import random
    import socket
    import tempfile

    from filelock import FileLock, Timeout

    start = random.randrange(2000)
    for offset in range(2000):
        port = 21000 + (start + offset) % 2000
        lock = FileLock(os.path.join(tempfile.gettempdir(), f"allconv-test-port-{port}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:  # another test holds it
            continue
        try:
            with socket.socket() as s:
                s.bind(("", port))  # all addresses, as the launcher's store binds it
        except OSError:  # in use on this machine: the next one
            lock.release()
            continue
        try:
            yield port
        finally:
            lock.release()
        return
    raise RuntimeError("no free port in 21000-22999")


@pytest.fixture(autouse=True)
def signal_handlers_restored():
    """Many tests call `bench/run_all.py`'s main in this process: it installs its SIGTERM/SIGINT handlers (stop at
    the next step boundary) and a signal leaves STOP requested. Each test leaves both as it found them, so a later
    in-process run is not stopped by an earlier one's signal and this worker still dies of SIGTERM."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    if (run_all := sys.modules.get("bench.run_all")) is not None:
        run_all.STOP.update(requested=False, signal=signal.SIGTERM)


@pytest.fixture
def fresh_accelerator():
    """For tests that run `bench/run_all.py`'s main in the pytest process: Accelerate keeps one state per process
    and refuses a second mixed precision, and an earlier test (the step benchmarks, throughput) may have left a bf16
    one where run_all now asks for its preset's. Starts with none and leaves none, as bench/timing.py does."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.fixture
def run_worker(free_port):
    """f(argv, world, timeout=240): `python *argv` as one process, or for world > 1 under `accelerate launch` with
    that many gloo ranks on CPU (ACCELERATE_USE_CPU=1, on the test's free port); asserts it exited 0 and returns the
    CompletedProcess. For test files whose worker runs as a script (`python tests/test_x.py ...`)."""
    import subprocess
    import sys

    def run(argv: list[str], world: int, timeout: int = 240) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
        cmd = [sys.executable, *argv]
        if world > 1:
            env["ACCELERATE_USE_CPU"] = "1"
            cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
                   str(world), "--num_machines", "1", "--main_process_port", str(free_port), "--mixed_precision",
                   "no", "--dynamo_backend", "no", *argv]
        p = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                           timeout=timeout)
        assert p.returncode == 0, p.stderr[-3000:]
        return p

    return run
