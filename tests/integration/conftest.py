"""Fixtures of the integration tier: Postgres in process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade_head
from shared.settings import Settings
from tests.helpers.services import fresh_database


@pytest.fixture()
def pg_sessions() -> Iterator[sessionmaker[Session]]:
    """Sessions on a fresh Postgres database at the latest schema."""
    with fresh_database() as url:
        settings = Settings(database_url=url)
        upgrade_head(settings)
        engine = make_engine(settings)
        try:
            yield make_session_factory(engine)
        finally:
            engine.dispose()
