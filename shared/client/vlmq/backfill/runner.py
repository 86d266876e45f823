"""Runs a backfill: submit each item, wait for its job, append its line to the output.

Resuming is by two files beside each other: the output (one line per finished item, the
record of what is done) and `<output>.state` (one line per submitted item and its job id).
A rerun skips items in the output, waits for submitted ones, and submits the rest. Each
item's Idempotency-Key is derived from the run and the item, so an item whose submit
reached the server but was never written to the state (kill -9 at that moment) gets its
first job back instead of a second one.

`stop()` (Ctrl-C) stops submitting at once and lets the jobs in flight finish for a short
grace; what has not finished by then is in the state file, and the rerun waits for it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmq.backfill.sources import Item
from vlmq.client.client import Client
from vlmq.client.types import ApiError, Job

OUTPUT_COLUMNS = ("source", "job_id", "status", "text", "prompt_tokens", "completion_tokens",
                  "error")
# How long an interrupted run waits for the results of jobs already in flight.
STOP_GRACE_SECONDS = 5.0


@dataclass
class Tally:
    """Each item of the source counts once: skipped (in the output already), resumed (a job
    from an earlier run, found in the state file or returned again for its Idempotency-Key)
    or submitted (a new job); succeeded and failed count what finished in this run."""

    skipped: int = 0
    resumed: int = 0
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> int:
        return self.submitted + self.resumed - self.succeeded - self.failed

    @property
    def rate(self) -> float:
        return (self.succeeded + self.failed) / max(time.monotonic() - self.started, 1e-6)


@dataclass(frozen=True)
class Plan:
    prompt: str
    fields: dict[str, Any]
    out: Path
    csv: bool = False
    max_in_flight: int = 16
    retry_failed: bool = False

    @property
    def state_path(self) -> Path:
        return self.out.with_name(self.out.name + ".state")

    def run_key(self, source: str) -> str:
        identity = json.dumps({"source": source, "prompt": self.prompt, "fields": self.fields,
                               "out": str(self.out.resolve())}, sort_keys=True)
        return hashlib.sha256(identity.encode()).hexdigest()[:16]


class Backfill:
    def __init__(self, client: Client, plan: Plan, source: str,
                 on_change: Callable[[Tally], None] = lambda tally: None,
                 grace: float = STOP_GRACE_SECONDS) -> None:
        self.client = client
        self.plan = plan
        self.run_key = plan.run_key(source)
        self.on_change = on_change
        self.grace = grace
        self.tally = Tally()
        self._lock = threading.Lock()
        # A plain flag, not an Event: stop() runs in a signal handler, which may interrupt
        # the main thread inside an Event's own lock.
        self._stopped = False
        self._stopped_at = 0.0
        self._closed = False
        self._broken: list[BaseException] = []
        self._workers_left = 0
        self._workers_done = threading.Event()
        self.finished, self.failed_before = _read_output(plan.out, plan.csv)
        self.submitted, self.retries = _read_state(plan.state_path)
        if plan.retry_failed and self.failed_before:
            _rewrite_without(plan.out, plan.csv, self.failed_before)
            self.finished -= self.failed_before
            for source_name in self.failed_before:
                self.submitted.pop(source_name, None)
                self.retries[source_name] = self.retries.get(source_name, 0) + 1

    @property
    def stopping(self) -> bool:
        """`stop()` was called: the run ends early and a rerun has work left."""
        return self._stopped

    def stop(self) -> None:
        """No new submits from now on; `run` returns once the jobs in flight finish or
        `grace` seconds pass. Safe from a signal handler: it only sets flags."""
        if not self._stopped:
            self._stopped_at = time.monotonic()
            self._stopped = True

    def snapshot(self) -> Tally:
        """A consistent copy of the counters, for a display that reads them from another
        thread than the ones updating them."""
        with self._lock:
            return dataclasses.replace(self.tally)

    def run(self, items: Iterable[Item]) -> Tally:
        # Bounded: the source is read only as fast as jobs finish, never whole into memory.
        workers = max(1, self.plan.max_in_flight)
        feed: queue.Queue[Item | None] = queue.Queue(maxsize=workers)
        out = self._open(self.plan.out)
        state = self._open(self.plan.state_path)
        if self.plan.csv and out.tell() == 0:
            # Only into an empty file: a resumed run appends below the header it wrote.
            self._append(out, self._format(dict(zip(OUTPUT_COLUMNS, OUTPUT_COLUMNS,
                                                    strict=True))))
        # Daemon threads, not a ThreadPoolExecutor: an interrupted run must be able to leave
        # while a worker is still in a long poll, and the executor joins its threads at exit.
        self._workers_left = workers
        for n in range(workers):
            threading.Thread(target=self._work, args=(feed, out, state), daemon=True,
                             name=f"backfill-{n}").start()
        try:
            for item in items:
                if self._stopped or self._broken:
                    break
                if item.source in self.finished:
                    with self._lock:
                        self.tally.skipped += 1
                    continue
                self._put(feed, item)
            for _ in range(workers):
                self._put(feed, None)
            self._wait_for_workers()
        finally:
            with self._lock:  # a worker still waiting writes nothing once these are closed
                self._closed = True
                out.close()
                state.close()
        if self._broken and not self._stopped:
            raise SystemExit(f"vlmq backfill: stopped: {self._broken[0]}; rerun the same "
                             "command to continue where it stopped")
        self.on_change(self.snapshot())
        return self.snapshot()

    def _put(self, feed: queue.Queue[Item | None], item: Item | None) -> None:
        # A short timeout, so a stop is seen while the workers are all busy.
        while not self._stopped:
            try:
                feed.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _wait_for_workers(self) -> None:
        while not self._workers_done.wait(0.1):
            if self._stopped and time.monotonic() >= self._stopped_at + self.grace:
                return

    def _work(self, feed: queue.Queue[Item | None], out: io.TextIOWrapper,
              state: io.TextIOWrapper) -> None:
        try:
            while not self._stopped:
                try:
                    item = feed.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is None:
                    return
                # Checked again after the get: an item taken as Ctrl-C came is not sent,
                # nor anything once the server is out of reach.
                if self._stopped or self._broken:
                    continue
                try:
                    self._one(item, out, state)
                except Exception as exc:
                    # Reported by run(); after a stop, only a long poll cut short at exit.
                    if not self._stopped:
                        self._broken.append(exc)
        finally:
            with self._lock:
                self._workers_left -= 1
                if self._workers_left == 0:
                    self._workers_done.set()

    def _open(self, path: Path) -> io.TextIOWrapper:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a", encoding="utf-8", newline="")

    def _key(self, item: Item) -> str:
        digest = hashlib.sha256(item.source.encode()).hexdigest()[:24]
        retry = self.retries.get(item.source, 0)
        return f"backfill-{self.run_key}-{digest}" + (f"-retry{retry}" if retry else "")

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.tally, name, getattr(self.tally, name) + 1)
        self.on_change(self.snapshot())

    def _submit(self, item: Item) -> Job:
        """The job; `replayed` when the server returned one an earlier run submitted."""
        return self.client.submit(
            item.fields.get("prompt", self.plan.prompt), item.path, image_url=item.url,
            idempotency_key=self._key(item),
            **{**self.plan.fields, **{k: v for k, v in item.fields.items() if k != "prompt"}},
        )

    def _one(self, item: Item, out: io.TextIOWrapper, state: io.TextIOWrapper) -> None:
        job_id = self.submitted.get(item.source)
        counted = False
        try:
            if job_id is None:
                job = self._submit(item)
                job_id = job.id
                self._append(state, json.dumps({"source": item.source, "job_id": job_id,
                                                "retry": self.retries.get(item.source, 0)}))
                self._count("resumed" if job.replayed else "submitted")
            else:
                self._count("resumed")
            counted = True
            line = self._line(item, self.client.wait(job_id))
        except ApiError as exc:  # refused at submit (a bad image, say): fails this item
            if not counted:
                self._count("submitted")
            line = {"source": item.source, "job_id": job_id, "status": "failed", "text": None,
                    "prompt_tokens": None, "completion_tokens": None,
                    "error": f"{exc.code}: {exc.message}"}
        if self._append(out, self._format(line)):
            self._count("succeeded" if line["status"] == "succeeded" else "failed")

    def _line(self, item: Item, job: Job) -> dict[str, Any]:
        result, error = job.result, job.error
        return {"source": item.source, "job_id": job.id, "status": job.status,
                "text": result.text if result else None,
                "prompt_tokens": result.prompt_tokens if result else None,
                "completion_tokens": result.completion_tokens if result else None,
                "error": f"{error.code}: {error.message}" if error else None}

    def _format(self, line: dict[str, Any]) -> str:
        if not self.plan.csv:
            return json.dumps(line, ensure_ascii=False)
        return _csv_record([line[c] for c in OUTPUT_COLUMNS])

    def _append(self, fh: io.TextIOWrapper, text: str) -> bool:
        # One write and flush per line under the lock: a kill leaves at most one partial
        # last line, which the next run drops. False once run() closed the files after an
        # interrupt: that item's job is in the state file, and the rerun waits for it.
        with self._lock:
            if self._closed:
                return False
            fh.write(text + "\n")
            fh.flush()
            return True


def _csv_record(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().removesuffix("\n")


def _csv_rows(text: str) -> list[dict[str, str]]:
    """The CSV output's rows, without its header (absent from files older than it)."""
    return [dict(zip(OUTPUT_COLUMNS, r, strict=False)) for r in csv.reader(io.StringIO(text))
            if r and tuple(r) != OUTPUT_COLUMNS]


