"""A demo third-party attention plugin for attnbench's tests; registers on import."""

import math

import torch

from harness.registry import YES, no, register


def _plain_only(case):
    if case.causal or case.mask != "none":
        return no("demo plugin: neither causal nor masks")
    return YES


@register(
    "demo_plugin_attention",
    devices=("cpu",),
    dtypes=("float32",),
    supports=_plain_only,
    description="Demo plugin: plain softmax attention",
)
def demo_attention(q, k, v, *, causal=False, attn_mask=None, scale=None):
    if causal or attn_mask is not None:
        raise ValueError("demo_plugin_attention supports neither causal nor attn_mask")
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, Hq, Nk, D)
    v = v.repeat_interleave(group, dim=1)  # (B, Hq, Nk, D)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)  # (B, Hq, Nq, Nk)
    return torch.matmul(probs, v)  # (B, Hq, Nq, D)
