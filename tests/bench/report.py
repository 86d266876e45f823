"""The figures of a run beside their targets, and the run's line in the history file."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    target: tuple[str, float] | None = None  # (">=" or "<=", value)


# Order is the table's order. Ratios against raw vLLM come from the same Workload.
FIGURES: dict[str, Figure] = {
    "raw_vllm_images_per_s": Figure("raw vLLM batch", "img/s"),
    "raw_vllm_single_p50_ms": Figure("raw vLLM one request p50", "ms"),
    "naive_images_per_s": Figure("naive transformers", "img/s"),
    "drain_images_per_s": Figure("drain of queued jobs, 1 vLLM worker", "img/s"),
    "drain_over_raw": Figure("drain / raw vLLM", "x", (">=", 0.95)),
    "run_batch_lines_per_s": Figure("vLLM run_batch, 1,024-line file", "lines/s"),
    "batch_file_lines_per_s": Figure("vlmq batch, file store", "lines/s"),
    "batch_file_over_run_batch": Figure("batch file / run_batch", "x", (">=", 1.0)),
    "batch_s3_lines_per_s": Figure("vlmq batch, S3 (moto)", "lines/s"),
    "batch_s3_over_run_batch": Figure("batch S3 / run_batch", "x", (">=", 0.9)),
    "batch_s3_moto_cpu_s": Figure("  S3 server (moto) CPU during it", "s"),
    "drain_s3_images_per_s": Figure("drain of queued jobs, S3 (moto)", "img/s"),
    "drain_s3_over_raw": Figure("drain S3 / raw vLLM", "x", (">=", 0.85)),
    "drain_s3_moto_cpu_s": Figure("  S3 server (moto) CPU during it", "s"),
    "camera_raw_images_per_s": Figure("raw vLLM, 96 camera JPEGs decoded serially", "img/s"),
    "camera_images_per_s": Figure("camera JPEGs, 1 vLLM worker", "img/s"),
    "camera_over_raw": Figure("camera / raw vLLM", "x", (">=", 1.1)),
    "burst_images_per_s": Figure("burst with uploads (S3)", "img/s"),
    "burst_over_raw": Figure("burst / raw vLLM (c/b)", "x", (">=", 0.85)),
    "burst_over_naive": Figure("burst / naive (c/a)", "x", (">=", 10.0)),
    "echo_jobs_per_s": Figure("echo ceiling, file store (task events on)", "jobs/s",
                              (">=", 500.0)),
    "echo_worker_cpu_ms_per_job": Figure("echo worker CPU per job, file", "ms", ("<=", 2.0)),
    # Medians of alternating rounds (tests/bench/ceiling.py).
    "events_on_worker_cpu_ms_per_job": Figure("echo worker CPU per job, task events on", "ms"),
    "events_off_worker_cpu_ms_per_job": Figure("  the same, task events off", "ms"),
    "echo_events_over_quiet": Figure("echo ceiling, task events on / off", "x",
                                     (">=", 0.9)),
    "echo_s3_jobs_per_s": Figure("echo ceiling, S3 (moto)", "jobs/s"),
    "echo_s3_worker_cpu_ms_per_job": Figure("echo worker CPU per job, S3", "ms"),
    "s3_client_cpu_ms_per_job": Figure("S3 client's share (S3 - file)", "ms"),
    # 150 KB objects against moto; its server's CPU is a stand-in's, shown apart.
    "store_vlmq_put_cpu_ms": Figure("object store PUT, client CPU (obstore)", "ms",
                                    ("<=", 0.5)),
    "store_vlmq_get_cpu_ms": Figure("object store GET, client CPU (obstore)", "ms",
                                    ("<=", 0.5)),
    "store_boto3_put_cpu_ms": Figure("  the same PUT through boto3", "ms"),
    "store_boto3_get_cpu_ms": Figure("  the same GET through boto3", "ms"),
    "store_server_cpu_ms_per_op": Figure("  S3 server (moto) CPU per request", "ms"),
    "simulated_images_per_s": Figure("simulated GPU engine, 1 worker", "img/s"),
    "simulated_over_max": Figure("simulated engine / its top rate", "x", (">=", 0.95)),
    "simulated_worker_cpu_cores": Figure("worker CPU feeding it", "cores"),
    "ingest_uploads_per_s": Figure("ingest, 1 API process", "uploads/s", (">=", 300.0)),
    "ingest_api_cpu_ms_per_upload": Figure("API CPU per upload", "ms", ("<=", 3.0)),
    "long_poll_p50_ms": Figure("long poll sees terminal, p50", "ms", ("<=", 5.0)),
    "long_poll_p95_ms": Figure("long poll sees terminal, p95", "ms"),
    "submit_p50_ms_alone": Figure("submit p50 alone", "ms"),
    # "Unchanged" with 1,000 held polls, allowing for timer noise on a small machine.
    "submit_held_1000_over_alone": Figure("submit p50, 1000 held / alone", "x", ("<=", 1.2)),
    # The job's own time is its queue wait and engine run as recorded; the rest is the
    # upload before the row and the hand-back after the result.
    "light_beyond_own_ms_max": Figure("light: client - job's own time, worst p50",
                                      "ms", ("<=", 5.0)),
    "light_overhead_ms_max": Figure("light load - raw single, worst round", "ms"),
}

# Figures a run adds per level or round, printed just before (-1) or after (1) a fixed one.
BESIDE = {
    "submit_p50_ms_": ("submit_p50_ms_alone", 1),
    "api_cpu_pct_": ("submit_held_1000_over_alone", 1),
    "submit_held_": ("submit_held_1000_over_alone", -1),
    "light_beyond_own_ms_round": ("light_beyond_own_ms_max", -1),
}


def met(value: float, target: tuple[str, float]) -> bool:
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


def figure_for(name: str) -> Figure:
    """Figures a run adds per level or round (submit with n held, each light round)."""
    if name in FIGURES:
        return FIGURES[name]
    if name.startswith("submit_p50_ms_") and name.endswith("_held"):
        return Figure(f"submit p50, {name.split('_')[3]} held", "ms")
    if name.startswith("submit_held_") and name.endswith("_over_alone"):
        return Figure(f"submit p50, {name.split('_')[2]} held / alone", "x")
    if name.startswith("api_cpu_pct_"):
        return Figure(f"API CPU holding {name.split('_')[3]} polls", "% core")
    if name.startswith("light_beyond_own_ms_round"):
        return Figure(f"light: client - job's own, p50, round {name[-1]}", "ms",
                      ("<=", 5.0))
    return Figure(name, "")


def table(figures: dict[str, float], failed: dict[str, str]) -> list[str]:
    order = list(FIGURES)

    def position(name: str) -> tuple[int, int, str]:
        # Numbers padded so "300 held" sorts before "1000 held".
        natural = re.sub(r"\d+", lambda m: m.group().zfill(8), name)
        if name in order:
            return (order.index(name), 0, natural)
        for prefix, (anchor, side) in BESIDE.items():
            if name.startswith(prefix):
                return (order.index(anchor), side, natural)
        return (len(order), 0, natural)

    names = sorted(figures, key=position)
    lines = [f"{'figure':42s} {'measured':>10s} {'unit':9s} {'target':>9s}  result",
             "-" * 84]
    for name in names:
        fig, value = figure_for(name), figures[name]
        target = f"{fig.target[0]} {fig.target[1]:g}" if fig.target else "-"
        result = ("met" if met(value, fig.target) else "MISSED") if fig.target else ""
        lines.append(f"{fig.label:42s} {value:10.2f} {fig.unit:9s} {target:>9s}  {result}")
    for name, fig in FIGURES.items():
        if fig.target and name not in figures:
            target = f"{fig.target[0]} {fig.target[1]:g}"
            lines.append(f"{fig.label:42s} {'-':>10s} {fig.unit:9s} {target:>9s}  not measured")
    for arm, error in failed.items():
        lines.append(f"arm {arm} FAILED: {error.splitlines()[0][:150]}")
    return lines


def cpu_class() -> dict[str, Any]:
    """Which hardware a figure came from: vLLM's CPU kernels run several times faster with
    AMX than with AVX2 alone, so a ratio means little without it."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first CPU's lines
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    named = ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"]
    return {"cpu_model": model, "cpu_count": os.cpu_count(),
            "cpu_flags": [flag for flag in named if flag in flags]}


