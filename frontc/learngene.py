"""Learngene files: extract a source's learngene once, initialize any number of targets from it.

A learngene file is one safetensors file (no pickle), self-describing (docs/learngene.md):
  tensors   `coeffs/<weight name>`: the kept low-frequency block of that source tensor's width
            DCT ([:int(h r), :int(w r)] of its standardized 2-D view; float32, float64 for
            float64 sources), exactly what the dct pass computes (passes/dct.py, rules 1-3);
            `stats`: float64 [weights, 3] -- mean, std and standardized energy per weight.
  metadata  format ("frontc.learngene"), format_version, frontc_version, convention,
            keep_ratio, source (file name), source_sha256, source_parameters, `weights` (JSON:
            per weight its name, canonical shape, view, kept block, fixed axes, log domain) and
            `model`: the source ONNX graph without weight data (every float tensor and every
            tensor over 64 KiB keeps its name, shape and dtype but no values), zlib-compressed,
            base64. Loading a gene rebuilds that weightless model and runs frontc's own
            weight index and structure analysis on it, so matching is the same as from the
            source ONNX; the depth DCT happens at transfer time from the stored blocks.
The file is written in one pass, tensor by tensor (the header is known before any block is
computed), so extracting needs memory for a few tensors, not the model.
"""
from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

import frontc
from frontc import modelio
from frontc.backend import Backend, select, small_pages
from frontc.errors import InputError
from frontc.plan import ModelView

FORMAT = "frontc.learngene"
VERSION = 1                       # bump on any change a reader of version 1 would misread
_STRIPPED = "__frontc_weightless__"
_KEEP_BYTES = 64 * 1024           # non-float tensors up to this size stay in the weightless model
_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
_NUMPY = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1000 * 1000   # safetensors' own limit


# -- the weightless source model ------------------------------------------------------------------

def _strip(tensor) -> bool:
    if tensor is None or tensor.dtype == ir.DataType.STRING:
        return False
    floats = tensor.dtype in (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16,
                              ir.DataType.BFLOAT16)
    return (floats and tensor.size > 1) or tensor.nbytes > _KEEP_BYTES


def _placeholder(tensor) -> ir.ExternalTensor:
    return ir.ExternalTensor(_STRIPPED, 0, 0, tensor.dtype, shape=ir.Shape(tensor.shape),
                             name=tensor.name)


