"""A worker whose Celery consumer dies restarts itself; one told to stop stays stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = [sys.executable, "-m", "tests.helpers.supervision_probe"]


def start_probe(folder: Path, fail_runs: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLMQ_", "PROBE_"))}
    env.update(PYTHONUNBUFFERED="1", PROBE_FAIL_RUNS=str(fail_runs))
    return subprocess.Popen(PROBE + [str(folder)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop_when_ready(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    """Reads the output until a consumer is ready, signals, and returns all output."""
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if " ready." in line:
                proc.send_signal(sig)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return "".join(lines) + rest


def test_a_consumer_that_dies_is_restarted(tmp_path: Path) -> None:
    output = stop_when_ready(start_probe(tmp_path, fail_runs=2), signal.SIGTERM)
    runs = [line for line in output.splitlines() if line.startswith("probe run")]
    # Two deaths, two restarts, and the third run serves until it is stopped.
    assert runs == ["probe run 0", "probe run 1", "probe run 2"], output
    assert output.count("Unrecoverable error") == 2
    assert output.count("restarting") == 2
    assert "probe exited" in output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_told_to_stop_stays_stopped(tmp_path: Path, sig: signal.Signals) -> None:
    output = stop_when_ready(start_probe(tmp_path, fail_runs=0), sig)
    assert "probe exited" in output and "restarting" not in output, output
    assert output.count("probe run") == 1
