"""The filter-pruning notebooks run at `smoke` through papermill; their tables and claims are checked
against independent recomputations (hand-written oracle, FLOP and parameter formulas, the claims' rules)."""
import re

import pandas as pd
import pytest
import torch
from scipy.stats import mannwhitneyu, spearmanr
from torch import nn

from prunelab import runner, train, transfer

# alexnet_small: conv kernel sizes, and the convs followed by a 2x2 max-pool (prunelab.models.cnn).
KERNELS = {"conv1": 5, "conv2": 5, "conv3": 3, "conv4": 3, "conv5": 3}
POOLED = {"conv1", "conv2", "conv5"}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path))
    return tmp_path


def verdict(holds):
    """The verdict a claim's rule gives (None: inconclusive)."""
    return "inconclusive" if holds is None else "reproduced" if holds else "not reproduced"


def numbers(text):
    """The numbers in a claim's value string, in order ("rho=0.220 (p=0.57)" -> [0.22, 0.57])."""
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)]


def named_numbers(text):
    """"a=0.1; b=0.2" -> {"a": 0.1, "b": 0.2}."""
    return {k: float(v) for k, v in re.findall(r"([\w-]+)=(-?[\d.]+)", text)}


def hand_oracle(model, xs, ys, batch):
    """Signed change of the mean loss when each conv's output channel k alone is zeroed (a ReLU follows each
    conv in alexnet_small, so this is the filter's removal), over the held examples in batches of ``batch``."""
    def mean_loss():
        with torch.no_grad():
            return sum(float(nn.functional.cross_entropy(model(xs[i:i + batch]), ys[i:i + batch], reduction="sum"))
                       for i in range(0, len(xs), batch)) / len(xs)

    base, deltas = mean_loss(), {}
    for name in KERNELS:
        conv = model.get_submodule(name)
        deltas[name] = []
        for k in range(conv.out_channels):
            zero_k = torch.tensor([k], device=xs.device)
            handle = conv.register_forward_hook(lambda _m, _i, out, k=zero_k: out.index_fill(1, k, 0))
            try:
                deltas[name].append(mean_loss() - base)
            finally:
                handle.remove()
    return deltas


def test_30_filter_oracle_smoke(runs):
    run, executed = runner.run_notebook("30_filter_oracle", "smoke", progress=False)
    assert executed and run.complete
    params = runner.resolve("30_filter_oracle", "smoke")
    corr = run.load_table("correlation")
    assert set(corr.reference) == {"oracle", "oracle_loss"}
    assert {"taylor", "weight_norm", "activation", "apoz", "random", "obd"} <= set(corr.criterion)
    # Recompute the weight-norm rows from the cached model against a hand-made oracle.
    model, data, _ = transfer.transferred_model(params, train.pick_device())
    xs, ys = (t[:params["score_examples"]] for t in data.score.tensors)  # the images every criterion scored
    signed = hand_oracle(model, xs, ys, params["score_batch"])
    # Θ_MW (Molchanov et al.): the mean of the filter's squared weights, each layer's vector L2-normalised
    # (Sec. 2.3) when the notebook compares criteria across layers, as its `normalize` parameter says.
    assert params["normalize"] == "l2"
    raw = {n: model.get_submodule(n).weight.detach().flatten(1).pow(2).mean(1) for n in KERNELS}
    norms = {n: (v / v.norm()).tolist() for n, v in raw.items()}
    for reference, oracle in (("oracle", {n: [abs(d) for d in v] for n, v in signed.items()}), ("oracle_loss", signed)):
        rows = corr[(corr.criterion == "weight_norm") & (corr.reference == reference)].set_index("layer")
        assert list(rows.index) == [*KERNELS, "all layers"]
        for layer in KERNELS:
            assert rows.filters[layer] == len(oracle[layer])
            rho = spearmanr(norms[layer], oracle[layer])[0]
            assert rows.spearman[layer] == pytest.approx(rho, abs=1e-5), (reference, layer)
        pooled = spearmanr(sum(norms.values(), []), sum(oracle.values(), []))[0]
        assert rows.spearman["all layers"] == pytest.approx(pooled, abs=1e-5), reference
    first = run.load_table("pruned_first")
    assert first.groupby("criterion").removed.sum().nunique() == 1  # every criterion removes the same count
    # The claim, recomputed from the table: Taylor's pooled Spearman with oracle-abs beats each rival's.
    pooled = corr[(corr.reference == "oracle") & (corr.layer == "all layers")].set_index("criterion").spearman
    claims = pd.read_csv(run.path / "claims.csv", dtype=str).set_index("id")
    assert list(claims.index) == ["taylor-best-oracle-correlation"]
    recorded = named_numbers(claims.value["taylor-best-oracle-correlation"])
    assert list(recorded) == ["taylor", "weight_norm", "activation", "apoz"]
    assert recorded == {c: pytest.approx(pooled[c], abs=1e-3) for c in recorded}
    beats = all(pooled["taylor"] > pooled[c] for c in ("weight_norm", "activation", "apoz"))
    assert claims.verdict["taylor-best-oracle-correlation"] == verdict(beats)
    assert (run.path / "figures" / "oracle_correlation.png").exists()


