"""The deployment a user copies, checked offline: deploy/kubernetes rendered by
`kubectl kustomize` and validated against Kubernetes' schemas, its monitoring objects equal to
config/'s files, the sidecar wired as the README says, and the Dockerfile linted.

Each tool missing here (kubectl, kubernetes-validate, hadolint) skips its tests, unless
WAL2VEC_REQUIRE_DEPLOY_TOOLS=1 (as in .ci/run), which makes a missing tool a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.config import Settings, load_config

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZATION = REPO / "deploy" / "kubernetes"
ALERTS = REPO / "config" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "config" / "grafana" / "wal2vec.json"
REQUIRE = "WAL2VEC_REQUIRE_DEPLOY_TOOLS"
# The oldest Kubernetes with native sidecars on by default, and kubernetes-validate's newest.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# Custom resources of the Prometheus Operator: kubernetes-validate has no schema for them.
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}
SIDECAR = "wal2vec"


def unavailable(reason: str) -> None:
    """Skip the test for `reason`, or fail it when CI requires the deployment tools."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} (and {REQUIRE}=1)", pytrace=False)
    pytest.skip(reason)


def tool(name: str) -> str:
    """The program `name`, next to this interpreter (a venv's console scripts) or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed")
    assert found is not None
    return found


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/kubernetes`, as the README says, with no extra flag."""
    result = run(tool("kubectl"), "kustomize", str(KUSTOMIZATION))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    every = spec.get("initContainers", []) + spec["containers"]
    matches = [c for c in every if c["name"] == name]
    assert len(matches) == 1, name
    found: dict[str, Any] = matches[0]
    return found


def pod_settings(objects: list[dict[str, Any]], tmp_path: Path) -> Settings:
    """The sidecar's configuration as `cdc run` would load it in the pod: the ConfigMap's
    file, overridden by the environment the Deployment gives it (Secret values resolved)."""
    spec = pod_spec(objects)
    sidecar = container(spec, SIDECAR)
    environ: dict[str, str] = {}
    for variable in sidecar["env"]:
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            environ[variable["name"]] = one(objects, "Secret", ref["name"])["stringData"][
                ref["key"]
            ]
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == "/etc/wal2vec")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
    assert environ["CDC_CONFIG"] == "/etc/wal2vec/wal2vec.yaml"
    path = tmp_path / "wal2vec.yaml"
    path.write_text(config_map["data"]["wal2vec.yaml"])
    return load_config(None, {**environ, "CDC_CONFIG": str(path)})


def test_kubernetes_validate_accepts_every_object(rendered: list[dict[str, Any]]) -> None:
    """Every built-in object is valid (strictly: no unknown field) for the oldest and the
    newest Kubernetes; the Prometheus Operator's custom resources have no schema there."""
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (the [dev] extra)")
    skipped = set()
    for version in KUBERNETES_VERSIONS:
        for document in rendered:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                skipped.add(document["kind"])
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{document['kind']} {path} ({version}): {error.message}")
    assert skipped == OPERATOR_KINDS
    assert {d["kind"] for d in rendered} == {"ConfigMap", "Secret", "Deployment"} | skipped


def test_the_prometheus_rule_holds_exactly_the_alert_rules(
    rendered: list[dict[str, Any]],
) -> None:
    rule = one(rendered, "PrometheusRule", "wal2vec")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert rule["spec"]["groups"], "alerts.yml has no groups"


def test_the_prometheus_rule_file_is_regenerated() -> None:
    """prometheusrule.yaml is what render_prometheusrule.py makes of alerts.yml, comments and
    all, so an edit of alerts.yml without the script fails here."""
    script = KUSTOMIZATION / "render_prometheusrule.py"
    result = run(sys.executable, str(script), "--check")
    assert result.returncode == 0, result.stderr


