"""frontc.dct: the two conventions against their defining formulas."""
import numpy as np
import pytest

from frontc import dct


def cosine_sum(x):
    n = len(x)
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi * k * (2 * i + 1) / (2 * n)) @ x


def resize(x, m, convention, keep=None):
    c = dct.fit(dct.forward(x, 0, convention), 0, keep or len(x))
    return dct.inverse(dct.fit(c, 0, m), 0, convention)


def test_reference_forward_is_the_plain_cosine_sum():
    x = np.random.default_rng(0).standard_normal(11)
    assert np.allclose(dct.forward(x, 0, "reference"), cosine_sum(x))


def test_reference_inverse_formula():
    # x[n] = X[0]/M + (2/M) sum_{k>=1} X[k] cos(pi k (2n+1) / 2M)
    X = np.random.default_rng(1).standard_normal(7)
    n = np.arange(7)[:, None]
    k = np.arange(1, 7)[None, :]
    expected = X[0] / 7 + (2 / 7) * (np.cos(np.pi * k * (2 * n + 1) / 14) @ X[1:])
    assert np.allclose(dct.inverse(X, 0, "reference"), expected)


@pytest.mark.parametrize("convention", dct.CONVENTIONS)
def test_same_length_is_identity(convention):
    x = np.random.default_rng(2).standard_normal((12, 5))
    assert np.allclose(resize(x, 12, convention), x)


@pytest.mark.parametrize("n,m", [(12, 4), (4, 12), (64, 48), (9, 10)])
def test_reference_is_sqrt_n_over_m_times_ortho(n, m):
    x = np.random.default_rng(3).standard_normal(n)
    assert np.allclose(resize(x, m, "reference"), np.sqrt(n / m) * resize(x, m, "ortho"))


def test_truncate_then_pad_is_a_low_pass():
    x = np.random.default_rng(4).standard_normal(16)
    low = resize(x, 16, "ortho", keep=5)
    spectrum = dct.forward(low, 0, "ortho")
    assert np.allclose(spectrum[5:], 0, atol=1e-12)
    assert np.allclose(spectrum[:5], dct.forward(x, 0, "ortho")[:5])


def test_ortho_scale_turns_reference_into_ortho_coefficients():
    x = np.random.default_rng(5).standard_normal(9)
    ref = dct.forward(x, 0, "reference") * dct.ortho_scale(9, "reference")
    assert np.allclose(ref, dct.forward(x, 0, "ortho"))
