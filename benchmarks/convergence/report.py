"""Tables, plots and the numbers file of a convergence study.

Writes OUT/results.md, OUT/results/results.json (every curve of every run, and the summary
below) and one PNG per study, OUT/results/<study>.png.

Summary of a (target, method) over seeds, on the mean curve:
- accuracy and loss at fixed steps, mean +- std over seeds (the held-out set);
- a* = random init's final accuracy (mean over seeds); steps to a* = the first step where the
  mean accuracy curve reaches a*, linearly interpolated between evaluation steps (None: never);
- speedup = random's steps to a* / the method's steps to a*;
- FLOPs saved = (random's steps - the method's steps) x measured training FLOPs per step.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
READING = HERE / "reading.md"


def steps_to(steps: list[int], acc: np.ndarray, goal: float) -> float | None:
    for i, (s, a) in enumerate(zip(steps, acc)):
        if a >= goal:
            if i == 0:
                return float(s)
            s0, a0 = steps[i - 1], acc[i - 1]
            return float(s0 + (goal - a0) / (a - a0) * (s - s0)) if a > a0 else float(s)
    return None


def summarize(target: dict) -> dict:
    """Per method: mean/std curves, steps to random's final accuracy, speedup, FLOPs saved."""
    by_method: dict[str, list[dict]] = {}
    for run in target["runs"]:
        if "error" not in run:
            by_method.setdefault(run["method"], []).append(run)
    if not by_method:
        return {"steps": [], "methods": {}}
    steps = next(iter(by_method.values()))[0]["step"]
    out = {"steps": steps, "methods": {}}
    for name, runs in by_method.items():
        acc = np.array([r["test_acc"] for r in runs], dtype=float)
        loss = np.array([r["test_loss"] for r in runs], dtype=float)
        out["methods"][name] = {
            "seeds": len(runs),
            "acc_mean": acc.mean(0).round(5).tolist(), "acc_std": acc.std(0).round(5).tolist(),
            "loss_mean": loss.mean(0).round(5).tolist(), "loss_std": loss.std(0).round(5).tolist(),
            "final_acc_min": round(float(acc[:, -1].min()), 5),
            "final_acc_max": round(float(acc[:, -1].max()), 5)}
    if "random" not in out["methods"]:
        return out
    goal = out["methods"]["random"]["acc_mean"][-1]
    out["goal_acc"] = goal
    base = steps_to(steps, np.array(out["methods"]["random"]["acc_mean"]), goal)
    out["random_steps_to_goal"] = base
    for name, m in out["methods"].items():
        s = steps_to(steps, np.array(m["acc_mean"]), goal)
        per_seed = [steps_to(steps, np.array(r["test_acc"], dtype=float), goal) for r in by_method[name]]
        m["steps_to_goal"] = None if s is None else round(s, 1)
        m["seeds_reaching_goal"] = sum(p is not None for p in per_seed)
        m["speedup"] = None if s is None or not base else round(base / max(s, 1e-9), 2)
        if s is not None and base is not None:
            m["flops_saved"] = int((base - s) * target["flops_per_step"])
            m["flops_saved_pct"] = round(100 * (base - s) / base, 1) if base else 0.0
        else:
            m["flops_saved"] = m["flops_saved_pct"] = None
    return out


def _pm(mean: float, std: float, pct: bool = True) -> str:
    if pct:
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{mean:.3f} ± {std:.3f}"


def _shown_steps(steps: list[int]) -> list[int]:
    wanted = [s for s in (10, 25, 50, 100) if s in steps and s != steps[-1]]
    return wanted or [s for s in steps[1:-1]][:3]


def _flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x / 1e6:.1f} MFLOP"


