"""The catalogue of attention implementations.

`register` is a decorator that records a function with what it supports and returns it unchanged;
it is the implementation's prefill path. `register_path(workload, name, ...)` adds its path for
another workload (`register_decode` for decode). What a workload demands of a path beyond device
and dtype (declared variants, cache layouts) is the workload's rule (harness/workloads).
Built-in implementations live in the `implementations` package; third-party packages add theirs
through the entry-point group ``attnbench.implementations``. Nothing is imported or scanned until a
lookup asks for it (no plugin scan at import time).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

from harness import workloads
from harness.case import DEVICES, DTYPES, Case
from harness.support import YES, Support, no

ENTRY_POINT_GROUP = "attnbench.implementations"
__all__ = ["Implementation", "RegistryError", "Support", "WorkloadPath", "YES", "no", "register", "register_decode",
           "register_path"]


@dataclass(frozen=True)
class WorkloadPath:
    """How an implementation runs one workload: its function, the dtypes it takes there, optional
    hooks, and workload-specific options (decode: `layouts`), which the workload's rules read."""

    fn: Callable
    dtypes: tuple[str, ...]
    supports_fn: Callable[[Case], Support] | None = None
    memory_model: Callable[[Case], int] | None = None
    options: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # the implementation's declared tunables and variants

    @property
    def layouts(self) -> tuple[str, ...]:
        """decode: the cache layouts this path reads."""
        return tuple(self.options.get("layouts", ()))


DecodePath = WorkloadPath  # its name when decode was the only second workload


@dataclass(frozen=True)
class Implementation:
    name: str
    devices: tuple[str, ...]
    paths: dict = field(default_factory=dict)  # workload name -> WorkloadPath
    description: str = ""
    # Machine-level check, e.g. "triton not installed": device -> Support.
    available_fn: Callable[[str], Support] | None = None
    source: str = "builtin"  # "builtin" or the plugin's entry-point name
    params: dict = field(default_factory=dict)  # tunables with their defaults, for reports

    @property
    def workloads(self) -> tuple[str, ...]:
        return tuple(w for w in workloads.WORKLOADS if w in self.paths)

    @property
    def fn(self) -> Callable | None:
        """The prefill function (None for an implementation without a prefill path)."""
        p = self.paths.get("prefill")
        return p.fn if p else None

    @property
    def dtypes(self) -> tuple[str, ...]:
        p = self.paths.get("prefill") or next(iter(self.paths.values()), None)
        return p.dtypes if p else ()

    @property
    def decode(self) -> WorkloadPath | None:
        return self.paths.get("decode")

    @property
    def memory_model(self) -> Callable[[Case], int] | None:
        p = self.paths.get("prefill")
        return p.memory_model if p else None

    def entry(self, case: Case) -> Callable:
        """The function that computes `case`: this implementation's path for its workload."""
        return self.paths[case.workload].fn

    def available(self, device: str) -> Support:
        """Can this implementation run on `device` on this machine?"""
        kind = device.split(":")[0]
        if kind not in self.devices:
            return no(f"{self.name} runs on {', '.join(self.devices)}, not {kind}")
        if kind == "cuda":
            import torch

            if not torch.cuda.is_available():
                return no("no CUDA device on this machine")
        if self.available_fn is not None:
            return _support_from_hook(self, "available", self.available_fn, device)
        return YES

    def supports(self, case: Case) -> Support:
        """Can this implementation run `case` here? Yes, or why not: the device, then its path
        for the case's workload -- dtype, the workload's rules, the path's own hook."""
        avail = self.available(case.device)
        if not avail:
            return avail
        path = self.paths.get(case.workload)
        if path is None:
            return no(f"{self.name} has no {case.workload} path (it runs: {', '.join(self.workloads) or 'nothing'})")
        if case.dtype not in path.dtypes:
            what = "" if case.workload == "prefill" else f" {case.workload}"
            return no(f"{self.name}{what} supports dtypes {', '.join(path.dtypes)}, not {case.dtype}")
        rule = workloads.workload_of(case).supports(self.name, path, case)
        if not rule:
            return rule
        if path.supports_fn is not None:
            hook = "supports" if case.workload == "prefill" else f"{case.workload} supports"
            return _support_from_hook(self, hook, path.supports_fn, case)
        return YES

    def predicted_peak_bytes(self, case: Case) -> int | None:
        path = self.paths.get(case.workload)
        model = path.memory_model if path else None
        return None if model is None else _bytes_from_hook(self, model, case)


