"""Build a notebook from a plain-text source: cells separated by lines '# %% [markdown]' / '# %%'.

Used to write the committed notebooks from readable sources; ``parameters`` is tagged on the
first code cell.  Usage: python tools/nb.py SOURCE.py OUT.ipynb
"""
import sys

import nbformat


def build(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    chunks, kind, lines = [], None, []
    for line in source.splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                chunks.append((kind, "\n".join(lines).strip("\n")))
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line[2:] if kind == "markdown" and line.startswith("# ") else ("" if kind == "markdown" and line == "#" else line))
    chunks.append((kind, "\n".join(lines).strip("\n")))
    tagged = False
    for i, (kind, text) in enumerate(chunks):
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(text, id=f"cell-{i:02d}"))
        else:
            cell = nbformat.v4.new_code_cell(text, id=f"cell-{i:02d}")
            if not tagged:
                cell.metadata["tags"] = ["parameters"]
                tagged = True
            nb.cells.append(cell)
    return nb


if __name__ == "__main__":
    src, out = sys.argv[1], sys.argv[2]
    nbformat.write(build(open(src).read()), out)
