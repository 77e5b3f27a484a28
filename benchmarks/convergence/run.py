"""Run the convergence study and write the tables, plots and numbers.

    python -m benchmarks.convergence            # the full study (~18 min on 2 idle cores):
                                                # docs/results.md, docs/results/*.png, *.json
    python -m benchmarks.convergence --quick    # under a minute, into /tmp/frontc-convergence-quick
    python -m benchmarks.convergence --studies vision-vit --seeds 1 --out /tmp/x
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.convergence import common, report
from benchmarks.convergence.studies import STUDIES, Study, Target

QUICK_METHODS = ("random", "select", "front-ref", "front-ortho")


def methods_for(study: Study, target: Target, quick: bool, only: set[str] | None) -> list[common.Method]:
    chosen = []
    for m in common.all_methods(study.methods):
        if m.studies and study.name not in m.studies:
            continue
        if m.when and not getattr(target, m.when):
            continue
        if target.methods and m.name not in target.methods:
            continue
        if quick and m.name not in QUICK_METHODS:
            continue
        if only and m.name not in only:
            continue
        chosen.append(m)
    return chosen


def own_state(model: torch.nn.Module, prefixes: tuple[str, ...]) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def study_header(study: Study, seeds: list[int]) -> dict:
    return {"name": study.name, "title": study.title, "source": study.source, "task": study.task,
            "notes": study.notes, "config": common.config_dict(study.cfg), "seeds": seeds,
            "targets": []}


def run_target(study: Study, target: Target, seeds: list[int], quick: bool, only: set[str] | None,
               work: Path, log) -> dict:
    """Every method and seed on one target: its entry of the results (runs in seed, method order)."""
    t0 = time.perf_counter()
    data = study.data()
    source = study.source_onnx(work)
    before_eval = study.before_eval(data) if study.before_eval else None
    probe = target.build(0)
    x, y = data[0][:study.cfg.batch], data[1][:study.cfg.batch]
    entry = {"name": target.name, "label": target.label, "deeper": target.deeper,
             "params": common.n_params(probe), "flops_per_step": common.flops_per_step(probe, x, y),
             "methods": [], "runs": []}
    del probe
    methods = methods_for(study, target, quick, only)
    entry["methods"] = [{"name": m.name, "label": m.label, "options": m.options, "cli": m.cli()}
                        for m in methods]
    for seed in seeds:
        target_onnx = None
        for method in methods:
            for attempt in range(2):
                try:
                    run, target_onnx = _one_run(study, target, method, seed, data, source,
                                                target_onnx, work, before_eval)
                    break
                except Exception as err:  # noqa: BLE001 - one run must not sink the study
                    log(f"[{study.name}] {target.name} {method.name} seed {seed} FAILED "
                        f"(attempt {attempt + 1}): {type(err).__name__}: {err}\n"
                        + traceback.format_exc())
                    run = {"method": method.name, "seed": seed,
                           "error": f"{type(err).__name__}: {err}"}
                    target_onnx = None
                    time.sleep(5)
            entry["runs"].append(run)
            if "error" not in run:
                log(f"[{study.name}] {target.name} {method.name:22s} seed {seed}: acc "
                    f"{' '.join(f'{a:.3f}' for a in run['test_acc'])} (init {run['init_s']:.1f}s, "
                    f"train {run['train_s']:.1f}s, total {run['total_s']:.1f}s)")
            (work / f"{study.name}.{target.name}.partial.json").write_text(json.dumps(entry, indent=1))
    entry["elapsed_s"] = round(time.perf_counter() - t0, 1)
    log(f"[{study.name}] {target.name} done in {entry['elapsed_s']:.0f}s")
    return entry


def _one_run(study: Study, target: Target, method: common.Method, seed: int, data, source: Path,
             target_onnx: Path | None, work: Path, before_eval) -> tuple[dict, Path | None]:
    t1 = time.perf_counter()
    model = target.build(seed)
    init = {}
    if method.transfers:
        if target_onnx is None:
            target_onnx = common.export_legacy(
                model, (study.example,), work / f"{target.name}_s{seed}.onnx",
                [study.input_name], ["out"], keep_batchnorm=study.keep_batchnorm)
        own = own_state(model, study.reset_head) if study.reset_head else {}
        init = common.initialize(model, method, source, target_onnx,
                                 work / f"{target.name}_{method.name}_s{seed}.onnx",
                                 (study.example,))
        if own:
            model.load_state_dict(own, strict=False)
            init["head_reset"] = sorted(own)
    if study.prepare:
        study.prepare(model)
    init_s = time.perf_counter() - t1
    curve = common.train(model, data, study.cfg, seed, before_eval)
    return ({"method": method.name, "seed": seed, "init": init,
             "init_s": round(init_s, 2), **curve}, target_onnx)


def _code_version() -> str:
    """The commit the code ran from: `git rev-parse HEAD` (+ whether frontc/ or passes/ had
    uncommitted changes), or a COMMIT file beside frontc/ in an exported snapshot."""
    import subprocess

    import frontc

    root = Path(frontc.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "frontc", "passes"],
                               capture_output=True, text=True).stdout.strip()
        return f"{head}{' + uncommitted changes in frontc/ or passes/' if dirty else ''} ({root})"
    except (OSError, subprocess.CalledProcessError):
        commit = root / "COMMIT"
        return f"{commit.read_text().strip() if commit.is_file() else 'unknown'} (snapshot {root})"


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def _target_job(job) -> dict:
    """One (study, target), in this process or a worker (spawned: a fresh torch, `threads` threads)."""
    name, target_name, seeds, quick, only, work, threads = job
    torch.set_num_threads(threads)
    _import_frontc()
    try:
        study = STUDIES[name](quick=quick)
        target = next(t for t in study.targets if t.name == target_name)
        return run_target(study, target, seeds, quick, only, work, _log)
    except Exception as err:  # noqa: BLE001 - the other targets still get written
        _log(f"[{name}] {target_name} FAILED: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        return {"name": target_name, "error": f"{type(err).__name__}: {err}"}


def _cost(study: Study, target: Target, quick: bool, only: set[str] | None) -> float:
    """A job's training FLOPs (per step x steps x methods): the order jobs start in."""
    x = study.example.repeat(study.cfg.batch, *([1] * (study.example.dim() - 1)))
    flops = common.flops_per_step(target.build(0), x, torch.zeros(len(x), dtype=torch.long))
    return flops * study.cfg.steps * len(methods_for(study, target, quick, only))


