"""The README's configuration table and the Settings object describe the same variables."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f"VLMQ_{name.upper()}" for name in Settings.model_fields
               if f"`VLMQ_{name.upper()}`" not in README]
    assert not missing, f"add these to the README's configuration table: {missing}"


def test_every_documented_variable_is_a_setting() -> None:
    known = {f"VLMQ_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(set(re.findall(r"\bVLMQ_[A-Z0-9_]+", README)) - known)
    assert not unknown, f"not fields of Settings: {unknown}"


def test_readme_commands_are_make_targets() -> None:
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    for target in ("demo", "test", "bench", "lint"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no {target} target"
