"""Migrations are the only way the schema changes, so they must build exactly the models.

Each test gets a new Postgres database; autogenerate's comparison is the check, so a model
change without a migration (or the reverse) fails here rather than in production.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from shared.db import sqlalchemy_url
from shared.migrate import alembic_config, upgrade_head
from shared.models import Base
from shared.settings import Settings
from tests.helpers.services import fresh_database


@pytest.fixture()
def pg_settings() -> Iterator[Settings]:
    with fresh_database() as db_url:
        yield Settings(database_url=db_url)


def schema_diff(settings: Settings) -> list[Any]:
    """What autogenerate would write for this database: empty when it matches the models."""
    engine = create_engine(sqlalchemy_url(settings))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def table_names(settings: Settings) -> set[str]:
    engine = create_engine(sqlalchemy_url(settings))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def current_revision(settings: Settings) -> str | None:
    engine = create_engine(sqlalchemy_url(settings))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision(settings: Settings) -> str:
    head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
    assert head is not None
    return head


def test_upgrade_head_matches_models(pg_settings: Settings) -> None:
    upgrade_head(pg_settings)
    assert current_revision(pg_settings) == head_revision(pg_settings)
    assert schema_diff(pg_settings) == []


def test_downgrade_to_base_and_upgrade_again(pg_settings: Settings) -> None:
    upgrade_head(pg_settings)
    command.downgrade(alembic_config(pg_settings), "base")
    assert current_revision(pg_settings) is None
    assert table_names(pg_settings) <= {"alembic_version"}

    upgrade_head(pg_settings)
    assert current_revision(pg_settings) == head_revision(pg_settings)
    assert schema_diff(pg_settings) == []


def test_upgrade_is_idempotent(pg_settings: Settings) -> None:
    upgrade_head(pg_settings)
    upgrade_head(pg_settings)
    assert current_revision(pg_settings) == head_revision(pg_settings)


def test_sqlite_round_trip(tmp_path: Path) -> None:
    """The embedded demo runs the same migrations on SQLite; batch mode must carry them."""
    settings = Settings(database_url=f"sqlite:///{tmp_path}/nested/vlmq.db")
    upgrade_head(settings)
    assert "jobs" in table_names(settings)
    command.downgrade(alembic_config(settings), "base")
    assert "jobs" not in table_names(settings)
    upgrade_head(settings)
    assert current_revision(settings) == head_revision(settings)


def test_cli_migrate_subprocess(pg_settings: Settings, tmp_path: Path) -> None:
    # Another cwd proves the migrations are found from the package, not the checkout root.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    env["VLMQ_DATABASE_URL"] = pg_settings.database_url
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "shared.cli", "migrate"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "latest schema revision" in proc.stdout
    assert current_revision(pg_settings) == head_revision(pg_settings)
    assert schema_diff(pg_settings) == []
