"""Grid sharding (local executor, CI) and the suite on a real single-node Slurm (marked slurm)."""
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from prunelab import cli, executors, results, runner, shards


def test_every_point_belongs_to_exactly_one_shard():
    keys = [dict(seed=s, scheme=c, sparsity=x) for s in range(3) for c in "abcd" for x in (0.1, 0.5, 0.9)]
    for n in (1, 2, 3, 7):
        owners = [shards.shard_of("point", k, n) for k in keys]
        assert all(0 <= o < n for o in owners)
        assert owners == [shards.shard_of("point", dict(reversed(list(k.items()))), n) for k in keys]  # key order
    assert len({shards.shard_of("point", k, 3) for k in keys}) == 3  # the grid is spread, not piled on one


def test_shard_environment_is_checked(monkeypatch):
    for bad in ("3/3", "x/2", "1"):
        monkeypatch.setenv(shards.SHARD_ENV, bad)
        with pytest.raises(ValueError, match=shards.SHARD_ENV):
            shards.current()
    monkeypatch.setenv(shards.SHARD_ENV, "1/3")
    assert shards.current() == (1, 3)


def test_pending_stops_the_shard_on_first_use(runs, monkeypatch):
    run = results.open_run("nb", {})
    key = next(dict(i=i) for i in range(50) if shards.shard_of("p", dict(i=i), 2) == 1)
    monkeypatch.setenv(shards.SHARD_ENV, "0/2")
    value = run.memo("p", key, lambda: {"y": 1})
    assert isinstance(value, shards.Pending)
    for use in (lambda: value["y"], lambda: float(value), lambda: list(value), lambda: value + 1):
        with pytest.raises(shards.ShardStop):
            use()
    with pytest.raises(shards.ShardStop):
        run.save_table("t", pd.DataFrame({"a": [1]}))  # a shard with pending points writes no partial table
    with pytest.raises(shards.ShardStop):
        run.finish()
    assert not (run.path / "tables").exists() and not (run.path / "complete.json").exists()


def test_bad_shards_and_executor_are_refused(runs, capsys):
    assert cli.main(["run", "00_tour", "--profile", "smoke", "--shards", "0"]) == 1
    assert "--shards 0: give a whole number >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "00_tour", "--profile", "smoke", "--executor", "pbs"])
    assert "invalid choice: 'pbs'" in capsys.readouterr().err
    assert cli.main(["run", "00_tour", "--profile", "smoke", "--executor", "slurm", "--mem", "lots"]) == 1
    assert "--mem 'lots'" in capsys.readouterr().err
    assert not runs.exists()


def test_slurm_without_sbatch_is_a_clear_error(runs, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli.main(["run", "00_tour", "--profile", "smoke", "--executor", "slurm"]) == 1
    assert "--executor slurm needs Slurm's sbatch, which is not on this machine's PATH" in capsys.readouterr().err


def test_a_runs_folder_the_job_cannot_see_is_named(tmp_path):
    with pytest.raises(RuntimeError, match=r"is not shared with node .*: it cannot see .*marker"):
        executors._slurm_job("gather", "00_tour", "smoke", {}, 0, 1, False, str(tmp_path / "marker"), str(tmp_path))


def _tables(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((path / "tables").glob("*.csv"))}


def test_sharded_tour_equals_unsharded_and_computes_each_point_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path / "plain"))
    plain, _ = runner.run_notebook("00_tour", "smoke", progress=False)
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path / "sharded"))
    sharded, executed = executors.run_local("00_tour", "smoke", {}, 3, progress=False, log=lambda *a, **k: None)
    assert executed and sharded.complete
    assert _tables(sharded.path) == _tables(plain.path)  # byte for byte
    summary = json.loads((sharded.path / "shards" / "summary.json").read_text())
    cached = len(list((sharded.path / "cache").glob("*.json")))
    assert sum(c["computed"] for c in summary) == cached == 24  # every point once, by the shards; gather none
    assert all(c["computed"] > 0 and c["complete"] for c in summary)  # all three worked, none gave up
    assert (sharded.path / "00_tour.ipynb").exists() and not (sharded.path / "00_tour.failed.ipynb").exists()
    assert f"00_tour [smoke] {sharded.hash}: 24/24 grid points, complete" in executors.status(tmp_path / "sharded")


def test_status_of_a_missing_runs_folder_is_one_line(tmp_path, capsys):
    assert cli.main(["status", "--runs", str(tmp_path / "none")]) == 1
    assert "no runs folder at" in capsys.readouterr().err and not (tmp_path / "none").exists()


