"""Image classification data for the filter-pruning study, held in memory or streamed from disk.

`ImageData` holds a data set's ``train``, ``score`` (the training images without augmentation, for
the criteria) and ``test`` splits; ``batches(split, batch_size, generator)`` yields ``(x, y)`` on
its device. Tensors in memory (`from_tensors`: the default profiles' digits) are sliced as they
are; any other ``Dataset`` is streamed through a ``DataLoader`` (``workers`` processes): images are
decoded and transformed batch by batch, never held whole in memory.

`open_images` opens a data set named by one string (`prunelab.data.imagesources`):

- ``digits`` (scikit-learn's 8x8 digits, the default target) or ``fashion_mnist`` (the default
  source, found as `prunelab.data.images.load_fashion_mnist` finds it): small arrays in memory,
  turned into images item by item;
- a torchvision classification data set by name (`imagesources.TORCHVISION`, any case: ``CIFAR10``,
  ``Flowers102``, ``FakeData``), downloaded into ``data/`` on first use;
- a folder in ``ImageFolder`` layout: ``<folder>/<class>/<image>``, split by ``test_fraction``;
  or ``train/`` and ``test/`` (a ``val/`` beside them joins training), or ``train/`` and ``val/``
  (the test split). A name with a ``/`` (or starting with ``.`` or ``~``) is always a folder.

Every image is resized (shorter side to ``image_size``, then centre-cropped; for training, with
``augment``, a random resized crop and a horizontal flip instead), converted to the model's
channels (grey or RGB) and normalised with ``stats`` (the model's weights' mean and std; None
keeps pixels in [0, 1]). Training images are shuffled once by ``seed``, so the first ones (which
the criteria score) are a random sample of every class.

>>> data = open_images("FakeData", image_size=16, limit=8)
>>> data.shape, data.num_classes, next(data.batches("train", 4))[0].shape
((3, 16, 16), 10, torch.Size([4, 3, 16, 16]))
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

from prunelab.data.imagesources import check_dataset, class_names, labels_of, raw_splits
from prunelab.train import batches as tensor_batches

@dataclass(frozen=True)
class ImageData:
    """A classification data set's splits, each a ``Dataset`` of ``(image (C, H, W), label)``.

    Attributes:
        train: training images (augmented when asked); ``score``: the same images without
            augmentation (what criteria score); ``test``: held-out images.
        num_classes, classes: class count and names; ``shape``: ``(C, H, W)`` of every image.
        name: what was opened (a data set name or a folder); ``device``: where batches go.
        workers: ``DataLoader`` worker processes for streamed splits (0: in this process).
    """

    train: Dataset
    score: Dataset
    test: Dataset
    num_classes: int
    shape: tuple[int, int, int]
    name: str = ""
    classes: tuple[str, ...] = ()
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` mini-batches of ``split`` (train, score or test) on ``device``, shuffled with ``generator``.

        Tensors in memory are sliced exactly as `prunelab.train.batches` slices them.
        """
        ds = getattr(self, split)
        if isinstance(ds, TensorDataset):
            yield from tensor_batches(*ds.tensors, batch_size, generator)
            return
        loader = DataLoader(ds, batch_size=batch_size, shuffle=generator is not None, generator=generator,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def head(self, n: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """The first ``n`` scoring images in batches of ``batch_size``, held in memory (criteria
        read them several times)."""
        if isinstance(self.score, TensorDataset):
            xs, ys = (t[:n] for t in self.score.tensors)
            return [(xs[i:i + batch_size], ys[i:i + batch_size]) for i in range(0, xs.shape[0], batch_size)]
        part = replace_split(self, score=Subset(self.score, range(min(n, len(self.score)))))
        return list(part.batches("score", batch_size))

    def example(self) -> Tensor:
        """The first scoring image as a batch of one, ``(1, C, H, W)`` on ``device``."""
        return self.head(1, 1)[0][0]


def replace_split(data: ImageData, **splits: Dataset) -> ImageData:
    """A copy of ``data`` with some splits replaced."""
    from dataclasses import replace

    return replace(data, **splits)


def from_tensors(data: dict[str, Tensor], name: str = "") -> ImageData:
    """Wrap ``{"x_train", "y_train", "x_test", "y_test"}`` tensors (kept on their device, sliced as they are).

    >>> d = from_tensors({"x_train": torch.zeros(4, 1, 8, 8), "y_train": torch.tensor([0, 1, 2, 1]),
    ...                   "x_test": torch.zeros(2, 1, 8, 8), "y_test": torch.tensor([0, 1])})
    >>> d.num_classes, d.shape, d.example().shape
    (3, (1, 8, 8), torch.Size([1, 1, 8, 8]))
    """
    train = TensorDataset(data["x_train"], data["y_train"])
    n = int(torch.cat([data["y_train"], data["y_test"]]).max()) + 1
    return ImageData(train=train, score=train, test=TensorDataset(data["x_test"], data["y_test"]), num_classes=n,
                     shape=tuple(data["x_train"].shape[1:]), name=name, classes=tuple(map(str, range(n))),
                     device=data["x_train"].device)


class ConvertMode:
    """A PIL image (or a ``(C, H, W)`` uint8 tensor) in PIL mode ``L`` (grey) or ``RGB``."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, img):
        from PIL import Image
        from torchvision.transforms.functional import to_pil_image

        img = to_pil_image(img) if isinstance(img, Tensor) else img
        img = Image.fromarray(img) if isinstance(img, np.ndarray) else img
        return img if img.mode == self.mode else img.convert(self.mode)


def channel_stats(stats: tuple[Sequence[float], Sequence[float]], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``stats`` (mean, std) for ``channels`` channels: an RGB triple is averaged for grey images.

    >>> channel_stats(((0.4, 0.5, 0.6), (0.2, 0.2, 0.2)), 1)
    ((0.5,), (0.2,))
    """
    mean, std = (tuple(float(v) for v in s) for s in stats)
    if len(mean) != channels:
        mean, std = (tuple([sum(s) / len(s)] * channels) for s in (mean, std))
    return tuple(round(m, 6) for m in mean), tuple(round(s, 6) for s in std)


def transform(image_size: int, channels: int, stats=None, augment: bool = False):
    """The per-image transform (see the module doc); ``augment`` gives the training one."""
    from torchvision import transforms as T

    if channels not in (1, 3):
        raise ValueError(f"the model takes {channels}-channel images; only grey (1) or RGB (3) images are made")
    steps = [ConvertMode("L" if channels == 1 else "RGB")]
    if augment:
        steps += [T.RandomResizedCrop(image_size, scale=(0.25, 1.0), antialias=True), T.RandomHorizontalFlip()]
    else:
        steps += [T.Resize(image_size, antialias=True), T.CenterCrop(image_size)]
    steps.append(T.ToTensor())
    if stats is not None:
        steps.append(T.Normalize(*channel_stats(stats, channels)))
    return T.Compose(steps)


class Transformed(Dataset):
    """Items ``indices`` of ``base`` (``(image, label)`` pairs), the image passed through ``fn``."""

    def __init__(self, base: Dataset, indices: Sequence[int], fn):
        self.base, self.indices, self.fn = base, list(indices), fn

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.base[self.indices[i]]
        return self.fn(img), int(label)


def split(labels: Sequence[int] | None, n: int, test_fraction: float, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """(train, test) indices of ``n`` items: per class (when ``labels`` are known) a seeded
    ``round(test_fraction * count)`` items, at least one and never all, are held out.

    >>> split([0, 0, 0, 0, 1, 1], 6, 0.25, torch.Generator().manual_seed(0))[1]
    [0, 4]
    """
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(labels[i] if labels is not None else 0, []).append(i)
    train, test = [], []
    for _, idx in sorted(groups.items()):
        order = [idx[j] for j in torch.randperm(len(idx), generator=generator).tolist()]
        k = min(len(idx) - 1, max(1, round(test_fraction * len(idx)))) if len(idx) > 1 else 0
        test += sorted(order[:k])
        train += order[k:]
    return sorted(train), test


def open_images(spec: str, image_size: int, channels: int = 3, stats=None, augment: bool = False,
                test_fraction: float = 0.2, seed: int = 0, limit: int = 0, device: torch.device | str = "cpu",
                workers: int = 0) -> ImageData:
    """Open the data set ``spec`` names (see the module doc), streamed.

    Args:
        image_size: side of the square images made.
        channels: 1 (grey) or 3 (RGB), what the model takes.
        stats: (mean, std) to normalise with (an RGB triple is averaged for grey); None: none.
        augment: random resized crops and flips for the training split.
        test_fraction: share of each class held out when the data set has no test split.
        seed: seeds the split and the order of the training images.
        limit: keep at most this many images per split (0: all).

    Raises:
        ValueError: an unknown name, a folder without class sub-folders (one line, see `check_dataset`).
        RuntimeError: a torchvision data set that cannot be downloaded or read.
    """
    trains, test, name = raw_splits(spec, seed)
    train = trains[0] if len(trains) == 1 else ConcatDataset(trains)
    gen = torch.Generator().manual_seed(seed)
    if test is None:  # one set: hold out test_fraction of each class
        idx_train, test_idx = split(labels_of(train), len(train), test_fraction, gen)
        test = train
    else:
        idx_train, test_idx = list(range(len(train))), list(range(len(test)))
    order = [idx_train[i] for i in torch.randperm(len(idx_train), generator=gen).tolist()]
    if limit:
        order = order[:limit]
        test_idx = [test_idx[i] for i in sorted(torch.randperm(len(test_idx), generator=gen)[:limit].tolist())]
    plain = transform(image_size, channels, stats)
    classes = class_names(train)
    return ImageData(train=Transformed(train, order, transform(image_size, channels, stats, augment) if augment else plain),
                     score=Transformed(train, order, plain), test=Transformed(test, test_idx, plain),
                     num_classes=len(classes), shape=(channels, image_size, image_size),
                     name=name, classes=classes, device=torch.device(device), workers=workers)


__all__ = ["ImageData", "check_dataset", "from_tensors", "open_images", "split", "transform"]