def _graphs(graph: ir.Graph):
    yield graph
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _graphs(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    yield from _graphs(g)


def weightless(model: ir.Model) -> bytes:
    """The model as ONNX bytes with the values of its weight tensors left out (the model itself
    is restored before returning)."""
    undo = []
    try:
        for graph in _graphs(model.graph):
            for value in graph.initializers.values():
                if _strip(value.const_value):
                    undo.append((value, "const", value.const_value))
                    value.const_value = _placeholder(value.const_value)
            for node in graph:
                attr = node.attributes.get("value")
                if node.op_type == "Constant" and attr is not None and \
                        attr.type == ir.AttributeType.TENSOR and _strip(attr.value):
                    undo.append((node, "attr", attr))
                    node.attributes["value"] = ir.AttrTensor("value", _placeholder(attr.value))
        proto = ir.serde.serialize_model(model)
    finally:
        for holder, kind, old in reversed(undo):
            if kind == "const":
                holder.const_value = old
            else:
                holder.attributes["value"] = old

    def clear(tensor: onnx.TensorProto) -> None:
        if tensor.data_location == onnx.TensorProto.EXTERNAL and any(
                e.key == "location" and e.value == _STRIPPED for e in tensor.external_data):
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT

    def walk(graph: onnx.GraphProto) -> None:
        for t in graph.initializer:
            clear(t)
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    clear(a.t)
                if a.HasField("g"):
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(proto.graph)
    return proto.SerializeToString()


# -- writing ---------------------------------------------------------------------------------------

@dataclass
class Entry:
    """One source weight as the learngene file describes it."""

    name: str
    shape: list[int]          # canonical shape
    view: list[int]           # the DCT view
    kept: list[int]           # the stored block
    fixed: list[bool]
    log: bool
    dtype: str                # "F32" or "F64" (of the block)
    transposed: bool = False  # stored as [in, out] (MatMul): the tensor holds the block's transpose
    kind: str = "whole"       # the view's rule (frontc.plan.View.kind)

    @property
    def as_view(self):
        from frontc.plan import View

        return View(tuple(self.view), tuple(self.fixed), self.kind)

    @property
    def stored(self) -> list[int]:
        """The tensor's shape in the file."""
        return self.kept[::-1] if self.transposed else self.kept

    @property
    def key(self) -> str:
        return f"coeffs/{self.name}"


def entries(view: ModelView, keep_ratio: float, views: dict) -> list[Entry]:
    from frontc.passes.dct import compute_dtype, is_log, stored_transposed

    return [Entry(w.name, list(w.shape), list(v.shape), list(v.kept(keep_ratio)), list(v.fixed),
                  is_log(w), _DTYPES[np.dtype(compute_dtype(w.dtype))], stored_transposed(w, v),
                  v.kind)
            for w, v in ((w, views[w.name]) for w in view.index.weights)]


def _header(meta: dict[str, str], items: list[tuple[str, str, list[int]]]) -> tuple[bytes, list[int]]:
    """safetensors header bytes (padded to 8) and each tensor's data offset."""
    header: dict = {"__metadata__": meta}
    offset, offsets = 0, []
    for key, dtype, shape in items:
        size = int(np.prod(shape)) * np.dtype(_NUMPY[dtype]).itemsize
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offsets.append(offset)
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return raw, offsets


def write(path: Path, view: ModelView, convention: str, keep_ratio: float, backend: Backend,
          source_sha256: str = "", progress=None, heads: str = "whole", conv_view: str = "separable") -> dict:
    """Write `view`'s learngene to `path` (streaming) and return a summary."""
    from frontc.passes.dct import in_order, source_block
    from frontc.passes.match import source_view

    views = {w.name: source_view(w, view.structure, heads, conv_view) for w in view.index.weights}
    items = entries(view, keep_ratio, views)
    weights = view.index.weights
    meta = {
        "format": FORMAT, "format_version": str(VERSION), "frontc_version": frontc.__version__,
        "convention": convention, "keep_ratio": repr(float(keep_ratio)),
        "heads": heads, "conv_view": conv_view,
        "source": Path(view.path).name, "source_sha256": source_sha256,
        "source_parameters": str(sum(w.size for w in weights)),
        "weights": json.dumps([e.__dict__ for e in items], separators=(",", ":")),
        "model": base64.b64encode(zlib.compress(weightless(view.model), 6)).decode("ascii"),
    }
    layout = [("stats", "F64", [len(items), 3])] + [(e.key, e.dtype, e.stored) for e in items]
    header, offsets = _header(meta, layout)
    if len(header) > _MAX_HEADER:
        raise InputError(f"source {view.path}: its graph is too large for a learngene header "
                         f"({len(header):,} bytes, safetensors allows {_MAX_HEADER:,})")
    stats = np.zeros((len(items), 3))
    advance = progress("extract", len(items)) if progress else (lambda: None)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        start = f.tell()
        f.write(stats.tobytes())
        make = lambda w: source_block(w, convention, keep_ratio, backend, view.path,  # noqa: E731
                                      view=views[w.name])
        for i, (entry, block) in enumerate(zip(items, in_order(make, weights, backend.threads))):
            data = backend.to_host(block.coeffs)
            data = np.ascontiguousarray(data.T if entry.transposed else data, dtype=_NUMPY[entry.dtype])
            if list(data.shape) != entry.stored:   # a bug, never user input
                raise AssertionError(f"block of {entry.name}: {data.shape} != {entry.stored}")
            assert f.tell() == start + offsets[i + 1]
            f.write(memoryview(data).cast("B"))
            stats[i] = (block.mean, block.std, block.energy)
            del data
            block.release(backend)
            advance()
        f.seek(start)
        f.write(stats.tobytes())
    coefficients = sum(int(np.prod(e.kept)) for e in items)
    return {"tensors": len(items), "coefficients": coefficients,
            "source_parameters": int(meta["source_parameters"]), "bytes": path.stat().st_size}


def extract(source: str | os.PathLike, output: str | os.PathLike, convention: str = "ortho",
            keep_ratio: float = 1.0, device: str = "auto", progress=None, heads: str = "whole",
            conv_view: str = "separable") -> dict:
    """Write the learngene of the ONNX model `source` to `output` (a .gene file), atomically."""
    from frontc.passes.canonicalize import view_model
    from frontc.passes.dct import DCT

    from frontc.passes.match import Match

    DCT(convention=convention, keep_ratio=keep_ratio)       # validates the options
    Match(heads=heads, conv_view=conv_view)
    source, output = Path(source), Path(output)
    modelio.refuse_overwriting_inputs(output, [source])
    backend = select(device)
    view = view_model(source, "source")
    with modelio.AtomicOutput(output) as tmp, small_pages():
        summary = write(tmp, view, convention, keep_ratio, backend, modelio.sha256(source), progress,
                        heads, conv_view)
    return {"source": str(source), "output": str(output), "convention": convention,
            "keep_ratio": keep_ratio, "heads": heads, "conv_view": conv_view, **summary}


# -- reading ---------------------------------------------------------------------------------------

def looks_like(path: str | os.PathLike) -> bool:
    """True for a file that is (or claims to be, by its .gene suffix) a learngene file."""
    path = Path(path)
    if path.suffix == ".gene":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and 0 < n <= min(_MAX_HEADER, size - 8)


def _read_header(path: Path) -> tuple[dict, int]:
    """The parsed safetensors header and where the data starts; InputError when malformed."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"learngene {path}: the file is {size} bytes, too short to be one")
        n = struct.unpack("<Q", head)[0]
        if n > min(_MAX_HEADER, size - 8):
            raise InputError(f"learngene {path}: corrupt or truncated (its header claims {n:,} "
                             f"bytes; the file has {size:,})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"learngene {path}: corrupt header ({err})") from None
    if not isinstance(header, dict):
        raise InputError(f"learngene {path}: corrupt header (not a JSON object)")
    return header, 8 + n


def _metadata(path: Path, header: dict) -> dict[str, str]:
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: a safetensors file but not a frontc learngene (no "
                         f"format={FORMAT} in its metadata); make one with 'frontc extract'")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise InputError(f"learngene {path}: corrupt format_version "
                         f"{meta.get('format_version')!r}") from None
    if version > VERSION:
        raise InputError(f"learngene {path} has format version {version}, written by frontc "
                         f"{meta.get('frontc_version', '?')}; this frontc ({frontc.__version__}) "
                         f"reads versions up to {VERSION}: upgrade frontc, or extract the gene "
                         f"again with this version")
    if version < 1:
        raise InputError(f"learngene {path}: unknown format version {version}")
    return meta


def options(path: str | os.PathLike) -> dict:
    """The extraction options a learngene file was made with ({} for any other file)."""
    path = Path(path)
    if not path.is_file() or not looks_like(path):
        return {}
    header, _ = _read_header(path)
    meta = _metadata(path, header)
    try:
        return {"convention": meta["convention"], "keep_ratio": float(meta["keep_ratio"]),
                "heads": meta.get("heads", "whole"), "conv_view": meta.get("conv_view", "flat")}  # genes before views: flat
    except (KeyError, ValueError):
        raise InputError(f"learngene {path}: corrupt metadata (convention or keep_ratio)") from None


class Learngene:
    """An opened learngene file: the source's weightless model view, options and blocks."""

    def __init__(self, path: str | os.PathLike):
        from frontc.structure import analyze
        from frontc.weights import index_weights

        self.path = path = Path(path)
        if not path.is_file():
            raise InputError(f"learngene {path}: no such file")
        header, self.data_start = _read_header(path)
        self.meta = meta = _metadata(path, header)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:   # the reference validator
                keys = set(f.keys())
        except Exception as err:
            raise InputError(f"learngene {path}: corrupt or truncated safetensors data "
                             f"({type(err).__name__}: {err})") from None
        try:
            self.convention = meta["convention"]
            self.keep_ratio = float(meta["keep_ratio"])
            self.entries = [Entry(**e) for e in json.loads(meta["weights"])]
            raw = zlib.decompress(base64.b64decode(meta["model"], validate=True))
            model = ir.serde.deserialize_model(onnx.ModelProto.FromString(raw))
        except Exception as err:
            raise InputError(f"learngene {path}: corrupt metadata ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from None
        self.tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        index = index_weights(model)
        names = [(w.name, list(w.shape)) for w in index.weights]
        if names != [(e.name, e.shape) for e in self.entries]:
            raise InputError(f"learngene {path}: its stored graph does not give the weights it "
                             f"lists (corrupt, or written by an incompatible frontc)")
        missing = [e.key for e in self.entries if e.key not in keys] + \
            (["stats"] if "stats" not in keys else [])
        if missing:
            raise InputError(f"learngene {path}: tensor {missing[0]} is missing (corrupt)")
        for e in self.entries:
            spec = self.tensors[e.key]
            if spec.get("dtype") != e.dtype or spec.get("shape") != e.stored:
                raise InputError(f"learngene {path}: tensor {e.key} is {spec.get('dtype')} "
                                 f"{spec.get('shape')}, expected {e.dtype} {e.stored} (corrupt)")
        self.stats = self._read("stats", "F64", [len(self.entries), 3])[0]
        self.by_name = {e.name: (i, e) for i, e in enumerate(self.entries)}
        self.view = ModelView(path, model, index, analyze(model, index))

    def _read(self, key: str, dtype: str, shape: list[int], scratch=None) -> tuple[np.ndarray, object]:
        """(the tensor, the scratch buffer holding it or None)."""
        spec = self.tensors[key]
        if spec.get("dtype") != dtype or spec.get("shape") != shape:
            raise InputError(f"learngene {self.path}: tensor {key} is {spec.get('dtype')} "
                             f"{spec.get('shape')}, expected {dtype} {shape} (corrupt)")
        begin, end = spec["data_offsets"]
        kind = np.dtype(_NUMPY[dtype]).newbyteorder("<")
        nbytes = int(np.prod(shape)) * kind.itemsize
        raw = scratch.take(nbytes) if scratch is not None else np.empty(max(nbytes, 1), np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            got = f.readinto(memoryview(raw)[:nbytes])
        if got != nbytes or end - begin != nbytes:
            if scratch is not None:
                scratch.give(raw)
            raise InputError(f"learngene {self.path}: tensor {key} is truncated (corrupt)")
        values = raw[:nbytes].view(kind).reshape(shape)
        return values, (raw if scratch is not None else None)

    @property
    def options(self) -> dict:
        return {"convention": self.convention, "keep_ratio": self.keep_ratio}

    def blocks(self, convention: str, keep_ratio: float, backend: Backend) -> "FileBlocks":
        if (convention, float(keep_ratio)) != (self.convention, self.keep_ratio):
            raise InputError(
                f"learngene {self.path} was extracted with --convention {self.convention} "
                f"--keep-ratio {self.keep_ratio:g}, not --convention {convention} --keep-ratio "
                f"{keep_ratio:g}: leave the options out to use the gene's, or extract again")
        return FileBlocks(self, backend)

    def describe(self) -> dict:
        coefficients = sum(int(np.prod(e.kept)) for e in self.entries)
        params = int(self.meta.get("source_parameters", 0))
        return {"format": FORMAT, "format_version": int(self.meta["format_version"]),
                "frontc_version": self.meta.get("frontc_version"),
                "convention": self.convention, "keep_ratio": self.keep_ratio,
                "heads": self.meta.get("heads", "whole"), "conv_view": self.meta.get("conv_view", "flat"),
                "source": self.meta.get("source"), "source_sha256": self.meta.get("source_sha256"),
                "source_parameters": params, "coefficients": coefficients,
                "coefficient_fraction": round(coefficients / params, 6) if params else None,
                "file_bytes": self.path.stat().st_size,
                "blocks": {e.name: {"kept": e.kept, "dtype": e.dtype,
                                    "mean": float(self.stats[i, 0]), "std": float(self.stats[i, 1])}
                           for i, e in enumerate(self.entries)}}


class FileBlocks:
    """Width blocks read from a learngene file (the dct pass's block source for a gene)."""

    def __init__(self, gene: Learngene, backend: Backend):
        self.gene, self.backend = gene, backend

    @staticmethod
    def _stored(weight):
        """The stored weight whose block serves `weight`, None for a constant stand-in, and
        False where the values are needed (BatchNorm folded into a conv on one side only)."""
        from frontc.weights import StandIn, Weight

        if isinstance(weight, StandIn):
            return None if weight.value is not None else weight.like
        return weight if type(weight) is Weight else False

    def missing(self, weight, view) -> str | None:
        """Why this learngene cannot give `weight`'s block in `view`, or None when it can."""
        stored = self._stored(weight)
        if stored is False:
            return ("this source tensor is derived (BatchNorm folded into a conv, or q/k/v split "
                    "from or stacked into a fused projection) and needs the source's values, "
                    "which a learngene does not hold; transfer from the source ONNX instead")
        if stored is not None:
            have = self.gene.by_name[stored.name][1].as_view
            if (have.shape, have.fixed) != (view.shape, view.fixed):
                return (f"the learngene holds this tensor in the {have.kind} view "
                        f"{list(have.shape)}, the target needs the {view.kind} view "
                        f"{list(view.shape)} (extract with the same --heads / --conv-view, or "
                        f"transfer from the source ONNX)")
        return None

    def kept(self, weight, view) -> tuple[int, ...]:
        stored = self._stored(weight)
        if stored is None:
            return view.kept(self.gene.keep_ratio)
        return tuple(self.gene.by_name[stored.name][1].kept)

    def block(self, weight, view, window=None):
        """The stored block (whole: the store cuts it to the window), or a constant's."""
        from frontc.passes.dct import Block, source_block

        stored = self._stored(weight)
        if stored is None:        # a constant: computed exactly as a direct transfer does
            return source_block(weight, self.gene.convention, self.gene.keep_ratio, self.backend,
                                view=view)
        i, entry = self.gene.by_name[stored.name]
        values, raw = self.gene._read(entry.key, entry.dtype, entry.stored, self.backend.scratch)
        values = self.backend.asarray(values, values.dtype)
        values = values.T if entry.transposed else values      # the same layout as computed
        mean, std, energy = (float(v) for v in self.gene.stats[i])
        return Block(values, mean, std, energy, raw)
