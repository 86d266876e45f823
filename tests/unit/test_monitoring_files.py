"""deploy/'s Grafana dashboard and Prometheus alert rules parse, say what they claim to, and
are wired into docker-compose.yml's `monitoring` profile. Whether every metric they name is
one the processes export is checked against live processes in
tests/system/test_dashboards.py."""

from __future__ import annotations

import fnmatch
import re
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from tests.helpers import monitoring
from tests.helpers.promql import parse

COMPOSE = yaml.safe_load((monitoring.ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DURATION = re.compile(r"(\d+(ms|[smhdwy]))+")
TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")

# What issue 22 asks the dashboard to show, as words its panel titles carry.
REQUIRED_PANELS = ("Submissions by tenant", "429s by tenant", "Queue depth", "Oldest queued job",
                   "Images/s", "Tokens/s", "Engine batch size", "Job queue wait percentiles",
                   "Job engine time percentiles", "Webhook failures", "5xx rate", "Backlog",
                   "Live workers")
REQUIRED_ALERTS = ("VlmqNoLiveWorker", "VlmqQueuedJobPastDeadline", "VlmqWebhookDeadLetters",
                   "VlmqApi5xxRate")


def bind_mounts(service: str) -> dict[str, str]:
    """Container path -> the repository path mounted there."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            mounts[target] = source.removeprefix("./")
    return mounts


def container_path(service: str, repo_path: str) -> str:
    for target, source in bind_mounts(service).items():
        if repo_path == source or repo_path.startswith(source + "/"):
            return target + repo_path.removeprefix(source)
    raise AssertionError(f"{repo_path} is not mounted into {service!r}")


def test_the_dashboard_parses_and_its_panels_do_not_overlap() -> None:
    board = monitoring.dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    datasource = yaml.safe_load(monitoring.DATASOURCES.read_text())["datasources"][0]
    for panel in monitoring.panels():
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    for var in monitoring.dashboard()["templating"]["list"]:
        assert var["datasource"]["uid"] == datasource["uid"], var["name"]


def test_the_dashboard_shows_what_operators_need() -> None:
    titles = [p["title"] for p in monitoring.panels()]
    missing = [want for want in REQUIRED_PANELS if not any(want in t for t in titles)]
    assert not missing, f"no panel for {missing}"


@pytest.mark.parametrize("query", monitoring.dashboard_queries() + monitoring.rule_queries(),
                         ids=lambda q: q.where)
def test_each_query_is_well_formed_and_names_vlmq_metrics(query: monitoring.Query) -> None:
    expression = parse(query.expr)
    assert expression.metrics
    others = {m for m in expression.metrics if not m.startswith("vlmq_")}
    assert others <= monitoring.BUILTIN_METRICS, f"{query.where}: {others}"


def test_template_variables_read_label_values_of_vlmq_metrics() -> None:
    variables = monitoring.variable_label_values()
    assert [name for name, _, _ in variables] == ["model"]
    used = " ".join(q.expr for q in monitoring.dashboard_queries())
    for name, metric, _ in variables:
        assert metric.startswith("vlmq_") and f"${name}" in used


def test_alert_rules_are_complete() -> None:
    groups = monitoring.rule_groups()
    assert groups and all(g["name"] and g["rules"] for g in groups)
    alerts = [r["alert"] for r in monitoring.rules()]
    assert len(alerts) == len(set(alerts)), "alert names repeat"
    assert set(REQUIRED_ALERTS) <= set(alerts)
    for rule in monitoring.rules():
        name = rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations",
                             "keep_firing_for"}, name
        assert DURATION.fullmatch(str(rule.get("for", "0s"))), f"{name}: for {rule.get('for')}"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        # A label an annotation names must survive the expression's aggregation.
        kept = parse(rule["expr"]).grouping
        named = {m for text in rule["annotations"].values() for m in TEMPLATE_LABEL.findall(text)}
        assert named <= kept, f"{name}: annotations name {named - kept}, the expr keeps {kept}"


def test_prometheus_scrapes_each_process_on_its_compose_metrics_port() -> None:
    config = yaml.safe_load(monitoring.PROMETHEUS.read_text())
    scraped = {}
    for job in config["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            for name in sd["names"]:
                scraped[name] = sd["port"]
    ports = {}
    for name, service in SERVICES.items():
        env = service.get("environment") or {}
        for var in ("VLMQ_METRICS_PORT", "VLMQ_API_METRICS_PORT"):
            if str(env.get(var, "0")) not in ("", "0"):
                ports[name] = int(env[var])
    assert {"api", "worker", "control"} <= ports.keys()
    assert scraped == ports


def test_prometheus_loads_the_rules_compose_mounts() -> None:
    config = yaml.safe_load(monitoring.PROMETHEUS.read_text())
    assert "prometheus.yml" in container_path("prometheus", "deploy/prometheus/prometheus.yml")
    rule_files = [p for p in monitoring.RULES_DIR.iterdir() if p.suffix in (".yml", ".yaml")]
    assert rule_files
    for path in rule_files:
        inside = container_path("prometheus", str(path.relative_to(monitoring.ROOT)))
        assert any(fnmatch.fnmatch(inside, pattern) for pattern in config["rule_files"]), inside


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    assert container_path("grafana", "deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    datasource = yaml.safe_load(monitoring.DATASOURCES.read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert re.fullmatch(r"http://prometheus:9090/?", datasource["url"])
    providers = yaml.safe_load(monitoring.DASHBOARD_PROVIDERS.read_text())["providers"]
    dashboards = container_path("grafana", str(monitoring.DASHBOARD.relative_to(monitoring.ROOT)))
    assert [p for p in providers
            if PurePosixPath(dashboards).parent == PurePosixPath(p["options"]["path"])]


def test_monitoring_is_an_optional_profile_of_compose() -> None:
    for name in ("prometheus", "grafana"):
        assert SERVICES[name]["profiles"] == ["monitoring"], name
        for source in bind_mounts(name).values():
            assert (monitoring.ROOT / source).exists(), f"{name} mounts missing {source}"
    others = [n for n, s in SERVICES.items() if s.get("profiles") and n not in ("prometheus",
                                                                              "grafana")]
    assert not others, f"{others} would not start with a plain `docker compose up`"
