"""The job table's walk (tests/unit/test_job_transitions.py) on Postgres, where a batch of
results is written by one bulk statement (transitions.succeed_many's raw SQL)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from tests.unit.test_job_transitions import walk, walk_fencing


def test_each_verb_moves_from_its_states_and_refuses_the_others(
    pg_sessions: sessionmaker[Session],
) -> None:
    walk(pg_sessions)


def test_worker_verbs_are_fenced_by_the_attempt(pg_sessions: sessionmaker[Session]) -> None:
    walk_fencing(pg_sessions)
