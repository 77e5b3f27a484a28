"""DCT-II resizing along one axis, in the two conventions frontc supports.

`reference` is the published scaling: forward X[k] = sum_n x[n] cos(pi k (2n+1) / 2N)
(`scipy.fft.dct(norm=None) / 2`) and inverse at length M
x[n] = X[0]/M + (2/M) sum_{k>=1} X[k] cos(pi k (2n+1) / 2M) (`2 * scipy.fft.idct(norm=None)`).
Resizing N -> M with it equals sqrt(N/M) times the orthonormal resize.
`ortho` uses the orthonormal DCT both ways (white-noise variance is preserved).
"""
from __future__ import annotations

import numpy as np
import scipy.fft

CONVENTIONS = ("reference", "ortho")


def forward(x: np.ndarray, axis: int, convention: str) -> np.ndarray:
    if convention == "ortho":
        return scipy.fft.dct(x, type=2, axis=axis, norm="ortho", workers=-1)
    return scipy.fft.dct(x, type=2, axis=axis, norm=None, workers=-1) / 2.0


def inverse(coeffs: np.ndarray, axis: int, convention: str) -> np.ndarray:
    if convention == "ortho":
        return scipy.fft.idct(coeffs, type=2, axis=axis, norm="ortho", workers=-1)
    return 2.0 * scipy.fft.idct(coeffs, type=2, axis=axis, norm=None, workers=-1)


def fit(coeffs: np.ndarray, axis: int, length: int) -> np.ndarray:
    """Truncate or zero-pad `coeffs` along `axis` to `length` (low frequencies anchored at 0)."""
    have = coeffs.shape[axis]
    if have >= length:
        return np.take(coeffs, np.arange(length), axis=axis)
    pad = [(0, 0)] * coeffs.ndim
    pad[axis] = (0, length - have)
    return np.pad(coeffs, pad)


def kept(n: int, keep_ratio: float) -> int:
    """Number of low frequencies the learngene keeps of an axis of length n (`int(n * r)`)."""
    return int(n * keep_ratio)


def ortho_scale(n: int, convention: str) -> np.ndarray:
    """Factors that turn this convention's coefficients of a length-n axis into orthonormal ones."""
    if convention == "ortho":
        return np.ones(n)
    scale = np.full(n, np.sqrt(2.0 / n))
    scale[0] = np.sqrt(1.0 / n)
    return scale
