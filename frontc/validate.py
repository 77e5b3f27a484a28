"""Checks on a written model: onnx.checker, then one onnxruntime run with finite outputs.

The checks run in a child process (`python -P frontc/validate.py --serve`, which imports only
onnx, onnxruntime and numpy, started on first use and reused): onnxruntime can crash outright
on some valid graphs (a segmentation fault loading a LayerNormalization whose optional bias is
empty, in 1.32), and such a crash must not take frontc down before it has removed its
temporary output folder. A crash, a timeout or a failed check is a PipelineError (exit 1), the
output is not written; the next check starts a fresh child.

Models in float16 or bfloat16 that this onnxruntime build has no kernels for (bfloat16 on CPU,
mostly) are run as their float32 twin instead: the same graph and weights with every float16 /
bfloat16 tensor, type and cast widened to float32. frontc never changes op types or dtypes, so
a missing kernel is the target's, not frontc's; the twin still proves that the new weights run
and give finite outputs.

This module imports nothing from frontc at the top, so that the child process starts fast.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx

SYMBOLIC_DIM = 1  # the size given to symbolic dimensions (batch, sequence) of the test input
MAX_TEST_VALUES = 1 << 28  # a test input larger than this (1 GiB of float32) is refused
TIMEOUT_S = float(os.environ.get("FRONTC_VALIDATE_TIMEOUT", 1800))

_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
          "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
          "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64}
try:  # bfloat16 arrays come from ml_dtypes (a dependency of onnx and onnx_ir)
    import ml_dtypes

    _NUMPY["tensor(bfloat16)"] = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover
    ml_dtypes = None

_HALF = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


class Invalid(Exception):
    """A failed check (becomes frontc.errors.PipelineError in the parent)."""


def _is_float(dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or (ml_dtypes is not None and dtype == ml_dtypes.bfloat16)


def example_inputs(session) -> dict[str, np.ndarray]:
    """Inputs from the declared shapes: symbolic dims -> 1, floats normal, integers zero."""
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d >= 0 else SYMBOLIC_DIM for d in arg.shape]
        dtype = _NUMPY.get(arg.type)
        if dtype is None:
            raise Invalid(f"cannot build a test input of type {arg.type} for '{arg.name}' "
                          f"(run with --no-validate to skip the test run)")
        if math.prod(shape) > MAX_TEST_VALUES:
            raise Invalid(f"the test input '{arg.name}' would hold {math.prod(shape):,} values "
                          f"(declared shape {shape}); run with --no-validate to skip the test run")
        if _is_float(dtype):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[arg.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[arg.name] = np.zeros(shape, dtype=dtype)
    return feeds


def session(path: Path | bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions; ORT's own log would add lines
    # One run only: pre-packing the weights for faster repeated MatMuls would copy them all
    # (1.32 GiB model: session 3.45 s and 2.18 GiB peak with it, 2.01 s and 1.64 GiB without;
    # benchmarks/bench_validate.py).
    options.add_session_config_entry("session.disable_prepacking", "1")
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _unsupported(err: Exception) -> bool:
    """True when onnxruntime refused the model for a kernel or a float16/bfloat16 type it lacks."""
    text = str(err)
    return (type(err).__name__ == "NotImplemented" or "NOT_IMPLEMENTED" in text
            or "tensor(bfloat16)" in text or "tensor(float16)" in text)


def _widen_tensor(t: onnx.TensorProto) -> None:
    if t.data_type in _HALF:
        from onnx import numpy_helper

        values = numpy_helper.to_array(t).astype(np.float32)
        widened = numpy_helper.from_array(values, t.name)
        t.Clear()
        t.CopyFrom(widened)


def _widen_graph(graph: onnx.GraphProto) -> None:
    for t in graph.initializer:
        _widen_tensor(t)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in _HALF:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attr.t)
            elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype", "output_dtype") \
                    and attr.i in _HALF:
                attr.i = onnx.TensorProto.FLOAT
            elif attr.type == onnx.AttributeProto.GRAPH:
                _widen_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _widen_graph(g)


def float32_twin(path: Path) -> onnx.ModelProto | None:
    """`path`'s model with float16/bfloat16 widened to float32, or None if it has neither."""
    model = onnx.load(str(path))
    before = model.SerializeToString()
    _widen_graph(model.graph)
    return None if model.SerializeToString() == before else model


