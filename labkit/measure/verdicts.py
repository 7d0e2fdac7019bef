"""Computed conclusions: a sentence that depends on a number is printed from the run.

    verdicts.check("2 processes beat 1", speedup, ">=", 1.5, unit="×")
    ✅ 2 processes beat 1 — measured 1.87× (expected ≥ 1.50×)
    ⚠️ 2 processes beat 1 — measured 1.12× (expected ≥ 1.50×): other programs kept 1.3 of the 2 usable cores busy on average while this ran

A ✅ is printed only when the printed (rounded) value satisfies the printed condition; where rounding
to ``digits`` would turn the comparison (30.5 % against ≤ 30 % printed as "30 % ≤ 30 %"), more digits
are printed, up to ``EXTRA_DIGITS`` more, until the printed figures compare as the measured ones. A ⚠️ names
its likely cause: the one given, else what the contention probe (``labkit.measure.probe``) saw,
else that the machine looked idle. ``check`` returns the ``Verdict`` (truthy when it held), so a
notebook can branch on it. ``within`` checks a two-sided range. Used in every notebook.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from labkit.errors import BadInput

__all__ = ["Verdict", "check", "with_probe_cause", "within"]

_OPS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    ">=": (operator.ge, "≥"),
    "<=": (operator.le, "≤"),
    ">": (operator.gt, ">"),
    "<": (operator.lt, "<"),
}
EXTRA_DIGITS = 3  # at most this many digits beyond the caller's, to show a comparison the rounding would hide
IDLE_CAUSE = ("other programs stayed under the probe's limit and its calibration did not slow, so the machine's load does not explain it: "
              "the cause is in this run's own work or its timing, and the figures above do not say which")


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


def _fmt(value: float, digits: int, unit: str, short: bool | None = None) -> str:
    shown = round(float(value), digits)
    if (digits >= 4 if short is None else short) and abs(shown) < 1:  # a tolerance (max |diff| ≤ 1e-5): the rounded figure, short ("0", "1e-5"), not 0.000010
        return f"{shown:.{digits}g}".replace("e-0", "e-") + unit
    return f"{value:,.{digits}f}{unit}"


def _counted(value: float, digits: int, unit: str) -> str:
    """A count's unit in the singular when the printed count is exactly 1 (" replicas" → " replica"); other units as given."""
    word = unit[1:]
    if digits != 0 or round(float(value)) != 1 or not unit.startswith(" ") or len(word) < 4 or not word.isalpha() or not word.endswith("s"):
        return unit
    return " " + (word[:-2] if word.endswith(("sses", "ches", "shes", "xes")) else word[:-1])


def _precision(holds: Callable[[int | None], bool], digits: int, value: float | None = None, bounds: tuple[float, ...] = ()) -> int:
    """The fewest digits (from ``digits``) at which the rounded comparison agrees with the exact one (``holds(None)``)
    and ``value`` does not print as one of ``bounds`` it differs from (0.998 against 1.0 reads "0.998", not "1.0 > 1.0")."""
    exact = holds(None)
    for d in range(digits, digits + EXTRA_DIGITS + 1):
        if holds(d) == exact and (value is None or all(round(value, d) != round(b, d) or value == b for b in bounds)):
            return d
    return digits + EXTRA_DIGITS


def _rounded(x: float, digits: int | None) -> float:
    return float(x) if digits is None else round(float(x), digits)


def with_probe_cause(why: str) -> str:
    """``why``, followed by what the contention probe saw when it calls the machine busy (a computed cause keeps the probe's)."""
    from labkit.measure import probe

    seen = probe.current().cause()
    return f"{why}; {seen}" if seen else why


def _likely_cause(cause: str | None) -> str:
    if cause:
        return cause
    from labkit.measure import probe

    return probe.current().cause() or IDLE_CAUSE


def check(claim: str, value: float, op: str, bound: float, unit: str = "", digits: int = 2, cause: str | None = None, show: bool = True) -> Verdict:
    """Print and return the verdict on ``value <op> bound`` (the comparison uses the printed, rounded figures).

    >>> str(check("rounds agree", 30.5, "<=", 30, unit=" %", digits=0, cause="busy", show=False))
    '⚠️ rounds agree — measured 30.5 % (expected ≤ 30.0 %): busy'
    """
    if op not in _OPS:
        raise BadInput(f"op must be one of {', '.join(_OPS)}, not {op!r}")
    compare, symbol = _OPS[op]
    short = digits >= 4  # the caller asked for a tolerance's short form
    if value == value:  # NaN never holds (and needs no extra digits)
        digits = _precision(lambda d: compare(_rounded(value, d), _rounded(bound, d)), digits, float(value), (float(bound),))
    held = value == value and compare(round(float(value), digits), round(float(bound), digits))
    verdict = Verdict(claim, held, _fmt(value, digits, _counted(value, digits, unit), short), f"{symbol} {_fmt(bound, digits, _counted(bound, digits, unit), short)}", None if held else _likely_cause(cause), shown=show)
    if show:
        print(verdict)
    return verdict


def within(claim: str, value: float, low: float, high: float, unit: str = "", digits: int = 2, cause: str | None = None, show: bool = True) -> Verdict:
    """Print and return the verdict on ``low <= value <= high`` (compared as printed)."""
    if low > high:
        raise BadInput(f"low ({low}) must not exceed high ({high})")
    short = digits >= 4
    if value == value:
        digits = _precision(lambda d: _rounded(low, d) <= _rounded(value, d) <= _rounded(high, d), digits, float(value), (float(low), float(high)))
    held = value == value and round(low, digits) <= round(float(value), digits) <= round(high, digits)
    low_s, high_s = (_fmt(b, digits, _counted(b, digits, unit), short) for b in (low, high))
    expected = f"= {low_s}" if low_s == high_s else f"between {low_s} and {high_s}"  # an exact status reads "= 400"
    verdict = Verdict(claim, held, _fmt(value, digits, _counted(value, digits, unit), short), expected, None if held else _likely_cause(cause), shown=show)
    if show:
        print(verdict)
    return verdict
