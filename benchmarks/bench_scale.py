#!/usr/bin/env python3
"""frontc transfer at scale against the I/O floor and a naive in-memory implementation.

    python benchmarks/bench_scale.py [--cases 350m,1.5b] [--repeat 2] [--workdir /tmp/frontc-bench]
                                     [--keep-files] [--json results.json]

Cases (synthetic GPT-style models from benchmarks/gpt.py, float32, random weights):
  350m  source 354.8M parameters (width 1024, 24 layers, one 1.4 GB .onnx file)
        -> target 124.4M (width 768, 12 layers, one 0.5 GB file)
  1.5b  source 1.56B parameters (width 1600, 48 layers, 6.2 GB of external data)
        -> target 354.8M (the 350m source)
Every measurement is a fresh process (wall time around it; CPU time and peak RSS from
os.wait4), interleaved over `--repeat` rounds so that background load hits all alike:
  floor     onnx_ir loads both models and saves the target with the same weights (ir.save),
            nothing else -- the I/O any transfer needs, as onnx_ir does it;
  floor, frontc writer  the same saved with frontc.modelio.save (inline models written tensor
            by tensor, no serialized copy): a stricter floor;
  transfer  `frontc transfer SOURCE TARGET -o OUT --no-validate -q` (defaults: ortho, r=1);
  +validate the same with validation (onnx.checker and one onnxruntime run);
  r=0.5     `--keep-ratio 0.5`, then `frontc extract --keep-ratio 0.5` once and a transfer from
            the gene (same weights, byte for byte);
  naive     benchmarks/naive.py (everything in memory, float64 NumPy, as the published script),
            under an address-space limit (--naive-limit-gb) so that it fails cleanly rather than
            pushing the machine into swap or the OOM killer.
Prints a table and the ratios transfer / floor (wall and CPU) and naive / transfer; generated
files are deleted at the end unless --keep-files.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gpt  # noqa: E402

# The I/O floor as the issue defines it: onnx_ir loads both models and saves the target with
# the same weights (external data past protobuf's 2 GB, as onnx_ir requires), nothing else.
FLOOR = """
import sys
from pathlib import Path
import onnx_ir as ir
source, target = ir.load(sys.argv[1]), ir.load(sys.argv[2])
size = sum(v.const_value.nbytes for v in target.graph.initializers.values() if v.const_value is not None)
out = Path(sys.argv[3])
ir.save(target, out, external_data=out.name + ".data" if size > 2**31 - 2**24 else None)
"""
# The same with frontc's writer (frontc.modelio.save: inline models written tensor by tensor),
# a stricter floor: what the transfer would cost if it computed nothing.
FLOOR_FRONTC = """
import sys
from pathlib import Path
import onnx_ir as ir
from frontc import modelio
source, target = ir.load(sys.argv[1]), ir.load(sys.argv[2])
modelio.save(target, Path(sys.argv[3]))
"""

CASES = {
    "350m": dict(source=("m350.onnx", 1024, 24, 16, True), target=("m120.onnx", 768, 12, 12, True)),
    "1.5b": dict(source=("m1500.onnx", 1600, 48, 25, False), target=("m350.onnx", 1024, 24, 16, True)),
    "tiny": dict(source=("t_src.onnx", 256, 4, 4, True), target=("t_tgt.onnx", 128, 2, 2, True)),  # smoke test
}


def build(workdir: Path, spec) -> Path:
    name, width, layers, heads, inline = spec
    path = workdir / name
    if not path.exists():
        start = time.perf_counter()
        gpt.build(path, width, layers, heads, inline=inline, seed=layers)
        print(f"  built {name} ({gpt.parameters(width, layers):,} parameters) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return path


def files_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def measure(argv: list[str], limit_gb: float | None = None) -> dict:
    """Run argv in a fresh process: wall seconds, CPU seconds, peak RSS bytes, exit code."""
    def limit():
        if limit_gb:
            size = int(limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    code = os.waitstatus_to_exitcode(status)
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss * 1024,
            "rc": code, "stderr": err.strip().splitlines()[-1] if code and err.strip() else "",
            "stdout": out}


def remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        if p.exists():
            p.unlink()


def run_case(name: str, workdir: Path, repeat: int, naive_limit: float) -> dict:
    case = CASES[name]
    source, target = build(workdir, case["source"]), build(workdir, case["target"])
    out = workdir / f"out_{name}.onnx"
    gene = workdir / f"{Path(case['source'][0]).stem}_r05.gene"
    py, fc = sys.executable, [sys.executable, "-m", "frontc"]
    runs = {
        "floor": [py, "-c", FLOOR, str(source), str(target), str(out)],
        "floor, frontc writer": [py, "-c", FLOOR_FRONTC, str(source), str(target), str(out)],
        "transfer": fc + ["transfer", str(source), str(target), "-o", str(out), "--no-validate", "-q"],
        "transfer+validate": fc + ["transfer", str(source), str(target), "-o", str(out), "-q"],
        "transfer r=0.5": fc + ["transfer", str(source), str(target), "-o", str(out), "--no-validate",
                                "-q", "--keep-ratio", "0.5"],
        "from gene r=0.5": fc + ["transfer", str(gene), str(target), "-o", str(out), "--no-validate", "-q"],
    }
    results: dict[str, list[dict]] = {k: [] for k in runs}
    extract = measure(fc + ["extract", str(source), "-o", str(gene), "--keep-ratio", "0.5", "-q"])
    if extract["rc"]:
        raise SystemExit(f"extract failed: {extract['stderr']}")
    for r in range(repeat):
        for key, argv in runs.items():
            res = measure(argv)
            if res["rc"]:
                raise SystemExit(f"{key} failed: {res['stderr']}")
            results[key].append(res)
            print(f"  round {r + 1} {key:>20}: {res['wall']:7.2f} s wall {res['cpu']:7.2f} s CPU "
                  f"{res['rss'] / 2**30:6.2f} GiB peak RSS", flush=True)
            remove(out)
    naive_out = workdir / f"naive_{name}.onnx"
    naive = measure([py, str(HERE / "naive.py"), str(source), str(target), "-o", str(naive_out)],
                    limit_gb=naive_limit)
    print(f"  naive: rc {naive['rc']} {naive['wall']:.2f} s wall {naive['cpu']:.2f} s CPU "
          f"{naive['rss'] / 2**30:.2f} GiB peak RSS {naive['stderr'][:120]}", flush=True)
    remove(naive_out)
    summary = {
        "source": source.name, "source_bytes": files_bytes(source),
        "target": target.name, "target_bytes": files_bytes(target),
        "gene_bytes": gene.stat().st_size, "extract": extract,
        "runs": {k: {"wall_min": min(x["wall"] for x in v), "wall_median": statistics.median(x["wall"] for x in v),
                     "cpu_min": min(x["cpu"] for x in v), "rss_max": max(x["rss"] for x in v)}
                 for k, v in results.items()},
        "naive": {k: naive[k] for k in ("wall", "cpu", "rss", "rc", "stderr")},
        "load_average": os.getloadavg(),
    }
    remove(gene)
    return summary


def report(name: str, s: dict) -> None:
    runs, floor = s["runs"], s["runs"]["floor"]
    print(f"\n== {name}: {s['source']} ({s['source_bytes'] / 2**30:.2f} GiB) -> {s['target']} "
          f"({s['target_bytes'] / 2**30:.2f} GiB); gene r=0.5 {s['gene_bytes'] / 2**30:.2f} GiB "
          f"(extract {s['extract']['wall']:.1f} s); load average {s['load_average'][0]:.1f}")
    print(f"{'run':>20} {'wall min':>9} {'median':>8} {'CPU':>8} {'peak RSS':>9} {'wall/floor':>11} {'CPU/floor':>10}")
    for key, r in runs.items():
        print(f"{key:>20} {r['wall_min']:>8.2f}s {r['wall_median']:>7.2f}s {r['cpu_min']:>7.2f}s "
              f"{r['rss_max'] / 2**30:>7.2f}G {r['wall_min'] / floor['wall_min']:>10.2f}x "
              f"{r['cpu_min'] / floor['cpu_min']:>9.2f}x")
    n, t = s["naive"], runs["transfer"]
    if n["rc"] == 0:
        print(f"{'naive':>20} {n['wall']:>8.2f}s {'':>8} {n['cpu']:>7.2f}s {n['rss'] / 2**30:>7.2f}G "
              f"{n['wall'] / floor['wall_min']:>10.2f}x {n['cpu'] / floor['cpu_min']:>9.2f}x")
        print(f"naive / transfer: {n['wall'] / t['wall_min']:.2f}x wall, {n['cpu'] / t['cpu_min']:.2f}x CPU, "
              f"{n['rss'] / t['rss_max']:.2f}x peak RSS")
    else:
        print(f"{'naive':>20} failed after {n['wall']:.1f} s ({n['stderr'][:100]})")
    strict = runs["floor, frontc writer"]
    print(f"transfer / floor with frontc's writer: {t['wall_min'] / strict['wall_min']:.2f}x wall, "
          f"{t['cpu_min'] / strict['cpu_min']:.2f}x CPU")
    print(f"transfer peak RSS {t['rss_max'] / 2**30:.2f} GiB for a {s['source_bytes'] / 2**30:.2f} GiB source")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="350m,1.5b")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/frontc-bench"))
    ap.add_argument("--keep-files", action="store_true")
    ap.add_argument("--naive-limit-gb", type=float, default=14.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(a.workdir).free
    print(f"workdir {a.workdir}: {free / 2**30:.0f} GiB free; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if "1.5b" in a.cases and free < 20 * 2**30:
        raise SystemExit("the 1.5b case needs about 20 GiB of free disk")
    results = {}
    try:
        for name in a.cases.split(","):
            print(f"case {name}", flush=True)
            results[name] = run_case(name, a.workdir, a.repeat, a.naive_limit_gb)
        for name, s in results.items():
            report(name, s)
        if a.json:
            a.json.write_text(json.dumps(results, indent=1))
    finally:
        if not a.keep_files:
            shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
