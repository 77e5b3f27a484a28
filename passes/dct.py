"""dct: the learngene -- each source tensor's width coefficients, then the DCT across layers.

Rules, per source tensor W (each layer of a depth group separately), its *width block*:
1. Standardize with the whole tensor's scalar statistics: mu = mean(W), sigma = std(W, ddof=1)
   (accumulated in float64), What = (W - mu) / (sigma + 1e-8) in float32 (float64 for float64
   sources). BatchNorm variances are taken in the log domain first, so no resize can make
   them negative.
2. View What as the mapping's view (frontc.plan.View) that the match pass chose: the
   published at-most-2-D view_shape, a separable-conv view (conv weights, by default) or a
   head-aware one.
3. DCT-II along each view axis, last axis first (`convention`: reference or ortho), keeping
   the low-frequency corner [:int(h*r), :int(w*r)] (r = keep_ratio). Fixed axes (vocabulary,
   class count) are never resized: they are kept whole and not transformed.
Per depth group, when `resize` asks for it (`GeneStore.group`):
4. Each layer's block, cut to the window the target can use ([:min(kh, h'), :min(kw, w')]),
   is stacked on a leading layer axis, and the same DCT is taken along it, keeping the first
   min(L_t, L_s) layer frequencies.
A source tensor holding NaN or Inf is refused (InputError naming the file, tensor and node)
unless `allow_nonfinite`: then those entries are missing values and take the mean of the
tensor's finite values before rule 1 (a tensor with no finite value is refused anyway).
Blocks come from the source model or from a learngene file (frontc.learngene): both run the
same operations on the same float32 blocks, so they give byte-identical weights (a direct
transfer computes only the window's lines of FFT-form blocks: the same bytes, see
`source_block`).

The pass itself computes nothing: it installs `State.genes`, which builds one group's gene on
demand and keeps nothing, so only one depth group is in memory at a time.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping as MappingABC
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx_ir as ir

from frontc import dct
from frontc.backend import Backend, cpu
from frontc.errors import InputError, PipelineError
from frontc.pipeline import Pass, State
from frontc.plan import Gene, Kept, Mapping, View, whole_view
from frontc.weights import Weight

EPS = 1e-8


# -- one source tensor ---------------------------------------------------------------------------

@dataclass
class Block:
    """The width learngene of one source tensor: its kept low-frequency block and statistics."""

    coeffs: object            # [kh(, kw)] array (NumPy, or CuPy on a GPU backend)
    mean: float
    std: float
    energy: float             # sum of squares of the standardized tensor (before truncation)
    raw: object = None        # the scratch buffer holding `coeffs`, handed back once copied

    def release(self, backend: Backend) -> None:
        if backend.scratch is not None and self.raw is not None:
            backend.scratch.give(self.raw)
        self.raw = self.coeffs = None


def stored_transposed(weight: Weight, view: View | None = None) -> bool:
    """A 2-D weight stored as [in, out] (MatMul) under its whole view: its blocks live in that
    memory order too."""
    return type(weight) is Weight and len(weight.shape) == 2 and min(weight.shape) > 1 and \
        tuple(weight.perm) == (1, 0) and (view is None or len(view.shape) == 2)


def compute_dtype(dtype: ir.DataType) -> type:
    return np.float64 if dtype == ir.DataType.DOUBLE else np.float32


def is_log(weight: Weight) -> bool:
    return weight.slot == "bn.var"


def canonical_values(weight: Weight, dtype=None, scratch=None) -> tuple[np.ndarray, object, bool]:
    """(the weight in canonical layout, the scratch buffer holding it or None, whether that
    memory is ours to overwrite). External data is read from its file (no memory map stays
    open); with a `scratch`, values land in a reused buffer in `dtype` (other tensors are
    copied there, so the FFT can run in place); without, other tensors are viewed in place."""
    from frontc.weights import StandIn

    if isinstance(weight, StandIn) and weight.value is None:
        weight = weight.like                 # the same values under another kind
    if type(weight) is not Weight:           # a derived weight (BatchNorm folded in, a constant)
        return np.asarray(weight.array()), None, True
    tensor = weight.tensor
    shape = tuple(int(d) for d in tensor.shape)
    raw = None
    if isinstance(tensor, ir.ExternalTensor):
        path = Path(tensor.path)
        base = Path(tensor.base_dir).resolve() if tensor.base_dir else None
        if base is not None and base not in path.resolve().parents:
            raise InputError(f"external data of tensor '{weight.name}' ({path}) lies outside the "
                             f"model's folder {base}; refusing to read it")
        stored_dtype = np.dtype(tensor.dtype.numpy()).newbyteorder("<")
        nbytes = tensor.size * stored_dtype.itemsize
        raw = scratch.take(nbytes) if scratch is not None else np.empty(nbytes, dtype=np.uint8)
        with open(path, "rb") as f:
            f.seek(tensor.offset or 0)
            got = f.readinto(memoryview(raw)[:nbytes])
        if got != nbytes:
            raise InputError(f"external data file {path} is too short for tensor '{weight.name}'")
        stored, owned = raw[:nbytes].view(stored_dtype).reshape(shape), True
        if scratch is None:
            raw = None
    else:
        stored, owned = np.asarray(tensor.numpy()), False
    if scratch is not None and dtype is not None and (not owned or stored.dtype != dtype):
        into, into_raw = scratch.array(shape, dtype)
        np.copyto(into, stored, casting="unsafe")
        scratch.give(raw)
        stored, raw, owned = into, into_raw, True
    return np.transpose(stored, weight.perm), raw, owned


def _moments(x) -> tuple[float, float]:
    """(sum(x), sum(x**2)) accumulated in float64, in one pass of cache-sized chunks."""
    flat = x.reshape(-1)
    if not isinstance(flat, np.ndarray):           # CuPy
        return float(flat.sum(dtype=np.float64)), float((flat * flat).sum(dtype=np.float64))
    step = 1 << 16
    tmp = np.empty(min(step, flat.size), dtype=flat.dtype)
    s1 = s2 = 0.0
    for start in range(0, flat.size, step):
        chunk = flat[start:start + step]
        part = tmp[:chunk.size]
        s1 += float(np.add.reduce(chunk, dtype=np.float64))
        np.multiply(chunk, chunk, out=part)
        s2 += float(np.add.reduce(part, dtype=np.float64))
    return s1, s2


def _centered_squares(x, mu: float) -> float:
    """sum((x - mu)**2) in float64 (the exact second pass, for tensors far from zero mean)."""
    flat = x.reshape(-1)
    step = 1 << 16
    total = 0.0
    for start in range(0, flat.size, step):
        chunk = flat[start:start + step].astype(np.float64) - mu
        total += float((chunk * chunk).sum())
    return total


def dc_scale(n: int, convention: str) -> float:
    """The DC coefficient of a constant 1 of length n: n (reference) or sqrt(n) (ortho)."""
    return float(n) if convention != "ortho" else float(n) ** 0.5


def width_block(values, view: tuple[int, ...], fixed: tuple[bool, ...], keep: tuple[int, ...],
                convention: str, log: bool, backend: Backend, name: str = "",
                owned: bool = False, flip: bool = False) -> Block:
    """Rules 1-3 for one tensor: standardize, view, DCT each unfixed axis, keep the corner.

    The DCT is linear, so the tensor is transformed as it is and standardized afterwards, on
    the kept block only: mu (times the DC of a constant) comes off the DC coefficients, then
    everything is divided by sigma + 1e-8. The statistics come from one float64 pass over
    the values. Every step runs in memory order: with `flip` (a 2-D weight stored
    transposed) on its [in, out] base, the block coming back as a transposed view. `owned`
    says `values` may be overwritten (the first FFT then runs in place)."""
    xp = backend.xp
    dtype = np.float64 if values.dtype == np.float64 else np.float32
    base = values.T if flip else values
    x = backend.asarray(base, dtype)
    if isinstance(x, np.ndarray):
        mine = owned or not np.may_share_memory(x, values)
        if not x.flags.c_contiguous or (log and not (mine and x.flags.writeable)):
            x, mine = np.array(x, order="C"), True
        writable = mine and x.flags.writeable
    else:
        writable = True                      # a fresh device array
    if log:
        xp.log(xp.maximum(x, dtype(1e-12), out=x), out=x)
    s1, s2 = _moments(x)
    n = x.size
    mu = s1 / n
    if not np.isfinite(mu) or not np.isfinite(s2):     # NaN or Inf anywhere
        raise InputError(f"source tensor '{name}' holds NaN or Inf values")
    ss = max(s2 - n * mu * mu, 0.0)
    if ss <= 1e-6 * s2 and isinstance(x, np.ndarray):  # mean >> spread: no cancellation
        ss = _centered_squares(x, mu)
    sigma = (ss / max(n - 1, 1)) ** 0.5
    d = (x.T if flip else x).reshape(view)
    transformed = [a for a in range(len(view)) if not fixed[a]]
    if not transformed:
        d = d - dtype(mu)
    # Contiguous axis first; the order depends only on the stored layout, so a learngene file
    # and a direct transfer run the same operations.
    for axis in sorted(range(len(view)), key=lambda a: (d.strides[a], -a)):
        if not fixed[axis]:
            d = backend.forward(d, axis, keep[axis], convention, workers=1, overwrite=writable)
            writable = True
        elif keep[axis] < view[axis]:
            d = d[(slice(None),) * axis + (slice(0, keep[axis]),)]
    if ss == 0.0:                     # a constant: the standardized tensor is exactly zero
        d[...] = 0
    elif transformed and d.size:
        dc = mu
        for a in transformed:
            dc *= dc_scale(view[a], convention)
        d[tuple(0 if a in transformed else slice(None) for a in range(len(view)))] -= dtype(dc)
    d /= dtype(sigma + EPS)
    return Block(d, mu, sigma, ss / (sigma + EPS) ** 2)


def nonfinite_as_missing(weight: Weight, values: np.ndarray, where: str) -> np.ndarray:
    """--allow-nonfinite: NaN and Inf entries are missing values and take the mean of the
    tensor's finite values (a new array; `values` is not modified)."""
    ok = np.isfinite(values)
    if ok.all():
        return values
    if not ok.any():
        raise InputError(f"{where}tensor '{weight.name}' (input {weight.port} of {weight.op.op_type} "
                         f"node '{weight.op.name}') holds no finite value at all, nothing to "
                         f"transfer even with --allow-nonfinite")
    return np.where(ok, values, values[ok].mean(dtype=np.float64)).astype(values.dtype)


