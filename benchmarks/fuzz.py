"""Bounded fuzzing of frontc's readers: mutated ONNX bytes fed to `inspect` and `transfer`.

    python benchmarks/fuzz.py --count 10000 --seed 0 --jobs 2

Each input is a small valid model (benchmarks/seeds.py: an MLP, a CNN with BatchNorm, a
transformer) whose bytes were mutated: bits flipped, bytes inserted, deleted, duplicated or
truncated, or one to three protobuf fields changed (tensor dims, dtypes and data, node op types,
inputs, outputs, order and attributes, graph inputs and outputs, IR and opset versions, external
data locations). Every input runs in-process through what `frontc inspect --json` and
`frontc transfer` run (frontc.passes.canonicalize.view_model + frontc.report.describe, and
frontc.transfer with validation), once as the mutated model alone and once as the mutated side
(source or target, alternating) of a transfer.

Outcomes, per input:
  ok       both calls succeeded;
  handled  a call raised one of frontc's own errors (FrontcError: a clear message, exit 1 or 2);
  crash    any other exception, a broken invariant (a temp folder or an output left after a
           failure, an input file modified), or the worker process dying;
  hang     a call ran past --timeout seconds.
The run fails (exit 1) on any crash or hang. Inputs are derived from (--seed, index), so
`--only INDEX` replays one; crashing inputs are saved to --save (default: a temp folder).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import multiprocessing as mp
import os
import random
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seeds  # noqa: E402

OPS = ["Gemm", "MatMul", "Add", "Mul", "Relu", "Conv", "BatchNormalization", "LayerNormalization",
       "Softmax", "Transpose", "Reshape", "Identity", "Cast", "Constant", "ConstantOfShape",
       "Gather", "Concat", "If", "Loop", "Scan", "DequantizeLinear", "QuantizeLinear",
       "QLinearMatMul", "MatMulInteger", "ConvTranspose", "InstanceNormalization", "Flatten",
       "GlobalAveragePool", "ReduceMean", "Sub", "Foo", ""]
DOMAINS = ["", "ai.onnx", "com.microsoft", "ai.onnx.ml", "org.example"]
DTYPES = list(range(0, 27)) + [99, -1]
BIG = [0, 1, -1, 2, 3, 7, 255, 2**31 - 1, 2**31, -(2**31), 2**62, 10**6]


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so no `except Exception` in frontc swallows it."""


# --------------------------------------------------------------------------- mutations

def byte_mutation(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    buf = bytearray(data)
    kind = rng.choice(["flip", "flip", "set", "insert", "delete", "truncate", "duplicate", "zero",
                       "random"])
    n = len(buf)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "set":
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(n)] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    elif kind == "insert":
        i = rng.randrange(n + 1)
        buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == "delete":
        i = rng.randrange(n)
        del buf[i:i + rng.randint(1, 64)]
    elif kind == "truncate":
        del buf[rng.randrange(n):]
    elif kind == "duplicate":
        i = rng.randrange(n)
        j = min(n, i + rng.randint(1, 256))
        k = rng.randrange(n + 1)
        buf[k:k] = buf[i:j]
    elif kind == "zero":
        i = rng.randrange(n)
        buf[i:i + rng.randint(1, 64)] = bytes(len(buf[i:i + 64]))
    else:
        buf = bytearray(rng.randbytes(rng.randint(0, 512)))
    return f"bytes.{kind}", bytes(buf)


def _node(model, rng):
    return rng.choice(model.graph.node) if model.graph.node else None


def _init(model, rng):
    return rng.choice(model.graph.initializer) if model.graph.initializer else None


def _names(model) -> list[str]:
    g = model.graph
    return ([i.name for i in g.input] + [t.name for t in g.initializer] +
            [o for n in g.node for o in n.output] + [o.name for o in g.output])


def field_mutation(model: onnx.ModelProto, rng: random.Random) -> str:
    """Mutate one protobuf field of `model` in place; returns the mutation's name."""
    g = model.graph
    kind = rng.choice([
        "init.dims", "init.dims", "init.rank", "init.dtype", "init.raw", "init.raw", "init.typed",
        "init.nonfinite", "init.external", "init.remove", "init.duplicate", "init.rename",
        "node.remove", "node.duplicate", "node.swap", "node.op", "node.domain", "node.input",
        "node.input", "node.output", "node.arity", "attr.value", "attr.value", "attr.type",
        "attr.remove", "attr.add", "attr.tensor", "graph.output", "graph.input", "graph.input.type",
        "model.ir", "model.opset", "value_info", "node.subgraph"])
    t, n = _init(model, rng), _node(model, rng)
    if kind == "init.dims" and t is not None and t.dims:
        i = rng.randrange(len(t.dims))
        t.dims[i] = rng.choice([t.dims[i] + 1, t.dims[i] - 1, t.dims[i] * 2] + BIG)
    elif kind == "init.rank" and t is not None:
        if t.dims and rng.random() < 0.5:
            del t.dims[rng.randrange(len(t.dims))]
        else:
            t.dims.insert(rng.randrange(len(t.dims) + 1), rng.choice([1, 1, 2, 0]))
    elif kind == "init.dtype" and t is not None:
        t.data_type = rng.choice(DTYPES) & 0x7FFFFFFF
    elif kind == "init.raw" and t is not None:
        raw = t.raw_data
        t.raw_data = rng.choice([raw[:rng.randrange(len(raw) + 1)], raw + rng.randbytes(rng.randint(1, 9)),
                                 b"", raw[1:], rng.randbytes(len(raw))])
    elif kind == "init.typed" and t is not None:
        count = int(np.prod(t.dims)) if t.dims and all(0 <= d < 10**5 for d in t.dims) else 4
        t.ClearField("raw_data")
        values = [rng.gauss(0, 1) for _ in range(max(0, count + rng.choice([-1, 0, 0, 1])))]
        field = rng.choice(["float_data", "float_data", "double_data", "int32_data", "int64_data"])
        if field in ("int32_data", "int64_data"):
            values = [int(v * 10) for v in values]
        getattr(t, field).extend(values)
    elif kind == "init.nonfinite" and t is not None and t.data_type == TensorProto.FLOAT and t.raw_data:
        a = np.frombuffer(t.raw_data, dtype=np.float32).copy()
        a[rng.randrange(a.size)] = rng.choice([np.nan, np.inf, -np.inf])
        t.raw_data = a.tobytes()
    elif kind == "init.external" and t is not None:
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in [("location", rng.choice(["missing.bin", "../escape.bin", "/etc/hostname",
                                                     "", "seed.onnx", "."])),
                           ("offset", str(rng.choice(BIG))), ("length", str(rng.choice(BIG + [64])))]:
            if rng.random() < 0.8:
                e = t.external_data.add()
                e.key, e.value = key, value
        if rng.random() < 0.5:
            t.ClearField("raw_data")
    elif kind == "init.remove" and t is not None:
        g.initializer.remove(t)
    elif kind == "init.duplicate" and t is not None:
        g.initializer.add().CopyFrom(t)
    elif kind == "init.rename" and t is not None:
        t.name = rng.choice(_names(model) + ["", "x", "y"])
    elif kind == "node.remove" and n is not None:
        g.node.remove(n)
    elif kind == "node.duplicate" and n is not None:
        g.node.insert(rng.randrange(len(g.node) + 1), n)
    elif kind == "node.swap" and len(g.node) > 1:
        i, j = rng.sample(range(len(g.node)), 2)
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[i])
        b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
    elif kind == "node.op" and n is not None:
        n.op_type = rng.choice(OPS)
    elif kind == "node.domain" and n is not None:
        n.domain = rng.choice(DOMAINS)
    elif kind == "node.input" and n is not None and n.input:
        i = rng.randrange(len(n.input))
        n.input[i] = rng.choice(_names(model) + ["", "nowhere", n.output[0] if n.output else "z"])
    elif kind == "node.output" and n is not None and n.output:
        n.output[rng.randrange(len(n.output))] = rng.choice(_names(model) + ["", "fresh"])
    elif kind == "node.arity" and n is not None:
        if n.input and rng.random() < 0.5:
            del n.input[rng.randrange(len(n.input))]
        else:
            n.input.append(rng.choice(_names(model) + [""]))
    elif kind == "attr.value" and n is not None and n.attribute:
        a = rng.choice(n.attribute)
        if a.ints:
            a.ints[rng.randrange(len(a.ints))] = rng.choice(BIG + [-2, 4])
        elif a.type == onnx.AttributeProto.INT:
            a.i = rng.choice(BIG + [-2])
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30])
        elif a.type == onnx.AttributeProto.TENSOR:
            a.t.dims.append(rng.choice([0, 2, 5]))
    elif kind == "attr.type" and n is not None and n.attribute:
        a = rng.choice(n.attribute)
        a.type = rng.choice(list(onnx.AttributeProto.AttributeType.values()))
    elif kind == "attr.remove" and n is not None and n.attribute:
        n.attribute.remove(rng.choice(n.attribute))
    elif kind == "attr.add" and n is not None:
        name = rng.choice(["transB", "transA", "axis", "perm", "group", "kernel_shape", "to",
                           "value", "epsilon", "strides", "pads", "bogus"])
        choice = rng.randrange(4)
        if choice == 0:
            n.attribute.append(onnx.helper.make_attribute(name, rng.choice(BIG)))
        elif choice == 1:
            n.attribute.append(onnx.helper.make_attribute(
                name, [rng.choice(BIG) for _ in range(rng.randint(0, 4))], attr_type=onnx.AttributeProto.INTS))
        elif choice == 2:
            n.attribute.append(onnx.helper.make_attribute(name, "text"))
        else:
            n.attribute.append(onnx.helper.make_attribute(name, 0.5))
    elif kind == "attr.tensor" and n is not None:
        # Turn the node into a Constant holding a tensor (sometimes with data that disagrees).
        value = onnx.numpy_helper.from_array(np.ones(rng.choice([(3, 4), (5,), (2, 2, 2)]), np.float32))
        if rng.random() < 0.5:
            value.dims[0] += 1
        del n.input[:]
        del n.attribute[:]
        n.op_type = "Constant"
        n.domain = ""
        n.attribute.append(onnx.helper.make_attribute("value", value))
    elif kind == "graph.output" and g.output:
        choice = rng.randrange(3)
        if choice == 0:
            del g.output[rng.randrange(len(g.output))]
        elif choice == 1:
            g.output.add().CopyFrom(rng.choice(g.output))
        else:
            g.output[0].name = rng.choice(_names(model) + ["nowhere"])
    elif kind == "graph.input" and g.input:
        if rng.random() < 0.5:
            del g.input[rng.randrange(len(g.input))]
        else:
            g.input.add().CopyFrom(onnx.helper.make_tensor_value_info(
                rng.choice(_names(model)), TensorProto.FLOAT, [rng.choice([1, 2, "n"])]))
    elif kind == "graph.input.type" and g.input:
        vi = rng.choice(g.input)
        if rng.random() < 0.3:
            vi.type.ClearField("tensor_type")
        elif rng.random() < 0.5:
            vi.type.tensor_type.elem_type = rng.choice(DTYPES) & 0x7FFFFFFF
        elif vi.type.tensor_type.shape.dim:
            d = rng.choice(vi.type.tensor_type.shape.dim)
            d.dim_value = rng.choice([0, 1, 2**40, 3])
    elif kind == "model.ir":
        model.ir_version = rng.choice([0, 1, 3, 4, 7, 10, 11, 12, 99])
    elif kind == "model.opset" and model.opset_import:
        if rng.random() < 0.3:
            del model.opset_import[:]
        else:
            model.opset_import[0].version = rng.choice([1, 6, 9, 11, 13, 17, 21, 23, 99, 0, -1])
    elif kind == "value_info":
        name = rng.choice(_names(model))
        g.value_info.add().CopyFrom(onnx.helper.make_tensor_value_info(
            name, rng.choice([TensorProto.FLOAT, TensorProto.INT64, TensorProto.STRING]),
            [rng.choice([1, 0, 5, "s"]) for _ in range(rng.randint(0, 4))]))
    elif kind == "node.subgraph" and n is not None:
        body = onnx.helper.make_graph([onnx.NodeProto(op_type="Identity", input=[n.input[0] if n.input else "x"],
                                                      output=["sub_out"])],
                                      "body", [], [onnx.helper.make_tensor_value_info("sub_out", 1, None)])
        n.attribute.append(onnx.helper.make_attribute(rng.choice(["then_branch", "body", "else_branch"]), body))
    else:
        return kind + ".noop"
    return kind


