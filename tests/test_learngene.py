"""Learngene files: extract once, transfer many times -- the same bytes as a direct transfer;
the file's contents, sizes, versioning and what a bad file does (exit 2, one clear line)."""
from __future__ import annotations

import base64
import json
import struct
import sys

import numpy as np
import onnx_ir as ir
import pytest

import frontc
from frontc import learngene
from frontc.errors import InputError
from helpers import ROOT, frontc_cli

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpt  # noqa: E402  (benchmarks/gpt.py: synthetic GPT-style ONNX models)


@pytest.fixture(scope="module")
def gpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt")
    small = dict(heads=4, vocab=300, context=32)
    return {"source": gpt.build(d / "src.onnx", 96, 4, seed=0, **small),
            "narrow": gpt.build(d / "narrow.onnx", 64, 2, seed=1, **small),
            "deep": gpt.build(d / "deep.onnx", 64, 6, seed=2, **small),
            "half": gpt.build(d / "half.onnx", 96, 4, dtype="float16", seed=3, **small)}


def initializers(path) -> dict[str, bytes]:
    return {k: v.const_value.numpy().tobytes() for k, v in ir.load(path).graph.initializers.items()}


@pytest.mark.parametrize("convention,keep,mode", [("reference", 1.0, "zero"), ("ortho", 0.5, "zero"),
                                                  ("reference", 0.5, "random")])
def test_transfer_from_gene_is_byte_identical_to_direct(gpts, tmp_path, convention, keep, mode):
    gene = tmp_path / "src.gene"
    frontc.extract(gpts["source"], gene, convention=convention, keep_ratio=keep)
    for target in ("narrow", "deep"):       # shallower and narrower; deeper and narrower
        direct, from_gene = tmp_path / f"d_{target}.onnx", tmp_path / f"g_{target}.onnx"
        frontc.transfer(gpts["source"], gpts[target], direct, convention=convention,
                        keep_ratio=keep, depth_mode=mode)
        frontc.transfer(gene, gpts[target], from_gene, depth_mode=mode)   # options from the gene
        a, b = initializers(direct), initializers(from_gene)
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), target
        assert a != initializers(gpts[target])


@pytest.mark.parametrize("kind,source_cfg,target_cfg", [
    ("ViT", {"depth": 4}, {"width": 48, "depth": 2}),      # Gemm and transposed MatMul weights
    ("CNN", {"depth": 3}, {"width": 8, "depth": 2}),       # 3x3 kernels: the matrix form
])
def test_gene_identity_on_torch_exports(exported, tmp_path, kind, source_cfg, target_cfg):
    source, target = exported(kind, "legacy", 1, **source_cfg), exported(kind, "legacy", 2, **target_cfg)
    gene = tmp_path / "s.gene"
    frontc.extract(source, gene, keep_ratio=0.75)
    frontc.transfer(source, target, tmp_path / "d.onnx", keep_ratio=0.75)
    frontc.transfer(gene, target, tmp_path / "g.onnx")
    assert initializers(tmp_path / "d.onnx") == initializers(tmp_path / "g.onnx")


def test_half_precision_source_gene(gpts, tmp_path):
    gene = tmp_path / "half.gene"
    frontc.extract(gpts["half"], gene, keep_ratio=0.5)
    frontc.transfer(gpts["half"], gpts["narrow"], tmp_path / "d.onnx", keep_ratio=0.5)
    frontc.transfer(gene, gpts["narrow"], tmp_path / "g.onnx")
    a, b = initializers(tmp_path / "d.onnx"), initializers(tmp_path / "g.onnx")
    assert a == b
    out = ir.load(tmp_path / "g.onnx")
    assert {v.const_value.dtype for v in out.graph.initializers.values()
            if v.const_value.size > 1} >= {ir.DataType.FLOAT}       # the target keeps float32
    info = learngene.Learngene(gene).describe()
    assert {b["dtype"] for b in info["blocks"].values()} == {"F32"}   # float32 coefficients


def test_bfloat16_model_keeps_its_dtype_and_gene_identity(tmp_path):
    small = dict(heads=2, vocab=100, context=16)
    source = gpt.build(tmp_path / "s.onnx", 64, 3, dtype="bfloat16", seed=5, **small)
    target = gpt.build(tmp_path / "t.onnx", 32, 2, dtype="bfloat16", seed=6, **small)
    frontc.extract(source, tmp_path / "s.gene", keep_ratio=0.5)
    frontc.transfer(source, target, tmp_path / "d.onnx", keep_ratio=0.5)
    frontc.transfer(tmp_path / "s.gene", target, tmp_path / "g.onnx")
    assert initializers(tmp_path / "d.onnx") == initializers(tmp_path / "g.onnx")
    out = ir.load(tmp_path / "d.onnx").graph.initializers
    fc = out["h.1.mlp.fc.weight"].const_value
    assert fc.dtype == ir.DataType.BFLOAT16 and fc.shape == ir.Shape([32, 128])
    assert np.all(np.isfinite(fc.numpy().astype(np.float32)))


