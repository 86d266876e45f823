"""The control process's retention counters: every kind shows from the start, and a pass
adds what it removed and the time it took."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.retention.sweeper import Swept
from worker.control.metrics import ControlMetrics


def _samples(metrics: ControlMetrics) -> dict[tuple[str, str], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, s.labels.get("kind", "")): s.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("vlmq_retention") for s in family.samples
            if s.name.endswith("_total")}


def test_each_kind_is_exposed_at_zero_and_a_pass_adds_to_it() -> None:
    metrics = ControlMetrics()
    before = _samples(metrics)
    assert {kind for name, kind in before if name == "vlmq_retention_removed_total"} == {
        "images", "jobs", "batches", "files", "tombstones", "orphans"}
    assert all(value == 0 for value in before.values())

    metrics.count_swept(Swept(images=3, jobs=2, tombstones=7), 0.25)
    metrics.count_swept(Swept(), 0.5)  # a pass that found nothing still took its time
    after = _samples(metrics)
    assert after[("vlmq_retention_removed_total", "images")] == 3
    assert after[("vlmq_retention_removed_total", "jobs")] == 2
    assert after[("vlmq_retention_removed_total", "tombstones")] == 7
    assert after[("vlmq_retention_removed_total", "orphans")] == 0
    assert after[("vlmq_retention_pass_seconds_total", "")] == 0.75
