"""Helpers shared by the scenario test modules: the shipped implementation names and small
scenario files written to a temporary directory."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.scenario.load import Scenario, ScenarioError, load_scenario

# Every implementation the project ships; tests that are not about the registry validate against
# this list (load_scenario's known_impls), and one test checks it equals the registry's built-ins.
PLANNED = ("naive", "chunked", "memory_efficient", "flash", "sdpa", "sdpa_math", "sdpa_flash",
           "sdpa_efficient", "sdpa_cudnn", "triton_flash", "flash_decoding", "flash_decoding_torch", "triton_decode", "flex",
           "compiled_naive")
COMPILED = ("flex", "compiled_naive")  # torch.compile'd: ~5-30 s per shape family, own scenario (variants)
DECODE_ONLY = ("flash_decoding", "flash_decoding_torch", "triton_decode")  # decode-only implementations (register_decode)
KNOWN = ("naive", "sdpa", "flash")

HEAD = 'implementations = ["naive", "sdpa"]\n'
GRID = "[[grid]]\nheads_q = 4\nseq_len = 64\nhead_dim = 32\n"


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, known=KNOWN) -> Scenario:
    return load_scenario(write(tmp_path, text), known_impls=known)


def error(tmp_path: Path, text: str, known=KNOWN) -> str:
    with pytest.raises(ScenarioError) as info:
        load(tmp_path, text, known)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(str(tmp_path / "s.toml") + ": ") or message.startswith("s.toml: ")
    return message
