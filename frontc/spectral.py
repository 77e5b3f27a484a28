"""FRONT+: a differentiable penalty on the high-frequency DCT energy of a model's weights.

Needs the `torch` extra (the frontc core never imports torch).

    reg = SpectralRegularizer(model, keep_ratio=0.75, example_inputs=(x,))
    loss = task_loss + lam * reg()

Definition. For every depth group (the same role across the L repeated blocks of a stage) and
every singleton tensor (L = 1), exactly as frontc's `dct` pass sees it:
  X[l]  = (W_l - mean(W_l)) / (std(W_l, unbiased) + 1e-8)   per layer, canonical [out, in] layout,
          viewed as frontc's dct pass views it (frontc.plan.View: the published at-most-2-D
          view_shape; conv weights [out, in, kernel] with conv_view="separable", frontc's
          default) and stacked to [L, *view];
  C     = the orthonormal DCT-II of X along every axis (layers, then the view's axes);
  P     = sum_k w(k) C[k]^2, summed over all groups (with normalize=True, divided by sum X^2).
Kept block: m = int(n * keep_ratio) on each view axis (frontc's --keep-ratio), the whole axis
where it is fixed (class count, vocabulary: never resized), and m_L = max(1, int(L *
depth_keep_ratio)) layer frequencies (default depth_keep_ratio = keep_ratio; set it to
L_target / L_source when the target's depth is known; singletons have no layer axis).
Weight: w(k) = 0 when k_a < m_a on every axis a, else exp(sum_a gamma_a * max(0, k_a - m_a) / n_a)
with decay = (gamma_layer, gamma_out, gamma_in) (view axis 0 is "out", the others "in": a
separable conv's kernel axis too): 1 on the block's edge, growing with the distance past it;
gamma = 0 gives the hard mask (w = 1 outside).

How it is computed (cheaply, without a weight tensor). With e_a(k) = exp(gamma_a max(0, k-m_a)/n_a)
and the block indicator I_a, w = prod_a e_a - prod_a I_a, which telescopes over the axes:
  P = sum_j || (x)_{a<j} D_a[:m_a]  (x)  sqrt(e_j) D_j[m_j:]  (x)_{a>j} sqrt(e_a) D_a  X ||^2,
a sum of energies of partial DCTs (D orthonormal). An axis with gamma = 0 after j drops out
(Parseval), so the hard mask only transforms each axis once on an ever smaller prefix; the axis
order with the fewest multiply-adds is chosen per group. Axes up to `max_matrix` long use cached
DCT matrices (matmuls; exports with any ONNX exporter); longer ones (a flat conv view's out*in axis) use
one FFT (Makhoul's algorithm; torch.onnx.export needs dynamo=True for those).
Standardization is one fused layer_norm; the per-layer 1/std factor is never applied to the
whole tensor: it commutes with the view axes' DCTs, so it is folded into the layer axis's
matrix (or weights per-layer energies), and the total energy sum X^2 has a closed form.
(Measured alternatives, slower here: see docs/frontplus.md, "What it costs".)
"""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import torch
from torch import nn

from frontc.passes.match import CONV_VIEWS
from frontc.spectral_groups import discover, from_lists

EPS = 1e-8      # frontc's standardization epsilon
TINY = 1e-30    # under the square root only: keeps the gradient of a constant tensor finite


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix D [n, n]: C = D @ x (scipy.fft.dct(norm='ortho'))."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def decay_weights(n: int, m: int, gamma: float) -> np.ndarray:
    """e(k) = exp(gamma * max(0, k - m) / n), the factor an axis contributes to w(k)."""
    return np.exp(gamma * np.maximum(0, np.arange(n) - m) / n)


