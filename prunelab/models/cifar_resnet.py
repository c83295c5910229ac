"""The CIFAR-10 ResNets of He et al. 2016 (section 4.2) and their pretrained weights.

A 3x3 conv stem of 16 channels, 3 stages of ``n`` basic blocks (16/32/64 channels, strides 1/2/2),
global average pooling and a linear layer: depth ``6n + 2``. Shortcuts are "option A": identity,
and where the shape changes a `ChannelPadShortcut` (subsample by 2, zero-pad the new channels,
``planes // 4`` on each side), which holds its channel placement as index buffers so that filter
pruning can follow a channel through it. State-dict keys match the weights of
``akamaster/pytorch_resnet_cifar10`` once their ``module.`` prefix is stripped.

>>> net = build("cifar_resnet20")
>>> net(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
(torch.Size([2, 10]), 269722)

With the weights at hand (a folder, or ``$PRUNELAB_CIFAR_RESNETS``)::

    net = load_pretrained_(build("cifar_resnet56"), "cifar_resnet56", folder)
    x = TF.normalize(images, *STATS)  # images in [0, 1], shape (N, 3, 32, 32)
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from prunelab import results
from prunelab.models.zoo import IMAGENET_STATS

DEPTHS = {"cifar_resnet20": 20, "cifar_resnet32": 32, "cifar_resnet44": 44, "cifar_resnet56": 56}
# (mean, std) of the inputs the pretrained weights expect: ImageNet's, as in their training script.
STATS = IMAGENET_STATS
ENV = "PRUNELAB_CIFAR_RESNETS"
# The file name's hash is the start of its SHA-256; the full digests let a downloaded copy be checked too.
FILES = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet32": "resnet32-d509ac18.th",
         "cifar_resnet44": "resnet44-014dd654.th", "cifar_resnet56": "resnet56-4bfd9763.th"}
SHA256 = {
    "cifar_resnet20": "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    "cifar_resnet32": "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
    "cifar_resnet44": "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
    "cifar_resnet56": "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
}
_BASE_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
URLS = {name: _BASE_URL + file for name, file in FILES.items()}


class ChannelPadShortcut(nn.Module):
    """Option-A shortcut: ``out[:, dst] = x[:, src, ::stride, ::stride]``, every other channel zero.

    ``src``, ``dst`` (int64 index buffers, not saved in the state dict so the published weights
    load strictly) and ``out_channels`` are the whole state: pruning may drop entries of
    ``src``/``dst`` or renumber them, and the forward follows. Unpruned, ``src = arange(in)`` and
    ``dst = src + (out - in) // 2``, which equals ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``.

    Args:
        in_channels: channels of the block's input.
        out_channels: channels of the block's output (``in_channels + 2p``).
        stride: spatial subsampling.

    >>> sc = ChannelPadShortcut(16, 32, 2)
    >>> sc(torch.ones(1, 16, 8, 8)).shape, sc.dst[:2].tolist()
    (torch.Size([1, 32, 4, 4]), [8, 9])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"ChannelPadShortcut cannot shrink {in_channels} channels to {out_channels}")
        src = torch.arange(in_channels)
        self.register_buffer("src", src, persistent=False)
        self.register_buffer("dst", src + (out_channels - in_channels) // 2, persistent=False)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))."""
        picked = x[:, self.src, ::self.stride, ::self.stride]
        out = x.new_zeros(x.shape[0], self.out_channels, *picked.shape[2:])
        out[:, self.dst] = picked
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels} ({self.src.numel()} placed), stride={self.stride}"

    def drop_channels_(self, idxs: list[int], side: str) -> None:
        """Remove input (``side="in"``) or output (``"out"``) channels ``idxs`` and renumber the rest.

        A placed channel whose source or destination is removed is dropped from the placement; an
        output channel whose source was removed stays, all zeros, as it is in the masked network.
        """
        count = self.in_channels if side == "in" else self.out_channels
        gone = set(int(i) for i in idxs)
        new = torch.full((count,), -1, dtype=torch.long)
        kept = [i for i in range(count) if i not in gone]
        new[kept] = torch.arange(len(kept))
        index = (self.src if side == "in" else self.dst).cpu()
        keep = new[index] >= 0
        src, dst = self.src[keep.to(self.src.device)], self.dst[keep.to(self.dst.device)]
        if side == "in":
            src, self.in_channels = new[index[keep]].to(src.device), len(kept)
        else:
            dst, self.out_channels = new[index[keep]].to(dst.device), len(kept)
        self.src, self.dst = src, dst


class ChannelPadPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's view of a `ChannelPadShortcut`: a layer whose input channels belong to the
    stage before it and whose output channels to the stage after it (no intra-layer dependency:
    channel ``k`` in is channel ``k + p`` out only until either side is pruned).

    Build the graph with ``customized_pruners={ChannelPadShortcut: ChannelPadPruner()}``.
    """

    TARGET_MODULES = ChannelPadShortcut

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        layer.drop_channels_(list(idxs), "out")
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
        layer.drop_channels_(list(idxs), "in")
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        changes = stride != 1 or in_planes != planes
        self.shortcut = ChannelPadShortcut(in_planes, planes, stride) if changes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem, ``layer1``..``layer3`` of ``n`` `BasicBlock` each, average pool, ``linear``."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes = 16
        for i, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            blocks = [BasicBlock(planes if j == 0 else width, width, stride if j == 0 else 1) for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            planes = width
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # the initialisation of the published training script
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) images normalised with `STATS` -> (N, num_classes) logits."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def check_name(name: str) -> str:
    """``name`` itself if it is a key of `DEPTHS`.

    Raises:
        ValueError: one line listing the allowed names and any close matches.
    """
    if name not in DEPTHS:
        close = difflib.get_close_matches(name, DEPTHS, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown CIFAR ResNet {name!r}: choose one of {', '.join(DEPTHS)}{hint}")
    return name


def build(name: str, num_classes: int = 10) -> CifarResNet:
    """A randomly initialised CIFAR ResNet of the depth `DEPTHS` gives ``name``.

    >>> len(build("cifar_resnet56").layer1)
    9
    """
    return CifarResNet((DEPTHS[check_name(name)] - 2) // 6, num_classes)


def weights_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Where the weights of ``name`` are: in ``folder``, else in ``$PRUNELAB_CIFAR_RESNETS``.

    Raises:
        FileNotFoundError: one line naming where it looked and the address to download from.
    """
    file = FILES[check_name(name)]
    root = folder if folder is not None else os.environ.get(ENV)
    if root is not None and (Path(root) / file).is_file():
        return Path(root) / file
    where = f"{Path(root) / file}" if root is not None else f"no folder given and ${ENV} unset"
    raise FileNotFoundError(f"pretrained {name} not found ({where}); with internet, download it from "
                            f"{URLS[name]} (same file name) or call download_pretrained({name!r}, folder)")


def check_digest(path: Path, expected: str) -> None:
    """Raises ValueError (one line: the file, both digests) unless ``path`` has SHA-256 ``expected``."""
    actual = results.sha256_file(path)
    if actual != expected:
        raise ValueError(f"{path} is corrupt or not the published file: SHA-256 {actual}, expected {expected}")


def load_pretrained_(model: nn.Module, name: str, folder: str | os.PathLike | None = None) -> nn.Module:
    """Load the published weights of ``name`` into ``model`` (strictly) after checking their SHA-256.

    Args:
        model: ``build(name)`` or a network with the same state-dict keys and shapes.
        name: a key of `DEPTHS`.
        folder: where the ``.th`` file is; default ``$PRUNELAB_CIFAR_RESNETS``.

    Returns:
        ``model``, on the CPU-loaded weights' values (its device is kept).

    Raises:
        FileNotFoundError: the file is missing (see `weights_path`).
        ValueError: the name is unknown, the file is corrupt, or its keys or shapes do not fit ``model``.
        results.CheckpointError: the file has the right digest but cannot be read as weights only.
    """
    path = weights_path(name, folder)
    check_digest(path, SHA256[name])
    saved = results.load_checkpoint(path)["state_dict"]  # weights only, on the CPU (saved from CUDA)
    state = {k.removeprefix("module."): v for k, v in saved.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines())[:300]
        raise ValueError(f"{path} does not fit this model: {detail}") from None
    return model


def download_pretrained(name: str, folder: str | os.PathLike) -> Path:
    """Download the published weights of ``name`` into ``folder`` (needs internet) and check them.

    Returns:
        The path of the checked file.
    """
    path = Path(folder) / FILES[check_name(name)]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(URLS[name], str(path), hash_prefix=SHA256[name], progress=False)
    check_digest(path, SHA256[name])
    return path


__all__ = ["DEPTHS", "ENV", "FILES", "SHA256", "STATS", "URLS", "BasicBlock", "ChannelPadShortcut", "CifarResNet",
           "build", "check_digest", "check_name", "download_pretrained", "load_pretrained_", "weights_path"]
