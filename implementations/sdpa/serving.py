"""sdpa's serving path (docs/contracts.md, "Serving"): what torch offers a packed batch -- one SDPA
call on the batch padded to its longest sequence, with a mask (implementations/_shared/padded_varlen.py)."""

from __future__ import annotations

import torch.nn.functional as F

from harness.registry import register_path
from implementations._shared.padded_varlen import padded_call, padded_memory_model, padded_shape
from implementations.sdpa import _fused_model


def _sdpa_padded(qp, kp, vp, mask, scale, group: int):
    gqa = group > 1
    if gqa and qp.device.type != "cpu":  # CUDA's masked (efficient) kernel takes no enable_gqa: repeat k, v
        kp, vp, gqa = kp.repeat_interleave(group, dim=1), vp.repeat_interleave(group, dim=1), False
    return F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scale, enable_gqa=gqa)


def _sdpa_serving_memory_model(case) -> int:
    """The kernel on the padded shape (its output counted by padded_memory_model) plus the mask as
    an additive float copy, and k, v repeated per query head where enable_gqa is not used."""
    e, (mq, mk) = case.element_bytes, padded_shape(case)
    S, Hq, D = case.batch, case.heads_q, case.head_dim
    call = _fused_model("flash")(case.replace(workload="prefill", batch=S, seq_len_q=mq, seq_len_kv=mk))
    call += e * S * mq * mk - e * S * Hq * mq * D
    if case.device != "cpu" and Hq != case.heads_kv:
        call += 2 * e * S * Hq * mk * D
    return padded_memory_model(case, call)


@register_path("serving", "sdpa", memory_model=_sdpa_serving_memory_model)
def sdpa_serving(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=None):
    return padded_call(_sdpa_padded, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
