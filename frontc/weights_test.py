"""The parameter view: weights in every storage form get the same canonical layout and roles."""
import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from frontc.weights import index_weights

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 5)).astype(np.float32)       # [in, out] as MatMul stores it
B = RNG.standard_normal(5).astype(np.float32)
TABLE = RNG.standard_normal((30, 8)).astype(np.float32)


def build(storage: str, W=W) -> ir.Model:
    """x -> MatMul(W) -> Add(B) -> y, and ids -> Gather(TABLE) -> e; W stored as `storage`."""
    nodes, inits = [], [numpy_helper.from_array(B, "B"), numpy_helper.from_array(TABLE, "table")]
    if storage == "initializer":
        inits.append(numpy_helper.from_array(W, "W"))
    elif storage == "constant":
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(W, "w")))
    elif storage == "identity":
        inits.append(numpy_helper.from_array(W, "W0"))
        nodes.append(helper.make_node("Identity", ["W0"], ["W"]))
    elif storage == "transposed":   # stored [out, in], transposed at run time (then cast)
        inits.append(numpy_helper.from_array(W.T.copy(), "Wt"))
        nodes += [helper.make_node("Transpose", ["Wt"], ["W1"], perm=[1, 0]),
                  helper.make_node("Cast", ["W1"], ["W"], to=TensorProto.FLOAT)]
    nodes += [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"]),
              helper.make_node("Gather", ["table", "ids"], ["e"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                     helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, [3, 8])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_every_storage_form_gives_the_canonical_out_in_layout():
    for storage in ("initializer", "constant", "identity", "transposed"):
        index = index_weights(build(storage))
        linear = next(w for w in index.weights if w.slot == "linear.weight")
        assert linear.shape == (5, 8), storage                       # [out, in]
        assert np.allclose(linear.array(), W.T), storage
        # store() is the inverse of array(): the stored layout comes back.
        stored = linear.store(linear.array()).numpy()
        assert np.allclose(stored, W if storage != "transposed" else W.T), storage


def test_roles_and_fixed_axes():
    index = index_weights(build("initializer"))
    roles = {w.slot: w.roles for w in index.weights}
    # The MatMul+Add feeds output y directly: it is a head, its out axis counts classes.
    assert roles["linear.weight"] == ("class", "in")
    assert roles["linear.bias"] == ("class",)
    assert roles["embedding.table"] == ("vocab", "feature")
    table = next(w for w in index.weights if w.slot == "embedding.table")
    assert table.fixed == (True, False)


def test_int_and_scalar_constants_are_not_weights():
    model = build("initializer")
    proto = ir.to_proto(model)
    proto.graph.initializer.append(numpy_helper.from_array(np.array([2.0], np.float32), "scale"))
    proto.graph.node.append(helper.make_node("Mul", ["y", "scale"], ["y2"]))
    proto.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 5]))
    onnx.checker.check_model(proto)
    names = {w.name for w in index_weights(ir.from_proto(proto)).weights}
    assert names == {"W", "B", "table"}


def test_transfer_across_storage_forms_is_the_identity(tmp_path):
    """Source weight behind Transpose+Cast, target weight in a Constant node: same function."""
    import frontc
    from frontc.validate import session

    source, target = tmp_path / "source.onnx", tmp_path / "target.onnx"
    ir.save(build("transposed"), source)
    ir.save(build("constant", W=np.ones_like(W)), target)
    frontc.transfer(source, target, tmp_path / "out.onnx")
    feeds = {"x": RNG.standard_normal((1, 8)).astype(np.float32), "ids": np.array([0, 3, 29])}
    want = session(source).run(None, feeds)
    got = session(tmp_path / "out.onnx").run(None, feeds)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(want, got))
    out = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in out.graph.node][0] == "Constant"   # still a Constant node
