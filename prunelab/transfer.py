"""Source pretraining and transfer to a target set, each cached by its parameters.

``default``/``smoke``: a small AlexNet-style net pretrained on Fashion-MNIST, transferred to
scikit-learn's digits (upsampled). ``paper``: torchvision's AlexNet with ImageNet weights,
fine-tuned on Flowers-102 (Molchanov et al. 2017's setting; both download for users).

Any model, any images: ``model`` (a torchvision classification model, with ``weights`` as
torchvision names them, or ``package.module:factory``; "" keeps ``arch``) and ``dataset`` (see
`prunelab.data.imagesets.open_images`; "" keeps ``target``). Either one set streams the target
through a ``DataLoader``; with both "" the study runs exactly as before (same cached checkpoints).

>>> P = dict(model="resnet18", weights="none", dataset="path/to/images", image_size=64, augment=True,
...          test_fraction=0.2, target_limit=0, workers=2, transfer_epochs=5, transfer_lr=1e-3, batch_size=32, seed=0)
>>> model, data, info = transferred_model(P, torch.device("cpu"))  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunelab import metrics, train
from prunelab.data import imagesets
from prunelab.data.imagesets import ImageData
from prunelab.models import cnn, zoo
from prunelab.results import cached_checkpoint

ARCHS = ("alexnet_small", "vgg_small", "resnet_small", "tv_alexnet", "tv_alexnet_imagenet")
SOURCE_KEYS = ("arch", "widths", "hidden", "image_size", "source", "source_train", "source_epochs", "lr", "batch_size", "seed")
ANY_KEYS = ("model", "weights", "dataset", "augment", "test_fraction", "target_limit", "image_size", "transfer_epochs",
            "transfer_lr", "batch_size", "seed")


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


def transferred_model(params: dict[str, Any], device: torch.device, progress: bool = False) -> tuple[nn.Module, ImageData, dict]:
    """The source model with a new head, fine-tuned on the target; cached by its parameters.

    ``params`` holds the `SOURCE_KEYS` and ``target``, ``transfer_epochs``, ``transfer_lr``; with
    ``model`` or ``dataset`` set, also ``weights``, ``augment``, ``test_fraction``, ``workers`` (see
    `any_transfer`).

    Returns:
        (model on ``device`` in eval mode, target data whose batches land on ``device``, info:
        accuracies, histories, ``model`` and ``dataset``: what was used, in words).
    """
    if params.get("model") or params.get("dataset"):
        return any_transfer(params, device, progress)
    model, data, info = _builtin_transfer(params, device, progress)
    return model, imagesets.from_tensors(data, name=params["target"]), {**info, "model": params["arch"], "dataset": params["target"]}


def _builtin_transfer(params: dict[str, Any], device: torch.device, progress: bool) -> tuple[nn.Module, dict[str, Tensor], dict]:
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


def _stats(params: dict[str, Any]):
    """Input statistics: the model's weights' (ImageNet's when unknown); the small archs see raw [0, 1] pixels."""
    if params.get("model"):
        return zoo.input_stats(params["model"], params.get("weights", ""))
    return zoo.IMAGENET_STATS if params["arch"].startswith("tv_") else None


def _open(params: dict[str, Any], channels: int, device: torch.device) -> ImageData:
    return imagesets.open_images(params.get("dataset") or params["target"], params["image_size"], channels, _stats(params),
                                 augment=params.get("augment", False), test_fraction=params.get("test_fraction", 0.2),
                                 seed=params["seed"], limit=params.get("target_limit") or 0, device=device,
                                 workers=params.get("workers", 0))


def _any_model(params: dict[str, Any], source: dict | None, num_classes: int) -> nn.Module:
    """``model`` (else ``arch``, from its source checkpoint) with a ``num_classes``-way head, seeded."""
    train.seed_all(params["seed"])  # torchvision initialises with the global generator
    head_gen = torch.Generator().manual_seed(params["seed"])
    if params.get("model"):
        return zoo.build(params["model"], num_classes, params.get("weights", ""), params["image_size"], head_gen)
    if source is None:
        return build_model(params["arch"], num_classes, params["image_size"])
    model = build_model(params["arch"], 10, params["image_size"], 1, params["widths"], params["hidden"])
    model.load_state_dict(source["state_dict"])
    return cnn.replace_head_(model, num_classes, head_gen)


def any_transfer(params: dict[str, Any], device: torch.device, progress: bool = False) -> tuple[nn.Module, ImageData, dict]:
    """Transfer ``model`` (else ``arch``, pretrained on the source as usual) to ``dataset`` (else
    ``target``), streamed; cached by `ANY_KEYS`, the data set's classes and split sizes.

    The head is replaced for the data set's classes (a factory that already gives that many keeps
    its own); the images take the model's channels and its weights' statistics.

    Raises:
        ValueError: an unknown model or data set, weights the model does not offer, images the
            model cannot take (each one line, before any training).
    """
    seed, spec = params["seed"], params.get("model", "")
    source = None if spec or params["arch"] == "tv_alexnet_imagenet" else source_checkpoint(params, device, progress)
    data = _open(params, 1 if source else 3, device)
    model = _any_model(params, source, data.num_classes)
    if zoo.in_channels(model) != data.shape[0]:  # a factory's model taking grey images
        data = _open(params, zoo.in_channels(model), device)
    cnn.check_input_shape(model, data.shape)
    model = model.to(device)
    key = {**{k: params.get(k) for k in ANY_KEYS}, "dataset": data.name, "classes": list(data.classes),
           "train_images": len(data.train), "test_images": len(data.test)}
    if source is not None:
        key.update({k: params[k] for k in SOURCE_KEYS})
    if key["augment"]:  # worker processes draw their own augmentations: another count, other crops
        key["workers"] = params.get("workers", 0)

    def fit() -> dict:
        gen = train.seed_all(seed)
        history = train.fit_classifier_(model, lambda: data.batches("train", params["batch_size"], gen),
                                        epochs=params["transfer_epochs"], lr=params["transfer_lr"], progress=progress)
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history}

    ckpt = cached_checkpoint("cnn-transfer", key, fit)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    weights = params.get("weights", "")
    weights = "random" if weights.lower() in zoo.NO_WEIGHTS else weights
    label = (f"{spec} ({weights} weights)" if spec and not zoo.is_factory(spec) else spec) or params["arch"]
    info = {"source_accuracy": source["source_accuracy"] if source else None, "history": ckpt["history"],
            "target_accuracy": metrics.accuracy_over(model, data.batches("test", 512)), "model": label,
            "dataset": Path(data.name).name + "/" if Path(data.name).is_absolute() else data.name,
            "num_classes": data.num_classes}
    return model, data, info
