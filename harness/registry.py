"""The catalogue of attention implementations.

`register` is a decorator that records a function with what it supports and returns it unchanged.
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

from harness.case import DEVICES, DTYPES, KV_LAYOUTS, Case

ENTRY_POINT_GROUP = "attnbench.implementations"


@dataclass(frozen=True)
class Support:
    """Yes, or no with the reason why not. Truthy when supported."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True)


def no(reason: str) -> Support:
    return Support(False, reason)


@dataclass(frozen=True)
class Implementation:
    name: str
    fn: Callable
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    description: str = ""
    # Extra case-level check beyond device/dtype, e.g. "no masks": Case -> Support.
    supports_fn: Callable[[Case], Support] | None = None
    # Machine-level check, e.g. "triton not installed": device -> Support.
    available_fn: Callable[[str], Support] | None = None
    # Analytic peak memory above the inputs, in bytes: Case -> int.
    memory_model: Callable[[Case], int] | None = None
    source: str = "builtin"  # "builtin" or the plugin's entry-point name
    params: dict = field(default_factory=dict)  # tunables with their defaults, for reports
    # Decode against a KV cache (register_decode): fn(q, k_cache, v_cache, *, kv_lens,
    # block_table=None, scale=None); None when the implementation has no decode path.
    decode: "DecodePath | None" = None

    @property
    def workloads(self) -> tuple[str, ...]:
        return (("prefill",) if self.fn is not None else ()) + (("decode",) if self.decode else ())

    def entry(self, case: Case) -> Callable:
        """The function that computes `case`: the prefill fn or the decode fn."""
        return self.decode.fn if case.is_decode else self.fn

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
        """Can this implementation run `case` here? Yes, or why not."""
        avail = self.available(case.device)
        if not avail:
            return avail
        if case.is_decode:
            return self._supports_decode(case)
        if self.fn is None:
            return no(f"{self.name} is decode-only")
        if case.dtype not in self.dtypes:
            return no(f"{self.name} supports dtypes {', '.join(self.dtypes)}, not {case.dtype}")
        # Variants (window, softcap, alibi, document) are opt-in: params={"variants": (...)}.
        missing = [x for x in case.variants if x not in self.params.get("variants", ())]
        if missing:
            return no(f"{self.name} does not implement the {', '.join(missing)} variant"
                      f"{'s' if len(missing) > 1 else ''} (declared: {', '.join(self.params.get('variants', ())) or 'none'})")
        if self.supports_fn is not None:
            return _support_from_hook(self, "supports", self.supports_fn, case)
        return YES

    def _supports_decode(self, case: Case) -> Support:
        d = self.decode
        if d is None:
            return no(f"{self.name} has no decode path (KV cache)")
        if case.kv_layout not in d.layouts:
            return no(f"{self.name} decodes from {', '.join(d.layouts)} caches, not {case.kv_layout}")
        if case.dtype not in d.dtypes:
            return no(f"{self.name} decode supports dtypes {', '.join(d.dtypes)}, not {case.dtype}")
        return _support_from_hook(self, "decode supports", d.supports_fn, case) if d.supports_fn is not None else YES

    def predicted_peak_bytes(self, case: Case) -> int | None:
        model = self.decode.memory_model if (case.is_decode and self.decode) else self.memory_model
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


@dataclass(frozen=True)
class DecodePath:
    fn: Callable
    layouts: tuple[str, ...]
    dtypes: tuple[str, ...]
    supports_fn: Callable[[Case], Support] | None = None
    memory_model: Callable[[Case], int] | None = None


class RegistryError(LookupError):
    pass


_REGISTRY: dict[str, Implementation] = {}
_BROKEN_PLUGINS: dict[str, str] = {}  # entry-point name -> why it failed to load
_loaded = False
_current_source = "builtin"


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
    """Decorator: record `fn` under `name`; returns `fn` unchanged. A duplicate name raises."""
    bad_devices = [d for d in devices if d not in DEVICES]
    if bad_devices:
        raise ValueError(f"register({name!r}): unknown devices {bad_devices}; allowed: {DEVICES}")
    bad_dtypes = [d for d in dtypes if d not in DTYPES]
    if bad_dtypes:
        raise ValueError(f"register({name!r}): unknown dtypes {bad_dtypes}; allowed: {DTYPES}")

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise RegistryError(
                f"implementation {name!r} is already registered "
                f"(by {_REGISTRY[name].source}); pick another name"
            )
        _REGISTRY[name] = Implementation(
            name=name,
            fn=fn,
            devices=tuple(devices),
            dtypes=tuple(dtypes),
            description=description or ((fn.__doc__ or "").strip().split("\n")[0] if fn else ""),
            supports_fn=supports,
            available_fn=available,
            memory_model=memory_model,
            source=_current_source,
            params=dict(params or {}),
        )
        return fn

    return decorator


def register_decode(
    name: str,
    *,
    layouts: tuple[str, ...] | list[str] = KV_LAYOUTS,
    devices: tuple[str, ...] | list[str] = ("cpu", "cuda"),
    dtypes: tuple[str, ...] | list[str] = DTYPES,
    supports: Callable[[Case], Support] | None = None,
    memory_model: Callable[[Case], int] | None = None,
    description: str = "",
    params: dict | None = None,
):
    """Decorator: record `fn(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None)` as
    the decode path of `name` (see README, "Decode"). Attaches to an implementation registered
    earlier under that name, or creates a decode-only one. Returns `fn` unchanged."""
    bad = [x for x in layouts if x not in KV_LAYOUTS]
    if bad:
        raise ValueError(f"register_decode({name!r}): unknown layouts {bad}; allowed: {KV_LAYOUTS}")

    def decorator(fn: Callable) -> Callable:
        path = DecodePath(fn, tuple(layouts), tuple(dtypes), supports, memory_model)
        old = _REGISTRY.get(name)
        if old is not None:
            if old.decode is not None:
                raise RegistryError(f"implementation {name!r} already has a decode path; pick another name")
            _REGISTRY[name] = dataclasses.replace(old, decode=path)
            return fn
        register(name, devices=devices, dtypes=dtypes, description=description, params=params)(None)
        _REGISTRY[name] = dataclasses.replace(_REGISTRY[name], decode=path)
        return fn

    return decorator


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
