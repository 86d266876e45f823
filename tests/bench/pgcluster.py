"""A private PostgreSQL cluster for measuring what the database itself spends per job.

The shared server carries every other test and bench at once, so its counters and its
processes' CPU would mix their work with ours. This one (initdb + pg_ctl in a temporary
folder, as the postgres user when run as root) preloads pg_stat_statements and lives only
for the run; the machine's own Postgres configuration is never touched.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psutil

from tests.helpers.private_pg import PrivatePostgres, server_binaries

# Each vlmq process connects as a role of its own, so pg_stat_statements (keyed by user)
# and pg_stat_activity (usename) attribute statements and backends to the process kind.
ROLES = ("vlmq_api", "vlmq_worker", "vlmq_control")

SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements,auto_explain",
    # The plan of any statement slower than this goes to the server log, which is kept
    # (PrivateCluster.keep_log): a slow statement in the figures comes with its reason.
    "auto_explain.log_min_duration": "50ms",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "10000",
    "track_io_timing": "on",
    # No checkpoint falls inside a phase unless the bench asks for one, and the WAL of a
    # whole run stays on disk for pg_waldump to read back.
    "checkpoint_timeout": "1h",
    "max_wal_size": "8GB",
    "min_wal_size": "1GB",
    "max_connections": "300",
}


class PrivateCluster(PrivatePostgres):
    """A private cluster with the statistics extensions loaded (SETTINGS), read for CPU and
    WAL besides."""

    def __init__(self) -> None:
        bin_dir = server_binaries()
        if bin_dir is None:
            raise SystemExit("no PostgreSQL server binaries under /usr/lib/postgresql")
        super().__init__(bin_dir, home=Path(tempfile.mkdtemp(prefix="vlmq-pgcost-")),
                         settings=SETTINGS)
        self.admin_url = self.url

    def postmaster(self) -> psutil.Process:
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return psutil.Process(pid)

    def cpu(self) -> tuple[float, dict[int, float]]:
        """CPU seconds of the whole cluster so far, and of each live child by pid.

        The postmaster reaps its children, so its children_* times hold every backend that
        already exited (a pool's overflow connection, a worker's short-lived engine)."""
        master = self.postmaster()
        t = master.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        live: dict[int, float] = {}
        for child in master.children():
            try:
                c = child.cpu_times()
            except psutil.Error:
                continue
            live[child.pid] = c.user + c.system
            total += live[child.pid]
        return total, live

    def wal_stats(self, start_lsn: str, end_lsn: str) -> dict[str, int]:
        """WAL between two LSNs from pg_waldump: "records", "record_bytes" and
        "fpi_bytes" (full-page images) in all, and "n:<type>" and "bytes:<type>" for each
        record type written ("Heap/INSERT", "Btree/INSERT_LEAF", ...)."""
        out: dict[str, int] = {"records": 0, "record_bytes": 0, "fpi_bytes": 0}
        if start_lsn == end_lsn:
            return out
        text = self.run("pg_waldump", "-p", str(self.data / "pg_wal"), "-s", start_lsn,
                         "-e", end_lsn, "--stats=record")
        for line in text.splitlines():
            # Type  N  (%)  Record size  (%)  FPI size  (%)  Combined size  (%)
            nums = [p for p in line.split()[1:] if p.isdigit()]
            if len(nums) < 4:
                continue
            if line.startswith("Total"):
                out.update(records=int(nums[0]), record_bytes=int(nums[1]),
                           fpi_bytes=int(nums[2]))
            elif int(nums[0]) > 0:
                kind = line.split()[0]
                out[f"n:{kind}"] = int(nums[0])
                out[f"bytes:{kind}"] = int(nums[3])
        return out

    def keep_log(self, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.log_path, dest)
