"""Reading models with precise errors, and writing them atomically.

Inputs are only ever read. An output is written into a temporary folder beside its final path,
validated, then renamed into place, so a failure (or an interrupt) never leaves a half-written file.

`load` refuses, with one line naming the file and the fault (InputError, exit 2), anything the
passes could not read safely: bytes that are not an ONNX protobuf, text fields that are not
UTF-8, a graph that is not a graph (a node reading a value nothing produces, an output nothing
produces, a cycle), attributes of the wrong type, a Transpose perm that is not a permutation,
tensors whose stored data disagrees with their declared shape or dtype, and external data that
is missing, shorter than declared, or outside the model's folder. Quantized models: a QDQ
source (DequantizeLinear of constant integer weights) is dequantized in memory; an operator-
quantized source (QLinearConv, MatMulInteger, ...) and any quantized target are refused with a
hint. docs/errors.md lists every case.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from frontc.errors import InputError
from frontc.validate import field_header

# The protobuf limit: a model file over 2 GB must keep its tensors in external data.
PROTOBUF_LIMIT = 2**31 - 2**24


def load(path: str | os.PathLike, what: str = "model") -> ir.Model:
    """Load an ONNX model with onnx_ir (external tensors stay memory-mapped, not read).

    `what` names the model in messages ("source", "target" or "model") and decides how a
    quantized model is treated: a QDQ "source"/"model" is dequantized in memory, a quantized
    "target" is refused (frontc writes float weights into the target's own tensors).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder, not an ONNX model file")
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path}: the file is empty, not an ONNX model")
    where = f"{what} {path}"
    try:
        # What ir.load does, in two steps, so that the protobuf can be checked in between.
        proto = onnx.load_model(path, load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, others raise their own types
        raise InputError(f"{where}: not a readable ONNX model ({_brief(err) or 'corrupt'})") from None
    _check_text(proto, where)
    try:
        model = ir.serde.deserialize_model(proto)
        ir.external_data.set_base_dir(model.graph, os.path.dirname(path))
    except Exception as err:
        raise InputError(f"{where}: not a valid ONNX model ({_brief(err)})") from None
    if len(model.graph) == 0 or not model.graph.outputs:
        raise InputError(f"{where}: not an ONNX model (no graph nodes or outputs)")
    check_graph(model, where, topological=what == "target")
    check_tensors(model, where)
    check_external_data(model, path, what)
    check_quantization(model, where, dequantize=what != "target")
    return model


def _brief(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


# ------------------------------------------------------------------------ protobuf text fields

def _repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5 (upb); older: the label
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def _check_text(proto: onnx.ModelProto, where: str) -> None:
    """Protobuf (proto2) does not check that string fields are UTF-8; frontc needs them to be."""
    def fail(field: str) -> None:
        raise InputError(f"{where}: the {field} field holds bytes that are not UTF-8 text "
                         f"(corrupt file?)")

    def visit(message, trail: str) -> None:
        if isinstance(message, onnx.TensorProto):
            for name in ("name", "doc_string"):
                if isinstance(getattr(message, name), bytes):
                    fail(f"{trail}.{name}")
            for entry in list(message.external_data) + list(message.metadata_props):
                if isinstance(entry.key, bytes) or isinstance(entry.value, bytes):
                    fail(f"{trail}.external_data")
            return
        for field, value in message.ListFields():
            if field.type == field.TYPE_STRING:
                values = value if _repeated(field) else [value]
                if any(isinstance(v, bytes) for v in values):
                    fail(f"{trail}.{field.name}")
            elif field.type == field.TYPE_MESSAGE:
                if field.message_type.GetOptions().map_entry:
                    continue
                values = value if _repeated(field) else [value]
                for v in values:
                    visit(v, f"{trail}.{field.name}")

    visit(proto, "model")


# ------------------------------------------------------------------------ graph well-formedness

# Attributes frontc reads with a fixed meaning, whatever the op's domain: op type -> name -> type.
_READS = {
    "Gemm": {"transB": ir.AttributeType.INT},
    "Gather": {"axis": ir.AttributeType.INT},
    "Transpose": {"perm": ir.AttributeType.INTS},
    "Conv": {"group": ir.AttributeType.INT},
    "ConvTranspose": {"group": ir.AttributeType.INT},
    "Constant": {"value": ir.AttributeType.TENSOR},
    "DequantizeLinear": {"axis": ir.AttributeType.INT, "block_size": ir.AttributeType.INT},
}


def _node_name(node: ir.Node) -> str:
    return f"{node.op_type} node '{node.name}'"


def _schema(node: ir.Node, opsets: dict[str, int]):
    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opsets.get("", opsets.get("ai.onnx", 1)), "")
    except Exception:
        return None


def check_graph(model: ir.Model, where: str, topological: bool = False) -> None:
    """Every value read is produced, the graph is acyclic, attributes have their types;
    `topological`: the nodes are in topological order, as ONNX requires (a target's order is
    kept in the output, which onnx.checker would refuse)."""
    graph = model.graph
    opsets = dict(model.opset_imports)
    inner = set(graph)

    def provided(value: ir.Value) -> bool:
        if value.is_graph_input() or value.is_initializer():
            return True
        producer = value.producer()
        return producer is not None and producer in inner

    for node in graph:
        for value in node.inputs:
            if value is not None and not provided(value):
                raise InputError(f"{where}: {_node_name(node)} reads '{value.name}', which no node, "
                                 f"graph input or initializer of the graph provides")
        schema = _schema(node, opsets)
        if schema is not None:
            # Trailing empty inputs are the same as absent ones.
            count = len(node.inputs)
            while count and node.inputs[count - 1] is None:
                count -= 1
            if not schema.min_input <= count <= schema.max_input:
                raise InputError(f"{where}: {_node_name(node)} has {count} inputs; "
                                 f"{node.op_type} takes {_between(schema.min_input, schema.max_input)}")
            if not 1 <= len(node.outputs) <= schema.max_output:
                raise InputError(f"{where}: {_node_name(node)} has {len(node.outputs)} outputs; "
                                 f"{node.op_type} has {_between(schema.min_output, schema.max_output)}")
        for name, attr in node.attributes.items():
            expected = None
            if schema is not None and name in schema.attributes:
                expected = ir.AttributeType(int(schema.attributes[name].type))
            expected = _READS.get(node.op_type, {}).get(name, expected)
            if expected is not None and attr.type != expected and not (
                    attr.is_ref() or expected == ir.AttributeType.UNDEFINED):
                raise InputError(f"{where}: {_node_name(node)} has attribute '{name}' of type "
                                 f"{attr.type.name}, but {node.op_type} takes {expected.name}")
        for port, allowed in _RANKS.get(node.op_type, {}).items():
            rank = _rank(node.inputs[port]) if port < len(node.inputs) else None
            if rank is not None and rank not in allowed:
                raise InputError(f"{where}: {_node_name(node)} input {port} is a constant of rank "
                                 f"{rank}; {node.op_type} takes rank {_ranks(allowed)} there")
        if node.op_type == "Transpose" and "perm" not in node.attributes:
            # The default perm (reversed axes) spelled out, so that readers need not know the
            # rank of the output (weights.py takes it from the output's declared shape).
            rank = _rank(node.inputs[0]) if node.inputs else None
            if rank is not None:
                node.attributes["perm"] = ir.AttrInt64s("perm", list(reversed(range(rank))))
        if node.op_type == "Transpose" and "perm" in node.attributes:
            perm = list(node.attributes["perm"].value)
            rank = _rank(node.inputs[0]) if node.inputs else None
            if sorted(perm) != list(range(len(perm))) or (rank is not None and rank != len(perm)):
                raise InputError(f"{where}: {_node_name(node)} has perm {perm}, which is not a "
                                 f"permutation of its input's {rank if rank is not None else len(perm)} axes")
    for value in graph.outputs:
        if not provided(value):
            raise InputError(f"{where}: graph output '{value.name}' is produced by no node, graph "
                             f"input or initializer")
    # Cycles: Kahn's algorithm over the nodes of the main graph.
    waiting = {node: sum(1 for v in node.inputs if v is not None and v.producer() in inner)
               for node in graph}
    ready = [node for node, n in waiting.items() if n == 0]
    done = 0
    while ready:
        node = ready.pop()
        done += 1
        for out in node.outputs:
            for use in out.uses():
                if use.node in waiting:
                    waiting[use.node] -= 1
                    if waiting[use.node] == 0:
                        ready.append(use.node)
    if done != len(waiting):
        stuck = next(node for node, n in waiting.items() if n > 0)
        raise InputError(f"{where}: the graph has a cycle (through {_node_name(stuck)}); an ONNX "
                         f"graph must be acyclic")
    if topological:
        earlier: set[ir.Node] = set()
        for node in graph:
            for value in node.inputs:
                producer = value.producer() if value is not None else None
                if producer in inner and producer not in earlier:
                    raise InputError(f"{where}: {_node_name(node)} reads '{value.name}' before "
                                     f"{_node_name(producer)} produces it; ONNX requires the nodes "
                                     f"in topological order (the output keeps the target's order)")
            earlier.add(node)


# Ranks the ONNX operators require of the inputs frontc reads as weights: op -> port -> ranks.
_RANKS = {
    "Gemm": {0: {2}, 1: {2}, 2: {0, 1, 2}},
    "Conv": {1: set(range(3, 9)), 2: {1}},
    "ConvTranspose": {1: set(range(3, 9)), 2: {1}},
    "BatchNormalization": {1: {1}, 2: {1}, 3: {1}, 4: {1}},
}


def _ranks(allowed: set[int]) -> str:
    return " or ".join(map(str, sorted(allowed))) if len(allowed) < 4 else f"{min(allowed)} or more"


def _between(low: int, high: int) -> str:
    return str(low) if low == high else (f"at least {low}" if high > 10**6 else f"{low} to {high}")


def _rank(value: ir.Value | None) -> int | None:
    """The rank of a constant (initializer or Constant node, also behind Identity, Cast or
    Transpose nodes), else None."""
    for _ in range(64):
        if value is None:
            return None
        if value.const_value is not None:
            return len(value.const_value.shape)
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "Constant":
            attr = producer.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                return len(attr.value.shape)
            return None
        if producer.op_type not in ("Identity", "Cast", "Transpose") or not producer.inputs:
            return None
        value = producer.inputs[0]
    return None


# ------------------------------------------------------------------------ tensors

_TYPED = {  # dtype -> (TensorProto field holding its values, numbers per element)
    ir.DataType.FLOAT: ("float_data", 1), ir.DataType.COMPLEX64: ("float_data", 2),
    ir.DataType.DOUBLE: ("double_data", 1), ir.DataType.COMPLEX128: ("double_data", 2),
    ir.DataType.INT64: ("int64_data", 1), ir.DataType.UINT32: ("uint64_data", 1),
    ir.DataType.UINT64: ("uint64_data", 1), ir.DataType.STRING: ("string_data", 1),
}
_FIELDS = ("float_data", "double_data", "int32_data", "int64_data", "uint64_data", "string_data")


def _tensors(model: ir.Model):
    """(where, tensor) for every initializer and Constant-node tensor of the main graph."""
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            yield f"initializer '{value.name}'", value.const_value
    for node in model.graph:
        if node.op_type == "Constant":
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                yield f"the tensor of {_node_name(node)}", attr.value


def check_tensors(model: ir.Model, where: str) -> None:
    """The data stored with each tensor matches its declared dtype and shape."""
    for label, tensor in _tensors(model):
        dims = [int(d) for d in tensor.shape.dims] if hasattr(tensor.shape, "dims") else list(tensor.shape)
        if any(d < 0 for d in dims):
            raise InputError(f"{where}: {label} has a negative dimension in its shape {dims}")
        if tensor.dtype == ir.DataType.UNDEFINED:
            raise InputError(f"{where}: {label} has no data type")
        count = math.prod(dims)
        if isinstance(tensor, ir.ExternalTensor):
            if tensor.dtype != ir.DataType.STRING and tensor.length is not None and \
                    tensor.length != tensor.nbytes:
                raise InputError(f"{where}: {label} declares shape {dims} of {tensor.dtype.name} "
                                 f"({tensor.nbytes} bytes) but {tensor.length} bytes of external data")
            continue
        proto = getattr(tensor, "raw", None)
        if not isinstance(proto, onnx.TensorProto):
            continue  # built in memory by frontc itself
        if proto.HasField("raw_data"):
            if tensor.dtype == ir.DataType.STRING:
                raise InputError(f"{where}: {label} is a STRING tensor stored as raw bytes")
            expected = math.ceil(count * tensor.dtype.bitwidth / 8)
            if len(proto.raw_data) != expected:
                raise InputError(f"{where}: {label} declares shape {dims} of {tensor.dtype.name} "
                                 f"({expected} bytes) but stores {len(proto.raw_data)} bytes")
            continue
        field, per = _TYPED.get(tensor.dtype, ("int32_data", 1))
        expected = count * per
        if field == "int32_data" and tensor.dtype.bitwidth < 8 and tensor.dtype.bitwidth not in (6,):
            expected = math.ceil(count * tensor.dtype.bitwidth / 8)  # sub-byte types: packed bytes
        used = [f for f in _FIELDS if len(getattr(proto, f))]
        if any(f != field for f in used):
            raise InputError(f"{where}: {label} is {tensor.dtype.name} but stores its values in "
                             f"{', '.join(used)} (expected {field})")
        have = len(getattr(proto, field))
        if have != expected:
            raise InputError(f"{where}: {label} declares shape {dims} ({expected} values) but "
                             f"stores {have}")


def check_external_data(model: ir.Model, path: Path, what: str) -> None:
    """Fail early when an external data file is missing, outside the model's folder, or shorter
    than a tensor needs."""
    sizes: dict[Path, int] = {}
    folder = Path(os.path.dirname(path) or ".").resolve()
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = str(tensor.location)
        data = Path(tensor.base_dir) / location
        if not location or os.path.isabs(location) or not data.resolve().is_relative_to(folder):
            raise InputError(f"{what} {path}: tensor '{value.name}' points to external data "
                             f"'{location}', which is not a file inside the model's folder")
        if data not in sizes:
            if not data.is_file():
                raise InputError(f"{what} {path}: external data file {data} is missing "
                                 f"(needed by tensor '{value.name}'); keep it beside the model")
            sizes[data] = data.stat().st_size
        end = (tensor.offset or 0) + (tensor.length or tensor.nbytes)
        if end > sizes[data]:
            raise InputError(f"{what} {path}: external data file {data} is {sizes[data]} bytes, "
                             f"but tensor '{value.name}' needs bytes up to {end} (truncated file?)")


# ------------------------------------------------------------------------ quantized models

def _operator_quantized(op_type: str) -> bool:
    return (op_type.startswith("QLinear") or op_type.endswith("Integer") or "NBits" in op_type
            or "BlockQuantized" in op_type or op_type in {"QGemm", "QAttention", "DynamicQuantizeLinear",
                                                          "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                                                          "QOrderedMatMul", "QEmbedLayerNormalization"})


def _constant(value: ir.Value | None) -> ir.TensorProtocol | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.value
    return None


def _quantized_weights(graph: ir.Graph) -> list[ir.Node]:
    """DequantizeLinear nodes whose input is a constant integer (or 8-bit float) tensor."""
    found = []
    for node in graph:
        if node.op_type != "DequantizeLinear" or not node.inputs:
            continue
        x = _constant(node.inputs[0])
        if x is not None and x.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE,
                                             ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            found.append(node)
    return found


def check_quantization(model: ir.Model, where: str, dequantize: bool) -> None:
    graph = model.graph
    qops = sorted({n.op_type for n in graph if _operator_quantized(n.op_type)})
    qdq = _quantized_weights(graph)
    if qops:
        raise InputError(f"{where}: is quantized in operator form ({', '.join(qops)}); frontc reads "
                         f"and writes float weights. Use the float model it was quantized from, or "
                         f"quantize in QDQ form (DequantizeLinear on the weights), which frontc "
                         f"dequantizes when reading a source")
    if qdq and not dequantize:
        raise InputError(f"{where}: is quantized ({len(qdq)} weights stored as integers behind "
                         f"DequantizeLinear); frontc writes float weights into the target's own "
                         f"tensors. Initialize the float model, then quantize the output")
    for node in qdq:
        _fold_dequantize(graph, node, where)


def _fold_dequantize(graph: ir.Graph, node: ir.Node, where: str) -> None:
    """Replace DequantizeLinear(x, scale, zero_point) of constants by a float initializer."""
    out = node.outputs[0]
    x, scale = _constant(node.inputs[0]), _constant(node.inputs[1] if len(node.inputs) > 1 else None)
    zero = _constant(node.inputs[2]) if len(node.inputs) > 2 else None
    if scale is None or out.is_graph_output() or (len(node.inputs) > 2 and node.inputs[2] is not None
                                                  and zero is None):
        return  # not a constant weight: leave it, it is run-time dequantization
    try:
        q = np.asarray(x.numpy(), dtype=np.float64)
        s = np.asarray(scale.numpy(), dtype=np.float64)
        z = np.asarray(zero.numpy(), dtype=np.float64) if zero is not None else np.zeros_like(s)
        if s.shape != z.shape:
            raise ValueError(f"scale {list(s.shape)} and zero point {list(z.shape)} differ in shape")
        axis = node.attributes.get("axis")
        axis = 1 if axis is None else int(axis.value)
        block = node.attributes.get("block_size")
        block = 0 if block is None else int(block.value)
        if s.size == 1 and s.ndim <= 1 and not block:
            values = (q - z.reshape(())) * s.reshape(())
        else:
            axis = axis + q.ndim if axis < 0 else axis
            if not 0 <= axis < q.ndim:
                raise ValueError(f"axis {axis} is out of range for a rank-{q.ndim} tensor")
            if block:
                s = np.repeat(s, block, axis=axis)
                z = np.repeat(z, block, axis=axis)
                index = [slice(None)] * q.ndim
                index[axis] = slice(0, q.shape[axis])
                s, z = s[tuple(index)], z[tuple(index)]
            else:
                if s.ndim != 1 or s.shape[0] != q.shape[axis]:
                    raise ValueError(f"scale of shape {list(s.shape)} does not fit axis {axis} of "
                                     f"shape {list(q.shape)}")
                shape = [1] * q.ndim
                shape[axis] = -1
                s, z = s.reshape(shape), z.reshape(shape)
            values = (q - z) * s
    except Exception as err:
        raise InputError(f"{where}: cannot dequantize the weight of {_node_name(node)}: "
                         f"{_brief(err)}") from None
    dtype = scale.dtype
    attr = node.attributes.get("output_dtype")
    if attr is not None and int(attr.value):
        dtype = ir.DataType(int(attr.value))
    tensor = ir.Tensor(values.astype(dtype.numpy()), name=out.name)
    value = ir.Value(name=None, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
    out.replace_all_uses_with(value)
    name = out.name
    inputs = [v for v in node.inputs if v is not None]
    graph.remove(node, safe=True)
    value.name = name
    graph.register_initializer(value)
    for v in inputs:  # drop the integer tensors (and their Constant nodes) nothing reads now
        if v.uses() or v.is_graph_output() or v.is_graph_input():
            continue
        if v.is_initializer():
            graph.initializers.pop(v.name, None)
        elif v.producer() is not None and v.producer().op_type == "Constant":
            graph.remove(v.producer(), safe=True)


# ------------------------------------------------------------------------ output

def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None)


def refuse_overwriting_inputs(output: Path, inputs: list[Path]) -> None:
    out = Path(output).resolve()
    for path in inputs:
        src = Path(path).resolve()
        if out == src or out.with_name(out.name + ".data") == src.with_name(src.name + ".data"):
            raise InputError(f"output {output} would overwrite the input {path}: choose another -o")
        data = src.with_name(src.name + ".data")
        if out == data:
            raise InputError(f"output {output} would overwrite the input {path}'s external data: "
                             f"choose another -o")


_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None),
                             getattr(signal, "SIGHUP", None)) if s is not None)


