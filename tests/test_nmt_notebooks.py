"""The NMT notebooks end to end at smoke (papermill), sharing one cached baseline."""
import tomllib

import pandas as pd
import pytest

from prunelab import nmt, results, runner
from nmt_helpers import multi30k_root

STEMS = ("10_nmt_baseline", "11_nmt_schemes", "12_nmt_retrain", "13_nmt_model_size")


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    root = multi30k_root()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_RUNS", str(tmp_path_factory.mktemp("runs")))
        mp.setenv("PRUNELAB_MULTI30K", str(root))
        runs = {stem: runner.run_notebook(stem, "smoke", progress=False) for stem in STEMS}
        checkpoints = sorted((results.runs_root() / "checkpoints").glob("nmt-baseline-*.pt"))
    return runs, checkpoints


def test_profiles_share_the_nmt_parameters_and_baseline():
    common = tomllib.loads((runner.notebooks_dir() / "profiles" / "_nmt.toml").read_text())["common"]
    assert tuple(common) == nmt.PARAMS
    for profile in runner.PROFILES:
        keys = {stem: nmt.baseline_key(runner.resolve(stem, profile)) for stem in STEMS}
        assert all(key == keys["10_nmt_baseline"] for key in keys.values())
    assert runner.resolve("10_nmt_baseline", "paper")["device"] == "auto"


def test_notebooks_run_at_smoke_and_share_one_checkpoint(smoke_runs):
    runs, checkpoints = smoke_runs
    assert all(executed and run.complete for run, executed in runs.values())
    # notebook 10 trained the profile's baseline, 11-13 loaded it; 13 trained one per other width
    widths = runs["13_nmt_model_size"][0].params["widths"]
    own = runner.resolve("10_nmt_baseline", "smoke")["hidden"]
    assert len(checkpoints) == 1 + len(set(widths) - {own})


def test_baseline_tables(smoke_runs):
    run = smoke_runs[0]["10_nmt_baseline"][0]
    scores = run.load_table("scores").set_index("metric").value
    assert 1 < scores["val_perplexity"] < 300 and 0 <= scores["test_bleu_greedy"] <= 100
    assert scores["prunable_weights"] < scores["parameters"]
    history = run.load_table("history")
    assert history.val_ppl.iloc[-1] < history.val_ppl.iloc[0]  # training helped
    assert run.load_table("bleu_signature").signature[0].startswith("nrefs:1|case:lc")
    assert (run.path / "figures" / "training_curves.png").is_file()


def test_schemes_tables(smoke_runs):
    run = smoke_runs[0]["11_nmt_schemes"][0]
    sweep = run.load_table("sweep")
    assert set(sweep.scheme) == set(run.params["schemes"])
    assert (sweep.achieved - sweep.sparsity).abs().max() < 1e-3
    assert sweep.groupby("scheme").test_ppl.apply(lambda s: s.iloc[-1] > s.iloc[0]).all()  # 90% hurts
    per_class = run.load_table("pruned_per_class")
    uniform = per_class[per_class.scheme == "class-uniform"].pruned_pct
    assert uniform.sub(90).abs().max() < 0.5
    alone = run.load_table("class_alone")
    assert len(alone) == 8 * len(run.params["class_fractions"])
    assert (alone.largest_removed > 0).all()
    for name in ("bleu_ppl_vs_sparsity", "pruned_per_class", "class_alone_ppl_change", "class_alone_vs_magnitude",
                 "median_bleu_by_scheme", "mask_heatmaps"):
        assert (run.path / "figures" / f"{name}.png").is_file()
    claims = pd.read_csv(run.path / "claims.csv")
    assert set(claims.id) == {"nmt-scheme-order", "nmt-magnitude-beats-random", "nmt-blind-40-free", "nmt-class-importance"}
    assert set(claims.verdict) == {"inconclusive"}  # the smoke baseline cannot decide
    # The paired tests behind claims 1-3, recomputed from the run's own table and sweep.
    tests = run.load_table("paired_tests")
    alpha, floor = run.params["significance"], run.params["bleu_floor"]
    bleu = sweep.set_index(["scheme", "sparsity"]).test_bleu
    for t in tests.itertuples():
        b_sparsity = 0.0 if t.b == "dense" else t.sparsity
        b_bleu = sweep.test_bleu[sweep.sparsity == 0].iloc[0] if t.b == "dense" else bleu[t.b, b_sparsity]
        assert t.metric == ("bleu" if min(bleu[t.a, t.sparsity], b_bleu) >= floor else "ppl"), t
        assert t.ci_lo <= t.delta <= t.ci_hi and 0 < t.p_value <= 1
        ahead = t.delta > 0 if t.metric == "bleu" else t.delta < 0
        assert t.outcome == ("within noise" if not (t.p_value < alpha and t.delta != 0) else "holds" if ahead else "fails")
    order = tests[tests.claim == "nmt-scheme-order"]
    assert len(order) == 2 * (len(run.params["sparsities"]) - 1)  # two steps of the order per sparsity > 0
    assert len(tests[tests.claim == "nmt-blind-40-free"]) == 1


