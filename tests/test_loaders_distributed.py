"""Two and three gloo ranks: training shards disjoint, equal and complete, their batches together one process's
batches; evaluation sees every image exactly once.

The data are a small official-format archive whose pixel (0, 0) spells each image's index (red * 256 + green),
so each rank reports what it actually yielded, not what it planned to yield.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

PER_CLASS = 61  # 610 images per split: 3 ranks do not divide it (FFCV's sampler would pad by repeating)
BATCH = 64


@pytest.fixture(scope="module")
def witness_dir(tmp_path_factory, write_official_archive):
    from loaders.prepare import prepare_cifar10

    tmp = tmp_path_factory.mktemp("witness")

    def split(seed):
        labels = np.tile(np.arange(10), PER_CLASS)
        images = np.random.default_rng(seed).integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(len(labels)) // 256, np.arange(len(labels)) % 256
        return images, labels

    archive = write_official_archive(tmp / "witness.tar.gz", split(1), split(2))
    prepare_cifar10(str(archive), tmp / "data", subset_per_class=PER_CLASS)
    return tmp / "data"


def _rank(rank, world, port, data_dir, backends, out):
    import torch.distributed as dist

    import loaders

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    seen = {}
    for backend in backends:
        for split in loaders.SPLITS:
            loader = loaders.make(split, BATCH, data_dir=data_dir, backend=backend, distributed=True, seed=5,
                                  num_workers=0)
            loader.set_epoch(1)
            batches = [(x[:, 0, 0, 0].long() * 256 + x[:, 1, 0, 0].long()).tolist() for x, _ in loader]  # NCHW
            seen[f"{backend}/{split}"] = {"batches": len(batches), "len": len(loader),
                                          "num_images": loader.num_images, "ids": sum(batches, [])}
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_shards(world, witness_dir, tmp_path, free_port):
    import loaders

    backends = ["tensor", "torch"]  # ffcv follows the same plan: test_loaders checks it yields exactly that plan
    mp.spawn(_rank, args=(world, free_port, str(witness_dir), backends, str(tmp_path)), nprocs=world)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    sizes = {"train": 610, "test": 610, "train45k": 550, "val5k": 60}
    stored_train_ids = set(range(610))
    for backend in backends:
        for split in loaders.SPLITS:
            got = [r[f"{backend}/{split}"] for r in ranks]
            ids = [g["ids"] for g in got]
            everything = sum(ids, [])
            assert all(g["batches"] == g["len"] and len(g["ids"]) == g["num_images"] for g in got)
            assert len(everything) == len(set(everything)), f"{backend}/{split}: an image on two ranks or twice"
            if split in loaders.TRAIN_SPLITS:  # equal batch counts (DDP), at most world - 1 images left out
                assert len({g["batches"] for g in got}) == 1 and len({len(i) for i in ids}) == 1
                assert sizes[split] - world < len(everything) <= sizes[split]
            else:  # every image once, none padded, none dropped
                assert len(everything) == sizes[split]
            if split == "test":
                assert sorted(everything) == list(range(610))
            if split == "train":
                assert set(everything) <= stored_train_ids
        val = set(sum((r[f"{backend}/val5k"]["ids"] for r in ranks), []))
        t45 = set(sum((r[f"{backend}/train45k"]["ids"] for r in ranks), []))
        assert not val & t45
    for split in loaders.SPLITS:  # every backend shards identically
        assert len({json.dumps([r[f"{b}/{split}"]["ids"] for r in ranks]) for b in backends}) == 1


@pytest.mark.parametrize("n", [1, 9, 10, 610, 611])
def test_shard_plan_for_many_sizes(n):
    """The plan every backend follows, for world sizes 1-5 and sizes that do and do not divide."""
    from loaders import Loader

    for world in range(1, 6):
        for split in ("train", "test"):
            plans = []
            for rank in range(world):
                try:
                    plans.append(Loader(split, 4, np.arange(n), augment="none", device=None, seed=0, rank=rank,
                                        world_size=world, drop_last=False).epoch_indices(3))
                except ValueError:  # a rank with nothing to yield refuses to be built
                    assert (n // world if split == "train" else len(np.array_split(np.arange(n), world)[rank])) == 0
                    plans.append(np.zeros(0, int))
            every = np.concatenate(plans)
            assert len(every) == len(set(every.tolist()))
            if split == "test":
                assert np.array_equal(every, np.arange(n))
            else:
                assert {len(p) for p in plans} == {n // world} and len(every) > n - world
                single = Loader(split, 4 * world, np.arange(n), augment="none", device=None, seed=0, rank=0,
                                world_size=1, drop_last=False).epoch_indices(3)[:n // world * world]
                for i in range(-(-len(plans[0]) // 4)):  # the ranks' i-th batches make one process's i-th batch
                    together = np.concatenate([p[4 * i:4 * i + 4] for p in plans])
                    assert set(together.tolist()) == set(single[4 * world * i:4 * world * (i + 1)].tolist())
