"""Exercise checks that say what is wrong and give a hint, plus the student edition.

Exercise cells put their solution between ``# BEGIN SOLUTION`` and ``# END SOLUTION``; the
student edition replaces those lines with ``...``. So a starter cell sets its answer to None
first, and a check treats None (or ``...``) as "not done yet" — it prints feedback and returns
False instead of raising, so the student edition runs top to bottom. A wrong answer raises
``ExerciseFailed`` saying what is wrong and a hint. Checks for notebook NN live in ``exNN.py``.

    from labkit.exercises import ex00
    ex00.check_oversubscription(slowdown)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import EllipsisType

    from typing_extensions import TypeIs

__all__ = ["ExerciseFailed", "is_unanswered", "verdict"]


class ExerciseFailed(AssertionError):
    """An exercise answer is wrong; the message says why and gives a hint."""


def is_unanswered(answer: object) -> TypeIs[EllipsisType | None]:
    """True for the placeholders a student edition leaves: None and ``...``."""
    return answer is None or answer is Ellipsis


def verdict(exercise: str, answer: Any, problem: str | None, hint: str, success: str = "") -> bool:
    """Report on ``answer``: not done yet (False), correct (True), or wrong (raises ExerciseFailed).

    ``problem`` is None when the answer is right, else a sentence saying what is wrong.
    """
    if is_unanswered(answer):
        print(f"⏳ {exercise}: not done yet. Hint: {hint}")
        return False
    if problem is None:
        print(f"✅ {exercise}: correct.{' ' + success if success else ''}")
        return True
    raise ExerciseFailed(f"❌ {exercise}: {problem}\nHint: {hint}")