class _Deferred:
    """Hold SIGINT/SIGTERM/SIGHUP back while files are created, renamed or removed, so that an
    interrupt lands before or after, never in between. Python runs signal handlers in the main
    thread whichever thread the OS delivered the signal to (masking the main thread alone lets
    a worker thread take it), so the handlers themselves are swapped for one that records the
    signal; the first recorded one is raised again, to the restored handler, when the block
    ends. Only in the main thread (elsewhere signal handlers cannot be set)."""

    def __enter__(self):
        self.pending: list[int] = []
        self.old: dict = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            for signum in _SIGNALS:
                self.old[signum] = signal.signal(signum, self._record)
        except BaseException:   # an interrupt while swapping: put back what was swapped
            self._restore()
            raise
        return self

    def _record(self, signum, frame) -> None:
        self.pending.append(signum)

    def _restore(self) -> None:
        for signum, handler in self.old.items():   # None: a handler set outside Python
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self.old = {}

    def __exit__(self, *exc) -> None:
        self._restore()
        if self.pending:
            signal.raise_signal(self.pending[0])


class AtomicOutput:
    """`with AtomicOutput(final) as tmp:` write to `tmp`; renamed to `final` only on success.

    `tmp` lies in a temporary folder `.NAME.XXXX` beside `final`; the folder is removed
    whatever happens (an exception, KeyboardInterrupt, or the SIGTERM the CLI turns into one).
    A sidecar `<name>.data` (external data) written next to `tmp` moves along with it. An
    existing `final` is replaced whole (os.replace) or not at all; interrupts are held back
    during the renames and the cleanup.
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.folder: Path | None = None

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _Deferred():
                self.folder = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.",
                                                    dir=self.final.parent))
                tmp = self.folder / self.final.name
            return tmp
        # an interrupt held back above lands here (even in a Python-level call such as Path's /,
        # which is why the path is made inside the block): __exit__ will not run
        except BaseException:
            if self.folder is not None:
                _remove(self.folder)
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        with _Deferred():
            try:
                if exc_type is None:
                    data = self.folder / (self.final.name + ".data")
                    if data.exists():
                        os.replace(data, self.final.with_name(self.final.name + ".data"))
                    os.replace(self.folder / self.final.name, self.final)
            finally:
                _remove(self.folder)


def _remove(folder: Path) -> None:
    """rmtree, again if something (the checking child, still exiting) wrote into it meanwhile."""
    for _ in range(20):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.05)


def save(model: ir.Model, path: Path) -> None:
    """Save `model` to `path`; tensors go to `<name>.data` when the file would pass 2 GB."""
    if tensor_bytes(model) > PROTOBUF_LIMIT:
        ir.save(model, path, external_data=path.name + ".data")
        return
    # Tensors still in the input's external data file would be saved as references relative to
    # the new file: read them in, so the output stands on its own.
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            value.const_value = ir.Tensor(value.const_value.numpy(), name=value.name)
    if onnx.serialization.registry.get_format_from_file_extension(path.suffix) not in (None, "protobuf"):
        ir.save(model, path)                 # a text format asked for by the file name
        return
    write_streamed(model, path)


# Initializers from this size on are written one at a time after the rest of the model.
STREAM_BYTES = 1 << 16


def _tensor_parts(name: str, tensor) -> list:
    """The TensorProto encoding of `tensor` as a list of buffers. A plain in-memory tensor's
    values are written straight from its array (raw_data last, after the header fields); any
    other kind goes through onnx_ir's serializer."""
    array = tensor.numpy() if type(tensor) is ir.Tensor else None
    if array is not None and tensor.dtype.bitwidth >= 8 and array.flags.c_contiguous and \
            array.dtype.itemsize * 8 == tensor.dtype.bitwidth and \
            array.dtype.byteorder in "=<|" and np.little_endian:
        header = onnx.TensorProto(name=name, data_type=tensor.dtype.value,
                                  dims=[int(d) for d in tensor.shape])
        if tensor.doc_string:
            header.doc_string = tensor.doc_string
        for key, text in tensor.metadata_props.items():
            header.metadata_props.add(key=key, value=text)
        data = memoryview(array.reshape(-1).view(np.uint8))
        return [header.SerializeToString(), field_header(9, data.nbytes), data]
    tensor.name = name                       # as onnx_ir's serializer does for initializers
    return [ir.serde.serialize_tensor(tensor).SerializeToString()]


