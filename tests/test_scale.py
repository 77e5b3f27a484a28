"""Streaming: a source with external data is read one depth group at a time, so a transfer's
peak memory stays far below the source's size (measured in a subprocess, resource.getrusage)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx_ir as ir
import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpt  # noqa: E402  (benchmarks/gpt.py)

MB = 1 << 20
PROBE = """
import json, resource, sys
import frontc, onnxruntime, scipy.fft  # everything a transfer imports, before the baseline
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = peak()
frontc.transfer(sys.argv[1], sys.argv[2], sys.argv[3], keep_ratio=float(sys.argv[4]))
print(json.dumps({"base": base, "peak": peak()}))
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    source = gpt.build(d / "src.onnx", 768, 12, vocab=2000, context=128, seed=0)   # ~350 MB
    target = gpt.build(d / "tgt.onnx", 384, 3, vocab=2000, context=128, seed=1)    # ~24 MB
    return source, target


def test_source_with_external_data_streams_under_a_memory_bound(big, tmp_path):
    source, target = big
    source_bytes = (source.parent / "src.onnx.data").stat().st_size
    target_bytes = (target.parent / "tgt.onnx.data").stat().st_size
    group = 12 * 768 * 3072 * 4              # the largest depth group: 12 MLP weights, float32
    out = tmp_path / "out.onnx"
    run = subprocess.run([sys.executable, "-c", PROBE, str(source), str(target), str(out), "1.0"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    rss = json.loads(run.stdout.strip().splitlines()[-1])
    used = rss["peak"] - rss["base"]
    # Stated bound: one depth group of the source, the target's weights four times over (the
    # new tensors, and protobuf's copies while saving an inline output), and 64 MB.
    bound = group + 4 * target_bytes + 64 * MB
    print(f"peak RSS above baseline {used // MB} MB, bound {bound // MB} MB")
    assert used < bound, (used // MB, bound // MB)
    assert used < 0.8 * source_bytes, (used // MB, source_bytes // MB)   # never the whole source
    weights = {v.name: v.const_value.numpy() for v in ir.load(out).graph.initializers.values()}
    fc = weights["h.2.mlp.fc.weight"]
    assert fc.shape == (384, 1536) and fc.dtype == np.float32 and np.all(np.isfinite(fc))
