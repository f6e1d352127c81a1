"""The 12 networks against the paper's Tables 1-2 and the exact counts in ../shared/FACTS.md.

Each test here fails on one of the bugs that sank earlier reproductions: wrong padding (5x5 with pad 1),
5x5 or 1x1 extra layers instead of 3x3, pooling that gives 15/7 instead of 16/8, a layer object appended
twice (shared weights), dropout left on at test time.
"""
import subprocess
import sys

import pytest
import torch
from torch import nn

import allconv
from allconv.specs import SPECS

TABLE3_ORDER = ["model-a", "strided-a", "convpool-a", "allcnn-a", "model-b", "strided-b", "convpool-b",
                "allcnn-b", "model-c", "strided-c", "convpool-c", "allcnn-c"]
EXACT_PARAMS = {  # FACTS.md: weights + biases, 10 classes, no BN
    "model-a": 839_242, "strided-a": 839_242, "convpool-a": 1_254_250, "allcnn-a": 1_254_250,
    "model-b": 885_610, "strided-b": 885_610, "convpool-b": 1_300_618, "allcnn-b": 1_300_618,
    "model-c": 954_730, "strided-c": 954_730, "convpool-c": 1_369_738, "allcnn-c": 1_369_738,
}
DISPLAY = {"model-a": "Model A", "strided-a": "Strided-CNN-A", "convpool-a": "ConvPool-CNN-A",
           "allcnn-a": "All-CNN-A", "model-c": "Model C", "allcnn-c": "All-CNN-C",
           "convpool-b": "ConvPool-CNN-B"}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_variants_in_table3_order_with_paper_names():
    assert list(allconv.PAPER_MODELS) == list(allconv.VARIANTS)[:12] == TABLE3_ORDER  # then any network of one's own
    for name, display in DISPLAY.items():
        assert allconv.VARIANTS[name] == display
    assert allconv.list_models("*-c") == ["model-c", "strided-c", "convpool-c", "allcnn-c"]


@pytest.mark.parametrize("name", list(SPECS))
def test_exact_parameter_count(name):
    """FACTS.md's counts for the paper's 12; for a network of one's own added to SPECS, its stated count is its
    network's (the count a report prints)."""
    model = allconv.build(name)
    assert count(model) == EXACT_PARAMS.get(name, SPECS[name].num_params) == SPECS[name].num_params
    assert count(model) == allconv.num_params(name)


def test_hundred_classes():
    assert count(allconv.build("allcnn-c", num_classes=100)) == 1_387_108
    assert allconv.num_params("allcnn-c", num_classes=100) == 1_387_108


def test_c_family_layers_are_table2_written_out():
    """Table 2 of the paper, literally: kernel x width (/2 for stride 2) of every conv, and the pools."""
    expected = {
        "model-c": "3x96 3x96 pool 3x192 3x192 pool 3x192 1x192 1x10",
        "strided-c": "3x96 3x96/2 3x192 3x192/2 3x192 1x192 1x10",
        "convpool-c": "3x96 3x96 3x96 pool 3x192 3x192 3x192 pool 3x192 1x192 1x10",
        "allcnn-c": "3x96 3x96 3x96/2 3x192 3x192 3x192/2 3x192 1x192 1x10",
        "strided-b": "5x96 1x96/2 5x192 1x192/2 3x192 1x192 1x10",
        "allcnn-a": "5x96 3x96/2 5x192 3x192/2 3x192 1x192 1x10",
    }
    for name, layers in expected.items():
        got = []
        for m in allconv.build(name).modules():
            if isinstance(m, nn.Conv2d):
                got.append(f"{m.kernel_size[0]}x{m.out_channels}" + ("/2" if m.stride[0] == 2 else ""))
            elif isinstance(m, nn.MaxPool2d):
                got.append("pool")
        assert " ".join(got) == layers, name


@pytest.mark.parametrize("name", TABLE3_ORDER)
def test_same_padding_except_top_3x3(name):
    for i, conv in enumerate(convs(allconv.build(name))):
        top3x3 = i == len(convs(allconv.build(name))) - 3
        assert conv.padding[0] == (0 if top3x3 else conv.kernel_size[0] // 2), (name, i)


@pytest.mark.parametrize("name", TABLE3_ORDER)
def test_spatial_sizes_32_16_8_6(name):
    model = allconv.build(name).eval()
    sizes = {}
    hooks = [getattr(model, s).register_forward_hook(
        lambda m, i, o, s=s: sizes.__setitem__(s, tuple(o.shape[-2:]))) for s in ("stage1", "stage2", "top")]
    out = model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == {"stage1": (16, 16), "stage2": (8, 8), "top": (6, 6)}
    assert out.shape == (2, 10)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("name", TABLE3_ORDER)
def test_every_layer_owns_its_weights(name, bn):
    model = allconv.build(name, bn=bn)
    params = list(model.parameters())
    assert len({id(p) for p in params}) == len(params)
    storages = [p.untyped_storage().data_ptr() for p in params]
    assert len(set(storages)) == len(storages)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    assert len({id(m) for m in layers}) == len(layers)
    # no module object registered under two names either
    named = list(model.named_modules(remove_duplicate=False))
    assert len({id(m) for _, m in named}) == len(named)


def test_eval_is_deterministic_and_train_is_stochastic():
    torch.manual_seed(0)
    model = allconv.build("allcnn-a")
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))
    no_drop = allconv.build("allcnn-a", dropout=False).train()
    assert not any(isinstance(m, nn.Dropout) for m in no_drop.modules())
    with torch.no_grad():
        assert torch.equal(no_drop(x), no_drop(x))


