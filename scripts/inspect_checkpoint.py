"""What a checkpoint's network has learned: eval-mode error on train and test images, and its dead ReLU channels
(never positive on any of those images), layer by layer. Tells under-fitting (train error high) from over-fitting
(train low, test high), and shows capacity lost to dead units (a known failure of ReLU nets at high LR).

    PYTHONPATH=$PWD .venv/bin/python scripts/inspect_checkpoint.py \
        reports/measured/campaign/checkpoints/489234371f2401e9.pt allcnn-c --data-dir /work/full-data --images 2000

The checkpoint is loaded with weights_only=True (nothing in it is executed); the data dir is a
`python -m loaders.prepare` output; GCN+ZCA is fitted on its training split, as run_all does. fp32, CPU.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import allconv  # noqa: E402
import loaders  # noqa: E402
from loaders.preprocess import build_preprocess  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("model", help="allconv API name the checkpoint was trained as, e.g. allcnn-c")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--images", type=int, default=2000, help="seeded images per split")
    args = p.parse_args()
    blob = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    net = allconv.build(args.model, 10)
    net.load_state_dict(blob["model"])
    net.eval()
    last = blob["history"][-1] if blob.get("history") else {}
    print(f"{args.checkpoint.name}: {args.model} after epoch {blob['epoch']} (last logged: loss {last.get('loss')}, "
          f"train acc with dropout {last.get('train_acc_pct')}%, lr {last.get('lr')})")
    whiten = build_preprocess("gcn-zca", args.data_dir)
    relus = [(name, m) for name, m in net.named_modules() if isinstance(m, torch.nn.ReLU)]
    for split in ("train", "test"):
        images, labels = loaders.load_arrays(args.data_dir, split)
        pick = np.sort(np.random.default_rng(0).choice(len(images), min(args.images, len(images)), replace=False))
        peak = {name: None for name, _ in relus}  # per channel, the largest activation seen
        hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: peak.__setitem__(
            name, out.amax((0, 2, 3)) if peak[name] is None else torch.maximum(peak[name], out.amax((0, 2, 3)))))
            for name, m in relus]
        wrong = 0
        with torch.no_grad():
            for chunk in np.array_split(pick, max(1, len(pick) // 250)):
                x = whiten(torch.from_numpy(images[chunk]).permute(0, 3, 1, 2))
                wrong += (net(x).argmax(1) != torch.from_numpy(labels[chunk])).sum().item()
        for h in hooks:
            h.remove()
        print(f"{split}: eval-mode error {100 * wrong / len(pick):.2f}% on {len(pick)} images")
        if split == "train":
            for name, m in relus:
                dead, channels = int((peak[name] <= 0).sum()), peak[name].numel()
                print(f"  {name:12s} dead channels {dead:4d} / {channels} ({100 * dead / channels:.1f}%)")


if __name__ == "__main__":
    main()
