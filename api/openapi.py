"""The OpenAPI document, corrected where FastAPI's generated one would not be true.

- FastAPI documents request validation failures as its own `HTTPValidationError`; this
  API answers them with the same `{"error": {...}}` body as every other error.
- POST /v1/jobs reads its body itself (multipart or JSON), so its request schemas are
  added here, both generated from the models that validate them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.schemas.native import JobCreate, JobCreateForm
from api.schemas.openai import FileUpload
from shared.chat import ChatRequest

_SCHEMAS = "#/components/schemas/"
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")

FILE_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"$ref": f"{_SCHEMAS}FileUpload"}}},
    }
}

CHAT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"{_SCHEMAS}ChatRequest"}}},
    }
}

SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"$ref": f"{_SCHEMAS}JobCreateForm"}},
            "application/json": {"schema": {"$ref": f"{_SCHEMAS}JobCreate"}},
        },
    }
}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            _add_models(schema, [JobCreate, JobCreateForm, FileUpload, ChatRequest])
            _validation_errors_as_error_body(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_models(schema: dict[str, Any], models: list[type[BaseModel]]) -> None:
    _, top = models_json_schema([(m, "validation") for m in models],
                                ref_template=_SCHEMAS + "{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in top.get("$defs", {}).items():
        components.setdefault(name, definition)


def _validation_errors_as_error_body(schema: dict[str, Any]) -> None:
    error_body = {"application/json": {"schema": {"$ref": f"{_SCHEMAS}ErrorBody"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None:
                response["description"] = "a field out of range or of the wrong type"
                response["content"] = error_body
    components = schema.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION:
        components.pop(name, None)
