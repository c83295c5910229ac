"""The filter-pruning notebooks run at `smoke` through papermill and fill their tables and claims."""
import pandas as pd
import pytest

from prunelab import runner


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path))
    return tmp_path


def test_30_filter_oracle_smoke(runs):
    run, executed = runner.run_notebook("30_filter_oracle", "smoke", progress=False)
    assert executed and run.complete
    corr = run.load_table("correlation")
    assert set(corr.reference) == {"oracle", "oracle_loss"}
    assert {"taylor", "weight_norm", "activation", "apoz", "random", "obd"} <= set(corr.criterion)
    assert corr.spearman.between(-1, 1).all() and (corr.layer == "all layers").any()
    first = run.load_table("pruned_first")
    assert first.groupby("criterion").removed.sum().nunique() == 1  # every criterion removes the same count
    claims = pd.read_csv(run.path / "claims.csv")
    assert claims.id.tolist() == ["taylor-best-oracle-correlation"]
    assert (run.path / "figures" / "oracle_correlation.png").exists()


def test_31_filter_pruning_smoke(runs):
    run, executed = runner.run_notebook("31_filter_pruning", "smoke", progress=False)
    assert executed and run.complete
    levels = run.load_table("levels")
    for _, part in levels.groupby("criterion"):
        assert part.flops_fraction.iloc[0] == 1.0 and part.flops_fraction.iloc[-1] <= 0.6
        assert part.flops.is_monotonic_decreasing and (part.finetune_s_per_epoch > 0).all()
    assert (run.load_table("filters_per_layer").filters >= 2).all()
    claims = pd.read_csv(run.path / "claims.csv")
    assert set(claims.id) == {"flops-within-1pt", "taylor-deeper-first", "finetune-time-falls", "speedup-below-flop-reduction"}
    assert set(claims.verdict) <= {"reproduced", "not reproduced", "inconclusive"}


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
