"""`vlmq usage`: what each tenant used, per model or per day, from the usage ledger, as an
aligned table or as CSV (`--csv`, for a spreadsheet or a billing script). It reads the
database directly, as `vlmq keys` does, so it needs no API key.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence

from shared.db import make_engine, make_session_factory
from shared.errors import VlmqError
from shared.settings import Settings
from shared.usage import report
from shared.usage.ledger import COUNTERS


def add_parser(sub: argparse._SubParsersAction) -> None:
    usage = sub.add_parser(
        "usage", help="jobs, images, tokens and engine seconds per tenant and model or day")
    usage.add_argument("--tenant", help="one tenant's (default: every tenant's)")
    usage.add_argument("--start", help="ISO 8601 date or time, UTC unless it gives a zone "
                                       f"(default: {report.DEFAULT_DAYS} days before --end)")
    usage.add_argument("--end", help="ISO 8601 date or time (default: now)")
    usage.add_argument("--group-by", choices=report.GROUPS, default="model",
                       help="totals per tenant and model (default) or per tenant and UTC day")
    usage.add_argument("--csv", action="store_true",
                       help="CSV on stdout, a header and one line per group, no total")
    usage.set_defaults(run=_usage)


def _usage(args: argparse.Namespace, extra: list[str]) -> None:
    engine = make_engine(Settings())
    try:
        span = report.window(args.start, args.end)
        with make_session_factory(engine)() as session:
            rows = report.totals(session, span, args.group_by, args.tenant)
    except VlmqError as exc:
        raise SystemExit(f"vlmq usage: {exc.message}") from None
    finally:
        engine.dispose()
    header = ["tenant", args.group_by, *COUNTERS]
    lines = [[u.tenant_id, u.model if args.group_by == "model" else str(u.day),
              *_values(u.counters, digits=6 if args.csv else 1)] for u in rows]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(lines)
        return
    print(f"usage in the hours that begin from {span.start:%Y-%m-%d %H:%M} to "
          f"{span.end:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    total = ["TOTAL", "", *_values(report.grand_total(rows), digits=1)]
    print(table([h.upper() for h in header], [*lines, total] if lines else []))


def _values(counters: report.Counters, digits: int) -> list[str]:
    return [f"{value:.{digits}f}" if isinstance(value, float) else str(value)
            for value in (getattr(counters, name) for name in COUNTERS)]


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Columns as wide as their widest cell; the first two (names) left-aligned, the
    numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return "\n".join(line(row) for row in [header, *lines])
