"""Walks the batch table (shared/batches/status.py) through its verbs
(shared/batches/transitions.py) on real rows: each verb moves a batch from every state the
table allows it to leave and refuses the others, leaving the row as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import repo as batches
from shared.batches import transitions
from shared.batches.status import ACTIVE, ALLOWED_FROM, TERMINAL, BatchStatus
from shared.db import make_engine, make_session_factory
from shared.models import Batch, Tenant
from shared.timeutil import utcnow
from tests.helpers.embedded import embedded_settings

FILES = {"output_file_id": None, "error_file_id": None}


def _call(verb: str, batch_id: str) -> Callable[[Session], bool]:
    now = utcnow()
    errors = [{"code": "x", "message": "y"}]
    calls: dict[str, Callable[[Session], bool]] = {
        "start": lambda s: transitions.start(s, batch_id, total=3, model="m", now=now),
        "fail_validation": lambda s: transitions.fail_validation(s, batch_id, errors=errors,
                                                                 now=now),
        "finalize": lambda s: transitions.finalize(s, batch_id, now=now),
        "complete": lambda s: transitions.complete(s, batch_id, now=now, **FILES),
        "fail": lambda s: transitions.fail(s, batch_id, now=now, errors=errors),
        "expire": lambda s: transitions.expire(s, batch_id, now=now, **FILES),
        "cancel": lambda s: transitions.cancel(s, batch_id, now=now),
        "finish_cancel": lambda s: transitions.finish_cancel(s, batch_id, now=now, **FILES),
    }
    return calls[verb]


@pytest.fixture()
def sessions(state_root: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(embedded_settings(state_root))
    factory = make_session_factory(engine)
    with factory() as session:
        session.add(Tenant(id="t"))
        session.commit()
    yield factory
    engine.dispose()


def insert(sessions: sessionmaker[Session], status: BatchStatus) -> str:
    with sessions() as session:
        batch = batches.add_batch(
            session, tenant_id="t", endpoint="/v1/chat/completions",
            input_file_id="file-" + "0" * 24, completion_window=timedelta(hours=24),
            window_text="24h", priority=5, metadata=None)
        batch.status = status  # the walk's starting point
        session.commit()
        return batch.id


def status_of(sessions: sessionmaker[Session], batch_id: str) -> BatchStatus:
    with sessions() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return BatchStatus(batch.status)


def test_every_allowed_move_has_a_verb_and_every_verb_stays_in_the_table() -> None:
    allowed = {(s, t) for t, sources in ALLOWED_FROM.items() for s in sources}
    by_verbs = {(s, m.target) for m in transitions.VERBS.values() for s in m.sources}
    assert by_verbs == allowed
    assert not any(TERMINAL & sources for sources in ALLOWED_FROM.values())
    assert ACTIVE | TERMINAL == set(BatchStatus)


def test_a_new_batch_is_validating(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        batch = batches.add_batch(
            session, tenant_id="t", endpoint="/v1/chat/completions",
            input_file_id="file-" + "0" * 24, completion_window=timedelta(hours=24),
            window_text="24h", priority=5, metadata=None)
        assert batch.status == BatchStatus.validating


def test_each_verb_moves_from_its_states_and_refuses_the_others(
    sessions: sessionmaker[Session],
) -> None:
    for verb, move in transitions.VERBS.items():
        for source in BatchStatus:
            batch_id = insert(sessions, source)
            with sessions() as session:
                moved = _call(verb, batch_id)(session)
                session.commit()
            allowed = source in move.sources
            assert moved == allowed, f"{verb} from {source}"
            assert status_of(sessions, batch_id) == (move.target if allowed else source)
