"""The OpenAPI document is true: it resolves, and schemathesis, generating requests from it
against a real API process, finds no 5xx and no status code the document does not list."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.services import fresh_database, start_api
from tests.helpers.stack import Stack

# Per operation and phase; with the subprocess timeout this bounds the run's time.
MAX_EXAMPLES = 40
TIMEOUT_SECONDS = 420


@pytest.fixture(scope="module")
def fuzz_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Stack]]:
    """An API of its own, with no worker: generated jobs wait in a database nobody else reads."""
    with fresh_database() as db_url:
        st = stack.with_env(
            database_url=db_url,
            store_url=f"file://{tmp_path_factory.mktemp('fuzz-objects')}",
            queue_prefix=f"vlmqfuzz{uuid.uuid4().hex[:6]}",
            long_poll_max_seconds="1",
        ).migrate()
        svc, base = start_api(st.env, st.log_dir, name="api-fuzz")
        yield base, st
        svc.stop()


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_every_reference_resolves_and_every_route_is_secured(
    fuzz_api: tuple[str, Stack],
) -> None:
    base, _ = fuzz_api
    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    components = spec["components"]["schemas"]
    for ref in refs(spec):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in components, f"unresolvable {ref}"
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if not path.startswith("/v1"):
                continue
            assert operation.get("security") == [{"HTTPBearer": []}], (method, path)
            assert {"401", "503"} <= set(operation["responses"]), (method, path)
    form = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    form_fields = components[form["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]
    json_fields = components["JobCreate"]["properties"]
    # The JSON form's `images` list is the multipart form's repeated `image` part.
    assert set(form_fields) == set(json_fields) - {"images"}


def test_schemathesis_finds_no_server_error_or_undocumented_status(
    fuzz_api: tuple[str, Stack], tmp_path: Path
) -> None:
    base, st = fuzz_api
    report = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
            "--checks", "not_a_server_error,status_code_conformance",
            "--header", f"Authorization: Bearer {st.api_key}",
            "--max-examples", str(MAX_EXAMPLES),
            "--phases", "examples,coverage,fuzzing",
            "--seed", "1", "--workers", "1", "--request-timeout", "20",
            "--generation-database", "none", "--no-color",
            "--report", "json", "--report-json-path", str(report),
        ],
        capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
    )
    print(run.stdout[-6000:])
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    print(f"schemathesis: {cases['generated']} requests over "
          f"{summary['operations']['tested']} operations, {cases['with_failures']} failing")
    assert summary["operations"]["tested"] == summary["operations"]["total"]
    assert cases["with_failures"] == 0 and not summary["failures"]