def source_block(weight: Weight, convention: str, keep_ratio: float, backend: Backend,
                 source: str | os.PathLike = "", allow_nonfinite: bool = False,
                 view: View | None = None, window: tuple[int, ...] | None = None) -> Block:
    """One source tensor's width block: its kept corner, or only the part of it inside
    `window` (what one target can use) where every transformed axis is line-independent
    (the CPU's FFT form): the window's coefficients are then the same bytes either way, so a
    learngene, whose blocks are cut to the window after, gives the same transfer."""
    where = f"source {source}: " if source else "source "
    view = view or whole_view(weight)
    raw = None
    try:
        values, raw, owned = canonical_values(weight, compute_dtype(weight.dtype), backend.scratch)
        if allow_nonfinite:
            replaced = nonfinite_as_missing(weight, values, where)
            values, owned = replaced, owned or replaced is not values
        keep = view.kept(keep_ratio)
        if window is not None and all(backend.line_independent(n)
                                      for n, f in zip(view.shape, view.fixed) if not f):
            keep = tuple(min(k, w) for k, w in zip(keep, window))
        block = width_block(values, view.shape, view.fixed, keep, convention,
                            is_log(weight), backend, weight.name, owned,
                            stored_transposed(weight, view))
        block.raw, raw = raw, None
        return block
    except InputError as err:
        if "NaN or Inf" in str(err):
            raise InputError(f"{where}tensor '{weight.name}' (input {weight.port} of "
                             f"{weight.op.op_type} node '{weight.op.name}') holds NaN or Inf "
                             f"values; fix the source, or pass --allow-nonfinite to treat them "
                             f"as missing (replaced by the tensor's finite mean)") from None
        raise
    finally:
        if raw is not None and backend.scratch is not None:
            backend.scratch.give(raw)


