"""The ONNX model-zoo topologies shipped inside the onnx package (IR 3, initializers listed as
inputs, weights made at run time by ConstantOfShape): structure found, self-transfer is exact."""
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import frontc
from frontc.validate import example_inputs, session
from helpers import frontc_cli

ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(p.stem for p in ZOO.glob("light_*.onnx"))
# 60-143M parameters each (550 MB written for vgg19): run with FRONTC_SLOW=1.
BIG = {"light_vgg19", "light_bvlc_alexnet", "light_zfnet512"}


def test_inspect_finds_resnet50_bottleneck_stages():
    result = frontc_cli("inspect", "--json", ZOO / "light_resnet50.onnx")
    stages = [s for s in json.loads(result.stdout)["stages"] if s["blocks"] > 1]
    assert [s["blocks"] for s in stages] == [3, 4, 6, 3]       # 16 bottleneck blocks
    assert all(s["first_block_differs"] for s in stages)      # projection shortcut first
    assert all(s["units_per_block"] == ["Conv", "Conv", "Conv"] for s in stages)


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_onto_itself_is_the_identity(tmp_path, name):
    if name in BIG and not os.environ.get("FRONTC_SLOW"):
        pytest.skip("large model: set FRONTC_SLOW=1 to run it")
    path = ZOO / f"{name}.onnx"
    out = tmp_path / "out.onnx"
    state = frontc.transfer(path, path, out)
    assert state.plan.coverage == 1.0
    onnx.checker.check_model(str(out))
    feeds = example_inputs(session(path))
    want, got = session(path).run(None, feeds), session(out).run(None, feeds)
    for a, b in zip(want, got):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)
    # The run-time placeholders became real initializers of the same values.
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "ConstantOfShape" not in ops
