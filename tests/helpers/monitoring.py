"""The monitoring files in deploy/ (the Grafana dashboard and its provisioning, Prometheus's
configuration and alert rules), read as the tests check them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "vlmq.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "vlmq.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES_DIR = DEPLOY / "prometheus" / "rules"

# Labels Prometheus adds to every scraped series; `up` is the series it writes per target.
TARGET_LABELS = frozenset({"job", "instance"})
BUILTIN_METRICS = frozenset({"up"})

_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)")


@dataclass(frozen=True)
class Query:
    where: str  # e.g. "panel 'Images/s' A", "alert VlmqNoLiveWorker"
    expr: str


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too, rows left out."""
    found: list[dict[str, Any]] = []
    for panel in (board or dashboard())["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_queries() -> list[Query]:
    return [Query(f"panel {p['title']!r} {t['refId']}", t["expr"])
            for p in panels() for t in p.get("targets", [])]


def rule_queries() -> list[Query]:
    return [Query(f"alert {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()]


def variable_label_values() -> list[tuple[str, str, str]]:
    """(variable, metric, label) of each `label_values(metric, label)` template variable."""
    found: list[tuple[str, str, str]] = []
    for var in dashboard().get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        m = _LABEL_VALUES.fullmatch(text.strip())
        if var.get("type") == "query":
            assert m, f"variable {var['name']!r}: not label_values(metric, label): {text!r}"
            found.append((var["name"], m.group(1), m.group(2)))
    return found
