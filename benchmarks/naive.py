#!/usr/bin/env python3
"""The FRONT transfer done the way the published script does it, for benchmarks/gpt.py models.

    python benchmarks/naive.py source.onnx target.onnx -o out.onnx [--keep-ratio R]

Everything in memory, tensor by tensor with NumPy: both models are loaded whole (onnx.load,
external data included), every weight becomes a float64 array, tensors are paired by their
names (h.<layer>.<role>, as the published script pairs timm names), the learngene of every
tensor and depth group is computed and kept, then every target tensor is rebuilt and the
target is saved. The numerics are frontc's `--convention reference --depth-mode zero`
(vocabulary and position axes are not transformed), so the output can be compared with
frontc's (`--compare frontc_out.onnx` prints the largest difference).
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import onnx
import scipy.fft
from onnx import numpy_helper

EPS = 1e-8
FIXED = {"wte": (True, False), "wpe": (True, False)}   # the vocabulary / position axis


def forward(x, axis):
    return scipy.fft.dct(x, type=2, axis=axis) / 2.0


def inverse(c, axis, n):
    return 2.0 * scipy.fft.idct(c, type=2, n=n, axis=axis)


def canonical(name: str, array: np.ndarray) -> np.ndarray:
    """PyTorch layout: MatMul weights are stored [in, out] in these models."""
    return array.T if name.endswith(".weight") and array.ndim == 2 else array


def gene(layers: list[np.ndarray], fixed, keep_ratio: float):
    stats, blocks = [], []
    for w in layers:
        mu, sd = w.mean(), w.std(ddof=1)
        c = (w - mu) / (sd + EPS)
        for axis in range(c.ndim):
            if not fixed[axis]:
                c = forward(c, axis)[(slice(None),) * axis + (slice(0, int(c.shape[axis] * keep_ratio)),)]
        blocks.append(c)
        stats.append((mu, sd))
    return forward(np.stack(blocks), 0), stats


def rebuild(coeffs, stats, depth: int, shape, fixed) -> list[np.ndarray]:
    c = coeffs[:min(depth, len(coeffs))]
    c = c[(slice(None),) + tuple(slice(0, min(k, n)) for k, n in zip(c.shape[1:], shape))]
    x = inverse(c, 0, depth)
    for axis, n in enumerate(shape, start=1):
        if not fixed[axis - 1]:
            x = inverse(x, axis, n)
    return [x[i] * stats[min(i, len(stats) - 1)][1] + stats[min(i, len(stats) - 1)][0]
            for i in range(depth)]


def transfer(source: Path, target: Path, output: Path, keep_ratio: float = 1.0) -> None:
    src_model, tgt_model = onnx.load(source), onnx.load(target)
    src = {t.name: canonical(t.name, numpy_helper.to_array(t).astype(np.float64))
           for t in src_model.graph.initializer if t.data_type in (1, 10, 11, 16) and len(t.dims)}
    tgt = {t.name: t for t in tgt_model.graph.initializer}
    groups: dict[str, dict[int, str]] = {}
    for name in src:
        m = re.fullmatch(r"h\.(\d+)\.(.+)", name)
        key, layer = (m.group(2), int(m.group(1))) if m else (name, 0)
        groups.setdefault(key, {})[layer] = name
    genes = {}
    for key, layers in groups.items():          # the whole learngene, kept in memory
        arrays = [src[layers[i]] for i in sorted(layers)]
        genes[key] = gene(arrays, FIXED.get(key, (False,) * arrays[0].ndim), keep_ratio)
    del src
    depth = 1 + max(int(m.group(1)) for n in tgt if (m := re.fullmatch(r"h\.(\d+)\..+", n)))
    for key, (coeffs, stats) in genes.items():
        names = [f"h.{i}.{key}" for i in range(depth)] if f"h.0.{key}" in tgt else [key]
        first = tgt[names[0]]
        shape = canonical(names[0], np.empty(tuple(first.dims), dtype=np.uint8)).shape
        for name, values in zip(names, rebuild(coeffs, stats, len(names), shape,
                                               FIXED.get(key, (False,) * len(shape)))):
            t = tgt[name]
            dtype = numpy_helper.to_array(t).dtype
            t.CopyFrom(numpy_helper.from_array(canonical(name, values).astype(dtype), name))
    big = sum(t.ByteSize() for t in tgt_model.graph.initializer) > 2**31 - 2**24
    onnx.save(tgt_model, output, save_as_external_data=big, location=output.name + ".data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("target", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--keep-ratio", type=float, default=1.0)
    ap.add_argument("--compare", type=Path, help="a frontc output of the same transfer")
    a = ap.parse_args()
    start = time.perf_counter()
    transfer(a.source, a.target, a.output, a.keep_ratio)
    print(f"naive transfer: {time.perf_counter() - start:.2f} s")
    if a.compare:
        mine = {t.name: numpy_helper.to_array(t) for t in onnx.load(a.output).graph.initializer}
        theirs = {t.name: numpy_helper.to_array(t) for t in onnx.load(a.compare).graph.initializer}
        worst = max(float(np.abs(mine[k].astype(np.float64) - theirs[k]).max() /
                          max(np.abs(mine[k]).max(), 1e-12)) for k in mine if mine[k].dtype.kind == "f")
        print(f"largest difference to {a.compare.name}, relative to each tensor's max: {worst:.2e}")


if __name__ == "__main__":
    main()
