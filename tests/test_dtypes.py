"""float16 and bfloat16 models transfer: frontc computes in float32/float64, the target keeps its
own dtypes, and the outputs run in onnxruntime (natively where it has the kernels; bfloat16
graphs, which the CPU build cannot run, through their float32 twin)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import frontc
import onnxedit as oe
from frontc import validate

torch = pytest.importorskip("torch")
tm = pytest.importorskip("torchmodels")

DTYPES = {"float16": (torch.float16, TensorProto.FLOAT16, np.float16),
          "bfloat16": (torch.bfloat16, TensorProto.BFLOAT16, ml_dtypes.bfloat16)}


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    """half(kind, dtype, seed, **config) -> a model exported entirely in float16/bfloat16."""
    folder = tmp_path_factory.mktemp("half")
    cache = {}

    def make(kind, dtype, seed, **config):
        key = (kind, dtype, seed, tuple(sorted(config.items())))
        if key not in cache:
            model = tm.randomize(getattr(tm, kind)(**config), seed).to(DTYPES[dtype][0])
            x = tm.example_input(model).to(DTYPES[dtype][0])
            path = folder / f"{kind}_{dtype}_{seed}_{len(cache)}.onnx"
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], opset_version=18, dynamic_axes={"x": {0: "batch"}})
            cache[key] = path
        return cache[key]

    return make


def initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def dtypes(path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(path).graph.initializer}


def run(path_or_model, x):
    sess = validate.session(path_or_model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def image(dtype):
    return np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(dtype)


def check_intermediates(state):
    for key in state.genes:                              # every learngene coefficient block
        assert state.genes[key].coeffs.dtype in (np.float32, np.float64), key


def test_float16_vit_transfers_and_runs_natively(half, tmp_path):
    source = half("ViT", "float16", 1, depth=4)
    target = half("ViT", "float16", 2, width=48, depth=2)
    out = tmp_path / "out.onnx"
    state = frontc.transfer(source, target, out)
    check_intermediates(state)
    assert state.plan.coverage == 1.0
    assert dtypes(out) == dtypes(target)                  # the target keeps its own dtypes
    y = run(out, image(np.float16))                       # onnxruntime has float16 CPU kernels
    assert y.dtype == np.float16 and np.all(np.isfinite(y))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_equal_shapes_give_the_source_back(half, dtype, tmp_path):
    source = half("ViT", dtype, 1, depth=2)
    target = half("ViT", dtype, 3, depth=2)
    out = tmp_path / "out.onnx"
    frontc.transfer(source, target, out)
    src, got = initializers(source), initializers(out)
    for name, value in got.items():
        if value.dtype == DTYPES[dtype][2] and value.size > 1:
            a, b = value.astype(np.float32), src[name].astype(np.float32)
            assert np.allclose(a, b, rtol=1e-2, atol=1e-3), name


def test_bfloat16_vit_transfers_and_its_float32_twin_runs(half, tmp_path):
    source = half("ViT", "bfloat16", 1, depth=4)
    target = half("ViT", "bfloat16", 2, width=48, depth=2)
    out = tmp_path / "out.onnx"
    state = frontc.transfer(source, target, out)          # validation runs the float32 twin
    check_intermediates(state)
    assert dtypes(out) == dtypes(target)
    assert TensorProto.BFLOAT16 in set(dtypes(out).values())
    twin = validate.float32_twin(out)
    assert twin is not None
    assert all(t.data_type != TensorProto.BFLOAT16 for t in twin.graph.initializer)
    y = run(twin.SerializeToString(), image(np.float32))
    assert y.shape == (2, 10) and np.all(np.isfinite(y))


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_half_storage_with_casts_runs_natively(exported, dtype, tmp_path):
    """Weights stored in 16 bits and cast to float32 at run time: onnxruntime runs it as is."""
    source = oe.save(oe.half_storage(onnx.load(exported("ViT", "legacy", 1, depth=4)), dtype),
                     tmp_path / "s.onnx")
    target = oe.save(oe.half_storage(onnx.load(exported("ViT", "legacy", 2, width=48, depth=2)), dtype),
                     tmp_path / "t.onnx")
    out = tmp_path / "out.onnx"
    state = frontc.transfer(source, target, out)
    assert state.plan.coverage == 1.0
    assert dtypes(out) == dtypes(target)
    y = run(out, image(np.float32))
    # The same transfer from the float32 models, up to 16-bit rounding of the weights.
    ref = tmp_path / "ref.onnx"
    frontc.transfer(exported("ViT", "legacy", 1, depth=4), exported("ViT", "legacy", 2, width=48, depth=2), ref)
    tol = 0.05 if dtype == TensorProto.FLOAT16 else 0.3
    assert np.abs(y - run(ref, image(np.float32))).max() < tol


def test_mixed_dtypes_keep_the_targets(exported, half, tmp_path):
    f32 = exported("ViT", "legacy", 1, depth=4)
    bf16_target = half("ViT", "bfloat16", 2, width=48, depth=2)
    out = tmp_path / "a.onnx"
    frontc.transfer(f32, bf16_target, out)
    assert dtypes(out) == dtypes(bf16_target)
    f16_source = half("ViT", "float16", 1, depth=4)
    f32_target = exported("ViT", "legacy", 2, width=48, depth=2)
    out = tmp_path / "b.onnx"
    frontc.transfer(f16_source, f32_target, out)
    assert dtypes(out) == dtypes(f32_target)
    assert np.all(np.isfinite(run(out, image(np.float32))))
