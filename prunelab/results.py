"""Run folders, atomic tables and figures, cached checkpoints and the claims ledger.

A run folder is ``<runs root>/<notebook>/<hash of the parameters>/`` and holds
``params.json``, ``env.json``, ``tables/*.csv``, ``figures/*.{png,pdf}``, ``claims.csv``,
the executed notebook, the memoised grid points (``cache/``, with the code that computed each
in ``computed/`` and the points the last execution asked for in ``points/``), kept models and
masks, and, once the notebook finished, ``complete.json``: the SHA-256 of every file a report
or a publish reads (`Run.seal`), so a folder edited afterwards is not trusted.

On a runs folder shared with others, everything here writes, locks and deletes only real
folders under the runs root (`real_dir`) and regular files (`check_replaceable`, `open_lock`):
a planted symlink, FIFO or device is refused in one line, never followed or replaced.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

# "within noise": the run decided that the difference the claim is about is not beyond noise
# (a paired bootstrap or seed spread says so); "inconclusive": the run cannot judge it at all.
VERDICTS = ("reproduced", "not reproduced", "within noise", "inconclusive")
# `overrides`: "key=value" pairs (JSON values, space-separated) where the run's parameters differ from its
# profile's; empty for a profile's own run. Ledgers written before the column existed read as "".
CLAIM_COLUMNS = ["notebook", "params_hash", "profile", "overrides", "id", "statement", "metric", "value", "verdict",
                 "detail"]
# What a run executes or installs: "dirty" is judged over these only, so the suite's own outputs
# (figures/, runs/, data/) and files no run reads (tests/, tools/, benchmarks/, README) never mark it.
CODE_PATHS = ("prunelab", "notebooks", "pyproject.toml", "environment.yml")


def project_root() -> Path:
    """The checkout holding ``notebooks/`` (the parent of the package), else the working directory."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "notebooks").is_dir() else Path.cwd()


def runs_root() -> Path:
    """Where run folders live: ``$PRUNELAB_RUNS`` or ``<project>/runs``."""
    return Path(os.environ.get("PRUNELAB_RUNS") or project_root() / "runs")


def params_hash(notebook: str, params: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the notebook name and its sorted, JSON-encoded parameters."""
    text = json.dumps({"notebook": notebook, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def umask() -> int:
    """The process's umask (read from ``/proc`` where it can be, so it is never changed, even briefly)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class UnsafePathError(RuntimeError):
    """A path prunelab would write, lock or delete that is not its own (a symlink, a device, a FIFO...)."""


_KINDS = ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind_of(mode: int) -> str:
    """What an ``lstat`` mode names, in words: ``a symlink``, ``a FIFO``, ..., ``a regular file``."""
    return next((name for test, name in _KINDS if test(mode)), "a regular file")


def real_dir(path: Path, root: Path) -> Path:
    """``path``, a real folder under ``root``, made where missing: no part of it below ``root`` may be
    a symlink or anything but a folder, so nothing written into it lands outside ``root``.

    ``root`` itself may be a symlink (a runs folder on scratch space is the user's choice).

    Raises:
        UnsafePathError: one line naming the part that is not a real folder.
    """
    path, root = Path(path), Path(root)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise UnsafePathError(f"{path} is not under {root}; prunelab writes run files only there") from None
    root.mkdir(parents=True, exist_ok=True)
    here = root
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"{path} leaves {root} ({part!r}); prunelab writes run files only under it")
        here = here / part
        try:
            os.mkdir(here)
        except FileExistsError:
            pass
        mode = os.lstat(here).st_mode
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(f"{here} is {kind_of(mode)}, not a real folder; prunelab writes, locks and deletes only "
                                  f"in folders of its own under {root}: move it away")
    return path


def check_replaceable(path: Path) -> None:
    """Refuse to replace ``path`` unless it is absent or a regular file (never a symlink, device, FIFO).

    Raises:
        UnsafePathError: one line naming the path and what it is.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise UnsafePathError(f"{path} is {kind_of(mode)}, not a regular file; prunelab replaces only regular files "
                              "of its own: move it away")


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    The file gets the mode any new file would (0644 under umask 022), not ``mkstemp``'s 0600,
    so collaborators on a shared file system can read results.  Only an absent path or a regular
    file is replaced (`check_replaceable`): never a symlink, a device or a FIFO.
    """
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        check_replaceable(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True)


