"""Outages answer 503 with Retry-After, never 500.

- A database restart under load: retrying with the same Idempotency-Key commits each
  logical submission exactly once. The restart hits a private PostgreSQL started for
  this module, not the shared one. An echo worker serves the clients' model throughout,
  so afterwards every accepted job must end: none is stranded by the restart.
- The broker down: jobs are still accepted (workers find them in Postgres).
- The object store down: submits are 503s; reads, which need only the database, work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest

from tests.helpers.images import png_bytes
from tests.helpers.private_pg import PrivatePostgres, server_binaries
from tests.helpers.services import RedisServer, free_port, start_api, start_worker, stop, wait_http
from tests.helpers.stack import Stack

CLIENTS = 4
BEFORE_RESTART_SECONDS = 3.0
AFTER_RESTART_SECONDS = 4.0
PARKED = "parked"  # no worker serves it, so accepted jobs stay queued
ECHO_MODEL = "outage-echo"


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    pg = PrivatePostgres(bin_dir)
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(scope="module")
def outage_stack(stack: Stack, private_pg: PrivatePostgres,
                 tmp_path_factory: pytest.TempPathFactory) -> Stack:
    st = stack.with_env(
        database_url=private_pg.url,
        store_url=f"file://{tmp_path_factory.mktemp('outage-objects')}",
        queue_prefix=f"vlmqoutage{uuid.uuid4().hex[:6]}",
        # Longer than the poll below waits: only a re-LISTENed listener can wake it.
        long_poll_fallback_seconds="60",
        accepted_models=json.dumps([PARKED, ECHO_MODEL]),
    )
    return st.migrate()


@dataclass
class Tally:
    """What the clients saw. `accepted` maps each Idempotency-Key that got a 2xx to its job."""

    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    accepted: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(base: str, headers: dict[str, str], name: str, stop: threading.Event,
                tally: Tally) -> None:
    """A good client: one key per logical submission, retried after Retry-After on 503."""
    image = png_bytes(64, 48, seed=hash(name) % 100)
    with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
        n = 0
        while not stop.is_set():
            key = f"{name}-{n}"
            n += 1
            while True:  # until this submission is accepted, even after `stop`
                try:
                    resp = client.post(
                        "/v1/jobs", headers={"Idempotency-Key": key},
                        files={"image": ("a.png", image, "image/png")},
                        data={"prompt": f"submission {key}", "max_tokens": "4",
                              "model": ECHO_MODEL},
                    )
                except httpx.TransportError:
                    with tally.lock:
                        tally.transport_errors += 1
                    time.sleep(0.5)
                    continue
                with tally.lock:
                    tally.statuses[resp.status_code] += 1
                if resp.status_code in (200, 202):
                    with tally.lock:
                        tally.accepted[key] = resp.json()["id"]
                    break
                if resp.status_code == 503:
                    time.sleep(float(resp.headers.get("retry-after", "1")))
                    continue
                return  # anything else is a failure the test reports


@dataclass(frozen=True)
class Outcome:
    rows_per_key: dict[str, int]  # rows in the jobs table per Idempotency-Key
    wrong_id: list[str]  # keys whose row is not the job the client was given
    not_terminal: list[str]  # accepted jobs not (yet) in a terminal status


def outcome_of(database_url: str, accepted: dict[str, str]) -> Outcome:
    """Reads back every accepted job. With a worker running, `not_terminal` after the
    queue drains is the count of stranded jobs."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT idempotency_key, id::text, status FROM jobs "
                            "WHERE idempotency_key IS NOT NULL").fetchall()
    per_key = Counter(key for key, _, _ in rows)
    by_key = {key: (job_id, status) for key, job_id, status in rows}
    wrong = [k for k, job_id in accepted.items() if by_key.get(k, ("", ""))[0] != job_id]
    terminal = {"succeeded", "failed", "cancelled", "expired"}
    pending = [k for k in accepted if k in by_key and by_key[k][1] not in terminal]
    return Outcome(rows_per_key=dict(per_key), wrong_id=wrong, not_terminal=pending)


