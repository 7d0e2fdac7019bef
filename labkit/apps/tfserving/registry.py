"""Model versions on disk → loaded servables: version policy, labels, polling, batching.

Label and version look-up follow tensorflow_model_server 2.20.0 (``server_core.cc``
``ServableRequestFromModelSpec`` / ``GetModelVersionForLabel``, ``core/manager.h`` request
names, ``get_model_status_impl.cc``): an unknown label is INVALID_ARGUMENT ("Unrecognized
servable version label: L"), a version not loaded is NOT_FOUND ("Servable not found for request:
Specific(M, V)"), and the status of a model lists every version it has seen, newest first
(unloaded ones as END).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import numpy as np

from labkit.apps.tfserving.status import FailedPrecondition, InvalidArgument, NotFound

__all__ = ["BatchStats", "BatchingParameters", "InvalidArgument", "ModelRegistry", "NotFound", "Servable", "VersionPolicy"]


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions to serve: ``latest`` (the newest ``n``), ``all``, or ``specific`` versions."""

    kind: str = "latest"
    n: int = 1
    versions: tuple[int, ...] = ()

    def choose(self, on_disk: list[int]) -> list[int]:
        ordered = sorted(on_disk)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.n :] if ordered else []


@dataclass(frozen=True)
class BatchingParameters:
    """Server-side batching, named as in TF Serving's batching parameters file.

    ``num_batch_threads``: how many batches may run at once (while one runs, the next can form).
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    num_batch_threads: int = 1


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    sizes: dict[int, int] = field(default_factory=dict)


_Item = tuple[dict[str, np.ndarray], int, "Future[dict[str, np.ndarray]]"]


class _Batcher:
    """Merge concurrent requests into one model call: up to max_batch_size rows or the timeout."""

    def __init__(self, fn: Any, params: BatchingParameters, stats: BatchStats) -> None:
        self.fn = fn
        self.params = params
        self.stats = stats
        self.queue: Queue[_Item | None] = Queue()
        self._forming = threading.Lock()  # one thread forms a batch at a time; several may run one
        self._stats_lock = threading.Lock()
        self._carry: _Item | None = None  # a request that would have overfilled the last batch
        self.threads = [threading.Thread(target=self._loop, daemon=True, name=f"tfs-batcher-{i}") for i in range(max(1, params.num_batch_threads))]
        for t in self.threads:
            t.start()

    def submit(self, inputs: dict[str, np.ndarray]) -> Future[dict[str, np.ndarray]]:
        fut: Future[dict[str, np.ndarray]] = Future()
        rows = len(next(iter(inputs.values())))
        self.queue.put((inputs, rows, fut))
        return fut

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)

    def _next_batch(self) -> list[_Item] | None:
        """Wait for a first request, then add more until max_batch_size rows or the timeout; None: closing."""
        with self._forming:
            first, self._carry = self._carry, None
            if first is None:
                first = self.queue.get()
            if first is None:
                return None
            batch, rows = [first], first[1]
            deadline = time.monotonic() + self.params.batch_timeout_micros / 1e6
            while rows < self.params.max_batch_size:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                if rows + item[1] > self.params.max_batch_size:
                    self._carry = item  # starts the next batch
                    break
                batch.append(item)
                rows += item[1]
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch, sum(b[1] for b in batch))

    def _run(self, batch: list[tuple[dict[str, np.ndarray], int, Future[dict[str, np.ndarray]]]], rows: int) -> None:
        try:
            merged = {k: np.concatenate([b[0][k] for b in batch]) for k in batch[0][0]}
            out = self.fn(merged)
        except Exception as exc:
            for _, _, fut in batch:
                fut.set_exception(exc)
            return
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.rows += rows
            self.stats.sizes[rows] = self.stats.sizes.get(rows, 0) + 1
        start = 0
        for _, n, fut in batch:
            fut.set_result({k: v[start : start + n] for k, v in out.items()})
            start += n


def _tf_name(dtype: np.dtype) -> str:
    import tensorflow as tf

    try:
        return str(tf.as_dtype(dtype).name)
    except TypeError:
        return str(dtype)


class Servable:
    """One loaded SavedModel version and its signatures."""

    def __init__(self, name: str, version: int, path: Path, batching: BatchingParameters | None, stats: BatchStats) -> None:
        import tensorflow as tf

        self.name = name
        self.version = version
        self.path = path
        from labkit.apps.tfserving.signatures import load_meta_graph

        self.loaded = tf.saved_model.load(str(path))
        self.signatures = dict(self.loaded.signatures)
        self.meta_graph = load_meta_graph(path)
        self._in_specs: dict[str, dict[str, Any]] = {}
        self._out_specs: dict[str, dict[str, Any]] = {}
        self._batchers: dict[str, _Batcher] = {}
        if batching is not None:
            for sig_name in self.signatures:
                self._batchers[sig_name] = _Batcher(lambda x, s=sig_name: self._call(s, x), batching, stats)

    def signature(self, name: str | None) -> tuple[str, Any]:
        """The signature ``name`` (default ``serving_default``); RunPredict's FAILED_PRECONDITION if absent."""
        key = name or "serving_default"
        if key not in self.signatures:
            raise FailedPrecondition(f'Serving signature key "{key}" not found.')
        return key, self.signatures[key]

    def rest_input_dtypes(self, name: str) -> dict[str, str]:
        """The REST handler's ``GetInfoMap``: {input alias: dtype name}, or its INVALID_ARGUMENT."""
        from labkit.apps.tfserving.signatures import input_dtypes

        key = name or "serving_default"
        if key not in self.meta_graph.signature_def:
            raise InvalidArgument(f'Serving signature name: "{key}" not found in signature def')
        return input_dtypes(self.meta_graph.signature_def[key])

    def input_specs(self, name: str | None) -> dict[str, Any]:
        key, fn = self.signature(name)
        if key not in self._in_specs:  # cached: read on every request
            self._in_specs[key] = dict(fn.structured_input_signature[1])
        return self._in_specs[key]

    def output_specs(self, name: str | None) -> dict[str, Any]:
        key, fn = self.signature(name)
        if key not in self._out_specs:
            self._out_specs[key] = dict(fn.structured_outputs)
        return self._out_specs[key]

    def _call(self, sig_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        fn = self.signatures[sig_name]
        try:
            out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            raise InvalidArgument(str(exc).splitlines()[0]) from exc
        return {k: v.numpy() for k, v in out.items()}

    def prepare(self, sig_name: str | None, inputs: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
        """Check inputs against the signature; return the signature key and the inputs cast to its dtypes."""
        key, _ = self.signature(sig_name)
        specs = self.input_specs(key)
        if len(inputs) != len(specs):  # predict_util.cc VerifyRequestInputsSize (no defaults here)
            sent, want = sorted(inputs), sorted(specs)
            raise InvalidArgument(
                f"input size does not match signature: {len(sent)}!={len(want)} len({{{','.join(sent)}}}) != len({{{','.join(want)}}}). "
                f"Sent extra: {{{','.join(k for k in sent if k not in specs)}}}. Missing but required: {{{','.join(k for k in want if k not in inputs)}}}."
            )
        sig_inputs = self.meta_graph.signature_def[key].inputs if key in self.meta_graph.signature_def else {}
        for alias in sorted(specs):  # saved_model::GetInputValues
            if alias not in inputs:
                feed = sig_inputs[alias].name if alias in sig_inputs else alias
                raise InvalidArgument(
                    f"Signature input alias: {alias}(feed name: {feed}) not found in request and no default value provided. "
                    f"Inputs expected to be in the request {{{','.join(sorted(inputs))}}}, or default input alias set: "
                )
        cast = {}
        for i, (k, spec) in enumerate(sorted(specs.items())):
            given = np.asarray(inputs[k])
            want = np.dtype(spec.dtype.as_numpy_dtype)
            if given.dtype != want and not (want.kind == "O" and given.dtype.kind in "OSU"):  # DirectSession's feed check
                raise InvalidArgument(f"Expects arg[{i}] to be {spec.dtype.name} but {_tf_name(given.dtype)} is provided")
            try:
                arr = np.asarray(inputs[k], dtype=spec.dtype.as_numpy_dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"input {k!r} cannot be read as {spec.dtype.name}: {exc}") from exc
            if not spec.shape.is_compatible_with(arr.shape):  # upstream: the TF runtime's own error (graph-specific text)
                dims = ",".join("?" if d is None else str(d) for d in spec.shape.as_list())
                raise InvalidArgument(f"input {k}: shape [{','.join(map(str, arr.shape))}] is incompatible with the signature's shape [{dims}] (labkit stand-in's message)")
            cast[k] = arr
        return key, cast

    def submit(self, key: str, cast: dict[str, np.ndarray]) -> Future[dict[str, np.ndarray]] | None:
        """Hand prepared inputs to the signature's batcher; None when they should run on their own.

        A request that fills a batch on its own (or any request, without batching) runs as it is.
        """
        batcher = self._batchers.get(key)
        rows = next((a.shape[0] for a in cast.values() if a.ndim), None)
        if batcher is not None and rows and rows < batcher.params.max_batch_size:
            return batcher.submit(cast)
        return None

    def run(self, key: str, cast: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One model call on prepared inputs (no batching)."""
        return self._call(key, cast)

    def predict(self, sig_name: str | None, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check inputs against the signature, then run (through the batcher when batching)."""
        key, cast = self.prepare(sig_name, inputs)
        future = self.submit(key, cast)
        return future.result() if future is not None else self.run(key, cast)

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()


class ModelRegistry:
    """Serves the versions under ``base_path`` that ``policy`` selects; re-scans every ``poll_s``."""

    def __init__(self, name: str, base_path: str | Path, policy: VersionPolicy = VersionPolicy(), labels: dict[str, int] | None = None, batching: BatchingParameters | None = None) -> None:
        self.name = name
        self.base_path = Path(base_path)
        self.policy = policy
        self.labels = dict(labels or {})
        self.batching = batching
        self.stats = BatchStats()
        self._servables: dict[int, Servable] = {}
        self._ended: set[int] = set()  # versions unloaded since start (state END in the status)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def versions_on_disk(self) -> list[int]:
        if not self.base_path.is_dir():
            return []
        return sorted(int(p.name) for p in self.base_path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists())

    def refresh(self) -> None:
        """Load newly wanted versions first, then unload unwanted ones (availability preserving)."""
        wanted = self.policy.choose(self.versions_on_disk())
        for v in wanted:
            if v not in self._servables:
                servable = Servable(self.name, v, self.base_path / str(v), self.batching, self.stats)
                with self._lock:
                    self._servables[v] = servable
        with self._lock:
            gone = [v for v in self._servables if v not in wanted]
            removed = [self._servables.pop(v) for v in gone]
            self._ended.update(gone)
            self._ended.difference_update(self._servables)
        for s in removed:
            s.close()

    def poll_forever(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.refresh()
            except Exception as exc:  # a half-written version dir: try again next poll
                print(f"tfserving: could not load a version of {self.name}: {exc}", flush=True)

    def stop(self) -> None:
        self._stop.set()

    def loaded(self) -> list[int]:
        with self._lock:
            return sorted(self._servables)

    def resolve(self, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a request: a specific version, a label, or the latest loaded."""
        with self._lock:
            if label is not None:
                if label not in self.labels:
                    raise InvalidArgument(f"Unrecognized servable version label: {label}")
                version = self.labels[label]
            if version is not None:
                if version not in self._servables:
                    raise NotFound(f"Servable not found for request: Specific({self.name}, {version})")
                return self._servables[version]
            if not self._servables:
                raise NotFound(f"Servable not found for request: Latest({self.name})")
            return self._servables[max(self._servables)]

    def status(self, version: int | None = None) -> list[dict[str, Any]]:
        """GetModelStatusWithModelSpec(): one version, or every version seen (newest first); labels play no part."""
        with self._lock:
            states = {v: "END" for v in self._ended}
            states.update({v: "AVAILABLE" for v in self._servables})
        if version is not None:
            if version not in states:
                raise NotFound(f"Could not find version {version} of model {self.name}")
            states = {version: states[version]}
        elif not states:
            raise NotFound(f"Could not find any versions of model {self.name}")
        return [{"version": str(v), "state": st, "status": {"error_code": "OK", "error_message": ""}} for v, st in sorted(states.items(), reverse=True)]

    def servables(self) -> Iterator[Servable]:
        with self._lock:
            return iter(list(self._servables.values()))
