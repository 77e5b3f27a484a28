"""Why the curves differ: magnitudes and structure of each method's initialization, no training.

    python -m benchmarks.convergence.diagnose [--out docs/results/diagnostics.md]

For each study's targets (seed 0), every method's frontc output is compared tensor by tensor,
grouped by kind (pointwise / depthwise / k x k conv, linear, norm and BatchNorm vectors,
embeddings), with two numbers averaged over the group's tensors:
- std ratio: the tensor's std / the std of the source layer it comes from (source layer i for
  weight selection, min(i, L_s - 1) for FRONT: the layer whose statistics de-standardize it);
  1.0 = the magnitudes of the source; FRONT's reference scaling is expected to inflate by
  sqrt(N/M) per shrunk axis;
- corr with selection: Pearson correlation with weight selection's tensor (a subsample of real
  source neurons): near 1 = FRONT's tensor is (a smooth version of) the same neurons' weights;
  near 0 = whatever structure the neurons had is scrambled;
- energy kept (FRONT ortho, from frontc's report) against "white": the fraction of the
  standardized source energy inside the coefficient window the target keeps, and what a white
  spectrum (no low-frequency concentration) would keep in that window, prod(kept / N) over the
  resized axes and layers. Energy kept above white = the low frequencies hold more than their share.
"""
from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import frontc
from benchmarks.convergence import common
from benchmarks.convergence.studies import STUDIES
from frontc.passes.canonicalize import view_model
from frontc.plan import view_shape, whole_view

ROOT = Path(__file__).resolve().parents[2]


def kind(weight) -> str:
    if weight.slot == "conv.weight":
        group = weight.op.attributes.get("group")
        if len(weight.shape) == 4 and weight.shape[2:] == (1, 1):
            return "conv 1x1 (pointwise)"
        if group is not None and group.value > 1:
            return f"conv {weight.shape[2]}x{weight.shape[3]} depthwise"
        return "conv k x k (stem, patch embedding)"
    if weight.slot == "add.tensor":
        return "position embedding"
    if weight.slot == "concat.vector":
        return "class token"
    if weight.slot.startswith("bn."):
        return "BatchNorm " + weight.slot[3:]
    if weight.slot == "linear.weight":
        return "linear weight"
    if weight.slot.startswith("norm."):
        return "LayerNorm " + weight.slot[5:]
    if weight.slot == "embedding.table":
        return "embedding table"
    return weight.slot


def arrays(path: Path) -> dict:
    return {w.name: w for w in view_model(path, "output").index.weights}


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    d = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / d) if d > 0 else float("nan")


def diagnose(study_name: str, work: Path) -> list[str]:
    study = STUDIES[study_name]()
    source = study.source_onnx(work)
    lines = []
    methods = [m for m in common.all_methods(study.methods) if m.transfers]
    for target in study.targets:
        model = target.build(0)
        tpath = common.export_legacy(model, (study.example,), work / f"{target.name}.onnx",
                                     [study.input_name], ["out"], keep_batchnorm=study.keep_batchnorm)
        states, outs = {}, {}
        for m in methods:
            if m.when and not getattr(target, m.when):
                continue
            opts = dict(m.options)
            pipeline = opts.pop("pipeline", None)
            out = work / f"{target.name}_{m.name}.onnx"
            states[m.name] = frontc.transfer(source, tpath, out, validate=False,
                                             **({"pipeline": pipeline} if pipeline else {}), **opts)
            outs[m.name] = arrays(out)
        # source layer of each target tensor, from FRONT's plan (min(i, L_s - 1)) and select's (i)
        src_of = {}
        for mp in states["front-ref"].plan.mappings:
            for i, t in enumerate(mp.targets):
                src_of[t.name] = mp.sources[min(i, len(mp.sources) - 1)]
        stats = defaultdict(lambda: defaultdict(list))
        report = states["front-ortho"].report
        for mp in states["front-ortho"].plan.mappings:
            for t in mp.targets:
                row = report.get(t.name, {})
                if "energy_kept" not in row or t.name not in outs["select"]:
                    continue
                sv, tv = view_shape(mp.sources[0].shape), view_shape(t.shape)
                white = np.prod([min(a, b) / a for a, b, f in zip(sv, tv, whole_view(mp.sources[0]).fixed)
                                 if not f]) if len(sv) == len(tv) else float("nan")
                white *= min(len(mp.sources), len(mp.targets)) / len(mp.sources)
                stats[kind(outs["select"][t.name])][("energy", "kept")].append(row["energy_kept"])
                stats[kind(outs["select"][t.name])][("energy", "white")].append(white)
        for name, sel in outs["select"].items():
            if name not in src_of or name not in states["select"].updates:
                continue
            k = kind(sel)
            s_std = src_of[name].array().std()
            for mname, weights in outs.items():
                w = weights[name].array()
                if s_std > 0:
                    stats[k][(mname, "std")].append(w.std() / s_std)
                if mname != "select":
                    stats[k][(mname, "corr")].append(corr(w, sel.array()))
        names = list(outs)
        lines += [f"### {study_name}: {target.name}", "",
                  "| kind (tensors) | " + " | ".join(f"std ratio {n}" for n in names) + " | "
                  + " | ".join(f"corr {n}" for n in names if n != "select")
                  + " | energy kept (ortho) | white |",
                  "|---|" + "---|" * (2 * len(names) + 1)]
        for k, d in sorted(stats.items()):
            count = len(d[("select", "std")])
            cells = [f"{np.mean(d[(n, 'std')]):.2f}" if d[(n, "std")] else "–" for n in names]
            cells += [f"{np.nanmean(d[(n, 'corr')]):.2f}" for n in names if n != "select"]
            cells += [f"{np.nanmean(d[('energy', w)]):.2f}" if d[("energy", w)] else "–"
                      for w in ("kept", "white")]
            lines.append(f"| {k} ({count}) | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.convergence.diagnose", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", default=",".join(STUDIES))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "diagnostics.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["# Convergence benchmark diagnostics: magnitudes and structure at initialization", "",
             "Command: `python -m benchmarks.convergence.diagnose`. " + __doc__.split("\n\n", 2)[2].strip(),
             ""]
    with tempfile.TemporaryDirectory(prefix="frontc-diagnose-") as tmp:
        for name in args.studies.split(","):
            lines += diagnose(name.strip(), Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
