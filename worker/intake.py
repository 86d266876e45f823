"""Feeds the engine: wake on messages, claim jobs in bulk, prepare their images, submit.

One thread claims: when the worker has room it takes the waiting wake-up messages and
claims up to that many queued jobs of its model from Postgres in one statement, in
priority order. Wake-ups only shorten the wait between claims: when the broker fails, the
thread claims every `VLMQ_CLAIM_POLL_SECONDS` without them and tries the broker again
later. Preparing (fetch from the store and check the bytes against the upload's hash, or
fetch an image given by reference; check the limits, decode, resize) runs on a small
thread pool, and each prepared request goes to the micro-batcher with a callback
that hands its outcome to the recorder, so no thread waits on a job. An image that fails
its checks fails its job alone, before the engine sees it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from shared.errors import InvalidInput
from shared.images import JobPixels, decode_fetched_image, decode_stored_image
from shared.jobs import transitions as jobs_transitions
from shared.jobs.lifecycle import Failed, Result, Succeeded
from shared.jobs.transitions import ClaimedJob
from shared.outages import log_failure
from shared.timeutil import as_utc, utcnow
from worker.context import WorkerContext
from worker.doorbell import Doorbell
from worker.engines.base import (
    EngineError,
    GenerationOutput,
    GenerationRequest,
    JobTimedOut,
    RequestAborted,
    RequestRejected,
)
from worker.image_fetch import ImageFetcher, ImageFetchError
from worker.inflight import InFlight
from worker.recorder import Dropped, Recorder

log = logging.getLogger(__name__)

# A job present at this many engine failures runs alone, so a poison input fails by itself.
SOLO_AFTER_ENGINE_FAILURES = 2
# After the broker fails, wake-ups are not waited for again for this long: a broker that is
# down or cut off would otherwise cost a timeout before every claim.
BROKER_RETRY_SECONDS = 10.0


@dataclass(frozen=True)
class _ImageSource:
    """One image of a job: an upload (key, and the hash it must match) or a reference."""

    key: str | None
    sha256: str | None
    url: str | None


class Intake:
    def __init__(self, ctx: WorkerContext, doorbell: Doorbell, inflight: InFlight,
                 recorder: Recorder) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.doorbell = doorbell
        self.inflight = inflight
        self.recorder = recorder
        self.fetcher = ImageFetcher(ctx.settings)
        # Claim in chunks: waiting for a quarter batch of room costs little latency and
        # saves a round trip per freed slot when the queue is long.
        self.min_claim = max(1, ctx.settings.max_batch_size // 4)
        self.stopping = threading.Event()
        self._broker_back_at = 0.0  # time.monotonic() from which wake-ups are tried again
        self._pool = ThreadPoolExecutor(ctx.settings.prepare_threads, "prepare")
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops claiming; jobs already claimed carry on."""
        self.stopping.set()
        self._thread.join(timeout=self.settings.claim_poll_seconds + 10)
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        drained = True  # the last claim found fewer jobs than it asked for
        while not self.stopping.is_set():
            busy = len(self.inflight) > 0
            if busy and not self.inflight.wait_for_room(self.min_claim, timeout=0.5):
                continue
            room = self.inflight.room()
            self._wait_for_wakeup(room, self.settings.claim_poll_seconds if drained else 0.0)
            if self.stopping.is_set():
                break
            try:
                claimed = self._claim(room)
            except Exception as exc:
                log_failure(log, "claiming jobs failed; retrying in 1s", exc)
                self.stopping.wait(1.0)
                continue
            drained = len(claimed) < room
            for job in claimed:
                self.inflight.add(job.id, job.attempt)
                self._pool.submit(self._prepare_and_submit, job)

    def _wait_for_wakeup(self, room: int, timeout: float) -> None:
        """Takes up to `room` wake-ups, waiting at most `timeout` for the first. The claim
        that follows finds the jobs in Postgres either way, so a broker failure is logged
        and the wait becomes a plain poll until BROKER_RETRY_SECONDS have passed."""
        if time.monotonic() < self._broker_back_at:
            self.stopping.wait(timeout)
            return
        try:
            self.doorbell.wait(room, timeout=timeout)
        except Exception as exc:
            log_failure(log, "waiting for wake-ups failed; claiming every %.1fs without them, "
                        "broker retried in %.0fs", exc, self.settings.claim_poll_seconds,
                        BROKER_RETRY_SECONDS)
            self._broker_back_at = time.monotonic() + BROKER_RETRY_SECONDS

    def _claim(self, room: int) -> list[ClaimedJob]:
        s = self.settings
        with self.ctx.sessions() as session:
            claimed = jobs_transitions.claim_batch(session, s.model, room, s.lease_seconds)
            session.commit()
        now = utcnow()
        for job in claimed:
            self.ctx.metrics.queue_wait.observe(max((now - as_utc(job.created_at)).total_seconds(),
                                                    0.0))
        return claimed

    def _prepare_and_submit(self, job: ClaimedJob) -> None:
        images = self._prepared_images(job)
        if images is None:
            return
        solo = job.engine_failures >= SOLO_AFTER_ENGINE_FAILURES
        if solo:
            log.warning("job %s: present at %d engine failures; running it alone", job.id,
                        job.engine_failures)
        request = GenerationRequest(
            request_id=str(job.id),
            prompt=job.prompt,
            image=images[0],
            extra_images=tuple(images[1:]),
            params={**job.params, "priority": job.priority},
            solo=solo,
        )
        future = self.ctx.engine.submit(request)
        future.add_done_callback(lambda done: self.recorder.put(self._outcome(job, done, solo)))

    def _prepared_images(self, job: ClaimedJob) -> list[Image.Image] | None:
        """The job's images ready for the engine, in prompt order, or None with the job's
        failure recorded (naming the image at fault, `images[n]`, for a job of several).
        Each image passes the checks a job of one does; their bytes together are held to
        VLMQ_MAX_JOB_IMAGE_BYTES and their pixels to VLMQ_MAX_JOB_IMAGE_PIXELS, which
        references were not held to at submit."""
        sources = [_ImageSource(job.image_key, job.image_sha256, job.image_url)]
        sources += [_ImageSource(e.get("key"), e.get("sha256"), e.get("url"))
                    for e in job.extra_images or ()]
        images: list[Image.Image] = []
        total = 0
        pixels = JobPixels(self.settings.max_job_image_pixels)
        for index, source in enumerate(sources):
            label = f"images[{index}]: " if len(sources) > 1 else ""
            data = self._image_bytes(job, source, label)
            if data is None:
                return None
            total += len(data)
            limit = self.settings.max_job_image_bytes
            if total > limit:
                self.recorder.put(Failed(
                    job.id, job.attempt, "images_too_large",
                    f"the job's images take more than {limit} bytes together "
                    "(VLMQ_MAX_JOB_IMAGE_BYTES)", transient=False))
                return None
            image = self._prepared_image(job, source, data, label, pixels)
            if image is None:
                return None
            images.append(image)
        return images

    def _prepared_image(self, job: ClaimedJob, source: _ImageSource, data: bytes,
                        label: str, pixels: JobPixels) -> Image.Image | None:
        """One image ready for the engine, or None with the job's failure recorded.

        Only a failed fetch may be worth retrying: bytes that fail the checks stay what they
        are.
        """
        where = source.key if source.key is not None else source.url
        s = self.settings
        try:
            if source.key is not None and source.sha256 is not None:
                return decode_stored_image(
                    data, sha256=source.sha256, max_bytes=s.max_upload_bytes,
                    max_pixels=s.max_image_pixels, max_side=s.max_image_side,
                    allowed_formats=s.allowed_formats, prepare_max_pixels=s.worker_max_pixels,
                    job_pixels=pixels,
                )
            # A reference: no upload hash to compare, every other check the same.
            return decode_fetched_image(
                data, max_bytes=s.max_upload_bytes, max_pixels=s.max_image_pixels,
                max_side=s.max_image_side, allowed_formats=s.allowed_formats,
                prepare_max_pixels=s.worker_max_pixels, job_pixels=pixels,
            )
        except InvalidInput as exc:
            log.warning("job %s: image %s refused (%s): %s", job.id, where, exc.code,
                        exc.message)
            self.recorder.put(Failed(job.id, job.attempt, exc.code, label + exc.message,
                                     transient=False))
        except Exception as exc:
            log.warning("job %s: image %s unusable", job.id, where, exc_info=True)
            self.recorder.put(Failed(job.id, job.attempt, "image_unreadable",
                                     f"{label}could not read the image: {exc}",
                                     transient=False))
        return None

    def _image_bytes(self, job: ClaimedJob, source: _ImageSource, label: str) -> bytes | None:
        """From the store for an upload, from its URL for a reference; None once failed."""
        if source.key is not None:
            if source.sha256 is None:
                # Every upload is stored with its hash; a row without one was not made by us.
                self.recorder.put(Failed(job.id, job.attempt, "image_corrupted",
                                         f"{label}the job's image has no recorded hash to "
                                         "check it against; submit the job again",
                                         transient=False))
                return None
            try:
                return self.ctx.store.get(source.key)
            except Exception as exc:
                log.warning("job %s: fetching image %s failed", job.id, source.key,
                            exc_info=True)
                self.recorder.put(Failed(job.id, job.attempt, "storage_error",
                                         f"{label}could not fetch the image: {exc}",
                                         transient=True))
                return None
        if source.url is None:
            self.recorder.put(Failed(job.id, job.attempt, "image_missing",
                                     f"{label}the job has neither an uploaded image nor an "
                                     "image_url; submit it again with one", transient=False))
            return None
        try:
            return self.fetcher.fetch(source.url)
        except ImageFetchError as exc:
            log.warning("job %s: image URL not fetched (%s, %s): %s", job.id, exc.code,
                        "will retry" if exc.transient else "final", exc.message)
            self.recorder.put(Failed(job.id, job.attempt, exc.code, label + exc.message,
                                     transient=exc.transient))
        except Exception as exc:
            log.warning("job %s: fetching the image URL failed", job.id, exc_info=True)
            self.recorder.put(Failed(job.id, job.attempt, "image_fetch_failed",
                                     f"{label}could not fetch the image: {exc}",
                                     transient=True))
        return None

    def _outcome(self, job: ClaimedJob, done: Future[GenerationOutput],
                 solo: bool) -> Succeeded | Failed | Dropped:
        exc = done.exception()
        if exc is None:
            out = done.result()
            return Succeeded(job.id, job.attempt, Result(
                out.text, out.prompt_tokens, out.completion_tokens, out.finish_reason,
                image_tokens=out.image_tokens, engine_seconds=out.engine_seconds))
        if isinstance(exc, RequestAborted):
            if self.stopping.is_set():  # handed back at shutdown: not the job's fault
                return Failed(job.id, job.attempt, "worker_stopped",
                              "the worker stopped before the job finished", transient=True,
                              refund=True)
            log.info("job %s: aborted in the engine", job.id)
            return Dropped(job.id)
        if isinstance(exc, RequestRejected):
            return Failed(job.id, job.attempt, exc.code, exc.message, transient=False)
        if isinstance(exc, JobTimedOut):
            return Failed(job.id, job.attempt, "job_timeout", str(exc), transient=True)
        if isinstance(exc, EngineError):
            # Batch-mates of an unknown culprit do not pay for it with an attempt.
            shared_blame = exc.in_flight > 1 and not solo
            log.warning("job %s: engine failed with %d requests inside%s", job.id,
                        exc.in_flight, "; retrying without counting the attempt"
                        if shared_blame else "")
            return Failed(job.id, job.attempt, "engine_error", str(exc), transient=True,
                          refund=shared_blame, suspect=True)
        log.error("job %s: unexpected error", job.id, exc_info=exc)
        return Failed(job.id, job.attempt, "internal_error",
                      f"{exc.__class__.__name__}: {exc}", transient=True)
