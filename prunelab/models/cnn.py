"""Convolutional networks for filter pruning: AlexNet-, VGG- and ResNet-style nets for small
images, torchvision's models, and a dry-run check of the input size a model takes. Any other
model (a torchvision name, your own factory) and its classifier head: `prunelab.models.zoo`."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from prunelab.models.zoo import head_name, replace_head_  # noqa: F401  (the head of any model: see zoo)


def alexnet_small(num_classes: int = 10, in_channels: int = 1, image_size: int = 32,
                  widths: tuple[int, ...] = (32, 64, 96, 96, 64), hidden: int = 256, dropout: float = 0.5) -> nn.Sequential:
    """AlexNet's structure (5 conv + 3 linear, max-pools after conv1, conv2, conv5) for small images.

    Args:
        image_size: side of the square input; it must be divisible by 8 (three 2x2 pools).
        widths: filters of conv1..conv5.

    Modules are named ``conv1``..``conv5``, ``fc6``..``fc8``.

    >>> alexnet_small()(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """
    if len(widths) != 5 or image_size < 8 or image_size % 8:
        raise ValueError(f"alexnet_small needs 5 widths (got {len(widths)}) and an image size divisible by 8 "
                         f"(got {image_size})")
    c1, c2, c3, c4, c5 = widths
    side = image_size // 8
    net = nn.Sequential()
    for i, (a, b, k) in enumerate([(in_channels, c1, 5), (c1, c2, 5), (c2, c3, 3), (c3, c4, 3), (c4, c5, 3)], start=1):
        net.add_module(f"conv{i}", nn.Conv2d(a, b, k, padding=k // 2))
        net.add_module(f"relu{i}", nn.ReLU())
        if i in (1, 2, 5):
            net.add_module(f"pool{i}", nn.MaxPool2d(2))
    net.add_module("flatten", nn.Flatten())
    net.add_module("drop6", nn.Dropout(dropout))
    net.add_module("fc6", nn.Linear(c5 * side * side, hidden))
    net.add_module("relu6", nn.ReLU())
    net.add_module("drop7", nn.Dropout(dropout))
    net.add_module("fc7", nn.Linear(hidden, hidden))
    net.add_module("relu7", nn.ReLU())
    net.add_module("fc8", nn.Linear(hidden, num_classes))
    net.input_shape = (in_channels, image_size, image_size)
    return net


def vgg_small(num_classes: int = 10, in_channels: int = 1, image_size: int = 32,
              cfg: tuple = (16, "M", 32, "M", 64, 64, "M"), hidden: int = 128) -> nn.Sequential:
    """VGG-style stack of 3x3 conv + batch-norm + ReLU blocks (``"M"`` = 2x2 max-pool), then 2 linear.

    >>> vgg_small()(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """
    pools = sum(1 for c in cfg if c == "M")
    if image_size % 2**pools or image_size < 2**pools:
        raise ValueError(f"vgg_small with {pools} pools needs an image size divisible by {2**pools}; got {image_size}")
    features, channels, n = [], in_channels, 0
    for c in cfg:
        if c == "M":
            features.append(nn.MaxPool2d(2))
            continue
        n += 1
        features += [nn.Conv2d(channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        channels = c
    side = image_size // 2**pools
    net = nn.Sequential(nn.Sequential(*features), nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(),
                        nn.Linear(hidden, num_classes))
    net.input_shape = (in_channels, image_size, image_size)
    return net


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, as in He et al. 2016."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetSmall(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, one stage per width (stride 2 after the first), global pool."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else w, w, 2 if (i > 0 and b == 0) else 1) for b in range(blocks)]))
            cin = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_small(num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1) -> ResNetSmall:
    """A small CIFAR-style ResNet (any input size of at least 2**(len(widths)-1) pixels).

    >>> resnet_small()(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """
    return ResNetSmall(num_classes, in_channels, tuple(widths), blocks)


def torchvision_model(name: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """torchvision's ``alexnet``, ``vgg11``, ``vgg11_bn`` or ``resnet18``; ``weights="imagenet"`` downloads
    the ImageNet weights (for users; never in tests) and replaces the head with ``num_classes`` outputs."""
    import torchvision

    builders = {"alexnet": "AlexNet_Weights", "vgg11": "VGG11_Weights", "vgg11_bn": "VGG11_BN_Weights", "resnet18": "ResNet18_Weights"}
    if name not in builders:
        raise ValueError(f"unknown torchvision model {name!r}; choose one of {', '.join(builders)}")
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights={weights!r}; use None or 'imagenet'")
    build = getattr(torchvision.models, name)
    if weights is None:
        return build(weights=None, num_classes=num_classes)
    model = build(weights=getattr(torchvision.models, builders[name]).IMAGENET1K_V1)
    replace_head_(model, num_classes)
    return model


def check_input_shape(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Raise a clear ValueError when ``model`` cannot take images of ``shape`` = (C, H, W).

    Models built here carry ``input_shape``; others are tried with a dry forward pass.

    >>> check_input_shape(alexnet_small(image_size=32), (1, 30, 30))
    Traceback (most recent call last):
    ValueError: images of shape (1, 30, 30) do not fit Sequential, built for (1, 32, 32)
    """
    shape = tuple(int(s) for s in shape)
    expected = getattr(model, "input_shape", None)
    if expected is not None:
        if tuple(expected) != shape:
            raise ValueError(f"images of shape {shape} do not fit {type(model).__name__}, built for {tuple(expected)}")
        return
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=param.device, dtype=param.dtype))
    except RuntimeError as err:
        raise ValueError(f"images of shape {shape} do not fit {type(model).__name__}: {str(err).splitlines()[0]}") from None
    finally:
        model.train(was_training)
