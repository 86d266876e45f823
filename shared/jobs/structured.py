"""Structured output: a job's answer held to a JSON schema, any JSON object, one of a list
of labels, or a regular expression, by constrained decoding in the engine.

A request carries at most one constraint, in one of three fields of its generation params:
`response_format` (OpenAI's shape: `{"type": "json_schema", "json_schema": {"name": ...,
"schema": {...}, "strict": true}}` or `{"type": "json_object"}`), `choices` (a list of
labels) or `regex`. Their shapes and bounds are checked with the params (a 422 like any
other out-of-range field); whether the constraint compiles is checked at intake
(`check_compiles`, a 400 `invalid_response_format`), with xgrammar, the library the vLLM
engine compiles it with, so a job that reaches a worker has a grammar the engine takes.

xgrammar comes with the worker's engines (it imports torch), not with the API's slim
install: where it is missing, intake does every check but the compile, and a constraint
xgrammar then refuses fails its job at the worker with the same code (see
worker/engines/vllm_backend.py).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.errors import InvalidInput

log = logging.getLogger(__name__)

# A constraint is stored with the job's params and repeated in every listing of the job:
# each kind's JSON (as stored, every non-ASCII character escaped) is at most this, which
# holds a schema of a few hundred properties, far beyond any extraction prompt.
MAX_CONSTRAINT_BYTES = 16 * 1024
# Objects and arrays inside a schema; vLLM refuses past 64, and real schemas nest a few.
MAX_SCHEMA_DEPTH = 32
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 256
MAX_REGEX_CHARS = 2048
MAX_NAME_CHARS = 64
MAX_DESCRIPTION_CHARS = 1024

INVALID = "invalid_response_format"


def _json_size(value: object) -> int:
    return len(json.dumps(value))


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether objects and arrays nest deeper than `limit` (breadth first: no recursion)."""
    level = [value]
    for _ in range(limit):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


def _has_nul(value: object) -> bool:
    """NUL in any key or string: xgrammar's native converters are not given one."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class JsonSchemaSpec(BaseModel):
    """OpenAI's `response_format.json_schema`. `name`, `description` and `strict` are
    taken for compatibility and change nothing: the schema is always enforced."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS,
                             pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    # `schema` would shadow a BaseModel attribute; it is `schema` on the wire and in storage.
    schema_: dict[str, Any] = Field(
        alias="schema", description=f"a JSON Schema object; with the name and description "
        f"at most {MAX_CONSTRAINT_BYTES} bytes as JSON, objects and arrays nested at most "
        f"{MAX_SCHEMA_DEPTH} deep")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if _depth_exceeds(schema, MAX_SCHEMA_DEPTH):
            raise ValueError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if _has_nul(schema):
            raise ValueError("the schema contains a NUL character")
        return schema

    @model_validator(mode="after")
    def _small(self) -> JsonSchemaSpec:
        size = _json_size(self.model_dump(exclude_none=True))
        if size > MAX_CONSTRAINT_BYTES:
            raise ValueError(f"json_schema takes {size} bytes as JSON; the limit is "
                             f"{MAX_CONSTRAINT_BYTES}")
        return self


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_object"]


