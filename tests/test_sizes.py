"""Every count and size a notebook takes has an upper bound (issue 23, "Sizes").

``-p epochs=1000000000`` or ``-p batch_size=1000000000000`` used to be accepted and to start work
(or try to allocate 256 GB). The ``[types]`` tables of ``notebooks/profiles/*.toml`` now bound
every int parameter far above any real study (the paper profile included), so such a typo is
refused in one line before anything runs.
"""
import pytest

from prunelab import cli, executors, params, runner
from prunelab.models import zoo

# Int parameters that need no upper bound, each with the reason. None today: even seeds are
# bounded (to [0, 2**31 - 1]), since a seed of 10**12 is a typo, not a study.
EXEMPT: dict[str, str] = {}

# A bound is meant to sit well above every value a profile gives (10x at least), so that no real
# study meets it, while it still refuses the absurd.
HEADROOM = 10


@pytest.mark.parametrize("param, shown", [
    ("epochs=1000000000", "parameter epochs=1000000000 is out of range; epochs takes an int in [1, "),
    ("hidden=[1000000000]", "parameter hidden=[1000000000] has item 1000000000, which is not allowed; "
                            "hidden takes a non-empty list of ints in [1, "),
    ("batch_size=1000000000000", "parameter batch_size=1000000000000 is out of range; "
                                 "batch_size takes an int in [1, "),
])
def test_absurd_sizes_are_refused_before_anything_runs(param, shown, runs, capsys, monkeypatch):
    monkeypatch.delenv("PRUNELAB_PROFILE", raising=False)
    monkeypatch.setenv(zoo.CALLER_DIR_ENV, "")  # `prunelab run` sets it; restored after the test

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"{param} started a run")

    monkeypatch.setattr(executors, "run_local", must_not_run)
    assert cli.main(["run", "00_tour", "--profile", "smoke", "-p", param]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("prunelab: error: ") and err.count("\n") == 1 and shown in err, err
    assert "[1/1]" not in out  # no notebook was started
    assert not runs.exists() or not any(runs.iterdir()), "a run folder was created"


def int_specs():
    """(notebook, name, spec text, parsed int spec) for every int and list-of-int parameter."""
    out = []
    for notebook in runner.notebooks():
        for name, text in runner.declared_types(notebook).items():
            spec = params.parse_spec(text)
            item = spec.item if spec.base == "list" else spec
            if item.base == "int":
                out.append((notebook, name, text, item))
    return out


def test_every_int_parameter_has_an_upper_bound():
    specs = int_specs()
    assert {"epochs", "hidden", "batch_size", "seeds"} <= {name for _, name, _, _ in specs}  # the walk sees them
    unbounded = [f"{notebook}: {name} = {text!r}" for notebook, name, text, item in specs
                 if item.hi is None and name not in EXEMPT]
    assert not unbounded, "int parameters without an upper bound (`int in [lo, hi]`):\n" + "\n".join(unbounded)
    assert all(item.lo is not None for *_, item in specs), "an int parameter lost its lower bound"


@pytest.mark.parametrize("notebook", runner.notebooks())
def test_bounds_leave_headroom_over_every_profile(notebook):
    """No profile, paper included, comes within ``HEADROOM`` times of a bound."""
    types = {name: params.parse_spec(text) for name, text in runner.declared_types(notebook).items()}
    tight = []
    for profile in runner.PROFILES:
        for name, value in runner.resolve(notebook, profile).items():
            spec = types.get(name)
            item = spec.item if spec is not None and spec.base == "list" else spec
            if item is None or item.base != "int" or item.hi is None:
                continue
            for v in value if isinstance(value, list) else [value]:
                if v * HEADROOM > item.hi:
                    tight.append(f"{profile}: {name}={v} within {HEADROOM}x of its bound {item.hi:g}")
    assert not tight, "\n".join(tight)


@pytest.mark.parametrize("profile", runner.PROFILES)
@pytest.mark.parametrize("notebook", runner.notebooks())
def test_every_profile_value_is_within_its_bounds(notebook, profile):
    resolved = runner.resolve(notebook, profile)  # raises a ParameterError on a value out of its bounds
    assert resolved["profile"] == profile
