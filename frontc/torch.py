"""Load an initialized ONNX file back into a PyTorch module (needs torch).

`load_onnx_weights(module, "small_init.onnx")` fills the module's state_dict from the file,
whatever the names in the file and whichever torch exporter wrote it:

1. A *probe*: a deep copy of the module whose float parameters and buffers hold distinct seeded
   random values (positive), so that no two can be confused and the exporter merges nothing.
2. The probe is exported with the exporter that wrote the file (dynamo when its nodes carry
   `pkg.torch` metadata, else the legacy TorchScript exporter; without constant folding when the
   file keeps BatchNormalization nodes), on inputs built from the file's declared inputs
   unless `args` is given.
3. The probe's export and the initialized file are paired tensor by tensor (the same graph in
   order, else by structure through frontc.plan), and each exported tensor is mapped to the
   state_dict entry it equals, up to a transpose or reshape (frontc.frameworks.fill_by_value).
4. BatchNorm folded into a Conv by the exporter (the file has no BatchNormalization): the probe's
   BatchNorms are set to the identity (mean 0, variance 1 - eps, scale 1) so the folded conv
   equals the conv's weight and the folded bias equals the BatchNorm's bias; loading writes the
   same identity statistics, which computes exactly what the file computes.
strict (the default): raise unless every float entry of the state_dict is filled; the returned
LoadReport lists what was filled, left alone and why.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from frontc import modelio
from frontc.errors import InputError
from frontc.frameworks import FillResult, fill_by_value

_TORCH_DTYPES = {ir.DataType.FLOAT: torch.float32, ir.DataType.DOUBLE: torch.float64,
                 ir.DataType.FLOAT16: torch.float16, ir.DataType.INT64: torch.int64,
                 ir.DataType.INT32: torch.int32, ir.DataType.BOOL: torch.bool,
                 ir.DataType.BFLOAT16: torch.bfloat16, ir.DataType.UINT8: torch.uint8,
                 ir.DataType.INT8: torch.int8}


@dataclass
class LoadReport:
    filled: dict[str, str] = field(default_factory=dict)     # state_dict key -> ONNX tensor
    unfilled: dict[str, str] = field(default_factory=dict)   # state_dict key -> why
    folded_batchnorm: list[str] = field(default_factory=list)  # set to identity statistics
    zero_absent: list[str] = field(default_factory=list)
    unmatched_onnx: dict[str, str] = field(default_factory=dict)
    exporter: str = ""

    def __str__(self) -> str:
        lines = [f"filled {len(self.filled)} state_dict entries (probe exported with {self.exporter})"]
        if self.folded_batchnorm:
            lines.append("BatchNorm folded into the conv before it in the file; set to identity "
                         f"statistics: {', '.join(self.folded_batchnorm)}")
        if self.zero_absent:
            lines.append(f"kept at zero, absent from the export: {', '.join(self.zero_absent)}")
        lines += [f"unfilled {k}: {why}" for k, why in self.unfilled.items()]
        lines += [f"ONNX tensor {k} not loaded: {why}" for k, why in self.unmatched_onnx.items()]
        return "\n".join(lines)


def example_args(model: ir.Model, size: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs built from an ONNX file's declared graph inputs: symbolic dims -> `size`, float
    inputs random, integer inputs zero (token ids), boolean inputs True (masks)."""
    gen = torch.Generator().manual_seed(0)
    initializers = set(model.graph.initializers)
    args = []
    for value in model.graph.inputs:
        if value.name in initializers:
            continue
        shape = [d if isinstance(d, int) and d > 0 else size for d in (value.shape or [])]
        dtype = _TORCH_DTYPES.get(value.dtype, torch.float32)
        if dtype.is_floating_point:
            args.append(torch.randn(shape, generator=gen).to(dtype))
        elif dtype == torch.bool:
            args.append(torch.ones(shape, dtype=dtype))
        else:
            args.append(torch.zeros(shape, dtype=dtype))
    return tuple(args)


def _exporter(model: ir.Model) -> str:
    dynamo = any(k.startswith("pkg.torch") for n in model.graph for k in n.metadata_props) or any(
        k.startswith("pkg.torch") for v in model.graph.initializers.values() for k in v.metadata_props)
    if dynamo:
        return "dynamo"
    has_bn = any(n.op_type == "BatchNormalization" for n in model.graph)
    return "legacy-bn" if has_bn else "legacy"


def _identity_batchnorms(probe: nn.Module) -> list[str]:
    """Make every BatchNorm of the probe an identity up to its bias; returns their names."""
    names = []
    with torch.no_grad():
        for name, m in probe.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats \
                    and m.running_var is not None:
                eps = torch.tensor(m.eps, dtype=m.running_var.dtype)
                m.running_mean.zero_()
                m.running_var.fill_(float(1 - eps))
                if m.weight is not None:
                    m.weight.fill_(1.0)
                names.append(name)
    return names


def _dynamic_axes(model: ir.Model) -> list[list[int]]:
    """Per graph input (initializers excluded): the axes the file declares symbolic."""
    initializers = set(model.graph.initializers)
    return [[i for i, d in enumerate(v.shape or []) if not (isinstance(d, int) and d > 0)]
            for v in model.graph.inputs if v.name not in initializers]


