"""Notebooks 20 and 21 at `smoke` through papermill, and the study glue of `prunelab.obd_snip`."""
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

nmt = pytest.importorskip("prunelab.nmt", reason="needs the NMT study (branch nmt)")

from prunelab import obd_snip, runner  # noqa: E402
from prunelab.sparse_init import prune_at_init_  # noqa: E402

DATA = Path(os.environ.get("PRUNELAB_MULTI30K") or Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k")
needs_data = pytest.mark.skipif(not (DATA / "train.en.gz").exists(), reason=f"no Multi30k copy at {DATA}")


def test_class_pruning_and_overlap():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([True, True])}
    table = obd_snip.class_pruning(masks, {"emb": ["a"], "out": ["b"]})
    assert table.pruned_pct.tolist() == [75.0, 0.0]
    # Jaccard overlap of the kept weights over all parameters: kept by both / kept by either.
    other = {"a": torch.tensor([False, True, False, False]), "b": torch.tensor([True, True])}
    assert obd_snip.mask_overlap(masks, other) == obd_snip.mask_overlap(other, masks) == pytest.approx(2 / 4)
    wide = {"a": torch.tensor([True, True, True, False]), "b": torch.tensor([False, True])}
    assert obd_snip.mask_overlap(masks, wide) == pytest.approx(2 / 5)  # both: a0, b1; either: a0-a2, b0, b1
    none = {"a": torch.zeros(4, dtype=torch.bool), "b": torch.zeros(2, dtype=torch.bool)}
    assert obd_snip.mask_overlap(none, none) == 1.0 and obd_snip.mask_overlap(masks, none) == 0.0
    with pytest.raises(ValueError, match=r"'grasp'.*magnitude, random, obd, snip"):
        obd_snip.check_methods(["obd", "grasp"])


def test_unknown_init_is_refused():
    model = nmt.Seq2Seq(nmt.Seq2SeqConfig(src_vocab=10, tgt_vocab=10, layers=1, emb_size=4, hidden=4))
    with pytest.raises(ValueError, match=r"'he'.*uniform, kaiming_uniform"):
        from prunelab.models.seq2seq import init_weights_
        init_weights_(model, "he")