def _along(y: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """matrix [r, n] applied along `axis` of y as one large 2-D matmul, or, when the axis has
    few leading slices that are each wide, as a batched matmul over them (no transposed copy;
    a batched matmul over many small slices is several times slower on CPU)."""
    if axis == y.ndim - 1:
        return (y.reshape(-1, y.shape[-1]) @ matrix.T).reshape(y.shape[:-1] + (-1,))
    before, after = math.prod(y.shape[:axis]), math.prod(y.shape[axis + 1:])
    if after >= 64 and before <= 64:
        out = matrix @ y.reshape(before, y.shape[axis], after)
        return out.reshape(y.shape[:axis] + (-1,) + y.shape[axis + 1:])
    moved = y.movedim(axis, 0)
    out = (matrix @ moved.reshape(moved.shape[0], -1)).reshape((-1,) + moved.shape[1:])
    return out.movedim(0, axis)


def _dct_fft(y: torch.Tensor, axis: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along `axis` with one length-n FFT (Makhoul 1980)."""
    last = y.ndim - 1
    y = y.movedim(axis, last)
    v = torch.cat([y[..., ::2], y[..., 1::2].flip(-1)], dim=-1)
    spectrum = torch.fft.fft(v, dim=-1)
    return (spectrum.real * cos + spectrum.imag * sin).movedim(last, axis)


class SpectralRegularizer(nn.Module):
    """forward(*weights) -> the scalar FRONT+ penalty (see the module docstring).

    Depth groups come from an export of `model` on `example_inputs` (frontc.spectral_groups),
    or from `groups=[[param, ...], ...]` (each list one depth group, a 1-list a singleton).
    `conv_view` views conv weights as frontc's match pass does: "separable" [out, in, kernel]
    (frontc's default) or the published "flat" [out*in, kernel]; penalize in the view you will
    transfer with.
    forward() reads the model's current parameters; forward(*weights), one tensor per entry of
    `self.weights`, evaluates other values (used by gradcheck and by ONNX exports whose graph
    takes the weights as inputs).
    """

    def __init__(self, model: nn.Module, keep_ratio: float, *, example_inputs=None,
                 depth_keep_ratio: float | None = None, decay=(0.0, 0.0, 0.0),
                 groups: list[list[nn.Parameter]] | None = None, normalize: bool = False,
                 max_matrix: int = 1024, conv_view: str = "separable"):
        super().__init__()
        depth_keep_ratio = keep_ratio if depth_keep_ratio is None else depth_keep_ratio
        for what, r in (("keep_ratio", keep_ratio), ("depth_keep_ratio", depth_keep_ratio)):
            if not 0.0 < r <= 1.0:
                raise ValueError(f"{what} must be in (0, 1], got {r}")
        if conv_view not in CONV_VIEWS:
            raise ValueError(f"conv_view must be one of {CONV_VIEWS}, got {conv_view!r}")
        if len(decay) != 3 or min(decay) < 0:
            raise ValueError(f"decay must be (gamma_layer, gamma_out, gamma_in) >= 0, got {decay}")
        if groups is not None:
            self.groups, self.skipped = from_lists(model, groups, conv_view), []
        elif example_inputs is None:
            raise ValueError("pass example_inputs (to find depth groups through an export) "
                             "or groups=[[param, ...], ...]")
        else:
            self.groups, self.skipped = discover(model, example_inputs, conv_view)
        self.keep_ratio, self.depth_keep_ratio = keep_ratio, depth_keep_ratio
        self.decay, self.normalize, self.max_matrix = tuple(decay), normalize, max_matrix
        params = [p for g in self.groups for p in g.params]
        self.weights = nn.ParameterList(params)
        # buffers (and the arithmetic) in float64 for a float64 model, else float32
        self._dtype = torch.float64 if params and params[0].dtype == torch.float64 else torch.float32
        # Per group: the layer axis (if L > 1), then the view axes, as (axis, n, m, gamma), with
        # axis counted in a bucket's [groups, layers, *view] stack. Groups with equal layers,
        # views and axes share one bucket: one stack and one matmul per axis for all of them.
        self._buckets: dict[tuple, list[int]] = {}
        for i, g in enumerate(self.groups):
            axes = []
            if g.layers > 1:   # the layer axis is always a matrix (the scale is folded into it)
                self._buffer(f"dct_{g.layers}", dct_matrix(g.layers))
                axes.append((1, g.layers, max(1, int(g.layers * depth_keep_ratio)), decay[0]))
            for a, (n, fixed) in enumerate(zip(g.view, g.fixed)):
                m = n if fixed else int(n * keep_ratio)
                axes.append((a + 2, n, m, decay[1 + min(a, 1)]))
            axes = tuple(ax for ax in axes if ax[2] < ax[1])   # fully kept axes add nothing
            for _, n, m, gamma in axes:
                self._buffers_for(n, m, gamma)
            self._buckets.setdefault((g.layers, g.view, axes), []).append(i)
        self._orders = {key: min(itertools.permutations(key[2]), key=self._cost) if key[2] else ()
                        for key in self._buckets}
        starts = np.cumsum([0] + [g.layers for g in self.groups])
        self._slots = {key: [int(j) for i in members for j in range(starts[i], starts[i + 1])]
                       for key, members in self._buckets.items()}

    @property
    def compute_dtype(self) -> torch.dtype:
        """The buffers' dtype (they follow .to() / .double()); weights are cast to it."""
        return next(iter(self._buffers.values())).dtype if self._buffers else self._dtype

    # ------------------------------------------------------------------ buffers and cost
    def _buffer(self, name: str, values: np.ndarray) -> None:
        if not hasattr(self, name):
            self.register_buffer(name, torch.tensor(values, dtype=self._dtype), persistent=False)

    def _buffers_for(self, n: int, m: int, gamma: float) -> None:
        if n <= self.max_matrix:
            self._buffer(f"dct_{n}", dct_matrix(n))
        else:
            scale = np.full(n, np.sqrt(2.0 / n))
            scale[0] = np.sqrt(1.0 / n)
            theta = np.pi * np.arange(n) / (2 * n)
            self._buffer(f"cos_{n}", scale * np.cos(theta))
            self._buffer(f"sin_{n}", scale * np.sin(theta))
        if gamma > 0:
            self._buffer(self._decay_name(n, m, gamma), np.sqrt(decay_weights(n, m, gamma)))

    def _decay_name(self, n: int, m: int, gamma: float) -> str:
        return f"decay_{n}_{m}_{self.decay.index(gamma)}"

    def _axis_cost(self, n: int, rows: int) -> float:
        return rows if n <= self.max_matrix else 4 * math.log2(2 * n) + 8

    def _cost(self, order) -> float:
        """Multiply-adds per element of X for the telescoped sum in this axis order."""
        cost, size = 0.0, 1.0
        for j, (_, n, m, _) in enumerate(order):
            last = j == len(order) - 1
            cost += size * self._axis_cost(n, n - m if last else n)
            cost += size * (n - m) / n * sum(self._axis_cost(b[1], b[1]) for b in order[j + 1:] if b[3] > 0)
            size *= m / n
        return cost

    # ------------------------------------------------------------------ transforms
    def _transform(self, y: torch.Tensor, axis: int, n: int, rows: slice) -> torch.Tensor:
        if n <= self.max_matrix:
            return _along(y, getattr(self, f"dct_{n}")[rows], axis)
        c = _dct_fft(y, axis, getattr(self, f"cos_{n}"), getattr(self, f"sin_{n}"))
        return c.narrow(axis, rows.start or 0, (rows.stop or n) - (rows.start or 0))

    def _scale(self, y: torch.Tensor, axis: int, n: int, m: int, gamma: float, rows: slice):
        shape = [1] * y.ndim
        shape[axis] = -1
        return y * getattr(self, self._decay_name(n, m, gamma))[rows].reshape(shape)

    def _bucket(self, key, ws: list[torch.Tensor], hard: bool, energy: bool):
        """(penalty, standardized energy or None), each a [G] vector over the bucket's groups."""
        members, (layers, view, _) = self._buckets[key], key
        groups = len(members)
        perms = [perm for i in members for perm in self.groups[i].perms]
        x = torch.stack([ws[j].permute(perm).reshape(-1)
                         for j, perm in zip(self._slots[key], perms)]).to(self.compute_dtype)
        # Standardization in one fused kernel: layer_norm gives z = (x - mean) * rstd with
        # rstd = 1 / sqrt(var_biased + eps) (two-pass-exact statistics, also for mean >> std).
        # With eps = TINY (n-1)/n, the frontc standardization is y = z * scale per layer:
        #   (x - mean) / (sqrt(var_unbiased + TINY) + EPS) = z / (sqrt(n / (n-1)) + EPS rstd).
        # `scale` is used detached: the derivative of the 1e-8 guard (relative size EPS / std)
        # is dropped, every other derivative is exact. And y is never formed: scaling a layer
        # commutes with the view axes' transforms, so `scale` is folded into the layer axis's
        # matrix, or weights the per-layer energies of parts computed before that axis.
        n = math.prod(view)
        z, _, rstd = torch.native_layer_norm(x, (n,), None, None, TINY * (n - 1) / n)
        rstd = rstd.detach().reshape(groups, layers)
        scale = 1.0 / (math.sqrt(n / (n - 1)) + EPS * rstd)
        y = z.reshape((groups, layers) + view)
        # sum y^2 per layer, in closed form: n * var_b * rstd^2 * scale^2 (no pass over y)
        total = (n * (1 - TINY * (n - 1) / n * rstd * rstd) * scale * scale).sum(1) if energy else None
        order = self._orders[key]
        layer_at = next((j for j, ax in enumerate(order) if ax[0] == 1), len(order))

        def transform(t, axis, n_axis, rows):
            if axis != 1:
                return self._transform(t, axis, n_axis, rows)
            # the layer axis: DCT rows times the per-layer scale, one [G, r, L] @ [G, L, rest]
            matrix = getattr(self, f"dct_{n_axis}")[rows] * scale[:, None, :]
            return (matrix @ t.reshape(groups, layers, -1)).reshape(t.shape[:1] + (-1,) + t.shape[2:])

        def energy_of(t, scaled):   # (not linalg.vector_norm: its float32 sum is 1e-5 off)
            if scaled:
                return t.reshape(groups, -1).square().sum(1)
            return (t.reshape(groups, layers, -1).square().sum(2) * scale * scale).sum(1)

        penalty = y.new_zeros(groups)
        for j, (axis, n_axis, m, gamma) in enumerate(order):
            later = order[j + 1:]
            # outside rows of this axis, and (unless it is the last one) the kept prefix, as two
            # products: no full transform to slice, so no zero-filled gradients for the slices
            if not later:
                out = transform(y, axis, n_axis, slice(m, None))
            elif axis == 1:
                y, out = transform(y, axis, n_axis, slice(None)).split([m, n_axis - m], dim=1)
            else:
                out = transform(y, axis, n_axis, slice(m, None))
                y = transform(y, axis, n_axis, slice(0, m))
            scaled = j >= layer_at
            if not hard:
                if gamma > 0:
                    out = self._scale(out, axis, n_axis, m, gamma, slice(m, None))
                for b_axis, b_n, b_m, b_gamma in later:
                    if b_gamma > 0:
                        out = transform(out, b_axis, b_n, slice(None))
                        out = self._scale(out, b_axis, b_n, b_m, b_gamma, slice(None))
                        scaled = scaled or b_axis == 1
            penalty = penalty + energy_of(out, scaled)
        return penalty, total

    def _sums(self, weights, hard: bool, energy: bool):
        ws = list(weights) if weights else list(self.weights)
        if len(ws) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} weight tensors, got {len(ws)}")
        parts = [self._bucket(key, ws, hard, energy) for key in self._buckets]
        penalty = sum(p.sum() for p, _ in parts)
        return penalty, sum(e.sum() for _, e in parts) if energy else None

    def forward(self, *weights: torch.Tensor) -> torch.Tensor:
        penalty, energy = self._sums(weights, hard=False, energy=self.normalize)
        return penalty / energy if self.normalize else penalty

    @torch.no_grad()
    def high_frequency_fraction(self) -> float:
        """Fraction of the standardized energy outside the kept blocks (hard mask), all groups."""
        penalty, energy = self._sums((), hard=True, energy=True)
        return float(penalty / energy)

    @torch.no_grad()
    def report(self) -> list[dict]:
        """Per group: names, layers, view, fixed axes, standardized energy, and the energy outside
        the kept block (hard mask) with its fraction."""
        values = {}
        for key, members in self._buckets.items():
            penalty, energy = self._bucket(key, list(self.weights), True, True)
            values.update((i, (float(p), float(e))) for i, p, e in zip(members, penalty, energy))
        rows = []
        for i, g in enumerate(self.groups):
            p, e = values[i]
            rows.append({"names": g.names, "layers": g.layers, "view": g.view, "fixed": g.fixed,
                         "energy": e, "outside_energy": p, "outside": p / e if e > 0 else 0.0})
        return rows

    def uses_fft(self) -> bool:
        return any(n > self.max_matrix for key in self._buckets for _, n, _, _ in key[2])

    def export_onnx(self, path, weights_as_inputs: bool = True, **kwargs) -> None:
        """Write the penalty as an ONNX graph: inputs are the weights (named after the
        parameters) or, with weights_as_inputs=False, initializers holding their values."""
        args = tuple(w.detach() for w in self.weights) if weights_as_inputs else ()
        names = [n for g in self.groups for n in g.names]
        kwargs.setdefault("dynamo", self.uses_fft())
        kwargs.setdefault("opset_version", 18)
        with warnings.catch_warnings():   # the tracer's notes that shapes are constants: they are
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(self, args, str(path), input_names=names if args else None,
                              output_names=["penalty"], **kwargs)