class HookError(RuntimeError):
    """A plugin's supports=, available= or memory_model= hook raised or answered something that is
    not what it must return. Callers turn it into that implementation's `error` record for the case
    (or, in `attnbench list`, into "unavailable"); the message names the implementation and hook."""


def _call_hook(impl: Implementation, hook: str, fn: Callable, arg):
    try:
        return fn(arg)
    except (KeyboardInterrupt, MemoryError):
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit in a hook is still the hook's fault
        raise HookError(f"{impl.name}: its {hook}= hook raised {type(exc).__name__}: {exc}") from None


def _support_from_hook(impl: Implementation, hook: str, fn: Callable, arg) -> Support:
    answer = _call_hook(impl, hook, fn, arg)
    if not isinstance(answer, Support):
        raise HookError(f"{impl.name}: its {hook}= hook returned {type(answer).__name__} "
                        f"{str(answer)[:80]!r}, not a Support (use registry.YES or registry.no(reason))")
    return answer


def _bytes_from_hook(impl: Implementation, fn: Callable, case: Case) -> int:
    import math
    import numbers

    answer = _call_hook(impl, "memory_model", fn, case)
    ok = (isinstance(answer, numbers.Real) and not isinstance(answer, bool)
          and math.isfinite(answer) and answer >= 0)
    if not ok:
        raise HookError(f"{impl.name}: its memory_model= hook returned {type(answer).__name__} "
                        f"{str(answer)[:80]!r}, not a number of bytes >= 0")
    return int(answer)


class RegistryError(LookupError):
    pass


_REGISTRY: dict[str, Implementation] = {}
_BROKEN_PLUGINS: dict[str, str] = {}  # entry-point name -> why it failed to load
_loaded = False
_current_source = "builtin"


def _check(name: str, what: str, kind: str, values, allowed) -> None:
    bad = [x for x in values if x not in allowed]
    if bad:
        raise ValueError(f"{what}({name!r}): unknown {kind} {bad}; allowed: {tuple(allowed)}")


def register(
    name: str,
    *,
    devices: tuple[str, ...] | list[str] = ("cpu", "cuda"),
    dtypes: tuple[str, ...] | list[str] = DTYPES,
    supports: Callable[[Case], Support] | None = None,
    available: Callable[[str], Support] | None = None,
    memory_model: Callable[[Case], int] | None = None,
    description: str = "",
    params: dict | None = None,
):
    """Decorator: record `fn` as the prefill path of a new implementation `name`; returns `fn`
    unchanged. A duplicate name raises."""
    _check(name, "register", "devices", devices, DEVICES)
    _check(name, "register", "dtypes", dtypes, DTYPES)

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise RegistryError(
                f"implementation {name!r} is already registered "
                f"(by {_REGISTRY[name].source}); pick another name"
            )
        _add_path("prefill", name, WorkloadPath(fn, tuple(dtypes), supports, memory_model, params=dict(params or {})),
                  devices=devices, description=description, available=available, params=params)
        return fn

    return decorator


def register_path(
    workload: str,
    name: str,
    *,
    devices: tuple[str, ...] | list[str] = ("cpu", "cuda"),
    dtypes: tuple[str, ...] | list[str] = DTYPES,
    supports: Callable[[Case], Support] | None = None,
    available: Callable[[str], Support] | None = None,
    memory_model: Callable[[Case], int] | None = None,
    description: str = "",
    params: dict | None = None,
    options: dict | None = None,
):
    """Decorator: record `fn` as implementation `name`'s path for `workload` (its calling
    convention: docs/contracts.md). Attaches to an implementation registered earlier under that
    name, or creates one that runs only this workload. Returns `fn` unchanged."""
    workloads.get(workload)  # ValueError naming the known workloads
    _check(name, "register_path", "dtypes", dtypes, DTYPES)

    def decorator(fn: Callable) -> Callable:
        path = WorkloadPath(fn, tuple(dtypes), supports, memory_model, dict(options or {}), dict(params or {}))
        old = _REGISTRY.get(name)
        if old is not None and workload in old.paths:
            raise RegistryError(f"implementation {name!r} already has a {workload} path; pick another name")
        if old is None:
            _check(name, "register_path", "devices", devices, DEVICES)
        _add_path(workload, name, path, devices=devices, description=description, available=available, params=params)
        return fn

    return decorator


