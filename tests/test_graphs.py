"""bench/graphs.py (`--cuda-graphs`): the graphed step trains exactly like the eager one. On CPU its bookkeeping is
checked with `capture_eagerly` (warm-up, capture on a full batch, static buffers refilled, the short last batch
eager, a new capture when the LR drops; a fused group's step too): bit-identical weights. The real CUDA graph is
checked on a GPU (marked `gpu`; scripts/campaign.sh runs these before it trains with graphs)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import allconv
import loaders
from bench import engine, graphs, run_all, timing
from bench.config import PRESETS, expand
from loaders.preprocess import build_preprocess


def train(data_dir, device, precision: str, capture=None, dropout: bool = True, epochs=(0.05, 0.005)):
    """Strided-CNN-A on 100 real images, batch 16 (6 full batches and one of 4 per epoch), one epoch per LR.
    Returns (per-epoch summed losses, final weights, the GraphedStep or None)."""
    acc = timing.make_accelerator([precision], device)
    torch.manual_seed(0)
    net = allconv.build("strided-a", dropout=dropout).to(acc.device, memory_format=torch.channels_last)
    optimizer = acc.prepare_optimizer(engine.make_optimizer("sgd", net.parameters(), epochs[0], 0.9, 1e-3,
                                                            acc.device))
    loader = loaders.make("train", 16, data_dir=data_dir, backend="tensor", device=acc.device)
    preprocess = build_preprocess("gcn-zca", data_dir).to(acc.device)
    autocast = engine.autocast_for(precision, acc)
    step = graphs.graphed_train_step(net, optimizer, preprocess, acc, autocast, True, capture=capture) \
        if capture else None
    losses = []
    for epoch, lr in enumerate(epochs):
        engine.set_lr(optimizer, lr)
        loader.set_epoch(epoch)
        st = engine.train_one_epoch(net, optimizer, loader, preprocess, acc, autocast=autocast, channels_last=True,
                                    step=step)
        losses.append(st.loss_sum.item())
    return losses, [p.detach().cpu().clone() for p in net.parameters()], step


def test_graphed_bookkeeping_trains_exactly_like_eager(smoke_data_dir):
    eager_losses, eager_weights, _ = train(smoke_data_dir, "cpu", "no")
    losses, weights, step = train(smoke_data_dir, "cpu", "no", capture=graphs.capture_eagerly)
    assert step.captures == 2  # in epoch 1 after 3 warm-up steps, and again at the new LR
    assert losses == eager_losses  # dropout included: the same ops in the same order draw the same masks
    assert all(torch.equal(a, b) for a, b in zip(weights, eager_weights))


def train_fused(data_dir, device, capture=None, dropout: bool = True, epochs=((0.05, 0.01), (0.005, 0.001))):
    """Two Strided-CNN-A runs as one bench.fused group (run_all --fuse-lrs's step), one epoch per pair of LRs, fp32.
    Returns (per-epoch summed losses [epochs, 2], final stacked weights, the GraphedStep or None)."""
    from bench.fused import FusedRuns

    acc = timing.make_accelerator(["no"], device)
    nets, optimizers = [], []
    for lr in epochs[0]:
        torch.manual_seed(0)
        nets.append(allconv.build("strided-a", dropout=dropout).to(acc.device))
        optimizers.append(engine.make_optimizer("sgd", nets[-1].parameters(), lr, 0.9, 1e-3, acc.device))
    loader = loaders.make("train", 16, data_dir=data_dir, backend="tensor", device=acc.device)
    group = FusedRuns(nets, optimizers, preprocess=build_preprocess("gcn-zca", data_dir).to(acc.device))
    step = graphs.GraphedStep(group.train_step, acc.device, capture=capture) if capture else group.train_step
    losses = []
    for epoch, lrs in enumerate(epochs):
        group.set_lrs(lrs)
        loader.set_epoch(epoch)
        st = engine.train_one_epoch(group.base, None, loader, None, acc, step=step,
                                    state=engine.EpochState(loss_sum=torch.zeros(2, device=acc.device),
                                                            correct=torch.zeros(2, dtype=torch.long,
                                                                                device=acc.device)))
        losses.append(st.loss_sum.cpu())
    return torch.stack(losses), [p.detach().cpu().clone() for p in group.params], step


def test_a_run_resumed_at_its_short_last_batch_still_captures_the_full_size():
    """A resumed run whose first batch is the epoch's short last one (80 of 256 images on CIFAR-10): the full
    batches after it are captured and replayed, not all run eagerly for the rest of the run."""
    calls = []

    def eager(images, labels):
        calls.append(images.shape[0])
        return (images.sum(),)

    step = graphs.GraphedStep(eager, torch.device("cpu"), capture=graphs.capture_eagerly)
    for n in (80, 256, 256, 256, 256, 256, 80, 256):
        step(torch.ones(n, 3), torch.zeros(n))
    assert step.full == 256 and step.captures == 1 and step.replay is not None
    assert step.warm == graphs.WARMUP  # warm-up on full batches only, then one capture replayed


def test_graphed_fused_group_trains_exactly_like_eager(smoke_data_dir):
    """run_all --fuse-lrs --cuda-graphs: the group's LRs live in a device tensor, so one capture serves both LR
    pairs (no re-capture at the drop), and the [K] outputs come back through the static buffers."""
    eager_losses, eager_weights, _ = train_fused(smoke_data_dir, "cpu")
    losses, weights, step = train_fused(smoke_data_dir, "cpu", capture=graphs.capture_eagerly)
    assert step.captures == 1 and losses.shape == (2, 2)
    assert torch.equal(losses, eager_losses) and not torch.equal(losses[:, 0], losses[:, 1])
    assert all(torch.equal(a, b) for a, b in zip(weights, eager_weights))


def test_cuda_graphs_refused_without_cuda(jpeg_tarball, tmp_path, capsys, fresh_accelerator):
    code = run_all.main(["--preset", "smoke", "--cuda-graphs", "--source", str(jpeg_tarball),
                         "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --cuda-graphs needs a CUDA device") and "\n" not in err
    assert not (tmp_path / "out").exists()
    for bad in (["--precision", "fp16"], ["--compile"], ["--optimizer", "adam"]):  # before any device is looked at
        assert run_all.main(["--preset", "smoke", "--cuda-graphs", *bad, "--source", str(jpeg_tarball),
                             "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --cuda-graphs captures the whole step") and "\n" not in err, err


def test_an_arm_that_cannot_be_graphed_trains_eagerly_in_a_graphed_grid():
    """torch refuses to capture Adam's step (unless built capturable): under --cuda-graphs the optimizer ablation's
    Adam arm trains eagerly, not failing at its first capture on the GPU, while the SGD runs stay graphed. The switch
    is not in the run key, so the Adam runs keep their keys."""
    cfg = dataclasses.replace(PRESETS["paper"], models=("allcnn-c",), lrs=(0.05,), ablations=("optimizer",))
    runs = expand(dataclasses.replace(cfg, cuda_graphs=True))
    assert {(r.cfg.optimizer, r.cfg.cuda_graphs) for r in runs} == {("sgd", True), ("adam", False)}
    assert [r.key("0" * 64) for r in runs] == [r.key("0" * 64) for r in expand(cfg)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_matches_eager_on_gpu(smoke_data_dir):
    """Without dropout (whose graph-safe stream differs from eager's) the replayed graph gives eager's losses and
    weights up to bf16 kernel noise, across the short last batch and a re-capture at the new LR."""
    eager_losses, eager_weights, _ = train(smoke_data_dir, "cuda", "bf16", dropout=False)
    losses, weights, step = train(smoke_data_dir, "cuda", "bf16", capture=graphs.capture_cuda, dropout=False)
    assert step.captures == 2
    torch.testing.assert_close(losses, eager_losses, rtol=2e-3, atol=1e-3)
    for a, b in zip(weights, eager_weights):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_run_all_with_cuda_graphs_on_gpu(smoke_data_dir, jpeg_tarball, tmp_path, fresh_accelerator):
    """A real run with --cuda-graphs (dropout on) completes, learns the same way in distribution, and says so."""
    import shutil

    from bench import results

    data = tmp_path / "data"
    shutil.copytree(smoke_data_dir, data, ignore=shutil.ignore_patterns(".*.tmp"))
    args = ["--preset", "smoke", "--models", "strided-a", "--lrs", "0.05", "--epochs", "3", "--lr-drops", "2",
            "--batch-size", "16", "--source", str(jpeg_tarball), "--data-dir", str(data), "--backend", "tensor",
            "--subset-per-class", "10", "--precision", "bf16"]
    assert run_all.main([*args, "--out", str(tmp_path / "graphs"), "--cuda-graphs"]) == 0
    (record,) = results.read_records(tmp_path / "graphs")
    assert record["status"] == "completed" and record["cuda_graphs"] is True and record["epochs_completed"] == 3
    assert all(h["loss"] == h["loss"] for h in record["history"])  # finite


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_of_a_fused_group_matches_eager_on_gpu(smoke_data_dir):
    """The fused group's step (vmap, autograd.grad, the per-run SGD) captured and replayed on CUDA gives the eager
    group's losses and weights (no dropout; TF32 convolutions allowed), across the short last batch and an LR drop."""
    eager_losses, eager_weights, _ = train_fused(smoke_data_dir, "cuda", dropout=False)
    losses, weights, step = train_fused(smoke_data_dir, "cuda", capture=graphs.capture_cuda, dropout=False)
    assert step.captures == 1
    torch.testing.assert_close(losses, eager_losses, rtol=2e-3, atol=1e-3)
    for a, b in zip(weights, eager_weights):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)
