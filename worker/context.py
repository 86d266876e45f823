"""Everything a worker process holds for its lifetime: the resident engine and its clients."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.queue import make_celery
from shared.settings import EngineKind, EngineSettings, Settings
from shared.storage import ObjectStore, make_store
from worker.batcher import BatchingEngine
from worker.engines.base import Engine, StepBackend
from worker.engines.vllm_version import INSTALL_HINT, installed_vllm, require_tested
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    db: DbEngine
    sessions: sessionmaker[Session]
    store: ObjectStore
    engine: Engine
    metrics: WorkerMetrics
    celery: Celery

    @classmethod
    def start(cls, settings: Settings) -> WorkerContext:
        metrics = WorkerMetrics(settings.model)
        if settings.metrics_port:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        db = make_engine(settings)
        log.info("loading %s engine for model %s from %s", settings.engine, settings.model,
                 settings.model_path)
        engine = BatchingEngine(
            lambda: load_backend(settings),
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            metrics=metrics,
            max_job_seconds=settings.max_job_seconds,
        )
        return cls(
            settings=settings,
            db=db,
            sessions=make_session_factory(db),
            store=make_store(settings),
            engine=engine,
            metrics=metrics,
            celery=make_celery(settings),
        )

    def close(self) -> None:
        try:
            self.engine.shutdown()
        finally:
            self.db.dispose()


def load_backend(engine_settings: EngineSettings) -> StepBackend:
    if engine_settings.engine == EngineKind.echo:
        from worker.engines.echo_backend import EchoBackend, TimedEchoBackend

        if engine_settings.echo_step_ms > 0:
            return TimedEchoBackend(engine_settings.echo_faults,
                                    step_ms=engine_settings.echo_step_ms,
                                    max_num_seqs=engine_settings.max_num_seqs)
        return EchoBackend(faults=engine_settings.echo_faults)
    if engine_settings.engine == EngineKind.vllm:
        _require_vllm(allow_untested=engine_settings.allow_untested_vllm)
        from worker.engines.vllm_backend import VllmBackend

        return VllmBackend.from_settings(engine_settings)
    from worker.engines.transformers_backend import TransformersBackend

    return TransformersBackend(
        engine_settings.model_path,
        max_model_len=engine_settings.max_model_len,
        max_batch_size=engine_settings.max_batch_size,
        ignore_eos=engine_settings.ignore_eos,
    )


_NO_VLLM = (
    "The vllm engine (VLMQ_ENGINE=vllm, the default) needs vLLM, which cannot be imported: "
    "{error}\n"
    f"Install it: {INSTALL_HINT}.\n"
    "Or choose another engine explicitly: VLMQ_ENGINE=transformers (no vLLM, one padded "
    "batch at a time) or VLMQ_ENGINE=echo (no model; load tests)."
)


def _require_vllm(*, allow_untested: bool = False) -> None:
    """Stops the worker at start when vLLM is missing or outside the tested releases.

    Falling back to another engine unasked would hide a broken install behind a much slower
    worker; SystemExit gives the user the way out instead of a traceback. The version is
    read from vLLM's metadata before the import, as an untested vLLM may fail to import in
    ways that hide the real cause.
    """
    found = installed_vllm()
    if found is not None and found.version:
        require_tested(found, allow_untested=allow_untested)
    try:
        module = importlib.import_module("vllm")
    except ImportError as exc:
        raise SystemExit(_NO_VLLM.format(error=exc)) from None
    if found is not None and not found.version:  # a source tree: no metadata, but the module
        found = dataclasses.replace(found, version=str(getattr(module, "__version__", "")),
                                    distribution="vllm.__version__")
        require_tested(found, allow_untested=allow_untested)
