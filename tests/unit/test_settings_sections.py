"""The settings' sections (shared/settings.py): every `VLMQ_*` name kept, each field in one
section, a section readable alone, and components that take a section reading only it."""

from __future__ import annotations

import ast
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from shared.settings import (
    SECTIONS,
    ApiSettings,
    BatchSettings,
    BrokerSettings,
    DatabaseSettings,
    EngineKind,
    EngineSettings,
    ImageFetchSettings,
    LifecycleSettings,
    LimitsSettings,
    MetricsSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
)

ROOT = Path(__file__).resolve().parents[2]

# Settings' fields before it was split into sections: each is `VLMQ_<NAME>` in deployments,
# so none may be renamed, lost or added by the split. (`api_key` left with the client:
# vlmq-backfill reads VLMQ_API_KEY itself.)
FIELDS_BEFORE_SECTIONS = frozenset({
    "accepted_models", "allowed_formats", "api_body_timeout_seconds",
    "api_header_timeout_seconds", "api_host", "api_image_memory_bytes",
    "api_image_memory_wait_seconds", "api_max_header_bytes", "api_max_headers",
    "api_metrics_port", "api_port", "auth_disabled", "batch_lease_seconds", "batch_max_lines",
    "batch_expand_threads", "batch_poll_seconds", "batch_priority", "batch_retry_seconds",
    "batch_work_tries",
    "broker_folder", "broker_url", "chat_wait_seconds", "claim_poll_seconds",
    "cpu_kvcache_gib", "database_url", "default_max_tokens", "dtype", "echo_faults",
    "echo_step_ms", "enforce_eager", "engine", "flower_basic_auth", "gpu_memory_utilization",
    "heartbeat_seconds", "ignore_eos", "image_fetch_allow_http", "image_fetch_allowed_buckets",
    "image_fetch_allowed_networks", "image_fetch_timeout_seconds", "lease_seconds",
    "limit_mm_per_prompt", "long_poll_fallback_seconds", "long_poll_max_seconds",
    "max_attempts", "max_batch_size", "max_file_bytes", "max_image_pixels", "max_image_side",
    "max_in_flight", "max_job_seconds", "max_model_len", "max_num_seqs", "max_pixels",
    "max_prompt_chars", "max_queue_seconds", "max_tokens_limit", "max_upload_bytes",
    "max_wait_ms", "metrics_host", "metrics_port", "min_pixels", "model", "model_path",
    "prepare_threads", "public_url", "quantization", "queue_prefix",
    "retry_backoff_max_seconds", "retry_backoff_seconds", "s3_access_key_id",
    "s3_create_bucket", "s3_endpoint_url", "s3_region", "s3_secret_access_key",
    "shutdown_grace_seconds", "store_url", "sweep_seconds", "task_events",
    # Retention (shared/settings.py RetentionSettings).
    "retention_seconds", "keep_images", "tombstone_seconds", "retention_sweep_seconds",
    "retention_chunk", "orphan_sweep_seconds", "orphan_min_age_seconds",
    # The escape hatch of the tested vLLM range (EngineSettings).
    "allow_untested_vllm",
    # Several images per job (LimitsSettings).
    "max_images_per_job", "max_job_image_bytes", "max_job_image_pixels",
    "tenant_max_active_batches",
    "tenant_max_active_jobs", "tenant_max_queued_batch_lines", "tenant_submits_per_second",
    "webhook_allow_http", "webhook_allowed_networks", "webhook_concurrency",
    "webhook_max_payload_bytes", "webhook_max_response_bytes", "webhook_poll_seconds",
    "webhook_retry_after_max_seconds", "webhook_retry_jitter", "webhook_retry_schedule",
    "webhook_secrets", "webhook_timeout_seconds", "worker_max_pixels", "worker_ttl_seconds",
})

SECTION_NAMES = {section.__name__: section for section in SECTIONS}
# Where Settings is built and passed down whole, whatever each function reads itself.
ENTRY_MODULES = frozenset({
    "api/app.py", "api/deps.py", "worker/app.py", "worker/context.py",
    "worker/control/app.py", "worker/webhooks/delivery.py",
})
# Command-line entry points build Settings from the environment and pass it down, like the
# entry modules; the client is installed apart and has no Settings at all.
SKIPPED = ("shared/client/", "shared/cli/", "shared/devtools/")


