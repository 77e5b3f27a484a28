"""transformers models built from configs (BERT, ViT, GPT-2) at two widths and depths, exported
by either torch exporter: structure matches across widths, depths and exporters."""
import numpy as np
import pytest

import frontc
from helpers import run_onnx

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from torchmodels import LastHidden  # noqa: E402

SOURCE, TARGET = (64, 4), (48, 2)


def build(kind: str, width: int, depth: int):
    torch.manual_seed(width * 100 + depth)
    if kind == "bert":
        config = transformers.BertConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=4,
                                         intermediate_size=4 * width, vocab_size=100,
                                         max_position_embeddings=32)
        model = transformers.BertModel(config, add_pooling_layer=False)
    elif kind == "vit":
        config = transformers.ViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=4,
                                        intermediate_size=4 * width, image_size=16, patch_size=4)
        model = transformers.ViTModel(config, add_pooling_layer=False)
    else:
        config = transformers.GPT2Config(n_embd=width, n_layer=depth, n_head=4, vocab_size=100, n_positions=32)
        model = transformers.GPT2Model(config)
    with torch.no_grad():  # pretrained-like values: no zero biases or unit norms to fold away
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.05 + (1.0 if p.ndim == 1 and torch.all(p == 1) else 0.0))
    return model.eval()


def example(kind):
    if kind == "vit":
        return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory):
    folder, cache = tmp_path_factory.mktemp("hf"), {}

    def make(kind, size, exporter):
        key = (kind, size, exporter)
        if key not in cache:
            path = folder / f"{kind}_{size[0]}x{size[1]}_{exporter}.onnx"
            torch.onnx.export(LastHidden(build(kind, *size)), (example(kind),), str(path),
                              dynamo=exporter == "dynamo", input_names=["x"], output_names=["y"],
                              opset_version=18)
            cache[key] = path
        return cache[key]

    return make


def signature(state):
    """The plan as (target kind, shape, layers) in target order: comparable across exporters."""
    return [(m.targets[0].slot, m.targets[0].shape, m.depth) for m in state.plan.mappings]


@pytest.mark.parametrize("kind", ["bert", "vit", "gpt2"])
def test_one_exporter_maps_everything(hf_export, kind, tmp_path):
    for exporter in ("legacy", "dynamo"):
        source, target = hf_export(kind, SOURCE, exporter), hf_export(kind, TARGET, exporter)
        state = frontc.transfer(source, target, tmp_path / f"{exporter}.onnx")
        assert state.plan.coverage == 1.0, (exporter, [(k.weight.name, k.reason) for k in state.plan.kept])
        assert sum(1 for m in state.plan.mappings if m.depth == (4, 2)) >= 12
        y = run_onnx(tmp_path / f"{exporter}.onnx", example(kind).numpy())
        assert y.shape[-1] == TARGET[0] and np.all(np.isfinite(y))


@pytest.mark.parametrize("kind", ["bert", "vit", "gpt2"])
def test_across_exporters_same_mapping(hf_export, kind):
    same = frontc.plan(hf_export(kind, SOURCE, "dynamo"), hf_export(kind, TARGET, "dynamo"))
    for src, tgt in (("legacy", "dynamo"), ("dynamo", "legacy")):
        mixed = frontc.plan(hf_export(kind, SOURCE, src), hf_export(kind, TARGET, tgt))
        # The dynamo exporter folds constant lookups (position and token-type embeddings read
        # at fixed positions) into plain tensors: those, and only those, cannot be matched.
        folded = [k for k in mixed.plan.kept]
        assert all(k.weight.slot in ("embedding.table", "add.tensor") for k in folded), \
            [(k.weight.name, k.weight.slot, k.reason) for k in folded]
        assert len(folded) <= 2
        common = [s for s in signature(same) if s[0] not in ("embedding.table", "add.tensor")]
        assert [s for s in signature(mixed) if s[0] not in ("embedding.table", "add.tensor")] == common
