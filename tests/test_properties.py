"""Property tests (hypothesis, bounded: the file runs in well under a minute).

DCT resizing (frontc.dct): equal lengths are the identity, the reference resize N -> M is
sqrt(N/M) times the orthonormal one, and truncating then zero-padding is a low-pass.
Matching: names are never read (renaming every initializer, node and value gives the same plan,
names mapped back) and neither is the file's node order (any valid topological order of the
nodes, initializers shuffled, gives the same plan).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import frontc
import onnxedit as oe
from frontc import dct
from frontc.report import plan_rows

FAST = settings(max_examples=60, deadline=None)
# Seeds need no shrinking: a failing seed is reported as it is.
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                phases=[Phase.explicit, Phase.reuse, Phase.generate])

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


def vectors(min_size=1, max_size=64):
    return st.integers(min_size, max_size).flatmap(
        lambda n: hnp.arrays(np.float64, (n,), elements=finite))


def resize(x, m, convention, keep=None, axis=0):
    c = dct.fit(dct.forward(x, axis, convention), axis, keep or x.shape[axis])
    return dct.inverse(dct.fit(c, axis, m), axis, convention)


def close(a, b, scale):
    return np.allclose(a, b, rtol=1e-9, atol=1e-9 * max(1.0, scale))


# --------------------------------------------------------------------------- DCT identities

@FAST
@given(x=vectors(), convention=st.sampled_from(dct.CONVENTIONS))
def test_equal_lengths_are_the_identity(x, convention):
    assert close(resize(x, len(x), convention), x, np.abs(x).max(initial=0))


@FAST
@given(x=st.integers(1, 24).flatmap(lambda n: hnp.arrays(np.float64, (n, 3), elements=finite)),
       convention=st.sampled_from(dct.CONVENTIONS), axis=st.sampled_from([0, 1]))
def test_identity_along_either_axis_of_a_matrix(x, convention, axis):
    assert close(resize(x, x.shape[axis], convention, axis=axis), x, np.abs(x).max(initial=0))


@FAST
@given(x=vectors(), m=st.integers(1, 64))
def test_reference_resize_is_sqrt_n_over_m_times_ortho(x, m):
    n = len(x)
    ref, ortho = resize(x, m, "reference"), resize(x, m, "ortho")
    assert close(ref, np.sqrt(n / m) * ortho, np.abs(x).max(initial=0) * np.sqrt(n))


@FAST
@given(data=st.data(), convention=st.sampled_from(dct.CONVENTIONS))
def test_truncate_then_pad_is_a_low_pass(data, convention):
    x = data.draw(vectors(2, 64))
    keep = data.draw(st.integers(1, len(x)))
    low = resize(x, len(x), convention, keep=keep)
    spectrum, original = dct.forward(low, 0, "ortho"), dct.forward(x, 0, "ortho")
    scale = np.abs(x).max(initial=0) * np.sqrt(len(x))
    assert close(spectrum[keep:], 0 * spectrum[keep:], scale)      # nothing above the cut
    assert close(spectrum[:keep], original[:keep], scale)          # the band below it unchanged
    # ... and a low pass is idempotent: filtering twice changes nothing.
    assert close(resize(low, len(x), convention, keep=keep), low, scale)


@FAST
@given(n=st.integers(1, 64), convention=st.sampled_from(dct.CONVENTIONS))
def test_ortho_scale_maps_coefficients_to_orthonormal(n, convention):
    x = np.random.default_rng(n).standard_normal(n)
    assert np.allclose(dct.forward(x, 0, convention) * dct.ortho_scale(n, convention),
                       dct.forward(x, 0, "ortho"))


# --------------------------------------------------------------------------- matcher invariance

@pytest.fixture(scope="module")
def models(exported, tmp_path_factory):
    """(folder, {name: ModelProto}) of a ViT and a CNN source/target pair."""
    folder = tmp_path_factory.mktemp("props")
    paths = {"vit_s": exported("ViT", "legacy", 1, depth=4),
             "vit_t": exported("ViT", "legacy", 2, width=48, depth=2),
             "cnn_s": exported("CNN", "legacy-bn", 1, depth=3),
             "cnn_t": exported("CNN", "legacy-bn", 2, width=8, depth=2)}
    return folder, {k: onnx.load(v) for k, v in paths.items()}


def rows(source: onnx.ModelProto, target: onnx.ModelProto, folder, tag: str,
         back_s=None, back_t=None) -> list[dict]:
    """The plan's rows with every tensor name mapped back through back_s / back_t."""
    s, t = folder / f"{tag}_s.onnx", folder / f"{tag}_t.onnx"
    onnx.save(source, str(s))
    onnx.save(target, str(t))
    out = []
    for r in plan_rows(frontc.plan(s, t)):
        r = dict(r)
        r["target"] = unname(r["target"], back_t)
        if "sources" in r:
            r["sources"] = [unname(n, back_s) for n in r["sources"]]
        out.append(r)
    return sorted(out, key=lambda r: (r["target"], r.get("layer", -1)))


def unname(name: str, back: dict | None) -> str:
    if not back:
        return name
    if name in back:
        return back[name]
    base, sep, k = name.rpartition("__")       # a copy of a shared tensor: name__2
    return back.get(base, base) + sep + k if sep else name


PAIRS = [("vit_s", "vit_t"), ("cnn_s", "cnn_t")]
baseline: dict = {}


def expected(models, pair):
    folder, m = models
    if pair not in baseline:
        baseline[pair] = rows(m[pair[0]], m[pair[1]], folder, "base_" + pair[0])
    return baseline[pair]


@pytest.mark.parametrize("pair", PAIRS, ids=["vit", "cnn"])
@SLOW
@given(seed=st.integers(0, 2**32 - 1))
def test_renaming_everything_gives_the_same_plan(models, seed, pair):
    folder, m = models
    rng = np.random.default_rng(seed)
    source, back_s = oe.rename(m[pair[0]], rng)
    target, back_t = oe.rename(m[pair[1]], rng)
    assert rows(source, target, folder, "renamed", back_s, back_t) == expected(models, pair)


@pytest.mark.parametrize("pair", [PAIRS[0], PAIRS[1]], ids=["vit", "cnn"])
@SLOW
@given(seed=st.integers(0, 2**32 - 1))
def test_reordering_nodes_gives_the_same_plan(models, seed, pair):
    folder, m = models
    rng = np.random.default_rng(seed)
    source, target = oe.reorder(m[pair[0]], rng), oe.reorder(m[pair[1]], rng)
    assert rows(source, target, folder, "reordered") == expected(models, pair)


def test_the_edit_helpers_keep_the_model_valid(models):
    """rename and reorder keep models valid and computing the same function."""
    import onnxruntime as ort

    _, m = models
    rng = np.random.default_rng(0)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    outputs = []
    for model in (m["vit_s"], oe.rename(m["vit_s"], rng)[0], oe.reorder(m["vit_s"], rng)):
        onnx.checker.check_model(model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs.append(sess.run(None, {"x": x})[0])
    assert np.allclose(outputs[0], outputs[1]) and np.allclose(outputs[0], outputs[2])
