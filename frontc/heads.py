"""Attention heads, read from the graph: which linear layers split their output into heads,
how many, and which ones read heads back in (names are never read).

A projection's output reaches a Reshape that splits its last axis N into [..., H, hd] (q, k or
v), or [..., g, H, hd] (g = 2 or 3: fused k/v or q/k/v, timm's layout), possibly through a bias
Add, casts and a Split of that axis into parts that are reshaped one by one (GPT-2's fused
c_attn; unequal parts are grouped-query attention, fewer k/v heads than q heads). The Reshape's
target shape is read from a constant or from a Concat of constants and dims copied from the
input's shape (Gather of Shape); at most one entry may be unknown (-1, or computed), and the
split is the longest run of trailing entries whose product is N (in a shape of rank 4 or
more: batch, tokens, then the split).

The output projection reads heads back in: its input comes, through reshapes and transposes,
from the attention-times-values MatMul, whose value side leads back to a projection with known
heads; its input axis is [N / hd, hd].
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

_PASS = {"Cast", "Identity", "Dropout"}                      # keep every axis as it is
_TRACE = {"Reshape", "Transpose", "Cast", "Identity", "Expand", "Unsqueeze", "Squeeze",
          "Gather", "Split", "Slice", "Dropout"}              # head plumbing, walking back
LEAD = "lead"                                                 # a dim copied from the input


@dataclass(frozen=True)
class Heads:
    """How one linear layer's canonical axis splits into heads.

    axis 'out': the output axis is [sum(groups) * head_dim] laid out as the groups one after
    another (q, k, v), each [heads, head_dim]; axis 'in': the input axis is [groups[0], head_dim].
    """

    axis: str
    groups: tuple[int, ...]     # heads per group: (H,), (H, H, H) fused qkv, (H, Hkv, Hkv) GQA
    head_dim: int

    @property
    def uniform(self) -> bool:
        return len(set(self.groups)) == 1

    def text(self) -> str:
        if len(self.groups) == 1:
            return f"{self.groups[0]} heads x {self.head_dim}"
        kind = "qkv" if len(self.groups) == 3 else "kv"
        return f"fused {kind} {'/'.join(map(str, self.groups))} heads x {self.head_dim}"


def _constant(value: ir.Value | None):
    if value is None:
        return None
    producer = value.producer()
    if value.const_value is None and producer is not None and producer.op_type == "Constant":
        return producer.attributes["value"].value
    return value.const_value


def _ints(value: ir.Value | None) -> list | None:
    """A 1-D integer constant's entries, or None."""
    tensor = _constant(value)
    if tensor is None or tensor.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
        return None
    try:
        return [int(x) for x in tensor.numpy().reshape(-1)]
    except (TypeError, ValueError):
        return None


def _copied_dim(value: ir.Value) -> bool:
    """True when `value` is a dim read off a tensor's shape (Gather of Shape), as is."""
    node = value.producer()
    while node is not None and node.op_type in ("Unsqueeze", "Squeeze", "Cast", "Reshape", "Identity"):
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    if node is None or node.op_type != "Gather":
        return False
    data = node.inputs[0].producer() if node.inputs[0] is not None else None
    return data is not None and data.op_type == "Shape"


def _shape_entries(value: ir.Value | None) -> list | None:
    """A Reshape's target shape as entries: int, LEAD (copied from the input) or None (unknown)."""
    known = _ints(value)
    if known is not None:
        return [LEAD if d == 0 else (None if d == -1 else d) for d in known]
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Concat":
        return None
    entries: list = []
    for part in producer.inputs:
        ints = _ints(part)
        if ints is not None:
            entries.extend(LEAD if d == 0 else (None if d == -1 else d) for d in ints)
        else:
            entries.append(LEAD if _copied_dim(part) else None)   # one entry per part (rank 1)
    return entries


