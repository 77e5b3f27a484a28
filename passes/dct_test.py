"""dct pass: a direct transfer computes only the target's window of a source block where that
gives the same bytes, so a transfer from a learngene (full blocks, cut afterwards) stays
byte-identical."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import frontc


def mlp(path, widths, seed):
    """Gemm/Relu chain [in, widths..., 4]; weights [out, in] (transB=1)."""
    rng = np.random.default_rng(seed)
    nodes, inits, h, prev = [], [], "x", 16
    for i, width in enumerate(list(widths) + [4]):
        inits += [numpy_helper.from_array(rng.standard_normal((width, prev), np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(width, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [h, f"w{i}", f"b{i}"], [f"g{i}"], transB=1))
        h, prev = f"g{i}", width
        if i < len(widths):
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"]))
            h = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["n", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def weights(path):
    return {i.name: numpy_helper.to_array(i).tobytes() for i in onnx.load(str(path)).graph.initializer}


def test_windowed_blocks_keep_gene_identity(tmp_path):
    """Before: short axes (96, 24: the GEMM form, whose rounding depends on the GEMM's shape)
    and long ones (300, 260: the FFT form, line by line). After: the direct transfer and the
    transfer from the gene write the same bytes."""
    for widths_s, widths_t in (((96, 24), (40, 12)), ((300, 260), (150, 130))):
        source = mlp(tmp_path / "s.onnx", widths_s, 1)
        target = mlp(tmp_path / "t.onnx", widths_t, 2)
        frontc.extract(source, tmp_path / "s.gene")
        frontc.transfer(source, target, tmp_path / "direct.onnx", validate=False)
        frontc.transfer(tmp_path / "s.gene", target, tmp_path / "gene.onnx", validate=False)
        assert weights(tmp_path / "direct.onnx") == weights(tmp_path / "gene.onnx"), widths_s
