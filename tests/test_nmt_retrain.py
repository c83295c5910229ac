"""Pruning while retraining (prunelab.nmt.retrain): schedules in steps, masks that only shrink, verdicts."""
import math

import pytest
import torch

from prunelab import masks, nmt
from prunelab.data import CorpusConfig, load_corpus
from prunelab.nmt.evaluate import PairedBleu
from nmt_helpers import write_parallel

TINY_PARAMS = dict(layers=1, emb_size=12, hidden=16, dropout=0.0, input_feed=True, device="cpu", seed=0,
                   min_freq=1, direction="en-de")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus(tmp_path):
    return load_corpus(CorpusConfig(folder=str(write_parallel(tmp_path / "tiny")), min_freq=1))


def pruned_count(model, classes):
    params = dict(model.named_parameters())
    names = [n for group in classes.values() for n in group]
    return sum(int((params[n] == 0).sum()) for n in names), sum(params[n].numel() for n in names)


def test_schedules_in_steps_reach_the_target_by_the_span():
    one = nmt.sparsity_schedule("one-shot", 0.8, span_steps=10)
    assert one.sparsity_at(0) == 0.8
    it = nmt.sparsity_schedule("iterative", 0.9, span_steps=9, rounds=4)
    assert [it.sparsity_at(t) for t in (0, 2, 3, 6)] == pytest.approx([0.225, 0.225, 0.45, 0.675])
    assert it.sparsity_at(9) == pytest.approx(0.9) and it.sparsity_at(500) == pytest.approx(0.9)
    assert nmt.sparsity_schedule("iterative", 0.5, span_steps=9, rounds=1).sparsity_at(0) == 0.5
    gradual = nmt.sparsity_schedule("gradual", 0.8, span_steps=10, every=5)
    values = [gradual.sparsity_at(t) for t in range(12)]
    assert values[0] == 0.0 and values[10] == 0.8 and values == sorted(values)
    assert len(set(values)) == 3  # updated at steps 0, 5 and 10 only
    with pytest.raises(ValueError, match="unknown schedule"):
        nmt.sparsity_schedule("cyclic", 0.8, span_steps=10)
    with pytest.raises(ValueError, match="span_steps"):
        nmt.sparsity_schedule("gradual", 0.8, span_steps=0)


def test_first_pairs_and_epoch_steps(corpus):
    head = nmt.first_pairs(corpus["train"], 3)
    assert len(head) == 3 and head.src == corpus["train"].src[:3] and head.tgt_raw == corpus["train"].tgt_raw[:3]
    assert len(nmt.first_pairs(corpus["train"], 0)) == len(corpus["train"])
    assert nmt.epoch_steps(corpus, nmt.TrainConfig(batch_size=3)) == math.ceil(len(corpus["train"]) / 3)
    assert nmt.epoch_steps(corpus, nmt.TrainConfig(batch_size=1, max_steps=2)) == 2


@pytest.mark.parametrize("method", nmt.SCHEDULE_METHODS)
def test_train_sparse_reaches_the_exact_target_and_keeps_zeros(corpus, method):
    model = nmt.build_model(TINY_PARAMS, corpus)
    classes = nmt.weight_classes(model)
    config = nmt.TrainConfig(lr=0.01, batch_size=2, max_epochs=2)  # 4 steps an epoch, 8 in all
    schedule = nmt.sparsity_schedule(method, 0.7, span_steps=4, rounds=3, every=2)
    history, m = nmt.train_sparse_(model, corpus, config, schedule, classes=classes, progress=False)
    pruned, total = pruned_count(model, classes)
    assert sum(int((~v).sum()) for v in m.values()) == masks.n_to_prune(total, 0.7)
    assert pruned >= masks.n_to_prune(total, 0.7)  # the masked weights are exactly zero
    assert all(bool((p[~m[n]] == 0).all()) for n, p in model.named_parameters() if n in m)
    assert [h["epoch"] for h in history] == [0, 1, 2] and history[-1]["step"] == 8
    sparsities = [h["sparsity"] for h in history]
    assert sparsities == sorted(sparsities) and sparsities[-1] == 0.7
    assert history[1]["sparsity"] == pytest.approx(schedule.sparsity_at(3))  # the sparsity of the epoch's last step


def test_gradual_pruning_only_ever_removes(corpus, monkeypatch):
    """Every pruning round keeps a subset of the previous round's weights."""
    from prunelab.nmt import retrain

    seen = []
    real = retrain.prune_masks

    def spy(model, sparsity, scheme, classes=None, previous=None, **kw):
        out = real(model, sparsity, scheme, classes=classes, previous=previous, **kw)
        if previous:
            assert all(bool((out[n] <= previous[n]).all()) for n in out)
        seen.append(sparsity)
        return out

    monkeypatch.setattr(retrain, "prune_masks", spy)
    model = nmt.build_model(TINY_PARAMS, corpus)
    schedule = nmt.sparsity_schedule("gradual", 0.6, span_steps=6, every=1)
    nmt.train_sparse_(model, corpus, nmt.TrainConfig(lr=0.01, batch_size=2, max_epochs=2), schedule, progress=False)
    assert len(seen) >= 5 and seen == sorted(seen) and seen[-1] == 0.6


def test_train_sparse_with_fixed_masks_and_bad_input(corpus):
    model = nmt.build_model(TINY_PARAMS, corpus)
    m = nmt.prune_masks(model, 0.5, "random", seed=1)
    history, kept = nmt.train_sparse_(model, corpus, nmt.TrainConfig(lr=0.01, batch_size=4, max_epochs=1), masks=m,
                                      progress=False)
    assert all(torch.equal(kept[n], m[n]) for n in m)
    assert all(bool((p[~m[n]] == 0).all()) for n, p in model.named_parameters() if n in m)
    assert history[-1]["val_ppl"] < history[0]["val_ppl"]
    with pytest.raises(ValueError, match="schedule or masks"):
        nmt.train_sparse_(model, corpus, nmt.TrainConfig(max_epochs=1), progress=False)
    late = nmt.sparsity_schedule("gradual", 0.5, span_steps=100)
    with pytest.raises(ValueError, match="not its target"):
        nmt.train_sparse_(model, corpus, nmt.TrainConfig(batch_size=4, max_epochs=1), late, progress=False)


def paired(delta, low, high, p):
    return PairedBleu(a=20 + delta, b=20.0, delta=delta, ci=(low, high), p_value=p, n_samples=1000)


def test_verdicts():
    assert nmt.margin_verdict(paired(-0.2, -0.4, 0.1, 0.3), 0.5) == "reproduced"
    assert nmt.margin_verdict(paired(-1.0, -1.6, -0.6, 0.01), 0.5) == "not reproduced"
    assert nmt.margin_verdict(paired(-0.5, -1.0, 0.1, 0.2), 0.5) == "within noise"
    assert nmt.beats_verdict(paired(1.0, 0.4, 1.6, 0.01)) == "reproduced"
    assert nmt.beats_verdict(paired(-1.0, -1.6, -0.4, 0.01)) == "not reproduced"
    assert nmt.beats_verdict(paired(0.3, -0.3, 0.9, 0.3)) == "within noise"
    assert nmt.combined_verdict(["reproduced", "reproduced"]) == "reproduced"
    assert nmt.combined_verdict(["reproduced", "within noise"]) == "within noise"
    assert nmt.combined_verdict(["within noise", "not reproduced", "reproduced"]) == "not reproduced"
    with pytest.raises(ValueError):
        nmt.combined_verdict([])
