"""The sender's own checks, driven through `deliver` on an embedded (SQLite) database."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from shared.jobs import lifecycle
from shared.jobs import repo as jobs_repo
from shared.jobs.status import JobStatus
from shared.migrate import upgrade_head
from shared.models import Job
from shared.settings import Settings
from shared.webhooks import repo as deliveries_repo
from shared.webhooks.events import DeliveryStatus
from tests.helpers.webhook_receiver import receiver
from worker.webhooks.delivery import WebhookContext, deliver

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


def cancelled_job_with_webhook(ctx: WebhookContext, url: str) -> uuid.UUID:
    job = Job(
        tenant_id="default", model="m", prompt="p", params={}, image_key="k", image_sha256="0" * 64,
        image_bytes=1, image_format="PNG", image_width=1, image_height=1,
        webhook_url=url, status=JobStatus.queued,
    )
    with ctx.sessions() as session:
        jobs_repo.insert_job(session, job)
        lifecycle.cancel(session, job.id)
        session.commit()
        [delivery] = deliveries_repo.for_job(session, job.id)
    return delivery.id


def context(tmp_path: Path, **overrides: object) -> WebhookContext:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'vlmq.db'}",
        broker_folder=tmp_path / "broker",
        webhook_secrets=[SECRET],
        webhook_allow_http=True,
        webhook_retry_schedule=[60],
        **overrides,  # type: ignore[arg-type]
    )
    upgrade_head(settings)
    return WebhookContext.start(settings)


def test_sender_checks_the_url_again_and_refuses_before_connecting(tmp_path: Path) -> None:
    # Accepted when submitted (say DNS pointed elsewhere then); refused when it is sent.
    ctx = context(tmp_path)
    with receiver(host="127.0.0.1") as inside:
        delivery_id = cancelled_job_with_webhook(ctx, inside.url())
        assert deliver(ctx, delivery_id) == DeliveryStatus.pending
        assert inside.connections == 0
    with ctx.sessions() as session:
        delivery = deliveries_repo.get_delivery(session, delivery_id)
        [attempt] = deliveries_repo.attempts_of(session, [delivery_id])[delivery_id]
    assert delivery is not None and delivery.next_attempt_at is not None
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("refused before connecting")
    assert "loopback" in attempt.error
    ctx.close()


def test_deliver_on_sqlite_sends_once_and_a_second_claim_finds_nothing(tmp_path: Path) -> None:
    ctx = context(tmp_path, webhook_allowed_networks=["127.0.0.1/32"])
    with receiver(host="127.0.0.1") as r:
        delivery_id = cancelled_job_with_webhook(ctx, r.url())
        assert deliver(ctx, delivery_id) == DeliveryStatus.succeeded
        assert deliver(ctx, delivery_id).startswith("not due")
        [hit] = r.received
    assert json.loads(hit.body)["type"] == "job.cancelled"
    ctx.close()
