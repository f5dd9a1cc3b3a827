"""The worker's clean_state: every request starts from the same global torch settings, and
restoring them costs nothing when a request changed none (torch 2.13's
use_deterministic_algorithms imports torch._inductor, 0.8 s, on its first call)."""

from __future__ import annotations

import subprocess
import sys

import torch

from harness.run.worker import clean_state


def _settings():
    return (torch.is_grad_enabled(), torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_default_dtype())


def test_a_request_that_changes_the_settings_leaves_none_of_them_changed():
    before = _settings()
    with clean_state():
        torch.set_grad_enabled(not before[0])
        torch.set_float32_matmul_precision("medium" if before[1] != "medium" else "high")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_default_dtype(torch.float64)
        assert _settings() != before
    assert _settings() == before


def test_deterministic_mode_set_before_the_request_is_kept_with_its_warn_only_flag():
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with clean_state():
            torch.use_deterministic_algorithms(False)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_request_that_changes_nothing_does_not_import_the_compiler():
    code = ("import sys, torch\nfrom harness.run.worker import clean_state\n"
            "with clean_state():\n    pass\nprint('torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
