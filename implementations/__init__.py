"""Built-in attention implementations. Each module registers one algorithm with harness.registry.

Every function computes fn(q, k, v, *, causal=False, attn_mask=None, scale=None) -> out on
(B, H, N, D) tensors; see implementations/_common.py for the exact contract.
"""