def _export(probe: nn.Module, args: tuple, path: Path, exporter: str, opset: int,
            dynamic: list[list[int]] | None) -> None:
    """Export the probe like the file was: same exporter, symbolic axes kept symbolic (a static
    batch lets exporters fold an expanded class token into a constant)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if dynamic is not None and len(dynamic) != len(tensors):
        dynamic = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            shapes = None
            if dynamic and any(dynamic):
                auto = torch.export.Dim.AUTO
                shapes = tuple({i: auto for i in axes} or None for axes in dynamic)
            torch.onnx.export(probe, args, str(path), dynamo=True, external_data=False,
                              opset_version=max(opset, 18), verbose=False, dynamic_shapes=shapes)
        else:
            names = [f"input_{i}" for i in range(len(tensors))]
            axes = {n: a for n, a in zip(names, dynamic or []) if a}
            torch.onnx.export(probe, args, str(path), dynamo=False, opset_version=min(max(opset, 9), 20),
                              do_constant_folding=exporter == "legacy", input_names=names,
                              dynamic_axes=axes or None, training=torch.onnx.TrainingMode.EVAL)


def load_onnx_weights(module: nn.Module, path: str | os.PathLike, args=None, *, strict: bool = True,
                      exporter: str = "auto", seed: int = 0) -> LoadReport:
    """Fill `module`'s state_dict from the initialized ONNX file `path` (see the module doc).

    args: example inputs for exporting the probe (a tensor or a tuple); default: built from the
    file's declared inputs. exporter: auto, legacy, legacy-bn (no constant folding) or dynamo.
    Nothing in `module` changes unless the load succeeds (strict) or at all filled entries.
    """
    model = modelio.load(path, "initialized model")
    exporter = _exporter(model) if exporter == "auto" else exporter
    if exporter not in ("legacy", "legacy-bn", "dynamo"):
        raise InputError(f"unknown exporter '{exporter}' (auto, legacy, legacy-bn, dynamo)")
    dynamic = _dynamic_axes(model)
    if args is None:
        args = example_args(model)
    elif isinstance(args, torch.Tensor):
        args = (args,)
    opset = model.opset_imports.get("", 17)

    state = module.state_dict()
    probe = copy.deepcopy(module).cpu().eval()
    probe_state = probe.state_dict(keep_vars=True)
    floats = [k for k, v in state.items() if v.is_floating_point() and v.numel() > 0]
    values = {}
    gen = np.random.default_rng(seed)
    with torch.no_grad():
        seen: dict[int, str] = {}
        for k in floats:
            t = probe_state[k]
            if t.data_ptr() in seen:   # tied: one storage, several keys
                continue
            seen[t.data_ptr()] = k
            t.copy_(torch.from_numpy(0.5 + gen.random(tuple(t.shape))).to(t.dtype))
    folded = [] if exporter == "legacy-bn" or any(n.op_type == "BatchNormalization"
                                                  for n in model.graph) else _identity_batchnorms(probe)
    for k in floats:
        values[k] = probe_state[k].detach().cpu().numpy().copy()

    with tempfile.TemporaryDirectory(prefix="frontc-probe-") as tmp:
        exported = Path(tmp) / "probe.onnx"
        _export(probe, tuple(args), exported, exporter, opset, dynamic)
        result: FillResult = fill_by_value(values, exported, path, strict=False)

    report = LoadReport(exporter=exporter, unmatched_onnx=dict(result.unmatched_onnx))
    new = dict(result.arrays)
    report.filled = dict(result.sources)
    # BatchNorms folded into convs: identity statistics where the bias was found.
    for name in folded:
        bias_key = f"{name}.bias" if name else "bias"
        bn = dict(probe.named_modules())[name]
        if bias_key not in new and bias_key in state:
            # the file's conv has no bias: the exporter dropped a zero one
            new[bias_key] = np.zeros(tuple(state[bias_key].shape), dtype=values[bias_key].dtype)
            report.filled[bias_key] = "zero (the conv it is folded into has no bias in the file)"
        for suffix in ("weight", "running_mean", "running_var"):
            key = f"{name}.{suffix}" if name else suffix
            if key in state:
                new[key] = probe_state[key].detach().cpu().numpy().copy()
                report.filled[key] = f"identity (BatchNorm folded into the conv by the exporter, eps={bn.eps})"
        report.folded_batchnorm.append(name)
    for k in floats:
        if k in new:
            continue
        if k in result.zero_absent and not state[k].any():
            report.zero_absent.append(k)
        else:
            report.unfilled[k] = result.unfilled.get(k, "no ONNX tensor equals it")
    for keys in result.ambiguous:
        for k in keys:
            report.unfilled.setdefault(k, "equal values elsewhere: paired by order only")
    if strict and report.unfilled:
        raise InputError(f"cannot fill every entry of {type(module).__name__}'s state_dict from "
                         f"{path}:\n{report}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(state[k].dtype) for k, v in new.items()
               if k in state}
    module.load_state_dict(tensors, strict=False)
    return report
