"""dct: extract the learngene of every source tensor and depth group the plan uses.

Rules, per source tensor W (each layer of a depth group separately):
1. Standardize with the whole tensor's scalar statistics: mu = mean(W), sigma = std(W, ddof=1),
   What = (W - mu) / (sigma + 1e-8). BatchNorm variances are taken in the log domain first,
   so no resize can make them negative.
2. View What as at most 2-D (frontc.plan.view_shape).
3. DCT-II along each view axis (`convention`: reference or ortho) and keep the low-frequency
   corner [:int(h*r), :int(w*r)] (r = keep_ratio).
4. Stack the layers of a depth group on a leading axis and take the same DCT along it (all
   source layers are kept; the target's depth decides the cut in `resize`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from frontc import dct
from frontc.errors import InputError
from frontc.pipeline import Pass, State
from frontc.plan import Gene, view_shape
from frontc.weights import Weight

EPS = 1e-8


def extract(layers: list[Weight], convention: str, keep_ratio: float) -> Gene:
    log = layers[0].slot == "bn.var"
    view = view_shape(layers[0].shape)
    stack, means, stds = [], [], []
    for w in layers:
        values = w.array()
        if not np.all(np.isfinite(values)):
            raise InputError(f"source tensor '{w.name}' (input {w.port} of {w.op.op_type} node "
                             f"'{w.op.name}') holds NaN or Inf values")
        if log:
            values = np.log(np.maximum(values, 1e-12))
        mu, sigma = values.mean(), values.std(ddof=1)
        stack.append(((values - mu) / (sigma + EPS)).reshape(view))
        means.append(mu)
        stds.append(sigma)
    coeffs = np.stack(stack)
    energy = float(np.sum(coeffs ** 2))
    for axis, n in enumerate(view, start=1):
        coeffs = dct.fit(dct.forward(coeffs, axis, convention), axis, dct.kept(n, keep_ratio))
    coeffs = dct.forward(coeffs, 0, convention)
    return Gene(coeffs, view, np.array(means), np.array(stds), energy, convention, log)


@dataclass(frozen=True)
class DCT(Pass):
    name = "dct"
    summary = "standardize source tensors, DCT them (width and depth), keep the low frequencies"
    convention: str = field(default="reference", metadata={"choices": dct.CONVENTIONS,
                            "help": "DCT scaling: the published 'reference' or orthonormal 'ortho'"})
    keep_ratio: float = field(default=1.0, metadata={
        "help": "fraction of each width axis's frequencies kept in the learngene (0 < r <= 1)"})

    def __post_init__(self):
        if not 0.0 < self.keep_ratio <= 1.0:
            raise InputError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")

    def run(self, state: State) -> None:
        advance = state.step("dct", len(state.plan.mappings))
        for mapping in state.plan.mappings:
            if mapping.key not in state.genes:
                state.genes[mapping.key] = extract(mapping.sources, self.convention, self.keep_ratio)
            advance()
