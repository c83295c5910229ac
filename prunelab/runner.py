"""Profiles and the papermill runner.

Each notebook ``notebooks/NN_topic.ipynb`` has ``notebooks/profiles/NN_topic.toml`` with a
``[common]`` table and one table per profile (``smoke``, ``default``, ``paper``); a profile's
parameters are ``common`` updated by its own table.  A top-level ``base = "_name"`` first
takes the parameters of ``profiles/_name.toml`` (shared by the notebooks of one study).
"""
from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prunelab import params as params_mod
from prunelab import results

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
    return {name: {k: _absolute(v, declared[name][k]) for k, v in overrides.items() if k in declared[name]} for name in names}


def _absolute(value: Any, spec: str) -> Any:
    """A relative path that exists from here, made absolute: notebooks run in ``notebooks/``, so a
    ``path`` parameter given on the command line means the caller's folder, not theirs."""
    if params_mod.parse_spec(spec).base == "path" and isinstance(value, str) and value and not os.path.isabs(value):
        if os.path.exists(os.path.expanduser(value)):
            return os.path.abspath(os.path.expanduser(value))
    return value


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return profile


def _profile_table(notebook: str) -> dict[str, Any]:
    path = notebooks_dir() / "profiles" / f"{notebook}.toml"
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise KeyError(f"{notebook} has no profile file {path}") from None


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


def parse_value(text: str) -> Any:
    """``-p key=value`` values: JSON (numbers, true/false, lists, quoted strings), else a bare string."""
    return params_mod.parse_cli_value(text)


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


def start(notebook: str, profile: str = "", run_dir: str = "", **overrides) -> tuple[SimpleNamespace, results.Run]:
    """Called by a notebook's second cell: resolve its parameters and open its run folder.

    >>> P, run = start("00_tour", profile="smoke")  # doctest: +SKIP
    """
    params = resolve(notebook, profile, overrides)
    run = results.open_run(notebook, params, run_dir or None)
    return SimpleNamespace(**params), run


class Interrupted(Exception):
    """Ctrl-C during a notebook: what was finished is cached; the message says how to resume."""


