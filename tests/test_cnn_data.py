"""Image loaders: the real Debian Fashion-MNIST copy, tiny idx files, Flowers-102 in torchvision's layout."""
import gzip
import struct

import numpy as np
import pytest
import torch

from prunelab.data import images


def _write_idx(path, array):
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_tiny_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for split, n in (("train", 5), ("test", 3)):
        imgs, labels = images.FASHION_FILES[split]
        _write_idx(tmp_path / imgs, train_x[:n])
        _write_idx(tmp_path / labels, np.arange(n, dtype=np.uint8))
    assert np.array_equal(images.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), train_x)
    data = images.load_fashion_mnist(tmp_path)
    assert data["x_train"].shape == (5, 1, 28, 28) and data["x_test"].shape == (3, 1, 28, 28)
    assert torch.allclose(data["x_train"][2, 0], torch.tensor(train_x[2] / 255.0, dtype=torch.float32))
    assert data["y_test"].tolist() == [0, 1, 2]
    assert images.load_fashion_mnist(tmp_path, size=32, limit_train=2)["x_train"].shape == (2, 1, 32, 32)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(ValueError, match="not an idx file"):
        images.read_idx(tmp_path / "bad.gz")


@pytest.mark.skipif(not images.DEBIAN_FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist():
    data = images.load_fashion_mnist(limit_train=300, limit_test=100)
    assert data["x_train"].shape == (300, 1, 28, 28) and data["y_test"].shape == (100,)
    assert 0.0 <= float(data["x_train"].min()) and float(data["x_train"].max()) <= 1.0
    assert set(data["y_train"].tolist()) == set(range(10))
    assert images.read_idx(images.DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").shape == (10000,)


def test_missing_fashion_names_every_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "DEBIAN_FASHION", tmp_path / "debian")
    monkeypatch.setattr(images, "project_root", lambda: tmp_path / "project")
    with pytest.raises(FileNotFoundError, match="debian.*project/data/fashion-mnist.*download=True"):
        images.load_fashion_mnist(tmp_path / "mine")


def test_digit_images():
    data = images.load_digit_images(size=16)
    assert data["x_train"].shape == (1347, 1, 16, 16) and data["x_test"].shape == (450, 1, 16, 16)


def _write_flowers(root):
    from PIL import Image
    from scipy.io import savemat

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 7):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(folder / "jpg" / f"image_{i:05d}.jpg")
    savemat(folder / "imagelabels.mat", {"labels": np.array([[1, 2, 3, 102, 5, 1]])})
    savemat(folder / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3]]), "tstid": np.array([[4, 5, 6]])})


def test_flowers102_torchvision_layout(tmp_path):
    _write_flowers(tmp_path)
    data = images.load_flowers102(tmp_path, size=16)
    assert data["x_train"].shape == (2, 3, 16, 16) and data["x_test"].shape == (3, 3, 16, 16)
    assert data["y_train"].tolist() == [0, 1] and data["y_val"].tolist() == [2] and data["y_test"].tolist() == [101, 4, 0]
    assert images.load_flowers102(tmp_path, size=8, splits=("test",), limit=1)["x_test"].shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown Flowers-102 split 'dev'"):
        images.load_flowers102(tmp_path, splits=("dev",))


def test_flowers102_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="flowers-102/jpg.*download=True"):
        images.load_flowers102(tmp_path)
