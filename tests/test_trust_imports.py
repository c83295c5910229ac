"""Where code comes from (issue 23): installed packages always win. The folder ``prunelab run`` starts
from is searched only for the user's ``model=package.module:factory`` module, and only for that import;
a ``seaborn.py`` there is never imported in place of seaborn, neither by ``prunelab`` nor its kernels."""
import os
import subprocess
import sys
import textwrap

import pytest

from prunelab import cli, runner
from prunelab.models import zoo

PLANTED = "raise RuntimeError('planted seaborn.py imported')\n"
FACTORY = textwrap.dedent("""
    import seaborn  # the user's module imports an installed package: it must get the installed one
    from torch import nn

    SEABORN_FILE = seaborn.__file__

    def small(num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))
""")
SEABORN_FILE = "import seaborn; print(seaborn.__file__)"
CALLER_DIR = "PRUNELAB_CALLER_DIR"  # set by `prunelab run`, inherited by its kernels


@pytest.fixture
def caller(tmp_path, monkeypatch):
    """A user's folder with their ``mynets.py`` and a planted ``seaborn.py``; sys.path, PYTHONPATH and
    $PRUNELAB_CALLER_DIR are restored after the test."""
    folder = tmp_path / "caller"
    folder.mkdir()
    (folder / "mynets.py").write_text(FACTORY)
    (folder / "seaborn.py").write_text(PLANTED)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv(CALLER_DIR, raising=False)
    if "PYTHONPATH" in os.environ:
        monkeypatch.setenv("PYTHONPATH", os.environ["PYTHONPATH"])  # restored afterwards whatever the code under test does
    else:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    sys.modules.pop("mynets", None)
    yield folder
    sys.modules.pop("mynets", None)


def test_run_leaves_the_kernels_import_path_alone(caller, monkeypatch):
    """What `prunelab run` sets up before its kernels start: the caller's folder is recorded, not importable."""
    monkeypatch.chdir(caller)
    path_before = list(sys.path)
    cli._importable_here()
    # A kernel: its cwd is notebooks/, its environment the one set up here.
    out = subprocess.run([sys.executable, "-c", SEABORN_FILE], capture_output=True, text=True, env=os.environ.copy(),
                         cwd=runner.notebooks_dir())
    assert out.returncode == 0, out.stderr  # the planted seaborn.py raises when imported
    assert not out.stdout.strip().startswith(str(caller)), out.stdout
    assert str(caller) not in os.environ.get("PYTHONPATH", "").split(os.pathsep)
    assert sys.path == path_before
    assert os.environ[CALLER_DIR] == str(caller)  # recorded instead, for the model= import alone


def test_user_model_imports_from_the_callers_folder_only_for_that_import(caller, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv(CALLER_DIR, str(caller))
    seaborn_before = sys.modules.get("seaborn")
    path_before = list(sys.path)
    net = zoo.factory("mynets:small")(num_classes=3)
    assert net[-1].out_features == 3 and zoo.check_model("mynets:small") == "mynets:small"
    assert sys.path == path_before
    assert not sys.modules["mynets"].SEABORN_FILE.startswith(str(caller))
    import seaborn

    assert not seaborn.__file__.startswith(str(caller)) and (seaborn_before is None or seaborn is seaborn_before)

    # A fresh interpreter, as a kernel is: seaborn not yet imported, before or inside the user's module.
    script = textwrap.dedent("""
        import sys
        from prunelab.models import zoo
        before = list(sys.path)
        zoo.factory("mynets:small")
        assert sys.path == before, "sys.path changed"
        import mynets, seaborn
        print(mynets.SEABORN_FILE)
        print(seaborn.__file__)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    inside, after = out.stdout.split()
    assert not inside.startswith(str(caller)) and not after.startswith(str(caller)), out.stdout


def test_missing_modules_say_where_they_were_looked_for(caller, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CALLER_DIR, str(caller))
    path_before = list(sys.path)
    with pytest.raises(ValueError) as err:
        zoo.factory("nosuchpkg.nets:small")
    text = str(err.value)
    assert "names module 'nosuchpkg.nets', which cannot be imported (ModuleNotFoundError" in text
    assert f"installed, on PYTHONPATH, or in the folder prunelab run was started from ({caller})" in text
    assert "\n" not in text and sys.path == path_before
    (caller / "broken.py").write_text("import nosuchdependency\n")  # found, but its own import fails: that is said
    with pytest.raises(ValueError, match="names module 'broken', .*No module named 'nosuchdependency'"):
        zoo.factory("broken:small")
    assert sys.path == path_before and "broken" not in sys.modules


def test_list_says_model_runs_the_users_code(capsys):
    assert cli.main(["list", "--profile", "smoke"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "model=package.module:factory runs your own Python code" in last and "prunelab run" in last