# --- the sections ---------------------------------------------------------------------------


def test_env_names_are_the_ones_before_sections() -> None:
    assert set(Settings.model_fields) == FIELDS_BEFORE_SECTIONS
    for cls in (Settings, *SECTIONS):
        assert cls.model_config.get("env_prefix") == "VLMQ_", cls.__name__
        for name, field in cls.model_fields.items():
            # An alias would change the variable's name.
            assert field.alias is None and field.validation_alias is None, name


def test_every_field_is_in_exactly_one_section() -> None:
    owners: dict[str, list[str]] = {}
    for section in SECTIONS:
        for name in section.model_fields:
            owners.setdefault(name, []).append(section.__name__)
    assert {name: found for name, found in owners.items() if len(found) != 1} == {}
    assert set(owners) == set(Settings.model_fields)
    for section in SECTIONS:
        assert issubclass(Settings, section)
        for name, field in section.model_fields.items():  # the same field, not a copy
            assert Settings.model_fields[name].default == field.default, name
            assert Settings.model_fields[name].metadata == field.metadata, name


def test_a_section_reads_its_variables_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMQ_STORE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("VLMQ_S3_CREATE_BUCKET", "false")
    monkeypatch.setenv("VLMQ_ACCEPTED_MODELS", '["a", "b"]')
    monkeypatch.setenv("VLMQ_WEBHOOK_RETRY_SCHEDULE", "[1, 2.5]")
    monkeypatch.setenv("VLMQ_ENGINE", "echo")
    monkeypatch.setenv("VLMQ_BROKER_FOLDER", "/tmp/broker")
    monkeypatch.setenv("VLMQ_DATABASE_URL", "postgresql://db/vlmq")

    store = StoreSettings()
    assert (store.store_url, store.s3_create_bucket) == ("s3://bucket/prefix", False)
    assert LimitsSettings().accepted_models == ["a", "b"]
    assert WebhookSettings().webhook_retry_schedule == [1.0, 2.5]
    assert EngineSettings().engine is EngineKind.echo
    assert BrokerSettings().broker_folder == Path("/tmp/broker")
    assert DatabaseSettings().database_url == "postgresql://db/vlmq"

    whole = Settings()
    assert whole.store_url == "s3://bucket/prefix" and whole.accepted_models == ["a", "b"]
    assert whole.engine is EngineKind.echo and whole.webhook_retry_schedule == [1.0, 2.5]
    # A section ignores the others' variables, as Settings ignores unknown ones.
    assert "store_url" not in LimitsSettings().model_dump()


def test_defaults_are_the_same_alone_and_whole() -> None:
    whole = Settings().model_dump()
    for section in SECTIONS:
        for name, value in section().model_dump().items():
            assert whole[name] == value, name


@pytest.mark.parametrize(("section", "field", "value"), [
    (WebhookSettings, "webhook_secrets", ["not-a-secret"]),
    (WebhookSettings, "webhook_allowed_networks", ["not-a-network"]),
    (ImageFetchSettings, "image_fetch_allowed_networks", ["not-a-network"]),
    (BatchSettings, "batch_priority", 10),
    (ApiSettings, "api_max_headers", 0),
    (LimitsSettings, "tenant_max_active_jobs", -1),
])
def test_validators_run_in_the_section_and_in_settings(
    monkeypatch: pytest.MonkeyPatch, section: type, field: str, value: object,
) -> None:
    for cls in (section, Settings):
        with pytest.raises(pydantic.ValidationError, match=field):
            cls(**{field: value})
    # From the environment too, where a JSON list is parsed first.
    monkeypatch.setenv(f"VLMQ_{field.upper()}", str(value).replace("'", '"'))
    for cls in (section, Settings):
        with pytest.raises(pydantic.ValidationError, match=field):
            cls()


