"""When does training leave chance? SGD steps on a prepared data dir, printing loss and accuracy every 25 steps.

    DATA=/tmp/probe/data PYTHONPATH=$PWD .venv/bin/python scripts/learning_start.py strided-a caffe-xavier 0.05 1 1 150 64
    (args: model init lr final_relu(0/1) dropout(0/1) steps batch; DATA: a `python -m loaders.prepare` output)
Output committed in reports/measured/cpu-learning-start-2026-11-27.txt.
"""
import os
import sys, time, torch, torch.nn.functional as F, numpy as np
import allconv
from loaders.preprocess import build_preprocess
torch.set_num_threads(1)
d = os.environ.get("DATA", "data")
x = torch.from_numpy(np.load(f"{d}/train_images.npy")).permute(0, 3, 1, 2)
y = torch.from_numpy(np.load(f"{d}/train_labels.npy"))
pre = build_preprocess("gcn-zca", d)
model, init, lr, final_relu, dropout, steps, bs = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1", int(sys.argv[6]), int(sys.argv[7])
torch.manual_seed(0)
net = allconv.build(model, 10, init=init, final_relu=final_relu, dropout=dropout)
opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
g = torch.Generator().manual_seed(0)
t0 = time.time(); accs = []
for s in range(steps):
    idx = torch.randint(0, len(x), (bs,), generator=g)
    xb = pre(x[idx]).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        out = net(xb)
    loss = F.cross_entropy(out.float(), y[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    accs.append((out.argmax(1) == y[idx]).float().mean().item())
    if (s + 1) % 25 == 0:
        print(f"{model} {init} lr={lr} relu={final_relu} drop={dropout} step {s+1}: loss {loss.item():.3f} acc(last25) {100*np.mean(accs[-25:]):.1f}% {time.time()-t0:.0f}s", flush=True)
