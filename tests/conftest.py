"""Settings every tier shares. The system tier's fixtures (services, processes) are in
tests/system/conftest.py; shared helpers in tests/helpers/."""

from __future__ import annotations

import os

# Nothing in the tests may fetch a model from a hub: the tiny model is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
