#!/usr/bin/env python3
"""Synthetic GPT-style ONNX models of any size, written without holding the weights in memory.

    python benchmarks/gpt.py out.onnx --width 1024 --layers 24 [--heads 16] [--vocab 50257]
                             [--context 1024] [--dtype float32] [--inline] [--seed 0]

The graph is built directly with onnx.helper (no torch): token and position embeddings
(Gather), then per layer a pre-LN block -- LayerNormalization, MatMul qkv [D, 3D] + Add bias,
Split into q, k, v, heads by Reshape/Transpose, MatMul, Softmax, MatMul, projection [D, D] +
bias, residual Add; LayerNormalization, MLP MatMul [D, 4D] + bias, x*sigmoid(1.702x),
MatMul [4D, D] + bias, residual Add -- and a final LayerNormalization (the hidden states are
the output). Inputs: `input_ids` and `position_ids`, int64 [batch, sequence].

Weights are random (normal, std 0.02; LayerNorm scales 1 + 0.1 normal), generated and
written tensor by tensor in chunks of at most 16 M values to `<out>.data` (external data),
so even a model of billions of parameters needs only a few MB of memory to build.
`--inline` writes one self-contained file instead (loads all weights into memory once;
only below the 2 GB protobuf limit).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

CHUNK = 1 << 24
DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
          "bfloat16": TensorProto.BFLOAT16, "float64": TensorProto.DOUBLE}


def parameters(width: int, layers: int, vocab: int = 50257, context: int = 1024) -> int:
    """The number of weights of `build`'s model."""
    block = 3 * width * width + 3 * width + width * width + width + 8 * width * width + 5 * width + 4 * width
    return vocab * width + context * width + layers * block + 2 * width


def _to_storage(values: np.ndarray, dtype: str) -> bytes:
    if dtype == "bfloat16":
        bits = values.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
    return values.astype(dtype).tobytes()


class _Writer:
    """Declares initializers whose data goes to one external file, written chunk by chunk."""

    def __init__(self, data_path: Path, dtype: str, seed: int):
        self.data_path, self.dtype = data_path, dtype
        self.file = open(data_path, "wb")
        self.rng = np.random.default_rng(seed)
        self.tensors: list[TensorProto] = []

    def add(self, name: str, shape: tuple[int, ...], kind: str = "normal") -> str:
        offset = self.file.tell()
        count = int(np.prod(shape))
        done = 0
        while done < count:
            n = min(CHUNK, count - done)
            if kind == "scale":
                values = 1.0 + 0.1 * self.rng.standard_normal(n, dtype=np.float32)
            else:
                values = 0.02 * self.rng.standard_normal(n, dtype=np.float32)
            self.file.write(_to_storage(values, self.dtype))
            done += n
        tensor = TensorProto(name=name, data_type=DTYPES[self.dtype], dims=list(shape))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_path.name), ("offset", str(offset)),
                           ("length", str(self.file.tell() - offset))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.tensors.append(tensor)
        return name

    def close(self) -> None:
        self.file.close()


def build(path: str | os.PathLike, width: int, layers: int, heads: int | None = None,
          vocab: int = 50257, context: int = 1024, dtype: str = "float32", inline: bool = False,
          seed: int = 0) -> Path:
    """Write the model to `path` (and its weights to `<path>.data` unless `inline`)."""
    path = Path(path)
    heads = heads or max(1, width // 64)
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    hd = width // heads
    elem = DTYPES[dtype]
    data_path = path.with_name(path.name + ".data")
    w = _Writer(data_path, dtype, seed)
    nodes, consts = [], []

    def const(name, values, kind=TensorProto.INT64):
        consts.append(helper.make_tensor(name, kind, [len(values)] if len(values) != 1 or
                                         kind == TensorProto.INT64 else [], values))
        return name

    def node(op, inputs, n_out=1, **attrs):
        outs = [f"{op.lower()}_{len(nodes)}_{i}" for i in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, name=f"{op}_{len(nodes)}", **attrs))
        return outs if n_out > 1 else outs[0]

    heads_shape = const("heads_shape", [0, 0, heads, hd])
    merge_shape = const("merge_shape", [0, 0, width])
    split = const("qkv_split", [width, width, width])
    scale = const("attn_scale", [1.0 / np.sqrt(hd)], elem)
    gelu = const("gelu_k", [1.702], elem)
    if dtype == "bfloat16":   # helper.make_tensor expects bfloat16 as raw uint16 bit patterns
        consts[-2:] = [helper.make_tensor(n, elem, [], [float(v)]) for n, v in
                       (("attn_scale", 1.0 / np.sqrt(hd)), ("gelu_k", 1.702))]

    def linear(x, name, n_in, n_out):
        y = node("MatMul", [x, w.add(f"{name}.weight", (n_in, n_out))])
        return node("Add", [y, w.add(f"{name}.bias", (n_out,))])

    def norm(x, name):
        return node("LayerNormalization", [x, w.add(f"{name}.scale", (width,), "scale"),
                                           w.add(f"{name}.bias", (width,))], axis=-1, epsilon=1e-5)

    h = node("Add", [node("Gather", [w.add("wte", (vocab, width)), "input_ids"]),
                     node("Gather", [w.add("wpe", (context, width)), "position_ids"])])
    for i in range(layers):
        p = f"h.{i}"
        qkv = linear(norm(h, f"{p}.ln_1"), f"{p}.attn.qkv", width, 3 * width)
        q, k, v = node("Split", [qkv, split], n_out=3, axis=-1)
        q = node("Transpose", [node("Reshape", [q, heads_shape])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, heads_shape])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, heads_shape])], perm=[0, 2, 1, 3])
        attn = node("Softmax", [node("Mul", [node("MatMul", [q, k]), scale])], axis=-1)
        o = node("Reshape", [node("Transpose", [node("MatMul", [attn, v])], perm=[0, 2, 1, 3]),
                             merge_shape])
        h = node("Add", [h, linear(o, f"{p}.attn.proj", width, width)])
        f = linear(norm(h, f"{p}.ln_2"), f"{p}.mlp.fc", width, 4 * width)
        f = node("Mul", [f, node("Sigmoid", [node("Mul", [f, gelu])])])
        h = node("Add", [h, linear(f, f"{p}.mlp.out", 4 * width, width)])
    out = norm(h, "ln_f")
    nodes[-1].output[0] = "hidden"
    w.close()

    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "position_ids")]
    graph = helper.make_graph(nodes, "gpt", ids,
                              [helper.make_tensor_value_info("hidden", elem, ["batch", "sequence", width])],
                              initializer=w.tensors + consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="frontc-benchmarks")
    model.ir_version = 9
    del out
    if inline:
        from onnx.external_data_helper import load_external_data_for_model
        load_external_data_for_model(model, str(path.parent))
        onnx.save(model, path)
        data_path.unlink()
    else:
        onnx.save(model, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--inline", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    path = build(a.output, a.width, a.layers, a.heads, a.vocab, a.context, a.dtype, a.inline, a.seed)
    print(f"{path}: {parameters(a.width, a.layers, a.vocab, a.context):,} parameters")


if __name__ == "__main__":
    main()
