"""Table 4's augmentation, "horizontal flips and random translations of up to 5 px", with one meaning everywhere.

Each image's flip and shift are a pure function of (seed, epoch, image index) via a small integer hash, so the
three backends produce the same augmented pixels, a resumed run sees the same data as an uninterrupted one, and
the result does not depend on worker count, thread scheduling or batch composition.
Meaning (FFCV's RandomHorizontalFlip then RandomTranslate(5)): with probability 1/2 mirror the image left-right,
then shift it by (dy, dx), each uniform in {-5..5}, filling uncovered pixels with black (0):
    out[y, x] = flipped[y - dy, x - dx]   (0 where that falls outside the image)
The paper does not say how the uncovered border is filled; zero fill is the common choice (and FFCV's default).
"""
from __future__ import annotations

import numpy as np
import torch

MAX_SHIFT_PX = 5  # Table 4 (Section 3.2.3 of the paper): "random translations of up to 5 px"
_M32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (xorshift-multiply rounds). Works on Python ints, int64 numpy arrays and int64 torch
    tensors alike: inputs stay in [0, 2**32) and multipliers below 2**31, so no product overflows int64."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _M32
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def epoch_key(seed: int, epoch: int) -> int:
    """One 32-bit key per (seed, epoch): the only state the augmentation depends on besides the image index."""
    return int(_mix32((_mix32(seed & _M32) + epoch) & _M32))


def flip_translate_params(key: int, indices, pad: int = MAX_SHIFT_PX):
    """(flip, dy, dx) for each image index; `indices` an int64 numpy array or torch tensor (result: same kind).
    flip is a bool, dy and dx integers in [-pad, pad]."""
    h = _mix32((_mix32(indices) + key) & _M32)
    flip = (h >> 31) == 1
    span = 2 * pad + 1
    dy = ((h & 0xFFFF) * span >> 16) - pad
    dx = (((h >> 16) & 0x7FFF) * span >> 15) - pad
    return flip, dy, dx


def gather_flip_translate(data: torch.Tensor, idx: torch.Tensor, flip, dy, dx) -> torch.Tensor:
    """data[idx] augmented, for a resident uint8 N x H x W x C dataset on any device, in one gather (the tensor
    backend's path, airbench style): each output pixel reads its source pixel, or is zeroed when that falls
    outside the image. Returns B x H x W x C."""
    _, h, w, c = data.shape
    sy = torch.arange(h, device=data.device).view(1, h, 1) - dy.view(-1, 1, 1)  # out[y, x] = in[y - dy, x - dx]
    sx = torch.arange(w, device=data.device).view(1, 1, w) - dx.view(-1, 1, 1)
    inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
    sx = torch.where(flip.view(-1, 1, 1), w - 1 - sx, sx)  # read the mirrored image
    pixel = (idx.view(-1, 1, 1) * h + sy.clamp(0, h - 1)) * w + sx.clamp(0, w - 1)
    out = data.view(-1, c).index_select(0, pixel.view(-1)).view(len(idx), h, w, c)
    return out.masked_fill_(~inside.unsqueeze(-1), 0)


_kernel = None


def flip_translate_numpy(src: np.ndarray, dst: np.ndarray, flip, dy, dx) -> np.ndarray:
    """Apply the augmentation to a uint8 NHWC numpy batch with a parallel numba kernel (the FFCV backend's path).
    flip, dy, dx: as flip_translate_params returns them for int64 numpy indices (bool, int64, int64)."""
    global _kernel
    if _kernel is None:
        _kernel = _compile_kernel()
    _kernel(src, dst, flip, dy, dx)
    return dst


def _compile_kernel():
    from numba import njit, prange

    @njit(parallel=True, nogil=True, cache=True)
    def kernel(src, dst, flip, dy, dx):
        n, h, w, c = src.shape
        for i in prange(n):
            for y in range(h):
                sy = y - dy[i]
                for x in range(w):
                    sx = x - dx[i]
                    if 0 <= sy < h and 0 <= sx < w:
                        if flip[i]:
                            sx = w - 1 - sx
                        for k in range(c):
                            dst[i, y, x, k] = src[i, sy, sx, k]
                    else:
                        for k in range(c):
                            dst[i, y, x, k] = 0
        return dst

    return kernel
