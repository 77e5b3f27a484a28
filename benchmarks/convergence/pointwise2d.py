"""What-if (a prototype, not a frontc option): FRONT with 1x1 convolutions viewed as the linear
layers they are, [OC, IC], instead of the published view [OC*IC, kh*kw] = [OC*IC, 1], which
squeezes to a 1-D signal of length OC*IC: resizing that flattened signal to (OC/2)*(IC/2)
scrambles which input meets which output (measured: correlation 0.03 with weight selection's
tensors on Lite0 -> width 0.5; 0.46 with the 2-D view).

    python -m benchmarks.convergence.pointwise2d     # -> docs/results/pointwise2d.json, .md

Runs the vision-cnn width target with FRONT reference and ortho while frontc.plan.view_shape
is patched in this process (everything else as in the main study: same seeds, steps, data).
"""
from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("frontc.plan", "frontc.passes.dct", "frontc.passes.resize", "frontc.passes.match",
           "frontc.learngene", "frontc.report")


def install() -> None:
    plan = importlib.import_module("frontc.plan")
    original = plan.view_shape

    def view_shape(shape):
        shape = tuple(shape)
        if len(shape) == 4 and shape[2:] == (1, 1) and shape[0] > 1 and shape[1] > 1:
            return (shape[0], shape[1])
        return original(shape)

    for name in MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "view_shape"):
            module.view_shape = view_shape


def main(argv=None) -> int:
    from benchmarks.convergence import report
    from benchmarks.convergence.run import _log, run_study
    from benchmarks.convergence.studies import efficientnet_study

    argv = sys.argv[1:] if argv is None else argv
    seeds = list(range(int(argv[0]) if argv else 3))
    torch.set_num_threads(1)
    install()
    study = efficientnet_study()
    study.targets = study.targets[:1]                       # lite0-w0.5
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="frontc-pointwise2d-") as tmp:
        result = run_study(study, seeds, False, {"front-ref", "front-ortho"}, Path(tmp), _log)
    target = result["targets"][0]
    summary = report.summarize(target)
    out = ROOT / "docs" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pointwise2d.json").write_text(json.dumps({"command": "python -m benchmarks.convergence."
                                                      "pointwise2d", "elapsed_s": round(time.perf_counter() - t0),
                                                      "study": result, "summary": summary}, indent=1))
    text = render(summary, seeds)
    (out / "pointwise2d.md").write_text(text)
    print(text)
    return 0


def render(summary: dict, seeds: list[int]) -> str:
    steps = summary["steps"]
    lines = ["# What-if: FRONT with 1x1 convolutions viewed as [OC, IC] (prototype)", "",
             "Command: `python -m benchmarks.convergence.pointwise2d` (frontc.plan.view_shape patched "
             "in-process; not a frontc option). EfficientNet-Lite0 -> Lite0 width 0.5 on MNIST, exactly "
             f"the main study's protocol, seeds {seeds}; accuracy in %, mean ± std. The main study "
             "(published flattened view) has, at step 150: FRONT reference 50.7 ± 0.1, FRONT ortho "
             "60.8 ± 1.0, weight selection 82.0 ± 1.9, random init 58.7 ± 7.3.", "",
             "| method (1x1 convs as [OC, IC]) | " + " | ".join(f"acc @{s}" for s in steps[1:]) + " |",
             "|---|" + "---|" * (len(steps) - 1)]
    for name, m in summary["methods"].items():
        lines.append(f"| {name} (2-D pointwise) | " + " | ".join(
            f"{100 * a:.1f} ± {100 * s:.1f}" for a, s in zip(m["acc_mean"][1:], m["acc_std"][1:])) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
