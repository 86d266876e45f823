"""Does the worker keep a GPU-class engine busy? Jobs queued before one worker starts on
the simulated echo engine (`VLMQ_ECHO_STEP_MS`), whose top rate is known exactly:
max_num_seqs / (max_tokens x step), 256 / (64 x 15 ms) = 267 images/s by default.

Measured images/s (first claim to last result) over that top rate is the share of the
engine's time the worker kept it full. Small images and the local-folder store keep the
arm about the worker's feeding of the engine, not decode or storage. The batcher may hold
twice the engine's sequences, as a deployment feeding vLLM would, so a slot freed at one
step is taken at the next from requests already waiting in the engine.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.bench.ceiling import wait_first_claim
from tests.bench.preload import preload, wait_drained
from tests.bench.procwatch import CpuSampler
from tests.bench.stack import TENANT, alive, stack
from tests.bench.workload import Workload
from tests.helpers.images import png_bytes


def engine_max_images_per_s(w: Workload) -> float:
    return w.simulated_seqs / (w.max_tokens * w.simulated_step_ms / 1000)


def measure_simulated(w: Workload, log_dir: Path) -> dict[str, object]:
    jobs = w.simulated_waves * w.simulated_seqs
    top = engine_max_images_per_s(w)
    with stack(w, log_dir, store="file") as st:
        ids = preload(st.settings, TENANT, jobs, lambda i: png_bytes(64, 48, seed=i), w.prompt,
                      w.params())
        st.env.update(VLMQ_ECHO_STEP_MS=str(w.simulated_step_ms),
                      VLMQ_MAX_NUM_SEQS=str(w.simulated_seqs),
                      VLMQ_MAX_BATCH_SIZE=str(2 * w.simulated_seqs))
        print(f"bench: simulated engine, {jobs} jobs, {w.simulated_seqs} seqs x "
              f"{w.max_tokens} tokens x {w.simulated_step_ms:g} ms = {top:.1f} images/s at "
              "most", file=sys.stderr, flush=True)
        worker = st.start_worker("echo", ready=False)
        with CpuSampler(worker.proc.pid) as sampler:
            wait_first_claim(st.settings, worker)
            drained = wait_drained(st.settings, ids, timeout=max(300, 3 * jobs / top),
                                   check=lambda: alive(worker))
        if drained.succeeded != drained.jobs:
            raise RuntimeError(f"{drained.jobs - drained.succeeded} of {drained.jobs} jobs "
                               f"did not succeed; see {worker.log_path}")
        worker_cpu = sampler.between(drained.started, drained.finished)
        return {
            "jobs": drained.jobs,
            "seconds": drained.seconds,
            "images_per_s": drained.jobs_per_s,
            "engine_max_images_per_s": top,
            "over_max": drained.jobs_per_s / top,
            "worker_cpu_cores": worker_cpu / drained.seconds,
            "max_num_seqs": w.simulated_seqs,
            "step_ms": w.simulated_step_ms,
            "max_tokens": w.max_tokens,
        }
