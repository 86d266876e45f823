"""A minimal Celery worker run the way vlmq's workers run, for tests/test_supervision.py.

PROBE_FAIL_RUNS=N makes the consumer die with an unrecoverable error on the first N runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from celery import Celery, bootsteps

from worker.supervision import ShutdownWatch, restart_if_died

run = int(os.environ.get("PROBE_RUN", "0"))
os.environ["PROBE_RUN"] = str(run + 1)
print(f"probe run {run}", flush=True)
folder = Path(sys.argv[1])
app = Celery("probe", broker="filesystem://", set_as_current=False)
app.conf.broker_transport_options = {
    "data_folder_in": str(folder), "data_folder_out": str(folder),
    "control_folder": str(folder / "control"),
}


class DiesOnEarlyRuns(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool"}

    def start(self, worker: object) -> None:
        if run < int(os.environ.get("PROBE_FAIL_RUNS", "0")):
            raise RuntimeError("consumer died")


app.steps["worker"].add(DiesOnEarlyRuns)
watch = ShutdownWatch()
app.worker_main(["worker", "--pool=threads", "--without-gossip", "--without-mingle",
                 "--loglevel=INFO"])
restart_if_died(watch)
print("probe exited", flush=True)