@needs_data
def test_20_obd_snip_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path))
    monkeypatch.setenv("PRUNELAB_MULTI30K", str(DATA))
    run, executed = runner.run_notebook("20_obd_snip", "smoke", progress=False)
    assert executed and run.complete
    table = run.load_table("no_retraining")
    params = runner.resolve("20_obd_snip", "smoke")
    assert set(table.method) == set(params["methods"])
    assert len(table) == len(params["methods"]) * len(params["sparsities"])
    assert (table.achieved - table.sparsity).abs().max() < 0.01  # masks hold after SNIP's training
    info = run.load_table("saliency_info").set_index("method")
    assert info.loc["obd", "examples"] == params["saliency_batch_size"] and info.loc["obd", "estimator"] == "fisher"
    per_class = run.load_table("pruned_per_class")
    assert set(per_class.sparsity) == set(params["class_sparsities"])
    assert len(run.load_table("retrained")) == params["retrain_top"] * len(params["retrain_sparsities"])
    # Class-blind magnitude pruning of the cached baseline, by hand: the per-class table's magnitude rows.
    model = nmt.baseline(params, progress=False).model
    classes = nmt.weight_classes(model)
    weights = dict(model.named_parameters())
    names = [n for group in classes.values() for n in group]
    owner = torch.cat([torch.full((weights[n].numel(),), i) for i, n in enumerate(names)])
    order = torch.cat([weights[n].detach().abs().flatten().cpu() for n in names]).argsort(stable=True)
    for sparsity, part in per_class[per_class.method == "magnitude"].groupby("sparsity"):
        pruned = owner[order[:math.floor(len(order) * sparsity + 0.5)]].bincount(minlength=len(names))
        expected = [sum(int(pruned[names.index(n)]) for n in classes[c]) for c in part.weight_class]
        assert part.pruned.tolist() == expected, sparsity
    # Both claims, recomputed from the run's own tables.
    claims = pd.read_csv(run.path / "claims.csv", dtype=str).set_index("id")
    assert set(claims.index) == {"snip-best-at-extreme-sparsity", "snip-best-at-extreme-sparsity-retrained",
                                 "obd-snip-prune-embeddings-more"}
    dense = run.memo("dense", {}, lambda: pytest.fail("the dense baseline's scores were not cached"))
    # Claim 1: SNIP against every other method at the two highest sparsities, by BLEU where both reach the
    # floor, else by perplexity; holds at a sparsity when it beats all beyond noise, fails when any beats it.
    tests = run.load_table("paired_tests")
    extreme = sorted(params["sparsities"])[-2:]
    assert sorted(set(tests.sparsity)) == extreme and set(tests.a) == {"snip"}
    assert len(tests) == 2 * (len(params["methods"]) - 1)
    bleu = table.set_index(["method", "sparsity"]).bleu
    outcomes = {}
    for s, part in tests.groupby("sparsity"):
        steps = []
        for t in part.itertuples():
            both = min(bleu["snip", s], bleu[t.b, s]) >= params["bleu_floor"]
            assert t.metric == ("bleu" if both else "ppl"), t
            assert t.score_b == pytest.approx(bleu[t.b, s] if both else table.set_index(["method", "sparsity"]).ppl[t.b, s],
                                              rel=1e-4)
            ahead = t.delta > 0 if both else t.delta < 0
            steps.append("within noise" if not (t.p_value < params["significance"] and t.delta != 0)
                         else "holds" if ahead else "fails")
            assert t.outcome == steps[-1]
        outcomes[s] = "fails" if "fails" in steps else "holds" if set(steps) == {"holds"} else "within noise"
    expected = ("inconclusive" if dense["bleu"] < params["claims_min_bleu"] else "not reproduced"
                if "fails" in outcomes.values() else "reproduced" if 2 * list(outcomes.values()).count("holds") >= 2
                else "within noise")
    assert claims.loc["snip-best-at-extreme-sparsity"].verdict == expected
    # Claim 1 after the same retraining: SNIP against the other retrained methods at the retrained extreme sparsities.
    retrained = run.load_table("retrained").set_index(["method", "sparsity"])
    methods = sorted(set(retrained.index.get_level_values("method")))
    at = [s for s in extreme if s in params["retrain_sparsities"]]
    rt = run.load_table("paired_tests_retrained") if "snip" in methods else pd.DataFrame()
    verdict_rt = claims.loc["snip-best-at-extreme-sparsity-retrained"].verdict
    if "snip" not in methods:
        assert verdict_rt == "inconclusive" and "SNIP not among" in claims.loc["snip-best-at-extreme-sparsity-retrained"].detail
    else:
        assert sorted(set(rt.sparsity)) == at and len(rt) == len(at) * (len(methods) - 1)
        outcomes = {}
        for s, part in rt.groupby("sparsity"):
            for t in part.itertuples():
                both = min(retrained.bleu["snip", s], retrained.bleu[t.b, s]) >= params["bleu_floor"]
                assert t.metric == ("bleu" if both else "ppl")
                assert t.score_a == pytest.approx((retrained.bleu if both else retrained.ppl)["snip", s], rel=1e-4)
                assert t.score_b == pytest.approx((retrained.bleu if both else retrained.ppl)[t.b, s], rel=1e-4)
            steps = list(part.outcome)
            outcomes[s] = "fails" if "fails" in steps else "holds" if set(steps) == {"holds"} else "within noise"
        expected = ("inconclusive" if dense["bleu"] < params["claims_min_bleu"] else "not reproduced"
                    if "fails" in outcomes.values() else "reproduced" if 2 * list(outcomes.values()).count("holds") >= len(outcomes)
                    else "within noise")
        assert verdict_rt == expected
    emb = per_class[per_class.weight_class.str.endswith("embedding")]
    share = {key: 100 * part.pruned.sum() / part.numel.sum() for key, part in emb.groupby(["method", "sparsity"])}
    gap = min(share[m, s] - share["magnitude", s] for m in ("obd", "snip") for s in params["class_sparsities"])
    claim = claims.loc["obd-snip-prune-embeddings-more"]
    assert float(claim.value) == pytest.approx(gap, abs=0.06)
    assert claim.verdict == ("reproduced" if gap > 0 else "not reproduced")
    assert (run.path / "figures" / "bleu_ppl_vs_sparsity.png").exists()


