"""The arms on one API process with the local-folder store: ingest, long poll (with an echo
worker started for it) and submits under held polls, in that order, because held polls
linger in the API for up to their 30 s after their clients leave."""

from __future__ import annotations

from pathlib import Path

from tests.bench.ingest import measure_ingest
from tests.bench.polls import measure_held, measure_long_poll
from tests.bench.preload import preload
from tests.bench.runner import Runner
from tests.bench.stack import TENANT, stack
from tests.bench.workload import Workload


def run_api_stack(w: Workload, log_dir: Path, runner: Runner) -> None:
    with stack(w, log_dir) as st:
        api, base = st.start_api()
        pid = api.proc.pid
        headers = st.headers
        runner.attempt("ingest", lambda: measure_ingest(base, headers, pid, w))
        parked = []
        if runner.wants("longpoll", "held"):
            n = w.poll_jobs * runner.wants("longpoll") + max(w.held_polls) * runner.wants("held")
            parked = preload(st.parked(), TENANT, n, lambda i: w.png(40_000 + i), w.prompt,
                             w.params(), enqueue=False)
        if runner.wants("longpoll"):
            worker = st.start_worker("echo")
            runner.attempt("longpoll", lambda: measure_long_poll(
                base, headers, st.settings, parked[:w.poll_jobs], w))
            st.stop(worker)
            parked = parked[w.poll_jobs:]
        runner.attempt("held", lambda: measure_held(base, headers, pid, parked, w))
