"""The HTTP client for a vlmq server: `from vlmq.client import Client`.

It talks to the server over HTTP only (httpx), so it imports nothing of the server.
"""

from __future__ import annotations

from standardwebhooks.webhooks import WebhookVerificationError

from vlmq.client.client import AsyncClient, Client, verify_webhook
from vlmq.client.types import ApiError, Job

__all__ = ["ApiError", "AsyncClient", "Client", "Job", "WebhookVerificationError",
           "verify_webhook"]
