"""Every metric a Grafana panel or a Prometheus rule in deploy/ names is one the processes
export, with the labels the queries use: an API, an echo worker and a control process run
with their metrics ports, are given work (jobs, a webhook, a batch, a 429), and their
/metrics are scraped over HTTP as Prometheus scrapes them. And the control process's queue
gauges show what the alerts read: a model with a job waiting and no worker, beside a model
whose worker is live and draining."""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import monitoring
from tests.helpers.echo_stack import ENDPOINT, batch_line, openai_client, upload, wait_batch
from tests.helpers.images import data_url, png_bytes
from tests.helpers.promql import exposed_names, parse
from tests.helpers.services import (
    bearer,
    create_api_key,
    free_port,
    fresh_database,
    start_api,
    start_control,
    start_worker,
    wait_terminal,
)
from tests.helpers.stack import Stack
from tests.helpers.webhook_receiver import Receiver, receiver

SECRET = "whsec_" + base64.b64encode(b"d" * 32).decode()
RECEIVER_HOST = "127.0.0.3"  # the one loopback address the development setting lets through
PROCESSES = ("api", "worker", "control")


@dataclass
class Scrape:
    families: dict[str, str] = field(default_factory=dict)  # family -> type
    labels: dict[str, set[str]] = field(default_factory=dict)  # series name -> label names
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return {n for family, kind in self.families.items() for n in exposed_names(family, kind)}

    def value(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, frozenset(labels.items())))


def scrape(port: int) -> Scrape:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = Scrape()
    for family in text_string_to_metric_families(text):
        found.families[family.name] = family.type
        for sample in family.samples:
            found.labels.setdefault(sample.name, set()).update(sample.labels)
            found.values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def merged(scrapes: list[Scrape]) -> Scrape:
    total = Scrape()
    for one in scrapes:
        total.families.update(one.families)
        for name, labels in one.labels.items():
            total.labels.setdefault(name, set()).update(labels)
        total.values.update(one.values)
    return total


def poll(what: str, read: Callable[[], Scrape], ok: Callable[[Scrape], bool],
         timeout: float = 60) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if ok(found):
            return found
        assert time.monotonic() < deadline, f"{what}: not seen in {timeout}s"
        time.sleep(0.5)


@dataclass
class Monitored:
    ports: dict[str, int]
    model: str  # served by the echo worker
    parked: str  # accepted by the API, served by no worker

    def scrape(self, process: str) -> Scrape:
        return scrape(self.ports[process])


def give_work(base: str, stack: Stack, model: str, parked: str, hook: Receiver) -> None:
    """What makes every labelled family the dashboard reads have a sample: a job with a
    delivered webhook, a one-line batch, and a tenant refused with 429 while its one allowed
    job waits for a model no worker serves."""
    with httpx.Client(base_url=base, timeout=30, headers=stack.headers) as client:
        resp = client.post("/v1/jobs", data={"prompt": "watched", "model": model,
                                             "max_tokens": "4", "webhook_url": hook.url()},
                           files={"image": ("a.png", png_bytes(64, 48), "image/png")})
        assert resp.status_code == 202, resp.text
        assert wait_terminal(client, resp.json()["id"])["status"] == "succeeded"
    hook.wait_for(1)
    with openai_client(base, stack.api_key) as oai:
        line = batch_line("line-0", model, data_url(png_bytes(16, 12)), max_tokens=4)
        batch = oai.batches.create(input_file_id=upload(oai, [line]), endpoint=ENDPOINT,
                                   completion_window="24h")
        assert wait_batch(oai, batch.id, {"completed", "failed"}).status == "completed"
    crowded = bearer(create_api_key(stack.settings.database_url, "crowded"))
    with httpx.Client(base_url=base, timeout=30, headers=crowded) as client:
        statuses = [client.post("/v1/jobs", data={"prompt": "wait", "model": parked},
                                files={"image": ("a.png", png_bytes(64, 48), "image/png")}
                                ).status_code for _ in range(2)]
    assert statuses == [202, 429]


