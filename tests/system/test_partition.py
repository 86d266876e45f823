"""Across hosts: a network partition during a drain, on namespaces this module makes.

Four network namespaces on one bridge (tests/helpers/netns.py): the hub runs a private
PostgreSQL, Redis (on an address of its own), a moto S3 server and the webhook receiver;
`api` runs the API and `vlmq control`; `w1` and `w2` run an echo worker each. The
submitting client and the checks run on the hub too, so every byte of the test crosses
the test's own links or a loopback, and the machine's shared Postgres and Redis are not
touched.

- A link cut longer than the lease: while 2,000 jobs drain, w1's link goes silent. Its
  leases lapse, the control process's sweeper requeues its jobs and w2 runs them; when
  the link returns, w1's results for them are refused by fencing. Every job succeeds
  once, and each gets one job.succeeded webhook (one webhook-id).
- Redis cut off from w2 alone (silently: its packets to Redis go nowhere): w2 no longer
  hears wake-ups, and still claims its share of a drain through its own poll of Postgres.
  Its upkeep beat (lease renewals, its row in the registry) goes on meanwhile: it needs
  Postgres alone.

Ports are fixed: each namespace has its own. Skipped without root or iproute2.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import psycopg
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from tests.helpers import netns
from tests.helpers.images import png_bytes
from tests.helpers.netns import Host, Network
from tests.helpers.private_pg import PrivatePostgres, server_binaries
from tests.helpers.services import Service, stop, wait_http
from tests.helpers.stack import Stack, make_stack
from tests.helpers.webhook_receiver import Receiver

T = TypeVar("T")
MODEL = "partition-echo"
JOBS = 2000
POLL_JOBS = 400
# Short leases keep the cut short: it must outlast the lease (plus a sweep) to matter.
LEASE_SECONDS = 3
SWEEP_SECONDS = 0.5
MAX_TOKENS = 8  # the echo engine takes MAX_TOKENS steps per job...
STEP_MS = 50  # ...of this long: 0.4 s in the engine, so a worker always holds jobs there
SECRET = "whsec_" + base64.b64encode(b"p" * 32).decode()
PG_PORT, REDIS_PORT, S3_PORT, API_PORT, METRICS_PORT = 5432, 6379, 5000, 8000, 9100
TERMINAL = ("succeeded", "failed", "cancelled", "expired")
# Jobs run again after a reap; and what is still to do for the reap: a requeued job (one
# attempt made, queued again), a lapsed lease not swept yet, a second attempt still going.
REAPED_SO_FAR = """
    SELECT count(*) FILTER (WHERE attempts > 1),
           count(*) FILTER (WHERE status = 'queued' AND attempts > 0),
           count(*) FILTER (WHERE status = 'running' AND lease_expires_at < now()),
           count(*) FILTER (WHERE status = 'running' AND attempts > 1)
    FROM jobs
"""


class HostService(Service):
    """A `vlmq <command>` child process running inside one host's namespace."""

    def __init__(self, host: Host, name: str, args: list[str], env: dict[str, str],
                 log_dir: Path) -> None:
        self.name = name
        self.host = host
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = host.popen([sys.executable, "-m", "shared.cli", *args], stdout=self._log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)


@dataclass
class Site:
    net: Network
    api_host: Host
    w1: Host
    w2: Host
    redis_address: str
    stack: Stack
    db_url: str
    base: str
    receiver: Receiver
    control: HostService
    workers: dict[str, HostService] = field(default_factory=dict)

    @property
    def hub(self) -> Host:
        return self.net.hub

    def sql(self, query: str, *params: object) -> list[tuple]:
        with netns.entered(self.hub.netns), psycopg.connect(self.db_url) as conn:
            return conn.execute(query, params).fetchall()

    def _metrics(self, host: Host) -> list[Metric]:
        """A worker's metrics, read on its host's loopback (it serves them there only)."""
        with netns.entered(host.netns):
            text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text
        return list(text_string_to_metric_families(text))

    def worker_counts(self, host: Host) -> dict[str, float]:
        """The worker's vlmq_jobs_finished_total by outcome."""
        counts: dict[str, float] = defaultdict(float)
        for family in self._metrics(host):
            if family.name == "vlmq_jobs_finished":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        counts[sample.labels["outcome"]] += sample.value
        return counts

    def worker_gauge(self, host: Host, name: str) -> float:
        return sum(sample.value for family in self._metrics(host) if family.name == name
                   for sample in family.samples)


