"""frontc.backend: both exact forms of the DCT primitives, device selection, the CuPy path.

No GPU is available where these tests were written: the CuPy backend's plumbing is checked
with a stand-in `cupy` module backed by NumPy, and the real GPU comparison is skipped unless
CuPy finds a CUDA device.
"""
import sys
import types

import numpy as np
import pytest
import scipy.fft

from frontc import backend as B
from frontc import dct
from frontc.errors import InputError


@pytest.mark.parametrize("convention", dct.CONVENTIONS)
@pytest.mark.parametrize("shape,axis", [((7, 5), 0), ((7, 5), 1), ((3, 9, 4), 1), ((130, 6), 0),
                                        ((6, 130), 1), ((11,), 0)])
@pytest.mark.parametrize("form", ["matrix", "fft"])
def test_forward_and_inverse_match_the_reference(monkeypatch, convention, shape, axis, form):
    monkeypatch.setitem(B.MATRIX_MAX, "cpu", 10**6 if form == "matrix" else 0)
    be = B.Backend()
    x = np.random.default_rng(0).standard_normal(shape)
    n = shape[axis]
    for keep in (n, max(1, n // 2)):
        want = dct.fit(dct.forward(x, axis, convention), axis, keep)
        got = be.forward(x.copy(), axis, keep, convention, overwrite=True)
        assert np.allclose(got, want, atol=1e-10)
        for length in (n, n + 3, max(1, n - 2)):
            expected = dct.inverse(dct.fit(want, axis, length), axis, convention)
            assert np.allclose(be.inverse(want, axis, length, convention), expected, atol=1e-10)


@pytest.mark.parametrize("form", ["matrix", "fft"])
def test_inverse_into_a_buffer_or_in_place_gives_the_same_bytes(monkeypatch, form):
    """Before: inverse(c) allocates its result. After: with `out` (zero-padded or copied into)
    or `overwrite` (in place) it reuses memory -- and every byte is the same."""
    monkeypatch.setitem(B.MATRIX_MAX, "cpu", 10**6 if form == "matrix" else 0)
    be = B.Backend()
    c = np.random.default_rng(2).standard_normal((12, 40)).astype(np.float32)
    for axis in (0, 1):
        for length in (c.shape[axis], c.shape[axis] + 9, c.shape[axis] - 3):
            want = be.inverse(c, axis, length, "reference")
            out = np.full(want.size, np.nan, dtype=np.float32)
            got = be.inverse(c, axis, length, "reference", out=out)
            assert np.array_equal(got, want)
            if form == "fft" or axis == 0:
                assert np.shares_memory(got, out)      # the matrix form writes `out` along axis 0
            mine = c.copy()
            got = be.inverse(mine, axis, length, "reference", overwrite=True,
                             out=np.empty(want.size, dtype=np.float32))
            assert np.array_equal(got, want)
    assert np.array_equal(c, np.random.default_rng(2).standard_normal((12, 40)).astype(np.float32))


def test_small_pages_switches_numpys_hugepage_advice_off_and_back(monkeypatch):
    from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage

    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    before = _set_madvise_hugepage(True)
    try:
        with B.small_pages():
            assert _get_madvise_hugepage() is False
        assert _get_madvise_hugepage() is True
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")      # the user's explicit choice stays
        with B.small_pages():
            assert _get_madvise_hugepage() is True
    finally:
        _set_madvise_hugepage(before)


def test_float32_stays_float32():
    be = B.cpu()
    x = np.random.default_rng(1).standard_normal((40, 300)).astype(np.float32)
    for axis in (0, 1):
        assert be.forward(x, axis, 10, "reference").dtype == np.float32
        assert be.inverse(x, axis, 50, "ortho").dtype == np.float32


def test_select_devices(monkeypatch):
    assert B.select("cpu") is B.cpu()
    monkeypatch.setitem(sys.modules, "cupy", None)          # CuPy not installed
    assert B.select("auto") is B.cpu()
    with pytest.raises(InputError, match="gpu-cuda12"):
        B.select("cuda")
    with pytest.raises(InputError, match="unknown device"):
        B.select("tpu")


def test_cli_device_cuda_without_a_gpu_exits_2(exported, tmp_path):
    from helpers import frontc_cli

    if real_gpu():
        pytest.skip("a GPU is available here")
    source, target = exported("MLP", "legacy", 1), exported("MLP", "legacy", 2)
    result = frontc_cli("transfer", source, target, "-o", tmp_path / "o.onnx", "--device", "cuda")
    assert result.returncode == 2 and "--device cuda: no usable GPU" in result.stderr
    assert not (tmp_path / "o.onnx").exists()
    assert frontc_cli("transfer", source, target, "-o", tmp_path / "o.onnx", "--device", "auto",
                      "-q").returncode == 0


def fake_cupy(monkeypatch, available=True):
    """A `cupy` whose arrays are NumPy arrays: enough to run the CuPy backend's code paths."""
    cp = types.ModuleType("cupy")
    cp.__dict__["__getattr__"] = lambda name: getattr(np, name)
    cp.asnumpy = np.asarray
    cp.cuda = types.SimpleNamespace(is_available=lambda: available)
    fft = types.ModuleType("cupyx.scipy.fft")
    fft.dct = lambda x, type=2, n=None, axis=-1, norm=None, overwrite_x=False: scipy.fft.dct(
        x, type=type, n=n, axis=axis, norm=norm, overwrite_x=overwrite_x)
    fft.idct = lambda x, type=2, n=None, axis=-1, norm=None, overwrite_x=False: scipy.fft.idct(
        x, type=type, n=n, axis=axis, norm=norm, overwrite_x=overwrite_x)
    cupyx, sp = types.ModuleType("cupyx"), types.ModuleType("cupyx.scipy")
    cupyx.scipy, sp.fft = sp, fft
    for name, module in (("cupy", cp), ("cupyx", cupyx), ("cupyx.scipy", sp), ("cupyx.scipy.fft", fft)):
        monkeypatch.setitem(sys.modules, name, module)


def test_cuda_without_a_device_is_an_input_error(monkeypatch):
    fake_cupy(monkeypatch, available=False)
    with pytest.raises(InputError, match="no usable GPU"):
        B.select("cuda")
    assert B.select("auto") is B.cpu()


def test_cupy_backend_plumbing_transfers_like_the_cpu(monkeypatch, exported, tmp_path):
    import onnx_ir as ir

    import frontc

    fake_cupy(monkeypatch)
    assert isinstance(B.select("cuda"), B.CupyBackend)
    source, target = exported("ViT", "legacy", 1, depth=4), exported("ViT", "legacy", 2, width=48, depth=2)
    frontc.transfer(source, target, tmp_path / "gpu.onnx", device="cuda", validate=False)
    frontc.transfer(source, target, tmp_path / "cpu.onnx", device="cpu", validate=False)
    a = {k: v.const_value.numpy() for k, v in ir.load(tmp_path / "gpu.onnx").graph.initializers.items()}
    b = {k: v.const_value.numpy() for k, v in ir.load(tmp_path / "cpu.onnx").graph.initializers.items()}
    assert all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6 * np.abs(b[k]).max()) for k in b)


def real_gpu() -> bool:
    try:
        import cupy
        return bool(cupy.cuda.is_available())
    except Exception:
        return False


@pytest.mark.skipif(not real_gpu(), reason="no CuPy with a usable CUDA GPU on this machine")
def test_gpu_matches_cpu_in_float32(exported, tmp_path):
    import onnx_ir as ir

    import frontc

    source, target = exported("ViT", "legacy", 1, depth=4), exported("ViT", "legacy", 2, width=48, depth=2)
    frontc.transfer(source, target, tmp_path / "gpu.onnx", device="cuda", keep_ratio=0.75)
    frontc.transfer(source, target, tmp_path / "cpu.onnx", device="cpu", keep_ratio=0.75)
    a = {k: v.const_value.numpy() for k, v in ir.load(tmp_path / "gpu.onnx").graph.initializers.items()}
    b = {k: v.const_value.numpy() for k, v in ir.load(tmp_path / "cpu.onnx").graph.initializers.items()}
    for k in b:
        assert np.abs(a[k] - b[k]).max() <= 1e-5 * max(np.abs(b[k]).max(), 1e-12), k
