"""What a reader of the published results sees: executed notebooks as HTML, honest commits, only a
profile's own runs, stale figures flagged, settled progress bars, a quiet CLI."""
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from prunelab import cli, publish, results, runner

REAL_NOTEBOOKS = runner.notebooks_dir()


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """00_tour executed once at smoke by the runner, in its own runs root: (run, runs root)."""
    runs = tmp_path_factory.mktemp("tour") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_RUNS", str(runs))
        run, executed = runner.run_notebook("00_tour", "smoke", progress=False)
    assert executed and run.complete
    return run, runs


def _project(tmp_path, monkeypatch):
    """A temporary project root for figures/, with the checkout's notebooks still the ones that run."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setattr(results, "project_root", lambda: project)
    monkeypatch.setattr(runner, "notebooks_dir", lambda: REAL_NOTEBOOKS)
    return project


def _outputs_text(nb):
    return "\n".join(json.dumps(out, ensure_ascii=False) for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs)


def _visible(page):
    """The text a browser shows: tags dropped, entities decoded."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", page))


# 5. ipywidgets: widget bars in JupyterLab; executed notebooks hold their final text, no widget state.

def test_ipywidgets_is_a_dependency_and_executed_notebooks_hold_no_widget_state(tour):
    pyproject = tomllib.loads((results.project_root() / "pyproject.toml").read_text())
    assert any(re.match(r"ipywidgets\b", dep) for dep in pyproject["project"]["dependencies"])
    run, _ = tour
    nb = nbformat.read(run.path / "00_tour.ipynb", as_version=4)
    text = _outputs_text(nb)
    assert "IProgress not found" not in text  # tqdm.auto found ipywidgets in the kernel
    assert "widgets" not in nb.metadata and "application/vnd.jupyter.widget" not in text
    assert re.search(r"grid: 100%\|█{10}\| 24/24 \[", text)  # the bar's final state, as text


# 1. Executed notebooks published as HTML, deterministic, nothing of the machine.

def test_published_notebook_is_html_without_machine_paths_and_same_bytes_on_rerun(tour, tmp_path, monkeypatch):
    run, runs = tour
    project = _project(tmp_path, monkeypatch)
    monkeypatch.setenv("PRUNELAB_RUNS", str(runs))
    written = publish.publish_run(run)
    page = project / "figures" / "smoke" / "notebooks" / "00_tour.html"
    assert page in written
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html  # readable without JavaScript
    assert "data:image/png;base64," in html  # the figure is embedded
    shown = _visible(html)
    assert f"run folder runs/00_tour/{run.hash}" in shown and f'run_dir = "runs/00_tour/{run.hash}"' in shown
    for machine in (str(runs), str(tmp_path), str(REAL_NOTEBOOKS.parent), sys.prefix):
        assert machine not in html
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", html)  # no timestamps
    assert "grid: 100%|██████████| 24/24<" in html  # bars without their timings

    publish.publish_run(run)
    assert page.read_text() == html  # the same run, the same bytes
    rerun, executed = runner.run_notebook("00_tour", "smoke", force=True, progress=False)
    assert executed and rerun.path == run.path
    publish.publish_run(rerun)
    assert page.read_text() == html  # re-executed with the same parameters and seed: the same bytes

    claims = (project / "figures" / "smoke" / "CLAIMS.md").read_text()
    section = claims[claims.index("## 00_tour"):]
    assert "[notebooks/00_tour.html](notebooks/00_tour.html)" in section and "tour-blind-beats-random" in section
    manifest = json.loads((project / "figures" / "smoke" / "MANIFEST.json").read_text())
    assert manifest["notebooks/00_tour.html"]["params_hash"] == run.hash


# 2. Honest provenance: dirty over the code only, with a hash of the diff.

