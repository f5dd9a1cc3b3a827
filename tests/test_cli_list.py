"""`attnbench list` fits a 100-column terminal, `--json` keeps every field, and `attnbench --help`
says what `check` measures against."""

from __future__ import annotations

import json

import pytest

from harness.cli.listing import format_table
from harness.cli.main import main

JSON_FIELDS = {"name", "devices", "dtypes", "description", "source", "available", "params", "workloads",
               "kv_layouts"}


def _run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _too_wide(text: str, width: int) -> list[str]:
    """Lines wider than `width` in characters or in UTF-8 bytes (what awk and cut count)."""
    return [ln for ln in text.splitlines() if max(len(ln), len(ln.encode())) > width]


def test_list_fits_100_columns(capsys, monkeypatch):
    from harness import registry

    monkeypatch.setenv("COLUMNS", "100")
    out = _run(capsys, "list")
    assert not _too_wide(out, 100), _too_wide(out, 100)
    starts = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    for name in registry.names():  # every implementation has its row, its name whole
        assert name in starts, name


def test_list_json_keeps_every_field_in_full(capsys):
    from harness import registry

    data = json.loads(_run(capsys, "list", "--json"))
    assert set(data) == {"implementations", "broken_plugins"}
    rows = {r["name"]: r for r in data["implementations"]}
    assert set(rows) == set(registry.names())
    for name, r in rows.items():
        assert set(r) == JSON_FIELDS, name
        impl = registry.get(name)
        assert r["description"] == impl.description  # never cut
        assert r["dtypes"] == list(impl.dtypes) and r["devices"] == list(impl.devices)
        assert set(r["available"]) == {"cpu", "cuda"}


def _row(name, description="x", ok=True, reason="", source="builtin", workloads=("prefill",), layouts=()):
    avail = {"available": ok, "reason": "" if ok else reason}
    return {"name": name, "devices": ["cpu", "cuda"], "dtypes": ["float32", "float16", "bfloat16"],
            "description": description, "source": source, "available": {"cpu": avail, "cuda": avail},
            "params": {}, "workloads": list(workloads), "kv_layouts": list(layouts)}


@pytest.mark.parametrize("width", [80, 100, 160])  # below ~84 columns the fixed columns may not fit
def test_table_wraps_and_cuts_to_the_width(width):
    long_text = "A very long description · with non-ASCII text " * 6 + ". Second sentence."
    rows = [
        _row("short", long_text),
        _row("unavailable_one", "Needs a GPU.", ok=False, reason="needs " + "a very long reason " * 12),
        _row("from_a_plugin", long_text, source="plugin:demo"),
        _row("paged_only", "Decode from pages.", workloads=("decode",), layouts=("paged",)),
        _row("both_workloads", "Prefill and decode.", workloads=("prefill", "decode"),
             layouts=("contiguous", "paged")),
        _row("a_plugin_name_longer_than_the_name_column", "Long name."),
    ]
    if width >= 100:  # the widest workload cell there is
        rows.append(_row("paged_both", "Both, paged.", workloads=("prefill", "decode"), layouts=("paged",)))
    text = format_table(rows, width)
    assert not _too_wide(text, width), _too_wide(text, width)
    assert "Second sentence" not in text  # the first sentence only
    assert "…" in text  # and cut, marked
    assert "[plugin:demo]" in text  # the source survives the cut
    assert "decode(paged)" in text and "both" in text
    assert "a_plugin_name_longer_than_the_name_column" in text.splitlines()  # whole, on its own line
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("unavailable_one"))
    assert " no " in lines[i] + " "
    below = []
    for ln in lines[i + 1:]:  # the indented lines under the row: description (narrow), why not
        if not ln.startswith(" "):
            break
        below.append(ln.strip())
    why = " ".join(below)
    assert "not here: needs a very long reason" in why and why.count("a very long reason") == 12


def test_help_says_check_measures_against_a_revision_or_a_baseline(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--against" in out
    assert "git revision" in out and "baseline" in out
    assert "fastest" in out  # what attnbench answers


def test_list_does_not_import_the_compiler_stack():
    """`attnbench list` asks whether torch.compile / FlexAttention can run here by looking the
    modules up, not importing them (Dynamo and Inductor cost ~1 s of start-up)."""
    import subprocess
    import sys

    code = ("import sys, io, contextlib\nfrom harness.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    main(['list', '--json'])\n"
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor', 'torch.nn.attention.flex_attention')"
            " if m in sys.modules))\nprint(out.getvalue())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported, listing = r.stdout.split("\n", 1)
    assert imported == "[]"
    flex = {row["name"]: row for row in json.loads(listing)["implementations"]}["flex"]
    assert flex["available"]["cpu"]["available"]  # looked up all the same (gcc is on this machine)


def test_compile_availability_says_what_is_missing(monkeypatch):
    """A torch without Dynamo/Inductor, or a CPU machine without a C++ compiler: not available,
    with the reason."""
    import importlib.util

    from implementations._shared import compile_support

    check = compile_support.compiler_available.__wrapped__  # not the cached answer
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch._inductor" else real(name, *a))
    s = check("cpu")
    assert not s and "torch._inductor" in s.reason and "torch._dynamo" not in s.reason
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setattr(compile_support.shutil, "which", lambda name: None)
    s = check("cpu")
    assert not s and "C++ compiler" in s.reason
