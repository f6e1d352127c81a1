"""Device-side preprocessing: a fixed nn.Module applied to each uint8 batch just before the model.

    pre = build_preprocess("gcn-zca", "data", fit_split="train").to(device)
    logits = model(pre(images))          # images: uint8 N x 3 x 32 x 32, any memory format

Kinds (loaders.PREPROCESS):
  gcn-zca  the paper's (Section 3.1: "global contrast normalization and ZCA whitening", as in the maxout paper's
           pylearn2 pipeline). GCN per image over all 3072 values: x <- (x - mean(x)) * 55 / ||x - mean(x)||_2
           (pylearn2's global_contrast_normalize(scale=55), divisors below 1e-8 replaced by 1). Pixels enter as
           floats in 0..255, as pylearn2's CIFAR10 class gives them; GCN removes the scale anyway. Then ZCA fitted
           on the GCN'd training images: mean mu, covariance C = (X - mu)^T (X - mu) / N, C = U diag(lambda) U^T,
           W = U diag(1 / sqrt(lambda + 0.1)) U^T (pylearn2 ZCA filter_bias=0.1); output (x - mu) W.
  gcn-zca-fb1  the same with filter_bias 1.0 (not the paper's: a switch for lossy data). The bias caps how much a
           direction of variance lambda is amplified (1 / sqrt(lambda + bias)); JPEG's error lives in the directions
           of least variance, which bias 0.1 amplifies most (reports/measured/cpu-jpeg-whitening-2026-12-05.txt).
  meanstd  per-channel (x / 255 - mean_c) / std_c, statistics over all training pixels.
  none     x / 255.
Statistics are fitted on `fit_split` only (train or train45k, never val5k or test), computed in float64, and
cached next to the data as preprocess_<kind>_<fit_split>.pt with what they were fitted on (kind, split,
parameters, sha256 of manifest.json); a cache from other data or parameters is refitted, and one that cannot be
written (a read-only folder) is a warning. The forward pass always runs in float32 with autocast disabled:
whitening amplifies low-variance directions, and rounding with them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

GCN_SCALE = 55.0  # pylearn2 / maxout paper: each image rescaled to L2 norm 55 after removing its mean
GCN_MIN_DIVISOR = 1e-8  # pylearn2: a (near-)constant image is left unscaled instead of divided by ~0
ZCA_FILTER_BIAS = 0.1  # pylearn2 ZCA filter_bias: added to each eigenvalue before the inverse square root
FILTER_BIAS = {"gcn-zca": ZCA_FILTER_BIAS, "gcn-zca-fb1": 1.0}
"""The GCN + ZCA kinds and their filter bias (the paper's first)."""
FIT_SPLITS = ("train", "train45k")
_CHUNK = 5000


def gcn(x: torch.Tensor, scale: float = GCN_SCALE) -> torch.Tensor:
    """Global contrast normalisation of N x D rows (float)."""
    x = x - x.mean(dim=1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    return x * scale / torch.where(norm < GCN_MIN_DIVISOR, torch.ones_like(norm), norm)


def _fit_data(data_dir: Path, fit_split: str, manifest: dict | None = None):
    """(stored images, the fit split's indices into them), read once per fit."""
    from . import load_arrays, split_indices

    return load_arrays(data_dir, fit_split)[0], split_indices(data_dir, fit_split, manifest)


def _flat_chunks(images, idx):
    """images[idx] as float32 N x 3072 rows in CHW order (as the module flattens NCHW), in chunks.
    Sums within a chunk run in float32 (fast), across chunks in float64."""
    for s in range(0, len(idx), _CHUNK):
        chunk = torch.from_numpy(images[idx[s:s + _CHUNK]]).permute(0, 3, 1, 2)
        yield chunk.reshape(len(chunk), -1).float()


def fit_meanstd(data_dir: Path, fit_split: str, manifest: dict | None = None) -> dict:
    images, idx = _fit_data(data_dir, fit_split, manifest)
    total, total_sq, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for x in _flat_chunks(images, idx):
        x = x.view(len(x), 3, -1) / 255
        total += x.sum(dim=(0, 2)).double()
        total_sq += (x * x).sum(dim=(0, 2)).double()
        count += x.shape[0] * x.shape[2]
    mean = total / count
    return {"mean": mean.float(), "std": (total_sq / count - mean * mean).sqrt().float()}


def zca_from_covariance(cov: torch.Tensor, filter_bias: float = ZCA_FILTER_BIAS) -> torch.Tensor:
    """W = U diag(1 / sqrt(lambda + filter_bias)) U^T for C = U diag(lambda) U^T (float64)."""
    eigvals, eigvecs = torch.linalg.eigh(cov)
    return (eigvecs * (eigvals.clamp(min=0) + filter_bias).rsqrt()) @ eigvecs.T


def zca_from_rows(rows: torch.Tensor, filter_bias: float = ZCA_FILTER_BIAS) -> torch.Tensor:
    """The same W from N < D centred rows, through the N x N Gram matrix (cheap for small fits, e.g. tests):
    C's nonzero eigenpairs are (lambda, X^T v / sqrt(N lambda)) for each eigenpair (lambda, v) of X X^T / N, and C
    is 0 on the rest, where W is 1 / sqrt(filter_bias)."""
    n, d = rows.shape
    eigvals, eigvecs = torch.linalg.eigh(rows @ rows.T / n)
    keep = eigvals > 1e-9 * eigvals.max()
    eigvals, u = eigvals[keep], rows.T @ eigvecs[:, keep] / (n * eigvals[keep]).sqrt()
    # W = U diag(a) U^T + c (I - U U^T) with a = 1 / sqrt(lambda + bias), c = 1 / sqrt(bias)
    c = filter_bias ** -0.5
    return (u * ((eigvals + filter_bias).rsqrt() - c)) @ u.T + c * torch.eye(d, dtype=rows.dtype)


def fit_gcn_zca(data_dir: Path, fit_split: str, manifest: dict | None = None,
                filter_bias: float = ZCA_FILTER_BIAS) -> dict:
    images, idx = _fit_data(data_dir, fit_split, manifest)
    total, count = torch.zeros(3072, dtype=torch.float64), 0
    for x in _flat_chunks(images, idx):  # pass 1: the mean, so pass 2 sums centred (small) products
        total += gcn(x).sum(dim=0).double()
        count += len(x)
    mean = total / count
    if count < 3072:  # fewer images than dimensions: C has rank < N, the Gram route is exact and far cheaper
        rows = torch.cat([gcn(x).double() - mean for x in _flat_chunks(images, idx)])
        return {"zca_mean": mean.float(), "zca_matrix": zca_from_rows(rows, filter_bias).float()}
    cov, mean32 = torch.zeros(3072, 3072, dtype=torch.float64), mean.float()
    for x in _flat_chunks(images, idx):
        x = gcn(x) - mean32
        cov += (x.T @ x).double()
    return {"zca_mean": mean.float(), "zca_matrix": zca_from_covariance(cov / count, filter_bias).float()}


class Preprocess(nn.Module):
    """uint8 N x 3 x 32 x 32 (any memory format) -> float32 N x 3 x 32 x 32 contiguous. Buffers move with .to()."""

    def __init__(self, kind: str, stats: dict, fitted_on: dict):
        super().__init__()
        self.kind, self.fitted_on = kind, fitted_on
        for name, value in stats.items():
            self.register_buffer(name, value)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            x = images.float()
            if self.kind == "none":
                return (x / 255).contiguous()
            if self.kind == "meanstd":
                return ((x / 255 - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)).contiguous()
            flat = gcn(x.reshape(len(x), -1))
            return ((flat - self.zca_mean) @ self.zca_matrix).view(x.shape)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, fitted_on={self.fitted_on}"


STATS_SHAPES = {"meanstd": {"mean": (3,), "std": (3,)},
                **dict.fromkeys(FILTER_BIAS, {"zca_mean": (3072,), "zca_matrix": (3072, 3072)})}


def _check_stats(kind: str, stats) -> None:
    """ValueError unless a cache's `stats` are what `fit_<kind>` returns: its tensors, of their shapes, float32, dense
    and finite. An edited cache whose `fitted_on` still matched was used as it was: a matrix of another shape
    stopped run_all with a traceback at its first step, a NaN trained every run on NaN."""
    want = STATS_SHAPES[kind]
    if not (isinstance(stats, dict) and set(stats) == set(want) and all(
            type(v) is torch.Tensor and v.layout == torch.strided and v.dtype == torch.float32
            and tuple(v.shape) == want[k] and bool(torch.isfinite(v).all()) for k, v in stats.items())):
        raise ValueError("statistics not of the shapes, type or values fitted")


def build_preprocess(kind: str, data_dir, fit_split: str = "train") -> Preprocess:
    """The preprocessing module, its statistics fitted on `fit_split` (loaded from the cache when it matches)."""
    from bench.files import atomic_write

    from . import PREPROCESS
    from .manifest import MANIFEST, load_manifest
    from .sources import sha256_file

    if kind not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {kind!r}")
    if fit_split not in FIT_SPLITS:
        raise ValueError(f"statistics are fitted on a training split {FIT_SPLITS}, never on {fit_split!r}")
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    params = {"gcn_scale": GCN_SCALE, "gcn_min_divisor": GCN_MIN_DIVISOR, "zca_filter_bias": FILTER_BIAS[kind],
              "pixel_range": "0..255"} if kind in FILTER_BIAS else {}
    fitted_on = {"kind": kind, "fit_split": fit_split, "params": params,
                 "manifest_sha256": sha256_file(data_dir / MANIFEST)}
    if kind == "none":
        return Preprocess(kind, {}, fitted_on)
    cache = data_dir / f"preprocess_{kind}_{fit_split}.pt"
    if cache.is_file():
        try:  # a cache is only a shortcut: a damaged or foreign one is refitted and overwritten
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            if saved["fitted_on"] == fitted_on:
                _check_stats(kind, saved["stats"])
                return Preprocess(kind, saved["stats"], fitted_on)
        except Exception as e:
            print(f"warning: {cache} unreadable ({type(e).__name__}); fitting the statistics again", file=sys.stderr)
    stats = fit_gcn_zca(data_dir, fit_split, manifest, FILTER_BIAS[kind]) if kind in FILTER_BIAS else \
        fit_meanstd(data_dir, fit_split, manifest)
    try:  # atomic: concurrent ranks may both fit; either file is the same
        atomic_write(cache, lambda f: torch.save({"fitted_on": fitted_on, "stats": stats}, f))
    except OSError as e:  # WriteError: a read-only folder, a full disk, a folder in its place. The cache is only a
        # shortcut: the statistics just fitted are used all the same
        print(f"warning: {cache} not written ({e.strerror or e}); fitted again next time", file=sys.stderr)
    return Preprocess(kind, stats, fitted_on)
