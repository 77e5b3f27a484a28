"""frontc.spectral (FRONT+): the penalty against frontc's NumPy DCT and its dct pass, gradients,
torch.compile, torch.export, ONNX + onnxruntime, and a refinement that must lower the energy."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import frontc  # noqa: E402
from frontc import dct  # noqa: E402
from frontc.passes.dct import extract  # noqa: E402
from frontc.spectral import SpectralRegularizer  # noqa: E402
from helpers import run_onnx  # noqa: E402
from torchmodels import CNN, MLP, ViT, example_input, export, randomize  # noqa: E402

DECAY = (0.7, 1.5, 2.5)
BLOCK_ROLES = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
               "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
               "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waits when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vit(seed=1, dtype=torch.float32):
    return randomize(ViT(width=16, depth=3, heads=2), seed).to(dtype)


def regularizer(model, keep=0.5, **kw):
    return SpectralRegularizer(model, keep, example_inputs=(example_input(model).to(
        next(model.parameters()).dtype),), **kw)


def numpy_penalty(reg, keep, depth_keep, decay, normalize=False):
    """Independent reading of the definition: full 3-D DCT with frontc.dct, explicit w(k)."""
    total = energy = 0.0
    for g in reg.groups:
        layers = []
        for p, perm in zip(g.params, g.perms):
            w = np.transpose(p.detach().double().numpy(), perm)
            layers.append(((w - w.mean()) / (w.std(ddof=1) + 1e-8)).reshape(g.view))
        c = np.stack(layers)
        energy += np.sum(c ** 2)
        lengths = c.shape
        kept = [max(1, int(lengths[0] * depth_keep)) if len(layers) > 1 else 1]
        kept += [n if fixed else dct.kept(n, keep) for n, fixed in zip(lengths[1:], g.fixed)]
        for axis in range(c.ndim):
            c = dct.forward(c, axis, "ortho")
        grids = np.meshgrid(*[np.arange(n) for n in lengths], indexing="ij")
        gammas = [decay[0]] + [decay[1 + min(a, 1)] for a in range(c.ndim - 1)]
        inside = np.all([k < m for k, m in zip(grids, kept)], axis=0)
        growth = sum(gam * np.maximum(0, k - m) / n for k, m, n, gam in zip(grids, kept, lengths, gammas))
        total += np.sum(np.where(inside, 0.0, np.exp(growth)) * c ** 2)
    return total / energy if normalize else total


def test_groups_come_from_structure_and_values():
    reg = regularizer(ViT(width=16, depth=3, heads=2))  # untrained: equal LN weights
    assert reg.skipped == []
    grouped = {tuple(g.names) for g in reg.groups if g.layers > 1}
    assert grouped == {tuple(f"blocks.{i}.{role}" for i in range(3)) for role in BLOCK_ROLES}
    head = next(g for g in reg.groups if g.names == ["head.weight"])
    assert head.fixed == (True, False)   # the class axis is never resized, so never penalized


@pytest.mark.parametrize("conv_view", ["separable", "flat"])
def test_conv_groups_take_the_dct_pass_view(conv_view):
    """Before: a residual CNN; After: its 3x3 convs' depth group is viewed [out, in, 9] like
    frontc's default match view (or [out*in, 9] with the published flat view)."""
    reg = regularizer(randomize(CNN(width=8, depth=3), 2), conv_view=conv_view)
    convs = [g for g in reg.groups if len(g.params[0].shape) == 4 and g.layers == 3]
    assert convs
    for g in convs:
        assert g.view == ((8, 8, 9) if conv_view == "separable" else (64, 9)), g.names
    stem = next(g for g in reg.groups if g.names == ["stem.weight"])   # [8, 3, 3, 3]
    assert stem.view == ((8, 3, 9) if conv_view == "separable" else (24, 9))


@pytest.mark.parametrize("decay", [(0.0, 0.0, 0.0), DECAY])
@pytest.mark.parametrize("kind", ["vit", "cnn", "cnn-flat"])
def test_penalty_equals_numpy_high_frequency_energy(kind, decay):
    model = tiny_vit() if kind == "vit" else randomize(CNN(width=8, depth=3), 2)
    view = {"conv_view": "flat"} if kind == "cnn-flat" else {}
    reg = regularizer(model, keep=0.6, depth_keep_ratio=0.7, decay=decay, **view)
    expected = numpy_penalty(reg, 0.6, 0.7, decay)
    assert reg().item() == pytest.approx(expected, rel=1e-5)
    fft = regularizer(model, keep=0.6, depth_keep_ratio=0.7, decay=decay, max_matrix=8, **view)
    assert fft.uses_fft() and fft().item() == pytest.approx(expected, rel=1e-5)
    normalized = regularizer(model, keep=0.6, depth_keep_ratio=0.7, decay=decay, normalize=True, **view)
    assert normalized().item() == pytest.approx(numpy_penalty(reg, 0.6, 0.7, decay, True), rel=1e-5)


