"""The API image installs only the base dependencies, so the base must not need the inference
stack, and the processes that run on it must not import it. The client is a distribution of
its own (shared/client), which must install and run without anything of the server."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
INFERENCE = {"torch", "torchvision", "transformers", "tokenizers", "vllm"}
# The `vlmq-client` distribution: its root, and what it must neither import nor install.
CLIENT = ROOT / "shared" / "client"
SERVER_SIDE = {"api", "worker", "shared", "migrations", "sqlalchemy", "celery", "fastapi",
               "boto3", "pydantic_settings", "flower", "torch"}
# The `s3` extra's: imported only when a backfill lists an s3:// source.
OPTIONAL = {"boto3"}
SERVER_DISTRIBUTIONS = {"fastapi", "sqlalchemy", "celery", "boto3", "flower",
                        "pydantic_settings", "torch"}


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


def _package(init: Path) -> str:
    folder = init.parent
    # The client's distribution root is not a package: below it, `vlmq` is.
    if folder.is_relative_to(CLIENT):
        return ".".join(folder.relative_to(CLIENT).parts)
    return ".".join(folder.relative_to(ROOT).parts)


def test_every_package_is_listed_for_installation() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {
        _package(init)
        for top in ("api", "worker", "shared", "migrations")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject"
    assert listed - on_disk == set(), "these listed packages have no __init__.py"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"vlmq": "shared/client/vlmq"}


def test_the_client_imports_as_vlmq_without_the_server() -> None:
    code = ("import sys, vlmq.client as c, vlmq.backfill.cli; "
            "assert c.Client and c.AsyncClient and c.verify_webhook and c.ApiError and c.Job; "
            f"loaded = {SERVER_SIDE!r} & {{m.split('.')[0] for m in sys.modules}}; "
            "assert not loaded, sorted(loaded)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=60)


def test_the_client_package_imports_nothing_of_the_server() -> None:
    found = []
    for path in sorted((CLIENT / "vlmq").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in modules
                      if m.split(".")[0] in SERVER_SIDE - OPTIONAL]
    assert not found, f"vlmq-client must not import the server: {found}"


def test_the_client_distribution_needs_only_its_own_dependencies() -> None:
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert names(client["dependencies"]) == {"httpx", "rich", "standardwebhooks"}
    server = {r for r in PYPROJECT["project"]["dependencies"] if names([r]) <= names(
        client["dependencies"])}
    assert set(client["dependencies"]) == server, "keep the server's bounds on these"
    assert client["scripts"] == {"vlmq-backfill": "vlmq.backfill.cli:main"}


@pytest.mark.slow
def test_the_client_installs_alone_with_one_pip_command(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    # A cache that outlives the test, so that reruns download nothing.
    cache = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    env = {**os.environ, "PIP_CACHE_DIR": cache, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    install = subprocess.run([python, "-m", "pip", "install", "-q", str(CLIENT)], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-4000:]

    unwanted = sorted(SERVER_DISTRIBUTIONS)
    code = (
        "import importlib.metadata as md, sys\n"
        "import vlmq.client, vlmq.backfill, vlmq.backfill.cli\n"
        "assert vlmq.client.Client and vlmq.backfill.cli.main\n"
        f"installed = []\n"
        f"for name in {unwanted!r}:\n"
        "    try:\n"
        "        md.distribution(name)\n"
        "    except md.PackageNotFoundError:\n"
        "        continue\n"
        "    installed.append(name)\n"
        f"imported = sorted({SERVER_SIDE | SERVER_DISTRIBUTIONS!r} & "
        "{m.split('.')[0] for m in sys.modules})\n"
        "assert not installed and not imported, (installed, imported)\n"
    )
    check = subprocess.run([python, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    help_run = subprocess.run([bin_dir / "vlmq-backfill", "--help"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0, help_run.stdout + help_run.stderr
    assert "--out" in help_run.stdout and "--api-key" in help_run.stdout
