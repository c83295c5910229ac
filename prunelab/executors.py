"""Where notebooks run: this machine (the default), sharded over worker processes (one per GPU
when there are several), or a Slurm cluster through submitit.

A sharded notebook runs as ``shards`` jobs at once (`prunelab.shards`: each computes its own
grid points and waits for the others' where it needs them), then one gather run executes it
whole from the cached points and writes its tables, figures and claims: the same bytes as an
unsharded run.  Notebooks without a grid (no ``run.memo``) are not sharded.  On Slurm the
shards are a job array (a second array catches points whose owner was still queued), the
gather job waits for them (``afterany``: a failed shard's points are then computed by the
gather), and the notebooks of a study wait for the one that trains their baseline (``afterok``).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab import results, runner, shards

EXECUTORS = ("local", "slurm")
# Slurm job arrays per notebook. One suffices when every shard runs at once (the shards wait for
# each other's points); a second catches points whose owner was still queued (--max-parallel < N).
ROUNDS = 2


@dataclass(frozen=True)
class SlurmConfig:
    """The Slurm knobs of ``prunelab run --executor slurm`` (None: the cluster's default)."""

    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    max_parallel: int = 0  # 0: no cap on the array's running jobs
    extra: dict[str, str] = field(default_factory=dict)


def shardable(notebook: str) -> bool:
    """Whether ``notebook`` has a grid to split: a code cell that calls ``run.memo``."""
    import nbformat

    nb = nbformat.read(runner.notebooks_dir() / f"{notebook}.ipynb", as_version=4)
    return any(c.cell_type == "code" and "run.memo(" in c.source for c in nb.cells)


def check_shards(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"--shards {n!r}: give a whole number >= 1 (1 runs each notebook in one job)")
    return n


def run_shard(notebook: str, profile: str, overrides: dict[str, Any], index: int, n: int,
              fresh: bool = False, gpu: int | None = None, grace_s: float = 20.0, poll_s: float = 1.0) -> dict:
    """Run shard ``index`` of ``n`` of ``notebook`` until it has computed every point it can reach.

    Each execution stops at the first use of another shard's point; the job then waits for the
    points it was handed placeholders for and executes the notebook again.  It gives up on a
    point whose owner is not running (not started within ``grace_s``, e.g. still queued on a
    full cluster, or ended without it): a later array or the gather run computes those.  Runs in a worker process or a Slurm job; ``gpu`` pins it to
    one GPU (``CUDA_VISIBLE_DEVICES``).

    Returns:
        ``computed`` (points this shard computed), ``executions``, and ``complete``: False when it
        gave up on a point.

    Raises:
        RuntimeError: the notebook failed for a reason other than reaching another shard's point.
    """
    os.environ[shards.SHARD_ENV] = f"{index}/{n}"
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    params = runner.resolve(notebook, profile, overrides)
    path = results.runs_root() / notebook / results.params_hash(notebook, params)
    me = (index, n)
    results.check_run_folder(shards.status_path(path, me).parent)  # <run>/shards/, a real folder of the run's

    def stop_ok(err) -> bool:
        status = shards.read_status(path, me)
        if err.ename == "ShardStop" or (bool(status.get("stop")) and not status.get("error")):
            return True
        # A shard writes no results (the gather does), so a notebook that reads back what it wrote
        # (12 and 31 read their claims ledger) finds nothing there: with no point pending and no
        # error, every point it reached is computed, and that is the shard's end.
        return (err.ename == "FileNotFoundError" and str(path) in (err.evalue or "")
                and not status.get("pending") and not status.get("error"))

    totals = {"computed": 0, "executions": 0, "complete": True}
    try:
        with results.file_lock(shards.alive_path(path, me), wait=False):
            while True:
                shards.status_path(path, me).unlink(missing_ok=True)
                runner._execute(notebook, params, path, fresh, progress=False, stop_ok=stop_ok,
                                output=path / "shards" / f"{index}of{n}.ipynb")
                status = shards.read_status(path, me)
                totals["computed"] += status.get("computed", 0)
                totals["executions"] += 1
                if status.get("stop", "end") == "end":
                    break
                if not _wait_for_points(path, status.get("pending", []), n, grace_s, poll_s):
                    totals["complete"] = False
                    break
    finally:
        os.environ.pop(shards.SHARD_ENV, None)
    return totals


def _wait_for_points(path: Path, files: list[str], n: int, grace_s: float, poll_s: float) -> bool:
    """Wait until every cache file in ``files`` exists; False as soon as one's owner is not running."""
    start = time.monotonic()
    while True:
        missing = [f for f in files if not (path / "cache" / f).exists()]
        if not missing:
            return True
        for f in missing:
            owner = (shards.owner(f.rsplit("-", 1)[1].removesuffix(".json"), n), n)
            started = shards.alive_path(path, owner).exists()
            if started and not _running(shards.alive_path(path, owner)):
                if not (path / "cache" / f).exists():  # ended; it may have cached the point just before
                    return False
            elif not started and time.monotonic() - start > grace_s:
                return False
        time.sleep(poll_s)


def clear_stale_shards(path: Path) -> None:
    """Remove the alive files of shard jobs that are not running (left by an earlier run), so a
    waiting shard does not take a shard that has yet to start for one that has ended."""
    for alive in (Path(path) / "shards").glob("*.alive"):
        if not _running(alive):
            alive.unlink(missing_ok=True)


def _running(alive: Path) -> bool:
    """Whether another process holds ``alive`` (`results.file_lock`), i.e. that shard job runs."""
    import fcntl

    with results.open_lock(alive) as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(f, fcntl.LOCK_UN)
        return False


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_local(notebook: str, profile: str, overrides: dict[str, Any], n: int, force: bool = False,
              fresh: bool = False, progress: bool = True, log=print,
              recompute_stale: bool = False) -> tuple[results.Run, bool]:
    """`runner.run_notebook`, with the grid split over ``n`` worker processes first (one per GPU
    when this machine has several)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    params = runner.resolve(notebook, profile, overrides)
    path = results.runs_root() / notebook / results.params_hash(notebook, params)
    if n == 1 or not shardable(notebook):
        return runner.run_notebook(notebook, profile, overrides, force=force, progress=progress, fresh=fresh,
                                   recompute_stale=recompute_stale, log=log)
    run = results.Run(path, notebook, params)
    if run.complete and not (force or fresh or recompute_stale) and not run.untrusted():
        return run, False
    gpus = _local_gpus()
    results.check_run_folder(path)
    with results.run_lock(path, f"{notebook} with these parameters"):
        if fresh:
            results.clear_run(path, fresh=True)
        clear_stale_shards(path)
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(run_shard, notebook, profile, overrides, i, n, fresh, i % gpus if gpus > 1 else None)
                    for i in range(n)]
            counts = [job.result() for job in jobs]
    results.write_json(path / "shards" / "summary.json", counts)
    log(f"    {n} shards computed {sum(c['computed'] for c in counts)} grid points "
        f"in {sum(c['executions'] for c in counts)} executions", flush=True)
    return runner.run_notebook(notebook, profile, overrides, force=True, progress=progress, log=log)


# ---- Slurm (submitit) ----

def _shared_marker(root: Path) -> Path:
    """A file the submitter writes and every job must see: proof the runs folder is shared."""
    marker = results.real_dir(root / ".prunelab-shared", root) / uuid.uuid4().hex
    results.write_text(marker, f"written by {socket.gethostname()} pid {os.getpid()}\n")
    return marker


def _job_status(root: Path, job_id: str, state: str, detail: str = "") -> None:
    results.write_json(results.real_dir(root / "slurm" / "status", root) / f"{job_id}.json", {"state": state, "detail": detail,
                                                                      "host": socket.gethostname()})


def _slurm_job(kind: str, notebook: str, profile: str, overrides: dict[str, Any], index: int, n: int,
               fresh: bool, marker: str, runs: str) -> dict:
    """What one Slurm job runs (a shard, or the gather run); it records its own end state as JSON."""
    import submitit

    os.environ["PRUNELAB_RUNS"] = runs
    if not Path(marker).exists():
        raise RuntimeError(f"$PRUNELAB_RUNS={runs} is not shared with node {socket.gethostname()}: it cannot see "
                           f"{marker}, which the submitter wrote; put the runs folder on a file system every node mounts")
    job_id = submitit.JobEnvironment().job_id
    root = Path(runs)
    try:
        if kind == "shard":
            out = run_shard(notebook, profile, overrides, index, n, fresh)
        else:
            run, _ = runner.run_notebook(notebook, profile, overrides, force=True, progress=False)
            out = {"run": str(run.path)}
    except BaseException as err:
        _job_status(root, job_id, "FAILED", " ".join(str(err).split())[:500])
        raise
    _job_status(root, job_id, "COMPLETED", json.dumps(out))
    return out


def _dependency(afterok: list[str], afterany: list[str]) -> str:
    parts = [f"afterok:{':'.join(afterok)}"] if afterok else []
    parts += [f"afterany:{':'.join(afterany)}"] if afterany else []
    return ",".join(parts)


def _master(job_id: str) -> str:
    """An array job's id without its index (``123_4`` -> ``123``): a dependency on the whole array."""
    return job_id.split("_")[0]


def submit_slurm(names: list[str], profile: str, shares: dict[str, dict[str, Any]], n: int, cfg: SlurmConfig,
                 force: bool = False, fresh: bool = False, log=print) -> list[dict]:
    """Submit ``names`` to Slurm: per notebook, ``ROUNDS`` shard arrays and a gather job.

    Returns the job records also appended to ``<runs>/slurm/jobs.jsonl`` (``prunelab status``).

    Raises:
        RuntimeError: no ``sbatch`` on this machine.
    """
    if shutil.which("sbatch") is None:
        raise RuntimeError("--executor slurm needs Slurm's sbatch, which is not on this machine's PATH; "
                           "run on a cluster's login node, or use --executor local")
    import submitit

    root = results.runs_root()
    root.mkdir(parents=True, exist_ok=True)
    results.real_dir(root / "slurm" / "logs", root)  # job logs, records and locks: never through a planted link
    marker = str(_shared_marker(root))
    executor = submitit.AutoExecutor(folder=root / "slurm" / "logs" / "%j", cluster="slurm")
    base = dict(timeout_min=cfg.time_min, cpus_per_task=cfg.cpus_per_job, slurm_partition=cfg.partition,
                gpus_per_node=cfg.gpus_per_job or None, mem_gb=cfg.mem_gb,
                slurm_array_parallelism=cfg.max_parallel or 1000)
    base = {k: v for k, v in base.items() if v is not None}
    studies = runner.studies()
    gathers: dict[str, str] = {}
    records = []

    def submit(kind, name, afterok, afterany, count=1):
        extra = {"kill-on-invalid-dep": "yes", **cfg.extra}
        dep = _dependency(afterok, afterany)
        if dep:
            extra["dependency"] = dep
        executor.update_parameters(**base, name=f"prunelab-{name}-{kind}", slurm_additional_parameters=extra)
        args = (kind, name, profile, shares[name])
        if kind == "gather":
            jobs = [executor.submit(_slurm_job, *args, 0, n, fresh, marker, str(root))]
        else:
            jobs = executor.map_array(_slurm_job, *[[a] * count for a in args], list(range(count)), [n] * count,
                                      [fresh] * count, [marker] * count, [str(root)] * count)
        return [(j.job_id, str(j.paths.stderr)) for j in jobs]

    for name in names:
        params = runner.resolve(name, profile, shares[name])
        path = root / name / results.params_hash(name, params)
        run = results.Run(path, name, params)
        if run.complete and not (force or fresh) and not run.untrusted():
            log(f"    {name}: complete, skipped (use --force to rerun)")
            continue
        results.check_run_folder(path)
        if fresh:
            results.clear_run(path, fresh=True)
        clear_stale_shards(path)
        study = next((s for s, members in studies.items() if name in members), None)
        first = studies[study][0] if study else None
        afterok = [gathers[first]] if study and name != first and first in gathers else []
        previous: list[str] = []
        if n > 1 and shardable(name):
            for r in range(ROUNDS):
                ids = submit("shard", name, afterok, [_master(previous[0][0])] if previous else [], n)
                records += [dict(notebook=name, profile=profile, hash=path.name, kind="shard", round=r + 1,
                                 index=i, job_id=j, log=err) for i, (j, err) in enumerate(ids)]
                previous = ids
        [(gid, err)] = submit("gather", name, afterok, [_master(previous[0][0])] if previous else [])
        gathers[name] = gid
        records.append(dict(notebook=name, profile=profile, hash=path.name, kind="gather", round=0, index=0,
                            job_id=gid, log=err))
        log(f"    {name}: submitted {n * ROUNDS if previous else 0} shard jobs and gather job {gid}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    lines = "".join(json.dumps({**r, "submitted": stamp}) + "\n" for r in records)
    with results.file_lock(root / "slurm" / "jobs.jsonl.lock"):
        old = (root / "slurm" / "jobs.jsonl").read_text() if (root / "slurm" / "jobs.jsonl").exists() else ""
        results.write_text(root / "slurm" / "jobs.jsonl", old + lines)
    return records


# ---- status ----

def _queue_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of jobs still known to the scheduler (``squeue``); empty without Slurm."""
    import subprocess

    if not job_ids or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True,
                         text=True).stdout
    return dict(line.split(maxsplit=1) for line in out.splitlines() if line.strip())


def job_states(root: Path | None = None) -> list[dict]:
    """Every submitted job with its state: PENDING/RUNNING (from ``squeue``), COMPLETED or FAILED
    (recorded by the job itself), or ENDED (gone from the queue without a record: killed, timed
    out or out of memory; see its log)."""
    root = root or results.runs_root()
    records = _job_records(root / "slurm" / "jobs.jsonl")
    queued = _queue_states([r["job_id"] for r in records])
    for r in records:
        done = root / "slurm" / "status" / f"{r['job_id']}.json"
        if r["job_id"] in queued:
            r["state"] = queued[r["job_id"]]
        else:
            recorded = results.read_json(done, default=None) if done.exists() else None
            r.update(recorded if isinstance(recorded, dict) else {"state": "ENDED"})
    return records


_RECORD_KEYS = ("notebook", "hash", "kind", "job_id")


def _job_records(path: Path) -> list[dict]:
    """The job records of ``jobs.jsonl``; a line that is not a whole record is named on stderr and skipped."""
    if not path.exists():
        return []
    try:
        results.check_replaceable(path)
        lines = path.read_text().splitlines()
    except (OSError, ValueError, results.UnsafePathError) as err:
        results.warn(f"prunelab: skipping {path}: it cannot be read ({type(err).__name__}: {err})")
        return []
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not all(k in record for k in _RECORD_KEYS):
                raise ValueError(f"a job record holds {', '.join(_RECORD_KEYS)}")
        except ValueError as err:
            results.warn(f"prunelab: skipping {path} line {i}: not a job record ({' '.join(str(err).split())[:120]})")
            continue
        records.append({**record, "job_id": str(record["job_id"])})
    return records


def status(root: Path | None = None, profile: str | None = None) -> str:
    """A page per run folder: grid points done out of those seen, complete or not, and its jobs."""
    root = root or results.runs_root()
    jobs = job_states(root)
    lines = []
    for params_file in sorted(root.glob("*/*/params.json")):
        path = params_file.parent
        recorded = results.read_json(params_file, default=None)
        if not isinstance(recorded, dict):
            continue  # named on stderr by read_json (or not a parameters record): the others are still listed
        run_profile = str(recorded.get("profile", ""))
        if profile and run_profile != profile:
            continue
        done, seen = len(list(path.glob("cache/*.json"))), len(list(path.glob("points/*.json")))
        run = results.Run(path, path.parent.name, {})
        why = run.untrusted() if run.complete else ""
        state = ("complete" if not why else f"not trusted ({why})") if run.complete else "not complete"
        lines.append(f"{path.parent.name} [{run_profile}] {path.name}: {done}/{seen} grid points, {state}")
        for j in [j for j in jobs if j["hash"] == path.name and j["notebook"] == path.parent.name]:
            what = f"shard {j['index']} round {j['round']}" if j["kind"] == "shard" else "gather"
            tail = f", log {j['log']}" if j["state"] in ("FAILED", "ENDED") else ""
            detail = f": {j['detail']}" if j["state"] == "FAILED" and j.get("detail") else ""
            lines.append(f"    job {j['job_id']} ({what}) {j['state']}{detail}{tail}")
    return "\n".join(lines) if lines else f"no runs under {root}"


def wait_slurm(records: list[dict], poll_s: float = 5.0, timeout_min: float = 0, log=print) -> list[dict]:
    """Block until every job in ``records`` has left the queue; returns their final states.

    Raises:
        RuntimeError: a gather job did not complete (names it and its log), or ``timeout_min``
            (0: none) passed first (the jobs keep running; ``prunelab status`` follows them).
    """
    ids = {r["job_id"] for r in records}
    last = ""
    deadline = time.monotonic() + timeout_min * 60 if timeout_min else None
    while True:
        states = [j for j in job_states() if j["job_id"] in ids]
        waiting = [j for j in states if j["state"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]
        line = f"    {len(states) - len(waiting)}/{len(states)} jobs finished"
        if line != last:
            log(line, flush=True)
            last = line
        if not waiting:
            break
        if deadline and time.monotonic() > deadline:
            raise RuntimeError(f"stopped waiting after {timeout_min:g} min with {len(waiting)} jobs still queued or "
                               "running; they go on: follow them with `prunelab status`")
        time.sleep(poll_s)
    bad = [j for j in states if j["kind"] == "gather" and j["state"] != "COMPLETED"]
    if bad:
        raise RuntimeError("; ".join(f"{j['notebook']}: gather job {j['job_id']} {j['state']}"
                                     f"{': ' + j['detail'] if j.get('detail') else ''} (log {j['log']})" for j in bad))
    return states
