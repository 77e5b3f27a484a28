"""Real pretrained EfficientNet-Lite (ImageNet): width, depth and both, shrinking and growing."""
import numpy as np
import pytest

import frontc
from helpers import run_onnx

# (source, target): Lite2->Lite1 width only, Lite1->Lite0 depth only, Lite2->Lite0 both, and back up.
PAIRS = [(2, 1), (1, 0), (2, 0), (0, 2)]


@pytest.mark.parametrize("src,tgt", PAIRS, ids=[f"lite{a}-to-lite{b}" for a, b in PAIRS])
def test_efficientnet_transfer_runs(efficientnet, tmp_path, src, tgt):
    out = tmp_path / "out.onnx"
    state = frontc.transfer(efficientnet(src), efficientnet(tgt), out)
    assert state.plan.coverage == 1.0                     # every tensor of Lite has a counterpart
    assert any(m.depth[0] != m.depth[1] for m in state.plan.mappings) == (
        {src, tgt} != {1, 2})                           # Lite1 and Lite2 differ in width only
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    logits = run_onnx(out, x)
    assert logits.shape == (1, 1000) and np.all(np.isfinite(logits))


def test_lite_onto_itself_keeps_its_predictions(efficientnet, tmp_path):
    frontc.transfer(efficientnet(1), efficientnet(1), tmp_path / "same.onnx")
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    a, b = run_onnx(efficientnet(1), x), run_onnx(tmp_path / "same.onnx", x)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