def in_order(fn: Callable, items: Iterable, threads: int) -> Iterator:
    """fn over items on `threads` threads, results in order, at most `threads` in flight (so
    at most that many blocks are in memory beyond the ones the caller keeps)."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for item in items:
            if len(pending) >= threads:
                yield pending.popleft().result()
            pending.append(pool.submit(fn, item))
        while pending:
            yield pending.popleft().result()


# -- where blocks come from -----------------------------------------------------------------------

class DirectBlocks:
    """Width blocks computed from the source model's tensors."""

    def __init__(self, convention: str, keep_ratio: float, backend: Backend,
                 source: str | os.PathLike = "", allow_nonfinite: bool = False):
        self.convention, self.keep_ratio, self.backend = convention, keep_ratio, backend
        self.source, self.allow_nonfinite = source, allow_nonfinite

    def block(self, weight: Weight, view: View, window: tuple[int, ...] | None = None) -> Block:
        return source_block(weight, self.convention, self.keep_ratio, self.backend, self.source,
                            self.allow_nonfinite, view, window)

    def missing(self, weight: Weight, view: View) -> str | None:
        return None

    def kept(self, weight: Weight, view: View) -> tuple[int, ...]:
        return view.kept(self.keep_ratio)


# -- one depth group ----------------------------------------------------------------------------