def _import_frontc() -> None:
    """Import every frontc module now: the tree may be edited while a long study runs, and a
    module imported lazily half an hour later could be caught mid-edit."""
    import importlib
    import pkgutil

    import frontc
    import frontc.passes

    for package in (frontc, frontc.passes):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if not info.name.endswith(("_test", "__main__")):
                try:
                    importlib.import_module(info.name)
                except Exception:  # noqa: BLE001 - optional extras (e.g. a GPU backend)
                    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="one small target per study, 4 methods, 1 seed, 20-40 steps")
    ap.add_argument("--studies", default=",".join(STUDIES),
                    help=f"comma-separated subset of {', '.join(STUDIES)}")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; quick 1)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for results.md and results/ (default: docs/, quick: "
                         "/tmp/frontc-convergence-quick)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine, 2 threads on "
                         "oversubscribed cores made training steps 10-20x slower)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="targets run side by side in this many processes (default 2, one per core)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the ONNX files (default: a temp dir)")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, ap, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args, ap, argv) -> int:
    names = [s.strip() for s in args.studies.split(",") if s.strip()]
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        ap.error(f"unknown studies {unknown} (known: {', '.join(STUDIES)})")
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 3)))
    only = set(args.methods.split(",")) if args.methods else None
    out = args.out or (Path(tempfile.gettempdir()) / "frontc-convergence-quick" if args.quick
                       else Path(__file__).resolve().parents[2] / "docs")
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.convergence" + (" " + shlex.join(argv) if argv else "")

    t0 = time.perf_counter()
    code = _code_version()          # now: the tree may change while the study runs
    with tempfile.TemporaryDirectory(prefix="frontc-convergence-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        studies = {name: STUDIES[name](quick=args.quick) for name in names}
        # longest first, so that the last job to start is a short one
        pairs = sorted(((name, t) for name, study in studies.items() for t in study.targets),
                       key=lambda pair: -_cost(studies[pair[0]], pair[1], args.quick, only))
        jobs = [(name, t.name, seeds, args.quick, only, work, args.threads) for name, t in pairs]
        if args.jobs > 1 and len(jobs) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(args.jobs, len(jobs)),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                entries = dict(zip([job[:2] for job in jobs], pool.map(_target_job, jobs)))
        else:
            entries = {job[:2]: _target_job(job) for job in jobs}
        results_of = []
        for name, study in studies.items():
            result = study_header(study, seeds)
            result["targets"] = [entries[name, t.name] for t in study.targets]
            failed = [t["error"] for t in result["targets"] if "error" in t]
            if failed:
                result["error"] = "; ".join(failed)
                result["targets"] = [t for t in result["targets"] if "error" not in t]
            result["elapsed_s"] = round(sum(t.get("elapsed_s", 0) for t in result["targets"]), 1)
            results_of.append(result)
    import frontc

    results = {"command": command, "quick": args.quick, "elapsed_s": round(time.perf_counter() - t0, 1),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), {args.jobs} processes x "
                          f"{torch.get_num_threads()} torch thread(s), "
                          f"Python {platform.python_version()}, torch {torch.__version__}",
               "frontc_version": frontc.__version__, "code": code,
               "date": time.strftime("%Y-%m-%d %H:%M"), "studies": results_of}
    paths = report.write(results, out)
    _log(f"wrote {', '.join(str(p) for p in paths)} in {results['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
