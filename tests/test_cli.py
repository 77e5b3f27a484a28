"""The command line end to end: outputs, provenance, reports, exit codes and bad input."""
import json
import shutil

import onnx
import pytest

import frontc
from helpers import digest, frontc_cli


@pytest.fixture
def vit_pair(exported):
    return exported("ViT", "legacy", 1, depth=4), exported("ViT", "legacy", 2, width=48, depth=2)


def test_transfer_writes_output_report_and_provenance(vit_pair, tmp_path):
    source, target = vit_pair
    hashes = digest(source), digest(target)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = frontc_cli("transfer", source, target, "-o", out, "--report", report,
                        "--convention", "ortho", "--keep-ratio", "0.5")
    assert result.returncode == 0, result.stderr
    assert "32/32 target tensors" in result.stdout
    assert (digest(source), digest(target)) == hashes            # inputs untouched
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["frontc.version"] == frontc.__version__
    assert meta["frontc.source_sha256"] == hashes[0]
    assert "dct{convention=ortho,keep_ratio=0.5}" in meta["frontc.pipeline"]
    data = json.loads(report.read_text())
    assert data["coverage"] == 1.0 and len(data["tensors"]) == 32
    row = next(r for r in data["tensors"] if r["depth"] == "4->2")
    assert 0.0 < row["energy_kept"] < 0.5                      # 1/2 x 1/2 of width, 2/4 of depth
    graph_in, graph_out = onnx.load(target), onnx.load(out)
    assert [n.op_type for n in graph_in.graph.node] == [n.op_type for n in graph_out.graph.node]
    opsets = lambda m: {o.domain or "": o.version for o in m.opset_import}  # noqa: E731
    assert opsets(graph_in) == opsets(graph_out)
    assert [i.name for i in graph_in.graph.input] == [i.name for i in graph_out.graph.input]


def test_plan_and_inspect_json(vit_pair):
    source, target = vit_pair
    plan = json.loads(frontc_cli("plan", "--json", source, target).stdout)
    assert plan["mapped_tensors"] == 32 and plan["depth_groups"] == 12
    info = json.loads(frontc_cli("inspect", "--json", source).stdout)
    assert [s["blocks"] for s in info["stages"] if s["blocks"] > 1] == [4]
    qkv = [t for t in info["tensors"] if t["shape"] == [192, 64]]
    assert len(qkv) == 4 and all(t["roles"] == ["out", "in"] for t in qkv)


def test_head_with_other_class_count_keeps_own_init(exported, tmp_path):
    source = exported("ViT", "legacy", 1, depth=2)
    target = exported("ViT", "legacy", 2, depth=2, classes=7)
    plan = json.loads(frontc_cli("plan", "--json", source, target).stdout)
    kept = {r["target"]: r["kept"] for r in plan["tensors"] if "kept" in r}
    assert kept == {"head.weight": "class count differs (source 10, target 7)",
                    "head.bias": "class count differs (source 10, target 7)"}


def test_min_coverage_fails_and_writes_nothing(exported, tmp_path):
    source = exported("ViT", "legacy", 1, depth=2)
    target = exported("ViT", "legacy", 2, depth=2, classes=7)
    out = tmp_path / "out.onnx"
    result = frontc_cli("transfer", source, target, "-o", out, "--min-coverage", "0.99")
    assert result.returncode == 1 and "below --min-coverage" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def bad_inputs(tmp_path, exported):
    good = exported("MLP", "legacy", 1)
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("this is not a model\n")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:300])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    external = exported("ViT", "dynamo", 3, depth=2)
    lonely = tmp_path / "lonely" / external.name
    lonely.parent.mkdir()
    shutil.copy(external, lonely)
    import onnx_ir as ir
    model = ir.load(external)
    shutil.copy(external, tmp_path / "short.onnx")
    data = external.with_name(external.name + ".data")
    if data.exists():
        (tmp_path / "short.onnx.data").write_bytes(data.read_bytes()[:100])
    return {"not ONNX": (not_onnx, "not a readable ONNX model"),
            "truncated": (truncated, "not a readable ONNX model"),
            "empty": (empty, "the file is empty"),
            "missing external data": (lonely, "external data file"),
            "short external data": (tmp_path / "short.onnx", "external data file"),
            "missing file": (tmp_path / "nope.onnx", "no such file")}, good, model


def test_bad_inputs_exit_2_with_one_line_and_no_output(exported, tmp_path):
    cases, good, model = bad_inputs(tmp_path, exported)
    has_external = any(isinstance(v.const_value, __import__("onnx_ir").ExternalTensor)
                       for v in model.graph.initializers.values())
    for label, (bad, message) in cases.items():
        if "external" in label and not has_external:
            continue
        for args in ((bad, good), (good, bad)):
            out = tmp_path / "out.onnx"
            result = frontc_cli("transfer", *args, "-o", out)
            assert result.returncode == 2, (label, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, label
            assert str(bad) in lines[0]
            assert not out.exists()


def test_unrelated_models_exit_2(exported, tmp_path):
    out = tmp_path / "out.onnx"
    result = frontc_cli("transfer", exported("MLP", "legacy", 1), exported("CNN", "legacy", 1), "-o", out)
    assert result.returncode == 2 and "shares no structure" in result.stderr
    assert not out.exists()


def test_output_equal_to_input_is_refused(vit_pair):
    source, target = vit_pair
    before = digest(target)
    result = frontc_cli("transfer", source, target, "-o", target)
    assert result.returncode == 2 and "would overwrite the input" in result.stderr
    assert digest(target) == before


@pytest.mark.parametrize("pipeline,message", [
    ("canonicalize,match,fft,resize,emit", "unknown pass 'fft'"),
    ("canonicalize,match,dct{keep_ratio=abc},resize,emit", "is not a float"),
    ("canonicalize,match,dct{convention=fancy},resize,emit", "must be one of"),
    ("canonicalize,match,dct{speed=3},resize,emit", "unknown option"),
])
def test_bad_pipeline_text_exits_2(vit_pair, tmp_path, pipeline, message):
    result = frontc_cli("transfer", *vit_pair, "-o", tmp_path / "o.onnx", "-p", pipeline)
    assert result.returncode == 2 and message in result.stderr


def test_help_teaches_with_examples():
    for command in ("transfer", "plan", "inspect"):
        result = frontc_cli(command, "--help")
        assert result.returncode == 0 and "Example" in result.stdout and "Exit codes" in result.stdout
