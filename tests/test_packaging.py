"""The API image installs only the base dependencies, so the base must not need the inference
stack, and the processes that run on it must not import it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
INFERENCE = {"torch", "torchvision", "transformers", "tokenizers", "vllm"}


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def extras() -> dict[str, list[str]]:
    return PYPROJECT["project"]["optional-dependencies"]


def test_base_dependencies_carry_no_inference_stack() -> None:
    base = names(PYPROJECT["project"]["dependencies"])
    assert not base & INFERENCE, f"move {sorted(base & INFERENCE)} to the worker extra"


def test_worker_and_gpu_extras_carry_the_engines() -> None:
    assert {"torch", "torchvision", "transformers", "tokenizers"} <= names(extras()["worker"])
    gpu = extras()["gpu"]
    assert "vllm" in names(gpu)
    assert any(r.replace(" ", "").startswith("vlmq[") and "worker" in r for r in gpu), (
        "the gpu extra must include the worker extra"
    )


def test_api_side_processes_do_not_import_the_inference_stack() -> None:
    # A fresh interpreter: this test process may already hold torch from other tests.
    code = (
        "import sys\n"
        "import api.app, shared.cli, shared.migrate, worker.control.app\n"
        f"loaded = sorted({INFERENCE!r} & {{m.split('.')[0] for m in sys.modules}})\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"imported at start: {proc.stdout.strip()} {proc.stderr[-2000:]}"


def test_every_package_is_listed_for_installation() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("api", "worker", "shared", "migrations")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"vlmq": "shared/client"}


def test_the_client_imports_as_vlmq_without_the_server() -> None:
    code = ("import sys, vlmq.client as c; "
            "assert c.Client and c.AsyncClient and c.verify_webhook; "
            "assert not {'api', 'worker', 'sqlalchemy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=60)
