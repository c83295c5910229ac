"""The NMT notebooks end to end at smoke (papermill), sharing one cached baseline."""
import tomllib

import pandas as pd
import pytest

from prunelab import nmt, results, runner
from nmt_helpers import multi30k_root

STEMS = ("10_nmt_baseline", "11_nmt_schemes", "12_nmt_retrain")


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
        assert keys["10_nmt_baseline"] == keys["11_nmt_schemes"] == keys["12_nmt_retrain"]
    assert runner.resolve("10_nmt_baseline", "paper")["device"] == "auto"


def test_notebooks_run_at_smoke_and_share_one_checkpoint(smoke_runs):
    runs, checkpoints = smoke_runs
    assert all(executed and run.complete for run, executed in runs.values())
    assert len(checkpoints) == 1  # notebook 10 trained it, 11 and 12 loaded it


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
