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

__all__ = ["BatchingSweep", "ModelGain", "Served", "Setting", "SweepRow", "check_serving_gain", "model_gain", "recent", "save", "sweep"]

WARMUP = (2, 8)  # (concurrency, requests) sent untimed to each setting before it is measured
RECENT_S = 3600.0  # a saved sweep older than this is not "from this sitting" (recent() ignores it)
MODEL_SIZES = (1, 4, 16, 32)  # batch sizes the model alone is timed at (model_gain)
SERVING_SHARE = 0.5  # a server should turn at least this share of the model's own gain (beyond 1×) into throughput
LITTLE_GAIN = 1.2  # below this per-item gain the model has little for batching to give


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


@dataclass(frozen=True)
class ModelGain:
    """The model alone, in this process: seconds per call at each batch size (``per_call``, keyed "batch N")."""

    per_call: Mapping[str, Any]  # "batch N" -> timing.Spread of seconds per call

    @property
    def sizes(self) -> list[int]:
        return sorted(int(k.split()[1]) for k in self.per_call)

    def call_s(self, batch: float) -> float:
        """Median seconds of one call of ``batch`` items, linear between the measured sizes."""
        sizes = self.sizes
        b = min(max(batch, sizes[0]), sizes[-1])
        lo = max(s for s in sizes if s <= b)
        hi = min(s for s in sizes if s >= b)
        t_lo, t_hi = self.per_call[f"batch {lo}"].median, self.per_call[f"batch {hi}"].median
        return t_lo if hi == lo else t_lo + (t_hi - t_lo) * (b - lo) / (hi - lo)

    def gain(self, batch: float) -> float:
        """Per-item gain of calls of ``batch`` items over calls of 1: the most a server's batching can give at that batch."""
        return batch * self.call_s(1) / self.call_s(batch)

    def line(self) -> str:
        """One sentence: per call and per item at each size, and the gain at the largest."""
        per = ", ".join(f"batch {b}: {1e3 * self.call_s(b):.1f} ms per call, {1e3 * self.call_s(b) / b:.2f} ms per item" for b in self.sizes)
        return f"the model alone (this process, one thread): {per} → batch {self.sizes[-1]} is {self.gain(self.sizes[-1]):.2f}× cheaper per item"


def model_gain(predict: Callable[[Any], Any], images: Any, sizes: Sequence[int] = MODEL_SIZES, repeats: int = 5) -> ModelGain:
    """Time ``predict`` on the first N ``images`` for each batch size N, in interleaved rounds on one thread."""
    from labkit.measure import timing
    from labkit.runtime import hardware

    if not sizes or min(sizes) != 1 or max(sizes) > len(images):
        raise BadInput(f"sizes must start at 1 and fit in the {len(images)} images given, not {list(sizes)}")
    def call(batch: Any) -> Callable[[], Any]:
        return lambda: predict(batch)

    with hardware.threads_limited(1):
        per_call = timing.compare({f"batch {b}": call(images[:b]) for b in sorted(set(sizes))}, repeats=repeats, warmup=3)
    return ModelGain(per_call)


def check_serving_gain(server: str, gain: float, model: ModelGain, mean_batch: float, concurrency: int) -> bool:
    """The verdict on a server's batching gain, against what the model alone gains at the mean batch the server formed.

    A server batches the model's calls, not its own per-request work (HTTP, JSON, the queue), so it should turn
    at least ``SERVING_SHARE`` of the model's gain beyond 1× into throughput; where the model gains under
    ``LITTLE_GAIN``, batching has little to give and should at least not cost much.
    """
    from labkit.measure import verdicts

    own = model.gain(mean_batch)
    at = f"the model alone gains {own:.2f}× per item at the mean batch of {mean_batch:.1f} the server formed"
    if own < LITTLE_GAIN:
        return verdicts.check(f"{server}'s batching costs little at concurrency {concurrency} where there is little to gain ({at})",
                              gain, ">=", 0.8, unit="×").held
    floor = 1 + SERVING_SHARE * (own - 1)
    return verdicts.check(f"{server}'s batching turns the model's own gain into throughput at concurrency {concurrency} ({at}; "
                          f"at least half of it beyond 1× expected, as each request's HTTP and JSON are not batched)",
                          gain, ">=", floor, unit="×").held


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
