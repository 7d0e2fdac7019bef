"""Computed conclusions: a sentence that depends on a number is printed from the run.

    verdicts.check("2 processes beat 1", speedup, ">=", 1.5, unit="×")
    ✅ 2 processes beat 1 — measured 1.87× (expected ≥ 1.50×)
    ⚠️ 2 processes beat 1 — measured 1.12× (expected ≥ 1.50×): other programs used the CPU: load average 3.1 on 2 usable cores

A ✅ is printed only when the printed (rounded) value satisfies the printed condition. A ⚠️ names
its likely cause: the one given, else what the contention probe (``labkit.measure.probe``) saw,
else that the machine looked idle. ``check`` returns the ``Verdict`` (truthy when it held), so a
notebook can branch on it. ``within`` checks a two-sided range. Used in every notebook.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from labkit.errors import BadInput

__all__ = ["Verdict", "check", "within"]

_OPS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    ">=": (operator.ge, "≥"),
    "<=": (operator.le, "≤"),
    ">": (operator.gt, ">"),
    "<": (operator.lt, "<"),
}
IDLE_CAUSE = "the machine looked idle during the run, so the cause is in what was measured (see the text above)"


@dataclass(frozen=True)
class Verdict:
    """One computed conclusion: the claim, whether it held, and the line that says so."""

    claim: str
    held: bool
    measured: str
    expected: str
    cause: str | None = None
    shown: bool = field(default=False, compare=False, repr=False)  # already printed by check/within

    def __bool__(self) -> bool:
        return self.held

    def _ipython_display_(self) -> None:  # a cell ending in verdicts.check(...) shows the line once, not twice
        if not self.shown:
            print(self)

    def __str__(self) -> str:
        if self.held:
            return f"✅ {self.claim} — measured {self.measured} (expected {self.expected})"
        return f"⚠️ {self.claim} — measured {self.measured} (expected {self.expected}): {self.cause}"

    def _repr_pretty_(self, p: object, cycle: bool) -> None:  # IPython shows the line, not the dataclass
        p.text(str(self))  # type: ignore[attr-defined]


def _fmt(value: float, digits: int, unit: str) -> str:
    shown = round(float(value), digits)
    if digits >= 4 and abs(shown) < 1:  # a tolerance (max |diff| ≤ 1e-5): the rounded figure, short ("0", "1e-5"), not 0.000010
        return f"{shown:.{digits}g}".replace("e-0", "e-") + unit
    return f"{value:,.{digits}f}{unit}"


def _likely_cause(cause: str | None) -> str:
    if cause:
        return cause
    from labkit.measure import probe

    return probe.current().cause() or IDLE_CAUSE


def check(claim: str, value: float, op: str, bound: float, unit: str = "", digits: int = 2, cause: str | None = None, show: bool = True) -> Verdict:
    """Print and return the verdict on ``value <op> bound`` (the comparison uses the printed, rounded figures)."""
    if op not in _OPS:
        raise BadInput(f"op must be one of {', '.join(_OPS)}, not {op!r}")
    compare, symbol = _OPS[op]
    shown, shown_bound = round(float(value), digits), round(float(bound), digits)
    held = value == value and compare(shown, shown_bound)  # NaN never holds
    verdict = Verdict(claim, held, _fmt(value, digits, unit), f"{symbol} {_fmt(bound, digits, unit)}", None if held else _likely_cause(cause), shown=show)
    if show:
        print(verdict)
    return verdict


def within(claim: str, value: float, low: float, high: float, unit: str = "", digits: int = 2, cause: str | None = None, show: bool = True) -> Verdict:
    """Print and return the verdict on ``low <= value <= high`` (compared as printed)."""
    if low > high:
        raise BadInput(f"low ({low}) must not exceed high ({high})")
    shown = round(float(value), digits)
    held = value == value and round(low, digits) <= shown <= round(high, digits)
    expected = f"between {_fmt(low, digits, unit)} and {_fmt(high, digits, unit)}"
    verdict = Verdict(claim, held, _fmt(value, digits, unit), expected, None if held else _likely_cause(cause), shown=show)
    if show:
        print(verdict)
    return verdict