def _read_output(out: Path, as_csv: bool) -> tuple[set[str], set[str]]:
    """Sources already finished, and those of them that failed; drops a torn last line."""
    if not out.exists():
        return set(), set()
    text = out.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # the previous run was killed mid-line
        text = text[: text.rfind("\n") + 1]
        _replace(out, text)
    if as_csv:
        rows = _csv_rows(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    finished = {r["source"] for r in rows}
    failed = {r["source"] for r in rows if r["status"] != "succeeded"}
    return finished, failed


def _read_state(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    submitted: dict[str, str] = {}
    retries: dict[str, int] = {}
    if not path.exists():
        return submitted, retries
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a torn last line
            continue
        submitted[entry["source"]] = entry["job_id"]
        retries[entry["source"]] = max(retries.get(entry["source"], 0), entry.get("retry", 0))
    return submitted, retries


def _rewrite_without(out: Path, as_csv: bool, sources: set[str]) -> None:
    text = out.read_text(encoding="utf-8")
    if as_csv:
        # Parsed as records, not lines: a quoted text may span several lines.
        header = next(csv.reader(io.StringIO(text)), None) == list(OUTPUT_COLUMNS)
        kept = [_csv_record(list(OUTPUT_COLUMNS))] if header else []
        kept += [_csv_record([r.get(c, "") for c in OUTPUT_COLUMNS]) for r in _csv_rows(text)
                 if r["source"] not in sources]
        _replace(out, "".join(record + "\n" for record in kept))
        return
    _replace(out, "".join(line for line in text.splitlines(keepends=True)
                          if line.strip() and json.loads(line)["source"] not in sources))


def _replace(out: Path, text: str) -> None:
    # Write aside and rename: a kill in the middle leaves the old file whole.
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
