"""The Python API: the same compilations the CLI runs, usable from a notebook."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from frontc import modelio
from frontc.pipeline import DEFAULT_PIPELINE, Pipeline, State


def transfer(source: str | os.PathLike, target: str | os.PathLike, output: str | os.PathLike,
             pipeline: str = DEFAULT_PIPELINE, validate: bool = True, progress=None,
             **options: Any) -> State:
    """Write `target` initialized from `source` to `output`; returns the compilation state.

    `options` fill pass options the pipeline text leaves unset, e.g. convention="ortho",
    keep_ratio=0.5, depth_mode="zero", seed=0.
    """
    output = Path(output)
    modelio.refuse_overwriting_inputs(output, [Path(source), Path(target)])
    state = State(Path(source), Path(target), output, validate=validate, progress=progress)
    return Pipeline.from_text(pipeline, **options).run(state)


def plan(source: str | os.PathLike, target: str | os.PathLike, **options: Any) -> State:
    """Load and match the two models without writing anything (a dry run)."""
    state = State(Path(source), Path(target))
    return Pipeline.from_text("canonicalize,match", **options).run(state)
