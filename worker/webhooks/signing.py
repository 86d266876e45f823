"""Standard Webhooks signatures (https://www.standardwebhooks.com), via its reference library."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from standardwebhooks.webhooks import Webhook


def signed_headers(
    secrets: Sequence[str], message_id: str, body: str, moment: datetime
) -> dict[str, str]:
    """The three headers of one attempt; one `v1,` signature per secret, for rotation."""
    if not secrets:
        raise ValueError("no webhook signing secret is configured (VLMQ_WEBHOOK_SECRETS)")
    signatures = " ".join(Webhook(secret).sign(message_id, moment, body) for secret in secrets)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signatures,
    }
