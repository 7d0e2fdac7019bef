"""The FastAPI gateway in front of the Celery workers: the code that runs inside the uvicorn process.

Routes (``create_app()`` builds them; ``labkit.services.gateway.start`` runs
``uvicorn --factory labkit.apps.gateway:create_app``):

    POST /predict           publishes in a thread pool and awaits the result (redis.asyncio
                            pub/sub on the result key): the event loop never waits on I/O; a
                            task not heard back from in time is resubmitted under the same key
    POST /predict_blocking  the seed's version: ``.get()`` inside ``async def`` — blocks the loop
    POST /noop              answers at once without touching the broker: the HTTP ceiling
    GET  /metrics           event-loop lag (a sleep-drift probe every 5 ms; p99 wall lag and
                            the part the loop held, without waiting for a CPU), garbage-
                            collector pauses per generation, the
                            at-least-once counts and how results arrived (``?reset=1``
                            starts a new lag window)
    GET  /healthz           the process answers (liveness)
    GET  /readyz            the broker and the result backend answer (readiness)

Bad input gets a 422 naming the field, a body over ``MAX_BODY_BYTES`` a 413, a result later
than ``timeout_s`` a 504 (``timeout_s`` defaults to 30 s: longer than a resubmission, so a task
the broker lost still gets its answer). Used in 06 and ``labkit bench gateway``; its ``predict-route`` region
is Shown in 06 §4.
"""

# no `from __future__ import annotations`: FastAPI reads the route annotations of locally defined models

import asyncio
import time
from collections import deque
from typing import Any

from labkit.apps.body_limit import BodyLimit  # re-exported: the gateway's 413 comes from there

__all__ = ["LAG_PERIOD_S", "MAX_BODY_BYTES", "MAX_IMAGES", "BodyLimit", "GcPauses", "LoopLag", "create_app"]

LAG_PERIOD_S = 0.005  # the loop-lag probe sleeps this long, over and over, and records the overshoot
PUBLISH_THREADS = 8

MAX_BODY_BYTES = 256 * 1024  # a request larger than this gets 413 (≈ 400 images as JSON)
MAX_IMAGES = 256
DEFAULT_TIMEOUT_S = 30.0  # > celery_client.resubmit_after_s (11.5 s on Redis): a lost task is resent in time
MAX_TIMEOUT_S = 60.0
class LoopLag:
    """A sleep-drift probe: ``await asyncio.sleep(period)`` in a loop; how late it wakes is the loop's lag.

    Anything that holds the event loop (a synchronous broker call, a long parse) shows up here as
    lag for every request waiting on that loop. So does the OS: on shared cores the loop's thread
    may be runnable but waiting for a CPU. Linux counts that wait per thread
    (``/proc/self/task/<tid>/schedstat``, second field), so each sample is split in two:
    ``held`` (wall lag minus the run-queue wait in that window — what the loop's own work cost)
    and the run-queue wait. Where schedstat is missing, held = wall.
    """

    def __init__(self, period_s: float = LAG_PERIOD_S, keep: int = 50_000) -> None:
        self.period_s = period_s
        self.samples: deque[float] = deque(maxlen=keep)
        self.held: deque[float] = deque(maxlen=keep)
        self.waited: deque[float] = deque(maxlen=keep)

    @staticmethod
    def _wait_reader() -> Any:
        """A function returning this thread's run-queue wait so far (s), or None without schedstat."""
        import os
        import threading

        try:
            fd = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            return None

        def read() -> float:
            return int(os.pread(fd, 128, 0).split()[1]) / 1e9

        read.close = lambda: os.close(fd)  # type: ignore[attr-defined]  # run() closes it when it ends
        try:
            read()
        except (OSError, ValueError, IndexError):
            os.close(fd)
            return None
        return read

    async def run(self) -> None:
        wait_s = self._wait_reader()
        try:
            while True:
                w0 = wait_s() if wait_s else 0.0
                t0 = time.perf_counter()
                await asyncio.sleep(self.period_s)
                lag = max(0.0, time.perf_counter() - t0 - self.period_s)
                waited = (wait_s() - w0) if wait_s else 0.0
                self.record(lag, waited)
        finally:  # cancelled with the app: the schedstat file is closed with it
            if wait_s is not None:
                wait_s.close()

    def record(self, lag_s: float, waited_s: float = 0.0) -> None:
        """One sample: ``lag_s`` late, of which ``waited_s`` on the run queue (waiting for a CPU)."""
        waited_s = min(max(waited_s, 0.0), lag_s)
        self.samples.append(lag_s)
        self.held.append(lag_s - waited_s)
        self.waited.append(waited_s)

    def summary(self, reset: bool = False) -> dict[str, float]:
        xs, hs, ws = sorted(self.samples), sorted(self.held), list(self.waited)
        if reset:
            self.samples.clear()
            self.held.clear()
            self.waited.clear()
        if not xs:
            return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "held_p99_ms": 0.0, "held_max_ms": 0.0, "runqueue_share": 0.0}

        def pick(v: list[float], q: float) -> float:
            return round(v[min(len(v) - 1, int(q * len(v)))] * 1e3, 3)

        total = sum(xs)
        return {
            "n": len(xs), "p50_ms": pick(xs, 0.5), "p99_ms": pick(xs, 0.99), "max_ms": round(xs[-1] * 1e3, 3),
            "held_p99_ms": pick(hs, 0.99), "held_max_ms": round(hs[-1] * 1e3, 3),
            "runqueue_share": round(sum(ws) / total, 3) if total > 0 else 0.0,
        }  # fmt: skip