def write_streamed(model: ir.Model, path: Path) -> None:
    """Write `model` as one protobuf file without ever holding a serialized copy of it: the
    model without its large initializers first, then each of them as a further `graph` field
    holding one initializer (protobuf merges repeated occurrences of a message field, so
    readers see one graph with every initializer; only the initializers' order differs).
    ir.save builds the whole ModelProto and its serialized string, two copies of every weight
    in fresh memory, which on a VM costs more than the copies themselves (docs/performance.md)."""
    graph = model.graph
    large = {v.name: v.const_value for v in graph.initializers.values()
             if v.const_value is not None and v.const_value.nbytes >= STREAM_BYTES}
    for name in large:                       # serialized as empty stand-ins, removed below
        graph.initializers[name].const_value = ir.Tensor(np.zeros(0, np.uint8), name=name)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for name, tensor in large.items():
            graph.initializers[name].const_value = tensor
    initializers = proto.graph.initializer
    for i in reversed(range(len(initializers))):
        if initializers[i].name in large:
            del initializers[i]
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
        del proto
        for name, tensor in large.items():
            parts = _tensor_parts(name, tensor)
            size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
            inner = field_header(5, size)          # GraphProto.initializer
            f.write(field_header(7, len(inner) + size) + inner)   # ModelProto.graph
            for part in parts:
                f.write(part)
