"""emit: atomic writes, external data past the size limit, nothing left behind on failure."""
import numpy as np
import pytest

import frontc
from frontc import modelio
from frontc.errors import PipelineError


def test_large_output_goes_to_external_data(exported, tmp_path, monkeypatch):
    from helpers import run_onnx

    monkeypatch.setattr(modelio, "PROTOBUF_LIMIT", 1000)   # pretend the weights pass 2 GB
    source, target = exported("MLP", "legacy", 1), exported("MLP", "legacy", 2)
    out = tmp_path / "out.onnx"
    frontc.transfer(source, target, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    x = np.random.default_rng(0).standard_normal((2, 20)).astype(np.float32)
    assert np.allclose(run_onnx(out, x), run_onnx(source, x), atol=1e-5)


def test_failed_validation_leaves_no_file(exported, tmp_path, monkeypatch):
    import frontc.passes.emit as emit

    def refuse(path):  # the written output fails; the target itself passes
        if path.name == "out.onnx":
            raise PipelineError("refused for the test")

    monkeypatch.setattr(emit, "check_model", refuse)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    with pytest.raises(PipelineError):
        frontc.transfer(exported("MLP", "legacy", 1), exported("MLP", "legacy", 2), out)
    assert out.read_bytes() == b"previous output"             # replaced only whole, or not at all
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]  # no temp folder left


def test_a_target_that_fails_on_its_own_is_bad_input(exported, tmp_path, monkeypatch):
    import frontc.passes.emit as emit
    from frontc.errors import InputError

    def refuse(path):
        raise PipelineError("onnxruntime cannot run it")

    monkeypatch.setattr(emit, "check_model", refuse)
    with pytest.raises(InputError, match="fails the same checks on its own"):
        frontc.transfer(exported("MLP", "legacy", 1), exported("MLP", "legacy", 2), tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []
