"""Checks on a written model: onnx.checker, then one onnxruntime run with finite outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from frontc.errors import PipelineError

SYMBOLIC_DIM = 1  # the size given to symbolic dimensions (batch, sequence) of the test input

_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
          "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}


def example_inputs(session) -> dict[str, np.ndarray]:
    """Inputs from the declared shapes: symbolic dims -> 1, floats normal, integers zero."""
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else SYMBOLIC_DIM for d in arg.shape]
        dtype = _NUMPY.get(arg.type)
        if dtype is None:
            raise PipelineError(f"cannot build a test input of type {arg.type} for '{arg.name}'")
        if np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[arg.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[arg.name] = np.zeros(shape, dtype=dtype)
    return feeds


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_model(path: Path) -> None:
    """Raise PipelineError unless `path` passes onnx.checker and runs with finite outputs."""
    try:
        onnx.checker.check_model(str(path))
    except Exception as err:
        raise PipelineError(f"the written model fails onnx.checker: {err}") from None
    try:
        sess = session(path)
        outputs = sess.run(None, example_inputs(sess))
    except PipelineError:
        raise
    except Exception as err:
        raise PipelineError(f"onnxruntime cannot run the written model: {err}") from None
    for meta, out in zip(sess.get_outputs(), outputs):
        out = np.asarray(out)
        if np.issubdtype(out.dtype, np.floating) and not np.all(np.isfinite(out)):
            raise PipelineError(f"the written model's output '{meta.name}' is not finite on a "
                                f"test input (NaN or Inf)")