def _open(path: Path):
    """An onnxruntime session for `path`, or for its float32 twin when the runtime lacks kernels."""
    try:
        return session(path)
    except Exception as err:
        if not _unsupported(err):
            raise Invalid(f"onnxruntime cannot run the written model: {err}") from None
        first = err
    twin = float32_twin(path)
    if twin is None:
        raise Invalid(f"onnxruntime cannot run the written model: {first}")
    try:
        if twin.ByteSize() < (1 << 31) - (1 << 24):
            return session(twin.SerializeToString())
        twin_path = path.with_name(".float32_twin.onnx")
        onnx.save(twin, str(twin_path), save_as_external_data=True, location=twin_path.name + ".data")
        return session(twin_path)
    except Exception:
        raise Invalid(f"onnxruntime cannot run the written model (nor its float32 twin): "
                      f"{first}") from None


# -- onnx.checker without the weights' bytes ---------------------------------------------------

def _read_varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(number, wire type, value start, value end, field start) of each protobuf field in
    buf[start:end]; a length-delimited value's bytes are skipped, not read."""
    pos = start
    while pos < end:
        first = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, after = _read_varint(buf, pos)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            after = pos + length
        elif wire in (1, 5):
            after = pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield number, wire, pos, after, first
        pos = after
    if pos != end:
        raise ValueError("a field runs past its message")


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_header(number: int, length: int) -> bytes:
    """The tag and length of a length-delimited protobuf field (frontc.modelio writes with it
    too: this module imports nothing from frontc, so the helpers live here)."""
    return varint(number << 3 | 2) + varint(length)


def _delimited(number: int, payload: bytes) -> bytes:
    return field_header(number, len(payload)) + payload


