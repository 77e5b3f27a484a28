"""Source and target exported differently: legacy vs dynamo torch exporters (Gemm vs MatMul+Add,
Constant nodes vs initializers, shape arithmetic vs materialized shapes), BatchNorm kept vs
folded. Same architecture, different exporters: the transfer must still be the identity."""
import numpy as np
import pytest

import frontc
from helpers import run_onnx

EXPORTS = [("legacy", "dynamo"), ("dynamo", "legacy")]
KINDS = [("MLP", {}), ("CNN", {}), ("ViT", {"depth": 3})]


@pytest.mark.parametrize("source_exporter,target_exporter", EXPORTS)
@pytest.mark.parametrize("kind,config", KINDS, ids=[k for k, _ in KINDS])
def test_across_torch_exporters(exported, tmp_path, kind, config, source_exporter, target_exporter):
    import torchmodels as tm

    source = exported(kind, source_exporter, 1, **config)
    target = exported(kind, target_exporter, 2, **config)
    state = frontc.transfer(source, target, tmp_path / "out.onnx")
    assert state.plan.coverage == 1.0
    x = tm.example_input(getattr(tm, kind)(**config)).numpy()
    want, got = run_onnx(source, x), run_onnx(tmp_path / "out.onnx", x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_cross_exporter_plan_equals_same_exporter_plan(exported):
    """Width and depth change too: the mapping (by layer and kind) is the same either way."""
    def signature(state):
        return [(m.depth, [w.slot for w in m.targets][0], m.targets[0].shape) for m in state.plan.mappings]

    cfg_s, cfg_t = dict(width=64, depth=4), dict(width=48, depth=2)
    same = frontc.plan(exported("ViT", "dynamo", 1, **cfg_s), exported("ViT", "dynamo", 2, **cfg_t))
    mixed = frontc.plan(exported("ViT", "legacy", 1, **cfg_s), exported("ViT", "dynamo", 2, **cfg_t))
    assert signature(same) == signature(mixed)
    assert same.plan.coverage == mixed.plan.coverage == 1.0


@pytest.mark.parametrize("source_exporter,target_exporter",
                         [("legacy-bn", "dynamo"), ("dynamo", "legacy-bn"), ("legacy", "legacy-bn")])
def test_batchnorm_folded_on_one_side_only(exported, tmp_path, source_exporter, target_exporter):
    """BatchNormalization nodes on one side, folded into Conv on the other: folded (or passed
    through the target's BatchNorm) exactly."""
    import onnx_ir as ir
    import torchmodels as tm

    source, target = exported("CNN", source_exporter, 1), exported("CNN", target_exporter, 2)
    has_bn = lambda p: any(n.op_type == "BatchNormalization" for n in ir.load(p).graph)  # noqa: E731
    assert has_bn(source) != has_bn(target)
    state = frontc.transfer(source, target, tmp_path / "out.onnx")
    assert state.plan.coverage == 1.0
    x = tm.example_input(tm.CNN()).numpy()
    want, got = run_onnx(source, x), run_onnx(tmp_path / "out.onnx", x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
