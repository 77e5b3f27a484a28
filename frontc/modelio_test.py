"""frontc.modelio.save: inline models written tensor by tensor."""
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from frontc import modelio


def model_with(tensors: dict[str, np.ndarray]) -> ir.Model:
    """y = x + the sum of each of `tensors` (its initializers), so every tensor reaches the output."""
    x = ir.Value(name="x", shape=ir.Shape([4]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([x], [], nodes=[], name="g", opset_imports={"": 18})
    last = x
    for name, array in tensors.items():
        tensor = ir.Tensor(array, name=name)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype),
                         const_value=tensor)
        graph.register_initializer(value)
        cast = ir.node("Cast", [value], attributes={"to": ir.DataType.FLOAT})
        total = ir.node("ReduceSum", [cast.outputs[0]], attributes={"keepdims": 0})
        add = ir.node("Add", [last, total.outputs[0]])
        graph.extend([cast, total, add])
        last = add.outputs[0]
    last.name, last.type, last.shape = "y", ir.TensorType(ir.DataType.FLOAT), ir.Shape([4])
    graph.outputs.append(last)
    return ir.Model(graph, ir_version=10)


def test_streamed_file_holds_what_ir_save_writes(tmp_path):
    """Before: ir.save serialized the whole model (two copies of every weight in memory).
    After: the large initializers follow the rest one by one; a reader sees the same model."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    tensors = {"big32": rng.standard_normal((300, 70)).astype(np.float32),
               "big16": rng.standard_normal((200, 200)).astype(np.float16),
               "bf16": rng.standard_normal((180, 200)).astype(ml_dtypes.bfloat16),
               "transposed": np.asfortranarray(rng.standard_normal((130, 140)).astype(np.float32)),
               "small": np.arange(6, dtype=np.int64)}
    model = model_with(tensors)
    order = list(model.graph.initializers)
    held = {k: v.const_value for k, v in model.graph.initializers.items()}
    modelio.save(model, tmp_path / "streamed.onnx")
    ir.save(model, tmp_path / "plain.onnx")
    assert list(model.graph.initializers) == order              # the model is left as it was
    assert all(model.graph.initializers[k].const_value is held[k] for k in tensors)
    streamed, plain = onnx.load(tmp_path / "streamed.onnx"), onnx.load(tmp_path / "plain.onnx")
    onnx.checker.check_model(streamed, full_check=True)
    got = {t.name: t for t in streamed.graph.initializer}
    assert got.keys() == set(tensors)
    for t in plain.graph.initializer:
        assert got[t.name].raw_data == t.raw_data and got[t.name].dims == t.dims
        assert got[t.name].data_type == t.data_type
    for proto in (streamed, plain):
        del proto.graph.initializer[:]
    assert streamed == plain
    import onnxruntime as ort

    feed = {"x": np.ones(4, dtype=np.float32)}
    runs = [ort.InferenceSession(str(tmp_path / f)).run(None, feed)[0]
            for f in ("streamed.onnx", "plain.onnx")]
    assert np.array_equal(*runs)


def test_loaded_tensors_and_text_formats(tmp_path):
    """Tensors still backed by a loaded protobuf go through onnx_ir's serializer; a text format
    asked for by the file name is written by onnx_ir as before."""
    rng = np.random.default_rng(1)
    ir.save(model_with({"w": rng.standard_normal((256, 256)).astype(np.float32)}), tmp_path / "a.onnx")
    loaded = ir.load(tmp_path / "a.onnx")
    modelio.save(loaded, tmp_path / "b.onnx")
    a, b = onnx.load(tmp_path / "a.onnx"), onnx.load(tmp_path / "b.onnx")
    assert a.graph.initializer[0] == b.graph.initializer[0]
    modelio.save(loaded, tmp_path / "c.textproto")
    assert (tmp_path / "c.textproto").read_text().lstrip().startswith(("ir_version", "graph"))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**21, 2**35])
def test_varint(n):
    from google.protobuf.internal import decoder

    from frontc.validate import varint

    value, end = decoder._DecodeVarint(varint(n), 0)
    assert (value, end) == (n, len(varint(n)))
