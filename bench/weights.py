"""A completed run's trained network, kept for later use (`--save-weights`; on in the paper preset): Table 3's
networks for what comes after it (the paper itself goes on to look inside All-CNN with guided backpropagation).

    <out>/weights/<run key>.pt      written when the run completes (the record with that run key describes it)
    net = bench.weights.load(path)  # the allconv network, eval mode, on CPU; a bad file: ValueError, one line

A completed run's checkpoint is deleted (it exists to resume); this file is the network alone, about 4 bytes a
parameter (All-CNN-C: 5.5 MB). It holds only tensors, strings, numbers and booleans: `torch.load(weights_only=True)`
reads it and nothing in it is executed. Besides the weights it names what `allconv.build` needs to rebuild the
network (model, classes, bn, dropout, final_relu), how its input was prepared (`preprocess`, fitted on
`train_split`: loaders.Cache.preprocess(preprocess, train_split)), the run key, the LR and the final test error.
"""
from __future__ import annotations

import sys
from pathlib import Path

FORMAT = 1
BUILD = ("model", "num_classes", "bn", "dropout", "final_relu")  # allconv.build's arguments, as stored
INPUT = ("preprocess", "train_split")  # the input preparation the network was trained on


def path_of(out, key: str) -> Path:
    return Path(out) / "weights" / f"{key}.pt"


def save(status: str, run, key: str, net, outcome: dict, *, writer: bool = True) -> Path | None:
    """Write a completed run's network when its config asks for it (--save-weights) and this process is its
    `writer` (DDP: the main process only; grid mode: the process that trained it). A write that fails (a full
    disk) is a warning: the trained run's record is worth more than this copy of its weights."""
    import torch

    from bench.files import atomic_write
    from bench.runs import NUM_CLASSES

    c = run.cfg
    if not (writer and c.save_weights and status == "completed"):
        return None
    blob = {"format": FORMAT, "run_key": key, "model": run.model, "num_classes": NUM_CLASSES, "bn": c.bn,
            "dropout": c.dropout, "final_relu": c.final_relu, "preprocess": c.preprocess,
            "train_split": c.train_split, "lr": run.lr, "test_error_pct": outcome.get("test_error_pct"),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}}
    path = path_of(c.out, key)
    try:
        return atomic_write(path, lambda f: torch.save(blob, f))
    except OSError as e:
        print(f"warning: the weights of run {key} were not saved ({path}): {e}", file=sys.stderr)
        return None


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"


def read(path) -> dict:
    """The file's contents, checked to be one `save` wrote (ValueError, one line naming the file, otherwise)."""
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a file, not a torch file, or one weights_only refuses: untrusted input
        raise ValueError(f"{path}: not a weights file ({_one_line(e)})") from None
    return checked(blob, path)


def checked(blob, path) -> dict:
    """`blob` (a file's torch.load'ed contents) if it is what `save` wrote; else ValueError, one line naming `path`."""
    import allconv

    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not {*BUILD, *INPUT, "state_dict"} <= set(blob):
        raise ValueError(f"{path}: not a weights file written by bench/weights.py (format {FORMAT})")
    if not isinstance(blob["model"], str) or blob["model"] not in allconv.VARIANTS:
        raise ValueError(f"{path}: names no known model ({str(blob['model'])[:40]!r}; known: "
                         f"{', '.join(allconv.VARIANTS)})")
    return blob


def network(blob: dict, path):
    """The network of a `checked` blob, rebuilt with allconv.build, in eval mode on CPU (ValueError naming `path`
    when its weights do not fit the network it names)."""
    import allconv

    try:
        net = allconv.build(blob["model"], blob["num_classes"], bn=blob["bn"], dropout=blob["dropout"],
                            final_relu=blob["final_relu"])
        net.load_state_dict(blob["state_dict"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: the weights do not fit {blob['model']} ({_one_line(e)})") from None
    return net.eval()


def load(path):
    """The network `save` wrote, rebuilt with allconv.build, in eval mode on CPU. ValueError (one line naming the
    file) for a file that is not one of ours, or whose weights do not fit the network it names."""
    return network(read(path), path)
