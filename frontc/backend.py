"""The array backend the DCT and resize passes compute with: NumPy/SciPy on the CPU, CuPy on a GPU.

One small interface, two implementations:
  `asarray`, `to_host`, `xp` (the array module), and the two DCT primitives the passes need,
  `forward(x, axis, keep, convention)` (the first `keep` DCT-II coefficients along `axis`) and
  `inverse(c, axis, length, convention)` (the inverse at `length` of `c`, zero-padded).
Each primitive uses one of two exact forms, chosen by a fixed rule on the axis length only
(`use_matrix`), so the same shapes always run the same floating-point operations (a learngene
file and a direct transfer give byte-identical weights):
  * FFT: `scipy.fft.dct` / `cupyx.scipy.fft.dct` (norm=None / "ortho"), then a slice;
  * matrix: a cached cosine matrix `DCT_N[:keep, :]` or `IDCT_M[:, :k]` and one GEMM, which wins
    on short axes -- conv kernels and the layer axis of a depth group, where an FFT along a
    strided axis of a few dozen points is slow (benchmarks/bench_dct.py measures the crossover).

`select("auto" | "cpu" | "cuda")` returns a backend; CuPy is imported only for "cuda" or "auto".
"""
from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from frontc.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
# Axes up to this length use the matrix form (measured on a 2-core AMD EPYC, float32, see
# benchmarks/bench_dct.py and docs/performance.md); longer axes use the FFT.
MATRIX_MAX = {"cpu": 128, "cuda": 128}


@lru_cache(maxsize=256)
def _matrix(kind: str, n: int, k: int, convention: str, dtype: str) -> np.ndarray:
    """forward: [k, n] with C = F @ x; inverse: [n, k] with x = I @ C (n = output length)."""
    freq = np.arange(k, dtype=np.float64)
    pos = np.arange(n, dtype=np.float64)
    cos = np.cos(np.pi * np.outer(freq, 2 * pos + 1) / (2 * n))     # [k, n]
    if convention == "ortho":
        scale = np.full(k, math.sqrt(2.0 / n))
        if k:
            scale[0] = math.sqrt(1.0 / n)
        m = cos * scale[:, None]
        out = m if kind == "forward" else m.T
    elif kind == "forward":
        out = cos
    else:
        weight = np.full(k, 2.0 / n)
        if k:
            weight[0] = 1.0 / n
        out = (cos * weight[:, None]).T
    out = np.ascontiguousarray(out, dtype=dtype)
    out.setflags(write=False)
    return out


@contextmanager
def small_pages():
    """NumPy's madvise(MADV_HUGEPAGE) on large arrays switched off while frontc computes.

    Where the kernel's transparent-hugepage defrag setting is `madvise` (Debian's and Ubuntu's
    default), a fault in such a region may compact or reclaim memory synchronously to find a
    free 2 MiB page, and with the page cache full of a large model's bytes it does: on this
    project's VM a first touch cost 2.8-3.1 s per GiB with the advice against 0.6-0.75 s
    without (benchmarks/first_touch.py, docs/performance.md; numpy/numpy#31590 describes the
    same stall). A user who sets
    NUMPY_MADVISE_HUGEPAGE keeps their choice."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:                      # an older or newer NumPy without the switch
        _set_madvise_hugepage = None
    if _set_madvise_hugepage is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        yield
        return
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)


class Scratch:
    """Reusable host buffers for the large transient arrays (tensors read, width blocks, layer
    stacks). A fresh large array costs a page fault per 4 KiB page on first touch, which on
    a busy or virtualized machine can cost more than the DCT itself; buffers handed back are
    reused for later requests of at most their size. At most `keep` buffers are kept."""

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 buffer of at least `nbytes` (its contents are undefined)."""
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.nbytes >= nbytes]
            if fits:
                return self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
        return np.empty(max(nbytes, 1), dtype=np.uint8)

    def give(self, buffer: np.ndarray | None) -> None:
        if buffer is None:
            return
        with self._lock:
            self._free.append(buffer)
            if len(self._free) > self.keep:
                self._free.pop(min(range(len(self._free)), key=lambda i: self._free[i].nbytes))

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    def array(self, shape: tuple[int, ...], dtype) -> tuple[np.ndarray, np.ndarray]:
        """(an array of `shape` and `dtype` in a taken buffer, the buffer to give back)."""
        dtype = np.dtype(dtype)
        raw = self.take(int(np.prod(shape)) * dtype.itemsize)
        return raw[:int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape), raw


