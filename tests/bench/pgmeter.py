"""What a private cluster did between two moments: statements by role, WAL, CPU by backend.

A snapshot reads pg_stat_statements, the WAL position and every cluster process's CPU
time; the difference of two is a phase's cost. The harness's own connection (the one that
takes the snapshots and waits for drains) is kept apart, so its reads do not count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg

from tests.bench.pgcluster import PrivateCluster

HARNESS = "harness"
EXITED = "exited backends"
# Transaction control: each is a round trip, but no work of its own.
TXN = ("begin", "commit", "rollback", "savepoint", "release")
# Read from pg_waldump's per-record table: what each job writes, in rows and index entries.
RECORD_KINDS = {
    "Heap/INSERT": "heap inserts", "Heap2/MULTI_INSERT": "heap multi-inserts",
    "Heap/UPDATE": "heap updates (not HOT)", "Heap/HOT_UPDATE": "heap HOT updates",
    "Heap/DELETE": "heap deletes", "Heap/LOCK": "row locks",
    "Btree/INSERT_LEAF": "index inserts", "Transaction/COMMIT": "commits",
}


@dataclass
class Statement:
    role: str
    query: str
    toplevel: bool
    calls: int = 0
    exec_ms: float = 0.0
    rows: int = 0
    wal_bytes: int = 0

    @property
    def is_txn(self) -> bool:
        return self.query.strip().lower().startswith(TXN)


@dataclass
class Snapshot:
    at: float
    lsn: str
    cpu_total: float
    cpu_live: dict[int, float]
    owner: dict[int, str]  # pid -> role (client backends) or backend_type
    statements: dict[tuple[int, int, bool], Statement]
    connections: dict[str, int]


@dataclass
class Cost:
    """One phase's cost; `per(n)` divides by the jobs or requests it served."""

    seconds: float
    statements: list[Statement]  # calls and totals within the phase, only those that ran
    wal: dict[str, int]  # PrivateCluster.wal_stats
    cpu_by_owner: dict[str, float]
    connections: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_work(self) -> float:
        """Cluster CPU seconds, the harness's own backend left out."""
        return sum(v for k, v in self.cpu_by_owner.items() if k != HARNESS)

    def calls(self, role: str | None = None, txn: bool | None = None,
              toplevel: bool = True) -> int:
        return sum(s.calls for s in self.statements
                   if s.toplevel == toplevel and (role is None or s.role == role)
                   and (txn is None or s.is_txn == txn))

    def exec_ms(self, role: str | None = None) -> float:
        return sum(s.exec_ms for s in self.statements
                   if s.toplevel and (role is None or s.role == role))


class Meter:
    def __init__(self, cluster: PrivateCluster, dsn: str) -> None:
        self.cluster = cluster
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.dbid = self.conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    def checkpoint(self) -> None:
        self.conn.execute("CHECKPOINT")

    def scalar(self, sql: str) -> object:
        return self.conn.execute(sql).fetchone()[0]

    def snapshot(self) -> Snapshot:
        lsn = str(self.scalar("SELECT pg_current_wal_lsn()"))
        cpu_total, cpu_live = self.cluster.cpu()
        owner: dict[int, str] = {}
        connections: dict[str, int] = {}
        for pid, user, kind in self.conn.execute(
                "SELECT pid, usename, backend_type FROM pg_stat_activity"):
            if pid == self.pid:
                owner[pid] = HARNESS
            elif kind == "client backend":
                owner[pid] = user or kind
                connections[owner[pid]] = connections.get(owner[pid], 0) + 1
            else:
                owner[pid] = kind
        statements = {}
        for userid, queryid, top, user, query, calls, ms, rows, wal in self.conn.execute(
                "SELECT s.userid, s.queryid, s.toplevel, r.rolname, s.query, s.calls,"
                " s.total_exec_time, s.rows, s.wal_bytes FROM pg_stat_statements s"
                " JOIN pg_roles r ON r.oid = s.userid WHERE s.dbid = %s", (self.dbid,)):
            statements[(userid, queryid, top)] = Statement(
                user if user != "postgres" else HARNESS, " ".join(query.split()), top,
                calls, ms, rows, int(wal))
        return Snapshot(time.time(), lsn, cpu_total, cpu_live, owner, statements, connections)

    def cost(self, a: Snapshot, b: Snapshot) -> Cost:
        statements = []
        for key, s in b.statements.items():
            before = a.statements.get(key)
            d = Statement(s.role, s.query, s.toplevel,
                          s.calls - (before.calls if before else 0),
                          s.exec_ms - (before.exec_ms if before else 0.0),
                          s.rows - (before.rows if before else 0),
                          s.wal_bytes - (before.wal_bytes if before else 0))
            if d.calls > 0 and d.role != HARNESS:
                statements.append(d)
        by_owner: dict[str, float] = {}
        accounted = 0.0
        for pid in set(a.cpu_live) | set(b.cpu_live):
            used = b.cpu_live.get(pid, 0.0) - a.cpu_live.get(pid, 0.0)
            if pid not in b.cpu_live:
                continue  # exited: its time moved into the postmaster's children, below
            name = b.owner.get(pid) or a.owner.get(pid) or "postmaster child"
            by_owner[name] = by_owner.get(name, 0.0) + used
            accounted += used
        by_owner[EXITED] = (b.cpu_total - a.cpu_total) - accounted
        return Cost(b.at - a.at, statements, self.cluster.wal_stats(a.lsn, b.lsn), by_owner,
                    b.connections)
