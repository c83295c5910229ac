"""Any classification model by name: a torchvision model (with or without its pretrained weights)
or ``package.module:factory`` for your own ``nn.Module``, its classifier head replaced for the
target's classes, and the input statistics its weights expect.

>>> net = build("resnet18", 3, image_size=32)  # random weights
>>> net.fc.out_features, head_name(net, torch.zeros(1, 3, 32, 32)), input_stats("resnet18")
(3, 'fc', ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))

`check_model` and `check_weights` are the notebooks' parameter checks (``[types]``: ``str checked
by ...``): a one-line ValueError before any work starts.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The folder `prunelab run` was started from (absolute; its kernels inherit it): searched for the module of
# ``model=package.module:factory`` only, and only after installed packages and PYTHONPATH (see `_import_user_module`).
CALLER_DIR_ENV = "PRUNELAB_CALLER_DIR"
NO_WEIGHTS = ("", "none")
# Models whose auxiliary heads return a tuple in training mode; the study trains the main head only.
_KWARGS = {"googlenet": {"aux_logits": False}, "inception_v3": {"aux_logits": False}}


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification models (``torchvision.models.list_models`` of the top-level module)."""
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


def is_factory(spec: str) -> bool:
    """``package.module:factory`` names a user's model; anything else a torchvision model."""
    return ":" in spec


def factory(spec: str) -> Callable[..., nn.Module]:
    """The callable ``package.module:factory`` names (``factory`` may be dotted: ``module:Class.build``).

    Raises:
        ValueError: the module cannot be imported, or it has no such callable (one line, naming it).
    """
    try:
        return _factory(spec)
    except ValueError as err:
        raise ValueError(f"model {spec!r} {err}") from None


def _factory(spec: str) -> Callable[..., nn.Module]:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError("is not package.module:factory")
    try:
        obj: Any = _import_user_module(module)
    except Exception as err:  # the user's module may fail in any way while importing
        why = " ".join(str(err).split())
        raise ValueError(f"names module {module!r}, which cannot be imported ({type(err).__name__}: {why}); it must be "
                         f"installed, on PYTHONPATH, or in the folder prunelab run was started from ({caller_dir()})"
                         ) from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise ValueError(f"names no callable {attr!r} in module {module!r}")
    return obj


def caller_dir() -> str:
    """The folder `prunelab run` was started from (``$PRUNELAB_CALLER_DIR``), else the working folder."""
    return os.environ.get(CALLER_DIR_ENV) or os.getcwd()


def _import_user_module(module: str):
    """``module`` as installed packages and PYTHONPATH give it; only if its top-level package is found
    nowhere there, from `caller_dir` (appended to ``sys.path`` for this one import, so whatever the
    module imports still resolves to installed packages first; ``sys.path`` is restored afterwards).
    Nothing else ever sees the caller's folder: a ``seaborn.py`` there never shadows seaborn."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module.partition(".")[0]:  # found, but it (or a module it imports) is missing something
            raise
    folder = os.path.abspath(caller_dir())
    sys.path.append(folder)
    try:
        importlib.invalidate_caches()  # a finder may have listed the folder before the module was written
        return importlib.import_module(module)  # a failed import left nothing in sys.modules: this one starts afresh
    finally:
        for i in range(len(sys.path) - 1, -1, -1):  # the entry added above; whatever the module itself did is kept
            if sys.path[i] == folder:
                del sys.path[i]
                break


def check_model(spec: str, params: dict | None = None) -> str:
    """``spec`` unless it names no model: "" (the study's own ``arch``), a torchvision classification
    model, or an importable ``package.module:factory``; else a ValueError whose message continues
    "model=<spec> ...".

    >>> check_model("resnet81")
    Traceback (most recent call last):
    ValueError: is not a torchvision classification model (close matches: resnet18, resnet152, resnet101); or give package.module:factory for your own
    """
    if is_factory(spec):
        _factory(spec)
    elif spec and spec not in torchvision_names():
        names = torchvision_names()
        close = difflib.get_close_matches(spec, names, n=3, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else f"e.g. {', '.join(names[:4])}, ... ({len(names)} in all)"
        raise ValueError(f"is not a torchvision classification model ({hint}); or give package.module:factory for your own")
    return spec


def weights_enum(name: str, weights: str):
    """torchvision's weights ``weights`` of model ``name`` (``IMAGENET1K_V1``, ``DEFAULT`` or
    ``ResNet18_Weights.IMAGENET1K_V1``); None for ``""``/``"none"`` (random initialisation).

    Raises:
        ValueError: weights the model does not offer (the message lists those it does).
    """
    try:
        return _weights(name, weights)
    except ValueError as err:
        raise ValueError(f"weights {weights!r} {err}") from None


def _weights(name: str, weights: str):
    if weights.lower() in NO_WEIGHTS:
        return None
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    member = weights.rpartition(".")[2]
    if member not in enum.__members__:
        raise ValueError(f"is not among {name}'s weights ({', '.join(enum.__members__)}; or none for random weights)")
    return enum[member]


def check_weights(weights: str, params: dict | None = None) -> str:
    """``weights`` if the parameters' ``model`` offers them ("" or ``none`` always pass)."""
    model = (params or {}).get("model", "")
    if weights.lower() in NO_WEIGHTS:
        return weights
    if not model or is_factory(model):
        raise ValueError("needs model set to a torchvision model name (" + ("a factory loads its own weights)" if model
                                                                             else "with model empty, arch picks the model)"))
    if model in torchvision_names():  # an unknown name is reported by model's own check
        _weights(model, weights)
    return weights


