"""How much of what the network sees is JPEG noise, under each preprocessing (loaders.PREPROCESS).

    PYTHONPATH=$PWD .venv/bin/python scripts/jpeg_whitening.py DATA_DIR   # a python -m loaders.prepare output

Lossless CIFAR-10 cannot be reached here (FACTS.md), so the copy's own JPEG error cannot be measured; one more
round of the same compression can. Every 5th test image (2,000) is encoded once more as JPEG quality 75, 4:2:0,
on an 8x8 grid shifted by 3 pixels (edge-padded, so the new blocks do not line up with the old ones), and both
versions go through each preprocessing as training feeds them, its statistics fitted on the 50,000 training images.
Printed per kind: the input's per-value std, and the re-encoding's error energy as a share of the input's energy
about its mean (sum (f(y) - f(x))^2 / sum (f(x) - mean f(x))^2). GCN + ZCA multiplies a direction of variance
lambda by 1 / sqrt(lambda + filter bias): the share shows how much that lifts the compression's error, which sits
in the directions of least variance, against the images' content. For the GCN + ZCA kinds, also where the error
sits: the share of its energy, and of the input's, in the directions whose variance lambda is below the bias.
"""
import io
import sys

import numpy as np
import torch
from PIL import Image

from loaders import PREPROCESS
from loaders.preprocess import FILTER_BIAS, build_preprocess


def reencode(image: np.ndarray, shift: int = 3) -> np.ndarray:
    padded = np.pad(image, ((shift, 8 - shift), (shift, 8 - shift), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    Image.fromarray(padded).save(buffer, "JPEG", quality=75, subsampling=2)  # 2: 4:2:0, as the copy's
    return np.asarray(Image.open(buffer).convert("RGB"))[shift:shift + 32, shift:shift + 32]


data = sys.argv[1]
x = np.load(f"{data}/test_images.npy")[::5]  # N x 32 x 32 x 3 uint8
y = np.stack([reencode(image) for image in x])
print(f"{len(x)} test images encoded once more (JPEG q75 4:2:0, grid shifted by 3 px): pixel RMS change "
      f"{float(np.sqrt(((y.astype(float) - x) ** 2).mean())):.2f} of 255")
print(f"{'preprocess':<14}{'filter bias':>12}{'input std':>11}{'error share':>13}"
      f"{'lambda < bias: error':>22}{'input':>7}")
for kind in PREPROCESS:
    pre = build_preprocess(kind, data)  # fitted on the training split (cached beside the data)
    with torch.no_grad():
        fx, fy = (pre(torch.from_numpy(a).permute(0, 3, 1, 2)).double().flatten(1) for a in (x, y))
    share = float(((fy - fx) ** 2).sum() / ((fx - fx.mean(0)) ** 2).sum())
    low = ""
    if kind in FILTER_BIAS:  # W = U diag((lambda + bias)^-1/2) U^T: its eigenvectors are the covariance's
        w_eig, u = torch.linalg.eigh(pre.zca_matrix.double())
        below = w_eig ** -2 - FILTER_BIAS[kind] < FILTER_BIAS[kind]  # lambda < bias
        error, signal = ((fy - fx) @ u) ** 2, ((fx - fx.mean(0)) @ u) ** 2
        low = f"{100 * float(error[:, below].sum() / error.sum()):>21.0f}%" \
              f"{100 * float(signal[:, below].sum() / signal.sum()):>6.0f}%"
    bias = f"{FILTER_BIAS[kind]:g}" if kind in FILTER_BIAS else "-"
    print(f"{kind:<14}{bias:>12}{float(fx.std()):>11.3f}{100 * share:>12.1f}%{low}")