def _site_env(stack: Stack, site_net: Network, redis_address: str, s3_url: str) -> Stack:
    return stack.with_env(
        broker_url=f"redis://{redis_address}:{REDIS_PORT}/0",
        s3_endpoint_url=s3_url,
        store_url=f"s3://vlmq-partition-{uuid.uuid4().hex[:8]}/uploads",
        model=MODEL,
        engine="echo",
        echo_step_ms=str(STEP_MS),
        max_num_seqs="16",
        max_batch_size="16",
        max_in_flight="32",
        accepted_models=json.dumps([MODEL]),  # accepted while a worker is cut off too
        lease_seconds=str(LEASE_SECONDS),
        heartbeat_seconds="1",
        sweep_seconds=str(SWEEP_SECONDS),
        claim_poll_seconds="0.5",
        retry_backoff_seconds="0.1",
        shutdown_grace_seconds="1",
        webhook_secrets=json.dumps([SECRET]),
        webhook_allow_http="true",
        webhook_allowed_networks=json.dumps([str(site_net.subnet)]),
        webhook_retry_schedule=json.dumps([0.5, 1, 2]),
        webhook_poll_seconds="0.2",
        webhook_concurrency="8",
        metrics_port=str(METRICS_PORT),
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"network namespaces are unavailable here ({reason}); this test needs "
                    "root and iproute2's `ip netns`")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    netns.remove_leftovers()
    log_dir = tmp_path_factory.mktemp("partition")
    net = Network()
    pg: PrivatePostgres | None = None
    others: list[subprocess.Popen[bytes]] = []
    services: list[Service] = []
    receiver: Receiver | None = None
    try:
        api_host, w1, w2 = net.add_host("api"), net.add_host("w1"), net.add_host("w2")
        redis_address = net.add_hub_address()
        bin_dir = server_binaries()
        if bin_dir is None:
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
        # A throwaway database: durability buys nothing here and costs the shared CPUs.
        # A client cut off between a statement and its COMMIT leaves its session idle in a
        # transaction, holding row locks that would stall the sweeper for the whole cut;
        # the timeout ends such sessions, as a production server should be set to.
        pg = PrivatePostgres(
            bin_dir, home=net.temp_dir("pg"), address=net.hub.address, port=PG_PORT,
            clients=str(net.subnet), wrap=net.hub.wrap, settings={
                "max_connections": "300", "fsync": "off", "synchronous_commit": "off",
                "full_page_writes": "off",
                "idle_in_transaction_session_timeout": str(LEASE_SECONDS * 1000)})
        pg.start()
        others.append(net.hub.popen(
            ["redis-server", "--bind", redis_address, "--port", str(REDIS_PORT),
             "--protected-mode", "no", "--save", "", "--appendonly", "no",
             "--logfile", str(log_dir / "redis.log")]))
        with (log_dir / "moto.log").open("wb") as moto_log:
            others.append(net.hub.popen(
                [sys.executable, "-m", "moto.server", "-H", net.hub.address, "-p", str(S3_PORT)],
                stdout=moto_log, stderr=subprocess.STDOUT))
        s3_url = f"http://{net.hub.address}:{S3_PORT}"
        with netns.entered(net.hub.netns):
            wait_http(f"{s3_url}/moto-api/", others[-1], timeout=60)
            receiver = Receiver(host=net.hub.address)
        base_stack = make_stack(pg.url, s3_url, Path("unused-model"), log_dir)
        st = _site_env(base_stack, net, redis_address, s3_url)
        with netns.entered(net.hub.netns):
            st = st.migrate()
        # Control first, so it holds the sweeper's lock: a worker holding it would take the
        # lock with it into the partition (Postgres keeps a silent client's session).
        control = HostService(api_host, "control", ["control"], st.env, log_dir)
        services.append(control)
        control.wait_for_log(" ready.", timeout=60)
        control.wait_for_log("this process is the sweeper now", timeout=30)
        base = f"http://{api_host.address}:{API_PORT}"
        site = Site(net, api_host, w1, w2, redis_address, st, pg.url, base, receiver, control)
        api_env = st.with_env(api_host=api_host.address).env
        api = HostService(api_host, "api", ["api", "--port", str(API_PORT)], api_env, log_dir)
        services.append(api)
        with netns.entered(net.hub.netns):
            wait_http(f"{base}/healthz", api.proc, timeout=60)
        for host in (w1, w2):
            worker = HostService(host, f"worker-{host.role}", ["worker"], st.env, log_dir)
            services.append(worker)
            site.workers[host.role] = worker
        for worker in site.workers.values():
            worker.wait_for_log(" ready.", timeout=120)
        yield site
    finally:
        for svc in services:
            svc.proc.terminate()
        for svc in services:
            try:
                svc.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
            svc._log.close()
        for proc in others:
            stop(proc)
        if receiver is not None:
            receiver.close()
        if pg is not None:
            pg.destroy()
        net.destroy()


