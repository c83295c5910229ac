"""Image loaders: the real Debian Fashion-MNIST copy, tiny idx files, Flowers-102 in torchvision's layout."""
import gzip
import hashlib
import os
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from prunelab.data import images


def _write_idx(path, array):
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _write_fashion(folder, n_train, n_test=3):
    """Four tiny idx files in ``folder``; returns the training images."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x = np.random.default_rng(n_train).integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    for split, n in (("train", n_train), ("test", n_test)):
        imgs, labels = images.FASHION_FILES[split]
        _write_idx(folder / imgs, train_x[:n])
        _write_idx(folder / labels, np.arange(n, dtype=np.uint8))
    return train_x


@pytest.fixture
def no_fashion(tmp_path, monkeypatch):
    """No env var, an absent Debian copy, and a project root under tmp_path (returned)."""
    monkeypatch.delenv("PRUNELAB_FASHION_MNIST", raising=False)
    monkeypatch.setattr(images, "DEBIAN_FASHION", tmp_path / "debian")
    monkeypatch.setattr(images, "project_root", lambda: tmp_path / "project")
    return tmp_path / "project"


def test_tiny_idx_files(tmp_path):
    train_x = _write_fashion(tmp_path, 5)
    assert np.array_equal(images.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), train_x)
    data = images.load_fashion_mnist(tmp_path, verify=False)
    assert data["x_train"].shape == (5, 1, 28, 28) and data["x_test"].shape == (3, 1, 28, 28)
    assert torch.allclose(data["x_train"][2, 0], torch.tensor(train_x[2] / 255.0, dtype=torch.float32))
    assert data["y_test"].tolist() == [0, 1, 2]
    assert images.load_fashion_mnist(tmp_path, size=32, limit_train=2, verify=False)["x_train"].shape == (2, 1, 32, 32)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(ValueError, match="bad.gz is not an idx file"):
        images.read_idx(tmp_path / "bad.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00"))
    with pytest.raises(ValueError, match="short.gz ends inside its idx header"):
        images.read_idx(tmp_path / "short.gz")
    whole = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match="cut.gz is truncated or not a valid gzip file"):
        images.read_idx(tmp_path / "cut.gz")


def test_fashion_search_order(tmp_path, no_fashion, monkeypatch):
    cache = no_fashion / "data" / "fashion-mnist"
    for folder, n in ((tmp_path / "root", 2), (tmp_path / "env", 3), (tmp_path / "debian", 4), (cache, 5),
                      (cache / "FashionMNIST" / "raw", 6)):
        _write_fashion(folder, n)

    def n_train(root=None):
        return len(images.load_fashion_mnist(root, verify=False)["y_train"])

    monkeypatch.setenv("PRUNELAB_FASHION_MNIST", str(tmp_path / "env"))
    assert images.fashion_mnist_dirs() == [tmp_path / "env"]
    assert (n_train(tmp_path / "root"), n_train()) == (2, 3)  # explicit root, then the env var
    monkeypatch.delenv("PRUNELAB_FASHION_MNIST")
    assert images.fashion_mnist_dirs() == [tmp_path / "debian", cache, cache / "FashionMNIST" / "raw"]
    assert n_train() == 4
    for f in (tmp_path / "debian").iterdir():
        f.unlink()
    assert n_train() == 5
    (cache / "t10k-labels-idx1-ubyte.gz").unlink()  # an incomplete cache falls through to torchvision's layout
    assert n_train() == 6


def test_given_fashion_folder_must_hold_the_files(tmp_path, no_fashion, monkeypatch):
    _write_fashion(tmp_path / "debian", 4)  # a complete default copy must not hide a bad given folder
    with pytest.raises(FileNotFoundError, match=r"nowhere \(from the root argument\) does not exist.*train-images"):
        images.load_fashion_mnist(tmp_path / "nowhere", verify=False)
    monkeypatch.setenv("PRUNELAB_FASHION_MNIST", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=r"gone \(from \$PRUNELAB_FASHION_MNIST\) does not exist"):
        images.load_fashion_mnist(verify=False)
    _write_fashion(tmp_path / "partial", 4)
    (tmp_path / "partial" / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "partial" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        images.load_fashion_mnist(tmp_path / "partial", verify=False)
    lacks = str(err.value).split("lacks ")[1].split(";")[0]
    assert lacks == "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz"


def test_corrupt_fashion_file_names_its_digests(tmp_path, no_fashion, monkeypatch):
    _write_fashion(tmp_path / "mine", 4)
    digests = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), "0" * 64) for p in (tmp_path / "mine").iterdir()}
    monkeypatch.setattr(images, "FASHION_SHA256", digests, raising=False)
    assert len(images.load_fashion_mnist(tmp_path / "mine")["y_train"]) == 4
    labels = tmp_path / "mine" / "train-labels-idx1-ubyte.gz"
    whole = labels.read_bytes()
    labels.write_bytes(whole[:-9])
    cut = hashlib.sha256(whole[:-9]).hexdigest()
    with pytest.raises(ValueError, match=f"train-labels-idx1-ubyte.gz has SHA-256 {cut}, expected "
                                         f"{digests[labels.name][0]}.*delete it"):
        images.load_fashion_mnist(tmp_path / "mine")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz is truncated"):  # unchecked: read_idx names it
        images.load_fashion_mnist(tmp_path / "mine", verify=False)


def test_fashion_files_hashed_once(tmp_path, monkeypatch):
    _write_fashion(tmp_path, 4)
    digests = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(),) * 2 for p in tmp_path.iterdir()}
    monkeypatch.setattr(images, "FASHION_SHA256", digests, raising=False)
    before = images._sha256.cache_info()
    images.load_fashion_mnist(tmp_path)
    images.load_fashion_mnist(tmp_path)
    after = images._sha256.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (4, 4)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = labels.read_bytes()
    labels.write_bytes(data[:4] + bytes([data[4] ^ 1]) + data[5:])  # same size, another gzip mtime
    os.utime(labels, ns=(1, 1))  # a rewritten file (new mtime) is hashed again
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz has SHA-256"):
        images.check_fashion_files(tmp_path)
    assert images._sha256.cache_info().misses - after.misses == 1


@pytest.mark.skipif(not images.DEBIAN_FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv("PRUNELAB_FASHION_MNIST", raising=False)
    data = images.load_fashion_mnist(limit_train=300, limit_test=100)
    assert data["x_train"].shape == (300, 1, 28, 28) and data["y_test"].shape == (100,)
    assert 0.0 <= float(data["x_train"].min()) and float(data["x_train"].max()) <= 1.0
    assert set(data["y_train"].tolist()) == set(range(10))
    assert images.read_idx(images.DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").shape == (10000,)


# The official files' gzip headers (name, mtime); Debian's copies carry the same deflate streams.
_OFFICIAL_GZIP_MTIME = {"train-images-idx3-ubyte": 1504176606, "train-labels-idx1-ubyte": 1504176606,
                        "t10k-images-idx3-ubyte": 1504176627, "t10k-labels-idx1-ubyte": 1504176627}


@pytest.mark.skipif(not images.DEBIAN_FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_digests_match_torchvision(tmp_path):
    from torchvision.datasets import FashionMNIST

    md5 = dict(FashionMNIST.resources)
    for stem, mtime in _OFFICIAL_GZIP_MTIME.items():
        debian = (images.DEBIAN_FASHION / f"{stem}.gz").read_bytes()
        assert debian[3] == 0  # no name field: Debian's header is the 10 fixed bytes
        official = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + stem.encode() + b"\0" + debian[10:]
        assert hashlib.md5(official).hexdigest() == md5[f"{stem}.gz"]
        assert images.FASHION_SHA256[f"{stem}.gz"] == (hashlib.sha256(official).hexdigest(),
                                                       hashlib.sha256(debian).hexdigest())
    images.check_fashion_files(images.DEBIAN_FASHION)
    name = "t10k-labels-idx1-ubyte.gz"
    for other in set(images.FASHION_SHA256) - {name}:  # a truncated copy beside links to the real files
        (tmp_path / other).symlink_to(images.DEBIAN_FASHION / other)
    cut = (images.DEBIAN_FASHION / name).read_bytes()[:1000]
    (tmp_path / name).write_bytes(cut)
    with pytest.raises(ValueError, match=f"{name} has SHA-256 {hashlib.sha256(cut).hexdigest()}, "
                                         f"expected {images.FASHION_SHA256[name][0]}"):
        images.load_fashion_mnist(tmp_path)


def test_missing_fashion_names_every_folder(no_fashion):
    with pytest.raises(FileNotFoundError, match="debian.*project/data/fashion-mnist.*FashionMNIST/raw.*"
                                                "PRUNELAB_FASHION_MNIST.*download=True"):
        images.load_fashion_mnist()


def test_failed_download_removes_only_its_folders(no_fashion, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (simulated)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    (no_fashion / "data").mkdir(parents=True)
    (no_fashion / "data" / "README.md").write_text("kept")
    with pytest.raises(RuntimeError, match="downloading Fashion-MNIST into .*fashion-mnist failed.*offline"):
        images.load_fashion_mnist(download=True)
    assert sorted(p.name for p in (no_fashion / "data").iterdir()) == ["README.md"]
    (no_fashion / "data" / "fashion-mnist").mkdir()  # a folder that was there before the call stays
    with pytest.raises(RuntimeError, match="PRUNELAB_FASHION_MNIST"):
        images.load_fashion_mnist(download=True)
    assert list((no_fashion / "data" / "fashion-mnist").iterdir()) == []


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
