"""resize: rebuild every mapped target tensor from its learngene at the target's shapes.

Rules, per mapping (source layers L_s -> target layers L_t), one mapping at a time:
1. Window: the gene is built for the part of each width block the target can hold
   ([:min(kh, h'), :min(kw, w')]) and the first min(L_t, L_s) layer frequencies.
2. Depth: for L_t > L_s fill the missing layer frequencies by `depth_mode`: zero (the
   published default), repeat (the kept frequencies again, block-wise) or random (normal with
   the mean and std of the window's coefficients, from `seed`); inverse DCT along the layer
   axis at L_t, so every target layer gets its own slice of the depth inverse.
3. Width, per target layer: inverse DCT along every unfixed view axis at the target's lengths
   (coefficients it lacks are zero), in the gene's convention.
4. De-standardize target layer i with source layer min(i, L_s - 1)'s statistics (back from the
   log domain for BatchNorm variances), reshape to the target's layout and store it in the
   target's own dtype; nothing of the group is kept after its last layer is stored.
   With `std_rescale` (a variant, off by default), the de-standardized layer is first scaled
   about its mean so that its std equals that source layer's std (undoing the magnitude
   changes of the reference scaling; log-domain and constant tensors are left as they are).
The report row of each target tensor records the fraction of the standardized source energy
that its coefficients kept (orthonormal scaling).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import onnx_ir as ir

from frontc import dct
from frontc.backend import Backend, cpu
from frontc.errors import PipelineError
from frontc.passes.dct import stored_transposed
from frontc.pipeline import Pass, State
from frontc.plan import Gene
from frontc.weights import Weight

DEPTH_MODES = ("zero", "repeat", "random")


def fill_depth(coeffs, layers: int, mode: str, rng: np.random.Generator, backend: Backend | None = None):
    """The layer frequencies for `layers` target layers (zero mode: the inverse pads itself)."""
    xp = (backend or cpu()).xp
    have = coeffs.shape[0]
    if layers <= have:
        return coeffs[:layers]
    if mode == "zero":
        return coeffs
    extra = layers - have
    if mode == "repeat":
        fill = xp.concatenate([coeffs] * (extra // have + 1))[:extra]
    else:
        mean, std = float(coeffs.mean(dtype=np.float64)), float(coeffs.std(dtype=np.float64))
        fill = xp.asarray(rng.normal(mean, std, size=(extra,) + tuple(coeffs.shape[1:]))
                          .astype(coeffs.dtype))
    return xp.concatenate([coeffs, fill])


def _axis_weights(n: int, size: int, convention: str, fixed: bool) -> np.ndarray:
    """Squared factors turning this axis's first `size` coefficients into orthonormal ones."""
    if fixed:
        return np.ones(size)
    return dct.ortho_scale(n, convention)[:size] ** 2


def kept_energy(gene: Gene, layers: int, view: tuple[int, ...], backend: Backend | None = None) -> float:
    """Fraction of the source's standardized energy inside the target's coefficient window."""
    if gene.energy <= 0:
        return 1.0
    xp = (backend or cpu()).xp
    fixed = gene.fixed or (False,) * len(gene.view)
    depth = min(layers, gene.coeffs.shape[0])
    sizes = [min(gene.coeffs.shape[a + 1], view[a]) for a in range(len(gene.view))]
    w_depth = _axis_weights(gene.layers, depth, gene.convention, gene.layers == 1)
    w_axes = [xp.asarray(_axis_weights(n, s, gene.convention, f).astype(gene.coeffs.dtype))
              for n, s, f in zip(gene.view, sizes, fixed)]
    cut = tuple(slice(0, s) for s in sizes)
    total = 0.0
    for layer in range(depth):
        c = gene.coeffs[layer][cut]
        energy = c * c
        for w in reversed(w_axes[1:]):
            energy = energy @ w
        total += float(energy.astype(np.float64) @ w_axes[0].astype(np.float64)) * w_depth[layer]
    return total / gene.energy


def _widths(y, owned: bool, view: tuple[int, ...], fixed, convention: str, backend: Backend,
            spare: list):
    """Rule 3 for one layer: the inverse DCT along every unfixed axis at the view's lengths,
    written into one of the two `spare` buffers (zero-padded or copied there) or in place
    once the values are ours (`owned`)."""
    for axis in reversed(range(len(view))):
        if fixed[axis]:
            if y.shape[axis] != view[axis]:
                raise PipelineError(f"a fixed axis of size {y.shape[axis]} cannot become {view[axis]}")
            continue
        out = None
        if spare[0] is not None:
            size = int(np.prod(y.shape[:axis] + (view[axis],) + y.shape[axis + 1:]))
            out = next(s for s in spare if not np.may_share_memory(s, y))[:size]
        y = backend.inverse(y, axis, view[axis], convention, out=out, overwrite=owned)
        owned = True
    return y


def _destandardized(y, mean: float, std: float, log: bool, std_rescale: bool, xp):
    """Rule 4 for one layer, into a fresh array (the one the caller keeps): times the source
    layer's std plus its mean (with `std_rescale`, first to unit std about its own mean), back
    from the log domain for BatchNorm variances."""
    out = xp.empty_like(y)
    spread = float(y.std(dtype=np.float64)) if std_rescale and not log and y.size > 1 else 0.0
    if spread > 0:
        own = y.dtype.type(y.mean(dtype=np.float64))
        xp.subtract(y, own, out=out)
        out /= y.dtype.type(spread)
        out += own
        out *= y.dtype.type(std)
    else:
        xp.multiply(y, y.dtype.type(std), out=out)
    out += y.dtype.type(mean)
    if log:
        xp.exp(out, out=out)
    return out


