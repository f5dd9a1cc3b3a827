"""Can Triton run on a device here? Shared by the Triton implementations (triton_flash,
triton_decode). triton itself is not imported: only whether it is installed is checked."""

from __future__ import annotations

import importlib.util
import os

from harness.registry import YES, Support, no


def triton_available(device: str) -> Support:
    if importlib.util.find_spec("triton") is None:
        return no("triton is not installed (pip install 'attnbench[triton]')")
    kind = str(device).split(":")[0]
    if kind == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return no("Triton runs on the CPU only in its interpreter: set TRITON_INTERPRET=1")
    return YES
