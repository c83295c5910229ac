"""Image data for the filter-pruning study: Fashion-MNIST (source), digits as images (target),
Flowers-102 (the paper's target).

Fashion-MNIST is read from the idx ``.gz`` files: Debian's ``dataset-fashion-mnist`` copy, the
project's ``data/fashion-mnist`` cache, or (for users, ``download=True``) torchvision's download.
Flowers-102 is read from torchvision's on-disk layout (``flowers-102/jpg``, ``imagelabels.mat``,
``setid.mat``); torchvision fetches it when asked to download.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prunelab.results import project_root

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzipped when its name ends in ``.gz``) into an array of its stored shape.

    >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape  # doctest: +SKIP
    (10000,)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_TYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} values; its header promises shape {shape}")
    return data.reshape(shape)


def fashion_mnist_dirs(root: str | Path | None = None) -> list[Path]:
    """Folders searched for the Fashion-MNIST idx files, in order."""
    dirs = [Path(root)] if root else []
    return dirs + [DEBIAN_FASHION, project_root() / "data" / "fashion-mnist"]


def _find_fashion(root: str | Path | None, download: bool) -> Path:
    names = [n for pair in FASHION_FILES.values() for n in pair]
    for d in fashion_mnist_dirs(root):
        if all((d / n).exists() for n in names):
            return d
    if download:  # torchvision's download, kept for users; it writes <cache>/FashionMNIST/raw/
        from torchvision.datasets import FashionMNIST

        cache = project_root() / "data" / "fashion-mnist"
        FashionMNIST(str(cache), train=True, download=True)
        return cache / "FashionMNIST" / "raw"
    looked = ", ".join(str(d) for d in fashion_mnist_dirs(root))
    raise FileNotFoundError(f"Fashion-MNIST idx files ({', '.join(names)}) not found in {looked}; "
                            "install Debian's dataset-fashion-mnist or pass download=True")


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of ``(N, C, H, W)`` images to ``(N, C, size, size)`` (no-op when equal)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def load_fashion_mnist(root: str | Path | None = None, size: int = 28, limit_train: int | None = None,
                       limit_test: int | None = None, download: bool = False) -> dict[str, Tensor]:
    """Fashion-MNIST as ``(N, 1, size, size)`` float images in [0, 1] and int64 labels.

    Args:
        root: a folder to search first (then Debian's copy, then ``data/fashion-mnist``).
        size: side of the returned images (28 keeps the originals; others are resized).
        limit_train, limit_test: keep only the first so many images of each split.
        download: fetch with torchvision when no local copy exists.

    Raises:
        FileNotFoundError: no copy found (the message names every folder searched).

    >>> load_fashion_mnist(limit_train=10, limit_test=5, size=32)["x_train"].shape  # doctest: +SKIP
    torch.Size([10, 1, 32, 32])
    """
    folder = _find_fashion(root, download)
    out = {}
    for split, (images, labels) in FASHION_FILES.items():
        limit = limit_train if split == "train" else limit_test
        x = torch.from_numpy(read_idx(folder / images)[:limit].astype(np.float32) / 255.0).unsqueeze(1)
        out[f"x_{split}"] = resize(x, size)
        out[f"y_{split}"] = torch.from_numpy(read_idx(folder / labels)[:limit].astype(np.int64))
    return out


def load_digit_images(size: int = 32, test_fraction: float = 0.25, seed: int = 0) -> dict[str, Tensor]:
    """scikit-learn's 8x8 digits as ``(N, 1, size, size)`` images (bilinear upsampling), seeded split.

    >>> load_digit_images(size=32)["x_test"].shape
    torch.Size([450, 1, 32, 32])
    """
    from prunelab.data.digits import load_digits

    data = load_digits(test_fraction=test_fraction, seed=seed, image=True)
    return {k: resize(v, size) if k.startswith("x") else v for k, v in data.items()}


def _flowers_folder(root: str | Path, download: bool) -> Path:
    folder = Path(root) / "flowers-102"
    needed = [folder / "jpg", folder / "imagelabels.mat", folder / "setid.mat"]
    if not all(p.exists() for p in needed) and download:
        from torchvision.datasets import Flowers102

        Flowers102(str(root), split="train", download=True)
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Flowers-102 not found: missing {', '.join(missing)} (torchvision's layout under "
                                f"{folder}); pass download=True to fetch it")
    return folder


def load_flowers102(root: str | Path | None = None, size: int = 224, splits: tuple[str, ...] = ("train", "val", "test"),
                    limit: int | None = None, download: bool = False) -> dict[str, Tensor]:
    """Flowers-102 in torchvision's layout as ImageNet-normalised ``(N, 3, size, size)`` tensors.

    Each image is resized (shorter side to ``size``) and centre-cropped. Labels are 0-based.

    Args:
        root: folder holding ``flowers-102/`` (default ``data/``).
        splits: which of train / val / test to load; keys are ``x_<split>``, ``y_<split>``.
        limit: keep at most this many images per split (the first ones in setid order).
        download: fetch with ``torchvision.datasets.Flowers102`` when missing.

    >>> load_flowers102("data", size=64, splits=("train",), limit=8)["x_train"].shape  # doctest: +SKIP
    torch.Size([8, 3, 64, 64])
    """
    from PIL import Image
    from scipy.io import loadmat
    from torchvision.transforms import functional as TF

    bad = [s for s in splits if s not in ("train", "val", "test")]
    if bad:
        raise ValueError(f"unknown Flowers-102 split {bad[0]!r}; choose from train, val, test")
    folder = _flowers_folder(root or project_root() / "data", download)
    labels = np.asarray(loadmat(folder / "imagelabels.mat", squeeze_me=True)["labels"]).reshape(-1)
    setid = loadmat(folder / "setid.mat", squeeze_me=True)
    out = {}
    for split in splits:
        ids = np.asarray(setid[{"train": "trnid", "val": "valid", "test": "tstid"}[split]]).reshape(-1)[:limit]
        images = []
        for i in ids:
            with Image.open(folder / "jpg" / f"image_{int(i):05d}.jpg") as img:
                t = TF.center_crop(TF.resize(TF.to_tensor(img.convert("RGB")), size, antialias=True), size)
            images.append(TF.normalize(t, IMAGENET_MEAN, IMAGENET_STD))
        out[f"x_{split}"] = torch.stack(images)
        out[f"y_{split}"] = torch.tensor(labels[ids - 1] - 1, dtype=torch.long)
    return out
