"""frontc.validate: onnx.checker on the written file without parsing the weights' bytes."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontc import validate as V


def write(tmp_path: Path, raw_size: int | None = None, op: str = "Add") -> Path:
    w = numpy_helper.from_array(np.arange(30 * 7, dtype=np.float32).reshape(30, 7), "w")
    if raw_size is not None:
        w.raw_data = w.raw_data[:raw_size]
    b = numpy_helper.from_array(np.ones(7, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [30, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [30, 7])], [w, b])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_light_encoding_points_at_the_weights_bytes(tmp_path):
    """Before: the checker parsed the whole file, weights included. After: it reads a
    re-encoding whose initializers reference their bytes in the file -- the same tensors."""
    path = write(tmp_path)
    light, full = onnx.load_from_string(V.without_tensor_bytes(path)), onnx.load(path)
    data = path.read_bytes()
    for a, b in zip(light.graph.initializer, full.graph.initializer, strict=True):
        refs = {e.key: e.value for e in a.external_data}
        assert (a.name, a.dims, a.data_type) == (b.name, b.dims, b.data_type)
        assert a.data_location == TensorProto.EXTERNAL and refs["location"] == path.name
        assert data[int(refs["offset"]):int(refs["offset"]) + int(refs["length"])] == b.raw_data
    for proto in (light, full):
        del proto.graph.initializer[:]
    assert light == full
    V.check_here(path, light=True)


def test_light_check_still_fails_what_it_should(tmp_path):
    with pytest.raises(V.Invalid, match="onnx.checker"):        # a graph error: the checker's
        V.check_here(write(tmp_path, op="NoSuchOp"), light=True)
    with pytest.raises(V.Invalid, match="raw_data size"):       # short bytes: onnxruntime's
        V.check_here(write(tmp_path, raw_size=12), light=True)
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"\xff" * 64)                          # not protobuf: the full check
    with pytest.raises(V.Invalid, match="onnx.checker"):
        V.check_here(not_onnx, light=True)
