"""The webhook worker: dispatch, signed delivery, retry policy."""
