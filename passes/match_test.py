"""match: overrides pin target tensors to named source tensors or to their own init."""
import json

import numpy as np
import onnx
from onnx import numpy_helper

import frontc
from helpers import frontc_cli


def weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_overrides_pin_and_keep(exported, tmp_path):
    source, target = exported("ViT", "legacy", 1, depth=4), exported("ViT", "legacy", 2, depth=2)
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({"tensors": {"blocks.0.norm1.weight": "blocks.3.norm1.weight"},
                                "keep": ["norm.bias"]}))
    out = tmp_path / "out.onnx"
    state = frontc.transfer(source, target, out, overrides=str(pins))
    got, src, own = weights(out), weights(source), weights(target)
    assert np.allclose(got["blocks.0.norm1.weight"], src["blocks.3.norm1.weight"], atol=1e-6)
    assert np.array_equal(got["norm.bias"], own["norm.bias"])
    assert not np.allclose(got["blocks.1.norm1.weight"], own["blocks.1.norm1.weight"])  # group still ran
    kept = {k.weight.name: k.reason for k in state.plan.kept}
    assert kept == {"norm.bias": "kept at its own init by pins.json"}
    assert state.plan.mapped_tensors == 31 and abs(state.plan.coverage - 31 / 32) < 1e-12
    assert "match{overrides=" in {p.key: p.value for p in onnx.load(out).metadata_props}["frontc.pipeline"]


def test_bad_overrides_exit_2(exported, tmp_path):
    source, target = exported("ViT", "legacy", 1, depth=4), exported("ViT", "legacy", 2, depth=2)
    cases = {"typo": ({"tensors": {"blocks.0.norm1.weigth": "norm.weight"}}, "did you mean blocks.0.norm1.weight"),
             "kind": ({"tensors": {"cls_token": "pos_embed"}}, "kind differs"),
             "format": ({"pins": {}}, "expected")}
    for label, (content, message) in cases.items():
        pins = tmp_path / f"{label}.json"
        pins.write_text(json.dumps(content))
        result = frontc_cli("plan", source, target, "--overrides", pins)
        assert result.returncode == 2 and message in result.stderr, (label, result.stderr)
