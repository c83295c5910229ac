"""Executed notebooks as readers get them: progress widgets settled into text, and an HTML page.

``prunelab run`` executes a notebook with papermill, which keeps each ``tqdm.auto`` bar as a
widget (a view in the outputs, its final state in ``metadata.widgets``).  Without a live kernel
that state renders as nothing useful, so `settle` replaces each bar with its final line of text
and drops the widget state.  `to_html` makes the page published beside the figures: figures
embedded, no JavaScript, and the same bytes for the same run (no timestamps, no paths of the
machine that ran it, no progress-bar timings).

>>> nb = nbformat.read("runs/00_tour/<hash>/00_tour.ipynb", as_version=4)  # doctest: +SKIP
>>> page = to_html(nb, "00_tour", {"/home/me/prunelab/runs": "runs"})  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import html
import re
from pathlib import Path

import nbformat

from prunelab import results

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# tqdm's "[elapsed<remaining, rate]" (with any postfix): differs between two runs of the same numbers
_TIMING = re.compile(r" ?\[(?:\d+:)?\d+:\d+<[^\]\n]*\]")
_BAR_WIDTH = 10


def _progress_text(model_id: str, state: dict) -> str | None:
    """The final line of the tqdm bar whose HBox is ``model_id``; None for a bar tqdm hid (``leave=False``)."""
    box = state.get(model_id, {}).get("state", {})
    layout = state.get(str(box.get("layout", "")).removeprefix("IPY_MODEL_"), {}).get("state", {})
    if layout.get("visibility") == "hidden":
        return None
    children = [state.get(c.removeprefix("IPY_MODEL_"), {}).get("state", {}) for c in box.get("children", [])]
    if len(children) != 3 or "max" not in children[1]:
        return ""  # not a tqdm bar: the caller keeps the output's plain-text form
    left, bar, right = children

    def text(widget: dict) -> str:
        return html.unescape(str(widget.get("value", ""))).replace("\u2007", " ")

    if not text(left):  # no total known: tqdm shows its counter alone
        return text(right).strip()
    filled = round(_BAR_WIDTH * min(1.0, (bar.get("value") or 0) / (bar.get("max") or 1)))
    return f"{text(left)}|{'█' * filled}{' ' * (_BAR_WIDTH - filled)}|{text(right)}"


def settle(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Replace progress widgets by their final text and drop ``metadata.widgets`` (in place).

    A tqdm bar becomes one plain-text line as tqdm prints it in a terminal; a bar tqdm removed
    (``leave=False``) disappears, as it does in JupyterLab; any other widget keeps its own
    plain-text form.  No widget view or widget state is left.
    """
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.outputs:
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(out)
                continue
            line = _progress_text(view.get("model_id", ""), state)
            if line is None:
                continue
            line = line or out.data.get("text/plain", "")
            if line:
                outputs.append(nbformat.v4.new_output("display_data", data={"text/plain": line}))
        cell.outputs = outputs
    return nb


def settle_file(path: Path) -> None:
    """`settle` the notebook at ``path`` in place (atomically); nothing if it does not exist."""
    path = Path(path)
    if path.exists():
        nb = nbformat.read(path, as_version=4)
        results.write_text(path, nbformat.writes(settle(nb)) + "\n")


def _collapse_carriage_returns(text: str) -> str:
    r"""Keep what a terminal would show: on each line, only the text after its last ``\r``."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def for_readers(nb: nbformat.NotebookNode, paths: dict[str, str], title: str = "") -> nbformat.NotebookNode:
    """A copy of an executed notebook with nothing of the machine or the moment that ran it.

    Drops papermill's and nbclient's metadata (paths, timestamps, durations) and widget state,
    numbers the cells (papermill gives the injected-parameters cell a random id), removes tqdm's
    timings, collapses carriage-return redraws, and replaces each key of ``paths`` (an absolute
    path) by its value everywhere, longest first.
    """
    nb = settle(copy.deepcopy(nb))
    nb.metadata.pop("papermill", None)
    if title:
        nb.metadata["title"] = title
    order = sorted(paths.items(), key=lambda kv: -len(kv[0]))

    def clean(text: str) -> str:
        for old, new in order:
            text = text.replace(old, new)
        return text

    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
        for key in ("papermill", "execution"):
            cell.metadata.pop(key, None)
        cell.source = clean(cell.source)
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                out.text = clean(_TIMING.sub("", _collapse_carriage_returns(out.text)))
            elif out.output_type == "error":
                out.traceback = [clean(line) for line in out.traceback]
                out.evalue = clean(out.evalue)
            for mime, value in out.get("data", {}).items():
                if isinstance(value, str) and (mime.startswith("text/") or mime.endswith("+json")):
                    out.data[mime] = clean(_TIMING.sub("", value) if mime == "text/plain" else value)
    return nb


_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def to_html(nb: nbformat.NotebookNode, name: str, paths: dict[str, str], title: str = "") -> str:
    """One self-contained HTML page of an executed notebook (`for_readers`), readable without JavaScript.

    JupyterLab's look (nbconvert's ``lab`` template, CSS inlined) with every script left out:
    no require.js, MathJax, Mermaid or widget manager; figures are embedded as data URIs.
    """
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_loaders=[DictLoader({"prunelab.html.j2": _TEMPLATE})],
                            template_file="prunelab.html.j2", exclude_anchor_links=True)
    page, _ = exporter.from_notebook_node(for_readers(nb, paths, title), resources={"metadata": {"name": name}})
    return page