def target_table(target: dict, summary: dict, labels: dict[str, str]) -> list[str]:
    steps = summary["steps"]
    shown = _shown_steps(steps)
    idx = {s: steps.index(s) for s in shown + [steps[-1]]}
    head = (["method"] + [f"acc @{s}" for s in shown] + [f"acc @{steps[-1]} (final)",
            f"loss @{steps[-1]}", "steps to a*", "speedup", "training FLOPs saved"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["methods"].items():
        cells = [labels.get(name, name)]
        for s in shown + [steps[-1]]:
            cells.append(_pm(m["acc_mean"][idx[s]], m["acc_std"][idx[s]]))
        cells.append(_pm(m["loss_mean"][-1], m["loss_std"][-1], pct=False))
        if "steps_to_goal" in m:
            reach = m["steps_to_goal"]
            cells.append("not reached" if reach is None else
                         f"{reach:.0f} ({m['seeds_reaching_goal']}/{m['seeds']} seeds)")
            cells.append("–" if m["speedup"] is None else f"{m['speedup']:.2f}x")
            cells.append("–" if m["flops_saved"] is None else
                         f"{_flops(m['flops_saved'])} ({m['flops_saved_pct']:.0f}%)")
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


COLORS = {"random": "#777777", "select": "#1f77b4", "front-ref": "#d62728", "front-ortho": "#ff7f0e",
          "front-ref-r0.5": "#2ca02c", "front-ref-repeat": "#9467bd"}


def plot_study(study: dict, summaries: list[dict], labels: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(study["targets"])
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.1 * rows), squeeze=False)
    extra = iter(["#8c564b", "#e377c2", "#17becf", "#bcbd22"])
    colors = dict(COLORS)
    for r, (target, summary) in enumerate(zip(study["targets"], summaries)):
        steps = np.array(summary["steps"])
        for name, m in summary["methods"].items():
            color = colors.setdefault(name, next(extra, None))
            for c, key in enumerate(("acc", "loss")):
                mean, std = np.array(m[f"{key}_mean"]), np.array(m[f"{key}_std"])
                ax = axes[r][c]
                ax.plot(steps, mean, marker=".", color=color, label=labels.get(name, name),
                        linestyle="--" if name == "random" else "-")
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
        axes[r][0].set_ylabel(f"{target['name']}\ntest accuracy")
        axes[r][0].legend(fontsize=7, loc="lower right")
        axes[r][1].set_ylabel("test loss")
        axes[r][1].set_yscale("log")
        if "goal_acc" in summary:
            axes[r][0].axhline(summary["goal_acc"], color="#777777", linewidth=0.6, linestyle=":")
        for c in range(2):
            axes[r][c].grid(alpha=0.3)
            axes[r][c].set_xlabel("training step")
    n = len(study["seeds"])
    fig.suptitle(f"{study['title']}\nmean ± std over {n} seed{'s' * (n > 1)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def head_to_head(study: dict, summaries: list[dict], labels: dict[str, str]) -> list[str]:
    """Per target: the best method at the first shown step and at the end."""
    lines = ["| target | best early (step) | best final | FRONT ref - selection, early | FRONT ref - selection, final |",
             "|---|---|---|---|---|"]
    for target, s in zip(study["targets"], summaries):
        steps = s["steps"]
        early = steps.index(_shown_steps(steps)[min(1, len(_shown_steps(steps)) - 1)])
        ms = s["methods"]
        best_e = max(ms, key=lambda k: ms[k]["acc_mean"][early])
        best_f = max(ms, key=lambda k: ms[k]["acc_mean"][-1])

        def diff(i):
            if "front-ref" not in ms or "select" not in ms:
                return "–"
            a, b = ms["front-ref"], ms["select"]
            d = a["acc_mean"][i] - b["acc_mean"][i]
            spread = math.hypot(a["acc_std"][i], b["acc_std"][i])
            return f"{100 * d:+.1f} pts (spread {100 * spread:.1f})"
        lines.append(f"| {target['name']} | {labels.get(best_e, best_e)} ({steps[early]}) | "
                     f"{labels.get(best_f, best_f)} | {diff(early)} | {diff(-1)} |")
    return lines


def write(results: dict, out: Path) -> list[Path]:
    folder = out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    md: list[str] = ["# Convergence benchmark: does the initialization pay off?", ""]
    md += ["FRONT (DCT learngene) against weight selection (Xu et al., ICLR 2024) and the target's "
           "own random initialization, on real pretrained weights and real data. Every "
           "initialization goes through frontc on ONNX files (legacy torch export of source and "
           "target, `frontc.transfer`, then `frontc.torch.load_onnx_weights` back into the torch "
           "target); training happens in PyTorch.", ""]
    md += [f"- Command: `{results['command']}`",
           f"- Date: {results['date']}; machine: {results['machine']}; frontc {results['frontc_version']}, "
           f"code {results.get('code', 'unknown')}",
           f"- Wall time: {results['elapsed_s'] / 60:.1f} min (all studies, incl. exports and transfers)",
           "- Numbers: `results/results.json` (every curve of every run); plots: `results/*.png`", ""]
    md += ["Protocol: AdamW, linear warmup over the first 10% of the steps then cosine decay to 0, "
           "gradient clipping at 1.0, the same batches in the same order for every method of a seed. "
           "Accuracy and loss are on a held-out set. **a\\*** = random init's final accuracy (mean "
           "over seeds); **steps to a\\*** = first step where the mean curve reaches it (linear "
           "interpolation between evaluations; in parentheses how many single seeds reach it); "
           "**speedup** = random's steps to a\\* / the method's; **FLOPs saved** = the steps saved x "
           "training FLOPs per step (forward + backward, measured by torch.utils.flop_counter). "
           "Cells are mean ± std over seeds, accuracies in %.", ""]
    all_methods: dict[str, dict] = {}
    for study in results["studies"]:
        for t in study["targets"]:
            for m in t["methods"]:
                all_methods.setdefault(m["name"], m)
    labels = {k: v["label"] for k, v in all_methods.items()}
    md += ["Methods (frontc command each one runs):", "", "| method | command |", "|---|---|"]
    md += [f"| {m['label']} | `{m['cli']}` |" for m in all_methods.values()]
    md.append("")
    paths = []
    for study in results["studies"]:
        if study.get("error") and not study["targets"]:
            md += [f"## {study['name']}: failed", "", f"`{study['error']}`", ""]
            continue
        failed = [f"{t['name']} {r['method']} seed {r['seed']}: {r['error']}"
                  for t in study["targets"] for r in t["runs"] if "error" in r]
        summaries = [summarize(t) for t in study["targets"]]
        for t, s in zip(study["targets"], summaries):
            t["summary"] = s
        cfg = study["config"]
        md += [f"## {study['title']}", "",
               f"- Source: {study['source']}", f"- Task: {study['task']}",
               f"- Training: {cfg['steps']} steps, batch {cfg['batch']}, lr {cfg['lr']}, weight decay "
               f"{cfg['weight_decay']}; seeds {study['seeds']}; evaluated at steps {cfg['eval_at']}; "
               f"study time {study['elapsed_s'] / 60:.1f} min (its targets' jobs added up)"]
        md += [f"- {n}" for n in study["notes"]]
        if study.get("error"):
            md.append(f"- **Failed target** (left out): {study['error']}")
        md += [f"- **Failed run** (left out of the tables): {f}" for f in failed]
        md += ["", "| target | parameters | training FLOPs per step |", "|---|---|---|"]
        md += [f"| {t['name']}: {t['label']} | {t['params']:,} | {_flops(t['flops_per_step'])} |"
               for t in study["targets"]]
        md.append("")
        for t, s in zip(study["targets"], summaries):
            goal = s.get("goal_acc")
            md += [f"### {t['name']}" + (f" (a* = {100 * goal:.1f}%, reached by random init at step "
                                          f"{s['random_steps_to_goal']:.0f})" if goal is not None
                                          and s.get("random_steps_to_goal") is not None else ""), ""]
            md += target_table(t, s, labels)
            md.append("")
        md += ["Best method per target (early = the second shown step):", ""]
        md += head_to_head(study, summaries, labels)
        png = folder / f"{study['name']}.png"
        plot_study(study, summaries, labels, png)
        paths.append(png)
        md += ["", f"![{study['name']}](results/{png.name})", ""]
    if READING.is_file() and not results.get("quick"):
        md += [READING.read_text().strip(), ""]
    numbers = folder / "results.json"
    numbers.write_text(json.dumps(results, indent=1))
    page = out / "results.md"
    page.write_text("\n".join(md) + "\n")
    return [page, numbers] + paths


def main(argv: list[str] | None = None) -> int:
    """Render results.md and the plots again from a numbers file (e.g. after editing
    reading.md):  python -m benchmarks.convergence.report [docs/results/results.json [docs]]"""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    root = HERE.parents[1]
    numbers = Path(argv[0]) if argv else root / "docs" / "results" / "results.json"
    out = Path(argv[1]) if len(argv) > 1 else numbers.parent.parent
    for path in write(json.loads(numbers.read_text()), out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
