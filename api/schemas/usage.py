"""The body of GET /v1/usage."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from shared.usage.report import Counters


class UsageCounters(BaseModel):
    accepted: int = Field(description="jobs created, by any door (a batch's lines too)")
    succeeded: int
    failed: int = Field(description="batch lines refused at expansion included")
    cancelled: int
    expired: int
    images: int = Field(description="accepted jobs with an image")
    prompt_tokens: int = Field(description="of the jobs that succeeded, as for the rest")
    image_tokens: int = Field(description="of prompt_tokens, the images' (where the engine "
                                          "tells them apart)")
    completion_tokens: int
    engine_seconds: float = Field(description="each engine step's wall time, shared equally "
                                              "among the jobs in it")

    @classmethod
    def of(cls, counters: Counters) -> UsageCounters:
        return cls(**counters.__dict__)


class UsageRow(UsageCounters):
    tenant: str
    model: str | None = Field(description="with group_by=model; null with group_by=day")
    day: date | None = Field(description="the UTC day, with group_by=day; null with "
                                         "group_by=model")


class UsageReport(BaseModel):
    start: datetime = Field(description="the window's start: hours that begin at or after it")
    end: datetime = Field(description="the window's end: hours that begin before it")
    group_by: Literal["model", "day"]
    tenant: str | None = Field(description="the tenant reported on; null: every tenant (an "
                                           "admin key without `tenant`)")
    data: list[UsageRow] = Field(description="by tenant, then model or day; a group with "
                                             "nothing counted is left out")
    total: UsageCounters = Field(description="the sum of `data`")
