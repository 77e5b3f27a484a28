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


@dataclass(frozen=True)
class View:
    """How the DCT sees one tensor: its canonical values reshaped (C order) to `shape`.

    Fixed axes are kept whole and never transformed (vocabulary, class count, the q/k/v group
    axis and head_dim of a head-aware view). `kind` names the rule that made it.
    """

    shape: tuple[int, ...]
    fixed: tuple[bool, ...]
    kind: str = "whole"

    def kept(self, keep_ratio: float) -> tuple[int, ...]:
        """The block a learngene keeps: int(n * r) per axis, fixed axes whole."""
        from frontc.dct import kept

        return tuple(n if f else kept(n, keep_ratio) for n, f in zip(self.shape, self.fixed))


@dataclass
class Mapping:
    """Target weights (one per target layer) filled from source weights (one per source layer).

    A mapping with one layer on each side is a singleton; otherwise the layers form a depth
    group and are resized along the layer axis too.
    """

    targets: list[Weight]
    sources: list[Weight]
    skip: set[str] = field(default_factory=set)   # target names an override took over
    source_view: View | None = None               # None: whole_view of the first layer
    target_view: View | None = None

    @property
    def views(self) -> tuple[View, View]:
        return (self.source_view or whole_view(self.sources[0]),
                self.target_view or whole_view(self.targets[0]))

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


def _squeezed(shape, fixed, kind: str) -> View:
    keep = [i for i, d in enumerate(shape) if d != 1] or [0]
    return View(tuple(shape[i] for i in keep), tuple(fixed[i] for i in keep), kind)


def whole_view(weight) -> View:
    """The published view: view_shape, with an axis fixed when the canonical axes behind it
    are all fixed (only tensors of at most 2 dims have fixed axes)."""
    view = view_shape(weight.shape)
    fixed = tuple(f for f, n in zip(weight.fixed, weight.shape) if n != 1)
    if len(weight.shape) > 2 or len(fixed) != len(view):
        fixed = (False,) * len(view)
    return View(view, fixed)


def separable_view(weight) -> View | None:
    """A conv weight [out, in, *kernel] as [out, in, kernel points]: output and input channels
    get a DCT each instead of one over their flattened product (a 1x1 conv's flattened view is
    one long axis, which mixes every input channel into every output channel)."""
    return conv_separable(weight.shape) if weight.slot == "conv.weight" else None


def conv_separable(shape: tuple[int, ...]) -> View | None:
    """separable_view of a conv weight's shape; None for depthwise kernels (in = 1), whose
    whole view is already [out, kernel]."""
    if len(shape) < 3 or shape[1] == 1:
        return None
    return _squeezed((shape[0], shape[1], int(np.prod(shape[2:]))), (False,) * 3, "separable")


def heads_view(weight, heads) -> View | None:
    """A projection's weight or bias with its head axis apart: [g, H, hd, in] for q/k/v (g = 1,
    2 or 3 groups, fixed), [out, H, hd] for the output projection; head_dim is fixed, so only
    the head count (and the other width) is resized. None where the groups are unequal
    (fused grouped-query attention has no such reshape)."""
    if heads is None or not heads.uniform or weight.slot not in ("linear.weight", "linear.bias"):
        return None
    g, h, hd = len(heads.groups), heads.groups[0], heads.head_dim
    if heads.axis == "out":
        if weight.shape[0] != g * h * hd:
            return None
        shape = (g, h, hd) + tuple(weight.shape[1:])
        fixed = (True, False, True) + (False,) * (len(weight.shape) - 1)
        if g == 1:                  # one group: no group axis (the head axis stays, even at 1)
            shape, fixed = shape[1:], fixed[1:]
        return View(shape, fixed, "heads")
    if len(weight.shape) != 2 or weight.shape[1] != h * hd:
        return None
    return View((weight.shape[0], h, hd), (False, False, True), "heads")