def git_commit(root: Path | None = None) -> str:
    """The checkout's HEAD commit; ``<sha>-dirty-<12 hex>`` when the code (`CODE_PATHS`) differs from it.

    The 12 hex digits are the SHA-256 of ``git diff HEAD`` over the code paths plus the names and
    bytes of untracked, not ignored files there, so two runs of differently edited code are told
    apart and two runs of the same edit agree.  Changes elsewhere (``figures/``, ``runs/``,
    ``data/``, tests) never mark a commit dirty.  ``unknown`` outside git.

    >>> git_commit()  # doctest: +SKIP
    '3f2c...9ab1-dirty-5e0c41d2a7b9'
    """
    root = Path(root or project_root())
    try:
        head = _git(root, "rev-parse", "HEAD").stdout.decode().strip()
        diff = _git(root, "diff", "HEAD", "--binary", "--", *CODE_PATHS).stdout
        untracked = _git(root, "ls-files", "-z", "--others", "--exclude-standard", "--", *CODE_PATHS).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if not diff and not untracked:
        return head
    digest = hashlib.sha256(diff)
    for name in sorted(n for n in untracked.split(b"\0") if n):
        digest.update(b"\0untracked " + name + b"\0")
        path = root / os.fsdecode(name)
        digest.update(path.read_bytes() if path.is_file() else b"")
    return f"{head}-dirty-{digest.hexdigest()[:12]}"


def environment() -> dict[str, Any]:
    """Versions, device and commit, recorded with every run."""
    import sys

    import torch
    import torchvision

    from prunelab import __version__

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "prunelab": __version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda if cuda else None,
        "git_commit": git_commit(),
    }


