"""Third-party plugins through a real importlib.metadata entry point.

tests/plugin_fixtures/ holds two site-packages-like directories (a package plus its *.dist-info with
entry_points.txt). Each test copies them into tmp_path, puts them on PYTHONPATH and runs a fresh
Python in a subprocess, so entry points are discovered exactly as for a pip-installed package and
the registry starts empty (it loads once per process).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "plugin_fixtures"


def plugin_env(tmp_path: Path, *which: str) -> dict:
    """Environment whose PYTHONPATH holds copies of the named fixture directories."""
    paths = []
    for name in which:
        dest = tmp_path / name
        shutil.copytree(FIXTURES / name, dest)
        paths.append(str(dest))
    env = dict(os.environ)
    # The repo root goes last so `harness` resolves to the checkout as in the test process.
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_python(code: str, env: dict, cwd: Path) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"subprocess failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROBE = """
    import json, math, sys
    import torch
    import harness.registry as registry

    # Nothing is scanned at import time: the plugin is imported only when a lookup asks.
    lazy = "attnbench_demo_plugin" not in sys.modules and not registry._loaded
    names = registry.names()
    result = {
        "lazy": lazy,
        "names": names,
        "sources": {n: registry.get(n).source for n in names},
        "broken": registry.broken_plugins(),
        "naive_is_builtin_fn": registry.get("naive").fn.__module__ == "implementations.naive",
    }
    if "demo_plugin_attention" in names:
        from harness.case import Case
        impl = registry.get("demo_plugin_attention")
        result["supports_plain"] = bool(impl.supports(Case(impl=impl.name, device="cpu")))
        result["supports_causal_reason"] = impl.supports(Case(impl=impl.name, causal=True)).reason
        g = torch.Generator().manual_seed(0)
        q = torch.randn(2, 4, 13, 16, generator=g)  # (B, Hq, Nq, D)
        k = torch.randn(2, 2, 21, 16, generator=g)  # (B, Hkv, Nk, D)
        v = torch.randn(2, 2, 21, 16, generator=g)  # (B, Hkv, Nk, D)
        errors = {}
        for name in ("demo_plugin_attention", "demo_plugin_hook_attention"):
            out = registry.get(name).fn(q, k, v, scale=0.3)
            # float64 reference, written out: softmax(q k^T * scale) v with kv head h // 2.
            kd = k.double().repeat_interleave(2, dim=1)  # (B, Hq, Nk, D)
            vd = v.double().repeat_interleave(2, dim=1)  # (B, Hq, Nk, D)
            ref = torch.softmax(q.double() @ kd.transpose(-1, -2) * 0.3, dim=-1) @ vd  # (B, Hq, Nq, D)
            errors[name] = ((out.double() - ref).norm() / ref.norm()).item()
        result["rel_errors"] = errors
    print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """One fresh interpreter with both fixture distributions installed (good and broken): one
    subprocess serves every assertion below, since each costs a torch import."""
    tmp_path = tmp_path_factory.mktemp("plugins")
    return run_python(PROBE, plugin_env(tmp_path, "good", "broken"), cwd=tmp_path)


def test_plugin_registers_through_entry_point(probe):
    assert probe["lazy"], "the registry scanned plugins at import time"
    assert "demo_plugin_attention" in probe["names"]
    assert "demo_plugin_hook_attention" in probe["names"]  # a callable entry point (hook)
    assert "naive" in probe["names"]  # builtins still load alongside plugins
    assert probe["sources"]["demo_plugin_attention"] == "plugin:demo"
    assert probe["sources"]["demo_plugin_hook_attention"] == "plugin:demo_hook"
    assert probe["sources"]["naive"] == "builtin"
    assert probe["names"] == sorted(probe["names"])


def test_plugin_capabilities_and_results(probe):
    assert probe["supports_plain"] is True
    assert "neither causal nor masks" in probe["supports_causal_reason"]
    assert set(probe["rel_errors"]) == {"demo_plugin_attention", "demo_plugin_hook_attention"}
    for name, err in probe["rel_errors"].items():
        assert err <= 1e-5, f"{name} relative L2 error {err:.3g}"


def test_broken_plugins_are_recorded_not_fatal(probe):
    # names() still worked (the probe got this far) and lists builtins and the good plugin.
    broken = probe["broken"]
    assert set(broken) == {"broken_import", "clash_with_builtin", "missing_module"}, broken
    assert "RuntimeError" in broken["broken_import"] and "broken on purpose" in broken["broken_import"]
    assert "RegistryError" in broken["clash_with_builtin"] and "naive" in broken["clash_with_builtin"]
    assert "ModuleNotFoundError" in broken["missing_module"]
    assert "attnbench_no_such_module_anywhere" in broken["missing_module"]


def test_plugin_cannot_take_over_a_builtin_name(probe):
    assert probe["sources"]["naive"] == "builtin"
    assert probe["naive_is_builtin_fn"] is True


def test_no_plugin_fixture_leaks_into_this_process():
    """The fixtures are only ever on a subprocess's path: this process's registry has none."""
    from harness import registry

    assert not any(n.startswith("demo_plugin") for n in registry.names())
    assert not any(n in registry.broken_plugins() for n in ("broken_import", "clash_with_builtin"))


# ---------------------------------------------------------------------------------------------
# `attnbench list` shows plugins (harness/cli.py; skipped until the CLI exists).


def _cli_command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "attnbench"
    if script.exists():
        return [str(script), *args]
    code = f"import sys; from harness.cli.main import main; sys.argv = ['attnbench', *{list(args)!r}]; sys.exit(main())"
    return [sys.executable, "-c", code]


def _run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("harness.cli.main") is None:
        pytest.skip("harness/cli.py does not exist yet")
    env = plugin_env(tmp_path, "good", "broken")
    return subprocess.run(_cli_command(*args), env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_cli_list_shows_plugin(tmp_path):
    proc = _run_cli(tmp_path, "list")
    assert proc.returncode == 0, proc.stderr
    assert "naive" in proc.stdout
    assert "demo_plugin_attention" in proc.stdout
    assert "plugin:demo" in proc.stdout  # where it came from
    # A broken plugin is reported somewhere (stdout or stderr), not swallowed and not fatal.
    assert "broken_import" in proc.stdout + proc.stderr


def _find_named(obj, name):
    """Depth-first search of decoded JSON for a dict whose 'name' is `name`."""
    if isinstance(obj, dict):
        if obj.get("name") == name:
            return obj
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = _find_named(child, name)
        if found is not None:
            return found
    return None


def test_cli_list_json_shows_plugin(tmp_path):
    proc = _run_cli(tmp_path, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    entry = _find_named(data, "demo_plugin_attention")
    assert entry is not None, f"demo_plugin_attention not in {proc.stdout[:2000]}"
    assert entry.get("source") == "plugin:demo", entry
    assert _find_named(data, "naive") is not None
