"""Plain-data views of a compilation for `plan`, `inspect` and `transfer --report`."""
from __future__ import annotations

from collections import Counter

from frontc.pipeline import State
from frontc.plan import ModelView, view_shape


def plan_rows(state: State) -> list[dict]:
    """One row per target weight: where its values come from, or why it keeps its own init."""
    rows = []
    for m in state.plan.mappings:
        for layer, w in enumerate(m.targets):
            if w.name in m.skip:
                continue
            row = state.report.get(w.name) or {
                "target": w.name, "shape": list(w.shape), "kind": w.slot,
                "sources": [s.name for s in m.sources], "source_shape": list(m.sources[0].shape),
                "depth": f"{len(m.sources)}->{len(m.targets)}", "layer": layer}
            rows.append(row)
    for k in state.plan.kept:
        rows.append({"target": k.weight.name, "shape": list(k.weight.shape), "kind": k.weight.slot,
                     "kept": k.reason})
    return rows


def summary(state: State) -> dict:
    plan = state.plan
    tensors = plan.mapped_tensors + len(plan.kept)
    params = sum(w.size for m in plan.mappings for w in m.targets)
    all_params = params + sum(k.weight.size for k in plan.kept)
    return {"source": str(state.source_path), "target": str(state.target_path),
            "output": str(state.output_path) if state.output_path else None,
            "pipeline": state.pipeline,
            "mapped_tensors": plan.mapped_tensors, "target_tensors": tensors,
            "coverage": round(plan.coverage, 6),
            "mapped_parameters": params, "target_parameters": all_params,
            "depth_groups": sum(1 for m in plan.mappings if max(m.depth) > 1),
            "unused_source_tensors": [w.name for w in plan.unused_sources]}


def _opens_stage(first, run) -> bool:
    """A one-block run opens the repeated run after it when it is one segment holding the same
    units plus extra ones (a projection shortcut, a strided first block)."""
    if first.count != 1 or len(first.unit) != 1 or len(run.unit) != 1 or run.count < 2:
        return False
    def kind(unit):  # the first block may be strided: compare op kinds and kernels only
        return [p for p in unit.label.split("|") if not p.startswith(("strides", "pads"))]

    labels = [kind(u) for u in first.blocks[0].units]
    for label in (kind(u) for u in run.blocks[0].units):
        if label not in labels:
            return False
        labels.remove(label)
    return bool(labels)


def describe(view: ModelView) -> dict:
    """Stages (a repeated run of blocks, with the block that opens it), depth groups, and every
    weight with its axis roles. Single ops and blocks that repeat nowhere are stages of one."""
    from frontc.heads import grouped_query
    from frontc.structure import aligned_blocks

    runs = view.structure.runs()
    stages = []
    for i, r in enumerate(runs):
        if i + 1 < len(runs) and _opens_stage(r, runs[i + 1]):
            continue
        opened = i > 0 and _opens_stage(runs[i - 1], r)
        layers = aligned_blocks(r)
        groups = [[layer[k].slots()[key].name for layer in layers]
                  for k, unit in enumerate(layers[0]) for key in unit.slots()]
        gqa = grouped_query([h for u in layers[0] for w in u.weights if w.slot == "linear.weight"
                             for h in [view.structure.heads_of(w)] if h])
        stages.append({"blocks": r.count + opened, "first_block_differs": opened,
                       "units_per_block": [u.label.split("|")[0] for u in layers[0]],
                       "depth_groups": groups if r.count > 1 else [],
                       **({"grouped_query": {"query_heads": gqa[0], "kv_heads": gqa[1]}} if gqa else {})})
    weights = []
    for w in view.index.weights:
        heads = view.structure.heads_of(w)
        weights.append({"name": w.name, "op": w.op.op_type, "node": w.op.name, "input": w.port,
                        "kind": w.slot, "shape": list(w.shape), "roles": list(w.roles),
                        "view": list(view_shape(w.shape)), "dtype": w.dtype.name,
                        **({"heads": heads.text(), "heads_axis": heads.axis} if heads else {})})
    attention = Counter(f"{h.text()} ({'output' if h.axis == 'out' else 'input'} axis)"
                        for h in view.structure.heads.values())
    return {"model": str(view.path), "weights": len(weights),
            "parameters": sum(w.size for w in view.index.weights),
            "stages": stages, "attention": dict(sorted(attention.items())), "tensors": weights}


def snapshot(after: str, state: State) -> dict:
    """What the state holds after a pass (for --print-after)."""
    out = {"after": after, "pipeline": state.pipeline}
    for side in ("source", "target"):
        view = getattr(state, side)
        if view is not None:
            out[side] = {"path": str(view.path), "weights": len(view.index.weights),
                         "segments": len(view.structure.segments)}
    if state.plan is not None:
        out["plan"] = {**summary(state), "tensors": plan_rows(state)}
    out["genes"] = len(state.genes) if hasattr(state.genes, "__len__") else "on demand"
    out["updates"] = sorted(state.updates)
    return out