def _train_once(path, log):
    from prunelab import results as r

    def train():
        with open(log, "a") as f:
            f.write("trained\n")
        time.sleep(1.0)
        return {"w": __import__("torch").ones(2)}

    os.environ["PRUNELAB_RUNS"] = path
    return float(r.cached_checkpoint("toy", {"h": 1}, train)["w"].sum())


def test_checkpoint_is_trained_once_when_jobs_race(tmp_path):
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        got = pool.starmap(_train_once, [(str(tmp_path / "runs"), str(log))] * 3)
    assert got == [2.0, 2.0, 2.0]
    assert log.read_text() == "trained\n"  # one process trained, two waited on the lock and loaded it


def test_shard_killed_mid_point_loses_nothing_and_a_rerun_completes(runs, tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    (nbdir / "profiles").mkdir(parents=True)
    (nbdir / "profiles" / "01_grid.toml").write_text('[common]\nx = 1\n[types]\nx = "int"\n')
    marker = tmp_path / "killed-once"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    body = (f"import os, signal\nfrom pathlib import Path\nfrom prunelab import results\n"
            f"run = results.Run(Path(run_dir), '01_grid', {{}})\n"
            f"def point(i):\n"
            f"    if i == 5 and not Path({str(marker)!r}).exists():\n"
            f"        Path({str(marker)!r}).touch()\n"
            f"        os.kill(os.getpid(), signal.SIGKILL)\n"
            f"    return i * i\n"
            f"rows = [run.memo('p', dict(i=i), lambda: point(i)) for i in range(8)]\n"
            f"run.save_table('squares', __import__('pandas').DataFrame(dict(y=rows)))\nrun.finish()")
    nb.cells = [nbformat.v4.new_code_cell("profile = ''\nx = None\nrun_dir = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, nbdir / "01_grid.ipynb")
    monkeypatch.setenv("PRUNELAB_NOTEBOOKS", str(nbdir))  # seen by the shard worker processes too
    with pytest.raises(RuntimeError, match="01_grid: the kernel died"):
        executors.run_local("01_grid", "smoke", {}, 2, progress=False, log=lambda *a, **k: None)
    path = runs / "01_grid" / results.params_hash("01_grid", runner.resolve("01_grid", "smoke"))
    kept = {p.name for p in (path / "cache").glob("*.json")}
    assert kept and len(kept) < 8  # what finished is cached
    run, executed = executors.run_local("01_grid", "smoke", {}, 2, progress=False, log=lambda *a, **k: None)
    assert executed and run.load_table("squares").y.tolist() == [i * i for i in range(8)]
    summary = json.loads((path / "shards" / "summary.json").read_text())
    assert sum(c["computed"] for c in summary) == 8 - len(kept)  # nothing recomputed


# ---- a real Slurm: tools/slurm_up.sh brings up a single-node cluster ----

def _slurm_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


TIMED = re.compile(r"seconds|_s$|_s_per_epoch|latency_cpu|speedup")


def _untimed(df: pd.DataFrame) -> pd.DataFrame:
    """A table without its wall-clock measurements (columns, or rows of a metric/value table)."""
    df = df.drop(columns=[c for c in df.columns if TIMED.search(c)])
    if list(df.columns) == ["metric", "value"]:
        df = df[~df.metric.str.contains("seconds")].reset_index(drop=True)
    return df


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_suite_on_slurm_with_three_shards_equals_local(tmp_path, monkeypatch):
    if not _slurm_up():
        pytest.skip("no Slurm cluster up (bash tools/slurm_up.sh starts a single-node one)")
    names = os.environ.get("PRUNELAB_SLURM_TEST_NOTEBOOKS", "00_tour,20_obd_snip").split(",")
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path / "local"))
    assert cli.main(["run", *names, "--profile", "smoke", "--quiet"]) == 0
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path / "slurm"))
    assert cli.main(["run", *names, "--profile", "smoke", "--executor", "slurm", "--shards", "3", "--wait",
                     "--time", "20", "--mem", "2G", "--wait-timeout", "25"]) == 0
    for name in names:
        [local] = (tmp_path / "local" / name).glob("*/complete.json")
        [slurm] = (tmp_path / "slurm" / name).glob("*/complete.json")
        for table in sorted((local.parent / "tables").glob("*.csv")):
            a, b = (_untimed(pd.read_csv(t / table.name)) for t in (local.parent / "tables", slurm.parent / "tables"))
            pd.testing.assert_frame_equal(a, b, obj=f"{name} {table.name}")
            if a.shape == pd.read_csv(table).shape:  # nothing timed: the same bytes
                assert table.read_bytes() == (slurm.parent / "tables" / table.name).read_bytes(), table.name
    status = executors.status(tmp_path / "slurm")
    assert "COMPLETED" in status and "FAILED" not in status and "ENDED" not in status
