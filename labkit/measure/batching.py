"""The batching sweep: one server per batching setting, the same closed-loop load at each concurrency.

Each serving system batches in its own words (TorchServe ``batch_size`` + ``max_batch_delay``,
Ray Serve ``max_batch_size`` + ``batch_wait_timeout_s``, TF Serving ``max_batch_size`` +
``batch_timeout_micros``); here a ``Setting`` is the pair (largest batch, longest wait). The caller
says how to serve one setting (a context manager yielding ``Served``: URL, request bodies, an answer
check); ``sweep`` loads every setting at every concurrency, one after the other in this run, and
returns one ``BatchingSweep`` of ``SweepRow``s — the same type for every server.

    result = batching.sweep([Setting(1), Setting(32, 10)], [32], serve, n_requests=320)
    print(result.gain(32), result.row(32, 32).mean_batch)

``save(result, "triton")`` keeps a sweep's rows on disk and ``recent("triton")`` reads them back
while they are fresh, so a later notebook of the same sitting can compare with them (13 with 12).

Used by services.torchserve (09), bench.ray (07), bench.tfserving (10), services.triton (12),
services.litserve (13) and their benchmarks.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit import config
from labkit.errors import BadInput
from labkit.measure.load import LoadResult

__all__ = ["BatchingSweep", "Served", "Setting", "SweepRow", "recent", "save", "sweep"]

WARMUP = (2, 8)  # (concurrency, requests) sent untimed to each setting before it is measured
RECENT_S = 3600.0  # a saved sweep older than this is not "from this sitting" (recent() ignores it)


@dataclass(frozen=True)
class Setting:
    """Batch at most ``max_batch_size`` requests, waiting at most ``max_delay_ms`` for them (1: no batching)."""

    max_batch_size: int
    max_delay_ms: float = 0.0

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @property
    def label(self) -> str:
        if not self.batching:
            return "no batching"
        return f"max batch {self.max_batch_size}, wait {self.max_delay_ms:g} ms"


@dataclass
class Served:
    """One setting, deployed: where the load goes, what request ``i`` sends, how an answer is checked.

    ``check(response)`` returns an error string for a wrong 2xx answer (None: right);
    ``batch_size_of(answer)`` reads the batch a request was part of, where the server says so;
    ``transports`` adds loads over other protocols (``{"grpc": run(concurrency, n_requests)}``);
    ``info()`` is read after the loads, before the server stops (start-up time, RSS, metrics).
    """

    url: str
    payload: Callable[[int], Any]
    check: Callable[[Any], str | None] | None = None
    batch_size_of: Callable[[Any], int] | None = None
    transports: Mapping[str, Callable[[int, int], LoadResult]] = field(default_factory=dict)
    info: Callable[[], dict[str, Any]] = dict


@dataclass
class SweepRow:
    """One setting at one concurrency over one transport: the load's result and the batches formed."""

    setting: Setting
    concurrency: int
    transport: str
    load: LoadResult
    batches_formed: dict[int, int] = field(default_factory=dict)  # batch size -> requests served in one

    @property
    def max_batch_size(self) -> int:
        return self.setting.max_batch_size

    @property
    def max_delay_ms(self) -> float:
        return self.setting.max_delay_ms

    @property
    def throughput_per_s(self) -> float:
        return self.load.throughput_per_s

    @property
    def errors(self) -> int:
        return self.load.errors

    @property
    def p50_ms(self) -> float:
        return float(self.load.summary().get("p50_ms", float("nan")))

    @property
    def p99_ms(self) -> float:
        return float(self.load.summary().get("p99_ms", float("nan")))

    @property
    def mean_batch(self) -> float:
        """Requests per batch the server formed (a request in a batch of k reports k), 0 if unknown."""
        n = sum(self.batches_formed.values())
        return n / sum(c / k for k, c in self.batches_formed.items()) if n else 0.0

    def summary(self) -> dict[str, Any]:
        """A flat dict for tables and JSON: the setting, concurrency, transport, load figures, batches."""
        return {
            "max_batch_size": self.max_batch_size,
            "max_delay_ms": self.max_delay_ms,
            "concurrency": self.concurrency,
            "transport": self.transport,
            **self.load.summary(),
            "mean_batch": round(self.mean_batch, 2),
            "batches_formed": dict(sorted(self.batches_formed.items())),
        }


