"""The catalogue: register returns the function unchanged, duplicates raise, a failed lookup names
what exists, capabilities answer "why not", and nothing is loaded at import time."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness import registry
from harness.case import Case
from harness.registry import RegistryError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _dummy(q, k, v, *, causal=False, attn_mask=None, scale=None):
    """A throwaway implementation for registry tests."""
    return q


@pytest.fixture
def throwaway():
    """A unique name no other test uses; whatever gets registered under it is removed afterwards."""
    registry.ensure_loaded()  # load builtins/plugins first so cleanup cannot race a later scan
    name = f"_test_registry_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        registry._REGISTRY.pop(name, None)


def test_register_returns_the_function_unchanged(throwaway):
    returned = registry.register(throwaway, devices=("cpu",), dtypes=("float32",))(_dummy)
    assert returned is _dummy
    impl = registry.get(throwaway)
    assert impl.fn is _dummy
    assert impl.name == throwaway
    assert impl.devices == ("cpu",) and impl.dtypes == ("float32",)
    assert impl.source == "builtin"
    assert impl.description == "A throwaway implementation for registry tests."
    assert throwaway in registry.names()


def test_duplicate_name_raises(throwaway):
    registry.register(throwaway)(_dummy)

    def other(q, k, v, **kw):
        return q

    with pytest.raises(RegistryError, match="already registered"):
        registry.register(throwaway)(other)
    assert registry.get(throwaway).fn is _dummy  # the first registration is kept


def test_duplicate_of_a_builtin_raises_and_keeps_the_builtin():
    naive = registry.get("naive")
    with pytest.raises(RegistryError, match="naive"):
        registry.register("naive")(_dummy)
    assert registry.get("naive") is naive


def test_unknown_name_raises_listing_known_names():
    with pytest.raises(RegistryError) as info:
        registry.get("no_such_attention_xyz")
    message = str(info.value)
    assert "no_such_attention_xyz" in message
    for known in registry.names():
        assert known in message
    assert isinstance(info.value, LookupError)  # callers may catch the builtin lookup family


def test_names_sorted_and_include_builtins():
    names = registry.names()
    assert names == sorted(names)
    assert len(names) == len(set(names))
    assert "naive" in names
    assert registry.get("naive").source == "builtin"
    impls = registry.all_implementations()
    assert [i.name for i in impls] == names


@pytest.mark.parametrize("device", ["tpu", "cuda:0", "CPU"])
def test_register_unknown_device_raises(device, throwaway):
    with pytest.raises(ValueError, match="devices"):
        registry.register(throwaway, devices=("cpu", device))(_dummy)
    assert throwaway not in registry._REGISTRY


@pytest.mark.parametrize("dtype", ["float64", "int8", "fp16"])
def test_register_unknown_dtype_raises(dtype, throwaway):
    with pytest.raises(ValueError, match="dtypes"):
        registry.register(throwaway, dtypes=("float32", dtype))(_dummy)
    assert throwaway not in registry._REGISTRY


def test_supports_wrong_dtype_says_why(throwaway):
    registry.register(throwaway, devices=("cpu",), dtypes=("float32",))(_dummy)
    impl = registry.get(throwaway)
    assert impl.supports(Case(impl=throwaway, dtype="float32", device="cpu"))
    support = impl.supports(Case(impl=throwaway, dtype="bfloat16", device="cpu"))
    assert not support
    assert "bfloat16" in support.reason and "float32" in support.reason


def test_supports_wrong_device_says_why(throwaway):
    registry.register(throwaway, devices=("cpu",))(_dummy)
    support = registry.get(throwaway).supports(Case(impl=throwaway, device="cuda"))
    assert not support
    assert "cuda" in support.reason and "cpu" in support.reason


def test_supports_cuda_without_a_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    support = registry.get("naive").supports(Case(impl="naive", device="cuda"))
    assert not support
    assert "CUDA" in support.reason
    assert registry.get("naive").supports(Case(impl="naive", device="cpu"))


def test_available_hook_reason_passes_through(throwaway):
    registry.register(
        throwaway,
        devices=("cpu",),
        available=lambda device: registry.no("needs the frobnicator library"),
    )(_dummy)
    impl = registry.get(throwaway)
    # Availability (machine-level) is asked first, then dtype, then the case-level hook.
    support = impl.supports(Case(impl=throwaway, device="cpu"))
    assert not support and support.reason == "needs the frobnicator library"
    assert not impl.available("cpu")


def test_supports_case_hook(throwaway):
    registry.register(
        throwaway,
        devices=("cpu",),
        supports=lambda case: registry.YES if case.mask == "none" else registry.no("no masks"),
    )(_dummy)
    impl = registry.get(throwaway)
    assert impl.supports(Case(impl=throwaway, device="cpu"))
    support = impl.supports(Case(impl=throwaway, device="cpu", mask="key_padding"))
    assert not support and support.reason == "no masks"


def test_support_truthiness_and_memory_model(throwaway):
    assert registry.YES and bool(registry.YES) is True
    assert not registry.no("because") and registry.no("because").reason == "because"
    registry.register(throwaway, memory_model=lambda case: 1000.7 * case.batch)(_dummy)
    impl = registry.get(throwaway)
    assert impl.predicted_peak_bytes(Case(impl=throwaway, batch=3)) == 3002
    # naive's model is analytic: at least its two float32 (B, Hq, Nq, Nk) score matrices.
    case = Case(impl="naive", batch=1, heads_q=2, heads_kv=2, seq_len_q=10, seq_len_kv=10, head_dim=4)
    predicted = registry.get("naive").predicted_peak_bytes(case)
    assert predicted is not None and predicted >= 2 * 4 * 2 * 10 * 10


def test_registry_import_is_lazy():
    """Importing the registry loads no implementation, scans no plugin and imports no torch."""
    code = (
        "import sys, harness.registry as r\n"
        "assert not r._loaded, 'loaded at import'\n"
        "assert not r._REGISTRY, sorted(r._REGISTRY)\n"
        "assert 'torch' not in sys.modules, 'torch imported by harness.registry'\n"
        "assert not any(m.startswith('implementations.') for m in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_builtins_are_the_public_modules_and_packages_never_their_helpers():
    """The registry imports each public module / package of implementations/ and nothing else: a
    package's helper modules and implementations/_shared/ come in only through the code that uses
    them (checked in a fresh interpreter, by recording what the registry asks importlib for)."""
    code = (
        "import importlib, json, sys\n"
        "asked, real = [], importlib.import_module\n"
        "def spy(name, package=None):\n"
        "    asked.append(name)\n"
        "    return real(name, package)\n"
        "importlib.import_module = spy\n"
        "from harness import registry\n"
        "registry.ensure_loaded()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('implementations.'))\n"
        "fns = [f for i in registry._REGISTRY.values() if i.source == 'builtin'\n"
        "       for f in (i.fn, *(p.fn for p in i.paths.values())) if f is not None]\n"
        "registering = sorted({'.'.join(f.__module__.split('.')[:2]) for f in fns})\n"
        "print(json.dumps([sorted(n for n in asked if n.startswith('implementations')), loaded, registering,\n"
        "                  registry.names()]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    asked, loaded, registering, names = json.loads(proc.stdout.strip().splitlines()[-1])
    impl_dir = REPO_ROOT / "implementations"
    public = sorted(
        f"implementations.{p.stem}" for p in impl_dir.iterdir()
        if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").is_file())
    )
    assert asked == public
    assert registering == public  # every module the registry imports registers an implementation
    assert {"implementations.flash", "implementations.flash_decoding", "implementations.triton_flash"} <= set(asked)
    # the helpers are there, loaded by the packages and implementations that use them
    assert {"implementations.flash.forward", "implementations.flash_decoding.kernel_build",
            "implementations._shared.contract"} <= set(loaded)
    assert {"flash", "flash_decoding", "flash_decoding_torch", "triton_flash", "triton_decode"} <= set(names)
