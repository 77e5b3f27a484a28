"""select: weight selection (Xu et al., ICLR 2024, "Initializing Models with Larger Ones"), the
baseline FRONT is measured against. It replaces `dct,resize`:
    canonicalize,match,select,emit        (`frontc transfer --method select`)

Rules, per mapping of the plan (source layers L_s -> target layers L_t):
1. Layers: target layer i takes source layer i (the first L_t layers of a depth group).
2. Width, per canonical axis of source length N and target length M: the indices
   arange(M) * (N / M) when N is divisible by M, else round(linspace(0, N - 1, M)); the same
   rule on every axis of every tensor, so a neuron kept in one layer meets the same neuron's
   weights in the next.
3. No rescaling: the selected values are written as they are, in the target's stored layout
   and dtype (BatchNorm statistics are selected like any tensor).
4. Shrink only. A target tensor keeps its own initialization (reported, moved to the plan's
   kept list) when it
   - is a head (its out axis counts classes): weight selection never copies the head;
   - has an axis longer than the source's (a wider target): nothing is invented;
   - is a layer past the source's depth (a deeper target: layers L_s..L_t-1);
   - has a different canonical rank than its source.
Source layers that initialize nothing are added to the plan's unused sources.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frontc.errors import InputError
from frontc.pipeline import Pass, State
from frontc.plan import Kept, Mapping

PIPELINE = "canonicalize,match,select,emit"


def indices(n: int, m: int) -> np.ndarray:
    """The m indices (of n) weight selection keeps along one axis (m <= n)."""
    if m > n:
        raise ValueError(f"weight selection cannot grow an axis ({n} -> {m})")
    if n % m == 0:
        return np.arange(m) * (n // m)
    return np.round(np.linspace(0, n - 1, m)).astype(np.int64)


def select(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`values` cut to `shape` by weight selection on every axis."""
    return values[np.ix_(*[indices(n, m) for n, m in zip(values.shape, shape)])]


def refusal(source, target) -> str | None:
    """Why weight selection leaves `target` at its own init, or None."""
    if "class" in target.roles:
        return "weight selection skips the head (it keeps its own init)"
    if len(source.shape) != len(target.shape):
        return (f"shapes {list(source.shape)} and {list(target.shape)} have different ranks "
                f"(weight selection selects per axis)")
    for axis, (n, m) in enumerate(zip(source.shape, target.shape)):
        if m > n:
            return (f"axis {axis} is longer in the target ({m}) than in the source ({n}); "
                    f"weight selection only shrinks")
    return None


def _rule(n: int, m: int) -> str:
    if n == m:
        return "all"
    return f"every {n // m}" if n % m == 0 else "linspace"


@dataclass(frozen=True)
class Select(Pass):
    name = "select"
    summary = ("weight selection baseline (Xu et al. 2024): evenly spaced indices per axis, the "
               "first layers of each depth group; the head and growing axes keep their own init")
    reads = ("plan",)
    writes = ("updates", "report")

    def run(self, state: State) -> None:
        if state.plan is None:
            raise InputError("the select pass needs the match pass before it")
        if state.learngene is not None:
            raise InputError(f"{state.source_path}: weight selection needs the source model's "
                             f"weights, not a learngene file")
        plan = state.plan
        advance = state.step("select", len(plan.mappings))
        mappings, used = [], set()
        for mapping in plan.mappings:
            pairs = []
            for layer, target in enumerate(mapping.targets):
                if target.name in mapping.skip:
                    continue
                if layer >= len(mapping.sources):
                    plan.kept.append(Kept(target, f"layer {layer} is past the source's "
                                                  f"{len(mapping.sources)} layers; weight "
                                                  f"selection only shrinks"))
                    continue
                source = mapping.sources[layer]
                reason = refusal(source, target)
                if reason:
                    plan.kept.append(Kept(target, reason))
                    continue
                state.updates[target.name] = target.store(select(source.array(), target.shape))
                state.report[target.name] = {
                    "target": target.name, "shape": list(target.shape), "kind": target.slot,
                    "sources": [source.name], "source_shape": list(source.shape),
                    "transform": "select " + ", ".join(
                        _rule(n, m) for n, m in zip(source.shape, target.shape)),
                    "depth": f"{len(mapping.sources)}->{len(mapping.targets)}", "layer": layer}
                pairs.append((target, source))
                used.add(source.name)
            if pairs:
                mappings.append(Mapping([t for t, _ in pairs], [s for _, s in pairs]))
            advance()
        known = {w.name for w in plan.unused_sources}
        for source in (s for m in plan.mappings for s in m.sources):
            if source.name not in used | known:
                plan.unused_sources.append(source)
                known.add(source.name)
        plan.mappings = mappings
