"""Blocks and depth groups from graph structure alone (names are never read).

1. The op graph: ONNX nodes as networkx nodes, labelled by op type, width-free attributes and
   the ranks of their weights; edges labelled by input port. Weight plumbing is folded away.
2. The backbone: the chain of immediate post-dominators from the first op that holds a weight
   to the graph outputs. Every tensor on it carries all the information of the model (a
   residual stream after each Add, every tensor of a plain chain).
3. Segments: each node belongs to the first backbone node on its own post-dominator chain. A
   segment is hashed (Weisfeiler-Lehman) over its core: what is reachable from the previous
   backbone node, plus the nodes that hold weights; side inputs such as attention masks, which
   post-dominate late, stay out of the hash.
4. Runs: consecutive repeats of a unit of segments with equal hashes and equal weight shapes
   are one run of blocks (a stage); the tensors of one role across its blocks form a depth group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import warnings

import networkx as nx
import onnx_ir as ir

from frontc.weights import WeightIndex, Weight

SINK = -1
# networkx >= 3.5 warns that directed WL hashes changed once; frontc only compares hashes it made.
warnings.filterwarnings("ignore", message="The hashes produced for directed graphs")
_WIDTH_ATTRS = {"group", "split", "value", "shape", "num_outputs"}


@dataclass
class Segment:
    token: str                      # structure hash: equal for blocks of one kind, any width
    ops: list[ir.Node]              # the weight-holding ops, in canonical order
    shapes: tuple                   # weight shapes, in the same order

    @property
    def weights(self) -> int:
        return len(self.ops)


@dataclass
class Block:
    segments: list[Segment]

    @property
    def ops(self) -> list[ir.Node]:
        return [op for seg in self.segments for op in seg.ops]


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
    orphans: list[ir.Node]          # weight-holding ops off every segment (dead code)

    def runs(self, vocabulary: set[tuple[str, ...]] = frozenset()) -> list[Run]:
        return encode(self.segments, vocabulary)


def _label(node: ir.Node, index: WeightIndex, weights: dict) -> str:
    parts = [node.domain + "::" + node.op_type]
    for name in sorted(node.attributes):
        attr = node.attributes[name]
        if name in _WIDTH_ATTRS or attr.type not in (
                ir.AttributeType.INT, ir.AttributeType.INTS, ir.AttributeType.FLOAT,
                ir.AttributeType.STRING):
            continue
        parts.append(f"{name}={attr.value}")
    if node.op_type in ("Conv", "ConvTranspose"):
        group = node.attributes.get("group")
        group = group.value if group is not None else 1
        w = next((w for w in index.of(node) if w.slot == "conv.weight"), None)
        kind = "1" if group == 1 else ("dw" if w is not None and w.shape[1] == 1 else "g")
        parts.append(f"group={kind}")
        if w is not None and "kernel_shape" not in node.attributes:
            parts.append(f"kernel={w.shape[2:]}")
    for port, value in enumerate(node.inputs):
        if value is None:
            continue
        w = weights.get((node, port))
        if w is not None:
            parts.append(f"in{port}={w.slot}/{len(w.shape)}")
        elif value.const_value is not None or (
                value.producer() is not None and value.producer() in index.plumbing):
            parts.append(f"in{port}=const")
    return "|".join(parts)


def analyze(model: ir.Model, index: WeightIndex) -> Structure:
    nodes = [n for n in model.graph if n not in index.plumbing and n.op_type != "Constant"]
    number = {n: i for i, n in enumerate(nodes)}
    weights = {(w.op, w.port): w for w in index.weights}
    graph = nx.DiGraph()
    for i, n in enumerate(nodes):
        graph.add_node(i, label=_label(n, index, weights))
    for i, n in enumerate(nodes):
        for port, value in enumerate(n.inputs):
            producer = value.producer() if value is not None else None
            if producer in number:
                j = number[producer]
                old = graph.edges[j, i]["port"] + "," if graph.has_edge(j, i) else ""
                graph.add_edge(j, i, port=old + str(port))
    graph.add_node(SINK, label="SINK")
    for value in model.graph.outputs:
        if value.producer() in number:
            graph.add_edge(number[value.producer()], SINK, port="out")

    ipdom = nx.immediate_dominators(graph.reverse(copy=False), SINK)
    holders = [i for i, n in enumerate(nodes) if index.of(n) and i in ipdom]
    orphans = [n for n in nodes if index.of(n) and number[n] not in ipdom]
    if not holders:
        return Structure(index, [], orphans)
    chain = [holders[0]]
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
    members: dict[int, list[int]] = {k: [c] for k, c in enumerate(chain)}
    for v, k in owner.items():
        members[k].append(v)

    segments = []
    for k, c in enumerate(chain[:-1] if chain[-1] == SINK else chain):
        inside = set(members[k])
        core = {v for v in inside if index.of(nodes[v])} | {c}
        if k > 0:
            core |= {v for v in nx.descendants(graph.subgraph(inside | {chain[k - 1]}), chain[k - 1])}
        sub = graph.subgraph(core)
        token = nx.weisfeiler_lehman_graph_hash(sub, node_attr="label", edge_attr="port",
                                                iterations=3)
        order = nx.lexicographical_topological_sort(sub, key=lambda v: (graph.nodes[v]["label"], v))
        ops = [nodes[v] for v in order if index.of(nodes[v])]
        shapes = tuple(tuple(w.shape for w in index.of(op)) for op in ops)
        segments.append(Segment(token, ops, shapes))
    # The segment of the sink: heads and side branches that end at the outputs.
    tail = [v for v in members.get(len(chain) - 1, []) if v != SINK and index.of(nodes[v])]
    if chain[-1] == SINK and tail:
        sub = graph.subgraph(tail)
        token = nx.weisfeiler_lehman_graph_hash(sub, node_attr="label", edge_attr="port", iterations=3)
        ops = [nodes[v] for v in nx.lexicographical_topological_sort(
            sub, key=lambda v: (graph.nodes[v]["label"], v))]
        segments.append(Segment(token, ops, tuple(tuple(w.shape for w in index.of(op)) for op in ops)))
    return Structure(index, segments, orphans)


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
    runs: list[Run] = []
    i = 0
    while i < n:
        best = (1, 1)  # (unit length, repeats): the most segments covered, then the shorter unit
        for p in range(1, n - i + 1):
            known = p in lengths and tuple(tokens[i:i + p]) in vocabulary
            if not known and (i + 2 * p > n or keys[i + p] != keys[i]):
                continue
            reps = 1
            while i + (reps + 1) * p <= n and keys[i + reps * p:i + (reps + 1) * p] == keys[i:i + p]:
                reps += 1
            if (reps >= 2 or known) and p * reps > best[0] * best[1]:
                best = (p, reps)
        p, reps = best
        run = Run(tuple(tokens[i:i + p]))
        for r in range(reps):
            run.blocks.append(Block(segments[i + r * p:i + (r + 1) * p]))
        runs.append(run)
        i += p * reps
    return runs
