"""Attention heads read from real exports (timm-style fused qkv, HF BERT, GPT-2's Conv1D + Split,
Llama's grouped-query attention; both torch exporters) and head-aware resizing (--heads aware)."""
import re
from collections import Counter

import numpy as np
import onnx
import pytest
import scipy.fft

import frontc
from frontc.passes.canonicalize import view_model
from helpers import run_onnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from test_transformers import build, example  # noqa: E402
from torchmodels import ViT, LastHidden, export  # noqa: E402


def llama(width=64, depth=2, heads=4, kv_heads=2):
    torch.manual_seed(width + depth)
    config = transformers.LlamaConfig(hidden_size=width, num_hidden_layers=depth,
                                      num_attention_heads=heads, num_key_value_heads=kv_heads,
                                      intermediate_size=2 * width, vocab_size=100,
                                      max_position_embeddings=32)
    return transformers.LlamaModel(config).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder, cache = tmp_path_factory.mktemp("heads"), {}

    def make(kind, exporter, width=64, heads=4, kv_heads=2):
        key = (kind, exporter, width, heads, kv_heads)
        if key not in cache:
            path = folder / f"{kind}_{exporter}_{width}_{heads}_{kv_heads}.onnx"
            if kind == "vit":
                torch.manual_seed(width)
                export(ViT(width=width, depth=2, heads=heads).eval(), path, exporter)
            else:
                model = llama(width, 2, heads, kv_heads) if kind == "llama" else build(kind, width, 2)
                x = torch.randint(0, 100, (1, 8)) if kind == "llama" else example(kind)
                torch.onnx.export(LastHidden(model), (x,), str(path), dynamo=exporter == "dynamo",
                                  input_names=["x"], output_names=["y"], opset_version=18)
            cache[key] = path
        return cache[key]

    return make


def found_heads(path):
    view = view_model(path, "model")
    return Counter((h.axis, h.groups, h.head_dim) for h in view.structure.heads.values())


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("kind, expected", [
    ("vit", {("out", (4, 4, 4), 16): 2, ("in", (4,), 16): 2}),      # fused qkv, Reshape to [3, H, hd]
    ("bert", {("out", (4,), 16): 6, ("in", (4,), 16): 2}),          # separate q, k, v
    ("gpt2", {("out", (4, 4, 4), 16): 2, ("in", (4,), 16): 2}),     # Conv1D + Split + Reshape
])
def test_heads_are_read_from_the_graph(models, kind, exporter, expected):
    assert found_heads(models(kind, exporter)) == expected


def test_grouped_query_attention_is_recognized(models):
    path = models("llama", "dynamo")     # the legacy exporter cannot export GQA attention
    assert found_heads(path) == {("out", (4,), 16): 2, ("out", (2,), 16): 4, ("in", (4,), 16): 2}
    from frontc.report import describe

    stages = [s for s in describe(view_model(path, "model"))["stages"] if "grouped_query" in s]
    assert stages and stages[0]["grouped_query"] == {"query_heads": 4, "kv_heads": 2}


def ortho(x, axis, n):
    """Orthonormal DCT-II along `axis`, then the first min(n, len) coefficients zero-padded or
    cut to n, inverse at length n (the whole FRONT width resize of one axis, by SciPy)."""
    c = scipy.fft.dct(x, type=2, norm="ortho", axis=axis)
    c = np.take(c, range(min(n, c.shape[axis])), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - c.shape[axis])
    return scipy.fft.idct(np.pad(c, pad), type=2, norm="ortho", axis=axis)


def test_aware_resize_equals_an_independent_computation(models, tmp_path):
    """qkv [3*4*16, 64] -> [3*2*16, 32]: per layer, standardize, view [3, H, 16, in], resize H
    and in only (the q/k/v axis and head_dim untouched), de-standardize (depth 2 -> 2 is the
    identity along layers)."""
    source, target = models("vit", "legacy", 64, 4), models("vit", "dynamo", 32, 2)
    state = frontc.transfer(source, target, tmp_path / "out.onnx", heads="aware")
    qkv = [m for m in state.plan.mappings if m.views[1].kind == "heads" and m.targets[0].shape == (96, 32)]
    assert len(qkv) == 1                 # one depth group: the qkv weight of both layers
    mapping = qkv[0]
    assert mapping.views[0].shape == (3, 4, 16, 64) and mapping.views[1].shape == (3, 2, 16, 32)
    out = onnx.load(tmp_path / "out.onnx")
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    for src, tgt in zip(mapping.sources, mapping.targets):
        w = src.array()
        z = ((w - w.mean()) / (w.std(ddof=1) + 1e-8)).reshape(3, 4, 16, 64)
        z = ortho(ortho(z, 1, 2), 3, 32)
        expected = (z * w.std(ddof=1) + w.mean()).reshape(96, 32)
        got = np.transpose(stored[tgt.name], tgt.perm)
        np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected).max())
    y = run_onnx(tmp_path / "out.onnx", np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32))
    assert np.all(np.isfinite(y))