class TextFormat(BaseModel):
    """No constraint (OpenAI's default); taken so a client may send it, not stored."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


ResponseFormat = Annotated[JsonSchemaFormat | JsonObjectFormat | TextFormat,
                           Field(discriminator="type")]
Choice = Annotated[str, Field(min_length=1, max_length=MAX_CHOICE_CHARS)]


def check_choices(choices: list[str] | None) -> list[str] | None:
    if choices is None:
        return None
    size = _json_size(choices)
    if size > MAX_CONSTRAINT_BYTES:
        raise ValueError(f"choices take {size} bytes as JSON; the limit is "
                         f"{MAX_CONSTRAINT_BYTES}")
    if len(set(choices)) != len(choices):
        raise ValueError("choices must not repeat a label")
    if any("\x00" in c for c in choices):
        raise ValueError("a choice contains a NUL character")
    return choices


def check_regex(regex: str | None) -> str | None:
    if regex is not None and "\x00" in regex:
        raise ValueError("regex contains a NUL character")
    return regex


def constraint_kind(params: dict[str, Any]) -> str | None:
    """`json_schema`, `json_object`, `choices`, `regex`, or None for free text."""
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        return str(fmt["type"])
    if params.get("choices") is not None:
        return "choices"
    if params.get("regex") is not None:
        return "regex"
    return None


def parsed_json(params: dict[str, Any], text: str | None) -> Any:
    """The result's parsed value for a JSON job; None for other jobs, and for output that
    is not complete JSON (cut short by max_tokens: its finish_reason says `length`)."""
    if text is None or constraint_kind(params) not in ("json_schema", "json_object"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


# --- the compile check ------------------------------------------------------------------

_xgr_lock = threading.Lock()
_xgr: Any = None
_xgr_missing = False


def _xgrammar() -> Any:
    """xgrammar, imported on the first constrained job (it takes seconds and brings torch),
    or None where it is not installed."""
    global _xgr, _xgr_missing
    if _xgr is not None or _xgr_missing:
        return _xgr
    with _xgr_lock:
        if _xgr is None and not _xgr_missing:
            try:
                import xgrammar
                _xgr = xgrammar
            except ImportError:
                _xgr_missing = True
                log.warning("xgrammar is not installed: structured output constraints are "
                            "checked for shape only here; the worker compiles them")
    return _xgr


def check_compiles(params: dict[str, Any]) -> None:
    """InvalidInput(`invalid_response_format`) for a constraint the engine would refuse."""
    kind = constraint_kind(params)
    if kind is None or kind == "json_object":
        return
    if kind == "json_schema":
        schema = params["response_format"]["json_schema"]["schema"]
        feature = unsupported_schema_feature(schema)
        if feature is not None:
            raise InvalidInput(f"response_format: the JSON schema uses {feature}, which "
                               "constrained decoding does not enforce; remove it",
                               code=INVALID)
    xgr = _xgrammar()
    if xgr is None:
        if kind == "regex":
            _check_python_regex(params["regex"])
        return
    try:
        if kind == "json_schema":
            # As the vLLM engine compiles it (worker/engines/vllm_backend.py: compact JSON).
            xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False,
                                         separators=(",", ":"))
        elif kind == "regex":
            xgr.Grammar.from_regex(params["regex"])
        else:
            xgr.Grammar.from_ebnf(choices_grammar(params["choices"]))
    except Exception as exc:
        raise InvalidInput(f"{_field(kind)}: does not compile to a grammar: "
                           f"{_compile_message(exc)}", code=INVALID) from exc


def _field(kind: str) -> str:
    return {"json_schema": "response_format.json_schema.schema"}.get(kind, kind)


def _check_python_regex(regex: str) -> None:
    """The syntax check where xgrammar is missing: Python's dialect is close to the
    ECMAScript-like one xgrammar takes, so this catches the common mistakes."""
    try:
        re.compile(regex)
    except re.error as exc:
        raise InvalidInput(f"regex: not a valid regular expression: {exc}",
                           code=INVALID) from exc


def _compile_message(exc: Exception) -> str:
    """xgrammar's message without its C++ source location prefix, cut short."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    text = re.sub(r"^\[[0-9:]+\] \S+:\d+: ", "", text)
    return text[:300]


def choices_grammar(choices: list[str]) -> str:
    """The EBNF vLLM builds for `choice` (vllm/v1/structured_output/utils.py)."""
    escapes = {"\\": r"\\", '"': r"\"", "\n": r"\n", "\r": r"\r", "\t": r"\t"}

    def escape(ch: str) -> str:
        if ch in escapes:
            return escapes[ch]
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"\\u{ord(ch):04x}"
        return ch

    return "root ::= " + " | ".join('"' + "".join(map(escape, c)) + '"' for c in choices)


# JSON Schema string formats xgrammar enforces; vLLM refuses a schema naming another.
_STRING_FORMATS = frozenset({
    "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid",
    "uri", "uri-reference", "uri-template", "json-pointer", "relative-json-pointer",
})


def unsupported_schema_feature(schema: object) -> str | None:
    """The first schema keyword xgrammar would silently ignore, which vLLM's xgrammar backend
    refuses (mirrors `has_xgrammar_unsupported_json_features` in vLLM 0.32), or None."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        found = _unsupported_here(node)
        if found is not None:
            return found
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
    return None


def _unsupported_here(obj: dict[str, Any]) -> str | None:
    raw = obj.get("type")
    types = ({raw} if isinstance(raw, str)
             else {t for t in raw if isinstance(t, str)} if isinstance(raw, list) else set())
    if types & {"integer", "number"} and "multipleOf" in obj:
        return "`multipleOf`"
    if "array" in types:
        for key in ("uniqueItems", "contains", "minContains", "maxContains"):
            if key in obj:
                return f"`{key}` on an array"
    if "string" in types:
        if "format" in obj and obj["format"] not in _STRING_FORMATS:
            return f"the string format {json.dumps(obj['format'])[:40]}"
        if _pattern_and_length(obj):
            return "`pattern` or `format` together with `minLength`/`maxLength`"
    if "object" in types and "propertyNames" in obj:
        names = obj.get("propertyNames")
        if isinstance(names, dict) and _pattern_and_length(names):
            return "`propertyNames` with a pattern and a length bound"
        for key in ("patternProperties", "properties"):
            if key in obj:
                return f"`propertyNames` together with `{key}`"
        if obj.get("unevaluatedProperties", True) is not True:
            return "`propertyNames` together with `unevaluatedProperties`"
    if "object" in types and isinstance(obj.get("patternProperties"), dict):
        if "properties" in obj:
            return "`patternProperties` together with `properties`"
        if len(obj["patternProperties"]) > 1:
            return "more than one `patternProperties` entry"
    all_of = obj.get("allOf")
    if isinstance(all_of, list) and len(all_of) >= 2:
        return "`allOf` with more than one branch"
    return None


def _pattern_and_length(obj: dict[str, Any]) -> bool:
    return ("pattern" in obj or "format" in obj) and ("minLength" in obj or "maxLength" in obj)
