"""Runs Alembic against the configured database; `vlmq migrate` calls this."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.db import sqlalchemy_url
from shared.settings import DatabaseSettings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database: DatabaseSettings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(database).replace("%", "%%"))
    return cfg


def upgrade_head(database: DatabaseSettings) -> None:
    if database.database_url.startswith("sqlite:///"):
        Path(database.database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    command.upgrade(alembic_config(database), "head")
