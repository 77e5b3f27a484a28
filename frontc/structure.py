"""Blocks and depth groups from graph structure alone (names are never read).

1. Units: an op that holds weights (linear, conv, norm, embedding, ...) together with the ops
   that only add parameters to its output (a bias Add, a BatchNormalization after a Conv). A
   Gemm and a MatMul followed by a bias Add are the same unit, so exporters agree.
2. The backbone: the chain of immediate post-dominators from the first unit to the graph
   outputs (networkx dominators on the reversed op graph). Every tensor on it carries all the
   information of the model: the residual stream after each Add, every tensor of a plain chain.
3. Segments: each node belongs to the first backbone node on its own post-dominator chain. A
   segment's *skeleton* keeps its units and the ops that join two activations (residual Add,
   attention MatMul, Softmax); every other op is contracted into the edges, so reshapes, casts
   and activation spellings that differ between exporters do not matter. The skeleton's
   Weisfeiler-Lehman hash is the segment's token: equal for equal blocks at any width.
   Side inputs that post-dominate late (attention masks) stay out: only what is reachable from
   the previous backbone node, and the units, form the skeleton.
4. Runs: consecutive repeats of a unit of segments with equal tokens and equal weight shapes are
   one run of blocks (a stage); when the same repeats also fit one segment later, the block
   starts there (a post-LN transformer's embedding LayerNorm is not part of its first layer). Each repeat is verified with networkx's DiGraphMatcher, which
   also fixes the order of units inside a block; the same role across the blocks of a run is a
   depth group.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import networkx as nx
import onnx
import onnx_ir as ir
from networkx.algorithms.isomorphism import DiGraphMatcher

from frontc.heads import Heads, detect
from frontc.weights import Weight, WeightIndex

SINK = -1
# networkx >= 3.5 warns that directed WL hashes changed once; frontc only compares its own hashes.
warnings.filterwarnings("ignore", message="The hashes produced for directed graphs")

_MARKERS = {"Add", "Sub", "Mul", "MatMul", "Softmax", "Concat"}
_COMMUTATIVE = {"Add", "Mul", "Sum", "Max", "Min"}
_LINEAR = {"Gemm", "MatMul"}


@dataclass
class Unit:
    """A weight-holding op and the parameter-only ops attached to its output."""

    op: ir.Node
    weights: list[Weight]
    label: str
    parts: tuple[int, ...] = ()     # separate q, k, v projections merged: weights per part

    def slots(self) -> dict[tuple[str, int], Weight]:
        """Weights keyed by (kind, occurrence), the key that pairs them across models."""
        keyed: dict[tuple[str, int], Weight] = {}
        for w in self.weights:
            n = sum(1 for k in keyed if k[0] == w.slot)
            keyed[w.slot, n] = w
        return keyed


@dataclass
class Segment:
    token: str                      # structure hash: equal for blocks of one kind, any width
    skeleton: nx.DiGraph            # units and join ops; node attr "unit" for units
    units: list[Unit]               # in canonical order

    @property
    def shapes(self) -> tuple:
        return tuple(tuple((w.slot, w.shape) for w in u.weights) for u in self.units)


@dataclass
class Block:
    segments: list[Segment]

    @property
    def units(self) -> list[Unit]:
        return [u for seg in self.segments for u in seg.units]

    @property
    def ops(self) -> list[ir.Node]:
        return [u.op for u in self.units]


@dataclass
class Run:
    """`count` consecutive blocks of one unit; repeated runs give depth groups."""

    unit: tuple[str, ...]
    blocks: list[Block] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.blocks)


@dataclass
class Structure:
    index: WeightIndex
    segments: list[Segment]
    orphans: list[Unit]             # units off every segment (dead code)
    heads: dict[ir.Node, Heads] = field(default_factory=dict)   # linear unit op -> its heads
    unit_of: dict[str, ir.Node] = field(default_factory=dict)    # weight name -> its own unit op

    def heads_of(self, weight: Weight) -> Heads | None:
        """The heads along `weight`'s canonical axes (a projection's weight or bias)."""
        found = getattr(weight, "heads", None) or self.heads.get(self.unit_of.get(weight.name))
        if found is None or (found.axis == "in" and weight.slot != "linear.weight"):
            return None
        return found

    def runs(self, vocabulary: set[tuple[str, ...]] = frozenset()) -> list[Run]:
        return encode(self.segments, vocabulary)


def _default(node: ir.Node, name: str):
    """The schema default of an attribute, so that `axis=0` written out equals it left out."""
    try:
        schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=99, domain=node.domain)
        attr = schema.attributes[name].default_value
        return onnx.helper.get_attribute_value(attr) if attr.type else None
    except Exception:  # unknown op or attribute: no default to compare against
        return None


def _attrs(node: ir.Node) -> list[str]:
    out = []
    for name in ("kernel_shape", "strides", "dilations", "axis", "perm"):
        attr = node.attributes.get(name)
        if attr is None:
            continue
        value = tuple(attr.value) if isinstance(attr.value, (list, tuple)) else attr.value
        default = _default(node, name)
        if value == (tuple(default) if isinstance(default, list) else default):
            continue
        if name in ("strides", "dilations") and set(value) == {1}:
            continue
        out.append(f"{name}={value}")
    return out


def _unit_label(op: ir.Node, weights: list[Weight]) -> str:
    """Op kind and width-free attributes; biases and BatchNorm are left out, since exporters
    differ in whether they keep them apart or fold them in."""
    if op.op_type in _LINEAR:
        return "linear"
    if op.op_type in ("Conv", "ConvTranspose"):
        w = next((w for w in weights if w.slot == "conv.weight"), None)
        group = op.attributes.get("group")
        group = 1 if group is None else group.value
        kind = "1" if group == 1 else ("dw" if w is not None and w.shape[1] == 1 else "g")
        kernel = () if w is None else tuple(w.shape[2:])
        skip = {"kernel_shape"}
        return "|".join([op.op_type, f"group={kind}", f"kernel={kernel}"] +
                        [a for a in _attrs(op) if a.split("=")[0] not in skip])
    ranks = sorted(f"{w.slot}/{len(w.shape)}" for w in weights if w.op is op)
    return "|".join([op.op_type] + _attrs(op) + ranks)


def _is_dynamic(value: ir.Value | None, constant: set) -> bool:
    """True for an activation; False for initializers, Constant outputs and weight plumbing."""
    if value is None or value.const_value is not None:
        return False
    producer = value.producer()
    return producer is None or (producer not in constant and producer.op_type != "Constant")


def _units(index: WeightIndex, nodes: list[ir.Node]) -> tuple[dict, dict]:
    """(primary op -> Unit, attached op -> its primary op)."""
    attached: dict[ir.Node, ir.Node] = {}
    for op in nodes:
        weights = index.of(op)
        if not weights or op.op_type not in ("Add", "BatchNormalization"):
            continue
        inputs = [v for v in op.inputs if v is not None and v.const_value is None
                  and v.producer() is not None and v.producer() not in index.plumbing]
        if len(inputs) != 1:
            continue
        producer = inputs[0].producer()
        if producer.op_type in ("Conv", "ConvTranspose", *_LINEAR) and index.of(producer) and \
                (op.op_type == "BatchNormalization" or all(sum(d > 1 for d in w.shape) == 1 for w in weights)):
            attached[op] = attached.get(producer, producer)
    units: dict[ir.Node, Unit] = {}
    for op in nodes:
        if index.of(op) and op not in attached:
            units[op] = Unit(op, list(index.of(op)), "")
    for op, primary in attached.items():
        for w in index.of(op):
            if op.op_type == "Add":  # a bias: name its kind after the op it belongs to
                w.slot = ("linear" if primary.op_type in _LINEAR else "conv") + ".bias"
            units[primary].weights.append(w)
    for unit in units.values():
        role = ("|stem" if _reads_graph_input(unit.op, units, index) else "") + (
            "|head" if any("class" in w.roles for w in unit.weights) else "")
        unit.label = _unit_label(unit.op, unit.weights) + role
    return units, attached


def _reads_graph_input(op: ir.Node, units: dict, index: WeightIndex) -> bool:
    """Whether a graph input reaches `op` through weight-free ops only: the stem reads the data
    itself, a hidden layer reads another layer (this tells them apart when shapes coincide)."""
    stack, seen = [v for v in op.inputs if _is_dynamic(v, index.plumbing)], set()
    while stack:
        value = stack.pop()
        producer = value.producer()
        if producer is None:
            if value.is_graph_input():
                return True
            continue
        if producer in units or producer in seen or producer.op_type in ("Shape", "Size"):
            continue
        seen.add(producer)
        stack.extend(v for v in producer.inputs if _is_dynamic(v, index.plumbing))
    return False


def analyze(model: ir.Model, index: WeightIndex) -> Structure:
    nodes = [n for n in model.graph if n not in index.plumbing and n.op_type != "Constant"]
    number = {n: i for i, n in enumerate(nodes)}
    units, attached = _units(index, nodes)
    heads = detect(units, attached, index)
    unit_of = {w.name: op for op, u in units.items() for w in u.weights}
    # Shape arithmetic (Shape -> Gather -> Concat -> Reshape's shape input) and constant
    # folding left undone are exporter noise: a node that holds no weights and whose every
    # activation input (none at all, for constant computations) comes from such nodes is one.
    # They stay out of the graph: reading a tensor's shape is no data path (a BERT mask built
    # from Shape(hidden states) would otherwise tie every layer to the embeddings).
    shapes: set[int] = set()
    for i, n in enumerate(nodes):
        if n in units or n in attached:
            continue
        dynamic = [v for v in n.inputs if _is_dynamic(v, index.plumbing)]
        if n.op_type in ("Shape", "Size") or all(
                v.producer() in number and number[v.producer()] in shapes for v in dynamic):
            shapes.add(i)

    graph = nx.DiGraph()
    graph.add_nodes_from(i for i in range(len(nodes)) if i not in shapes)
    for i, n in enumerate(nodes):
        for port, value in enumerate(n.inputs):
            producer = value.producer() if value is not None else None
            if producer in number and i not in shapes and number[producer] not in shapes:
                j = number[producer]
                old = graph.edges[j, i]["port"] + "," if graph.has_edge(j, i) else ""
                graph.add_edge(j, i, port=old + str(port))
    graph.add_node(SINK)
    for value in model.graph.outputs:
        if value.producer() in number and number[value.producer()] not in shapes:
            graph.add_edge(number[value.producer()], SINK, port="out")

    ipdom = nx.immediate_dominators(graph.reverse(copy=False), SINK)
    holders = [number[op] for op in units if number[op] in ipdom]
    orphans = [u for op, u in units.items() if number[op] not in ipdom]
    if not holders:
        return Structure(index, [], orphans, heads, unit_of)
    chain = [min(holders)]
    while chain[-1] != SINK:
        chain.append(ipdom[chain[-1]])
    position = {c: k for k, c in enumerate(chain)}

    owner: dict[int, int] = {}
    for v in ipdom:
        path = []
        while v not in position and v not in owner:
            path.append(v)
            v = ipdom[v]
        end = position[v] if v in position else owner[v]
        for u in path:
            owner[u] = end
    members: dict[int, set[int]] = {k: {c} for k, c in enumerate(chain)}
    for v, k in owner.items():
        members[k].add(v)

    alias = _merge_qkv(graph, nodes, units, heads, number)

    def is_kept(v: int) -> bool:
        node = nodes[v]
        if node in units:
            return v not in alias
        if node in attached or node.op_type not in _MARKERS or v in shapes:
            return False
        return sum(_is_dynamic(x, index.plumbing) and number.get(x.producer(), -2) not in shapes
                   for x in node.inputs) >= 2

    segments = []
    for k, c in enumerate(chain):
        inside = members[k] - {SINK}
        core = {v for v in inside if nodes[v] in units}
        if k > 0:
            reach = nx.descendants(graph.subgraph(inside | {chain[k - 1]}), chain[k - 1])
            core |= reach - {SINK}
        elif c != SINK:
            core.add(c)
        if not any(nodes[v] in units for v in core):
            continue  # weight-free stretches are contracted into their neighbours
        segments.append(_segment(graph, nodes, units, core - shapes, is_kept, alias))
    return Structure(index, segments, orphans, heads, unit_of)


def _first_attention_matmul(graph: nx.DiGraph, nodes, units, start: int) -> tuple[int, str] | None:
    """(node, entry port) of the first MatMul of two activations downstream of `start`."""
    stack, seen = [start], {start}
    while stack:
        u = stack.pop()
        for w in graph.successors(u):
            if w == SINK or w in seen:
                continue
            if nodes[w].op_type == "MatMul" and nodes[w] not in units:
                return w, graph.edges[u, w]["port"]
            seen.add(w)
            stack.append(w)
    return None


def _merge_qkv(graph: nx.DiGraph, nodes, units: dict, heads: dict, number: dict) -> dict[int, int]:
    """Separate q, k and v projections of one attention become one unit, like a fused qkv
    projection: three linear units with heads on their output that read one activation, where
    q enters the scores MatMul first, k second, and v the MatMul with the attention weights.
    Returns member node -> the merged unit's node (q's); `units` gets the merged unit."""
    readers: dict[int, list[ir.Node]] = {}
    for op, unit in units.items():
        h = heads.get(op)
        if h is None or h.axis != "out" or len(h.groups) != 1 or number.get(op) not in graph:
            continue
        sources = tuple(sorted(graph.predecessors(number[op])))
        if len(sources) == 1:
            readers.setdefault(sources[0], []).append(op)
    alias: dict[int, int] = {}
    for ops in readers.values():
        if len(ops) != 3:
            continue
        entry = {op: _first_attention_matmul(graph, nodes, units, number[op]) for op in ops}
        if None in entry.values():
            continue
        by_role = {}
        for op, (matmul, port) in entry.items():
            shared = [o for o in ops if entry[o][0] == matmul]
            role = ("q" if port == "0" else "k") if len(shared) == 2 else ("v" if port == "1" else None)
            by_role[role] = op
        if set(by_role) != {"q", "k", "v"}:
            continue
        q, k, v = (units[by_role[r]] for r in "qkv")
        units[q.op] = Unit(q.op, q.weights + k.weights + v.weights, q.label,
                           (len(q.weights), len(k.weights), len(v.weights)))
        alias[number[k.op]] = alias[number[v.op]] = number[q.op]
    return alias


def _segment(graph: nx.DiGraph, nodes, units, core: set[int], is_kept, alias=None) -> Segment:
    """Contract a segment's core into its skeleton, hash it, order its units canonically.
    Nodes in `alias` (merged q/k/v projections) stand for the node they map to."""
    alias = alias or {}
    kept = [v for v in sorted(core) if is_kept(v)]
    skeleton = nx.DiGraph()
    for v in kept:
        node = nodes[v]
        unit = units.get(node)
        skeleton.add_node(v, label=unit.label if unit else f"join:{node.op_type}", unit=unit)
    ports: dict[tuple[int, int], set[str]] = {}
    for v in kept:  # every contracted path from v to a kept node, with the ports it enters by
        starts = [v] + [m for m, r in alias.items() if r == v and m in core]
        stack, seen = list(starts), set(starts)
        while stack:
            u = stack.pop()
            for w in graph.successors(u):
                if w not in core:
                    continue
                kept_w = alias.get(w, w)          # a merged k/v projection stands for its q
                if kept_w in skeleton:
                    if kept_w != v:
                        ports.setdefault((v, kept_w), set()).update(graph.edges[u, w]["port"].split(","))
                elif w not in seen:
                    seen.add(w)
                    stack.append(w)
    for (v, w), entry in ports.items():
        if nodes[w].op_type in _COMMUTATIVE and nodes[w] not in units:   # x + f(x) == f(x) + x
            entry = {f"c{i}" for i in range(len(entry))}
        skeleton.add_edge(v, w, port=",".join(sorted(entry)))
    token = nx.weisfeiler_lehman_graph_hash(skeleton, node_attr="label", edge_attr="port",
                                            iterations=3)
    hashes = nx.weisfeiler_lehman_subgraph_hashes(skeleton, node_attr="label", edge_attr="port",
                                                  iterations=3)
    order = nx.lexicographical_topological_sort(
        skeleton, key=lambda v: (hashes[v][-1] if hashes[v] else skeleton.nodes[v]["label"], v))
    ordered = [skeleton.nodes[v]["unit"] for v in order if skeleton.nodes[v]["unit"] is not None]
    return Segment(token, skeleton, ordered)


def correspondence(a: Segment, b: Segment) -> list[tuple[Unit, Unit]] | None:
    """Pair the units of two segments with equal tokens through a skeleton isomorphism.

    The canonical orders are tried first (cheap); DiGraphMatcher decides when they disagree.
    None when the skeletons are not isomorphic (a hash collision, or unequal structure).
    """
    if len(a.units) != len(b.units):
        return None
    match = lambda x, y: x["label"] == y["label"]  # noqa: E731
    edge = lambda x, y: x["port"] == y["port"]     # noqa: E731
    matcher = DiGraphMatcher(a.skeleton, b.skeleton, node_match=match, edge_match=edge)
    where_a = {id(n["unit"]): v for v, n in a.skeleton.nodes(data=True) if n["unit"] is not None}
    where_b = {id(n["unit"]): v for v, n in b.skeleton.nodes(data=True) if n["unit"] is not None}
    guess = {where_a[id(x)]: where_b[id(y)] for x, y in zip(a.units, b.units)}
    for iso in matcher.isomorphisms_iter():
        if all(iso[v] == w for v, w in guess.items()):
            return list(zip(a.units, b.units))
        units_b = {v: n["unit"] for v, n in b.skeleton.nodes(data=True)}
        return [(x, units_b[iso[where_a[id(x)]]]) for x in a.units]
    return None


def encode(segments: list[Segment], vocabulary=frozenset()) -> list[Run]:
    """Greedy tandem-repeat encoding of the segment sequence into runs of blocks.

    A unit repeats when consecutive copies have equal tokens *and* equal weight shapes. A unit
    from `vocabulary` (the other model's repeated units) is taken even when it occurs once, so a
    target with one block of a stage still lines up with the source's stage.
    """
    keys = [(s.token, s.shapes) for s in segments]
    tokens = [s.token for s in segments]
    lengths = {len(u) for u in vocabulary}
    n = len(segments)

    def repeats(i: int, p: int) -> int:
        reps = 1
        while i + (reps + 1) * p <= n and keys[i + reps * p:i + (reps + 1) * p] == keys[i:i + p]:
            reps += 1
        return reps

    runs: list[Run] = []
    i = 0
    while i < n:
        best = (1, 1)  # (unit length, repeats): the most segments covered, then the shorter unit
        for p in range(1, n - i + 1):
            known = p in lengths and tuple(tokens[i:i + p]) in vocabulary
            if not known and (i + 2 * p > n or keys[i + p] != keys[i]):
                continue
            reps = repeats(i, p)
            if (reps >= 2 or known) and p * reps > best[0] * best[1]:
                best = (p, reps)
        p, reps = best
        if p > 1 and reps > 1 and repeats(i + 1, p) >= reps:
            p, reps = 1, 1  # the same blocks start one segment later: this one opens nothing
        run = Run(tuple(tokens[i:i + p]))
        for r in range(reps):
            run.blocks.append(Block(segments[i + r * p:i + (r + 1) * p]))
        runs.append(run)
        i += p * reps
    return runs


def aligned_blocks(run: Run) -> list[list[Unit]]:
    """The units of every block of `run`, each list ordered like the first block's."""
    first = run.blocks[0]
    out = [first.units]
    for block in run.blocks[1:]:
        units: list[Unit] = []
        for seg0, seg in zip(first.segments, block.segments):
            pairs = correspondence(seg0, seg)
            units.extend(b for _, b in pairs) if pairs else units.extend(seg.units)
        out.append(units)
    return out
