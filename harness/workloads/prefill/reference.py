"""The prefill workload's float64 reference: exact-as-possible attention on a set of query rows,
and the same rows computed the way `naive` does in the inputs' dtype (the low-precision baseline).

Every query row is checked while the float64 reference is affordable (B·Hq·Nq·Nk ≤ 2^25 pairs);
above that, 512 evenly spaced rows including the first and the last (rows_for): attention rows are
independent, so a row's reference needs only that row of q and all of k, v. Variants (window,
softcap, ALiBi, documents) as defined in harness/workloads/visibility.py. v may have its own head
dim Dv (the output then has it too); `scale` defaults to 1/√Dqk. Sinks (one logit per query head)
join each row's softmax denominator with no value: p_ij = exp(s_ij − m) / (exp(sink_h − m) +
Σ_j exp(s_ij − m)), m = max(sink_h, max_j s_ij); a row that sees no key is 0 with or without one.
"""

from __future__ import annotations

import math

CHUNK_BYTES = 64 * 2**20  # bound on the score block held while computing reference rows


ALL_ROWS_MAX_PAIRS = 2**25  # B·Hq·Nq·Nk up to which every row is checked (~1 s of float64 on 2 cores)
SAMPLED_ROWS = 512


def rows_for(batch: int, heads_q: int, seq_len_q: int, seq_len_kv: int):
    """The rows a case's output is checked on: all of them while the float64 reference is
    affordable (B·Hq·Nq·Nk ≤ ALL_ROWS_MAX_PAIRS), else SAMPLED_ROWS evenly spaced rows including
    the first and the last (select_rows). The record says how many (error_rows)."""
    if batch * heads_q * seq_len_q * seq_len_kv <= ALL_ROWS_MAX_PAIRS:
        return select_rows(seq_len_q, max_rows=max(seq_len_q, 2))
    return select_rows(seq_len_q, max_rows=SAMPLED_ROWS)


def select_rows(seq_len_q: int, max_rows: int = SAMPLED_ROWS):
    """Query row indices to check: all rows when Nq ≤ max_rows, else max_rows evenly spaced
    rows including the first and the last (floor(i·(Nq−1)/(max_rows−1)), strictly increasing)."""
    import torch

    if seq_len_q <= max_rows:
        return torch.arange(seq_len_q, dtype=torch.long)
    if max_rows < 2:
        raise ValueError(f"max_rows must be >= 2 to include the first and last rows, got {max_rows}")
    i = torch.arange(max_rows, dtype=torch.long)
    return i * (seq_len_q - 1) // (max_rows - 1)  # (max_rows,)


def _visible(rows, seq_len_q: int, seq_len_kv: int, causal: bool, attn_mask, kv_heads: int, group: int,
             window: int = 0, doc_ids=None):
    """Boolean visibility broadcastable to (B, Hkv, G, R, Nk) for absolute query `rows`, or None.
    A window or documents imply causal (harness/workloads/visibility.py)."""
    import torch

    visible = None
    j = torch.arange(seq_len_kv, device=rows.device).unsqueeze(0)  # (1, Nk)
    t = rows.unsqueeze(1) + (seq_len_kv - seq_len_q)  # (R, 1): i + offset
    if causal or window or doc_ids is not None:
        visible = j <= t  # (R, Nk)
    if window:
        visible = visible & (j > t - window)
    if doc_ids is not None:
        d = doc_ids.to(rows.device)
        visible = visible & (d[rows].unsqueeze(1) == d.unsqueeze(0))  # same document (Nq == Nk)
    if attn_mask is not None:
        m = attn_mask.to(rows.device)
        while m.dim() < 4:
            m = m.unsqueeze(0)  # (b, h, nq, nk) with size-1 dims kept for broadcasting
        if m.shape[2] != 1:
            m = m[:, :, rows]  # (b, h, R, nk): the mask rows of these absolute query rows
        b, h, r, nk = m.shape
        if h == 1:
            m = m.reshape(b, 1, 1, r, nk)  # (b, 1, 1, r, nk)
        else:
            m = m.reshape(b, kv_heads, group, r, nk)  # query head h = kv head h // G, slot h % G
        visible = m if visible is None else (m & visible)
    return visible


