"""The torch and tensor backends: same prepared arrays, same order, same augmentation as the ffcv backend.

torch:  a torch.utils.data.DataLoader over the stored uint8 arrays, augmenting image by image in its workers
        (the usual torchvision recipe); needs no ffcv, so it runs on the GPU machines.
tensor: the whole split resident on the device as uint8, batches gathered and augmented there in one go
        (airbench style); the fastest path when the data fit on the device (CIFAR-10: 150 MB).
"""
from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import Loader, load_arrays, stored_split
from .augment import flip_translate_params, gather_flip_translate


def shift_one(image: torch.Tensor, flip: bool, dy: int, dx: int) -> torch.Tensor:
    """loaders.augment's meaning for one HWC image: mirror, then out[y, x] = in[y - dy, x - dx], zero fill."""
    if flip:
        image = image.flip(1)
    h, w, _ = image.shape
    out = torch.zeros_like(image)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


class _ImageDataset(Dataset):
    """Items are (index, key) pairs from _EpochSampler, so persistent workers need no per-epoch state."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        i, key = item
        image = torch.from_numpy(self.images[i])
        if key is not None:
            flip, dy, dx = flip_translate_params(key, i)
            image = shift_one(image, bool(flip), int(dy), int(dx))
        return image, int(self.labels[i])


class _EpochSampler(Sampler):
    def __init__(self):
        self.order, self.key = np.zeros(0, dtype=np.int64), None

    def __len__(self):
        return len(self.order)

    def __iter__(self):
        key = self.key
        return ((int(i), key) for i in self.order)


def _worker_init(_worker_id: int) -> None:
    """A worker leaves its process group: a terminal's Ctrl-C, `timeout` and torchrun signal the whole group, and
    a worker killed before the training process has checkpointed would fail the run. The training process shuts
    its workers down itself, and a worker whose parent died exits on its own (DataLoader's watchdog)."""
    os.setpgid(0, 0)


class TorchLoader(Loader):
    def __init__(self, data_dir, split, batch_size, indices, *, num_workers=None, **kwargs):
        super().__init__(split, batch_size, indices, **kwargs)
        images, labels = load_arrays(data_dir, split)
        self.sampler = _EpochSampler()
        self.num_workers = workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        # its own generator: DataLoader draws its workers' base seed from it when an iteration starts (the first
        # only, with persistent workers), never from torch's global RNG, which draws the dropout masks. A resumed
        # run, whose loaders start their first iteration at another point of training, draws the same masks.
        self.loader = DataLoader(_ImageDataset(images, labels), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers, persistent_workers=workers > 0, drop_last=False,
                                 pin_memory=self.device.type == "cuda", worker_init_fn=_worker_init,
                                 generator=torch.Generator().manual_seed(self.seed))

    def _batches(self, order, key):
        self.sampler.order, self.sampler.key = order, key  # the sampler is iterated in this process
        for images, labels in self.loader:
            yield (images.permute(0, 3, 1, 2).to(self.device, non_blocking=True),
                   labels.to(self.device, non_blocking=True))


class _Resident:
    """One stored split's images (NHWC uint8) and labels on one device, shared by every TensorLoader using it."""

    __slots__ = ("images", "labels", "__weakref__")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels


# (device, then each .npy's path, inode and st_mtime_ns) -> _Resident; an entry lives while a loader holds it
_resident: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def resident_arrays(data_dir, split: str, device: torch.device) -> _Resident:
    """The stored arrays `split` indexes into, on `device`: read and copied once, whatever the split, seed or
    augmentation, as long as some loader holds them (a rewritten file is read again). Never written in place."""
    key = (device,)
    for kind in ("images", "labels"):
        path = (Path(data_dir) / f"{stored_split(split)}_{kind}.npy").resolve()
        st = path.stat()
        key += (str(path), st.st_ino, st.st_mtime_ns)
    held = _resident.get(key)
    if held is None:
        images, labels = load_arrays(data_dir, split)
        held = _resident[key] = _Resident(torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device))
    return held


class TensorLoader(Loader):
    def __init__(self, data_dir, split, batch_size, indices, **kwargs):
        super().__init__(split, batch_size, indices, **kwargs)
        self._resident = resident_arrays(data_dir, split, self.device)  # holds the shared tensors alive
        self.images, self.labels = self._resident.images, self._resident.labels  # NHWC: batches are channels_last

    def _batches(self, order, key):
        order = torch.from_numpy(np.asarray(order, dtype=np.int64)).to(self.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if key is None:
                images = self.images[idx]
            else:
                images = gather_flip_translate(self.images, idx, *flip_translate_params(key, idx))
            yield images.permute(0, 3, 1, 2), self.labels[idx]