def test_database_restart_under_load(outage_stack: Stack, private_pg: PrivatePostgres) -> None:
    echo = outage_stack.with_env(model=ECHO_MODEL, engine="echo", lease_seconds="5",
                                 heartbeat_seconds="1")
    worker = start_worker(echo.env, echo.log_dir, name="worker-outage")
    svc, base = start_api(outage_stack.env, outage_stack.log_dir, name="api-outage")
    try:
        stop = threading.Event()
        tally = Tally()
        clients = [threading.Thread(target=client_loop, args=(base, outage_stack.headers, f"c{i}", stop, tally))
                   for i in range(CLIENTS)]
        for thread in clients:
            thread.start()
        time.sleep(BEFORE_RESTART_SECONDS)
        private_pg.restart()
        time.sleep(AFTER_RESTART_SECONDS)
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in clients), "a client never got its job accepted"
        woken_after = _poll_woken_by_notify(base, outage_stack.headers, private_pg.url)
        deadline = time.monotonic() + 60
        while (stranded := outcome_of(private_pg.url, tally.accepted).not_terminal):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        alive = worker.proc.poll() is None
    finally:
        worker.stop()
        svc.stop()
    log = svc.log_text()

    print(f"\nstatuses {dict(tally.statuses)}, transport errors {tally.transport_errors}, "
          f"accepted {len(tally.accepted)}, NOTIFY wake after restart {woken_after:.2f}s")
    assert tally.statuses[500] == 0, log[-4000:]
    assert set(tally.statuses) <= {200, 202, 503}, tally.statuses
    assert tally.statuses[503] > 0, "the restart was not seen by any request"
    assert tally.transport_errors == 0
    assert "Traceback" not in log, log[-4000:]

    outcome = outcome_of(private_pg.url, tally.accepted)
    duplicates = {k: n for k, n in outcome.rows_per_key.items() if n != 1}
    assert duplicates == {}
    assert outcome.wrong_id == []
    # Each logical submission was retried until accepted, so every key has its one row.
    assert set(outcome.rows_per_key) == set(tally.accepted)
    # Whatever failed around the restart, every committed job was claimed and finished.
    print(f"stranded jobs: {len(stranded)}")
    assert stranded == [], f"{len(stranded)} accepted jobs never finished"
    assert alive, "the worker died with the database restart"


def _poll_woken_by_notify(base: str, headers: dict[str, str], database_url: str) -> float:
    """After the restart the listener has re-LISTENed: a job's end wakes its long poll."""
    with httpx.Client(base_url=base, timeout=60, headers=headers) as client:
        resp = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(64, 48), "image/png")},
                           data={"prompt": "after the restart", "model": PARKED})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]

        def finish() -> None:
            time.sleep(1.0)
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = now() "
                             "WHERE id = %s", (uuid.UUID(job_id),))

        finisher = threading.Thread(target=finish)
        finisher.start()
        started = time.monotonic()
        polled = client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
        waited = time.monotonic() - started
        finisher.join()
    assert polled.json()["status"] == "cancelled", polled.json()
    assert waited < 20, waited
    return waited


def test_broker_and_store_outages(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Private Redis and S3 servers, so stopping them disturbs no other test."""
    log_dir = tmp_path_factory.mktemp("outage-deps")
    broker = RedisServer(log_dir)
    broker.start()
    s3_port = free_port()
    s3 = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    svc = None
    try:
        s3_url = f"http://127.0.0.1:{s3_port}"
        wait_http(f"{s3_url}/moto-api/", s3, timeout=60)
        st = stack.with_env(broker_url=broker.url, s3_endpoint_url=s3_url,
                            store_url=f"s3://vlmq-outage-{uuid.uuid4().hex[:8]}/img",
                            queue_prefix=f"vlmqdeps{uuid.uuid4().hex[:6]}")
        svc, base = start_api(st.env, log_dir, name="api-deps-outage")
        _check_deps_outages(base, st.headers, broker, s3)
    finally:
        if svc is not None:
            svc.stop()
        stop(s3)
        if broker.proc is not None and broker.proc.poll() is None:
            broker.kill()
    assert svc is not None
    assert "Traceback" not in svc.log_text(), svc.log_text()[-4000:]


def _check_deps_outages(base: str, headers: dict[str, str], broker: RedisServer,
                        s3: subprocess.Popen[bytes]) -> None:
    def post(client: httpx.Client) -> httpx.Response:
        return client.post("/v1/jobs", files={"image": ("a.png", png_bytes(64, 48), "image/png")},
                           data={"prompt": "outage", "model": PARKED})

    with httpx.Client(base_url=base, timeout=60, headers=headers) as client:
        assert post(client).status_code == 202

        broker.kill()
        accepted = post(client)
        assert accepted.status_code == 202, accepted.text  # committed: workers poll Postgres
        job_id = accepted.json()["id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
        assert ready.json()["checks"]["broker"] != "ok"

        stop(s3)
        refused = post(client)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
