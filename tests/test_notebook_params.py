"""Papermill sees every parameter of every notebook, and the profiles give each one.

Papermill's Python inspector skips a parameters line holding more than one ``=``, so a comment
like ``(0 = whole epochs)`` hides that parameter from ``papermill --help-notebook`` and turns a
``-p`` of it into a "Passed unknown parameter" warning.
"""
import ast

import nbformat
import papermill
import pytest

from prunelab import runner


def cell_names(stem: str) -> list[str]:
    """Names assigned in the notebook's parameters cell, read with `ast` rather than papermill."""
    nb = nbformat.read(runner.notebooks_dir() / f"{stem}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    names = []
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), (
            f"{stem}: the parameters cell holds plain `name = value` lines only, not {ast.unparse(node)!r}")
        names.append(node.targets[0].id)
    return names


@pytest.mark.parametrize("stem", runner.notebooks())
def test_papermill_sees_every_parameter(stem):
    names = cell_names(stem)
    seen = list(papermill.inspect_notebook(str(runner.notebooks_dir() / f"{stem}.ipynb")))
    assert seen == names, f"papermill misses {sorted(set(names) - set(seen))}; a comment with '=' hides its line"


@pytest.mark.parametrize("profile", runner.PROFILES)
@pytest.mark.parametrize("stem", runner.notebooks())
def test_parameters_cell_matches_the_profile(stem, profile):
    """The cell names exactly `resolve`'s keys plus `run_dir`.

    `resolve` returns the profile's parameters with `profile` added; `run_dir` is the one name
    set only by the runner (never by a profile), so it is the one cell name `resolve` lacks.
    """
    names = set(cell_names(stem))
    keys = set(runner.resolve(stem, profile))
    assert "profile" in keys and "run_dir" not in keys
    assert names - keys == {"run_dir"}, f"in the cell, not in the {profile} profile: {sorted(names - keys - {'run_dir'})}"
    assert keys <= names, f"in the {profile} profile, not in the cell: {sorted(keys - names)}"
