"""Progress bars that leave a notebook clean: ``progress.tqdm``, a drop-in for ``tqdm.auto.tqdm``.

A widget's output in a notebook file keeps the text it had when it was first shown, so an executed
or exported notebook (nbconvert, nbval, GitHub, a viewer without widgets) shows a frozen ``0%`` bar
for every loop that has long finished. ``tqdm`` takes tqdm's arguments and returns a tqdm bar:

- in a terminal, a script or pytest: tqdm's text bar on stderr, as ``tqdm.tqdm`` draws it;
- in a Jupyter kernel with ipywidgets: tqdm's widget, shown through a display handle; when the bar
  closes, that output becomes one line of text, the final count and time (nothing for
  ``leave=False`` once it completed);
- in a kernel without ipywidgets: the same text line, redrawn in place in one output.

    for c in progress.tqdm(concurrencies, desc="sweep", leave=False):
        ...

Used by the model trainers (00-14), the batching sweeps (09, 10, 12, 13), the capstone (14) and the
benchmarks behind ``labkit bench``.
"""

from __future__ import annotations

import functools
import io
import sys
from typing import Any

__all__ = ["in_kernel", "tqdm"]


def in_kernel() -> bool:
    """True inside a Jupyter (ipykernel) kernel, where outputs are notebook cells, not a terminal."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__module__.startswith("ipykernel")


def _widgets_usable() -> bool:
    try:
        from tqdm.notebook import IProgress
    except ImportError:
        return False
    return IProgress is not None


def tqdm(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar (same arguments) that ends as one line of text in a notebook.

    >>> sum(tqdm(range(3), disable=True))
    3
    """
    from tqdm.std import tqdm as text_bar

    if kwargs.get("disable") or not in_kernel():
        return text_bar(iterable, **kwargs)
    if _widgets_usable():
        return _widget_bar()(iterable, **kwargs)
    return _text_bar()(iterable, **kwargs)


def _final_text(b: Any) -> str:
    """What a closed bar leaves: its last state at its average rate (n / elapsed, not tqdm's smoothed last one), or nothing for a completed ``leave=False`` bar."""
    completed = not b.total or b.n >= b.total
    return "" if completed and b.leave is False else b.format_meter(**{**b.format_dict, "ncols": None, "rate": None})


@functools.cache
def _widget_bar() -> type:
    from IPython.display import display
    from tqdm.notebook import tqdm_notebook

    class _WidgetBar(tqdm_notebook):
        """tqdm's widget in a display handle, replaced by plain text when the bar closes."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, display=False, **kwargs)
            self._handle = display(self.container, display_id=True)
            self.displayed = True

        def close(self) -> None:
            if self.disable:
                return
            super().close()
            self._handle.update({"text/plain": _final_text(self)}, raw=True)
            self.container.close()  # its output is text now: the widget is not shown anywhere

    return _WidgetBar


@functools.cache
def _text_bar() -> type:
    from IPython.display import display
    from tqdm.std import tqdm

    class _TextBar(tqdm):
        """tqdm's text bar drawn into one display output, updated in place, instead of stderr."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._handle = display({"text/plain": ""}, raw=True, display_id=True)
            super().__init__(*args, **{"ascii": False, **kwargs, "file": io.StringIO()})

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            self._handle.update({"text/plain": str(self) if msg is None else msg}, raw=True)
            return True

        def close(self) -> None:
            if self.disable:
                return
            super().close()
            self._handle.update({"text/plain": _final_text(self)}, raw=True)

    return _TextBar
