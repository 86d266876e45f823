"""The system at its best case against raw vLLM: jobs queued before one vLLM worker starts,
drained from the first claim to the last result with nothing else on the CPU. Then the
same worker serves the light-load rounds through a freshly started API.

The drain_s3 arm is the same drain with the S3 store. Its S3 server (moto) is a stand-in
that takes the machine's cores from the engine, as a real S3 would not, so its CPU seconds
over the drain are reported apart (and it runs at a higher priority: tests/bench/stack.py).

    .venv/bin/python -m tests.bench.drain [RAW_JSON]    (drain_s3 alone; runs raw vLLM
                                                         unless given its result file)
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.bench import cpu_profile
from tests.bench.ceiling import wait_first_claim
from tests.bench.light import measure_light
from tests.bench.preload import preload, wait_drained
from tests.bench.procwatch import CpuSampler
from tests.bench.report import print_split
from tests.bench.runner import Runner
from tests.bench.stack import TENANT, Stack, alive, stack
from tests.bench.workload import Workload


def _drain(st: Stack, w: Workload) -> dict[str, object]:
    ids = preload(st.settings, TENANT, w.jobs, w.png, w.prompt, w.params())
    print(f"bench: drain of {len(ids)} queued jobs by one vLLM worker", file=sys.stderr,
          flush=True)
    return drain_queued(st, ids)


def run_vllm_stack(w: Workload, log_dir: Path, runner: Runner) -> None:
    """Arms `drain` and `light`; light alone starts the worker without a drain first."""
    with stack(w, log_dir) as st:
        if runner.wants("drain"):
            runner.attempt("drain", lambda: _drain(st, w))
        if runner.wants("light"):
            if not st.services:
                st.start_worker("vllm")
            _, base = st.start_api()
            runner.attempt("light", lambda: measure_light(base, st.headers, w))


def drain_queued(st: Stack, ids: list[uuid.UUID], watch: dict[str, int] | None = None
                 ) -> dict[str, Any]:
    """Starts one vLLM worker on jobs already queued and waits until all of them succeeded.

    Besides the drain's own figures: the per-process CPU split from the first claim to
    drained, and for each process in `watch` (name to pid) its CPU seconds between the
    first claim and the last result.
    """
    worker = st.start_worker("vllm", ready=False)
    with ExitStack() as sampling:
        worker_cpu = sampling.enter_context(CpuSampler(worker.proc.pid, interval=0.05))
        watched = {name: sampling.enter_context(CpuSampler(pid, interval=0.05))
                   for name, pid in (watch or {}).items()}
        wait_first_claim(st.settings, worker, timeout=600)
        before = cpu_profile.snapshot()
        drained = wait_drained(st.settings, ids, timeout=max(600, len(ids)),
                               check=lambda: alive(worker))
        split = cpu_profile.delta(before, cpu_profile.snapshot())
    if drained.succeeded != drained.jobs:
        raise RuntimeError(f"{drained.jobs - drained.succeeded} of {drained.jobs} drain "
                           f"jobs did not succeed; see {worker.log_path}")
    window = (drained.started, drained.finished)
    return {
        **asdict(drained),
        "worker_cpu_s": worker_cpu.between(*window),  # the main process, not the engine's
        **{f"{name}_cpu_s": sampler.between(*window) for name, sampler in watched.items()},
        "cpu_seconds": split,
    }


def measure_drain_s3(w: Workload, log_dir: Path) -> dict[str, Any]:
    """The drain arm with the S3 store; `moto_cpu_s` is the S3 server's share."""
    with stack(w, log_dir, store="s3") as st:
        moto, nice = st.moto_pid, st.moto_nice
        assert moto is not None
        ids = preload(st.settings, TENANT, w.jobs, w.png, w.prompt, w.params())
        print(f"bench: drain of {len(ids)} queued jobs by one vLLM worker, S3 store (moto at "
              f"nice {nice})", file=sys.stderr, flush=True)
        return {**drain_queued(st, ids, watch={"moto": moto}), "moto_nice": nice}


def drain_s3_figures(drain_s3: dict[str, Any] | None, raw: dict[str, Any] | None
                     ) -> dict[str, float]:
    f: dict[str, float] = {}
    if drain_s3:
        f["drain_s3_images_per_s"] = drain_s3["jobs_per_s"]
        f["drain_s3_moto_cpu_s"] = drain_s3["moto_cpu_s"]
        if raw:
            f["drain_s3_over_raw"] = drain_s3["jobs_per_s"] / raw["images_per_s"]
    return f


def main() -> None:
    from shared.devtools.tiny_model import build_tiny_model
    from tests.bench.engines import run_engine_arm

    out = Path(os.environ.get("BENCH_OUT", "bench-results"))
    w = Workload(model_path=build_tiny_model(Path(".vlmq/models/tiny-qwen2-vl").resolve()))
    if len(sys.argv) > 1:
        raw = json.loads(Path(sys.argv[1]).read_text())
    else:
        raw = run_engine_arm("vllm", w, out / "vllm.json")
    result = measure_drain_s3(w, out / "logs" / "vllm-s3")
    (out / "drain_s3.json").write_text(json.dumps({"raw": raw, "drain_s3": result}, indent=2))
    print(f"{result['jobs']} jobs of {w.width}x{w.height} images, {w.max_tokens} tokens; "
          f"drained in {result['seconds']:.2f} s; worker {result['worker_cpu_s']:.2f} CPU s, "
          f"moto {result['moto_cpu_s']:.2f} CPU s at nice {result['moto_nice']}; "
          f"raw vLLM {raw['images_per_s']:.2f} img/s")
    print_split("first claim to drained", result["cpu_seconds"])
    for name, value in drain_s3_figures(result, raw).items():
        print(f"{name} = {value:.3f}")


if __name__ == "__main__":
    main()
