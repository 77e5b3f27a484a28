"""`--convention reference` against an independent NumPy reading of front-method.md.

The expected weights are computed here from the PyTorch state dicts with explicit cosine
matrices (no scipy, no frontc code); frontc's output is read back from its ONNX file.
"""
import numpy as np
import onnx_ir as ir
import pytest

import frontc

GROUPED = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
           "attn.proj.bias", "norm2.weight", "norm2.bias", "fc1.weight", "fc1.bias", "fc2.weight",
           "fc2.bias"]
SINGLE = ["patch.weight", "patch.bias", "cls_token", "pos_embed", "norm.weight", "norm.bias",
          "head.weight", "head.bias"]


def forward_matrix(n):           # X[k] = sum_i x[i] cos(pi k (2i+1) / 2n)
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi * k * (2 * i + 1) / (2 * n))


def inverse_matrix(m, kept):     # x[i] = X[0]/m + (2/m) sum_k X[k] cos(pi k (2i+1) / 2m)
    i, k = np.meshgrid(np.arange(m), np.arange(kept), indexing="ij")
    return np.where(k == 0, 1.0 / m, 2.0 / m) * np.cos(np.pi * k * (2 * i + 1) / (2 * m))


def view(shape):
    if len(shape) == 4:
        shape = (shape[0] * shape[1], shape[2] * shape[3])
    elif len(shape) == 3:
        shape = (shape[0] * shape[1], shape[2])
    return tuple(d for d in shape if d != 1)


def apply(matrices, x):
    for axis, m in enumerate(matrices):
        x = np.moveaxis(np.tensordot(m, x, axes=([1], [axis])), 0, axis)
    return x


def expected_group(layers, target_shape, target_depth, r=1.0):
    src_view, tgt_view = view(layers[0].shape), view(target_shape)
    stats = [(w.mean(), w.std(ddof=1)) for w in layers]
    coeffs = []
    for w, (mu, sd) in zip(layers, stats):
        c = apply([forward_matrix(n) for n in src_view], ((w - mu) / (sd + 1e-8)).reshape(src_view))
        coeffs.append(c[tuple(slice(0, int(n * r)) for n in src_view)])
    c = apply([forward_matrix(len(layers))], np.stack(coeffs))[:min(target_depth, len(layers))]
    kept = [min(target_depth, len(layers))] + [min(a, b) for a, b in zip(c.shape[1:], tgt_view)]
    c = c[tuple(slice(0, k) for k in kept)]
    x = apply([inverse_matrix(m, k) for m, k in zip((target_depth,) + tgt_view, kept)], c)
    out = []
    for i in range(target_depth):
        mu, sd = stats[min(i, len(layers) - 1)]
        out.append((x[i] * sd + mu).reshape(target_shape))
    return out


def expected_state(source, target, depth_t):
    s = {k: v.detach().double().numpy() for k, v in source.state_dict().items()}
    t = {k: v.detach().double().numpy() for k, v in target.state_dict().items()}
    depth_s = len(source.blocks)
    out = {}
    for role in GROUPED:
        layers = [s[f"blocks.{i}.{role}"] for i in range(depth_s)]
        for i, w in enumerate(expected_group(layers, t[f"blocks.0.{role}"].shape, depth_t)):
            out[f"blocks.{i}.{role}"] = w
    for name in SINGLE:
        out[name] = expected_group([s[name]], t[name].shape, 1)[0]
    return out, t


def onnx_weights_by_torch_name(untouched, output, torch_state):
    """Name ONNX tensors by the torch parameter whose values they held before the transfer."""
    before = {v.name: v.const_value.numpy() for v in ir.load(untouched).graph.initializers.values()}
    after = {v.name: v.const_value.numpy() for v in ir.load(output).graph.initializers.values()}
    named = {}
    for key, value in torch_state.items():
        for name, arr in before.items():
            if arr.shape == value.shape and np.allclose(arr, value):
                named[key] = after[name]
            elif arr.T.shape == value.shape and np.allclose(arr.T, value):
                named[key] = after[name].T
    return named


@pytest.mark.parametrize("width,depth_s,width_t,depth_t", [(64, 12, 64, 4), (192, 12, 128, 6)])
def test_reference_numerics(exported, tmp_path, width, depth_s, width_t, depth_t):
    src_cfg = dict(width=width, depth=depth_s, heads=4)
    tgt_cfg = dict(width=width_t, depth=depth_t, heads=4)
    source, target = exported("ViT", "legacy", 1, **src_cfg), exported("ViT", "legacy", 2, **tgt_cfg)
    # the published method: reference scaling, conv weights flattened (the patch embedding)
    frontc.transfer(source, target, tmp_path / "out.onnx", convention="reference", conv_view="flat")
    expected, tstate = expected_state(exported.torch("ViT", "legacy", 1, **src_cfg),
                                      exported.torch("ViT", "legacy", 2, **tgt_cfg), depth_t)
    got = onnx_weights_by_torch_name(target, tmp_path / "out.onnx", tstate)
    assert set(got) == set(expected), set(expected) ^ set(got)
    for name, want in expected.items():
        scale = max(np.abs(want).max(), 1e-6)
        assert np.abs(got[name] - want).max() <= 1e-5 * scale, name


def test_depth_growth_gives_distinct_layers(exported, tmp_path):
    source = exported("ViT", "legacy", 1, depth=4)
    target = exported("ViT", "legacy", 2, depth=12)
    state = frontc.transfer(source, target, tmp_path / "out.onnx")
    groups = [m for m in state.plan.mappings if m.depth == (4, 12)]
    assert len(groups) == 12                     # every role of the block is a depth group
    for m in groups:
        layers = [state.updates[w.name].numpy() for w in m.targets]   # stored tensors
        assert all(np.all(np.isfinite(x)) for x in layers)
        diffs = [np.abs(layers[i] - layers[j]).max() for i in range(12) for j in range(i)]
        assert min(diffs) > 1e-6, m.key       # no two target layers share their weights