def test_aware_keeps_q_k_v_apart(models, tmp_path):
    """Shuffling the source's v rows (same values: the same statistics) changes no target q or k
    row with --heads aware; the published whole-matrix treatment mixes them."""
    source = models("vit", "legacy", 64, 4)
    model = onnx.load(source)
    shuffled = tmp_path / "shuffled.onnx"
    view = view_model(source, "model")
    qkv = [w for w in view.index.weights if w.shape == (192, 64)]
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.name in {w.name for w in qkv}:
            a = onnx.numpy_helper.to_array(init).copy()       # stored [in, out] (MatMul)
            a[:, 128:] = a[:, 128:][:, rng.permutation(64)]
            init.CopyFrom(onnx.numpy_helper.from_array(a, init.name))
    onnx.save(model, shuffled)
    target = models("vit", "dynamo", 32, 2)

    def qk_rows(src, heads):
        out = tmp_path / f"{src.stem}_{heads}.onnx"
        state = frontc.transfer(src, target, out, heads=heads)
        names = [w.name for m in state.plan.mappings for w in m.targets if w.shape == (96, 32)]
        stored = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
        return np.concatenate([stored[n][:, :64] for n in names])   # q and k outputs

    np.testing.assert_array_equal(qk_rows(source, "aware"), qk_rows(shuffled, "aware"))
    assert not np.allclose(qk_rows(source, "whole"), qk_rows(shuffled, "whole"))


def test_aware_transfer_with_grouped_query_attention(models, tmp_path):
    """Llama 4 q / 2 kv heads -> 2 q / 1 kv head: q and k/v are resized by their own counts."""
    source, target = models("llama", "dynamo", 64, 4, 2), models("llama", "dynamo", 32, 2, 1)
    state = frontc.transfer(source, target, tmp_path / "out.onnx", heads="aware")
    assert state.plan.coverage == 1.0
    views = Counter((m.views[0].shape, m.views[1].shape) for m in state.plan.mappings
                    if m.views[1].kind == "heads")
    assert views == {((4, 16, 64), (2, 16, 32)): 1, ((2, 16, 64), (1, 16, 32)): 2,
                     ((64, 4, 16), (32, 2, 16)): 1}
    y = run_onnx(tmp_path / "out.onnx", np.arange(8, dtype=np.int64).reshape(1, 8))
    assert y.shape == (1, 8, 32) and np.all(np.isfinite(y))


def test_aware_from_a_learngene_is_byte_identical(models, tmp_path):
    source, target = models("vit", "legacy", 64, 4), models("vit", "dynamo", 32, 2)
    gene = tmp_path / "src.gene"
    frontc.extract(source, gene, heads="aware", keep_ratio=0.5)
    direct = frontc.transfer(source, target, tmp_path / "direct.onnx", heads="aware", keep_ratio=0.5)
    from_gene = frontc.transfer(gene, target, tmp_path / "gene.onnx")
    assert from_gene.pipeline == direct.pipeline and "heads=aware" in direct.pipeline
    a = {t.name: t.raw_data for t in onnx.load(tmp_path / "direct.onnx").graph.initializer}
    b = {t.name: t.raw_data for t in onnx.load(tmp_path / "gene.onnx").graph.initializer}
    assert a == b
    # A gene taken in whole views cannot serve head-aware views: those tensors say why.
    whole = tmp_path / "whole.gene"
    frontc.extract(source, whole, keep_ratio=0.5)
    state = frontc.transfer(whole, target, tmp_path / "mixed.onnx", heads="aware")
    reasons = [k.reason for k in state.plan.kept]
    assert reasons and all("--heads" in r for r in reasons)


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    def make(width, depth, heads):
        path = tmp_path_factory.mktemp("hfvit") / f"hf_vit_{width}x{depth}.onnx"
        torch.manual_seed(width)
        config = transformers.ViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                        intermediate_size=4 * width, image_size=16, patch_size=4)
        model = transformers.ViTModel(config, add_pooling_layer=False).eval()
        torch.onnx.export(LastHidden(model), (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=18)
        return path
    return make


@pytest.mark.parametrize("heads", ["whole", "aware"])
def test_fused_qkv_initializes_separate_projections(models, hf_vit, tmp_path, heads):
    """timm-style fused qkv (64 wide, 4 heads) -> HF ViT with separate query/key/value (32 wide,
    2 heads): every target tensor is mapped, q from the source's q rows, k from k, v from v."""
    source, target = models("vit", "legacy", 64, 4), hf_vit(32, 2, 2)
    state = frontc.transfer(source, target, tmp_path / "out.onnx", heads=heads)
    assert state.plan.coverage == 1.0, [(k.weight.name, k.reason) for k in state.plan.kept]
    parts = {}
    for m in state.plan.mappings:
        if "[" in m.sources[0].name:                       # rows of the fused projection
            rows = m.sources[0].name.rsplit("[", 1)[1]
            for t in m.targets:     # the exporter's node path names the projection (ground truth)
                role = re.search(r"/(q|k|v)_proj/|/(query|key|value)/", t.op.name)
                parts.setdefault(rows, set()).add((role.group(1) or role.group(2))[0])
    assert parts == {"0:64]": {"q"}, "64:128]": {"k"}, "128:192]": {"v"}}
    if heads == "aware":
        assert {m.views[1].kind for m in state.plan.mappings if "[" in m.sources[0].name} == {"heads"}
    y = run_onnx(tmp_path / "out.onnx", np.zeros((1, 3, 16, 16), np.float32))
    assert y.shape[-1] == 32 and np.all(np.isfinite(y))


def test_separate_projections_initialize_a_fused_qkv(models, hf_vit, tmp_path):
    source, target = hf_vit(64, 4, 4), models("vit", "dynamo", 32, 2)
    state = frontc.transfer(source, target, tmp_path / "out.onnx", heads="aware")
    fused = [m for m in state.plan.mappings if m.targets[0].shape in ((96, 32), (96,))]
    assert len(fused) == 2 and all(len(m.sources[0].parts) == 3 for m in fused)
    assert all(m.views[1].shape[:3] == (3, 2, 16) for m in fused)
    blocks = [k for k in state.plan.kept if "class" not in k.weight.roles]
    assert not [k for k in blocks if k.weight.slot == "linear.weight" and k.weight.shape != (10, 32)]
