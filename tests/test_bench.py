"""The benchmark plumbing (cheap parts only; the measurements themselves are not tests)."""
import json

import pandas as pd
import pytest
import torch

from prunelab import bench
from prunelab.bench import common, structured, suite
from prunelab.cli import main


def test_parse_rows_and_errors():
    assert bench.parse_rows("5, 1,1") == [1, 5]
    with pytest.raises(ValueError, match="subset of 1, 2, 3, 4, 5"):
        bench.parse_rows("0,2")
    with pytest.raises(ValueError, match="device='tpu'"):
        common.BenchConfig(device="tpu")
    assert main(["bench", "--rows", "x"]) == 1


def test_kept_filters_rounding():
    assert [structured.kept_filters(64, f) for f in (0.25, 0.5, 0.75)] == [48, 32, 16]
    assert structured.kept_filters(100, 0.5, round_to=8) == 48
    assert structured.kept_filters(10, 0.9, round_to=8) == 8


def test_prunelab_and_torch_pruning_agree_on_channel_counts():
    from prunelab.models.cnn import alexnet_small

    net = alexnet_small().eval()
    example = torch.zeros(1, 1, 32, 32)
    ours = structured.prunelab_pruned(net, example, 0.5)
    theirs = structured.tp_pruned(net, example, 0.5)
    assert structured._convs(ours) == structured._convs(theirs) == [16, 32, 48, 48, 32]
    assert structured._convs(net) == [32, 64, 96, 96, 64]  # the original is untouched
    assert ours(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_hidden_unit_variant_prunes_the_classifier_but_never_its_output():
    from prunelab.models.cnn import alexnet_small

    net = alexnet_small().eval()
    example = torch.zeros(1, 1, 32, 32)
    ours = structured.prunelab_pruned(net, example, 0.75, linear=True)
    theirs = structured.tp_pruned(net, example, 0.75, linear=True)
    assert structured._units(ours) == structured._units(theirs) == [64, 64, 10]  # fc6, fc7 at a quarter; fc8 whole
    assert structured._convs(ours) == structured._convs(theirs) == [8, 16, 24, 24, 16]
    assert structured._units(structured.prunelab_pruned(net, example, 0.75)) == [256, 256, 10]


def test_row_4_reports_feature_maps_only_and_with_hidden_units():
    names = ["dense", *(f"{who} {f}{fc}" for who in ("prunelab", "tp") for f in structured.FRACTIONS for fc in ("", " +fc"))]
    lat = {n + mode: 1.0 if n == "dense" else 0.5 for n in names for mode in ("", " frozen", " cl")}
    flop = {n: 100 if n == "dense" else 50 for n in names}
    rows = structured._entries("net, batch 1", lat, flop, structured.FRACTIONS, common.BenchConfig())
    cases = [r["case"] for r in rows]
    assert "net, batch 1, 75% filters, fp32" in cases and "net, batch 1, 75% filters + hidden units, fp32" in cases
    assert len(rows) == 3 * 2 * 3 and all(r["ratio"] == 1.0 and r["met"] for r in rows)


def test_layer_profile_splits_flops_and_time_by_layer_kind():
    from prunelab.metrics import flops
    from prunelab.models.cnn import alexnet_small

    net = alexnet_small().eval()
    x = torch.zeros(2, 1, 32, 32)
    dense = structured.layer_profile(net, x, repeats=1)
    assert set(dense) == {"conv", "linear", "other"}
    assert sum(count for _, count in dense.values()) == flops(net, x)
    assert dense["other"][1] == 0 and all(seconds > 0 for seconds, _ in dense.values())
    pruned = structured.layer_profile(structured.prunelab_pruned(net, x[:1], 0.5), x, repeats=1)
    # Halving every conv's filters cuts the convs' FLOPs about 4x (in and out channels) but the
    # linear layers' only through the first one's input.
    assert 3 < dense["conv"][1] / pruned["conv"][1] <= 4
    assert 1 < dense["linear"][1] / pruned["linear"][1] < 2
    assert not any(h for m in net.modules() for h in (m._forward_hooks, m._forward_pre_hooks))  # hooks removed


def test_peak_memory_sees_an_allocation():
    with common.PeakMemory("cpu") as peak:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    assert peak.extra >= 48 * 2**20


def test_paired_ratio_and_time_calls():
    t = common.time_calls({"a": lambda: None, "b": lambda: sum(range(20000))}, "cpu", repeats=3)
    assert len(t["a"]) == 3 and common.paired_ratio(t, "b", "a") > 1.0


def test_recorded_suite_durations(tmp_path):
    def fake(nb, h, profile, seconds, complete=True):
        d = tmp_path / nb / h
        d.mkdir(parents=True)
        meta = {"metadata": {"papermill": {"duration": seconds, "parameters": {"profile": profile}}}}
        (d / f"{nb}.ipynb").write_text(json.dumps(meta))
        if complete:
            (d / "complete.json").write_text("{}")
    fake("00_tour", "a", "default", 12.5)
    fake("10_nmt_baseline", "b", "default", 100.0)
    fake("10_nmt_baseline", "c", "paper", 50.0, complete=False)
    got = suite.recorded([tmp_path], "default")
    assert {k: v[0] for k, v in got.items()} == {"00_tour": 12.5, "10_nmt_baseline": 100.0}
    assert suite.recorded([tmp_path], "paper") == {}


def test_format_table_footnotes():
    table = pd.DataFrame([common.entry("1 masking", "x", "seconds", 0.5, "torch", 5.0, 10.0, ">= 5x", True, "a note")],
                         columns=common.COLUMNS)
    text = bench.format_table(table)
    assert "| 1 masking | x [1] | seconds | 0.5 | torch | 5 | 10 | >= 5x | yes |" in text
    assert text.endswith("[1] a note")


def _benchmark_script(name, monkeypatch):
    """benchmarks/<name>.py loaded as a module, with the local Multi30k copy as its data."""
    import importlib.util
    from pathlib import Path

    from nmt_helpers import multi30k_root

    monkeypatch.setenv("PRUNELAB_MULTI30K", str(multi30k_root()))
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_retrain_probe_prunes_retrains_and_reports_each_epoch(tmp_path, monkeypatch, capsys):
    """benchmarks/retrain_probe.py, cited by the README for S4: one line per epoch, epoch 0 before retraining."""
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path))
    probe = _benchmark_script("retrain_probe", monkeypatch)
    assert probe.main(["--profile", "smoke", "--sparsity", "0.8", "--epochs", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    assert all(line["val_ppl"] > 1 and 0 <= line["test_bleu"] <= 100 for line in lines[1:])


def test_nmt_step_bench_times_every_setting_side_by_side(monkeypatch, capsys):
    """benchmarks/nmt_step.py, cited by the `_nmt` profile for threads = 2: one line per setting, ratios to the first."""
    bench = _benchmark_script("nmt_step", monkeypatch)
    assert bench.main(["--profile", "smoke", "--steps", "3", "--rounds", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(line["threads"], line["adam"]) for line in lines] == bench.SETTINGS
    # Each speedup is the first setting's time over its own (rounded to 2 decimals): on a busy machine a
    # two-thread setting can be far slower, so the ratio is checked, not its sign.
    assert lines[0]["speedup"] == 1.0 and all(line["ms_per_step"] > 0 for line in lines)
    for line in lines:
        assert line["speedup"] == pytest.approx(lines[0]["ms_per_step"] / line["ms_per_step"], rel=0.05, abs=0.006)
