#!/usr/bin/env python3
"""What the FRONT+ penalty costs next to a training step (needs the torch extra).

    python benchmarks/spectral_cost.py [--threads 1] [--reps 30] [--decay 0 0 0] [--compile]
                                       [--every 4] [--cases vit,deit,cnn]

For a ViT (models/build.py's MNIST ViT, 28x28 inputs, 17 tokens, batch 64) and a CNN (conv
stem + residual conv/BatchNorm blocks, 32x32 inputs, batch 32), each at two sizes, and a
DeiT-Tiny-shaped ViT at ImageNet's token count (192 wide, 12 deep, 3 heads, 3x224x224 inputs,
patch 16: 197 tokens, batch 32; case `deit`), it times
  step:    forward + cross-entropy + backward + AdamW step of the model on one batch,
  penalty: SpectralRegularizer forward + backward (keep_ratio 0.75, depth keep 0.5),
interleaved (one of each per repetition, so load from other processes hits both alike) and
prints the median of each and their ratio. Eager mode, float32, CPU; with --compile also the
penalty under torch.compile (inductor; the compile time is printed, not counted). With
--every K it also prints the cost per step when the penalty is applied every K-th step with
weight K x lambda (lazy regularization, as StyleGAN2 does for its R1 penalty): ratio / K.
One thread by default: on a shared 2-core machine, 2-thread OpenMP kernels spin-wait on a
busy core and both timings swing by 5x; --threads 2 on an idle machine is fine.

Why the ratio moves as it does: per weight element the penalty costs O(n) multiply-adds per
axis it transforms (less than a full DCT: the kept prefix shrinks, the last axis needs only
its outside rows, axes past `max_matrix` use an FFT), independent of the batch; a training
step costs about 6 x batch x tokens (or pixels) multiply-adds per weight element. So the ratio
grows with width and shrinks with batch x tokens: a CNN on images, or a transformer on
realistic sequence lengths, pays little; a tiny-token ViT with a small batch pays the most.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "models"), str(ROOT / "tests")]
import build  # noqa: E402  (models/build.py: the example ViT)
from torchmodels import CNN  # noqa: E402

from frontc.spectral import SpectralRegularizer  # noqa: E402


def cases(which: set[str]):
    """(label, model, input batch)."""
    gen = torch.Generator().manual_seed(0)
    if "vit" in which:
        for dim, depth in ((64, 6), (192, 12)):
            x = torch.rand(64, 1, 28, 28, generator=gen)
            yield f"ViT D={dim} L={depth}", build.make_model(dim, depth, 4, 0), x
    if "deit" in which:
        torch.manual_seed(0)
        x = torch.rand(32, 3, 224, 224, generator=gen)
        yield "DeiT-Ti 197 tok", build.ViT(192, 12, 3, img_size=224, patch=16, in_chans=3), x
    if "cnn" in which:
        for width, depth in ((32, 4), (64, 4)):
            x = torch.randn(32, 3, 32, 32, generator=gen)
            yield f"CNN C={width} L={depth}", CNN(width=width, depth=depth), x


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model: nn.Module, x: torch.Tensor, reps: int, decay, compile_: bool) -> dict:
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1))
    reg = SpectralRegularizer(model, 0.75, depth_keep_ratio=0.5, decay=decay,
                              example_inputs=(x[:2],))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fns = {"eager": reg}
    compile_s = 0.0
    if compile_:
        fns["compiled"] = torch.compile(reg)
        compile_s = timed(lambda: fns["compiled"]().backward())

    def penalty(fn):
        fn().backward()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):                      # warm-up: allocator, thread pools
        step(), [penalty(fn) for fn in fns.values()]
    times = {"step": [], **{k: [] for k in fns}}
    for _ in range(reps):
        times["step"].append(timed(step))
        for k, fn in fns.items():
            times[k].append(timed(lambda: penalty(fn)))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {"params": sum(p.numel() for p in model.parameters()), "groups": len(reg.groups),
            "fft": reg.uses_fft(), "ms": ms, "compile_s": compile_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--decay", type=float, nargs=3, default=(0.0, 0.0, 0.0),
                        metavar=("G_LAYER", "G_OUT", "G_IN"))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(penalty)")
    parser.add_argument("--every", type=int, default=1,
                        help="also print the cost per step of a penalty applied every K steps")
    parser.add_argument("--cases", default="vit,deit,cnn", help="comma-separated: vit, deit, cnn")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.reps} reps, "
          f"decay {tuple(args.decay)}, keep 0.75 (depth 0.5)")
    extra = f"{'compiled ms':>13}{'ratio':>8}{'compile s':>11}" if args.compile else ""
    extra += f"{f'every {args.every}':>10}" if args.every > 1 else ""
    print(f"{'model':<16}{'params':>11}{'groups':>8}{'fft':>5}{'step ms':>10}{'penalty ms':>12}"
          f"{'ratio':>8}{extra}")
    for label, model, x in cases(set(args.cases.split(","))):
        r = measure(model, x, args.reps, tuple(args.decay), args.compile)
        ms = r["ms"]
        line = (f"{label:<16}{r['params']:>11,}{r['groups']:>8}{'yes' if r['fft'] else 'no':>5}"
                f"{ms['step']:>10.2f}{ms['eager']:>12.2f}{ms['eager'] / ms['step']:>8.1%}")
        if args.compile:
            line += (f"{ms['compiled']:>13.2f}{ms['compiled'] / ms['step']:>8.1%}"
                     f"{r['compile_s']:>11.0f}")
        if args.every > 1:
            best = min(ms.get("compiled", ms["eager"]), ms["eager"])
            line += f"{best / ms['step'] / args.every:>10.1%}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
