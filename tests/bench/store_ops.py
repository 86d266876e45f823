"""What one object costs the process that moves it: CPU per PUT and per GET of a 150 KB image
through the store the API and the worker use, against a moto S3 server, with boto3 beside it
for reference. The server's own CPU is counted apart: it is a stand-in on the same cores.

    .venv/bin/python -m tests.bench.store_ops
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from shared.settings import StoreSettings
from shared.storage import make_store, s3_client
from tests.bench.stack import moto_pid
from tests.helpers.services import moto_server

OBJECT_BYTES = 150_000
OPS = int(os.environ.get("BENCH_STORE_OPS", "1000"))
ROUNDS = 5
WARM_UP = 20
# Keys are reused in a ring, so the server's memory does not grow with the op count.
RING = 50


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _per_op(op: Callable[[str], object], tag: str, server: psutil.Process) -> dict[str, float]:
    """Per op, the median over ROUNDS rounds: CPU time is counted in scheduler ticks, and
    a round that a stray process interrupts should not decide the figure."""
    for i in range(WARM_UP):
        op(f"warm/{tag}/{i}")
    rounds = []
    per_round = max(1, OPS // ROUNDS)
    for _ in range(ROUNDS):
        cpu, server_cpu, wall = _process_cpu(), server.cpu_times(), time.perf_counter()
        for i in range(per_round):
            op(f"bench/{tag}/{i % RING}")
        after = server.cpu_times()
        rounds.append({
            "client_cpu_ms": 1000 * (_process_cpu() - cpu) / per_round,
            "server_cpu_ms": 1000 * (after.user + after.system - server_cpu.user
                                     - server_cpu.system) / per_round,
            "wall_ms": 1000 * (time.perf_counter() - wall) / per_round,
        })
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def measure_store_ops(log_dir: Path) -> dict[str, dict[str, float]]:
    """{"vlmq_put": {...}, "vlmq_get": ..., "boto3_put": ..., "boto3_get": ...}, in ms per op."""
    log_dir.mkdir(parents=True, exist_ok=True)
    data = os.urandom(OBJECT_BYTES)
    with moto_server(log_dir) as endpoint:
        server = psutil.Process(moto_pid(endpoint))
        settings = StoreSettings(store_url=f"s3://vlmq-bench-{uuid.uuid4().hex[:8]}/images",
                                 s3_endpoint_url=endpoint, s3_access_key_id="bench",
                                 s3_secret_access_key="bench")
        store = make_store(settings)
        boto = s3_client(settings)
        bucket, prefix = settings.store_url.removeprefix("s3://").split("/", 1)

        def boto_put(key: str) -> object:
            return boto.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data,
                                   ContentType="image/png")

        def boto_get(key: str) -> bytes:
            return boto.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()

        print(f"bench: object store, {OPS} PUTs and GETs of {OBJECT_BYTES // 1000} KB per client",
              file=sys.stderr, flush=True)
        return {
            "vlmq_put": _per_op(lambda k: store.put(k, data, "image/png"), "vlmq", server),
            "vlmq_get": _per_op(store.get, "vlmq", server),
            "boto3_put": _per_op(boto_put, "boto3", server),
            "boto3_get": _per_op(boto_get, "boto3", server),
        }


def store_figures(ops: dict[str, dict[str, float]]) -> dict[str, float]:
    figures = {f"store_{name}_cpu_ms": row["client_cpu_ms"] for name, row in ops.items()}
    figures["store_server_cpu_ms_per_op"] = (ops["vlmq_put"]["server_cpu_ms"]
                                             + ops["vlmq_get"]["server_cpu_ms"]) / 2
    return figures


if __name__ == "__main__":
    results = measure_store_ops(Path(os.environ.get("BENCH_OUT", "bench-results")) / "logs"
                                / "store")
    for name, row in results.items():
        print(f"{name:10s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
