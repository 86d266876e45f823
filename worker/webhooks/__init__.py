"""Webhooks: dispatch, signed delivery, retry policy; run by the control process
(worker/control/app.py)."""
