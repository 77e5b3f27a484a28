"""Edits of ONNX models at the protobuf level for tests: rename everything, reorder nodes, and
build small bad or unusual models (quantized, half precision, IR 3, external data).

Nothing here imports frontc: these build the inputs frontc is tested on.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


# --------------------------------------------------------------------------- renaming, reordering

def rename(model: onnx.ModelProto, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Give every initializer, node and intermediate value a fresh random name (graph inputs and
    outputs keep theirs). Returns the new model and {new name: old name}."""
    model = copy.deepcopy(model)
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    values = [t.name for t in g.initializer] + [o for n in g.node for o in n.output]
    values = [v for v in dict.fromkeys(values) if v and v not in keep]
    fresh = [f"t{int(x)}" for x in rng.choice(10**9, size=len(values) + len(g.node), replace=False)]
    new = dict(zip(values, fresh))
    for t in g.initializer:
        t.name = new.get(t.name, t.name)
    for vi in g.value_info:
        vi.name = new.get(vi.name, vi.name)
    for i, node in enumerate(g.node):
        node.name = fresh[len(values) + i]
        node.input[:] = [new.get(x, x) for x in node.input]
        node.output[:] = [new.get(x, x) for x in node.output]
    back = {v: k for k, v in new.items()}
    return model, back


def reorder(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """The same graph with its nodes in a random valid topological order and its initializers
    shuffled."""
    model = copy.deepcopy(model)
    g = model.graph
    nodes = list(g.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    order = []
    while ready:
        i = ready.pop(int(rng.integers(len(ready))))
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    assert len(order) == len(nodes), "the graph has a cycle"
    copies = [copy.deepcopy(nodes[i]) for i in order]
    del g.node[:]
    g.node.extend(copies)
    inits = [copy.deepcopy(t) for t in g.initializer]
    perm = rng.permutation(len(inits))
    del g.initializer[:]
    g.initializer.extend(inits[i] for i in perm)
    return model


# --------------------------------------------------------------------------- small helper models

def mlp(width=8, depth=3, inputs=6, classes=3, seed=0, opset=17, ir_version=8,
        zero_branch=False, constant_of_shape=False) -> onnx.ModelProto:
    """x[batch, inputs] -> Gemm+Relu stem -> `depth` Gemm+Relu blocks -> Gemm head -> y.

    zero_branch: a Gemm with a zero-size weight [0, width] whose empty output is concatenated
    to the last hidden layer (zero-size dimensions). constant_of_shape: the first block's
    weight is made at run time by ConstantOfShape (one value everywhere).
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def w(name, shape, scale=0.3):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    h = "x"
    for i, n_in in enumerate([inputs] + [width] * depth):
        weight = f"w{i}"
        if constant_of_shape and i == 1:
            inits.append(numpy_helper.from_array(np.array([width, n_in], dtype=np.int64), "cos_shape"))
            nodes.append(helper.make_node("ConstantOfShape", ["cos_shape"], [weight], name="cos",
                                          value=numpy_helper.from_array(np.array([0.05], np.float32))))
        else:
            w(weight, (width, n_in))
        nodes.append(helper.make_node("Gemm", [h, weight, w(f"b{i}", (width,))], [f"g{i}"],
                                      name=f"gemm{i}", transB=1))
        nodes.append(helper.make_node("Relu", [f"g{i}"], [f"r{i}"], name=f"relu{i}"))
        h = f"r{i}"
    if zero_branch:
        inits.append(numpy_helper.from_array(np.zeros((0, width), np.float32), "w_empty"))
        nodes.append(helper.make_node("Gemm", [h, "w_empty"], ["empty"], name="gemm_empty", transB=1))
        nodes.append(helper.make_node("Concat", [h, "empty"], ["cat"], name="concat", axis=1))
        h = "cat"
    nodes.append(helper.make_node("Gemm", [h, w("head", (classes, width)), w("head_b", (classes,))],
                                  ["y"], name="head", transB=1))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    if ir_version < 4:  # IR 3: every initializer is also a graph input
        for t in inits:
            model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return model


def save(model: onnx.ModelProto, path: Path, external: bool = False) -> Path:
    path = Path(path)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


# --------------------------------------------------------------------------- quantization

def qdq_weights(model: onnx.ModelProto, per_channel: bool = True) -> onnx.ModelProto:
    """Weight-only QDQ: every float initializer of rank 2 or more becomes int8 (symmetric,
    per output channel on axis 0, or per tensor) behind a DequantizeLinear node."""
    model = copy.deepcopy(model)
    g = model.graph
    keep, added, dq = [], [], []
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        if t.data_type != TensorProto.FLOAT or a.ndim < 2:
            keep.append(t)
            continue
        if per_channel:
            amax = np.abs(a).reshape(a.shape[0], -1).max(axis=1)
            scale = np.maximum(amax, 1e-8) / 127.0
            q = np.clip(np.round(a / scale.reshape((-1,) + (1,) * (a.ndim - 1))), -127, 127)
            zero = np.zeros(a.shape[0], np.int8)
        else:
            scale = np.array(max(np.abs(a).max(), 1e-8) / 127.0)
            q = np.clip(np.round(a / scale), -127, 127)
            zero = np.array(0, np.int8)
        added += [numpy_helper.from_array(q.astype(np.int8), t.name + "_q"),
                  numpy_helper.from_array(scale.astype(np.float32), t.name + "_scale"),
                  numpy_helper.from_array(zero, t.name + "_zero")]
        dq.append(helper.make_node("DequantizeLinear", [t.name + "_q", t.name + "_scale", t.name + "_zero"],
                                   [t.name], name=t.name + "_dq", axis=0))
    del g.initializer[:]
    g.initializer.extend(keep + added)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(dq + nodes)
    return model


def dequantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float model a weight-only QDQ model stands for (DequantizeLinear folded, float32)."""
    model = copy.deepcopy(model)
    g = model.graph
    tensors = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    kept_nodes, made = [], []
    for node in g.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in tensors:
            q, s = tensors[node.input[0]].astype(np.float64), tensors[node.input[1]].astype(np.float64)
            z = tensors[node.input[2]].astype(np.float64) if len(node.input) > 2 else 0 * s
            if s.ndim:
                shape = (-1,) + (1,) * (q.ndim - 1)
                s, z = s.reshape(shape), z.reshape(shape)
            made.append(numpy_helper.from_array(((q - z) * s).astype(np.float32), node.output[0]))
        else:
            kept_nodes.append(node)
    used = {x for n in kept_nodes for x in n.input}
    inits = [t for t in g.initializer if t.name in used] + made
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.node[:]
    g.node.extend(kept_nodes)
    return model


# --------------------------------------------------------------------------- half precision

def half_storage(model: onnx.ModelProto, dtype: int) -> onnx.ModelProto:
    """Weights stored in float16 or bfloat16, each read through a Cast to float32 (the graph
    computes in float32): the storage form of mixed-precision checkpoints."""
    import ml_dtypes

    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else ml_dtypes.bfloat16
    model = copy.deepcopy(model)
    g = model.graph
    casts, inits = [], []
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        if t.data_type != TensorProto.FLOAT or a.size <= 1:
            inits.append(t)
            continue
        half = onnx.helper.make_tensor(t.name + "_h", dtype, a.shape,
                                       a.astype(np_dtype).view(np.uint16).tobytes(), raw=True)
        inits.append(half)
        casts.append(helper.make_node("Cast", [t.name + "_h"], [t.name], name=t.name + "_cast",
                                      to=TensorProto.FLOAT))
    del g.initializer[:]
    g.initializer.extend(inits)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    return model
