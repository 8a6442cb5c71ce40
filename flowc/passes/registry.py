"""Pass registry: names -> pass classes, for built-in passes and third-party plugins.

Built-in passes register themselves with `@register_pass` when their module is imported; the
registry imports the modules listed in `BUILTIN_MODULES` on first lookup, so `get_pass` works
without the caller knowing where a pass lives. Third-party packages declare passes in the
entry-point group `flowc.passes` (value `package.module:PassClass`, or just `package.module`
whose import registers its passes); they are loaded lazily, once, on the first lookup. A
plugin that fails to import is a `PluginWarning`, not an error, so one broken package does not
stop compiles that never use it; asking for a pass of that plugin is the error (naming why).
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from importlib.metadata import entry_points

from flowc.errors import UsageError
from flowc.passes.base import Pass

ENTRY_POINT_GROUP = "flowc.passes"

# Modules whose import registers the built-in passes. Add a module here when you add a pass.
BUILTIN_MODULES: tuple[str, ...] = (
    "flowc.passes.calibrate",
    "flowc.passes.prune",
    "flowc.passes.verify",
    "flowc.passes.quantize",
    "flowc.passes.flow.passes",
    "flowc.passes.flow.sensitivity",
    "flowc.passes.flow.measured_passes",
)

_REGISTRY: dict[str, type[Pass]] = {}
_BROKEN: dict[str, str] = {}  # entry-point name -> why its plugin did not load
_builtins_loaded = False
_plugins_loaded = False


class RegistryError(UsageError):
    """A pass could not be registered or found (one line)."""


class PluginWarning(UserWarning):
    """A pass plugin could not be imported; its passes are unavailable."""


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: register a frozen-dataclass Pass under its class-level `name`."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise RegistryError(f"register_pass expects a Pass subclass, got {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise RegistryError(f"pass class {cls.__qualname__} has no class-level `name`")
    params = cls.__dict__.get("__dataclass_params__")  # the class itself, not a base
    if params is None or not params.frozen:
        raise RegistryError(
            f"pass '{cls.name}' ({cls.__qualname__}) must be @dataclass(frozen=True)"
        )
    other = _REGISTRY.get(cls.name)
    if other is not None and _qualname(other) != _qualname(cls):
        raise RegistryError(
            f"pass name '{cls.name}' is taken by {_qualname(other)}, "
            f"cannot register {_qualname(cls)}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`; an unknown name lists close matches."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        if name in _BROKEN:
            raise RegistryError(f"pass '{name}': {_BROKEN[name]}") from None
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        broken = f"; plugins that failed to load: {', '.join(sorted(_BROKEN))}" if _BROKEN else ""
        raise RegistryError(
            f"unknown pass '{name}'; {hint}(available: {', '.join(sorted(_REGISTRY))}){broken}"
        ) from None


def available_passes() -> list[str]:
    """Sorted names of every registered pass (built-in and plugin)."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def _ensure_loaded() -> None:
    global _builtins_loaded, _plugins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    if not _plugins_loaded:
        _plugins_loaded = True
        _load_plugins()


def _load_plugins() -> None:
    """Import every entry point of the group; one that fails to import is a PluginWarning
    (recorded in _BROKEN for get_pass); one that loads the wrong thing is an error."""
    _BROKEN.clear()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            why = f"cannot load pass plugin '{ep.name}' ({ep.value}): {type(exc).__name__}: {first}"
            _BROKEN[ep.name] = why
            warnings.warn(f"{why}; its passes are unavailable", PluginWarning, stacklevel=2)
            continue
        if isinstance(obj, type):
            if getattr(obj, "name", None) != ep.name:
                raise RegistryError(
                    f"entry point '{ep.name}' ({ep.value}) loads a pass named "
                    f"'{getattr(obj, 'name', None)}'; the entry-point name must equal the pass name"
                )
            register_pass(obj)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