def _quiet_kernel_manager():
    """jupyter_client interrupts a kernel before shutting it down, so a kernel still handling a
    message logs "KeyboardInterrupt caught in kernel" after a successful run; skip that interrupt."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self):
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return QuietShutdownKernelManager


def cached_points(path: Path) -> int:
    """How many grid points a run folder has cached (`Run.memo` files)."""
    return len(list((Path(path) / "cache").glob("*.json")))


def run_notebook(notebook: str, profile: str, overrides: dict[str, Any] | None = None, force: bool = False,
                 progress: bool = True, fresh: bool = False) -> tuple[results.Run, bool]:
    """Execute ``notebook`` with papermill into its run folder; returns (run, executed).

    A complete run is skipped unless ``force``; a forced run still reuses the grid points cached
    in the run folder (`Run.memo`) unless ``fresh`` (implies ``force``) drops them first and lets
    the notebook retrain over an unreadable cached checkpoint.  One process at a time runs a
    given run folder (`results.run_lock`).  On failure the partly executed notebook is kept as
    ``<name>.failed.ipynb`` and a RuntimeError names the failing cell; Ctrl-C raises `Interrupted`.
    """
    params = resolve(notebook, profile, overrides)
    path = results.runs_root() / notebook / results.params_hash(notebook, params)
    run = results.Run(path=path, notebook=notebook, params=params)
    with results.run_lock(path, f"{notebook} with these parameters"):
        if run.complete and not (force or fresh):
            return run, False
        (path / "complete.json").unlink(missing_ok=True)
        if fresh:
            shutil.rmtree(path / "cache", ignore_errors=True)
        _execute(notebook, params, path, fresh, progress)
    if not run.complete:
        raise RuntimeError(f"{notebook} ran but never called run.finish(); its results are incomplete")
    if params["profile"] in PUBLISHED_PROFILES:
        publish_figures(run)
    return run, True


def _execute(notebook: str, params: dict[str, Any], path: Path, fresh: bool, progress: bool,
             output: Path | None = None, stop_ok: Any = None) -> None:
    """Run the notebook into ``output`` (default ``<path>/<notebook>.ipynb``) and translate its failures.

    ``stop_ok(err)`` True for a `papermill.PapermillExecutionError` means the notebook stopped
    as intended (a shard that reached another shard's point): the output is kept, no error.
    """
    import papermill
    from nbclient.exceptions import DeadKernelError

    out = Path(output or path / f"{notebook}.ipynb")
    failed = out.with_name(f"{out.stem}.failed.ipynb")
    env_before = os.environ.get(results.REPLACE_BAD_CHECKPOINTS)
    if fresh:  # the kernel inherits it: retrain over a cached checkpoint that cannot be loaded
        os.environ[results.REPLACE_BAD_CHECKPOINTS] = "1"
    try:
        # Executed into `.failed.ipynb` and renamed on success: the final name never holds a partial run.
        papermill.execute_notebook(
            str(notebooks_dir() / f"{notebook}.ipynb"), str(failed), parameters={**params, "run_dir": str(path)},
            cwd=str(notebooks_dir()), progress_bar=progress, kernel_name="python3", language="python",
            kernel_manager_class=_quiet_kernel_manager(),
        )
    except papermill.PapermillExecutionError as err:
        if err.ename == "KeyboardInterrupt":
            raise Interrupted(_resume_hint(notebook, path)) from None
        if stop_ok is not None and stop_ok(err):
            os.replace(failed, out)
            return
        first_line = (err.source or "").strip().splitlines()[:1]
        raise RuntimeError(f"{notebook} failed in cell {err.cell_index} (execution count {err.exec_count}: "
                           f"{first_line[0] if first_line else ''!r}) with {err.ename}: {err.evalue}; "
                           f"the executed notebook is {failed}") from None
    except DeadKernelError:
        kept = f"the partly executed notebook is kept as {failed}" if failed.exists() else "no notebook was kept"
        raise RuntimeError(f"{notebook}: the kernel died (killed, or out of memory?); {kept}; "
                           f"{_resume_hint(notebook, path, lead='rerun')}") from None
    except KeyboardInterrupt:
        raise Interrupted(_resume_hint(notebook, path)) from None
    finally:
        if env_before is None:
            os.environ.pop(results.REPLACE_BAD_CHECKPOINTS, None)
        else:
            os.environ[results.REPLACE_BAD_CHECKPOINTS] = env_before
    os.replace(failed, out)


def _resume_hint(notebook: str, path: Path, lead: str = "interrupted") -> str:
    n = cached_points(path)
    head = f"{notebook} interrupted; " if lead == "interrupted" else ""
    return (f"{head}rerunning the same command resumes from the {n} grid point{'s' if n != 1 else ''} "
            f"it cached in {path}")


def publish_figures(run: results.Run) -> list[Path]:
    """Copy a run's figures to ``figures/<profile>/`` and record them in that folder's manifest."""
    profile = run.params["profile"]
    dest = results.project_root() / "figures" / profile
    manifest_path = dest / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    commit = json.loads((run.path / "env.json").read_text())["git_commit"]
    copied = []
    for src in sorted((run.path / "figures").glob("*")):
        name = f"{run.notebook}--{src.name}"
        with results.atomic_path(dest / name) as tmp:
            shutil.copyfile(src, tmp)
        manifest[name] = {"notebook": run.notebook, "params_hash": run.hash, "profile": profile, "commit": commit}
        copied.append(dest / name)
    results.write_json(manifest_path, manifest)
    return copied


def _figure_link(fig: Path, run_hash: str, profile: str, where: Path) -> str:
    """Link to the published copy of a run's figure when ``figures/<profile>/`` holds it, else to the run's."""
    published = results.project_root() / "figures" / profile
    manifest = published / "MANIFEST.json"
    name = f"{fig.parent.parent.parent.name}--{fig.name}"
    if manifest.exists() and json.loads(manifest.read_text()).get(name, {}).get("params_hash") == run_hash:
        fig = published / name
    return Path(os.path.relpath(fig, where)).as_posix()


def report(root: Path | None = None, where: Path | None = None, profile: str | None = None, latest: bool = False) -> str:
    """Markdown page of every claim checked by a complete run (of ``profile``), with each run's figures.

    Figure links are relative to ``where`` (the folder the page is written to; default ``root``).
    ``latest`` keeps only the most recently finished run of each notebook and profile.
    """
    root = root or results.runs_root()
    where = where or root
    claims = results.collect_claims(root)
    if profile:
        claims = claims[claims.profile == check_profile(profile)]
    if latest and not claims.empty:
        finished = claims.apply(lambda r: (root / r.notebook / r.params_hash / "complete.json").stat().st_mtime, axis=1)
        newest = claims.assign(finished=finished).groupby(["notebook", "profile"]).finished.transform("max")
        claims = claims[finished == newest]
    lines = ["# prunelab report", "", f"Claims checked by the complete runs under `{root}`"
             + (f", profile `{profile}`." if profile else "."), ""]
    if claims.empty:
        lines.append("No claims recorded yet: run `prunelab run` first.")
    for (notebook, run_profile, run_hash), group in claims.groupby(["notebook", "profile", "params_hash"], sort=True):
        lines += [f"## {notebook} (profile {run_profile}, run {run_hash})", "",
                  "| claim | statement | metric | measured | verdict | detail |", "| --- | --- | --- | --- | --- | --- |"]
        for row in group.itertuples():
            lines.append(f"| {row.id} | {row.statement} | {row.metric} | {row.value} | **{row.verdict}** | {row.detail} |")
        lines.append("")
        for fig in sorted((root / notebook / run_hash / "figures").glob("*.png")):
            lines.append(f"![{fig.stem}]({_figure_link(fig, run_hash, run_profile, where)})")
        lines.append("")
    return "\n".join(lines)