class GcPauses:
    """How long the garbage collector stopped this process, per generation (``gc.callbacks``).

    A full (generation 2) collection walks every tracked object and holds the loop meanwhile;
    the gateway freezes its start-up objects (``gc.freeze()``) so those walks stay short.
    """

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses[int(info["generation"])].append(time.perf_counter() - self._t0)

    def summary(self, reset: bool = False) -> dict[str, Any]:
        out = {f"gen{g}": {"n": len(v), "max_ms": round(max(v, default=0.0) * 1e3, 3), "total_ms": round(sum(v) * 1e3, 1)} for g, v in self.pauses.items()}
        if reset:
            for v in self.pauses.values():
                v.clear()
        return out


def _error_text(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def create_app() -> Any:
    """Build the FastAPI app (uvicorn's factory). Broker and backend come from CELERY_* env vars."""
    from typing import Annotated, Literal

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    from labkit.apps import celery_tasks as tasks

    Pixel = Annotated[float, Field(ge=0.0, le=1.0)]
    Image = Annotated[list[Pixel], Field(min_length=64, max_length=64, description="an 8×8 image, row by row, pixels in [0, 1]")]

    class PredictRequest(BaseModel):
        """What a client sends: images and which model (or the ensemble) should answer."""

        model_config = ConfigDict(extra="forbid", strict=True)  # "1" or true is not a pixel
        images: Annotated[list[Image], Field(min_length=1, max_length=MAX_IMAGES)]
        model: Literal["cnn", "mlp", "ensemble"] = "cnn"
        timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S
        trace: bool = False  # log each run of the task (labkit bench faults counts them)

    from concurrent.futures import ThreadPoolExecutor
    from contextlib import asynccontextmanager

    from celery.result import AsyncResult

    from labkit.apps import celery_client

    broker_url = str(tasks.app.conf.broker_url)
    ledger = celery_client.Ledger(celery_client.resubmit_after_s(broker_url))
    backend_url = str(tasks.app.conf.result_backend or "")
    pool = ThreadPoolExecutor(PUBLISH_THREADS, thread_name_prefix="gateway-io")
    lag = LoopLag()
    gc_pauses = GcPauses()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        import gc

        gc.collect()
        gc.freeze()  # start-up objects (Celery, kombu, pydantic, torch…) leave the collector's walks
        gc.callbacks.append(gc_pauses)
        state["probe"] = asyncio.create_task(lag.run())
        if backend_url.startswith("redis"):
            state["results"] = celery_client.RedisResults(backend_url, ledger)
            await state["results"].start()
        if broker_url.startswith("redis"):
            state["publisher"] = celery_client.RedisPublisher(broker_url)
        yield
        gc.callbacks.remove(gc_pauses)
        state["probe"].cancel()
        for name in ("results", "publisher"):
            if name in state:
                await state[name].close()
        pool.shutdown(wait=False, cancel_futures=True)

    api = FastAPI(title="labkit digits gateway", lifespan=lifespan)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": _error_text(errors), "errors": errors})

    def submit(req: PredictRequest, key: str | None = None, attempt: int = 1) -> Any:
        options: dict[str, Any] = {"task_id": key, "headers": tasks.attempt_headers(attempt, req.trace)} if key else {}
        if req.model == "ensemble":
            return tasks.ensemble(req.images).apply_async(**options)
        task = tasks.model_1 if req.model == "cnn" else tasks.model_2
        return task.apply_async((req.images,), **options)

    def answer(req: PredictRequest, value: dict[str, Any], t0: float, key: str | None = None) -> dict[str, Any]:
        out = {"model": req.model, "pred": value["pred"], "latency_ms": round((time.perf_counter() - t0) * 1e3, 3)}
        if value.get("worker"):  # the Celery worker (nodename) that ran the task
            out["worker"] = value["worker"]
        return out | {"task_id": key} if key else out

    def poll_backend(key: str, wait_s: float) -> dict[str, Any] | None:  # in the pool: rpc/other backends
        end = time.monotonic() + wait_s
        r = AsyncResult(key, app=tasks.app)
        while not r.ready():
            if time.monotonic() >= end:
                return None
            time.sleep(0.005)
        return {"status": r.state, "result": r.result}

    # region: predict-route
    @api.post("/predict")
    async def predict(req: PredictRequest) -> Any:
        """Publish (asyncio LPUSH, or a thread for AMQP), await the result key (pub/sub): the loop never waits."""
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        key = celery_client.new_key()  # the idempotency key: every attempt carries it as its task id
        results = state.get("results")

        publisher = state.get("publisher")

        async def publish(k: str, attempt: int) -> None:
            if publisher is not None and req.model != "ensemble":  # one LPUSH, on the loop, no thread
                task = tasks.model_1 if req.model == "cnn" else tasks.model_2
                headers = tasks.attempt_headers(attempt, req.trace)
                await publisher.publish(task.name, [req.images], {}, k, tasks.queue_of(task.name), headers)
            else:  # AMQP, or a chord: Celery's own publish, in a thread
                await loop.run_in_executor(pool, submit, req, k, attempt)

        async def fetch(k: str, wait_s: float) -> Any:
            if results is not None:
                return await results.fetch(k, wait_s)
            return await loop.run_in_executor(pool, poll_backend, k, wait_s)

        if results is not None:
            results.register(key)  # listen before sending: no result can slip past
        try:
            meta = await celery_client.wait_async(key, publish, fetch, ledger, req.timeout_s)
        except TimeoutError:
            return JSONResponse(status_code=504, content={"detail": f"no result within {req.timeout_s} s (task {key})"})
        finally:
            if results is not None:
                results.release(key)
        if meta["status"] != "SUCCESS":
            return JSONResponse(status_code=502, content={"detail": f"the worker failed: {meta.get('result')!r}"})
        return answer(req, meta["result"], t0, key)

    @api.post("/predict_blocking")
    async def predict_blocking(req: PredictRequest) -> Any:
        """The seed's version: ``.get()`` blocks the event loop, so requests are served one at a time."""
        t0 = time.perf_counter()
        value = submit(req).get(timeout=req.timeout_s)  # blocks every other request meanwhile
        return answer(req, value, t0)

    # endregion

    @api.post("/noop")
    async def noop() -> dict[str, Any]:
        """The HTTP ceiling: the same server and middleware, no broker, no parsing."""
        return {"ok": True}

    @api.get("/metrics")
    async def metrics(reset: bool = False) -> dict[str, Any]:
        results = state.get("results")
        out = {"loop_lag": lag.summary(reset), "gc_pauses": gc_pauses.summary(reset), "at_least_once": ledger.counts(), "resubmit_after_s": ledger.deadline_s}
        return out | ({"results": results.counts()} if results is not None else {})

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @api.get("/readyz")
    async def readyz() -> Any:
        def check() -> None:
            with tasks.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            client = getattr(tasks.app.backend, "client", None)
            if client is not None:
                client.ping()

        try:
            await asyncio.to_thread(check)
        except Exception as exc:  # the broker or backend is down: not ready
            return JSONResponse(status_code=503, content={"ready": False, "detail": f"{type(exc).__name__}: {exc}"})
        return {"ready": True}

    return BodyLimit(api, MAX_BODY_BYTES)