def split_dims(entries: list, n: int) -> tuple[int, ...] | None:
    """The trailing dims that split an axis of length n ([H, hd] or [g, H, hd]), or None."""
    tail = entries[max((i + 1 for i, e in enumerate(entries) if e == LEAD), default=0):]
    for length in range(len(tail), 1, -1):
        suffix = tail[-length:]
        unknown = [i for i, d in enumerate(suffix) if d is None]
        known = 1
        for d in suffix:
            known *= d if d is not None else 1
        if len(unknown) > 1 or known <= 0 or n % known:
            continue
        if not unknown and known != n:
            continue
        dims = [d if d is not None else n // known for d in suffix]
        while len(dims) > 2 and dims[0] == 1:          # a leading batch or group of one
            dims = dims[1:]
        if len(dims) == 2 and dims[0] * dims[1] == n:
            return tuple(dims)
        if len(dims) == 3 and dims[0] in (2, 3):
            return tuple(dims)
        # e.g. [1, 12, -1, 32] for 12 tokens and 384 features: -1 = 1 fits but splits nothing
    return None


def _output(unit_op: ir.Node, attached: dict[ir.Node, ir.Node]) -> ir.Value:
    """The unit's output: after its bias Add / BatchNorm when they are attached."""
    value = unit_op.outputs[0]
    while True:
        users = [u.node for u in value.uses()]
        nxt = [u for u in users if attached.get(u) is unit_op]
        if len(nxt) != 1:
            return value
        value = nxt[0].outputs[0]


def _scalar_operand(node: ir.Node, value: ir.Value) -> bool:
    """A Mul/Div of `value` by a constant scalar (attention scaling): it keeps every axis."""
    others = [v for v in node.inputs if v is not value]
    return len(others) == 1 and _constant(others[0]) is not None and _constant(others[0]).size == 1


def _forward(value: ir.Value, n: int, depth: int = 0) -> list[tuple[int, int]] | None:
    """[(heads, head_dim) per group] for a tensor whose last axis (length n) splits into heads."""
    if depth > 12:
        return None
    found = None
    for use in value.uses():
        node = use.node
        result = None
        if node.op_type in _PASS or (node.op_type in ("Mul", "Div") and _scalar_operand(node, value)):
            result = _forward(node.outputs[0], n, depth + 1)
        elif node.op_type == "Reshape" and use.idx == 0:
            entries = _shape_entries(node.inputs[1]) or []
            dims = split_dims(entries, n) if len(entries) >= 4 else None   # [batch, tokens, ...]
            if dims is not None:
                g, h, hd = (1,) + dims if len(dims) == 2 else dims
                result = [(h, hd)] * g
            elif entries and entries[-1] == n:                       # only the leading dims move
                result = _forward(node.outputs[0], n, depth + 1)
        elif node.op_type == "Split" and use.idx == 0:
            axis = node.attributes.get("axis")
            sizes = _ints(node.inputs[1]) if len(node.inputs) > 1 else None
            if sizes is None:
                count = node.attributes.get("num_outputs")
                count = count.value if count is not None else len(node.outputs)
                sizes = [n // count] * count if n % count == 0 else None
            if axis is not None and axis.value not in (-1,) and axis.value < 1:
                sizes = None                                        # not the feature axis
            if sizes and sum(sizes) == n:
                parts = [_forward(out, size, depth + 1) for out, size in zip(node.outputs, sizes)]
                if all(p is not None and len(p) == 1 for p in parts):
                    result = [p[0] for p in parts]
        elif node.op_type == "Shape":
            continue
        if result is not None:
            if found is not None and found != result:
                return None                                         # readers disagree
            found = result
    return found


def _heads_out(unit_op: ir.Node, weights, attached) -> Heads | None:
    w = next((w for w in weights if w.slot == "linear.weight"), None)
    if w is None or len(w.shape) != 2 or "class" in w.roles:
        return None
    groups = _forward(_output(unit_op, attached), w.shape[0])
    if not groups or len({hd for _, hd in groups}) != 1:
        return None
    return Heads("out", tuple(h for h, _ in groups), groups[0][1])


def _dynamic(node: ir.Node, plumbing=frozenset()) -> list[ir.Value]:
    """The activation inputs of `node` (no constants, no weights behind plumbing)."""
    return [v for v in node.inputs if v is not None and _constant(v) is None and
            (v.producer() is None or v.producer() not in plumbing)]


def _back_to_unit(value: ir.Value, outputs: dict[ir.Value, ir.Node], depth: int = 0) -> ir.Node | None:
    """The unit whose output `value` comes from through head plumbing only, or None (a
    Concat, e.g. an empty key/value cache in front of the new values, is followed into each
    of its inputs)."""
    if value in outputs:
        return outputs[value]
    node = value.producer()
    if depth > 16 or node is None or not node.inputs or node.inputs[0] is None:
        return None
    if node.op_type == "Concat":
        found = {_back_to_unit(v, outputs, depth + 1) for v in node.inputs if v is not None} - {None}
        return found.pop() if len(found) == 1 else None
    if node.op_type not in _TRACE:
        return None
    return _back_to_unit(node.inputs[0], outputs, depth + 1)


def detect(units: dict, attached: dict, index) -> dict[ir.Node, Heads]:
    """Heads of every linear unit where the graph shows them (unit primary op -> Heads)."""
    heads: dict[ir.Node, Heads] = {}
    outputs: dict[ir.Value, ir.Node] = {}
    for op, unit in units.items():
        if op.op_type in ("MatMul", "Gemm"):
            outputs[_output(op, attached)] = op
            found = _heads_out(op, unit.weights, attached)
            if found is not None:
                heads[op] = found
    for op, unit in units.items():
        w = next((w for w in unit.weights if w.slot == "linear.weight"), None)
        if op in heads or w is None or len(w.shape) != 2:
            continue
        inputs = _dynamic(op, index.plumbing)
        if len(inputs) != 1:
            continue
        value, node = inputs[0], inputs[0].producer()
        while node is not None and node.op_type in ("Reshape", "Transpose", "Cast", "Identity"):
            value = node.inputs[0]
            node = value.producer()
        if node is None or node.op_type != "MatMul" or len(_dynamic(node)) != 2:
            continue
        source = _back_to_unit(node.inputs[1], outputs)            # the values' projection
        found = heads.get(source)
        if found is None or w.shape[1] % found.head_dim:
            continue
        heads[op] = Heads("in", (w.shape[1] // found.head_dim,), found.head_dim)
    return heads


def grouped_query(block_heads: list[Heads]) -> tuple[int, int] | None:
    """(query heads, key/value heads) when one block's projections show grouped-query
    attention: fewer k/v heads than q heads (a fused unequal split, or separate projections
    with two head counts at one head_dim)."""
    for h in block_heads:
        if h.axis == "out" and not h.uniform:
            return max(h.groups), min(h.groups)
    counts = {h.groups[0] for h in block_heads if h.axis == "out" and len(h.groups) == 1}
    return (max(counts), min(counts)) if len(counts) == 2 else None
