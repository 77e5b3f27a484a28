"""Transferring a model onto a fresh copy of its own architecture reproduces the source."""
import numpy as np
import pytest

import frontc
from helpers import run_onnx

CASES = [("MLP", {}), ("CNN", {}), ("ViT", {"depth": 3})]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("kind,config", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("convention", ["reference", "ortho"])
def test_identity(exported, tmp_path, kind, config, exporter, convention):
    import torchmodels as tm

    source = exported(kind, exporter, 1, **config)
    target = exported(kind, exporter, 2, **config)
    x = tm.example_input(getattr(tm, kind)(**config)).numpy()
    before = run_onnx(target, x)
    state = frontc.transfer(source, target, tmp_path / "out.onnx", convention=convention)
    assert state.plan.coverage == 1.0
    expected, got = run_onnx(source, x), run_onnx(tmp_path / "out.onnx", x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    assert np.abs(before - expected).max() > 1e-2 * np.abs(expected).max()  # not a no-op


def test_identity_with_batchnorm_nodes(exported, tmp_path):
    """BatchNormalization kept as nodes (no folding): scale, bias and running stats move."""
    import onnx_ir as ir
    import torchmodels as tm

    source = exported("CNN", "legacy-bn", 1)
    target = exported("CNN", "legacy-bn", 2)
    ops = {n.op_type for n in ir.load(source).graph}
    assert "BatchNormalization" in ops
    state = frontc.transfer(source, target, tmp_path / "out.onnx")
    assert {w.slot for m in state.plan.mappings for w in m.targets} >= {"bn.mean", "bn.var", "bn.scale"}
    x = tm.example_input(tm.CNN()).numpy()
    expected, got = run_onnx(source, x), run_onnx(tmp_path / "out.onnx", x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_target_with_merged_equal_tensors_gets_one_tensor_per_weight(tmp_path):
    """An untrained legacy export shares one initializer among all equal tensors (every
    LayerNorm scale is ones): each weight must still receive its own transferred values."""
    import onnx_ir as ir
    import torchmodels as tm

    source = tm.export(tm.randomize(tm.ViT(depth=2), 1), tmp_path / "source.onnx")
    target = tm.export(tm.ViT(depth=2).eval(), tmp_path / "target.onnx")     # untrained: merged
    model = ir.load(target)
    assert len(model.graph.initializers) < len(ir.load(source).graph.initializers)
    state = frontc.transfer(source, target, tmp_path / "out.onnx")
    assert state.plan.coverage == 1.0
    x = tm.example_input(tm.ViT()).numpy()
    expected, got = run_onnx(source, x), run_onnx(tmp_path / "out.onnx", x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
