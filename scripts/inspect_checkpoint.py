"""What a checkpoint's (or a kept weights file's) network has learned: eval-mode error on train and test images,
and its dead ReLU channels (never positive on any of those images), layer by layer. Tells under-fitting (train
error high) from over-fitting (train low, test high), and shows capacity lost to dead units (a known failure of
ReLU nets at high LR).

    PYTHONPATH=$PWD .venv/bin/python scripts/inspect_checkpoint.py \
        reports/measured/campaign/checkpoints/489234371f2401e9.pt allcnn-c --data-dir /work/full-data --images 2000

A completed run's weights (results/weights/<run key>.pt, bench/weights.py) need no model name:
    PYTHONPATH=$PWD .venv/bin/python scripts/inspect_checkpoint.py results/weights/KEY.pt --data-dir data

The checkpoint is loaded with weights_only=True (nothing in it is executed); the data dir is a
`python -m loaders.prepare` output; the input is prepared as the run's was (a checkpoint: GCN+ZCA fitted on
train). fp32, CPU.
"""
import argparse
import contextlib
import sys
from types import SimpleNamespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import allconv  # noqa: E402
import loaders  # noqa: E402
from bench import weights  # noqa: E402
from bench.diagnose import diagnose  # noqa: E402
from loaders.preprocess import build_preprocess  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("model", nargs="?", help="allconv API name the checkpoint was trained as, e.g. allcnn-c (a "
                                            "weights file names its own)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--images", type=int, default=2000, help="seeded images per split")
    args = p.parse_args()
    blob = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    preprocess, fit_split = "gcn-zca", "train"  # a checkpoint's run: the paper's (the checkpoint does not say)
    if "state_dict" in blob:  # a completed run's kept weights: they say how their input was prepared
        try:
            blob = weights.checked(blob, args.checkpoint)  # read once, above
            net = weights.network(blob, args.checkpoint)
        except ValueError as e:
            p.error(str(e))
        preprocess, fit_split = blob["preprocess"], blob["train_split"]
        print(f"{args.checkpoint.name}: {blob['model']} at LR {blob['lr']}, completed (recorded test error "
              f"{blob['test_error_pct']}%); input {preprocess} fitted on {fit_split}")
    else:
        if not args.model:
            p.error("a checkpoint needs the model name it was trained as, e.g. allcnn-c")
        net = allconv.build(args.model, 10)
        net.load_state_dict(blob["model"])
        net.eval()
        last = blob["history"][-1] if blob.get("history") else {}
        print(f"{args.checkpoint.name}: {args.model} after epoch {blob['epoch']} (last logged: loss "
              f"{last.get('loss')}, train acc with dropout {last.get('train_acc_pct')}%, lr {last.get('lr')})")
    whiten = build_preprocess(preprocess, args.data_dir, fit_split)
    splits = {}  # split -> (batches of a seeded pick of images, their labels)
    for split in ("train", "test"):
        images, labels = loaders.load_arrays(args.data_dir, split)
        pick = np.sort(np.random.default_rng(0).choice(len(images), min(args.images, len(images)), replace=False))
        batches = [(torch.from_numpy(images[c]).permute(0, 3, 1, 2), torch.from_numpy(labels[c]).long())
                   for c in np.array_split(pick, max(1, len(pick) // 250))]
        splits[split] = batches, labels[pick]
    acc = SimpleNamespace(device=torch.device("cpu"), autocast=lambda _kwargs=None: contextlib.nullcontext())
    d = diagnose(net, splits["train"][0], splits["test"][0], whiten, acc)  # bench/diagnose.py, as run_all records
    print(f"train: eval-mode error {d['train_error_pct']:.2f}% on {len(splits['train'][1])} images")
    for name, (dead, channels) in d["dead_relu_channels"].items():
        print(f"  {name:12s} dead channels {dead:4d} / {channels} ({100 * dead / channels:.1f}%)")
    test_labels = splits["test"][1]
    per_class = np.bincount(test_labels, minlength=len(d["test_error_by_class_pct"]))
    wrong = sum(pct * n / 100 for pct, n in zip(d["test_error_by_class_pct"], per_class) if pct is not None)
    print(f"test: eval-mode error {100 * wrong / len(test_labels):.2f}% on {len(test_labels)} images; per class: "
          + " ".join("-" if pct is None else f"{pct:.1f}" for pct in d["test_error_by_class_pct"]))

if __name__ == "__main__":
    main()
