#!/usr/bin/env python3
"""What validating a written model costs: the checker on the whole file against the checker on
its re-encoding without the weights' bytes, and onnxruntime's session with and without weight
pre-packing.

    python benchmarks/bench_validate.py [--model PATH] [--rounds 2] [--workdir /tmp/frontc-bench]

Without --model, a synthetic GPT-style model (benchmarks/gpt.py, width 1024, 24 layers: 1.32
GiB inline, the target of bench_scale's 1.5b case) is built in --workdir, or reused if there.
Each measurement is a fresh process (wall time around the measured call, peak RSS from
os.wait4), interleaved over the rounds:
  checker full   onnx.checker.check_model(path): parses every weight;
  checker light  frontc.validate.run_checker(path, light=True): what frontc runs;
  session        onnxruntime.InferenceSession with default options;
  session, no pre-packing   with session.disable_prepacking=1: what frontc runs.
Prints each run, and the ratios full / light and default / no pre-packing (best of rounds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CHILD = """
import json, sys, time
from pathlib import Path
what, path = sys.argv[1], sys.argv[2]
import onnx, onnxruntime as ort
from frontc import validate
start = time.perf_counter()
if what == "checker full":
    onnx.checker.check_model(path)
elif what == "checker light":
    validate.run_checker(Path(path).resolve(), light=True)
else:
    options = ort.SessionOptions()
    if what == "session, no pre-packing":
        options.add_session_config_entry("session.disable_prepacking", "1")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""
RUNS = ("checker full", "checker light", "session", "session, no pre-packing")


def measure(what: str, model: Path) -> tuple[float, int]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, what, str(model)], stdout=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{what} failed")
    return json.loads(proc.stdout.read())["seconds"], usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/frontc-bench"))
    a = ap.parse_args()
    model = a.model
    if model is None:
        import gpt

        a.workdir.mkdir(parents=True, exist_ok=True)
        model = a.workdir / "m350.onnx"
        if not model.exists():
            gpt.build(model, 1024, 24, 16, inline=True, seed=24)
    print(f"model {model} ({model.stat().st_size / 2**30:.2f} GiB)", flush=True)
    best: dict[str, tuple[float, int]] = {}
    for r in range(a.rounds):
        for what in RUNS:
            seconds, rss = measure(what, model)
            old = best.get(what, (float("inf"), 0))
            best[what] = (min(old[0], seconds), max(old[1], rss))
            print(f"  round {r + 1} {what:>24}: {seconds:6.2f} s, peak RSS {rss / 2**30:.2f} GiB", flush=True)
    print(f"checker full / light: {best['checker full'][0] / best['checker light'][0]:.0f}x time "
          f"({best['checker full'][0]:.2f} s vs {best['checker light'][0]:.2f} s), peak RSS "
          f"{best['checker full'][1] / 2**30:.2f} vs {best['checker light'][1] / 2**30:.2f} GiB")
    print(f"session default / no pre-packing: {best['session'][0] / best['session, no pre-packing'][0]:.2f}x "
          f"time ({best['session'][0]:.2f} s vs {best['session, no pre-packing'][0]:.2f} s), peak RSS "
          f"{best['session'][1] / 2**30:.2f} vs {best['session, no pre-packing'][1] / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