@pytest.fixture
def torch_threads():
    """Restores torch's CPU thread count after a test that sets it (as the notebooks do from `threads`)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@needs_data
def test_21_snip_ablations_smoke(tmp_path, monkeypatch, torch_threads):
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path))
    monkeypatch.setenv("PRUNELAB_MULTI30K", str(DATA))
    run, executed = runner.run_notebook("21_snip_ablations", "smoke", progress=False)
    assert executed and run.complete
    params = runner.resolve("21_snip_ablations", "smoke")
    by_init = run.load_table("init_ablation")
    assert len(by_init) == len(params["inits"]) * len(params["seeds"])
    by_data = run.load_table("data_ablation")
    assert len(by_data) == len(params["data_batch_sizes"]) * len(params["data_fractions"]) * len(params["data_seeds"])
    one = by_data[by_data.fraction == 0]
    assert (one.batches == 1).all() and (one.examples == one.batch_size).all()
    # Each row's recorded overlap against a recomputation: the row's SNIP mask at init (its seed, batch size and
    # number of batches), Jaccard by hand with the most-data reference mask the run saved for that seed.
    torch_threads(params["threads"] or torch.get_num_threads())  # the notebook's thread count: the same sums
    corpus = nmt.load_data(params)
    differ = 0
    for row in by_data.itertuples():
        model = nmt.build_model(params, corpus, init=params["init"], seed=row.seed)
        classes = nmt.weight_classes(model)
        batches = obd_snip.saliency_batches(corpus, row.batch_size, row.batches, seed=row.seed)
        mask, _ = prune_at_init_(model, params["sparsity"], loss_fn=nmt.batch_loss, batches=batches,
                                 names=obd_snip.class_names(classes), classes=classes)
        reference = torch.load(run.path / "masks" / f"reference-s{row.seed}.pt", weights_only=True)
        assert set(reference) == set(mask)
        both = sum(int((mask[n] & reference[n]).sum()) for n in mask)
        either = sum(int((mask[n] | reference[n]).sum()) for n in mask)
        assert row.overlap_with_most == pytest.approx(both / either, abs=1e-6), row
        differ += both < either
    assert differ >= len(params["data_seeds"])  # one batch gives other masks than the most data does
    claims = pd.read_csv(run.path / "claims.csv").set_index("id")
    assert set(claims.index) == {"snip-init-matters", "snip-variance-scaled-best", "snip-1-20-of-data-enough"}
    # The verdicts, recomputed from the tables: BLEU where the SNIP models reach claims_min_bleu, else test
    # perplexity (lower is better); "holds" only where a difference exceeds the seed range (max - min).
    dense = run.memo("dense", {}, lambda: pytest.fail("the dense baseline's scores were not cached"))
    on_bleu = by_init.groupby("init").bleu.mean().max() >= params["claims_min_bleu"]
    metric, sign = ("bleu", 1) if on_bleu else ("ppl", -1)
    assert ("judged on test BLEU" if on_bleu else "judged on test perplexity") in claims.loc["snip-init-matters", "detail"]
    stats = by_init.groupby("init")[metric].agg(["mean", "min", "max"])
    rng = stats["max"] - stats["min"]
    if dense["bleu"] < params["claims_min_bleu"]:
        assert set(claims.verdict) == {"inconclusive"}
    else:
        best, worst = (sign * stats["mean"]).idxmax(), (sign * stats["mean"]).idxmin()
        beyond = abs(stats["mean"][best] - stats["mean"][worst]) > max(rng[best], rng[worst])
        assert claims.loc["snip-init-matters", "verdict"] == ("reproduced" if beyond else "within noise")
        top = (sign * stats["mean"].drop("uniform")).idxmax()
        lead = sign * (stats["mean"][top] - stats["mean"]["uniform"])
        expected = ("within noise" if abs(lead) <= max(rng[top], rng["uniform"]) else
                    "reproduced" if lead > 0 else "not reproduced")
        assert claims.loc["snip-variance-scaled-best", "verdict"] == expected
        part = by_data[by_data.batch_size == params["data_batch_sizes"][0]]
        a = part[part.fraction == params["claim_fraction"]][metric]
        z = part[part.fraction == part.fraction.max()][metric]
        gap, noise = sign * (a.mean() - z.mean()), max(a.max() - a.min(), z.max() - z.min())
        assert claims.loc["snip-1-20-of-data-enough", "verdict"] == ("reproduced" if gap >= -noise else "not reproduced")
    assert f"largest fraction tried, {max(params['data_fractions'])}" in claims.loc["snip-1-20-of-data-enough", "metric"]


@needs_data
def test_22_pruning_at_init_smoke(tmp_path, monkeypatch, torch_threads):
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path))
    monkeypatch.setenv("PRUNELAB_MULTI30K", str(DATA))
    run, executed = runner.run_notebook("22_pruning_at_init", "smoke", progress=False)
    assert executed and run.complete
    params = runner.resolve("22_pruning_at_init", "smoke")
    table = run.load_table("results")
    n_s, n_seeds = len(params["sparsities"]), len(params["seeds"])
    plain = table[table.control == "none"]
    assert set(plain.method) == {*params["methods"], "magnitude+retrain"}
    assert len(table) == (len(params["methods"]) + 2 * len(params["control_methods"])) * n_s * n_seeds + n_s
    per_class = run.load_table("pruned_per_class")
    from prunelab.masks import n_to_prune
    for (m, c, s, sd), d in per_class.groupby(["method", "control", "sparsity", "seed"]):
        # Exact counts (one rounding rule over all classed weights); ERK rounds each matrix on its own.
        slack = len(d) * 2 if m == "random_erk" else 0
        assert abs(d.pruned.sum() - n_to_prune(d.numel.sum(), s)) <= slack, (m, c, s)
    # Shuffle keeps each class's count (it permutes within matrices); random_ratios copies the best method's.
    key = ["weight_class", "sparsity", "seed"]
    for m in params["control_methods"]:
        a = per_class[(per_class.method == m) & (per_class.control == "none")].set_index(key).pruned
        b = per_class[(per_class.method == m) & (per_class.control == "shuffle")].set_index(key).pruned
        assert a.sort_index().tolist() == b.sort_index().tolist(), m
    claims = pd.read_csv(run.path / "claims.csv", dtype=str).set_index("id")
    assert set(claims.index) == {"pai-shuffle-does-not-hurt", "pai-below-magnitude-retrain", "synflow-avoids-layer-collapse",
                                 "grasp-beats-snip-high-sparsity", "random-at-best-ratios-within-noise"}
    best = claims.loc["random-at-best-ratios-within-noise", "detail"].split(": ")[1].split(";")[0]
    top = max(params["sparsities"])
    ppl = table[table.control == "none"].set_index(["method", "sparsity"]).ppl
    scored = [m for m in params["methods"] if not m.startswith("random")]
    assert best == min(scored, key=lambda m: ppl[m, top])
    ratios_of = a = per_class[(per_class.method == best) & (per_class.control == "none")].set_index(key).pruned
    rnd = per_class[per_class.method == "random_ratios"].set_index(key).pruned
    assert rnd.sort_index().tolist() == ratios_of.sort_index().tolist()
    # Every verdict recomputed from the tables.
    dense = run.memo("dense", {}, lambda: pytest.fail("the dense baseline's scores were not cached"))
    ok = dense["bleu"] >= params["claims_min_bleu"]
    tests = run.load_table("paired_tests")
    bleu = table.set_index(["method", "control", "sparsity"]).bleu
    for t in tests.itertuples():  # each test on BLEU only where both systems reach the floor
        name = lambda x: x if x == "magnitude+retrain" else eval(x)  # noqa: E731 - "('snip', 'none')"
        sa, sb = name(t.a), name(t.b)
        ba = bleu["magnitude+retrain", "none", t.sparsity] if sa == "magnitude+retrain" else bleu[sa[0], sa[1], t.sparsity]
        both = min(ba, bleu[sb[0], sb[1], t.sparsity]) >= params["bleu_floor"]
        assert t.metric == ("bleu" if both else "ppl")
        beyond = t.p_value < params["significance"] and t.delta != 0
        a_ahead = t.delta > 0 if t.metric == "bleu" else t.delta < 0
        assert t.outcome == ("noise" if not beyond else "a" if a_ahead else "b")

    def none_a(claim):
        part = tests[tests.claim == claim]
        return ("inconclusive" if not ok or not len(part) else
                "reproduced" if (part.outcome != "a").all() else "not reproduced")

    def ordering(claim, sparsities):
        part = tests[(tests.claim == claim) & tests.sparsity.isin(sparsities)]
        steps = [{"a": "holds", "b": "fails"}.get(o, "within noise") for o in part.outcome]
        if not ok or not steps:
            return "inconclusive"
        return ("not reproduced" if "fails" in steps else "reproduced" if 2 * steps.count("holds") >= len(steps)
                else "within noise")

    assert claims.loc["pai-shuffle-does-not-hurt", "verdict"] == none_a("F1")
    assert claims.loc["random-at-best-ratios-within-noise", "verdict"] == none_a("R1")
    assert claims.loc["pai-below-magnitude-retrain", "verdict"] == ordering("F2", params["sparsities"])
    assert claims.loc["grasp-beats-snip-high-sparsity", "verdict"] == ordering("G1", sorted(params["sparsities"])[-2:])
    collapse = run.load_table("collapse")
    at_top = collapse[(collapse.sparsity == top) & (collapse.control == "none")].groupby("method").collapsed
    holds = at_top.max()["synflow"] == 0 and at_top.min()["snip"] > 0 and at_top.min()["grasp"] > 0
    assert claims.loc["synflow-avoids-layer-collapse", "verdict"] == ("reproduced" if holds else "not reproduced")
    assert len(tests[tests.claim == "F2"]) == len(params["methods"]) * n_s * n_seeds
    for fig in ("bleu_ppl_vs_sparsity", "pruned_per_class", "controls"):
        assert (run.path / "figures" / f"{fig}.png").exists()
