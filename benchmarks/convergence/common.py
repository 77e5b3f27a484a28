"""What every study shares: the methods, initialization through frontc, training, evaluation,
FLOPs per step.

The protocol of one run (study, target, method, seed):
1. build the torch target with its own initialization from `seed`;
2. (every method but `random`) export it with the legacy exporter, run `frontc.transfer(source
   ONNX, target ONNX, output, <method's options>)`, and load the output back into the torch
   target with `frontc.torch.load_onnx_weights` (strict: every entry of the state_dict);
3. train it in PyTorch (AdamW, linear warmup then cosine decay, gradient clipping 1.0), the
   batches drawn from a generator seeded by `seed`, so every method of a seed sees the same
   batches in the same order; evaluate on the held-out set at fixed steps.
"""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import frontc
import frontc.torch
from frontc.passes.select import PIPELINE as SELECT_PIPELINE


# -- methods ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    name: str
    label: str                       # for tables and legends
    options: dict = field(default_factory=dict)   # frontc.transfer keyword arguments
    # a Target attribute that must be true for the method to run there, where it differs from
    # another method: "deeper" (depth modes), "head_view" (head-aware attention)
    when: str = ""
    # (the study's source ONNX, the work folder) -> the ONNX to transfer from instead, e.g. a
    # FRONT+-refined copy made once per work folder; None: the study's source as it is
    source: Callable[[Path, Path], Path] | None = field(default=None, compare=False, repr=False)
    source_cli: str = ""             # how `source` makes its file, for the command table
    studies: tuple[str, ...] = ()    # the studies it runs in (empty: all)

    @property
    def transfers(self) -> bool:
        return self.name != "random"

    def cli(self) -> str:
        """The equivalent command line."""
        if not self.transfers:
            return "(no transfer: the target's own initialization)"
        if self.source_cli:
            plain = dataclasses.replace(self, source=None, source_cli="").cli()
            return f"{self.source_cli}; " + plain.replace(" SRC ", " REFINED ")
        if self.options.get("pipeline") == SELECT_PIPELINE:
            return "frontc transfer --method select SRC TGT -o OUT"
        flags = []
        for key, value in self.options.items():
            if key == "pipeline":
                flags.append(f"-p '{value}'")
            else:
                flags.append(f"--{key.replace('_', '-')} {value}")
        return "frontc transfer " + " ".join(flags) + " SRC TGT -o OUT"


# The published method: reference scaling, conv weights flattened to [out*in, kernel].
PUBLISHED = {"convention": "reference", "conv_view": "flat"}

BASE_METHODS = [
    Method("random", "random init"),
    Method("select", "weight selection", {"pipeline": SELECT_PIPELINE}),
    Method("front-ref", "FRONT reference (published)", PUBLISHED),
    Method("front-ortho", "FRONT ortho (frontc's defaults)", {"convention": "ortho"}),
    Method("front-ref-r0.5", "FRONT reference, keep 0.5", {**PUBLISHED, "keep_ratio": 0.5}),
    Method("front-ref-repeat", "FRONT reference, depth repeat",
           {**PUBLISHED, "depth_mode": "repeat"}, when="deeper"),
    Method("front-ref-random", "FRONT reference, depth random",
           {**PUBLISHED, "depth_mode": "random"}, when="deeper"),
]

# The variants the match and resize passes offer, each where it changes something: the flat
# conv view (the default is separable) in the CNN study, head-aware attention where a target
# keeps the source's head_dim, std-rescale (which undoes the reference scaling's magnitude
# changes) in the ViT study.
VARIANT_METHODS = [
    Method("front-ortho-flat", "FRONT ortho, flat conv view",
           {"convention": "ortho", "conv_view": "flat"}, studies=("vision-cnn",)),
    Method("front-ortho-heads", "FRONT ortho, head-aware attention",
           {"convention": "ortho", "heads": "aware"}, studies=("vision-vit", "language"),
           when="head_view"),
    Method("front-ref-stdrescale", "FRONT reference, std-rescale",
           {**PUBLISHED, "pipeline": "canonicalize,match,dct,resize{std_rescale=True},emit"},
           studies=("vision-vit",)),
]


def all_methods(extra: list[Method] = ()) -> list[Method]:
    """Every method, then `extra` (a study's own methods, e.g. FRONT+ which needs the source's
    own training task)."""
    return BASE_METHODS + VARIANT_METHODS + list(extra)


def once(path: Path, make: Callable[[Path], None]) -> Path:
    """`path`, made by make(partial_path) unless it exists: under a lock, so that parallel jobs
    sharing a work folder make it once, and renamed into place whole."""
    if path.is_file():
        return path
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            partial = path.with_name(path.stem + ".partial" + path.suffix)
            make(partial)
            partial.replace(path)
    return path


