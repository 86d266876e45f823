"""What Postgres spends per job on the hot path: statements, WAL bytes and CPU.

    .venv/bin/python -m tests.bench.postgres_cost        (or `make bench-postgres`)

A private cluster (tests/bench/pgcluster.py, pg_stat_statements preloaded) serves one API,
one control process and one echo worker, each connected as a role of its own, so every
statement and every backend's CPU is attributed to the process kind that caused it. The
echo engine answers at once, so the database is what is measured. Phases, in order, each
measured between two snapshots, with a CHECKPOINT before each so that the full-page images
a phase's first touches cost are counted (and shown apart):

1. submit: PGCOST_JOBS multipart uploads through the API from 8 client threads; no worker.
2. drain: an echo worker starts and claims, runs and records them all.
3. idle: PGCOST_IDLE_S seconds with all three processes up and nothing to do: the
   per-second cost of heartbeats, claim polling, the sweeper and the long-poll listener.
4. poll, finished: one `GET /v1/jobs/{id}?wait=30` per job, each already terminal.
5. poll, held: the worker stopped, PGCOST_HELD more jobs submitted (not measured), a
   long poll held on each, then the worker started; the polls are woken by NOTIFY.

Prints per-job figures, the top statements of each phase, and writes postgres_cost.json
under BENCH_OUT (bench-results/). docs/scaling.md turns the figures into capacity.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx

from tests.bench.clients import fan_out, submit_upload
from tests.bench.pgcluster import ROLES, PrivateCluster
from tests.bench.pgmeter import HARNESS, RECORD_KINDS, Cost, Meter
from tests.bench.stack import Stack, alive, stack
from tests.bench.workload import Workload
from tests.helpers import services
from tests.helpers.services import Service, start_api, start_control

JOBS = int(os.environ.get("PGCOST_JOBS", "2000"))
HELD = int(os.environ.get("PGCOST_HELD", "500"))
IDLE_S = float(os.environ.get("PGCOST_IDLE_S", "10"))
# 1: ANALYZE before each phase, as if autovacuum had caught up with the table's growth.
# Off by default: a queue that grows from empty in seconds is planned on stale statistics.
ANALYZE = os.environ.get("PGCOST_ANALYZE", "0") == "1"
CLIENT_THREADS = 8
# Distinct images cycled through: the database never sees pixels, only the image's
# metadata, so encoding thousands of PNGs would only slow the run down.
IMAGES = 64
OUT = Path(os.environ.get("BENCH_OUT", "bench-results"))
API, WORKER, CONTROL = ROLES


def role_env(env: dict[str, str], role: str) -> dict[str, str]:
    url = env["VLMQ_DATABASE_URL"].replace("://postgres@", f"://{role}@", 1)
    return {**env, "VLMQ_DATABASE_URL": url}


def make_roles(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        for role in ROLES:
            # Superusers of a throwaway cluster: the grants of a real deployment are not
            # what is measured, and migrations (run as postgres) own every table.
            conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")


def submit_all(base: str, headers: dict[str, str], w: Workload, model: str, n: int,
               pngs: list[bytes]) -> list[str]:
    return fan_out(base, headers, CLIENT_THREADS, range(n), lambda client, i: str(
        submit_upload(client, w, model, i, pngs[i % len(pngs)]).json()["id"]))


def poll_finished(base: str, headers: dict[str, str], ids: list[str]) -> None:
    chunks = [ids[k::CLIENT_THREADS] for k in range(CLIENT_THREADS)]

    def client_loop(chunk: list[str]) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            for job_id in chunk:
                job = client.get(f"/v1/jobs/{job_id}", params={"wait": "30"}).json()
                if job["finished_at"] is None:
                    raise RuntimeError(f"job {job_id} is not finished: {job['status']}")

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        for f in [pool.submit(client_loop, c) for c in chunks]:
            f.result()


async def hold_polls(base: str, headers: dict[str, str], ids: list[str],
                     held: threading.Event) -> int:
    """One `?wait=30` per job, all at once; each asks again until its job ends. Returns
    how many requests were made in all (a wait that lapsed costs a second one)."""
    requests = 0
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(90, pool=None)) as client:
        async def one(job_id: str) -> None:
            nonlocal requests
            while True:
                requests += 1
                job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": "30"})).json()
                if job["finished_at"] is not None:
                    return

        tasks = [asyncio.create_task(one(j)) for j in ids]
        await asyncio.sleep(2.0)  # every request reaches the API and parks on its job
        if any(t.done() for t in tasks):
            await asyncio.gather(*tasks)
            raise RuntimeError("a long poll returned before any worker ran")
        held.set()
        await asyncio.gather(*tasks)
    return requests


def wait_finished(meter: Meter, total: int, worker: Service, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while meter.scalar("SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL") < total:
        alive(worker)
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished in {timeout}s; see {worker.log_path}")
        time.sleep(0.1)


class Run:
    def __init__(self, st: Stack, meter: Meter, w: Workload) -> None:
        self.st, self.meter, self.w = st, meter, w
        self.costs: dict[str, tuple[Cost, float]] = {}
        self.sizes: dict[str, float] = {}

    def start_worker(self) -> Service:
        env = {**role_env(self.st.env, WORKER), "VLMQ_ENGINE": "echo"}
        worker = Service("worker-echo", ["worker"], env, self.st.log_dir)
        self.st.services.append(worker)
        return worker

    def measure(self, name: str, n: float, work) -> object:  # type: ignore[no-untyped-def]
        print(f"bench: {name}, {n}", file=sys.stderr, flush=True)
        if ANALYZE:
            self.meter.conn.execute("ANALYZE")
        self.meter.checkpoint()
        before = self.meter.snapshot()
        result = work()
        cost = self.meter.cost(before, self.meter.snapshot())
        self.costs[name] = (cost, n)
        return result


def run(w: Workload, log_dir: Path) -> tuple[dict[str, tuple[Cost, float]], dict[str, float],
                                             str]:
    cluster = PrivateCluster()
    cluster.start()
    try:
        make_roles(cluster.admin_url)
        # stack() makes its database on services.PG_ADMIN_URL: point it at this cluster.
        services.PG_ADMIN_URL = cluster.admin_url
        with stack(w, log_dir) as st:
            meter = Meter(cluster, st.settings.database_url)
            try:
                return (*phases(st, meter, w), cluster.version)
            finally:
                meter.close()
    finally:
        cluster.keep_log(log_dir / "postgres.log")
        cluster.destroy()


def phases(st: Stack, meter: Meter,
           w: Workload) -> tuple[dict[str, tuple[Cost, float]], dict[str, float]]:
    r = Run(st, meter, w)
    api, base = start_api(role_env(st.env, API), st.log_dir)
    st.services.append(api)
    st.services.append(start_control(role_env(st.env, CONTROL), st.log_dir))
    headers, model = st.headers, st.settings.model
    pngs = [w.png(60_000 + i) for i in range(IMAGES)]
    # Warm-up: the API's pools, caches and first-request imports, out of the figures.
    submit_all(base, headers, w, model, 32, pngs)
    ids = r.measure("submit", JOBS,
                    lambda: submit_all(base, headers, w, model, JOBS, pngs))
    worker = r.start_worker()
    r.measure("claim+record", JOBS + 32, lambda: wait_finished(meter, JOBS + 32, worker))
    r.measure("idle per second", IDLE_S, lambda: time.sleep(IDLE_S))
    r.measure("poll, finished", JOBS, lambda: poll_finished(base, headers, ids))
    st.services.remove(worker)
    worker.stop()
    held_ids = submit_all(base, headers, w, model, HELD, pngs)
    held = threading.Event()
    box: dict[str, int] = {}

    def held_phase() -> None:
        def client() -> None:
            box["requests"] = asyncio.run(hold_polls(base, headers, held_ids, held))

        t = threading.Thread(target=client)
        t.start()
        if not held.wait(120):
            raise RuntimeError("the long polls were not held")
        late = r.start_worker()
        wait_finished(meter, JOBS + 32 + HELD, late)
        t.join()

    r.measure("poll, held (woken by NOTIFY)", HELD, held_phase)
    print(f"bench: {box.get('requests')} long-poll requests for {HELD} held jobs",
          file=sys.stderr, flush=True)
    r.sizes = {k: float(meter.scalar(sql)) for k, sql in (  # type: ignore[arg-type]
        ("rows", "SELECT count(*) FROM jobs"),
        ("heap_bytes", "SELECT pg_table_size('jobs')"),
        ("index_bytes", "SELECT pg_indexes_size('jobs')"),
        ("indexes", "SELECT count(*) FROM pg_indexes WHERE tablename = 'jobs'"))}
    return r.costs, r.sizes


# --- report ---------------------------------------------------------------------------------

def kinds(cost: Cost) -> dict[str, int]:
    """pg_waldump's record counts under RECORD_KINDS' names ("+INIT" variants included)."""
    out = dict.fromkeys(RECORD_KINDS.values(), 0)
    for key, n in cost.wal.items():
        if key.startswith("n:"):
            kind = key[2:].split("+")[0]
            if kind in RECORD_KINDS:
                out[RECORD_KINDS[kind]] += n
    return out


def short(query: str, width: int = 110) -> str:
    return query if len(query) <= width else query[:width - 3] + "..."


def print_phase(name: str, cost: Cost, n: float, unit: str) -> dict[str, object]:
    wal = cost.wal["record_bytes"] + cost.wal["fpi_bytes"]
    roles = [*ROLES]
    print(f"\n== {name}: {n:g} {unit} in {cost.seconds:.1f} s")
    stmts = {role: cost.calls(role) / n for role in roles}
    txn = {role: cost.calls(role, txn=True) / n for role in roles}
    print("  statements per " + unit.rstrip("s") + ": " + ", ".join(
        f"{role[5:]} {stmts[role]:.2f} (of which BEGIN/COMMIT {txn[role]:.2f})"
        for role in roles if stmts[role]))
    nested = cost.calls(toplevel=False) / n
    print(f"  nested (trigger/function) statements: {nested:.2f}; "
          f"execution time {cost.exec_ms() / n:.3f} ms")
    print(f"  WAL bytes: {wal / n:.0f} (records {cost.wal['record_bytes'] / n:.0f}, "
          f"full-page images {cost.wal['fpi_bytes'] / n:.0f}); "
          f"WAL records {cost.wal['records'] / n:.1f}")
    by_rmgr: dict[str, int] = {}
    for key, v in cost.wal.items():
        if key.startswith("bytes:"):
            rmgr = key[6:].split("/")[0]
            by_rmgr[rmgr] = by_rmgr.get(rmgr, 0) + v
    if by_rmgr:
        print("  WAL bytes by kind: " + ", ".join(
            f"{r} {v / n:.0f}" for r, v in sorted(by_rmgr.items(), key=lambda x: -x[1])))
    k = kinds(cost)
    print("  written: " + ", ".join(f"{label} {v / n:.2f}" for label, v in k.items() if v))
    cpu = {o: v for o, v in cost.cpu_by_owner.items() if o != HARNESS and abs(v) >= 0.005}
    print(f"  Postgres CPU: {1000 * cost.cpu_work / n:.3f} ms ("
          + ", ".join(f"{o} {1000 * v / n:.3f}" for o, v in
                      sorted(cpu.items(), key=lambda x: -x[1])) + ")")
    top = [s for s in cost.statements if s.toplevel and not s.is_txn]
    print("  top statements by calls:")
    for s in sorted(top, key=lambda s: -s.calls)[:6]:
        print(f"    {s.calls / n:6.2f}/{unit.rstrip('s')} {s.exec_ms / max(s.calls, 1):7.3f} ms "
              f"{s.role[5:]:<7} {short(s.query)}")
    print("  top statements by total time:")
    for s in sorted(top, key=lambda s: -s.exec_ms)[:4]:
        print(f"    {s.exec_ms / n:7.3f} ms/{unit.rstrip('s')} ({s.calls} calls) "
              f"{s.role[5:]:<7} {short(s.query)}")
    return {
        "n": n, "seconds": cost.seconds,
        "statements": {r: stmts[r] for r in roles}, "txn_statements": txn,
        "nested_statements": nested, "exec_ms": cost.exec_ms() / n,
        "wal_bytes": wal / n, "wal_record_bytes": cost.wal["record_bytes"] / n,
        "wal_fpi_bytes": cost.wal["fpi_bytes"] / n, "written": {x: v / n for x, v in k.items()},
        "cpu_ms": 1000 * cost.cpu_work / n,
        "cpu_ms_by_owner": {o: 1000 * v / n for o, v in cpu.items()},
        "connections": cost.connections,
        "top": [asdict(s) for s in sorted(top, key=lambda s: -s.calls)[:10]],
    }


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores, {platform.machine()}"


def summary(out: dict[str, dict], costs: dict[str, tuple[Cost, float]]) -> dict[str, dict]:
    """Per-job figures of each hot-path step: submit and claim+record are the whole
    cluster's, net of the idle background (its rate times the phase's seconds); a poll's
    are the API's own."""
    idle = out["idle per second"]
    rows: dict[str, dict] = {}
    for key, label, role in (
            ("submit", "submit (multipart upload)", API),
            ("claim+record", "claim + record (echo worker)", WORKER),
            ("poll, finished", "long poll, job already finished", API),
            ("poll, held (woken by NOTIFY)", "long poll, held until the job ends", API)):
        cost, n = costs[key]
        f = out[key]
        own_cpu = f["cpu_ms_by_owner"].get(role, 0.0)
        if key.startswith("poll"):
            # A poll writes nothing; its phase's other WAL and CPU (the held polls' drain,
            # the sweeper) are not the poll's, so only the API's own statements and
            # backends count, the listener's included.
            wal = sum(s.wal_bytes for s in cost.statements if s.role == API) / n
            fpi, cpu = 0.0, own_cpu
        else:
            # The control process's sweeps cost per second, by the backlog they scan, not
            # per job: its backends are left out here and reported on their own.
            wal = f["wal_bytes"] - idle["wal_bytes"] * cost.seconds / n
            fpi = f["wal_fpi_bytes"]
            idle_rest = idle["cpu_ms"] - idle["cpu_ms_by_owner"].get(CONTROL, 0.0)
            cpu = (f["cpu_ms"] - f["cpu_ms_by_owner"].get(CONTROL, 0.0)
                   - idle_rest * cost.seconds / n)
        rows[key] = {"label": label, "statements": f["statements"][role],
                     "txn_statements": f["txn_statements"][role], "wal_bytes": wal,
                     "wal_fpi_bytes": fpi, "role_cpu_ms": own_cpu, "cpu_ms": cpu,
                     "control_cpu_ms_per_s": 1000 * cost.cpu_by_owner.get(CONTROL, 0.0)
                     / cost.seconds}
    return rows


