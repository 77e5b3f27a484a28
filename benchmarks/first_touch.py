#!/usr/bin/env python3
"""What a first touch of fresh memory costs, with and without NumPy's hugepage advice.

    python benchmarks/first_touch.py [--gib 1] [--rounds 2] [--pause 5]

Each measurement is a fresh process that switches NumPy's madvise(MADV_HUGEPAGE) on or off,
allocates `--gib` GiB of float32 and fills it twice: the first fill pays the page faults (and,
with the advice, any compaction the kernel does to find free 2 MiB pages), the second is the
plain memory bandwidth. Processes alternate, `--pause` seconds apart, so memory freed by one
has time to go back to the host (free page reporting) before the next. Prints each run and the
ratio advice-on / advice-off of the best first fills: the reason frontc switches the advice
off while it computes (frontc.backend.small_pages, docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = """
import json, sys, time
import numpy as np
from numpy._core.multiarray import _set_madvise_hugepage
_set_madvise_hugepage(sys.argv[1] == "on")
a = np.empty(int(float(sys.argv[2]) * 2**28), dtype=np.float32)
t = time.perf_counter(); a.fill(1); first = time.perf_counter() - t
t = time.perf_counter(); a.fill(2); again = time.perf_counter() - t
print(json.dumps({"first": first, "again": again}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pause", type=float, default=5.0)
    a = ap.parse_args()
    best = {}
    for r in range(a.rounds):
        for advice in ("on", "off"):
            time.sleep(a.pause)
            out = subprocess.run([sys.executable, "-c", CHILD, advice, str(a.gib)], check=True,
                                 capture_output=True, text=True).stdout
            got = json.loads(out)
            best[advice] = min(best.get(advice, float("inf")), got["first"])
            print(f"round {r + 1} hugepage advice {advice:>3}: first fill {got['first']:.2f} s, "
                  f"second fill {got['again']:.2f} s ({a.gib:g} GiB)", flush=True)
    print(f"first touch, advice on / off: {best['on'] / best['off']:.2f}x "
          f"({best['on']:.2f} s vs {best['off']:.2f} s per {a.gib:g} GiB)")


if __name__ == "__main__":
    main()