RECOMPUTE_STALE = "PRUNELAB_RECOMPUTE_STALE"  # "1": recompute the memo points that older code computed
# What `Run.seal` records in complete.json: everything a report or a publish reads from a finished run.
SEALED = ("params.json", "env.json", "claims.csv", "tables", "figures")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Run:
    """One run folder of one notebook at one parameter set."""

    path: Path
    notebook: str
    params: dict[str, Any]
    overrides: tuple[str, ...] = ()  # "key=value" where params differ from the profile's (`runner.overridden`)
    # The code that runs: {"commit": ..., "fingerprint": {notebook, profile, package digests}}; recorded with
    # every memo point it computes, so a published number says which code computed it.
    code: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def hash(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return (self.path / "complete.json").exists()

    def folder(self, name: str) -> Path:
        """``<run>/<name>/``, a real folder of this run's (`real_dir`), made where missing."""
        return real_dir(self.path / name, self.path)

    def save_table(self, name: str, df: pd.DataFrame) -> Path:
        """Write ``tables/<name>.csv`` atomically (tidy: one row per measurement)."""
        path = self.path / "tables" / f"{name}.csv"
        if not self._shard_writes():
            return path
        self.folder("tables")
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
        return path

    def load_table(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.path / "tables" / f"{name}.csv")

    def save_figure(self, fig, name: str) -> list[Path]:
        """Write ``figures/<name>.png`` and ``.pdf`` with fixed metadata, so a rerun gives the same bytes."""
        title = f"prunelab {self.notebook} {self.hash} {name}"
        meta = {
            ".png": {"Software": None, "Title": title},
            ".pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None, "Title": title},
        }
        paths = []
        writes = self._shard_writes()
        for ext, metadata in meta.items():
            path = self.path / "figures" / f"{name}{ext}"
            paths.append(path)
            if not writes:
                continue
            self.folder("figures")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext[1:], metadata=metadata, dpi=120, bbox_inches="tight")
        return paths

    def record_claim(self, id: str, statement: str, metric: str, value: Any, verdict: str, detail: str = "") -> pd.DataFrame:
        """Add (or replace) claim ``id`` in this run's ledger ``claims.csv`` and return the ledger."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        path = self.path / "claims.csv"
        if not self._shard_writes():
            return pd.DataFrame([dict(notebook=self.notebook, id=id, verdict=verdict)])
        ledger = read_claims(path) if path.exists() else pd.DataFrame(columns=CLAIM_COLUMNS)
        ledger = ledger[ledger["id"] != id]
        row = dict(notebook=self.notebook, params_hash=self.hash, profile=self.params.get("profile", ""),
                   overrides=" ".join(self.overrides), id=id, statement=statement, metric=metric, value=value,
                   verdict=verdict, detail=detail)
        ledger = pd.concat([ledger, pd.DataFrame([row]).astype(str)], ignore_index=True)
        with atomic_path(path) as tmp:
            ledger.to_csv(tmp, index=False)
        return ledger

    def memo(self, name: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """Return ``compute()``, cached as JSON under ``cache/`` by ``key``.

        A notebook interrupted half-way through its grid resumes from the points it finished.
        The value must be JSON (dicts, lists, str, int, float, bool, None); a fresh call returns
        it as read back from the cache (keys sorted), so a resumed run builds exactly the same
        tables as one that never stopped.  Beside each value, ``computed/`` records the code that
        computed it (`Run.code`); with ``$PRUNELAB_RECOMPUTE_STALE=1`` (``prunelab run
        --recompute-stale``) a point computed by other code is computed again.  A corrupt cache
        entry is one line naming the file, and its point is computed again.  In a shard job
        (`prunelab.shards`) only this shard's points are computed; another shard's point not
        cached yet comes back as `shards.Pending`.  Every point asked for is listed under
        ``points/`` (``prunelab status`` counts them; `computed_by` reads them back).
        """
        from prunelab import shards

        digest = params_hash(name, key)
        path = self.path / "cache" / f"{name}-{digest}.json"
        seen = self.path / "points" / path.name
        if not seen.exists():
            self.folder("points")
            write_json(seen, {"name": name, "key": key})
        cached = self._cached(path)
        if cached is not _MISSING:
            return cached
        shard = shards.current()
        if shard is not None and shards.owner(digest, shard[1]) != shard[0]:
            shards.note(self.path, shard, "pending", path.name)
            return shards.Pending(f"{name} {json.dumps(key, sort_keys=True, default=str)}", self.path)
        try:
            value = compute()
        except shards.ShardStop:
            raise
        except BaseException:
            if shard is not None:
                shards.note(self.path, shard, "error")
            raise
        try:
            text = json.dumps(value, indent=2, sort_keys=True)
        except TypeError as err:
            raise TypeError(f"memo {name!r} at {key}: the value must be JSON (dicts, lists, str, numbers, bool, "
                            f"None), convert it first ({err})") from None
        self.folder("computed")
        write_json(self.path / "computed" / path.name, self.code)
        self.folder("cache")
        write_text(path, text + "\n")
        if shard is not None:
            shards.note(self.path, shard, "computed")
        return json.loads(text)

    def _cached(self, path: Path) -> Any:
        """The value cached at ``path``; `_MISSING` when absent, corrupt, or stale under `RECOMPUTE_STALE`."""
        if not path.exists():
            return _MISSING
        if os.environ.get(RECOMPUTE_STALE) == "1" and self.code:
            recorded = read_json(self.path / "computed" / path.name, default=None, quiet=True)
            if not recorded or recorded.get("fingerprint") != self.code.get("fingerprint"):
                return _MISSING
        try:
            check_replaceable(path)
            return json.loads(path.read_text())
        except (ValueError, UnsafePathError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            warn(f"prunelab: cache entry {path} cannot be read ({type(err).__name__}: {_short(err)}); "
                 "computing that point again")
            return _MISSING

    def tensors(self, name: str, compute: Callable[[], dict], map_location: Any = "cpu") -> dict:
        """The dict of tensors kept at ``<run>/<name>`` (e.g. ``masks/x.pt``), or ``compute()`` saved there.

        Loaded through `load_checkpoint` (weights only; a corrupt file is one error naming it and
        ``prunelab run --fresh`` recomputes it), written atomically.
        """
        import torch

        path = self.path / name
        if path.exists():
            try:
                return load_checkpoint(path, map_location)
            except CheckpointError as err:
                if os.environ.get(REPLACE_BAD_CHECKPOINTS) != "1":
                    raise
                print(f"{err.args[0].split(' (')[0]}: computing it again", flush=True)
        obj = compute()
        self.folder(Path(name).parent.as_posix())
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
        return obj

    def _shard_writes(self) -> bool:
        """In a shard job results are written by the gather run only; a shard that left points
        pending stops at its first write (its tables would be partial)."""
        from prunelab import shards

        if shards.has_pending(self.path):
            raise shards.stop(self.path, "write", "results need points other shards compute")
        return shards.current() is None

    def finish(self) -> None:
        """Mark the run complete (the runner skips complete runs unless forced) and seal it (`seal`)."""
        from prunelab import shards

        if shards.current() is not None:
            raise shards.stop(self.path, "end", "a shard never finishes a run: the gather run does")
        self.seal()

    def sealed_files(self) -> list[str]:
        """The files `seal` records: `SEALED` and the executed notebook, as paths relative to the run."""
        names = []
        for name in (*SEALED, f"{self.notebook}.ipynb"):
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                names += [p.relative_to(self.path).as_posix() for p in sorted(path.rglob("*")) if not p.is_dir()]
            elif os.path.lexists(path):
                names.append(name)
        return names

    def seal(self) -> None:
        """Write ``complete.json``: the run's notebook, hash and the SHA-256 of each file it reports
        (`sealed_files`), so a later run, report or publish can tell a finished run from a tampered one."""
        files = {}
        for name in self.sealed_files():
            check_replaceable(self.path / name)  # a symlink or a FIFO here is no file of this run's
            files[name] = sha256_file(self.path / name)
        write_json(self.path / "complete.json", {"notebook": self.notebook, "hash": self.hash, "files": files})

    def untrusted(self) -> str:
        """Why this run's results cannot be trusted as a finished run's; "" when ``complete.json``
        matches the files (`seal`).  Names the file that changed, appeared or went missing."""
        record = read_json(self.path / "complete.json", default=None, quiet=True)
        if record is None:
            return "not finished (no readable complete.json)"
        files = record.get("files") if isinstance(record, dict) else None
        if not isinstance(files, dict):
            return "complete.json records no file digests (finished by an older prunelab, or written by hand)"
        present = set(self.sealed_files())
        for name in sorted(present | set(files)):
            path = self.path / name
            if name not in files:
                return f"{name} appeared after the run finished"
            if name not in present:
                return f"{name} went missing after the run finished"
            mode = os.lstat(path).st_mode
            if not stat.S_ISREG(mode):
                return f"{name} is {kind_of(mode)}"
            if sha256_file(path) != files[name]:
                return f"{name} changed after the run finished"
        return ""


_MISSING = object()


def warn(line: str) -> None:
    """One line to stderr (what was skipped or not trusted, and why)."""
    print(line, file=sys.stderr, flush=True)


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def read_json(path: Path, default: Any = _MISSING, quiet: bool = False) -> Any:
    """The JSON in ``path``; ``default`` (when given) if it is absent or cannot be read, with one line
    on stderr naming it unless ``quiet``; without ``default`` a ValueError naming the file."""
    path = Path(path)
    try:
        check_replaceable(path)
        return json.loads(path.read_text())
    except FileNotFoundError:
        if default is _MISSING:
            raise
        return default
    except (ValueError, UnsafePathError, OSError) as err:
        message = f"{path} cannot be read as JSON ({type(err).__name__}: {_short(err)})"
        if default is _MISSING:
            raise ValueError(message) from None
        if not quiet:
            warn(f"prunelab: skipping {message}")
        return default


def computed_by(path: Path) -> list[dict[str, Any]]:
    """Which code computed the grid points the run's last execution used (``points/``, `Run.memo`):
    one ``{"commit", "fingerprint", "points"}`` per distinct code, most points first; points whose
    code was not recorded count under commit ``unknown`` with no fingerprint."""
    groups: dict[str, dict[str, Any]] = {}
    for point in sorted((Path(path) / "points").glob("*.json")):
        code = read_json(Path(path) / "computed" / point.name, default=None, quiet=True) or {}
        code = {"commit": code.get("commit", "unknown"), "fingerprint": code.get("fingerprint")}
        group = groups.setdefault(json.dumps(code, sort_keys=True), {**code, "points": 0})
        group["points"] += 1
    return sorted(groups.values(), key=lambda g: (-g["points"], g["commit"]))


def check_run_folder(path: Path) -> Path:
    """``path`` as a run folder prunelab may write and delete in: a real folder, and under the runs
    root (`runs_root`) every folder between them real too (`real_dir`); made where missing."""
    path, root = Path(path), runs_root()
    try:
        path.relative_to(root)
    except ValueError:
        root = path.parent  # a run folder placed by hand (run_dir in JupyterLab): the folder itself must be real
    return real_dir(path, root)


# What a rerun keeps of a run folder: its lock, and unless fresh the points it computed and what they need.
_KEPT = (".lock",)
_KEPT_UNLESS_FRESH = ("cache", "computed", "masks", "models", "shards")


def clear_run(path: Path, fresh: bool = False) -> None:
    """Empty a run folder before it runs again: everything but its lock and, unless ``fresh``, the
    cached grid points, kept models and masks and shard records (`_KEPT_UNLESS_FRESH`).

    Deletes only inside a real run folder (`check_run_folder`), unlinking symlinks, never following them.
    """
    path = check_run_folder(path)
    keep = set(_KEPT) | (set() if fresh else set(_KEPT_UNLESS_FRESH))
    for entry in os.scandir(path):
        if entry.name in keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def open_run(notebook: str, params: dict[str, Any], run_dir: str | Path | None = None,
             overrides: tuple[str, ...] = (), fingerprint: dict[str, str] | None = None) -> Run:
    """Create (or reopen) the run folder of ``notebook`` at ``params`` and record params and env.

    ``overrides`` (``"key=value"`` where ``params`` differ from the profile's) mark the run's claims;
    ``fingerprint`` (`runner.fingerprint`: hashes of the code that runs) goes into ``env.json`` and,
    with the commit, into `Run.code`.  The folder must be a real one (`check_run_folder`).
    """
    path = Path(run_dir) if run_dir else runs_root() / notebook / params_hash(notebook, params)
    check_run_folder(path)
    env = environment()
    write_json(path / "params.json", {"notebook": notebook, **params})
    write_json(path / "env.json", {**env, **({"fingerprint": fingerprint} if fingerprint else {})})
    code = {"commit": env["git_commit"], "fingerprint": fingerprint} if fingerprint else {}
    return Run(path=path, notebook=notebook, params=dict(params), overrides=tuple(overrides), code=code)


def verdict(holds: bool | None) -> str:
    """``reproduced`` if a claim's test holds, ``not reproduced`` if not, ``inconclusive`` for None."""
    return "inconclusive" if holds is None else ("reproduced" if holds else "not reproduced")


def margin_verdict(low: float, high: float, margin: float) -> str:
    """Verdict of "a is within ``margin`` of b, or better" from the 95% interval [low, high] of a - b.

    ``reproduced`` if the whole interval lies above ``-margin``, ``not reproduced`` if it lies
    below, else ``within noise`` (the run cannot tell).  The one rule of every "costs at most
    ``margin`` BLEU" claim (notebooks 11, 12, 13).

    >>> margin_verdict(-0.4, 0.2, 0.5), margin_verdict(-3.7, -2.3, 0.5), margin_verdict(-0.9, 0.2, 0.5)
    ('reproduced', 'not reproduced', 'within noise')
    """
    if low > -margin:
        return "reproduced"
    if high < -margin:
        return "not reproduced"
    return "within noise"


def significance_verdict(holds: bool, beyond_noise: bool) -> str:
    """Verdict of a claim judged against noise: ``reproduced`` / ``not reproduced`` only when
    the test (``holds`` or its opposite) is beyond noise, else ``within noise``.

    >>> significance_verdict(True, beyond_noise=False)
    'within noise'
    """
    if not beyond_noise:
        return "within noise"
    return "reproduced" if holds else "not reproduced"


def ordering_verdict(outcomes: dict[Any, str]) -> str:
    """Verdict of an order claimed at several points (sparsities), each point's outcome judged
    against noise: ``holds``, ``fails`` or ``within noise``.  ``not reproduced`` where it fails
    beyond noise anywhere; ``reproduced`` where it fails nowhere and holds beyond noise at half
    of the points or more; else ``within noise``; ``inconclusive`` without points.

    >>> ordering_verdict({0.5: "holds", 0.7: "within noise", 0.9: "holds"})
    'reproduced'
    """
    if not outcomes:
        return "inconclusive"
    values = list(outcomes.values())
    if "fails" in values:
        return "not reproduced"
    return "reproduced" if 2 * values.count("holds") >= len(values) else "within noise"


def checkpoint_path(kind: str, params: dict[str, Any]) -> Path:
    """Where the checkpoint of model ``kind`` trained with ``params`` is cached (shared by notebooks)."""
    return runs_root() / "checkpoints" / f"{kind}-{params_hash(kind, params)}.pt"


REPLACE_BAD_CHECKPOINTS = "PRUNELAB_REPLACE_BAD_CHECKPOINTS"  # "1": retrain over an unreadable checkpoint


class CheckpointError(RuntimeError):
    """A cached checkpoint that cannot be loaded as weights only (corrupt, truncated, or carrying code)."""


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain values, never pickled code.

    Raises:
        CheckpointError: one line naming the file, why it failed and what to do.
    """
    import torch

    try:
        check_replaceable(path)
        if Path(path).stat().st_size == 0:
            raise ValueError("the file is empty")
        obj = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(obj, dict):
            raise ValueError(f"it holds an object of type {type(obj).__name__}, not a dict")
        return obj
    except Exception as err:  # noqa: BLE001 (torch raises many kinds for a bad file; all mean the same here)
        reason = " ".join(str(err).split())
        reason = reason[:200] + ("..." if len(reason) > 200 else "")
        raise CheckpointError(f"checkpoint {path} cannot be loaded as weights only ({type(err).__name__}: {reason}); "
                              f"delete it, or rerun with `prunelab run --fresh` (or {REPLACE_BAD_CHECKPOINTS}=1) "
                              "to retrain and replace it") from None


def cached_checkpoint(kind: str, params: dict[str, Any], train: Callable[[], dict]) -> dict:
    """Load the cached checkpoint of ``kind`` at ``params``, or call ``train()`` and cache its result.

    ``train`` returns a dict of tensors/plain values (e.g. ``{"state_dict": ..., "history": ...}``).
    The cache is loaded weights-only (`load_checkpoint`); an unreadable one is an error unless
    ``$PRUNELAB_REPLACE_BAD_CHECKPOINTS`` is ``1`` (``prunelab run --fresh`` sets it), which retrains.
    """
    import torch

    path = checkpoint_path(kind, params)
    real_dir(path.parent, runs_root())
    # Several jobs may want the same checkpoint at once (shards, notebooks of one study on a
    # cluster): the first trains it under the lock, the others wait and then load it.
    with file_lock(path.with_name(path.name + ".lock")):
        if path.exists():
            try:
                return load_checkpoint(path)
            except CheckpointError as err:
                if os.environ.get(REPLACE_BAD_CHECKPOINTS) != "1":
                    raise
                print(f"{err.args[0].split(' (')[0]}: retraining and replacing it", flush=True)
        obj = train()
        with atomic_path(path) as tmp:
            torch.save({**obj, "params": params}, tmp)
        return obj


@contextmanager
def file_lock(path: Path, wait: bool = True):
    """Hold an exclusive POSIX record lock (``lockf``) on ``path`` for the block.

    POSIX locks are the ones NFS (v4, or v3 with lockd) and other network file systems honour
    across nodes, so shard jobs on a cluster sharing ``$PRUNELAB_RUNS`` exclude each other. The
    file holds who has the lock (pid, host, since when) and is left in place (deleting a lock
    file races with the next taker).  It is opened without following a symlink and without
    truncating, and must be a regular file: a planted symlink or FIFO is refused, never written.

    Yields:
        the open lock file. Raises BlockingIOError when ``wait`` is False and another process holds
        it; `UnsafePathError` when ``path`` is not a regular file.
    """
    import fcntl
    import socket
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open_lock(path)
    with f:
        fcntl.lockf(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield f
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.lockf(f, fcntl.LOCK_UN)


def open_lock(path: Path):
    """``path`` opened read-write for a lock: made if missing (the umask's mode), never through a symlink."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if os.path.islink(path):
            raise UnsafePathError(f"lock file {path} is a symlink; prunelab locks only regular files of its own: "
                                  "remove it") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafePathError(f"lock file {path} is {kind_of(mode)}, not a regular file; prunelab locks only regular "
                              "files of its own: remove it")
    return os.fdopen(fd, "r+")


@contextmanager
def run_lock(path: Path, what: str):
    """Hold ``<path>/.lock`` for the block: one writer per run folder (`file_lock`).

    Raises:
        RuntimeError: another process holds it; names that process, its host and since when.
    """
    lock = Path(path) / ".lock"
    try:
        with file_lock(lock, wait=False):
            yield
    except (BlockingIOError, PermissionError) as err:
        if isinstance(err, PermissionError) and err.errno not in (11, 13):
            raise
        try:
            with open_lock(lock) as f:
                holder = f.read(200).strip()
        except OSError:
            holder = ""
        raise RuntimeError(f"{what} is already running in {path} ({holder or 'another process'}); wait for it to "
                           "finish (a complete run is then skipped) or stop it first") from None


def read_claims(path: Path) -> pd.DataFrame:
    """A claims ledger as strings, in `CLAIM_COLUMNS` (a column an older ledger lacks reads as "").

    Raises:
        ValueError: the file is not a readable CSV ledger (names it).
    """
    try:
        check_replaceable(path)
        ledger = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnsafePathError, pd.errors.ParserError) as err:  # EmptyDataError is a ValueError
        raise ValueError(f"claims ledger {path} cannot be read ({type(err).__name__}: {_short(err)})") from None
    if "id" not in ledger.columns:
        raise ValueError(f"claims ledger {path} has no 'id' column; its columns are {', '.join(ledger.columns)}")
    return ledger.reindex(columns=CLAIM_COLUMNS, fill_value="")


def finished_runs(root: Path | None = None, log: Callable[[str], None] | None = None) -> list[Run]:
    """Every run folder under ``root`` whose ``complete.json`` matches its files (`Run.untrusted`).

    A folder that says it finished but does not match (edited, or written by hand) is left out,
    with one line to ``log`` (default: stderr) naming it and why.
    """
    root = Path(root or runs_root())
    log = log or warn
    runs = []
    for record in sorted(root.glob("*/*/complete.json")):
        path = record.parent
        if not stat.S_ISDIR(os.lstat(path).st_mode) or not stat.S_ISDIR(os.lstat(path.parent).st_mode):
            log(f"prunelab: not trusted: {path} is a symlink, not a run folder of this runs folder")
            continue
        run = Run(path=path, notebook=path.parent.name, params={})
        why = run.untrusted()
        if why:
            log(f"prunelab: not trusted: {path}: {why}; `prunelab run --force` recomputes it")
            continue
        runs.append(run)
    return runs


def collect_claims(root: Path | None = None, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every claim of every finished run under ``root`` (`finished_runs`).

    A run's notebook and hash are its folder's names, whatever its ledger says; an unreadable
    ledger is one line to ``log`` naming it, and the others are still collected.
    """
    log = log or warn
    frames = []
    for run in finished_runs(root, log):
        if not (run.path / "claims.csv").exists():
            continue
        try:
            ledger = read_claims(run.path / "claims.csv")
        except ValueError as err:
            log(f"prunelab: skipping {err}")
            continue
        frames.append(ledger.assign(notebook=run.notebook, params_hash=run.hash))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CLAIM_COLUMNS)
