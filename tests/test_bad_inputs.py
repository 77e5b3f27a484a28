"""The bad-input corpus (docs/errors.md): every case gives its documented exit code, one line
naming the file and the fault, no traceback (unless --debug), no output and no temporary
folder left, and inputs byte-identical afterwards.

The bad files are built here from small valid models (tests/onnxedit.py); nothing binary is
committed. The command line runs in-process (click's CliRunner: same code, same exit codes,
no interpreter start-up per case); test_cli.py runs the real `python -m frontc` for a few.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxedit as oe
from frontc.cli import main


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def pair(tmp_path):
    """A small valid source (8 wide, 3 blocks) and target (5 wide, 2 blocks)."""
    return (oe.save(oe.mlp(8, 3, seed=1), tmp_path / "source.onnx"),
            oe.save(oe.mlp(5, 2, seed=2), tmp_path / "target.onnx"))


def good_bytes(width=8, depth=3, seed=1) -> bytes:
    return oe.mlp(width, depth, seed=seed).SerializeToString()


# --------------------------------------------------------------------------- the corpus
# Each builder writes one bad model into `folder` and returns (path, words the message must hold).

def not_onnx(folder):
    p = folder / "notes.onnx"
    p.write_text("this is not a model\n")
    return p, "not a readable ONNX model"


def truncated(folder):
    p = folder / "truncated.onnx"
    p.write_bytes(good_bytes()[:-37])   # cut inside the last tensor's raw data
    return p, "not a readable ONNX model"


def empty(folder):
    p = folder / "empty.onnx"
    p.write_bytes(b"")
    return p, "the file is empty"


def folder_not_file(folder):
    p = folder / "model.onnx"
    p.mkdir()
    return p, "is a folder"


def missing_external(folder):
    sub = folder / "ext"
    sub.mkdir()
    p = oe.save(oe.mlp(8, 3, seed=1), sub / "big.onnx", external=True)
    (sub / "big.onnx.data").unlink()
    return p, "external data file"


def short_external(folder):
    sub = folder / "short"
    sub.mkdir()
    p = oe.save(oe.mlp(8, 3, seed=1), sub / "big.onnx", external=True)
    data = sub / "big.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    return p, "truncated file?"


def escaping_external(folder):
    model = oe.mlp(8, 3, seed=1)
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../outside.bin"), ("offset", "0")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return oe.save(model, folder / "escape.onnx"), "not a file inside the model's folder"


def shape_vs_data(folder):
    model = oe.mlp(8, 3, seed=1)
    model.graph.initializer[2].dims[0] += 1       # declares [9, 8], stores 8 x 8 floats
    return oe.save(model, folder / "shape.onnx"), "declares shape [9, 8]"


def no_data(folder):
    model = oe.mlp(8, 3, seed=1)
    model.graph.initializer[2].ClearField("raw_data")
    return oe.save(model, folder / "nodata.onnx"), "stores 0"


def bad_utf8(folder):
    data = good_bytes()
    name = b"relu1"
    assert data.count(name) >= 1
    return _write(folder / "utf8.onnx", data.replace(name, b"re\x80u1")), "not UTF-8"


def dangling(folder):
    model = oe.mlp(8, 3, seed=1)
    model.graph.node[2].input[0] = "nowhere"
    return oe.save(model, folder / "dangling.onnx"), "reads 'nowhere'"


def cycle(folder):
    model = oe.mlp(8, 3, seed=1)
    model.graph.node[2].input[0] = model.graph.node[5].output[0]   # gemm1 reads relu2
    return oe.save(model, folder / "cycle.onnx"), "has a cycle"


def attribute_type(folder):
    model = oe.mlp(8, 3, seed=1)
    node = model.graph.node[0]
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("transB", "yes"))
    return oe.save(model, folder / "attr.onnx"), "attribute 'transB' of type STRING"


def bad_perm(folder):
    model = oe.mlp(8, 3, seed=1)
    g = model.graph
    t = next(t for t in g.initializer if t.name == "w1")
    t.name = "w1_t"
    g.node.insert(0, helper.make_node("Transpose", ["w1_t"], ["w1"], name="tr", perm=[0, 0]))
    return oe.save(model, folder / "perm.onnx"), "not a permutation"


def operator_quantized(folder):
    model = oe.qdq_weights(oe.mlp(8, 3, seed=1))
    node = model.graph.node[-1]            # the head Gemm becomes a QGemm (com.microsoft)
    node.op_type, node.domain = "QGemm", "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return oe.save(model, folder / "qop.onnx"), "quantized in operator form (QGemm)"


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# (builder, exit code, as source, as target)
CORPUS = {
    "not ONNX bytes": (not_onnx, 2),
    "truncated protobuf": (truncated, 2),
    "empty file": (empty, 2),
    "a folder": (folder_not_file, 2),
    "missing external data": (missing_external, 2),
    "short external data": (short_external, 2),
    "external data outside the folder": (escaping_external, 2),
    "shape disagrees with data": (shape_vs_data, 2),
    "tensor without data": (no_data, 2),
    "names not UTF-8": (bad_utf8, 2),
    "value nothing produces": (dangling, 2),
    "cycle": (cycle, 2),
    "attribute of the wrong type": (attribute_type, 2),
    "Transpose perm not a permutation": (bad_perm, 2),
    "operator-quantized": (operator_quantized, 2),
}


@pytest.mark.parametrize("side", ["source", "target"])
@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_input_one_line_exit_code_nothing_left(case, side, pair, tmp_path):
    build, code = CORPUS[case]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad, words = build(bad_dir)
    source, target = (bad, pair[1]) if side == "source" else (pair[0], bad)
    inputs = [p for p in (source, target) if p.is_file()]
    hashes = {p: sha(p) for p in inputs}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.onnx"
    result = run("transfer", source, target, "-o", out)
    assert result.exit_code == code, (case, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, (case, result.stderr)
    assert lines[0].startswith("frontc: error: ") and words in lines[0], (case, lines[0])
    assert f"{side} {bad}" in lines[0], (case, lines[0])       # names the file and its role
    assert "Traceback" not in result.stderr + result.stdout
    assert listing(out_dir) == []                                 # no output, no temp folder
    assert {p: sha(p) for p in inputs} == hashes                  # inputs untouched


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_inspect_refuses_the_same(case, tmp_path):
    build, code = CORPUS[case]
    bad, words = build(tmp_path)
    if case == "operator-quantized":
        words = "quantized"
    result = run("inspect", "--json", bad)
    assert result.exit_code == code and words in result.stderr and result.stderr.count("\n") == 1


def test_debug_adds_the_traceback(pair, tmp_path):
    bad, _ = shape_vs_data(tmp_path)
    result = run("--debug", "transfer", bad, pair[1], "-o", tmp_path / "o.onnx")
    assert result.exit_code == 2 and "Traceback" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


# --------------------------------------------------------------------------- handled cases

def run_onnx(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


X = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)


def test_zero_size_dimensions_are_kept_as_they_are(tmp_path):
    source = oe.save(oe.mlp(8, 3, seed=1, zero_branch=True), tmp_path / "s.onnx")
    target = oe.save(oe.mlp(5, 2, seed=2, zero_branch=True), tmp_path / "t.onnx")
    out = tmp_path / "o.onnx"
    result = run("transfer", source, target, "-o", out)
    assert result.exit_code == 0, result.stderr
    empty = next(t for t in onnx.load(out).graph.initializer if t.name == "w_empty")
    assert list(empty.dims) == [0, 5]
    assert run_onnx(out, X).shape == (2, 3)


def test_zero_size_declared_input_dimension_is_honoured_by_validation(tmp_path):
    def model(width, depth, seed):
        m = oe.mlp(width, depth, seed=seed)
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0     # batch of 0
        m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 0
        return m
    source = oe.save(model(8, 3, 1), tmp_path / "s.onnx")
    target = oe.save(model(5, 2, 2), tmp_path / "t.onnx")
    result = run("transfer", source, target, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 0, result.stderr


def test_ir3_initializers_listed_as_graph_inputs(tmp_path):
    source = oe.save(oe.mlp(8, 3, seed=1, opset=8, ir_version=3), tmp_path / "s.onnx")
    target = oe.save(oe.mlp(5, 2, seed=2, opset=8, ir_version=3), tmp_path / "t.onnx")
    out = tmp_path / "o.onnx"
    result = run("transfer", source, target, "-o", out)
    assert result.exit_code == 0, result.stderr
    written, original = onnx.load(out), onnx.load(target)
    assert written.ir_version == 3
    assert [i.name for i in written.graph.input] == [i.name for i in original.graph.input]
    onnx.checker.check_model(written)
    ref = oe.save(oe.mlp(5, 2, seed=2), tmp_path / "t_ir8.onnx")   # same target at IR 8
    result = run("transfer", oe.save(oe.mlp(8, 3, seed=1), tmp_path / "s8.onnx"), ref, "-o",
                 tmp_path / "o8.onnx")
    assert result.exit_code == 0
    assert np.allclose(run_onnx(out, X), run_onnx(tmp_path / "o8.onnx", X), atol=1e-6)


def test_weights_made_by_constant_of_shape(tmp_path):
    source = oe.save(oe.mlp(8, 3, seed=1, constant_of_shape=True), tmp_path / "s.onnx")
    target = oe.save(oe.mlp(5, 2, seed=2, constant_of_shape=True), tmp_path / "t.onnx")
    out = tmp_path / "o.onnx"
    hashes = sha(source), sha(target)
    result = run("transfer", source, target, "-o", out, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert (sha(source), sha(target)) == hashes
    assert run_onnx(out, X).shape == (2, 3)
    rows = json.loads((tmp_path / "r.json").read_text())["tensors"]
    assert {r["target"] for r in rows if "kept" not in r} >= {"w0", "w2", "head"}


def test_unrelated_families_exit_2_naming_both(tmp_path):
    source = oe.save(oe.mlp(8, 3, seed=1), tmp_path / "mlp.onnx")
    conv = helper.make_graph(
        [helper.make_node("Conv", ["x", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["y"], name="pool")],
        "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
        [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "k")])
    target = oe.save(helper.make_model(conv, opset_imports=[helper.make_opsetid("", 17)]),
                     tmp_path / "cnn.onnx")
    result = run("transfer", source, target, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 2 and "shares no structure" in result.stderr
    assert str(source) in result.stderr and str(target) in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "o.onnx").exists()


# --------------------------------------------------------------------------- quantized sources

def test_qdq_source_is_dequantized(pair, tmp_path):
    qdq = oe.save(oe.qdq_weights(onnx.load(pair[0])), tmp_path / "qdq.onnx")
    floats = oe.save(oe.dequantized(onnx.load(qdq)), tmp_path / "float.onnx")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert run("transfer", qdq, pair[1], "-o", a).exit_code == 0
    assert run("transfer", floats, pair[1], "-o", b).exit_code == 0
    # The same numbers as transferring from the float model the QDQ model stands for.
    assert np.allclose(run_onnx(a, X), run_onnx(b, X), atol=1e-5)
    info = json.loads(run("inspect", "--json", qdq).stdout)
    assert info["weights"] == 10                    # the dequantized weights, as float tensors


def test_onnxruntime_qdq_source_is_dequantized(pair, tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": np.random.default_rng(i).standard_normal((2, 6)).astype(np.float32)}
                               for i in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    qdq = tmp_path / "ort_qdq.onnx"
    quantization.quantize_static(str(pair[0]), str(qdq), Reader(), per_channel=True,
                                 quant_format=quantization.QuantFormat.QDQ)
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(qdq).graph.node}
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert run("transfer", qdq, pair[1], "-o", a).exit_code == 0
    assert run("transfer", pair[0], pair[1], "-o", b).exit_code == 0
    wa = {t.name: numpy_helper.to_array(t) for t in onnx.load(a).graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in onnx.load(b).graph.initializer}
    for name in ("w1", "w2", "head"):   # int8 weights: within quantization error of the float transfer
        assert np.abs(wa[name] - wb[name]).max() < 0.05 * np.abs(wb[name]).max() + 1e-3, name


def test_quantized_target_is_refused_with_a_hint(pair, tmp_path):
    qdq = oe.save(oe.qdq_weights(onnx.load(pair[1])), tmp_path / "qdq_target.onnx")
    result = run("transfer", pair[0], qdq, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 2 and str(qdq) in result.stderr
    assert "is quantized" in result.stderr and "then quantize the output" in result.stderr
    assert listing(tmp_path) == sorted(["source.onnx", "target.onnx", "qdq_target.onnx"])


# --------------------------------------------------------------------------- known problems

def gemm_chain(transposed_block: int) -> onnx.ModelProto:
    """Four bias-free Gemm+Relu layers; layer `transposed_block` computes y^T = W @ h^T as
    Gemm(W, h, transB=1) followed by a Transpose (a valid model; onnxruntime runs it)."""
    rng = np.random.default_rng(0)
    nodes, inits, h = [], [], "x"
    for i in range(4):
        inits.append(numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w{i}"))
        if i == transposed_block:
            nodes += [helper.make_node("Gemm", [f"w{i}", h], [f"t{i}"], name=f"gemm{i}", transB=1),
                      helper.make_node("Transpose", [f"t{i}"], [f"g{i}"], name=f"tr{i}", perm=[1, 0])]
        else:
            nodes.append(helper.make_node("Gemm", [h, f"w{i}"], [f"g{i}"], name=f"gemm{i}", transB=1))
        nodes.append(helper.make_node("Relu", [f"g{i}"], [f"r{i}"], name=f"relu{i}"))
        h = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["n", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_gemm_with_a_constant_first_input(tmp_path):
    source = oe.save(gemm_chain(2), tmp_path / "s.onnx")
    target = oe.save(gemm_chain(-1), tmp_path / "t.onnx")
    onnx.checker.check_model(str(source), full_check=True)
    for args in (("inspect", source), ("transfer", source, target, "-o", tmp_path / "o.onnx")):
        result = run(*args)
        assert result.exit_code == 0 and "internal error" not in result.stderr, result.stderr


def test_target_nodes_out_of_topological_order(pair, tmp_path):
    """ONNX requires nodes in topological order. A target out of order is refused (its order is
    kept in the output, which onnx.checker would refuse); a source out of order is fine."""
    model = oe.mlp(5, 2, seed=2)
    nodes = list(model.graph.node)
    nodes[0], nodes[1] = nodes[1], nodes[0]          # the Relu before the Gemm it reads
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    unsorted = oe.save(model, tmp_path / "unsorted.onnx")
    result = run("transfer", pair[0], unsorted, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 2 and "topological order" in result.stderr
    assert f"target {unsorted}" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "o.onnx").exists()
    source = oe.mlp(8, 3, seed=1)
    nodes = list(source.graph.node)
    nodes[0], nodes[1] = nodes[1], nodes[0]
    del source.graph.node[:]
    source.graph.node.extend(nodes)
    result = run("transfer", oe.save(source, tmp_path / "s.onnx"), pair[1], "-o", tmp_path / "o.onnx")
    assert result.exit_code == 0, result.stderr
