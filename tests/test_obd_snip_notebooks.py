"""Notebooks 20 and 21 at `smoke` through papermill, and the study glue of `prunelab.obd_snip`."""
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

nmt = pytest.importorskip("prunelab.nmt", reason="needs the NMT study (branch nmt)")

from prunelab import obd_snip, runner  # noqa: E402

DATA = Path(os.environ.get("PRUNELAB_MULTI30K") or Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k")
needs_data = pytest.mark.skipif(not (DATA / "train.en.gz").exists(), reason=f"no Multi30k copy at {DATA}")


def test_class_pruning_and_overlap():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([True, True])}
    table = obd_snip.class_pruning(masks, {"emb": ["a"], "out": ["b"]})
    assert table.pruned_pct.tolist() == [75.0, 0.0]
    assert obd_snip.mask_overlap(masks, masks) == 1.0
    other = {"a": torch.tensor([False, True, False, False]), "b": torch.tensor([True, True])}
    assert obd_snip.mask_overlap(masks, other) == pytest.approx(2 / 4)
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
    claims = pd.read_csv(run.path / "claims.csv")
    assert set(claims.id) == {"snip-best-at-extreme-sparsity", "obd-snip-prune-embeddings-more"}
    assert (run.path / "figures" / "bleu_ppl_vs_sparsity.png").exists()


@needs_data
def test_21_snip_ablations_smoke(tmp_path, monkeypatch):
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
    assert by_data.overlap_with_most.between(0, 1).all()
    most = by_data[by_data.fraction == by_data.fraction.max()]
    assert (most.overlap_with_most == 1.0).all()  # the reference is that same mask
    claims = pd.read_csv(run.path / "claims.csv")
    assert set(claims.id) == {"snip-init-matters", "snip-variance-scaled-best", "snip-1-20-of-data-enough"}
