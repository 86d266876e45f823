"""A job's generation parameters, as every door takes them (`/v1/jobs`, chat completions,
batch lines): one schema, so the same values are valid whoever checks them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.chat import MAX_STOP_SEQUENCES, StopString
from shared.jobs.structured import (
    MAX_CHOICES,
    MAX_REGEX_CHARS,
    Choice,
    ResponseFormat,
    check_choices,
    check_regex,
)

# The structured-output fields: at most one of them, and none is stored when unset, so a
# job without them keeps exactly the params it had before they existed.
STRUCTURED_FIELDS = ("response_format", "choices", "regex")
# As many as VLMQ_MAX_IMAGES_PER_JOB can allow; intake holds them to the job's images.
MAX_IMAGE_OFFSETS = 64


class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1, le=1000, description="-1 disables top-k")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[StopString] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    response_format: ResponseFormat | None = Field(
        default=None,
        description='OpenAI\'s: {"type": "json_schema", "json_schema": {"name": ..., '
        '"schema": {...}}} or {"type": "json_object"}; the result carries the parsed value '
        "as `result.json`",
    )
    choices: list[Choice] | None = Field(
        default=None, min_length=1, max_length=MAX_CHOICES,
        description="the answer is exactly one of these labels (classification)",
    )
    regex: str | None = Field(
        default=None, min_length=1, max_length=MAX_REGEX_CHARS,
        description="the answer matches this regular expression",
    )

    image_offsets: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, min_length=1, max_length=MAX_IMAGE_OFFSETS,
        description="where each image sits in the prompt, for text between images: the "
        "n-th number is how many of the prompt's characters (Unicode code points) come "
        "before the n-th image; one per image, none smaller than the one before. Absent: "
        "every image comes before the text. Chat completions and batch lines set it from "
        "the order of their text and image_url parts",
    )

    @field_validator("choices")
    @classmethod
    def _choices(cls, choices: list[str] | None) -> list[str] | None:
        return check_choices(choices)

    @field_validator("regex")
    @classmethod
    def _regex(cls, regex: str | None) -> str | None:
        return check_regex(regex)

    @model_validator(mode="after")
    def _no_empty_stop(self) -> GenerationParams:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self

    @field_validator("image_offsets")
    @classmethod
    def _offsets_in_order(cls, offsets: list[int] | None) -> list[int] | None:
        if offsets is not None and any(b < a for a, b in zip(offsets, offsets[1:])):
            raise ValueError("image_offsets must not decrease: the images are in prompt order")
        return offsets

    @model_validator(mode="after")
    def _one_constraint(self) -> GenerationParams:
        given = [name for name in STRUCTURED_FIELDS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of response_format, choices and regex "
                             f"(got {', '.join(given)})")
        return self

    def stored(self) -> dict[str, Any]:
        """The params as a job stores them: structured fields only when they constrain."""
        data = self.model_dump(exclude={*STRUCTURED_FIELDS, "image_offsets"})
        if self.image_offsets is not None and any(self.image_offsets):
            data["image_offsets"] = self.image_offsets
        fmt = self.response_format
        if fmt is not None and fmt.type != "text":
            data["response_format"] = fmt.model_dump(exclude_none=True)
        for name in ("choices", "regex"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data
