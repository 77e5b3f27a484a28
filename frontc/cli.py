"""The `frontc` command line."""
from __future__ import annotations

import json
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import click

from frontc import __version__, modelio
from frontc.errors import FrontcError
from frontc.pipeline import DEFAULT_PIPELINE, REGISTRY, Pipeline, State, lookup
from frontc.report import describe, plan_rows, snapshot, summary

EXIT_CODES = ("Exit codes: 0 done, 1 pipeline failure, 2 bad usage or bad input, "
              "130/143 interrupted (SIGINT/SIGTERM).")
_debug = False


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) turned into an exception, so that `with` blocks clean up as they do
    on Ctrl-C: the temporary output folder is removed and nothing partial is left."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


class Command(click.Group):
    """Turns frontc errors into one clear line and an exit code (a traceback only with --debug)."""

    def invoke(self, ctx):
        previous = {}
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                previous[signum] = signal.signal(signum, _interrupt)
            except ValueError:  # not the main thread: leave signals alone
                pass
        try:
            return super().invoke(ctx)
        except FrontcError as err:
            if _debug:
                traceback.print_exc()
            click.echo(f"frontc: error: {_one_line(err)}", err=True)
            sys.exit(err.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as err:
            if _debug:
                traceback.print_exc()
            signum = getattr(err, "signum", signal.SIGINT)
            click.echo(f"frontc: interrupted ({signal.Signals(signum).name}); no partial output "
                       f"or temporary files were left", err=True)
            sys.exit(128 + signum)
        except Exception as err:  # a bug: say so, keep the details for --debug
            if _debug:
                traceback.print_exc()
            click.echo(f"frontc: internal error: {type(err).__name__}: {_one_line(err)} "
                       f"(run with --debug for the traceback and report it)", err=True)
            sys.exit(1)
        finally:
            for signum, handler in previous.items():
                try:
                    signal.signal(signum, handler)
                except (ValueError, TypeError):
                    pass


@click.group(cls=Command, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="frontc")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.option("--plugin", "plugin_files", multiple=True, type=click.Path(path_type=Path),
              help="Load the passes defined in a Python file (repeatable).")
@click.option("--replace-pass", "replace", multiple=True, metavar="NAME",
              help="Let a plugin pass take the name of a built-in pass (repeatable).")
def main(debug: bool, plugin_files, replace) -> None:
    """Initialize a model from a larger pretrained one through the DCT learngene of its weights.

    \b
    frontc transfer big.onnx small.onnx -o small_init.onnx   # initialize small from big
    frontc plan big.onnx small.onnx                          # dry run: what goes where
    frontc inspect model.onnx                                # blocks, depth groups, tensors
    """
    global _debug
    _debug = debug
    from frontc import plugins

    plugins.load_installed(frozenset(replace))
    for path in plugin_files:
        plugins.load_file(path, frozenset(replace))


@contextmanager
def progress_bars(enabled: bool):
    """Yield a State.progress callback drawing rich bars on a terminal, or None."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bars:
        def start(label: str, total: int):
            task = bars.add_task(label, total=total)
            return lambda: bars.advance(task)
        yield start


device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Array backend: NumPy/SciPy on the CPU or CuPy on a CUDA GPU (needs the gpu-cuda12 or "
         "gpu-cuda13 extra); auto takes the GPU when CuPy finds one.")


heads_option = click.option(
    "--heads", type=click.Choice(["whole", "aware"]), default=None,
    help="Attention projections: 'whole' matrices, as published (default), or head-'aware': "
         "keep head_dim, resize the head count, q/k/v apart (heads are read from the graph).")
conv_view_option = click.option(
    "--conv-view", type=click.Choice(["flat", "separable"]), default=None,
    help="Conv weights: 'separable' [out, in, kernel], a DCT over output and input channels "
         "each (default, docs/results.md), or the published 'flat' [out*in, kernel] view.")


def pipeline_options(f):
    for opt in reversed([
        click.option("-p", "--pipeline", default=DEFAULT_PIPELINE, show_default=True,
                     help="Passes to run, e.g. 'canonicalize,match,dct{keep_ratio=0.5},resize,emit'."),
        click.option("--convention", type=click.Choice(["reference", "ortho"]), default=None,
                     help="DCT scaling: orthonormal 'ortho' (default, docs/results.md) or the published 'reference'."),
        click.option("--keep-ratio", type=float, default=None,
                     help="Fraction of each width axis's low frequencies kept (default 1.0)."),
        click.option("--depth-mode", type=click.Choice(["zero", "repeat", "random"]), default=None,
                     help="How a deeper target fills missing layer frequencies (default zero)."),
        click.option("--seed", type=int, default=None, help="Seed for --depth-mode random (default 0)."),
        click.option("--overrides", type=click.Path(path_type=Path), default=None,
                     help="JSON/YAML file pinning target tensors to source tensors (docs/matching.md)."),
        heads_option,
        conv_view_option,
        device_option,
    ]):
        f = opt(f)
    return f


def _options(**kw):
    return {k: v for k, v in kw.items() if v is not None}


@main.command(epilog=EXIT_CODES)
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where to write the initialized target (.onnx).")
@pipeline_options
@click.option("--method", type=click.Choice(["front", "select"]), default="front", show_default=True,
              help="front: the DCT learngene (--pipeline); select: the weight selection baseline "
                   "(Xu et al. 2024), pipeline 'canonicalize,match,select,emit'.")
@click.option("--report", type=click.Path(path_type=Path),
              help="Write a JSON report: per target tensor, its sources, transform and energy kept.")
@click.option("--min-coverage", type=float, default=0.0, show_default=True,
              help="Fail (exit 1, nothing written) if fewer target tensors than this are mapped.")
@click.option("--no-validate", is_flag=True,
              help="Skip onnx.checker and the onnxruntime test run of the output.")
@click.option("--allow-nonfinite", is_flag=True,
              help="Treat NaN/Inf source weights as missing (the tensor's finite mean) instead of "
                   "refusing them (exit 2).")
@click.option("--print-after", metavar="PASS",
              help="After PASS runs, print what the state holds (JSON on stderr), for debugging.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def transfer(source, target, output, pipeline, convention, keep_ratio, depth_mode, seed, overrides,
             heads, conv_view, device, method, report, min_coverage, no_validate, allow_nonfinite, print_after, quiet):
    """Write TARGET initialized from SOURCE's learngene to OUTPUT.

    TARGET keeps its graph, inputs, outputs and opsets; its weights are replaced by FRONT's
    reconstruction of SOURCE's weights at TARGET's widths and depths. Tensors with no
    counterpart keep TARGET's own values. The output is validated with onnx.checker and
    onnxruntime before it is renamed into place; inputs are never modified.

    \b
    SOURCE is an ONNX model or a learngene file written by 'frontc extract'; from a learngene,
    --convention and --keep-ratio are the gene's (giving others is an error).

    \b
    Example:
      frontc transfer models/vit_source.onnx models/vit_narrow.onnx -o vit_narrow_init.onnx
      frontc transfer big.onnx small.onnx -o out.onnx --convention ortho --keep-ratio 0.5
      frontc transfer big.onnx small.onnx -o out.onnx --heads aware
      frontc transfer big.onnx small.onnx -o out.onnx --convention reference --conv-view flat
      frontc transfer big.gene small.onnx -o out.onnx

    The last-but-one is the published method exactly; the defaults (ortho, separable conv
    view) were chosen from the convergence benchmark (docs/results.md).
    """
    from frontc.errors import InputError, PipelineError
    from frontc.pipeline import parse

    modelio.refuse_overwriting_inputs(output, [source, target])
    if method == "select":
        if pipeline != DEFAULT_PIPELINE or any(v is not None for v in (convention, keep_ratio,
                                                                       depth_mode, seed)):
            raise InputError("--method select runs 'canonicalize,match,select,emit': it takes no "
                             "--pipeline, --convention, --keep-ratio, --depth-mode or --seed")
        pipeline = "canonicalize,match,select,emit"
    from frontc import learngene

    gene_options = learngene.options(source)      # {} unless SOURCE is a learngene file
    passes = parse(pipeline, {**gene_options, **_options(
        convention=convention, keep_ratio=keep_ratio, depth_mode=depth_mode, seed=seed,
        overrides=overrides, heads=heads, conv_view=conv_view,
        allow_nonfinite=True if allow_nonfinite else None)})
    state = State(source, target, output, validate=not no_validate, device=device)
    full = Pipeline(passes).check()
    state.pipeline = full.text()

    def after(done, state):
        if done.name == "match" and state.plan.coverage < min_coverage:
            raise PipelineError(f"coverage {state.plan.coverage:.1%} of target tensors is below "
                                f"--min-coverage {min_coverage:.1%}; nothing written (see "
                                f"'frontc plan' for what is kept and why)")
        if done.name == print_after:
            click.echo(json.dumps(snapshot(done.name, state), indent=1), err=True)

    if print_after and print_after not in [p.name for p in passes]:
        raise InputError(f"--print-after {print_after}: no such pass in the pipeline {full.text()!r}")
    with progress_bars(not quiet) as progress:
        state.progress = progress
        full.run(state, after=after)
    if report:
        with modelio.AtomicOutput(report) as tmp:
            tmp.write_text(json.dumps({**summary(state), "tensors": plan_rows(state)}, indent=1))
    if not quiet:
        s = summary(state)
        click.echo(f"wrote {output}: {s['mapped_tensors']}/{s['target_tensors']} target tensors "
                   f"({s['mapped_parameters']:,}/{s['target_parameters']:,} parameters) from "
                   f"{source.name}; {s['depth_groups']} depth groups")


@main.command(epilog=EXIT_CODES)
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--overrides", type=click.Path(path_type=Path), default=None,
              help="JSON/YAML file pinning target tensors to source tensors (docs/matching.md).")
@heads_option
@conv_view_option
def plan(source, target, as_json, overrides, heads, conv_view):
    """Show which SOURCE tensors would initialize each TARGET tensor (nothing is written).

    \b
    Example:
      frontc plan models/vit_source.onnx models/vit_shallow.onnx
    """
    from frontc.api import plan as run_plan

    from frontc import learngene

    state = run_plan(source, target, **{**learngene.options(source), **_options(
        overrides=overrides, heads=heads, conv_view=conv_view)})
    rows = plan_rows(state)
    if as_json:
        click.echo(json.dumps({**summary(state), "tensors": rows}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{target.name} <- {source.name}")
    for col in ("target tensor", "shape", "source tensor(s)", "source shape", "layers"):
        table.add_column(col)
    for r in rows:
        if "kept" in r:
            table.add_row(r["target"], str(r["shape"]), f"[yellow]own init: {r['kept']}", "", "")
        else:
            srcs = r["sources"][0] + (f" (+{len(r['sources']) - 1})" if len(r["sources"]) > 1 else "")
            table.add_row(r["target"], str(r["shape"]), srcs, str(r["source_shape"]),
                          f"{r['depth']} #{r['layer']}" if r["depth"] != "1->1" else "")
    console = Console()
    console.print(table)
    s = summary(state)
    console.print(f"coverage: {s['mapped_tensors']}/{s['target_tensors']} tensors, "
                  f"{s['mapped_parameters']:,}/{s['target_parameters']:,} parameters; "
                  f"{s['depth_groups']} depth groups; "
                  f"{len(s['unused_source_tensors'])} source tensors unused")


@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(model, as_json):
    """Show MODEL's stages of repeated blocks, depth groups and weights with axis roles.

    \b
    MODEL may also be a learngene file ('frontc extract'): then its format version, options,
    source and sizes are shown too, and each tensor's kept coefficient block.

    \b
    Example:
      frontc inspect models/vit_source.onnx
      frontc inspect big.gene --json
    """
    from frontc import learngene
    from frontc.passes.canonicalize import view_model

    gene = learngene.Learngene(model) if learngene.looks_like(model) else None
    info = describe(gene.view if gene else view_model(model, "model"))
    if gene:
        info["learngene"] = gene.describe()
        for t in info["tensors"]:
            t["kept"] = info["learngene"]["blocks"][t["name"]]["kept"]
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if gene:
        g = info["learngene"]
        click.echo(f"{model}: learngene format {g['format_version']} (frontc {g['frontc_version']})\n"
                   f"  options: --convention {g['convention']} --keep-ratio {g['keep_ratio']:g} "
                   f"--heads {g['heads']} --conv-view {g['conv_view']}\n"
                   f"  source: {g['source']} (sha256 {g['source_sha256']})\n"
                   f"  size: {g['coefficients']:,} coefficients = {g['coefficient_fraction']:.1%} "
                   f"of the source's {g['source_parameters']:,} parameters; {g['file_bytes']:,} bytes")
    console.print(f"[bold]{model}[/]: {info['weights']} weight tensors, {info['parameters']:,} parameters")
    for i, stage in enumerate(info["stages"]):
        ops = " ".join(stage["units_per_block"])
        first = " (the first differs)" if stage["first_block_differs"] else ""
        console.print(f"  stage {i}: {stage['blocks']} x [{ops}]{first}")
        if "grouped_query" in stage:
            g = stage["grouped_query"]
            console.print(f"    grouped-query attention: {g['query_heads']} query heads share "
                          f"{g['kv_heads']} key/value heads")
    for heads, count in info["attention"].items():
        console.print(f"  attention: {count} projection(s) with {heads}")
    table = Table()
    for col in ("tensor", "op", "kind", "shape", "axis roles", "DCT view") + (("kept",) if gene else ()):
        table.add_column(col)
    for t in info["tensors"]:
        table.add_row(t["name"], t["op"], t["kind"], str(t["shape"]), " ".join(t["roles"]),
                      str(t["view"]), *((str(t["kept"]),) if gene else ()))
    console.print(table)


@main.command(epilog=EXIT_CODES)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where to write the learngene (a safetensors file, e.g. big.gene).")
@click.option("--convention", type=click.Choice(["reference", "ortho"]), default="ortho",
              show_default=True, help="DCT scaling: the published 'reference' or orthonormal 'ortho'.")
@click.option("--keep-ratio", type=float, default=1.0, show_default=True,
              help="Fraction of each width axis's low frequencies kept (the file holds about r^2 "
                   "of each 2-D tensor).")
@heads_option
@conv_view_option
@device_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def extract(source, output, convention, keep_ratio, heads, conv_view, device, quiet):
    """Write SOURCE's learngene to OUTPUT once, for any number of 'frontc transfer' runs.

    The file (safetensors, docs/learngene.md) holds every source tensor's kept low-frequency
    DCT block and statistics, the source graph without its weights, and the options; a
    transfer from it writes the same weights as a transfer from SOURCE with these options.

    \b
    Example:
      frontc extract big.onnx -o big.gene --keep-ratio 0.5
      frontc transfer big.gene small.onnx -o small_init.onnx
    """
    from frontc.api import extract as run_extract

    with progress_bars(not quiet) as progress:
        done = run_extract(source, output, convention, keep_ratio, device, progress,
                           heads or "whole", conv_view or "separable")
    if not quiet:
        click.echo(f"wrote {output}: {done['tensors']} tensors, {done['coefficients']:,} "
                   f"coefficients ({done['coefficients'] / max(done['source_parameters'], 1):.1%} of "
                   f"{done['source_parameters']:,} source parameters), {done['bytes']:,} bytes")


@main.command(name="passes")
def list_passes():
    """List the available passes (built-in and plugins) with their options.

    \b
    Example:
      frontc --plugin examples/plugin/frontc_copy_embeddings/copy_embeddings.py passes
    """
    from frontc import plugins

    for name in list(REGISTRY) + [n for n in plugins.names() if n not in REGISTRY]:
        cls = lookup(name)
        click.echo(f"{name}: {cls.summary} [{plugins.origin(name)}]")
        for f in cls.options():
            choices = f.metadata.get("choices")
            extra = f" (one of {', '.join(choices)})" if choices else ""
            click.echo(f"    {f.name}={f.default}{extra}  {f.metadata.get('help', '')}")


@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where to write the weights: a .safetensors or .npz file.")
@click.option("--layout", type=click.Choice(["auto", "torch", "keras", "flax", "sklearn", "paddle", "onnx"]),
              default="auto", show_default=True,
              help="Array layout: the framework that wrote MODEL (auto), a named one, or as stored.")
@click.option("--names", type=click.Choice(["auto", "onnx"]), default="auto", show_default=True,
              help="Keys: the framework's names where MODEL records them (auto), or ONNX tensor names.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def weights(model, output, layout, names, quiet):
    """Write MODEL's weights (e.g. frontc's output) for loading back into a framework.

    Keys are the framework's names where the file records them (PyTorch parameter paths, Keras
    layer/kernel, scikit-learn coefs_.K); the exporter's layout changes are undone (MatMul
    weights back to [out, in] for PyTorch, conv kernels to [*kernel, in, out] for Keras/Flax).
    docs/frameworks.md has the loading recipes.

    \b
    Example:
      frontc weights small_init.onnx -o small_init.safetensors
      frontc weights small_init.onnx -o small_init.npz --layout keras
    """
    from frontc.frameworks import save_weights

    found = save_weights(model, output, layout=layout, naming=names)
    if not quiet:
        click.echo(f"wrote {output}: {len(found.arrays)} tensors ({found.parameters:,} parameters) "
                   f"from a {found.framework} export, {found.layout} layout")
