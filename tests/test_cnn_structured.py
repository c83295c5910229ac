"""The iterative pruning loop: targets, measurements, bad inputs."""
import pytest
import torch

from prunelab import metrics, removal, structured
from prunelab.models import cnn


def _setup():
    torch.manual_seed(0)
    model = cnn.alexnet_small(image_size=16, widths=(6, 6, 8, 8, 6), hidden=16)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 16, 16, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    return model, {"x_train": x[:64], "y_train": y[:64], "x_test": x[64:], "y_test": y[64:]}


def _cfg(**kw):
    return structured.PruneConfig(**{**dict(criterion="taylor", filters_per_step=5, finetune_epochs=1, batch_size=32,
                                            target_flops=0.5, min_filters=2, score_examples=32, latency_batch=2,
                                            latency_repeats=1), **kw})


def test_loop_reaches_flops_target_and_records_each_level():
    model, data = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    levels, per_layer = structured.prune_iteratively(model, data, _cfg())
    assert levels[0]["flops_fraction"] == 1.0 and levels[-1]["flops_fraction"] <= 0.5
    assert levels[-2]["flops_fraction"] > 0.5  # it stopped at the first level under the target
    assert [r["removed"] for r in levels] == [5 * i for i in range(len(levels))]
    assert all(a["flops"] > b["flops"] and a["params"] > b["params"] for a, b in zip(levels, levels[1:]))
    assert all(r["finetune_s_per_epoch"] > 0 and r["latency_cpu_s"] > 0 and r["latency_batch"] == 2 for r in levels)
    assert min(r["filters"] for r in per_layer) >= 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input model is untouched


def test_loop_filter_target_and_determinism():
    model, data = _setup()
    a, _ = structured.prune_iteratively(model, data, _cfg(target_flops=None, target_filters=20, criterion="weight_norm"))
    b, _ = structured.prune_iteratively(model, data, _cfg(target_flops=None, target_filters=20, criterion="weight_norm"))
    assert 34 - a[-1]["removed"] <= 20
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]


def test_unreachable_targets_and_bad_images():
    model, data = _setup()
    with pytest.raises(ValueError, match=r"target_flops=0.001 is unreachable.*min_filters=2"):
        structured.prune_iteratively(model, data, _cfg(target_flops=0.001))
    with pytest.raises(ValueError, match="target_filters=5 is unreachable: between 10"):
        structured.prune_iteratively(model, data, _cfg(target_flops=None, target_filters=5))
    with pytest.raises(ValueError, match="set target_flops"):
        structured.prune_iteratively(model, data, _cfg(target_flops=None))
    bad = {k: (v[..., :12, :12] if k.startswith("x") else v) for k, v in data.items()}
    with pytest.raises(ValueError, match=r"images of shape \(1, 12, 12\) do not fit"):
        structured.prune_iteratively(model, bad, _cfg())
    with pytest.raises(KeyError, match="unknown filter criterion 'l2'"):
        structured.prune_iteratively(model, data, _cfg(criterion="l2"))
    with pytest.raises(ValueError, match="image size divisible by 8"):
        cnn.alexnet_small(image_size=20)
    import torchvision
    with pytest.raises(ValueError, match=r"images of shape \(3, 8, 8\) do not fit AlexNet"):
        cnn.check_input_shape(torchvision.models.alexnet(weights=None, num_classes=3), (3, 8, 8))


def test_loop_does_not_depend_on_the_global_rng_state():
    """Dropout in fine-tuning draws from the global RNG; whatever drew from it before must not matter."""
    model, data = _setup()
    data = {**data, "x_test": data["x_train"], "y_test": data["y_train"]}  # more examples: a finer accuracy
    cfg = _cfg(criterion="taylor", finetune_epochs=4, batch_size=8, lr=0.01)
    a, _ = structured.prune_iteratively(model, data, cfg)
    torch.rand(1000)  # another code path consuming the global RNG
    b, _ = structured.prune_iteratively(model, data, cfg)
    keys = ["accuracy", "accuracy_before_finetune", "params", "flops"]
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def test_counting_the_guard_leaves_the_pruning_unchanged(monkeypatch):
    """`wanted_now` and `empty_rank` only read the scores: the same levels and filters with both stubbed out."""
    model, data = _setup()
    cfg = _cfg(criterion="taylor", target_flops=None, target_filters=16, min_filters=3, filters_per_step=6)
    levels, per_layer = structured.prune_iteratively(model, data, cfg)
    assert any(r["wanted_now"] > r["removed_now"] for r in per_layer)  # the guard acted in this run
    assert all(r["empty_rank"] >= r["filters"] + r["removed_now"] for r in per_layer if r["level"] > 0)
    monkeypatch.setattr(structured, "wanted_per_layer", lambda scores, n: dict.fromkeys(scores, 0))
    monkeypatch.setattr(structured, "empty_ranks", lambda scores: dict.fromkeys(scores, 0))
    levels_, per_layer_ = structured.prune_iteratively(model, data, cfg)
    untimed = ["level", "removed", "accuracy", "accuracy_before_finetune", "params", "flops", "flops_fraction"]
    assert [[r[k] for k in untimed] for r in levels] == [[r[k] for k in untimed] for r in levels_]
    drop = lambda rows: [{k: v for k, v in r.items() if k not in ("wanted_now", "empty_rank")} for r in rows]  # noqa: E731
    assert drop(per_layer) == drop(per_layer_)


def test_prune_to_share_and_train_step_time():
    model = cnn.resnet_small(widths=(8, 16, 16))
    x = torch.rand(4, 1, 16, 16)
    small = structured.prune_to_share(model, x[:1], 0.5)
    before, after = removal.filter_layers(model, x[:1]), removal.filter_layers(small, x[:1])
    assert {n: after[n].n_filters for n in before} == {n: f.n_filters - round(f.n_filters / 2) for n, f in before.items()}
    assert small(x).shape == (4, 10) and structured.prune_to_share(model, x[:1], 0.0)(x).shape == (4, 10)
    threads = torch.get_num_threads()
    seconds = metrics.train_step_seconds(small, x, torch.zeros(4, dtype=torch.long), steps=2, threads=1)
    assert 0 < seconds < 10 and torch.get_num_threads() == threads  # the caller's thread count is restored
