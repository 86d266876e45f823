"""The usage ledger: what each tenant's jobs did, per model and hour (ledger.py writes it,
report.py reads it)."""
