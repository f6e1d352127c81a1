"""What a finished run's network learned, measured once when it ends and recorded as its `diagnosis` (--diagnose):

    train_error_pct          eval-mode error on the training split. The history's train_acc_pct is measured with
                             dropout on; this one tells under-fitting (high) from over-fitting (low beside a high
                             test error).
    test_error_by_class_pct  the final test error of each class (0-9, CIFAR-10's label order).
    dead_relu_channels       per ReLU layer, [dead, channels]: channels never positive on any training image. That is
                             capacity lost, a known failure of ReLU nets at high LR. A dead class map under the final
                             ReLU (FACTS.md: Table 1's last layer) also caps the accuracy: that class can only win a
                             tie at 0.

One pass over the training split and one over the test split (60,000 images: six test evaluations' worth, about a
second on a GPU, under 0.5% of a 350-epoch run), in eval mode at the run's evaluation precision, with a forward hook
on every ReLU. With DDP each rank counts its shard and the counts are summed. `scripts/inspect_checkpoint.py`
reports the same for a checkpoint, on CPU, through `diagnose`.
"""
from __future__ import annotations

import torch
from torch import nn

from bench import engine
from bench.runs import NUM_CLASSES


@torch.no_grad()
def diagnose(net: nn.Module, train_loader, test_loader, preprocess, acc, *, autocast=None, channels_last=False,
             distributed: bool = False) -> dict:
    """The `diagnosis` of a bare (not DDP-wrapped) network; see the module docstring."""
    net.eval()
    relus = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.ReLU)]
    fired = {}  # ReLU name -> per channel, the training images it was positive on

    def count(name):
        def hook(_module, _inputs, out):
            fired[name] = fired.get(name, 0) + (out > 0).flatten(2).any(2).sum(0)
        return hook

    handles = [m.register_forward_hook(count(name)) for name, m in relus]
    try:
        train_wrong, train_seen = _wrong_per_class(net, train_loader, preprocess, acc, autocast, channels_last)
    finally:
        for h in handles:
            h.remove()
    test_wrong, test_seen = _wrong_per_class(net, test_loader, preprocess, acc, autocast, channels_last)
    parts = [train_wrong, train_seen, test_wrong, test_seen, *(fired[name] for name, _ in relus)]
    counts = torch.cat(parts)
    if distributed:
        counts = acc.reduce(counts, "sum")
    train_wrong, train_seen, test_wrong, test_seen, *fired_n = (
        part.tolist() for part in counts.split([p.numel() for p in parts]))
    return {"train_error_pct": 100 * sum(train_wrong) / max(1, sum(train_seen)),
            "test_error_by_class_pct": [100 * w / n if n else None for w, n in zip(test_wrong, test_seen)],
            "dead_relu_channels": {name: [sum(v == 0 for v in f), len(f)] for (name, _), f in zip(relus, fired_n)}}


def _wrong_per_class(net, loader, preprocess, acc, autocast, channels_last) -> tuple[torch.Tensor, torch.Tensor]:
    """(wrong, seen) per true class over `loader`, on the device."""
    wrong = torch.zeros(NUM_CLASSES, dtype=torch.long, device=acc.device)
    seen = torch.zeros(NUM_CLASSES, dtype=torch.long, device=acc.device)
    for images, labels in loader:
        x = engine.prepare_input(images, preprocess, channels_last)
        with acc.autocast(autocast):
            predicted = net(x).argmax(1)
        wrong.index_add_(0, labels, (predicted != labels).long())  # no host sync (bincount and a mask index do)
        seen.index_add_(0, labels, torch.ones_like(labels, dtype=torch.long))
    return wrong, seen
