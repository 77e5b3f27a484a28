"""The dct pass's input checks (docs/errors.md): NaN and Inf in the source are refused (exit 2,
naming the file, tensor and node) unless `--allow-nonfinite`, which treats them as missing (the
tensor's finite mean); a keep ratio that keeps no frequency of some axis is a bad option."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

import onnxedit as oe
from test_bad_inputs import listing, pair, run, sha  # noqa: F401  (pair is a fixture)


def with_nonfinite(model: onnx.ModelProto, name: str, values) -> onnx.ModelProto:
    t = next(t for t in model.graph.initializer if t.name == name)
    a = numpy_helper.to_array(t).copy()
    a.flat[:len(values)] = values
    t.CopyFrom(numpy_helper.from_array(a, name))
    return model


def test_nonfinite_source_is_refused_unless_allowed(pair, tmp_path):
    source = oe.save(with_nonfinite(oe.mlp(8, 3, seed=1), "w2", [np.nan, np.inf, -np.inf]),
                     tmp_path / "nan.onnx")
    before = sha(source)
    out = tmp_path / "out" / "o.onnx"
    result = run("transfer", source, pair[1], "-o", out)
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and str(source) in line and "'w2'" in line and "NaN or Inf" in line
    assert "--allow-nonfinite" in line
    assert not out.parent.exists() or listing(out.parent) == []

    result = run("transfer", source, pair[1], "-o", out, "--allow-nonfinite")
    assert result.exit_code == 0, result.stderr
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    assert all(np.all(np.isfinite(w)) for w in weights.values())
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert "allow_nonfinite=True" in meta["frontc.pipeline"]
    assert sha(source) == before


def test_all_nonfinite_tensor_is_refused_even_when_allowed(pair, tmp_path):
    source = oe.save(with_nonfinite(oe.mlp(8, 3, seed=1), "w2", [np.nan] * 64), tmp_path / "nan.onnx")
    result = run("transfer", source, pair[1], "-o", tmp_path / "o.onnx", "--allow-nonfinite")
    assert result.exit_code == 2 and "no finite value" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_nonfinite_in_a_replaced_target_tensor_is_harmless(pair, tmp_path):
    target = oe.save(with_nonfinite(oe.mlp(5, 2, seed=2), "w1", [np.nan]), tmp_path / "t_nan.onnx")
    out = tmp_path / "o.onnx"
    result = run("transfer", pair[0], target, "-o", out)
    assert result.exit_code == 0, result.stderr
    w1 = next(numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer if t.name == "w1")
    assert np.all(np.isfinite(w1))


def test_keep_ratio_that_keeps_nothing_is_a_bad_option(pair, tmp_path):
    out = tmp_path / "out" / "o.onnx"
    result = run("transfer", *pair, "-o", out, "--keep-ratio", "0.1")     # int(6 x 0.1) = 0
    assert result.exit_code == 2 and "keeps int(6 x 0.1) = 0 frequencies" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not out.parent.exists() or listing(out.parent) == []
    assert run("transfer", *pair, "-o", out, "--keep-ratio", "0.5").exit_code == 0