def _score_mod(s, rows, seq_len_q: int, seq_len_kv: int, softcap: float, alibi: bool):
    """ALiBi bias, then the soft cap, on scaled scores (B, Hkv, G, R, Nk); in place where possible."""
    import torch

    if alibi:
        from harness.workloads.visibility import alibi_slopes

        Hkv, G = s.shape[1], s.shape[2]
        m = torch.tensor(alibi_slopes(Hkv * G), dtype=s.dtype, device=s.device).view(1, Hkv, G, 1, 1)
        j = torch.arange(seq_len_kv, device=s.device, dtype=s.dtype)  # (Nk,)
        dist = rows.to(s.device, s.dtype).unsqueeze(1) + (seq_len_kv - seq_len_q) - j  # (R, Nk)
        s = s - m * dist  # (B, Hkv, G, R, Nk)
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    return s


def _check(q, k, v, rows):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D (B, H, N, D)")
    if k.shape[-1] != q.shape[-1] or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k must be shaped like q's head dim and v like k but for its own head dim, got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"heads_q ({q.shape[1]}) must be a multiple of heads_kv ({k.shape[1]})")
    if rows.dim() != 1:
        raise ValueError("rows must be a 1-D index tensor")


def _chunk_rows(q, k) -> int:
    """Rows per chunk so one float64 score block (B, Hq, rows, Nk) stays under CHUNK_BYTES."""
    per_row = q.shape[0] * q.shape[1] * k.shape[2] * 8
    return max(1, CHUNK_BYTES // max(per_row, 1))


def _sink_logits(sinks, Hkv: int, G: int, dtype, device):
    """(Hq,) sinks as (1, Hkv, G, 1, 1) logits of the scores' layout, or None."""
    if sinks is None:
        return None
    return sinks.detach().to(device=device, dtype=dtype).view(1, Hkv, G, 1, 1)


def reference_rows(q, k, v, rows, *, causal: bool = False, attn_mask=None, scale: float | None = None,
                   window: int = 0, softcap: float = 0.0, alibi: bool = False, doc_ids=None, sinks=None):
    """Exact-as-possible attention for query `rows`, float64 on CPU: (B, Hq, R, Dv).

    Bottom-right causal with absolute row indices (query i sees key j ≤ i + Nk − Nq); GQA (query
    head h uses kv head h // G); masks broadcast, with the mask's query dim indexed by absolute
    row when it is not 1; a row with no visible key is zeros. Computed in row chunks. Variants
    (window, softcap, alibi, doc_ids) as defined in harness/workloads/visibility.py.
    """
    import torch

    rows = torch.as_tensor(rows, dtype=torch.long).cpu()
    _check(q, k, v, rows)
    B, Hq, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    # Only the checked rows of q are converted; k and v are needed whole (B·Hkv·Nk·D·8 bytes each).
    q64 = q.detach()[:, :, rows.to(q.device)].to(device="cpu", dtype=torch.float64)  # (B, Hq, R, D)
    k64 = k.detach().to(device="cpu", dtype=torch.float64)  # (B, Hkv, Nk, D)
    v64 = v.detach().to(device="cpu", dtype=torch.float64)  # (B, Hkv, Nk, Dv)
    sink = _sink_logits(sinks, Hkv, G, torch.float64, "cpu")  # (1, Hkv, G, 1, 1) or None
    mask = None if attn_mask is None else attn_mask.detach().cpu()
    outs = []
    step = _chunk_rows(q, k)
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]  # (R,)
        R = r.numel()
        # GQA: the G query heads of one kv head stacked along rows, so k/v are never copied G times.
        qc = q64[:, :, start : start + step].reshape(B, Hkv, G * R, D)  # (B, Hkv, G*R, D)
        s = torch.matmul(qc, k64.transpose(-1, -2)).view(B, Hkv, G, R, Nk) * scale  # (B, Hkv, G, R, Nk)
        s = _score_mod(s, r, Nq, Nk, softcap, alibi)
        vis = _visible(r, Nq, Nk, causal, mask, Hkv, G, window, doc_ids)
        if vis is not None:
            s = s.masked_fill(~vis, float("-inf"))
        m = s.amax(dim=-1, keepdim=True)  # (B, Hkv, G, R, 1)
        if sink is not None:
            m = torch.maximum(m, sink)  # the sink is one more logit of the row (finite)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all-hidden rows: exp → 0
        p = torch.exp(s - m)  # (B, Hkv, G, R, Nk)
        denom = p.sum(dim=-1, keepdim=True)  # (B, Hkv, G, R, 1)
        if sink is not None:
            denom = denom + torch.exp(sink - m)  # in the denominator only: it has no value
        o = torch.matmul(p.view(B, Hkv, G * R, Nk), v64).view(B, Hkv, G, R, Dv)  # (B, Hkv, G, R, Dv)
        o = torch.where(denom > 0, o / torch.where(denom > 0, denom, torch.ones_like(denom)), 0.0)
        outs.append(o.reshape(B, Hq, R, Dv))
    if not outs:
        return torch.zeros((B, Hq, 0, Dv), dtype=torch.float64)
    return torch.cat(outs, dim=2)  # (B, Hq, R, Dv)


