"""The process `vlmq flower` runs: Celery's `flower` command, with Flower's `/metrics` behind
the same authentication as the rest of the dashboard.

Flower 2.x serves `/metrics` to anyone, even with --basic-auth, and its samples name every
worker and task. No option changes that, so its handler gets Tornado's own `authenticated`
guard, the one Flower puts on its other views (basic auth gives 401 without credentials).
Without --basic-auth (`vlmq flower --no-auth`) the guard lets everyone through, as the rest
of Flower does. Prometheus scrapes it with `basic_auth` in its scrape config.
"""

from __future__ import annotations


def guard_metrics() -> None:
    from flower.views.monitor import Metrics
    from tornado import web

    if not getattr(Metrics.get, "__wrapped__", None):
        Metrics.get = web.authenticated(Metrics.get)


def main() -> None:
    guard_metrics()
    from celery.__main__ import main as celery_main

    celery_main()


if __name__ == "__main__":
    main()
