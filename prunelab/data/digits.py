"""scikit-learn's bundled 8x8 digits (1,797 images, no download needed)."""
from __future__ import annotations

import torch
from torch import Tensor


def load_digits(test_fraction: float = 0.25, seed: int = 0, image: bool = False) -> dict[str, Tensor]:
    """Digits split into train/test by a seeded stratified shuffle.

    Args:
        test_fraction: share of images held out, in (0, 1).
        seed: seed of the split.
        image: return ``(N, 1, 8, 8)`` images instead of ``(N, 64)`` vectors.

    Returns:
        ``{"x_train", "y_train", "x_test", "y_test"}``; pixels scaled to [0, 1].

    >>> load_digits()["x_train"].shape
    torch.Size([1347, 64])
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must lie in (0, 1)")
    bunch = sk_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=test_fraction, random_state=seed, stratify=bunch.target)
    if image:
        x = x.view(-1, 1, 8, 8)
    return {"x_train": x[idx_train], "y_train": y[idx_train], "x_test": x[idx_test], "y_test": y[idx_test]}
