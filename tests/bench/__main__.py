"""Runs the three arms on one workload and reports images/s, ratios and latency.

    .venv/bin/python -m tests.bench        (or `make bench`)

Writes bench-results/bench.json and bench-results/throughput.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from shared.cli.tiny_model import build_tiny_model
from tests.bench.system import Level, measure
from tests.bench.workload import Workload

OUT = Path("bench-results")
TARGETS = {"c_over_b": 0.90, "c_over_a": 10.0, "light_overhead_ms": 30.0}


def run_arm(arm: str, w: Workload) -> dict[str, float]:
    out = OUT / f"{arm}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print(f"bench: {arm} arm", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "tests.bench.engines", arm, str(w.model_path), str(out)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def plot(levels: list[Level], burst: Level, naive: dict, raw: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [*levels, burst]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([p.concurrency for p in points], [p.images_per_s for p in points], "o-",
            label="(c) full system")
    ax.axhline(raw["images_per_s"], color="green", ls="--", label="(b) raw vLLM batch")
    ax.axhline(naive["images_per_s"], color="red", ls=":", label="(a) naive transformers")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("jobs outstanding (client concurrency)")
    ax.set_ylabel("images / s")
    ax.set_title("vlmq throughput against client concurrency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    model = build_tiny_model(Path(".vlmq/models/tiny-qwen2-vl").resolve())
    w = Workload(model_path=model)
    naive = run_arm("naive", w)
    raw = run_arm("vllm", w)
    log_dir = OUT / "logs"
    log_dir.mkdir(exist_ok=True)
    levels, burst, cpu = measure(w, log_dir)

    light = levels[0]
    overhead_ms = (light.latency_p50_s - raw["single_p50_s"]) * 1000
    ratios = {
        "c_over_b": burst.images_per_s / raw["images_per_s"],
        "c_over_a": burst.images_per_s / naive["images_per_s"],
        "light_overhead_ms": overhead_ms,
    }
    report = {
        "workload": {k: v for k, v in asdict(w).items() if k != "model_path"},
        "model": str(model),
        "naive": naive,
        "raw_vllm": raw,
        "system_levels": [asdict(x) for x in levels],
        "system_burst": asdict(burst),
        "system_burst_cpu_seconds": cpu,
        "ratios": ratios,
        "targets": TARGETS,
    }
    (OUT / "bench.json").write_text(json.dumps(report, indent=2))
    plot(levels, burst, naive, raw, OUT / "throughput.png")

    print(f"\n{w.jobs} jobs, {w.width}x{w.height} images, {w.max_tokens} tokens each (EOS ignored)")
    print(f"(a) naive transformers, one at a time : {naive['images_per_s']:7.1f} images/s")
    print(f"(b) raw vLLM offline batch            : {raw['images_per_s']:7.1f} images/s")
    print(f"(c) full system, all jobs at once     : {burst.images_per_s:7.1f} images/s")
    print(f"    submit-to-result p50 / p95        : {burst.latency_p50_s:.2f} s / "
          f"{burst.latency_p95_s:.2f} s")
    print("\nclients  images/s  p50 s   p95 s   submit  queued  running (p50 s)")
    for x in [*levels, burst]:
        print(f"{x.concurrency:7d}  {x.images_per_s:8.1f}  {x.latency_p50_s:6.3f}  "
              f"{x.latency_p95_s:6.3f}  {x.submit_p50_s:6.3f}  {x.queued_p50_s:6.3f}  "
              f"{x.running_p50_s:6.3f}")
    total = sum(cpu.values())
    print(f"\nCPU seconds during the burst ({burst.seconds:.1f} s on {os.cpu_count()} cores):")
    for part, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {part:55s} {seconds:6.1f}  {100 * seconds / max(total, 1e-9):4.0f}%")
    print(f"\nlight load: system p50 {light.latency_p50_s * 1000:.0f} ms, engine alone p50 "
          f"{raw['single_p50_s'] * 1000:.0f} ms")
    for name, value in ratios.items():
        target = TARGETS[name]
        ok = value <= target if name == "light_overhead_ms" else value >= target
        sign = "<=" if name == "light_overhead_ms" else ">="
        print(f"{name:18s} {value:8.2f}   target {sign} {target:g}   {'met' if ok else 'MISSED'}")
    print(f"\nwrote {OUT / 'bench.json'} and {OUT / 'throughput.png'}")


if __name__ == "__main__":
    main()
