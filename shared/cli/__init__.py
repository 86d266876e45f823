"""`vlmq` command line. Server commands exec their process so signals reach it directly."""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

from vlmq.backfill import cli as backfill_cli

from shared.cli import keys as keys_cli
from shared.cli import preflight
from shared.cli import tenants as tenants_cli
from shared.cli import usage as usage_cli
from shared.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        raise SystemExit(2)
    if args.command in _USE_THE_DATABASE:
        preflight.migrated_database(args.command, Settings(),
                                    server=args.command in _SERVERS)
    args.run(args, extra)


# Commands that need a migrated database; `migrate`, `up` and `demo` make it themselves.
_USE_THE_DATABASE = frozenset({"api", "worker", "control", "webhooks", "keys", "tenants",
                               "usage"})
_SERVERS = frozenset({"api", "worker", "control", "webhooks"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmq", description="Queue-based async inference for vision-language models."
    )
    sub = parser.add_subparsers(dest="command")

    api = sub.add_parser("api", help="serve the HTTP API (uvicorn)")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.set_defaults(run=_api)

    worker = sub.add_parser("worker", help="run a worker: resident engine + Celery consumer")
    worker.set_defaults(run=_worker)

    control = sub.add_parser(
        "control", aliases=["webhooks"],
        help="run the CPU control process: sweeper, batch work, webhook dispatch and delivery "
        "(`webhooks` is an alias)",
    )
    control.set_defaults(run=_control)

    secret = sub.add_parser("webhook-secret", help="print a new whsec_ webhook signing secret")
    secret.set_defaults(run=_webhook_secret)

    flower = sub.add_parser("flower", help="run the Flower dashboard on the same broker")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument(
        "--host", default=None,
        help="address to listen on (default: VLMQ_API_HOST, i.e. where the API listens)",
    )
    flower.add_argument(
        "--no-auth", action="store_true",
        help="serve without basic auth when VLMQ_FLOWER_BASIC_AUTH is unset (local use only)",
    )
    flower.set_defaults(run=_flower)

    up = sub.add_parser(
        "up", help="run a local stack (migrate, API, worker, control process) until Ctrl-C")
    up.add_argument("--port", type=int, default=None,
                    help="the API's port (default: VLMQ_API_PORT, 8000)")
    up.add_argument("--flower", action="store_true",
                    help="also run the Flower dashboard (basic auth; printed at start)")
    up.add_argument("--flower-port", type=int, default=5555)
    up.set_defaults(run=_up)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    migrate.set_defaults(run=_migrate)

    demo = sub.add_parser("demo", help="run API + worker + control process locally and push sample images through")
    demo.add_argument("--images", type=int, default=16, help="how many sample images to submit")
    demo.set_defaults(run=_demo)

    keys_cli.add_parser(sub)
    tenants_cli.add_parser(sub)
    usage_cli.add_parser(sub)
    backfill_cli.add_parser(sub)

    model = sub.add_parser("make-test-model", help="build a tiny random-weight Qwen2-VL offline")
    model.add_argument("dir", type=Path)
    model.add_argument("--size", choices=["tiny", "bench"], default="tiny")
    model.set_defaults(run=_make_test_model)
    return parser


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *argv])


def _api(args: argparse.Namespace, extra: list[str]) -> None:
    settings = Settings()
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    _exec(["-m", "uvicorn", "api.app:create_app", "--factory", "--host", host,
           "--port", str(port), "--no-access-log",
           # Longer than uvicorn's 5 s so polling clients and load balancers reuse connections.
           "--timeout-keep-alive", "65",
           # h11 with timeouts on slow request heads and bodies (api/infra/http_limits.py); h11
           # also refuses to buffer a head longer than the limit.
           "--http", "api.infra.http_limits:LimitedH11Protocol",
           "--h11-max-incomplete-event-size", str(settings.api_max_header_bytes), *extra])


def _worker(args: argparse.Namespace, extra: list[str]) -> None:
    _exec(["-m", "worker", *extra])


def _control(args: argparse.Namespace, extra: list[str]) -> None:
    _exec(["-m", "worker.control.app", *extra])


def _webhook_secret(args: argparse.Namespace, extra: list[str]) -> None:
    print(f"whsec_{base64.b64encode(secrets.token_bytes(32)).decode()}")


def _flower(args: argparse.Namespace, extra: list[str]) -> None:
    settings = Settings()
    auth = _flower_auth_args(settings.flower_basic_auth, no_auth=args.no_auth)
    # Not Flower's default of every interface: the dashboard is as private as the API.
    host = args.host or settings.api_host
    # vlmq's own Celery app, not a bare --broker: the folder broker needs its transport options.
    folder: list[str] = []
    if settings.broker_url.startswith("filesystem://"):
        # The control process sends its events anyway. Flower's periodic "enable events"
        # broadcast would leave a file every few seconds in each stopped worker's control
        # queue, which the folder broker never expires.
        folder = ["--enable_events=False"]
    _exec(["-m", "shared.cli.flower_server", "-A", "shared.cli.flower_server:app", "flower",
           f"--address={host}", f"--port={args.port}", *auth, *folder, *extra])


def _flower_auth_args(credentials: list[str], *, no_auth: bool) -> list[str]:
    if not credentials:
        if no_auth:
            return []
        raise SystemExit(
            "vlmq flower: set VLMQ_FLOWER_BASIC_AUTH, e.g. '[\"admin:<password>\"]', since the "
            "dashboard can revoke tasks and stop workers; --no-auth serves it open (local use only)"
        )
    # Flower splits the option on "," and compares each entry with the decoded
    # "user:password" of the request, so other shapes would never match.
    if any(":" not in c or "," in c for c in credentials):
        raise SystemExit(
            'vlmq flower: each VLMQ_FLOWER_BASIC_AUTH entry must be "user:password" without ","'
        )
    return [f"--basic-auth={','.join(credentials)}"]


def _migrate(args: argparse.Namespace, extra: list[str]) -> None:
    from shared.migrate import upgrade_head

    settings = Settings()
    preflight.writable_database_folder("migrate", settings)
    upgrade_head(settings)
    print("database is at the latest schema revision")


def _demo(args: argparse.Namespace, extra: list[str]) -> None:
    from shared.devtools.demo import run_demo

    raise SystemExit(run_demo(n_images=args.images))


def _up(args: argparse.Namespace, extra: list[str]) -> None:
    from shared.devtools.up import run_up

    raise SystemExit(run_up(args.port, args.flower, args.flower_port))


def _make_test_model(args: argparse.Namespace, extra: list[str]) -> None:
    from shared.devtools.tiny_model import build_tiny_model

    path = build_tiny_model(args.dir, size=args.size)
    print(f"model written to {path}; serve it with VLMQ_MODEL_PATH={path}")


if __name__ == "__main__":
    main()
