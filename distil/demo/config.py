"""``DemoConfig``: the options of ``distil demo``.

Its own module because the plan (``distil.demo.plan``) needs it and ``distil.demo`` re-exports both
(the CLI names it ``distil.demo:DemoConfig``); defined in ``__init__`` it would be an import cycle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distil.config import StageConfig


class DemoConfig(StageConfig):
    scale: Literal["tiny", "sample", "full"] = Field(
        "sample",
        description="stage budgets: tiny (a minute-scale smoke run), sample (the default, "
        "<= 20 min on 2 CPU cores), full (bigger budgets for a GPU box)",
    )
    root: str = Field("s3://distil/demo", description="URL under which every artifact goes")
    samples: str = Field(
        "s3://distil/samples", description="URL of the sample corpus + reviews (built if missing)"
    )
    ray_address: str | None = Field(
        "http://127.0.0.1:8265",
        description="Ray job API to submit the Ray stages to; empty runs each job as a local "
        "process with an embedded Ray",
    )
    start_stack: bool = Field(
        True, description="start the local stack (Ray head + SeaweedFS) if it is not running"
    )
    report_dir: str = Field("runs", description="local folder that gets a copy of the report")
    budgets: str | None = Field(
        None,
        description="YAML with per-stage settings (default: the packaged config demo/<scale>)",
    )
    adapt: bool | None = Field(
        None,
        description="teacher adaptation (the budgets' adapt.teacher): --adapt always runs it, "
        "--no-adapt uses the teacher as given; unset (auto) runs it only when the teacher has no "
        "trained MLM head",
    )