def submit_all(site: Site, n: int, label: str) -> list[str]:
    """Submits n jobs over HTTP from the hub, eight at a time; returns their ids."""
    image = base64.b64encode(png_bytes(64, 48)).decode()
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=site.base, timeout=60,
                                        headers=site.stack.headers)
        return local.client

    def submit(i: int) -> str:
        resp = client().post("/v1/jobs", json={
            "prompt": f"{label} {i}", "model": MODEL, "max_tokens": MAX_TOKENS,
            "image": {"base64": image}, "webhook_url": site.receiver.url(f"/{label}"),
        })
        assert resp.status_code == 202, resp.text
        return resp.json()["id"]

    with ThreadPoolExecutor(8, initializer=netns.enter, initargs=(site.hub.netns,)) as pool:
        return list(pool.map(submit, range(n)))


def wait_until(check: Callable[[], T], timeout: float, what: str, every: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout}s")
        time.sleep(every)


def statuses(site: Site, ids: list[str]) -> Counter[str]:
    rows = site.sql("SELECT status, count(*) FROM jobs WHERE id = ANY(%s::uuid[]) GROUP BY 1",
                    ids)
    return Counter({status: n for status, n in rows})


def check_webhooks(site: Site, label: str, ids: list[str]) -> dict[str, int]:
    """Every job got exactly one job.succeeded event (one webhook-id), signed, delivered
    once; returns each job's attempts as its webhook told them."""
    delivered = ("SELECT count(*) FROM webhook_deliveries "
                 "WHERE status = 'succeeded' AND job_id = ANY(%s::uuid[])")
    wait_until(lambda: site.sql(delivered, ids)[0][0] == len(ids), 60,
               f"{label}: webhooks not all delivered")
    hits = [h for h in list(site.receiver.received) if h.path == f"/{label}"]
    by_id: dict[str, set[str]] = defaultdict(set)  # webhook-id -> job ids
    events: dict[str, set[str]] = defaultdict(set)  # job id -> webhook-ids
    attempts: dict[str, int] = {}
    hook = Webhook(SECRET)
    for hit in hits:
        payload = hook.verify(hit.body, hit.headers)
        assert payload["type"] == "job.succeeded", payload
        job = payload["data"]
        by_id[hit.headers["webhook-id"]].add(job["id"])
        events[job["id"]].add(hit.headers["webhook-id"])
        attempts[job["id"]] = job["attempts"]
    assert {k: v for k, v in by_id.items() if len(v) != 1} == {}, "a webhook-id for two jobs"
    # Standard Webhooks allow redelivery of an id; a receiver that answers at once needs none.
    repeated = Counter(h.headers["webhook-id"] for h in hits) - Counter(by_id.keys())
    assert not repeated, f"delivered more than once: {repeated}"
    assert {k: v for k, v in events.items() if len(v) != 1} == {}, "a job with two events"
    assert set(events) == set(ids)
    rows = site.sql("SELECT job_id::text, count(*), bool_and(status = 'succeeded') "
                    "FROM webhook_deliveries WHERE job_id = ANY(%s::uuid[]) GROUP BY 1", ids)
    assert len(rows) == len(ids) and all(n == 1 and ok for _, n, ok in rows)
    print(f"{label}: {len(hits)} webhook requests for {len(ids)} events")
    return attempts


