"""`vlmq flower` must come up on the real Redis broker, since docker-compose runs it that way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.services import REDIS_URL, Service, free_port, wait_http


@pytest.fixture()
def flower(tmp_path: Path) -> Iterator[tuple[Service, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    env["VLMQ_BROKER_URL"] = REDIS_URL
    port = free_port()
    # Extra arguments pass through to Flower; loopback only, since this is a test.
    svc = Service("flower", ["flower", "--port", str(port), "--address=127.0.0.1"], env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthcheck", svc.proc, timeout=60)
        yield svc, base
    finally:
        svc.stop()


def test_flower_serves_dashboard_and_healthcheck(flower: tuple[Service, str]) -> None:
    svc, base = flower
    health = httpx.get(f"{base}/healthcheck", timeout=10)
    assert health.status_code == 200, svc.log_text()[-2000:]
    assert health.text == "OK"
    page = httpx.get(f"{base}/", timeout=30)
    assert page.status_code == 200, svc.log_text()[-2000:]
    assert "Flower" in page.text
    assert "127.0.0.1:6379/0" in svc.log_text()  # the broker came from VLMQ_BROKER_URL


def test_flower_stops_on_terminate(flower: tuple[Service, str]) -> None:
    svc, _ = flower
    svc.proc.terminate()
    assert svc.proc.wait(timeout=30) is not None
