"""match: decide which source weights initialize which target weights.

Rules:
1. Both models' segment sequences are encoded into runs of blocks, each using the other's
   repeated units as a vocabulary (frontc.structure.encode), so a stage of 12 blocks lines up
   with a stage of 4, or of 1.
2. Runs are aligned in order by their units (a longest common subsequence weighted by unit
   length); unaligned target runs keep their own init, unaligned source runs go unused.
3. In aligned runs, the k-th weight-holding op of a block maps to the k-th of the other, port by
   port; across the blocks of a run that gives a depth group (source layers -> target layers).
4. A pair is refused (the target keeps its own init, with the reason) when the weight kinds or
   view ranks differ, or a fixed axis (vocabulary, class count) has different sizes.
5. No mapped tensor at all is an error: the models share no structure.
"""
from __future__ import annotations

from dataclasses import dataclass

from frontc.errors import MatchError
from frontc.pipeline import Pass, State
from frontc.plan import Kept, Mapping, Plan, view_shape
from frontc.structure import Run
from frontc.weights import Weight


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
    for role, a, b in zip(target.roles, source.shape, target.shape):
        if role in ("vocab", "class") and a != b:
            what = "class count" if role == "class" else "vocabulary size"
            return f"{what} differs (source {a}, target {b})"
    return None


def build_plan(source_runs: list[Run], target_runs: list[Run], source_index, target_index) -> Plan:
    plan = Plan()
    used: set[str] = set()
    for s_run, t_run in align(source_runs, target_runs):
        for k, (s_op, t_op) in enumerate(zip(s_run.blocks[0].ops, t_run.blocks[0].ops)):
            s_ports = {w.port: w for w in source_index.of(s_op)}
            for t_weight in target_index.of(t_op):
                targets = [{w.port: w for w in target_index.of(b.ops[k])}[t_weight.port]
                           for b in t_run.blocks]
                s_weight = s_ports.get(t_weight.port)
                reason = ("the source op has no weight at this input" if s_weight is None
                          else refusal(s_weight, t_weight))
                if reason:
                    plan.kept.extend(Kept(t, reason) for t in targets)
                    continue
                sources = [{w.port: w for w in source_index.of(b.ops[k])}[s_weight.port]
                           for b in s_run.blocks]
                plan.mappings.append(Mapping(targets, sources))
                used.update(w.name for w in sources)
    mapped = {w.name for m in plan.mappings for w in m.targets} | {k.weight.name for k in plan.kept}
    for w in target_index.weights:
        if w.name not in mapped:
            plan.kept.append(Kept(w, "no structural counterpart in the source"))
    plan.unused_sources = [w for w in source_index.weights if w.name not in used]
    return plan


@dataclass(frozen=True)
class Match(Pass):
    name = "match"
    summary = "align blocks and depth groups of the source and the target by structure"

    def run(self, state: State) -> None:
        src, tgt = state.source.structure, state.target.structure
        bare_src, bare_tgt = src.runs(), tgt.runs()
        vocabulary = {r.unit for r in bare_src + bare_tgt if r.count > 1 or len(r.unit) > 1}
        plan = build_plan(src.runs(vocabulary), tgt.runs(vocabulary),
                          state.source.index, state.target.index)
        if not plan.mappings:
            raise MatchError(
                f"target {state.target.path} shares no structure with source {state.source.path}: "
                f"none of its {len(state.target.index.weights)} weight tensors has a counterpart "
                f"(first target weight op: {state.target.index.weights[0].op.op_type}, first source "
                f"weight op: {state.source.index.weights[0].op.op_type}); both must be one family")
        state.plan = plan
