"""The parameter view: every weight tensor of a model with its canonical layout and axis roles.

A weight is a float tensor with more than one element, stored as an initializer or a Constant
node, and reaching an op either directly or through Identity / Cast / Transpose / Expand nodes
("plumbing"). Its *canonical* layout is PyTorch's: linear weights `[out, in]`, conv weights
`[out, in/groups, *kernel]`. The op that consumes it decides the axis roles; names never do.

Axis roles: out, in, kernel, feature (a per-channel vector), token (positions), unit (size 1),
vocab and class. `vocab` and `class` are FIXED: never DCT-resized (sizes must agree).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

PLUMBING = {"Identity", "Cast", "Transpose"}  # and Expand of a weight (see _stored_tensor)
# Inputs that hold sizes, scales or bounds, never parameters, whatever their dtype.
NOT_PARAMETERS = {"Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 2, 3}, "Clip": {1, 2},
                  "Slice": {1, 2, 3, 4}, "Reshape": {1}, "Expand": {1}, "Tile": {1},
                  "Range": {0, 1, 2}, "ConstantOfShape": {0}, "Where": {0}, "TopK": {1}}
FIXED_ROLES = {"vocab", "class"}
FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}


@dataclass
class Weight:
    """One stored weight tensor as the op that consumes it sees it."""

    name: str                  # the stored tensor's name (initializer name or Constant output)
    holder: ir.Value | ir.Node  # the initializer Value, or the Constant node holding the tensor
    op: ir.Node                # the op that consumes it (after any plumbing)
    port: int                  # which input of `op`
    slot: str                  # e.g. "linear.weight", "conv.bias", "norm.scale", "bn.var"
    perm: tuple[int, ...]      # stored layout -> canonical layout (np.transpose order)
    shape: tuple[int, ...]     # canonical shape
    roles: tuple[str, ...]     # one role per canonical axis
    dtype: ir.DataType
    # Set when the stored tensor is shared with another weight (exporters merge equal tensors,
    # e.g. every LayerNorm scale of an untrained model): emit gives this one a tensor of its own
    # by rewiring input `reader[1]` of node `reader[0]`.
    reader: tuple[ir.Node, int] | None = None

    @property
    def tensor(self) -> ir.TensorProtocol:
        if isinstance(self.holder, ir.Value):
            return self.holder.const_value
        if self.holder.op_type == "ConstantOfShape":
            return _placeholder(self.holder)
        return self.holder.attributes["value"].value

    def array(self) -> np.ndarray:
        """The tensor in canonical layout, as float64."""
        return np.transpose(np.asarray(self.tensor.numpy(), dtype=np.float64), self.perm)

    def store(self, canonical: np.ndarray) -> ir.Tensor:
        """A tensor in the stored layout and dtype holding `canonical` (the inverse of array())."""
        stored = np.transpose(canonical, np.argsort(self.perm))
        return ir.Tensor(stored.astype(self.tensor.numpy().dtype), name=self.name)

    @property
    def fixed(self) -> tuple[bool, ...]:
        return tuple(r in FIXED_ROLES for r in self.roles)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class WeightIndex:
    """All weights of a model, and which ops consume which weights."""

    weights: list[Weight] = field(default_factory=list)
    by_op: dict[ir.Node, list[Weight]] = field(default_factory=dict)
    plumbing: set[ir.Node] = field(default_factory=set)   # Constant and plumbing nodes of weights

    def of(self, op: ir.Node) -> list[Weight]:
        return self.by_op.get(op, [])


def _stored_tensor(value: ir.Value):
    """(holder, tensor, perm, plumbing nodes) if `value` is a constant weight, else None."""
    steps: list[tuple[int, ...] | None] = []
    chain = []
    while True:
        if value.const_value is not None:
            holder, tensor = value, value.const_value
            break
        node = value.producer()
        if node is None:
            return None
        if node.op_type == "Constant" and "value" in node.attributes:
            holder, tensor = node, node.attributes["value"].value
            chain.append(node)
            break
        if node.op_type == "ConstantOfShape" and node.inputs and node.inputs[0] is not None \
                and node.inputs[0].const_value is not None:
            holder, tensor = node, _placeholder(node)  # a weight made at run time (model zoo)
            chain.append(node)
            break
        # Expand only broadcasts a weight (a class token over the batch): it is plumbing too.
        single = len(node.inputs) == 1 or node.op_type == "Expand"
        if node.op_type not in PLUMBING | {"Expand"} or not single or node.inputs[0] is None:
            return None
        chain.append(node)
        if node.op_type == "Transpose":
            step = node.attributes.get("perm")
            steps.append(tuple(step.value) if step is not None else None)  # None: reverse all
        value = node.inputs[0]
    if tensor.dtype not in FLOAT_TYPES or tensor.size <= 1:
        return None
    rank = len(tensor.shape)
    perm = tuple(range(rank))  # maps the consumer's view back to stored axes, outermost last
    for step in steps:
        step = step or tuple(reversed(range(rank)))
        perm = tuple(step[i] for i in perm)
    return holder, tensor, perm, chain


def _is_attention_mask(op: ir.Node, port: int) -> bool:
    """A constant added to (or selected into) attention scores is a mask an exporter folded,
    not a parameter: its other operand comes from a MatMul of two activations, possibly
    scaled on the way."""
    if op.op_type not in ("Add", "Sub", "Where"):
        return False
    for i, value in enumerate(op.inputs):
        for _ in range(3):
            node = value.producer() if i != port and value is not None else None
            if node is None:
                break
            if node.op_type == "MatMul":
                return all(v is not None and _stored_tensor(v) is None and v.producer() is not None
                           and v.producer().op_type != "Constant" for v in node.inputs)
            if node.op_type not in ("Div", "Mul") or not node.inputs:
                break
            value = node.inputs[0]
    return False


def _placeholder(node: ir.Node) -> ir.Tensor:
    shape = tuple(int(d) for d in node.inputs[0].const_value.numpy())
    fill = node.attributes.get("value")
    fill = fill.value.numpy().reshape(-1)[0] if fill is not None else np.float32(0)
    return ir.Tensor(np.full(shape, fill), name=node.outputs[0].name)


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _roles(op: ir.Node, port: int, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...], tuple[str, ...]]:
    """(slot, extra permutation to canonical, axis roles) for a weight at op input `port`."""
    rank = len(shape)
    kind = op.op_type
    ident = tuple(range(rank))
    if kind == "Gemm" and rank == 2 and port == 1:
        swap = not _attr(op, "transB", 0)
        return "linear.weight", (1, 0) if swap else ident, ("out", "in")
    if kind == "Gemm" and rank == 2 and port == 0:  # W @ x written as Gemm(W, x)
        return "linear.weight", (1, 0) if _attr(op, "transA", 0) else ident, ("out", "in")
    if kind == "Gemm" and port == 2 and rank == 1:
        return "linear.bias", ident, ("out",)
    if kind == "MatMul" and rank == 2:
        # x @ W with W [in, out]: canonical [out, in]; W @ x keeps [out, in].
        return "linear.weight", (1, 0) if port == 1 else ident, ("out", "in")
    if kind in ("Conv", "ConvTranspose") and port == 1 and rank >= 3:
        first, second = ("out", "in") if kind == "Conv" else ("in", "out")
        return "conv.weight", ident, (first, second) + ("kernel",) * (rank - 2)
    if kind in ("Conv", "ConvTranspose") and port == 2:
        return "conv.bias", ident, ("out",)
    if kind == "Gather" and port == 0 and rank == 2 and _attr(op, "axis", 0) == 0:
        return "embedding.table", ident, ("vocab", "feature")
    if kind in ("LayerNormalization", "InstanceNormalization", "SimplifiedLayerNormalization") and rank == 1:
        return ("norm.scale" if port == 1 else "norm.bias"), ident, ("feature",)
    if kind == "BatchNormalization" and rank == 1:
        return ("bn.scale", "bn.bias", "bn.mean", "bn.var")[port - 1], ident, ("feature",)
    if kind == "Add" and sum(n > 1 for n in shape) == 1 and shape[-1] > 1 and any(
            v is not None and v.producer() is not None and v.producer().op_type == "MatMul"
            for v in op.inputs):
        return "linear.bias", ident, ("unit",) * (rank - 1) + ("out",)  # [out] or [1, out]
    # Anything else (bias Add, RMS-style Mul scale, position embedding, class token, ...):
    # size-1 axes are units, the last axis is the feature axis, the others are token axes.
    roles = tuple("unit" if n == 1 else ("feature" if i == rank - 1 else "token")
                  for i, n in enumerate(shape))
    slot = "vector" if sum(n > 1 for n in shape) == 1 else "tensor"
    return f"{kind.lower()}.{slot}", ident, roles


def index_weights(model: ir.Model) -> WeightIndex:
    """Find every weight of the main graph and derive its canonical layout and axis roles."""
    index = WeightIndex()
    seen: dict[int, int] = {}   # id(holder) -> copies made so far
    for op in model.graph:
        if op.op_type in PLUMBING or op.op_type == "Constant" or (
                op.op_type == "Expand" and _stored_tensor(op.inputs[0]) is not None):
            continue
        for port, value in enumerate(op.inputs):
            if value is None or port in NOT_PARAMETERS.get(op.op_type, ()):
                continue
            found = _stored_tensor(value)
            if found is None:
                continue
            holder, tensor, perm, chain = found
            if _is_attention_mask(op, port):
                continue
            index.plumbing.update(chain)
            stored_shape = tuple(int(d) for d in tensor.shape)
            view_shape = tuple(stored_shape[p] for p in perm)
            slot, extra, roles = _roles(op, port, view_shape)
            perm = tuple(perm[p] for p in extra)
            name = holder.name if isinstance(holder, ir.Value) else holder.outputs[0].name
            reader = None
            readers = [(op, port)] + [(node, 0) for node in chain]
            if id(holder) in seen:  # shared: the first consumer owns it, the others get copies
                seen[id(holder)] += 1
                name = f"{name}__{seen[id(holder)]}"
                reader = readers[-2] if isinstance(holder, ir.Node) else readers[-1]
            elif isinstance(holder, ir.Node) and holder.op_type == "ConstantOfShape":
                reader = readers[-2]  # a run-time placeholder is replaced by an initializer
            seen.setdefault(id(holder), 0)
            weight = Weight(name=name, holder=holder, op=op, port=port, slot=slot, perm=perm,
                            shape=tuple(stored_shape[p] for p in perm), roles=roles,
                            dtype=tensor.dtype, reader=reader)
            index.weights.append(weight)
            index.by_op.setdefault(op, []).append(weight)
    _mark_heads(model, index)
    return index


def _mark_heads(model: ir.Model, index: WeightIndex) -> None:
    """A linear op whose output reaches a graph output through weight-free ops is a head:
    its out axis counts classes, which is fixed (the head is transferred only at equal size)."""
    frontier = [v.producer() for v in model.graph.outputs if v.producer() is not None]
    visited: set[ir.Node] = set()
    while frontier:
        node = frontier.pop()
        if node in visited:
            continue
        visited.add(node)
        weights = index.of(node)
        if any(w.slot == "linear.weight" for w in weights):
            bias_ops = [u.node for o in node.outputs for u in o.uses() if u.node.op_type == "Add"]
            for op in [node] + bias_ops:
                for w in index.of(op):
                    w.roles = tuple("class" if r == "out" else r for r in w.roles)
            continue
        if weights and any(w.slot != "linear.bias" for w in weights):
            continue  # another weight op ends the walk: no head on this path
        frontier.extend(v.producer() for v in node.inputs if v is not None and v.producer() is not None)


@dataclass
class FoldedWeight:
    """A conv weight or bias with the BatchNorm after it folded in, read like a Weight.

    Used when the source keeps BatchNormalization nodes and the target's exporter folded them:
    W' = W * s and b' = beta + (b - mean) * s per output channel, s = gamma / sqrt(var + eps).
    """

    conv: Weight
    bias: Weight | None
    bn: dict[str, Weight]
    eps: float
    part: str  # "conv.weight" or "conv.bias"

    def __getattr__(self, name):  # op, port, roles, dtype, ... as the conv weight has them
        return getattr(self.conv if self.part == "conv.weight" or self.bias is None else self.bias, name)

    @property
    def slot(self) -> str:
        return self.part

    @property
    def name(self) -> str:
        if self.part == "conv.weight":
            return f"{self.conv.name}*{self.bn['bn.scale'].name}"
        return f"{self.bn['bn.bias'].name}+{(self.bias or self.conv).name}*{self.bn['bn.scale'].name}"

    @property
    def shape(self) -> tuple[int, ...]:
        return self.conv.shape if self.part == "conv.weight" else (self.conv.shape[0],)

    def array(self) -> np.ndarray:
        scale = self.bn["bn.scale"].array() / np.sqrt(self.bn["bn.var"].array() + self.eps)
        if self.part == "conv.weight":
            return self.conv.array() * scale.reshape((-1,) + (1,) * (len(self.conv.shape) - 1))
        bias = self.bias.array() if self.bias is not None else 0.0
        return self.bn["bn.bias"].array() + (bias - self.bn["bn.mean"].array()) * scale


def fold_batchnorm(slots: dict) -> dict:
    """Slots of a conv unit with its BatchNorm folded into conv.weight and conv.bias."""
    bn = {k[0]: w for k, w in slots.items() if k[0].startswith("bn.")}
    conv = slots.get(("conv.weight", 0))
    if conv is None or set(bn) != {"bn.scale", "bn.bias", "bn.mean", "bn.var"}:
        return slots
    eps = _attr(bn["bn.scale"].op, "epsilon", 1e-5)
    bias = slots.get(("conv.bias", 0))
    return {("conv.weight", 0): FoldedWeight(conv, bias, bn, eps, "conv.weight"),
            ("conv.bias", 0): FoldedWeight(conv, bias, bn, eps, "conv.bias")}


@dataclass
class StandIn:
    """A source weight seen as another kind (`slot`), or holding one `value` everywhere (a
    constant standardizes to zero and comes back as that value at any size)."""

    like: Weight
    slot: str
    value: float | None = None

    def __getattr__(self, name):
        return getattr(self.like, name)

    @property
    def name(self) -> str:
        return self.like.name if self.value is None else f"{self.slot}={self.value:g}"

    def array(self) -> np.ndarray:
        return self.like.array() if self.value is None else np.full(self.like.shape, self.value)


def unfold_batchnorm(source: dict, target: dict) -> dict:
    """Source slots for a target conv+BatchNorm unit whose source counterpart was folded: the
    target BatchNorm becomes the identity plus the source's bias (mean 0, var 1 - eps, scale 1,
    bias = the source conv's bias), so the pair computes what the source computes."""
    conv, bias = source.get(("conv.weight", 0)), source.get(("conv.bias", 0))
    scale = target.get(("bn.scale", 0))
    if conv is None or bias is None or scale is None or ("conv.bias", 0) in target:
        return source
    eps = _attr(scale.op, "epsilon", 1e-5)
    return {("conv.weight", 0): conv, ("bn.bias", 0): StandIn(bias, "bn.bias"),
            ("bn.scale", 0): StandIn(bias, "bn.scale", 1.0),
            ("bn.mean", 0): StandIn(bias, "bn.mean", 0.0),
            ("bn.var", 0): StandIn(bias, "bn.var", 1.0 - eps)}


@dataclass
class QKVPart:
    """Rows [start, stop) of a fused q/k/v projection's weight or bias: one of q, k or v, read
    like a Weight (a fused source initializing a target with separate projections)."""

    fused: Weight
    start: int
    stop: int
    heads: object = None       # frontc.heads.Heads of this part, when known

    def __getattr__(self, name):
        return getattr(self.fused, name)

    @property
    def name(self) -> str:
        return f"{self.fused.name}[{self.start}:{self.stop}]"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.stop - self.start,) + tuple(self.fused.shape[1:])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def array(self) -> np.ndarray:
        return self.fused.array()[self.start:self.stop]


@dataclass
class QKVStack:
    """Separate q, k, v weights (or biases) stacked along the output axis, read like the weight
    of one fused projection (separate sources initializing a fused target)."""

    parts: list[Weight]
    heads: object = None

    def __getattr__(self, name):
        return getattr(self.parts[0], name)

    @property
    def name(self) -> str:
        return "+".join(w.name for w in self.parts)

    @property
    def shape(self) -> tuple[int, ...]:
        return (sum(w.shape[0] for w in self.parts),) + tuple(self.parts[0].shape[1:])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def array(self) -> np.ndarray:
        return np.concatenate([w.array() for w in self.parts])
