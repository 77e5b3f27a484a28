"""Where passes come from: the built-ins, installed plugins, and one-off plugin files.

- Built-ins are listed in `frontc.pipeline.REGISTRY` and imported only when used.
- Installed plugins declare an entry point in the `frontc.passes` group:
      [project.entry-points."frontc.passes"]
      copy-embeddings = "my_package.passes:CopyEmbeddings"
- `--plugin file.py` (or `load_file`) imports a file and registers every Pass subclass in it
  that has a `name`.
A pass may take the name of another pass only when `replace` names it explicitly; any other
clash is an error, so that a plugin can never silently change what a pipeline means.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
from importlib import metadata
from pathlib import Path

from frontc.errors import InputError

GROUP = "frontc.passes"
_loaded: dict[str, type] = {}      # name -> pass class registered by a plugin
_origin: dict[str, str] = {}       # name -> where it came from, for messages


def register(cls: type, origin: str, replace: frozenset[str] = frozenset()) -> None:
    from frontc.pipeline import REGISTRY, Pass

    if not (isinstance(cls, type) and issubclass(cls, Pass)) or not cls.name:
        raise InputError(f"{origin}: {getattr(cls, '__name__', cls)!r} is not a frontc Pass with a name")
    clash = cls.name in REGISTRY or (cls.name in _loaded and _loaded[cls.name] is not cls)
    if clash and cls.name not in replace:
        where = "a built-in pass" if cls.name in REGISTRY else f"the pass from {_origin[cls.name]}"
        raise InputError(f"{origin}: pass name '{cls.name}' clashes with {where}; rename it, or "
                         f"pass --replace-pass {cls.name} to use it instead")
    _loaded[cls.name] = cls
    _origin[cls.name] = origin


def load_file(path: str | Path, replace: frozenset[str] = frozenset()) -> list[str]:
    """Import a plugin file and register the passes it defines; returns their names."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"plugin {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"frontc_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise InputError(f"plugin {path}: importing it failed ({type(err).__name__}: {err})") from None
    from frontc.pipeline import Pass

    names = []
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, Pass) and cls is not Pass and cls.__module__ == module.__name__ and cls.name:
            register(cls, f"plugin {path}", replace)
            names.append(cls.name)
    if not names:
        raise InputError(f"plugin {path}: defines no frontc Pass subclass with a name")
    return names


def load_installed(replace: frozenset[str] = frozenset()) -> None:
    """Register the passes of installed packages (entry point group `frontc.passes`)."""
    for entry in metadata.entry_points(group=GROUP):
        origin = f"installed plugin {entry.dist.name if entry.dist else entry.value}"
        try:
            cls = entry.load()
        except Exception as err:
            raise InputError(f"{origin}: loading {entry.value} failed ({type(err).__name__}: {err})") from None
        if getattr(cls, "name", None) != entry.name:
            raise InputError(f"{origin}: entry point '{entry.name}' loads a pass named "
                             f"'{getattr(cls, 'name', None)}'; the two must agree")
        register(cls, origin, replace)


def plugin_pass(name: str) -> type | None:
    return _loaded.get(name)


def names() -> list[str]:
    return list(_loaded)


def origin(name: str) -> str:
    return _origin.get(name, "built-in")
