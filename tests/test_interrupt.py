"""Nothing lost: an interrupted run (SIGINT or SIGTERM while the output is being written) leaves
neither a partial output nor a temporary folder; an existing output is replaced whole or not at
all; inputs are byte-identical afterwards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontc import modelio
from helpers import digest

ROOT = Path(__file__).resolve().parents[1]


def wide_mlp(width, depth, seed) -> onnx.ModelProto:
    """A plain Gemm/Relu chain, wide enough that writing and validating it takes a moment."""
    rng = np.random.default_rng(seed)
    nodes, inits, h = [], [], "x"
    for i in range(depth):
        inits += [numpy_helper.from_array(rng.standard_normal((width, width), np.float32) * 0.02, f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(width, np.float32) * 0.02, f"b{i}")]
        nodes += [helper.make_node("Gemm", [h, f"w{i}", f"b{i}"], [f"g{i}"], transB=1),
                  helper.make_node("Relu", [f"g{i}"], [f"r{i}"])]
        h = f"r{i}"
    inits.append(numpy_helper.from_array(rng.standard_normal((4, width), np.float32) * 0.02, "head"))
    nodes.append(helper.make_node("Gemm", [h, "head"], ["y"], transB=1))
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    source, target = folder / "source.onnx", folder / "target.onnx"
    onnx.save(wide_mlp(1536, 4, 1), str(source))     # 38 MB
    onnx.save(wide_mlp(1536, 3, 2), str(target))     # 28 MB: the output's size
    return source, target


def temp_folders(folder: Path, name: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def interrupt_mid_write(args, out: Path, signum: int, prelude: str = "") -> subprocess.CompletedProcess:
    """Start `frontc transfer`, wait for its temporary output folder to appear, send `signum`."""
    code = f"{prelude}\nfrom frontc.cli import main\nmain()"
    proc = subprocess.Popen([sys.executable, "-c", code, "transfer", *map(str, args), "-o", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if temp_folders(out.parent, out.name):
            proc.send_signal(signum)
            break
        time.sleep(0.002)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("signum,existing,external", [
    (signal.SIGINT, False, False),
    (signal.SIGTERM, True, False),
    (signal.SIGTERM, True, True),
])
def test_interrupt_during_the_write_leaves_nothing_partial(big_pair, tmp_path, signum, existing, external):
    source, target = big_pair
    hashes = digest(source), digest(target)
    out = tmp_path / "out.onnx"
    if existing:
        out.write_bytes(b"the previous output")
        (tmp_path / "out.onnx.data").write_bytes(b"its external data")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # external: pretend the weights pass 2 GB, so the output goes to out.onnx + out.onnx.data.
    prelude = "import frontc.modelio as m; m.PROTOBUF_LIMIT = 1000" if external else ""
    result = interrupt_mid_write([source, target], out, signum, prelude)
    assert temp_folders(tmp_path, "out.onnx") == []                   # no temp folder left
    assert (digest(source), digest(target)) == hashes                  # inputs untouched
    if result.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast)")
    assert result.returncode == 128 + signum, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in result.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if after != before:   # the signal landed after the rename: the new output is whole
        assert set(after) >= {"out.onnx"}
        modelio.load(out, "output")
        onnx.checker.check_model(str(out))
    else:
        assert after == before                       # the previous output, byte for byte


def test_sigterm_before_the_write_exits_143_and_writes_nothing(big_pair, tmp_path):
    source, target = big_pair
    out = tmp_path / "out.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "frontc", "transfer", str(source), str(target),
                             "-o", str(out), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    time.sleep(1.0)   # imports and loading: well before any output exists
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode in (143, -signal.SIGTERM), stderr   # -15: still importing Python modules
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_on_keyboard_interrupt(tmp_path):
    final = tmp_path / "model.onnx"
    final.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with modelio.AtomicOutput(final) as tmp:
            tmp.write_bytes(b"new, half written")
            (tmp.parent / "model.onnx.data").write_bytes(b"sidecar")
            raise KeyboardInterrupt
    assert final.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_atomic_output_replaces_whole(tmp_path):
    final = tmp_path / "model.onnx"
    final.write_bytes(b"old")
    with modelio.AtomicOutput(final) as tmp:
        tmp.write_bytes(b"new")
        assert final.read_bytes() == b"old"          # untouched until the rename
    assert final.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_atomic_output_when_the_rename_fails(tmp_path, monkeypatch):
    final = tmp_path / "model.onnx"
    final.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError("disk full")

    with pytest.raises(OSError):
        with modelio.AtomicOutput(final) as tmp:
            tmp.write_bytes(b"new")
            monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.undo()
    assert final.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# --------------------------------------------------------------------------- native crashes

def test_a_crash_of_the_checking_process_is_an_error_not_a_crash(tmp_path, monkeypatch):
    """onnxruntime runs in a child process: if it dies (SIGSEGV), frontc reports it and still
    removes its temporary folder. (Here every check crashes, the target's own as well, so the
    error blames the target: exit 2.)"""
    import frontc
    from frontc.errors import InputError

    sys.path.insert(0, str(ROOT / "tests"))
    import onnxedit as oe

    source = oe.save(oe.mlp(8, 3, seed=1), tmp_path / "s.onnx")
    target = oe.save(oe.mlp(5, 2, seed=2), tmp_path / "t.onnx")
    crasher = tmp_path / "crash.sh"
    crasher.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crasher.chmod(0o755)
    from frontc import validate

    validate._checker.stop()        # the next check starts a child: the crashing one
    monkeypatch.setattr(sys, "executable", str(crasher))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        with pytest.raises(InputError, match="fails the same checks on its own: .*crashed \\(SIGSEGV\\)"):
            frontc.transfer(source, target, out_dir / "o.onnx")
    finally:
        validate._checker.stop()
    assert list(out_dir.iterdir()) == []


def test_target_that_crashes_onnxruntime(tmp_path):
    """A valid target whose LayerNormalization leaves its optional bias empty: onnxruntime 1.32
    crashes (SIGSEGV) creating a session for it. frontc survives it: one line, exit 2 (the target
    fails on its own), nothing left (or, with an onnxruntime that does not crash, a normal
    transfer)."""
    from click.testing import CliRunner

    from frontc.cli import main

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import seeds

    def no_bias(model):
        for node in model.graph.node:
            if node.op_type == "LayerNormalization":
                node.input[2] = ""
                break
        return model

    source = tmp_path / "s.onnx"
    target = tmp_path / "t.onnx"
    onnx.save(seeds.tfm(8, 2, seed=1), str(source))
    onnx.save(no_bias(seeds.tfm(6, 1, seed=2)), str(target))
    onnx.checker.check_model(str(target), full_check=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = CliRunner().invoke(main, ["transfer", str(source), str(target), "-o", str(out_dir / "o.onnx")])
    if result.exit_code == 0:
        assert [p.name for p in out_dir.iterdir()] == ["o.onnx"]
        return
    assert result.exit_code == 2 and "crashed (SIGSEGV)" in result.stderr
    assert "fails the same checks on its own" in result.stderr
    assert result.stderr.count("\n") == 1
    assert list(out_dir.iterdir()) == []
