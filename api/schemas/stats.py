"""The body of GET /v1/stats/throughput."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class MinuteOut(BaseModel):
    start: datetime = Field(description="the minute's first moment, UTC")
    images: int = Field(description="jobs that succeeded in this minute (one image each)")
    prompt_tokens: int
    completion_tokens: int


class Throughput(BaseModel):
    minutes: int
    model: str | None = Field(description="the model asked for; null: every model")
    data: list[MinuteOut] = Field(description="one entry per minute, oldest first, the "
                                  "current (partial) minute last")