def test_dropout_positions_and_rates():
    for name in TABLE3_ORDER:
        model = allconv.build(name)
        drops = [(n, m.p) for n, m in model.named_modules() if isinstance(m, nn.Dropout)]
        assert drops == [("input_drop", 0.2), ("drop1", 0.5), ("drop2", 0.5)], name
        names = [n for n, _ in model.named_children()]
        assert names == ["input_drop", "stage1", "drop1", "stage2", "drop2", "top", "gap", "flatten"]
    # Strided: the dropout follows the strided conv directly
    stage1 = list(allconv.build("strided-b").stage1.children())
    assert isinstance(stage1[-2], nn.Conv2d) and stage1[-2].stride == (2, 2)


def test_final_relu_switch():
    with_relu = allconv.build("allcnn-c").top
    without = allconv.build("allcnn-c", final_relu=False).top
    assert isinstance(list(with_relu.children())[-1], nn.ReLU)
    assert isinstance(list(without.children())[-1], nn.Conv2d)
    assert sum(isinstance(m, nn.ReLU) for m in without) == 2
    torch.manual_seed(0)
    model = allconv.build("allcnn-c", final_relu=False, dropout=False).eval()
    assert (model(torch.randn(8, 3, 32, 32)) < 0).any()  # logits can be negative only without the ReLU
    model = allconv.build("allcnn-c", dropout=False).eval()
    assert (model(torch.randn(8, 3, 32, 32)) >= 0).all()


def test_bn_after_every_conv():
    model = allconv.build("model-b", bn=True)
    mods = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    assert len(mods) == 2 * len(convs(model))
    for conv, bn in zip(mods[::2], mods[1::2]):
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        assert conv.bias is None and bn.num_features == conv.out_channels
    assert count(model) == allconv.num_params("model-b", bn=True)
    assert count(model) == 885_610 + sum(c.out_channels for c in convs(model))


@pytest.mark.parametrize("name", TABLE3_ORDER)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = allconv.build(name, bn=name.endswith("c"))
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", TABLE3_ORDER)
def test_macs_match_a_count_from_real_layer_outputs(name):
    model = allconv.build(name, num_classes=10).eval()
    total = []

    def hook(conv, inputs, output):
        k = conv.kernel_size[0] * conv.kernel_size[1]
        total.append(k * conv.in_channels * output.shape[1] * output.shape[2] * output.shape[3])

    for conv in convs(model):
        conv.register_forward_hook(hook)
    model(torch.zeros(1, 3, 32, 32))
    assert sum(total) == allconv.macs(name)
    assert allconv.macs("allcnn-c") == 270_798_336  # FACTS.md: ~271 M


def test_init_options():
    torch.manual_seed(0)
    conv = convs(allconv.build("allcnn-c"))[1]  # 3x3, 96 -> 96: fan_in 864
    bound = (3 / 864) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(conv.bias) == 0
    torch.manual_seed(0)
    a = convs(allconv.build("allcnn-c", init="kaiming"))[1].weight
    assert abs(a.std().item() - (2 / 864) ** 0.5) < 0.002
    torch.manual_seed(0)
    first = convs(allconv.build("allcnn-c", init="xavier"))[0].weight  # 3x3, 3 -> 96: fan_in 27, fan_out 864
    glorot = (6 / (27 + 864)) ** 0.5  # not caffe-xavier's (3 / 27) ** 0.5, nor kaiming's std (2 / 27) ** 0.5
    assert first.abs().max() <= glorot and first.abs().max() > 0.9 * glorot


def test_the_head_averages_each_class_map_over_its_6x6():
    """Global AVERAGE pooling of the last conv's class maps (Table 1); a global max pool has the same shapes and
    parameters and passed every test."""
    torch.manual_seed(0)
    model = allconv.build("allcnn-c", dropout=False, final_relu=False).eval()
    maps = []
    model.top.register_forward_hook(lambda m, i, o: maps.append(o))
    logits = model(torch.randn(2, 3, 32, 32))
    assert maps[0].shape == (2, 10, 6, 6) and torch.allclose(logits, maps[0].mean((2, 3)))


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "no-such-model"}, "valid names: model-a"),  # not "allcnn-d": a network of one's own may be called that
    ({"name": "allcnn-c", "num_classes": 0}, "num_classes"),
    ({"name": "allcnn-c", "bn": "yes"}, "bn must be"),
    ({"name": "allcnn-c", "init": "he"}, "valid: caffe-xavier"),
])
def test_bad_options_raise_with_valid_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        allconv.build(**kwargs)


