"""Profiles and the papermill runner.

Each notebook ``notebooks/NN_topic.ipynb`` has ``notebooks/profiles/NN_topic.toml`` with a
``[common]`` table and one table per profile (``smoke``, ``default``, ``paper``); a profile's
parameters are ``common`` updated by its own table.  A top-level ``base = "_name"`` first
takes the parameters of ``profiles/_name.toml`` (shared by the notebooks of one study).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prunelab import executed, results
from prunelab import params as params_mod

PROFILES = ("smoke", "default", "paper")
PUBLISHED_PROFILES = ("default", "paper")  # figures/ holds these; smoke runs never touch it
RESERVED = {  # names a notebook's parameters cell holds but `-p` must not set
    "profile": "profile is not a parameter to override: choose it with --profile (or $PRUNELAB_PROFILE)",
    "run_dir": "run_dir is set by prunelab run (runs/<notebook>/<hash>/); move every run folder with $PRUNELAB_RUNS",
}


def notebooks_dir() -> Path:
    """The notebooks and their ``profiles/``: ``$PRUNELAB_NOTEBOOKS``, else ``<project>/notebooks``."""
    return Path(os.environ.get("PRUNELAB_NOTEBOOKS") or results.project_root() / "notebooks")


def notebooks() -> list[str]:
    """Names (stems) of the notebooks, in order."""
    return sorted(p.stem for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def studies() -> dict[str, list[str]]:
    """Studies by name: the notebooks whose profiles share a ``base`` (``_nmt`` -> ``nmt``), in order.

    Notebook order is dependency order: the study's first notebook trains the baseline the
    others load from the checkpoint cache.
    """
    out: dict[str, list[str]] = {}
    for name in notebooks():
        if name in broken_profiles():
            continue  # named by `broken_profiles`; the other notebooks still run
        base = _profile_table(name).get("base")
        if base:
            out.setdefault(base.lstrip("_"), []).append(name)
    return out


def find_notebook(name: str) -> str:
    """Resolve ``00_tour``, ``00_tour.ipynb``, ``tour`` or ``00`` to a notebook stem."""
    stem = Path(name).stem
    known = notebooks()
    matches = [n for n in known if n == stem or n.split("_", 1)[0] == stem or n.split("_", 1)[1] == stem]
    if len(matches) != 1:
        raise KeyError(f"unknown notebook {name!r}; choose one of {', '.join(known)}, or a study: "
                       f"{', '.join(studies())}")
    return matches[0]


def expand(names: list[str]) -> list[str]:
    """Notebook names and study names (``nmt``, ``cnn``) as notebook stems, each once, in suite order."""
    found = set()
    groups = studies()
    for name in names:
        found.update(groups[name] if name in groups else [find_notebook(name)])
    return [n for n in notebooks() if n in found]


def split_overrides(names: list[str], overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each notebook's share of ``overrides``: the ones it declares.

    Raises:
        ValueError: a reserved name; KeyError: a parameter none of ``names`` declares.
    """
    for key in overrides:
        if key in RESERVED:
            raise ValueError(RESERVED[key])
    declared = {name: declared_types(name) for name in names}
    for key in overrides:
        if not any(key in types for types in declared.values()):
            takes = ", ".join(sorted(set().union(*map(set, declared.values()))))
            if len(names) == 1:
                raise KeyError(f"{names[0]} has no parameter {key!r}; it takes {takes}")
            raise KeyError(f"none of {', '.join(names)} takes a parameter {key!r}; together they take {takes}")
    return {name: {k: _absolute(k, v, declared[name][k]) for k, v in overrides.items() if k in declared[name]} for name in names}


def _absolute(key: str, value: Any, spec: str) -> Any:
    """A ``path`` parameter given on the command line, made absolute against the caller's folder
    (notebooks run in ``notebooks/``, so it would otherwise mean theirs); one that names nothing
    is refused here, before any kernel starts.

    Raises:
        ParameterError: the path does not exist (names the parameter, what was given and where it looked).
    """
    if params_mod.parse_spec(spec).base != "path" or not isinstance(value, str) or not value:
        return value
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.exists(path):
        raise params_mod.ParameterError(f"parameter {key}={json.dumps(value)} names nothing that exists ({path} "
                                        f"does not exist; a relative path is taken from the folder you run from)")
    return path


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return profile


