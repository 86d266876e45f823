"""Where the CPU goes during a run: CPU seconds per part of the system, from /proc.

On a small machine the API, S3, Postgres and the worker's Celery threads share the cores
with the engine, so this split explains most of the gap between the system and raw vLLM.
"""

from __future__ import annotations

import os

import psutil

# Postgres and Redis are shared servers; every other part must be this run's own child,
# so project processes that other runs leave on the machine are not counted.
SHARED_SERVERS = {"postgres", "redis"}
PARTS = {
    "engine compute (VLLM::Worker)": lambda name, cmd: "VLLM::Worker" in name + cmd,
    "engine scheduler (VLLM::EngineCore)": lambda name, cmd: "EngineCore" in name + cmd,
    # Before the worker: its module name is a prefix of the control process's.
    "control (batches, sweeper, webhooks)": lambda name, cmd: (
        "worker.control" in cmd or "shared.cli control" in cmd),
    "worker main (intake, batcher, recorder, engine frontend)": lambda name, cmd: (
        "-m worker" in cmd or "shared.cli worker" in cmd),
    "api (uvicorn)": lambda name, cmd: "uvicorn" in cmd or "shared.cli api" in cmd,
    "s3 (moto server)": lambda name, cmd: "moto.server" in cmd,
    "postgres": lambda name, cmd: name.startswith("postgres"),
    "redis": lambda name, cmd: name.startswith("redis"),
}


def snapshot() -> dict[str, float]:
    totals = dict.fromkeys([*PARTS, "benchmark client"], 0.0)
    me = os.getpid()
    mine = {child.pid for child in psutil.Process(me).children(recursive=True)}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        try:
            name = proc.info["name"] or ""
            cmd = " ".join(proc.info["cmdline"] or [])
            times = proc.info["cpu_times"]
        except (psutil.Error, TypeError):
            continue
        if times is None:
            continue
        used = times.user + times.system
        if proc.pid == me:
            totals["benchmark client"] += used
            continue
        for part, matches in PARTS.items():
            if matches(name, cmd) and (proc.pid in mine or part in SHARED_SERVERS):
                totals[part] += used
                break
    return totals


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {part: round(after[part] - before[part], 2) for part in before}