class Backend:
    """NumPy + SciPy on the CPU (`scipy.fft` with `workers`)."""

    name = "cpu"

    def __init__(self, workers: int | None = None):
        import scipy.fft

        self.xp = np
        self.fft = scipy.fft
        self.workers = workers or os.cpu_count() or 1
        self.threads = self.workers
        self.scratch: Scratch | None = Scratch(keep=2 * self.threads + 4)

    # -- arrays -----------------------------------------------------------------------------
    def asarray(self, values, dtype) -> np.ndarray:
        return np.asarray(values, dtype=dtype)

    def to_host(self, x) -> np.ndarray:
        return x

    def matrix(self, kind: str, n: int, k: int, convention: str, dtype) -> np.ndarray:
        return _matrix(kind, n, k, convention, np.dtype(dtype).name)

    def use_matrix(self, n: int) -> bool:
        return n <= MATRIX_MAX[self.name]

    def line_independent(self, n: int) -> bool:
        """Whether `forward` along an axis of length n gives every line the same bytes however
        many other lines it transforms (pocketfft: yes; a GEMM's rounding can change with its
        shape, and cuFFT's plans with the batch size, so a learngene could then differ)."""
        return self.name == "cpu" and not self.use_matrix(n)

    # -- DCT primitives ----------------------------------------------------------------------
    def _along(self, m, x, axis: int, out=None):
        """Apply matrix m [out, in] along `axis` of x (axis 0: into `out` when given, an
        array of m.shape[0] * the other axes' size elements)."""
        xp = self.xp
        if x.ndim == 1:
            return m @ x
        if axis == 0:   # one GEMM over the other axes taken in memory order (no copy)
            order = [0] + sorted(range(1, x.ndim), key=lambda a: x.strides[a], reverse=True)
            arr = x.transpose(order)
            if not arr.flags.c_contiguous:
                arr = xp.ascontiguousarray(arr)
            flat = arr.reshape(arr.shape[0], -1)
            if out is not None:
                res = xp.matmul(m, flat, out=out.reshape(m.shape[0], flat.shape[1]))
            else:
                res = m @ flat
            return res.reshape((m.shape[0],) + arr.shape[1:]).transpose(np.argsort(order).tolist())
        if axis == x.ndim - 1:
            return x @ m.T
        return xp.moveaxis(xp.tensordot(m, x, axes=([1], [axis])), 0, axis)

    def _fft_kwargs(self, workers: int | None) -> dict:
        return {"workers": workers or self.workers}

    def forward(self, x, axis: int, keep: int, convention: str, workers: int | None = None,
                overwrite: bool = False, out=None):
        """The first `keep` DCT-II coefficients of x along `axis` (frontc.dct's scaling); with
        `overwrite`, x may be used as the output buffer (the FFT form runs in place); `out`:
        where the matrix form along axis 0 writes."""
        n = x.shape[axis]
        if self.use_matrix(n):
            return self._along(self.matrix("forward", n, keep, convention, x.dtype), x, axis,
                               out if axis == 0 else None)
        if keep < n:   # transform in place, then halve / keep only the kept part
            index = [slice(None)] * x.ndim
            index[axis] = slice(0, keep)
            cut = tuple(index)
        else:
            cut = ()
        norm = "ortho" if convention == "ortho" else None
        c = self.fft.dct(x, type=2, axis=axis, norm=norm, overwrite_x=overwrite,
                         **self._fft_kwargs(workers))
        if cut:
            c = c[cut]
        if convention != "ortho":
            c *= c.dtype.type(0.5)
        return c

    def inverse(self, c, axis: int, length: int, convention: str, workers: int | None = None,
                out=None, overwrite: bool = False):
        """The inverse DCT at `length` of the coefficients c along `axis` (missing ones are 0).
        `out`: a C-contiguous array of the result's size that the result may be written to
        (the matrix form along axis 0 writes there; the FFT form copies or zero-pads c into it
        and transforms in place); with `overwrite`, c itself may be the output (FFT form, no
        padding). Either way the same operations run, so the result has the same bytes."""
        k = c.shape[axis]
        if k > length:             # the inverse at length M uses the first M coefficients
            index = [slice(None)] * c.ndim
            index[axis] = slice(0, length)
            c, k = c[tuple(index)], length
        if self.use_matrix(length):
            return self._along(self.matrix("inverse", length, k, convention, c.dtype), c, axis,
                               out if axis == 0 else None)
        norm = "ortho" if convention == "ortho" else None
        if out is not None and (k < length or not overwrite):
            shape = c.shape[:axis] + (length,) + c.shape[axis + 1:]
            padded = out.reshape(shape)
            index = [slice(None)] * c.ndim
            index[axis] = slice(0, k)
            padded[tuple(index)] = c
            index[axis] = slice(k, None)
            padded[tuple(index)] = 0
            c, overwrite = padded, True
        x = self.fft.idct(c, type=2, n=None if c.shape[axis] == length else length, axis=axis,
                          norm=norm, overwrite_x=overwrite, **self._fft_kwargs(workers))
        if convention != "ortho":
            x *= x.dtype.type(2.0)
        return x


