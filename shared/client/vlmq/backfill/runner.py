"""Runs a backfill: submit each item, wait for its job, append its line to the output.

Resuming is by two files beside each other: the output (one line per finished item, the
record of what is done) and `<output>.state` (one line per submitted item and its job id).
A rerun skips items in the output, waits for submitted ones, and submits the rest. Each
item's Idempotency-Key is derived from the run and the item, so an item whose submit
reached the server but was never written to the state (kill -9 at that moment) gets its
first job back instead of a second one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmq.backfill.sources import Item
from vlmq.client.client import Client
from vlmq.client.types import ApiError, Job

OUTPUT_COLUMNS = ("source", "job_id", "status", "text", "prompt_tokens", "completion_tokens",
                  "error")


@dataclass
class Tally:
    skipped: int = 0  # finished in an earlier run
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> int:
        return self.submitted - self.succeeded - self.failed

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
                 on_change: Callable[[Tally], None] = lambda tally: None) -> None:
        self.client = client
        self.plan = plan
        self.run_key = plan.run_key(source)
        self.on_change = on_change
        self.tally = Tally()
        self._lock = threading.Lock()
        self.finished, self.failed_before = _read_output(plan.out, plan.csv)
        self.submitted, self.retries = _read_state(plan.state_path)
        if plan.retry_failed and self.failed_before:
            _rewrite_without(plan.out, plan.csv, self.failed_before)
            self.finished -= self.failed_before
            for source_name in self.failed_before:
                self.submitted.pop(source_name, None)
                self.retries[source_name] = self.retries.get(source_name, 0) + 1

    def run(self, items: Iterable[Item]) -> Tally:
        # Bounded: the source is read only as fast as jobs finish, never whole into memory.
        room = threading.BoundedSemaphore(self.plan.max_in_flight)
        broken: list[BaseException] = []

        def finished(future: Future[None]) -> None:
            if future.exception() is not None:
                broken.append(future.exception())  # type: ignore[arg-type]
            room.release()

        # The pool is entered last so it exits first: every line is written before the
        # files close.
        with self._open(self.plan.out) as out, self._open(self.plan.state_path) as state, \
                ThreadPoolExecutor(self.plan.max_in_flight) as pool:
            for item in items:
                if broken:  # the server is out of reach past the client's retries: stop
                    break
                if item.source in self.finished:
                    self.tally.skipped += 1
                    continue
                room.acquire()
                pool.submit(self._one, item, out, state).add_done_callback(finished)
        if broken:
            raise SystemExit(f"vlmq backfill: stopped: {broken[0]}; rerun the same command to "
                             "continue where it stopped")
        self.on_change(self.tally)
        return self.tally

    def _open(self, path: Path) -> io.TextIOWrapper:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a", encoding="utf-8", newline="")

    def _key(self, item: Item) -> str:
        digest = hashlib.sha256(item.source.encode()).hexdigest()[:24]
        retry = self.retries.get(item.source, 0)
        return f"backfill-{self.run_key}-{digest}" + (f"-retry{retry}" if retry else "")

    def _one(self, item: Item, out: io.TextIOWrapper, state: io.TextIOWrapper) -> None:
        job_id = self.submitted.get(item.source)
        try:
            if job_id is None:
                job = self.client.submit(
                    item.fields.get("prompt", self.plan.prompt),
                    image=item.path, image_url=item.url, idempotency_key=self._key(item),
                    **{**self.plan.fields, **{k: v for k, v in item.fields.items()
                                              if k != "prompt"}},
                )
                job_id = job.id
                self._append(state, json.dumps({"source": item.source, "job_id": job_id,
                                                "retry": self.retries.get(item.source, 0)}))
            with self._lock:
                self.tally.submitted += 1
            self.on_change(self.tally)
            line = self._line(item, self.client.wait(job_id))
        except ApiError as exc:  # refused at submit (a bad image, say): fails this item
            with self._lock:
                self.tally.submitted += 1
            line = {"source": item.source, "job_id": job_id, "status": "failed", "text": None,
                    "prompt_tokens": None, "completion_tokens": None,
                    "error": f"{exc.code}: {exc.message}"}
        with self._lock:
            if line["status"] == "succeeded":
                self.tally.succeeded += 1
            else:
                self.tally.failed += 1
        self._append(out, self._format(line))
        self.on_change(self.tally)

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
        buffer = io.StringIO()
        csv.writer(buffer).writerow([line[c] for c in OUTPUT_COLUMNS])
        return buffer.getvalue().rstrip("\r\n")

    def _append(self, fh: io.TextIOWrapper, text: str) -> None:
        # One write and flush per line under the lock: a kill leaves at most one partial
        # last line, which the next run drops.
        with self._lock:
            fh.write(text + "\n")
            fh.flush()


def _read_output(out: Path, as_csv: bool) -> tuple[set[str], set[str]]:
    """Sources already finished, and those of them that failed; drops a torn last line."""
    if not out.exists():
        return set(), set()
    text = out.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # the previous run was killed mid-line
        text = text[: text.rfind("\n") + 1]
        out.write_text(text, encoding="utf-8")
    if as_csv:
        rows = [dict(zip(OUTPUT_COLUMNS, r, strict=False))
                for r in csv.reader(io.StringIO(text))]
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
    kept = []
    for line in out.read_text(encoding="utf-8").splitlines(keepends=True):
        source = (next(csv.reader([line]))[0] if as_csv else json.loads(line)["source"])
        if source not in sources:
            kept.append(line)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(out)
