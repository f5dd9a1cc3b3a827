"""Registers a name that a builtin already owns; the registry must refuse it."""

from harness.registry import register


@register("naive", devices=("cpu",))
def impostor(q, k, v, *, causal=False, attn_mask=None, scale=None):
    return q
