"""`vlmq-backfill SOURCE --prompt ... --out results.jsonl`, also the server's `vlmq backfill`.

The client settings come from flags or the environment, never from the server's settings:
`VLMQ_API_KEY`, and `VLMQ_API_HOST` / `VLMQ_API_PORT` (where a local `vlmq api` listens)
for the default server; `VLMQ_S3_*` for s3:// sources (see sources.S3Access).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from vlmq.backfill import sources
from vlmq.backfill.runner import STOP_GRACE_SECONDS, Backfill, Plan, Tally
from vlmq.client.client import Client

# Every variable this command reads; the README documents each (tests/test_readme.py).
ENVIRONMENT = ("VLMQ_API_KEY", "VLMQ_API_HOST", "VLMQ_API_PORT", "VLMQ_S3_ENDPOINT_URL",
               "VLMQ_S3_REGION", "VLMQ_S3_ACCESS_KEY_ID", "VLMQ_S3_SECRET_ACCESS_KEY")
_HELP = ("run a folder, glob, s3:// prefix or manifest of images through a vlmq server into "
         "one output file (resumable)")
_FIELDS = ("model", "max_tokens", "temperature", "top_p", "top_k", "seed", "priority")
# The shell's status for a command ended by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130
STOP_LINE = (f"Stopping: nothing more is submitted; waiting up to {STOP_GRACE_SECONDS:g} s for "
             "jobs in flight (Ctrl-C again to quit now). To resume, run the same command "
             "again: it skips what is done.")


def main(argv: list[str] | None = None) -> None:
    """The `vlmq-backfill` command."""
    parser = argparse.ArgumentParser(prog="vlmq-backfill", description=_HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.run(args, [])


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`backfill` as a subcommand of the server's `vlmq`."""
    add_arguments(sub.add_parser("backfill", help=_HELP))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="folder, glob ('photos/**/*.jpg'), s3://bucket/prefix, or "
                   "a .jsonl/.csv manifest (path or URL) with an `image` column")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="the prompt for every image (a manifest may set its own)")
    prompt.add_argument("--prompt-file", type=Path)
    p.add_argument("--out", type=Path, required=True, help="results, one line per image")
    p.add_argument("--csv", action="store_true", help="write CSV instead of JSONL")
    p.add_argument("--server", help="vlmq API base URL (default: VLMQ_API_HOST/PORT)")
    p.add_argument("--api-key", help="an API key (default: VLMQ_API_KEY)")
    p.add_argument("--model")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--priority", type=int, help="0 runs first, 9 last (default 5)")
    p.add_argument("--max-in-flight", type=int, default=16, help="jobs submitted and not done")
    p.add_argument("--retry-failed", action="store_true",
                   help="submit again the items that failed in an earlier run")
    p.add_argument("--dry-run", action="store_true",
                   help="count the items and estimate the time from the server's recent rate")
    p.add_argument("--quiet", action="store_true", help="no live display; a line every 10 s")
    p.set_defaults(run=_backfill)


def default_server(env: Mapping[str, str] = os.environ) -> str:
    # Where `vlmq api` listens when run on this machine with the same environment.
    host = env.get("VLMQ_API_HOST") or "127.0.0.1"
    port = env.get("VLMQ_API_PORT") or "8000"
    return f"http://{host}:{port}"


def _backfill(args: argparse.Namespace, extra: list[str]) -> None:
    server = args.server or default_server()
    s3 = sources.S3Access.from_env()
    prompt = args.prompt_file.read_text().strip() if args.prompt_file else args.prompt
    fields = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    _check_reachable(server)
    with Client(server, args.api_key or os.environ.get("VLMQ_API_KEY")) as client:
        if args.dry_run:
            raise SystemExit(_dry_run(client, args.source, s3, fields.get("model")))
        if not prompt and not str(args.source).lower().endswith((".jsonl", ".csv")):
            raise SystemExit("vlmq backfill: give --prompt or --prompt-file")
        plan = Plan(prompt=prompt or "", fields=fields, out=args.out, csv=args.csv,
                    max_in_flight=args.max_in_flight, retry_failed=args.retry_failed)
        console = Console(stderr=True)
        backfill = Backfill(client, plan, args.source)
        with _CtrlC(backfill, console):
            total = None if args.source.startswith("s3://") else _count(
                sources.items(args.source, s3), backfill)
            items = sources.items(args.source, s3)
            if args.quiet:
                last = [0.0]

                def report(tally: Tally) -> None:
                    if time.monotonic() - last[0] >= 10:
                        last[0] = time.monotonic()
                        console.print(_status_line(tally, total), highlight=False)

                backfill.on_change = report
                tally = backfill.run(items)
            else:
                # The display reads the counters when it redraws: workers pushing lines from
                # several threads could leave an older line on screen after a newer one.
                with Live(console=console, refresh_per_second=4,
                          get_renderable=lambda: _status_line(backfill.snapshot(), total)):
                    tally = backfill.run(items)
                if not console.is_terminal:  # Live ends its last line only on a terminal
                    console.line()
            console.print(_summary(tally, args.out, stopped=backfill.stopping))
    if backfill.stopping:
        raise SystemExit(INTERRUPTED)
    raise SystemExit(1 if tally.failed else 0)


