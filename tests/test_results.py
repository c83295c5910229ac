"""Run folders, atomic writes, deterministic figures, the claims ledger, cached checkpoints."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from prunelab import results


def test_params_hash_is_order_independent_and_sensitive():
    a = results.params_hash("nb", {"x": 1, "y": [1, 2]})
    assert a == results.params_hash("nb", {"y": [1, 2], "x": 1})
    assert a != results.params_hash("nb", {"x": 2, "y": [1, 2]})
    assert a != results.params_hash("other", {"x": 1, "y": [1, 2]})
    assert len(a) == 12


def test_open_run_records_params_and_env(runs):
    run = results.open_run("nb", {"seed": 3})
    assert run.path == runs / "nb" / results.params_hash("nb", {"seed": 3})
    assert json.loads((run.path / "params.json").read_text()) == {"notebook": "nb", "seed": 3}
    env = json.loads((run.path / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] in ("cpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    assert "git_commit" in env


def test_interrupted_write_leaves_no_file_and_keeps_old(tmp_path):
    path = tmp_path / "t.csv"
    results.write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with results.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_tables_roundtrip(runs):
    run = results.open_run("nb", {})
    df = pd.DataFrame({"sparsity": [0.1, 0.2], "accuracy": [0.9, 0.8]})
    run.save_table("acc", df)
    pd.testing.assert_frame_equal(run.load_table("acc"), df)


def test_figures_are_byte_identical_on_rerun(runs):
    run = results.open_run("nb", {})
    blobs = []
    for _ in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [3, 1, 2])
        paths = run.save_figure(fig, "curve")
        plt.close(fig)
        blobs.append([p.read_bytes() for p in paths])
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert blobs[0] == blobs[1]
    assert b"CreationDate" not in blobs[0][1]


def test_claims_ledger_replaces_by_id_and_checks_verdict(runs):
    run = results.open_run("nb", {"profile": "smoke"})
    run.record_claim("c1", "s", "m", 0.5, "reproduced")
    ledger = run.record_claim("c1", "s", "m", 0.4, "not reproduced")
    assert ledger["verdict"].tolist() == ["not reproduced"]
    with pytest.raises(ValueError, match="'maybe'.*reproduced"):
        run.record_claim("c2", "s", "m", 1, "maybe")
    assert results.collect_claims(runs).empty  # not complete yet
    run.finish()
    assert results.collect_claims(runs)["id"].tolist() == ["c1"]


def test_verdict():
    assert results.verdict(True) == "reproduced"
    assert results.verdict(False) == "not reproduced"
    assert results.verdict(None) == "inconclusive"


def test_memo_fresh_and_resumed_values_are_identical(runs):
    run = results.open_run("00_demo", {"profile": "smoke"})
    fresh = run.memo("p", {"s": 1}, lambda: {"z": 1.5, "a": (1, 2)})
    resumed = run.memo("p", {"s": 1}, lambda: pytest.fail("recomputed"))
    assert fresh == resumed == {"a": [1, 2], "z": 1.5}
    assert list(fresh) == list(resumed) == ["a", "z"]  # same column order in tables built from them
    with pytest.raises(TypeError, match=r"memo 'q'.*must be JSON"):
        run.memo("q", {"s": 1}, lambda: {"x": object()})
    assert not list((run.path / "cache").glob("q-*"))


def test_memo_computes_once(runs):
    run = results.open_run("nb", {})
    calls = []
    compute = lambda: calls.append(1) or {"v": len(calls)}
    assert run.memo("p", {"s": 0.5}, compute) == {"v": 1}
    assert run.memo("p", {"s": 0.5}, compute) == {"v": 1}
    assert run.memo("p", {"s": 0.6}, compute) == {"v": 2}
    assert len(calls) == 2


def test_cached_checkpoint_trains_once(runs):
    calls = []

    def train():
        calls.append(1)
        return {"state_dict": {"w": torch.arange(3.0)}}

    first = results.cached_checkpoint("toy", {"h": 4}, train)
    second = results.cached_checkpoint("toy", {"h": 4}, train)
    assert len(calls) == 1
    assert torch.equal(first["state_dict"]["w"], second["state_dict"]["w"])
    assert results.checkpoint_path("toy", {"h": 4}).exists()
