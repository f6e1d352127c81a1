"""CIFAR-10 loaders: one entry point, three backends with one meaning (prepare the data first: loaders/prepare.py).

    import loaders
    train = loaders.make("train", 128, data_dir="data", backend="ffcv", augment="none", device="cuda")
    for epoch in range(epochs):
        train.set_epoch(epoch)                     # order and augmentation = f(seed, epoch)
        for images, labels in train: ...           # uint8 NCHW (channels_last strides), int64, on `device`
    whiten = loaders.preprocess.build_preprocess("gcn-zca", "data").to(device)

Batches. images: uint8, shape N x 3 x 32 x 32, channels_last memory format (NHWC strides) on every backend;
labels: int64 N. FFCV batches live in buffers FFCV reuses a few batches later: `.clone()` what you keep.
Order. Training splits (train, train45k) are shuffled with a permutation seeded by (seed, epoch); with
distributed=True the permutation (the same on every rank) is dealt out in turn (rank r takes its positions r,
r + world_size, ...), dropping at most world_size - 1 images per epoch, so every rank yields the same number of
batches (DDP needs that) and the ranks' i-th batches together are one process's i-th batch at world_size times
the batch size: DDP trains the global batches of one process, and a mid-epoch checkpoint resumes at its global
step under any process count.
Evaluation splits (test, val5k) keep a fixed order; with distributed=True each rank takes a contiguous chunk
(np.array_split), so every image is yielded by exactly one rank (chunks may differ by one image, so counts may
differ by one batch: reduce sums after the loop) and the last batch is never dropped. FFCV's own distributed
sampler, which pads by repeating images, is never used.
Epochs. Each iteration uses the current epoch and then advances it; set_epoch(e) picks the next one explicitly.
Augmentation. "flip-translate" (Table 4) is for training splits only (evaluation splits refuse it); each image's
flip and shift are a function of (seed, epoch, image index) (loaders/augment.py), so all three backends yield
identical pixels, with or without augmentation. batch_size is per process.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SPLITS = ("train", "test", "train45k", "val5k")
TRAIN_SPLITS = ("train", "train45k")  # shuffled; the others are evaluation splits in fixed order
BACKENDS = ("ffcv", "torch", "tensor")
AUGMENTS = ("none", "flip-translate")  # Table 3: none; Table 4: flips + translations up to 5 px
PREPROCESS = ("gcn-zca", "gcn-zca-fb1", "meanstd", "none")
FFCV_MISSING = ("the ffcv backend needs ffcv, which is not installed here: use --backend torch|tensor "
                "(same data, same order) or install ffcv")


class BackendUnavailable(ValueError):
    """The backend asked for cannot run here (ffcv is not installed): callers may skip it or say so."""


def stored_split(split: str) -> str:
    """Which stored array a split reads: train45k and val5k are index sets into train."""
    return "test" if split == "test" else "train"


def load_arrays(data_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The stored uint8 N x 32 x 32 x 3 images and int64 labels that `split` indexes into."""
    name = stored_split(split)
    return np.load(Path(data_dir) / f"{name}_images.npy"), np.load(Path(data_dir) / f"{name}_labels.npy")


def split_indices(data_dir, split: str, manifest: dict | None = None) -> np.ndarray:
    """Indices into the stored array of `split` (all of it for train and test). `manifest`: data_dir's, when the
    caller has already read it (else it is read here, and an unprepared data_dir raises ValueError)."""
    if manifest is None:
        from .manifest import load_manifest

        manifest = load_manifest(data_dir)
    if split in ("train45k", "val5k"):
        with np.load(Path(data_dir) / "splits.npz") as z:
            return z[split].astype(np.int64)
    return np.arange(manifest["num_images"][split], dtype=np.int64)


