"""resize: rebuild every mapped target tensor from its learngene at the target's shapes.

Rules, per mapping (source layers L_s -> target layers L_t):
1. Depth: keep the first min(L_t, L_s) layer frequencies; for L_t > L_s fill the rest by
   `depth_mode`: zero (the published default), repeat (the kept frequencies again, block-wise)
   or random (normal with the kept coefficients' mean and std, from `seed`).
2. Width: zero-fill the target's view shape and copy in the top-left corner of the coefficients.
3. Inverse DCT along every axis at the target's lengths (the gene's convention), so every target
   layer gets its own slice of the depth inverse.
4. De-standardize target layer i with source layer min(i, L_s - 1)'s statistics (back from the
   log domain for BatchNorm variances), reshape to the target's layout.
The report row of each target tensor records the fraction of the standardized source energy
that its coefficients kept (orthonormal scaling).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from frontc import dct
from frontc.pipeline import Pass, State
from frontc.plan import Gene, view_shape

DEPTH_MODES = ("zero", "repeat", "random")


def fill_depth(coeffs: np.ndarray, layers: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    have = coeffs.shape[0]
    if layers <= have or mode == "zero":
        return dct.fit(coeffs, 0, layers)
    extra = layers - have
    if mode == "repeat":
        fill = np.concatenate([coeffs] * (extra // have + 1))[:extra]
    else:
        fill = rng.normal(coeffs.mean(), coeffs.std(), size=(extra,) + coeffs.shape[1:])
    return np.concatenate([coeffs, fill])


def kept_energy(gene: Gene, layers: int, view: tuple[int, ...]) -> float:
    """Fraction of the source's standardized energy inside the target's coefficient window."""
    window = gene.coeffs[:layers]
    for axis, n in enumerate((gene.layers,) + gene.view):
        if axis < window.ndim:
            size = window.shape[axis] if axis == 0 else min(window.shape[axis], view[axis - 1])
            window = np.take(window, np.arange(size), axis=axis)
            shape = [1] * window.ndim
            shape[axis] = size
            window = window * dct.ortho_scale(n, gene.convention)[:size].reshape(shape)
    return float(np.sum(window ** 2) / gene.energy) if gene.energy > 0 else 1.0


def rebuild(gene: Gene, layers: int, view: tuple[int, ...], mode: str,
            rng: np.random.Generator) -> np.ndarray:
    coeffs = fill_depth(gene.coeffs, layers, mode, rng)
    for axis, n in enumerate(view, start=1):
        coeffs = dct.fit(coeffs, axis, n)
    for axis in range(coeffs.ndim):
        coeffs = dct.inverse(coeffs, axis, gene.convention)
    source = np.minimum(np.arange(layers), gene.layers - 1)
    shape = (layers,) + (1,) * len(view)
    values = coeffs * gene.std[source].reshape(shape) + gene.mean[source].reshape(shape)
    return np.exp(values) if gene.log else values


@dataclass(frozen=True)
class Resize(Pass):
    name = "resize"
    summary = "truncate or zero-pad learngene coefficients to the target's shapes, inverse DCT"
    depth_mode: str = field(default="zero", metadata={"choices": DEPTH_MODES,
                            "help": "how a deeper target fills the layer frequencies it lacks"})
    seed: int = field(default=0, metadata={"help": "seed of depth_mode=random"})

    def run(self, state: State) -> None:
        advance = state.step("resize", len(state.plan.mappings))
        for mapping in state.plan.mappings:
            gene = state.genes[mapping.key]
            target = mapping.targets[0]
            view = view_shape(target.shape)
            rng = np.random.default_rng([self.seed, zlib.crc32(mapping.key.encode())])
            values = rebuild(gene, len(mapping.targets), view, self.depth_mode, rng)
            energy = kept_energy(gene, len(mapping.targets), view)
            for layer, weight in enumerate(mapping.targets):
                state.updates[weight.name] = values[layer].reshape(weight.shape)
                state.report[weight.name] = {
                    "target": weight.name, "shape": list(weight.shape), "kind": weight.slot,
                    "sources": [w.name for w in mapping.sources],
                    "source_shape": list(mapping.sources[0].shape),
                    "transform": f"dct-{gene.convention}",
                    "depth": f"{gene.layers}->{len(mapping.targets)}", "layer": layer,
                    "energy_kept": round(energy, 6)}
            advance()
