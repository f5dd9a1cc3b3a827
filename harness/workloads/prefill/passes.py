"""The passes a prefill case can time: forward, backward, forward+backward. One table: what each
pass counts (FLOPs as a multiple of the forward's, minimum bytes) and what its timed call does.

FLOPs: backward is 2.5x the forward (five matmuls instead of two), forward+backward 3.5x.
Bytes: the forward reads q, k, v and writes o; the backward reads q, k, v, o and dO and writes
dq, dk, dv; forward+backward is the sum of both. v, o, dO and dv have the value head dim Dv, the
rest Dqk (TensorBytes).
Timed calls: `forward` under no_grad; `forward_backward` builds the graph and differentiates it
with the seeded upstream gradient every call; `backward` builds the forward graph once, outside
the timed region, and each timed call replays the same backward (retain_graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable


@dataclass(frozen=True)
class Pass:
    name: str
    flops_factor: Fraction  # x the forward's FLOPs
    touches: int  # times each of the four tensor kinds is read or written: q (q, dq), out (o, dO),
    # k (k, dk), v (v, dv) -- once each in the forward, twice in the backward
    needs_grad: bool


@dataclass(frozen=True)
class TensorBytes:
    """Bytes of one tensor of each kind: q (B, Hq, Nq, Dqk), out (B, Hq, Nq, Dv), k (B, Hkv, Nk,
    Dqk), v (B, Hkv, Nk, Dv)."""

    q: int
    out: int
    k: int
    v: int


PASSES = {p.name: p for p in (
    Pass("forward", Fraction(1), touches=1, needs_grad=False),
    Pass("backward", Fraction(5, 2), touches=2, needs_grad=True),
    Pass("forward_backward", Fraction(7, 2), touches=3, needs_grad=True),
)}
PASS_KINDS = tuple(PASSES)


def get(pass_kind: str) -> Pass:
    try:
        return PASSES[pass_kind]
    except KeyError:
        raise ValueError(f"unknown pass_kind {pass_kind!r}; allowed: {', '.join(PASSES)}") from None


def flops(forward_flops: int, pass_kind: str) -> int:
    """Exact: the forward's count is even (2 FLOPs per multiply-add)."""
    f = get(pass_kind).flops_factor
    return forward_flops * f.numerator // f.denominator


def min_bytes(t: TensorBytes, pass_kind: str) -> int:
    return get(pass_kind).touches * (t.q + t.out + t.k + t.v)


def timed_call(fn: Callable, q, k, v, kwargs: dict, grad_out, pass_kind: str) -> Callable[[], object]:
    import torch

    if pass_kind == "forward":

        def forward():
            with torch.no_grad():
                return fn(q, k, v, **kwargs)

        return forward
    if pass_kind == "forward_backward":

        def forward_backward():
            out = fn(q, k, v, **kwargs)
            return torch.autograd.grad(out, (q, k, v), grad_out)

        return forward_backward
    with torch.enable_grad():
        out = fn(q, k, v, **kwargs)  # the graph, built once outside the timed region

    def backward():
        return torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)

    return backward