def test_order_and_significance_verdict_rules():
    # Claims 1-2 of notebook 11: fails beyond noise anywhere -> not reproduced; holds at half or more -> reproduced.
    assert results.ordering_verdict({0.4: "holds", 0.5: "fails", 0.6: "holds"}) == "not reproduced"
    assert results.ordering_verdict({0.4: "holds", 0.5: "within noise"}) == "reproduced"
    assert results.ordering_verdict({0.4: "holds", 0.5: "within noise", 0.6: "within noise"}) == "within noise"
    assert results.ordering_verdict({}) == "inconclusive"
    # The direction of a paired comparison: BLEU higher is better, perplexity lower.
    from prunelab.nmt.evaluate import better, paired_perplexity
    assert better(dict(metric="bleu", delta=1.0, p_value=0.01)) == "a"
    assert better(dict(metric="ppl", delta=1.0, p_value=0.01)) == "b"
    assert better(dict(metric="bleu", delta=1.0, p_value=0.2)) is None
    same = paired_perplexity([1.0, 2.0, 3.0] * 20, [1.0, 2.0, 3.0] * 20, [2] * 60)
    assert same.delta == 0 and same.better() is None
    lower = paired_perplexity([0.5, 1.0, 1.5] * 20, [1.0, 2.0, 3.0] * 20, [2] * 60)
    assert lower.better() == "a" and lower.ci[1] < 0


def test_sentence_nll_sums_to_perplexity(smoke_runs, monkeypatch):
    import math

    from prunelab.nmt.evaluate import sentence_nll

    runs, checkpoints = smoke_runs
    monkeypatch.setenv("PRUNELAB_RUNS", str(checkpoints[0].parent.parent))  # the cached smoke baseline
    monkeypatch.setenv("PRUNELAB_MULTI30K", str(multi30k_root()))
    params = runs["11_nmt_schemes"][0].params
    base = nmt.baseline(params, progress=False)
    nll, tokens = sentence_nll(base.model, base.corpus["test"])
    assert len(nll) == len(tokens) == len(base.corpus["test"]) and min(tokens) >= 1
    assert math.exp(sum(nll) / sum(tokens)) == pytest.approx(nmt.perplexity(base.model, base.corpus["test"]), rel=1e-5)


def test_retrain_tables(smoke_runs):
    run = smoke_runs[0]["12_nmt_retrain"][0]
    params = run.params
    table = run.load_table("retrain")
    assert table.zeros_kept.all()
    assert set(table.method) == {"baseline", "pruned", "prune+retrain", "random+retrain", "sparse-from-scratch",
                                 "iterative", "gradual"}
    sparse = table[table.method != "baseline"]
    assert (sparse.achieved - sparse.sparsity).abs().max() < 1e-4  # every schedule reached its target
    ppl = table.pivot_table(index="sparsity", columns="method", values="test_ppl")
    assert (ppl.loc[0.8, "prune+retrain"] < ppl.loc[0.8, "pruned"])  # retraining recovers perplexity
    epochs = table.set_index(["method", "sparsity"]).epochs
    base_epochs = epochs["baseline", 0.0]
    assert epochs["sparse-from-scratch", 0.8] == base_epochs + params["retrain_epochs"]  # the same total budget
    assert (epochs[["prune+retrain", "iterative", "gradual"]] == params["retrain_epochs"]).all()
    history = run.load_table("history")
    final = history[history.method.isin(["iterative", "gradual"])].groupby(["method", "sparsity"]).sparsity_now.last()
    assert len(final) == 2 * len(params["schedule_sparsities"])
    assert all(value == pytest.approx(sparsity) for (_, sparsity), value in final.items())
    for name in ("retrain_bleu_ppl", "schedule_bleu", "train_val_ppl"):
        assert (run.path / "figures" / f"{name}.png").is_file()
    assert_retrain_claims_follow_from_tables(run, table)


