"""Numerical error of an attention output against a float64 reference, and the pass rule.

The reference itself is the workload's (harness/workloads/<name>/): computed from the *same
already-rounded* inputs, so it measures the implementation's arithmetic, not the rounding of the
inputs. This module only measures the difference and judges it.

Pass rule (DESIGN.md, FlashAttention's tests): float32 must reach rel_l2 ≤ 1e-5; float16 and
bfloat16 must have max_abs ≤ 2 × (max_abs of the naive algorithm in the same dtype) + floor.
FlashAttention computes the floor per test as fwd_atol = 2·|(out_ref + 0.3 − 0.3) − out_ref|max:
twice the rounding error of one addition at the output's magnitude. For outputs of magnitude
below ~1.7 (attention outputs with standard-normal V are averages, so nearly always) that is
2 half-ulps of [1, 2): 2·2⁻¹¹ ≈ 1e-3 for float16 and 2·2⁻⁸ ≈ 8e-3 for bfloat16 — the default
floors. The floor keeps a correct kernel from failing where naive happens to be almost exact
(tiny Nk, rows that see one key); rounding_floor() gives FlashAttention's data-dependent value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FLOAT32_MAX_REL_L2 = 1e-5
# Training passes: dq, dk, dv checked whole; float32 relative L2 <= 1e-4 per gradient (10x the
# forward's bound: a gradient sums over a whole sequence; FlashAttention's tests allow the same).
FLOAT32_GRAD_MAX_REL_L2 = 1e-4
GRADS = ("dq", "dk", "dv")
LOW_PRECISION_FACTOR = 2.0
LOW_PRECISION_FLOOR = {"float16": 1e-3, "bfloat16": 8e-3}


@dataclass(frozen=True)
class Errors:
    max_abs: float  # inf when the output has NaN or inf
    rel_l2: float  # ||out − ref||₂ / ||ref||₂; 0/0 → 0, x/0 → inf
    has_nan: bool
    has_inf: bool = False


@dataclass(frozen=True)
class Verdict:
    passed: bool
    rule: str  # which rule decided, e.g. "float32 rel_l2 <= 1e-05"
    metric: str = ""  # "rel_l2" | "max_abs" | "nan"
    value: float = math.nan
    limit: float = math.nan


def errors(out_rows, ref_rows) -> Errors:
    """Error of `out_rows` against `ref_rows` (same shape), computed in float64 on the CPU."""
    import torch

    if tuple(out_rows.shape) != tuple(ref_rows.shape):
        raise ValueError(f"shapes differ: out {tuple(out_rows.shape)} vs ref {tuple(ref_rows.shape)}")
    out = out_rows.detach().to(device="cpu", dtype=torch.float64)
    ref = ref_rows.detach().to(device="cpu", dtype=torch.float64)
    has_nan = bool(torch.isnan(out).any())
    has_inf = bool(torch.isinf(out).any())
    if has_nan or has_inf:
        return Errors(max_abs=math.inf, rel_l2=math.inf, has_nan=has_nan, has_inf=has_inf)
    diff = out - ref
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    num = float(torch.linalg.vector_norm(diff))
    den = float(torch.linalg.vector_norm(ref))
    rel = (0.0 if num == 0.0 else math.inf) if den == 0.0 else num / den
    return Errors(max_abs=max_abs, rel_l2=rel, has_nan=False, has_inf=False)


def rounding_floor(ref_rows, dtype: str) -> float:
    """FlashAttention's data-dependent floor: 2·max|(ref + 0.3 − 0.3) − ref| evaluated in `dtype`
    (ref rounded to dtype first), i.e. twice one addition's rounding at the output's magnitude."""
    import torch

    t = getattr(torch, dtype)
    ref = ref_rows.detach().to(device="cpu", dtype=t)
    err = (ref + 0.3 - 0.3 - ref).abs()
    return 2.0 * float(err.max()) if err.numel() else 0.0


def judge(dtype: str, errors: Errors, naive_errors: Errors | None = None, *, floor: float | None = None,
          rel_l2_limit: float | None = None) -> Verdict:
    """Pass or fail by the module's rule. Low-precision dtypes need `naive_errors` (the naive
    algorithm's error in the same dtype against the same reference); `floor` overrides the
    per-dtype default (e.g. with rounding_floor); `rel_l2_limit` the float32 bound (gradients)."""
    if errors.has_nan or errors.has_inf:
        return Verdict(False, "non-finite output", "nan", math.nan, math.nan)
    if dtype in ("float32", "float64"):
        limit = FLOAT32_MAX_REL_L2 if rel_l2_limit is None else rel_l2_limit
        return Verdict(errors.rel_l2 <= limit, f"{dtype} rel_l2 <= {limit:g}", "rel_l2", errors.rel_l2, limit)
    if dtype not in LOW_PRECISION_FLOOR:
        raise ValueError(f"no accuracy rule for dtype {dtype!r}")
    if naive_errors is None:
        raise ValueError(f"judge({dtype!r}) needs naive_errors: the rule is relative to the naive baseline")
    if naive_errors.has_nan or naive_errors.has_inf:
        raise ValueError("the naive baseline itself is non-finite; it cannot anchor the rule")
    f = LOW_PRECISION_FLOOR[dtype] if floor is None else float(floor)
    limit = LOW_PRECISION_FACTOR * naive_errors.max_abs + f
    return Verdict(
        errors.max_abs <= limit,
        f"{dtype} max_abs <= {LOW_PRECISION_FACTOR:g} * naive max_abs + {f:g}",
        "max_abs",
        errors.max_abs,
        limit,
    )


@dataclass(frozen=True)
class GradCheck:
    metrics: dict  # dq_max_abs_error, dq_rel_l2_error, ... grad_error_passed
    rule: str
    wrong: str  # why it failed, "" when it passed


def check_grads(got, ref: dict, naive: dict | None, dtype: str) -> GradCheck:
    """Judge (dq, dk, dv) against the reference, per gradient."""
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return GradCheck({}, "", f"expected gradients (dq, dk, dv), got {type(got).__name__}")
    metrics, failed, rules = {}, [], []
    for name, g in zip(GRADS, got):
        if g is None or tuple(g.shape) != tuple(ref[name].shape):
            return GradCheck(metrics, "", f"{name} missing or of shape {None if g is None else tuple(g.shape)}")
        e = errors(g, ref[name])
        metrics[f"{name}_max_abs_error"] = e.max_abs
        metrics[f"{name}_rel_l2_error"] = e.rel_l2
        if dtype in ("float32", "float64"):
            v = judge(dtype, e, rel_l2_limit=FLOAT32_GRAD_MAX_REL_L2)
        else:
            scale = max(float(ref[name].abs().max()), 1e-30) if ref[name].numel() else 1.0
            floor = LOW_PRECISION_FLOOR[dtype] * max(scale, 1.0)
            v = judge(dtype, e, errors(naive[name], ref[name]), floor=floor)
        rules.append(f"{name}: {v.rule}")
        if not v.passed:
            failed.append(f"{name} {v.metric} {v.value:.3g} > {v.limit:.3g}")
    metrics["grad_error_passed"] = not failed
    rule = rules[0].split(": ", 1)[1] if rules else ""
    return GradCheck(metrics, rule, ("gradient check failed: " + "; ".join(failed)) if failed else "")
