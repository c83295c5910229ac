"""A tokenised parallel corpus (train / val / test) with vocabularies from train only."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from prunelab.data import multi30k
from prunelab.data.text import Vocab, build_vocab, iterate_batches, tokenize


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the tokenised data (recorded with every run and checkpoint).

    Attributes:
        direction: ``en-de`` (See et al.) or ``de-en``.
        folder: ``""`` for Multi30k, else a folder of plain parallel text (`read_folder`).
        lowercase: lowercase before Moses tokenisation.
        min_freq: minimum training count for a vocabulary entry.
        max_vocab: cap on each vocabulary's size (specials included); 0 = no cap.
        max_len: drop training pairs with a side longer than this many tokens; 0 = keep all.
        train_size: keep the first this many training pairs (after the length filter); 0 = all.
        eval_size: keep the first this many val and test pairs; 0 = all (val/test are never
            length-filtered).
    """

    direction: str = "en-de"
    folder: str = ""
    lowercase: bool = True
    min_freq: int = 2
    max_vocab: int = 0
    max_len: int = 0
    train_size: int = 0
    eval_size: int = 0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "CorpusConfig":
        """The fields of ``params`` (a mapping or a notebook's ``P``) that this config has (others are ignored)."""
        params = params if isinstance(params, dict) else vars(params)
        return cls(**{k: params[k] for k in cls.__dataclass_fields__ if k in params})


@dataclass(frozen=True)
class Split:
    """One split: token ids (without ``<s>``/``</s>``) and the raw sentences."""

    src: list[list[int]]
    tgt: list[list[int]]
    src_raw: list[str]
    tgt_raw: list[str]

    def __len__(self) -> int:
        return len(self.src)

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Mini-batches (`iterate_batches`): shuffled with ``generator``, else length-sorted."""
        return iterate_batches(self.src, self.tgt, batch_size, generator)


@dataclass(frozen=True)
class Corpus:
    config: CorpusConfig
    src_lang: str
    tgt_lang: str
    src_vocab: Vocab
    tgt_vocab: Vocab
    splits: dict[str, Split]

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"split {split!r} is unknown; choose one of {', '.join(self.splits)}")
        return self.splits[split]

    def summary(self) -> dict[str, Any]:
        """Sizes of the splits and vocabularies, for the run's tables."""
        out = {f"{name}_pairs": len(s) for name, s in self.splits.items()}
        return {**asdict(self.config), **out, "src_vocab": len(self.src_vocab), "tgt_vocab": len(self.tgt_vocab)}


def _raw(config: CorpusConfig, split: str, root: str | Path | None) -> tuple[list[str], list[str]]:
    if config.folder:
        return multi30k.read_folder(config.folder, split, config.direction)
    return multi30k.read_multi30k(split, config.direction, root)


def load_corpus(config: CorpusConfig | None = None, root: str | Path | None = None) -> Corpus:
    """Read, tokenise and index Multi30k (or ``config.folder``) for ``config.direction``.

    Args:
        config: data parameters (default: the full Multi30k En->De).
        root: Multi30k mirror folder (default ``$PRUNELAB_MULTI30K``, then the cache).

    Returns:
        A `Corpus` with splits ``train``, ``val``, ``test`` and vocabularies built from the
        (filtered, subset) training pairs.

    >>> corpus = load_corpus(CorpusConfig(train_size=100, eval_size=10))  # doctest: +SKIP
    >>> len(corpus["test"])  # doctest: +SKIP
    10
    """
    config = config or CorpusConfig()
    for name in ("min_freq", "max_vocab", "max_len", "train_size", "eval_size"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name}={getattr(config, name)} must be >= 0")
    if not config.folder:
        multi30k.check_direction(config.direction)
    src_lang, tgt_lang = config.direction.split("-") if "-" in config.direction else (config.direction, "")
    tokens = {}
    raws = {}
    for split in ("train", "val", "test"):
        src_raw, tgt_raw = _raw(config, split, root)
        size = config.train_size if split == "train" else config.eval_size
        pairs = []
        for s, t in zip(src_raw, tgt_raw):
            pair = (s, t, tokenize(s, src_lang, config.lowercase), tokenize(t, tgt_lang, config.lowercase))
            if split == "train" and config.max_len and max(len(pair[2]), len(pair[3])) > config.max_len:
                continue
            pairs.append(pair)
            if size and len(pairs) == size:
                break  # the first `size` pairs that pass the filter: no need to tokenise the rest
        if not pairs:
            raise ValueError(f"the {split} split is empty after filtering ({config})")
        raws[split] = ([p[0] for p in pairs], [p[1] for p in pairs])
        tokens[split] = ([p[2] for p in pairs], [p[3] for p in pairs])
    cap = config.max_vocab or None
    src_vocab = build_vocab(tokens["train"][0], config.min_freq, cap)
    tgt_vocab = build_vocab(tokens["train"][1], config.min_freq, cap)
    splits = {
        name: Split([src_vocab.encode(s) for s in toks[0]], [tgt_vocab.encode(t) for t in toks[1]], *raws[name])
        for name, toks in tokens.items()
    }
    return Corpus(config, src_lang, tgt_lang, src_vocab, tgt_vocab, splits)
