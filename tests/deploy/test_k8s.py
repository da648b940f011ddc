"""deploy/k8s/, checked offline: each object against Kubernetes' own schema (kubernetes-validate), and its
ports, paths, variables, user and timings against the server and the CUDA image they run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from diptych.server.metrics import _EngineCollector
from diptych.settings import Settings
from tests.deploy.test_docker import DOCKERFILES, dockerfile_env
from tests.engine.test_orchestrator import StubFlow, orchestrator

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES = "1.31.0"  # the oldest release the manifests are written for (autoscaling/v2, policy/v1)


def _objects() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = {}
    for name in kustomization["resources"]:
        (obj,) = yaml.safe_load_all((K8S / name).read_text())
        objects[obj["kind"]] = obj
    return objects


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    return _objects()


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_the_kustomization_lists_every_manifest(objects: dict[str, dict[str, Any]]) -> None:
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == {
        p for p in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]}
    assert set(objects) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def test_every_object_is_valid_against_the_kubernetes_schema(objects: dict[str, dict[str, Any]]) -> None:
    import kubernetes_validate

    for obj in objects.values():
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    # The check is real: a misspelt field fails it.
    broken = {**objects["Service"], "spec": {**objects["Service"]["spec"], "selectr": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_variables_are_settings_and_their_values_parse(objects: dict[str, dict[str, Any]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(_container(objects))
    known = {f"DIPTYCH_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, sorted(set(env) - known)
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = Settings()  # raises on a value the server would refuse
    assert (settings.host, settings.device) == ("0.0.0.0", "cuda")


def test_ports_probes_and_service_meet(objects: dict[str, dict[str, Any]]) -> None:
    container = _container(objects)
    (port,) = container["ports"]
    assert port["containerPort"] == int(_env(container)["DIPTYCH_PORT"] or 0)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port["name"]}
    # A liveness restart must not cut short a drain or an engine's rebuild.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 120
    (service_port,) = objects["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(port["containerPort"]), "/metrics")


def test_selectors_match_the_pods(objects: dict[str, dict[str, Any]]) -> None:
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    assert objects["Service"]["spec"]["selector"] == labels
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", objects["Deployment"]["metadata"]["name"])


def test_termination_waits_longer_than_the_drain(objects: dict[str, dict[str, Any]]) -> None:
    env = _env(_container(objects))
    drain = float(env.get("DIPTYCH_SHUTDOWN_TIMEOUT_S") or Settings.model_fields["shutdown_timeout_s"].default)
    assert objects["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_the_pod_runs_as_the_cuda_images_user_with_its_cache(objects: dict[str, dict[str, Any]]) -> None:
    text = DOCKERFILES["cuda"].read_text()
    (uid,) = re.findall(r"^USER (\d+)", text, re.M)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    mounts = {m["name"]: m["mountPath"] for m in _container(objects)["volumeMounts"]}
    assert mounts["cache"] == dockerfile_env(DOCKERFILES["cuda"])["DIPTYCH_CACHE_DIR"]
    assert mounts["shm"] == "/dev/shm"
    assert _env(_container(objects))["DIPTYCH_MODEL"].startswith(mounts["models"] + "/")  # type: ignore[union-attr]
    resources = _container(objects)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"


def test_the_autoscaler_reads_metrics_the_server_exports(objects: dict[str, dict[str, Any]]) -> None:
    exported: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in _EngineCollector(orchestrator(StubFlow()).stats).collect():
        for sample in family.samples:
            exported.setdefault(sample.name, set()).add(tuple(sorted(sample.labels.items())))
    for metric in objects["HorizontalPodAutoscaler"]["spec"]["metrics"]:
        wanted = metric["pods"]["metric"]
        labels = tuple(sorted(wanted["selector"]["matchLabels"].items()))
        assert labels in exported[wanted["name"]], (wanted, exported.get(wanted["name"]))