def cpu_line() -> str:
    cpu = cpu_class()
    flags = ", ".join(cpu["cpu_flags"]) or "none of avx2, avx512f, amx"
    amx = "AMX" if any(f.startswith("amx") for f in cpu["cpu_flags"]) else "no AMX"
    avx512 = "AVX-512" if "avx512f" in cpu["cpu_flags"] else "no AVX-512"
    return f"machine: {cpu['cpu_model']}, {cpu['cpu_count']} cores, {avx512}, {amx} ({flags})"


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def append_history(path: Path, figures: dict[str, float], extra: dict[str, Any]) -> None:
    """One JSON line per run, so runs on different commits and machines can be compared."""
    line = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **git_commit(),
        **cpu_class(),
        "machine": platform.node(),
        "figures": {k: round(v, 3) for k, v in figures.items()},
        **extra,
    }
    with path.open("a") as fh:
        fh.write(json.dumps(line) + "\n")


def print_split(title: str, cpu: dict[str, float]) -> None:
    """CPU seconds per part of the system over a window, largest first."""
    total = sum(cpu.values())
    print(f"\nCPU seconds {title} ({os.cpu_count()} cores):")
    for part, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if seconds > 0:
            print(f"  {part:58s} {seconds:6.2f}  {100 * seconds / max(total, 1e-9):4.0f}%")
