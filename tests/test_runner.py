"""Profiles, the papermill runner, the CLI, and the tour notebook end to end at smoke."""
import json
import math
import re

import nbformat
import pandas as pd
import pytest

from prunelab import cli, publish, results, runner


def test_profiles_resolve_and_override():
    smoke = runner.resolve("00_tour", "smoke")
    default = runner.resolve("00_tour", "default")
    assert smoke["profile"] == "smoke" and smoke["epochs"] < default["epochs"]
    assert runner.resolve("00_tour", "smoke", {"epochs": 2, "lr": 1})["lr"] == 1.0


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("PRUNELAB_PROFILE", "default")
    assert runner.resolve("00_tour", "")["profile"] == "default"


def test_bad_profile_notebook_and_parameter():
    with pytest.raises(ValueError, match="'laptop'.*smoke, default, paper"):
        runner.resolve("00_tour", "laptop")
    with pytest.raises(KeyError, match="'99_nothing'.*00_tour"):
        runner.find_notebook("99_nothing")
    with pytest.raises(KeyError, match="'epoch'.*epochs"):
        runner.resolve("00_tour", "smoke", {"epoch": 3})
    with pytest.raises(ValueError, match=re.escape('epochs="three" is a str; epochs takes an int in [1, 1000]')):
        runner.resolve("00_tour", "smoke", {"epochs": "three"})


def test_find_notebook_by_prefix_and_topic():
    assert runner.find_notebook("00") == runner.find_notebook("tour") == runner.find_notebook("00_tour.ipynb") == "00_tour"


def test_cli_rejects_bad_input_with_message(capsys, runs):
    assert cli.main(["run", "nope", "--profile", "smoke"]) == 1
    assert "unknown notebook 'nope'" in capsys.readouterr().err
    assert cli.main(["run", "00_tour", "--profile", "smoke", "-p", "colour=red"]) == 1
    assert "no parameter 'colour'" in capsys.readouterr().err
    assert cli.main(["run", "00_tour", "--profile", "huge"]) == 1
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert not runs.exists()  # nothing ran


def test_cli_list_shows_parameters(capsys):
    assert cli.main(["list", "--profile", "smoke"]) == 0
    assert "00_tour" in capsys.readouterr().out


