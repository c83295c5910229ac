"""Image data for the filter-pruning study: Fashion-MNIST (source), digits as images (target),
Flowers-102 (the paper's target).

Fashion-MNIST is read from the four idx ``.gz`` files in a given folder (``root``, else
``$PRUNELAB_FASHION_MNIST``), else Debian's ``dataset-fashion-mnist`` copy, else the project's
``data/fashion-mnist`` cache (where ``download=True`` puts torchvision's download). Each file must
match the SHA-256 of the official file or of Debian's copy of it (unless ``verify=False``).
Flowers-102 is read from torchvision's on-disk layout (``flowers-102/jpg``, ``imagelabels.mat``,
``setid.mat``); torchvision fetches it when asked to download.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prunelab.results import project_root

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_ENV = "PRUNELAB_FASHION_MNIST"
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# (official file as torchvision downloads it, Debian's copy). Debian's build rewrote each gzip header
# (file name dropped, mtime set to 2020-06-05) but kept the deflate stream: putting the official
# header back onto Debian's bytes gives torchvision's MD5s, and both decompress to the same idx bytes.
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                                   "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    "train-labels-idx1-ubyte.gz": ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                                   "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    "t10k-images-idx3-ubyte.gz": ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                                  "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    "t10k-labels-idx1-ubyte.gz": ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                                  "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzipped when its name ends in ``.gz``) into an array of its stored shape.

    >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape  # doctest: +SKIP
    (10000,)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path} is truncated or not a valid gzip file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} ends inside its idx header ({len(raw)} bytes, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_TYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} values; its header promises shape {shape}")
    return data.reshape(shape)


def load_image(path: str | Path):
    """The image file at ``path`` as torchvision's ``default_loader`` opens it (an RGB PIL image).

    Raises:
        ValueError: the file cannot be decoded (truncated, corrupt, not an image); the message names it.
    """
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(str(path))
    except Exception as err:  # noqa: BLE001 (PIL raises many kinds for a bad file; all mean the same here)
        raise ValueError(f"image {path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())})") from None


def _fashion_names() -> list[str]:
    return [n for pair in FASHION_FILES.values() for n in pair]


def _given_fashion_root(root: str | Path | None) -> tuple[Path, str] | None:
    if root:
        return Path(root), "the root argument"
    env = os.environ.get(FASHION_ENV)
    return (Path(env), f"${FASHION_ENV}") if env else None


def fashion_mnist_dirs(root: str | Path | None = None) -> list[Path]:
    """Folders searched for the Fashion-MNIST idx files, in order.

    A given folder (``root``, else ``$PRUNELAB_FASHION_MNIST``) is the only one searched; otherwise
    Debian's copy, the project cache, and torchvision's ``FashionMNIST/raw`` inside the cache.
    """
    given = _given_fashion_root(root)
    if given:
        return [given[0]]
    cache = project_root() / "data" / "fashion-mnist"
    return [DEBIAN_FASHION, cache, cache / "FashionMNIST" / "raw"]


def _created_by(make: Path) -> Path | None:
    """The outermost missing folder among ``make`` and its parents: what making ``make`` creates."""
    created = None
    for p in (make, *make.parents):
        if p.exists():
            break
        created = p
    return created


def _download_fashion() -> Path:
    from torchvision.datasets import FashionMNIST

    cache = project_root() / "data" / "fashion-mnist"
    created = _created_by(cache / "FashionMNIST" / "raw")
    try:
        FashionMNIST(str(cache), train=True, download=True)
    except Exception as e:
        if created is not None:  # leave no empty or half-filled folder behind, and only ours
            shutil.rmtree(created, ignore_errors=True)
        why = " ".join(str(e).split())  # torchvision's message spans lines
        raise RuntimeError(f"downloading Fashion-MNIST into {cache} failed ({type(e).__name__}: {why}); when offline, "
                           f"install Debian's dataset-fashion-mnist or set ${FASHION_ENV} to a folder holding "
                           f"{', '.join(_fashion_names())}") from e
    return cache / "FashionMNIST" / "raw"


def _find_fashion(root: str | Path | None, download: bool) -> Path:
    names = _fashion_names()
    given = _given_fashion_root(root)
    if given:  # a folder the user named is never silently replaced by another one
        folder, source = given
        if not folder.is_dir():
            raise FileNotFoundError(f"Fashion-MNIST folder {folder} (from {source}) does not exist or is not a "
                                    f"folder; it should hold the four idx files {', '.join(names)}")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"Fashion-MNIST folder {folder} (from {source}) lacks {', '.join(missing)}; "
                                    f"it should hold all of {', '.join(names)}")
        return folder
    for d in fashion_mnist_dirs():
        if all((d / n).is_file() for n in names):
            return d
    if download:
        return _download_fashion()
    looked = ", ".join(str(d) for d in fashion_mnist_dirs())
    raise FileNotFoundError(f"Fashion-MNIST idx files ({', '.join(names)}) not found in {looked}; install Debian's "
                            f"dataset-fashion-mnist, set ${FASHION_ENV} to a folder holding them, "
                            "or pass download=True")


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file; size and mtime are in the key so a rewritten file is hashed again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_fashion_files(folder: str | Path) -> None:
    """Check the four Fashion-MNIST files in ``folder`` against the official SHA-256 digests.

    Each file is hashed at most once per process (cached by path, size and mtime).

    Args:
        folder: the folder holding the four idx ``.gz`` files.

    Raises:
        ValueError: a file does not match; the message names it with its expected and actual SHA-256.

    >>> check_fashion_files("/usr/share/datasets/fashion-mnist")  # doctest: +SKIP
    """
    bad = []
    for name in _fashion_names():
        path = Path(folder) / name
        st = path.stat()
        actual = _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
        if actual not in FASHION_SHA256[name]:
            bad.append(f"{path} has SHA-256 {actual}, expected {FASHION_SHA256[name][0]} (official download) "
                       f"or {FASHION_SHA256[name][1]} (Debian's copy)")
    if bad:
        fix = ("reinstall it: apt-get install --reinstall dataset-fashion-mnist" if Path(folder) == DEBIAN_FASHION
               else "delete it (and any unpacked copy beside it) and fetch it again (download=True re-downloads "
               "into data/fashion-mnist)")
        raise ValueError(f"Fashion-MNIST file corrupt or truncated: {'; '.join(bad)}. To fix, {fix}. "
                         "To load a copy you trust that was made differently, pass verify=False")


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of ``(N, C, H, W)`` images to ``(N, C, size, size)`` (no-op when equal)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def load_fashion_mnist(root: str | Path | None = None, size: int = 28, limit_train: int | None = None,
                       limit_test: int | None = None, download: bool = False, verify: bool = True) -> dict[str, Tensor]:
    """Fashion-MNIST as ``(N, 1, size, size)`` float images in [0, 1] and int64 labels.

    Args:
        root: the folder holding the four idx ``.gz`` files; when None, ``$PRUNELAB_FASHION_MNIST``,
            else Debian's copy, else ``data/fashion-mnist``.
        size: side of the returned images (28 keeps the originals; others are resized).
        limit_train, limit_test: keep only the first so many images of each split.
        download: when no folder is given and none is found, fetch with torchvision into ``data/fashion-mnist``.
        verify: check each file's SHA-256 against the official digests (see ``check_fashion_files``).

    Raises:
        FileNotFoundError: a given folder is missing or lacks files (named), or no copy was found
            (the message names every folder searched).
        ValueError: a file fails the SHA-256 check.
        RuntimeError: the download failed (folders it created are removed).

    >>> load_fashion_mnist(limit_train=10, limit_test=5, size=32)["x_train"].shape  # doctest: +SKIP
    torch.Size([10, 1, 32, 32])
    """
    folder = _find_fashion(root, download)
    if verify:
        check_fashion_files(folder)
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
            img = load_image(folder / "jpg" / f"image_{int(i):05d}.jpg")
            t = TF.center_crop(TF.resize(TF.to_tensor(img), size, antialias=True), size)
            images.append(TF.normalize(t, IMAGENET_MEAN, IMAGENET_STD))
        out[f"x_{split}"] = torch.stack(images)
        out[f"y_{split}"] = torch.tensor(labels[ids - 1] - 1, dtype=torch.long)
    return out
