"""Passes, their registry, the pipeline text syntax, and the state passes share.

A pass is a small frozen dataclass: a `name`, a one-line `summary`, typed option fields, and
`run(state)`. A pipeline is written as one line, e.g.
    canonicalize,match,dct{convention=ortho,keep_ratio=0.5},resize{depth_mode=zero},emit
and that line, with every option spelled out, is recorded in the output model.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from frontc.backend import small_pages
from frontc.errors import InputError
from frontc.plan import Gene, ModelView, Plan

DEFAULT_PIPELINE = "canonicalize,match,dct,resize,emit"

# Built-in passes, imported only when used.
REGISTRY: dict[str, str] = {
    "canonicalize": "frontc.passes.canonicalize:Canonicalize",
    "match": "frontc.passes.match:Match",
    "dct": "frontc.passes.dct:DCT",
    "resize": "frontc.passes.resize:Resize",
    "emit": "frontc.passes.emit:Emit",
    "select": "frontc.passes.select:Select",
}


@dataclass
class State:
    """Everything the passes of one compilation read and write."""

    source_path: Path
    target_path: Path
    output_path: Path | None = None
    source: ModelView | None = None
    target: ModelView | None = None
    plan: Plan | None = None
    # mapping key -> Gene; the dct pass installs a store that computes each gene on demand
    genes: typing.Mapping[str, Gene] = field(default_factory=dict)
    # target name -> its new tensor, in the target's stored layout and dtype (written by emit)
    updates: dict[str, Any] = field(default_factory=dict)
    report: dict[str, dict] = field(default_factory=dict)          # target name -> report row
    pipeline: str = ""
    validate: bool = True
    progress: Callable[[str, int], Callable[[], None]] | None = None
    device: str = "auto"           # array backend: auto, cpu or cuda (frontc.backend)
    backend: Any = None            # the frontc.backend.Backend chosen from `device`
    learngene: Any = None          # a frontc.learngene.Learngene when the source is a gene file

    def step(self, label: str, total: int) -> Callable[[], None]:
        """A callable that advances a progress bar of `total` steps (a no-op without one)."""
        return self.progress(label, total) if self.progress else (lambda: None)


@dataclass(frozen=True)
class Pass:
    """Subclass as a frozen dataclass: `name`, `summary`, the State fields it `reads` and
    `writes`, typed option fields (with `metadata={"help": ..., "choices": ...}`), and `run`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()

    def run(self, state: State) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    def text(self) -> str:
        # An unset path option says nothing; options added later ("quiet" in their metadata)
        # say nothing at their default, so that pipelines recorded before them read the same.
        opts = ",".join(f"{f.name}={getattr(self, f.name)}" for f in self.options()
                        if getattr(self, f.name) != "" and not (
                            f.metadata.get("quiet") and getattr(self, f.name) == f.default))
        return f"{self.name}{{{opts}}}" if opts else self.name


def lookup(name: str) -> type[Pass]:
    """The pass class called `name`: a registered plugin, else a built-in."""
    from frontc import plugins

    found = plugins.plugin_pass(name)
    if found is not None:
        return found
    if name not in REGISTRY:
        plugins.load_installed()
        found = plugins.plugin_pass(name)
        if found is not None:
            return found
        known = sorted(set(REGISTRY) | set(plugins.names()))
        raise InputError(f"unknown pass '{name}' (known: {', '.join(known)}; "
                         f"a plugin file is loaded with --plugin FILE.py)")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


_ITEM = re.compile(r"\s*([A-Za-z_][\w-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def _convert(cls: type[Pass], f: dataclasses.Field, raw: str) -> Any:
    hints = typing.get_type_hints(cls)
    kind = hints[f.name]
    choices = f.metadata.get("choices")
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            value = raw.lower() in ("true", "1")
        else:
            value = kind(raw)
    except ValueError:
        raise InputError(f"pass '{cls.name}': option {f.name}={raw!r} is not a "
                         f"{getattr(kind, '__name__', kind)}") from None
    if choices and value not in choices:
        raise InputError(f"pass '{cls.name}': option {f.name}={raw!r} must be one of "
                         f"{', '.join(map(str, choices))}")
    return value


def parse(text: str, defaults: dict[str, Any] | None = None) -> list[Pass]:
    """Parse pipeline text into pass instances. `defaults` (option name -> value) fills the
    options a pass has but the text does not set, as the CLI flags do."""
    defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
    passes, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise InputError(f"cannot parse pipeline {text!r} at character {pos + 1}")
        pos = m.end()
        cls = lookup(m.group(1))
        fields = {f.name: f for f in cls.options()}
        given: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in (m.group(2) or "").split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in fields:
                known = ", ".join(fields) or "none"
                raise InputError(f"pass '{cls.name}': unknown option {item!r} (options: {known})")
            given[key] = _convert(cls, fields[key], raw.strip())
        for key, value in defaults.items():
            if key in fields and key not in given:
                given[key] = _convert(cls, fields[key], str(value))
        passes.append(cls(**given))
    if not passes:
        raise InputError("the pipeline is empty")
    return passes


class Pipeline:
    """An ordered list of passes run over one State."""

    def __init__(self, passes: list[Pass]):
        self.passes = passes

    @classmethod
    def from_text(cls, text: str = DEFAULT_PIPELINE, **defaults: Any) -> "Pipeline":
        return cls(parse(text, defaults))

    def check(self, given: tuple[str, ...] = ()) -> "Pipeline":
        """Refuse a pipeline whose passes read what no earlier pass writes."""
        have = set(given)
        for p in self.passes:
            missing = [r for r in p.reads if r not in have]
            if missing:
                writers = sorted({q for q in REGISTRY if any(m in lookup(q).writes for m in missing)})
                hint = f" (add {' or '.join(writers)} before it)" if writers else ""
                raise InputError(f"pass '{p.name}' reads {', '.join(missing)}, which no earlier "
                                 f"pass of the pipeline writes{hint}")
            have.update(p.writes)
        return self

    def text(self) -> str:
        return ",".join(p.text() for p in self.passes)

    def run(self, state: State, after: Callable[[Pass, State], None] | None = None) -> State:
        """Run every pass in order; `after(pass, state)` is called after each (debugging)."""
        self.check(tuple(f for f in ("source", "target", "plan", "genes", "updates", "report")
                         if getattr(state, f)))
        state.pipeline = state.pipeline or self.text()
        with small_pages():
            for p in self.passes:
                p.run(state)
                if after is not None:
                    after(p, state)
        return state
