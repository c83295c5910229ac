"""What a reader of the results sees: ``figures/<profile>/``, the report, and the staleness check.

A finished run of a published profile (``default``, ``paper``) whose parameters are its profile's
own is published by `publish_run` into ``figures/<profile>/``:

- its figures, as ``<notebook>--<name>.png|pdf``;
- its executed notebook as ``notebooks/<notebook>.html`` (`executed.to_html`: figures embedded,
  no JavaScript, the same bytes for the same run);
- ``MANIFEST.json``: per published file its notebook, parameters hash, profile, the commit
  (`results.git_commit`) and fingerprint (`runner.fingerprint`) of the code that replayed the
  notebook, and ``computed``: which code computed its cached grid points (`results.computed_by`),
  so a number replayed from an older cache says so;
- ``claims.csv`` (the published runs' claims) and ``CLAIMS.md``, the page that cites them.

`stale` compares each manifest entry's fingerprints with the code as it is now (``prunelab report
--check``); `report` renders the claims of the runs under a runs folder (``prunelab report``).
Everything a run folder supplies (claims, notebook names, file names) is escaped before it is
rendered (`md_text`, `md_link`), and only runs whose files match their seal are shown or published.

>>> publish_run(run)          # doctest: +SKIP
>>> stale()                   # doctest: +SKIP
['figures/default/00_tour--accuracy_vs_sparsity.png: notebook changed (notebooks/src/00_tour.py)']
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

import nbformat
import pandas as pd

from prunelab import executed, results, runner

INPUTS = ("notebook", "profile", "package")  # the keys of a fingerprint, in the order they are named


def published_dir(profile: str) -> Path:
    return results.project_root() / "figures" / profile


def read_manifest(folder: Path) -> dict[str, dict]:
    return results.read_json(Path(folder) / "MANIFEST.json", default={})


# Markdown's active characters: with "[" and "]" escaped no link or image can form, and with "<" and
# "&" escaped no HTML; "_" only at a word's edge (inside a word, as in 00_tour, it is text).
_MARKDOWN = re.compile(r"([\\`*\[\]|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")


def md_text(text: object) -> str:
    r"""``text`` as inert Markdown on one line: HTML escaped (``<img onerror=...>`` shows as text) and
    Markdown's link, emphasis and table characters backslash-escaped (no ``[x](javascript:...)``).

    >>> print(md_text('<b>x</b> [y](javascript:z) | *w* 00_tour _v_'))
    &lt;b&gt;x&lt;/b&gt; \[y\](javascript:z) \| \*w\* 00_tour \_v\_
    """
    return _MARKDOWN.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=True))


def md_link(target: str | Path) -> str:
    """A relative link target, percent-encoded so no character of a file name can end or redirect the link."""
    return quote(Path(target).as_posix(), safe="/")


def machine_paths(run: results.Run) -> dict[str, str]:
    """Absolute paths of this machine that an executed notebook may show, and what a reader sees instead."""
    paths = {}
    for root in {results.project_root(), Path(runner.__file__).resolve().parent.parent}:
        paths[f"{root}/"], paths[str(root)] = "", "."
    if sys.prefix != sys.base_prefix:  # a virtual environment; a system prefix (/usr) is no one's machine
        paths[sys.prefix] = "<python>"
    if len(Path.home().parts) > 1:
        paths[str(Path.home())] = "~"
    for runs in {run.path.parent.parent, run.path.parent.parent.resolve()}:
        paths[str(runs)] = "runs"
    return paths


def _notebook_page(run: results.Run, commit: str) -> str:
    nb = nbformat.read(run.path / f"{run.notebook}.ipynb", as_version=4)
    profile = run.params["profile"]
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(
        f"*Executed by `prunelab run --profile {profile}`: run `runs/{run.notebook}/{run.hash}`, commit "
        f"`{commit}`. Its claims and figures: [CLAIMS.md](../CLAIMS.md).*"))
    title = f"{run.notebook} (profile {profile}, run {run.hash})"
    return executed.to_html(nb, run.notebook, machine_paths(run), title)


def publish_run(run: results.Run) -> list[Path]:
    """Publish a finished run into ``figures/<profile>/``; returns the files written.

    Files an earlier publish of the same notebook left and this run does not make are removed,
    so the folder holds one run per notebook.  The caller decides whether a run may be published
    (`runner.run_notebook`: only a published profile's own parameters).
    """
    why = run.untrusted()
    if why:
        raise RuntimeError(f"{run.path} is not published: {why}")
    dest = published_dir(run.params["profile"])
    results.real_dir(dest, results.project_root())
    # Several notebooks may finish at once (two `prunelab run`s, gather jobs on a cluster): the
    # manifest, ledger and CLAIMS.md are read-modify-write, so one publisher at a time.
    with results.file_lock(dest.parent / ".publish.lock"):
        return _publish_run(run, dest)


def _publish_run(run: results.Run, dest: Path) -> list[Path]:
    profile = run.params["profile"]
    manifest = read_manifest(dest)
    env = json.loads((run.path / "env.json").read_text())
    entry = {"notebook": run.notebook, "params_hash": run.hash, "profile": profile, "commit": env["git_commit"],
             "computed": results.computed_by(run.path)}
    if env.get("fingerprint"):
        entry["fingerprint"] = env["fingerprint"]
    written = []
    for src in sorted((run.path / "figures").glob("*")):
        with results.atomic_path(dest / f"{run.notebook}--{src.name}") as tmp:
            shutil.copyfile(src, tmp)
        written.append(dest / f"{run.notebook}--{src.name}")
    results.real_dir(dest / "notebooks", dest)
    written.append(results.write_text(dest / "notebooks" / f"{run.notebook}.html",
                                      _notebook_page(run, env["git_commit"])))
    names = {path.relative_to(dest).as_posix() for path in written}
    for name, old in sorted(manifest.items()):
        if old.get("notebook") == run.notebook and name not in names:
            (dest / name).unlink(missing_ok=True)
            del manifest[name]
    manifest.update({name: entry for name in names})
    results.write_json(dest / "MANIFEST.json", manifest)
    _publish_claims(run, dest / "claims.csv")
    results.write_text(dest / "CLAIMS.md", claims_page(profile))
    return written


def _read_ledger(path: Path) -> pd.DataFrame:
    return results.read_claims(path) if path.exists() else pd.DataFrame(columns=results.CLAIM_COLUMNS)


def _publish_claims(run: results.Run, path: Path) -> None:
    """Replace the notebook's rows of the published ledger at ``path`` by this run's claims."""
    ledger = _read_ledger(path)
    ledger = pd.concat([ledger[ledger.notebook != run.notebook], _read_ledger(run.path / "claims.csv")],
                       ignore_index=True)
    with results.atomic_path(path) as tmp:
        ledger.sort_values("notebook", kind="stable").to_csv(tmp, index=False)


def _claims_table(rows: pd.DataFrame) -> list[str]:
    lines = ["| claim | statement | metric | measured | verdict | detail |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows.itertuples():
        lines.append(f"| {md_text(row.id)} | {md_text(row.statement)} | {md_text(row.metric)} | {md_text(row.value)} "
                     f"| **{md_text(row.verdict)}** | {md_text(row.detail)} |")
    return lines


def _provenance(entries: dict[str, dict]) -> str:
    """``computed at X (n points), replayed at Y`` for a notebook's manifest entries."""
    replayed = sorted({e.get("commit", "unknown") for e in entries.values()})
    counts: dict[str, int] = {}
    for e in entries.values():
        for group in e.get("computed", []):
            counts[group.get("commit", "unknown")] = max(counts.get(group.get("commit", "unknown"), 0),
                                                         group.get("points", 0))
    if not any("computed" in e for e in entries.values()):
        computed = "points computed by unrecorded code"
    elif not counts:
        computed = "no cached points"
    else:
        computed = "computed at " + ", ".join(f"{c} ({n} point{'s' if n != 1 else ''})" for c, n in sorted(counts.items()))
    return f"{computed}, replayed at {', '.join(replayed)}"


def claims_page(profile: str) -> str:
    """``figures/<profile>/CLAIMS.md``: per published notebook its claims, executed notebook and figures."""
    dest = published_dir(profile)
    manifest = read_manifest(dest)
    ledger = _read_ledger(dest / "claims.csv")
    lines = [f"# Claims, profile {profile}", "",
             f"The claims checked by the last published `{profile}` run of each notebook, with their verdicts, "
             f"executed notebook and figures (all in this folder). `prunelab run --profile {profile}` rewrites this "
             "page as it publishes. Each heading says at which commit the run's cached grid points were computed and "
             "at which the notebook was replayed from them; `MANIFEST.json` gives each file's run, commits and code "
             "fingerprints, and `prunelab report --check` lists the files and points whose code changed since. "
             "Commands and timings: README.", ""]
    for notebook in sorted({e["notebook"] for e in manifest.values()}):
        entries = {name: e for name, e in sorted(manifest.items()) if e["notebook"] == notebook}
        hashes = sorted({e["params_hash"] for e in entries.values()})
        lines += [f"## {md_text(notebook)} (run {md_text(', '.join(hashes))}; {md_text(_provenance(entries))})", ""]
        page = f"notebooks/{notebook}.html"
        if page in entries:
            lines += [f"Executed notebook: [{md_text(page)}]({md_link(page)})", ""]
        rows = ledger[(ledger.notebook == notebook) & ledger.params_hash.isin(hashes)]
        lines += _claims_table(rows) if len(rows) else [
            f"Its claims were not published with it; `prunelab run {notebook} --profile {profile}` republishes it."]
        lines.append("")
        lines += [f"![{md_text(name.split('--', 1)[-1][:-4])}]({md_link(name)})" for name in entries
                  if name.endswith(".png")]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def stale(profile: str | None = None) -> tuple[int, list[str]]:
    """Published files whose producing code changed since they were made: (files checked, one line each).

    Each line names the file and which input changed (`INPUTS`: the notebook source, its profile
    files, the package) with the files behind it.  An entry without a fingerprint (published
    before they were recorded) is stale: nothing says what made it.
    """
    figures = results.project_root() / "figures"
    if profile:
        folders = [figures / runner.check_profile(profile)]
    else:
        folders = sorted(path.parent for path in figures.glob("*/MANIFEST.json"))
    checked, lines, now = 0, [], {}
    for folder in folders:
        for name, entry in sorted(read_manifest(folder).items()):
            checked += 1
            where = f"figures/{folder.name}/{name}"
            notebook, recorded = entry.get("notebook", "?"), entry.get("fingerprint")
            if not (folder / name).exists():
                lines.append(f"{where}: listed in MANIFEST.json but missing")
                continue
            if not recorded:
                lines.append(f"{where}: no fingerprint recorded (published before fingerprints were kept; "
                             f"rerun {notebook} to record one)")
                continue
            try:
                now.setdefault(notebook, (runner.fingerprint(notebook), runner.producing_files(notebook)))
            except (KeyError, FileNotFoundError):
                lines.append(f"{where}: its notebook {notebook} (or a profile file of it) no longer exists")
                continue
            current, files = now[notebook]
            changed = [kind for kind in INPUTS if recorded.get(kind) != current[kind]]
            if changed:
                lines.append(f"{where}: " + "; ".join(f"{kind} changed ({_describe(kind, files[kind])})"
                                                      for kind in changed))
            lines += _stale_points(where, entry, current, files, folder.name)
    return checked, lines


def _stale_points(where: str, entry: dict, current: dict, files: dict, profile: str) -> list[str]:
    """One line when some of the grid points behind a published file were computed by code other than today's."""
    rerun = f"`prunelab run {entry.get('notebook', '?')} --profile {profile} --recompute-stale` recomputes them"
    if "computed" not in entry:
        return [f"{where}: no record of the code that computed its grid points (published before it was kept); {rerun}"]
    old = [g for g in entry["computed"] if g.get("fingerprint") != current]
    if not old:
        return []
    total = sum(g.get("points", 0) for g in entry["computed"])
    why = "; ".join(sorted({f"commit {g.get('commit', 'unknown')}: " + (", ".join(
        f"{kind} changed ({_describe(kind, files[kind])})" for kind in INPUTS
        if (g.get("fingerprint") or {}).get(kind) != current[kind]) or "code not recorded") for g in old}))
    return [f"{where}: {sum(g.get('points', 0) for g in old)} of {total} grid points computed by other code ({why}); "
            f"{rerun}"]


def _describe(kind: str, paths: list[Path]) -> str:
    if kind == "package":
        return "prunelab/**/*.py"
    root = results.project_root()
    return ", ".join(Path(os.path.relpath(p, root)).as_posix() for p in paths)


def _published_link(kind: str, notebook: str, run_hash: str, run_file: Path, profile: str, where: Path) -> str:
    """Link to the published copy of a run's file when ``figures/<profile>/`` holds this run's, else to the run's."""
    published = published_dir(profile)
    name = f"notebooks/{notebook}.html" if kind == "notebook" else f"{notebook}--{run_file.name}"
    target = published / name if read_manifest(published).get(name, {}).get("params_hash") == run_hash else run_file
    return Path(os.path.relpath(target, where)).as_posix()


def report(root: Path | None = None, where: Path | None = None, profile: str | None = None, latest: bool = False,
           include_overridden: bool = False) -> str:
    """Markdown page of every claim checked by a finished run (of ``profile``), with each run's figures.

    Links are relative to ``where`` (the folder the page is written to; default ``root``) and go to
    the published copies where ``figures/<profile>/`` holds this run's.  A run with overridden
    parameters says so in its heading.  ``latest`` keeps only the most recently finished run of each
    notebook and profile, and leaves out overridden runs unless ``include_overridden`` (then the
    latest of each set of overrides is kept too).  Run folders whose files do not match their seal,
    and ledgers that cannot be read, are listed at the end instead (`results.finished_runs`);
    everything a run folder supplies is escaped (`md_text`, `md_link`).
    """
    root = root or results.runs_root()
    where = where or root
    refused: list[str] = []
    claims = results.collect_claims(root, log=refused.append)
    if profile:
        claims = claims[claims.profile == runner.check_profile(profile)]
    if latest and not include_overridden:
        claims = claims[claims.overrides == ""]
    if latest and not claims.empty:
        finished = claims.apply(lambda r: (root / r.notebook / r.params_hash / "complete.json").stat().st_mtime,
                                axis=1)
        newest = claims.assign(finished=finished).groupby(["notebook", "profile", "overrides"]).finished.transform(
            "max")
        claims = claims[finished == newest]
    lines = ["# prunelab report", "", f"Claims checked by the finished runs under `{md_text(root)}`"
             + (f", profile `{md_text(profile)}`" if profile else "")
             + (" (the latest of each notebook; runs with overridden parameters left out)."
                if latest and not include_overridden else "."), ""]
    if claims.empty:
        lines.append("No claims recorded yet: run `prunelab run` first.")
    for (notebook, run_profile, run_hash, changed), group in claims.groupby(
            ["notebook", "profile", "params_hash", "overrides"], sort=True):
        marked = f", overridden: {changed}" if changed else ""
        run_dir = root / notebook / run_hash
        page = _published_link("notebook", notebook, run_hash, run_dir / f"{notebook}.ipynb", run_profile, where)
        lines += ["## " + md_text(f"{notebook} (profile {run_profile}{marked}, run {run_hash})"), "",
                  f"Executed notebook: [{md_text(Path(page).name)}]({md_link(page)})", "", *_claims_table(group), ""]
        for fig in sorted((run_dir / "figures").glob("*.png")):
            link = _published_link("figure", notebook, run_hash, fig, run_profile, where)
            lines.append(f"![{md_text(fig.stem)}]({md_link(link)})")
        lines.append("")
    if refused:
        lines += ["## Not shown", "", "Run folders and ledgers under this runs folder that were left out:", "",
                  *[f"- {md_text(line.removeprefix('prunelab: '))}" for line in refused], ""]
    return "\n".join(lines)
