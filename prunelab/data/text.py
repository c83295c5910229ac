"""Tokenisation, vocabularies and batching of parallel text for NMT.

Tokenisation is lowercase + the Moses tokenizer (sacremoses, ``escape=False``); BLEU is
computed on Moses-detokenised output against the raw references (lowercased), so it is
independent of the tokenisation.  Vocabularies come from the training pairs only.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import Tensor

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


@lru_cache(maxsize=8)
def _moses(lang: str, detok: bool):
    from sacremoses import MosesDetokenizer, MosesTokenizer

    return MosesDetokenizer(lang) if detok else MosesTokenizer(lang)


def tokenize(text: str, lang: str, lowercase: bool = True) -> list[str]:
    """Moses tokens of ``text`` (lowercased first by default).

    >>> tokenize("Two dogs, running.", "en")
    ['two', 'dogs', ',', 'running', '.']
    """
    return _moses(lang, False).tokenize(text.lower() if lowercase else text, escape=False)


def detokenize(tokens: Sequence[str], lang: str) -> str:
    """Moses detokenisation, the inverse of `tokenize` up to case.

    >>> detokenize(["two", "dogs", ",", "running", "."], "en")
    'two dogs, running.'
    """
    return _moses(lang, True).detokenize(list(tokens))


@dataclass(frozen=True)
class Vocab:
    """Tokens by index; indices 0-3 are ``<pad> <unk> <s> </s>``."""

    itos: tuple[str, ...]
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "stoi", {t: i for i, t in enumerate(self.itos)})

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, UNK) for t in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Tokens of ``ids`` up to the first ``</s>``, specials other than ``<unk>`` dropped."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(self.itos[i])
        return out


def build_vocab(sentences: Sequence[Sequence[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
    """Vocabulary of the tokens seen at least ``min_freq`` times, most frequent first.

    Ties in frequency are broken alphabetically, so the vocabulary is deterministic;
    ``max_size`` (specials included) caps its length.

    >>> len(build_vocab([["a", "b"], ["a"]], min_freq=2))
    5
    """
    if min_freq < 1:
        raise ValueError(f"min_freq={min_freq} must be >= 1")
    if max_size is not None and max_size <= len(SPECIALS):
        raise ValueError(f"max_size={max_size} must exceed the {len(SPECIALS)} special tokens")
    counts = Counter(t for s in sentences for t in s)
    tokens = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    if max_size is not None:
        tokens = tokens[: max_size - len(SPECIALS)]
    return Vocab(SPECIALS + tuple(tokens))


@dataclass(frozen=True)
class Batch:
    """Padded tensors of one mini-batch (B pairs, source length S, target length T).

    ``src`` (B, S) and ``src_len`` (B,) feed the encoder; ``tgt_in`` (B, T) starts with
    ``<s>``; ``tgt_out`` (B, T) ends with ``</s>``; ``index`` (B,) are the pairs' positions
    in their split.
    """

    src: Tensor
    src_len: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    index: Tensor

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.src, self.src_len, self.tgt_in, self.tgt_out, self.index)))

    @property
    def n_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())


def _pad(seqs: Sequence[Sequence[int]]) -> Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def make_batch(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], index: Sequence[int]) -> Batch:
    """A `Batch` from lists of source and target ids (without ``<s>``/``</s>``)."""
    return Batch(
        src=_pad([list(s) or [UNK] for s in src]),
        src_len=torch.tensor([max(len(s), 1) for s in src], dtype=torch.long),
        tgt_in=_pad([[BOS, *t] for t in tgt]),
        tgt_out=_pad([[*t, EOS] for t in tgt]),
        index=torch.tensor(list(index), dtype=torch.long),
    )


def iterate_batches(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], batch_size: int,
                    generator: torch.Generator | None = None, pool: int = 50) -> Iterator[Batch]:
    """Mini-batches of similar source length, in a shuffled order when ``generator`` is given.

    Pairs are shuffled, sorted by length inside pools of ``pool`` batches (less padding) and
    the batches shuffled again; without a generator the order is fixed (sorted by length).

    >>> b = next(iterate_batches([[5, 6], [7]], [[8], [9, 10]], batch_size=2))
    >>> b.src.shape, b.tgt_in.shape
    (torch.Size([2, 2]), torch.Size([2, 3]))
    """
    n = len(src)
    if generator is None:
        order = sorted(range(n), key=lambda i: (len(src[i]), len(tgt[i]), i))
        chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    else:
        perm = torch.randperm(n, generator=generator).tolist()
        chunks = []
        for start in range(0, n, batch_size * pool):
            part = sorted(perm[start:start + batch_size * pool], key=lambda i: (len(src[i]), len(tgt[i])))
            chunks += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    for idx in chunks:
        yield make_batch([src[i] for i in idx], [tgt[i] for i in idx], idx)
