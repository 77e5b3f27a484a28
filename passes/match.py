"""match: decide which source weights initialize which target weights.

Rules:
1. Both models' segment sequences are encoded into runs of blocks, each using the other's
   repeated units as a vocabulary (frontc.structure.encode), so a stage of 12 blocks lines up
   with a stage of 4, or of 1.
2. Runs are aligned in order by their units (a longest common subsequence weighted by unit
   length); unaligned target runs keep their own init, unaligned source runs go unused.
3. In aligned runs, units pair up through an isomorphism of the blocks' skeletons
   (DiGraphMatcher), weights pair up by kind; the same pair across the blocks of a run gives a
   depth group (source layers -> target layers).
4. When the source keeps BatchNormalization after a conv and the target's exporter folded it,
   the source's BatchNorm is folded into its conv weight and bias first; in the opposite case
   the target's BatchNorm is set to pass the source's conv bias through (exact either way).
5. Fused and separate q/k/v (timm's qkv Linear, GPT-2's c_attn vs HF's query/key/value) are
   one unit in both (frontc.structure merges separate ones); a fused source initializes
   separate targets from its q, k and v rows, separate sources a fused target stacked.
6. A pair is refused (the target keeps its own init, with the reason) when the weight kinds or
   view ranks differ, or a fixed axis (vocabulary, class count) has different sizes.
7. An overrides file (`overrides`) pins target tensors to named source tensors, or keeps them
   at their own init, after all of the above (docs/matching.md shows the format).
8. No mapped tensor at all is an error: the models share no structure.
9. Views (how the dct pass reshapes a tensor before its DCT): the published whole view, except
   that conv weights get separate output and input channel axes (`conv_view=separable`, the
   default; `flat` is the published [out*in, kernel]); `heads=aware` gives attention
   projections a head axis of their own (the q/k/v group axis and head_dim fixed, the head
   count resized: frontc.heads finds them). A pair
   whose special views disagree (different head_dim, groups, or only one side has them)
   falls back to the whole view on both sides.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from frontc.errors import InputError, MatchError
from frontc.pipeline import Pass, State
from frontc.plan import (Kept, Mapping, Plan, View, heads_view, separable_view, view_shape,
                         whole_view)
from frontc.structure import Run, Structure, aligned_blocks, correspondence
from frontc.heads import Heads
from frontc.weights import QKVPart, QKVStack, Weight, fold_batchnorm, unfold_batchnorm


def align(source: list[Run], target: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs with equal units, in order, covering the most segments."""
    n, m = len(source), len(target)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            skip = max(best[i + 1][j], best[i][j + 1])
            take = best[i + 1][j + 1] + len(source[i].unit) if source[i].unit == target[j].unit else -1
            best[i][j] = max(skip, take)
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if source[i].unit == target[j].unit and best[i][j] == best[i + 1][j + 1] + len(source[i].unit):
            pairs.append((source[i], target[j]))
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def refusal(source: Weight, target: Weight) -> str | None:
    """Why `source` cannot initialize `target`, or None when it can."""
    if source.slot != target.slot:
        return f"kind differs ({source.slot} in the source, {target.slot} in the target)"
    if len(view_shape(source.shape)) != len(view_shape(target.shape)):
        return f"shapes {list(source.shape)} and {list(target.shape)} have different DCT views"
    fixed = lambda w: sorted(r for r in w.roles if r in ("vocab", "class"))  # noqa: E731
    if fixed(source) != fixed(target):
        return "a head (or embedding) and a layer of another kind cannot initialize each other"
    for role, a, b in zip(target.roles, source.shape, target.shape):
        if role in ("vocab", "class") and a != b:
            what = "class count" if role == "class" else "vocabulary size"
            return f"{what} differs (source {a}, target {b})"
    return None


HEADS = ("whole", "aware")
CONV_VIEWS = ("flat", "separable")


def source_view(weight: Weight, structure: Structure | None, heads: str = "whole",
                conv_view: str = "separable") -> View:
    """The view a tensor is DCT'd in under these options (also what `frontc extract` stores)."""
    special = None
    if conv_view == "separable":
        special = separable_view(weight)
    if special is None and heads == "aware" and structure is not None:
        special = heads_view(weight, structure.heads_of(weight))
    return special or whole_view(weight)


def pair_views(source: Weight, target: Weight, source_structure: Structure | None,
               target_structure: Structure | None, heads: str, conv_view: str) -> tuple[View, View]:
    """Rule 9: both special views when they agree in kind, rank and fixed axes, else whole."""
    a = source_view(source, source_structure, heads, conv_view)
    b = source_view(target, target_structure, heads, conv_view)
    if a.kind == b.kind and a.fixed == b.fixed and len(a.shape) == len(b.shape) and \
            all(x == y for x, y, f in zip(a.shape, b.shape, a.fixed) if f):
        return a, b
    return whole_view(source), whole_view(target)


