"""attnbench harness: scenarios -> cases -> isolated measurements -> results -> reports.

Imports are lazy so `import harness` stays cheap (no torch, no CUDA, no plugin scan); the
workload units are plain Python and load with the package.
"""

from __future__ import annotations

import harness.workloads  # noqa: F401  registers each workload's case parameters (harness.case)


def load_results(path):
    """Load a run directory (or its results.jsonl) into a pandas DataFrame, one row per case."""
    from harness.results.store import load_results as _load

    return _load(path)


__all__ = ["load_results"]