def _check_reachable(server: str) -> None:
    """Once, before anything is read or sent: a server that is not there is one line now,
    rather than a minute of the client's retries (which are for a server that blips)."""
    try:
        httpx.get(f"{server.rstrip('/')}/healthz", timeout=10)
    except httpx.TransportError as exc:
        raise SystemExit(
            f"vlmq backfill: cannot reach the vlmq API at {server} ({exc or type(exc).__name__}); "
            "start one (`vlmq up`) or give its address with --server"
        ) from None


class _CtrlC:
    """SIGINT while the backfill runs: the first stops it (one line says how to resume),
    a second leaves at once. Without this, Ctrl-C raised KeyboardInterrupt in the main
    thread, which then waited on every worker's long poll before printing a traceback."""

    def __init__(self, backfill: Backfill, console: Console) -> None:
        self.backfill = backfill
        self.console = console
        self.previous: Any = None

    def __enter__(self) -> None:
        # signal.signal works only in the main thread; elsewhere Ctrl-C is the caller's.
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.backfill.stopping:
            # Every line written so far is flushed, and a torn last line is dropped by the
            # rerun, as after kill -9; so leaving without unwinding loses nothing.
            if self.console.is_terminal:
                self.console.show_cursor(True)
                self.console.file.write("\n")
            self.console.file.flush()
            os._exit(INTERRUPTED)
        self.backfill.stop()
        self.console.print(STOP_LINE, soft_wrap=True, highlight=False, markup=False)


def _count(items: Iterable[sources.Item], backfill: Backfill) -> int:
    # A big folder takes a while to walk; Ctrl-C meanwhile should not wait for the end.
    n = 0
    for _ in items:
        if backfill.stopping:
            break
        n += 1
    return n


def _status_line(tally: Tally, total: int | None) -> str:
    done = tally.succeeded + tally.failed
    eta = "?"
    if total is not None and tally.rate > 0:
        left = total - tally.skipped - done
        eta = str(timedelta(seconds=int(max(left, 0) / tally.rate)))
    of = f" of {total}" if total is not None else ""
    return (f"submitted {tally.submitted} | resumed {tally.resumed} | running {tally.running} "
            f"| done {done}{of} (failed {tally.failed}, skipped {tally.skipped}) | "
            f"{tally.rate:.1f} images/s | ETA {eta}")


def _summary(tally: Tally, out: Path, stopped: bool = False) -> Table:
    title = f"vlmq backfill -> {out}" + (" (stopped; rerun to resume)" if stopped else "")
    table = Table(title=title)
    for column in ("skipped (done before)", "resumed", "submitted", "succeeded", "failed",
                   "seconds", "images/s"):
        table.add_column(column, justify="right")
    table.add_row(str(tally.skipped), str(tally.resumed), str(tally.submitted),
                  str(tally.succeeded), str(tally.failed),
                  f"{time.monotonic() - tally.started:.1f}", f"{tally.rate:.2f}")
    return table


def _dry_run(client: Client, source: str, s3: sources.S3Access, model: str | None) -> int:
    count = sum(1 for _ in sources.items(source, s3))
    rate = _recent_rate(client, model)
    line = f"{count} images in {source}"
    if rate:
        line += (f"; at the server's rate over the last 5 minutes ({rate:.1f} jobs/s) about "
                 f"{timedelta(seconds=int(count / rate))}")
    else:
        line += "; the server finished no job in the last 5 minutes, so no estimate"
    print(line)
    return 0


def _recent_rate(client: Client, model: str | None) -> float | None:
    since = datetime.now(timezone.utc) - timedelta(minutes=5)
    finished = []
    for job in client.iter_jobs(status="succeeded", model=model, page_size=500):
        if job.finished_at is None or job.finished_at < since:
            break
        finished.append(job.finished_at)
    if len(finished) < 2:
        return None
    span = (max(finished) - min(finished)).total_seconds()
    return len(finished) / span if span > 0 else None