def test_properties_live_with_the_fields_they_read() -> None:
    broker = BrokerSettings(queue_prefix="q")
    assert (broker.abort_channel, broker.webhook_queue) == ("q.abort", "q.webhooks")
    assert EngineSettings(max_batch_size=8).in_flight_limit == 16
    assert EngineSettings(max_batch_size=8, max_in_flight=3).in_flight_limit == 3
    whole = Settings(queue_prefix="q", model="m", max_batch_size=4)
    assert (whole.queue_name, whole.abort_channel, whole.in_flight_limit) == ("q.jobs.m",
                                                                              "q.abort", 8)


# --- components given a section alone --------------------------------------------------------
# A bare section has no other section's attributes, so a component that reads outside the
# one it is typed with fails here with AttributeError.


def test_database_functions_take_database_settings(tmp_path: Path) -> None:
    from shared.db import is_sqlite, libpq_url, make_engine, sqlalchemy_url

    database = DatabaseSettings(database_url=f"sqlite:///{tmp_path}/x.db")
    assert is_sqlite(database)
    make_engine(database).dispose()
    postgres = DatabaseSettings(database_url="postgresql://u@h/d")
    assert sqlalchemy_url(postgres) == "postgresql+psycopg://u@h/d"
    assert libpq_url(postgres) == "postgresql://u@h/d"


def test_store_functions_take_store_settings(tmp_path: Path) -> None:
    from shared.net.image_refs import store_location
    from shared.storage import make_store

    store = make_store(StoreSettings(store_url=f"file://{tmp_path}"))
    store.put("k", b"v", "text/plain")
    assert store.get("k") == b"v"
    assert store_location(StoreSettings(store_url="s3://b/p")) == ("b", "p/")


def test_broker_functions_take_broker_settings(tmp_path: Path) -> None:
    from api.infra.quotas import _storage
    from shared.queue import _transport_options, enqueue_delivery, enqueue_for_model, request_abort

    broker = BrokerSettings(queue_prefix="q", broker_folder=tmp_path / "broker")
    assert _transport_options(broker)["data_folder_in"] == str((tmp_path / "broker").resolve())
    request_abort(broker, uuid.uuid4())  # the folder broker has no abort channel: nothing
    _storage(broker)

    sent: list[str] = []

    class App:
        def send_task(self, name: str, **kwargs: object) -> None:
            sent.append(str(kwargs["queue"]))

    enqueue_for_model(App(), broker, uuid.uuid4(), "m")  # type: ignore[arg-type]
    enqueue_delivery(App(), broker, uuid.uuid4())  # type: ignore[arg-type]
    assert sent == ["q.jobs.m", "q.webhooks"]


def test_other_leaf_components_take_their_section() -> None:
    from api.schemas.native import WebhookOptions
    from api.services.submit import check_webhook
    from shared.errors import InvalidInput
    from shared.jobs.lifecycle import RetryPolicy
    from worker.context import load_backend
    from worker.engines.echo_backend import EchoBackend

    policy = RetryPolicy.from_settings(LifecycleSettings(max_attempts=7))
    assert policy.max_attempts == 7
    assert isinstance(load_backend(EngineSettings(engine=EngineKind.echo)), EchoBackend)
    check_webhook(WebhookSettings(), WebhookOptions(webhook_url=None))
    with pytest.raises(InvalidInput, match="signing secret"):
        check_webhook(WebhookSettings(), WebhookOptions(webhook_url="https://example.com/h"))
    assert MetricsSettings().metrics_port == 0


