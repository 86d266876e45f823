"""Webhooks: events, payload and the delivery ledger (URL guard: shared/net/urls.py)."""
