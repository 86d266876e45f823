"""`vlmq demo` is the README's first command: it must work with no servers and no settings,
run the vLLM engine and show that it batched, show every result, point at the real setup,
and never leave its services running. A worker told to use vLLM where vLLM is missing must
say so, not fall back to another engine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from worker.engines.vllm_version import SUPPORTED

STARTED = re.compile(r"started (\w+) \(pid (\d+)")
RESULT_LINE = re.compile(
    r"^\s+[0-9a-f-]{36}\s+succeeded\s+\d+\+\d+ tokens\s+\w+\s+(['\"]).*\1$", re.MULTILINE
)
THROUGHPUT = re.compile(r"(\d+) of (\d+) images succeeded in [\d.]+s .*: ([\d.]+) images/s")
PER_STEP = re.compile(r"mean jobs per engine step: ([\d.]+) over (\d+) steps")


def demo_env(**vlmq: str) -> dict[str, str]:
    """The caller's environment without any VLMQ_* setting: the demo's defaults apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    env.update({f"VLMQ_{k.upper()}": v for k, v in vlmq.items()})
    return env


@pytest.fixture()
def workdir(tmp_path: Path, tiny_model: Path) -> Path:
    """A fresh cwd whose default model path already holds the test model (saves the build)."""
    models = tmp_path / ".vlmq" / "models"
    models.mkdir(parents=True)
    (models / "tiny-qwen2-vl").symlink_to(tiny_model.resolve(), target_is_directory=True)
    return tmp_path


def demo_argv(images: int) -> list[str]:
    return [sys.executable, "-m", "shared.cli", "demo", "--images", str(images)]


def child_pids(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in STARTED.findall(output)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"


def assert_all_gone(pids: dict[str, int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.2)
    left = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not left, f"demo left its services running: {left}"


@pytest.fixture()
def reap() -> Iterator[dict[str, int]]:
    """Pids a test saw; killed afterwards if the demo failed to stop them itself."""
    pids: dict[str, int] = {}
    yield pids
    for pid in pids.values():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_demo_embedded_default_path(workdir: Path, reap: dict[str, int]) -> None:
    proc = subprocess.run(
        demo_argv(8), cwd=workdir, env=demo_env(), capture_output=True, text=True, timeout=400
    )
    out = proc.stdout
    reap.update(child_pids(out))
    assert proc.returncode == 0, out + proc.stderr

    # Server-less defaults, all under the working directory; vLLM is the engine.
    home = workdir / ".vlmq"
    assert f"database sqlite:///{home / 'vlmq.db'}" in out
    assert "broker filesystem://" in out
    assert f"store file://{home / 'objects'}" in out
    assert "engine vllm" in out
    assert (workdir / ".vlmq" / "vlmq.db").is_file()
    assert len([p for p in (workdir / ".vlmq" / "objects").rglob("*") if p.is_file()]) == 8
    assert "building the tiny" not in out  # the prepared model was found at the default path
    worker_log = (workdir / ".vlmq" / "logs" / "worker.log").read_text(errors="replace")
    assert "(vllm engine, queue" in worker_log

    assert set(reap) == {"api", "worker", "control"}
    assert "API is ready" in out and "worker is ready" in out
    results = out.split("\nresults:\n", 1)[1]
    assert len(RESULT_LINE.findall(results)) == 8, out
    assert_all_gone(reap)

    # The summary: throughput, and the engine ran the concurrent jobs together.
    throughput = THROUGHPUT.search(out)
    assert throughput, out
    assert throughput.group(1) == throughput.group(2) == "8"
    assert float(throughput.group(3)) > 0
    per_step = PER_STEP.search(out)
    assert per_step, out
    assert float(per_step.group(1)) > 1, f"no batching happened:\n{out}"

    # Next steps name the real services and a real model.
    for hint in ("VLMQ_DATABASE_URL=postgresql://", "VLMQ_BROKER_URL=redis://",
                 "VLMQ_STORE_URL=s3://", "VLMQ_S3_ENDPOINT_URL=", "VLMQ_MODEL_PATH=",
                 "'.[gpu]'", "vlmq migrate", "docker compose up"):
        assert hint in out, f"next steps lack {hint!r}:\n{out}"


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_demo_stops_services_on_sigterm(workdir: Path, reap: dict[str, int]) -> None:
    """A stop while vLLM loads (the long wait, when a user is likeliest to give up) also ends
    the engine's own processes."""
    proc = subprocess.Popen(
        demo_argv(1), cwd=workdir, env=demo_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            reap.update(child_pids(line))
            if "loading the vllm engine" in line:
                break
        assert set(reap) == {"api", "worker", "control"}, "".join(lines)
        deadline = time.monotonic() + 120
        while not descendants(reap["worker"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        engine_pids = descendants(reap["worker"])
        assert engine_pids, "the worker started no engine process"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "stopped worker" in out and "stopped api" in out
    assert_all_gone({**reap, **{f"engine-{pid}": pid for pid in engine_pids}})


def test_demo_fails_cleanly_when_the_worker_dies(
    workdir: Path, tmp_path: Path, reap: dict[str, int]
) -> None:
    missing = tmp_path / "no-such-model"
    proc = subprocess.run(
        demo_argv(1), cwd=workdir, env=demo_env(model_path=str(missing)),
        capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    reap.update(child_pids(out))
    assert proc.returncode != 0, out
    assert "worker exited with" in out
    assert "stopped api" in out
    assert_all_gone(reap)


def test_worker_without_vllm_says_how_to_get_it(tmp_path: Path) -> None:
    """vLLM is the default engine; where it cannot be imported the worker stops at start and
    names the ways out, instead of quietly serving with a slower engine."""
    fake = tmp_path / "site" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('vllm is broken here')\n")
    env = demo_env(database_url=f"sqlite:///{tmp_path / 'vlmq.db'}",
                   store_url=f"file://{tmp_path / 'objects'}",
                   broker_folder=str(tmp_path / "broker"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(fake.parent), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-m", "shared.cli", "migrate"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=120)
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "worker"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "vllm is broken here" in out
    assert f"pip install 'vllm{SUPPORTED}'" in out  # the tested range, not any vLLM
    assert "VLMQ_ENGINE=transformers" in out and "VLMQ_ENGINE=echo" in out
    assert "ready." not in out
