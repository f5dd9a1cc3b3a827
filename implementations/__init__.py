"""Built-in attention implementations. Each public module or package registers one algorithm with
harness.registry (a package's __init__ does the registering; its other modules, and the helpers
shared by several implementations in _shared/, are never imported by the registry itself).

Every function computes fn(q, k, v, *, causal=False, attn_mask=None, scale=None) -> out on
(B, H, N, D) tensors; see implementations/_shared/contract.py for the exact contract.
"""
