"""scripts/device_check.sh, tiny on CPU: what it leaves in OUT fits what the GPU machines bring back (<= 8 plain
files of <= 16 MiB, no folders), the archives open, and the ledger archive holds the training run's record."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_tiny_on_cpu(smoke_data_dir, jpeg_tarball, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(smoke_data_dir, data)
    out, scratch = tmp_path / "OUT", tmp_path / "scratch"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK"))},
           "PY": sys.executable, "PYTHONPATH": str(ROOT), "DEVICE": "cpu", "MODELS": "strided-a",
           "TRAIN_MODEL": "strided-a", "STEPS": "1", "REPEATS": "1", "WARMUP": "1", "BATCH": "32", "EPOCHS": "1",
           "DROPS": "", "SUBSET": "10", "SRC": str(jpeg_tarball), "DATA": str(data), "OUT": str(out),
           "SCRATCH": str(scratch), "TOTAL": "400", "STEP_MAX": "200"}
    p = subprocess.run(["bash", "scripts/device_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=450)
    assert p.returncode == 0, p.stderr[-2000:]
    files = sorted(out.iterdir())
    assert 1 <= len(files) <= 8 and all(f.is_file() and f.stat().st_size <= 16 * 2**20 for f in files), files
    log = (out / "device_check.txt").read_text()
    # throughput (no fp16 on CPU), training, loader throughput, report
    assert "# skipped" not in log and log.count("# exit 0 after") == 4, log[-3000:]
    with tarfile.open(out / "ledger.tar.gz") as tf:
        (name,) = [n for n in tf.getnames() if n.startswith("results/runs/") and n.endswith(".json")]
        record = json.load(tf.extractfile(name))
    assert record["model"] == "strided-a" and record["status"] == "completed" and record["epochs_completed"] == 1
    with tarfile.open(out / "report.tar.gz") as tf:
        assert any(n.startswith("report/") and tf.getmember(n).isfile() for n in tf.getnames())
    assert json.loads((out / "throughput.json").read_text())