def reap_settled(site: Site) -> tuple[int, ...] | None:
    """REAPED_SO_FAR once some jobs were run again and nothing of the reap is left to do."""
    row = site.sql(REAPED_SO_FAR)[0]
    return row if row[0] > 0 and row[1:] == (0, 0, 0) else None


def test_link_cut_longer_than_the_lease(site: Site) -> None:
    started = time.monotonic()
    submitted: list[str] = []
    failure: list[BaseException] = []

    def submitter() -> None:
        try:
            submitted.extend(submit_all(site, JOBS, "cut"))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=submitter)
    thread.start()
    try:
        # Cut a fifth into the drain, at a moment w1 has jobs inside its engine.
        wait_until(lambda: site.sql("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
                   [0][0] >= JOBS // 5, 120, "the drain did not start")
        wait_until(lambda: site.worker_gauge(site.w1, "vlmq_engine_in_flight") > 0, 30,
                   "w1 holds no job", every=0.05)
        before = site.worker_counts(site.w1)
        site.net.cut(site.w1)
        cut_at = time.monotonic()
        try:
            # Past the lease and a sweep, then until w2 has run every job the sweeper took
            # back: while w1 is silent, nobody but w2 can write a success.
            time.sleep(LEASE_SECONDS + SWEEP_SECONDS + 1)
            wait_until(lambda: reap_settled(site), 30, "w1's jobs were not reaped and rerun")
            done_in_cut = {r[0] for r in site.sql(
                "SELECT id::text FROM jobs WHERE attempts > 1 AND status = 'succeeded'")}
        finally:
            site.net.restore(site.w1)
        print(f"\ncut w1 at {cut_at - started:.1f}s for {time.monotonic() - cut_at:.1f}s; "
              f"w2 ran {len(done_in_cut)} of its jobs again meanwhile")
    finally:
        thread.join()
    assert not failure, failure
    assert len(submitted) == JOBS
    wait_until(lambda: sum(statuses(site, submitted)[s] for s in TERMINAL) == JOBS, 120,
               "jobs not finished", every=0.5)
    drained = time.monotonic() - started
    # w1's results for the reaped jobs reach Postgres once its connections retransmit.
    wait_until(lambda: site.worker_counts(site.w1)["discarded"] > before["discarded"], 60,
               "w1 never sent its late results")
    print(f"drained in {drained:.1f}s")

    assert statuses(site, submitted) == Counter(succeeded=JOBS)
    attempts = dict(site.sql("SELECT id::text, attempts FROM jobs WHERE id = ANY(%s::uuid[])",
                             submitted))
    reaped = {job_id for job_id, n in attempts.items() if n > 1}
    assert set(attempts.values()) <= {1, 2}, Counter(attempts.values())
    # The reaped jobs are exactly those w2 finished while w1 could not write.
    assert reaped and reaped == done_in_cut, (len(reaped), len(done_in_cut))
    w1, w2 = site.worker_counts(site.w1), site.worker_counts(site.w2)
    print(f"w1 {dict(w1)}; w2 {dict(w2)}")
    # Each success was written once, by one worker (a worker counts what its fenced UPDATE
    # moved), and w1's late results for reaped jobs were refused.
    assert w1["succeeded"] + w2["succeeded"] == JOBS
    assert 0 < w1["discarded"] - before["discarded"] <= len(reaped)
    assert "results discarded: the jobs were cancelled or taken over" in \
        site.workers["w1"].log_text()
    assert "lapsed jobs requeued" in site.control.log_text()
    hook_attempts = check_webhooks(site, "cut", submitted)
    # Each reaped job's one event is of its second attempt: the first never ended it.
    assert {job_id for job_id, n in hook_attempts.items() if n > 1} == reaped


def test_worker_beats_without_redis(site: Site) -> None:
    """Redis cut off from w2 for twice the lease: its upkeep beat (lease renewals, its row
    in the registry) must go on, as it needs only Postgres."""
    pid = site.workers["w2"].proc.pid

    def silent() -> float:
        """Seconds since w2's last beat (its worker id holds its pid)."""
        [(seconds,)] = site.sql("SELECT extract(epoch from now() - last_seen_at) FROM workers "
                                "WHERE id LIKE %s", f"%:{pid}:%")
        return float(seconds)

    wait_until(lambda: silent() < 1.5, 30, "w2 does not beat even with Redis")
    site.net.strand(site.w2, site.redis_address)
    try:
        time.sleep(2 * LEASE_SECONDS)
        since = silent()
    finally:
        site.net.unstrand(site.w2, site.redis_address)
    print(f"\nw2's last beat {since:.1f}s before the end of a {2 * LEASE_SECONDS}s cut")
    assert since < LEASE_SECONDS


def test_redis_cut_from_a_worker_host(site: Site) -> None:
    before = site.worker_counts(site.w2)
    site.net.strand(site.w2, site.redis_address)
    try:
        ids = submit_all(site, POLL_JOBS, "poll")
        wait_until(lambda: statuses(site, ids)["succeeded"] == POLL_JOBS, 120,
                   "jobs not finished with Redis cut off from w2", every=0.5)
        after = site.worker_counts(site.w2)
    finally:
        site.net.unstrand(site.w2, site.redis_address)
    took = after["succeeded"] - before["succeeded"]
    attempts = Counter(n for (n,) in site.sql(
        "SELECT attempts FROM jobs WHERE id = ANY(%s::uuid[])", ids))
    print(f"\nw2, without Redis, ran {took:.0f} of {POLL_JOBS} jobs through its poll; "
          f"attempts {dict(attempts)}")
    assert "waiting for wake-ups failed" in site.workers["w2"].log_text(), "Redis was not cut"
    # w1 still has its wake-ups; w2's share shows its claims went on without them.
    assert took >= POLL_JOBS // 5, "w2 stopped claiming without its wake-ups"
    check_webhooks(site, "poll", ids)


def test_the_sweeper_moves_on_when_its_host_goes_silent(site: Site) -> None:
    """The control process holds the sweeper's lock; its host's link is cut. Postgres
    probes the lock's silent session (shared/exclusive.py), ends it, and a worker takes the
    lock and sweeps; when the link returns, the control process finds its lock gone."""
    holder = "this process is the sweeper now"
    assert all(holder not in w.log_text() for w in site.workers.values())
    site.net.cut(site.api_host)
    started = time.monotonic()
    try:
        wait_until(lambda: any(holder in w.log_text() for w in site.workers.values()), 40,
                   "no worker took the sweeper's lock from the silent control process")
        took = time.monotonic() - started
    finally:
        site.net.restore(site.api_host)
    print(f"\na worker took the sweeper's lock {took:.1f}s after the control host went silent")
    wait_until(lambda: "sweeper: the lock was lost" in site.control.log_text()
               or "sweeper: lock unavailable" in site.control.log_text(), 40,
               "the control process did not notice it lost the lock")
    assert site.control.proc.poll() is None