def make_input(seed: int, index: int, bases: dict) -> tuple[str, str, str, bytes]:
    """(family, side, mutation description, bytes) of input `index`; a pure function of its args."""
    rng = random.Random(f"{seed}:{index}")
    family = rng.choice(sorted(bases))
    side = ("source", "target")[index % 2]
    data = bases[family][side]
    if rng.random() < 0.3:
        kinds = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            kind, data = byte_mutation(data, rng)
            kinds.append(kind)
        return family, side, "+".join(kinds), data
    model = onnx.ModelProto.FromString(data)
    kinds = [field_mutation(model, rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    data = model.SerializeToString()
    if rng.random() < 0.1:
        kind, data = byte_mutation(data, rng)
        kinds.append(kind)
    return family, side, "+".join(kinds), data


# --------------------------------------------------------------------------- running one input

def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _call(what, fn, timeout):
    """('ok' | 'handled' | 'crash' | 'hang', detail)."""
    from frontc.errors import FrontcError

    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        fn()
        return "ok", ""
    except FrontcError as err:
        return "handled", f"{what}: {type(err).__name__}: {err}"
    except Hang:
        return "hang", f"{what}: ran past {timeout} s"
    except Exception as err:
        tb = traceback.extract_tb(err.__traceback__)
        where = "; ".join(f"{Path(f.filename).name}:{f.lineno}" for f in tb[-3:])
        return "crash", f"{what}: {type(err).__name__}: {str(err)[:300]} at {where}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def run_one(index: int, seed: int, bases: dict, work: Path, timeout: float) -> dict:
    import frontc
    from frontc.passes.canonicalize import view_model
    from frontc.report import describe

    family, side, kinds, data = make_input(seed, index, bases)
    for p in work.iterdir():  # a fresh folder for every input
        if p.is_dir():
            import shutil
            shutil.rmtree(p)
        else:
            p.unlink()
    mutated = work / "mutated.onnx"
    mutated.write_bytes(data)
    other = work / f"{family}_{'target' if side == 'source' else 'source'}.onnx"
    other.write_bytes(bases[family]["target" if side == "source" else "source"])
    before = _listing(work)
    hashes = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (mutated, other)}
    results = [_call("inspect", lambda: json.dumps(describe(view_model(mutated, "model"))), timeout)]
    out = work / "out.onnx"
    source, target = (mutated, other) if side == "source" else (other, mutated)
    results.append(_call("transfer", lambda: frontc.transfer(source, target, out), timeout))
    # Invariants: inputs untouched; after a failure no output and no temp folder; after success
    # exactly the output (and its .data sidecar, if any) appeared.
    after = _listing(work)
    problems = [f"input {p.name} modified" for p, h in hashes.items()
                if hashlib.sha256(p.read_bytes()).hexdigest() != h]
    appeared = after - before
    allowed = {"out.onnx", "out.onnx.data"} if results[1][0] == "ok" else set()
    if appeared - allowed:
        problems.append(f"left behind: {sorted(appeared - allowed)}")
    if results[1][0] == "ok" and "out.onnx" not in after:
        problems.append("transfer succeeded but wrote no output")
    order = ["ok", "handled", "crash", "hang"]
    outcome = max((r[0] for r in results), key=order.index)
    if problems and outcome in ("ok", "handled"):
        outcome = "crash"
    detail = " | ".join([d for _, d in results if d] + problems)
    return {"index": index, "family": family, "side": side, "mutation": kinds, "outcome": outcome,
            "detail": detail}


def worker(wid: int, indices: list[int], seed: int, bases: dict, timeout: float, queue) -> None:
    import logging
    import warnings

    import onnxruntime

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    onnxruntime.set_default_logger_severity(4)
    # A runaway allocation must fail with MemoryError here, not take the machine down.
    limit = int(os.environ.get("FUZZ_MEMORY_LIMIT", 6 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix=f"frontc-fuzz-{wid}-") as tmp:
        work = Path(tmp)
        for index in indices:
            queue.put(("start", wid, index))
            queue.put(("done", wid, run_one(index, seed, bases, work, timeout)))
    queue.put(("exit", wid, None))


# --------------------------------------------------------------------------- driver

def bases_bytes() -> dict:
    return {family: {"source": make_s().SerializeToString(), "target": make_t().SerializeToString()}
            for family, (make_s, make_t) in seeds.PAIRS.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000, help="inputs to run (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per call (a hang)")
    parser.add_argument("--only", type=int, nargs="*", help="replay these input indices")
    parser.add_argument("--save", type=Path, help="folder for crashing inputs")
    parser.add_argument("--json", type=Path, help="write the summary and every non-ok detail here")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    bases = bases_bytes()
    indices = args.only if args.only else list(range(args.count))
    save = args.save or Path(tempfile.mkdtemp(prefix="frontc-fuzz-crashes-"))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    shards = [indices[w::args.jobs] for w in range(args.jobs)]
    procs: dict[int, mp.Process] = {}
    running: dict[int, tuple[int, float]] = {}   # worker -> (index started, when)
    remaining = {w: list(s) for w, s in enumerate(shards) if s}
    results: list[dict] = []
    start = time.time()

    def launch(w):
        p = ctx.Process(target=worker, args=(w, remaining[w], args.seed, bases, args.timeout, queue),
                        daemon=True)
        p.start()
        procs[w] = p

    for w in remaining:
        launch(w)
    live = set(remaining)
    last_print = start
    while live:
        try:
            kind, w, payload = queue.get(timeout=1.0)
        except Exception:
            kind = None
        if kind == "start":
            running[w] = (payload, time.time())
        elif kind == "done":
            results.append(payload)
            remaining[w].remove(payload["index"])
            running.pop(w, None)
        elif kind == "exit":
            live.discard(w)
            procs[w].join()
        # A worker that died (a signal from native code) or hangs in native code past the alarm.
        for w in list(live):
            p = procs[w]
            started = running.get(w)
            stuck = started is not None and time.time() - started[1] > 3 * args.timeout + 10
            if p.is_alive() and not stuck:
                continue
            if p.is_alive():
                p.kill()
            p.join()
            if started is not None:
                index = started[0]
                outcome = "hang" if stuck else "crash"
                family, side, kinds, _ = make_input(args.seed, index, bases)
                results.append({"index": index, "family": family, "side": side, "mutation": kinds,
                                "outcome": outcome,
                                "detail": f"worker {'stuck' if stuck else f'died (exit {p.exitcode})'}"})
                remaining[w].remove(index)
                running.pop(w, None)
            if remaining[w]:
                launch(w)
            else:
                live.discard(w)
        if time.time() - last_print > 30:
            last_print = time.time()
            print(f"  {len(results)}/{len(indices)} inputs, {time.time() - start:.0f} s", file=sys.stderr)

    elapsed = time.time() - start
    counts = collections.Counter(r["outcome"] for r in results)
    bad = sorted((r for r in results if r["outcome"] in ("crash", "hang")), key=lambda r: r["index"])
    for r in bad:
        save.mkdir(parents=True, exist_ok=True)
        (save / f"{r['index']}-{r['side']}.onnx").write_bytes(make_input(args.seed, r["index"], bases)[3])
    # Handled errors grouped by message shape (paths and numbers blanked).
    shapes = collections.Counter(
        re.sub(r"'[^']*'|\d+|/\S+", "_", r["detail"].split(" | ")[0])[:110]
        for r in results if r["outcome"] == "handled")
    summary = {"command": "python benchmarks/fuzz.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "inputs": len(results), "seconds": round(elapsed, 1), "outcomes": dict(counts),
               "crashes": len([r for r in bad if r["outcome"] == "crash"]),
               "hangs": len([r for r in bad if r["outcome"] == "hang"]),
               "top_handled": shapes.most_common(25)}
    print(json.dumps({k: v for k, v in summary.items() if k != "top_handled"}, indent=1))
    for r in bad[:50]:
        print(f"{r['outcome']} #{r['index']} {r['family']} {r['side']} [{r['mutation']}]: {r['detail']}")
    if bad:
        print(f"crashing inputs saved in {save}")
    if args.json:
        args.json.write_text(json.dumps({**summary, "bad": bad}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
