"""The job table's walk (tests/unit/test_job_transitions.py) on Postgres, where a batch of
results is written by one bulk statement (transitions.succeed_many's raw SQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade_head
from shared.settings import Settings
from tests.helpers.services import fresh_database
from tests.unit.test_job_transitions import walk, walk_fencing


@pytest.fixture()
def sessions() -> Iterator[sessionmaker[Session]]:
    with fresh_database() as url:
        settings = Settings(database_url=url)
        upgrade_head(settings)
        engine = make_engine(settings)
        try:
            yield make_session_factory(engine)
        finally:
            engine.dispose()


def test_each_verb_moves_from_its_states_and_refuses_the_others(
    sessions: sessionmaker[Session],
) -> None:
    walk(sessions)


def test_worker_verbs_are_fenced_by_the_attempt(sessions: sessionmaker[Session]) -> None:
    walk_fencing(sessions)
