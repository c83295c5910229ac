"""Trust: weights-only checkpoints, parameters checked before any work, readable files, locks, clear ends."""
import json
import os
import pickle
import signal
import stat
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from notebook_helpers import tiny_notebook
from prunelab import cli, params, results, runner


class _Plant:
    """Unpickling this runs ``Path(marker).touch()``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def _plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Plant(str(marker))}, f)
    torch.save({"state_dict": _Plant(str(marker))}, path)  # the zip format torch.load reads first


def test_planted_checkpoint_never_runs_its_code(runs, tmp_path):
    marker = tmp_path / "pwned"
    path = results.checkpoint_path("toy", {"h": 4})
    _plant(path, marker)
    with pytest.raises(results.CheckpointError, match=f"checkpoint {path} cannot be loaded as weights only"):
        results.cached_checkpoint("toy", {"h": 4}, lambda: {"w": torch.ones(1)})
    assert not marker.exists()
    # the same file loaded the unsafe way would have run it: the test plants real code
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_broken_checkpoint_names_itself_and_fresh_replaces_it(runs, monkeypatch, damage):
    calls = []

    def train():
        calls.append(1)
        return {"state_dict": {"w": torch.arange(4.0)}, "history": [{"epoch": 1, "loss": 0.5}]}

    first = results.cached_checkpoint("toy", {"h": 4}, train)
    path = results.checkpoint_path("toy", {"h": 4})
    blob = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": blob[: len(blob) // 2], "garbage": b"not a checkpoint"}[damage])
    monkeypatch.delenv(results.REPLACE_BAD_CHECKPOINTS, raising=False)
    with pytest.raises(results.CheckpointError) as err:
        results.cached_checkpoint("toy", {"h": 4}, train)
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "--fresh" in message
    assert len(calls) == 1
    monkeypatch.setenv(results.REPLACE_BAD_CHECKPOINTS, "1")
    again = results.cached_checkpoint("toy", {"h": 4}, train)
    assert len(calls) == 2 and torch.equal(again["state_dict"]["w"], first["state_dict"]["w"])
    assert torch.equal(results.load_checkpoint(path)["state_dict"]["w"], torch.arange(4.0))


def test_no_unsafe_torch_load_anywhere():
    """Nothing in the package or the notebooks calls torch.load without weights_only=True."""
    root = results.project_root()
    offenders = []
    for path in [*(root / "prunelab").rglob("*.py"), *(root / "notebooks" / "src").glob("*.py")]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(root)}:{i}")
    assert offenders == []


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(runs, mask, mode):
    old = os.umask(mask)
    try:
        run = results.open_run("nb", {"m": mask})
        run.save_table("t", pd.DataFrame({"a": [1]}))
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        pngs = run.save_figure(fig, "f")
        plt.close(fig)
        run.record_claim("c", "s", "m", 1, "reproduced")
        run.memo("point", {"x": 1}, lambda: {"y": 2})
        results.cached_checkpoint("toy", {"m": mask}, lambda: {"w": torch.ones(2)})
        files = [run.path / "params.json", run.path / "env.json", run.path / "tables" / "t.csv", *pngs,
                 run.path / "claims.csv", *run.path.glob("cache/*.json"), results.checkpoint_path("toy", {"m": mask})]
    finally:
        os.umask(old)
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: oct(mode) for f in files}


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert results.umask() == 0o027 and results.umask() == 0o027
    finally:
        os.umask(old)


# ---- parameters: one checker, every entry point, before any work ----

@pytest.mark.parametrize("notebook", runner.notebooks())
@pytest.mark.parametrize("profile", runner.PROFILES)
def test_every_profile_value_is_declared_and_allowed(notebook, profile):
    resolved = runner.resolve(notebook, profile)  # raises on an undeclared or disallowed value
    types = runner.declared_types(notebook)
    assert set(resolved) - {"profile"} <= set(types)
    assert set(types) == set(resolved) - {"profile"}, "a declared type for a parameter no profile sets"


@pytest.mark.parametrize("key, value, message", [
    ("epochs", -1, "parameter epochs=-1 is out of range; epochs takes an int in [1, 1000]"),
    ("epochs", True, "parameter epochs=true is a bool; epochs takes an int in [1, 1000]"),
    ("epochs", 2.5, "parameter epochs=2.5 is a float; epochs takes an int in [1, 1000]"),
    ("seeds", [], "parameter seeds=[] is empty; seeds takes a non-empty list of ints in [0, 2147483647]"),
    ("seeds", 3, "parameter seeds=3 is an int, not a list; seeds takes a non-empty list of ints in [0, 2147483647]"),
    ("batch_size", 0, "parameter batch_size=0 is out of range; batch_size takes an int in [1, 65536]"),
    ("sparsities", [1.5], "parameter sparsities=[1.5] has item 1.5, which is not allowed; sparsities takes a "
                          "non-empty list of floats in [0, 1)"),
    ("sparsities", [0.5, 1.0], "has item 1.0, which is not allowed"),
    ("lr", float("nan"), "parameter lr=NaN is not finite; lr takes a float > 0"),
    ("schemes", ["blind"], 'has item "blind", which is not allowed; schemes takes a non-empty list of names from '
                           "class-blind, class-uniform, class-distribution, random"),
    ("seeds", params.BareWord("[1,", "Expecting value at character 3"),
     "parameter seeds=[1, is not valid JSON (Expecting value at character 3)"),
])
def test_bad_values_are_refused_in_one_line(key, value, message):
    with pytest.raises(params.ParameterError) as err:
        runner.resolve("00_tour", "smoke", {key: value})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_values_are_converted():
    p = runner.resolve("00_tour", "smoke", {"lr": 1, "sparsities": [0, 0.5], "hidden": [8]})
    assert p["lr"] == 1.0 and isinstance(p["lr"], float) and p["sparsities"] == [0.0, 0.5]
    assert runner.resolve("10_nmt_baseline", "smoke", {"direction": params.BareWord("de-en", "x")})["direction"] == "de-en"


@pytest.mark.parametrize("spec, good, bad", [
    ("float in (0, 1]", [1, 0.5], [0, 1.01]),
    ("int >= 0", [0, 7], [-1, 1.0, "3"]),
    ("list of int >= 1 (may be empty)", [[], [3]], [[0], "x"]),
    ("one of prunelab.models.seq2seq.INITS", ["uniform", "xavier_normal"], ["normal", 1]),
    ("path", ["", "a/b"], [3, None]),
])
def test_spec_grammar(spec, good, bad):
    for value in good:
        params.check_value("x", value, spec)
    for value in bad:
        with pytest.raises(params.ParameterError, match=r"^parameter x="):
            params.check_value("x", value, spec)


def test_malformed_spec_is_named():
    with pytest.raises(ValueError, match="malformed type spec 'integer'"):
        params.parse_spec("integer")


def test_reserved_names_point_to_the_right_flag(runs, capsys):
    assert cli.main(["run", "00_tour", "--profile", "smoke", "-p", "profile=paper"]) == 1
    assert "choose it with --profile" in capsys.readouterr().err
    assert cli.main(["run", "00_tour", "--profile", "smoke", "-p", "run_dir=/tmp/x"]) == 1
    assert "$PRUNELAB_RUNS" in capsys.readouterr().err
    assert cli.main(["run", "00_tour", "--profile", "smoke", "-p", "seeds=[1,"]) == 1
    assert "is not valid JSON" in capsys.readouterr().err
    assert not runs.exists()


def test_papermill_directly_checks_before_any_run_folder(runs):
    """The same checker runs inside the notebook (papermill, JupyterLab): no orphan run folder."""
    import papermill

    nbdir = runner.notebooks_dir()
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(nbdir / "00_tour.ipynb"), str(runs.parent / "out.ipynb"), cwd=str(nbdir),
                                   parameters={"profile": "smoke", "sparsities": [1.5]}, progress_bar=False,
                                   kernel_name="python3")
    assert err.value.ename == "ParameterError" and "sparsities=[1.5]" in err.value.evalue
    assert not (runs / "00_tour").exists()


def test_cli_honours_prunelab_profile(runs, monkeypatch, capsys):
    monkeypatch.setenv("PRUNELAB_PROFILE", "smoke")
    assert cli.main(["run", "00_tour", "--profile", "default", "--quiet"]) == 1
    assert "--profile default disagrees with PRUNELAB_PROFILE=smoke" in capsys.readouterr().err
    assert not runs.exists()
    assert cli.main(["list"]) == 0
    assert "[smoke]" in capsys.readouterr().out


# ---- clear ends ----

def test_report_on_missing_places_is_one_line_and_creates_nothing(tmp_path, capsys):
    assert cli.main(["report", "--runs", str(tmp_path / "none")]) == 1
    assert "nothing to report: no runs folder at" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    (tmp_path / "runs").mkdir()
    assert cli.main(["report", "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "a" / "b.md")]) == 1
    assert "the folder" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_unwritable_runs_folder_is_one_line(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PRUNELAB_RUNS", str(blocker / "runs"))
    assert cli.main(["run", "00_tour", "--profile", "smoke", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0] and "PRUNELAB_RUNS" in err[0]


def test_second_run_of_the_same_folder_is_refused(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "notebooks_dir", lambda: tmp_path / "notebooks")
    tiny_notebook(tmp_path / "notebooks", "01_lock", "run.finish()")
    path = runs / "01_lock" / results.params_hash("01_lock", runner.resolve("01_lock", "smoke"))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom prunelab import results\nfrom pathlib import Path\n"
        f"with results.run_lock(Path({str(path)!r}), 'x'):\n    print('held', flush=True)\n    time.sleep(30)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"01_lock with these parameters is already running in .*pid {holder.pid}"):
            runner.run_notebook("01_lock", "smoke", progress=False)
        assert not (path / "01_lock.failed.ipynb").exists()
    finally:
        holder.kill()
        holder.wait()
    run, executed = runner.run_notebook("01_lock", "smoke", progress=False)  # the lock died with its holder
    assert executed and run.complete


def test_killed_kernel_names_notebook_and_kept_file(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "notebooks_dir", lambda: tmp_path / "notebooks")
    tiny_notebook(tmp_path / "notebooks", "01_killed",
                   "import json, os, signal\nrun.memo('p', {'i': 0}, lambda: 1)\nos.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(RuntimeError) as err:
        runner.run_notebook("01_killed", "smoke", progress=False)
    message = str(err.value)
    assert message.startswith("01_killed: the kernel died") and "01_killed.failed.ipynb" in message
    assert "resumes from the 1 grid point" in message


def test_ctrl_c_is_one_line_that_says_how_to_resume(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "notebooks_dir", lambda: tmp_path / "notebooks")
    monkeypatch.setattr(runner, "notebooks", lambda: ["01_slow"])
    # the kernel sends SIGINT to this process (by pid: its parent may be a launcher), as a terminal's
    # Ctrl-C would; Python's own SIGINT handler is in place whatever an earlier test left installed
    tiny_notebook(tmp_path / "notebooks", "01_slow",
                   "import os, signal, time\nfor i in range(2):\n    run.memo('p', {'i': i}, lambda: i)\n"
                   f"os.kill({os.getpid()}, signal.SIGINT)\ntime.sleep(20)\nrun.finish()")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["run", "01_slow", "--profile", "smoke", "--quiet"]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "profile smoke"  # the profile used is said first
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunelab: 01_slow interrupted; rerunning the same command resumes "
                                               "from the 2 grid points it cached in")


def test_shutdown_sends_no_interrupt_to_the_kernel():
    """jupyter_client SIGINTs a kernel before shutting it down ("KeyboardInterrupt caught in kernel" on
    successful runs when the kernel is still in a handler); the runner's kernel manager does not."""
    import asyncio
    import signal

    from jupyter_client.manager import AsyncKernelManager

    def signals_at_shutdown(cls):
        km = cls(kernel_name="python3")
        sent = []

        async def go():
            await km.start_kernel()
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=60)
            kc.stop_channels()
            original = km._async_signal_kernel

            async def spy(signum):
                sent.append(signum)
                await original(signum)

            km._async_signal_kernel = spy
            await km.shutdown_kernel()
        asyncio.run(go())
        return sent

    assert signal.SIGINT in signals_at_shutdown(AsyncKernelManager)  # the behaviour being avoided exists
    assert signal.SIGINT not in signals_at_shutdown(runner._quiet_kernel_manager())