# -- initialization through frontc -------------------------------------------------------------

def export_legacy(model: nn.Module, args: tuple, path: Path, input_names, output_names,
                  keep_batchnorm: bool = False, dynamic: dict | None = None) -> Path:
    """torch.onnx.export with the legacy (TorchScript) exporter, eval mode, opset 17.
    keep_batchnorm: no constant folding, so BatchNormalization nodes keep their statistics."""
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17,
                          do_constant_folding=not keep_batchnorm, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic)
    model.train(was_training)
    return path


def initialize(model: nn.Module, method: Method, source_onnx: Path, target_onnx: Path,
               output: Path, args: tuple) -> dict:
    """Fill `model` (its own init already exported to `target_onnx`) through frontc; returns
    the transfer's summary numbers."""
    opts = dict(method.options)
    pipeline = opts.pop("pipeline", None)
    extra = {}
    if method.source is not None:     # made on first use (its time counts in that run's init_s)
        t0 = time.perf_counter()
        source_onnx = method.source(source_onnx, output.parent)
        extra = {"source": source_onnx.name, "source_s": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    kwargs = {"pipeline": pipeline} if pipeline else {}
    # validate=False: no onnxruntime check of the output (a subprocess per transfer); loading it
    # back into torch and training it is the check here
    state = frontc.transfer(source_onnx, target_onnx, output, validate=False, **kwargs, **opts)
    seconds = time.perf_counter() - t0
    report = frontc.torch.load_onnx_weights(model, output, args=args)
    return {"transfer_s": round(seconds, 3), "coverage": round(state.plan.coverage, 4),
            "mapped": state.plan.mapped_tensors, "kept": len(state.plan.kept),
            "loaded": len(report.filled), "pipeline": state.pipeline, **extra}



# -- training -----------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    steps: int
    batch: int
    lr: float
    eval_at: list[int]
    weight_decay: float = 0.05
    warmup: float = 0.1              # fraction of the steps


def lr_at(step: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(model: nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name and "token" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250,
             before: Callable[[nn.Module], None] | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a held-out set."""
    if before is not None:
        before(model)
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        correct += (logits.argmax(-1) == y[i:i + batch]).sum().item()
    model.train()
    return loss / len(x), correct / len(x)


def train(model: nn.Module, data, cfg: TrainConfig, seed: int,
          before_eval: Callable[[nn.Module], None] | None = None) -> dict:
    """Train `model` on data = (x_train, y_train, x_test, y_test); the curve at cfg.eval_at."""
    xtr, ytr, xte, yte = data
    gen = torch.Generator().manual_seed(1000 + seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    curve = {"step": [], "test_loss": [], "test_acc": [], "train_loss": []}
    recent: list[float] = []
    order = torch.randperm(len(xtr), generator=gen)
    pos = 0
    model.train()
    t0 = time.perf_counter()
    train_time = 0.0
    for step in range(cfg.steps + 1):
        if step in cfg.eval_at:
            loss, acc = evaluate(model, xte, yte, before=before_eval)
            curve["step"].append(step)
            curve["test_loss"].append(round(loss, 5))
            curve["test_acc"].append(round(acc, 5))
            curve["train_loss"].append(round(float(np.mean(recent)), 5) if recent else None)
            recent = []
        if step == cfg.steps:
            break
        t1 = time.perf_counter()
        if pos + cfg.batch > len(xtr):
            order, pos = torch.randperm(len(xtr), generator=gen), 0
        idx = order[pos:pos + cfg.batch]
        pos += cfg.batch
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.item())
        train_time += time.perf_counter() - t1
    return {**curve, "train_s": round(train_time, 2), "total_s": round(time.perf_counter() - t0, 2)}


# -- BatchNorm ----------------------------------------------------------------------------------

def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def bn_recalibrator(x: torch.Tensor, batches: int, batch: int) -> Callable[[nn.Module], None]:
    """Re-estimate every BatchNorm's running statistics on `batches` fixed training batches
    (cumulative average), keeping the parameters: what the student is evaluated with."""
    chunks = [x[i * batch:(i + 1) * batch] for i in range(batches)]

    @torch.no_grad()
    def run(model: nn.Module) -> None:
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for chunk in chunks:
            model(chunk)
        for m, mom in zip(bns, saved):
            m.momentum = mom

    return run


# -- cost ---------------------------------------------------------------------------------------

def flops_per_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Measured FLOPs of one training step (forward + backward) by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).train()
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(probe(x), y).backward()
    return int(counter.get_total_flops())


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def config_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
