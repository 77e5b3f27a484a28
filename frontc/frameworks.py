"""Weights back into the user's framework: names, layouts, and pairing by value (no framework
is imported here; `frontc.torch` builds on this for PyTorch modules).

Two ways back, documented in docs/frameworks.md:

1. `read_weights(onnx)` / `save_weights(onnx, out)` (`frontc weights`): every weight tensor of an
   ONNX file, keyed by the name the framework used where the file records it, in the
   framework's own layout (the exporter's layout changes undone). Which framework made the file
   is read from `producer_name` (pytorch, tf2onnx, jax2onnx, skl2onnx, paddle2onnx); keys:

   - pytorch: the initializer name when it is a parameter path, else the module path of the
     consuming node (dynamo's `pkg.torch.onnx.name_scopes`, legacy node names like
     `/blocks.0/attn/qkv/MatMul`) plus the parameter's role (`weight`, `bias`, `running_mean`..),
     else dynamo's `pkg.onnxscript.optimizer.folded_from` (weights the optimizer transposed);
   - tf2onnx: the Keras variable path `layer/kernel` from `model_1/layer_1/.../ReadVariableOp:0`;
   - skl2onnx: `coefs_.K` and `intercepts_.K` (MLPs);
   - anything else (jax2onnx's `const_N`, paddle's parameter names): the ONNX tensor name.

   Layouts (`layout=`): `torch` ([out, in], [out, in, *kernel]), `keras` and `flax` (Dense
   kernels [in, out], conv kernels [*kernel, in, out]; Keras DepthwiseConv2D [*kernel, in, mult]),
   `sklearn` (coefs [in, out], 1-D intercepts), `paddle` (Linear [in, out], conv as torch),
   `onnx` (as stored in the file).

2. `fill_by_value(current, exported, initialized)`: the framework's own arrays (`current`), an
   ONNX file exported from exactly those values (`exported`), and the initialized file: the
   two ONNX files are paired weight by weight (same graph, else by structure through
   `frontc.plan`), each exported tensor is matched to the framework array it equals up to a
   transpose or reshape, and that array receives the initialized tensor through the same
   transform. Names are never needed. Equal arrays (zero biases) cannot be told apart by value:
   export a probe with distinct values (`distinct_like`) when the model holds some.
"""
from __future__ import annotations

import ast
import itertools
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx_ir as ir

from frontc import modelio
from frontc.errors import InputError
from frontc.weights import Weight, index_weights

LAYOUTS = ("auto", "torch", "keras", "flax", "sklearn", "paddle", "onnx")
NAMINGS = ("auto", "onnx")
FORMATS = (".safetensors", ".npz")


# --------------------------------------------------------------------------------------------
# Which framework wrote a file
# --------------------------------------------------------------------------------------------

def producer(model: ir.Model) -> str:
    """'torch', 'keras', 'flax', 'sklearn', 'paddle' or 'onnx' (unknown) from producer_name."""
    name = (model.producer_name or "").lower()
    if name == "pytorch":
        return "torch"
    if name.startswith(("tf2onnx", "keras2onnx", "tensorflow", "keras")):
        return "keras"
    if name.startswith(("jax2onnx", "jax", "flax")):
        return "flax"
    if name.startswith(("skl2onnx", "sklearn", "scikit")):
        return "sklearn"
    if "paddle" in name:
        return "paddle"
    if any(k.startswith("pkg.torch") for n in model.graph for k in n.metadata_props):
        return "torch"
    # paddle2onnx 2.x leaves producer_name empty; Paddle's parameter names give it away
    names = list(model.graph.initializers) + [n.outputs[0].name for n in model.graph
                                              if n.op_type == "Constant" and n.outputs]
    if any(_PADDLE_NAME.search(n or "") for n in names):
        return "paddle"
    return "onnx"


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------

def _is_depthwise(w: Weight) -> bool:
    """One input channel per group: Keras stores these as DepthwiseConv2D [*k, in, mult]."""
    group = w.op.attributes.get("group")
    return w.slot == "conv.weight" and group is not None and group.value > 1 and w.shape[1] == 1


