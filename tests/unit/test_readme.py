"""The README's configuration table and the Settings object describe the same variables."""

from __future__ import annotations

import re
from pathlib import Path

from vlmq.backfill.cli import ENVIRONMENT as CLIENT_ENVIRONMENT

from shared.home import HOME_VARIABLE
from shared.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f"VLMQ_{name.upper()}" for name in Settings.model_fields
               if f"`VLMQ_{name.upper()}`" not in README]
    assert not missing, f"add these to the README's configuration table: {missing}"


def test_every_documented_variable_is_a_setting() -> None:
    # The client's command reads a few variables itself (VLMQ_API_KEY is its alone).
    known = ({f"VLMQ_{name.upper()}" for name in Settings.model_fields}
             | set(CLIENT_ENVIRONMENT) | {HOME_VARIABLE})
    unknown = sorted(set(re.findall(r"\bVLMQ_[A-Z0-9_]+", README)) - known)
    assert not unknown, f"neither fields of Settings nor read by vlmq-backfill: {unknown}"


def test_every_client_variable_is_documented() -> None:
    missing = [name for name in CLIENT_ENVIRONMENT if name not in README]
    assert not missing, f"say in the README's Backfills section what reads {missing}"


def test_readme_commands_are_make_targets() -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    for target in ("demo", "up", "test", "bench", "lint", "gpu-check"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no {target} target"
