"""Observability end to end: a real Prometheus scrapes a running `cdc run` that streams a workload.

Every PromQL expression of the Grafana dashboard and of the alert rules is evaluated through
Prometheus' HTTP API and must return data of the right shape, naming only metrics that exist;
the rules load and evaluate cleanly; lag rises under load and returns to 0 once caught up.
Skipped without the `prometheus` binary (Debian package `prometheus`; `.ci/run` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import REPO, CdcProcess, Deployment, free_port, stop_process, wait_until

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs the prometheus binary (Debian package `prometheus`; .ci/run installs it)",
)
DASHBOARD = REPO / "config" / "grafana" / "wal2vec.json"
ALERTS = REPO / "config" / "prometheus" / "alerts.yml"
# Grafana's built-in variables, as a dashboard over the last minutes would have them.
BUILTINS = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s"}
# Expressions that may rightly be empty here: the server sets no max_slot_wal_keep_size.
MAY_BE_EMPTY = ("cdc_slot_max_wal_keep_bytes",)
SECRET = "sk-test-secret-key-do-not-print"


class Prometheus:
    """A Prometheus server on loopback scraping one target every second."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        workdir.mkdir()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "wal2vec",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        assert PROMETHEUS is not None
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def query(self, expr: str) -> dict[str, Any]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return dict(answer["data"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no data."""
        result = self.query(expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def prometheus(tmp_path: Path, deployment: Deployment) -> Iterator[Prometheus]:
    port = free_port()
    deployment.extra = {"metrics": {"port": port, "poll_interval": 0.5}}
    server = Prometheus(tmp_path / "prometheus", port)
    try:
        wait_until(server.ready, what="Prometheus ready")
        yield server
    finally:
        server.stop()


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    values = dict(BUILTINS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = variable["allValue"]
        elif variable["type"] in ("textbox", "constant"):
            values[variable["name"]] = variable["query"]
    expressions = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = re.sub(
                r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), target["expr"]
            )
            assert "$" not in expr, f"panel {panel['title']!r}: unknown variable in {expr}"
            expressions.append(expr)
    return expressions


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_dashboard_is_importable_with_the_data_source_as_a_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("lag", "retained wal", "changes", "embeddings", "vectors written", "latency"):
        assert topic in titles
    for topic in ("retries", "dead letters", "buffer", "snapshot", "tokens"):
        assert topic in titles


def test_prometheus_scrapes_cdc_run_and_every_dashboard_and_alert_query_answers(
    deployment: Deployment, endpoint: FakeOpenAIServer, prometheus: Prometheus
) -> None:
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) "
        "SELECT g, 'existing ' || g, 'body ' || g, g % 3 FROM generate_series(1, 40) g"
    )
    deployment.execute("ANALYZE articles")
    process = deployment.start("--log-format", "json")
    try:
        deployment.wait_ready()
        wait_until(lambda: prometheus.value("cdc_up") == 1, what="Prometheus scraped cdc_up 1")

        # Load: a slow endpoint, one server error (retried), one row rejected for good.
        endpoint.latency = 1.0
        endpoint.fail_next(1, 500)
        endpoint.reject_inputs_containing("poison")
        for batch in range(6):
            first = 100 + batch * 20
            deployment.execute(
                "INSERT INTO articles (id, title, body) SELECT g, 'load ' || g, "
                "CASE WHEN g = 101 THEN 'poison' ELSE 'text ' || g END "
                f"FROM generate_series({first}, {first + 19}) g"
            )
        deployment.execute("UPDATE articles SET views = views + 1 WHERE id <= 10")
        deployment.execute("DELETE FROM articles WHERE id BETWEEN 11 AND 15")
        for name in ("cdc_replication_lag_bytes", "cdc_replication_lag_seconds"):
            wait_until(
                lambda name=name: (prometheus.value(f"max_over_time({name}[5m])") or 0) > 0,
                what=f"{name} above 0 under load",
            )
        endpoint.latency = 0.0
        deployment.wait_caught_up()
        for name in ("cdc_replication_lag_bytes", "cdc_replication_lag_seconds"):
            wait_until(lambda name=name: prometheus.value(name) == 0, what=f"{name} back to 0")
        wait_until(
            lambda: (
                (prometheus.value("cdc_dead_letters_total") or 0) >= 1
                and (prometheus.value("cdc_embedding_retries_total") or 0) >= 1
            ),
            30,
            "the dead letter and the retry scraped",
        )

        check_metrics_endpoint(deployment, process)
        names = metric_names(prometheus)
        for expr in dashboard_expressions():
            check_query(prometheus, expr, names, must_have_data=not expr.startswith(MAY_BE_EMPTY))
        for rule in alert_rules():
            check_query(prometheus, rule["expr"], names, must_have_data=False)
        check_rules_evaluated(prometheus)
    finally:
        code = process.stop()
    assert code == 0, process.output
    check_json_logs(deployment, process)


def metric_names(prometheus: Prometheus) -> set[str]:
    result = prometheus.query('count by (__name__) ({__name__=~"cdc_.+"})')["result"]
    return {r["metric"]["__name__"] for r in result}


def check_query(prometheus: Prometheus, expr: str, names: set[str], must_have_data: bool) -> None:
    for name in set(re.findall(r"\bcdc_\w+", expr)):
        assert name in names, f"{expr}: Prometheus has no series {name}"
    data = prometheus.query(expr)
    assert data["resultType"] in ("vector", "scalar"), f"{expr}: {data['resultType']}"
    if data["resultType"] == "scalar":
        return
    for element in data["result"]:
        assert isinstance(element["metric"], dict), expr
        timestamp, value = element["value"]
        assert isinstance(timestamp, int | float), expr
        float(value)  # a number, NaN or ±Inf as Prometheus spells them
        assert "__name__" not in element["metric"] or element["metric"]["__name__"] in names
    if must_have_data:
        assert data["result"], f"{expr}: no data after the workload"


def check_rules_evaluated(prometheus: Prometheus) -> None:
    expected = {rule["alert"] for rule in alert_rules()}

    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done and {r["name"] for r in rules} == expected else None

    rules = wait_until(evaluated, what="every alert rule evaluated")
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    wanted = ("Wal2vecDeadLettersGrowing", "public.articles")
    wait_until(lambda: wanted in firing_alerts(prometheus), what="the dead-letter alert firing")
    # The rejected row is the one thing an operator has to act on here.
    firing = firing_alerts(prometheus)
    assert firing == {wanted}, firing


def firing_alerts(prometheus: Prometheus) -> set[tuple[str, str | None]]:
    alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
    return {
        (a["labels"]["alertname"], a["labels"].get("table"))
        for a in alerts
        if a["state"] == "firing"
    }


def check_metrics_endpoint(deployment: Deployment, process: CdcProcess) -> None:
    port = deployment.extra["metrics"]["port"]
    base = f"http://127.0.0.1:{port}"
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(base + path, timeout=5) as response:
            assert response.status == 200, path
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        body = response.read().decode()
    assert SECRET not in body
    families = {f.name: f for f in text_string_to_metric_families(body)}
    kinds = {name: family.type for name, family in families.items()}
    assert kinds["cdc_changes"] == "counter"
    assert kinds["cdc_embedding_request_seconds"] == "histogram"
    assert kinds["cdc_slot_retained_wal_bytes"] == "gauge"
    assert not [name for name in families if name.endswith("_created")]

    def value(name: str, **labels: str) -> float:
        family = families[re.sub(r"_(total|bucket|count|sum)$", "", name)]
        [found] = [s.value for s in family.samples if s.name == name and s.labels == labels]
        return float(found)

    table = "public.articles"
    assert value("cdc_changes_total", table=table, op="insert") == 120
    assert value("cdc_changes_total", table=table, op="delete") == 5
    assert value("cdc_snapshot_rows_total", table=table) == 40
    assert value("cdc_snapshot_rows_estimated", table=table) == 40
    assert value("cdc_dead_letters_total", table=table) == 1
    assert value("cdc_embeddings_skipped_total", table=table, reason="unchanged") >= 10
    assert value("cdc_vectors_written_total", table=table, op="delete") >= 5
    endpoint = urllib.parse.urlsplit(deployment.base_url).netloc  # host:port, as labelled
    assert value("cdc_embedding_requests_total", status="500", endpoint=endpoint) == 1
    assert value("cdc_embedding_endpoint_up", endpoint=endpoint) == 1
    assert value("cdc_embedding_retries_total") >= 1
    assert value("cdc_slot_active") == 1
    assert value("cdc_slot_wal_status", status="reserved") == 1
    assert value("cdc_slot_wal_status", status="missing") == 0
    assert value("cdc_slot_retained_wal_bytes") > 0
    assert value("cdc_slot_max_wal_keep_bytes") == -1
    assert value("cdc_snapshot_done") == 1
    assert value("cdc_server_lsn") >= value("cdc_confirmed_lsn") > 0
    [info] = families["cdc_info"].samples
    assert info.labels["slot"] == deployment.slot
    assert info.labels["model"] == "text-embedding-3-small"
    process.assert_running()


def check_json_logs(deployment: Deployment, process: CdcProcess) -> None:
    output = process.output
    assert SECRET not in output
    events = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert events, "no log output"
    for event in events:
        assert {"time", "level", "logger", "message"} <= set(event), event
        if event["logger"].startswith("cdc."):
            assert event.get("slot") == deployment.slot, event
    messages = " ".join(e["message"] for e in events)
    assert "dead letters" in messages
    assert "retrying" in messages
