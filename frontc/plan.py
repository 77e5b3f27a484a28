"""Typed results that passes hand to each other: the model views, the plan, the learngene."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from frontc.structure import Structure
from frontc.weights import Weight, WeightIndex


@dataclass
class ModelView:
    """A loaded model with its parameter view and its block structure."""

    path: Path
    model: ir.Model
    index: WeightIndex
    structure: Structure


@dataclass
class Mapping:
    """Target weights (one per target layer) filled from source weights (one per source layer).

    A mapping with one layer on each side is a singleton; otherwise the layers form a depth
    group and are resized along the layer axis too.
    """

    targets: list[Weight]
    sources: list[Weight]
    skip: set[str] = field(default_factory=set)   # target names an override took over

    @property
    def key(self) -> str:
        return "+".join(w.name for w in self.sources)

    @property
    def depth(self) -> tuple[int, int]:
        return len(self.sources), len(self.targets)


@dataclass
class Kept:
    """A target weight that keeps its own initialization, and why."""

    weight: Weight
    reason: str


@dataclass
class Plan:
    mappings: list[Mapping] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    unused_sources: list[Weight] = field(default_factory=list)

    @property
    def mapped_tensors(self) -> int:
        return len({w.name for m in self.mappings for w in m.targets if w.name not in m.skip})

    @property
    def coverage(self) -> float:
        total = self.mapped_tensors + len(self.kept)
        return self.mapped_tensors / total if total else 0.0


@dataclass
class Gene:
    """The learngene of one source tensor or depth group.

    `coeffs` has a leading layer axis (length 1 for a singleton) already transformed by the
    DCT, then the kept low-frequency block of each axis of the 2-D (or 1-D) view (cut to the
    target's window when built for one target). Built on demand by the dct pass's GeneStore.
    """

    coeffs: np.ndarray
    view: tuple[int, ...]     # the source's view shape, per layer, before truncation
    mean: np.ndarray          # per source layer
    std: np.ndarray           # per source layer
    energy: float             # total energy of the standardized source layers (Parseval)
    convention: str
    log: bool = False         # the values were resized in the log domain (BatchNorm variances)
    fixed: tuple[bool, ...] = ()  # per view axis: fixed (vocabulary, class), kept whole, untransformed

    @property
    def layers(self) -> int:
        return len(self.mean)


def view_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The at-most-2-D view the DCT works on: 4-D [A,B,C,D] -> [A*B, C*D], 3-D [A,B,C] -> [A*B, C],
    then every size-1 dimension squeezed away."""
    if len(shape) >= 4:
        view = (shape[0] * shape[1], int(np.prod(shape[2:])))
    elif len(shape) == 3:
        view = (shape[0] * shape[1], shape[2])
    else:
        view = tuple(shape)
    return tuple(d for d in view if d != 1) or (1,)
