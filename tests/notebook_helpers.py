"""Tiny notebooks for runner tests: a kernel start (about two seconds) instead of a real study."""
import nbformat

PROFILE = '[common]\nx = 1\n[types]\nx = "int"\n'


def tiny_notebook(nbdir, name, body, profile=PROFILE):
    """Write ``<nbdir>/<name>.ipynb`` (parameters ``profile``, ``x``, ``run_dir``; ``run`` opened on
    ``run_dir``; then ``body``) and its profile file."""
    (nbdir / "profiles").mkdir(parents=True, exist_ok=True)
    (nbdir / "profiles" / f"{name}.toml").write_text(profile)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    start = f"from pathlib import Path\nfrom prunelab import results\nrun = results.Run(Path(run_dir), {name!r}, {{}})"
    nb.cells = [nbformat.v4.new_code_cell("profile = ''\nx = None\nrun_dir = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(start), nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, nbdir / f"{name}.ipynb")