@dataclass
class BatchingSweep:
    """Every row of a sweep, plus what each setting's server reported (``servers[label]``)."""

    rows: list[SweepRow] = field(default_factory=list)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def select(self, concurrency: int | None = None, transport: str | None = None, batching: bool | None = None) -> list[SweepRow]:
        """The rows matching every filter given."""
        return [
            r for r in self.rows
            if (concurrency is None or r.concurrency == concurrency)
            and (transport is None or r.transport == transport)
            and (batching is None or r.setting.batching == batching)
        ]

    def row(self, max_batch_size: int, concurrency: int | None = None, transport: str = "http", max_delay_ms: float | None = None) -> SweepRow:
        """The one row of that setting (at the highest concurrency unless given)."""
        c = concurrency if concurrency is not None else max(r.concurrency for r in self.rows)
        found = [r for r in self.select(c, transport) if r.max_batch_size == max_batch_size and (max_delay_ms is None or r.max_delay_ms == max_delay_ms)]
        if len(found) != 1:
            raise BadInput(f"{len(found)} rows for max_batch_size={max_batch_size}, concurrency {c}, {transport}; settings: {sorted({r.setting.label for r in self.rows})}")
        return found[0]

    def gain(self, concurrency: int | None = None, transport: str = "http") -> float:
        """Throughput of the best batching setting over no batching, at one concurrency (default: the highest)."""
        c = concurrency if concurrency is not None else max(r.concurrency for r in self.rows)
        off = self.select(c, transport, batching=False)
        on = self.select(c, transport, batching=True)
        if len(off) != 1 or not on:
            raise BadInput(f"a gain needs one unbatched and at least one batched row at concurrency {c} over {transport}")
        return max(r.throughput_per_s for r in on) / max(off[0].throughput_per_s, 1e-9)

    def summaries(self) -> list[dict[str, Any]]:
        """Every row's ``summary()``."""
        return [r.summary() for r in self.rows]


def sweep(
    settings: Sequence[Setting],
    concurrencies: Sequence[int],
    serve: Callable[[Setting], AbstractContextManager[Served]],
    n_requests: int,
    warmup: tuple[int, int] = WARMUP,
    progress: bool = True,
    desc: str = "batching sweep",
) -> BatchingSweep:
    """Serve each setting (``serve(setting)``), warm it up, load it at each concurrency; stop it.

    Settings run one after the other, so each row is measured on the same machine in the same run.
    ``progress`` and ``desc`` are kept for callers; nothing is drawn while the loads are timed.
    """
    from labkit.measure import load

    del progress, desc  # a progress bar would leave debris in the notebook and steal CPU from the timing
    if not settings or not concurrencies:
        raise BadInput("a sweep needs at least one setting and one concurrency")
    result = BatchingSweep()
    for setting in settings:
        with serve(setting) as served:
            load.closed_loop(served.url, served.payload, concurrency=warmup[0], n_requests=warmup[1])
            for concurrency in concurrencies:
                formed: Counter[int] = Counter()

                def check(resp: Any, served: Served = served, formed: Counter[int] = formed) -> str | None:
                    error = served.check(resp) if served.check is not None else None
                    if error is None and served.batch_size_of is not None:
                        formed[served.batch_size_of(resp.json())] += 1
                    return error

                res = load.closed_loop(served.url, served.payload, concurrency=concurrency, n_requests=n_requests, check=check)
                result.rows.append(SweepRow(setting, concurrency, "http", res, dict(formed)))
                for transport, run in served.transports.items():
                    result.rows.append(SweepRow(setting, concurrency, transport, run(concurrency, n_requests)))
            result.servers[setting.label] = served.info()
    return result


def _saved_path(name: str) -> Path:
    return config.cache_dir("results", "sweeps") / f"{name}.json"


def save(result: BatchingSweep, name: str) -> Path:
    """Keep ``result``'s rows (``label`` + ``summary()``) under ``name``, with the time, mode and load average.

    ``recent(name)`` reads them back. Used in 12 (Triton's sweep, which 13 compares with).
    """
    rows = [{"label": r.setting.label, **r.summary()} for r in result.rows]
    payload = {"name": name, "saved_at": time.time(), "fast": config.fast(), "load_average": os.getloadavg()[0], "rows": rows}
    path = _saved_path(name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=str))
    tmp.replace(path)
    return path


def recent(name: str, max_age_s: float = RECENT_S) -> dict[str, Any] | None:
    """What ``save`` kept under ``name`` if it was saved under ``max_age_s`` ago in this mode (fast/full), else None.

    The dict has ``saved_at`` (epoch s), ``age_s``, ``fast``, ``load_average`` and ``rows`` (dicts with
    ``label``, ``max_batch_size``, ``concurrency``, ``transport``, ``throughput_per_s``, ``p99_ms``,
    ``mean_batch``...). Used in 13.
    """
    path = _saved_path(name)
    try:
        payload: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    age = time.time() - float(payload.get("saved_at", 0.0))
    if not 0 <= age <= max_age_s or payload.get("fast") != config.fast():
        return None
    return {**payload, "age_s": age}
