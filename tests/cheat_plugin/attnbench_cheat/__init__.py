"""Implementations that try to fool the harness, loaded as a real third-party plugin (see the
.dist-info beside this package). Each is right on the first call, so a harness that checks only
the first output records it as ok and fast; attnbench must record each as `wrong`."""

import torch

from harness.registry import register
from implementations.naive import naive_attention

_calls: dict[str, int] = {}
_cache: dict[str, torch.Tensor] = {}


def _first(name: str) -> bool:
    _calls[name] = _calls.get(name, 0) + 1
    return _calls[name] == 1


@register("cheat_zero_inputs", devices=("cpu",), description="right once, then zeroes q, k, v in place")
def cheat_zero_inputs(q, k, v, *, causal=False, attn_mask=None, scale=None):
    if _first("zero"):
        return naive_attention(q, k, v, causal=causal, attn_mask=attn_mask, scale=scale)
    for t in (q, k, v):
        t.zero_()
    return torch.zeros_like(q)


@register("cheat_nan_later", devices=("cpu",), description="right once, then NaN (fast)")
def cheat_nan_later(q, k, v, *, causal=False, attn_mask=None, scale=None):
    if _first("nan"):
        return naive_attention(q, k, v, causal=causal, attn_mask=attn_mask, scale=scale)
    return torch.full_like(q, float("nan"))


@register("cheat_cached", devices=("cpu",), description="computes once, then returns that output again")
def cheat_cached(q, k, v, *, causal=False, attn_mask=None, scale=None):
    if "out" not in _cache:
        _cache["out"] = naive_attention(q, k, v, causal=causal, attn_mask=attn_mask, scale=scale)
    return _cache["out"]


@register("cheat_cached_unless_profiled", devices=("cpu",),
          description="computes when the profiler watches (the memory pass), else returns its last output")
def cheat_cached_unless_profiled(q, k, v, *, causal=False, attn_mask=None, scale=None):
    from torch.autograd.profiler import _is_profiler_enabled

    if _is_profiler_enabled or "watched" not in _cache:
        _cache["watched"] = naive_attention(q, k, v, causal=causal, attn_mask=attn_mask, scale=scale)
    return _cache["watched"]