def alexnet_small_cost(filters, image_size, hidden, classes=10, in_channels=1):
    """(FLOPs of one image, 2 per multiply-add, biases not counted; parameters) of alexnet_small."""
    flops, params, side, cin = 0, 0, image_size, in_channels
    for name, k in KERNELS.items():
        cout = filters[name]
        flops += 2 * cout * cin * k * k * side * side
        params += cout * cin * k * k + cout
        side, cin = (side // 2 if name in POOLED else side), cout
    for a, b in ((cin * side * side, hidden), (hidden, hidden), (hidden, classes)):
        flops, params = flops + 2 * a * b, params + a * b + b
    return flops, params


def test_31_filter_pruning_smoke(runs):
    run, executed = runner.run_notebook("31_filter_pruning", "smoke", progress=False)
    assert executed and run.complete
    params = runner.resolve("31_filter_pruning", "smoke")
    levels, per_layer = run.load_table("levels"), run.load_table("filters_per_layer")
    assert set(levels.criterion) == set(params["criteria"])
    # Each level's FLOPs and parameters follow from the filters it kept; the per-layer record adds up.
    for (crit, level), part in per_layer.groupby(["criterion", "level"]):
        row = levels[(levels.criterion == crit) & (levels.level == level)].iloc[0]
        kept = dict(zip(part.layer, part.filters))
        assert (row.flops, row.params) == alexnet_small_cost(kept, params["image_size"], params["hidden"]), (crit, level)
        if level > 0:
            before = per_layer[(per_layer.criterion == crit) & (per_layer.level == level - 1)]
            assert (before.filters.to_numpy() - part.removed_now.to_numpy() == part.filters.to_numpy()).all()
            assert (part.filters >= params["min_filters"]).all()
        assert row.removed == per_layer[(per_layer.criterion == crit) & (per_layer.level <= level)].removed_now.sum()
    for _, part in levels.groupby("criterion"):
        assert part.flops_fraction.iloc[0] == 1.0 and part.flops_fraction.iloc[-1] <= params["target_flops"]
        assert part.flops.is_monotonic_decreasing and (part.finetune_s_per_epoch > 0).all()
    claims = pd.read_csv(run.path / "claims.csv", dtype=str).set_index("id")
    assert set(claims.index) == {"flops-within-1pt", "taylor-deeper-first", "finetune-time-falls",
                                 "speedup-below-flop-reduction", "taylor-tries-to-empty-layers"}

    # Every criterion starts from the same unpruned net; the notebook takes the first criterion's level 0.
    level0 = levels[levels.level == 0]
    assert level0.flops.nunique() == 1 and level0.accuracy.nunique() == 1
    dense = level0.iloc[0]
    taylor = levels[levels.criterion == "taylor"]
    share = 1 - taylor[taylor.accuracy >= dense.accuracy - 0.01].flops_fraction.min()
    assert numbers(claims.value["flops-within-1pt"]) == [pytest.approx(share, abs=1e-3)]
    assert claims.verdict["flops-within-1pt"] == verdict(share >= 0.5)

    layers = list(KERNELS)
    t = per_layer[per_layer.criterion == "taylor"].assign(depth=lambda d: d.layer.map(layers.index) / (len(layers) - 1))
    quarter = max(1, int(taylor.level.max()) // 4)
    early = t[t.level.between(1, quarter)]
    start = t[t.level == 0]
    early_depth = (early.depth * early.removed_now).sum() / max(early.removed_now.sum(), 1)
    all_depth = (start.depth * start.filters).sum() / start.filters.sum()
    assert numbers(claims.value["taylor-deeper-first"]) == [pytest.approx(early_depth, abs=1e-3),
                                                             pytest.approx(all_depth, abs=1e-3)]
    assert claims.verdict["taylor-deeper-first"] == verdict(early_depth > all_depth)

    last = levels.sort_values("level").groupby("criterion").tail(1).sort_values("criterion")
    rho, p = spearmanr(levels.flops_fraction, levels.finetune_s_per_epoch)
    time_ratio = last.finetune_s_per_epoch.mean() / dense.finetune_s_per_epoch
    rec_rho, rec_p, rec_ratio = numbers(claims.value["finetune-time-falls"])
    assert (rec_rho, rec_ratio) == (pytest.approx(rho, abs=1e-3), pytest.approx(time_ratio, abs=1e-3))
    assert rec_p == pytest.approx(p, rel=0.05)
    noisy = level0.finetune_s_per_epoch.max() / level0.finetune_s_per_epoch.min() > 1.5
    assert claims.verdict["finetune-time-falls"] == verdict(None if noisy else rho > 0 and p < 0.05 and time_ratio < 1)

    first_latency = level0.set_index("criterion").latency_cpu_s
    ratio = {r.criterion: (first_latency[r.criterion] / r.latency_cpu_s) / (dense.flops / r.flops)
             for r in last.itertuples()}
    recorded = named_numbers(claims.value["speedup-below-flop-reduction"])
    assert recorded == {c: pytest.approx(v, abs=1e-3) for c, v in ratio.items()}
    noisy = level0.latency_cpu_s.max() / level0.latency_cpu_s.min() > 1.5
    below = all(v < 1 for v in ratio.values())
    assert claims.verdict["speedup-below-flop-reduction"] == verdict(None if noisy else below)

    # The min_filters guard: each iteration removes as many filters as the criterion chose; it
    # overrides the choice only where a layer would fall under min_filters, and leaves it at that.
    later = per_layer[per_layer.level > 0]
    sums = later.groupby(["criterion", "level"])[["wanted_now", "removed_now"]].sum()
    assert (sums.wanted_now == sums.removed_now).all()
    before = later.filters + later.removed_now
    over = later.wanted_now > later.removed_now
    assert (later.filters[over] == params["min_filters"]).all()
    assert (later.wanted_now[over] > before[over] - params["min_filters"]).all()
    guard = run.load_table("guard_overrides")
    assert len(guard) == over.sum()
    assert (guard.would_empty == (guard.wanted_now >= guard.filters_before)).all()
    summary = run.load_table("guard_by_criterion").set_index("criterion")
    overridden = later[over].groupby("criterion")["level"].nunique().reindex(params["criteria"], fill_value=0)
    runs_ = levels[levels.level > 0].groupby("criterion").size()
    assert summary.overridden.to_dict() == overridden.to_dict()
    # How close each ranking came to emptying a layer: the smallest empty_rank over layers, as a share
    # of the filters before the iteration, per criterion and iteration; Taylor against the others.
    share = later.assign(before=before).groupby(["criterion", "level"]).apply(
        lambda d: d.empty_rank.min() / d.before.sum(), include_groups=False)
    assert ((share > 0) & (share <= 1)).all()
    assert run.load_table("empty_share").set_index(["criterion", "level"]).empty_share.to_dict() == pytest.approx(share.to_dict())
    median = share.groupby("criterion").median()
    assert named_numbers(claims.value["taylor-tries-to-empty-layers"]) == {c: pytest.approx(median[c], abs=1e-3) for c in params["criteria"]}
    tests = {c: (mannwhitneyu(share["taylor"], share[c], alternative="less").pvalue,
                 mannwhitneyu(share["taylor"], share[c], alternative="greater").pvalue)
             for c in params["criteria"] if c != "taylor" and len(share[c]) >= 3} if len(share["taylor"]) >= 3 else {}
    if "random" in tests:  # Taylor against the ranking with no preference for any layer
        lo, hi = tests["random"]
        expected = "reproduced" if lo < 0.05 else "not reproduced" if hi < 0.05 else "within noise"
    else:
        expected = verdict(None)
    assert claims.verdict["taylor-tries-to-empty-layers"] == expected


def test_32_resnet_coupling_smoke(runs):
    run, executed = runner.run_notebook("32_resnet_coupling", "smoke", progress=False)
    assert executed and run.complete
    eq = run.load_table("equivalence")
    assert (eq.max_abs_diff <= 1e-5).all() and (eq.params_fraction < 1).all()
    coupling = run.load_table("coupling")
    assert coupling.coupled.any() and (~coupling.coupled).any()
    claims = pd.read_csv(run.path / "claims.csv").set_index("id")
    assert claims.verdict["coupled-groups-pruned-together"] == "reproduced"
    assert claims.verdict["coupled-conv-alone-breaks"] == "reproduced"

    # Training time against pruning level: both architectures, every level, every repeat; the claim's
    # verdict follows from the table by its stated rule.
    params = runner.resolve("32_resnet_coupling", "smoke")
    timing = run.load_table("training_time")
    assert len(timing) == 2 * len(params["timing_shares"]) * params["timing_repeats"]
    assert set(timing.arch) == {"resnet_small", "alexnet_small"} and (timing.s_per_epoch > 0).all()
    for _, part in timing.groupby("arch"):
        flops = part.groupby("share").flops_fraction.first()
        assert flops.iloc[0] == 1.0 and flops.is_monotonic_decreasing and flops.iloc[-1] < 0.5
    recorded = {a: numbers(v) for a, v in re.findall(r"(\w+): (rho=\S+ \(p=[^)]+\))", claims.value["training-time-falls-per-arch"])}
    verdicts = set()
    for arch, part in timing.groupby("arch"):
        median = part.groupby("share").s_per_epoch.median()
        rho, p = spearmanr(median.index, median.to_numpy())
        assert recorded[arch] == [pytest.approx(rho, abs=1e-3), pytest.approx(p, rel=0.05, abs=1e-12)]
        first, last = part[part.share == median.index[0]].s_per_epoch, part[part.share == median.index[-1]].s_per_epoch
        apart = first.max() < last.min() or last.max() < first.min()
        verdicts.add(verdict(rho < 0) if p < 0.05 and apart else "within noise")
    expected = "reproduced" if verdicts == {"reproduced"} else "not reproduced" if "not reproduced" in verdicts else "within noise"
    assert claims.verdict["training-time-falls-per-arch"] == expected
