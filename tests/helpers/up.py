"""`vlmq up` as a user runs it: a project folder, the command started there and read until it
says it is ready, and Ctrl-C to stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "shared.cli"]


def plain_env(**vlmq: str) -> dict[str, str]:
    """The caller's environment without any VLMQ_* setting: the defaults apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    env.update({f"VLMQ_{k.upper()}": v for k, v in vlmq.items()})
    return env


def make_project(root: Path, tiny_model: Path) -> Path:
    """A fresh project folder whose default model path already holds the test model."""
    models = root / ".vlmq" / "models"
    models.mkdir(parents=True)
    (models / "tiny-qwen2-vl").symlink_to(tiny_model.resolve(), target_is_directory=True)
    return root


def start_up(project: Path, port: int, *args: str,
             **vlmq: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`vlmq up` with the given arguments and VLMQ_* settings (the echo engine unless told
    otherwise: the stack is what is tested, not the engine), read until it says it is ready."""
    vlmq.setdefault("engine", "echo")
    proc = subprocess.Popen([*CLI, "up", "--port", str(port), *args], cwd=project,
                            env=plain_env(**vlmq), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ready:") or time.monotonic() > deadline:
            break
    if not any(line.startswith("ready:") for line in lines):
        stop_up(proc)
        raise AssertionError("".join(lines))
    return proc, lines


def stop_up(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return rest