class Loader:
    """What `make` returns: the epoch plan shared by all backends. Subclasses implement `_batches(order, key)`,
    yielding (images, labels) for the stored-array indices `order`, augmented with `key` when key is not None."""

    def __init__(self, split, batch_size, indices, *, augment, device, seed, rank, world_size, drop_last):
        self.split, self.batch_size, self.indices = split, batch_size, indices
        self.shuffle = split in TRAIN_SPLITS
        self.augment, self.device, self.seed = augment, device, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.num_images = len(self.epoch_indices(0))
        if self.num_images == 0:
            raise ValueError(f"{split}: no images for rank {rank} of {world_size} with batch size {batch_size}")

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The stored-array indices this rank yields in `epoch`, in order."""
        idx = self.indices
        if self.shuffle:
            idx = idx[np.random.default_rng([self.seed, epoch]).permutation(len(idx))]
            idx = idx[self.rank:len(idx) // self.world_size * self.world_size:self.world_size]
        elif self.world_size > 1:
            idx = np.array_split(idx, self.world_size)[self.rank]
        if self.drop_last:
            idx = idx[:len(idx) // self.batch_size * self.batch_size]
        return idx

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def __iter__(self):
        from .augment import epoch_key

        epoch, self.epoch = self.epoch, self.epoch + 1
        key = epoch_key(self.seed, epoch) if self.augment == "flip-translate" else None
        return iter(self._batches(self.epoch_indices(epoch), key))

    def _batches(self, order: np.ndarray, key):
        raise NotImplementedError


def make(split: str, batch_size: int, *, data_dir="data", backend: str = "ffcv", augment: str = "none",
         device="cpu", distributed: bool = False, seed: int = 0, num_workers: int | None = None,
         drop_last: bool | None = None) -> Loader:
    """The one place loaders are made. `batch_size` is per process; see the module docstring for the meaning.

    drop_last: None means False (training keeps its last, smaller batch; evaluation must, so True is refused
    there). num_workers: FFCV threads / DataLoader workers (None: cores - 1 for ffcv, min(4, cores) for torch;
    unused by tensor). Note FFCV's Loader also sets torch's intra-op thread count to num_workers, process-wide.
    """
    import torch

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if split not in TRAIN_SPLITS and drop_last:
        raise ValueError(f"{split} is an evaluation split: its last batch is never dropped")
    if split not in TRAIN_SPLITS and augment != "none":
        raise ValueError(f"{split} is an evaluation split: augmentation is for training splits only")
    rank, world_size = 0, 1
    if distributed:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed=True needs an initialised torch.distributed process group")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    kwargs = dict(augment=augment, device=torch.device(device), seed=seed, rank=rank, world_size=world_size,
                  drop_last=bool(drop_last))
    from .manifest import load_manifest

    manifest = load_manifest(data_dir)
    indices = split_indices(data_dir, split, manifest)
    if backend == "ffcv":
        try:
            from .ffcv_loaders import FFCVLoader
        except ImportError as e:
            if "ffcv" not in str(e):
                raise
            raise BackendUnavailable(FFCV_MISSING) from None
        return FFCVLoader(data_dir, split, batch_size, indices, manifest=manifest, num_workers=num_workers, **kwargs)
    from .torch_loaders import TensorLoader, TorchLoader

    if backend == "torch":
        return TorchLoader(data_dir, split, batch_size, indices, num_workers=num_workers, **kwargs)
    return TensorLoader(data_dir, split, batch_size, indices, **kwargs)


def resolve_backend(backend: str) -> str:
    """"auto" -> on a GPU `tensor`: the whole split resident on the device and augmented there in batch, so a step
    does no host work and no copy (airbench's way; CIFAR-10 is 150 MB). Elsewhere FFCV when importable (the
    fastest on CPU: reports/measured/cpu-loader-bench-2026-11-26.txt), else `tensor`. Other names as given;
    `ffcv` where it is not installed raises BackendUnavailable before any run starts (not in the first run's loader,
    where one DDP rank would fail alone)."""
    from .prepare import _ffcv_available  # the one test of ffcv (it imports it: a broken install counts as absent)

    if backend == "ffcv" and not _ffcv_available():
        raise BackendUnavailable(FFCV_MISSING)
    if backend != "auto":
        return backend
    import torch

    if torch.cuda.is_available():
        return "tensor"
    return "ffcv" if _ffcv_available() else "tensor"


def workers_per_process() -> int:
    """This process's share of the machine's cores (FFCV sets torch's thread count to its worker count at every
    epoch, so processes on one machine share the cores rather than each taking all)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class Cache:
    """Loaders and preprocessing built once per process from plain values and shared by every run that asks for
    the same (split, augment, seed, batch size) or (kind, fit split): an FFCV Loader compiles its pipeline for 5-9 s,
    once per process, not once per run. `batch_size` is per process, as in `make`: the default of `loader`, which a
    run training at another batch size (the batch-size ablation) overrides."""

    def __init__(self, data_dir, *, backend: str, device, distributed: bool, batch_size: int,
                 num_workers: int | None = None):
        self.data_dir, self.backend, self.device, self.distributed = data_dir, backend, device, distributed
        self.batch_size, self.num_workers = batch_size, num_workers
        self._loaders, self._preprocess = {}, {}

    def loader(self, split: str, *, augment: str = "none", seed: int = 0, batch_size: int | None = None) -> Loader:
        key = (split, augment, seed, batch_size or self.batch_size)
        if key not in self._loaders:
            self._loaders[key] = make(split, key[-1], data_dir=self.data_dir, backend=self.backend,
                                      augment=augment, device=self.device, distributed=self.distributed, seed=seed,
                                      num_workers=self.num_workers)
        return self._loaders[key]

    def preprocess(self, kind: str, fit_split: str = "train"):
        """The preprocessing module (loaders/preprocess.py) fitted on `fit_split`, on the device."""
        if (kind, fit_split) not in self._preprocess:
            from .preprocess import build_preprocess

            self._preprocess[kind, fit_split] = build_preprocess(kind, self.data_dir, fit_split).to(self.device)
        return self._preprocess[kind, fit_split]


def __getattr__(attr):  # `loaders.preprocess` / `loaders.prepare` without importing torch up front
    if attr in ("preprocess", "prepare"):
        import importlib

        return importlib.import_module(f".{attr}", __name__)
    raise AttributeError(f"module 'loaders' has no attribute {attr!r}")


__all__ = ["SPLITS", "BACKENDS", "AUGMENTS", "PREPROCESS", "BackendUnavailable", "Cache", "Loader", "make",
           "resolve_backend", "split_indices", "workers_per_process"]
