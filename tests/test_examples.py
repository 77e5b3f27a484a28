"""The README's quick start on the example models moves real knowledge (MNIST, no training)."""
import numpy as np
import pytest

from helpers import ROOT, frontc_cli, run_onnx

MODELS = ROOT / "models"


def accuracy(path) -> float:
    data = np.load(MODELS / "mnist_test.npz")
    images = data["images"].astype(np.float32)
    images = (images / 255.0 if images.max() > 1.5 else images)[:, None]
    return float(np.mean(run_onnx(path, images).argmax(1) == data["labels"]))


@pytest.mark.parametrize("target,floor", [("narrow", 0.75), ("shallow", 0.5), ("deep", 0.85)])
def test_quick_start_transfers_knowledge(tmp_path, target, floor):
    out = tmp_path / f"vit_{target}_init.onnx"
    result = frontc_cli("transfer", MODELS / "vit_source.onnx", MODELS / f"vit_{target}.onnx", "-o", out)
    assert result.returncode == 0, result.stderr
    assert accuracy(MODELS / f"vit_{target}.onnx") < 0.2     # the target's own random init
    assert accuracy(out) > floor                               # inherited, zero-shot


def test_example_models_stay_small():
    for path in MODELS.glob("*.onnx"):
        assert path.stat().st_size < 2 * 1024 * 1024, path
