"""Walks the webhook delivery table (shared/webhooks/status.py) through its verbs
(shared/webhooks/transitions.py) on real rows: each verb moves a delivery from every state
the table allows it to leave and refuses the others, and an attempt's outcome only lands
while that attempt is the delivery's latest."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.models import WebhookDelivery
from shared.timeutil import utcnow
from shared.webhooks import transitions
from shared.webhooks.status import ALLOWED_FROM, DeliveryStatus
from tests.helpers.embedded import embedded_settings


def _call(verb: str, delivery_id: uuid.UUID, attempt: int) -> Callable[[Session], bool]:
    now = utcnow()
    calls: dict[str, Callable[[Session], bool]] = {
        "retry_later": lambda s: transitions.retry_later(
            s, delivery_id, attempt, next_attempt_at=now + timedelta(seconds=5),
            status_code=500, error="server error"),
        "succeed": lambda s: transitions.succeed(s, delivery_id, attempt, now=now,
                                                 status_code=200),
        "disable": lambda s: transitions.disable(s, delivery_id, attempt, status_code=410,
                                                 error="gone"),
        "dead_letter": lambda s: transitions.dead_letter(s, delivery_id, attempt,
                                                         status_code=500, error="again"),
        "redeliver": lambda s: transitions.redeliver(s, delivery_id),
    }
    return calls[verb]


@pytest.fixture()
def sessions(state_root: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(embedded_settings(state_root))
    yield make_session_factory(engine)
    engine.dispose()


def insert(sessions: sessionmaker[Session], status: DeliveryStatus) -> uuid.UUID:
    with sessions() as session:
        delivery = transitions.created("job.succeeded", "https://hooks.example.com/x")
        delivery.attempts = 1
        session.add(delivery)
        session.flush()
        delivery_id = delivery.id
        session.commit()
    with sessions() as session:  # into `status` as the walk's starting point
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        row.status = status
        session.commit()
    return delivery_id


def status_of(sessions: sessionmaker[Session], delivery_id: uuid.UUID) -> DeliveryStatus:
    with sessions() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        return DeliveryStatus(row.status)


def test_every_allowed_move_has_a_verb_and_every_verb_stays_in_the_table() -> None:
    allowed = {(s, t) for t, sources in ALLOWED_FROM.items() for s in sources}
    by_verbs = {(s, m.target) for m in transitions.VERBS.values() for s in m.sources}
    assert by_verbs == allowed


def test_a_new_delivery_is_pending_and_due() -> None:
    delivery = transitions.created("job.failed", "https://hooks.example.com/x")
    assert delivery.status == DeliveryStatus.pending
    assert delivery.next_attempt_at is not None and delivery.message_id.startswith("msg_")


def test_each_verb_moves_from_its_states_and_refuses_the_others(
    sessions: sessionmaker[Session],
) -> None:
    for verb, move in transitions.VERBS.items():
        for source in DeliveryStatus:
            delivery_id = insert(sessions, source)
            with sessions() as session:
                moved = _call(verb, delivery_id, attempt=1)(session)
                session.commit()
            allowed = source in move.sources
            assert moved == allowed, f"{verb} from {source}"
            assert status_of(sessions, delivery_id) == (move.target if allowed else source)


@pytest.mark.parametrize("verb", ["retry_later", "succeed", "disable", "dead_letter"])
def test_an_outcome_lands_only_for_the_latest_attempt(
    sessions: sessionmaker[Session], verb: str
) -> None:
    delivery_id = insert(sessions, DeliveryStatus.pending)
    with sessions() as session:
        assert not _call(verb, delivery_id, attempt=2)(session)
        session.commit()
    assert status_of(sessions, delivery_id) == DeliveryStatus.pending


def test_settle_picks_the_verb_for_the_policy_s_decision(
    sessions: sessionmaker[Session],
) -> None:
    for target in DeliveryStatus:
        delivery_id = insert(sessions, DeliveryStatus.pending)
        with sessions() as session:
            assert transitions.settle(session, delivery_id, 1, target, now=utcnow(),
                                      next_attempt_at=utcnow(), status_code=None, error=None)
            session.commit()
        assert status_of(sessions, delivery_id) == target
