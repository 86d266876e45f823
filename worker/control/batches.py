"""Moves batches along: validate the input file, expand its lines into jobs, and write the
output and error files once every line has ended (or the batch was cancelled or expired).

Runs on a thread of the control process (`vlmq control`), never in the API: decoding and
storing each line's image, writing output files and building webhook payloads take CPU and
memory that the HTTP process keeps for requests. A process works on a batch only while it
holds the batch's lease, so any number of control processes can run together and never
expand the same batch; a process killed mid-expansion leaves its lease to lapse, and
another (or the restarted one) resumes.

Each line passes the intake that `POST /v1/jobs` does (shared/jobs/intake.py).
Expansion is chunked: each chunk's jobs are inserted in the same transaction that
advances `lines_expanded`, and a line can hold only one job (unique batch_id, batch_line),
so a resumed expansion neither loses nor doubles a line.

One batch's trouble stays its own: an unexpected exception while working a batch is
counted on that batch, which backs off (`retry_at`, doubling) while the loop goes on to
the others, and fails alone after `batch_work_tries` failures in a row. Only an outage of
a dependency (database, broker, store) pauses the whole pass, since no batch could move.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from itertools import islice
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import input as batch_input
from shared.batches import output
from shared.batches import repo as batches
from shared.batches import transitions as batch_transitions
from shared.batches.status import BatchStatus
from shared.batches.view import BatchObject, batch_event_payload
from shared.chat import parse_chat_request
from shared.errors import InvalidInput
from shared.jobs import transitions as jobs_transitions
from shared.jobs.images import job_images_bytes
from shared.jobs.intake import Intake
from shared.jobs.params import GenerationParams
from shared.jobs.status import JobStatus
from shared.models import Batch, Job, StoredFile, Tenant
from shared.outages import unreachable
from shared.queue import request_abort
from shared.retention.policy import keeps_images, retention
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.tenancy.repo import tenant_rules
from shared.timeutil import as_utc, utcnow
from shared.wakeups import WakeupSender
from shared.webhooks import repo as deliveries
from worker.control.metrics import ControlMetrics

log = logging.getLogger(__name__)

CHUNK_LINES = 500
# The first chunk is small so the engine starts on a batch at once; chunks then double
# up to CHUNK_LINES, where a transaction per chunk costs little.
FIRST_CHUNK_LINES = 32
# A batch with this few lines left to run is looked at every NEAR_END_POLL_SECONDS rather
# than every poll, so it ends soon after its last line; counting so few lines is cheap.
NEAR_END_LINES = 256
NEAR_END_POLL_SECONDS = 0.05
_SPOOL_BYTES = 8 * 1024 * 1024
_MAX_RETRY_SECONDS = 300.0
# What a line that never ran is told, by how its batch ended.
_NOT_RUN = {BatchStatus.expired: "batch_expired", BatchStatus.failed: "batch_failed"}
# The verb that ends a batch as each final status, once its files are written.
_END = {
    BatchStatus.completed: batch_transitions.complete,
    BatchStatus.failed: batch_transitions.fail,
    BatchStatus.expired: batch_transitions.expire,
    BatchStatus.cancelled: batch_transitions.finish_cancel,
}
# How long a tenant's allowed image prefixes are used before they are read again.
_RULES_FRESH_SECONDS = 1.0


class InputGone(Exception):
    """The batch's input file is no longer there (its row or its stored object)."""


