"""The system at its best case against raw vLLM: jobs queued before one vLLM worker starts,
drained from the first claim to the last result with nothing else on the CPU. Then the
same worker serves the light-load rounds through a freshly started API."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from tests.bench.light import measure_light
from tests.bench.preload import preload, wait_drained
from tests.bench.runner import Runner
from tests.bench.stack import TENANT, Stack, alive, stack
from tests.bench.workload import Workload


def _drain(st: Stack, w: Workload) -> dict[str, object]:
    ids = preload(st.settings, TENANT, w.jobs, w.png, w.prompt, w.params())
    print(f"bench: drain of {len(ids)} queued jobs by one vLLM worker", file=sys.stderr,
          flush=True)
    worker = st.start_worker("vllm", ready=False)
    drained = wait_drained(st.settings, ids, timeout=max(600, w.jobs),
                           check=lambda: alive(worker))
    if drained.succeeded != drained.jobs:
        raise RuntimeError(f"{drained.jobs - drained.succeeded} of {drained.jobs} drain "
                           f"jobs did not succeed; see {worker.log_path}")
    return asdict(drained)


def run_vllm_stack(w: Workload, log_dir: Path, runner: Runner) -> None:
    """Arms `drain` and `light`; light alone starts the worker without a drain first."""
    with stack(w, log_dir) as st:
        if runner.wants("drain"):
            runner.attempt("drain", lambda: _drain(st, w))
        if runner.wants("light"):
            if not st.services:
                st.start_worker("vllm")
            _, base = st.start_api()
            runner.attempt("light", lambda: {"p50_s": measure_light(base, st.headers, w)})
