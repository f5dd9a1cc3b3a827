"""The code layout the design notes promise: data flows one way (no import cycle anywhere in the
project's packages), implementations depend only on the registry, the shared helpers
(implementations/_shared/) and their own package, and no module grows past 400 lines. Static:
reads the source with ast, imports nothing."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "implementations", "attnbench")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere in its body (lazy imports inside functions too)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is no edge
                out.add(t)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    mods = _modules()
    graph = {m: _imports(m, f, mods) for m, f in mods.items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _foreign_imports(name: str, targets: set[str]) -> list[str]:
    """What a module of implementations/ imports beyond the registry (harness.registry, harness.case),
    the shared helpers (implementations._shared) and its own implementation: the module itself or,
    for a package (implementations/flash/), the package's modules. _shared is its own unit, so it
    may import no implementation."""
    parts = name.split(".")
    own = ".".join(parts[:2])  # implementations.flash for implementations.flash.forward

    def ok(t: str) -> bool:
        return (t in ("harness.registry", "harness.case", "harness", "implementations")
                or any(t == u or t.startswith(u + ".") for u in ("implementations._shared", own)))

    return sorted(t for t in targets if not ok(t))


def test_implementations_depend_only_on_the_registry_and_their_own_helpers():
    mods = _modules()
    for name, path in mods.items():
        if name.startswith("implementations."):
            bad = _foreign_imports(name, _imports(name, path, mods))
            assert not bad, f"{name} imports {bad}"


def test_foreign_import_finder_finds_planted_ones():
    assert _foreign_imports("implementations.triton_decode", {"implementations.triton_flash"}) == [
        "implementations.triton_flash"]
    assert _foreign_imports("implementations.flash.forward", {"implementations.flash_decoding.kernel_build",
                                                              "harness.measure"}) == [
        "harness.measure", "implementations.flash_decoding.kernel_build"]
    assert _foreign_imports("implementations._shared.thread_pool", {"implementations.flash"}) == [
        "implementations.flash"]
    assert _foreign_imports("implementations.flash.backward", {
        "implementations.flash.forward", "implementations._shared.contract", "harness.registry"}) == []


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_module_over_400_lines(pkg):
    long = {str(f.relative_to(ROOT)): n for f in (ROOT / pkg).rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