class TenantPrefixes:
    """The `s3://` prefixes each tenant may name as images, read at most once a second per
    tenant, so a batch of many lines asks the database once, not once per line."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[str, ...], float]] = {}

    def __call__(self, tenant: str) -> tuple[str, ...]:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(tenant)
        if cached is not None and now - cached[1] < _RULES_FRESH_SECONDS:
            return cached[0]
        with self._sessions() as session:
            prefixes = tenant_rules(session, tenant).image_url_prefixes
        with self._lock:
            self._cache[tenant] = (prefixes, now)
        return prefixes


class BatchRunner:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], store: ObjectStore,
                 wakeups: WakeupSender, metrics: ControlMetrics) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.wakeups = wakeups
        self.metrics = metrics
        self.intake = Intake(settings, store, sessions, image_prefixes=TenantPrefixes(sessions))
        # A chunk's lines are checked and their images stored on these threads: a store put
        # is mostly a round trip, and one after another they held a chunk for seconds.
        self._lines_pool = ThreadPoolExecutor(settings.batch_expand_threads, "batch-lines")
        self._stop = threading.Event()
        self._near_end = False  # a batch of the last pass had few lines left to run
        self._thread = threading.Thread(target=self._run, name="batch-runner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._lines_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def max_line_bytes(self) -> int:
        # A line carries its images as base64 (4/3 of their bytes) and its text.
        return job_images_bytes(self.settings) * 4 // 3 + 256 * 1024

    def _run(self) -> None:
        wait = self.settings.batch_poll_seconds
        while not self._stop.wait(wait):
            wait = self.settings.batch_poll_seconds
            try:
                wait = self._next_wait(self.run_once())
            except Exception as exc:
                what = unreachable(exc)
                if what is None:
                    log.exception("batch work failed; trying again in %ss",
                                  self.settings.batch_poll_seconds)
                else:  # expected during an outage: one line, no traceback
                    log.warning("batch work paused: the %s is unreachable (%s)", what,
                                exc.__class__.__name__)

    def _next_wait(self, moved: bool) -> float:
        # A pass that moved a batch on (validated, expanded, ended it) is followed at once by
        # the next, so a batch goes from validation to its first lines without a poll's wait.
        if moved:
            return 0.0
        if self._near_end:
            return min(NEAR_END_POLL_SECONDS, self.settings.batch_poll_seconds)
        return self.settings.batch_poll_seconds

    def run_once(self) -> bool:
        """One pass over the batches needing work; whether any of them moved on."""
        moved = False
        self._near_end = False
        with self.sessions() as session:
            ids = batches.needing_work(session, utcnow())
        for batch_id in ids:
            if self._stop.is_set():
                break
            with self.sessions.begin() as session:
                taken = batches.take_lease(session, batch_id, self.settings.batch_lease_seconds)
            if not taken:
                continue
            try:
                moved = self._work_alone(batch_id) or moved
            finally:
                with self.sessions.begin() as session:
                    batches.release_lease(session, batch_id)
        return moved

    # -- one batch ----------------------------------------------------------------------

    def _work_alone(self, batch_id: str) -> bool:
        """One batch's work; an exception it raises holds back this batch only."""
        try:
            return self._work(batch_id)
        except InputGone:  # no retry brings it back
            log.warning("batch %s: its input file was deleted while it ran", batch_id)
            self._give_up(batch_id, batch_input.LineError(
                "invalid_input_file", None, "the input file was deleted while the batch ran; "
                "lines that had not run were stopped", "input_file_id"))
        except Exception as exc:
            if unreachable(exc) is not None:
                raise  # an outage, not this batch's fault: the whole pass waits it out
            self._work_failed(batch_id, exc)
        return False

    def _work_failed(self, batch_id: str, exc: Exception) -> None:
        """Counts the failure on the batch and backs it off; fails it after too many."""
        settings = self.settings
        with self.sessions.begin() as session:
            batch = batches.get_batch(session, batch_id, None)
            if batch is None:
                return
            tries = batch.work_failures + 1
            delay = min(settings.batch_retry_seconds * 2 ** (tries - 1), _MAX_RETRY_SECONDS)
            batches.work_failed(session, batch_id, tries, utcnow() + timedelta(seconds=delay))
        if tries == 1:  # the traceback once; each retry that fails again is one line
            log.error("batch %s: its work failed (try 1 of %d); trying again in %.1fs",
                      batch_id, settings.batch_work_tries, delay, exc_info=exc)
        else:
            log.warning("batch %s: its work failed again (%s: %s; try %d of %d)", batch_id,
                        exc.__class__.__name__, str(exc)[:200], tries,
                        settings.batch_work_tries)
        if tries >= settings.batch_work_tries:
            log.error("batch %s fails after %d tries of its work", batch_id, tries)
            self._give_up(batch_id, batch_input.LineError(
                "batch_processing_error", None,
                f"the batch could not be processed ({tries} tries); lines that had not run "
                "were stopped"))

    def _give_up(self, batch_id: str, error: batch_input.LineError) -> None:
        """Ends a batch that cannot go on as `failed`, with `error`. Its lines not yet ended
        are stopped, as a cancel stops them, and the output and error files hold what ran."""
        with self.sessions() as session:
            batch = batches.get_batch(session, batch_id, None)
            if batch is None or batch.status not in batches.ACTIVE:
                return
            session.expunge(batch)
        if batch.status == BatchStatus.validating:
            self._fail(batch, [error])
            return
        self._stop_lines(batch, jobs_transitions.cancel_batch_lines, "batch_failed",
                         "the batch failed before this line ran")
        try:
            self._finalize(batch, BatchStatus.failed, errors=[error.as_dict()])
        except Exception as exc:
            if unreachable(exc) is not None:
                raise
            log.warning("batch %s: its output could not be written (%s); it fails without "
                        "output files", batch_id, exc.__class__.__name__)
            with self.sessions.begin() as session:
                if batch_transitions.fail(session, batch_id, now=utcnow(),
                                          errors=[error.as_dict()]):
                    self._announce(session, batch_id, BatchStatus.failed)

    def _work(self, batch_id: str) -> bool:
        with self.sessions() as session:
            batch = batches.get_batch(session, batch_id, None)
            if batch is None:
                return False
            session.expunge(batch)
        moved = self._dispatch(batch)
        if batch.work_failures:
            with self.sessions.begin() as session:
                batches.work_succeeded(session, batch.id)
        return moved

    def _dispatch(self, batch: Batch) -> bool:
        """Whether the batch moved on: validated, lines expanded, or ended."""
        if batch.status == BatchStatus.validating:
            self._validate(batch)
            return True
        if batch.status == BatchStatus.in_progress:
            if as_utc(batch.expires_at) <= utcnow():
                # As OpenAI's: lines not finished when the window ends are expired, the
                # running ones too (a move the job table allows for this verb alone).
                self._stop_lines(batch, jobs_transitions.expire_batch_lines, "batch_expired",
                                 "the batch's completion window ended before this line ran")
                return self._finish_if_done(batch, BatchStatus.expired)
            if batch.lines_expanded < batch.total:
                self._expand(batch)
                return True
            return self._finish_if_done(batch, BatchStatus.completed)
        if batch.status == BatchStatus.finalizing:
            return self._finish_if_done(batch, BatchStatus.completed)
        if batch.status == BatchStatus.cancelling:
            self._stop_lines(batch, jobs_transitions.cancel_batch_lines, "batch_cancelled",
                             "the batch was cancelled before this line ran")
            return self._finish_if_done(batch, BatchStatus.cancelled)
        return False

    def _validate(self, batch: Batch) -> None:
        try:
            with self.sessions() as session:
                source = self._input(session, batch)
        except InputGone:
            self._fail(batch, [batch_input.LineError(
                "invalid_input_file", None, "the input file was deleted", "input_file_id")])
            return
        with source:
            result = batch_input.validate(source, batch.endpoint,
                                          max_lines=self.settings.batch_max_lines,
                                          max_line_bytes=self.max_line_bytes)
        if result.errors:
            self._fail(batch, result.errors)
            return
        with self.sessions.begin() as session:
            batch_transitions.start(session, batch.id, total=result.total, model=result.model,
                                    now=utcnow())
        log.info("batch %s: %d requests valid; expanding", batch.id, result.total)

    def _fail(self, batch: Batch, errors: list[batch_input.LineError]) -> None:
        with self.sessions.begin() as session:
            if batch_transitions.fail_validation(session, batch.id, now=utcnow(),
                                                 errors=[e.as_dict() for e in errors]):
                self._announce(session, batch.id, BatchStatus.failed)
        log.info("batch %s failed validation: %s", batch.id, errors[0].message)

    def _expand(self, batch: Batch) -> None:
        done = batch.lines_expanded
        started = time.monotonic()
        with self.sessions() as session:
            source = self._input(session, batch)
            keep_image = self._keeps_images(session, batch.tenant_id)
        with source:
            pending = (r for r in batch_input.requests(source, batch.endpoint,
                                                       self.max_line_bytes)
                       if r.index >= done)
            for chunk in _chunks(pending, FIRST_CHUNK_LINES, CHUNK_LINES):
                if self._stop.is_set() or not self._still(batch.id, BatchStatus.in_progress):
                    return
                rows = list(self._lines_pool.map(partial(self._row, batch, keep_image),
                                                 chunk))
                with self.sessions() as session:
                    batches.insert_lines(session, rows)
                    advanced = batches.advance(session, batch.id, done, done + len(rows))
                    batches.renew_lease(session, batch.id, self.settings.batch_lease_seconds)
                    if not advanced:  # another process expanded these lines meanwhile
                        session.rollback()
                        return
                    session.commit()
                done += len(rows)
                self.metrics.batch_lines.labels(batch.tenant_id).inc(len(rows))
                queued = [r for r in rows if r["status"] == JobStatus.queued]
                if queued:
                    self.wakeups.job_accepted(queued[-1]["id"], queued[-1]["model"],
                                                   queued[-1]["priority"])
        rate = (done - batch.lines_expanded) / max(time.monotonic() - started, 1e-6)
        log.info("batch %s: %d of %d lines expanded (%.0f lines/s)", batch.id, done,
                 batch.total, rate)

    def _keeps_images(self, session: Session, tenant_id: str) -> bool:
        """Whether the tenant's lines keep their images once they end (its own setting,
        else the server's)."""
        own = session.scalar(select(Tenant.keep_images).where(Tenant.id == tenant_id))
        return keeps_images(own, self.settings.keep_images)

    def _row(self, batch: Batch, keep_image: bool,
             request: batch_input.Request) -> dict[str, Any]:
        """The job for one line; a line the pipeline cannot run becomes a failed job."""
        now = utcnow()
        row: dict[str, Any] = jobs_transitions.created(
            id=uuid.uuid4(), tenant_id=batch.tenant_id, batch_id=batch.id,
            batch_line=request.index, custom_id=request.custom_id, attempts=0,
            engine_failures=0, priority=batch.priority, created_at=now, runnable_at=now,
            expires_at=batch.expires_at, model=batch.model or self.settings.model,
            prompt="", params={}, keep_image=keep_image, extra_images=None,
        )
        try:
            chat = parse_chat_request(request.body)
            params = GenerationParams.model_validate(chat.params)
            prompt, model, resolved = self.intake.check_fields(chat.prompt, chat.model, params,
                                                               len(chat.image_urls))
            row.update(prompt=prompt, model=model, params=resolved)
            if chat.priority is not None:  # later than the batch class if asked, never sooner
                row["priority"] = max(chat.priority, batch.priority)
            images = self.intake.check_images([(None, url) for url in chat.image_urls],
                                              batch.tenant_id)
            row.update(self.intake.store_images(row["id"], images))
        except InvalidInput as exc:
            jobs_transitions.created_failed(row, exc.code, exc.message, now)
        except ValueError as exc:  # GenerationParams out of range
            jobs_transitions.created_failed(row, "invalid_request", str(exc).splitlines()[0],
                                            now)
        return row

    def _still(self, batch_id: str, status: str) -> bool:
        with self.sessions() as session:
            batch = batches.get_batch(session, batch_id, None)
            return batch is not None and batch.status == status

    def _stop_lines(self, batch: Batch, stop: Callable[[Session, str, str, str], list[uuid.UUID]],
                    code: str, message: str) -> None:
        """Ends the batch's unfinished lines with `stop` (a jobs transitions verb)."""
        with self.sessions.begin() as session:
            running = stop(session, batch.id, code, message)
        for job_id in running:  # their workers drop them from the engine
            request_abort(self.settings, job_id)

    def _finish_if_done(self, batch: Batch, target: BatchStatus) -> bool:
        """Ends the batch as `target` once none of its lines is left to run; whether it did."""
        with self.sessions() as session:
            left = batches.unfinished(session, batch.id)
        if left:
            self._near_end = self._near_end or left <= NEAR_END_LINES
            return False
        if target == BatchStatus.completed and batch.status == BatchStatus.in_progress:
            with self.sessions.begin() as session:
                batch_transitions.finalize(session, batch.id, now=utcnow())
        self._finalize(batch, target)
        return True

    def _finalize(self, batch: Batch, target: BatchStatus, **values: Any) -> None:
        """Writes the output and error files, then makes the batch `target` (with `values`
        set on it)."""
        outputs = tempfile.SpooledTemporaryFile(_SPOOL_BYTES)
        errors = tempfile.SpooledTemporaryFile(_SPOOL_BYTES)
        with outputs, errors:
            n_out, n_err = self._write_lines(batch, target, outputs, errors)
            files = {}
            keep = self._output_keep(batch) if n_out or n_err else None
            for kind, spool, n in (("output", outputs, n_out), ("error", errors, n_err)):
                if n:
                    spool.seek(0)
                    files[kind] = self._store_file(batch, kind, spool, keep)
        now = utcnow()
        with self.sessions() as session:
            for file in files.values():
                session.add(file)
            moved = _END[target](
                session, batch.id, now=now,
                output_file_id=files["output"].id if "output" in files else None,
                error_file_id=files["error"].id if "error" in files else None,
                **values,
            )
            if not moved:
                session.rollback()
                return
            self._announce(session, batch.id, target)
            session.commit()
        self.metrics.batches.labels(target).inc()
        log.info("batch %s %s: %d output lines, %d error lines", batch.id, target, n_out, n_err)

    def _announce(self, session: Session, batch_id: str, status: str) -> None:
        """The batch's webhook event, in the transaction that ends the batch."""
        batch = batches.get_batch(session, batch_id, None)
        if batch is None or not batch.webhook_url:
            return
        settings = self.settings
        data = BatchObject.from_row(batch, batches.counts(session, [batch])[batch.id])
        payload = batch_event_payload(data, f"batch.{status}", public_url=settings.public_url,
                                      max_bytes=settings.webhook_max_payload_bytes)
        deliveries.add_for_batch(session, batch.id, f"batch.{status}", batch.webhook_url,
                                 batch.webhook_events, payload)

    def _write_lines(self, batch: Batch, target: str, outputs: BinaryIO,
                     errors: BinaryIO) -> tuple[int, int]:
        """One line per request, in input order; requests never expanded get error lines."""
        n_out = n_err = 0
        with self.sessions() as session:
            jobs = batches.jobs_in_line_order(session, batch.id)
            for is_output, line in self._lines(session, batch, target, jobs):
                (outputs if is_output else errors).write(line.encode())
                if is_output:
                    n_out += 1
                else:
                    n_err += 1
        return n_out, n_err

    def _lines(self, session: Session, batch: Batch, target: str,
               jobs: Iterator[Job]) -> Iterator[tuple[bool, str]]:
        code = _NOT_RUN.get(target, "batch_cancelled")
        try:
            source = self._input(session, batch)
        except Exception as exc:
            if target != BatchStatus.failed or unreachable(exc) is not None:
                raise
            # A failing batch whose input is gone: its jobs' lines are all there is to write
            # (the custom_ids of lines never expanded went with the file).
            log.warning("batch %s: its input file cannot be read (%s); writing the lines of "
                        "its jobs only", batch.id, exc.__class__.__name__)
            yield from (output.line_for_job(job) for job in jobs)
            return
        with source:
            job = next(jobs, None)
            for request in batch_input.requests(source, batch.endpoint, self.max_line_bytes):
                if job is not None and job.batch_line == request.index:
                    yield output.line_for_job(job)
                    job = next(jobs, None)
                else:
                    yield False, output.missing_line(request.custom_id, code, uuid.uuid4().hex)

    def _input(self, session: Session, batch: Batch) -> BinaryIO:
        """The batch's input file, open; InputGone when its row was deleted or its bytes
        purged (retention keeps an active batch's input, so only a crossed race gets here)."""
        file = batches.get_file(session, batch.input_file_id, batch.tenant_id)
        if file is None or file.purged_at is not None:
            raise InputGone(f"batch {batch.id}: its input file {batch.input_file_id} is gone")
        return self.store.open(file.object_key)

    def _output_keep(self, batch: Batch) -> timedelta | None:
        """How long the batch's output and error files are kept: its
        `output_expires_after`, else its tenant's retention (None: until deleted)."""
        if batch.output_expires_after_seconds is not None:
            return timedelta(seconds=batch.output_expires_after_seconds)
        with self.sessions() as session:
            own = batches.tenant_retention(session, batch.tenant_id)
        return retention(own, self.settings.retention_seconds)

    def _store_file(self, batch: Batch, kind: str, source: BinaryIO,
                    keep: timedelta | None) -> StoredFile:
        file_id = batches.new_file_id()
        key = f"files/{file_id}"
        size = source.seek(0, 2)
        source.seek(0)
        self.store.put_file(key, source, "application/jsonl")
        # As OpenAI's: the expiry counts from the file's creation, not the batch's.
        now = utcnow()
        return StoredFile(id=file_id, tenant_id=batch.tenant_id, purpose="batch_output",
                          filename=f"{batch.id}_{kind}.jsonl", bytes=size, object_key=key,
                          created_at=now, expires_at=batches.expiry(now, keep))


def _chunks(items: Iterator[batch_input.Request], first: int,
            most: int) -> Iterator[list[Any]]:
    """Chunks of `first` items, then twice as many each time, up to `most`."""
    size = first
    while chunk := list(islice(items, size)):
        yield chunk
        size = min(size * 2, most)