def input_stats(spec: str, weights: str = "") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel the model's inputs are normalised with: its torchvision weights' own
    statistics when it has some, else ImageNet's."""
    if spec and not is_factory(spec):
        w = weights_enum(spec, weights)
        if w is not None:
            t = w.transforms()
            return tuple(t.mean), tuple(t.std)
    return IMAGENET_STATS


def build(spec: str, num_classes: int, weights: str = "", image_size: int | None = None,
          generator: torch.Generator | None = None) -> nn.Module:
    """The model ``spec`` names with a ``num_classes``-way head.

    A torchvision model is built with ``weights`` (None: random) and its classifier head replaced.
    A factory is called with ``num_classes=`` when it takes that argument, else with no argument;
    its head is replaced when its output size differs from ``num_classes``.

    Args:
        image_size: side of the images the model will take: the head is found by running the model
            on one such image (`head_name`; else it is the last linear layer in module order).
        generator: draws the new head's initial weights (reproducible transfer).

    Raises:
        ValueError: see `check_model` and `weights_enum`; a factory that returns no ``nn.Module``.
    """
    try:
        check_model(spec)
    except ValueError as err:
        raise ValueError(f"model {spec!r} {err}") from None
    if is_factory(spec):
        make = factory(spec)
        try:
            takes = "num_classes" in inspect.signature(make).parameters
        except (TypeError, ValueError):
            takes = False
        model = make(num_classes=num_classes) if takes else make()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {spec!r} returned {type(model).__name__}, not an nn.Module")
    else:
        import torchvision.models as tvm

        model = tvm.get_model(spec, weights=weights_enum(spec, weights), **_KWARGS.get(spec, {}))
    example = torch.zeros(1, in_channels(model), image_size, image_size) if image_size else None
    head = model.get_submodule(head_name(model, example))
    if _width(head) != num_classes or not is_factory(spec):
        replace_head_(model, num_classes, generator, example)
    return model


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def head_name(model: nn.Module, example: Tensor | None = None) -> str:
    """Name of the classifier head: the last ``nn.Linear`` or ``nn.Conv2d`` a forward pass on
    ``example`` runs, whose outputs are the model's (SqueezeNet's classifier conv included); without
    an example, the last ``nn.Linear`` in module order.

    Raises:
        ValueError: no such layer, or the last one run does not produce the model's output size.
    """
    if example is None:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not names:
            raise ValueError(f"{type(model).__name__} has no nn.Linear head")
        return names[-1]
    ran: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, _i, _o: ran.append(names[mod]))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    from prunelab.metrics import eval_mode

    try:
        with torch.no_grad(), eval_mode(model):
            out = model(example)
    except RuntimeError as err:
        raise ValueError(f"images of shape {tuple(example.shape[1:])} do not fit {type(model).__name__}: "
                         f"{str(err).splitlines()[0]}") from None
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, Tensor) or out.ndim < 2:
        raise ValueError(f"{type(model).__name__} returns {type(out).__name__}, not a (batch, classes) tensor of scores")
    if not ran or _width(model.get_submodule(ran[-1])) != out.shape[1]:
        last = f"the last linear or conv layer run ({ran[-1]}) has {_width(model.get_submodule(ran[-1]))} outputs" if ran else "it runs no linear or conv layer"
        raise ValueError(f"cannot find the classifier head of {type(model).__name__}: {last}, its output {out.shape[1]}")
    return ran[-1]


def replace_head_(model: nn.Module, num_classes: int, generator: torch.Generator | None = None,
                  example: Tensor | None = None) -> nn.Module:
    """Replace the classifier head (`head_name`) by a freshly initialised layer with ``num_classes``
    outputs, a linear layer by a linear layer, a conv by a conv of the same geometry.

    With ``generator`` the new weights and bias are drawn uniformly in ``±1/sqrt(fan_in)`` (torch's
    default bound) from it; otherwise torch's default initialisation.
    """
    name = head_name(model, example)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        fan_in = old.in_features
    else:
        if old.groups != 1:
            raise ValueError(f"the classifier head {name} is a grouped conv (groups={old.groups}); cannot replace it")
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, old.dilation,
                        bias=old.bias is not None, padding_mode=old.padding_mode)
        fan_in = old.weight[0].numel()
    new = new.to(old.weight.device)
    if generator is not None:
        with torch.no_grad():
            bound = 1 / fan_in ** 0.5
            new.weight.copy_(torch.rand(new.weight.shape, generator=generator) * 2 * bound - bound)
            if new.bias is not None:
                new.bias.copy_(torch.rand(new.bias.shape, generator=generator) * 2 * bound - bound)
    setattr(parent, attr, new)
    return model


def in_channels(model: nn.Module) -> int:
    """Channels of the images ``model`` takes: its ``input_shape[0]`` when it has one, else the
    first ``nn.Conv2d``'s (module order), else 3."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return int(shape[0])
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


__all__ = ["IMAGENET_STATS", "build", "check_model", "check_weights", "factory", "head_name", "in_channels",
           "input_stats", "is_factory", "replace_head_", "torchvision_names", "weights_enum"]
