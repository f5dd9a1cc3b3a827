"""torch.compile of textbook attention: what the compiler makes of the code a user would write.

The function below is the naive algorithm as one writes it without thinking about kernels: repeat
k / v for GQA, one matmul for the scores, the variants as dense tensors, a boolean mask with −inf,
softmax (the sinks as one more column of it, as gpt-oss's reference code does), one matmul with V
(which may have its own head dim). Compiled once (module level, dynamic shapes) and reused across cases:
Dynamo recompiles only for what its guards see change (dtype, device, which branches run).
Compile time is kept out of the latency (implementations/_shared/compile_support.py;
metrics["compile_s"]); a shape whose dynamic-shape compile fails in Inductor is compiled statically,
with a note in the record (compile_support.ShapeCompiled).
"""

from __future__ import annotations

import torch

from harness.registry import Support, no, register
from implementations._shared import compile_support
from implementations._shared import variants as _variants
from implementations._shared.contract import check_args, default_scale, mask_4d

CLOCK = compile_support.CompileClock()
_COMPILED = None


def textbook_attention(q, k, v, scale: float, causal: bool, attn_mask, window: int, softcap: float, slopes,
                       doc_ids, sinks=None):
    """softmax(Q·Kᵀ·scale + bias) · V with every mask spelled out densely; sinks (Hq,) as an extra
    softmax column."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    nq, nk = q.shape[2], k.shape[2]
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (B, Hq, Nq, Nk)
    i = torch.arange(nq, device=q.device).view(-1, 1) + (nk - nq)  # (Nq, 1): bottom-right aligned
    j = torch.arange(nk, device=q.device).view(1, -1)  # (1, Nk)
    if slopes is not None:
        scores = scores - slopes.view(1, -1, 1, 1) * (i - j)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    visible = torch.ones(nq, nk, dtype=torch.bool, device=q.device)
    if causal:
        visible = visible & (j <= i)
    if window > 0:
        visible = visible & (j > i - window)
    if doc_ids is not None:
        visible = visible & (doc_ids.view(-1, 1) == doc_ids.view(1, -1))
    if attn_mask is not None:
        visible = visible & attn_mask
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        sink = sinks.float().view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :nk]
    else:
        probs = torch.softmax(scores, dim=-1)
    probs = torch.where(visible.any(dim=-1, keepdim=True), probs, 0.0)  # no visible key: zeros, not NaN
    return torch.matmul(probs.to(v.dtype), v)


def _available(device: str) -> Support:
    return compile_support.compiler_available(str(device).split(":")[0])


def _supports(case) -> Support:
    if case.pass_kind != "forward":
        return no("compiled_naive is benchmarked in the forward pass only here")
    return Support(True)


def _memory_model(case) -> int:
    """About naive's: the float32 scores and probabilities (Inductor fuses some of the rest)."""
    pairs = case.batch * case.heads_q * case.seq_len_q * case.seq_len_kv
    out = case.element_bytes * case.batch * case.heads_q * case.seq_len_q * (case.head_dim_v or case.head_dim)
    return 2 * 4 * pairs + out


@register(
    "compiled_naive",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    available=_available,
    supports=_supports,
    memory_model=_memory_model,
    description="torch.compile of the textbook attention a user would write (dense masks, softmax)",
    params={"variants": _variants.ALL, "compiled": True, "report_kernels": True},
)
def compiled_naive_attention(q, k, v, *, causal=False, attn_mask=None, scale=None, window=0, softcap=0.0,
                             alibi=False, doc_ids=None, sinks=None):
    global _COMPILED
    dims = check_args(q, k, v, attn_mask, scale)
    var = _variants.variants(dims, window, softcap, alibi, doc_ids, sinks)
    causal = causal or (var is not None and var.masks)
    if _COMPILED is None:
        compile_support.allow_recompiles()
        _COMPILED = compile_support.ShapeCompiled(textbook_attention, CLOCK, name="textbook_attention")
    slopes = var.slopes.to(q.device, torch.float32) if var is not None and var.slopes is not None else None
    return _COMPILED(q, k, v, default_scale(dims.head_dim, scale), causal, mask_4d(attn_mask), int(window),
                     float(softcap), slopes, doc_ids, sinks)


compiled_naive_attention.compile_seconds = CLOCK  # read by harness/measure/compile_time.py
compiled_naive_attention.compile_notes = CLOCK.notes  # static fallbacks, ditto