def _add_path(workload: str, name: str, path: WorkloadPath, *, devices, description: str, available, params) -> None:
    """Attach `path` to implementation `name`, creating it (devices, description, available=,
    params: from this registration) when it is new."""
    old = _REGISTRY.get(name)
    if old is not None:
        _REGISTRY[name] = dataclasses.replace(old, paths={**old.paths, workload: path})
        return
    _REGISTRY[name] = Implementation(name=name, devices=tuple(devices), paths={workload: path},
                                     description=description or (path.fn.__doc__ or "").strip().split("\n")[0],
                                     available_fn=available, source=_current_source, params=dict(params or {}))


def register_decode(
    name: str,
    *,
    layouts: tuple[str, ...] | list[str] = ("contiguous", "paged"),
    devices: tuple[str, ...] | list[str] = ("cpu", "cuda"),
    dtypes: tuple[str, ...] | list[str] = DTYPES,
    supports: Callable[[Case], Support] | None = None,
    available: Callable[[str], Support] | None = None,
    memory_model: Callable[[Case], int] | None = None,
    description: str = "",
    params: dict | None = None,
    forms: tuple[str, ...] | list[str] = (),
    forms_missing: dict | None = None,
):
    """Decorator: record `fn(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None)` as
    the decode path of `name` (docs/contracts.md, "Decode"): register_path("decode", ...) with
    the cache layouts it reads and the decode forms it implements (`forms`: "sinks", "scale",
    "kv_bfloat16", "kv_float8_e4m3fn"; `forms_missing`: the reason per form it cannot express)."""
    from harness.workloads.decode import KV_LAYOUTS

    bad = [x for x in layouts if x not in KV_LAYOUTS]
    if bad:
        raise ValueError(f"register_decode({name!r}): unknown layouts {bad}; allowed: {KV_LAYOUTS}")
    return register_path("decode", name, devices=devices, dtypes=dtypes, supports=supports, available=available,
                         memory_model=memory_model, description=description, params=params,
                         options={"layouts": tuple(layouts), "forms": tuple(forms),
                                  "forms_missing": dict(forms_missing or {})})


def _load_builtins() -> None:
    """Import every public module and package directly under implementations/ (a name without a
    leading underscore); a package's __init__ does its registering. Nothing deeper: the helper
    modules of a package and the shared helpers (implementations/_shared/) are imported only by the
    implementations that use them."""
    import implementations

    for mod in pkgutil.iter_modules(implementations.__path__):  # top level only: modules and packages
        if not mod.name.startswith("_"):
            importlib.import_module(f"implementations.{mod.name}")


def _load_plugins() -> None:
    """Import every entry point in the group; a plugin that fails is recorded, not fatal."""
    global _current_source
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _current_source = f"plugin:{ep.name}"
        try:
            obj = ep.load()
            # A module registers on import; a callable is a hook that registers when called.
            if callable(obj):
                obj()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken third-party package (even one that
            # calls sys.exit() on import) must not break the catalogue or end the command
            _BROKEN_PLUGINS[ep.name] = f"{type(exc).__name__}: {exc}"
        finally:
            _current_source = "builtin"


def ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    _load_builtins()
    _load_plugins()


def get(name: str) -> Implementation:
    ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RegistryError(
            f"unknown implementation {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def names() -> list[str]:
    ensure_loaded()
    return sorted(_REGISTRY)


def all_implementations() -> list[Implementation]:
    return [get(n) for n in names()]


def broken_plugins() -> dict[str, str]:
    ensure_loaded()
    return dict(_BROKEN_PLUGINS)
