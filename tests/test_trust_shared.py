"""Trust on a shared runs folder (issue 23): what the suite writes, locks, deletes, trusts and shows.

Each test plants what a careless user or a hostile neighbour would, and checks that prunelab
refuses it in one line, or names it and goes on, without touching anything that is not its own.
"""
import errno
import json
import os
import re
import stat

import nbformat
import pandas as pd
import pytest
import torch

from notebook_helpers import tiny_notebook
from prunelab import cli, publish, results, runner


@pytest.fixture
def nbdir(tmp_path, monkeypatch):
    """A notebooks folder of tiny notebooks (each run takes a kernel start, about two seconds)."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(runner, "notebooks_dir", lambda: folder)
    return folder


def _run_folder(notebook):
    return results.runs_root() / notebook / results.params_hash(notebook, runner.resolve(notebook, "smoke"))


def _victim(tmp_path):
    """Another user's run folder: its files must come through every test byte for byte."""
    victim = tmp_path / "victim"
    for name, data in {"tables/t.csv": b"a\n1\n", "figures/f.png": b"png", "claims.csv": b"id\nmine\n"}.items():
        (victim / name).parent.mkdir(parents=True, exist_ok=True)
        (victim / name).write_bytes(data)
    return victim, {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()}


def _untouched(victim, before):
    return {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before


# 1. Writing over things that are not ours

@pytest.mark.parametrize("planted", ["run folder", "notebook folder"])
def test_a_symlinked_run_folder_is_refused_and_its_target_untouched(runs, tmp_path, capsys, planted):
    victim, before = _victim(tmp_path)
    path = _run_folder("00_tour")
    if planted == "run folder":
        path.parent.mkdir(parents=True)
        path.symlink_to(victim)
    else:
        runs.mkdir()
        path.parent.symlink_to(victim)
    assert cli.main(["run", "00_tour", "--profile", "smoke", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symlink, not a real folder" in err[0]
    assert _untouched(victim, before) and not (victim / ".lock").exists()


def test_a_symlinked_subfolder_is_refused_and_clearing_never_follows_links(runs, tmp_path):
    victim, before = _victim(tmp_path)
    run = results.open_run("07_demo", {"profile": "smoke"})
    (run.path / "tables").symlink_to(victim / "tables")
    with pytest.raises(results.UnsafePathError, match="tables is a symlink, not a real folder"):
        run.save_table("t", pd.DataFrame({"a": [2]}))
    (run.path / "claims.csv").symlink_to(victim / "claims.csv")
    with pytest.raises(ValueError, match="claims.csv cannot be read .*claims.csv is a symlink, not a regular file"):
        run.record_claim("c", "s", "m", 1, "reproduced")  # read back first: refused there
    results.clear_run(run.path, fresh=True)  # removes the links, not what they point to
    assert not os.path.lexists(run.path / "tables") and not os.path.lexists(run.path / "claims.csv")
    assert _untouched(victim, before)


def test_lock_files_never_follow_a_symlink_nor_truncate(runs, tmp_path, nbdir, capsys):
    tiny_notebook(nbdir, "01_lock", "run.finish()")
    run, executed = runner.run_notebook("01_lock", "smoke", progress=False)
    assert executed
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    (run.path / ".lock").unlink()
    (run.path / ".lock").symlink_to(precious)
    assert cli.main(["run", "01_lock", "--profile", "smoke", "--quiet"]) == 1  # even a run that would be skipped
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lock file" in err[0] and "is a symlink" in err[0]
    assert precious.read_text() == "keep me\n"
    # the checkpoint cache's lock, and any lock that is not a regular file
    ckpt = results.checkpoint_path("toy", {"h": 1})
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.with_name(ckpt.name + ".lock").symlink_to(precious)
    with pytest.raises(results.UnsafePathError, match="is a symlink"):
        results.cached_checkpoint("toy", {"h": 1}, lambda: {"w": torch.ones(1)})
    fifo = tmp_path / "fifo.lock"
    os.mkfifo(fifo)
    with pytest.raises(results.UnsafePathError, match="is a FIFO, not a regular file"):
        with results.file_lock(fifo):
            pass
    assert precious.read_text() == "keep me\n" and not ckpt.exists()


def test_report_output_is_a_regular_file_or_stdout(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.chdir(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    for given, what in [(fifo, "is a FIFO"), ("/dev/null", "is a character device"), (folder, "is a folder")]:
        assert cli.main(["report", "--runs", str(runs), "--output", str(given)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--output {given} {what}" in err[0]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert list(folder.iterdir()) == []
    target, link = tmp_path / "real.md", tmp_path / "link.md"
    target.write_text("old\n")
    link.symlink_to(target)
    assert cli.main(["report", "--runs", str(runs), "--output", str(link)]) == 0  # written through the link
    assert link.is_symlink() and target.read_text().startswith("# prunelab report")
    capsys.readouterr()
    assert cli.main(["report", "--runs", str(runs), "--output", "-"]) == 0
    assert capsys.readouterr().out.startswith("# prunelab report") and not (tmp_path / "-").exists()
    # without --output the page goes into the runs folder, where a link is someone else's: refused
    target.write_text("old\n")
    (runs / "REPORT.md").symlink_to(target)
    assert cli.main(["report", "--runs", str(runs)]) == 1
    assert "REPORT.md is a symlink, not a regular file" in capsys.readouterr().err
    assert target.read_text() == "old\n" and (runs / "REPORT.md").is_symlink()


# 2. What gets trusted and shown

EVIL = {"statement": "<img src=x onerror=alert(1)>", "detail": "[click](javascript:alert(1))"}


def _evil_claims(path, notebook="07_demo", params_hash="abc"):
    ledger = pd.DataFrame([dict(notebook=notebook, params_hash=params_hash, profile="smoke", overrides="", id="c1",
                                metric="m", value="1", verdict="reproduced", **EVIL)])
    ledger.to_csv(path, index=False)


def _inert(page):
    """No HTML tag and no link to javascript: (an escaped "\\]" ends no link text)."""
    return "<img" not in page and not re.search(r"(?<!\\)\]\(javascript:", page)


def test_a_hand_written_complete_run_is_reported_not_trusted(runs, capsys):
    fake = runs / "07_demo" / "abc"
    fake.mkdir(parents=True)
    (fake / "complete.json").write_text('{"notebook": "07_demo", "hash": "abc"}')
    _evil_claims(fake / "claims.csv")
    page = publish.report(runs)
    assert "| c1 |" not in page and _inert(page)
    assert "## Not shown" in page and "complete.json records no file digests" in page
    # a sealed run's text is shown, escaped
    run = results.open_run("07_demo", {"profile": "smoke"})
    run.record_claim("c2", EVIL["statement"], "m", 1, "reproduced", detail=EVIL["detail"])
    run.finish()
    page = publish.report(runs)
    assert "| c2 | &lt;img src=x onerror=alert(1)&gt; |" in page and "\\[click\\](javascript:alert(1))" in page
    assert _inert(page)
    # edited after it finished: left out, named
    (run.path / "claims.csv").write_text((run.path / "claims.csv").read_text().replace("reproduced", "REPRODUCED"))
    page = publish.report(runs)
    assert "| c2 |" not in page and "claims.csv changed after the run finished" in page


def test_a_run_whose_files_changed_is_run_again_not_skipped(runs, nbdir, capsys):
    tiny_notebook(nbdir, "01_seal", "run.finish()")
    run, executed = runner.run_notebook("01_seal", "smoke", progress=False)
    assert executed and "01_seal.ipynb" in json.loads((run.path / "complete.json").read_text())["files"]
    assert runner.run_notebook("01_seal", "smoke", progress=False)[1] is False  # sealed and unchanged: skipped
    (run.path / "tables").mkdir()
    (run.path / "tables" / "planted.csv").write_text("a\n1\n")
    assert runner.run_notebook("01_seal", "smoke", progress=False)[1] is True
    assert "tables/planted.csv appeared after the run finished; running it again" in capsys.readouterr().err
    assert not (run.path / "tables" / "planted.csv").exists()
    (run.path / "complete.json").write_text("{}")  # written by hand
    assert runner.run_notebook("01_seal", "smoke", progress=False)[1] is True


def test_each_point_records_its_code_and_recompute_stale_recomputes_exactly_those(runs, monkeypatch):
    old_code = {"notebook": "n1", "profile": "p1", "package": "k1"}
    new_code = {**old_code, "package": "k2"}
    calls = []

    def compute(i):
        return lambda: calls.append(i) or i * 10

    old = results.open_run("07_demo", {"profile": "smoke"}, fingerprint=old_code)
    assert old.memo("p", {"i": 0}, compute(0)) == 0
    new = results.open_run("07_demo", {"profile": "smoke"}, fingerprint=new_code)
    assert new.memo("p", {"i": 0}, compute(0)) == 0 and new.memo("p", {"i": 1}, compute(1)) == 10
    assert calls == [0, 1]  # the old point is reused by default
    groups = results.computed_by(new.path)
    assert sorted((g["fingerprint"]["package"], g["points"]) for g in groups) == [("k1", 1), ("k2", 1)]
    monkeypatch.setenv(results.RECOMPUTE_STALE, "1")
    assert new.memo("p", {"i": 0}, compute(0)) == 0 and new.memo("p", {"i": 1}, compute(1)) == 10
    assert calls == [0, 1, 0]  # only the point the old code computed
    assert [g["fingerprint"]["package"] for g in results.computed_by(new.path)] == ["k2"]


def test_published_provenance_and_stale_points(tmp_path):
    current = {"notebook": "n", "profile": "p", "package": "k2"}
    entry = {"notebook": "07_demo", "commit": "bbb", "computed": [
        {"commit": "aaa", "fingerprint": {**current, "package": "k1"}, "points": 3},
        {"commit": "bbb", "fingerprint": current, "points": 2}]}
    assert publish._provenance({"f.png": entry}) == "computed at aaa (3 points), bbb (2 points), replayed at bbb"
    files = {kind: [tmp_path / kind] for kind in publish.INPUTS}
    [line] = publish._stale_points("figures/default/f.png", entry, current, files, "default")
    assert line.startswith("figures/default/f.png: 3 of 5 grid points computed by other code (commit aaa: package "
                           "changed") and "--recompute-stale" in line
    assert publish._stale_points("x", {**entry, "computed": entry["computed"][1:]}, current, files, "default") == []
    assert "no record of the code" in publish._stale_points("x", {"notebook": "07_demo"}, current, files, "default")[0]


# 3. Where code and settings come from

def test_a_relative_runs_folder_means_the_callers_folder(tmp_path, nbdir, monkeypatch, capsys):
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    monkeypatch.setenv("PRUNELAB_RUNS", "relruns")
    tiny_notebook(nbdir, "01_where", f"assert str(results.runs_root()) == {str(caller / 'relruns')!r}\nrun.finish()")
    assert cli.main(["run", "01_where", "--profile", "smoke", "--quiet"]) == 0, capsys.readouterr().err
    assert list((caller / "relruns" / "01_where").glob("*/complete.json"))
    assert not (nbdir / "relruns").exists()


def test_a_relative_path_parameter_means_the_callers_folder(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "10_nmt_baseline", "--profile", "smoke", "-p", "folder=profiles"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f'folder="profiles" names nothing that exists ({tmp_path / "profiles"}' in err[0]
    assert not runs.exists()
    (tmp_path / "corpus").mkdir()
    shares = runner.split_overrides(["10_nmt_baseline"], {"folder": "corpus"})
    assert shares["10_nmt_baseline"]["folder"] == str(tmp_path / "corpus")


# 4. Corrupt files inside a run folder

def test_a_corrupt_memo_entry_is_named_and_recomputed(runs, nbdir):
    tiny_notebook(nbdir, "01_memo", "assert run.memo('p', {'i': 0}, lambda: 41 + 1) == 42\nrun.finish()")
    run, _ = runner.run_notebook("01_memo", "smoke", progress=False)
    [entry] = (run.path / "cache").glob("*.json")
    entry.write_text('{"trunc')
    run, executed = runner.run_notebook("01_memo", "smoke", force=True, progress=False)
    assert executed and json.loads(entry.read_text()) == 42
    shown = (run.path / "01_memo.ipynb").read_text()
    assert f"cache entry {entry} cannot be read (JSONDecodeError" in shown and "computing that point again" in shown


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 cut"])
def test_a_damaged_run_file_names_itself_and_fresh_recomputes_it(runs, damage):
    run = results.open_run("07_demo", {"profile": "smoke"})
    run.tensors("masks/m.pt", lambda: {"w": torch.ones(2)})
    (run.path / "masks" / "m.pt").write_bytes(damage)
    with pytest.raises(results.CheckpointError, match=f"checkpoint {run.path / 'masks' / 'm.pt'} cannot be loaded"):
        run.tensors("masks/m.pt", lambda: {"w": torch.zeros(2)})
    results.clear_run(run.path, fresh=True)  # what --fresh does first
    assert torch.equal(run.tensors("masks/m.pt", lambda: {"w": torch.zeros(2)})["w"], torch.zeros(2))


def test_notebooks_read_kept_files_through_the_checked_loader():
    """Models and masks kept in a run folder are read by Run.tensors (names the file), never torch.load."""
    sources = (results.project_root() / "notebooks" / "src").glob("*.py")
    assert [p.name for p in sources if "torch.load(" in p.read_text()] == []


def _fake_papermill(monkeypatch, error):
    import papermill

    def execute(_input, output, **_kw):
        with open(output, "w") as f:
            f.write('{"cells": [{"cell_type": "code", "sou')  # cut short, as a full disk leaves it
        raise error

    monkeypatch.setattr(papermill, "execute_notebook", execute)


def test_a_full_disk_leaves_no_cut_short_notebook(runs, nbdir, monkeypatch):
    import papermill

    tiny_notebook(nbdir, "01_full", "run.finish()")
    path = _run_folder("01_full")
    _fake_papermill(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(RuntimeError, match=r"01_full: the executed notebook could not be written \(.*"
                                           r"\.01_full\.running\.ipynb: No space left on device\)"):
        runner.run_notebook("01_full", "smoke", progress=False)
    _fake_papermill(monkeypatch, papermill.PapermillExecutionError(1, 2, "ValueError", "bad", [], "x = 1"))
    with pytest.raises(RuntimeError, match=r"could not be saved whole \(.*\.01_full\.running\.ipynb: NotJSONError"):
        runner.run_notebook("01_full", "smoke", progress=False)
    assert sorted(p.name for p in path.glob("*ipynb")) == []  # neither a cut-off file nor its scratch copy


def test_a_failed_cell_quotes_the_failing_line(runs, nbdir):
    tiny_notebook(nbdir, "01_fail", "a = 1\nb = 2\nc = a / 0\nd = 4")
    with pytest.raises(RuntimeError, match=r"01_fail failed in cell 3 \(execution count 4, line 3: 'c = a / 0'\) "
                                           r"with ZeroDivisionError"):
        runner.run_notebook("01_fail", "smoke", progress=False)
    assert nbformat.read(_run_folder("01_fail") / "01_fail.failed.ipynb", as_version=4).cells


def test_a_malformed_profile_names_its_file_and_the_others_still_run(runs, nbdir, capsys):
    tiny_notebook(nbdir, "01_good", "run.finish()")
    tiny_notebook(nbdir, "02_bad", "run.finish()", profile="[common]\nx = = 1\n")
    bad = nbdir / "profiles" / "02_bad.toml"
    assert cli.main(["list", "--profile", "smoke"]) == 1
    out = capsys.readouterr().out
    assert "01_good  [smoke]" in out and f"02_bad  cannot be listed: profile file {bad} is not valid TOML" in out
    assert cli.main(["run", "--profile", "smoke", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "01_good" in captured.out and f"skipped 02_bad: profile file {bad} is not valid TOML" in captured.err
    assert list((runs / "01_good").glob("*/complete.json"))
    assert cli.main(["run", "02_bad", "--profile", "smoke"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"profile file {bad} is not valid TOML" in err[0]


def test_report_and_status_name_corrupt_files_and_go_on(runs, capsys):
    from prunelab import executors

    good = results.open_run("07_demo", {"profile": "smoke", "x": 1})
    good.record_claim("fine", "s", "m", 1, "reproduced")
    good.finish()
    broken = results.open_run("07_demo", {"profile": "smoke", "x": 2})
    (broken.path / "claims.csv").write_text('notebook,id\n"unterminated')
    broken.finish()
    other = runs / "08_other" / "abc"
    other.mkdir(parents=True)
    (other / "params.json").write_text("{")
    (runs / "slurm").mkdir()
    job = {"notebook": "07_demo", "hash": good.hash, "kind": "gather", "job_id": "7", "log": "x"}
    (runs / "slurm" / "jobs.jsonl").write_text('{"notebook": "07_de\n' + json.dumps(job) + "\n")
    page = publish.report(runs)
    assert "| fine |" in page and f"claims ledger {broken.path / 'claims.csv'} cannot be read" in page
    text = executors.status(runs)
    err = capsys.readouterr().err
    assert f"{good.hash}: 0/0 grid points, complete" in text and "job 7 (gather)" in text
    assert f"{other / 'params.json'} cannot be read as JSON" in err
    assert f"{runs / 'slurm' / 'jobs.jsonl'} line 1: not a job record" in err
