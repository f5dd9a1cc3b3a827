"""Scenario axes: a TOML key, the Case field it fills, and the values it accepts. The axes every
workload shares are here; each workload declares its own next to its parameters
(harness/workloads/<name>/). Only checks of plain TOML values: nothing is evaluated."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from harness.case import DEVICES, DTYPES

# Upper bounds of the shape axes: far above any real attention shape, low enough that validating a
# scenario (divisors of heads_q, grid sizes) stays instant and no case id or tensor size overflows.
AXIS_MAX = {"batch": 65536, "heads": 4096, "seq_len": 2**24, "head_dim": 1024, "threads": 4096}


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # TOML true is a Python int; refuse it


def is_positive_int(v: Any) -> bool:
    return is_int(v) and v > 0


def is_number(v: Any) -> bool:
    """A finite TOML number (TOML allows inf and nan; no budget or fraction means either)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def upto(limit: int) -> Callable[[Any], bool]:
    return lambda v: is_positive_int(v) and v <= limit


def pos_upto(limit: int) -> str:
    return f"a positive integer <= {limit}"


@dataclass(frozen=True)
class Axis:
    """One grid axis: its TOML key, the Case field it fills, and the values it accepts.
    `normalize` maps an accepted TOML value to the value stored (e.g. int -> float)."""

    key: str
    field: str
    check: Callable[[Any], bool]
    allowed: str
    normalize: Callable[[Any], Any] = lambda v: v


def choice(key: str, field: str, choices: tuple[str, ...]) -> Axis:
    return Axis(key, field, lambda v: isinstance(v, str) and v in choices, ", ".join(choices))


def boolean(key: str, field: str | None = None) -> Axis:
    return Axis(key, field or key, lambda v: isinstance(v, bool), "true, false")


# The axes of every workload, and their defaults when a grid does not give them.
COMMON_AXES: tuple[Axis, ...] = (
    Axis("batch", "batch", upto(AXIS_MAX["batch"]), pos_upto(AXIS_MAX["batch"])),
    Axis("heads_q", "heads_q", upto(AXIS_MAX["heads"]), pos_upto(AXIS_MAX["heads"])),
    Axis("heads_kv", "heads_kv", upto(AXIS_MAX["heads"]), pos_upto(AXIS_MAX["heads"]) + " dividing heads_q (omit: = heads_q)"),
    Axis("head_dim", "head_dim", upto(AXIS_MAX["head_dim"]), pos_upto(AXIS_MAX["head_dim"])),
    choice("dtype", "dtype", DTYPES),
    choice("device", "device", DEVICES),
    Axis("threads", "threads", upto(AXIS_MAX["threads"]), pos_upto(AXIS_MAX["threads"]) + " (omit: torch's default)"),
)
COMMON_DEFAULTS: dict[str, tuple] = {"batch": (1,), "heads_kv": (None,), "dtype": ("float32",), "device": ("cpu",),
                                     "threads": (None,)}
REQUIRED_AXES = ("heads_q", "head_dim")


# Attention forms shared by the workloads that have them (docs/contracts.md): a softmax scale other
# than 1/sqrt(head_dim) (Gemma's query_pre_attn_scalar) and attention sinks (gpt-oss: a learned
# logit per query head in the softmax denominator; the inputs draw them, seeded).
SCALE_AXIS = Axis("scale", "scale", lambda v: is_number(v) and v >= 0,
                  "a finite number >= 0 (the softmax scale; 0 = 1/sqrt(head_dim))", float)
SINKS_AXIS = boolean("sinks")