def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_git_commit_is_dirty_over_code_only_and_hashes_the_diff(tmp_path):
    repo = tmp_path / "repo"
    for name in ("prunelab/masks.py", "notebooks/src/00_tour.py", "pyproject.toml", "figures/default/a.png",
                 "figures/default/MANIFEST.json", "README.md", "tests/test_x.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("v1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert results.git_commit(repo) == head
    for name in ("figures/default/a.png", "figures/default/MANIFEST.json", "README.md", "tests/test_x.py"):
        (repo / name).write_text("changed by a run\n")
    for name in ("runs/00_tour/abc/env.json", "data/multi30k/x.gz", "figures/default/notebooks/00_tour.html"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("new\n")
    assert results.git_commit(repo) == head  # the suite's own outputs never make it dirty

    (repo / "prunelab/masks.py").write_text("v2\n")
    first = results.git_commit(repo)
    assert re.fullmatch(rf"{head}-dirty-[0-9a-f]{{12}}", first)
    assert results.git_commit(repo) == first  # the same edit, the same mark
    (repo / "prunelab/masks.py").write_text("v3\n")
    second = results.git_commit(repo)
    assert second.startswith(f"{head}-dirty-") and second != first  # two dirty runs told apart
    (repo / "prunelab/masks.py").write_text("v1\n")
    (repo / "notebooks/profiles").mkdir()
    (repo / "notebooks/profiles/new.toml").write_text("x = 1\n")  # untracked code counts too
    assert results.git_commit(repo).startswith(f"{head}-dirty-")
    assert results.git_commit(tmp_path / "not-a-repo") == "unknown"


# 3. Only a profile's own runs are published and cited.

def test_overrides_name_only_values_that_change():
    own = runner.resolve("00_tour", "default")
    assert runner.overridden("00_tour", own) == ()
    assert runner.overridden("00_tour", runner.resolve("00_tour", "default", {"epochs": own["epochs"]})) == ()
    changed = runner.resolve("00_tour", "default", {"epochs": 3, "hidden": [8, 4]})
    assert runner.overridden("00_tour", changed) == ("hidden=[8,4]", "epochs=3")


def test_overridden_run_is_never_published_and_its_claims_say_so(runs, tmp_path, monkeypatch, capsys):
    project = _project(tmp_path, monkeypatch)
    monkeypatch.delenv("PRUNELAB_PROFILE", raising=False)  # the root conftest picks smoke for the notebooks
    smoke, default = runner.resolve("00_tour", "smoke"), runner.resolve("00_tour", "default")
    quick = [f"{k}={json.dumps(v)}" for k, v in smoke.items() if k != "profile" and v != default[k]]
    assert cli.main(["run", "00_tour", "--profile", "default", "--quiet", *sum((["-p", q] for q in quick), [])]) == 0
    assert "not published to figures/default/" in capsys.readouterr().out
    assert not (project / "figures").exists()
    claims = results.collect_claims(runs)
    assert claims.profile.tolist() == ["default"]
    assert claims.overrides.iloc[0] == "seeds=[0] hidden=[32] epochs=5 sparsities=[0.0,0.5,0.9] retrain_epochs=1"


def _fake_run(notebook, params, overrides=(), value=1, fingerprint=None):
    run = results.open_run(notebook, params, overrides=overrides, fingerprint=fingerprint)
    run.record_claim("demo", "s", "m | with a bar", value, "reproduced", detail="why")
    (run.path / "figures").mkdir(exist_ok=True)
    (run.path / "figures" / "curve.png").write_bytes(b"png")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"run folder {run.path}\n")])])
    nbformat.write(nb, run.path / f"{notebook}.ipynb")
    run.finish()
    return run


def test_report_latest_leaves_out_overridden_runs_unless_asked(runs, tmp_path, monkeypatch):
    import os

    _project(tmp_path, monkeypatch)
    own = _fake_run("07_demo", {"profile": "paper", "x": 1})
    quick = _fake_run("07_demo", {"profile": "paper", "x": 2}, overrides=("x=2",), value=0)
    os.utime(quick.path / "complete.json", (2e9, 2e9))  # the quick check finished last
    latest = publish.report(runs, profile="paper", latest=True)
    assert f"run {own.hash}" in latest and f"run {quick.hash}" not in latest
    both = publish.report(runs, profile="paper", latest=True, include_overridden=True)
    assert f"## 07_demo (profile paper, overridden: x=2, run {quick.hash})" in both and f"run {own.hash}" in both
    assert "overridden: x=2" in publish.report(runs, profile="paper")  # everything, marked
    assert "m \\| with a bar" in latest  # a bar inside a cell does not break the table


# 4. Stale figures flagged.

def _demo_project(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "notebooks" / "src").mkdir(parents=True)
    (project / "notebooks" / "profiles").mkdir()
    (project / "notebooks" / "src" / "07_demo.py").write_text("# %%\nx = None\n")
    (project / "notebooks" / "profiles" / "_base.toml").write_text('[common]\ny = 2\n[types]\ny = "int"\n')
    (project / "notebooks" / "profiles" / "07_demo.toml").write_text(
        'base = "_base"\n[common]\nx = 1\n[types]\nx = "int"\n')
    monkeypatch.setattr(results, "project_root", lambda: project)
    return project