def naive_rows(q, k, v, rows, *, causal: bool = False, attn_mask=None, scale: float | None = None,
               window: int = 0, softcap: float = 0.0, alibi: bool = False, doc_ids=None, sinks=None):
    """The same rows computed the way implementations/naive/ does, in the inputs' dtype and on
    their device: Q·Kᵀ in the input dtype, scale/mask/softmax in float32, probabilities cast to
    the input dtype, P·V in the input dtype (sinks: one more softmax column, dropped after). Its
    error is the low-precision baseline for judge(). Returns (B, Hq, R, Dv) in the input dtype on
    the input device."""
    import torch

    rows = torch.as_tensor(rows, dtype=torch.long)
    _check(q, k, v, rows)
    B, Hq, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    rows = rows.to(q.device)
    kk, vv = k.detach(), v.detach()  # (B, Hkv, Nk, D), (B, Hkv, Nk, Dv)
    sink = _sink_logits(sinks, Hkv, G, acc, q.device)  # (1, Hkv, G, 1, 1) or None
    mask = None if attn_mask is None else attn_mask.detach()
    outs = []
    step = _chunk_rows(q, k)
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]  # (R,)
        R = r.numel()
        qc = q.detach()[:, :, r].reshape(B, Hkv, G * R, D)  # (B, Hkv, G*R, D), as naive groups heads
        s = torch.matmul(qc, kk.transpose(-1, -2)).to(acc).view(B, Hkv, G, R, Nk)  # (B, Hkv, G, R, Nk)
        s.mul_(scale)
        s = _score_mod(s, r, Nq, Nk, softcap, alibi)
        vis = _visible(r, Nq, Nk, causal, mask, Hkv, G, window, doc_ids)
        if vis is not None:
            s.masked_fill_(~vis, float("-inf"))
        if sink is not None:  # one more logit per row, dropped after the softmax
            s = torch.cat([s, sink.expand(B, Hkv, G, R, 1)], dim=-1)  # (B, Hkv, G, R, Nk + 1)
        p = torch.softmax(s, dim=-1)[..., :Nk]  # (B, Hkv, G, R, Nk)
        if vis is not None:
            p = p.masked_fill(~vis.any(dim=-1, keepdim=True), 0.0)  # no visible key → zeros
        o = torch.matmul(p.to(v.dtype).reshape(B, Hkv, G * R, Nk), vv)  # (B, Hkv, G*R, Dv)
        outs.append(o.reshape(B, Hq, R, Dv))
    if not outs:
        return torch.zeros((B, Hq, 0, Dv), dtype=q.dtype, device=q.device)
    return torch.cat(outs, dim=2)  # (B, Hq, R, Dv)