# --- static check of every annotated parameter ------------------------------------------------


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for folder in ("api", "worker", "shared"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(SKIPPED):
                yield rel, ast.parse(path.read_text(), rel)


def _annotation(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


class _Uses:
    """What is read from settings-typed names: `x.field` reads, and any other use (passed on,
    returned) as an escape, after which the check cannot tell what is read."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.escapes = False

    def scan(self, body: list[ast.stmt] | ast.AST, names: set[str], self_attrs: set[str]) -> None:
        names = set(names)
        nodes = body if isinstance(body, list) else [body]
        # Local aliases first: `s = self.settings`, `settings = self._settings`.
        for node in (n for top in nodes for n in ast.walk(top)):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and self._is_settings(node.value, names, self_attrs)):
                names.add(node.targets[0].id)
        for top in nodes:
            self._visit(top, names, self_attrs, parent=None)

    def _is_settings(self, node: ast.AST, names: set[str], self_attrs: set[str]) -> bool:
        if isinstance(node, ast.Name):
            return node.id in names
        return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "self" and node.attr in self_attrs)

    def _visit(self, node: ast.AST, names: set[str], self_attrs: set[str],
               parent: ast.AST | None) -> None:
        if self._is_settings(node, names, self_attrs) and not isinstance(
                getattr(node, "ctx", None), ast.Store):
            if isinstance(parent, ast.Attribute) and parent.value is node:
                self.reads.add(parent.attr)
            elif not (isinstance(parent, ast.Assign) and parent.value is node):
                self.escapes = True  # aliases were gathered before
            return
        for child in ast.iter_child_nodes(node):
            self._visit(child, names, self_attrs, node)


def _is_self_attr(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "self")


def _members(section: type) -> set[str]:
    return set(section.model_fields) | {n for n in dir(section) if not n.startswith("_")}


def _typed_uses() -> Iterator[tuple[str, str, str, _Uses]]:
    """(where, parameter or attribute, its annotation, what is read through it) for every
    function parameter and class attribute typed with Settings or a section."""
    wanted = {"Settings", *SECTION_NAMES}
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = [m for m in node.body
                           if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
                typed: dict[str, str] = {}  # self attribute -> annotation
                for stmt in node.body:  # dataclass fields
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        if (kind := _annotation(stmt.annotation)) in wanted:
                            typed[stmt.target.id] = kind
                for method in methods:  # self.x = <typed parameter>; self.x: T = ...
                    params = {a.arg: _annotation(a.annotation) for a in method.args.args}
                    for stmt in ast.walk(method):
                        if isinstance(stmt, ast.AnnAssign) and _is_self_attr(stmt.target):
                            if (kind := _annotation(stmt.annotation)) in wanted:
                                typed[stmt.target.attr] = kind  # type: ignore[union-attr]
                        elif (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Name)
                                and (kind := params.get(stmt.value.id)) in wanted):
                            for target in stmt.targets:
                                if _is_self_attr(target):
                                    typed.setdefault(target.attr, kind)  # type: ignore
                for attr, kind in typed.items():
                    uses = _Uses()
                    for method in methods:
                        uses.scan(method.body, set(), {attr})
                    # A public attribute is read from outside the class too (ctx.settings).
                    uses.escapes |= not attr.startswith("_")
                    yield f"{rel}:{node.name}", f"self.{attr}", kind, uses
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.args + node.args.kwonlyargs:
                    if (kind := _annotation(arg.annotation)) in wanted:
                        uses = _Uses()
                        uses.scan(node.body, {arg.arg}, set())
                        yield f"{rel}:{node.name}", arg.arg, kind, uses


def test_a_section_parameter_reads_only_its_section() -> None:
    wrong = []
    for where, name, kind, uses in _typed_uses():
        if kind in SECTION_NAMES:
            stray = uses.reads - _members(SECTION_NAMES[kind])
            if stray:
                wrong.append(f"{where}: {name}: {kind} reads {sorted(stray)}")
    assert not wrong, "\n".join(wrong)


def test_settings_whole_is_taken_only_where_several_sections_are_read() -> None:
    """Outside the entry points, a parameter typed Settings whose reads all fall in one
    section should take that section. Names passed on are not followed, so those pass."""
    owner = {name: section.__name__ for section in SECTIONS for name in _members(section)}
    single = []
    for where, name, kind, uses in _typed_uses():
        if kind != "Settings" or uses.escapes or where.split(":")[0] in ENTRY_MODULES:
            continue
        sections = {owner.get(read, "Settings") for read in uses.reads}
        if len(sections) == 1 and "Settings" not in sections:
            single.append(f"{where}: {name} reads only {sections.pop()}: {sorted(uses.reads)}")
    assert not single, "\n".join(single)
    # The scan does see parameters: the check above is not passing on an empty list.
    seen = {(where, kind) for where, _, kind, _ in _typed_uses()}
    assert ("shared/storage.py:make_store", "StoreSettings") in seen
    assert ("shared/queue.py:make_celery", "Settings") in seen
