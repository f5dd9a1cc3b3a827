"""Gradients for the training passes: a seeded upstream gradient, float64 reference gradients of q,
k, v and the naive same-dtype gradients (the low-precision baseline). The pass rule that judges an
implementation's gradients against them is harness.measure.accuracy.check_grads.

dq, dk, dv are checked whole (dk and dv sum over every query row, so no row subset suffices):
the float64 reference runs in query-row chunks with autograd, accumulating dk and dv, from the
same already-rounded inputs and the same upstream gradient the implementation gets. v (and so out,
dO, dv) may have its own head dim Dv; `scale` defaults to 1/√Dqk.

Pass rule: float32 relative L2 ≤ 1e-4 per gradient. That is 10× the forward's bound because a
gradient sums over a whole sequence (dk_j = Σ_i dS_ij q_i, dv_j = Σ_i P_ij dO_i) in float32, and
FlashAttention's own tests allow the backward a larger tolerance than the forward for the same
reason. float16/bfloat16: max abs ≤ 2× the naive same-dtype error plus a floor scaled to the
gradient's magnitude (the output's floor × max |reference gradient|).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from harness.case import Case

if TYPE_CHECKING:
    import torch

CHUNK_BYTES = 64 * 2**20


def upstream_grad(case: Case, seed: int, like: "torch.Tensor", width: int | None = None) -> "torch.Tensor":
    """A fixed random dO (seeded from the case's shape and seed, never ones), shaped like the
    output: `like` (q) with its last dim `width` (Dv; default: like's)."""
    import torch

    from harness.workloads.prefill.inputs import input_seed

    gen = torch.Generator(device="cpu").manual_seed(input_seed(case, seed) ^ 0x5EED)
    shape = (*like.shape[:-1], like.shape[-1] if width is None else width)
    g = torch.randn(shape, generator=gen, dtype=torch.float32)  # (B, Hq, Nq, Dv)
    return g.to(device=like.device, dtype=like.dtype)


def _visible(Nq: int, Nk: int, rows, causal: bool, mask):
    """Boolean (b|1, h|1, R, Nk) visibility of absolute query `rows`, or None."""
    import torch

    vis = None
    if causal:
        j = torch.arange(Nk).unsqueeze(0)  # (1, Nk)
        vis = (j <= rows.unsqueeze(1) + (Nk - Nq)).view(1, 1, -1, Nk)  # (1, 1, R, Nk)
    if mask is not None:
        m = mask.detach().cpu()
        while m.dim() < 4:
            m = m.unsqueeze(0)
        m = m[:, :, rows] if m.shape[2] != 1 else m  # (b, h, R|1, Nk)
        vis = m if vis is None else (vis & m)
    return vis


def _attend(q, k, v, rows, Nq: int, causal: bool, mask, scale: float, acc_dtype):
    """Textbook attention of query rows (q is (B, Hq, R, D)) with GQA by expanding k/v; rows
    that see no key give 0 with a zero (never NaN) gradient."""
    import torch

    G = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(G, dim=1)  # (B, Hq, Nk, D)
    vv = v.repeat_interleave(G, dim=1)  # (B, Hq, Nk, Dv)
    s = torch.matmul(q, kk.transpose(-1, -2)).to(acc_dtype) * scale  # (B, Hq, R, Nk)
    vis = _visible(Nq, k.shape[2], rows, causal, mask)
    if vis is not None:
        vis = vis.to(s.device)
        s = s.masked_fill(~vis, float("-inf"))
    m = s.amax(dim=-1, keepdim=True).detach()  # (B, Hq, R, 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)  # (B, Hq, R, Nk); exactly 0 where hidden
    denom = p.sum(dim=-1, keepdim=True)  # (B, Hq, R, 1)
    p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.matmul(p.to(v.dtype), vv)  # (B, Hq, R, Dv)


def _grads(q, k, v, grad_out, causal, mask, scale, dtype, acc_dtype) -> dict[str, "torch.Tensor"]:
    import torch

    B, Hq, Nq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q_ = q.detach().to(dtype).requires_grad_(True)
    k_ = k.detach().to(dtype).requires_grad_(True)
    v_ = v.detach().to(dtype).requires_grad_(True)
    g = grad_out.detach().to(dtype)
    step = max(1, CHUNK_BYTES // max(B * Hq * k.shape[2] * 8 * 3, 1))
    dq = torch.zeros_like(q_)
    for start in range(0, Nq, step):
        rows = torch.arange(start, min(Nq, start + step))  # (R,)
        qc = q_[:, :, start : start + step]  # (B, Hq, R, D)
        out = _attend(qc, k_, v_, rows, Nq, causal, mask, scale, acc_dtype)
        gq, gk, gv = torch.autograd.grad(out, (qc, k_, v_), g[:, :, start : start + step])
        dq[:, :, start : start + step] = gq
        k_.grad = gk if k_.grad is None else k_.grad + gk
        v_.grad = gv if v_.grad is None else v_.grad + gv
    return {"dq": dq, "dk": k_.grad, "dv": v_.grad}


def reference_grads(q, k, v, grad_out, *, causal: bool = False, attn_mask=None,
                    scale: float | None = None) -> dict[str, "torch.Tensor"]:
    """float64 dq, dk, dv on the CPU."""
    import torch

    to = dict(device="cpu")
    return _grads(q.detach().to(**to), k.detach().to(**to), v.detach().to(**to), grad_out.detach().to(**to),
                  causal, attn_mask, scale, torch.float64, torch.float64)


def naive_grads(q, k, v, grad_out, *, causal: bool = False, attn_mask=None,
                scale: float | None = None) -> dict[str, "torch.Tensor"]:
    """The textbook computation in the inputs' dtype (scores and softmax in float32): the
    low-precision baseline."""
    import torch

    return _grads(q, k, v, grad_out, causal, attn_mask, scale, q.dtype, torch.float32)
