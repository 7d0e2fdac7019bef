"""What a kill under load did to the clients: how long until they were served again, how many lost.

``capstone.measure_recovery`` kills one worker of a running option under a closed-loop load; the
requests it recorded go through ``recovery_from``, and ``format_recovery`` says the result the way
the capstone table shows it. ``recovery_per_kill`` does the same for many kills in one run
(``labkit bench faults``). Used in 14.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from labkit.measure.load import Request

__all__ = ["SLOW_FACTOR", "format_recovery", "recovery_from", "recovery_per_kill"]

SLOW_FACTOR = 5.0  # a request this many times slower than before the kill was disrupted by it


def recovery_from(requests: Sequence[Request], t_kill: float) -> dict[str, Any]:
    """How clients fared after a kill at ``t_kill``: ``recovery_s``, ``lost`` and ``recovered``.

    A request was *disrupted* when it failed, was in flight at the kill, or took more than
    ``SLOW_FACTOR`` × the pre-kill median. ``recovery_s`` = the last disrupted request's end −
    the kill: how long until every client had its answer (or its error); None when no request
    sent after the last failure succeeded (not recovered). ``lost`` = failed requests.
    """
    before = sorted(r.latency_s for r in requests if r.ok and r.start + r.latency_s < t_kill)
    typical = before[len(before) // 2] if before else 0.0
    slow = max(SLOW_FACTOR * typical, typical + 0.05)
    after = [r for r in requests if r.start + r.latency_s >= t_kill]
    disrupted = [r for r in after if not r.ok or r.start <= t_kill or r.latency_s > slow]
    lost = sum(1 for r in after if not r.ok)
    end = max((r.start + r.latency_s for r in disrupted), default=t_kill)
    last_failed = max((r.start for r in after if not r.ok), default=None)
    # served again: a request sent after the last failure succeeded (or nothing failed)
    ok = last_failed is None or any(r.ok and r.start > last_failed for r in after)
    return {"recovery_s": round(end - t_kill, 3) if ok else None, "lost": lost, "recovered": ok}


def format_recovery(rec: Mapping[str, Any]) -> str:
    """The recovery figures as the table shows them: '1.2 s, 0 lost', 'did not recover…', or why not measured."""
    if rec.get("recovery_s") is not None:
        return f"{rec['recovery_s']:.1f} s, {rec['lost']} lost"
    if rec.get("recovered") is False:
        return "did not recover: requests still failed at the end"
    return rec.get("note") or "not measured"


def recovery_per_kill(requests: Sequence[Request], kills: Sequence[float]) -> list[float]:
    """For each kill time: how long until every request it disrupted had its answer (0: none disrupted).

    Disrupted = in flight at the kill and slower than ``SLOW_FACTOR`` × the median request (or
    failed). A request disrupted by several kills counts for each of them.
    """
    lat = sorted(r.latency_s for r in requests if r.ok)
    typical = lat[len(lat) // 2] if lat else 0.0
    slow = max(SLOW_FACTOR * typical, typical + 0.05)
    out = []
    for t in kills:
        ends = [r.start + r.latency_s - t for r in requests if r.start <= t < r.start + r.latency_s and (not r.ok or r.latency_s > slow)]
        out.append(max(ends, default=0.0))
    return out
