"""The attention seq2seq: weight classes, inits, overfitting, decoding, masked training, BLEU, checkpoints."""
import pytest
import sacrebleu
import torch

from prunelab import masks, nmt, results
from prunelab.data import CorpusConfig, load_corpus
from prunelab.models import Seq2Seq, Seq2SeqConfig, beam_search, greedy, init_weights_, weight_classes
from nmt_helpers import TINY, write_parallel

TINY_PARAMS = dict(layers=2, emb_size=24, hidden=48, dropout=0.0, input_feed=True, device="cpu", seed=0,
                   min_freq=1, direction="en-de")


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: much faster for these tiny models on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus(tmp_path):
    return load_corpus(CorpusConfig(folder=str(write_parallel(tmp_path / "tiny")), min_freq=1))


def small(layers=3, input_feed=True):
    return Seq2Seq(Seq2SeqConfig(src_vocab=11, tgt_vocab=13, layers=layers, emb_size=6, hidden=8, input_feed=input_feed))


@pytest.mark.parametrize("layers", [1, 3])
def test_weight_classes_cover_every_weight_matrix_once(layers):
    model = small(layers)
    classes = weight_classes(model)
    named = [n for names in classes.values() for n in names]
    matrices = [n for n, p in model.named_parameters() if p.ndim >= 2]
    assert sorted(named) == sorted(matrices) and len(named) == len(set(named))
    assert all("bias" not in n for n in named)
    assert list(classes)[-2:] == ["attention", "softmax"] and f"decoder layer {layers}" in classes


def test_init_schemes_and_bad_scheme():
    model = small()
    for scheme in nmt.INITS:
        init_weights_(model, scheme, torch.Generator().manual_seed(0))
        assert model.src_embedding.weight[0].abs().sum() == 0  # padding row
    init_weights_(model, "uniform", torch.Generator().manual_seed(0))
    assert all(p.abs().max() <= 0.1 for p in model.parameters())
    a = init_weights_(small(), "xavier_normal", torch.Generator().manual_seed(3)).state_dict()
    b = init_weights_(small(), "xavier_normal", torch.Generator().manual_seed(3)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="'orthogonal'.*uniform, kaiming_uniform"):
        init_weights_(model, "orthogonal")


@pytest.mark.parametrize("input_feed", [True, False])
def test_step_by_step_decoder_matches_teacher_forcing(input_feed):
    model = small(2, input_feed).eval()
    src, src_len, tgt = torch.tensor([[4, 5, 6], [7, 8, 0]]), torch.tensor([3, 2]), torch.tensor([[2, 5, 6], [2, 9, 4]])
    logits = model(src, src_len, tgt).log_softmax(-1)
    memory, state, mask = model.encode(src, src_len)
    feed = memory.new_zeros(2, 8)
    for t in range(3):
        logp, state, feed = model.step(tgt[:, t], state, feed, memory, mask)
        assert torch.allclose(logp, logits[:, t], atol=1e-5)


def test_overfits_tiny_corpus_and_decoding_reproduces_it(corpus):
    model = nmt.build_model(TINY_PARAMS, corpus)
    config = nmt.TrainConfig(lr=0.02, batch_size=8, max_epochs=100, patience=0, lr_decay=1.0, seed=0)
    history = nmt.train_(model, corpus, config, progress=False)
    assert history[-1]["train_loss"] < 0.05 and min(h["val_ppl"] for h in history) < 1.1
    batch = next(corpus["train"].batches(8))
    targets = [corpus["train"].tgt[i] for i in batch.index.tolist()]
    assert greedy(model, batch.src, batch.src_len) == targets
    assert beam_search(model, batch.src, batch.src_len, beam=5) == targets
    result = nmt.bleu(model, corpus, "test", beam=5)
    assert result.score == pytest.approx(100.0) and result.hypotheses[0] == "ein hund rennt."
    assert "case:lc" in result.signature


def test_beam_one_equals_greedy_and_bad_beam(corpus):
    model = nmt.build_model(TINY_PARAMS, corpus)
    batch = next(corpus["train"].batches(8))
    assert beam_search(model, batch.src, batch.src_len, beam=1, max_len=7) == greedy(model, batch.src, batch.src_len, max_len=7)
    with pytest.raises(ValueError, match="beam=0"):
        beam_search(model, batch.src, batch.src_len, beam=0)


def test_sacrebleu_agreement_on_known_strings():
    assert nmt.bleu_score(["Two dogs play in the snow."], ["two dogs play in the snow."])[0] == pytest.approx(100.0)
    hyps = ["a man rides a red bike .", "two dogs play in the snow ."]
    refs = ["a man is riding a red bike .", "two dogs are playing in the snow ."]
    score, signature = nmt.bleu_score(hyps, refs)
    assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score) == pytest.approx(42.3837, abs=1e-3)
    assert nmt.bleu_score(["the cat sat on the mat"], ["the cat is on the mat"])[0] == pytest.approx(37.9918, abs=1e-3)
    assert signature.startswith("nrefs:1|case:lc")
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        nmt.bleu_score(hyps, refs[:1])


def assert_flat_weights_are_parameters(model):
    """Each LSTM's flat weights (the list handed to its kernels) are its parameters, not copies."""
    for lstm in (model.encoder, model.decoder):
        params = dict(lstm.named_parameters())
        assert len(lstm._flat_weights) == len(params)
        for name, flat in zip(lstm._flat_weights_names, lstm._flat_weights):
            assert flat.data_ptr() == params[name].data_ptr(), name


