"""A job's generation parameters, as every door takes them (`/v1/jobs`, chat completions,
batch lines): one schema, so the same values are valid whoever checks them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.chat import MAX_STOP_SEQUENCES, StopString


class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1, le=1000, description="-1 disables top-k")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[StopString] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)

    @model_validator(mode="after")
    def _no_empty_stop(self) -> GenerationParams:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self
