"""Which torch parameters form depth groups, found the way the compiler finds them (needs torch).

The compiler sees ONNX graphs, not torch modules, so the groups come from an export:
1. Deep-copy the module and give every parameter of the copy distinct seeded random values.
   Trained or freshly initialized models hold equal tensors (LayerNorm ones, zero biases) that
   the exporter would merge into one initializer and that could not be told apart by value.
2. Export the copy with the legacy TorchScript exporter, without constant folding, so no
   weight is transformed (folding fuses BatchNorm into Conv and pre-transposes MatMul weights).
3. Run frontc's canonicalize (weights, axis roles, structure) and take the runs of repeated
   blocks: each role across a run's blocks is a depth group; every other weight is a singleton.
4. Map each ONNX weight back to its parameter by VALUE: its canonical array, its stored array
   or the transpose of a 2-D canonical array equals exactly one randomized parameter. Names are
   never read for matching (only to label groups in reports).
Parameters that no ONNX weight equals (unused, folded, or of size 1) are not penalized.
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from frontc.passes.canonicalize import view_model
from frontc.passes.match import source_view
from frontc.plan import View, conv_separable, view_shape
from frontc.structure import aligned_blocks


@dataclass
class Group:
    """One depth group (or a singleton): parameters that are one role across L layers."""

    params: list[nn.Parameter]
    perms: list[tuple[int, ...]]    # per layer: param.permute(perm) is the canonical layout
    view: tuple[int, ...]           # the DCT view of one layer (frontc.plan.View's shape)
    fixed: tuple[bool, ...]         # per view axis: never resized (class count, vocabulary)
    names: list[str]                # labels for reports only

    @property
    def layers(self) -> int:
        return len(self.params)


def from_lists(model: nn.Module, groups: list[list[nn.Parameter]],
               conv_view: str = "separable") -> list[Group]:
    """Groups given by the user: torch layout is taken as canonical, no axis is fixed, and a
    tensor of 3 or more dims is a conv weight [out, in, *kernel]."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for params in groups:
        shapes = {tuple(p.shape) for p in params}
        if len(shapes) != 1:
            raise ValueError(f"a group mixes shapes {sorted(shapes)}: "
                             f"{[names.get(id(p), '?') for p in params]}")
        shape = shapes.pop()
        view = (conv_separable(shape) if conv_view == "separable" else None) or \
            View(view_shape(shape), (False,) * len(view_shape(shape)))
        out.append(Group(list(params), [tuple(range(len(shape)))] * len(params),
                         view.shape, view.fixed, [names.get(id(p), "?") for p in params]))
    return out


def _export(model: nn.Module, example_inputs: tuple, path: Path) -> nn.Module:
    clone = copy.deepcopy(model).float().cpu().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for q in clone.parameters():
            q.copy_(torch.randn(q.shape, generator=gen))
    args = tuple(a.cpu().float() if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a.cpu() if isinstance(a, torch.Tensor) else a for a in example_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(clone, args, str(path), dynamo=False, do_constant_folding=False,
                          opset_version=17, training=torch.onnx.TrainingMode.EVAL)
    return clone


def discover(model: nn.Module, example_inputs,
             conv_view: str = "separable") -> tuple[list[Group], list[str]]:
    """(groups, names of trainable parameters left unpenalized) for `model` on `example_inputs`;
    each group viewed as frontc's dct pass views it with that conv_view (match.source_view)."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    params = list(model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    with tempfile.TemporaryDirectory(prefix="frontc-spectral-") as tmp:
        path = Path(tmp) / "model.onnx"
        clone = _export(model, tuple(example_inputs), path)
        lookup: dict[tuple, int] = {}
        for i, q in enumerate(clone.parameters()):
            a = q.detach().numpy()
            lookup[a.shape, a.tobytes()] = i

        def find(w) -> tuple[int, tuple[int, ...]] | None:
            canonical = w.array().astype(np.float32)
            candidates = [(canonical, tuple(range(canonical.ndim))),
                          (np.asarray(w.tensor.numpy(), dtype=np.float32), w.perm)]
            if canonical.ndim == 2:
                candidates.append((np.ascontiguousarray(canonical.T), (1, 0)))
            for array, perm in candidates:
                hit = lookup.get((array.shape, np.ascontiguousarray(array).tobytes()))
                if hit is not None:
                    return hit, perm
            return None

        view = view_model(path, "model")
        layered: list[list] = []     # lists of ONNX weights, one per layer
        for run in view.structure.runs():
            if run.count < 2:
                continue
            blocks = aligned_blocks(run)
            for k, unit in enumerate(blocks[0]):
                for key in unit.slots():
                    layers = [b[k].slots().get(key) for b in blocks]
                    if all(w is not None and w.shape == layers[0].shape for w in layers):
                        layered.append(layers)
        grouped = {id(w) for layers in layered for w in layers}
        layered += [[w] for w in view.index.weights if id(w) not in grouped]

        groups, used = [], set()
        for layers in layered:
            hits = [find(w) for w in layers]
            if any(h is None or h[0] in used for h in hits):
                continue  # not a parameter (a buffer, a folded tensor) or already taken
            used.update(h[0] for h in hits)
            view = source_view(layers[0], None, "whole", conv_view)
            groups.append(Group([params[i] for i, _ in hits], [perm for _, perm in hits],
                                view.shape, view.fixed,
                                [names.get(id(params[i]), "?") for i, _ in hits]))
    skipped = [names.get(id(p), "?") for i, p in enumerate(params)
               if i not in used and p.requires_grad]
    return groups, skipped
