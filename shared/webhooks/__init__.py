"""Webhooks: URL guard, events, payload and the delivery ledger repository."""