def test_cli_table():
    out = subprocess.run([sys.executable, "-m", "allconv"], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 1 + len(SPECS)
    assert lines[12].split()[:5] == ["All-CNN-C", "1,369,738", "1.4", "M", "270.8"] and " 9.08 " in lines[12]
    bad = subprocess.run([sys.executable, "-m", "allconv", "nope-*"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_specs_import_no_torch():
    """reports/ reads the specs on machines without torch: importing them must not pull torch in."""
    code = "import sys, allconv; allconv.macs('allcnn-c'); allconv.VARIANTS; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bn_sits_between_each_conv_and_its_relu():
    """--bn (an ablation arm): conv -> BN -> ReLU in every block, as allconv.build documents. BN after the ReLU
    would normalise a rectified (non-negative) signal and pass negative values on: another network under the same
    record. The final 1x1 conv without its ReLU (--no-final-relu) still gets its BN."""
    for final_relu in (True, False):
        model = allconv.build("allcnn-c", bn=True, final_relu=final_relu)
        for block in (model.stage1, model.stage2, model.top):
            layers = list(block.children())
            for i, conv in enumerate(layers):
                if isinstance(conv, nn.Conv2d):
                    assert isinstance(layers[i + 1], nn.BatchNorm2d), (block, i)
                    last = block is model.top and conv is layers[-2]
                    if final_relu or not last:
                        assert isinstance(layers[i + 2], nn.ReLU), (block, i)


def test_macs_count_the_classes_asked_for():
    """macs(num_classes=100) counts the 100-way 1x1 conv the network of that many classes has (192 -> 100 at 6x6);
    a count that ignored `num_classes` gave the 10-class figure for every class count."""
    assert allconv.macs("allcnn-c", num_classes=100) - allconv.macs("allcnn-c") == 6 * 6 * 192 * 90


@pytest.mark.parametrize("name", [n for n in TABLE3_ORDER if n.startswith(("model", "convpool"))])
def test_every_pool_is_3x3_stride_2_padded_by_1(name):
    """Table 1's 3x3 max-pool, stride 2, padded by 1 (allconv.specs.POOL_PADDING). A 2x2/2 pool, or a 3x3/2 one in
    ceil mode without padding (Caffe's windows, shifted by a pixel), gives the same 16 and 8 and the same parameters:
    the sizes and counts passed for both."""
    pools = [m for m in allconv.build(name).modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2
    for pool in pools:
        assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 1, False), name


@pytest.mark.parametrize("name", TABLE3_ORDER)
def test_every_conv_is_followed_by_its_relu(name):
    """Table 1: ReLU after every conv, the stages' 1x1 convs of family B included (only the strided one's missing
    ReLU was caught before, by the dropout test's look at strided-b); without the final ReLU, only the last conv
    has none."""
    for final_relu in (True, False):
        mods = [m for m in allconv.build(name, final_relu=final_relu).modules()
                if not isinstance(m, nn.Sequential)]
        after = [type(mods[i + 1]).__name__ if i + 1 < len(mods) else None
                 for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
        assert after == ["ReLU"] * (len(after) - 1) + ["ReLU" if final_relu else "AdaptiveAvgPool2d"], name
        assert sum(isinstance(m, nn.ReLU) for m in mods) == len(after) - (not final_relu)


@pytest.mark.parametrize("init", ["caffe-xavier", "kaiming"])
def test_init_scales_by_fan_in_in_every_conv(init):
    """Caffe's XavierFiller (variance 1 / fan_in) and He init scale by the fan-in. test_init_options looked at a
    96 -> 96 conv only, whose fan-in and fan-out are both 864: a fan-out filler, or Glorot's in place of Caffe's,
    passed it. The first conv (fan-in 27, fan-out 864) and the last (fan-in 192, fan-out 10) tell them apart."""
    torch.manual_seed(0)
    first, *_, last = convs(allconv.build("allcnn-c", init=init))
    for conv, fan_in in ((first, 27), (last, 192)):
        w = conv.weight
        assert w[0].numel() == fan_in
        if init == "caffe-xavier":
            bound = (3 / fan_in) ** 0.5
            assert 0.9 * bound < w.abs().max() <= bound, fan_in
        else:
            assert w.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1), fan_in


@pytest.mark.parametrize("init", ["caffe-xavier", "kaiming"])
def test_init_applies_with_bn_too(init):
    """The --bn ablation arm records the same `init` as the paper's arm: its convs (without biases) get that filler,
    not PyTorch's default (kaiming-uniform with a=sqrt(5): bound 1 / sqrt(fan_in), below caffe-xavier's
    sqrt(3 / fan_in) and He's std sqrt(2 / fan_in)); BN starts as the identity (scale 1, shift 0)."""
    torch.manual_seed(0)
    model = allconv.build("allcnn-c", bn=True, init=init)
    first = convs(model)[0].weight  # fan-in 27
    if init == "caffe-xavier":
        assert 0.9 * (3 / 27) ** 0.5 < first.abs().max() <= (3 / 27) ** 0.5
    else:
        assert first.std().item() == pytest.approx((2 / 27) ** 0.5, rel=0.1)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