class GeneStore(MappingABC):
    """`State.genes`: mapping key -> Gene, computed when asked for and never kept."""

    def __init__(self, mappings: list[Mapping], blocks, convention: str, backend: Backend):
        self.by_key = {m.key: m for m in mappings}
        self.blocks, self.convention, self.backend = blocks, convention, backend
        self._buffers: dict[str, np.ndarray] = {}    # the streaming path's reused stack and output

    def release(self) -> None:
        """Drop the reused buffers (resize calls this when the last group is done)."""
        self._buffers.clear()
        if self.backend.scratch is not None:
            self.backend.scratch.clear()

    def _buffer(self, name: str, shape: tuple[int, ...], dtype, reuse: bool):
        xp = self.backend.xp
        if not reuse or self.backend.scratch is None:
            return xp.empty(shape, dtype=dtype)
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = self._buffers.get(name)
        if raw is None or raw.nbytes < nbytes:
            raw = self._buffers[name] = np.empty(max(nbytes, 1), dtype=np.uint8)
        return raw[:nbytes].view(dtype).reshape(shape)

    def __getitem__(self, key: str) -> Gene:
        """The whole gene of a mapping: all kept width coefficients, all layer frequencies."""
        mapping = self.by_key[key]
        view = mapping.views[0]
        return self.group(mapping.sources, self.blocks.kept(mapping.sources[0], view),
                          len(mapping.sources), view=view)

    def __iter__(self):
        return iter(self.by_key)

    def __len__(self) -> int:
        return len(self.by_key)

    def window(self, mapping: Mapping) -> tuple[int, ...]:
        """Rule 1 of resize: the part of each source block the mapping's target can hold."""
        source_view, target_view = mapping.views
        kept = self.blocks.kept(mapping.sources[0], source_view)
        return tuple(min(k, n) for k, n in zip(kept, target_view.shape))

    def stream(self, mappings: list[Mapping]) -> Iterator[Block]:
        """The blocks of every source layer of `mappings` cut to their target's window, in
        order, computed ahead on the backend's threads (at most that many beyond the one being
        consumed), so the next group's blocks are under way while the current group is resized.
        The reused buffers are sized once, for the largest group: growing them group by group
        would touch fresh pages again each time, and on a VM whose host takes freed memory back
        a first touch is the most expensive thing a transfer does (docs/performance.md)."""
        items, stack, depth = [], 0, 0
        for m in mappings:                  # each mapping's view and window, once
            view, window = m.views[0], self.window(m)
            items += [(w, view, window) for w in m.sources]
            size = int(np.prod(window)) * np.dtype(compute_dtype(m.sources[0].dtype)).itemsize
            stack = max(stack, max(len(m.sources), len(m.targets)) * size)
            depth = max(depth, min(len(m.sources), len(m.targets)) * size)
        if self.backend.scratch is not None:
            self._buffer("stack", (stack,), np.uint8, True)
            self._buffer("depth", (depth,), np.uint8, True)
        return in_order(lambda item: self.blocks.block(*item), items, self.backend.threads)

    def idle(self, shape: tuple[int, ...], dtype, gene: Gene):
        """The stack's buffer as an array of `shape`, for the depth inverse of `gene` (the stack
        is idle once the layer DCT has run), or None where the stack holds the gene itself."""
        if "stack" not in self._buffers:
            return None
        out = self._buffer("stack", shape, dtype, True)
        return None if np.may_share_memory(out, gene.coeffs) else out

    def group(self, sources: list[Weight], window: tuple[int, ...], depth_keep: int,
              blocks: Iterator[Block] | None = None, view: View | None = None) -> Gene:
        """Rule 4: the layers' blocks cut to `window`, stacked, DCT along the layer axis keeping
        `depth_keep` frequencies. `blocks` (from `stream`) supplies the layers' blocks; then
        the stack and the result live in buffers reused by the next call (the caller is done
        with a gene before it asks for the next)."""
        be = self.backend
        reuse = blocks is not None
        cut = tuple(slice(0, n) for n in window)
        view = view or whole_view(sources[0])
        flip = stored_transposed(sources[0], view)   # stack [in, out] blocks in that memory order
        stack, means, stds, energy = None, [], [], 0.0
        if blocks is None:
            blocks = in_order(lambda w: self.blocks.block(w, view), sources, be.threads)
        for i in range(len(sources)):
            block = next(blocks)
            part = block.coeffs[cut]
            part = part.T if flip else part
            if stack is None:
                stack = self._buffer("stack", (len(sources),) + part.shape, part.dtype, reuse)
            stack[i] = part
            means.append(block.mean)
            stds.append(block.std)
            energy += block.energy
            del part
            block.release(be)
        if flip:
            stack = stack.transpose(0, 2, 1)
        if len(sources) > 1 or depth_keep != 1:
            rest = int(np.prod(stack.shape[1:]))
            out = self._buffer("depth", (depth_keep * rest,), stack.dtype, reuse) if reuse else None
            stack = be.forward(stack, 0, depth_keep, self.convention, out=out)
        first = sources[0]
        return Gene(stack, view.shape, np.array(means), np.array(stds), energy,
                    self.convention, is_log(first), fixed=view.fixed)


