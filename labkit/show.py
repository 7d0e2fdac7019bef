"""Show labkit code in a notebook: a named region of a module, or a whole public function or class.

A region is marked in the labkit source by two comment lines::

    # region: predict-route
    @api.post("/predict")
    async def predict(...): ...
    # endregion

and shown with ``labkit.show("labkit.apps.gateway", "predict-route")``. ``labkit.show(obj)`` shows
the whole source of a public function or class. Either prints the code with syntax highlighting
where IPython is present (plain text otherwise), and fails with one clear line on an unknown
module, region or object — so renaming what a lesson shows breaks a test, not the lesson silently.
Regions may nest; marker lines themselves are never shown. Used in 00–07, 09 and 14.
"""

from __future__ import annotations

import re
from typing import Any

from labkit.errors import BadInput

__all__ = ["regions", "show", "source"]

_BEGIN = re.compile(r"^\s*# region: ([A-Za-z0-9_.-]+)\s*$")
_END = re.compile(r"^\s*# endregion\b")


def _module_text(module: str) -> tuple[str, str]:
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise BadInput(f"labkit.show: no module {module!r} ({exc})") from exc
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise BadInput(f"labkit.show: no Python module {module!r}")
    return spec.origin, Path(spec.origin).read_text()


def regions(module: str) -> dict[str, str]:
    """Every named region of ``module`` (a dotted name): ``{name: code}``, dedented, markers left out."""
    import textwrap

    path, text = _module_text(module)
    out: dict[str, list[str]] = {}
    open_: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        begin, end = _BEGIN.match(line), _END.match(line)
        if begin:
            name = begin.group(1)
            if name in out:
                raise BadInput(f"labkit.show: region {name!r} is defined twice in {path} (line {n})")
            out[name] = []
            open_.append(name)
        elif end:
            if not open_:
                raise BadInput(f"labkit.show: '# endregion' without a region at {path}:{n}")
            open_.pop()
        else:
            for name in open_:
                out[name].append(line)
    if open_:
        raise BadInput(f"labkit.show: region {open_[-1]!r} in {path} has no '# endregion'")
    return {name: textwrap.dedent("\n".join(lines)).strip("\n") + "\n" for name, lines in out.items()}


def source(what: Any, region: str | None = None) -> str:
    """The code ``show`` would print: a region of a module (by dotted name), or an object's source."""
    import inspect

    if isinstance(what, str):
        if region is None:
            raise BadInput("labkit.show: name the region to show, e.g. show('labkit.apps.gateway', 'predict-route')")
        found = regions(what)
        if region not in found:
            known = ", ".join(sorted(found)) or "none"
            raise BadInput(f"labkit.show: no region {region!r} in {what} (its regions: {known})")
        return found[region]
    if region is not None:
        raise BadInput("labkit.show: a region is named in a module, given by its dotted name as a string")
    name = getattr(what, "__qualname__", getattr(what, "__name__", ""))
    if any(part.startswith("_") and not part.startswith("__") for part in name.split(".")):
        raise BadInput(f"labkit.show: {name} is private; show a public name or a named region")
    try:
        return inspect.getsource(what)
    except (OSError, TypeError) as exc:
        raise BadInput(f"labkit.show: cannot find the source of {what!r} ({exc})") from exc


def show(what: Any, region: str | None = None) -> None:
    """Print a region of a labkit module, or a public object's source, highlighted in a notebook.

    ``show("labkit.apps.gateway", "predict-route")`` or ``show(digit_nets.DigitCNN)``.
    """
    code = source(what, region)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None and type(shell).__name__ != "TerminalInteractiveShell":
        from IPython.display import Code, display

        display(Code(code, language="python"))
        return
    print(code, end="")

