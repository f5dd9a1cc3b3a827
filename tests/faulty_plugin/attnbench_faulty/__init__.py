"""Deliberately faulty attention implementations, loaded as a real third-party plugin through the
`attnbench.implementations` entry point (see the .dist-info beside this package). The sweep must
record each failure as its own case and carry on."""

import os
import time

import torch

from harness.registry import register
from implementations.naive import naive_attention


@register("faulty_raise", devices=("cpu",), description="raises RuntimeError")
def faulty_raise(q, k, v, *, causal=False, attn_mask=None, scale=None):
    raise RuntimeError("deliberate failure in faulty_raise")


@register("faulty_abort", devices=("cpu",), description="calls os.abort() (SIGABRT)")
def faulty_abort(q, k, v, *, causal=False, attn_mask=None, scale=None):
    print("faulty_abort: about to abort", flush=True)
    os.abort()


@register("faulty_hang", devices=("cpu",), description="sleeps forever")
def faulty_hang(q, k, v, *, causal=False, attn_mask=None, scale=None):
    time.sleep(3600)


@register("faulty_huge", devices=("cpu",), description="allocates far past the memory limit")
def faulty_huge(q, k, v, *, causal=False, attn_mask=None, scale=None):
    big = torch.empty(1 << 42, dtype=torch.uint8)  # 4 TiB
    big.fill_(1)
    return q


@register("faulty_nan", devices=("cpu",), description="returns NaN")
def faulty_nan(q, k, v, *, causal=False, attn_mask=None, scale=None):
    return torch.full_like(q, float("nan"))


@register("faulty_wrong", devices=("cpu",), description="returns attention with a wrong scale")
def faulty_wrong(q, k, v, *, causal=False, attn_mask=None, scale=None):
    return naive_attention(q, k, v, causal=causal, attn_mask=attn_mask, scale=0.5)
