"""Tenants, their API keys, and what each key may see and do."""