def without_tensor_bytes(path: Path) -> bytes:
    """The model file at `path` re-encoded with every top-level initializer's raw_data replaced
    by an external-data reference to where those bytes lie in the file itself: everything
    onnx.checker reads, without parsing (or holding) the weights (1.32 GiB model: 0.02 s and
    0.12 GiB against 1.84 s and 2.76 GiB; benchmarks/bench_validate.py). onnxruntime, which
    loads the file next, checks each tensor's byte size against its shape and dtype."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        model = bytearray()
        for number, wire, start, end, first in _fields(buf, 0, len(buf)):
            if (number, wire) != (7, 2):                          # ModelProto.graph
                model += buf[first:end]
                continue
            graph = bytearray()
            for n, w, a, b, f0 in _fields(buf, start, end):
                if (n, w) == (5, 2):                              # GraphProto.initializer
                    graph += _delimited(5, _by_reference(buf, a, b, path.name))
                else:
                    graph += buf[f0:b]
            model += _delimited(7, bytes(graph))
    return bytes(model)


def _by_reference(buf, start: int, end: int, location: str) -> bytes:
    """The TensorProto in buf[start:end] with its raw_data (field 9), if any, replaced by an
    external-data reference to the same bytes in the file `location`."""
    tensor, raw = bytearray(), None
    for number, wire, a, b, first in _fields(buf, start, end):
        if (number, wire) == (9, 2):
            raw = (a, b - a)
        else:
            tensor += buf[first:b]
    if raw is not None:
        for key, value in (("location", location), ("offset", raw[0]), ("length", raw[1])):
            tensor += _delimited(13, _delimited(1, key.encode()) + _delimited(2, str(value).encode()))
        tensor += bytes([14 << 3, 1])                             # data_location = EXTERNAL
    return bytes(tensor)


def run_checker(path: Path, light: bool) -> None:
    """onnx.checker on the file; with `light`, on its re-encoding without the weights' bytes,
    run from the file's folder (the checker resolves the references there, relative to the
    working directory: only the checking child, which does nothing else, changes it)."""
    if light:
        try:
            encoded = without_tensor_bytes(path)
        except (ValueError, IndexError, OSError):   # not plain protobuf: the full check says why
            encoded = None
        if encoded is not None:
            here = os.getcwd()
            os.chdir(path.parent)
            try:
                onnx.checker.check_model(encoded)
            finally:
                os.chdir(here)
            return
    onnx.checker.check_model(str(path))


def check_here(path: Path, light: bool = False) -> None:
    """The checks, in this process: raise Invalid unless `path` passes onnx.checker and runs in
    onnxruntime with finite outputs (`light`: see run_checker)."""
    try:
        run_checker(Path(path).resolve(), light)
    except Exception as err:
        raise Invalid(f"the written model fails onnx.checker: {err}") from None
    sess = _open(Path(path))
    try:
        outputs = sess.run(None, example_inputs(sess))
    except Invalid:
        raise
    except Exception as err:
        raise Invalid(f"onnxruntime cannot run the written model: {err}") from None
    for meta, out in zip(sess.get_outputs(), outputs):
        out = np.asarray(out)
        if _is_float(out.dtype) and not np.all(np.isfinite(out.astype(np.float64))):
            raise Invalid(f"the written model's output '{meta.name}' is not finite on a "
                          f"test input (NaN or Inf)")


class _Checker:
    """The child process that runs the checks: started on first use, then reused (one model
    path in per line on stdin, one JSON result out per line on stdout), restarted after a
    crash. It lives in its own session, so a Ctrl-C at the terminal reaches frontc only, which
    then stops it; it ends when frontc closes its stdin or exits."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.errors = None
        self.lock = threading.Lock()

    def start(self) -> None:
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).resolve()), "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, text=True,
            bufsize=1, start_new_session=True)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.kill()
                proc.wait(timeout=10)
            except Exception:
                pass
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except Exception:
                    pass

    def last_error_line(self) -> str:
        try:
            self.errors.seek(0)
            lines = self.errors.read().decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else "no output"
        except Exception:
            return "no output"

    def ask(self, path: Path) -> dict:
        """The child's answer for `path`; raises Crashed or TimeoutError."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.stop()
                self.start()
            proc = self.proc
            try:
                proc.stdin.write(json.dumps({"path": str(path)}) + "\n")
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT_S)
                line = proc.stdout.readline() if ready else None
            except BrokenPipeError:
                line = ""
            except BaseException:          # an interrupt: the child's state is unknown
                self.stop()
                raise
            if line is None:
                self.stop()
                raise TimeoutError
            if not line:                   # the child died
                code = proc.wait()
                detail = self.last_error_line()
                self.stop()
                raise Crashed(code, detail)
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                self.stop()
                raise Crashed(0, line.strip()[:200]) from None


class Crashed(Exception):
    def __init__(self, code: int, detail: str):
        super().__init__(code, detail)
        self.code, self.detail = code, detail


_checker = _Checker()
atexit.register(_checker.stop)


def check_model(path: Path, isolate: bool = True) -> None:
    """Raise PipelineError unless `path` passes onnx.checker and runs with finite outputs.

    `isolate` (the default) runs the checks in a child process, so that a crash of onnxruntime
    is reported instead of ending frontc."""
    from frontc.errors import PipelineError

    if not isolate:
        try:
            check_here(Path(path))
        except Invalid as err:
            raise PipelineError(str(err)) from None
        return
    try:
        result = _checker.ask(Path(path).resolve())
    except TimeoutError:
        raise PipelineError(f"checking the written model took over {TIMEOUT_S:.0f} s "
                            f"(FRONTC_VALIDATE_TIMEOUT; --no-validate skips the check)") from None
    except Crashed as crash:
        if crash.code < 0:
            name = signal.Signals(-crash.code).name
            raise PipelineError(f"onnxruntime crashed ({name}) checking the written model, whose "
                                f"graph is the target's: check the target itself with "
                                f"onnxruntime, or skip the check with --no-validate") from None
        raise PipelineError(f"checking the written model failed (exit {crash.code}): "
                            f"{crash.detail}") from None
    if result.get("error"):
        raise PipelineError(result["error"])


def _serve() -> None:
    """The child: one model path per line in, one JSON result per line out."""
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(4)
    except Exception:
        pass
    for line in sys.stdin:
        try:
            check_here(Path(json.loads(line)["path"]), light=True)
            answer = {"ok": True}
        except Invalid as err:
            answer = {"error": str(err)}
        except Exception as err:    # a bug in the checks themselves: report it, keep serving
            answer = {"error": f"checking the written model failed: {type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":   # the child process of check_model
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:                    # one model, by hand: python -P frontc/validate.py MODEL
        try:
            check_here(Path(sys.argv[1]))
            print(json.dumps({"ok": True}))
        except Invalid as err:
            print(json.dumps({"error": str(err)}))
            sys.exit(1)
