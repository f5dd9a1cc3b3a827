"""FlashAttention-2 style tiled attention in plain PyTorch (Dao 2023, "FlashAttention-2: Faster
Attention with Better Parallelism and Work Partitioning", Algorithm 1 and section 3.2).

Outer loop over query blocks, inner loop over key blocks, online softmax: a running row maximum m,
a running row sum l and an unnormalised accumulator acc, divided by l once per query block at the
end (FA2 section 3.1.1). Key blocks that causality hides from a whole query block are never
visited, and only blocks straddling the diagonal are masked. Rows that see no key give zeros.
With grad enabled and an input requiring grad, the call goes through backward.FlashFunction
(FA2 Algorithm 2), whose forward is this one plus the row log-sum-exp; otherwise nothing extra.

Work partitioning (FA2 section 3.2): query blocks are independent, so on the CPU they are handed
to `torch.get_num_threads()` worker threads that each run single-threaded torch ops -- as FA2
spreads them over thread blocks and torch's CPU SDPA kernel over cores. Splitting each small tile
op over OpenMP threads instead costs a barrier per op; on a shared machine a descheduled thread
stalls every barrier, which measured 3-5x slower than SDPA under load. All buffers are allocated
by the calling thread (the CPU profiler sees that thread's allocations, so measured peaks are
complete); the tile loop allocates nothing, and the calling thread runs no tensor op (one big
enough to start an OpenMP region leaves its helper spinning against the workers). Nothing of a
call outlives it (the pool drops finished jobs; only small constants are cached).

CPU speed notes (B=1, H=8, D=64, fp32, N=4096, 2 cores; see BLOCK_Q): the two batched matmuls are
~75% of the time and exp2 most of the rest. scale·log2(e) rides on the QK matmul's alpha and the
softmax uses exp2 (about 2x faster than exp here); conditional rescaling (_sweep_keys) removes
the max and subtract passes and all rescaling from every key block after the first.
"""

from __future__ import annotations

import torch

from harness.registry import Support, no, register
from implementations._shared import variants as _variants
from implementations._shared.contract import check_args
from implementations.flash.backward import FlashFunction, backward_memory_model
from implementations.flash.forward import (
    BLOCK_K,
    BLOCK_Q,
    BLOCK_Q_CAUSAL,
    flash_forward,
    forward_memory_model,
)


def _memory_model(case, block_q: int | None = None, block_k: int = BLOCK_K) -> int:
    if block_q is None:
        block_q = BLOCK_Q_CAUSAL if case.causal else BLOCK_Q
    if case.pass_kind != "forward":  # + saved lse2, dq/dk/dv, the backward's O(N) buffers
        return backward_memory_model(case, block_q, block_k)
    return forward_memory_model(case, block_q, block_k)


def _supports(case) -> Support:
    if case.pass_kind not in ("forward", "backward", "forward_backward"):
        return no(f"flash has no pass kind {case.pass_kind!r}")
    return _variants.forward_only(case, "flash")  # backward: FA2 Algorithm 2 in flash/backward.py


@register(
    "flash",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model,
    supports=_supports,
    description="FlashAttention-2 tiling in PyTorch: online softmax over key blocks, one final normalisation",
    params={"block_q": BLOCK_Q, "block_q_causal": BLOCK_Q_CAUSAL, "block_k": BLOCK_K, "variants": _variants.ALL},
)
def flash_attention(
    q, k, v, *, causal=False, attn_mask=None, scale=None, block_q: int | None = None, block_k: int = BLOCK_K,
    window=0, softcap=0.0, alibi=False, doc_ids=None, sinks=None,
):
    """block_q=None: BLOCK_Q, or BLOCK_Q_CAUSAL when causal. Variants
    (implementations/_shared/variants.py): key blocks a window or the documents hide from a whole
    query block are never visited; sinks join each row's running sum once, at the end. v may have
    its own head dim Dv: the P·V side is Dv wide throughout (no padding to the larger dim)."""
    dims = check_args(q, k, v, attn_mask, scale)
    var = _variants.variants(dims, window, softcap, alibi, doc_ids, sinks)  # None: plain attention
    causal = causal or (var is not None and var.masks)  # a window and documents are causal
    if block_q is None:
        block_q = BLOCK_Q_CAUSAL if causal else BLOCK_Q
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q and block_k must be positive, got {block_q}, {block_k}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        if var is not None:
            raise NotImplementedError("flash implements the attention variants in the forward pass only")
        # FA2 backward (flash/backward.py): saves q, k, v, out and the row log-sum-exp only.
        return FlashFunction.apply(q, k, v, dims, causal, attn_mask, scale, block_q, block_k)
    return flash_forward(q, k, v, dims, causal, attn_mask, scale, block_q, block_k, var=var)[0]


from implementations.flash import varlen as _varlen  # noqa: E402,F401  (its serving path; after "flash" is registered)
