"""GCN+ZCA on a prepared data dir: the covariance spectrum after GCN and the whitened inputs' scale (README, "Measured
so far": why the JPEG copy is the first suspect).

    PYTHONPATH=$PWD .venv/bin/python scripts/zca_spectrum.py DATA_DIR   # a python -m loaders.prepare output
"""
import sys

import numpy as np
import torch

from loaders.preprocess import ZCA_FILTER_BIAS, build_preprocess

data = sys.argv[1]
pre = build_preprocess("gcn-zca", data)  # fitted on the 50,000 training images, as every run fits it
w = pre.zca_matrix.double()
# W's eigenvalues are 1 / sqrt(lambda + filter bias): the covariance's, largest first
lam = (1 / torch.linalg.eigvalsh(w) ** 2 - ZCA_FILTER_BIAS).clamp(min=0).sort(descending=True).values
print(f"eigenvalues of the GCN'd training covariance (3072): sum {lam.sum():.1f}, largest {lam[0]:.1f}, "
      f"median {lam.median():.4f}, smallest {lam[-1]:.2e}")
for t in (10, 1, 0.1, 0.01):
    print(f"  above {t:>5}: {int((lam > t).sum()):4d}")
print(f"whitened per-pixel std from the spectrum: {float((lam / (lam + ZCA_FILTER_BIAS)).mean().sqrt()):.4f}")
images = torch.from_numpy(np.load(f"{data}/train_images.npy")).permute(0, 3, 1, 2)
with torch.no_grad():
    x = torch.cat([pre(images[i:i + 5000]) for i in range(0, len(images), 5000)])
print(f"measured on the 50,000 whitened training images: per-pixel std {float(x.std(0).pow(2).mean().sqrt()):.4f}, "
      f"mean |x| {float(x.abs().mean()):.4f}, max |x| {float(x.abs().max()):.2f}")
