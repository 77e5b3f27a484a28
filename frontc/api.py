"""The Python API: the same compilations the CLI runs, usable from a notebook."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from frontc import learngene, modelio
from frontc.pipeline import DEFAULT_PIPELINE, Pipeline, State


def transfer(source: str | os.PathLike, target: str | os.PathLike, output: str | os.PathLike,
             pipeline: str = DEFAULT_PIPELINE, validate: bool = True, progress=None,
             device: str = "auto", **options: Any) -> State:
    """Write `target` initialized from `source` (an ONNX model or a learngene file made by
    `extract`) to `output`; returns the compilation state.

    `options` fill pass options the pipeline text leaves unset, e.g. convention="ortho",
    keep_ratio=0.5, depth_mode="zero", seed=0, heads="aware", conv_view="separable". From a
    learngene file, convention, keep_ratio, heads and conv_view default to the gene's; another
    convention or keep ratio is an error. `device`: auto, cpu or cuda.
    """
    output = Path(output)
    modelio.refuse_overwriting_inputs(output, [Path(source), Path(target)])
    state = State(Path(source), Path(target), output, validate=validate, progress=progress,
                  device=device)
    return Pipeline.from_text(pipeline, **{**learngene.options(source), **options}).run(state)


def plan(source: str | os.PathLike, target: str | os.PathLike, **options: Any) -> State:
    """Load and match the two models without writing anything (a dry run)."""
    state = State(Path(source), Path(target), device="cpu")
    return Pipeline.from_text("canonicalize,match", **options).run(state)


def extract(source: str | os.PathLike, output: str | os.PathLike, convention: str = "ortho",
            keep_ratio: float = 1.0, device: str = "auto", progress=None, heads: str = "whole",
            conv_view: str = "separable") -> dict:
    """Write the learngene of the ONNX model `source` to `output` (safetensors, docs/learngene.md)
    once; `transfer(output, target, ...)` then initializes any number of targets from it.
    `heads` and `conv_view` choose the views the blocks are taken in (the match pass's options)."""
    return learngene.extract(source, output, convention, keep_ratio, device, progress, heads,
                             conv_view)
