"""Paired bootstrap significance of BLEU differences (sacreBLEU's test, plus the delta's CI)."""
import random

import pytest
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from prunelab import results
from prunelab.nmt.evaluate import paired_bleu

WORDS = "ein mann frau hund läuft sitzt auf dem der die kind spielt ball wasser".split()


def systems(n, noise_a, noise_b, seed=0):
    rng = random.Random(seed)
    refs = [" ".join(rng.choices(WORDS, k=8)) for _ in range(n)]

    def noisy(p):
        return [" ".join(w if rng.random() > p else rng.choice(WORDS) for w in r.split()) for r in refs]

    return noisy(noise_a), noisy(noise_b), refs


def test_p_value_and_score_are_sacrebleus_paired_bootstrap(monkeypatch):
    a, b, refs = systems(150, 0.3, 0.4)
    monkeypatch.setenv("SACREBLEU_SEED", "7")
    _, scores = PairedTest([("b", b), ("a", a)], {"BLEU": BLEU(lowercase=True)}, [refs],
                           test_type="bs", n_samples=500)()
    ours = paired_bleu(a, b, refs, n_samples=500, seed=7)
    theirs = scores["BLEU"][1]
    assert ours.a == pytest.approx(theirs.score)
    assert ours.b == pytest.approx(scores["BLEU"][0].score)
    assert ours.p_value == pytest.approx(theirs.p_value)


def test_clear_difference_is_beyond_noise_and_its_interval_excludes_zero():
    a, b, refs = systems(300, 0.1, 0.6)
    r = paired_bleu(a, b, refs)
    assert r.delta > 10 and r.beyond_noise()
    assert 0 < r.ci[0] < r.delta < r.ci[1]
    assert results.significance_verdict(r.delta > 0, r.beyond_noise()) == "reproduced"


def test_identical_systems_are_within_noise():
    a, _, refs = systems(100, 0.3, 0.3)
    r = paired_bleu(a, list(a), refs)
    assert r.delta == 0 and not r.beyond_noise() and r.ci == (0.0, 0.0)
    assert results.significance_verdict(True, r.beyond_noise()) == "within noise"


def test_same_seed_same_numbers_and_mismatched_lengths_are_refused():
    a, b, refs = systems(80, 0.3, 0.35)
    assert paired_bleu(a, b, refs) == paired_bleu(a, b, refs)
    with pytest.raises(ValueError, match="79"):
        paired_bleu(a[:-1], b, refs)