def test_the_dashboard_config_map_holds_the_dashboard(rendered: list[dict[str, Any]]) -> None:
    dashboard = one(rendered, "ConfigMap", "wal2vec-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(dashboard["data"]) == ["wal2vec.json"]
    assert dashboard["data"]["wal2vec.json"] == DASHBOARD.read_text()
    assert json.loads(dashboard["data"]["wal2vec.json"]) == json.loads(DASHBOARD.read_text())


def test_wal2vec_is_a_native_sidecar_after_its_setup(rendered: list[dict[str, Any]]) -> None:
    spec = pod_spec(rendered)
    names = [c["name"] for c in spec["initContainers"]]
    assert names == ["wal2vec-setup", SIDECAR]
    setup, sidecar = spec["initContainers"]
    assert setup["args"] == ["setup"] and "restartPolicy" not in setup
    assert sidecar["args"] == ["run"] and sidecar["restartPolicy"] == "Always"
    assert setup["image"] == sidecar["image"]
    deployment = one(rendered, "Deployment")
    # Replicas elect one leader; a rolling update keeps one running (see deployment.yaml).
    assert deployment["spec"]["replicas"] >= 2
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["enableServiceLinks"] is False


def test_probes_port_and_configuration_agree(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    sidecar = container(pod_spec(rendered), SIDECAR)
    settings = pod_settings(rendered, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"metrics": 9108}
    assert settings.metrics.port == 9108
    assert settings.metrics.host == "0.0.0.0"  # the kubelet probes the pod's address
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # /healthz fails after 120 s without a heartbeat; the probe must not be stricter than
    # a few missed periods.
    liveness = sidecar["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30


def test_the_grace_period_outlasts_shutdown_timeout(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The sidecar is stopped after the app, within the same grace period: it must cover
    shutdown_timeout with room for the app's own stop."""
    settings = pod_settings(rendered, tmp_path)
    grace = pod_spec(rendered)["terminationGracePeriodSeconds"]
    assert settings.shutdown_timeout == 25
    assert grace >= settings.shutdown_timeout + 15


def test_secrets_come_from_the_secret_as_cdc_variables(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    spec = pod_spec(rendered)
    for name, expected in (
        ("wal2vec-setup", {"CDC_SOURCE__DSN": "source-dsn"}),
        (
            SIDECAR,
            {"CDC_SOURCE__DSN": "source-dsn", "CDC_EMBEDDING__API_KEY": "embedding-api-key"},
        ),
    ):
        env = container(spec, name)["env"]
        from_secret = {
            v["name"]: v["valueFrom"]["secretKeyRef"]["key"] for v in env if "valueFrom" in v
        }
        assert from_secret == expected, name
        assert all(
            v["valueFrom"]["secretKeyRef"]["name"] == "wal2vec" for v in env if "valueFrom" in v
        )
    secret = one(rendered, "Secret", "wal2vec")
    assert set(secret["stringData"]) == {"source-dsn", "embedding-api-key"}
    # Nothing secret in the ConfigMap; the settings are whole once the Secret is added.
    config_map = next(o for o in rendered if o["metadata"]["name"].startswith("wal2vec-config"))
    in_file = yaml.safe_load(config_map["data"]["wal2vec.yaml"])
    assert "dsn" not in in_file["source"] and "api_key" not in in_file["embedding"]
    settings = pod_settings(rendered, tmp_path)
    assert settings.source.dsn == secret["stringData"]["source-dsn"]
    assert settings.embedding.api_key is not None


def test_the_containers_run_unprivileged_on_a_read_only_root(
    rendered: list[dict[str, Any]],
) -> None:
    spec = pod_spec(rendered)
    tmp = next(v for v in spec["volumes"] if v["name"] == "wal2vec-tmp")
    assert "emptyDir" in tmp
    for name in ("wal2vec-setup", SIDECAR):
        c = container(spec, name)
        context = c["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        # tiktoken caches its encoding under $TMPDIR and fails without a writable one.
        assert {"name": "wal2vec-tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert c["resources"]["limits"]["memory"]
    assert container(spec, SIDECAR)["resources"]["limits"]["memory"] == "512Mi"


def test_the_pod_monitor_scrapes_the_sidecar(rendered: list[dict[str, Any]]) -> None:
    monitor = one(rendered, "PodMonitor", "wal2vec")
    labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    ports = {p["name"] for p in container(pod_spec(rendered), SIDECAR)["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


# --- compose ---------------------------------------------------------------------------------

COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"


def interpolated(value: str) -> str:
    """Compose's `${NAME:-default}` with nothing set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """The service's bind mounts, container path -> host path."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (COMPOSE_DIR / source).resolve()
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def test_docker_compose_accepts_the_file() -> None:
    result = run(tool("docker-compose"), "-f", str(COMPOSE), "config", "-q")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_prometheus_configuration_is_valid() -> None:
    result = run(
        tool("promtool"), "check", "config", "--syntax-only", "deploy/compose/prometheus.yml"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wal2vec_configuration_loads_and_matches_the_services(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    assert compose["db"]["command"] == ["postgres", "-c", "wal_level=logical"]
    assert compose["db"]["image"].startswith("pgvector/pgvector:")
    for name in ("wal2vec-setup", "wal2vec"):
        service = compose[name]
        assert (COMPOSE_DIR / service["build"]["context"]).resolve() == REPO
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert mounts(service)["/etc/wal2vec/wal2vec.yaml"] == COMPOSE_DIR / "wal2vec.yaml"
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"]
    assert compose["wal2vec-setup"]["command"] == ["setup"]
    assert compose["wal2vec"]["command"] == ["run"]
    assert compose["wal2vec"]["depends_on"] == {
        "wal2vec-setup": {"condition": "service_completed_successfully"},
        "embeddings": {"condition": "service_healthy"},
    }
    environ = {k: interpolated(v) for k, v in compose["wal2vec"]["environment"].items()}
    settings = load_config(COMPOSE_DIR / "wal2vec.yaml", environ)
    assert settings.source.dsn.startswith("postgresql://postgres:wal2vec@db:5432/")
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9108)
    # The embedding server is a service of the file, reached on the port it serves.
    assert settings.embedding.base_url == "http://embeddings:80/v1"
    assert "embeddings" in compose
    grace = compose["wal2vec"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) > settings.shutdown_timeout


def test_compose_prometheus_loads_the_alert_rules_and_scrapes_wal2vec(
    compose: dict[str, Any],
) -> None:
    prometheus = compose["prometheus"]
    mounted = mounts(prometheus)
    config = yaml.safe_load(mounted["/etc/prometheus/prometheus.yml"].read_text())
    (rule_file,) = config["rule_files"]
    assert mounted[rule_file] == ALERTS
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["wal2vec:9108"]}]


def test_compose_grafana_provisions_the_data_source_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    mounted = mounts(compose["grafana"])
    provisioning = mounted["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "wal2vec.yml").read_text())[
        "providers"
    ]
    directory = provider["options"]["path"]
    assert mounted[f"{directory}/wal2vec.json"] == DASHBOARD


# --- Dockerfile ------------------------------------------------------------------------------


def test_the_dockerfile_is_hadolint_clean() -> None:
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", "Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_dockerfile_stops_and_listens_as_the_pod_expects() -> None:
    text = (REPO / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if re.match(r"[A-Z]", line)]
    final = instructions[max(i for i, (word, _) in enumerate(instructions) if word == "FROM") :]
    last = {word: rest for word, rest in final}
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert last["EXPOSE"] == "9108"
    assert last["USER"] == "10001:10001"
    assert json.loads(last["ENTRYPOINT"]) == ["/opt/wal2vec/bin/cdc"]
    assert json.loads(last["CMD"]) == ["run"]
    assert "HEALTHCHECK" not in last
    assert text.startswith("#") and "ARG BASE_IMAGE=python:3.11-slim" in text
