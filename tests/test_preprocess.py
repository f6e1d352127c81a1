"""loaders.preprocess: the paper's GCN + ZCA (pylearn2 recipe), fitted on training data only, float32 under autocast.

Data: 100 real images per class and split (from the session's prepared JPEG tarball), so a fit takes a second;
with fewer images (1,000) than dimensions (3,072) the fit takes its exact Gram-matrix route, which a test below
checks against the full-covariance route used for the real 45,000 / 50,000-image fits.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loaders.preprocess import FILTER_BIAS, build_preprocess, gcn, zca_from_covariance, zca_from_rows


@pytest.fixture(scope="module")
def real_small(full_data_dir, tmp_path_factory, write_official_archive):
    from loaders.prepare import prepare_cifar10

    def first_per_class(split, n):
        x, y = np.load(full_data_dir / f"{split}_images.npy"), np.load(full_data_dir / f"{split}_labels.npy")
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:n] for c in range(10)]))
        return x[keep], y[keep]

    tmp = tmp_path_factory.mktemp("real-small")
    archive = write_official_archive(tmp / "small.tar.gz", first_per_class("train", 100), first_per_class("test", 100))
    prepare_cifar10(str(archive), tmp / "data", subset_per_class=100)
    return tmp / "data"


def gcn_rows_numpy(images_nhwc: np.ndarray) -> np.ndarray:
    """GCN written directly from the paper's formula, on NCHW-flattened float64 rows: scale 55 as a number, not the
    module's GCN_SCALE (a wrong constant there would pass a check made with it)."""
    x = images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return x * 55.0 / np.linalg.norm(x, axis=1, keepdims=True)


def fit_rows(data_dir, split):
    images = np.load(data_dir / "train_images.npy")
    if split == "train45k":
        with np.load(data_dir / "splits.npz") as z:
            images = images[z["train45k"]]
    return images


@pytest.mark.parametrize("kind", FILTER_BIAS)  # the paper's filter bias 0.1, and 1.0
def test_gcn_zca_is_the_pylearn2_recipe(real_small, kind):
    pre = build_preprocess(kind, real_small, fit_split="train")
    x = gcn_rows_numpy(fit_rows(real_small, "train"))
    mean = x.mean(axis=0)
    centred = x - mean
    w = pre.zca_matrix.double().numpy()
    assert np.allclose(pre.zca_mean.double().numpy(), mean, atol=1e-5)
    # W = (C + 0.1 I)^(-1/2) exactly when W is symmetric positive definite and W (C + 0.1 I) W = I; the last is
    # checked on random probes v, with C v = X^T (X v) / N, so C itself is never formed
    assert np.allclose(w, w.T, atol=1e-5)
    np.linalg.cholesky(w)
    v = np.random.default_rng(0).standard_normal((3072, 16))
    wv = w @ v
    back = w @ (centred.T @ (centred @ wv) / len(x) + FILTER_BIAS[kind] * wv)
    assert np.abs(back - v).max() < 1e-3 * np.abs(v).max()


@pytest.mark.parametrize("kind", FILTER_BIAS)
def test_whitened_training_data_has_identity_covariance_up_to_the_filter_bias(real_small, kind):
    pre, bias = build_preprocess(kind, real_small, fit_split="train"), FILTER_BIAS[kind]
    images = torch.from_numpy(fit_rows(real_small, "train")).permute(0, 3, 1, 2)
    y = pre(images).reshape(len(images), -1).double().numpy()
    x = gcn_rows_numpy(fit_rows(real_small, "train"))
    x = x - x.mean(axis=0)
    assert np.abs(y.mean(axis=0)).max() < 1e-4
    # the covariance's nonzero spectrum: lambda before, lambda / (lambda + bias) after, i.e. 1 where lambda >> bias
    before = np.linalg.eigvalsh(x @ x.T / len(x))[1:]  # the smallest is 0: the rows are centred
    after = np.linalg.eigvalsh(y @ y.T / len(y))[1:]
    assert np.allclose(after, before / (before + bias), atol=1e-3)
    big = before > 10 * bias
    assert big.sum() > 30 and after[big].min() > 0.9 and after.max() < 1 + 1e-3


