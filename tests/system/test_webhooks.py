"""Signed webhook delivery, end to end: API, GPU worker, webhook worker, loopback receivers."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.helpers.images import png_bytes
from tests.helpers.services import Service, free_port, start_api, start_control, wait_terminal
from tests.helpers.stack import Stack
from tests.helpers.webhook_receiver import Received, Reply, receiver

NEW_SECRET = "whsec_" + base64.b64encode(b"n" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
WRONG_SECRET = "whsec_" + base64.b64encode(b"w" * 32).decode()
RECEIVER_HOST = "127.0.0.3"  # the one loopback address the development setting lets through
SCHEDULE = [0.3, 0.3, 0.3, 0.3, 0.3]  # six attempts per round
TIMEOUT = 1.5


@dataclass
class Hooks:
    stack: Stack
    api: str
    webhooks: Service

    def restart_control(self) -> None:
        self.webhooks = start_control(self.stack.env, self.stack.log_dir, name="control-2")


@pytest.fixture(scope="module")
def hooks(stack: Stack) -> Iterator[Hooks]:
    env = stack.with_env(
        webhook_secrets=json.dumps([NEW_SECRET, OLD_SECRET]),
        webhook_allow_http="true",
        webhook_allowed_networks=json.dumps([f"{RECEIVER_HOST}/32"]),
        webhook_retry_schedule=json.dumps(SCHEDULE),
        webhook_retry_jitter="0.1",
        webhook_timeout_seconds=str(TIMEOUT),
        webhook_poll_seconds="0.2",
        public_url="https://vlmq.example.test",
        metrics_port=str(free_port()),
    )
    api_svc, base = start_api(env.env, env.log_dir, name="api-webhooks")
    result = Hooks(env, base, start_control(env.env, env.log_dir))
    yield result
    result.webhooks.stop()
    api_svc.stop()


@pytest.fixture()
def hc(hooks: Hooks) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hooks.api, timeout=30, headers=hooks.stack.headers) as c:
        yield c


def submit(client: httpx.Client, url: str, model: str = "parked", prompt: str = "describe",
           **fields: str | list[str]) -> str:
    resp = client.post(
        "/v1/jobs",
        files={"image": ("a.png", png_bytes(64, 48), "image/png")},
        data={"prompt": prompt, "model": model, "max_tokens": "4", "webhook_url": url, **fields},
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def cancelled_job(client: httpx.Client, url: str, **fields: str | list[str]) -> str:
    """A job that reaches a terminal status at once, without a model: a cancelled one."""
    job_id = submit(client, url, **fields)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    return job_id


def deliveries(client: httpx.Client, job_id: str) -> list[dict]:
    resp = client.get(f"/v1/jobs/{job_id}/deliveries")
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def wait_delivery(client: httpx.Client, job_id: str, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = deliveries(client, job_id)
        if found and found[0]["status"] == status and all(
            a["finished_at"] for a in found[0]["history"]
        ):
            return found[0]
        time.sleep(0.1)
    raise TimeoutError(f"delivery of job {job_id} not {status} after {timeout}s: {found}")


def verified(secret: str, hit: Received) -> dict:
    return Webhook(secret).verify(hit.body, hit.headers)


def test_succeeded_job_is_signed_with_every_secret_and_verifies(
    hooks: Hooks, hc: httpx.Client, worker: Service
) -> None:
    with receiver(host=RECEIVER_HOST) as r:
        job_id = submit(hc, r.url(), model=hooks.stack.settings.model)
        job = wait_terminal(hc, job_id)
        assert job["status"] == "succeeded"
        [hit] = r.wait_for(1)
        # Both secrets sign during a rotation, so receivers holding either one verify.
        for secret in (NEW_SECRET, OLD_SECRET):
            payload = verified(secret, hit)
        with pytest.raises(WebhookVerificationError):
            verified(WRONG_SECRET, hit)
        tampered = Received(hit.path, hit.headers, hit.body.replace(b"succeeded", b"failed"),
                            hit.at)
        with pytest.raises(WebhookVerificationError):
            verified(NEW_SECRET, tampered)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job_id
    assert payload["data"]["result"] == job["result"]
    assert payload["data"]["url"] == f"https://vlmq.example.test/v1/jobs/{job_id}"
    assert payload["data"]["truncated"] is False
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    delivery = wait_delivery(hc, job_id, "succeeded")
    assert delivery["webhook_id"] == hit.headers["webhook-id"]
    assert delivery["event"] == "job.succeeded"
    assert [a["status_code"] for a in delivery["history"]] == [200]
    assert delivery["history"][0]["latency_ms"] >= 0


def test_failed_job_sends_job_failed(hooks: Hooks, hc: httpx.Client, worker: Service) -> None:
    # Under the API's character limit, over the model's context: fails in the worker.
    long_prompt = " ".join(f"word{i}" for i in range(1500))
    with receiver(host=RECEIVER_HOST) as r:
        job_id = submit(hc, r.url(), model=hooks.stack.settings.model, prompt=long_prompt)
        [hit] = r.wait_for(1, timeout=60)
    payload = verified(OLD_SECRET, hit)
    assert payload["type"] == "job.failed"
    assert payload["data"]["error"]["code"] == "prompt_too_long"
    assert payload["data"]["status"] == "failed" and payload["data"]["id"] == job_id


def test_failing_endpoint_gets_the_event_after_retries_with_one_webhook_id(
    hooks: Hooks, hc: httpx.Client
) -> None:
    script = [Reply(500), Reply(503), Reply(502, delay=0.1), Reply(200)]
    with receiver(host=RECEIVER_HOST, script=script) as r:
        job_id = cancelled_job(hc, r.url())
        hits = r.wait_for(4)
        delivery = wait_delivery(hc, job_id, "succeeded")
        time.sleep(1)  # nothing more arrives once it succeeded
        assert len(r.received) == 4
    assert {h.headers["webhook-id"] for h in hits} == {delivery["webhook_id"]}
    assert {h.body for h in hits} == {hits[0].body}  # the same event, byte for byte
    for hit in hits:
        assert verified(NEW_SECRET, hit)["type"] == "job.cancelled"
    assert delivery["attempts"] == 4
    assert [a["status_code"] for a in delivery["history"]] == [500, 503, 502, 200]
    assert [a["number"] for a in delivery["history"]] == [1, 2, 3, 4]
    assert delivery["delivered_at"] is not None
    assert hc.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    metrics = httpx.get(f"http://127.0.0.1:{hooks.stack.settings.metrics_port}/metrics").text
    assert 'vlmq_webhook_attempts_total{outcome="pending"}' in metrics
    assert 'vlmq_webhook_attempts_total{outcome="succeeded"}' in metrics
    assert "vlmq_webhook_attempt_seconds_count" in metrics


def test_410_gone_stops_retries(hc: httpx.Client) -> None:
    with receiver(host=RECEIVER_HOST, script=[Reply(410)]) as r:
        job_id = cancelled_job(hc, r.url())
        delivery = wait_delivery(hc, job_id, "disabled")
        time.sleep(1.5)  # several retry periods: nothing more is sent
        assert len(r.received) == 1
    assert delivery["attempts"] == 1
    assert delivery["next_attempt_at"] is None
    assert deliveries(hc, job_id)[0]["status"] == "disabled"


def test_timeout_counts_as_a_failed_attempt(hc: httpx.Client) -> None:
    with receiver(host=RECEIVER_HOST, script=[Reply(200, delay=TIMEOUT + 1.5)]) as r:
        job_id = cancelled_job(hc, r.url())
        delivery = wait_delivery(hc, job_id, "succeeded")
        assert len(r.received) == 2
    first, second = delivery["history"]
    assert first["status_code"] is None and "timed out" in first["error"]
    assert second["status_code"] == 200


def test_retry_after_is_honoured(hc: httpx.Client) -> None:
    script = [Reply(503, headers={"Retry-After": "2"}), Reply(200)]
    with receiver(host=RECEIVER_HOST, script=script) as r:
        job_id = cancelled_job(hc, r.url())
        first, second = r.wait_for(2)
        wait_delivery(hc, job_id, "succeeded")
    # The schedule alone would retry after about 0.3 s.
    assert second.at - first.at >= 1.9


def test_dead_endpoint_is_dead_lettered_then_replayed(hc: httpx.Client) -> None:
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind((RECEIVER_HOST, 0))
        port = probe.getsockname()[1]
    url = f"http://{RECEIVER_HOST}:{port}/hook"
    job_id = cancelled_job(hc, url)
    dead = wait_delivery(hc, job_id, "dead_lettered")
    assert dead["attempts"] == len(SCHEDULE) + 1
    assert all(a["status_code"] is None and a["error"] for a in dead["history"])
    listed = hc.get("/v1/deliveries", params={"status": "dead_lettered"}).json()["data"]
    assert dead["id"] in {d["id"] for d in listed}
    assert hc.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"  # still pollable

    with receiver(host=RECEIVER_HOST, port=port) as r:
        resp = hc.post(f"/v1/deliveries/{dead['id']}/redeliver")
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] == "pending"
        replayed = wait_delivery(hc, job_id, "succeeded")
        time.sleep(0.5)
        [hit] = r.received
    assert hit.headers["webhook-id"] == dead["webhook_id"]
    assert verified(NEW_SECRET, hit)["data"]["id"] == job_id
    assert replayed["attempts"] == len(SCHEDULE) + 2
    assert replayed["history"][-1]["status_code"] == 200
    assert hc.post(f"/v1/deliveries/{'0' * 32}/redeliver").status_code == 404


def test_redirect_is_not_followed(hc: httpx.Client) -> None:
    with receiver(host="127.0.0.1") as inside:
        with receiver(host=RECEIVER_HOST,
                      default=Reply(302, headers={"Location": inside.url("/admin")})) as r:
            job_id = cancelled_job(hc, r.url())
            delivery = wait_delivery(hc, job_id, "dead_lettered")
            assert len(r.received) == len(SCHEDULE) + 1
        assert inside.connections == 0
    assert {a["status_code"] for a in delivery["history"]} == {302}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "https://10.0.0.5/hook",
        "http://100.100.100.200/latest/meta-data/",
        "http://0.0.0.0:{port}/hook",
        "ftp://example.com/hook",
        "not a url",
    ],
)
def test_refused_urls_are_a_400_at_submit_and_nothing_connects(
    hc: httpx.Client, url: str
) -> None:
    with receiver(host="127.0.0.1") as inside:
        resp = hc.post(
            "/v1/jobs",
            files={"image": ("a.png", png_bytes(64, 48), "image/png")},
            data={"prompt": "p", "model": "parked", "webhook_url": url.format(port=inside.port)},
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "webhook_url_refused"
        assert inside.connections == 0


def test_webhook_fields_are_validated(hc: httpx.Client, client: httpx.Client) -> None:
    image = base64.b64encode(png_bytes(64, 48)).decode()
    body = {"image": {"base64": image}, "prompt": "p", "model": "parked"}
    bad = [
        {**body, "webhook_events": ["job.succeeded"]},  # events without a URL
        {**body, "webhook_url": f"http://{RECEIVER_HOST}:9/h", "webhook_events": ["job.done"]},
        {**body, "webhook_url": f"http://{RECEIVER_HOST}:9/h", "webhook_events": []},
        {**body, "webhook_url": 12},
    ]
    for payload in bad:
        resp = hc.post("/v1/jobs", json=payload)
        assert resp.status_code == 422, (payload, resp.text)
    long_url = f"http://{RECEIVER_HOST}:9/" + "a" * 3000
    assert hc.post("/v1/jobs", json={**body, "webhook_url": long_url}).status_code == 422
    # An API without a signing secret cannot send webhooks, and says so.
    resp = client.post("/v1/jobs", json={**body, "webhook_url": "https://93.184.215.14/h"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "webhooks_not_configured"
    assert hc.get(f"/v1/jobs/{'0' * 32}/deliveries").status_code == 404


def test_only_subscribed_events_are_sent_and_expiry_is_one(hc: httpx.Client) -> None:
    with receiver(host=RECEIVER_HOST) as r:
        quiet = cancelled_job(hc, r.url(), webhook_events=["job.succeeded", "job.failed"])
        expiring = submit(hc, r.url("/expired"), max_queue_seconds="1",
                          webhook_events="job.expired,job.cancelled")
        [hit] = r.wait_for(1, timeout=30)
        time.sleep(0.5)
        assert len(r.received) == 1
    assert deliveries(hc, quiet) == []
    payload = verified(NEW_SECRET, hit)
    assert (hit.path, payload["type"], payload["data"]["id"]) == ("/expired", "job.expired",
                                                                  expiring)
    assert payload["data"]["webhook_events"] == ["job.expired", "job.cancelled"]


def test_long_payload_is_cut_and_links_the_job(hc: httpx.Client, hooks: Hooks) -> None:
    prompt = "é" * 15_000  # 30 KB of UTF-8, over the 16 KB payload limit
    with receiver(host=RECEIVER_HOST) as r:
        job_id = cancelled_job(hc, r.url(), prompt=prompt)
        [hit] = r.wait_for(1)
    assert len(hit.body) <= hooks.stack.settings.webhook_max_payload_bytes
    data = verified(NEW_SECRET, hit)["data"]
    assert data["truncated"] is True
    assert data["prompt"].endswith("…") and prompt.startswith(data["prompt"][:-1])
    assert data["url"].endswith(f"/v1/jobs/{job_id}")
    assert hc.get(f"/v1/jobs/{job_id}").json()["prompt"] == prompt


def test_a_burst_of_events_arrives_once_each(hc: httpx.Client) -> None:
    n = 100
    with receiver(host=RECEIVER_HOST) as r:
        job_ids = [cancelled_job(hc, r.url()) for _ in range(n)]
        hits = r.wait_for(n, timeout=60)
        time.sleep(1)
        assert len(r.received) == n
    events = [verified(NEW_SECRET, h) for h in hits]
    assert sorted(e["data"]["id"] for e in events) == sorted(job_ids)
    lags = sorted(
        h.wall - datetime.fromisoformat(e["data"]["finished_at"]).timestamp()
        for h, e in zip(hits, events)
    )
    print(f"\n{n} events: finished -> received p50 {lags[n // 2] * 1000:.0f} ms, "
          f"max {lags[-1] * 1000:.0f} ms (poll every 0.2 s)")


def test_killing_the_webhook_worker_mid_delivery_loses_no_event(
    hooks: Hooks, hc: httpx.Client
) -> None:
    """Runs last in this module: it kills and replaces the module's webhook worker."""
    n = 10
    with receiver(host=RECEIVER_HOST, default=Reply(200, delay=1.0)) as r:
        job_ids = [cancelled_job(hc, r.url()) for _ in range(n)]
        assert r.arrived.wait(30)
        hooks.webhooks.kill()
        in_flight = len(r.received)
        hooks.restart_control()
        done = [wait_delivery(hc, job_id, "succeeded", timeout=60) for job_id in job_ids]
        delivered = {h.headers["webhook-id"] for h in r.received}
    assert delivered == {d["webhook_id"] for d in done}
    interrupted = [a for d in done for a in d["history"]
                   if a["error"] and a["error"].startswith("interrupted")]
    assert interrupted, done
    print(f"\n{in_flight} of {n} deliveries were in flight when the worker was killed; "
          f"{len(r.received)} requests for {n} events; {len(interrupted)} attempts interrupted")
