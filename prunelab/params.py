"""Declared parameter types: every notebook parameter is checked before any work starts.

Each profile file declares its parameters' types in a ``[types]`` table, one short spec per
name, read by `runner.resolve` whether the notebook was started by ``prunelab run``, by
papermill or in JupyterLab.  The grammar, smallest first:

- ``int``, ``float``, ``bool``, ``str`` (``path`` is a ``str`` naming a file or folder);
- a bound after ``int`` or ``float``: ``>= 1``, ``> 0``, or an interval ``in [0, 1)``;
- ``one of a, b, c`` (literal names) or ``one of prunelab.masks.SCHEMES`` (a registry: a tuple
  or dict of names, imported, so the allowed names never drift from the code);
- ``list of <spec>``: a non-empty list; ``list of <spec> (may be empty)`` allows ``[]``;
- ``<spec> checked by package.module.function``: after the type, ``function(value, params)`` (all the
  notebook's parameters, typed) checks what a type cannot say (a model name, a folder's layout) and
  raises a ValueError whose message continues "parameter name=value ...".

>>> check_value("epochs", 3, "int >= 1")
3
>>> check_value("lr", 1, "float > 0")
1.0
>>> check_value("sparsities", [1.5], "list of float in [0, 1)")
Traceback (most recent call last):
...
prunelab.params.ParameterError: parameter sparsities=[1.5] has item 1.5, which is not allowed; sparsities takes a non-empty list of floats in [0, 1)
"""
from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any


class ParameterError(ValueError):
    """A parameter value its declared type does not allow (one line: name, value, what is allowed)."""


class BareWord(str):
    """A ``-p key=value`` value that is not JSON, kept as text: fine for a ``str`` parameter only."""

    def __new__(cls, text: str, error: str):
        word = super().__new__(cls, text)
        word.error = error
        return word


_BOUND = re.compile(r"^(?P<base>int|float)\s*(?:(?P<op>>=|>)\s*(?P<lo>-?[\d.]+)|in\s*(?P<left>[\[(])\s*(?P<a>-?[\d.]+)\s*,"
                    r"\s*(?P<b>-?[\d.]+)\s*(?P<right>[\])]))?$")
_PLURAL = {"int": "ints", "float": "floats", "bool": "bools", "str": "strings", "path": "paths"}


@dataclass(frozen=True)
class Spec:
    """One parsed type spec; `describe` says what it allows, `check` returns the value or raises."""

    base: str                      # int | float | bool | str | path | choice | list
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    item: Spec | None = None
    may_be_empty: bool = False
    checker: str = ""              # package.module.function called with (value, params) after the type

    def describe(self, plural: bool = False) -> str:
        if self.base == "list":
            return f"{'a' if self.may_be_empty else 'a non-empty'} list of {self.item.describe(plural=True)}"
        if self.base == "choice":
            return ("names from " if plural else "one of ") + ", ".join(self.choices)
        noun = _PLURAL[self.base] if plural else ("an " if self.base == "int" else "a ") + self.base
        if self.lo is not None and self.hi is not None:
            return f"{noun} in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{noun} {'>' if self.lo_open else '>='} {_num(self.lo)}"
        return noun

    def check(self, value: Any) -> Any:
        """``value`` converted (an int given for a float becomes a float), or ValueError."""
        if isinstance(value, BareWord) and self.base not in ("str", "path", "choice"):
            raise ValueError(f"is not valid JSON ({value.error})")
        if self.base == "list":
            if not isinstance(value, list):
                raise ValueError(f"is {_a(value)}, not a list")
            if not value and not self.may_be_empty:
                raise ValueError("is empty")
            out = []
            for item in value:
                try:
                    out.append(self.item.check(item))
                except ValueError:
                    raise ValueError(f"has item {json.dumps(item)}, which is not allowed") from None
            return out
        if self.base == "choice":
            if value not in self.choices:
                raise ValueError("is not a known name")
            return str(value)
        if self.base in ("str", "path"):
            if not isinstance(value, str):
                raise ValueError(f"is {_a(value)}")
            return str(value)
        if self.base == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"is {_a(value)}")
            return value
        return self._number(value)

    def _number(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"is {_a(value)}")
        if self.base == "int" and not isinstance(value, int):
            raise ValueError(f"is {_a(value)}")
        value = float(value) if self.base == "float" else value
        if self.base == "float" and not math.isfinite(value):
            raise ValueError("is not finite")
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise ValueError("is out of range")
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise ValueError("is out of range")
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _a(value: Any) -> str:
    name = {"str": "str", "int": "int", "float": "float", "bool": "bool", "list": "list", "dict": "dict",
            "NoneType": "null"}.get(type(value).__name__, type(value).__name__)
    return name if name == "null" else ("an " if name[0] in "aeiou" else "a ") + name