def extract(layers: list[Weight], convention: str, keep_ratio: float, backend: Backend | None = None,
            view: View | None = None) -> Gene:
    """The whole gene of one source tensor or depth group in `view` (default: the whole view),
    straight from the model (NumPy)."""
    blocks = DirectBlocks(convention, keep_ratio, backend or cpu())
    store = GeneStore([Mapping(layers, layers)], blocks, convention, blocks.backend)
    view = view or whole_view(layers[0])
    return store.group(layers, view.kept(keep_ratio), len(layers), view=view)


@dataclass(frozen=True)
class DCT(Pass):
    name = "dct"
    summary = "standardize source tensors, DCT them (width and depth), keep the low frequencies"
    reads = ('plan',)
    writes = ('genes',)
    convention: str = field(default="ortho", metadata={"choices": dct.CONVENTIONS,
                            "help": "DCT scaling: the published 'reference' or orthonormal 'ortho'"})
    keep_ratio: float = field(default=1.0, metadata={
        "help": "fraction of each width axis's frequencies kept in the learngene (0 < r <= 1)"})
    allow_nonfinite: bool = field(default=False, metadata={"quiet": True,
        "help": "treat NaN/Inf source values as missing (the tensor's finite mean) instead of refusing"})

    def __post_init__(self):
        if not 0.0 < self.keep_ratio <= 1.0:
            raise InputError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")

    def run(self, state: State) -> None:
        if state.plan is None:
            raise PipelineError("the dct pass needs the plan: run 'match' before it")
        backend = state.backend or cpu()
        if state.learngene is not None:
            blocks = state.learngene.blocks(self.convention, self.keep_ratio, backend)
            for mapping in list(state.plan.mappings):
                reason = next(filter(None, (blocks.missing(w, mapping.views[0])
                                            for w in mapping.sources)), None)
                if reason:
                    state.plan.mappings.remove(mapping)
                    state.plan.kept.extend(Kept(w, reason) for w in mapping.targets)
        else:
            for mapping in state.plan.mappings:
                weight, view = mapping.sources[0], mapping.views[0]
                if 0 in view.kept(self.keep_ratio):
                    n = min(v for v, k in zip(view.shape, view.kept(self.keep_ratio)) if k == 0)
                    raise InputError(f"keep_ratio={self.keep_ratio} keeps int({n} x {self.keep_ratio}) = 0 "
                                     f"frequencies of an axis of length {n} of source tensor "
                                     f"'{weight.name}' (shape {list(weight.shape)}): use a larger "
                                     f"keep ratio")
            blocks = DirectBlocks(self.convention, self.keep_ratio, backend, state.source_path,
                                  self.allow_nonfinite)
        state.genes = GeneStore(state.plan.mappings, blocks, self.convention, backend)
