"""The unit tier: no servers, no subprocesses, nothing on the network.

State lives where `vlmq demo`'s embedded setup keeps it, under the test's tmp_path: a
SQLite file, the folder broker and a local-folder object store. The schema is migrated
once per session into a template file, and each test gets its own copy (a file copy is
about a millisecond; a migration is most of a second).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from shared.migrate import upgrade_head
from shared.settings import Settings
from tests.helpers.embedded import embedded_settings


@pytest.fixture(autouse=True)
def _no_vlmq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read `VLMQ_*` variables: a developer's shell must not point a unit test at
    a real server, nor change a default the test relies on."""
    for name in [n for n in os.environ if n.startswith("VLMQ_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def _migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template")
    saved = {n: os.environ.pop(n) for n in list(os.environ) if n.startswith("VLMQ_")}
    try:
        upgrade_head(embedded_settings(root))
    finally:
        os.environ.update(saved)
    return root


@pytest.fixture()
def state_root(_migrated_template: Path, tmp_path: Path) -> Path:
    """A folder holding a freshly migrated SQLite database of the test's own."""
    root = tmp_path / "state"
    root.mkdir()
    for db_file in _migrated_template.glob("vlmq.db*"):  # the WAL files too, if any
        shutil.copy(db_file, root / db_file.name)
    return root


@pytest.fixture()
def settings(state_root: Path) -> Settings:
    """The embedded setup on the test's own state (a module may define its own)."""
    return embedded_settings(state_root)


@pytest.fixture()
def app(settings: Settings) -> Iterator[TestClient]:
    """The API in process on `settings`."""
    with TestClient(create_app(settings)) as client:
        yield client
