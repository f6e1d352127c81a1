"""When does training leave chance? Plain SGD steps on a prepared data dir, printing the loss and the training
accuracy (dropout on) over the last 25 steps, every 25 steps (issue 10's question, on a CPU budget).

    DATA=/tmp/probe/data PYTHONPATH=$PWD .venv/bin/python scripts/learning_start.py strided-a caffe-xavier 0.05 1 1 150 64

Arguments: model init lr final_relu(0/1) dropout(0/1) steps batch. DATA: a `python -m loaders.prepare` output.
The paper's optimizer (momentum 0.9, weight decay 1e-3), GCN+ZCA fitted on the training split, bf16 autocast
(PRECISION=fp32: none), one thread (THREADS=N: N), batches drawn with replacement from a generator seeded with SEED
(default 0; it seeds the weights too). With a final ReLU each line also counts the dead class maps: classes whose
map under the final ReLU is never positive on a fixed probe of PROBE training images (default 2,000; eval mode:
no dropout), which then pass no gradient. Output: reports/measured/cpu-learning-start-*.txt.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import allconv  # noqa: E402
from loaders.preprocess import build_preprocess  # noqa: E402


def main(model: str, init: str, lr: float, final_relu: bool, dropout: bool, steps: int, batch: int) -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    seed = int(os.environ.get("SEED", "0"))
    data = os.environ.get("DATA", "data")
    images = torch.from_numpy(np.load(f"{data}/train_images.npy")).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.load(f"{data}/train_labels.npy"))
    whiten = build_preprocess("gcn-zca", data)
    torch.manual_seed(seed)
    net = allconv.build(model, 10, init=init, final_relu=final_relu, dropout=dropout)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    draw = torch.Generator().manual_seed(seed)
    probe = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(1))[
        :int(os.environ.get("PROBE", "2000"))]]
    t0, hits = time.time(), []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (batch,), generator=draw)
        x = whiten(images[idx]).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", torch.bfloat16, enabled=os.environ.get("PRECISION", "bf16") == "bf16"):
            out = net(x)
        loss = F.cross_entropy(out.float(), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        hits.append((out.argmax(1) == labels[idx]).float().mean().item())
        if step % 25 == 0:
            dead = f" dead class maps {dead_class_maps(net, whiten, probe)}/10" if final_relu else ""
            print(f"{model} {init} lr={lr} relu={final_relu} drop={dropout} batch={batch} step {step}: "
                  f"loss {loss.item():.3f} "
                  f"acc(last25) {100 * np.mean(hits[-25:]):.1f}%{dead} {time.time() - t0:.0f}s", flush=True)


@torch.no_grad()
def dead_class_maps(net, whiten, probe) -> int:
    """Classes whose logit (the global average of a map under the final ReLU) is 0 on every probe image."""
    net.eval()
    top = torch.cat([net(whiten(probe[i:i + 500]).contiguous(memory_format=torch.channels_last)).amax(0, keepdim=True)
                     for i in range(0, len(probe), 500)]).amax(0)
    net.train()
    return int((top <= 0).sum())


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], float(a[2]), a[3] == "1", a[4] == "1", int(a[5]), int(a[6]))