def test_statistics_come_from_the_training_split_only(real_small):
    for bad in ("val5k", "test"):
        with pytest.raises(ValueError, match="never on"):
            build_preprocess("gcn-zca", real_small, fit_split=bad)
    pre = build_preprocess("gcn-zca", real_small, fit_split="train45k")
    assert pre.fitted_on["fit_split"] == "train45k" and pre.fitted_on["params"]["zca_filter_bias"] == 0.1
    t45 = gcn_rows_numpy(fit_rows(real_small, "train45k")).mean(axis=0)
    full = gcn_rows_numpy(fit_rows(real_small, "train")).mean(axis=0)
    assert np.allclose(pre.zca_mean.double().numpy(), t45, atol=1e-5)
    assert np.abs(t45 - full).max() > 1e-3  # so the check above can tell the two fits apart
    cache = real_small / "preprocess_gcn-zca_train45k.pt"
    saved = torch.load(cache, weights_only=True)
    assert saved["fitted_on"] == pre.fitted_on and len(saved["fitted_on"]["manifest_sha256"]) == 64
    stamp = cache.stat().st_mtime_ns
    assert torch.equal(build_preprocess("gcn-zca", real_small, "train45k").zca_matrix, pre.zca_matrix)
    assert cache.stat().st_mtime_ns == stamp  # loaded, not refitted
    saved["fitted_on"]["manifest_sha256"] = "0" * 64  # a cache from other data is refitted, not trusted
    saved["stats"]["zca_mean"] += 1
    torch.save(saved, cache)
    assert torch.equal(build_preprocess("gcn-zca", real_small, "train45k").zca_mean, pre.zca_mean)


def test_a_fit_on_more_images_than_dimensions_centres_the_covariance(full_data_dir, monkeypatch):
    """The real 45,000 / 50,000-image fits take the full-covariance route (3,072 images or more), which the fits
    above (1,000 images) never reach: on the first 3,100 real training images, the covariance that route hands to
    zca_from_covariance is that of the GCN'd rows less their mean (checked as C v = Xc^T (Xc v) / N on random
    probes), and the mean it returns is theirs. zca_from_covariance itself: the test below."""
    from loaders import preprocess

    n, handed = 3100, []
    monkeypatch.setattr(preprocess, "zca_from_covariance",  # no eigh: fast
                        lambda cov, bias: handed.append((cov, bias)) or torch.eye(len(cov), dtype=cov.dtype))
    stats = preprocess.fit_gcn_zca(full_data_dir, "train", {"num_images": {"train": n}}, filter_bias=1.0)
    x = gcn_rows_numpy(np.load(full_data_dir / "train_images.npy", mmap_mode="r")[:n])
    ((cov, bias),) = handed
    assert bias == 1.0  # the kind's filter bias reaches the whitening matrix
    v = np.random.default_rng(0).standard_normal((3072, 8))
    expected = (x - x.mean(axis=0)).T @ ((x - x.mean(axis=0)) @ v) / n
    assert np.allclose(stats["zca_mean"].double().numpy(), x.mean(axis=0), atol=1e-5)
    assert np.abs(cov.numpy() @ v - expected).max() < 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("bias", sorted(set(FILTER_BIAS.values())))
def test_gram_route_equals_covariance_route(bias):
    """Both routes at each kind's filter bias: the covariance route (the real 45k / 50k fits) is reached by no fit
    above, so one that ignored its filter_bias (gcn-zca-fb1 whitened at 0.1) passed every test."""
    torch.manual_seed(0)
    rows = torch.randn(40, 100, dtype=torch.float64) @ torch.randn(100, 100, dtype=torch.float64)
    rows -= rows.mean(dim=0)
    w = zca_from_covariance(rows.T @ rows / 40, bias)
    assert torch.allclose(zca_from_rows(rows, bias), w, atol=1e-10)
    cov = rows.T @ rows / 40 + bias * torch.eye(100, dtype=torch.float64)
    assert torch.allclose(w @ cov @ w, torch.eye(100, dtype=torch.float64), atol=1e-8)  # W = (C + bias I)^(-1/2)


def test_gcn_rows():
    x = torch.rand(5, 3072) * 255
    x[4] = 7.0  # a flat image: left at zero, not divided by zero
    y = gcn(x)
    assert torch.allclose(y[:4].norm(dim=1), torch.full((4,), 55.0)) and y.mean(dim=1).abs().max() < 1e-4
    assert torch.equal(y[4], torch.zeros(3072))


def test_meanstd_and_none(real_small):
    images = fit_rows(real_small, "train")
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    pre = build_preprocess("meanstd", real_small)
    assert np.allclose(pre.mean.numpy(), pixels.mean(axis=0), atol=1e-6)
    assert np.allclose(pre.std.numpy(), pixels.std(axis=0), atol=1e-6)
    batch = torch.from_numpy(images[:4]).permute(0, 3, 1, 2)
    want = (batch.float() / 255 - pre.mean.view(1, 3, 1, 1)) / pre.std.view(1, 3, 1, 1)
    assert torch.allclose(pre(batch), want)
    assert torch.equal(build_preprocess("none", real_small)(batch), batch.float() / 255)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        build_preprocess("zca", real_small)


