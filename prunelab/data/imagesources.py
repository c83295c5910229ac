"""Where a data set's images come from, named by one string: the built-in arrays, torchvision's
classification data sets, or a folder in ``ImageFolder`` layout (see `prunelab.data.imagesets`).

Each source gives raw ``(PIL image, label)`` data sets: its training splits and its test split
(None when it has none); `prunelab.data.imagesets.open_images` splits, orders and transforms them.
`check_dataset` is the notebooks' parameter check (one line, before any work).
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from prunelab.data.images import load_image
from prunelab.results import project_root

BUILTIN = ("digits", "fashion_mnist")
_TRAIN, _TEST = ({"train": True},), {"train": False}
_SPLIT = ({"split": "train"},), {"split": "test"}
# name -> (keyword arguments of each training split, of the test split); None: one set, split by
# test_fraction. Splits follow the data set's own (a validation split joins training).
TORCHVISION: dict[str, tuple[tuple[dict, ...], dict] | None] = {
    "MNIST": (_TRAIN, _TEST), "FashionMNIST": (_TRAIN, _TEST), "KMNIST": (_TRAIN, _TEST), "QMNIST": (_TRAIN, _TEST),
    "EMNIST": (({"split": "balanced", "train": True},), {"split": "balanced", "train": False}),
    "CIFAR10": (_TRAIN, _TEST), "CIFAR100": (_TRAIN, _TEST), "USPS": (_TRAIN, _TEST),
    "SVHN": _SPLIT, "STL10": _SPLIT, "Food101": _SPLIT, "GTSRB": _SPLIT, "StanfordCars": _SPLIT,
    "Flowers102": (({"split": "train"}, {"split": "val"}), {"split": "test"}),
    "DTD": (({"split": "train"}, {"split": "val"}), {"split": "test"}),
    "Country211": (({"split": "train"}, {"split": "valid"}), {"split": "test"}),
    "PCAM": (({"split": "train"}, {"split": "val"}), {"split": "test"}),
    "RenderedSST2": (({"split": "train"}, {"split": "val"}), {"split": "test"}),
    "FGVCAircraft": (({"split": "trainval"},), {"split": "test"}),
    "OxfordIIITPet": (({"split": "trainval"},), {"split": "test"}),
    "Imagenette": (({"split": "train"},), {"split": "val"}), "ImageNet": (({"split": "train"},), {"split": "val"}),
    "Places365": (({"split": "train-standard"},), {"split": "val"}),
    "CLEVRClassification": (({"split": "train"},), {"split": "val"}),  # its test split has no labels
    "EuroSAT": None, "SUN397": None, "Caltech101": None, "Caltech256": None, "SEMEION": None,
    # random images and labels, nothing to download: a stand-in for timing and tests
    "FakeData": (({"size": 512, "image_size": (3, 64, 64), "random_offset": 0},),
                 {"size": 128, "image_size": (3, 64, 64), "random_offset": 512}),
}
_FOLDER_HELP = "ImageFolder layout: <folder>/<class>/<image>, or train/ with test/ or val/, each of class sub-folders"


def dataset_kind(spec: str) -> tuple[str, Any]:
    """``("builtin", name)``, ``("torchvision", canonical name)`` or ``("folder", Path)``.

    Raises:
        ValueError: a name that is none of them (the message continues "dataset=<spec> ...").

    >>> dataset_kind("cifar10"), dataset_kind("digits")
    (('torchvision', 'CIFAR10'), ('builtin', 'digits'))
    """
    tv = {n.lower(): n for n in TORCHVISION}
    if "/" in spec or os.sep in spec or spec.startswith((".", "~")):
        return "folder", Path(spec).expanduser()
    if spec in BUILTIN:
        return "builtin", spec
    if spec.lower() in tv:
        return "torchvision", tv[spec.lower()]
    if spec and Path(spec).is_dir():
        return "folder", Path(spec)
    close = difflib.get_close_matches(spec.lower(), [*BUILTIN, *tv], n=3, cutoff=0.6)
    hint = f"close matches: {', '.join(tv.get(c, c) for c in close)}; " if close else ""
    raise ValueError(f"is neither a folder nor a known data set ({hint}known: {', '.join(BUILTIN)} and torchvision's "
                     f"{', '.join(TORCHVISION)}; a folder is a path, e.g. ./images)")


def folder_splits(root: Path) -> tuple[list[Path], Path | None]:
    """(training folders, test folder or None) of an ImageFolder-layout folder (see the module doc).

    Raises:
        ValueError: a missing folder, or one without class sub-folders (the message says which).
    """
    if not root.is_dir():
        raise ValueError(f"names no folder ({root} does not exist)")
    subs = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}
    if "train" not in subs:
        return [_with_classes(root)], None
    val = subs.get("val") or subs.get("valid") or subs.get("validation")
    test = subs.get("test")
    train = [subs["train"], *([val] if val and test else [])]
    return [_with_classes(d) for d in train], _with_classes(test or val) if (test or val) else None


def _with_classes(folder: Path) -> Path:
    if not any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
        raise ValueError(f"names folder {folder}, which has no class sub-folders ({_FOLDER_HELP})")
    return folder


def check_dataset(spec: str, params: dict | None = None) -> str:
    """``spec`` if it names a data set ("" keeps the profile's ``target``); a folder's layout is checked."""
    if spec:
        kind, ref = dataset_kind(spec)
        if kind == "folder":
            folder_splits(ref)
    return spec


class ArrayImages(Dataset):
    """Grey images from a uint8 array ``(N, H, W)`` and labels, as PIL images item by item."""

    def __init__(self, images: np.ndarray, labels: Sequence[int]):
        self.images, self.labels = images, [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(self.images[i], "L"), self.labels[i]


def labels_of(ds: Dataset) -> list[int] | None:
    """Every item's label without decoding images, where the data set keeps them (else None)."""
    if isinstance(ds, ConcatDataset):
        parts = [labels_of(d) for d in ds.datasets]
        return None if any(p is None for p in parts) else [v for p in parts for v in p]
    if isinstance(ds, ArrayImages):
        return ds.labels
    for attr in ("targets", "labels", "_labels", "y"):
        values = getattr(ds, attr, None)
        if values is not None and len(values) == len(ds):
            return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    samples = getattr(ds, "_samples", None) or getattr(ds, "samples", None)
    return [int(s[1]) for s in samples] if samples is not None and len(samples) == len(ds) else None


def class_names(ds: Dataset) -> tuple[str, ...]:
    """Class names of a data set (numbers when it names none)."""
    first = ds.datasets[0] if isinstance(ds, ConcatDataset) else ds
    for attr in ("classes", "categories"):
        names = getattr(first, attr, None)
        if names:
            return tuple(map(str, names))
    n = getattr(first, "num_classes", None)
    if n is None:
        labels = labels_of(ds)
        if labels is None:
            raise ValueError(f"cannot tell how many classes {type(first).__name__} has (no classes or labels attribute)")
        n = max(labels) + 1
    return tuple(map(str, range(int(n))))


def _builtin(name: str, seed: int) -> tuple[Dataset, Dataset]:
    if name == "digits":
        from prunelab.data.digits import load_digits

        d = load_digits(test_fraction=0.25, seed=seed, image=True)
        grey = {k: (v[:, 0] * 255).round().to(torch.uint8).numpy() for k, v in d.items() if k.startswith("x")}
        return ArrayImages(grey["x_train"], d["y_train"].tolist()), ArrayImages(grey["x_test"], d["y_test"].tolist())
    from prunelab.data import images

    folder = images._find_fashion(None, download=True)
    images.check_fashion_files(folder)
    out = []
    for part in ("train", "test"):
        x, y = (images.read_idx(folder / f) for f in images.FASHION_FILES[part])
        out.append(ArrayImages(np.ascontiguousarray(x), y.tolist()))
    return out[0], out[1]


def _torchvision(name: str) -> tuple[list[Dataset], Dataset | None]:
    import inspect

    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    root = project_root() / "data"
    takes = inspect.signature(cls.__init__).parameters
    base = {"root": str(root)} if "root" in takes else {}
    base.update({"download": True} if "download" in takes else {})
    splits = TORCHVISION[name]
    try:
        if splits is None:
            return [cls(**base)], None
        return [cls(**base, **kw) for kw in splits[0]], cls(**base, **splits[1])
    except Exception as err:  # a failed download, a missing manual download, a corrupt archive...
        why = " ".join(str(err).split())
        raise RuntimeError(f"data set {name} could not be opened in {root} ({type(err).__name__}: {why}); offline, "
                           "give a folder of images instead") from None


def _folder(root: Path) -> tuple[list[Dataset], Dataset | None]:
    from torchvision.datasets import ImageFolder

    train_dirs, test_dir = folder_splits(root)
    opened = []
    for d in [*train_dirs, *([test_dir] if test_dir else [])]:
        try:
            opened.append(ImageFolder(str(d), loader=load_image))
        except (FileNotFoundError, OSError) as err:
            raise ValueError(f"image folder {d}: {' '.join(str(err).split())}") from None
    classes = [tuple(ds.classes) for ds in opened]
    for d, c in zip([*train_dirs, *([test_dir] if test_dir else [])][1:], classes[1:]):
        if c != classes[0]:
            raise ValueError(f"image folder {d} has classes {', '.join(c)}; {train_dirs[0]} has {', '.join(classes[0])}: "
                             "every split needs the same class sub-folders")
    return opened[:len(train_dirs)], opened[-1] if test_dir else None


def raw_splits(spec: str, seed: int = 0) -> tuple[list[Dataset], Dataset | None, str]:
    """(training splits, test split or None, name) of the data set ``spec`` names; ``seed`` fixes
    the digits' split. A folder is named by its absolute path.

    Raises:
        ValueError: an unknown name, a folder without class sub-folders, splits with other classes
            (one line).
        RuntimeError: a torchvision data set that cannot be downloaded or read.
    """
    try:
        kind, ref = dataset_kind(spec)
        if kind == "builtin":
            train, test = _builtin(ref, seed)
            return [train], test, ref
        if kind == "torchvision":
            return (*_torchvision(ref), ref)
        return (*_folder(ref), str(ref.resolve()))
    except ValueError as err:
        msg = str(err)
        raise ValueError(msg if msg.startswith("image folder") else f"dataset {spec!r} {msg}") from None


__all__ = ["BUILTIN", "TORCHVISION", "ArrayImages", "check_dataset", "class_names", "dataset_kind", "folder_splits",
           "labels_of", "raw_splits"]
