"""Source pretraining and transfer to a small target set, each cached by its parameters.

``default``/``smoke``: a small AlexNet-style net pretrained on Fashion-MNIST, transferred to
scikit-learn's digits (upsampled). ``paper``: torchvision's AlexNet with ImageNet weights,
fine-tuned on Flowers-102 (Molchanov et al. 2017's setting; both download for users).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prunelab import metrics, train
from prunelab.models import cnn
from prunelab.results import cached_checkpoint

ARCHS = ("alexnet_small", "vgg_small", "resnet_small", "tv_alexnet", "tv_alexnet_imagenet")
SOURCE_KEYS = ("arch", "widths", "hidden", "image_size", "source", "source_train", "source_epochs", "lr", "batch_size", "seed")


def build_model(arch: str, num_classes: int, image_size: int, in_channels: int = 1, widths: list | None = None,
                hidden: int = 256) -> nn.Module:
    """A model by name; ``tv_alexnet_imagenet`` downloads ImageNet weights (users only).

    >>> build_model("alexnet_small", 10, 32, widths=[8, 8, 8, 8, 8], hidden=16).fc8.out_features
    10
    """
    if arch == "alexnet_small":
        return cnn.alexnet_small(num_classes, in_channels, image_size, tuple(widths or (32, 64, 96, 96, 64)), hidden)
    if arch == "vgg_small":
        return cnn.vgg_small(num_classes, in_channels, image_size)
    if arch == "resnet_small":
        return cnn.resnet_small(num_classes, in_channels, tuple(widths or (16, 32, 64)))
    if arch in ("tv_alexnet", "tv_alexnet_imagenet"):
        return cnn.torchvision_model("alexnet", num_classes, "imagenet" if arch.endswith("imagenet") else None)
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def load_target(name: str, image_size: int, seed: int = 0, limit: int | None = None) -> dict[str, Tensor]:
    """Target data: ``digits`` (1,797 grey images) or ``flowers102`` (train+val to train, test to test)."""
    from prunelab.data import images

    if name == "digits":
        return images.load_digit_images(size=image_size, seed=seed)
    if name == "flowers102":
        d = images.load_flowers102(size=image_size, limit=limit, download=True)
        return {"x_train": torch.cat([d["x_train"], d["x_val"]]), "y_train": torch.cat([d["y_train"], d["y_val"]]),
                "x_test": d["x_test"], "y_test": d["y_test"]}
    raise ValueError(f"unknown target {name!r}; choose digits or flowers102")


def source_checkpoint(params: dict[str, Any], device: torch.device, progress: bool = False) -> dict:
    """Train ``params["arch"]`` on Fashion-MNIST once per parameter set (``results.cached_checkpoint``)."""
    from prunelab.data.images import load_fashion_mnist

    key = {k: params[k] for k in SOURCE_KEYS}
    if key["source"] != "fashion_mnist":
        raise ValueError(f"source {key['source']!r}: only fashion_mnist is pretrained here (ImageNet weights are downloaded)")

    def fit() -> dict:
        gen = train.seed_all(key["seed"])
        data = load_fashion_mnist(size=key["image_size"], limit_train=key["source_train"], limit_test=2000)
        model = build_model(key["arch"], 10, key["image_size"], 1, key["widths"], key["hidden"]).to(device)
        history = train.train_classifier_(model, data["x_train"].to(device), data["y_train"].to(device), epochs=key["source_epochs"],
                                          lr=key["lr"], batch_size=key["batch_size"], generator=gen, progress=progress)
        acc = metrics.accuracy(model, data["x_test"].to(device), data["y_test"].to(device))
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history, "source_accuracy": acc}

    return cached_checkpoint("cnn-source", key, fit)


def transferred_model(params: dict[str, Any], device: torch.device, progress: bool = False) -> tuple[nn.Module, dict[str, Tensor], dict]:
    """The source model with a new head, fine-tuned on the target; cached by its parameters.

    ``params`` holds the `SOURCE_KEYS` and ``target``, ``transfer_epochs``, ``transfer_lr``.

    Returns:
        (model on ``device`` in eval mode, target data on ``device``, info: accuracies and histories).
    """
    data = load_target(params["target"], params["image_size"], params["seed"], params.get("target_limit") or None)
    num_classes = int(data["y_train"].max()) + 1
    key = {k: params.get(k) for k in (*SOURCE_KEYS, "target", "target_limit", "transfer_epochs", "transfer_lr")}
    source = None if params["arch"] == "tv_alexnet_imagenet" else source_checkpoint(params, device, progress)

    data = {k: v.to(device) for k, v in data.items()}

    def base() -> nn.Module:
        if source is None:  # ImageNet weights, head replaced by build_model
            return build_model(params["arch"], num_classes, params["image_size"])
        model = build_model(params["arch"], 10, params["image_size"], 1, params["widths"], params["hidden"])
        model.load_state_dict(source["state_dict"])
        return cnn.replace_head_(model, num_classes, torch.Generator().manual_seed(params["seed"]))

    def fit() -> dict:
        gen = train.seed_all(params["seed"])
        model = base().to(device)
        history = train.train_classifier_(model, data["x_train"], data["y_train"], epochs=params["transfer_epochs"],
                                          lr=params["transfer_lr"], batch_size=params["batch_size"], generator=gen, progress=progress)
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history}

    ckpt = cached_checkpoint("cnn-transfer", key, fit)
    model = base().to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    info = {"source_accuracy": source["source_accuracy"] if source else None,
            "target_accuracy": metrics.accuracy(model, data["x_test"], data["y_test"]), "history": ckpt["history"]}
    return model, data, info