def test_check_flags_figures_whose_code_changed(runs, tmp_path, monkeypatch, capsys):
    project = _demo_project(tmp_path, monkeypatch)
    params = runner.resolve("07_demo", "default")
    publish.publish_run(_fake_run("07_demo", params, fingerprint=runner.fingerprint("07_demo")))
    assert cli.main(["report", "--check"]) == 0
    assert "all 2 published files in figures/ are current" in capsys.readouterr().err

    source = project / "notebooks" / "src" / "07_demo.py"
    source.write_text(source.read_text() + "print('edited')\n")
    assert cli.main(["report", "--check"]) == 1
    out = capsys.readouterr()
    assert "figures/default/07_demo--curve.png: notebook changed (notebooks/src/07_demo.py)" in out.out
    assert "figures/default/notebooks/07_demo.html: notebook changed" in out.out
    assert "2 of 2 published files in figures/ are stale" in out.err

    source.write_text("# %%\nx = None\n")
    (project / "notebooks" / "profiles" / "_base.toml").write_text('[common]\ny = 3\n[types]\ny = "int"\n')
    assert cli.main(["report", "--check", "--profile", "default"]) == 1
    assert ("profile changed (notebooks/profiles/07_demo.toml, notebooks/profiles/_base.toml)"
            in capsys.readouterr().out)


def test_check_calls_an_entry_without_fingerprint_stale(runs, tmp_path, monkeypatch, capsys):
    project = _demo_project(tmp_path, monkeypatch)
    publish.publish_run(_fake_run("07_demo", runner.resolve("07_demo", "default")))  # a run that recorded none
    manifest = json.loads((project / "figures" / "default" / "MANIFEST.json").read_text())
    assert "fingerprint" not in manifest["07_demo--curve.png"]
    assert cli.main(["report", "--check"]) == 1
    assert "figures/default/07_demo--curve.png: no fingerprint recorded" in capsys.readouterr().out


def test_republishing_a_notebook_replaces_its_files_and_claims(runs, tmp_path, monkeypatch):
    project = _demo_project(tmp_path, monkeypatch)
    first = _fake_run("07_demo", {"profile": "default", "x": 1})
    (first.path / "figures" / "old.png").write_bytes(b"old")
    first.seal()  # as if the run had made it
    publish.publish_run(first)
    second = _fake_run("07_demo", {"profile": "default", "x": 5}, value=7)
    publish.publish_run(second)
    dest = project / "figures" / "default"
    assert not (dest / "07_demo--old.png").exists()
    assert {e["params_hash"] for e in json.loads((dest / "MANIFEST.json").read_text()).values()} == {second.hash}
    ledger = pd.read_csv(dest / "claims.csv", dtype=str)
    assert ledger.value.tolist() == ["7"] and ledger.params_hash.tolist() == [second.hash]


# 6. Quieter runs: no kernel TCP warning, IPC sockets in a temporary folder, removed.

