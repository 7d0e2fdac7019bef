"""deploy/: the Dockerfile's essentials, the manifests against the Kubernetes schemas, the overlays,
and the model server the container runs (in process)."""

from __future__ import annotations

import copy
import shlex
import shutil
from pathlib import Path

import pytest

from labkit.errors import BadInput
from labkit.kube import hpa, kubectl

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "k8s"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


@pytest.mark.parametrize("start", ["notebooks", "student-edition", ".cache/student-edition", ".cache/paired-edition", "deploy/k8s/base", "."])
def test_deploy_dir_from_any_depth(start: str) -> None:
    """08 finds deploy/ from its own folder at any depth (make test runs .cache/paired-edition)."""
    assert kubectl.deploy_dir(DEPLOY.parent / start) == DEPLOY


def test_deploy_dir_outside_the_repository(tmp_path: Path) -> None:
    """Outside any checkout: the deploy/ beside the labkit package (the repository it came from)."""
    assert kubectl.deploy_dir(tmp_path) == DEPLOY


@pytest.fixture(scope="module")
def dockerfile():
    return dockerfile_instructions(DEPLOY / "Dockerfile")


def test_dockerfile_essentials(dockerfile):
    kinds = [k for k, _ in dockerfile]
    known = {"FROM", "ARG", "ENV", "WORKDIR", "RUN", "COPY", "USER", "EXPOSE", "HEALTHCHECK", "CMD", "LABEL"}
    assert set(kinds) <= known, f"unexpected instructions {set(kinds) - known}"
    assert kinds[0] in ("FROM", "ARG") and "FROM" in kinds
    base = dict(dockerfile)["FROM"]
    assert base.startswith("python:3.") and "slim" in base
    runs = " ".join(a for k, a in dockerfile if k == "RUN")
    assert "download.pytorch.org/whl/cpu" in runs, "torch must come from the CPU wheel index"
    assert "export_model" in runs, "the trained weights are baked into the image"
    users = [a for k, a in dockerfile if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the server must not run as root"
    assert kinds.index("USER") < kinds.index("CMD")
    health = dict(dockerfile)["HEALTHCHECK"]
    assert "/healthz" in health and "CMD" in health
    assert dict(dockerfile)["EXPOSE"] == "8000"
    cmd = dict(dockerfile)["CMD"]
    assert "labkit.apps.model_server:app" in cmd and "uvicorn" in cmd and "8000" in cmd
    env = " ".join(a for k, a in dockerfile if k == "ENV")
    assert "OMP_NUM_THREADS=1" in env and "LABKIT_MODEL_PATH=" in env


def test_dockerfile_agrees_with_the_deployment(dockerfile):
    dep = next(d for d in kubectl.load_manifests(K8S / "base") if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    uid = dict(dockerfile)["USER"].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == uid
    assert container["ports"][0]["containerPort"] == int(dict(dockerfile)["EXPOSE"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"], "the HPA needs a CPU request"
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert shlex.split(dict(dockerfile)["HEALTHCHECK"])[0].startswith("--interval")


@pytest.mark.parametrize("path", ["base", "seed", "custom-metric"])
def test_manifests_validate_strictly(path):
    docs = kubectl.load_manifests(K8S / path)
    assert docs
    lines = kubectl.validate(docs, kubectl.KUBERNETES_VERSION, strict=True)
    assert all("valid for Kubernetes" in line for line in lines)


def test_strict_validation_catches_a_typo():
    hpa_doc = kubectl.load_manifests(K8S / "base" / "hpa.yaml")[0]
    bad = copy.deepcopy(hpa_doc)
    bad["spec"]["behavior"]["scaleDown"]["stabilisationWindowSeconds"] = 60  # British spelling: not in the API
    with pytest.raises(BadInput, match="invalid"):
        kubectl.validate([bad], strict=True)
    bad = copy.deepcopy(hpa_doc)
    bad["spec"]["maxReplicas"] = "ten"
    with pytest.raises(BadInput):
        kubectl.validate([bad], strict=True)


def test_seed_v1_and_v2_hpa_are_equivalent():
    (v1,) = kubectl.load_manifests(K8S / "seed" / "hpa-v1.yaml")
    (v2,) = kubectl.load_manifests(K8S / "base" / "hpa.yaml")
    assert v1["apiVersion"] == "autoscaling/v1" and v2["apiVersion"] == "autoscaling/v2"
    assert v1["spec"]["scaleTargetRef"] == v2["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model-deployment"}
    h1, h2 = hpa.from_manifest(v1), hpa.from_manifest(v2)
    assert (h1.min_replicas, h1.max_replicas, h1.metrics) == (h2.min_replicas, h2.max_replicas, h2.metrics)
    assert h1.metrics == [hpa.MetricSpec("Resource", "cpu", "Utilization", 50)]
    assert h1.behavior is None and h2.behavior is not None


def test_custom_metric_hpa_scales_on_inflight_requests_per_replica():
    """The Pods-metric HPA: the metric the model server exposes, the same target and behavior as 08 emulates."""
    from labkit.kube.autoscaler import INFLIGHT_METRIC

    (doc,) = kubectl.load_manifests(K8S / "custom-metric" / "hpa-inflight.yaml")
    (cpu,) = kubectl.load_manifests(K8S / "base" / "hpa.yaml")
    h = hpa.from_manifest(doc)
    assert [(m.type, m.name, m.target_type, m.target) for m in h.metrics] == [("Pods", INFLIGHT_METRIC, "AverageValue", 1000)]
    assert doc["spec"]["scaleTargetRef"] == cpu["spec"]["scaleTargetRef"] and doc["spec"]["behavior"] == cpu["spec"]["behavior"]
    import yaml

    rule = yaml.safe_load((K8S / "custom-metric" / "prometheus-adapter-rule.yaml").read_text())["rules"][0]
    assert rule["name"]["as"] == INFLIGHT_METRIC and INFLIGHT_METRIC in rule["seriesQuery"]
    assert kubectl.load_manifests(K8S / "custom-metric" / "prometheus-adapter-rule.yaml") == []  # not an API object


def test_model_server_metrics_count_inflight_requests():
    """GET /metrics: the gauge and counters the in-flight HPA reads, parsed as the autoscaler parses them."""
    import asyncio

    from labkit.apps import model_server

    counter = model_server.InflightCounter(None)
    counter._advance(+2)  # two requests arrive
    text = counter.prometheus()
    assert "labkit_inflight_requests 2" in text and "labkit_inflight_seconds_total" in text
    sent: list[dict] = []

    async def send(msg: dict) -> None:
        sent.append(msg)

    asyncio.run(counter({"type": "http", "path": "/metrics"}, None, send))
    assert sent[0]["status"] == 200 and b"labkit_requests_total 0" in sent[1]["body"]


def test_where_it_runs_with_an_unreachable_kubeconfig(tmp_path, monkeypatch):
    """Issue 19: KUBECONFIG naming a cluster nobody listens on -> one line, and the emulation runs."""
    from labkit.runtime import process

    port = process.free_port()  # free: nothing listens there
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:%d\n"
        "contexts:\n- name: gone\n  context:\n    cluster: gone\n    user: nobody\ncurrent-context: gone\nusers:\n- name: nobody\n  user: {}\n" % port
    )
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    line = kubectl.where_it_runs()
    assert "\n" not in line and line.endswith("running the emulation"), line
    if shutil.which("kubectl"):
        assert "not reachable" in line
    notebook = (DEPLOY.parent / "notebooks" / "08_kubernetes_hpa.ipynb").read_text()
    assert "kubectl.where_it_runs()" in notebook


@pytest.mark.parametrize("overlay", ["digit-cnn", "digit-mlp", "all-models", "custom-metric"])
def test_kustomize_overlays_render_and_validate(overlay):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH: kustomize overlays not rendered (optional)")
    docs = kubectl.kustomize(K8S / ("custom-metric" if overlay == "custom-metric" else f"overlays/{overlay}"))
    kubectl.validate(docs, strict=True)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert len(deployments) == len(hpas) == (2 if overlay == "all-models" else 1)
    if overlay == "custom-metric":
        assert hpas[0]["spec"]["metrics"][0]["type"] == "Pods"
        return
    names = {d["metadata"]["name"] for d in deployments}
    for h in hpas:  # kustomize renamed the target along with the Deployment
        assert h["spec"]["scaleTargetRef"]["name"] in names
    for d in deployments:  # each model's pods are selected apart from the others
        model = d["metadata"]["labels"]["labkit.dev/model"]
        assert d["spec"]["selector"]["matchLabels"]["labkit.dev/model"] == model
        assert d["spec"]["template"]["spec"]["containers"][0]["image"].startswith(f"labkit-model-{model}:")


def test_model_server_endpoints_in_process():
    import asyncio

    import httpx

    from labkit import data
    from labkit.apps import model_server
    from labkit.models import digit_nets

    digits = data.load_digits()
    x = digits.x_test[:16]
    expected = digit_nets.predict(digit_nets.trained(digit_nets.TrainConfig(), progress=False), x).tolist()

    async def main() -> None:
        app = model_server.create_app()
        api = app.app.app  # InflightCounter(BodyLimit(FastAPI))
        async with api.router.lifespan_context(api):  # loads the model, as uvicorn's startup does
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
                assert (await client.get("/healthz")).json()["status"] == "ok"
                assert (await client.get("/readyz")).status_code == 200
                got = await client.post("/predict", json={"inputs": x.reshape(16, 64).tolist()})
                assert got.status_code == 200 and got.json()["predictions"] == expected
                tta = (await client.post("/predict", json={"inputs": x.tolist(), "tta": 9})).json()["predictions"]
                assert len(tta) == 16 and sum(a == b for a, b in zip(tta, expected)) >= 12
                assert (await client.post("/predict", json={"inputs": [[0.5] * 63]})).status_code == 422
                assert (await client.post("/predict", json={"inputs": x.tolist(), "tta": 0})).status_code == 422

    asyncio.run(main())
