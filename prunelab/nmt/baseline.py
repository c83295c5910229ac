"""The shared NMT baseline: data, model and a checkpoint trained once per parameter set."""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from prunelab import results
from prunelab.data.corpus import Corpus, CorpusConfig, load_corpus
from prunelab.masks import Masks, masks_from_scores
from prunelab.models.seq2seq import INITS, Seq2Seq, Seq2SeqConfig, init_weights_, weight_classes
from prunelab.nmt.train import TrainConfig, train_
from prunelab.train import pick_device

KIND = "nmt-baseline"
MODEL_KEYS = ("layers", "emb_size", "hidden", "dropout", "input_feed", "init")
# Parameters that decide the baseline's weights (its cache key).  Where the data lives
# (`data_root`), the device and the evaluation settings do not.
BASELINE_KEYS = (*CorpusConfig.__dataclass_fields__, *MODEL_KEYS,
                 *(k for k in TrainConfig.__dataclass_fields__), "amp")
# Every parameter of notebooks/profiles/_nmt.toml, in its order (the NMT notebooks' shared cell).
PARAMS = ("direction", "folder", "data_root", "lowercase", "min_freq", "max_vocab", "max_len", "train_size",
          "eval_size", *MODEL_KEYS, "optimizer", "lr", "batch_size", "max_epochs", "patience", "lr_decay", "clip",
          "seed", "max_steps", "amp", "beam", "alpha", "device", "threads")
DEFAULTS: dict[str, Any] = {"init": "uniform", "amp": False, "data_root": "", "device": "auto"}


def as_dict(params: Any) -> dict[str, Any]:
    """A notebook's ``P`` (SimpleNamespace) or any mapping, as a plain dict."""
    return dict(vars(params)) if isinstance(params, SimpleNamespace) else dict(params)


def baseline_key(params: Any) -> dict[str, Any]:
    """The parameters that decide the baseline, with defaults filled in (its cache key).

    >>> sorted(baseline_key({"layers": 2}))[:3]
    ['amp', 'batch_size', 'clip']
    """
    p = {**DEFAULTS, **as_dict(params)}
    corpus = vars(CorpusConfig.from_params(p))
    train = vars(TrainConfig.from_params(p))
    model = {k: p.get(k, getattr(Seq2SeqConfig, k, None)) for k in MODEL_KEYS}
    return {**corpus, **model, **train, "amp": bool(p["amp"])}


def load_data(params: Any) -> Corpus:
    """The `Corpus` of ``params`` (Multi30k from ``data_root`` / ``$PRUNELAB_MULTI30K`` / cache)."""
    p = {**DEFAULTS, **as_dict(params)}
    return load_corpus(CorpusConfig.from_params(p), root=p["data_root"] or None)


def build_model(params: Any, corpus: Corpus, init: str | None = None, seed: int | None = None) -> Seq2Seq:
    """A freshly initialised `Seq2Seq` for ``corpus`` on ``params['device']``.

    Args:
        params: model parameters (layers, emb_size, hidden, dropout, input_feed, init).
        corpus: gives the vocabulary sizes.
        init: overrides ``params['init']`` (see `INITS`).
        seed: seeds the initial draw (default ``params['seed']``).

    >>> model = build_model(P, corpus)  # doctest: +SKIP
    """
    p = {**DEFAULTS, **as_dict(params)}
    config = Seq2SeqConfig(len(corpus.src_vocab), len(corpus.tgt_vocab),
                           **{k: p[k] for k in MODEL_KEYS if k != "init" and k in p})
    model = Seq2Seq(config)
    generator = torch.Generator().manual_seed(int(p.get("seed", 0) if seed is None else seed))
    init_weights_(model, init or p["init"], generator)
    return model.to(pick_device(p["device"]))