def test_gene_holds_about_r_squared_of_each_2d_tensor(gpts, tmp_path):
    gene = tmp_path / "g.gene"
    done = frontc.extract(gpts["source"], gene, keep_ratio=0.5)
    opened = learngene.Learngene(gene)
    for e in opened.entries:
        if len(e.view) == 2 and not any(e.fixed):
            assert e.kept == [n // 2 for n in e.view]                 # int(n * 0.5) per axis
        if any(e.fixed):                                              # the vocabulary axis stays
            assert e.kept[0] == e.view[0] in (300, 32)                # tokens, positions
    two_d = [e for e in opened.entries if len(e.view) == 2 and not any(e.fixed)]
    kept = sum(np.prod(e.kept) for e in two_d) / sum(np.prod(e.view) for e in two_d)
    assert kept == 0.25
    assert done["bytes"] < 0.4 * done["source_parameters"] * 4       # float32 source


def test_inspect_shows_a_gene(gpts, tmp_path):
    gene = tmp_path / "g.gene"
    frontc_cli("extract", gpts["source"], "-o", gene, "--keep-ratio", "0.5", "--convention", "ortho")
    result = frontc_cli("inspect", "--json", gene)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    g = info["learngene"]
    assert (g["format_version"], g["convention"], g["keep_ratio"]) == (1, "ortho", 0.5)
    assert g["source"] == "src.onnx" and len(g["source_sha256"]) == 64
    assert [s["blocks"] for s in info["stages"] if s["blocks"] > 1] == [4]
    qkv = next(t for t in info["tensors"] if t["name"] == "h.0.attn.qkv.weight")
    assert qkv["shape"] == [288, 96] and qkv["kept"] == [144, 48]
    text = frontc_cli("inspect", gene)
    assert text.returncode == 0 and "learngene format 1" in text.stdout


def test_options_come_from_the_gene_and_conflicts_exit_2(gpts, tmp_path):
    gene = tmp_path / "g.gene"
    assert frontc_cli("extract", gpts["source"], "-o", gene, "--keep-ratio", "0.5",
                      "--convention", "reference").returncode == 0
    out = tmp_path / "o.onnx"
    result = frontc_cli("transfer", gene, gpts["narrow"], "-o", out, "--convention", "ortho")
    assert result.returncode == 2 and "extracted with --convention reference" in result.stderr
    assert not out.exists()
    assert frontc_cli("transfer", gene, gpts["narrow"], "-o", out, "--keep-ratio", "0.5",
                      "-q").returncode == 0
    import onnx

    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert "dct{convention=reference,keep_ratio=0.5}" in meta["frontc.pipeline"]


def rewrite_metadata(src, dst, **changes) -> None:
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def test_bad_gene_files_exit_2_with_one_line(gpts, tmp_path):
    gene = tmp_path / "g.gene"
    frontc.extract(gpts["source"], gene, keep_ratio=0.5)
    raw = gene.read_bytes()
    cases = {}
    rewrite_metadata(gene, tmp_path / "newer.gene", format_version="2")
    cases["newer.gene"] = "format version 2"
    (tmp_path / "truncated.gene").write_bytes(raw[:-1000])
    cases["truncated.gene"] = "corrupt"
    (tmp_path / "garbage.gene").write_bytes(b"\x00" * 64)
    cases["garbage.gene"] = "corrupt"
    rewrite_metadata(gene, tmp_path / "model.gene", model=base64.b64encode(b"not onnx").decode())
    cases["model.gene"] = "corrupt metadata"
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.gene"))
    cases["other.gene"] = "not a frontc learngene"
    for name, message in cases.items():
        out = tmp_path / f"{name}.onnx"
        result = frontc_cli("transfer", tmp_path / name, gpts["narrow"], "-o", out)
        line = result.stderr.strip()
        assert result.returncode == 2 and message in line and "\n" not in line, (name, line)
        assert not out.exists()
        with pytest.raises(InputError):
            learngene.Learngene(tmp_path / name)
    assert frontc_cli("inspect", tmp_path / "newer.gene").returncode == 2
