"""``labkit bench capstone``: the null-server ceiling, each option's share of it, the client's cost.

Every option of notebook 14 (``labkit.measure.options``) is reached over HTTP by the same aiohttp
closed loop at ``capstone.FIXED_CONCURRENCY`` clients; the thin FastAPI front with no model behind
it is the ceiling no HTTP option can pass with this client on this machine. Prints one line per
option (its share of the ceiling on the CNN, and on the wide model where it serves it), the
client comparison (httpx vs aiohttp CPU per request), each real server's wide-model throughput over
the front's unbatched in-process model, and Triton's and LitServe's batching gain on the wide model
(batches of 16 over batch size 1, the same server and client; target ≥ 3×) — or a line saying why
it is missing here. Notebook 14 runs the same harness.
"""

from __future__ import annotations

from typing import Any

from labkit import bench

__all__ = ["BATCHING_TARGET", "run"]

BATCHING_TARGET = 3.0  # the wide model's throughput gain a batching server should reach over no batching
CEILING_SLACK = 1.15  # an option "beats" the ceiling only by noise: at most this share of it


def run(fast: bool) -> bench.Result:
    """Measure the ceiling, then every option that can start here (no kill: recovery is notebook 14's)."""
    from labkit import data, needs
    from labkit.measure import capstone, options, report
    from labkit.models import digit_nets
    from labkit.runtime import process
    from labkit.services import front

    duration, repeats = (2.0, 2) if fast else (5.0, 3)
    c = capstone.FIXED_CONCURRENCY
    d = data.load_digits()
    x, y = d.x_test, d.y_test
    expected = {"cnn": digit_nets.predict(digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False), x)}
    null = front.start("null")
    try:
        clients = capstone.compare_clients(null.predict_url("cnn"), {"inputs": [[0.0] * 64], "tta": 1}, c, duration)
    finally:
        null.stop()
    results = []
    for o in options.options():
        if o.needs and not needs.status(o.needs).ok:
            results.append(capstone.OptionResult(o.name, o.family, kind=o.kind, what=o.what, available=False, reason=needs.status(o.needs).reason() or "missing"))
            continue
        results.append(capstone.run_option(o.name, o.family, o.deploy, x, expected, (c,), duration, repeats, None, 8, labels=y, kind=o.kind, what=o.what, loc=options.deploy_loc(o)))
    left = [str(i) for i in process.started_here()]
    result = bench.Result("capstone")
    t = result.targets
    t.append(bench.Target(f"client CPU per request, httpx / aiohttp (null server, {c} clients)", clients["httpx"]["cpu_s_per_1k"] / clients["aiohttp"]["cpu_s_per_1k"], "×", ">=", 1.0))
    for w in capstone.WORKLOADS:
        ceiling = next((r.at(w, c)["throughput_per_s"] for r in results if r.family == "Null server" and r.at(w, c)), None)
        if ceiling:
            t.append(bench.Target(f"null-server ceiling ({w}, {c} clients)", ceiling, "req/s"))
        for name, share in report.ceiling_shares(results, w, c).items():
            t.append(bench.Target(f"{name}: share of the null-server ceiling ({w})", share, "×", "<=", CEILING_SLACK))
    base = next((r.at("wide", c)["throughput_per_s"] for r in results if r.name == "HTTP front + in-process model" and r.at("wide", c)), None)
    for r in results:
        if base and r.kind == "real" and r.at("wide", c) and r.family not in ("In-process", "Null server"):
            t.append(bench.Target(f"{r.name} wide-model throughput over the unbatched front + in-process model", r.at("wide", c)["throughput_per_s"] / base, "×"))
    for label, gain in _batching_gains(x, y, c, duration, needs).items():
        if isinstance(gain, str):
            t.append(bench.Target(f"{label} batching gain on the wide model — {gain}", float("nan"), "×"))
        else:
            t.append(bench.Target(f"{label} batching gain on the wide model (batched / batch 1, {c} clients)", gain, "×", ">=", BATCHING_TARGET))
    for r in results:
        if not r.available:
            t.append(bench.Target(f"{r.name}: not available here ({r.reason.split(' — ')[0][:80]})", float("nan")))
    t.append(bench.Target("processes left running", len(left), "", "<=", 0))
    figures: dict[str, Any] = {"clients": clients, "options": [r.to_dict() for r in results], "fixed_concurrency": c, "leftover": left}
    result.figures = figures
    return result


def _batching_gains(x: Any, y: Any, c: int, duration: float, needs: Any) -> dict[str, float | str]:
    """Triton and LitServe on the wide model: throughput batched (16) over batch size 1, same server, same client."""
    from labkit.measure import capstone
    from labkit.measure.batching import Setting

    out: dict[str, float | str] = {}
    one, batched = Setting(1), Setting(16, 2.0)
    if not needs.status("triton").ok:
        out["Triton"] = f"not available here: {needs.status('triton').reason()}"
    else:
        from labkit.services import triton

        with triton.start([one, batched]) as tr:
            tps: dict[Setting, float] = {}
            for s in (one, batched):
                d = capstone.Deployed(wide_url=tr.infer_url(triton.model_name(s)), codec="triton", stop=lambda: None)
                capstone.load_target(d, x, 4, n_requests=16, duration_s=60.0, workload="wide")
                tps[s] = capstone.load_target(d, x, c, duration_s=duration, workload="wide").throughput_per_s
        out["Triton"] = tps[batched] / max(tps[one], 1e-9)
    if not needs.status("litserve").ok:
        out["LitServe"] = f"not available here: {needs.status('litserve').reason()}"
    else:
        from labkit.services import litserve

        sizes: dict[int, float] = {}
        for s in (one, Setting(16, 5.0)):
            with litserve.start(s) as srv:
                d = capstone.Deployed(wide_url=srv.predict_url, codec="litserve", stop=lambda: None)
                capstone.load_target(d, x, 4, n_requests=16, duration_s=60.0, workload="wide")
                sizes[s.max_batch_size] = capstone.load_target(d, x, c, duration_s=duration, workload="wide").throughput_per_s
        out["LitServe"] = sizes[16] / max(sizes[1], 1e-9)
    return out
