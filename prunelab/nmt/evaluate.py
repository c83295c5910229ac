"""Translation and BLEU (sacrebleu's corpus BLEU on Moses-detokenised output), per-sentence
log-likelihoods, and paired bootstrap tests of two systems on the same test set (BLEU and perplexity)."""
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

    metric = "bleu"  # higher is better

    def better(self, alpha: float = 0.05) -> str | None:
        """``"a"`` or ``"b"``: the better system (higher BLEU; lower perplexity for `PairedPerplexity`)
        where the difference is beyond noise; else None."""
        return better(self.row(), alpha)

    def row(self) -> dict:
        """The comparison as one JSON-able table row (`better` reads it back)."""
        return dict(metric=self.metric, score_a=self.a, score_b=self.b, delta=self.delta, ci_lo=self.ci[0],
                    ci_hi=self.ci[1], p_value=self.p_value, n_samples=self.n_samples)

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


@torch.no_grad()
def sentence_nll(model: nn.Module, split, batch_size: int = 128) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood (nats) and target token count (``</s>`` included) of every
    pair of ``split`` under teacher forcing, in the split's order.

    ``exp(sum(nll) / sum(tokens))`` is `prunelab.nmt.perplexity` of the split (up to float sums);
    per sentence, they let a paired bootstrap resample the test set (`paired_perplexity`).

    >>> nll, tokens = sentence_nll(model, corpus["test"])  # doctest: +SKIP
    """
    from prunelab.data.text import PAD

    model.eval()
    device = next(model.parameters()).device
    nll: list[float] = [0.0] * len(split)
    tokens: list[int] = [0] * len(split)
    for batch in split.batches(batch_size):
        batch = batch.to(device)
        logits = model(batch.src, batch.src_len, batch.tgt_in).float()
        loss = nn.functional.cross_entropy(logits.transpose(1, 2), batch.tgt_out, ignore_index=PAD, reduction="none")
        for i, total, count in zip(batch.index.tolist(), loss.sum(1).tolist(), (batch.tgt_out != PAD).sum(1).tolist()):
            nll[i], tokens[i] = total, count
    return nll, tokens


def resampled_perplexities(nlls: dict, tokens: list[int], n_samples: int = 1000, seed: int = 12345):
    """Perplexity of each system on ``n_samples`` resamples of the sentences (with replacement,
    the same draws for every system), for a bootstrap of any statistic of several systems.

    Args:
        nlls: system -> per-sentence summed NLL (`sentence_nll`), all over the same sentences.
        tokens: per-sentence target token counts (the same for every system: same references).

    Returns:
        (observed perplexity per system, {system: array (n_samples,) of resampled perplexities}).

    >>> obs, boot = resampled_perplexities({"x": [2.0, 4.0]}, [2, 2], n_samples=3)
    >>> round(obs["x"], 3), boot["x"].shape
    (4.482, (3,))
    """
    import numpy as np

    counts = np.asarray(tokens, dtype="float64")
    idxs = np.random.default_rng(seed).choice(len(counts), size=(n_samples, len(counts)), replace=True)
    denom = counts[idxs].sum(1)
    observed, boot = {}, {}
    for key, values in nlls.items():
        nll = np.asarray(values, dtype="float64")
        if nll.shape != counts.shape:
            raise ValueError(f"system {key!r} has {len(nll)} sentence NLLs for {len(counts)} sentences")
        observed[key] = float(np.exp(nll.sum() / counts.sum()))
        boot[key] = np.exp(nll[idxs].sum(1) / denom)
    return observed, boot


@dataclass(frozen=True)
class PairedPerplexity(PairedBleu):
    """Paired bootstrap comparison of two systems' perplexities on the same sentences.

    The fields are `PairedBleu`'s with perplexity for BLEU: ``delta`` is ppl(a) - ppl(b)
    (negative: a is better); ``ci`` its 95% interval over the resamples; ``p_value`` the
    two-sided p-value of "a and b have the same perplexity", computed as `paired_bleu`'s
    (sacreBLEU's statistic) on the log-perplexity difference. `better` reads ``metric``, so it
    names the system with the lower perplexity.
    """

    metric = "ppl"  # lower is better

    def describe(self) -> str:
        lo, hi = self.ci
        return (f"ppl {self.a:.1f} vs {self.b:.1f}, delta {self.delta:+.1f} (95% CI [{lo:+.1f}, {hi:+.1f}], "
                f"paired bootstrap p={self.p_value:.3f}, {self.n_samples} resamples)")


def paired_perplexity(nll_a: list[float], nll_b: list[float], tokens: list[int], n_samples: int = 1000,
                      seed: int = 12345) -> PairedPerplexity:
    """Paired bootstrap test of two systems' perplexities from their per-sentence NLLs (`sentence_nll`).

    >>> r = paired_perplexity([1.0] * 50, [3.0] * 50, [2] * 50)
    >>> r.better(), round(r.delta, 2)
    ('a', -2.83)
    """
    import numpy as np
    from sacrebleu.significance import _compute_p_value

    observed, boot = resampled_perplexities({"a": nll_a, "b": nll_b}, tokens, n_samples, seed)
    log_diffs = np.abs(np.log(boot["a"]) - np.log(boot["b"]))
    p = _compute_p_value(log_diffs - log_diffs.mean(), abs(np.log(observed["a"]) - np.log(observed["b"])))
    lo, hi = np.percentile(boot["a"] - boot["b"], [2.5, 97.5])
    return PairedPerplexity(observed["a"], observed["b"], observed["a"] - observed["b"], (float(lo), float(hi)),
                            float(p), n_samples)


def better(row: dict, alpha: float = 0.05) -> str | None:
    """Which system of a paired comparison's row (`PairedBleu.row`, `PairedPerplexity.row`) is
    better beyond noise (p < ``alpha``): ``"a"``, ``"b"``, or None where the test cannot tell.

    >>> better(dict(metric="ppl", delta=-3.0, p_value=0.001))
    'a'
    """
    if row["delta"] == 0 or not row["p_value"] < alpha:
        return None
    a_ahead = row["delta"] > 0 if row["metric"] == "bleu" else row["delta"] < 0
    return "a" if a_ahead else "b"


def paired_test(a: dict, b: dict, references: list[str], bleu_floor: float = 1.0, lowercase: bool = True,
                n_samples: int = 1000, seed: int = 12345) -> PairedBleu | PairedPerplexity:
    """Compare two systems' test outputs: by BLEU (`paired_bleu`) when both reach ``bleu_floor``,
    else by perplexity (`paired_perplexity`): below the floor BLEU cannot rank translations.

    Args:
        a, b: each a dict with ``bleu``, ``hyps`` (detokenised hypotheses), ``nll`` and ``tokens``
            (`sentence_nll`), all over the same test sentences.

    >>> paired_test(sys_a, sys_b, corpus["test"].tgt_raw).describe()  # doctest: +SKIP
    '24.10 vs 21.09, delta +3.01 (95% CI [+2.41, +3.60], paired bootstrap p=0.001, 1000 resamples)'
    """
    if min(a["bleu"], b["bleu"]) >= bleu_floor:
        return paired_bleu(a["hyps"], b["hyps"], references, lowercase, n_samples, seed)
    return paired_perplexity(a["nll"], b["nll"], a["tokens"], n_samples, seed)