def report(costs: dict[str, tuple[Cost, float]], version: str) -> dict[str, object]:
    units = {"idle per second": "seconds"}
    out: dict[str, object] = {"machine": machine(), "postgres": version,
                              "jobs": JOBS, "held": HELD, "analyze": ANALYZE}
    for name, (cost, n) in costs.items():
        out[name] = print_phase(name, cost, n, units.get(name, "jobs"))
    rows = summary(out, costs)  # type: ignore[arg-type]
    idle: dict = out["idle per second"]  # type: ignore[assignment]
    out["per_job"] = rows
    print(f"\n== per job, net of the idle background; {out['machine']}, PostgreSQL {version}"
          + ("; ANALYZE before each phase" if ANALYZE else ""))
    print(f"{'':40} {'statements':>10} {'BEGIN/END':>9} {'WAL bytes':>9} {'of it FPI':>9} "
          f"{'own ms':>7} {'PG CPU ms':>9}")
    for r in rows.values():
        print(f"{r['label']:40} {r['statements']:10.2f} {r['txn_statements']:9.2f} "
              f"{r['wal_bytes']:9.0f} {r['wal_fpi_bytes']:9.0f} {r['role_cpu_ms']:7.3f} "
              f"{r['cpu_ms']:9.3f}")
    hot = [rows["submit"], rows["claim+record"], rows["poll, held (woken by NOTIFY)"]]
    print(f"{'hot path: submit, claim+record, 1 poll':40} "
          f"{sum(r['statements'] for r in hot):10.2f} "
          f"{sum(r['txn_statements'] for r in hot):9.2f} {sum(r['wal_bytes'] for r in hot):9.0f} "
          f"{sum(r['wal_fpi_bytes'] for r in hot):9.0f} {sum(r['role_cpu_ms'] for r in hot):7.3f} "
          f"{sum(r['cpu_ms'] for r in hot):9.3f}")
    print("  (own ms: CPU of the backends of the process that made the request; PG CPU ms:\n"
          "   the whole cluster, WAL writer, checkpointer and autovacuum included, the control\n"
          "   process's backends left out: their cost is per second, below)")
    print("control process's backends, CPU ms per second: " + ", ".join(
        f"{key} {r['control_cpu_ms_per_s']:.0f}" for key, r in rows.items())
        + f", idle {idle['cpu_ms_by_owner'].get(CONTROL, 0.0):.0f}")  # type: ignore[union-attr]
    print("idle, per second: statements " + ", ".join(  # type: ignore[index]
        f"{r[5:]} {v:.2f}" for r, v in idle["statements"].items())  # type: ignore[index]
        + f"; WAL {idle['wal_bytes']:.0f} B; "  # type: ignore[index]
        f"Postgres CPU {idle['cpu_ms']:.2f} ms")  # type: ignore[index]
    print("connections per process at the end: " + ", ".join(
        f"{r[5:]} {c}" for r, c in costs["poll, held (woken by NOTIFY)"][0]
        .connections.items() if r in ROLES))
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    w = Workload(model_path=Path(".vlmq/models/tiny-qwen2-vl").resolve())
    start = time.monotonic()
    costs, sizes, version = run(w, OUT / "logs" / "postgres-cost")
    out = report(costs, version)
    out["jobs_table"] = sizes
    print(f"jobs table: {sizes['rows']:.0f} rows, {sizes['indexes']:.0f} indexes; per row "
          f"{sizes['heap_bytes'] / sizes['rows']:.0f} B of table, "
          f"{sizes['index_bytes'] / sizes['rows']:.0f} B of indexes")
    (OUT / "postgres_cost.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"\n{time.monotonic() - start:.0f} s in all; {OUT / 'postgres_cost.json'}")


if __name__ == "__main__":
    main()
