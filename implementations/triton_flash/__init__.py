"""FlashAttention-2 forward as a Triton kernel (Dao 2023, Algorithm 1; Tillet et al. 2019).

One program per (query block, batch·head): it keeps its query block, a running max m, running
sum l and a float32 accumulator on chip, streams the key/value blocks, and writes
acc / l once. Causal attention is bottom-right aligned and stops at the last key block the query
block can see; a boolean attn_mask is read through its strides (0 for broadcast dimensions).
Rows that see no key give zeros. Under autograd the forward also stores each row's log-sum-exp
and triton_flash/backward.py supplies the FlashAttention-2 backward kernels.
Plain pointer arithmetic (no block pointers) and one autotune
config keep the kernel portable across Triton versions and backends.

Where it runs: CUDA with triton installed; on the CPU only under TRITON_INTERPRET=1, Triton's
NumPy interpreter (correct but very slow -- for tests, not timings). triton is imported only
when the kernel is first needed, never at module import.
"""

from __future__ import annotations

import torch

from harness.registry import YES, Support, no, register
from implementations._shared.contract import check_args
from implementations._shared.variants import check_sinks
from implementations._shared.triton_support import triton_available
from implementations.triton_flash.backward import attention_with_grad
from implementations.triton_flash.forward import BLOCK_M, BLOCK_N, NUM_STAGES, NUM_WARPS, launch_forward


def _supports(case) -> Support:
    for name, d in (("head_dim", case.head_dim), ("head_dim_v", case.head_dim_v)):
        if d > 256:
            return no(f"{name} {d} > 256 does not fit the kernel's on-chip tiles")
    for name, d in (("head_dim", case.head_dim), ("head_dim_v", case.head_dim_v)):
        if case.pass_kind != "forward" and d > 128:
            return no(f"{name} {d} > 128: the backward kernels' tiles (K, V, dK, dV on chip) do not fit")
    return YES


def _memory_model(case) -> int:
    """Bytes above the inputs: the tiles live in registers / shared memory, masks are read as
    views. Forward: the output. Backward (triton_flash/backward.py): D = rowsum(dO∘O) in float32 and
    dq, dk, dv; the forward of a training step also keeps the float32 log-sum-exp per row."""
    e = case.element_bytes
    out_bytes = e * case.batch * case.heads_q * case.seq_len_q * (case.head_dim_v or case.head_dim)
    if case.pass_kind == "forward":
        return out_bytes
    rows = 4 * case.batch * case.heads_q * case.seq_len_q  # one float32 per query row
    dq_bytes = e * case.batch * case.heads_q * case.seq_len_q * case.head_dim
    dkv_bytes = e * case.batch * case.heads_kv * case.seq_len_kv * (case.head_dim + (case.head_dim_v or case.head_dim))
    bwd = rows + dq_bytes + dkv_bytes  # D; dq, dk, dv
    if case.pass_kind == "backward":
        return bwd
    return out_bytes + rows + bwd  # forward_backward: out and lse stay alive through the backward


@register(
    "triton_flash",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    available=triton_available,
    supports=_supports,
    memory_model=_memory_model,
    description="FlashAttention-2 forward and backward as Triton kernels (CUDA; CPU only via TRITON_INTERPRET=1)",
    params={"block_m": BLOCK_M, "block_n": BLOCK_N, "num_warps": NUM_WARPS, "num_stages": NUM_STAGES,
            "variants": ("sinks",)},
)
def triton_flash_attention(
    q, k, v, *, causal=False, attn_mask=None, scale=None, block_m: int | None = None, block_n: int | None = None,
    sinks=None,
):
    """block_m / block_n override the single autotune config (BLOCK_M x BLOCK_N). Triton needs
    power-of-two tile sides (tl.arange) of at least 16 (tl.dot), so a requested size is rounded
    up to the next such value: block_m=7 runs 16-row tiles. v may have its own head dim (its tiles,
    forward and backward, are Dv wide); sinks (forward only) join each row's denominator at the end."""
    dims = check_args(q, k, v, attn_mask, scale)
    check_sinks(sinks, dims.heads_q)
    if any(b is not None and b < 1 for b in (block_m, block_n)):
        raise ValueError(f"block_m and block_n must be positive, got {block_m}, {block_n}")
    support = triton_available(str(q.device))
    if not support:
        raise RuntimeError(support.reason)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        if sinks is not None:
            raise NotImplementedError("triton_flash implements sinks in the forward pass only")
        return attention_with_grad(q, k, v, causal, attn_mask, scale, block_m, block_n)
    return launch_forward(q, k, v, causal, attn_mask, scale, block_m, block_n, sinks=sinks)