def _registry(dotted: str) -> tuple[str, ...]:
    module, _, attr = dotted.rpartition(".")
    try:
        return tuple(getattr(importlib.import_module(module), attr))
    except (ImportError, AttributeError) as err:
        raise ValueError(f"type spec names registry {dotted!r}, which cannot be imported ({err})") from None


def parse_spec(text: str) -> Spec:
    """Parse a type spec (see the module docstring); a malformed spec is a ValueError naming it."""
    text = " ".join(text.split())
    if " checked by " in text:
        text, _, checker = text.partition(" checked by ")
        return replace(parse_spec(text), checker=checker.strip())
    if text.startswith("list of "):
        inner, empty = text[len("list of "):], text.endswith(" (may be empty)")
        inner = inner[: -len(" (may be empty)")] if empty else inner
        return Spec("list", item=parse_spec(inner), may_be_empty=empty)
    if text.startswith("one of "):
        names = text[len("one of "):]
        if "," not in names and names.startswith("prunelab."):
            return Spec("choice", choices=_registry(names))
        return Spec("choice", choices=tuple(n.strip() for n in names.split(",")))
    if text in ("bool", "str", "path"):
        return Spec(text)
    m = _BOUND.match(text)
    if not m:
        raise ValueError(f"malformed type spec {text!r}; see prunelab.params for the grammar")
    if m["op"]:
        return Spec(m["base"], lo=float(m["lo"]), lo_open=m["op"] == ">")
    if m["a"]:
        return Spec(m["base"], lo=float(m["a"]), hi=float(m["b"]), lo_open=m["left"] == "(", hi_open=m["right"] == ")")
    return Spec(m["base"])


def check_value(name: str, value: Any, spec: str | Spec) -> Any:
    """``value`` checked against ``spec`` (and converted), else one-line `ParameterError`."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    try:
        return spec.check(value)
    except ValueError as err:
        shown = str(value) if isinstance(value, BareWord) else json.dumps(value, default=str)
        raise ParameterError(f"parameter {name}={shown} {err}; {name} takes {spec.describe()}") from None


def run_checker(name: str, value: Any, spec: str | Spec, params: dict[str, Any]) -> Any:
    """``value`` once the spec's checker (if any) has accepted it; else a one-line `ParameterError`.

    >>> run_checker("dataset", "./nowhere", "str checked by prunelab.data.imagesources.check_dataset", {})
    Traceback (most recent call last):
    prunelab.params.ParameterError: parameter dataset="./nowhere" names no folder (nowhere does not exist)
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if not spec.checker:
        return value
    module, _, attr = spec.checker.rpartition(".")
    try:
        check = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"type spec of {name} names checker {spec.checker!r}, which cannot be imported ({err})") from None
    try:
        check(value, params)
    except ValueError as err:
        raise ParameterError(f"parameter {name}={json.dumps(value, default=str)} {' '.join(str(err).split())}") from None
    return value


def parse_cli_value(text: str) -> Any:
    """``-p key=value`` text: JSON (numbers, true/false, lists, quoted strings), else a `BareWord`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return BareWord(text, f"{err.msg} at character {err.pos}")