class CupyBackend(Backend):
    """CuPy on a CUDA GPU (`cupyx.scipy.fft`, same signatures for DCT types 2 and 3)."""

    name = "cuda"

    def __init__(self, cupy, fft):
        self.xp = cupy
        self.fft = fft
        self.workers = 1
        self.threads = 1          # one stream: tensors run one after another on the device
        self.scratch = None       # CuPy keeps its own memory pool

    def asarray(self, values, dtype):
        return self.xp.asarray(np.ascontiguousarray(values) if isinstance(values, np.ndarray) and
                               not (values.flags.c_contiguous or values.flags.f_contiguous)
                               else values, dtype=dtype)

    def to_host(self, x) -> np.ndarray:
        return self.xp.asnumpy(x)

    def matrix(self, kind: str, n: int, k: int, convention: str, dtype):
        key = (kind, n, k, convention, np.dtype(dtype).name)
        cache = self.__dict__.setdefault("_matrices", {})
        if key not in cache:
            cache[key] = self.xp.asarray(_matrix(*key))
        return cache[key]

    def _fft_kwargs(self, workers: int | None) -> dict:
        return {}


def _cupy():
    """(cupy, cupyx.scipy.fft) or raise ImportError / RuntimeError with the reason."""
    import cupy                      # noqa: F401  (lazy: only for --device cuda/auto)
    import cupyx.scipy.fft as fft

    if not cupy.cuda.is_available():
        raise RuntimeError("CuPy finds no usable CUDA device")
    return cupy, fft


_CPU: Backend | None = None


def cpu() -> Backend:
    global _CPU
    if _CPU is None:
        _CPU = Backend()
    return _CPU


def select(device: str = "auto") -> Backend:
    """The backend for `--device`: cpu, cuda (an error without a usable GPU), or auto."""
    if device not in DEVICES:
        raise InputError(f"unknown device '{device}' (one of {', '.join(DEVICES)})")
    if device == "cpu":
        return cpu()
    try:
        return CupyBackend(*_cupy())
    except Exception as err:  # ImportError, CUDA driver errors, no device
        if device == "auto":
            return cpu()
        hint = ("install CuPy for your CUDA version: pip install 'frontc[gpu-cuda12]' or "
                "'frontc[gpu-cuda13]'" if isinstance(err, ImportError) else
                "check the driver with nvidia-smi")
        raise InputError(f"--device cuda: no usable GPU ({type(err).__name__}: {err}); {hint}; "
                         f"or use --device cpu") from None
