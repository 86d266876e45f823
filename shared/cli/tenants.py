"""`vlmq tenants purge NAME`: remove everything of one tenant, after counting it.

`--dry-run` only counts. Without `--yes` the command asks for the tenant's name to be typed
again, as removal cannot be undone.
"""

from __future__ import annotations

import argparse
import sys

from shared.db import make_engine, make_session_factory
from shared.errors import VlmqError
from shared.retention import tenants
from shared.settings import Settings
from shared.storage import make_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tenants", help="operate on a tenant's data (purge)")
    actions = parser.add_subparsers(dest="tenants_command", required=True)
    purge = actions.add_parser(
        "purge", help="remove every job, image, batch, file and webhook delivery of a tenant "
        "(its keys and usage stay)")
    purge.add_argument("tenant", help="the tenant's name, e.g. acme")
    purge.add_argument("--dry-run", action="store_true", help="count what would go; remove nothing")
    purge.add_argument("--yes", action="store_true", help="do not ask to confirm")
    purge.set_defaults(run=_purge)


def _purge(args: argparse.Namespace, extra: list[str]) -> None:
    settings = Settings()
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session:
            found = tenants.count(session, args.tenant)
        _describe(args.tenant, found)
        if args.dry_run:
            print("dry run: nothing was removed", file=sys.stderr)
            return
        if not args.yes and not _confirmed(args.tenant):
            raise SystemExit("vlmq tenants purge: not confirmed; nothing was removed")
        tenants.purge(sessions, make_store(settings), settings, args.tenant,
                      chunk=settings.retention_chunk, progress=_progress)
        print(f"tenant {args.tenant}: purged (its keys and usage remain; "
              "`vlmq keys revoke` removes keys)", file=sys.stderr)
    except VlmqError as exc:
        raise SystemExit(f"vlmq tenants purge: {exc.message}") from None
    finally:
        engine.dispose()


def _describe(tenant: str, found: tenants.TenantData) -> None:
    print(f"tenant {tenant}:\n"
          f"  jobs        {found.jobs} ({found.active_jobs} queued or running: cancelled first)\n"
          f"  images      {found.images} stored\n"
          f"  batches     {found.batches} ({found.active_batches} not ended)\n"
          f"  files       {found.files}\n"
          f"  deliveries  {found.deliveries} webhook deliveries", file=sys.stderr)


def _confirmed(tenant: str) -> bool:
    if not sys.stdin.isatty():
        print("not a terminal: pass --yes to purge without a prompt", file=sys.stderr)
        return False
    return input(f"type the tenant's name ({tenant}) to remove all of it: ").strip() == tenant


def _progress(what: str, n: int) -> None:
    print(f"  {what}: {n}", file=sys.stderr, flush=True)
