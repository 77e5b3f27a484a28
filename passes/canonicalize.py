"""canonicalize: load the source and the target and build their parameter views.

Rules:
1. Each model is read with onnx_ir; external data stays memory-mapped.
2. Every weight (initializer, Constant node, or behind Identity/Cast/Transpose) gets its canonical
   `[out, in, ...]` layout and axis roles from the op that consumes it (frontc.weights).
3. Blocks and depth groups are derived from graph structure (frontc.structure).
4. A learngene file as the source (frontc.learngene) gives the weightless source graph it
   stores, analyzed by the same rules 2-3; its coefficient blocks are read later, on demand.
5. The array backend is chosen from `State.device` (frontc.backend).
Nothing in either model is changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from frontc import learngene, modelio
from frontc.backend import select
from frontc.errors import InputError
from frontc.pipeline import Pass, State
from frontc.plan import ModelView
from frontc.structure import analyze
from frontc.weights import index_weights


def view_model(path: Path, what: str) -> ModelView:
    model = modelio.load(path, what)
    index = index_weights(model)
    if not index.weights:
        raise InputError(f"{what} {path}: has no weight tensors (float initializers or "
                         f"Constant nodes with more than one element) to transfer")
    return ModelView(Path(path), model, index, analyze(model, index))


@dataclass(frozen=True)
class Canonicalize(Pass):
    name = "canonicalize"
    summary = "load both models; find weights, their axis roles, blocks and depth groups"
    reads = ()
    writes = ('source', 'target')

    def run(self, state: State) -> None:
        if state.backend is None:
            state.backend = select(state.device)
        if learngene.looks_like(state.source_path):
            state.learngene = learngene.Learngene(state.source_path)
            state.source = state.learngene.view
        else:
            state.source = view_model(state.source_path, "source")
        state.target = view_model(state.target_path, "target")