def _is_bias_add(w: Weight) -> bool:
    """A per-channel vector added to a linear or conv output (a bias the exporter split off)."""
    if w.slot.endswith(".bias"):
        return True
    return w.op.op_type == "Add" and any(
        v is not None and v.producer() is not None
        and v.producer().op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose") for v in w.op.inputs)


def to_layout(w: Weight, layout: str, canonical: np.ndarray | None = None) -> np.ndarray:
    """The weight `w` (or `canonical`, an array in w's canonical layout) in a framework layout."""
    dtype = w.tensor.numpy().dtype
    if layout == "onnx":
        stored = w.tensor.numpy() if canonical is None else np.transpose(canonical, np.argsort(w.perm))
        return np.asarray(stored, dtype=dtype)
    a = w.array() if canonical is None else np.asarray(canonical, dtype=np.float64)
    rank = a.ndim
    linear = w.slot == "linear.weight" and rank == 2
    if layout in ("keras", "flax", "sklearn", "paddle") and linear:
        a = a.T                                                   # [out, in] -> [in, out]
    elif layout in ("keras", "flax") and w.slot == "conv.weight" and rank >= 3:
        kernel = tuple(range(2, rank))
        if w.op.op_type == "ConvTranspose":                       # canonical [in, out, *k]
            a = np.transpose(a, kernel + ((1, 0) if layout == "keras" else (0, 1)))
        elif layout == "keras" and _is_depthwise(w):              # [in*mult, 1, *k] -> [*k, in, mult]
            channels = int(w.op.attributes["group"].value)
            a = a.reshape((channels, a.shape[0] // channels) + a.shape[2:])
            a = np.transpose(a, kernel + (0, 1))
        else:                                                     # [out, in, *k] -> [*k, in, out]
            a = np.transpose(a, kernel + (1, 0))
    elif layout in ("keras", "flax", "sklearn", "paddle") and _is_bias_add(w) and a.ndim > 1 \
            and sum(d > 1 for d in a.shape) == 1:
        a = a.reshape(-1)                       # [1, out] intercepts, [1, C, 1, 1] conv biases
    return np.ascontiguousarray(a.astype(dtype))


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

_TORCH_ROLE = {"linear.weight": "weight", "linear.bias": "bias", "conv.weight": "weight",
               "conv.bias": "bias", "norm.scale": "weight", "norm.bias": "bias",
               "bn.scale": "weight", "bn.bias": "bias", "bn.mean": "running_mean",
               "bn.var": "running_var", "embedding.table": "weight"}
_KERAS_ROLE = {"linear.weight": "kernel", "linear.bias": "bias", "conv.weight": "kernel",
               "conv.bias": "bias", "norm.scale": "gamma", "norm.bias": "beta",
               "bn.scale": "gamma", "bn.bias": "beta", "bn.mean": "moving_mean",
               "bn.var": "moving_variance", "embedding.table": "embeddings"}
_GENERATED = re.compile(r"^(onnx::|val_\d+$|_?v_?\d+$|const_\d+$|/)|::|__\d+$")
_PARAM_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[\w]+)*$")
_PADDLE_NAME = re.compile(r"^[a-z][a-z0-9_]*_\d+\.(w|b)_\d+$|^p2o\.")


def _holder_name(w: Weight) -> str:
    return w.holder.name if isinstance(w.holder, ir.Value) else w.holder.outputs[0].name


def _folded_from(w: Weight) -> str | None:
    if not isinstance(w.holder, ir.Value):
        return None
    raw = w.holder.metadata_props.get("pkg.onnxscript.optimizer.folded_from")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    names = [n for n in names if isinstance(n, str) and _PARAM_PATH.match(n)]
    return names[0] if len(names) == 1 else None


def _torch_module_path(node: ir.Node) -> str | None:
    """The module path of the node that consumes a weight: dynamo's name scopes or the legacy
    exporter's node name (`/blocks.0/attn/qkv/MatMul` -> `blocks.0.attn.qkv`)."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            scopes = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            scopes = None
        if isinstance(scopes, list) and len(scopes) >= 2:
            return scopes[-2]
    name = node.name or ""
    if name.startswith("/") and name.count("/") >= 2:
        return ".".join(p for p in name.split("/")[1:-1] if p)
    return None


def _torch_key(w: Weight) -> str | None:
    role = _TORCH_ROLE.get(w.slot)
    if role is not None:
        path = _torch_module_path(w.op)
        if path is not None:
            return f"{path}.{role}" if path else role
    name = _holder_name(w)
    if _PARAM_PATH.match(name) and not _GENERATED.search(name):
        return name
    return _folded_from(w)


def _keras_key(w: Weight) -> str | None:
    parts = [p for p in re.split(r"[/:]", _holder_name(w)) if p]
    role = _KERAS_ROLE.get(w.slot)
    if len(parts) < 3 or role is None:
        return None
    layer = re.sub(r"_\d+$", "", parts[1])
    return f"{layer}/{role}"


def _sklearn_key(w: Weight) -> str | None:
    m = re.fullmatch(r"(coefficient|intercepts)(\d*)", _holder_name(w))
    if not m:
        return None
    return f"{'coefs_' if m.group(1) == 'coefficient' else 'intercepts_'}.{int(m.group(2) or 0)}"


_NAMERS = {"torch": _torch_key, "keras": _keras_key, "sklearn": _sklearn_key}


def framework_keys(weights: list[Weight], framework: str) -> list[str]:
    """One unique key per weight: the framework's name where recorded, else the ONNX name."""
    namer = _NAMERS.get(framework)
    keys = [(namer(w) if namer else None) or w.name for w in weights]
    counts: dict[str, int] = defaultdict(int)
    for k in keys:
        counts[k] += 1
    return [k if counts[k] == 1 else w.name for k, w in zip(keys, weights)]


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------

@dataclass
class FrameworkWeights:
    arrays: dict[str, np.ndarray]     # key -> array in the framework's layout
    onnx_names: dict[str, str]        # key -> the ONNX tensor it came from
    framework: str                    # who wrote the file (see producer())
    layout: str                       # the layout the arrays are in

    @property
    def parameters(self) -> int:
        return int(sum(a.size for a in self.arrays.values()))


def read_weights(path: str | os.PathLike | ir.Model, layout: str = "auto",
                 naming: str = "auto") -> FrameworkWeights:
    """Every weight of an ONNX file keyed by framework names, in the framework's layout.

    layout: auto (the producer's framework), torch, keras, flax, sklearn, paddle or onnx;
    naming: auto (framework names where recorded) or onnx (the ONNX tensor names).
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout '{layout}' (known: {', '.join(LAYOUTS)})")
    if naming not in NAMINGS:
        raise InputError(f"unknown naming '{naming}' (known: {', '.join(NAMINGS)})")
    model = path if isinstance(path, ir.Model) else modelio.load(path)
    framework = producer(model)
    if layout == "auto":
        layout = framework if framework in LAYOUTS else "onnx"
    weights = index_weights(model).weights
    if not weights:
        raise InputError(f"{path}: has no weight tensors")
    keys = framework_keys(weights, framework) if naming == "auto" else [w.name for w in weights]
    arrays = {k: to_layout(w, layout) for k, w in zip(keys, weights)}
    return FrameworkWeights(arrays, {k: w.name for k, w in zip(keys, weights)}, framework, layout)


def save_weights(path: str | os.PathLike, output: str | os.PathLike, layout: str = "auto",
                 naming: str = "auto") -> FrameworkWeights:
    """Write read_weights(path) to `output` (.safetensors or .npz), atomically."""
    output = Path(output)
    if output.suffix not in FORMATS:
        raise InputError(f"output {output}: use a .safetensors or .npz file name")
    modelio.refuse_overwriting_inputs(output, [Path(path)])
    found = read_weights(path, layout, naming)
    with modelio.AtomicOutput(output) as tmp:
        if output.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **found.arrays)
        else:
            from safetensors.numpy import save_file

            save_file(found.arrays, str(tmp), metadata={
                "format": found.layout, "frontc.framework": found.framework,
                "frontc.layout": found.layout, "frontc.source": Path(path).name,
                "frontc.onnx_names": json.dumps(found.onnx_names)})
    return found


# --------------------------------------------------------------------------------------------
# Pairing by value
# --------------------------------------------------------------------------------------------

def distinct_like(arrays: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of the same shapes and dtypes holding distinct seeded random values (positive, so
    that variances stay valid): give a *probe* copy of a model these values, export it, and
    fill_by_value can tell every array apart (zero biases and unit scales cannot be)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, a in arrays.items():
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating) and a.size > 0:
            out[k] = (0.5 + rng.random(a.shape)).astype(a.dtype)
        else:
            out[k] = a.copy()
    return out


@dataclass
class Transform:
    """How an exported ONNX tensor (as stored) becomes a framework array: reshape it to `pre`,
    transpose by `perm`, reshape to the framework's `shape` (Keras depthwise kernels split the
    channel axis: ONNX [in*mult, 1, kh, kw] -> [in, mult, kh, kw] -> [kh, kw, in, mult])."""

    pre: tuple[int, ...]
    perm: tuple[int, ...]
    shape: tuple[int, ...]

    def apply(self, stored: np.ndarray) -> np.ndarray:
        return np.transpose(stored.reshape(self.pre), self.perm).reshape(self.shape)


def _candidates(stored: np.ndarray, target: np.ndarray):
    """Transforms worth trying, the plain ones first."""
    squeezed = tuple(d for d in stored.shape if d != 1)
    want = tuple(d for d in target.shape if d != 1)
    rank = len(squeezed)
    if rank <= 5:
        for perm in itertools.permutations(range(rank)):
            if tuple(squeezed[p] for p in perm) == want:
                yield Transform(squeezed, tuple(perm), tuple(target.shape))
    if 1 < len(want) <= 5:      # split or merged axes: reshape to a permutation of the target
        for perm in itertools.permutations(range(len(want))):
            pre = tuple(want[p] for p in perm)
            if pre != squeezed:
                yield Transform(pre, tuple(np.argsort(perm)), tuple(target.shape))


def find_transform(stored: np.ndarray, target: np.ndarray, exact: bool = True) -> Transform | None:
    """A reshape and transpose turning `stored` into `target` (equal values), or None."""
    if stored.size != target.size:
        return None
    a64 = None if exact else np.asarray(target, dtype=np.float64)
    for tr in _candidates(stored, target):
        moved = tr.apply(stored)
        if exact:
            if np.array_equal(moved, target):
                return tr
        elif np.allclose(moved.astype(np.float64), a64, rtol=1e-6, atol=1e-7 * float(np.abs(a64).max() or 1)):
            return tr
    return None


def _fingerprint(a: np.ndarray) -> tuple:
    flat = np.sort(np.asarray(a, dtype=np.float32).ravel())
    return (flat.size, flat[:: max(1, flat.size // 16)].round(5).tobytes())


@dataclass
class FillResult:
    """What fill_by_value did. `arrays` holds the new values of the filled keys."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)        # key -> initialized ONNX tensor
    unfilled: dict[str, str] = field(default_factory=dict)       # key -> why
    zero_absent: list[str] = field(default_factory=list)         # all-zero, absent from the export
    unmatched_onnx: dict[str, str] = field(default_factory=dict)  # exported tensor -> why
    ambiguous: list[list[str]] = field(default_factory=list)     # keys told apart by order only

    def text(self) -> str:
        lines = [f"filled {len(self.arrays)} arrays"]
        if self.zero_absent:
            lines.append(f"kept at zero (absent from the export, exporters drop zero tensors): "
                         f"{', '.join(self.zero_absent)}")
        for k, why in self.unfilled.items():
            lines.append(f"unfilled {k}: {why}")
        for k, why in self.unmatched_onnx.items():
            lines.append(f"ONNX tensor {k}: {why}")
        for keys in self.ambiguous:
            lines.append(f"equal values, paired in order: {', '.join(keys)}")
        return "\n".join(lines)


def pair_weights(exported: str | os.PathLike, initialized: str | os.PathLike):
    """[(exported weight, initialized weight)] one-to-one, plus the exported weights left alone
    with a reason. The same graph pairs in order; otherwise frontc's structural plan decides."""
    from frontc.passes.canonicalize import view_model

    exp = view_model(Path(exported), "exported model")
    ini = view_model(Path(initialized), "initialized model")
    sig = lambda ws: [(w.op.op_type, w.slot, w.shape) for w in ws]  # noqa: E731
    if sig(exp.index.weights) == sig(ini.index.weights):
        return list(zip(exp.index.weights, ini.index.weights)), {}, exp, ini
    from frontc.pipeline import Pipeline, State

    state = State(Path(exported), Path(initialized))
    state.source, state.target = exp, ini
    Pipeline.from_text("match").run(state)
    pairs, left = [], {}
    for m in state.plan.mappings:
        if len(m.sources) != len(m.targets):
            for w in m.sources:
                left[w.name] = (f"its depth group has {len(m.sources)} layers here and "
                                f"{len(m.targets)} in {initialized}")
            continue
        for s, t in zip(m.sources, m.targets):
            if s.shape != t.shape:
                left[s.name] = f"shape {list(s.shape)} here, {list(t.shape)} in {initialized}"
            else:
                pairs.append((s, t))
    paired = {s.name for s, _ in pairs}
    for w in exp.index.weights:
        if w.name not in paired and w.name not in left:
            left[w.name] = f"no structural counterpart in {initialized}"
    pairs += _dropped_biases(exp, ini, pairs, left)
    return pairs, left, exp, ini


def _dropped_biases(exp, ini, pairs, left) -> list:
    """(exported bias, None) for biases whose op has a counterpart in the initialized file that
    carries no bias at all: exporters drop zero biases (dynamo's optimizer removes a zero Gemm
    C, BatchNorm folding of a fresh BatchNorm gives a zero conv bias), so there it is zero."""
    op_map = {s.op: t.op for s, t in pairs}

    def primary(w):
        if w.op.op_type == "Add":
            for v in w.op.inputs:
                producer = v.producer() if v is not None else None
                if producer in op_map:
                    return producer
        return w.op

    def has_bias(op) -> bool:
        if any(x.slot.endswith("bias") for x in ini.index.of(op)):
            return True
        return any(ini.index.of(u.node) for out in op.outputs for u in out.uses()
                   if u.node.op_type == "Add")

    zeros = []
    for w in exp.index.weights:
        if w.name in left and w.slot.endswith(".bias"):
            op = primary(w)
            if op in op_map and not has_bias(op_map[op]):
                zeros.append((w, None))
                del left[w.name]
    return zeros


def fill_by_value(current: Mapping[str, np.ndarray], exported: str | os.PathLike,
                  initialized: str | os.PathLike, strict: bool = True) -> FillResult:
    """New values for the framework arrays `current` from the initialized ONNX file.

    `exported` must be an ONNX export of a model holding exactly the values `current`; it and
    `initialized` must have the same architecture (the initialized file is usually frontc's
    output for a target exported like `exported`). strict: raise InputError unless every
    non-zero float array of `current` is filled and no pairing was ambiguous.
    """
    current = {k: np.asarray(v) for k, v in current.items()}
    floats = {k: v for k, v in current.items() if np.issubdtype(v.dtype, np.floating) and v.size > 0}
    pairs, left, _, _ = pair_weights(exported, initialized)
    result = FillResult()
    result.unmatched_onnx.update(left)

    by_print: dict[tuple, list[str]] = defaultdict(list)
    for k, v in floats.items():
        by_print[_fingerprint(v)].append(k)
    taken: dict[str, str] = {}              # key -> exported tensor name
    groups: dict[tuple, list] = defaultdict(list)
    for e, t in pairs:
        stored = np.asarray(e.tensor.numpy())
        candidates = by_print.get(_fingerprint(stored), [])
        hits = []
        for k in candidates:
            tr = find_transform(stored, floats[k]) or find_transform(stored, floats[k], exact=False)
            if tr is not None:
                hits.append((k, tr))
        if not hits:
            result.unmatched_onnx[e.name] = ("equals no framework array (computed by the exporter, "
                                             "e.g. a folded BatchNorm or a scaled weight)")
            continue
        groups[tuple(k for k, _ in hits)].append((e, t, dict(hits)))

    for keys, members in groups.items():
        if len(keys) > 1 or len(members) > 1:
            values = [np.zeros(1) if t is None else np.asarray(t.array()) for _, t, _ in members]
            if len(members) > 1 and not all(np.array_equal(values[0], v) for v in values[1:]):
                result.ambiguous.append(list(keys))
        for i, (e, t, transforms) in enumerate(members):
            key = keys[i % len(keys)] if len(members) > 1 else None
            for k in ([key] if key is not None else keys):
                if k in taken and not np.array_equal(result.arrays[k],
                                                     _value(e, t, transforms[k], floats[k])):
                    result.unfilled[k] = (f"two ONNX tensors ({taken[k]}, {getattr(t, 'name', 0)}) equal it "
                                          f"but received different values")
                    continue
                result.arrays[k] = _value(e, t, transforms[k], floats[k])
                result.sources[k] = t.name if t is not None else "zero (no bias in the file)"
                taken[k] = result.sources[k]
    for k in result.unfilled:
        result.arrays.pop(k, None)
    for k, v in floats.items():
        if k in result.arrays or k in result.unfilled:
            continue
        if not np.any(v):
            result.zero_absent.append(k)
        else:
            result.unfilled[k] = f"no tensor of {Path(exported).name} equals it"
    if strict and (result.unfilled or result.ambiguous):
        raise InputError(f"cannot fill every array from {initialized}:\n{result.text()}")
    return result


def _value(e: Weight, t: Weight | None, tr: Transform, like: np.ndarray) -> np.ndarray:
    """The initialized weight `t` in the exported weight `e`'s stored layout, then through `tr`
    (zeros for t None: a bias the initialized file does not carry)."""
    if t is None:
        return np.zeros(like.shape, dtype=like.dtype)
    canonical = t.array()
    if canonical.shape != e.shape:
        raise InputError(f"initialized tensor {t.name} has shape {list(canonical.shape)}, the "
                         f"exported {e.name} {list(e.shape)}: not the same architecture")
    stored = np.transpose(canonical, np.argsort(e.perm))
    return np.ascontiguousarray(tr.apply(stored).astype(like.dtype))
