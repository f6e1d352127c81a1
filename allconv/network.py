"""Turns one spec of `allconv.specs` into an `nn.Sequential` whose module names read like Table 1.

    model = allconv.build("allcnn-c")   # print(model): input_drop, stage1.{conv1,relu1,...,down}, drop1, ...

Model code depends on torch.nn and the specs only: device, precision and DDP belong to Accelerate.
"""
from __future__ import annotations

from torch import nn

from .specs import (DEFAULT_INIT, INITS, INPUT_DROPOUT, POOL_KERNEL, POOL_PADDING, POOL_STRIDE,  # noqa: F401
                    STAGE_DROPOUT, Conv, Pool, get_spec, stages)

def init_weights(model: nn.Module, init: str = DEFAULT_INIT) -> None:
    """Our one rule for the initialisation the paper leaves open (see DEFAULT_INIT)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if init == "torch":
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if init == "caffe-xavier":  # variance 1 / fan_in, uniform: exactly Caffe's XavierFiller
                nn.init.kaiming_uniform_(m.weight, a=0.0, nonlinearity="linear")
            elif init == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_block(block: nn.Sequential, index: int, conv: Conv, cin: int, bn: bool, relu: bool) -> None:
    """Conv (+ BN after it when on) + ReLU, each a fresh module: no two layers ever share a weight."""
    name = "down" if conv.stride == 2 else f"conv{index}"
    block.add_module(name, nn.Conv2d(cin, conv.out, conv.kernel, conv.stride, conv.pad, bias=not bn))
    if bn:
        block.add_module(f"{name}_bn", nn.BatchNorm2d(conv.out))
    if relu:
        block.add_module(f"{name}_relu", nn.ReLU(inplace=True))


def build(name: str, num_classes: int = 10, *, bn: bool = False, dropout: bool = True,
          final_relu: bool = True, init: str = DEFAULT_INIT) -> nn.Sequential:
    """Build one of the 12 networks of Table 3 (or one of one's own) by its API name (see `allconv.VARIANTS`).

    bn: batch norm after every conv (not in the paper; an ablation). The conv bias is then dropped.
    dropout: 20% on the input and 50% after each pool or the layer replacing it (the paper's setting).
    final_relu: the ReLU after the last 1x1 conv, before global averaging, as printed in Table 1.
    init: see DEFAULT_INIT.
    """
    get_spec(name)  # unknown names raise a ValueError listing the valid ones
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    for flag, value in (("bn", bn), ("dropout", dropout), ("final_relu", final_relu)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")

    net, cin = nn.Sequential(), 3
    if dropout:
        net.add_module("input_drop", nn.Dropout(INPUT_DROPOUT))
    for stage_index, (stage, layers) in enumerate(stages(name, num_classes).items(), start=1):
        block = nn.Sequential()
        convs = 0
        for i, layer in enumerate(layers):
            if isinstance(layer, Pool):
                block.add_module("down", nn.MaxPool2d(POOL_KERNEL, POOL_STRIDE, POOL_PADDING))
                continue
            convs += layer.stride == 1
            last = stage == "top" and i == len(layers) - 1
            _conv_block(block, convs, layer, cin, bn, relu=final_relu or not last)
            cin = layer.out
        net.add_module(stage, block)
        if dropout and stage != "top":
            net.add_module(f"drop{stage_index}", nn.Dropout(STAGE_DROPOUT))
    net.add_module("gap", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    init_weights(net, init)
    return net