def test_cli_run_prints_no_kernel_warning_and_leaves_no_sockets(runs, tmp_path, monkeypatch, capfd):
    import tempfile

    nbdir = tmp_path / "notebooks"
    (nbdir / "profiles").mkdir(parents=True)
    (nbdir / "profiles" / "01_quiet.toml").write_text('[common]\nx = 1\n[types]\nx = "int"\n')
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("profile = ''\nx = None\nrun_dir = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from pathlib import Path\nfrom ipykernel.kernelapp import IPKernelApp\n"
                                          "from prunelab import results\nprint(IPKernelApp.instance().transport)\n"
                                          "results.Run(Path(run_dir), '01_quiet', {}).finish()")]
    nbformat.write(nb, nbdir / "01_quiet.ipynb")
    monkeypatch.setattr(runner, "notebooks_dir", lambda: nbdir)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert cli.main(["run", "01_quiet", "--profile", "smoke", "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert "TCP" not in out + err and "WARNING" not in out + err
    assert err == "" and out.splitlines()[:2] == ["profile smoke", "[1/1] 01_quiet (profile smoke)"]
    assert out.splitlines()[2].startswith("    done: ") and len(out.splitlines()) == 3
    executed = nbformat.read(next(runs.glob("01_quiet/*/01_quiet.ipynb")), as_version=4)
    assert executed.cells[-1].outputs[0].text == "ipc\n"
    assert list(temp.iterdir()) == []  # the IPC sockets' folder is gone

    nb.cells[-1].source = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"
    nbformat.write(nb, nbdir / "01_quiet.ipynb")
    assert cli.main(["run", "01_quiet", "--profile", "smoke", "--quiet", "-p", "x=2"]) == 1
    assert "the kernel died" in capfd.readouterr().err
    assert list(temp.iterdir()) == []  # and gone after a killed kernel too


def test_settled_and_reader_copies_of_a_notebook():
    """Widget bars become their final text (hidden ones go), text bars lose their redraws and timings,
    machine paths are replaced: on a hand-made executed notebook."""
    from prunelab import executed

    def model(name, **state):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "model_module_version": "2.0.0",
                "state": state}

    state = {"box": model("HBoxModel", children=["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"], layout="IPY_MODEL_lay"),
             "l": model("HTMLModel", value="grid:\u2007100%"), "p": model("FloatProgressModel", value=4, max=4),
             "r": model("HTMLModel", value="\u20074/4\u2007[00:01&lt;00:00,\u20073.50it/s]"),
             "lay": model("LayoutModel", visibility=None),
             "gone": model("HBoxModel", children=["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"], layout="IPY_MODEL_hid"),
             "hid": model("LayoutModel", visibility="hidden")}
    view = "application/vnd.jupyter.widget-view+json"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("display_data", data={view: {"model_id": "box"}, "text/plain": "grid: 0%"}),
        nbformat.v4.new_output("display_data", data={view: {"model_id": "gone"}, "text/plain": "epochs: 0%"}),
        nbformat.v4.new_output("stream", name="stderr",
                               text="a: 50%|█  | 1/2 [00:00<00:01, 9.1it/s]\ra: 100%|██| 2/2 [00:01<00:00, 9.0it/s]\n"),
        nbformat.v4.new_output("stream", name="stdout", text="run folder /home/me/runs/00_tour/abc\n")])])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    settled = executed.settle(json.loads(json.dumps(nb), object_hook=nbformat.NotebookNode))
    assert "widgets" not in settled.metadata
    assert [o.get("data", {}).get("text/plain") for o in settled.cells[0].outputs[:1]] == [
        "grid: 100%|██████████| 4/4 [00:01<00:00, 3.50it/s]"]
    assert len(settled.cells[0].outputs) == 3  # the hidden bar (tqdm's leave=False) is gone
    reader = executed.for_readers(nb, {"/home/me/runs": "runs", "/home/me": "~"})
    texts = [o.get("text") or o.data["text/plain"] for o in reader.cells[0].outputs]
    assert texts == ["grid: 100%|██████████| 4/4", "a: 100%|██| 2/2\n", "run folder runs/00_tour/abc\n"]


def test_package_fingerprint_covers_what_the_notebook_imports():
    """A figure is stale when a module its notebook runs changes, not when any file of the package does."""
    pkg = Path(runner.__file__).parent
    masks_only = set(runner.package_files("from prunelab import masks"))
    assert {pkg / "__init__.py", pkg / "masks.py"} <= masks_only and pkg / "executors.py" not in masks_only
    via_criteria = set(runner.package_files("def f():\n    from prunelab.criteria import filters\n"))
    assert pkg / "removal.py" in via_criteria  # transitively, through criteria.filters
    tour = set(runner.producing_files("00_tour")["package"])
    assert pkg / "cli.py" not in tour and pkg / "results.py" in tour


def test_committed_default_figures_are_current():
    """Every figure in figures/default/ was made by the code as it is now (its notebook source,
    profile files and the package modules it imports): regenerate them with
    `prunelab run --profile default` after changing any of these."""
    checked, stale_lines = publish.stale("default")
    assert checked > 0
    assert stale_lines == [], "\n".join(stale_lines[:10])
    manifest = publish.read_manifest(results.project_root() / "figures" / "default")
    assert not any("dirty" in entry.get("commit", "") for entry in manifest.values())
    pages = {entry["notebook"] for entry in manifest.values()}
    assert {p.stem for p in (results.project_root() / "figures" / "default" / "notebooks").glob("*.html")} == pages


def test_notebooks_published_at_once_all_land(runs, tmp_path, monkeypatch):
    """Gather jobs of different notebooks finish together on a cluster: no manifest entry or claim is lost."""
    import multiprocessing

    project = _demo_project(tmp_path, monkeypatch)
    made = [_fake_run(f"0{i}_demo", {"profile": "default", "x": i}) for i in range(8)]

    def publish_some(batch):
        for run in batch:
            for _ in range(3):
                publish.publish_run(run)

    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=publish_some, args=(made[k::4],)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * 4
    dest = project / "figures" / "default"
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert {e["notebook"] for e in manifest.values()} == {run.notebook for run in made}
    assert sorted(pd.read_csv(dest / "claims.csv", dtype=str).notebook) == sorted(run.notebook for run in made)
    assert all(f"## {run.notebook} " in (dest / "CLAIMS.md").read_text() for run in made)
