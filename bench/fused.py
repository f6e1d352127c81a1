"""Several runs of ONE architecture trained in lockstep as one fused model on one device (issue 12, item 1).

The runs of one model and seed that differ only in LR (Table 3 takes the best of {0.25, 0.1, 0.05, 0.01}) share
the initial weights, the data order and the dropout masks, so K of them can run as one model whose weights are
stacked along a new leading dimension: `torch.func.stack_module_state` + `torch.vmap(functional_call,
randomness="same")`, which lowers each convolution to one grouped convolution over the K runs. Each run keeps
its own LR, momentum buffer and weight decay (the paper's SGD, torch.optim.SGD semantics), its own divergence
(a run whose loss is not finite is masked out, the others go on), evaluation, checkpoint and record:

    nets, opts = [], []
    for lr in lrs:                                   # exactly as K separate runs would be built
        torch.manual_seed(seed)
        nets.append(net := allconv.build(name).to(device))
        opts.append(engine.make_optimizer("sgd", net.parameters(), lr, 0.9, 1e-3, device))
        # resume: checkpoint.load_checkpoint(path_k, acc, net, opt, ...) here, then checkpoint.set_rng_state once
    group = FusedRuns(nets, opts, preprocess=whiten, precision="bf16", channels_last=True)
    for epoch ...:
        group.set_lrs([engine.lr_at(epoch, lr, drops) for lr in lrs])
        for images, labels in loader:
            loss_sum, correct = group.train_step(images, labels)   # float [K], long [K], on the device
        group.diverged()                             # [k, ...] masked out so far (one host read)
        correct, seen, _, loss_sum = engine.evaluate(group.base, test_loader, None, acc, step=group.eval_step)  # [K]
        group.write_back()                           # run k's weights + momentum buffers -> nets[k], opts[k]
        checkpoint.save_checkpoint(path_k, acc, nets[k], opts[k], ...)   # per run, unchanged

Equivalence (tests/test_fused.py): in fp32 a fused group gives each run the per-step losses and weights of the
separate run (torch.manual_seed(seed), allconv.build, torch.optim.SGD, same batches) up to float reassociation in
the grouped convolution; write_back + a fresh group resumes bit-exactly. RNG: vmap's randomness="same" draws
one dropout mask per layer of the unbatched shape from the global generator, shared by the K runs, in the same
order and amount as the separate run's eager forward. Mask for mask it equals the separate run's only on CPU in
the contiguous (NCHW) format: in channels_last a separate run fills its masks in NHWC order (Strided-CNN-C's first
loss differs by 0.2%, tests/test_throughput.py), and on CUDA eager dropout is the fused native_dropout kernel,
which maps the random stream to elements differently from vmap's bernoulli_. There a fused run gets equally
random masks, not the same ones: the same protocol, as a second seed would be (tests/test_fused.py checks what
holds on every device: without dropout the group trains as separate runs do; with it the K runs share a mask).

Precision: `torch.autocast` is NOT applied inside `torch.vmap` (torch 2.11-2.14: conv2d decomposes to
`convolution` in the batching layer before the autocast key sees it, so everything stays fp32). So "bf16"
casts the stacked weights and the preprocessed input to bf16 for the forward (what autocast does for
convolutions; ReLU, pooling and dropout then run in bf16 as under autocast) and computes the loss in fp32 from
fp32 logits. Master weights, gradients and SGD stay fp32. "fp16" is refused (it would need one loss scale per run).
channels_last: adaptive_avg_pool2d restores the channels_last strides with `as_strided_`, which vmap has no batching
rule for (functorch's per-run fallback loop and a UserWarning, torch 2.14), so the group computes the global
average pool as the plain mean over height and width that it is (`_GlobalMean`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

DTYPES = {"no": None, "bf16": torch.bfloat16}  # Accelerate's precision names


class FusedRuns:
    """K runs of one architecture (nets[k] with optimizers[k], a torch.optim.SGD with one param group) fused.

    Takes each net's weights and buffers and each optimizer's LR, momentum, weight decay and momentum buffers (so a
    group can be built from K resumed checkpoints). `preprocess` (uint8 batch -> float32, e.g. the GCN+ZCA
    module) runs in fp32 before the cast, as engine.prepare_input does. The nets keep their (stale) weights
    until `write_back`."""

    def __init__(self, nets, optimizers, *, preprocess=None, precision: str = "no", eval_precision: str = "no",
                 channels_last: bool = False):
        if len(nets) != len(optimizers) or not nets:
            raise ValueError(f"need one optimizer per net, got {len(nets)} nets and {len(optimizers)} optimizers")
        for p in (precision, eval_precision):
            if p not in DTYPES:
                raise ValueError(f"fused runs support precision 'no' or 'bf16', got {p!r} (fp16 needs a loss "
                                 "scale per run: run those separately)")
        keys = [list(n.state_dict()) for n in nets]
        if any(k != keys[0] for k in keys):
            raise ValueError("fused runs must share one architecture: the nets' state_dict keys differ")
        self.nets, self.optimizers, self.k = list(nets), list(optimizers), len(nets)
        self.preprocess, self.channels_last = preprocess, channels_last
        self.dtype, self.eval_dtype = DTYPES[precision], DTYPES[eval_precision]
        self.names = [name for name, _ in nets[0].named_parameters()]
        groups = [_sgd_group(o, n) for o, n in zip(optimizers, nets)]
        self.momentum, self.weight_decay = groups[0]["momentum"], groups[0]["weight_decay"]
        if any((g["momentum"], g["weight_decay"]) != (self.momentum, self.weight_decay) for g in groups):
            raise ValueError("fused runs must share momentum and weight decay; only the LR may differ")
        params, buffers = stack_module_state(self.nets)
        self.device = params[self.names[0]].device
        self.params = [params[n] for n in self.names]  # leaves [K, ...], fp32
        self.buffers = buffers
        self.lrs = [g["lr"] for g in groups]  # as given (written back unrounded); self.lr is the device copy
        self.lr = torch.tensor(self.lrs, dtype=torch.float32, device=self.device)
        self.alive = torch.ones(self.k, dtype=torch.bool, device=self.device)
        states = [[o.state.get(p, {}).get("momentum_buffer") for p in n.parameters()]
                  for o, n in zip(optimizers, nets)]
        have = {b is not None for run in states for b in run}
        if len(have) > 1:
            raise ValueError("some runs have momentum buffers and others not: resume them from one epoch")
        self.momentum_buffers = ([torch.stack(bs).to(self.device) for bs in zip(*states)] if have == {True}
                                 else None)  # None: the first step sets buf = d, as torch.optim.SGD does
        self.base = copy.deepcopy(nets[0]).to("meta")  # structure only, for functional_call
        for name, module in self.base.named_children():
            if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
                setattr(self.base, name, _GlobalMean())
        self._views = [(self.k,) + (1,) * (p.dim() - 1) for p in self.params]

    # ---- forward / steps ----

    def forward(self, images: torch.Tensor, *, train: bool) -> torch.Tensor:
        """Logits [K, N, classes] (fp32 under bf16) of all runs on one batch (train: dropout on, as net.train())."""
        x = self.preprocess(images) if self.preprocess is not None else images  # fp32, before any cast
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.dtype if train else self.eval_dtype
        params = self.params if dtype is None else [p.to(dtype) for p in self.params]
        if dtype is not None:
            x = x.to(dtype)
        self.base.train(train)

        def one(ps, bs, inp):
            return functional_call(self.base, (dict(zip(self.names, ps)), bs), (inp,))

        logits = torch.vmap(one, in_dims=(0, 0, None), randomness="same")(params, self.buffers, x)
        return logits if dtype is None else logits.float()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every run on one batch. Returns (summed loss [K], number correct [K]), detached, on
        the device; a masked-out run's loss reads NaN. No host sync."""
        logits = self.forward(images, train=True)
        k, n, c = logits.shape
        loss = F.cross_entropy(logits.reshape(k * n, c), labels.repeat(k), reduction="none").view(k, n).mean(1)
        grads = torch.autograd.grad(loss.sum(), self.params)  # run k's grads are exactly d loss_k / d params_k
        with torch.no_grad():
            self.alive &= torch.isfinite(loss)
            self._sgd(list(grads))
            correct = (logits.argmax(-1) == labels).sum(1)
            loss_sum = torch.where(self.alive, loss.detach() * n, float("nan"))
        return loss_sum, correct

    @torch.no_grad()
    def eval_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(number correct [K], summed cross-entropy [K] in float32) on one batch, eval mode (dropout off), in
        eval_precision."""
        logits = self.forward(images, train=False)
        k, n, c = logits.shape
        loss = F.cross_entropy(logits.float().reshape(k * n, c), labels.repeat(k), reduction="none").view(k, n)
        return (logits.argmax(-1) == labels).sum(1), loss.sum(1)

    def _sgd(self, grads: list[torch.Tensor]) -> None:
        """torch.optim.SGD (momentum, L2 weight decay, no dampening/nesterov) over the stacked weights with a
        per-run LR: d = g + wd * p; buf = m * buf + d (buf = d at the first step); p -= lr * buf. A masked-out
        run's weights are no longer updated: they stay as they were at the step whose loss was not finite (its
        momentum buffer goes on decaying and is meaningless; the run's record says "diverged")."""
        dead = [(~self.alive).view(v) for v in self._views]
        for g, d in zip(grads, dead):
            g.masked_fill_(d, 0.0)  # a NaN gradient times 0 would stay NaN
        if self.weight_decay:
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        if self.momentum_buffers is None:
            self.momentum_buffers = [g.clone() for g in grads]
        else:
            torch._foreach_mul_(self.momentum_buffers, self.momentum)
            torch._foreach_add_(self.momentum_buffers, grads)
        neg_lr = torch.where(self.alive, -self.lr, 0.0)
        steps = torch._foreach_mul(self.momentum_buffers, [neg_lr.view(v) for v in self._views])
        for s, d in zip(steps, dead):
            s.masked_fill_(d, 0.0)  # a dead run's buffer may hold inf: 0 * inf would be NaN
        torch._foreach_add_(self.params, steps)

    # ---- schedule, divergence, state ----

    def set_lrs(self, lrs) -> None:
        """Each run's LR for the next steps (the schedule, engine.lr_at per run); copied into the device tensor."""
        if len(lrs) != self.k:
            raise ValueError(f"need {self.k} learning rates, got {len(lrs)}")
        self.lrs = [float(v) for v in lrs]
        self.lr.copy_(torch.tensor(self.lrs, dtype=torch.float32))

    def drop(self, k: int) -> None:
        """Mask run k out from now on, as a run whose loss was not finite is (it stopped early for another reason)."""
        self.alive[k] = False

    def diverged(self) -> list[int]:
        """Indices of the runs masked out so far because their loss was not finite (reads the device once)."""
        return [i for i, ok in enumerate(self.alive.tolist()) if not ok]

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy run k's weights, buffers, LR and momentum buffers into nets[k] and optimizers[k], so that
        `checkpoint.save_checkpoint` and `net.state_dict()` / `optimizer.state_dict()` read as a separate run's."""
        for k, (net, opt) in enumerate(zip(self.nets, self.optimizers)):
            named = dict(net.named_parameters())
            for i, name in enumerate(self.names):
                named[name].copy_(self.params[i][k])
                if self.momentum_buffers is not None:  # in its parameter's layout, as SGD's own (fused SGD on CUDA
                    # refuses a buffer whose strides differ from its parameter's: a run resumed alone would fail)
                    buf = torch.empty_like(named[name]).copy_(self.momentum_buffers[i][k])
                    opt.state[named[name]]["momentum_buffer"] = buf
            for name, buf in net.named_buffers():
                buf.copy_(self.buffers[name][k])
            for g in opt.param_groups:
                g["lr"] = self.lrs[k]


class _GlobalMean(nn.Module):
    """nn.AdaptiveAvgPool2d(1) as the mean it is, without the `as_strided_` that vmap cannot batch (module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((-2, -1), keepdim=True)


def _sgd_group(optimizer, net) -> dict:
    """The single param group of a plain torch.optim.SGD over all of net's parameters; refuses anything else."""
    if not isinstance(optimizer, torch.optim.SGD) or len(optimizer.param_groups) != 1:
        raise ValueError("fused runs need torch.optim.SGD with one param group per run (the paper's optimizer)")
    g = optimizer.param_groups[0]
    if g.get("nesterov") or g.get("dampening") or g.get("maximize") or not g["momentum"]:
        raise ValueError("fused runs implement SGD with momentum, no dampening, no nesterov, no maximize")
    if [id(p) for p in g["params"]] != [id(p) for p in net.parameters()]:
        raise ValueError("each optimizer must hold exactly its net's parameters, in order")
    return g