def assert_retrain_claims_follow_from_tables(run, table):
    """Recompute every comparison from the saved translations and every verdict from the tables."""
    hyps = run.load_table("hypotheses").sort_values("index").groupby(["method", "sparsity"]).hypothesis.apply(
        lambda s: s.fillna("").tolist())
    comparisons = run.load_table("comparisons")
    corpus = nmt.load_data({**run.params, "data_root": str(multi30k_root())})
    refs = corpus["test"].tgt_raw
    recomputed = {}
    for row in comparisons.itertuples():
        r = nmt.paired_bleu(hyps[row.a_method, row.a_sparsity], hyps[row.b_method, row.b_sparsity], refs,
                            n_samples=int(row.n_samples))
        assert (r.delta, r.ci[0], r.ci[1], r.p_value) == pytest.approx(
            (row.delta, row.ci_low, row.ci_high, row.p_value), abs=1e-6)  # tables keep 6 significant digits
        recomputed.setdefault(row.claim, []).append(row)

    def beats(rows):  # significant gains at every point, any significant loss refutes, else noise
        significant = [r.p_value < 0.05 and r.delta != 0 for r in rows]
        if any(s and r.delta < 0 for s, r in zip(significant, rows)):
            return "not reproduced"
        return "reproduced" if all(s and r.delta > 0 for s, r in zip(significant, rows)) else "within noise"

    (s4,) = recomputed["nmt-retrain-80"]
    dense = table[table.method == "baseline"].iloc[0]
    best = table[table.method == "prune+retrain"].sort_values(["test_bleu", "sparsity"], ascending=False).iloc[0]
    (s7,) = recomputed["nmt-retrain-outperforms"]
    assert (s7.a_sparsity, s7.b_method) == (best.sparsity, "baseline")
    s7_parts = best.train_ppl > dense.train_ppl and best.val_ppl < dense.val_ppl
    expected = {
        "nmt-retrain-80": "reproduced" if s4.ci_low > -0.5 else "not reproduced" if s4.ci_high < -0.5 else "within noise",
        "nmt-retrain-beats-scratch": beats(recomputed["nmt-retrain-beats-scratch"]),
        "nmt-retrain-outperforms": beats([s7]) if s7_parts else "not reproduced",
        "nmt-gradual-beats-one-shot": beats(recomputed["nmt-gradual-beats-one-shot"]),
    }
    assert len(recomputed["nmt-gradual-beats-one-shot"]) == 2 * len(run.params["schedule_sparsities"])
    if dense.test_bleu < run.params["claims_min_bleu"]:
        expected = dict.fromkeys(expected, "inconclusive")
    claims = pd.read_csv(run.path / "claims.csv").set_index("id").verdict
    assert claims.to_dict() == expected


def test_model_size_tables_and_free_sparsity(smoke_runs):
    run = smoke_runs[0]["13_nmt_model_size"][0]
    sweep = run.load_table("sweep")
    widths, sparsities = run.params["widths"], run.params["sparsities"]
    assert len(sweep) == len(widths) * (1 + len(sparsities))
    assert sweep.groupby("width").parameters.nunique().eq(1).all()
    assert sweep.groupby("width").parameters.first().is_monotonic_increasing
    pruned = sweep[sweep.sparsity > 0]
    dense = sweep[sweep.sparsity == 0].set_index("width").test_bleu
    assert (pruned.bleu_loss - (pruned.width.map(dense) - pruned.test_bleu)).abs().max() < 1e-6
    assert (pruned.loss_ci_low <= pruned.loss_ci_high + 1e-9).all() and pruned.p_value.between(0, 1).all()
    free = run.load_table("free_sparsity").set_index("width")
    for width, group in pruned.groupby("width"):  # the largest sparsity before the first loss > free_loss
        expected = 0.0
        for s, loss in group.sort_values("sparsity")[["sparsity", "bleu_loss"]].itertuples(index=False):
            if loss > run.params["free_loss"]:
                break
            expected = s
        assert free.loc[width, "free_sparsity"] == expected
    claims = pd.read_csv(run.path / "claims.csv").set_index("id")
    assert set(claims.index) == {"nmt-free-sparsity-grows-with-size", "nmt-blind-40-free-by-size"}
    judged = free[free.dense_bleu >= run.params["claims_min_bleu"]].sort_values("parameters")
    trend = claims.loc["nmt-free-sparsity-grows-with-size", "verdict"]
    if len(judged) < 2:
        assert trend == "inconclusive"
    else:
        rho = judged.free_sparsity.rank().corr(judged.parameters.rank())
        grows = rho > 0 and judged.free_sparsity.iloc[-1] > judged.free_sparsity.iloc[0]
        assert trend == ("reproduced" if grows else "not reproduced")
    assert (claims.loc["nmt-blind-40-free-by-size", "verdict"] == "inconclusive") == judged.empty
    assert (run.path / "figures" / "free_sparsity_vs_size.png").is_file()
