"""select pass: the weight selection baseline (indices, layers, head, shrink only, CLI)."""
import json

import numpy as np
import pytest

import frontc
from frontc.passes import select
from helpers import frontc_cli

torch = pytest.importorskip("torch")


def test_indices_follow_xu_et_al():
    assert select.indices(12, 4).tolist() == [0, 3, 6, 9]             # divisible: every N/M-th
    assert select.indices(64, 48).tolist() == np.round(np.linspace(0, 63, 48)).tolist()
    assert select.indices(7, 7).tolist() == list(range(7))
    assert select.indices(5, 3).tolist() == [0, 2, 4]
    with pytest.raises(ValueError):
        select.indices(3, 4)


def expected_selection(source, target_shape) -> np.ndarray:
    return select.select(source.detach().numpy().astype(np.float64), target_shape)


@pytest.mark.parametrize("width,depth", [(32, 2), (48, 4), (64, 2)])
def test_vit_target_holds_the_selected_source_weights(exported, tmp_path, width, depth):
    from frontc.torch import load_onnx_weights

    source = exported("ViT", "legacy", 1, depth=4)
    target = exported("ViT", "legacy", 2, width=width, depth=depth)
    out = tmp_path / "out.onnx"
    state = frontc.transfer(source, target, out, pipeline=select.PIPELINE)
    assert {k.weight.name: k.reason for k in state.plan.kept} == {
        "head.weight": "weight selection skips the head (it keeps its own init)",
        "head.bias": "weight selection skips the head (it keeps its own init)"}
    src = exported.torch("ViT", "legacy", 1, depth=4).state_dict()
    own = exported.torch("ViT", "legacy", 2, width=width, depth=depth)
    model = type(own)(width=width, depth=depth)
    load_onnx_weights(model, out)
    for name, value in model.state_dict().items():
        if name.startswith("head."):
            assert torch.equal(value, own.state_dict()[name]), name     # own init
        else:
            want = expected_selection(src[name], tuple(value.shape))  # blocks.i <- blocks.i
            np.testing.assert_allclose(value.numpy(), want, rtol=0, atol=1e-7, err_msg=name)
    used = {s.name for m in state.plan.mappings for s in m.sources}
    assert len(used) + len(state.plan.unused_sources) >= len(state.source.index.weights) - 2
    rows = [state.report[w.name] for m in state.plan.mappings for w in m.targets]
    assert rows and all(r["transform"].startswith("select") for r in rows)


def test_deeper_and_wider_targets_keep_their_own_init_where_selection_cannot_shrink(exported, tmp_path):
    source = exported("ViT", "legacy", 1, width=48, depth=2)
    deeper = exported("ViT", "legacy", 2, width=32, depth=3)
    state = frontc.transfer(source, deeper, tmp_path / "deep.onnx", pipeline=select.PIPELINE)
    past = [k for k in state.plan.kept if "past the source's 2 layers" in k.reason]
    assert len(past) == 12 and all(k.weight.name not in state.updates for k in past)   # block 3
    wider = exported("ViT", "legacy", 3, width=64, depth=2)
    state = frontc.transfer(source, wider, tmp_path / "wide.onnx", pipeline=select.PIPELINE)
    assert all("only shrinks" in k.reason or "head" in k.reason for k in state.plan.kept)
    assert state.plan.mappings == [] and state.updates == {}   # every tensor has a width axis


def test_batchnorm_cnn_with_statistics(exported, tmp_path):
    source = exported("CNN", "legacy-bn", 1, width=16, depth=3)
    target = exported("CNN", "legacy-bn", 2, width=8, depth=2)
    state = frontc.transfer(source, target, tmp_path / "cnn.onnx", pipeline=select.PIPELINE)
    kinds = {state.report[w.name]["kind"] for m in state.plan.mappings for w in m.targets}
    assert {"conv.weight", "bn.scale", "bn.mean", "bn.var"} <= kinds
    assert state.plan.coverage == pytest.approx(1 - 2 / (state.plan.mapped_tensors + 2))


def test_cli_method_select(exported, tmp_path):
    source = exported("ViT", "legacy", 1, depth=4)
    target = exported("ViT", "legacy", 2, width=48, depth=2)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = frontc_cli("transfer", "--method", "select", source, target, "-o", out,
                        "--report", report)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["pipeline"] == "canonicalize,match,select,emit"
    assert sum("kept" in r for r in data["tensors"]) == 2
    bad = frontc_cli("transfer", "--method", "select", "--convention", "ortho", source, target,
                     "-o", tmp_path / "bad.onnx")
    assert bad.returncode == 2 and "--method select" in bad.stderr
    assert not (tmp_path / "bad.onnx").exists()
    assert "select: weight selection" in frontc_cli("passes").stdout
