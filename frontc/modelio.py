"""Reading models with precise errors, and writing them atomically.

Inputs are only ever read. An output is written into a temporary folder beside its final path,
validated, then renamed into place, so a failure (or an interrupt) never leaves a half-written file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import onnx_ir as ir

from frontc.errors import InputError

# The protobuf limit: a model file over 2 GB must keep its tensors in external data.
PROTOBUF_LIMIT = 2**31 - 2**24


def load(path: str | os.PathLike, what: str = "model") -> ir.Model:
    """Load an ONNX model with onnx_ir (external tensors stay memory-mapped, not read)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path}: the file is empty, not an ONNX model")
    try:
        model = ir.load(path)
    except Exception as err:  # protobuf raises DecodeError, others raise their own types
        raise InputError(f"{what} {path}: not a readable ONNX model ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'corrupt'})") from None
    if len(model.graph) == 0 or not model.graph.outputs:
        raise InputError(f"{what} {path}: not an ONNX model (no graph nodes or outputs)")
    check_external_data(model, path, what)
    return model


def check_external_data(model: ir.Model, path: Path, what: str) -> None:
    """Fail early when an external data file is missing or shorter than a tensor needs."""
    sizes: dict[Path, int] = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        data = Path(tensor.base_dir) / tensor.location
        if data not in sizes:
            if not data.is_file():
                raise InputError(f"{what} {path}: external data file {data} is missing "
                                 f"(needed by tensor '{value.name}'); keep it beside the model")
            sizes[data] = data.stat().st_size
        end = (tensor.offset or 0) + (tensor.length or tensor.nbytes)
        if end > sizes[data]:
            raise InputError(f"{what} {path}: external data file {data} is {sizes[data]} bytes, "
                             f"but tensor '{value.name}' needs bytes up to {end} (truncated file?)")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None)


def refuse_overwriting_inputs(output: Path, inputs: list[Path]) -> None:
    out = output.resolve()
    for path in inputs:
        src = Path(path).resolve()
        if out == src or out.with_name(out.name + ".data") == src.with_name(src.name + ".data"):
            raise InputError(f"output {output} would overwrite the input {path}: choose another -o")


class AtomicOutput:
    """`with AtomicOutput(final) as tmp:` write to `tmp`; renamed to `final` only on success.

    A sidecar `<name>.data` (external data) written next to `tmp` moves along with it.
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", dir=self.final.parent))
        return self.folder / self.final.name

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                data = self.folder / (self.final.name + ".data")
                if data.exists():
                    os.replace(data, self.final.with_name(self.final.name + ".data"))
                os.replace(self.folder / self.final.name, self.final)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def save(model: ir.Model, path: Path) -> None:
    """Save `model` to `path`; tensors go to `<name>.data` when the file would pass 2 GB."""
    if tensor_bytes(model) > PROTOBUF_LIMIT:
        ir.save(model, path, external_data=path.name + ".data")
    else:
        ir.save(model, path)
