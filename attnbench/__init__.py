"""attnbench: benchmark and profile attention implementations.

The public surface, re-exported lazily: `register`, `get`, `names` (the catalogue) and
`load_results` (a run as a pandas DataFrame).
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("register", "get", "names", "Support", "no"):
        from harness import registry

        return getattr(registry, name)
    if name == "load_results":
        from harness import load_results

        return load_results
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")