def _profile_table(notebook: str) -> dict[str, Any]:
    """The parsed profile file of ``notebook`` (or of a base such as ``_nmt``).

    Raises:
        KeyError: no such file; ValueError: it is not valid TOML (names the file, line and column).
    """
    path = notebooks_dir() / "profiles" / f"{notebook}.toml"
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise KeyError(f"{notebook} has no profile file {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"profile file {path} is not valid TOML ({err})") from None
    base = table.get("base")
    if base is not None and not (isinstance(base, str) and base.startswith("_")):
        raise ValueError(f"profile file {path}: base = {base!r} must name a shared profile such as \"_nmt\"")
    return table


def broken_profiles() -> dict[str, str]:
    """Notebooks whose profile file (or a base it names) cannot be read, with the one-line reason."""
    out = {}
    for name in notebooks():
        try:
            declared_types(name)
        except (KeyError, ValueError) as err:
            out[name] = err.args[0] if err.args else str(err)
    return out


def profile_params(notebook: str, profile: str) -> dict[str, Any]:
    """The parameters that ``profile`` gives ``notebook``."""
    check_profile(profile)
    table = _profile_table(notebook)
    # `base = "_nmt"` shares one study's parameters (its cached baseline) among notebooks.
    base = profile_params(table["base"], profile) if "base" in table else {}
    return {**base, **table.get("common", {}), **table.get(profile, {})}


def declared_types(notebook: str) -> dict[str, str]:
    """Each parameter's type spec (`prunelab.params`), from the ``[types]`` tables of its profile files."""
    table = _profile_table(notebook)
    base = declared_types(table["base"]) if "base" in table else {}
    return {**base, **table.get("types", {})}


def resolve(notebook: str, profile: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Full parameters of ``notebook``: the profile's, with ``overrides`` (None values ignored), all checked.

    ``profile`` None or "" reads ``$PRUNELAB_PROFILE``, else ``default``.  Every value, the
    profile's own included, is checked against its declared type before anything runs.

    Raises:
        ValueError: an unknown profile; a reserved name (``profile``, ``run_dir``) among the
            overrides; a value its type does not allow (`params.ParameterError`, one line).
        KeyError: an override the notebook does not take.
    """
    profile = profile or os.environ.get("PRUNELAB_PROFILE") or "default"
    params = dict(profile_params(notebook, profile))
    types = declared_types(notebook)
    for key, value in (overrides or {}).items():
        if key in RESERVED:
            raise ValueError(RESERVED[key])
        if value is None:
            continue
        if key not in params:
            raise KeyError(f"{notebook} has no parameter {key!r}; it takes {', '.join(sorted(params))}")
        params[key] = value
    for key, value in params.items():
        if key not in types:
            raise ValueError(f"{notebook}: parameter {key} has no declared type; add it to the [types] table of "
                             f"notebooks/profiles/{notebook}.toml (or its base)")
        params[key] = params_mod.check_value(key, value, types[key])
    for key, value in params.items():  # checks that read other parameters see them typed
        params_mod.run_checker(key, value, types[key], params)
    return {"profile": profile, **params}


def overridden(notebook: str, params: dict[str, Any]) -> tuple[str, ...]:
    """``"key=value"`` (value as compact JSON) for each of ``params`` that differs from its profile's.

    Empty for a profile's own run; a ``-p`` that sets the profile's own value is no override.

    >>> overridden("00_tour", resolve("00_tour", "smoke", {"epochs": 7}))  # doctest: +SKIP
    ('epochs=7',)
    """
    own = resolve(notebook, params["profile"])
    return tuple(f"{key}={json.dumps(value, separators=(',', ':'), default=str)}"
                 for key, value in params.items() if own.get(key) != value)


_PACKAGE = Path(__file__).resolve().parent


def _module_file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    for path in (_PACKAGE.joinpath(*parts, "__init__.py"), _PACKAGE.joinpath(*parts[:-1], f"{parts[-1]}.py")
                 if parts else _PACKAGE / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(source: str, package: str = "") -> set[str]:
    """The ``prunelab`` modules a source imports, anywhere in it (functions included)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "prunelab"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import inside the package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "prunelab":
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}")}
    return found


def package_files(source: str) -> list[Path]:
    """The package files a notebook's code can run: the ``prunelab`` modules it imports, and theirs,
    transitively (parents' ``__init__`` included), so a change elsewhere does not stale its figures."""
    todo, seen = list(_imports(source)), set()
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            path = _module_file(name)
            if name in seen or path is None:
                continue
            seen.add(name)
            pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
            todo += _imports(path.read_text(), pkg)
    return sorted({_module_file(m) for m in seen})


def producing_files(notebook: str) -> dict[str, list[Path]]:
    """What a notebook's results are made from, by input: ``notebook`` (its percent-format source in
    ``notebooks/src/``, else the ``.ipynb``), ``profile`` (its profile file and the bases it names)
    and ``package`` (the ``prunelab`` modules its code imports, transitively: `package_files`)."""
    source = notebooks_dir() / "src" / f"{notebook}.py"
    profiles, name = [], notebook
    while name:
        profiles.append(notebooks_dir() / "profiles" / f"{name}.toml")
        name = _profile_table(name).get("base")
    source = source if source.exists() else notebooks_dir() / f"{notebook}.ipynb"
    if source.suffix == ".py":
        code = source.read_text()
    else:
        import nbformat

        code = "\n".join(c.source for c in nbformat.read(source, as_version=4).cells if c.cell_type == "code")
    return {"notebook": [source], "profile": profiles, "package": package_files(code)}


def fingerprint(notebook: str) -> dict[str, str]:
    """SHA-256 of each input of `producing_files` (its files' names and bytes): which changed since a run.

    >>> sorted(fingerprint("00_tour"))  # doctest: +SKIP
    ['notebook', 'package', 'profile']
    """
    out = {}
    for kind, paths in producing_files(notebook).items():
        base = _PACKAGE.parent if kind == "package" else notebooks_dir().parent
        digest = hashlib.sha256()
        for path in paths:
            data = path.read_bytes()
            digest.update(f"{path.relative_to(base).as_posix()}\0{len(data)}\0".encode() + data)
        out[kind] = digest.hexdigest()
    return out


def start(notebook: str, profile: str = "", run_dir: str = "", **overrides) -> tuple[SimpleNamespace, results.Run]:
    """Called by a notebook's second cell: resolve its parameters and open its run folder.

    The run records the code that runs (`fingerprint`) and, when its parameters differ from its
    profile's, which (`overridden`): its claims then say so and it is never published.

    >>> P, run = start("00_tour", profile="smoke")  # doctest: +SKIP
    """
    params = resolve(notebook, profile, overrides)
    run = results.open_run(notebook, params, run_dir or None, overrides=overridden(notebook, params),
                           fingerprint=fingerprint(notebook))
    return SimpleNamespace(**params), run


class Interrupted(Exception):
    """Ctrl-C during a notebook: what was finished is cached; the message says how to resume."""


def _quiet_kernel_manager():
    """A kernel manager whose kernels say nothing the user did not ask for.

    - jupyter_client interrupts a kernel before shutting it down, so a kernel still handling a
      message logs "KeyboardInterrupt caught in kernel" after a successful run; skip that interrupt.
    - Over TCP, ipykernel warns "Kernel is running over TCP without encryption" at every start; the
      kernel is local, so talk to it over IPC (Unix sockets) instead, in a private temporary folder
      (mode 0700) removed at shutdown.  Windows has no IPC transport and keeps TCP.
    """
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        _ipc_dir: str | None = None

        async def _async_pre_start_kernel(self, **kw):
            if os.name == "posix" and self._ipc_dir is None:
                self._ipc_dir = tempfile.mkdtemp(prefix="prunelab-kernel-")
                self.transport, self.ip = "ipc", os.path.join(self._ipc_dir, "k")
            return await super()._async_pre_start_kernel(**kw)

        async def _async_interrupt_kernel(self):
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if self._ipc_dir is not None and not restart:
                shutil.rmtree(self._ipc_dir, ignore_errors=True)
                self._ipc_dir = None

        # AsyncKernelManager binds its public names to the base's functions, and nbclient calls
        # cleanup_resources() itself after a kernel died: route it through the override above.
        cleanup_resources = _async_cleanup_resources

    return QuietKernelManager


def cached_points(path: Path) -> int:
    """How many grid points a run folder has cached (`Run.memo` files)."""
    return len(list((Path(path) / "cache").glob("*.json")))


def run_notebook(notebook: str, profile: str, overrides: dict[str, Any] | None = None, force: bool = False,
                 progress: bool = True, fresh: bool = False, recompute_stale: bool = False,
                 log=None) -> tuple[results.Run, bool]:
    """Execute ``notebook`` with papermill into its run folder; returns (run, executed).

    A finished run whose files match its seal (`results.Run.untrusted`) is skipped unless
    ``force``; one that does not match is named on ``log`` and run again.  A forced run still
    reuses the grid points cached in the run folder (`Run.memo`) unless ``fresh`` (implies
    ``force``) empties the run folder first and lets the notebook retrain over an unreadable
    cached checkpoint; ``recompute_stale`` (implies ``force``) recomputes only the points that
    other code computed.  A finished run of a published profile (`PUBLISHED_PROFILES`) is
    published (`publish.publish_run`) unless ``overrides`` change its parameters: only a profile's
    own runs are cited.  One process at a time runs a given run folder (`results.run_lock`), and
    only in a real folder under the runs root (`results.check_run_folder`).  On failure the partly
    executed notebook is kept as ``<name>.failed.ipynb`` and a RuntimeError names the failing
    cell and line; Ctrl-C raises `Interrupted`.
    """
    log = log or results.warn
    params = resolve(notebook, profile, overrides)
    path = results.runs_root() / notebook / results.params_hash(notebook, params)
    run = results.Run(path=path, notebook=notebook, params=params)
    results.check_run_folder(path)  # before the lock: a symlinked run folder is refused, never entered
    with results.run_lock(path, f"{notebook} with these parameters"):
        if run.complete and not (force or fresh or recompute_stale):
            why = run.untrusted()
            if not why:
                return run, False
            log(f"    {path}: {why}; running it again")
        results.clear_run(path, fresh)
        _execute(notebook, params, path, fresh, progress, recompute_stale=recompute_stale)
        if not run.complete:
            raise RuntimeError(f"{notebook} ran but never called run.finish(); its results are incomplete")
        run.seal()  # again, now with the executed notebook
    if params["profile"] in PUBLISHED_PROFILES and not overridden(notebook, params):
        from prunelab import publish  # above the runner: it renders what the runner made

        publish.publish_run(run)
    return run, True


def _failing_line(err: Any) -> str:
    """The line of the failing cell that raised: ``line N: <code>`` from IPython's ``Cell In[k], line N``
    frame, else the cell's first line."""
    import re

    lines = (err.source or "").splitlines()
    for frame in err.traceback or []:
        found = re.search(r"Cell In\[\d+\], line (\d+)", re.sub(r"\x1b\[[0-9;]*m", "", frame))
        if found and 0 < int(found[1]) <= len(lines):
            return f"line {found[1]}: {lines[int(found[1]) - 1].strip()!r}"
    return repr(lines[0].strip()) if lines else "''"


def _execute(notebook: str, params: dict[str, Any], path: Path, fresh: bool, progress: bool,
             output: Path | None = None, stop_ok: Any = None, recompute_stale: bool = False) -> None:
    """Run the notebook into ``output`` (default ``<path>/<notebook>.ipynb``) and translate its failures.

    Papermill writes a hidden scratch copy as cells run; it is settled and renamed to ``output``
    (or, on failure, ``<name>.failed.ipynb``) only when whole, so neither name ever holds a cut-off
    file (a full disk names the scratch file instead).  ``stop_ok(err)`` True for a
    `papermill.PapermillExecutionError` means the notebook stopped as intended (a shard that
    reached another shard's point): the output is kept, no error.
    """
    import papermill
    from nbclient.exceptions import DeadKernelError

    out = Path(output or path / f"{notebook}.ipynb")
    failed = out.with_name(f"{out.stem}.failed.ipynb")
    scratch = out.with_name(f".{out.stem}.running.ipynb")
    for target in (out, failed, scratch):
        results.check_replaceable(target)
    env = {results.REPLACE_BAD_CHECKPOINTS: "1" if fresh else None,  # the kernel inherits them
           results.RECOMPUTE_STALE: "1" if recompute_stale else None}
    before = {key: os.environ.get(key) for key in env}
    for key, value in env.items():
        if value is not None:
            os.environ[key] = value

    def keep(target: Path) -> Path:
        """The scratch copy settled and renamed to ``target``; a RuntimeError naming it when it is not whole."""
        if not scratch.exists():
            raise RuntimeError(f"{notebook}: papermill wrote no executed notebook ({scratch})")
        try:
            executed.settle_file(scratch)
        except (OSError, ValueError) as err:  # cut short by a full disk, or never written
            scratch.unlink(missing_ok=True)
            raise RuntimeError(f"{notebook}: the executed notebook could not be saved whole ({scratch}: "
                               f"{type(err).__name__}: {' '.join(str(err).split())[:160]}); is the disk full?") from None
        results.check_replaceable(target)
        os.replace(scratch, target)
        return target

    try:
        papermill.execute_notebook(
            str(notebooks_dir() / f"{notebook}.ipynb"), str(scratch), parameters={**params, "run_dir": str(path)},
            cwd=str(notebooks_dir()), progress_bar=progress, kernel_name="python3", language="python",
            kernel_manager_class=_quiet_kernel_manager(),
        )
    except papermill.PapermillExecutionError as err:
        if err.ename == "KeyboardInterrupt":
            _discard(scratch)
            raise Interrupted(_resume_hint(notebook, path)) from None
        if stop_ok is not None and stop_ok(err):
            keep(out)
            return
        keep(failed)
        raise RuntimeError(f"{notebook} failed in cell {err.cell_index} (execution count {err.exec_count}, "
                           f"{_failing_line(err)}) with {err.ename}: {err.evalue}; "
                           f"the executed notebook is {failed}") from None
    except DeadKernelError:
        kept = "no notebook was kept"
        try:
            kept = f"the partly executed notebook is kept as {keep(failed)}"
        except RuntimeError:
            pass
        raise RuntimeError(f"{notebook}: the kernel died (killed, or out of memory?); {kept}; "
                           f"{_resume_hint(notebook, path, lead='rerun')}") from None
    except KeyboardInterrupt:
        _discard(scratch)
        raise Interrupted(_resume_hint(notebook, path)) from None
    except OSError as err:  # papermill could not write its copy (a full disk): say where
        _discard(scratch)
        raise RuntimeError(f"{notebook}: the executed notebook could not be written ({scratch}: "
                           f"{err.strerror or err}); is the disk full?") from None
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    keep(out)


def _discard(path: Path) -> None:
    if os.path.lexists(path) and not os.path.islink(path):
        path.unlink()


def _resume_hint(notebook: str, path: Path, lead: str = "interrupted") -> str:
    n = cached_points(path)
    head = f"{notebook} interrupted; " if lead == "interrupted" else ""
    return (f"{head}rerunning the same command resumes from the {n} grid point{'s' if n != 1 else ''} "
            f"it cached in {path}")