def split_qkv(slots: dict, heads: Heads | None) -> dict:
    """A fused q/k/v unit's slots as a merged unit's: (kind, 0|1|2) for its q, k, v rows."""
    weight, bias = slots.get(("linear.weight", 0)), slots.get(("linear.bias", 0))
    if weight is None or heads is None or heads.axis != "out" or len(heads.groups) != 3:
        return slots
    out, start = {}, 0
    for i, count in enumerate(heads.groups):
        stop = start + count * heads.head_dim
        part = Heads("out", (count,), heads.head_dim)
        out["linear.weight", i] = QKVPart(weight, start, stop, part)
        if bias is not None:
            out["linear.bias", i] = QKVPart(bias, start, stop, part)
        start = stop
    return out


def stack_qkv(slots: dict, structure: Structure) -> dict:
    """A merged unit's separate q, k, v slots as one fused unit's (stacked along the output)."""
    weights = [slots.get(("linear.weight", i)) for i in range(3)]
    biases = [slots.get(("linear.bias", i)) for i in range(3)]
    if None in weights:
        return slots
    parts = [structure.heads_of(w) for w in weights]
    heads = None
    if None not in parts and len({h.head_dim for h in parts}) == 1:
        heads = Heads("out", tuple(h.groups[0] for h in parts), parts[0].head_dim)
    out = {("linear.weight", 0): QKVStack(weights, heads)}
    if None not in biases:
        out["linear.bias", 0] = QKVStack(biases, heads)
    return out


def stored_names(weight) -> list[str]:
    """The stored tensors a (possibly derived) source weight reads."""
    if isinstance(weight, QKVPart):
        return [weight.fused.name]
    if isinstance(weight, QKVStack):
        return [w.name for w in weight.parts]
    return [weight.name]


def has_bn(unit) -> bool:
    return any(kind.startswith("bn.") for kind, _ in unit.slots())


def new_mapping(targets: list[Weight], sources: list, views=None) -> Mapping:
    """A mapping with the views `views(source, target)` chooses (None: whole views)."""
    mapping = Mapping(targets, sources)
    if views is not None:
        mapping.source_view, mapping.target_view = views(sources[0], targets[0])
    return mapping


def build_plan(source_runs: list[Run], target_runs: list[Run], source_index, target_index,
               views=None, source_structure: Structure | None = None) -> Plan:
    """`views(source weight, target weight)` -> (View, View) for a mapping (default: whole)."""
    plan = Plan()
    for s_run, t_run in align(source_runs, target_runs):
        s_layers, t_layers = aligned_blocks(s_run), aligned_blocks(t_run)
        position_s = {id(u): k for k, u in enumerate(s_layers[0])}
        position_t = {id(u): k for k, u in enumerate(t_layers[0])}
        for s_seg, t_seg in zip(s_run.blocks[0].segments, t_run.blocks[0].segments):
            pairs = correspondence(s_seg, t_seg)
            if pairs is None:
                for t_unit in t_seg.units:
                    kt = position_t[id(t_unit)]
                    plan.kept.extend(Kept(w, "its block hashes like the source's but the graphs differ")
                                     for layer in t_layers for w in layer[kt].weights)
                continue
            for s_unit, t_unit in pairs:
                ks, kt = position_s[id(s_unit)], position_t[id(t_unit)]
                t_slots = t_unit.slots()
                if t_unit.parts and not s_unit.parts and source_structure is not None:
                    source_slots = lambda u: split_qkv(u.slots(), source_structure.heads.get(u.op))  # noqa: E731
                elif s_unit.parts and not t_unit.parts and source_structure is not None:
                    source_slots = lambda u: stack_qkv(u.slots(), source_structure)  # noqa: E731
                elif has_bn(s_unit) and not has_bn(t_unit):
                    source_slots = lambda u: fold_batchnorm(u.slots())  # noqa: E731
                elif has_bn(t_unit) and not has_bn(s_unit):
                    source_slots = lambda u: unfold_batchnorm(u.slots(), t_slots)  # noqa: E731
                else:
                    source_slots = lambda u: u.slots()  # noqa: E731
                s_slots = source_slots(s_unit)
                for key, t_weight in t_unit.slots().items():
                    targets = [layer[kt].slots()[key] for layer in t_layers]
                    s_weight = s_slots.get(key)
                    reason = (f"the source's {s_unit.op.op_type} has no {key[0]} (folded or absent)"
                              if s_weight is None else refusal(s_weight, t_weight))
                    if reason:
                        plan.kept.extend(Kept(t, reason) for t in targets)
                        continue
                    sources = [source_slots(layer[ks])[key] for layer in s_layers]
                    plan.mappings.append(new_mapping(targets, sources, views))
    used = {name for m in plan.mappings for w in m.sources for name in stored_names(w)}
    mapped = {w.name for m in plan.mappings for w in m.targets} | {k.weight.name for k in plan.kept}
    for w in target_index.weights:
        if w.name not in mapped:
            plan.kept.append(Kept(w, "no structural counterpart in the source"))
    plan.unused_sources = [w for w in source_index.weights if w.name not in used]
    return plan


