"""The process `vlmq flower` runs: Celery's `flower` command on vlmq's own Celery app, with
Flower's `/metrics` behind the same authentication as the rest of the dashboard.

Flower 2.x serves `/metrics` to anyone, even with --basic-auth, and its samples name every
worker and task. No option changes that, so its handler gets Tornado's own `authenticated`
guard, the one Flower puts on its other views (basic auth gives 401 without credentials).
Without --basic-auth (`vlmq flower --no-auth`) the guard lets everyone through, as the rest
of Flower does. Prometheus scrapes it with `basic_auth` in its scrape config.

The app comes from `shared.queue.make_celery` (`-A shared.cli.flower_server:app`), not from a
bare `--broker`, so the embedded folder broker gets its transport options: without them kombu
reads messages from `./data_in`, which does not exist, and event capture fails every second.

On the folder broker an event queue is a binding in `control/celeryev.exchange` plus message
files, and kombu's filesystem transport never expires either. Flower leaves its binding behind
when it stops, and from then on every event (the control process sends a heartbeat every few
seconds) becomes a file nobody reads, in the folder every doorbell lists. So Flower's event
queue is named after its pid: it removes its own at exit and, on start, those of Flowers whose
process is gone (a killed one cannot clean up after itself).
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

_NODE = re.compile(r"^flower-(\d+)-[0-9a-f]+$")


def guard_metrics() -> None:
    from flower.views.monitor import Metrics
    from tornado import web

    if not getattr(Metrics.get, "__wrapped__", None):
        Metrics.get = web.authenticated(Metrics.get)


def __getattr__(name: str) -> Celery:
    # Built lazily, when Celery's -A asks for it: importing guard_metrics must read no settings.
    if name == "app":
        return _app()
    raise AttributeError(name)


@functools.cache
def _app() -> Celery:
    from shared.queue import make_celery
    from shared.settings import Settings

    settings = Settings()
    app = make_celery(settings)
    if settings.broker_url.startswith("filesystem://"):
        _own_folder_event_queue(app)
    return app


def _own_folder_event_queue(app: Celery) -> None:
    import flower.events
    from celery.events import EventReceiver

    node_id = f"flower-{os.getpid()}-{uuid.uuid4().hex[:12]}"

    class NamedReceiver(EventReceiver):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("node_id", node_id)
            super().__init__(*args, **kwargs)

    flower.events.EventReceiver = NamedReceiver
    _drop_event_queues(app, lambda node: _pid_gone(node) or node == node_id)
    # Registered before Flower's own atexit stop, so it runs after it.
    atexit.register(_drop_event_queues, app, lambda node: node == node_id)


def _pid_gone(node: str) -> bool:
    match = _NODE.match(node)
    if match is None:
        return False  # not one of ours (`celery events`, another tool): leave it
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _drop_event_queues(app: Celery, drop: Callable[[str], bool]) -> None:
    from kombu import Exchange, Queue

    prefix = f"{app.conf.event_queue_prefix}."
    exchange = Exchange(app.conf.event_exchange, type="topic")
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for binding in channel.get_table(exchange.name):
            name = binding.queue
            if not name.startswith(prefix) or not drop(name[len(prefix):]):
                continue
            queue = Queue(name, exchange, routing_key=binding.routing_key, durable=False,
                          auto_delete=True, channel=channel)
            # Declaring tells this channel the binding, which delete then removes with the files.
            queue.declare()
            queue.delete()


def main() -> None:
    guard_metrics()
    from celery.__main__ import main as celery_main

    celery_main()


if __name__ == "__main__":
    main()
