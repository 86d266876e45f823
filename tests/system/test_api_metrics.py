"""The API's Prometheus metrics, and the development-only switch that turns keys off."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.images import png_bytes
from tests.helpers.net import non_loopback_address, reachable
from tests.helpers.services import bearer, create_api_key, free_port, start_api
from tests.helpers.stack import Stack


@pytest.fixture(scope="module")
def metered(stack: Stack) -> Iterator[tuple[str, int]]:
    port = free_port()
    st = stack.with_env(api_metrics_port=str(port), tenant_max_active_jobs="1")
    svc, base = start_api(st.env, st.log_dir, name="api-metrics")
    yield base, port
    svc.stop()


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(port: int, name: str, **labels: str) -> float:
    return samples(port).get((name, frozenset(labels.items())), 0.0)


def test_requests_submissions_and_refusals_are_counted(metered: tuple[str, int],
                                                       stack: Stack) -> None:
    base, port = metered
    tenant = f"metered-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=base, timeout=30,
                      headers=bearer(create_api_key(stack.settings.database_url, tenant))) as c:
        assert c.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
        for _ in range(2):  # the second is over the quota of one active job
            c.post("/v1/jobs", files={"image": ("a.png", png_bytes(64, 48), "image/png")},
                   data={"prompt": "count me", "model": "parked"})
    assert value(port, "vlmq_api_requests_total", method="GET", route="/v1/jobs/{job_id}",
                 status="404") >= 1
    assert value(port, "vlmq_api_requests_total", method="POST", route="/v1/jobs",
                 status="202") >= 1
    assert value(port, "vlmq_api_submissions_total", tenant=tenant, model="parked") == 1
    assert value(port, "vlmq_api_rate_limited_total", tenant=tenant,
                 reason="quota_exceeded") == 1
    assert value(port, "vlmq_api_request_seconds_count", method="POST", route="/v1/jobs") >= 2


def test_metrics_are_served_on_loopback_only_by_default(metered: tuple[str, int]) -> None:
    # Labels carry tenant names; the API's own port may be public, the metrics' must not be.
    _, port = metered
    assert reachable("127.0.0.1", port)
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    assert not reachable(address, port)


def test_auth_can_be_turned_off_for_development_with_a_warning(stack: Stack) -> None:
    st = stack.with_env(auth_disabled="true")
    svc, base = start_api(st.env, st.log_dir, name="api-no-auth")
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            resp = client.post("/v1/jobs",
                               files={"image": ("a.png", png_bytes(64, 48), "image/png")},
                               data={"prompt": "no key", "model": "parked"})
            assert resp.status_code == 202, resp.text
            assert client.get(f"/v1/jobs/{resp.json()['id']}").status_code == 200
        assert "authentication is OFF" in svc.log_text()
    finally:
        svc.stop()
