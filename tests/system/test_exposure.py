"""What the API tells anyone who reaches it: /readyz says ok or unavailable and nothing about
where its dependencies are; metrics listen on loopback unless told otherwise."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pytest

from tests.helpers.net import non_loopback_address, reachable
from tests.helpers.services import free_port, start_api
from tests.helpers.stack import Stack


def test_readyz_names_no_host_port_role_or_bucket_of_unreachable_dependencies(
    stack: Stack,
) -> None:
    db_port, broker_port, s3_port = free_port(), free_port(), free_port()
    bucket = f"secret-bucket-{uuid.uuid4().hex[:6]}"
    st = stack.with_env(
        database_url=f"postgresql://secret_role@127.0.0.1:{db_port}/secret_db",
        broker_url=f"redis://127.0.0.1:{broker_port}/0",
        s3_endpoint_url=f"http://127.0.0.1:{s3_port}",
        store_url=f"s3://{bucket}/img", s3_create_bucket="false",
    )
    svc, base = start_api(st.env, st.log_dir, name="api-readyz-down")
    try:
        for _ in range(2):
            resp = httpx.get(f"{base}/readyz", timeout=30)
            assert resp.status_code == 503
            assert resp.json() == {"ready": False, "checks": {
                "database": "unavailable", "broker": "unavailable", "store": "unavailable"}}
            for secret in ("127.0.0.1", str(db_port), str(broker_port), str(s3_port),
                           "secret_role", "secret_db", bucket, "redis", "postgres"):
                assert secret not in resp.text, (secret, resp.text)
        # The reasons are in the log, one line per dependency however often it is asked.
        deadline = time.monotonic() + 10
        while "the store is unavailable" not in svc.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = svc.log_text()
        for name in ("database", "broker", "store"):
            lines = re.findall(rf"readiness: the {name} is unavailable \(.+\)", log)
            assert len(lines) == 1, (name, log[-3000:])
    finally:
        svc.stop()


def test_readyz_is_ok_per_dependency_when_all_are_up(api: str) -> None:
    resp = httpx.get(f"{api}/readyz", timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ready": True, "checks": {"database": "ok", "broker": "ok",
                                                     "store": "ok"}}


def test_worker_metrics_listen_on_loopback_by_default() -> None:
    from shared.settings import Settings
    from worker.metrics import WorkerMetrics

    port = free_port()
    WorkerMetrics("exposure-test").serve(port, Settings(_env_file=None).metrics_host)
    assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    assert not reachable(address, port)
