"""resize pass: depth filling and per-layer reconstruction."""
import numpy as np

from frontc.plan import Gene
from frontc.passes import resize


def gene(layers=4, view=(6, 5), convention="reference"):
    from frontc import dct

    rng = np.random.default_rng(0)
    c = rng.standard_normal((layers,) + view)
    energy = float(np.sum(c ** 2))
    for axis in range(3):
        c = dct.forward(c, axis, convention)
    return Gene(c, view, rng.standard_normal(layers), rng.random(layers) + 0.5, energy, convention)


def test_deeper_target_gets_distinct_layers_in_every_depth_mode():
    g = gene()
    for mode in resize.DEPTH_MODES:
        out = resize.rebuild(g, 12, (6, 5), mode, np.random.default_rng(0))
        assert out.shape == (12, 6, 5)
        assert np.all(np.isfinite(out))
        flat = out.reshape(12, -1)
        assert min(np.abs(flat[i] - flat[j]).max() for i in range(12) for j in range(i)) > 1e-6


def test_equal_depth_and_width_is_the_identity():
    g = gene(convention="ortho")
    out = resize.rebuild(g, 4, (6, 5), "zero", np.random.default_rng(0))
    # Undo by hand: standardized source layers times std plus mean.
    from frontc import dct

    c = g.coeffs
    for axis in range(3):
        c = dct.inverse(c, axis, "ortho")
    expected = c * g.std[:, None, None] + g.mean[:, None, None]
    assert np.allclose(out, expected)
    assert abs(resize.kept_energy(g, 4, (6, 5)) - 1.0) < 1e-12


def test_random_depth_mode_is_seeded():
    g = gene()
    a = resize.rebuild(g, 9, (6, 5), "random", np.random.default_rng(7))
    b = resize.rebuild(g, 9, (6, 5), "random", np.random.default_rng(7))
    c = resize.rebuild(g, 9, (6, 5), "random", np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_shrinking_keeps_less_energy():
    g = gene(convention="ortho")
    assert resize.kept_energy(g, 2, (3, 5)) < resize.kept_energy(g, 4, (6, 5))


def test_std_rescale_gives_each_layer_its_source_std():
    g = gene(convention="reference")          # reference scaling inflates a shrunk layer's std
    be = resize.cpu()
    plain = list(resize.layers(g, 4, (3, 2), "zero", np.random.default_rng(0), be))
    scaled = list(resize.layers(g, 4, (3, 2), "zero", np.random.default_rng(0), be, std_rescale=True))
    for i, (a, b) in enumerate(zip(plain, scaled)):
        assert abs(b.std() - g.std[i]) < 1e-9 * g.std[i] and abs(b.mean() - a.mean()) < 1e-9
    assert not all(abs(a.std() - g.std[i]) < 1e-6 for i, a in enumerate(plain))


def test_layers_reuse_memory_without_touching_the_gene():
    """Before: each layer's inverses allocated fresh arrays. After: they run in reused buffers,
    in place -- the layers are the same bytes whether or not a depth buffer is handed in, and
    the gene's coefficients are never overwritten (a single-layer gene is used as it is)."""
    be = resize.cpu()
    for layers_, count in ((4, 4), (4, 2), (1, 1), (1, 3)):
        g = gene(layers=layers_, view=(300, 7))
        g = Gene(g.coeffs.astype(np.float32), g.view, g.mean, g.std, g.energy, g.convention)
        before = g.coeffs.copy()
        for view in ((256, 9), (356, 5)):       # FFT axis cut or zero-padded, matrix axis too
            rng = np.random.default_rng(0)
            plain = [y.copy() for y in resize.layers(g, count, view, "zero", rng, be)]
            out = np.empty((count, 300, 7), dtype=np.float32)
            given = list(resize.layers(g, count, view, "zero", rng, be, depth_out=out))
            assert len(plain) == count and all(np.array_equal(a, b) for a, b in zip(plain, given))
            assert np.array_equal(g.coeffs, before)
            assert not any(np.shares_memory(y, out) or np.shares_memory(y, z)
                           for i, y in enumerate(given) for z in given[:i])
