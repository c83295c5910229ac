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

from prunelab import results

PROFILES = ("smoke", "default", "paper")
PUBLISHED_PROFILES = ("default", "paper")  # figures/ holds these; smoke runs never touch it
RESERVED = ("profile", "run_dir")


def notebooks_dir() -> Path:
    return results.project_root() / "notebooks"


def notebooks() -> list[str]:
    """Names (stems) of the notebooks, in order."""
    return sorted(p.stem for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def find_notebook(name: str) -> str:
    """Resolve ``00_tour``, ``00_tour.ipynb``, ``tour`` or ``00`` to a notebook stem."""
    stem = Path(name).stem
    known = notebooks()
    matches = [n for n in known if n == stem or n.split("_", 1)[0] == stem or n.split("_", 1)[1] == stem]
    if len(matches) != 1:
        raise KeyError(f"unknown notebook {name!r}; choose one of {', '.join(known)}")
    return matches[0]


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return profile


def profile_params(notebook: str, profile: str) -> dict[str, Any]:
    """The parameters that ``profile`` gives ``notebook``."""
    check_profile(profile)
    path = notebooks_dir() / "profiles" / f"{notebook}.toml"
    table = tomllib.loads(path.read_text())
    # `base = "_nmt"` shares one study's parameters (its cached baseline) among notebooks.
    base = profile_params(table["base"], profile) if "base" in table else {}
    return {**base, **table.get("common", {}), **table.get(profile, {})}


def parse_value(text: str) -> Any:
    """``-p key=value`` values: JSON (numbers, true/false, lists, quoted strings), else a bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce(key: str, value: Any, like: Any) -> Any:
    if like is None or value is None or isinstance(value, type(like)):
        return value
    if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"parameter {key}={value!r} is a {type(value).__name__}; the profile gives a {type(like).__name__} ({like!r})")


def resolve(notebook: str, profile: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Full parameters of ``notebook``: the profile's, with ``overrides`` (None values ignored).

    ``profile`` None or "" reads ``$PRUNELAB_PROFILE``, else ``default``.

    Raises:
        ValueError: an unknown profile.  KeyError: an override the notebook does not take.
    """
    profile = profile or os.environ.get("PRUNELAB_PROFILE") or "default"
    base = profile_params(notebook, profile)
    params = dict(base)
    for key, value in (overrides or {}).items():
        if key in RESERVED or value is None:
            continue
        if key not in base:
            raise KeyError(f"{notebook} has no parameter {key!r}; it takes {', '.join(sorted(base))}")
        params[key] = _coerce(key, value, base[key])
    return {"profile": profile, **params}


def start(notebook: str, profile: str = "", run_dir: str = "", **overrides) -> tuple[SimpleNamespace, results.Run]:
    """Called by a notebook's second cell: resolve its parameters and open its run folder.

    >>> P, run = start("00_tour", profile="smoke")  # doctest: +SKIP
    """
    params = resolve(notebook, profile, overrides)
    run = results.open_run(notebook, params, run_dir or None)
    return SimpleNamespace(**params), run


def run_notebook(notebook: str, profile: str, overrides: dict[str, Any] | None = None, force: bool = False,
                 progress: bool = True, fresh: bool = False) -> tuple[results.Run, bool]:
    """Execute ``notebook`` with papermill into its run folder; returns (run, executed).

    A complete run is skipped unless ``force``; a forced run still reuses the grid points cached
    in the run folder (`Run.memo`) unless ``fresh`` (implies ``force``) drops them first.  On failure the partly executed notebook is
    kept as ``<name>.failed.ipynb`` and a RuntimeError names the failing cell.
    """
    import papermill

    params = resolve(notebook, profile, overrides)
    path = results.runs_root() / notebook / results.params_hash(notebook, params)
    run = results.Run(path=path, notebook=notebook, params=params)
    if run.complete and not (force or fresh):
        return run, False
    (path / "complete.json").unlink(missing_ok=True)
    if fresh:
        shutil.rmtree(path / "cache", ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    out = path / f"{notebook}.ipynb"
    failed = path / f"{notebook}.failed.ipynb"
    try:
        # Executed into `.failed.ipynb` and renamed on success: the final name never holds a partial run.
        papermill.execute_notebook(
            str(notebooks_dir() / f"{notebook}.ipynb"), str(failed), parameters={**params, "run_dir": str(path)},
            cwd=str(notebooks_dir()), progress_bar=progress, kernel_name="python3", language="python",
        )
    except papermill.PapermillExecutionError as err:
        first_line = (err.source or "").strip().splitlines()[:1]
        raise RuntimeError(f"{notebook} failed in cell {err.cell_index} (execution count {err.exec_count}: "
                           f"{first_line[0] if first_line else ''!r}) with {err.ename}: {err.evalue}; "
                           f"the executed notebook is {failed}") from None
    os.replace(failed, out)
    if not run.complete:
        raise RuntimeError(f"{notebook} ran but never called run.finish(); its results are incomplete")
    if profile in PUBLISHED_PROFILES:
        publish_figures(run)
    return run, True


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
