"""Fixtures shared by the tests."""
import pytest


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A fresh, empty runs root for one test."""
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"
