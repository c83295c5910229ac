"""Translation and BLEU: sacrebleu's corpus BLEU on Moses-detokenised output."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunelab.data.corpus import Corpus
from prunelab.data.text import detokenize
from prunelab.models.decode import beam_search


@dataclass(frozen=True)
class BleuResult:
    """BLEU score (0-100), sacrebleu's signature and the detokenised hypotheses."""

    score: float
    signature: str
    hypotheses: list[str]


def bleu_score(hypotheses: list[str], references: list[str], lowercase: bool = True) -> tuple[float, str]:
    """sacrebleu corpus BLEU of detokenised ``hypotheses`` against one reference each.

    ``lowercase`` scores case-insensitively (the models here produce lowercase text), which
    sacrebleu records in its signature as ``case:lc``.

    >>> bleu_score(["a cat sat on the mat ."], ["a cat sat on the mat ."])[0]
    100.0
    """
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    metric = BLEU(lowercase=lowercase)
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return float(result.score), str(metric.get_signature())


@torch.no_grad()
def translate(model: nn.Module, corpus: Corpus, split: str = "test", beam: int = 5, batch_size: int = 64,
              alpha: float = 1.0, max_len: int | None = None) -> list[str]:
    """Detokenised translations of every source sentence of ``split``, in the split's order.

    >>> translate(model, corpus, "test", beam=1)[:1]  # doctest: +SKIP
    ['ein mann fährt fahrrad.']
    """
    model.eval()
    device = next(model.parameters()).device
    data = corpus[split]
    out: list[str | None] = [None] * len(data)
    for batch in data.batches(batch_size):
        batch = batch.to(device)
        ids = beam_search(model, batch.src, batch.src_len, beam=beam, alpha=alpha, max_len=max_len)
        for i, hyp in zip(batch.index.tolist(), ids):
            out[i] = detokenize(corpus.tgt_vocab.decode(hyp), corpus.tgt_lang)
    return out


def bleu(model: nn.Module, corpus: Corpus, split: str = "test", beam: int = 5, batch_size: int = 64,
         alpha: float = 1.0, verbose: bool = False) -> BleuResult:
    """Corpus BLEU of ``model`` on ``split`` (beam search, detokenised, sacrebleu).

    Returns:
        A `BleuResult`; ``verbose`` prints sacrebleu's signature.

    >>> bleu(model, corpus, "test").score  # doctest: +SKIP
    35.2
    """
    hyps = translate(model, corpus, split, beam=beam, batch_size=batch_size, alpha=alpha)
    score, signature = bleu_score(hyps, corpus[split].tgt_raw, lowercase=corpus.config.lowercase)
    if verbose:
        print(f"BLEU {score:.2f} on {split} (beam {beam}); sacrebleu signature: {signature}")
    return BleuResult(score, signature, hyps)