def test_float32_under_autocast_any_memory_format_and_moves_with_to(real_small):
    pre = build_preprocess("gcn-zca", real_small)
    batch = torch.from_numpy(fit_rows(real_small, "train")[:8]).permute(0, 3, 1, 2)  # channels_last view
    plain = pre(batch.contiguous())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = pre(batch)
    assert inside.dtype == torch.float32 and inside.is_contiguous() and torch.equal(inside, plain)
    assert {n for n, _ in pre.named_buffers()} == {"zca_mean", "zca_matrix"}
    assert pre.to("meta").zca_matrix.device.type == "meta"


def test_a_damaged_cache_is_refitted_not_a_crash(real_small, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(real_small, data)
    fitted = build_preprocess("meanstd", data)
    cache = data / "preprocess_meanstd_train.pt"
    cache.write_bytes(cache.read_bytes()[:40])  # truncated, as by a full disk or a killed copy
    again = build_preprocess("meanstd", data)
    assert "unreadable" in capsys.readouterr().err and torch.equal(again.mean, fitted.mean)
    assert build_preprocess("meanstd", data).mean.equal(fitted.mean) and cache.stat().st_size > 40  # rewritten


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_crash(smoke_data_dir, tmp_path, capsys):
    """A folder where the cache goes (or a read-only data folder) stopped run_all with a WriteError traceback,
    though the cache is only a shortcut."""
    import shutil

    from loaders.preprocess import fit_meanstd

    data = tmp_path / "data"
    shutil.copytree(smoke_data_dir, data)
    cache = data / "preprocess_meanstd_train.pt"
    cache.mkdir()
    pre = build_preprocess("meanstd", data)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {cache} not written (Is a directory)"), err
    assert torch.equal(pre.mean, fit_meanstd(data, "train")["mean"]) and cache.is_dir()


@pytest.mark.parametrize("kind, name, edit", [("gcn-zca", "zca_matrix", lambda v: v[:100, :100]),
                                              ("gcn-zca", "zca_mean", lambda v: v.double()),
                                              ("meanstd", "std", lambda v: v * float("nan"))])
def test_an_edited_cache_whose_stamp_still_matches_is_refitted(smoke_data_dir, tmp_path, capsys, kind, name, edit):
    """A cache whose `fitted_on` matched was used whatever its statistics: a ZCA matrix of another shape stopped
    run_all with a traceback at its first step (mat1 and mat2 shapes cannot be multiplied), a NaN trained every
    run on NaN inputs."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(smoke_data_dir, data)
    fitted = build_preprocess(kind, data)
    cache = data / f"preprocess_{kind}_train.pt"
    saved = torch.load(cache, weights_only=True)
    saved["stats"][name] = edit(saved["stats"][name])
    torch.save(saved, cache)
    capsys.readouterr()
    again = build_preprocess(kind, data)
    assert "unreadable (ValueError); fitting the statistics again" in capsys.readouterr().err
    images = torch.from_numpy(np.load(data / "test_images.npy")[:4]).permute(0, 3, 1, 2)
    assert torch.equal(again(images), fitted(images))


@pytest.mark.parametrize("kind", ["gcn-zca", "meanstd"])
def test_a_folder_prepared_again_from_other_images_refits_its_statistics(tmp_path, write_official_archive, no_ffcv,
                                                                         kind):
    """The cache is stamped with the sha256 of manifest.json, which names every prepared file's digest: a folder
    prepared again from another source of the same counts (so the same splits.npz) is fitted on its new images. A
    stamp that missed the pixels (the split file's digest, say) whitened the new data with the old source's
    statistics."""
    from loaders.prepare import prepare_cifar10
    from loaders.preprocess import fit_gcn_zca, fit_meanstd
    from tests.test_prepare import synthetic_split

    data = tmp_path / "data"
    for seed in (1, 3):  # two sources: other pixels, the same labels
        archive = write_official_archive(tmp_path / f"{seed}.tar.gz", synthetic_split(2, seed),
                                         synthetic_split(1, seed + 1))
        prepare_cifar10(str(archive), data, subset_per_class=1)
        pre = build_preprocess(kind, data)
    fresh = (fit_gcn_zca if kind == "gcn-zca" else fit_meanstd)(data, "train")
    assert {n: torch.equal(getattr(pre, n), v) for n, v in fresh.items()} == dict.fromkeys(fresh, True)
