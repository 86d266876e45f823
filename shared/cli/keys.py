"""`vlmq keys`: create, list and revoke API keys, and set a tenant's own limits.

`create` prints the new key alone on stdout, so `KEY=$(vlmq keys create --tenant acme)`
captures it; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from shared.db import make_engine, make_session_factory
from shared.errors import VlmqError
from shared.settings import Settings
from shared.tenancy import repo


def add_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys; set tenant limits")
    actions = keys.add_subparsers(dest="keys_command", required=True)

    create = actions.add_parser("create", help="create a key (and its tenant if new)")
    create.add_argument("--tenant", required=True, help="tenant name, e.g. acme")
    create.add_argument("--name", help="a label, e.g. the service that will use the key")
    create.add_argument("--admin", action="store_true",
                        help="may read and act on every tenant's objects (operators)")
    create.set_defaults(run=_create)

    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant")
    listing.set_defaults(run=_list)

    revoke = actions.add_parser("revoke", help="revoke a key; it stops working within a second")
    revoke.add_argument("key_id", help="the id shown by `vlmq keys list`")
    revoke.set_defaults(run=_revoke)

    limits = actions.add_parser("limits", help="set a tenant's own limits (0 = server default)")
    limits.add_argument("--tenant", required=True)
    limits.add_argument("--max-active-jobs", type=int)
    limits.add_argument("--submits-per-second", type=float)
    limits.add_argument("--max-queued-batch-lines", type=int,
                        help="batch lines queued or running at once")
    limits.add_argument("--max-active-batches", type=int, help="batches not yet ended at once")
    prefixes = limits.add_mutually_exclusive_group()
    prefixes.add_argument(
        "--image-url-prefix", action="append", metavar="s3://BUCKET/PREFIX",
        help="an s3:// prefix whose objects the tenant may name as images (repeat for more; "
             "the given list replaces the tenant's; the bucket must also be one the server "
             "reads: the store's, or VLMQ_IMAGE_FETCH_ALLOWED_BUCKETS)")
    prefixes.add_argument("--no-image-url-prefixes", action="store_true",
                          help="the tenant may name no s3:// image (the default)")
    limits.set_defaults(run=_limits)


def _run(action: Callable[[Session], None]) -> None:
    engine = make_engine(Settings())
    try:
        with make_session_factory(engine).begin() as session:
            action(session)
    except VlmqError as exc:
        raise SystemExit(f"vlmq keys: {exc.message}") from None
    finally:
        engine.dispose()


def _create(args: argparse.Namespace, extra: list[str]) -> None:
    def action(session: Session) -> None:
        row, key = repo.create_key(session, args.tenant, args.name, args.admin)
        kind = "admin key" if row.is_admin else "key"
        print(f"created {kind} {row.id} for tenant {row.tenant_id}; it is shown only now:",
              file=sys.stderr)
        print(key)

    _run(action)


def _list(args: argparse.Namespace, extra: list[str]) -> None:
    def action(session: Session) -> None:
        rows = repo.list_keys(session, args.tenant)
        print(f"{'ID':<14}{'TENANT':<20}{'NAME':<20}{'ADMIN':<7}{'CREATED':<18}"
              f"{'LAST USED':<18}REVOKED")
        for k in rows:
            print(f"{k.id:<14}{k.tenant_id:<20}{(k.name or '-'):<20}"
                  f"{('yes' if k.is_admin else 'no'):<7}{_when(k.created_at):<18}"
                  f"{_when(k.last_used_at):<18}{_when(k.revoked_at)}")

    _run(action)


def _revoke(args: argparse.Namespace, extra: list[str]) -> None:
    def action(session: Session) -> None:
        key = repo.revoke_key(session, args.key_id)
        print(f"revoked key {key.id} of tenant {key.tenant_id}", file=sys.stderr)

    _run(action)


def _limits(args: argparse.Namespace, extra: list[str]) -> None:
    prefixes = [] if args.no_image_url_prefixes else args.image_url_prefix

    def action(session: Session) -> None:
        tenant = repo.set_limits(
            session, args.tenant, max_active_jobs=args.max_active_jobs,
            submits_per_second=args.submits_per_second,
            max_queued_batch_lines=args.max_queued_batch_lines,
            max_active_batches=args.max_active_batches, image_url_prefixes=prefixes,
        )
        print(f"tenant {tenant.id}: max active jobs {tenant.max_active_jobs or 'default'}, "
              f"submits per second {tenant.submits_per_second or 'default'}, "
              f"max queued batch lines {tenant.max_queued_batch_lines or 'default'}, "
              f"max active batches {tenant.max_active_batches or 'default'}, "
              f"s3:// image prefixes {', '.join(tenant.image_url_prefixes or []) or 'none'}",
              file=sys.stderr)

    _run(action)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"