def load_state_(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state`` into ``model``, with a clear error if names or shapes differ.

    Raises:
        ValueError: names the first mismatching parameters and their shapes.
    """
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{n}: checkpoint {tuple(state[n].shape)} vs model {tuple(own[n].shape)}"
              for n in own if n in state and state[n].shape != own[n].shape]
    if missing or extra or shapes:
        problems = shapes[:3] + [f"missing {missing[:3]}"] * bool(missing) + [f"unexpected {extra[:3]}"] * bool(extra)
        raise ValueError("checkpoint does not match the model parameters (layers, emb_size, hidden, input_feed, "
                         f"vocabulary): {'; '.join(problems)}")
    model.load_state_dict(state)
    return model


@dataclass(frozen=True)
class Baseline:
    """The trained baseline: model (best validation weights), its data and training record.

    ``record`` holds ``history`` (per-epoch dicts), ``init_state_dict`` (the weights before
    training, for sparse-from-scratch), ``seconds``, ``device`` and ``params`` (the cache key).
    """

    model: Seq2Seq
    corpus: Corpus
    record: dict[str, Any]

    @property
    def history(self) -> list[dict]:
        return self.record["history"]

    def initial_model(self) -> Seq2Seq:
        """A new model holding the baseline's initial (untrained) weights."""
        model = Seq2Seq(self.model.config).to(next(self.model.parameters()).device)
        return load_state_(model, self.record["init_state_dict"])

    def fresh_copy(self) -> Seq2Seq:
        """A new model holding the trained baseline weights (safe to prune in place)."""
        model = Seq2Seq(self.model.config).to(next(self.model.parameters()).device)
        return load_state_(model, self.model.state_dict())


def baseline(params: Any, corpus: Corpus | None = None, progress: bool = True) -> Baseline:
    """The baseline of ``params``: trained on first use, then loaded from the checkpoint cache.

    The cache file is ``results.checkpoint_path("nmt-baseline", baseline_key(params))`` under
    ``$PRUNELAB_RUNS/checkpoints``, shared by every notebook with the same data, model and
    training parameters.

    Raises:
        ValueError: the cached checkpoint does not match the model (e.g. a changed vocabulary).

    >>> base = baseline(P)  # doctest: +SKIP
    >>> base.model, base.corpus, base.history  # doctest: +SKIP
    """
    p = {**DEFAULTS, **as_dict(params)}
    key = baseline_key(p)
    corpus = corpus or load_data(p)
    model = build_model(p, corpus)

    def fit() -> dict:
        init_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        start = time.perf_counter()
        history = train_(model, corpus, TrainConfig.from_params(p), amp=key["amp"], progress=progress)
        return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "init_state_dict": init_state, "history": history, "seconds": time.perf_counter() - start,
                "device": str(next(model.parameters()).device), "src_vocab": len(corpus.src_vocab),
                "tgt_vocab": len(corpus.tgt_vocab)}

    record = results.cached_checkpoint(KIND, key, fit)
    if record.get("params", key) != key:
        raise ValueError(f"checkpoint {results.checkpoint_path(KIND, key)} was trained with other parameters")
    load_state_(model, record["state_dict"])
    model.eval()
    return Baseline(model, corpus, {**record, "params": key})


def prune_masks(model: Seq2Seq, sparsity: float, scheme: str = "class-blind", seed: int = 0,
                classes: dict[str, list[str]] | None = None, previous: Masks | None = None) -> Masks:
    """Magnitude masks over See et al.'s weight classes (biases never pruned).

    ``scheme="random"`` draws with a CPU generator seeded by ``seed``, so it is the same on
    every device.

    >>> m = prune_masks(model, 0.4, "class-blind")  # doctest: +SKIP
    """
    classes = classes or weight_classes(model)
    params = dict(model.named_parameters())
    weights = {n: params[n].detach().cpu() for names in classes.values() for n in names}
    scores = {n: w.abs() for n, w in weights.items()}
    generator = torch.Generator().manual_seed(seed)
    previous = {n: m.cpu() for n, m in previous.items()} if previous else None
    masks = masks_from_scores(scores, sparsity, scheme, classes, previous=previous, generator=generator,
                              weights=weights)
    return {n: m.to(params[n].device) for n, m in masks.items()}


__all__ = ["BASELINE_KEYS", "PARAMS", "Baseline", "INITS", "KIND", "as_dict", "baseline", "baseline_key", "build_model",
           "load_data", "load_state_", "prune_masks"]
