#!/usr/bin/env python3
"""FFT against the matrix form of a DCT along one axis, per axis length, on this CPU.

    python benchmarks/bench_dct.py [--elements 4000000] [--repeat 3]

For each axis length n, an array of about `--elements` float32 values with that axis first
(strided: a depth group's layer axis, a weight's out axis) and last (contiguous) is
transformed forward (all n coefficients) and inverse, by `scipy.fft.dct` (pocketfft,
`workers` = all cores) and by one GEMM with the cached cosine matrix. Prints the best of
`--repeat` runs and the ratio fft/matrix (above 1: the matrix form is faster), then the
axis lengths where the matrix form wins; frontc.backend.MATRIX_MAX is set from it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from frontc import backend as B  # noqa: E402


def best(f, repeat):
    f()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", type=int, default=4_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lengths", default="4,8,12,16,24,32,48,64,96,128,192,256,384,512,768,1024")
    a = ap.parse_args()
    be = B.cpu()
    rng = np.random.default_rng(0)
    print(f"{'n':>6} {'axis':>6} {'op':>8} {'fft ms':>9} {'matrix ms':>10} {'fft/matrix':>11}")
    wins: dict[str, list[int]] = {"first": [], "last": []}
    for n in map(int, a.lengths.split(",")):
        cols = max(1, a.elements // n)
        for where in ("first", "last"):
            shape = (n, cols) if where == "first" else (cols, n)
            axis = 0 if where == "first" else 1
            x = rng.standard_normal(shape).astype(np.float32)
            m_fwd = be.matrix("forward", n, n, "reference", np.float32)
            m_inv = be.matrix("inverse", n, n, "reference", np.float32)
            ratios = []
            for op, fft, mat in (
                    ("forward", lambda: be.fft.dct(x, type=2, axis=axis, workers=be.workers),
                     lambda: be._along(m_fwd, x, axis)),
                    ("inverse", lambda: be.fft.idct(x, type=2, axis=axis, workers=be.workers),
                     lambda: be._along(m_inv, x, axis))):
                tf, tm = best(fft, a.repeat), best(mat, a.repeat)
                ratios.append(tf / tm)
                print(f"{n:>6} {where:>6} {op:>8} {tf * 1e3:>9.2f} {tm * 1e3:>10.2f} {tf / tm:>11.2f}")
            if min(ratios) > 1.0:
                wins[where].append(n)
    for where, ns in wins.items():
        print(f"matrix form faster (forward and inverse), axis {where}: n in {ns or 'none'}")
    print(f"frontc.backend.MATRIX_MAX = {B.MATRIX_MAX}")


if __name__ == "__main__":
    main()
