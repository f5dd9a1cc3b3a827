"""attnbench: benchmark and profile attention implementations.

The public surface: `register`, `register_decode`, `register_path`, `get`, `names` (the catalogue) and `load_results` (a run as a
pandas DataFrame). Importing this is cheap: no torch, no CUDA, no plugin scan until asked.
"""

from __future__ import annotations

from harness import load_results
from harness.registry import Support, get, names, no, register, register_decode, register_path

__version__ = "0.1.0"
__all__ = ["Support", "get", "load_results", "names", "no", "register", "register_decode", "register_path"]
