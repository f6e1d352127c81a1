"""What a checkpoint's (or a kept weights file's) network has learned: eval-mode error on train and test images,
and its dead ReLU channels (never positive on any of those images), layer by layer. Tells under-fitting (train
error high) from over-fitting (train low, test high), and shows capacity lost to dead units (a known failure of
ReLU nets at high LR).

    PYTHONPATH=$PWD .venv/bin/python scripts/inspect_checkpoint.py \
        results/checkpoints/<run key>.pt --data-dir data --images 2000
    # the campaign's unfinished runs: reports/measured/campaign/checkpoints/*.pt

The network is built as the run built it. A completed run's weights (results/weights/<run key>.pt,
bench/weights.py) say how. A run checkpoint (<out>/checkpoints/<run key>.pt) holds weights but no config: the model
and --bn are read off its weights' names and shapes (a MODEL or --bn/--no-bn given must agree with them); the run's
record beside it (<out>/runs/<run key>.json: a stalled or failed run keeps its checkpoint) gives the rest; without
one, pass the run's own --no-final-relu, --preprocess and --train-split (default: the paper's, as run_all's).
Anything that contradicts what the files say is refused.

The file is loaded with weights_only=True (nothing in it is executed); a file that is damaged, not ours or does not
fit is one line and exit 2. The data dir is a `python -m loaders.prepare` output. fp32, CPU.
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
from bench import checkpoint, results, weights  # noqa: E402
from bench.cli import Parser, UsageError  # noqa: E402
from bench.diagnose import diagnose  # noqa: E402
from loaders.preprocess import build_preprocess  # noqa: E402

BUILD = ("model", "bn", "final_relu", "preprocess", "train_split")  # how a run built its net and its input
PAPER = {"final_relu": True, "preprocess": "gcn-zca", "train_split": "train"}  # run_all's defaults


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def agreed(path: Path, found: dict, given: dict, source: str) -> dict:
    """`found` (what `source` says of the run), refusing any option given otherwise."""
    for name, value in given.items():
        if value is not None and name in found and found[name] != value:
            fail(f"{path}: {source} says {name} {found[name]!r}, not {value!r}")
    return {**{k: v for k, v in given.items() if v is not None}, **found}


def fitting(state: dict, given: dict) -> list[dict]:
    """The (model, bn) pairs whose network has exactly `state`'s parameter and buffer names and shapes."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = []
    for model in [given["model"]] if given["model"] else allconv.VARIANTS:
        for bn in [given["bn"]] if given["bn"] is not None else (False, True):
            with torch.device("meta"):
                net = allconv.build(model, 10, bn=bn)
            if {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes:
                found.append({"model": model, "bn": bn})
    return found


def run_network(path: Path, blob: dict, given: dict):
    """A run checkpoint's network in eval mode, built as its run built it, how its input was prepared, and a line
    saying so."""
    try:
        if not {"model", "epoch", "history"} <= set(blob):
            raise ValueError("parts missing")
        checkpoint.check_progress(blob)
        state = blob["model"]
        if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
            raise ValueError("its model weights are not named tensors")
    except Exception as e:  # noqa: BLE001  (untrusted: whatever is wrong, one line)
        fail(f"{path}: not a run checkpoint ({e if isinstance(e, ValueError) else type(e).__name__})")
    found = fitting(state, given)
    if len(found) != 1:
        asked = " ".join(f"{k} {given[k]}" for k in ("model", "bn") if given[k] is not None)
        fail(f"{path}: its weights fit {'no' if not found else 'more than one'} allconv network"
             f"{f' ({asked})' if asked else ''}")
    build = agreed(path, found[0], given, "its weights")
    record, _ = results.read_one(path.parent.parent / "runs" / f"{path.stem}.json")
    source = "model and bn read off its weights, the rest as given or the paper's: a checkpoint does not say"
    if record is not None:
        build = agreed(path, {k: record[k] for k in BUILD}, build, f"its record {record['run_key']}.json")
        source = f"as its record says ({record['status']} run)"
    build = {**PAPER, **build}
    net = allconv.build(build["model"], 10, bn=build["bn"], final_relu=build["final_relu"])
    try:
        net.load_state_dict(state)
    except Exception as e:  # noqa: BLE001  (e.g. tensors of another kind: meta, sparse)
        fail(f"{path}: its weights do not load into {build['model']} ({type(e).__name__})")
    last = blob["history"][-1] if blob["history"] else {}
    about = (f"{path.name}: {build['model']} after epoch {blob['epoch']} (last logged: loss {last.get('loss')}, train "
             f"acc with dropout {last.get('train_acc_pct')}%, lr {last.get('lr')}); built with bn {build['bn']}, "
             f"final_relu {build['final_relu']}, input {build['preprocess']} fitted on {build['train_split']} "
             f"({source})")
    return net.eval(), build["preprocess"], build["train_split"], about


def main() -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("model", nargs="?", choices=allconv.VARIANTS, help="the allconv name the run trained (read off "
                                                                        "the weights; checked when given)")
    p.add_argument("--bn", action=argparse.BooleanOptionalAction, help="as run_all's (read off the weights)")
    p.add_argument("--final-relu", action=argparse.BooleanOptionalAction,
                   help="as run_all's (default: on, as the paper; a checkpoint's weights cannot tell)")
    p.add_argument("--preprocess", choices=loaders.PREPROCESS, help="as run_all's (default: gcn-zca)")
    p.add_argument("--train-split", choices=loaders.TRAIN_SPLITS, help="as run_all's (default: train)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--images", type=int, default=2000, help="seeded images per split")
    try:
        args = p.parse_args()
    except UsageError as e:  # one line, as run_all's
        fail(str(e))
    if args.images < 1:
        fail(f"--images must be >= 1, got {args.images}")
    given = {k: getattr(args, k) for k in BUILD}
    try:
        _, blob = checkpoint.read(args.checkpoint)  # a regular file of sane size, torch.load'ed weights_only
    except ValueError as e:
        fail(f"{args.checkpoint}: {e}")
    if isinstance(blob, dict) and "state_dict" in blob:  # a completed run's kept weights: they say how they were built
        try:
            blob = weights.checked(blob, args.checkpoint)
            agreed(args.checkpoint, {k: blob[k] for k in BUILD}, given, "the weights file")
            net = weights.network(blob, args.checkpoint)
        except ValueError as e:
            fail(str(e))
        preprocess, fit_split = blob["preprocess"], blob["train_split"]
        about = (f"{args.checkpoint.name}: {blob['model']} at LR {blob['lr']}, completed (recorded test error "
                 f"{blob['test_error_pct']}%); input {preprocess} fitted on {fit_split}")
    elif isinstance(blob, dict):
        net, preprocess, fit_split, about = run_network(args.checkpoint, blob, given)
    else:
        fail(f"{args.checkpoint}: not a run checkpoint or weights file")
    try:
        whiten = build_preprocess(preprocess, args.data_dir, fit_split)
        splits = {}  # split -> (batches of a seeded pick of images, their labels)
        for split in ("train", "test"):
            images, labels = loaders.load_arrays(args.data_dir, split)
            pick = np.sort(np.random.default_rng(0).choice(len(images), min(args.images, len(images)), replace=False))
            batches = [(torch.from_numpy(images[c]).permute(0, 3, 1, 2), torch.from_numpy(labels[c]).long())
                       for c in np.array_split(pick, max(1, len(pick) // 250))]
            splits[split] = batches, labels[pick]
    except (ValueError, OSError) as e:
        fail(f"--data-dir {args.data_dir}: {e}")
    print(about)
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
