"""A round-robin HTTP load balancer in front of the ready replicas, as an ASGI app. Two modes:

- ``kube-proxy`` (LABKIT_LB_MODE, the default): what a Kubernetes Service does. Each request goes
  to the next ready endpoint (IPVS round-robin; iptables/nftables pick at random) and stays there:
  if that replica died or is stopping, the request fails (502) — kube-proxy forwards connections,
  it does not retry them. Endpoints change only when the controller pushes a new list (the
  endpoints controller after a readiness or liveness change).
- ``retrying``: what a client or an ingress/service mesh may add on top (a retry policy is their
  choice, not the Service's): a failed connection or a 503 is retried on another endpoint, up to
  LABKIT_LB_RETRIES times, and an endpoint whose connection failed is skipped for a second.

A request that fails is answered 502/503/504 and counted as an error; nothing is dropped silently:
``GET /_lb/stats`` counts requests, retries and errors, and every answer carries ``x-labkit-retries``.

    PUT /_lb/endpoints  {"endpoints": ["http://127.0.0.1:8001", ...]}   the ready replicas
    GET /_lb/stats      {"requests", "ok", "retries", "errors", "inflight": {url: n}, "served": {url: n}}
    GET /healthz

Run: ``uvicorn labkit.apps.balancer:app --port 8080``; labkit.kube.emulator starts it. Used in 08.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

__all__ = ["MAX_BODY_BYTES", "MODES", "Balancer", "app"]

RETRIES = 2  # in the retrying mode
MODES = ("kube-proxy", "retrying")
TIMEOUT_S = 30.0
MAX_BODY_BYTES = 16 * 2**20  # a larger body gets 413 here, before it is buffered and forwarded
SUSPECT_S = 1.0  # an endpoint whose connection failed is skipped this long (until the next update)


class Balancer:
    """The ASGI app: endpoints set by the controller, round-robin, retries, counters."""

    def __init__(self, mode: str = "kube-proxy", retries: int = RETRIES, timeout_s: float = TIMEOUT_S) -> None:
        if mode not in MODES:
            raise ValueError(f"LABKIT_LB_MODE must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.retries = retries if mode == "retrying" else 0
        self.timeout_s = timeout_s
        self.endpoints: list[str] = []
        self.suspect: dict[str, float] = {}
        self.inflight: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self.counts = {"requests": 0, "ok": 0, "retries": 0, "errors": 0}
        self._rr = itertools.count()
        self._client: Any = None

    def _pick(self, tried: set[str]) -> str | None:
        now = time.monotonic()
        live = [e for e in self.endpoints if e not in tried and (self.mode == "kube-proxy" or self.suspect.get(e, 0.0) < now)]
        if not live:
            live = [e for e in self.endpoints if e not in tried]
        if not live:
            return None
        return live[next(self._rr) % len(live)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            piece = msg.get("body", b"")
            size += len(piece)
            if size <= MAX_BODY_BYTES:
                chunks.append(piece)
            if not msg.get("more_body"):
                break
        if size > MAX_BODY_BYTES:
            await _reply(send, 413, {"error": f"request body is {size} bytes; the limit is {MAX_BODY_BYTES} bytes"})
            return
        body = b"".join(chunks)
        path = scope["path"]
        if path == "/healthz":
            await _reply(send, 200, {"status": "ok"})
        elif path == "/_lb/stats":
            await _reply(send, 200, {**self.counts, "mode": self.mode, "endpoints": self.endpoints, "inflight": self.inflight, "served": self.served})
        elif path == "/_lb/endpoints" and scope["method"] == "PUT":
            try:
                endpoints = json.loads(body)["endpoints"]
                if not isinstance(endpoints, list) or not all(isinstance(e, str) and e.startswith("http") for e in endpoints):
                    raise ValueError("endpoints must be a list of http(s) URLs")
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                await _reply(send, 400, {"error": f'PUT /_lb/endpoints wants {{"endpoints": ["http://..."]}}: {type(exc).__name__}: {exc}'})
                return
            self.endpoints = list(endpoints)
            self.suspect = {e: t for e, t in self.suspect.items() if e in self.endpoints}
            await _reply(send, 200, {"endpoints": self.endpoints})
        else:
            await self._forward(scope, body, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        import httpx

        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
                self._client = httpx.AsyncClient(timeout=self.timeout_s, limits=limits)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        import httpx

        self.counts["requests"] += 1
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.lower() not in (b"host", b"content-length", b"connection")]
        query = scope.get("query_string", b"").decode()
        tried: set[str] = set()
        status, detail = 503, "no ready replicas"
        for attempt in range(self.retries + 1):
            endpoint = self._pick(tried)
            if endpoint is None:
                break
            tried.add(endpoint)
            if attempt:
                self.counts["retries"] += 1
            self.inflight[endpoint] = self.inflight.get(endpoint, 0) + 1
            try:
                url = endpoint + scope["path"] + (f"?{query}" if query else "")
                resp = await self._client.request(scope["method"], url, content=body, headers=headers)
            except httpx.TimeoutException as exc:
                status, detail = 504, f"replica {endpoint} timed out: {type(exc).__name__}"
                break  # the work may be running: do not run it twice
            except httpx.TransportError as exc:
                self.suspect[endpoint] = time.monotonic() + SUSPECT_S
                status, detail = 502, f"replica {endpoint} failed: {type(exc).__name__}: {exc}"
                continue
            finally:
                self.inflight[endpoint] -= 1
            if resp.status_code == 503 and attempt < self.retries:
                status, detail = 503, f"replica {endpoint} not ready"
                continue
            self.served[endpoint] = self.served.get(endpoint, 0) + 1
            if resp.status_code < 400:
                self.counts["ok"] += 1
            out_headers = [(b"content-type", resp.headers.get("content-type", "application/json").encode()), (b"x-labkit-retries", str(attempt).encode()), (b"x-labkit-replica", endpoint.encode())]
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out_headers})
            await send({"type": "http.response.body", "body": resp.content})
            return
        self.counts["errors"] += 1
        await _reply(send, status, {"error": detail, "tried": sorted(tried)}, retries=max(len(tried) - 1, 0))


async def _reply(send: Any, status: int, payload: dict[str, Any], retries: int = 0) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"x-labkit-retries", str(retries).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def __getattr__(name: str) -> Any:  # ``uvicorn labkit.apps.balancer:app``
    if name == "app":
        from labkit import config

        return Balancer(mode=config.balancer_mode("kube-proxy"), retries=config.balancer_retries(RETRIES))
    raise AttributeError(name)
