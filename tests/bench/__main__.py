"""Every benchmark arm in one run, each figure beside its target.

    .venv/bin/python -m tests.bench        (or `make bench`)

Arms, cheapest first: the object store's CPU per PUT and GET, ingest, long poll and submits under held polls (one API process),
the echo worker's ceiling (file and S3 stores), its cost of the task events for Flower (on
and off, alternating rounds), the worker feeding a simulated GPU engine,
naive transformers, raw vLLM, the drain of queued jobs by one vLLM worker and the
light-load rounds, the drain with the S3 store, camera photos, OpenAI batch files against
vLLM's run_batch, and the full system under closed-loop clients and a burst with uploads.
BENCH_ARMS=a,b runs a subset (BENCH_ARMS=simulated needs no model); BENCH_* sizes are in
workload.py. Writes bench.json, throughput.png and a line of history.jsonl under
BENCH_OUT (bench-results/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.devtools.tiny_model import build_tiny_model
from tests.bench.api_arms import run_api_stack
from tests.bench.batches import batch_figures, measure_run_batch, measure_vlmq_batch
from tests.bench.camera import camera_figures, measure_camera
from tests.bench.ceiling import measure_ceiling, measure_event_cost
from tests.bench.drain import drain_s3_figures, measure_drain_s3, run_vllm_stack
from tests.bench.report import append_history, cpu_line, print_split, table
from tests.bench.runner import Runner
from tests.bench.simulated import measure_simulated
from tests.bench.store_ops import measure_store_ops, store_figures
from tests.bench.system import Level, measure
from tests.bench.workload import Workload

OUT = Path(os.environ.get("BENCH_OUT", "bench-results"))
MODEL_DIR = Path(".vlmq/models/tiny-qwen2-vl")


def run_arm(arm: str, w: Workload) -> dict[str, float]:
    out = OUT / f"{arm}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print(f"bench: {arm} arm", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "tests.bench.engines", arm, str(w.model_path), str(out)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def plot(levels: list[Level], burst: Level, naive: dict | None, raw: dict | None,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [*levels, burst]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([p.concurrency for p in points], [p.images_per_s for p in points], "o-",
            label="(c) full system")
    if raw:
        ax.axhline(raw["images_per_s"], color="green", ls="--", label="(b) raw vLLM batch")
    if naive:
        ax.axhline(naive["images_per_s"], color="red", ls=":", label="(a) naive transformers")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("jobs outstanding (client concurrency)")
    ax.set_ylabel("images / s")
    ax.set_title("vlmq throughput against client concurrency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_all(w: Workload, runner: Runner) -> None:
    logs = OUT / "logs"
    runner.attempt("store", lambda: measure_store_ops(logs / "store"))
    runner.group(["ingest", "longpoll", "held"], lambda: run_api_stack(w, logs / "api", runner))
    runner.attempt("echo_file", lambda: measure_ceiling(w, logs / "echo-file", "file"))
    runner.attempt("events", lambda: measure_event_cost(w, logs / "events"))
    runner.attempt("echo_s3", lambda: measure_ceiling(w, logs / "echo-s3", "s3"))
    runner.attempt("simulated", lambda: measure_simulated(w, logs / "simulated"))
    runner.attempt("naive", lambda: run_arm("naive", w))
    runner.attempt("raw", lambda: run_arm("vllm", w))
    runner.group(["drain", "light"], lambda: run_vllm_stack(w, logs / "vllm", runner))
    runner.attempt("drain_s3", lambda: measure_drain_s3(w, logs / "vllm-s3"))
    runner.attempt("camera", lambda: measure_camera(w, OUT, logs / "camera"))
    runner.attempt("run_batch", lambda: measure_run_batch(w, logs / "run-batch"))
    runner.attempt("batch_file", lambda: measure_vlmq_batch(w, logs / "batch-file", "file"))
    runner.attempt("batch_s3", lambda: measure_vlmq_batch(w, logs / "batch-s3", "s3"))

    def system() -> dict[str, Any]:
        levels, burst, cpu = measure(w, logs / "system")
        return {"levels": levels, "burst": burst, "cpu_seconds": cpu}

    runner.attempt("system", system)


def figures(w: Workload, r: dict[str, Any]) -> dict[str, float]:
    f: dict[str, float] = {}
    raw, naive = r.get("raw"), r.get("naive")
    if raw:
        f["raw_vllm_images_per_s"] = raw["images_per_s"]
        f["raw_vllm_single_p50_ms"] = 1000 * raw["single_p50_s"]
    if naive:
        f["naive_images_per_s"] = naive["images_per_s"]
    if drain := r.get("drain"):
        f["drain_images_per_s"] = drain["jobs_per_s"]
        if raw:
            f["drain_over_raw"] = drain["jobs_per_s"] / raw["images_per_s"]
    if system := r.get("system"):
        burst = system["burst"].images_per_s
        f["burst_images_per_s"] = burst
        if raw:
            f["burst_over_raw"] = burst / raw["images_per_s"]
        if naive:
            f["burst_over_naive"] = burst / naive["images_per_s"]
    if echo := r.get("echo_file"):
        f["echo_jobs_per_s"] = echo["jobs_per_s"]
        f["echo_worker_cpu_ms_per_job"] = echo["worker_cpu_ms_per_job"]
    if events := r.get("events"):
        f["events_on_worker_cpu_ms_per_job"] = events["on_worker_cpu_ms_per_job"]
        f["events_off_worker_cpu_ms_per_job"] = events["off_worker_cpu_ms_per_job"]
        f["echo_events_over_quiet"] = events["on_over_off"]
    if echo_s3 := r.get("echo_s3"):
        f["echo_s3_jobs_per_s"] = echo_s3["jobs_per_s"]
        f["echo_s3_worker_cpu_ms_per_job"] = echo_s3["worker_cpu_ms_per_job"]
        if echo:
            f["s3_client_cpu_ms_per_job"] = (echo_s3["worker_cpu_ms_per_job"]
                                             - echo["worker_cpu_ms_per_job"])
    if simulated := r.get("simulated"):
        f["simulated_images_per_s"] = simulated["images_per_s"]
        f["simulated_over_max"] = simulated["over_max"]
        f["simulated_worker_cpu_cores"] = simulated["worker_cpu_cores"]
    f.update(drain_s3_figures(r.get("drain_s3"), raw))
    f.update(camera_figures(r.get("camera")))
    f.update(batch_figures(r))
    if store := r.get("store"):
        f.update(store_figures(store))
    if ingest := r.get("ingest"):
        f["ingest_uploads_per_s"] = ingest["uploads_per_s"]
        f["ingest_api_cpu_ms_per_upload"] = ingest["api_cpu_ms_per_upload"]
    if poll := r.get("longpoll"):
        f["long_poll_p50_ms"] = poll["p50_ms"]
        f["long_poll_p95_ms"] = poll["p95_ms"]
    if held := r.get("held"):
        f.update(held)
        n = max(w.held_polls)
        if f"submit_p50_ms_{n}_held" in held:
            f[f"submit_held_{n}_over_alone"] = (held[f"submit_p50_ms_{n}_held"]
                                                / held["submit_p50_ms_alone"])
    if light := r.get("light"):
        beyond = [1000 * s for s in light["beyond_own_p50_s"]]
        for i, ms in enumerate(beyond, 1):
            f[f"light_beyond_own_ms_round{i}"] = ms
        f["light_beyond_own_ms_max"] = max(beyond)
        if raw:
            f["light_overhead_ms_max"] = max(1000 * (p50 - raw["single_p50_s"])
                                             for p50 in light["p50_s"])
    return f


def print_details(w: Workload, r: dict[str, Any]) -> None:
    print(f"\n{w.jobs} jobs, {w.width}x{w.height} images, {w.max_tokens} tokens each (EOS "
          f"ignored); echo {w.echo_jobs} jobs; ingest {w.uploads} uploads")
    if system := r.get("system"):
        print("\nclients  images/s  p50 s   p95 s   submit  queued  running (p50 s)")
        for x in [*system["levels"], system["burst"]]:
            print(f"{x.concurrency:7d}  {x.images_per_s:8.1f}  {x.latency_p50_s:6.3f}  "
                  f"{x.latency_p95_s:6.3f}  {x.submit_p50_s:6.3f}  {x.queued_p50_s:6.3f}  "
                  f"{x.running_p50_s:6.3f}")
        print_split(f"during the burst ({system['burst'].seconds:.1f} s)", system["cpu_seconds"])
    for arm, store in (("echo_file", "local-folder"), ("echo_s3", "S3 (moto)")):
        if echo := r.get(arm):
            print_split(f"during the echo ceiling, {store} store, first claim seen to drained "
                        f"({echo['jobs']} jobs in {echo['seconds']:.1f} s)", echo["cpu_seconds"])
    if d := r.get("drain_s3"):
        print_split(f"during the S3 drain, moto at nice {d.get('moto_nice')} "
                    f"({d['seconds']:.1f} s)", d["cpu_seconds"])
    if camera := r.get("camera"):
        print_split(f"during the camera drain ({camera['system']['seconds']:.1f} s)",
                    camera["system"]["cpu_seconds"])
    if sim := r.get("simulated"):
        print(f"\nsimulated engine: {sim['max_num_seqs']} seqs x {sim['max_tokens']} tokens x "
              f"{sim['step_ms']:g} ms steps = {sim['engine_max_images_per_s']:.1f} images/s at "
              f"most; {sim['jobs']} jobs in {sim['seconds']:.1f} s = {sim['images_per_s']:.1f} "
              f"images/s ({sim['over_max']:.3f} of the top rate)")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    runner = Runner()
    needs_model = runner.wants("naive", "raw", "drain", "light", "drain_s3", "camera",
                               "run_batch", "batch_file", "batch_s3", "system")
    model = build_tiny_model(MODEL_DIR.resolve()) if needs_model else MODEL_DIR.resolve()
    w = Workload(model_path=model)
    run_all(w, runner)

    r = runner.results
    figs = figures(w, r)
    workload = {k: v for k, v in asdict(w).items() if k != "model_path"}
    report = {
        "workload": workload,
        "model": str(model),
        "arms": runner.selected,
        "arm_seconds": runner.seconds,
        "failed": runner.failed,
        "figures": figs,
        "results": r,
    }
    (OUT / "bench.json").write_text(json.dumps(report, indent=2, default=_jsonable))
    if system := r.get("system"):
        plot(system["levels"], system["burst"], r.get("naive"), r.get("raw"),
             OUT / "throughput.png")
    append_history(OUT / "history.jsonl", figs, {
        "arms": runner.selected, "failed": runner.failed, "workload": workload,
        "arm_seconds": runner.seconds})

    print_details(w, r)
    print()
    print(cpu_line())
    print("\n".join(table(figs, runner.failed)))
    print(f"\nwrote {OUT / 'bench.json'}, {OUT / 'history.jsonl'}"
          + (f", {OUT / 'throughput.png'}" if "system" in r else ""))
    if runner.failed:
        raise SystemExit(1)


def _jsonable(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[arg-type]
    return str(value)


if __name__ == "__main__":
    main()
