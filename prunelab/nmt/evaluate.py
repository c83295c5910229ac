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


@dataclass(frozen=True)
class PairedBleu:
    """Paired bootstrap comparison of two systems on the same references (Koehn 2004).

    ``delta`` is BLEU(a) - BLEU(b); ``ci`` its 95% interval over the resamples; ``p_value``
    sacreBLEU's paired bootstrap p-value for "a and b score the same" (two-sided).
    """

    a: float
    b: float
    delta: float
    ci: tuple[float, float]
    p_value: float
    n_samples: int

    def beyond_noise(self, alpha: float = 0.05) -> bool:
        """Whether the difference is significant at level ``alpha``.

        Identical systems count as within noise: sacreBLEU's statistic gives them p = 1/(n+1).
        """
        return self.delta != 0 and self.p_value < alpha

    def describe(self) -> str:
        lo, hi = self.ci
        return (f"{self.a:.2f} vs {self.b:.2f}, delta {self.delta:+.2f} (95% CI [{lo:+.2f}, {hi:+.2f}], "
                f"paired bootstrap p={self.p_value:.3f}, {self.n_samples} resamples)")


def paired_bleu(hyps_a: list[str], hyps_b: list[str], references: list[str], lowercase: bool = True,
                n_samples: int = 1000, seed: int = 12345) -> PairedBleu:
    """sacreBLEU's paired bootstrap resampling test of system a against system b.

    Resamples sentences with replacement ``n_samples`` times (the same draws for both
    systems), exactly as ``sacrebleu.significance.PairedTest(test_type="bs")`` with
    ``SACREBLEU_SEED=seed`` does (a test checks they agree), and also returns the 95%
    interval of the BLEU difference, which claims with a margin need.

    Raises:
        ValueError: if the three lists differ in length or are empty.

    >>> r = paired_bleu(["a cat sat ."] * 20, ["a dog sat ."] * 20, ["a cat sat ."] * 20)
    >>> r.delta > 0 and r.beyond_noise()
    True
    """
    import numpy as np
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import _compute_p_value

    if not (len(hyps_a) == len(hyps_b) == len(references)) or not references:
        raise ValueError(f"paired_bleu needs as many hypotheses of each system as references, "
                         f"got {len(hyps_a)}, {len(hyps_b)} and {len(references)}")
    metric = BLEU(lowercase=lowercase)
    refs = [list(references)]
    stats_a = np.array(metric._extract_corpus_statistics(list(hyps_a), refs), dtype="float32")
    stats_b = np.array(metric._extract_corpus_statistics(list(hyps_b), refs), dtype="float32")
    score_a = metric._compute_score_from_stats(stats_a.sum(0)).score
    score_b = metric._compute_score_from_stats(stats_b.sum(0)).score
    # The draws and the statistic are sacrebleu's _paired_bs_test: baseline b, system a.
    idxs = np.random.default_rng(seed).choice(len(references), size=(n_samples, len(references)), replace=True)
    boot_a = np.array([metric._compute_score_from_stats(s.sum(0)).score for s in stats_a[idxs]])
    boot_b = np.array([metric._compute_score_from_stats(s.sum(0)).score for s in stats_b[idxs]])
    diffs = np.abs(boot_a - boot_b)
    p = _compute_p_value(diffs - diffs.mean(), abs(score_b - score_a))
    lo, hi = np.percentile(boot_a - boot_b, [2.5, 97.5])
    return PairedBleu(float(score_a), float(score_b), float(score_a - score_b), (float(lo), float(hi)),
                      float(p), n_samples)
