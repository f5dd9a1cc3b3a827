"""Yes, or no with the reason why not: the answer of every "can this run here?" question (an
implementation on a device, a workload's rules for an implementation's path, a plugin's hook).
Re-exported by harness.registry and attnbench (`Support`, `YES`, `no`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Support:
    """Yes, or no with the reason why not. Truthy when supported."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True)


def no(reason: str) -> Support:
    return Support(False, reason)
