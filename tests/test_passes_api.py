"""The pass API: plugins from a file and from an installed package, name clashes, the pipeline
check, --print-after, and the recorded pipeline re-running to the same bytes."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import ROOT, digest, frontc_cli

TUTORIAL = ROOT / "examples" / "plugin" / "frontc_copy_embeddings" / "copy_embeddings.py"
PIPELINE = "canonicalize,match,dct,resize,copy-embeddings{scale=1.0},emit"


def embedder(path, width, seed):
    """ids -> Gather(table [50, width]) -> MatMul([width, 4]) -> logits."""
    rng = np.random.default_rng(seed)
    table = numpy_helper.from_array(rng.standard_normal((50, width)).astype(np.float32), "table")
    head = numpy_helper.from_array(rng.standard_normal((width, 4)).astype(np.float32), "head")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "head"], ["y"])],
        "embedder", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [table, head])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def pair(tmp_path):
    return embedder(tmp_path / "big.onnx", 16, 1), embedder(tmp_path / "small.onnx", 8, 2)


def table(path):
    return numpy_helper.to_array(next(t for t in onnx.load(path).graph.initializer if t.name == "table"))


def test_tutorial_pass_from_a_file(pair, tmp_path):
    big, small = pair
    out = tmp_path / "out.onnx"
    result = frontc_cli("--plugin", TUTORIAL, "transfer", big, small, "-o", out, "-p", PIPELINE)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(table(out), table(big)[:, :8])          # copied, not DCT-resized
    plain = tmp_path / "plain.onnx"
    assert frontc_cli("transfer", big, small, "-o", plain).returncode == 0
    assert not np.allclose(table(plain), table(big)[:, :8])      # the default pass differs


def test_tutorial_pass_as_an_installed_plugin(pair, tmp_path):
    site = tmp_path / "site"
    (site / "frontc_copy_embeddings").mkdir(parents=True)
    shutil.copytree(ROOT / "examples/plugin/frontc_copy_embeddings", site / "frontc_copy_embeddings",
                    dirs_exist_ok=True)
    info = site / "frontc_copy_embeddings-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: frontc-copy-embeddings\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[frontc.passes]\ncopy-embeddings = frontc_copy_embeddings.copy_embeddings:CopyEmbeddings\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "frontc", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, env=env)
    listing = run("passes")
    assert "copy-embeddings: give embedding tables" in listing.stdout
    assert "[installed plugin frontc-copy-embeddings]" in listing.stdout
    big, small = pair
    result = run("transfer", big, small, "-o", tmp_path / "out.onnx", "-p", PIPELINE)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(table(tmp_path / "out.onnx"), table(big)[:, :8])


def test_a_plugin_cannot_silently_replace_a_built_in(pair, tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text(TUTORIAL.read_text().replace('name = "copy-embeddings"', 'name = "dct"'))
    result = frontc_cli("--plugin", clash, "passes")
    assert result.returncode == 2 and "clashes with a built-in pass" in result.stderr
    result = frontc_cli("--plugin", clash, "--replace-pass", "dct", "passes")
    assert result.returncode == 0 and f"dct: give embedding tables" in result.stdout


def test_every_built_in_pass_is_listed_with_its_options():
    out = frontc_cli("passes").stdout
    for name in ("canonicalize", "match", "dct", "resize", "emit", "select"):
        assert f"{name}: " in out
    assert "keep_ratio=1.0" in out and "depth_mode=zero (one of zero, repeat, random)" in out


def test_pipeline_reading_what_nothing_wrote_is_refused(pair, tmp_path):
    result = frontc_cli("transfer", *pair, "-o", tmp_path / "o.onnx", "-p", "canonicalize,match,resize,emit")
    assert result.returncode == 2 and "reads genes" in result.stderr and "add dct before it" in result.stderr


def test_print_after_dumps_the_state(pair, tmp_path):
    result = frontc_cli("transfer", *pair, "-o", tmp_path / "o.onnx", "--print-after", "match")
    assert result.returncode == 0
    dump = json.loads(result.stderr)
    assert dump["after"] == "match" and dump["plan"]["mapped_tensors"] == 2 and dump["updates"] == []


def test_recorded_pipeline_reruns_to_identical_bytes(exported, tmp_path):
    source, target = exported("ViT", "legacy", 1, depth=4), exported("ViT", "legacy", 2, width=48, depth=6)
    first = tmp_path / "first.onnx"
    assert frontc_cli("transfer", source, target, "-o", first, "--convention", "ortho",
                      "--keep-ratio", "0.75", "--depth-mode", "random", "--seed", "3").returncode == 0
    recorded = {p.key: p.value for p in onnx.load(first).metadata_props}["frontc.pipeline"]
    again = tmp_path / "again.onnx"
    assert frontc_cli("transfer", source, target, "-o", again, "-p", recorded).returncode == 0
    assert digest(first) == digest(again)