def test_masked_training_keeps_pruned_lstm_weights_zero(corpus):
    model = nmt.build_model(TINY_PARAMS, corpus)
    m = nmt.prune_masks(model, 0.7, "class-blind")
    nmt.train_(model, corpus, nmt.TrainConfig(lr=0.01, batch_size=4, max_epochs=2, patience=0), masks=m, progress=False)
    params = dict(model.named_parameters())
    for name in ("encoder.weight_hh_l1", "decoder.weight_ih_l0", "generator.weight"):
        assert (~m[name]).any() and (params[name][~m[name]] == 0).all()
        assert params[name][m[name]].ne(0).float().mean() > 0.9
    report = masks.sparsity_report(model, m)
    assert report.sparsity.iloc[-1] == pytest.approx(0.7, abs=1e-3)
    assert_flat_weights_are_parameters(model)
    # The LSTMs compute with the masked weights: the same output as a freshly built model loaded with them ...
    batch = next(corpus["val"].batches(8))
    args = (batch.src, batch.src_len, batch.tgt_in)
    fresh = nmt.load_state_(nmt.build_model(TINY_PARAMS, corpus), model.state_dict()).eval()
    assert_flat_weights_are_parameters(fresh)
    with torch.no_grad():
        before = model(*args)
        assert torch.equal(before, fresh(*args))
        # ... and pruning further in place reaches the LSTM kernels exactly as loading those weights does.
        stricter = nmt.prune_masks(model, 0.9, "class-blind")
        assert (~stricter["encoder.weight_ih_l0"] & m["encoder.weight_ih_l0"]).any()
        masks.apply_masks_(model, stricter)
        assert_flat_weights_are_parameters(model)
        after = model(*args)
        assert not torch.allclose(after, before, atol=1e-4)
        assert torch.equal(after, nmt.load_state_(fresh, model.state_dict())(*args))


def test_masked_training_clips_the_masked_networks_gradient(corpus):
    """At 90% sparsity one SGD step of lr 1 clipped at c moves the weights by exactly c: the
    clipped norm counts only kept weights (the pruned ones' gradients would shrink the step)."""
    import importlib

    nmt_train = importlib.import_module("prunelab.nmt.train")
    model = nmt.build_model(TINY_PARAMS, corpus)
    model.generator.bias.requires_grad_(False)  # at init its gradient dwarfs every weight's
    m = nmt.prune_masks(model, 0.9, "random")  # pruned weights with gradients as large as the kept ones'
    pairs = masks.bind_masks(model, m)
    masks.apply_masks_(pairs)
    config = nmt.TrainConfig(optimizer="sgd", lr=1.0, batch_size=4, clip=1e-4, max_steps=1)
    batch = next(corpus["train"].batches(config.batch_size, torch.Generator().manual_seed(0)))  # _epoch's first
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(nmt.batch_loss(model, batch), [p for _, p in named])
    kept = torch.cat([(g[m[n]] if n in m else g).flatten() for (n, _), g in zip(named, grads)]).norm()
    assert kept > 10 * config.clip and torch.cat([g.flatten() for g in grads]).norm() > 1.5 * kept
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD([p for _, p in named], lr=config.lr)
    nmt_train._epoch(model, corpus["train"], opt, config, pairs, torch.Generator().manual_seed(0), False, "", False)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert float(step.norm()) == pytest.approx(config.clip, rel=1e-3)  # clip_grad_norm_ divides by norm + 1e-6


def test_prune_masks_bad_input(corpus):
    model = nmt.build_model(TINY_PARAMS, corpus)
    with pytest.raises(ValueError, match="sparsity=1.5"):
        nmt.prune_masks(model, 1.5)
    with pytest.raises(KeyError, match="'decoder.weight_ih_l9'"):
        nmt.prune_masks(model, 0.5, classes={"decoder layer 10": ["decoder.weight_ih_l9"]})
    with pytest.raises(ValueError, match="'class-fair'"):
        nmt.prune_masks(model, 0.5, "class-fair")
    with pytest.raises(ValueError, match="'adagrad'"):
        nmt.TrainConfig(optimizer="adagrad")


def test_training_is_deterministic_on_cpu(corpus):
    states = []
    for _ in range(2):
        model = nmt.build_model({**TINY_PARAMS, "dropout": 0.3}, corpus)
        nmt.train_(model, corpus, nmt.TrainConfig(lr=0.01, batch_size=4, max_epochs=1), progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_baseline_is_cached_and_a_mismatching_checkpoint_is_refused(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path / "runs"))
    params = {**TINY_PARAMS, "folder": corpus.config.folder, "max_epochs": 1, "batch_size": 8}
    first = nmt.baseline(params, corpus, progress=False)
    path = results.checkpoint_path("nmt-baseline", nmt.baseline_key(params))
    assert path.is_file() and len(first.history) == 2
    again = nmt.baseline(params, corpus, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    other = nmt.build_model({**params, "hidden": 16}, corpus)
    with pytest.raises(ValueError, match="does not match.*encoder.weight_hh_l0: checkpoint \\(192, 48\\) vs model \\(64, 16\\)"):
        nmt.load_state_(other, first.model.state_dict())
    torch.save({**torch.load(path, weights_only=True), "state_dict": other.state_dict()}, path)
    with pytest.raises(ValueError, match="checkpoint does not match the model parameters"):
        nmt.baseline(params, corpus, progress=False)
    init = first.initial_model()
    assert not torch.equal(init.generator.weight, first.model.generator.weight)
