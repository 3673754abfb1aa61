"""deploy/k8s rendered by `kubectl kustomize`, validated offline against the Kubernetes
API schemas (kubernetes-validate, strict) and the checkov policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO, checkov, kustomize, served_default

# The oldest Kubernetes still supported upstream when this was written, and the newest
# schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.31", "latest")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kustomize("deploy/k8s", tmp_path_factory.mktemp("k8s"))


@pytest.fixture(scope="module")
def resources(rendered: Path) -> dict[tuple[str, str], Any]:
    """(kind, name) -> resource; generated ConfigMaps by their name without the hash suffix."""
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    out = {}
    for doc in docs:
        name = doc["metadata"]["name"]
        out[(doc["kind"], name.rsplit("-", 1)[0] if doc["kind"] == "ConfigMap" else name)] = doc
    return out


def test_every_built_in_resource_matches_the_api_schema(resources: dict[tuple[str, str], Any]) -> None:
    import kubernetes_validate

    versions = [kubernetes_validate.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    checked = 0
    for (kind, name), doc in resources.items():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked below
        for version in versions:
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
        assert doc["metadata"].get("namespace") == "confidence" or kind == "Namespace", (kind, name)
    assert checked >= 15


def test_checkov_policies_pass(rendered: Path) -> None:
    result = checkov(rendered, "kubernetes")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def container(resources: dict[tuple[str, str], Any], deployment: str) -> Any:
    return resources[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"][0]


def test_service_deployment_gpu_probes_and_drain(resources: dict[tuple[str, str], Any]) -> None:
    pod = resources[("Deployment", "confidence-service")]["spec"]["template"]["spec"]
    main = container(resources, "confidence-service")
    assert (
        main["resources"]["requests"]["nvidia.com/gpu"]
        == main["resources"]["limits"]["nvidia.com/gpu"]
        == "1"
    )
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    config = resources[("ConfigMap", "confidence-service-config")]["data"]
    drain = float(config["CONFIDENCE_DRAIN_TIMEOUT_S"])
    pre_stop = int(main["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    assert int(config["CONFIDENCE_TENSOR_PARALLEL_SIZE"]) == int(
        main["resources"]["limits"]["nvidia.com/gpu"]
    )
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"]}
    assert set(secrets) == {"CONFIDENCE_FEEDBACK_DB_URL", "CONFIDENCE_ADMIN_TOKEN"}
    assert secrets["CONFIDENCE_ADMIN_TOKEN"]["optional"] is True


def test_every_replica_reads_one_shared_adapter_root(resources: dict[tuple[str, str], Any]) -> None:
    pvc = resources[("PersistentVolumeClaim", "confidence-adapters")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = resources[("Deployment", "confidence-service")]["spec"]["template"]["spec"]
    volume = next(
        v
        for v in pod["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == "confidence-adapters"
    )
    mount = next(
        m for m in container(resources, "confidence-service")["volumeMounts"] if m["name"] == volume["name"]
    )
    assert mount["mountPath"] == "/var/lib/confidence/adapters" and mount["readOnly"] is True


def test_pdb_hpa_and_scrape_target_select_the_service(resources: dict[tuple[str, str], Any]) -> None:
    labels = resources[("Deployment", "confidence-service")]["spec"]["template"]["metadata"]["labels"]
    pdb = resources[("PodDisruptionBudget", "confidence-service")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = resources[("HorizontalPodAutoscaler", "confidence-service")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "confidence-service"
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "confidence_inflight_sequences"
    assert hpa["minReplicas"] >= 2
    monitor = resources[("ServiceMonitor", "confidence-service")]
    service = resources[("Service", "confidence-service")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"] and "metrics" in port_names
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_monitoring_reaches_only_the_metrics_port(resources: dict[tuple[str, str], Any]) -> None:
    config = resources[("ConfigMap", "confidence-service-config")]["data"]
    metrics_port = int(config["CONFIDENCE_METRICS_PORT"])
    rules = resources[("NetworkPolicy", "confidence-service")]["spec"]["ingress"]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    for rule in rules:
        if monitoring in rule["from"]:
            assert [p["port"] for p in rule["ports"]] == [metrics_port]
        else:
            assert metrics_port not in [p["port"] for p in rule["ports"]]
    assert any(monitoring in rule["from"] for rule in rules)


def test_outside_traffic_reaches_only_the_gateway(resources: dict[tuple[str, str], Any]) -> None:
    ingress = resources[("Ingress", "confidence")]
    backends = {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {"confidence-gateway"}
    policy = resources[("NetworkPolicy", "confidence-service")]["spec"]
    sources = policy["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "confidence-gateway"}}} in sources
    assert resources[("Service", "confidence-service")]["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_gateway_uses_the_tested_nginx_config(resources: dict[tuple[str, str], Any]) -> None:
    data = resources[("ConfigMap", "confidence-gateway-config")]["data"]
    assert data["confidence.conf"] == (REPO / "deploy/gateway/confidence.conf").read_text()
    assert "server confidence-service:8000" in data["upstream.conf"]
    mounts = {m["mountPath"]: m for m in container(resources, "confidence-gateway")["volumeMounts"]}
    assert mounts["/etc/nginx/conf.d/default.conf"]["subPath"] == "confidence.conf"
    assert mounts["/etc/nginx/confidence/api-keys.map"]["name"] == "api-keys"


def test_nightly_recalibration_writes_candidates_and_never_promotes(
    resources: dict[tuple[str, str], Any],
) -> None:
    cron = resources[("CronJob", "confidence-recalibrate")]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    job = pod["containers"][0]
    assert job["command"][:2] == ["confidence", "recalibrate"] and "--promote" not in job["command"]
    volume = next(v for v in pod["volumes"] if v["name"] == "adapters")
    assert volume["persistentVolumeClaim"]["claimName"] == "confidence-adapters"
    mount = next(m for m in job["volumeMounts"] if m["name"] == "adapters")
    assert mount["mountPath"] == "/var/lib/confidence/adapters" and not mount.get("readOnly", False)
    config = resources[("ConfigMap", "confidence-recalibrate-config")]["data"]
    # The version the service starts on (the newest trained one shipped), not an older one.
    assert config["RECALIBRATE_ADAPTER"] == served_default()
    # The service lets the job reach its admin API (outcome report, --promote).
    policy = resources[("NetworkPolicy", "confidence-service")]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "confidence-recalibrate"}}} in policy