@pytest.mark.parametrize("stem", runner.notebooks())
def test_notebook_matches_its_source(stem):
    """The committed .ipynb is exactly what tools/nb.py builds from notebooks/src (no drift)."""
    import importlib.util

    root = results.project_root()
    spec = importlib.util.spec_from_file_location("nb", root / "tools" / "nb.py")
    nb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nb)
    built = nb.build((root / "notebooks" / "src" / f"{stem}.py").read_text())
    committed = nbformat.read(root / "notebooks" / f"{stem}.ipynb", as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in built.cells]
    assert [c.get("outputs", []) for c in committed.cells if c.cell_type == "code"] == [[]] * sum(
        c.cell_type == "code" for c in committed.cells), "commit notebooks without outputs"
    params = [c for c in committed.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and committed.cells.index(params[0]) == next(
        i for i, c in enumerate(committed.cells) if c.cell_type == "code")


def test_tour_runs_skips_and_reproduces(runs, capsys):
    run, executed = runner.run_notebook("00_tour", "smoke", progress=False)
    assert executed and run.complete
    table = run.load_table("accuracy")
    assert set(table.scheme) == {"class-blind", "class-uniform", "class-distribution", "random"}
    dense = table[table.sparsity == 0.0].accuracy
    assert dense.min() > 0.8  # the MLP really learned digits
    assert (table.achieved - table.sparsity).abs().max() < 0.01
    params = runner.resolve("00_tour", "smoke")
    no_retrain = table[~table.retrained]
    # Pruning 0% leaves the dense net: every scheme scores the same accuracy for a seed.
    assert (no_retrain[no_retrain.sparsity == 0.0].groupby("seed").accuracy.nunique() == 1).all()
    # The sparsity report at the largest sparsity: layer sizes from `hidden`, exactly round(0.9 * total) zeros.
    report = run.load_table("sparsity_report")
    widths = [64, *params["hidden"], 10]
    assert report.numel.tolist()[:-1] == [a * b for a, b in zip(widths, widths[1:])]
    total = sum(a * b for a, b in zip(widths, widths[1:]))
    assert report.nonzero.iloc[-1] == total - math.floor(total * max(params["sparsities"]) + 0.5)
    # The claim, recomputed from the accuracy table: the smallest mean-accuracy gap class-blind - random at >= 50%.
    gaps = [part[part.scheme == "class-blind"].accuracy.mean() - part[part.scheme == "random"].accuracy.mean()
            for sparsity, part in no_retrain.groupby("sparsity") if sparsity >= 0.5]
    claims = pd.read_csv(run.path / "claims.csv", dtype=str)
    assert claims.id.tolist() == ["tour-blind-beats-random"]
    assert float(claims.value.iloc[0]) == pytest.approx(min(gaps), abs=1e-4)
    assert claims.verdict.iloc[0] == ("reproduced" if min(gaps) > 0 else "not reproduced")
    assert {"accuracy_vs_sparsity.png", "accuracy_vs_sparsity.pdf"} <= {p.name for p in (run.path / "figures").iterdir()}
    assert (run.path / "00_tour.ipynb").exists() and json.loads((run.path / "params.json").read_text())["profile"] == "smoke"

    again, executed = runner.run_notebook("00_tour", "smoke", progress=False)
    assert not executed and again.path == run.path

    figure = (run.path / "figures" / "accuracy_vs_sparsity.png").read_bytes()
    (run.path / "cache" / "marker.json").write_text("{}")
    forced, executed = runner.run_notebook("00_tour", "smoke", fresh=True, progress=False)
    assert executed and not (run.path / "cache" / "marker.json").exists()  # fresh recomputed every point
    pd.testing.assert_frame_equal(forced.load_table("accuracy"), table)  # same seed, same numbers
    assert (run.path / "figures" / "accuracy_vs_sparsity.png").read_bytes() == figure
    # What an earlier version of the notebook wrote and this one does not is gone after a rerun:
    # a claim since renamed, a dropped figure or table (else they would be published as current).
    run.record_claim("tour-renamed-since", "an old claim", "m", 1, "reproduced")
    (run.path / "figures" / "dropped_figure.png").write_bytes(figure)
    (run.path / "tables" / "dropped_table.csv").write_text("a\n1\n")
    rerun, executed = runner.run_notebook("00_tour", "smoke", force=True, progress=False)
    assert executed and pd.read_csv(rerun.path / "claims.csv").id.tolist() == ["tour-blind-beats-random"]
    assert not (run.path / "figures" / "dropped_figure.png").exists()
    assert not (run.path / "tables" / "dropped_table.csv").exists()
    pd.testing.assert_frame_equal(rerun.load_table("accuracy"), table)

    assert cli.main(["report"]) == 0
    page = (runs / "REPORT.md").read_text()
    assert "tour-blind-beats-random" in page and "accuracy_vs_sparsity.png" in page


def test_smoke_never_publishes_figures(runs):
    before = sorted(p.name for p in (results.project_root() / "figures").rglob("*"))
    runner.run_notebook("00_tour", "smoke", progress=False)
    assert sorted(p.name for p in (results.project_root() / "figures").rglob("*")) == before


def test_failing_notebook_names_the_cell(runs, tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    (nbdir / "profiles").mkdir(parents=True)
    (nbdir / "profiles" / "01_broken.toml").write_text('[common]\nx = 1\n[types]\nx = "int"\n')
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("profile = ''\nx = None\nrun_dir = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("y = 1"), nbformat.v4.new_code_cell("raise ValueError('boom ' + str(x))")]
    nbformat.write(nb, nbdir / "01_broken.ipynb")
    monkeypatch.setattr(runner, "notebooks_dir", lambda: nbdir)
    with pytest.raises(RuntimeError, match=r"01_broken failed in cell .*raise ValueError.*ValueError: boom 1"):
        runner.run_notebook("01_broken", "smoke", progress=False)
    run_path = runs / "01_broken" / results.params_hash("01_broken", runner.resolve("01_broken", "smoke"))
    assert (run_path / "01_broken.failed.ipynb").exists()
    assert not (run_path / "01_broken.ipynb").exists() and not (run_path / "complete.json").exists()
    monkeypatch.setattr(runner, "notebooks", lambda: ["01_broken"])
    assert cli.main(["run", "01_broken", "--profile", "smoke", "--quiet"]) == 1


def test_report_links_published_figures_and_filters_profile(runs, tmp_path, monkeypatch):
    project = tmp_path / "project"
    monkeypatch.setattr(results, "project_root", lambda: project)
    for profile in ("default", "smoke"):
        run = results.open_run("07_demo", {"profile": profile})
        run.record_claim("demo", "s", "m", 1, "reproduced", detail="why")
        (run.path / "figures").mkdir()
        (run.path / "figures" / "curve.png").write_bytes(b"png")
        nbformat.write(nbformat.v4.new_notebook(), run.path / "07_demo.ipynb")
        run.finish()
        if profile == "default":
            publish.publish_run(run)
            published_hash = run.hash
    page = publish.report(runs, where=project / "docs", profile="default")
    assert "../figures/default/07_demo--curve.png" in page and f"run {published_hash}" in page
    assert "(../figures/default/notebooks/07_demo.html)" in page
    assert "profile smoke" not in page and "| why |" in page
    with pytest.raises(ValueError, match="'huge'"):
        publish.report(runs, profile="huge")
    import os
    newer = results.open_run("07_demo", {"profile": "default", "x": 2})
    newer.record_claim("demo", "s", "m", 2, "not reproduced")
    newer.finish()
    os.utime(newer.path / "complete.json", (2e9, 2e9))
    assert f"run {published_hash}" in publish.report(runs, profile="default")
    latest = publish.report(runs, profile="default", latest=True)
    assert f"run {newer.hash}" in latest and f"run {published_hash}" not in latest