@pytest.fixture(scope="module")
def monitored(stack: Stack) -> Iterator[Monitored]:
    tag = uuid.uuid4().hex[:6]
    model, parked = f"dash-{tag}", f"dash-parked-{tag}"
    ports = {name: free_port() for name in PROCESSES}
    with fresh_database() as db_url, receiver(host=RECEIVER_HOST) as hook, ExitStack() as up:
        st = stack.with_env(
            database_url=db_url, model=model, engine="echo", queue_prefix=f"vlmqdash{tag}",
            accepted_models=json.dumps([parked]), tenant_max_active_jobs="1",
            webhook_secrets=json.dumps([SECRET]), webhook_allow_http="true",
            webhook_allowed_networks=json.dumps([f"{RECEIVER_HOST}/32"]),
            webhook_poll_seconds="0.2", batch_poll_seconds="0.2",
        ).migrate()
        api, base = start_api(st.with_env(api_metrics_port=str(ports["api"])).env, st.log_dir,
                              name="api-dashboards")
        up.callback(api.stop)
        worker = start_worker(st.with_env(metrics_port=str(ports["worker"])).env, st.log_dir,
                              name=f"worker-{model}")
        up.callback(worker.stop)
        control = start_control(st.with_env(metrics_port=str(ports["control"])).env,
                                st.log_dir, name="control-dashboards")
        up.callback(control.stop)
        give_work(base, st, model, parked, hook)
        yield Monitored(ports, model, parked)


@pytest.fixture(scope="module")
def exported(monitored: Monitored) -> Scrape:
    """All three processes' metrics once the work above is counted everywhere (the webhook
    attempt is counted after its receiver answered, so it may lag the receiver)."""
    poll("the webhook attempt in the control process's metrics",
         lambda: monitored.scrape("control"),
         lambda s: s.value("vlmq_webhook_attempts_total", outcome="succeeded") == 1)
    return merged([monitored.scrape(name) for name in PROCESSES])


QUERIES = monitoring.dashboard_queries() + monitoring.rule_queries()


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.where)
def test_each_query_names_exported_metrics_and_labels(query: monitoring.Query,
                                                      exported: Scrape) -> None:
    expression = parse(query.expr)
    unknown = expression.metrics - exported.names - monitoring.BUILTIN_METRICS
    assert not unknown, f"{query.where}: no live process exports {sorted(unknown)}"
    # Labels are known only from samples, and the work given above leaves one in every
    # family a query names, so none is checked against nothing.
    unsampled = {m for m in expression.metrics if m not in exported.labels}
    assert not unsampled - monitoring.BUILTIN_METRICS, f"{query.where}: no samples of {unsampled}"
    for selector in expression.selectors:
        known = exported.labels.get(selector.metric, set()) | monitoring.TARGET_LABELS
        assert selector.labels <= known, (
            f"{query.where}: {selector.metric} has no label {sorted(selector.labels - known)}")
    carried = set(monitoring.TARGET_LABELS).union(
        *(exported.labels.get(m, set()) for m in expression.metrics))
    assert expression.grouping <= carried, (
        f"{query.where}: groups by {sorted(expression.grouping - carried)}, which none of "
        f"{sorted(expression.metrics)} carries")


def test_template_variables_read_an_exported_label(exported: Scrape) -> None:
    for name, metric, label in monitoring.variable_label_values():
        assert label in exported.labels.get(metric, set()), f"${name}: {metric} has no {label}"


def test_the_queue_gauges_show_a_model_waiting_without_a_worker(monitored: Monitored) -> None:
    parked, model = monitored.parked, monitored.model

    def settled(s: Scrape) -> bool:
        # The control process answers from a read up to a few seconds old.
        return (s.value("vlmq_queue_depth", model=parked, priority="5") == 1
                and (s.value("vlmq_queue_throughput_per_second", model=model) or 0) > 0)

    found = poll("the parked job and the echo model's throughput",
                 lambda: monitored.scrape("control"), settled)
    assert found.value("vlmq_queue_stats_up") == 1
    # What VlmqNoLiveWorker reads: queued jobs, and no live worker of their model ...
    assert found.value("vlmq_workers_live", model=parked) == 0
    assert found.value("vlmq_queue_backlog_seconds", model=parked) == math.inf
    assert (found.value("vlmq_queue_oldest_age_seconds", model=parked, priority="5") or 0) > 0
    assert found.value("vlmq_queue_overdue", model=parked, priority="5") == 0
    # ... while the echo model has its worker, and nothing left to drain.
    assert found.value("vlmq_workers_live", model=model) == 1
    assert found.value("vlmq_queue_backlog_seconds", model=model) == 0
    assert found.value("vlmq_queue_running", model=parked, priority="5") == 0