def test_hard_mask_equals_what_frontcs_dct_pass_drops(exported, tmp_path):
    """The compiler's own learngene (frontc.plan -> passes.dct.extract, ortho): the energy outside
    its kept corner, summed over groups without fixed axes, is the hard-mask penalty."""
    path = exported("ViT", width=16, depth=3, heads=2)
    model = exported.torch("ViT", width=16, depth=3, heads=2)
    state = frontc.plan(path, path)
    expected, layer_counts = 0.0, []
    for mapping in state.plan.mappings:
        if any(mapping.sources[0].fixed):
            continue
        gene = extract(mapping.sources, "ortho", 0.5, view=mapping.source_view)
        expected += gene.energy - np.sum(gene.coeffs[:max(1, int(gene.layers * 0.5))] ** 2)
        layer_counts.append(gene.layers)
    rows = [r for r in regularizer(model).report() if not any(r["fixed"])]
    assert sorted(r["layers"] for r in rows) == sorted(layer_counts)
    assert sum(r["outside_energy"] for r in rows) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("max_matrix", [1024, 4])
def test_gradcheck_float64(max_matrix):
    model = randomize(MLP(width=6, depth=3, inputs=4, classes=3), 3).double()
    reg = regularizer(model, keep=0.5, decay=DECAY, max_matrix=max_matrix)
    weights = [w.detach().clone().requires_grad_(True) for w in reg.weights]
    assert torch.autograd.gradcheck(lambda *ws: reg(*ws), weights, eps=1e-6, atol=1e-5)


def test_zero_variance_tensors_have_finite_gradients():
    model = MLP(width=8, depth=2, inputs=4, classes=3)
    torch.nn.init.zeros_(model.blocks[0].bias)                 # std 0: standardized to 0
    reg = regularizer(model, keep=0.5)
    reg().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_torch_export_and_onnx_runtime(tmp_path):
    model = randomize(CNN(width=8, depth=3), 6)     # small: tracing time grows with the groups
    reg = regularizer(model, keep=0.5, decay=DECAY)
    value = reg().item()
    program = torch.export.export(reg, ())
    assert program.module()().item() == pytest.approx(value, rel=1e-6)
    reg.export_onnx(tmp_path / "penalty.onnx")                 # legacy exporter, weights as inputs
    weights = [w.detach().numpy() for w in reg.weights]
    assert float(run_onnx(tmp_path / "penalty.onnx", *weights)) == pytest.approx(value, rel=1e-5)
    rng = np.random.default_rng(0)                             # other weights, same graph
    other = [np.cumsum(rng.normal(size=w.shape), axis=0).astype(np.float32) for w in weights]
    expected = reg(*map(torch.from_numpy, other)).item()
    assert expected != pytest.approx(value, rel=1e-3)
    assert float(run_onnx(tmp_path / "penalty.onnx", *other)) == pytest.approx(expected, rel=1e-5)


def test_onnx_export_of_the_fft_path_with_dynamo(tmp_path):
    model = randomize(CNN(width=8, depth=2), 4)
    reg = regularizer(model, keep=0.5, decay=DECAY, max_matrix=8)   # conv kernel axis 9: FFT
    assert reg.uses_fft()
    reg.export_onnx(tmp_path / "penalty.onnx", weights_as_inputs=False)  # dynamo, initializers
    assert float(run_onnx(tmp_path / "penalty.onnx")) == pytest.approx(reg().item(), rel=1e-5)


def test_torch_compile():
    pytest.importorskip("torch._inductor")
    model = randomize(MLP(width=8, depth=3, inputs=4, classes=3), 5)
    reg = regularizer(model, keep=0.5, decay=DECAY)
    params = [p for p in model.parameters() if p is not model.head.bias]  # class axis: no penalty
    eager = reg()
    eager_grad = torch.autograd.grad(eager, params)
    try:
        compiled = torch.compile(reg, backend="aot_eager", fullgraph=True)()
    except Exception as error:  # pragma: no cover - depends on the local toolchain
        pytest.skip(f"torch.compile unavailable here: {error}")
    grad = torch.autograd.grad(compiled, params)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-5)
    for a, b in zip(grad, eager_grad):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_refinement_lowers_high_frequency_energy_at_equal_accuracy():
    """A small classifier trained on separable data, then refined with task + penalty."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=gen) * 3
    y = torch.randint(0, 3, (600,), generator=gen)
    x = centers[y] + torch.randn(600, 8, generator=gen)
    torch.manual_seed(0)
    model = MLP(width=32, depth=3, inputs=8, classes=3)
    reg = regularizer(model, keep=0.5, normalize=True)
    accuracy = lambda: (model(x).argmax(1) == y).float().mean().item()  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for lam in [0.0] * 150 + [1.0] * 150:
        if lam and opt.param_groups[0]["lr"] > 3e-3:
            before, acc_before = reg.high_frequency_fraction(), accuracy()
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss = torch.nn.functional.cross_entropy(model(x), y) + lam * reg()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = reg.high_frequency_fraction()
    assert before > 0.6 and after < before / 2, (before, after)
    assert accuracy() >= acc_before - 0.01
