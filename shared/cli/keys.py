"""`vlmq keys`: create, list and revoke API keys, and set a tenant's own limits.

A tenant's limit is a number, 'default' (the server's) or 'unlimited' (none for this
tenant): shared/tenancy/limits.py says how each is stored and read.

`create` prints the new key alone on stdout, so `KEY=$(vlmq keys create --tenant acme)`
captures it; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from datetime import datetime
from functools import partial

from sqlalchemy.orm import Session

from shared.db import make_engine, make_session_factory
from shared.errors import InvalidInput, VlmqError
from shared.settings import Settings
from shared.tenancy import repo
from shared.tenancy.limits import (
    KEEP,
    MAX_COUNT,
    MAX_RATE,
    MAX_RETENTION_SECONDS,
    Unchanged,
    check_count,
    check_rate,
)


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

    limits = actions.add_parser(
        "limits", help="show or set a tenant's own limits and retention",
        description="Each limit takes a number, 'default' (the server's VLMQ_TENANT_* "
                    "setting) or 'unlimited' (no limit for this tenant). An option left out "
                    "stays as it is; with none, the tenant's settings are shown.")
    limits.add_argument("--tenant", required=True)
    for option, (_, words, whole) in _LIMITS.items():
        limits.add_argument(f"--{option.replace('_', '-')}", dest=option, default=KEEP,
                            metavar="N|default|unlimited", help=_HELP[option],
                            type=partial(parse_limit, whole=whole))
    limits.add_argument("--unlimited", action="store_true",
                        help="lift all four limits for this tenant at once")
    limits.add_argument(
        "--retention", default=KEEP, type=parse_retention,
        metavar="SECONDS|30d|12h|90m|default|forever",
        help="how long its jobs, batches and files are kept after they end (default: "
             "VLMQ_RETENTION_SECONDS)")
    images = limits.add_mutually_exclusive_group()
    limits.set_defaults(keep_images=KEEP)
    images.add_argument("--keep-images", dest="keep_images", action="store_const", const=True,
                        help="a job's image is kept as long as the job")
    images.add_argument("--no-keep-images", dest="keep_images", action="store_const",
                        const=False, help="a job's image is removed as soon as the job ends")
    images.add_argument("--default-keep-images", dest="keep_images", action="store_const",
                        const=None, help="back to the server's VLMQ_KEEP_IMAGES")
    prefixes = limits.add_mutually_exclusive_group()
    prefixes.add_argument(
        "--image-url-prefix", action="append", metavar="s3://BUCKET/PREFIX",
        help="an s3:// prefix whose objects the tenant may name as images (repeat for more; "
             "the given list replaces the tenant's; the bucket must also be one the server "
             "reads: the store's, or VLMQ_IMAGE_FETCH_ALLOWED_BUCKETS)")
    prefixes.add_argument("--no-image-url-prefixes", action="store_true",
                          help="the tenant may name no s3:// image (the default)")
    limits.set_defaults(run=_limits)


# Each limit: the server's setting a tenant's NULL stands for, words, whether whole.
_LIMITS: dict[str, tuple[str, str, bool]] = {
    "max_active_jobs": ("tenant_max_active_jobs", "max active jobs", True),
    "submits_per_second": ("tenant_submits_per_second", "submits per second", False),
    "max_queued_batch_lines": ("tenant_max_queued_batch_lines", "max queued batch lines", True),
    "max_active_batches": ("tenant_max_active_batches", "max active batches", True),
}
_HELP = {
    "max_active_jobs": "jobs queued or running at once",
    "submits_per_second": "submissions (jobs, files, batches) per second",
    "max_queued_batch_lines": "batch lines queued or running at once",
    "max_active_batches": "batches not yet ended at once",
}
# A bare 0 meant "the server's default" before it meant "no limit": refused, so that no
# script written for the old meaning silently lifts a tenant's limits.
_ZERO_REFUSED = ("a bare 0 is ambiguous: say 'default' for the server's default or "
                 "'unlimited' for no limit for this tenant")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,12})([smhd]?)")


def parse_limit(text: str, *, whole: bool) -> int | float | None:
    """A limit as typed: 'default' is None (the server's), 'unlimited' 0, else a number
    above 0; argparse.ArgumentTypeError otherwise."""
    word = text.strip().lower()
    if word == "default":
        return None
    if word == "unlimited":
        return 0
    what = "a whole number" if whole else "a number"
    try:
        value: int | float = int(word) if whole else float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {what}, 'default' or 'unlimited'") from None
    if value == 0:
        raise argparse.ArgumentTypeError(_ZERO_REFUSED)
    try:
        return (check_count("the limit", int(value)) if whole
                else check_rate("the limit", value))
    except InvalidInput:
        bound = MAX_COUNT if whole else f"{MAX_RATE:g}"
        raise argparse.ArgumentTypeError(
            f"{text!r}: {what} above 0 and at most {bound}, 'default' or 'unlimited'"
        ) from None


def parse_retention(text: str) -> int | None:
    """A retention as typed: 'default' is None (the server's), 'forever' 0, else seconds
    above 0, whole or with a unit (30d, 12h, 90m, 45s)."""
    word = text.strip().lower()
    if word == "default":
        return None
    if word == "forever":
        return 0
    match = _DURATION.fullmatch(word)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: seconds, or a number with d, h, m or s (30d), 'default' or 'forever'")
    seconds = int(match[1]) * _UNITS[match[2] or "s"]
    if seconds == 0:
        raise argparse.ArgumentTypeError(
            "a bare 0 is ambiguous: say 'forever' to keep for ever or 'default' for the "
            "server's VLMQ_RETENTION_SECONDS")
    if seconds > MAX_RETENTION_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: at most {MAX_RETENTION_SECONDS} seconds (about 68 years); "
            "'forever' keeps for ever")
    return seconds


def describe_limit(own: float | None, default: float) -> str:
    """'unlimited', 'default (10000)' or '500'."""
    if own is None:
        return f"default ({_amount(default)})"
    return _amount(own)


def describe_retention(own: int | None, default: int) -> str:
    """'forever', 'default (30 days)' or '12 hours'."""
    if own is None:
        return f"default ({_duration(default)})"
    return _duration(own)


def describe_keep_images(own: bool | None, default: bool) -> str:
    if own is None:
        return f"default ({'yes' if default else 'no'})"
    return "yes" if own else "no"


def _amount(value: float) -> str:
    return "unlimited" if value == 0 else f"{value:g}"


def _duration(seconds: int) -> str:
    if seconds == 0:
        return "forever"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


def _run(action: Callable[[Session], None], settings: Settings | None = None) -> None:
    engine = make_engine(settings or Settings())
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
    given = {name: getattr(args, name) for name in _LIMITS if getattr(args, name) is not KEEP}
    if args.unlimited:
        if given:
            raise SystemExit("vlmq keys limits: --unlimited lifts all four limits; give no "
                             f"other limit with it (--{next(iter(given)).replace('_', '-')})")
        given = dict.fromkeys(_LIMITS, 0)
    if args.no_image_url_prefixes:
        prefixes: list[str] | None | Unchanged = []
    else:
        prefixes = args.image_url_prefix if args.image_url_prefix is not None else KEEP
    settings = Settings()

    def action(session: Session) -> None:
        tenant = repo.set_limits(session, args.tenant, retention_seconds=args.retention,
                                 keep_images=args.keep_images, image_url_prefixes=prefixes,
                                 **given)
        lines = [f"  {words}: {describe_limit(getattr(tenant, name), getattr(settings, key))}"
                 for name, (key, words, _) in _LIMITS.items()]
        lines.append("  retention: "
                     + describe_retention(tenant.retention_seconds, settings.retention_seconds))
        lines.append("  keep images: "
                     + describe_keep_images(tenant.keep_images, settings.keep_images))
        lines.append("  s3:// image prefixes: "
                     + (", ".join(tenant.image_url_prefixes or []) or "none"))
        print(f"tenant {tenant.id}:", *lines, sep="\n", file=sys.stderr)

    _run(action, settings)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"