def _read_overrides(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"overrides {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:
        raise InputError(f"overrides {path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({err})") from None
    if not isinstance(data, dict) or set(data) - {"tensors", "keep"} or \
            not isinstance(data.get("tensors", {}), dict) or not isinstance(data.get("keep", []), list):
        raise InputError(f"overrides {path}: expected {{\"tensors\": {{target: source or [sources]}}, "
                         f"\"keep\": [target, ...]}}")
    return data


def apply_overrides(plan: Plan, path: Path, source_index, target_index, views=None) -> None:
    """Pin target tensors to source tensors (one, or one per source layer), or to their own
    init, as a file says: for what structure cannot decide."""
    data = _read_overrides(path)
    targets = {w.name: w for w in target_index.weights}
    sources = {w.name: w for w in source_index.weights}

    def known(name, table, side):
        if name not in table:
            close = difflib.get_close_matches(str(name), list(table), n=3)
            raise InputError(f"overrides {path}: no {side} tensor '{name}'"
                             + (f" (did you mean {', '.join(close)}?)" if close else ""))
        return table[name]

    def release(name):  # the structural plan no longer writes this target
        for m in plan.mappings:
            if any(w.name == name for w in m.targets):
                m.skip.add(name)
        plan.kept[:] = [k for k in plan.kept if k.weight.name != name]

    for name in data.get("keep", []):
        release(known(name, targets, "target").name)
        plan.kept.append(Kept(targets[name], f"kept at its own init by {path.name}"))
    for name, pinned in data.get("tensors", {}).items():
        target = known(name, targets, "target")
        layers = [known(s, sources, "source") for s in ([pinned] if isinstance(pinned, str) else pinned)]
        reason = refusal(layers[0], target) or next(
            (f"source layers differ in shape ({list(w.shape)})" for w in layers if w.shape != layers[0].shape), None)
        if reason:
            raise InputError(f"overrides {path}: {name} <- {', '.join(w.name for w in layers)}: {reason}")
        release(name)
        plan.mappings.append(new_mapping([target], layers, views))


@dataclass(frozen=True)
class Match(Pass):
    name = "match"
    summary = "align blocks and depth groups of the source and the target by structure"
    reads = ('source', 'target')
    writes = ('plan',)
    overrides: str = field(default="", metadata={
        "help": "a JSON/YAML file pinning target tensors to source tensors or to their own init"})
    heads: str = field(default="whole", metadata={"quiet": True, "choices": HEADS, "help": (
        "attention projections: 'whole' matrices (published) or head-'aware' (keep head_dim, "
        "resize the head count, q/k/v apart)")})
    # separable by default since frontc 0.2.0 (chosen from docs/results.md); a recorded
    # pipeline with a plain "match" meant the flat view in 0.1.0 outputs (CHANGELOG.md)
    conv_view: str = field(default="separable", metadata={"quiet": True, "choices": CONV_VIEWS, "help": (
        "conv weights: 'separable' [out, in, kernel] (a DCT over output and input channels "
        "each; default) or the published 'flat' [out*in, kernel]")})

    def run(self, state: State) -> None:
        src, tgt = state.source.structure, state.target.structure
        bare_src, bare_tgt = src.runs(), tgt.runs()
        vocabulary = {r.unit for r in bare_src + bare_tgt if r.count > 1 or len(r.unit) > 1}
        views = lambda s, t: pair_views(s, t, src, tgt, self.heads, self.conv_view)  # noqa: E731
        plan = build_plan(src.runs(vocabulary), tgt.runs(vocabulary),
                          state.source.index, state.target.index, views, src)
        if self.overrides:
            apply_overrides(plan, Path(self.overrides), state.source.index, state.target.index, views)
        if not plan.mappings:
            raise MatchError(
                f"target {state.target.path} shares no structure with source {state.source.path}: "
                f"none of its {len(state.target.index.weights)} weight tensors has a counterpart "
                f"(first target weight op: {state.target.index.weights[0].op.op_type}, first source "
                f"weight op: {state.source.index.weights[0].op.op_type}); both must be one family")
        state.plan = plan