def layers(gene: Gene, count: int, view: tuple[int, ...], mode: str, rng: np.random.Generator,
           backend: Backend, transposed: bool = False, std_rescale: bool = False,
           depth_out=None) -> Iterator:
    """Rules 2-4: yield each target layer's canonical values (at the target's view shape), or
    with `transposed` (a 2-D view) their transpose, laid out in memory as a MatMul stores it.

    Each yielded array is the only fresh one per layer: the depth inverse (into `depth_out`,
    an array of [count, *window] when given) and the width inverses run in reused buffers,
    in place where the FFT allows, because first touches of fresh pages can cost more than
    the DCTs (docs/performance.md). The gene's coefficients are never overwritten."""
    scratch, held = backend.scratch, []

    def buffer(shape: tuple[int, ...], dtype):
        if scratch is None:                      # CuPy keeps its own pool
            return None
        array, raw = scratch.array(shape, dtype)
        held.append(raw)
        return array

    try:
        coeffs, owned = fill_depth(gene.coeffs, count, mode, rng, backend), False
        if gene.layers > 1 or count > 1:
            if depth_out is None:
                depth_out = buffer((count,) + coeffs.shape[1:], coeffs.dtype)
            coeffs, owned = backend.inverse(coeffs, 0, count, gene.convention, out=depth_out), True
        fixed = gene.fixed or (False,) * len(view)
        axes = list(range(len(view)))
        if transposed:
            axes, fixed, view = [1, 0], fixed[::-1], view[::-1]
        spare = [buffer((int(np.prod(view)),), coeffs.dtype) for _ in range(2)]
        for i in range(count):
            y = _widths(coeffs[i].transpose(axes), owned, view, fixed, gene.convention, backend, spare)
            source = min(i, gene.layers - 1)
            yield _destandardized(y, gene.mean[source], gene.std[source], gene.log, std_rescale,
                                  backend.xp)
    finally:
        for raw in held:
            scratch.give(raw)


def rebuild(gene: Gene, layers_: int, view: tuple[int, ...], mode: str, rng: np.random.Generator,
            backend: Backend | None = None) -> np.ndarray:
    """All target layers at once, [layers, *view] (tests, small models)."""
    be = backend or cpu()
    return np.stack([be.to_host(y) for y in layers(gene, layers_, view, mode, rng, be)])


def stored_tensor(weight: Weight, values: np.ndarray, transposed: bool = False) -> ir.Tensor:
    """The tensor to write: canonical `values` (or, with `transposed`, already in the stored
    [in, out] layout) in the weight's stored layout and the target's dtype."""
    if transposed:
        stored = values
    else:
        stored = np.transpose(values.reshape(weight.shape), np.argsort(weight.perm))
    return ir.Tensor(np.ascontiguousarray(stored, dtype=weight.dtype.numpy()), name=weight.name)


@dataclass(frozen=True)
class Resize(Pass):
    name = "resize"
    summary = "truncate or zero-pad learngene coefficients to the target's shapes, inverse DCT"
    reads = ('plan', 'genes')
    writes = ('updates', 'report')
    depth_mode: str = field(default="zero", metadata={"choices": DEPTH_MODES,
                            "help": "how a deeper target fills the layer frequencies it lacks"})
    seed: int = field(default=0, metadata={"help": "seed of depth_mode=random"})
    std_rescale: bool = field(default=False, metadata={"quiet": True, "help": (
        "scale each rebuilt layer to its source layer's std (a variant; off as published)")})

    def run(self, state: State) -> None:
        store = state.genes
        if not hasattr(store, "group"):
            raise PipelineError("the resize pass needs the dct pass before it")
        backend = state.backend or cpu()
        advance = state.step("resize", len(state.plan.mappings))
        blocks = store.stream(state.plan.mappings)
        for mapping in state.plan.mappings:
            source_view, target_view = mapping.views
            view = target_view.shape
            depth = min(len(mapping.targets), len(mapping.sources))
            gene = store.group(mapping.sources, store.window(mapping), depth, blocks, source_view)
            rng = np.random.default_rng([self.seed, zlib.crc32(mapping.key.encode())])
            energy = kept_energy(gene, len(mapping.targets), view, backend)
            transposed = all(stored_transposed(w, target_view) for w in mapping.targets)
            count = len(mapping.targets)
            values = layers(gene, count, view, self.depth_mode, rng, backend, transposed,
                            self.std_rescale, store.idle((count,) + gene.coeffs.shape[1:],
                                                         gene.coeffs.dtype, gene))
            for layer, (weight, y) in enumerate(zip(mapping.targets, values)):
                if weight.name in mapping.skip:
                    continue
                state.updates[weight.name] = stored_tensor(weight, backend.to_host(y), transposed)
                state.report[weight.name] = {
                    "target": weight.name, "shape": list(weight.shape), "kind": weight.slot,
                    "sources": [w.name for w in mapping.sources],
                    "source_shape": list(mapping.sources[0].shape),
                    "transform": f"dct-{gene.convention}" + (
                        "" if target_view.kind == "whole" else f"/{target_view.kind}"),
                    "depth": f"{gene.layers}->{len(mapping.targets)}", "layer": layer,
                    "energy_kept": round(energy, 6)}
            del gene, values
            advance()
        store.release()
