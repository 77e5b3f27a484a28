"""Small valid ONNX models built with onnx.helper (no torch): the seeds of benchmarks/fuzz.py.

Three families, each at two sizes so that one can initialize the other:
  mlp: Gemm (transB=1) + Relu chain with a head;
  cnn: Conv + BatchNormalization + Relu residual blocks, GlobalAveragePool, Flatten, Gemm head;
  tfm: MatMul + Add embedding, pre-LN blocks (LayerNormalization, single-head attention with
       Softmax, MLP), ReduceMean and a MatMul head.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def weight(self, stem: str, shape, scale=0.3, positive=False, form="initializer") -> str:
        """A weight stored as an initializer, a Constant node, an initializer behind Identity
        and Cast, or a transposed initializer behind Transpose (2-D)."""
        value = self.rng.standard_normal(shape).astype(np.float32) * scale
        if positive:
            value = np.abs(value) + 0.5
        name = self.name(stem)
        if form == "constant":
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("Constant"),
                                               value=numpy_helper.from_array(value, name + "_t")))
        elif form == "cast":
            self.inits.append(numpy_helper.from_array(value, name + "_s"))
            mid = self.op("Identity", [name + "_s"])
            self.nodes.append(helper.make_node("Cast", [mid], [name], name=self.name("Cast"),
                                               to=TensorProto.FLOAT))
        elif form == "transposed":
            self.inits.append(numpy_helper.from_array(value.T.copy(), name + "_t"))
            self.nodes.append(helper.make_node("Transpose", [name + "_t"], [name],
                                               name=self.name("Transpose"), perm=[1, 0]))
        else:
            self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def model(self, x: onnx.ValueInfoProto, y: str, y_shape, opset=17) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [y], ["y"], name="output"))
        graph = helper.make_graph(self.nodes, "seed", [x],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def mlp(width=8, depth=3, inputs=6, classes=3, seed=0) -> onnx.ModelProto:
    b = _Builder(seed)
    h = "x"
    for i, n_in in enumerate([inputs] + [width] * depth):
        form = "constant" if i == 0 else "initializer"
        h = b.op("Relu", [b.op("Gemm", [h, b.weight("w", (width, n_in), form=form),
                                        b.weight("b", (width,))], transB=1)])
    y = b.op("Gemm", [h, b.weight("head", (classes, width)), b.weight("hb", (classes,))], transB=1)
    return b.model(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs]), y,
                   ["batch", classes])


def cnn(width=4, depth=2, classes=3, seed=0) -> onnx.ModelProto:
    b = _Builder(seed)

    def conv_bn(h, c_in):
        form = "cast" if c_in == 3 else "initializer"
        h = b.op("Conv", [h, b.weight("conv", (width, c_in, 3, 3), form=form)], pads=[1, 1, 1, 1])
        return b.op("BatchNormalization", [h, b.weight("g", (width,), positive=True),
                                           b.weight("beta", (width,)), b.weight("mean", (width,)),
                                           b.weight("var", (width,), positive=True)])

    h = b.op("Relu", [conv_bn("x", 3)])
    for _ in range(depth):
        h = b.op("Add", [h, b.op("Relu", [conv_bn(h, width)])])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
    y = b.op("Gemm", [h, b.weight("head", (classes, width)), b.weight("hb", (classes,))], transB=1)
    return b.model(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 6, 6]), y,
                   ["batch", classes])


def tfm(width=8, depth=2, inputs=5, tokens=4, classes=3, seed=0) -> onnx.ModelProto:
    b = _Builder(seed)

    def linear(h, n_out, n_in):
        return b.op("Add", [b.op("MatMul", [h, b.weight("w", (n_in, n_out))]), b.weight("b", (n_out,))])

    def norm(h):
        return b.op("LayerNormalization", [h, b.weight("ln_s", (width,), positive=True),
                                           b.weight("ln_b", (width,))], axis=-1)

    h = linear("x", width, inputs)
    for _ in range(depth):
        n = norm(h)
        q, k, v = (linear(n, width, width) for _ in range(3))
        scores = b.op("Softmax", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])], axis=-1)
        h = b.op("Add", [h, linear(b.op("MatMul", [scores, v]), width, width)])
        h = b.op("Add", [h, linear(b.op("Relu", [linear(norm(h), 2 * width, width)]), width, 2 * width)])
    pooled = b.op("ReduceMean", [norm(h), b.op("Constant", [], value=numpy_helper.from_array(
        np.array([1], dtype=np.int64), "axes"))], keepdims=0)
    y = b.op("MatMul", [pooled, b.weight("head", (width, classes), form="transposed")])
    return b.model(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens, inputs]),
                   y, ["batch", classes], opset=18)


# (source, target) pairs: each family at two widths/depths.
PAIRS = {
    "mlp": (lambda: mlp(8, 3, seed=1), lambda: mlp(5, 2, seed=2)),
    "cnn": (lambda: cnn(4, 2, seed=1), lambda: cnn(3, 1, seed=2)),
    "tfm": (lambda: tfm(8, 2, seed=1), lambda: tfm(6, 1, seed=2)),
}
