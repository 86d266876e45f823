"""Settings for `vlmq demo`'s embedded setup (SQLite, folder broker, local-folder store)
rooted in one folder: what a test needs to run the real code with no server."""

from __future__ import annotations

from pathlib import Path

from shared.settings import EngineKind, Settings


def embedded_settings(root: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{root / 'vlmq.db'}",
        "broker_url": "filesystem://",
        "broker_folder": root / "broker",
        "store_url": f"file://{root / 'objects'}",
        "engine": EngineKind.echo,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]
