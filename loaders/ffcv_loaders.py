"""The ffcv backend: one FFCV Loader per `make` call, reused every epoch (its pipeline JIT-compiles once, 5-9 s).

Pipeline: raw RGB decode -> FlipTranslate (only with augment="flip-translate") -> ToTensor -> ToDevice ->
ToTorchImage (channels_last view). Order and sharding are ours, not FFCV's: each epoch we hand the Loader's
Sequential traversal this rank's index list (loaders.Loader.epoch_indices), so FFCV's padding distributed
sampler is never involved and every backend sees the same images in the same order.
"""
from __future__ import annotations

import atexit
import os
import queue
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
from ffcv.loader import Loader as _FFCVLoader
from ffcv.loader import OrderOption
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

from . import Loader, stored_split
from .augment import flip_translate_numpy, flip_translate_params


class FlipTranslate(Operation):
    """loaders.augment's flip + translate as an FFCV operation. It runs as a (cheap) Python step that computes each
    image's parameters from (key, image index) and calls a parallel numba kernel, so the epoch's key can change
    without recompiling the pipeline. FFCV's own RandomHorizontalFlip / RandomTranslate draw from per-thread
    RNGs nobody seeds: not reproducible, hence this op. Set `key` before each epoch."""

    def __init__(self):
        super().__init__()
        self.key = 0

    def generate_code(self):
        def flip_translate(images, dst, indices):
            flip, dy, dx = flip_translate_params(self.key, np.asarray(indices, dtype=np.int64))
            return flip_translate_numpy(images, dst[:len(images)], flip, dy, dx)

        flip_translate.with_indices = True
        return flip_translate

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=False), AllocationQuery(previous_state.shape, previous_state.dtype)


def image_pipeline(device: torch.device, augment: FlipTranslate | None) -> list:
    ops = [SimpleRGBImageDecoder()] + ([augment] if augment is not None else [])
    return ops + [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=True)]


def label_pipeline(device: torch.device) -> list:
    return [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(device, non_blocking=True)]


def default_num_workers() -> int:
    """All cores but one, which the training loop consuming the batches needs. FFCV's own default (all cores)
    measured 40-50k img/s on a busy 2-core machine against 105-175k with one thread: numba's parallel regions
    stall whenever the loop or another process holds a core."""
    return max(1, (os.cpu_count() or 2) - 1)


class FFCVLoader(Loader):
    def __init__(self, data_dir, split, batch_size, indices, *, manifest, num_workers=None, **kwargs):
        super().__init__(split, batch_size, indices, **kwargs)
        beton = f"{stored_split(split)}.beton"
        if beton not in manifest["files"]:
            raise ValueError(f"{data_dir} was prepared without ffcv (no {beton}): run python -m loaders.prepare "
                             "again here to add it, or use --backend torch|tensor")
        self.flip_translate = FlipTranslate() if self.augment == "flip-translate" else None
        self.num_workers = num_workers or default_num_workers()
        self.loader = _FFCVLoader(
            str(Path(data_dir) / beton), batch_size=batch_size,
            num_workers=self.num_workers, order=OrderOption.SEQUENTIAL, indices=self.epoch_indices(0),
            drop_last=False, distributed=False, os_cache=True, seed=0,  # a seed: else FFCV draws one from np.random
            pipelines={"image": image_pipeline(self.device, self.flip_translate),
                       "label": label_pipeline(self.device)})

    def _batches(self, order, key):
        # Sequential traversal returns its `indices` unchanged: swapping them selects this epoch's order.
        self.loader.traversal_order.indices = np.asarray(order, dtype=np.uint64)
        if self.flip_translate is not None:
            self.flip_translate.key = key
        epoch = iter(self.loader)
        _live.add(epoch)
        try:
            while True:  # FFCV's producer thread catches only StopIteration: one that died of anything else (an
                # op's error, a damaged .beton; threading prints it) left its queue empty and next() waiting forever
                while epoch.output_queue.empty() and epoch.is_alive():
                    epoch.join(0.001)
                if epoch.output_queue.empty():
                    raise RuntimeError("FFCV's loader thread stopped before the end of the epoch (its error is "
                                       "printed above)")
                try:
                    batch = next(epoch)  # no wait: a batch or the end marker is queued, and this is the only reader
                except StopIteration:
                    return
                yield batch
        finally:  # the consumer finished or left the epoch (break, exception, stop): no producer outlives it
            stop_epoch(epoch)


_live = weakref.WeakSet()  # epoch iterators begun and not yet stopped


def stop_epoch(epoch) -> None:
    """Stop an FFCV epoch's producer thread and wait for it (within one batch). FFCV's EpochIterator.close() only
    sets a flag that its daemon thread reads when its queue is full (after up to batches_ahead more batches and a
    0.5 s timeout), and nothing joins it. A producer still inside a torch op (ToDevice's copy_, run with the GIL
    released) when the interpreter finalizes is ended by pthread_exit from a C++ destructor and the process aborts
    at exit: rc 134, "terminate called without an active exception" (pytorch/pytorch#38228, cpython gh-87135),
    after a run's record was written and its exit status decided."""
    epoch.close()
    epoch.iter_ixes = iter(())  # no batch after the one in hand: the thread then queues its end marker and returns
    while epoch.is_alive():
        try:  # room for that batch and the end marker (else the thread's put(None) would wait forever)
            epoch.output_queue.get(timeout=0.01)
        except queue.Empty:
            pass
    _live.discard(epoch)


@atexit.register  # runs before finalization: also stops epochs no one closed (a global, a traceback's frame)
def _stop_all() -> None:
    for epoch in list(_live):
        stop_epoch(epoch)
